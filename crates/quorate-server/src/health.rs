//! Real liveness, not etcd's "started once": when this member last heard
//! from each peer, and, on the leader, how far each member's log is behind.
//! The cluster figures (reachable voters, quorum, failure tolerance) and the
//! reconfiguration rules that use them live here, as pure functions, so
//! they are tested at every cluster size.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quorate_proto::quorate::v1::{HealthResponse, MemberHealth};

/// When each peer was last heard from (any Raft traffic).
#[derive(Default)]
pub struct Liveness {
    last_seen: Mutex<HashMap<u64, Instant>>,
}

impl Liveness {
    pub fn heard(&self, id: u64) {
        match self.last_seen.lock() {
            Ok(mut m) => {
                m.insert(id, Instant::now());
            }
            Err(p) => {
                p.into_inner().insert(id, Instant::now());
            }
        }
    }

    pub fn since(&self, id: u64) -> Option<Duration> {
        let m = match self.last_seen.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.get(&id).map(|t| t.elapsed())
    }
}

pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Fills in the cluster figures and warnings of a health report whose
/// members are set.
pub fn summarize(resp: &mut HealthResponse, unhealthy_after: Duration) {
    let voters: Vec<&MemberHealth> = resp.members.iter().filter(|m| !m.is_learner).collect();
    let reachable = voters.iter().filter(|m| m.reachable).count();
    let q = quorum(voters.len());
    resp.voters = voters.len() as u32;
    resp.reachable_voters = reachable as u32;
    resp.quorum = q as u32;
    resp.failure_tolerance = reachable as i32 - q as i32;
    let mut warnings = Vec::new();
    if resp.failure_tolerance < 0 {
        warnings.push(format!(
            "quorum lost: {reachable} of {} voters reachable, {q} needed; writes are stopped",
            voters.len()
        ));
    } else if resp.failure_tolerance == 0 && voters.len() > 1 {
        warnings.push(format!(
            "failure tolerance 0: {reachable} of {} voters reachable, quorum {q}; one more failure stops writes",
            voters.len()
        ));
    }
    for m in &resp.members {
        if !m.reachable {
            let long = m.last_seen_ms_ago < 0
                || Duration::from_millis(m.last_seen_ms_ago as u64) >= unhealthy_after;
            if long {
                warnings.push(format!(
                    "member {} ({:x}) unreachable for {}",
                    display_name(m),
                    m.id,
                    describe_ago(m.last_seen_ms_ago)
                ));
            }
        }
        if m.is_learner {
            warnings.push(format!(
                "learner {} ({:x}) pending promotion, {}% caught up",
                display_name(m),
                m.id,
                m.learner_progress_percent
            ));
        }
    }
    resp.warnings = warnings;
}

pub fn display_name(m: &MemberHealth) -> String {
    if m.name.is_empty() {
        "(unstarted)".to_string()
    } else {
        m.name.clone()
    }
}

pub fn describe_ago(ms: i64) -> String {
    if ms < 0 {
        return "ever (never heard from)".to_string();
    }
    let s = ms / 1000;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    }
}

/// Why a reconfiguration is refused, with the numbers and the remedy; None
/// when it is safe. Judged on reachability, not on "started once".
pub enum Change<'a> {
    AddVoter,
    AddLearner {
        learners: usize,
        max_learners: usize,
    },
    Remove {
        target: &'a MemberHealth,
    },
}

pub fn check_reconfiguration(health: &HealthResponse, change: Change<'_>) -> Option<String> {
    let voters = health.voters as usize;
    let reachable = health.reachable_voters as usize;
    let unreachable: Vec<String> = health
        .members
        .iter()
        .filter(|m| !m.is_learner && !m.reachable)
        .map(|m| {
            format!(
                "{} unreachable for {}",
                display_name(m),
                describe_ago(m.last_seen_ms_ago)
            )
        })
        .collect();
    let detail = if unreachable.is_empty() {
        String::new()
    } else {
        format!(" ({})", unreachable.join(", "))
    };
    let remedy_remove = health
        .members
        .iter()
        .find(|m| !m.is_learner && !m.reachable)
        .map(|m| {
            format!(
                " Remove the unreachable member first: quoratectl member remove {:x}",
                m.id
            )
        })
        .unwrap_or_else(|| " Bring the unreachable members back first.".to_string());
    match change {
        Change::AddLearner {
            learners,
            max_learners,
        } => {
            if learners >= max_learners {
                return Some(format!(
                    "etcdserver: too many learner members in cluster: {learners} learner(s), at most {max_learners} \
                     (--max-learners). Promote or remove the pending learner first."
                ));
            }
            None
        }
        Change::AddVoter => {
            // The new member counts as down until it has caught up. Growing
            // a lone member to two is allowed, as etcd allows it: it is how a
            // cluster recovered with --force-new-cluster grows back, and
            // there is no failure tolerance to lose.
            let new_quorum = quorum(voters + 1);
            if reachable < new_quorum && !(voters == 1 && reachable == 1) {
                return Some(format!(
                    "etcdserver: re-configuration failed due to not enough started members: refusing to add a voter: \
                     {reachable} of {voters} voters reachable{detail}; after the add, quorum would be {new_quorum} of {} \
                     with {reachable} reachable.{remedy_remove} (or add it as a learner: --learner)",
                    voters + 1
                ));
            }
            None
        }
        Change::Remove { target } => {
            if target.is_learner || !target.reachable {
                return None;
            }
            let remaining = reachable - 1;
            let new_quorum = quorum(voters - 1);
            if remaining < new_quorum {
                return Some(format!(
                    "etcdserver: re-configuration failed due to not enough started members: refusing to remove {} ({:x}): \
                     {reachable} of {voters} voters reachable{detail}; after the remove, quorum would be {new_quorum} of {} \
                     with {remaining} reachable.{remedy_remove}",
                    display_name(target),
                    target.id,
                    voters - 1
                ));
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(reachable: &[bool], learners: usize) -> HealthResponse {
        let mut members: Vec<MemberHealth> = reachable
            .iter()
            .enumerate()
            .map(|(i, &r)| MemberHealth {
                id: i as u64 + 1,
                name: format!("m{i}"),
                reachable: r,
                last_seen_ms_ago: if r { 10 } else { 720_000 },
                ..Default::default()
            })
            .collect();
        for j in 0..learners {
            members.push(MemberHealth {
                id: 100 + j as u64,
                is_learner: true,
                reachable: true,
                ..Default::default()
            });
        }
        let mut h = HealthResponse {
            members,
            ..Default::default()
        };
        summarize(&mut h, Duration::from_secs(60));
        h
    }

    #[test]
    fn failure_tolerance_at_every_size() {
        // (voters up, voters down) -> tolerance
        for (up, down, tol) in [
            (1, 0, 0),
            (2, 0, 0),
            (1, 1, -1),
            (3, 0, 1),
            (2, 1, 0),
            (1, 2, -1),
            (4, 0, 1),
            (3, 1, 0),
            (2, 2, -1),
            (5, 0, 2),
            (4, 1, 1),
            (3, 2, 0),
            (2, 3, -1),
        ] {
            let mut r = vec![true; up];
            r.extend(vec![false; down]);
            for learners in [0, 1] {
                let h = cluster(&r, learners);
                assert_eq!(
                    h.failure_tolerance, tol,
                    "{up} up, {down} down, {learners} learners"
                );
            }
        }
    }

    #[test]
    fn adding_a_voter_is_refused_when_the_new_quorum_is_not_reachable() {
        // The incident: 3 voters, one dead; adding a 4th makes quorum 3 of 4
        // with 2 reachable.
        let h = cluster(&[true, false, true], 0);
        let msg = check_reconfiguration(&h, Change::AddVoter).expect("refused");
        assert!(msg
            .starts_with("etcdserver: re-configuration failed due to not enough started members"));
        assert!(msg.contains("2 of 3 voters reachable"), "{msg}");
        assert!(
            msg.contains("quorum would be 3 of 4 with 2 reachable"),
            "{msg}"
        );
        assert!(msg.contains("quoratectl member remove 2"), "{msg}");
        for (up, down, ok) in [
            (1, 0, true), // a lone member may grow to two, as in etcd
            (2, 0, true),
            (1, 1, false),
            (3, 0, true),
            (2, 1, false),
            (4, 0, true),
            (3, 1, true),
            (2, 2, false),
            (5, 0, true),
            (4, 1, true),
            (3, 2, false),
        ] {
            let mut r = vec![true; up];
            r.extend(vec![false; down]);
            for learners in [0, 1] {
                let h = cluster(&r, learners);
                let refused = check_reconfiguration(&h, Change::AddVoter).is_some();
                assert_eq!(!refused, ok, "{up} up, {down} down, {learners} learners");
            }
        }
    }

    #[test]
    fn removing_is_refused_only_when_the_rest_cannot_form_a_quorum() {
        for n in 1..=5usize {
            for down in 0..n {
                let mut r = vec![true; n - down];
                r.extend(vec![false; down]);
                let h = cluster(&r, 1);
                // Removing an unreachable member is always allowed.
                if down > 0 {
                    let target = &h.members[n - 1];
                    assert!(check_reconfiguration(&h, Change::Remove { target }).is_none());
                }
                // A learner too.
                let learner = &h.members[n];
                assert!(check_reconfiguration(&h, Change::Remove { target: learner }).is_none());
                // A reachable voter: only if the rest still form a quorum.
                if n - down > 0 && n > 1 {
                    let target = &h.members[0];
                    let refused = check_reconfiguration(&h, Change::Remove { target }).is_some();
                    let ok = (n - down - 1) >= quorum(n - 1);
                    assert_eq!(!refused, ok, "n={n} down={down}");
                }
            }
        }
    }

    #[test]
    fn learner_limit() {
        let h = cluster(&[true, true, true], 1);
        assert!(check_reconfiguration(
            &h,
            Change::AddLearner {
                learners: 1,
                max_learners: 1
            }
        )
        .is_some_and(|m| m.starts_with("etcdserver: too many learner members in cluster")));
        assert!(check_reconfiguration(
            &h,
            Change::AddLearner {
                learners: 1,
                max_learners: 2
            }
        )
        .is_none());
    }
}
