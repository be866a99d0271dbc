//! Member and cluster identity, derived the way etcd derives them so that
//! every member computes the same IDs from the same bootstrap flags.
//!
//! Member ID: the first 8 bytes (big-endian) of SHA-1 over the member's
//! sorted peer URLs concatenated, then the cluster token, then (only for a
//! runtime member add) the Unix time. Cluster ID: the same over the sorted
//! member IDs as 8-byte big-endian integers.

use std::fmt;

use sha1::{Digest, Sha1};

/// A member's identity, shown in hex as etcd does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(pub u64);

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

pub fn member_id(peer_urls: &[String], token: &str, unix_time: Option<i64>) -> MemberId {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut h = Sha1::new();
    for u in urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    if let Some(t) = unix_time {
        h.update(t.to_string().as_bytes());
    }
    MemberId(first_u64(&h.finalize()))
}

pub fn cluster_id(members: &[MemberId]) -> ClusterId {
    let mut ids: Vec<u64> = members.iter().map(|m| m.0).collect();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    ClusterId(first_u64(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_single_member_ids_match_etcd() {
        // etcd started with no flags: peer URL http://localhost:2380,
        // token "etcd-cluster".
        let m = member_id(&["http://localhost:2380".to_string()], "etcd-cluster", None);
        assert_eq!(m.to_string(), "8e9e05c52164694d");
        assert_eq!(cluster_id(&[m]).to_string(), "cdf818194e3a8c32");
    }
}
