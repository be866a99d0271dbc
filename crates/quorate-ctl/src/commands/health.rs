//! Quorate's liveness view (`quorate.v1.ClusterHealth/Health`) and the
//! commands built on it: the extra `member list -w table` columns and
//! `cluster check`, the pre-flight check before taking a member down.
//!
//! etcd has no such RPC (it answers UNIMPLEMENTED): there the commands say
//! so instead of guessing, since etcd's "started" only means "booted once".

use std::path::Path;
use std::time::{Duration, SystemTime};

use quorate_proto::quorate::v1::cluster_health_client::ClusterHealthClient;
use quorate_proto::quorate::v1::{HealthRequest, HealthResponse, MemberHealth};
use tonic::transport::Channel;

use super::Env;
use crate::cli::ClusterCheckArgs;
use crate::client::{self, request};
use crate::exit::{status_message, CtlError};

/// Lag (entries) above which a member counts as lagging.
pub const LAG_RISK_ENTRIES: u64 = 1000;

/// What etcd users are told when liveness is unavailable.
pub const ETCD_NO_LIVENESS: &str =
    "liveness is not available from etcd (no quorate.v1.ClusterHealth): \
member status \"started\" only means the member booted once";

/// Asks the cluster for its health. `Ok(None)` when the server does not
/// implement the RPC (etcd).
pub async fn fetch(ch: Channel, timeout: Duration) -> Result<Option<HealthResponse>, CtlError> {
    let mut c = ClusterHealthClient::new(ch);
    match tokio::time::timeout(timeout, c.health(request(HealthRequest {}, timeout))).await {
        Err(_) => Err(CtlError::deadline_exceeded()),
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Ok(None),
        Ok(Err(s)) => Err(CtlError::error(status_message(&s))),
        Ok(Ok(r)) => Ok(Some(r.into_inner())),
    }
}

/// Like [`fetch`], but while the answer is a follower's own view (no
/// leader, e.g. during an election) asks again, for up to `timeout`.
pub async fn fetch_from_leader(
    ch: Channel,
    timeout: Duration,
) -> Result<Option<HealthResponse>, CtlError> {
    let until = std::time::Instant::now() + timeout;
    loop {
        let r = fetch(ch.clone(), timeout).await;
        let settled = match &r {
            Ok(Some(h)) => h.from_leader,
            Ok(None) => true,
            Err(_) => false,
        };
        if settled || std::time::Instant::now() >= until {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// `4 voters, 3 reachable, quorum 3, failure tolerance 0: one more failure stops writes`.
pub fn summary_line(h: &HealthResponse) -> String {
    let line = summary_figures(h);
    if h.from_leader {
        line
    } else {
        format!(
            "{line} (not from the leader: member {:x}'s own view)",
            h.reporter_id
        )
    }
}

fn summary_figures(h: &HealthResponse) -> String {
    let head = format!(
        "{} voters, {} reachable, quorum {}",
        h.voters, h.reachable_voters, h.quorum
    );
    match h.failure_tolerance {
        t if t < 0 => format!("{head}, quorum lost: writes are stopped"),
        0 => format!("{head}, failure tolerance 0: one more failure stops writes"),
        t => format!("{head}, failure tolerance {t}"),
    }
}

/// `0s`, `12m`, `1h5m`; `never` for -1.
pub fn describe_ago(ms: i64) -> String {
    if ms < 0 {
        return "never".to_string();
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

pub fn display_name(m: &MemberHealth) -> String {
    if m.name.is_empty() {
        "(unstarted)".to_string()
    } else {
        m.name.clone()
    }
}

/// The three extra table cells for a member (or `unknown` when the health
/// report does not list it).
pub fn health_cells(h: &HealthResponse, id: u64) -> Vec<String> {
    match h.members.iter().find(|m| m.id == id) {
        Some(m) => vec![
            if m.reachable {
                "healthy"
            } else {
                "unreachable"
            }
            .to_string(),
            describe_ago(m.last_seen_ms_ago),
            m.lag_entries.to_string(),
        ],
        None => vec!["unknown".into(), "-".into(), "-".into()],
    }
}

/// Finds a member by ID (hex, as `member list` prints it) or by name.
pub fn resolve<'a>(h: &'a HealthResponse, who: &str) -> Option<&'a MemberHealth> {
    if let Ok(id) = u64::from_str_radix(who, 16) {
        if let Some(m) = h.members.iter().find(|m| m.id == id) {
            return Some(m);
        }
    }
    h.members.iter().find(|m| m.name == who)
}

/// A what-if: the cluster figures after stopping or removing a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    pub voters: usize,
    pub reachable: usize,
    pub quorum: usize,
}

impl Figures {
    pub fn of(h: &HealthResponse) -> Self {
        Figures {
            voters: h.voters as usize,
            reachable: h.reachable_voters as usize,
            quorum: h.quorum as usize,
        }
    }

    pub fn tolerance(&self) -> i64 {
        self.reachable as i64 - self.quorum as i64
    }

    pub fn after_stop(self, m: &MemberHealth) -> Self {
        let mut f = self;
        if !m.is_learner && m.reachable {
            f.reachable = f.reachable.saturating_sub(1);
        }
        f
    }

    pub fn after_remove(self, m: &MemberHealth) -> Self {
        let mut f = self;
        if !m.is_learner {
            f.voters = f.voters.saturating_sub(1);
            if m.reachable {
                f.reachable = f.reachable.saturating_sub(1);
            }
            f.quorum = quorum(f.voters);
        }
        f
    }
}

/// Everything risky about the cluster, one message each. Members in
/// `except` (the one being replaced/removed) are not reported as
/// unreachable or lagging.
pub fn risks(h: &HealthResponse, except: &[u64]) -> Vec<String> {
    let mut out = Vec::new();
    if !h.from_leader {
        out.push(format!(
            "no leader answered: liveness is member {:x}'s own view (no leader right now?)",
            h.reporter_id
        ));
    }
    if h.failure_tolerance < 0 {
        out.push(format!(
            "quorum lost: {} of {} voters reachable, {} needed; writes are stopped",
            h.reachable_voters, h.voters, h.quorum
        ));
    } else if h.failure_tolerance == 0 && h.voters > 1 {
        out.push(format!(
            "failure tolerance 0: {} of {} voters reachable, quorum {}; one more failure stops writes",
            h.reachable_voters, h.voters, h.quorum
        ));
    }
    for m in &h.members {
        if except.contains(&m.id) {
            continue;
        }
        if !m.reachable {
            out.push(format!(
                "member {} ({:x}) unreachable (last seen {}): remove it with `quoratectl member remove {:x}` or bring it back",
                display_name(m),
                m.id,
                if m.last_seen_ms_ago < 0 {
                    "never".to_string()
                } else {
                    format!("{} ago", describe_ago(m.last_seen_ms_ago))
                },
                m.id
            ));
        } else if m.lag_entries > LAG_RISK_ENTRIES {
            out.push(format!(
                "member {} ({:x}) lags {} entries behind the leader",
                display_name(m),
                m.id,
                m.lag_entries
            ));
        }
        if m.is_learner {
            out.push(format!(
                "learner {} ({:x}) pending promotion, {}% caught up",
                display_name(m),
                m.id,
                m.learner_progress_percent
            ));
        }
    }
    for (i, a) in h.members.iter().enumerate() {
        for b in &h.members[i + 1..] {
            if !a.name.is_empty() && a.name == b.name {
                out.push(format!(
                    "members {:x} and {:x} have the same name {:?}",
                    a.id, b.id, a.name
                ));
            }
            if let Some(u) = a.peer_urls.iter().find(|u| b.peer_urls.contains(u)) {
                out.push(format!(
                    "members {:x} and {:x} have the same peer URL {u}",
                    a.id, b.id
                ));
            }
        }
    }
    out
}

/// The newest `*.snap`/`*.db` file in `dir` and its age.
fn newest_snapshot(dir: &Path) -> std::io::Result<Option<(std::path::PathBuf, Duration)>> {
    let mut best: Option<(std::path::PathBuf, SystemTime)> = None;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let ok = matches!(p.extension().and_then(|x| x.to_str()), Some("snap" | "db"));
        if !ok || !e.file_type()?.is_file() {
            continue;
        }
        let t = e.metadata()?.modified()?;
        if best.as_ref().is_none_or(|(_, b)| t > *b) {
            best = Some((p, t));
        }
    }
    Ok(best.map(|(p, t)| {
        let age = SystemTime::now().duration_since(t).unwrap_or_default();
        (p, age)
    }))
}

/// The snapshot risk for `--snapshot-dir`/`--snapshot-max-age`, if any.
pub fn snapshot_risk(dir: &Path, max_age: Duration) -> Option<String> {
    match newest_snapshot(dir) {
        Err(e) => Some(format!("cannot read snapshot dir {}: {e}", dir.display())),
        Ok(None) => Some(format!(
            "no snapshot (*.snap, *.db) in {}: save one first (quoratectl member replace saves one)",
            dir.display()
        )),
        Ok(Some((p, age))) if age > max_age => Some(format!(
            "newest snapshot {} is {} old, older than {}",
            p.display(),
            describe_ago(age.as_millis() as i64),
            describe_ago(max_age.as_millis() as i64)
        )),
        Ok(Some(_)) => None,
    }
}

/// `cluster check`.
pub async fn check(a: ClusterCheckArgs, env: &mut Env<'_>) -> Result<(), CtlError> {
    if a.stop.is_some() && a.remove.is_some() {
        return Err(CtlError::bad_args("--stop and --remove are exclusive"));
    }
    if a.snapshot_max_age.is_some() && a.snapshot_dir.is_none() {
        return Err(CtlError::bad_args(
            "--snapshot-max-age needs --snapshot-dir",
        ));
    }
    let timeout = env.cfg.command_timeout;
    let ch = client::dial_any(&env.cfg).await?;
    let Some(h) = fetch_from_leader(ch, timeout).await? else {
        writeln!(env.out.stderr, "{ETCD_NO_LIVENESS}")?;
        return Err(CtlError::error(
            "cannot prove it is safe to take a member down: liveness is unknown",
        ));
    };
    let w = &mut *env.out.stdout;
    writeln!(w, "{}", summary_line(&h))?;
    let now = Figures::of(&h);
    let mut except = Vec::new();
    let (after, what) = match (&a.stop, &a.remove) {
        (Some(who), _) | (_, Some(who)) => {
            let m = resolve(&h, who)
                .ok_or_else(|| CtlError::error(format!("member {who} not found")))?;
            except.push(m.id);
            let stop = a.stop.is_some();
            let f = if stop {
                now.after_stop(m)
            } else {
                now.after_remove(m)
            };
            let verb = if stop { "stopping" } else { "removing" };
            (f, format!("{verb} {} ({:x})", display_name(m), m.id))
        }
        _ => (now, String::new()),
    };
    let mut risks = risks(&h, &except);
    if !what.is_empty() {
        // The what-if below judges the tolerance after the change.
        risks.retain(|r| !r.starts_with("failure tolerance 0") && !r.starts_with("quorum lost"));
    }
    if let Some(dir) = &a.snapshot_dir {
        let max_age = a.snapshot_max_age.unwrap_or(Duration::from_secs(24 * 3600));
        if let Some(r) = snapshot_risk(Path::new(dir), max_age) {
            risks.push(r);
        }
    }
    let safe_change = if what.is_empty() {
        now.tolerance() >= 1
    } else {
        let t = after.tolerance();
        writeln!(
            w,
            "after {what}: {} voters, {} reachable, quorum {}, failure tolerance {t}",
            after.voters, after.reachable, after.quorum
        )?;
        if t < 0 {
            risks.push(format!(
                "{what} would stop writes: {} reachable voters, quorum {}",
                after.reachable, after.quorum
            ));
        } else if t == 0 && after.voters > 1 {
            writeln!(
                w,
                "note: after {what} the failure tolerance is 0: one more failure stops writes"
            )?;
        }
        t >= 0
    };
    for r in &risks {
        writeln!(w, "risk: {r}")?;
    }
    if safe_change && risks.is_empty() {
        if what.is_empty() {
            writeln!(w, "OK: safe to take one member down")?;
        } else {
            writeln!(w, "OK: safe to go ahead with {what}")?;
        }
        Ok(())
    } else {
        writeln!(w, "NOT SAFE: {} risk(s) found", risks.len().max(1))?;
        Err(CtlError::silent(crate::exit::ERROR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, reachable: bool) -> MemberHealth {
        MemberHealth {
            id,
            name: name.into(),
            peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
            reachable,
            last_seen_ms_ago: if reachable { 0 } else { 720_000 },
            ..Default::default()
        }
    }

    fn health(members: Vec<MemberHealth>) -> HealthResponse {
        let voters = members.iter().filter(|m| !m.is_learner).count();
        let reachable = members
            .iter()
            .filter(|m| !m.is_learner && m.reachable)
            .count();
        HealthResponse {
            from_leader: true,
            voters: voters as u32,
            reachable_voters: reachable as u32,
            quorum: quorum(voters) as u32,
            failure_tolerance: reachable as i32 - quorum(voters) as i32,
            members,
            ..Default::default()
        }
    }

    #[test]
    fn summary_lines() {
        let h = health(vec![
            member(1, "a", true),
            member(2, "b", true),
            member(3, "c", true),
            member(4, "d", false),
        ]);
        assert_eq!(
            summary_line(&h),
            "4 voters, 3 reachable, quorum 3, failure tolerance 0: one more failure stops writes"
        );
        let h = health(vec![
            member(1, "a", true),
            member(2, "b", true),
            member(3, "c", true),
        ]);
        assert_eq!(
            summary_line(&h),
            "3 voters, 3 reachable, quorum 2, failure tolerance 1"
        );
        let h = health(vec![
            member(1, "a", true),
            member(2, "b", false),
            member(3, "c", false),
        ]);
        assert_eq!(
            summary_line(&h),
            "3 voters, 1 reachable, quorum 2, quorum lost: writes are stopped"
        );
        assert_eq!(describe_ago(720_000), "12m");
        assert_eq!(describe_ago(-1), "never");
    }

    #[test]
    fn what_ifs() {
        let h = health(vec![
            member(1, "a", true),
            member(2, "b", true),
            member(3, "c", false),
        ]);
        let f = Figures::of(&h);
        assert_eq!(f.tolerance(), 0);
        // Stopping a live one: 1 of 3, quorum 2.
        assert_eq!(f.after_stop(&h.members[0]).tolerance(), -1);
        // Removing the dead one: 2 of 2, quorum 2.
        assert_eq!(f.after_remove(&h.members[2]).tolerance(), 0);
        // Removing a live one: 1 of 2, quorum 2.
        assert_eq!(f.after_remove(&h.members[0]).tolerance(), -1);
        assert_eq!(resolve(&h, "b").map(|m| m.id), Some(2));
        assert_eq!(resolve(&h, "3").map(|m| m.id), Some(3));
        assert!(resolve(&h, "zz").is_none());
    }

    #[test]
    fn risks_found() {
        let mut dup = member(4, "a", true);
        dup.peer_urls = vec!["http://127.0.0.1:2381".into()];
        dup.is_learner = true;
        dup.lag_entries = 5000;
        let h = health(vec![
            member(1, "a", true),
            member(2, "b", true),
            member(3, "c", false),
            dup,
        ]);
        let r = risks(&h, &[]).join("\n");
        assert!(r.contains("failure tolerance 0"), "{r}");
        assert!(r.contains("quoratectl member remove 3"), "{r}");
        assert!(r.contains("lags 5000 entries"), "{r}");
        assert!(r.contains("pending promotion"), "{r}");
        assert!(r.contains("same name \"a\""), "{r}");
        assert!(r.contains("same peer URL http://127.0.0.1:2381"), "{r}");
        // The member being replaced is not reported.
        let r = risks(&h, &[3]).join("\n");
        assert!(!r.contains("remove 3"), "{r}");
    }
}
