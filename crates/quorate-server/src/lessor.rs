//! Lease expiry, tracked in memory by the leader only.
//!
//! Leases themselves (ID, granted TTL) and their keys are replicated state;
//! when a lease expires is not: only the leader keeps deadlines, and it
//! expires a lease by proposing its revocation through Raft, so every member
//! deletes the same keys at the same revision. A new leader starts every
//! lease's clock afresh (plus the election timeout), so an election never
//! makes a lease expire early.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// etcd's largest lease TTL, in seconds.
pub const MAX_LEASE_TTL_SECONDS: i64 = 9_000_000_000;

#[derive(Default)]
struct State {
    primary: bool,
    /// Lease ID -> (deadline, granted TTL in seconds).
    deadlines: HashMap<i64, (Instant, i64)>,
    /// Leases past their deadline whose revocation was proposed.
    expiring: std::collections::HashSet<i64>,
}

#[derive(Default)]
pub struct Lessor {
    state: Mutex<State>,
}

impl Lessor {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        match self.state.lock() {
            Ok(mut s) => f(&mut s),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// A lease was granted (applied): its clock starts now.
    pub fn granted(&self, id: i64, ttl: i64) {
        self.with(|s| {
            s.deadlines.insert(id, (Instant::now() + secs(ttl), ttl));
        });
    }

    pub fn revoked(&self, id: i64) {
        self.with(|s| {
            s.deadlines.remove(&id);
            s.expiring.remove(&id);
        });
    }

    /// This member became leader: every lease gets its full TTL plus
    /// `extend` from now.
    pub fn promote(&self, leases: &[(i64, i64)], extend: Duration) {
        let now = Instant::now();
        self.with(|s| {
            s.primary = true;
            s.expiring.clear();
            s.deadlines = leases
                .iter()
                .map(|&(id, ttl)| (id, (now + secs(ttl) + extend, ttl)))
                .collect();
        });
    }

    pub fn demote(&self) {
        self.with(|s| s.primary = false);
    }

    pub fn is_primary(&self) -> bool {
        self.with(|s| s.primary)
    }

    /// Keep-alive on the leader: the lease's clock restarts. Returns the
    /// granted TTL, or None for an unknown lease, or one already past its
    /// deadline (its revocation is on its way: a late keep-alive must not
    /// bring it back).
    pub fn renew(&self, id: i64) -> Option<i64> {
        let now = Instant::now();
        self.with(|s| {
            if s.expiring.contains(&id) {
                return None;
            }
            let (deadline, ttl) = s.deadlines.get_mut(&id)?;
            if *deadline <= now {
                return None;
            }
            *deadline = now + secs(*ttl);
            Some(*ttl)
        })
    }

    /// Remaining whole seconds (truncated, as etcd reports them; 0 once
    /// expired), or None for an unknown lease.
    pub fn remaining(&self, id: i64) -> Option<i64> {
        self.with(|s| {
            if s.expiring.contains(&id) {
                return Some(0);
            }
            let (deadline, _) = s.deadlines.get(&id)?;
            let left = deadline.saturating_duration_since(Instant::now());
            Some(left.as_secs() as i64)
        })
    }

    /// Leases past their deadline (at most `limit`), on the leader only.
    /// Each is given `retry_after` more before it is reported again, so a
    /// revocation in flight is not proposed twice.
    pub fn expired(&self, limit: usize, retry_after: Duration) -> Vec<i64> {
        let now = Instant::now();
        self.with(|s| {
            if !s.primary {
                return Vec::new();
            }
            let ids: Vec<i64> = s
                .deadlines
                .iter()
                .filter(|(_, (d, _))| *d <= now)
                .map(|(id, _)| *id)
                .take(limit)
                .collect();
            for id in &ids {
                if let Some((d, _)) = s.deadlines.get_mut(id) {
                    *d = now + retry_after;
                }
                s.expiring.insert(*id);
            }
            ids
        })
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.clamp(0, MAX_LEASE_TTL_SECONDS) as u64)
}

/// Which live keys are attached to which lease; derived from the store and
/// kept in step with every applied write.
#[derive(Default)]
pub struct LeaseKeys {
    keys: Mutex<HashMap<i64, BTreeSet<Vec<u8>>>>,
}

impl LeaseKeys {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<i64, BTreeSet<Vec<u8>>>) -> T) -> T {
        match self.keys.lock() {
            Ok(mut s) => f(&mut s),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    pub fn rebuild(&self, leased: Vec<(Vec<u8>, i64)>) {
        self.with(|m| {
            m.clear();
            for (key, lease) in leased {
                m.entry(lease).or_default().insert(key);
            }
        });
    }

    pub fn apply_changes(&self, changes: Vec<(Vec<u8>, i64, i64)>) {
        self.with(|m| {
            for (key, old, new) in changes {
                if old != 0 {
                    if let Some(set) = m.get_mut(&old) {
                        set.remove(&key);
                        if set.is_empty() {
                            m.remove(&old);
                        }
                    }
                }
                if new != 0 {
                    m.entry(new).or_default().insert(key);
                }
            }
        });
    }

    /// The keys attached to `lease`, in key order.
    pub fn keys_of(&self, lease: i64) -> Vec<Vec<u8>> {
        self.with(|m| {
            m.get(&lease)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_primary_expires_and_promotion_extends() {
        let l = Lessor::default();
        l.granted(1, 0);
        assert!(
            l.expired(10, Duration::ZERO).is_empty(),
            "a follower never expires leases"
        );
        l.promote(&[(1, 0), (2, 100)], Duration::ZERO);
        assert_eq!(l.expired(10, Duration::from_secs(5)), vec![1]);
        assert!(l.expired(10, Duration::ZERO).is_empty(), "in flight");
        assert_eq!(l.renew(1), None, "an expiring lease is not renewed");
        assert_eq!(l.remaining(1), Some(0));
        assert_eq!(l.renew(2), Some(100));
        assert!(l.remaining(2).is_some_and(|r| (99..=100).contains(&r)));
        assert_eq!(l.renew(3), None);
    }

    #[test]
    fn lease_keys_follow_attachments() {
        let k = LeaseKeys::default();
        k.apply_changes(vec![(b"a".to_vec(), 0, 7), (b"b".to_vec(), 0, 7)]);
        k.apply_changes(vec![(b"a".to_vec(), 7, 0)]);
        assert_eq!(k.keys_of(7), vec![b"b".to_vec()]);
    }
}
