//! Cluster membership as the state machine stores it: the members (ID, name,
//! peer and client URLs, learner flag) and the IDs removed for good.
//!
//! Invariant: membership changes only by applying committed entries, so
//! every member holds the same list at the same applied index.

use std::collections::BTreeMap;

use prost::Message;
use quorate_proto::etcdserverpb::Member;
use quorate_proto::quoratepb::MembershipState;

use crate::identity::{self, ClusterId, MemberId};

pub const META_MEMBERSHIP: &str = "membership";
/// This member's ID, in the store's metadata.
pub const META_MEMBER_ID: &str = "member_id";
pub const META_CLUSTER_ID: &str = "cluster_id";

/// `name=url,name=url2,other=url3` as given to `--initial-cluster`: one entry
/// per URL; a name may appear several times.
pub fn parse_initial_cluster(spec: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster entry {part:?} is not name=url"))?;
        if name.is_empty() || url.is_empty() {
            return Err(format!("--initial-cluster entry {part:?} is not name=url"));
        }
        validate_peer_url(url)?;
        out.entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    if out.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    Ok(out)
}

pub fn validate_peer_url(url: &str) -> Result<(), String> {
    let u = url::Url::parse(url).map_err(|e| format!("invalid peer URL {url:?}: {e}"))?;
    match u.scheme() {
        "http" | "https" => {}
        s => {
            return Err(format!(
                "invalid peer URL {url:?}: scheme {s} (expected http)"
            ))
        }
    }
    if u.host_str().is_none() || u.port_or_known_default().is_none() {
        return Err(format!("invalid peer URL {url:?}: needs host and port"));
    }
    if u.path() != "/" && !u.path().is_empty() {
        return Err(format!("invalid peer URL {url:?}: must not have a path"));
    }
    Ok(())
}

/// The founding membership of a new cluster, identical on every member.
pub fn bootstrap_membership(
    initial: &BTreeMap<String, Vec<String>>,
    token: &str,
) -> (MembershipState, ClusterId) {
    let mut members: Vec<Member> = initial
        .iter()
        .map(|(name, urls)| {
            let mut urls = urls.clone();
            urls.sort();
            Member {
                id: identity::member_id(&urls, token, None).0,
                name: name.clone(),
                peer_ur_ls: urls,
                client_ur_ls: vec![],
                is_learner: false,
            }
        })
        .collect();
    members.sort_by_key(|m| m.id);
    let ids: Vec<MemberId> = members.iter().map(|m| MemberId(m.id)).collect();
    (
        MembershipState {
            members,
            removed: vec![],
        },
        identity::cluster_id(&ids),
    )
}

pub fn encode(state: &MembershipState) -> Vec<u8> {
    state.encode_to_vec()
}

pub fn decode(bytes: &[u8]) -> Result<MembershipState, String> {
    MembershipState::decode(bytes).map_err(|e| format!("stored membership does not decode: {e}"))
}

pub fn find(state: &MembershipState, id: u64) -> Option<&Member> {
    state.members.iter().find(|m| m.id == id)
}

pub fn voters(state: &MembershipState) -> Vec<u64> {
    state
        .members
        .iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn founding_members_get_etcds_ids() {
        let initial = parse_initial_cluster("default=http://localhost:2380").expect("parse");
        let (state, cid) = bootstrap_membership(&initial, "etcd-cluster");
        assert_eq!(format!("{:x}", state.members[0].id), "8e9e05c52164694d");
        assert_eq!(cid.to_string(), "cdf818194e3a8c32");
    }

    #[test]
    fn bad_initial_cluster_is_refused() {
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("a=ftp://x:1").is_err());
        assert!(parse_initial_cluster("").is_err());
        let m = parse_initial_cluster("a=http://h:1,b=http://h:2,a=http://h:3").expect("ok");
        assert_eq!(m["a"].len(), 2);
    }
}
