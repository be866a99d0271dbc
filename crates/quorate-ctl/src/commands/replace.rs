//! `member replace`: the safe way to swap a member for a new one, end to
//! end, so that the cluster never has more voters than it can reach:
//!
//! 1. pre-flight check (the old member may be unreachable: that is often
//!    why it is being replaced);
//! 2. snapshot to a file (temp file, fsync, rename; SHA-256 trailer checked);
//! 3. remove the old member (refused while it is alive, unless `--stop-old`);
//! 4. add the new member as a learner (a learner does not count in quorum);
//! 5. print how the new node must be started;
//! 6. wait until it has caught up;
//! 7. promote it;
//! 8. check the failure tolerance is back to what it was.
//!
//! Every step checks whether it is already done, so a re-run continues from
//! wherever the cluster is. Against etcd (no Health RPC) liveness comes from
//! `--old-dead` or the old member's Status, and catch-up from retried
//! promotes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quorate_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    SnapshotRequest, StatusRequest,
};
use quorate_proto::quorate::v1::HealthResponse;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use super::health::{self, Figures};
use super::Env;
use crate::cli::MemberReplaceArgs;
use crate::client::{self, request, unary};
use crate::exit::CtlError;

const NOT_IN_SYNC: &str = "in sync with leader";
const NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
const NOT_FOUND: &str = "etcdserver: member not found";
/// How often the cluster is polled while waiting.
const POLL: Duration = Duration::from_millis(500);

fn same_urls(a: &[String], b: &[String]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

async fn member_list(ch: &Channel, timeout: Duration) -> Result<Vec<Member>, CtlError> {
    Ok(unary(
        timeout,
        client::cluster(ch.clone())
            .member_list(request(MemberListRequest { linearizable: true }, timeout)),
    )
    .await?
    .members)
}

/// The old member: by hex ID or name, never the new one (same peer URLs).
fn find_old<'a>(members: &'a [Member], who: &str, new_urls: &[String]) -> Option<&'a Member> {
    let candidates = || {
        members
            .iter()
            .filter(move |m| !same_urls(&m.peer_ur_ls, new_urls))
    };
    if let Ok(id) = u64::from_str_radix(who, 16) {
        if let Some(m) = candidates().find(|m| m.id == id) {
            return Some(m);
        }
    }
    candidates().find(|m| m.name == who)
}

fn step(env: &mut Env<'_>, n: u32, text: &str) -> Result<(), CtlError> {
    writeln!(env.out.stdout, "[{n}/8] {text}")?;
    env.out.stdout.flush()?;
    Ok(())
}

/// `member replace`.
pub async fn replace(a: MemberReplaceArgs, env: &mut Env<'_>) -> Result<(), CtlError> {
    if a.name.is_empty() {
        return Err(CtlError::bad_args("--name must not be empty"));
    }
    if a.peer_urls.iter().any(|u| u.is_empty()) || a.peer_urls.is_empty() {
        return Err(CtlError::bad_args("--peer-urls must not be empty"));
    }
    let timeout = env.cfg.command_timeout;
    let deadline = Instant::now() + a.timeout;
    let mut ch = client::dial_any(&env.cfg).await?;

    // 1. Pre-flight.
    step(env, 1, "pre-flight check")?;
    let members = loop {
        match member_list(&ch, timeout).await {
            Ok(m) => break m,
            Err(e) if transient(&e) && Instant::now() < deadline => {
                writeln!(env.out.stderr, "  retrying: {}", e.message)?;
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(e),
        }
    };
    let old = find_old(&members, &a.old, &a.peer_urls).cloned();
    let existing_new = members
        .iter()
        .find(|m| same_urls(&m.peer_ur_ls, &a.peer_urls))
        .cloned();
    // Right after an election the answer may come from a follower (its own
    // view) or fail: ask again for a while.
    let settle = Instant::now() + Duration::from_secs(10);
    let h = loop {
        match health::fetch(ch.clone(), timeout).await {
            Ok(Some(h)) if !h.from_leader && Instant::now() < settle.min(deadline) => {}
            Ok(h) => break h,
            Err(e) if transient(&e) && Instant::now() < settle.min(deadline) => {}
            Err(e) => return Err(e),
        }
        tokio::time::sleep(POLL).await;
    };
    let tolerance_before = match &h {
        Some(h) => {
            writeln!(env.out.stdout, "  {}", health::summary_line(h))?;
            preflight(h, old.as_ref(), existing_new.as_ref(), env)?;
            Some(h.failure_tolerance)
        }
        None => {
            writeln!(env.out.stderr, "{}", health::ETCD_NO_LIVENESS)?;
            None
        }
    };

    // 2. Snapshot.
    let file = a
        .snapshot_file
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from(format!("quorate-before-replace-{}-{secs}.db", a.old))
        });
    step(env, 2, &format!("saving a snapshot to {}", file.display()))?;
    let size = save_snapshot(&ch, &file, a.timeout).await?;
    writeln!(env.out.stdout, "  saved {size} bytes, SHA-256 verified")?;

    // 3. Remove the old member.
    match &old {
        None => step(
            env,
            3,
            &format!("member {} is not in the cluster (already removed)", a.old),
        )?,
        Some(old) => {
            let alive = match &h {
                Some(h) => h
                    .members
                    .iter()
                    .find(|m| m.id == old.id)
                    .is_some_and(|m| m.reachable),
                None => !a.old_dead && answers_status(old, env.cfg.dial_timeout, timeout).await,
            };
            if alive && !a.stop_old {
                return Err(CtlError::error(format!(
                    "member {} ({:x}) is alive: stop it first, or pass --stop-old to remove it anyway",
                    old.name, old.id
                )));
            }
            step(
                env,
                3,
                &format!(
                    "removing old member {} ({:x}){}",
                    old.name,
                    old.id,
                    if alive { ", which is alive" } else { "" }
                ),
            )?;
            // Retried through elections (the old member may have been the
            // leader); a retry after a timed-out attempt may find it gone.
            loop {
                let r = unary(
                    timeout,
                    client::cluster(ch.clone())
                        .member_remove(request(MemberRemoveRequest { id: old.id }, timeout)),
                )
                .await;
                match r {
                    Ok(_) => break,
                    Err(e) if e.message.contains(NOT_FOUND) => break,
                    Err(e) if transient(&e) && Instant::now() < deadline => {
                        writeln!(env.out.stderr, "  retrying: {}", e.message)?;
                        tokio::time::sleep(POLL).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            // The removed member stops serving: talk to the others from now.
            let others: Vec<String> = env
                .cfg
                .endpoints
                .iter()
                .filter(|ep| !old.client_ur_ls.iter().any(|u| same_endpoint(u, ep)))
                .cloned()
                .collect();
            if !others.is_empty() {
                env.cfg.endpoints = others;
            }
            ch = client::dial_any(&env.cfg).await?;
        }
    }

    // 4. Add the new member as a learner.
    let new_id = match &existing_new {
        Some(m) => {
            step(
                env,
                4,
                &format!(
                    "new member {:x} already added (learner: {})",
                    m.id, m.is_learner
                ),
            )?;
            m.id
        }
        None => {
            step(env, 4, &format!("adding {} as a learner", a.name))?;
            add_learner(&ch, &a.peer_urls, deadline, timeout).await?
        }
    };

    // 5. How to start it.
    let members = member_list(&ch, timeout).await?;
    let mut conf = Vec::new();
    for m in &members {
        let name = if m.id == new_id { &a.name } else { &m.name };
        for u in &m.peer_ur_ls {
            conf.push(format!("{name}={u}"));
        }
    }
    let conf = conf.join(",");
    let peers = a.peer_urls.join(",");
    step(
        env,
        5,
        &format!("start the new member {} ({new_id:x}) with:", a.name),
    )?;
    {
        let w = &mut *env.out.stdout;
        writeln!(w, "  QUORATE_NAME={}", a.name)?;
        writeln!(w, "  ETCD_NAME={}", a.name)?;
        writeln!(w, "  ETCD_INITIAL_CLUSTER={conf}")?;
        writeln!(w, "  ETCD_INITIAL_ADVERTISE_PEER_URLS={peers}")?;
        writeln!(w, "  ETCD_INITIAL_CLUSTER_STATE=existing")?;
        writeln!(
            w,
            "  flags: --name {} --initial-cluster {conf} --initial-cluster-state existing --initial-advertise-peer-urls {peers}",
            a.name
        )?;
        w.flush()?;
    }

    // 6 and 7. Catch up, promote.
    step(
        env,
        6,
        if h.is_some() {
            "waiting for the new member to catch up"
        } else {
            "waiting for the new member to catch up (etcd: by retrying promote)"
        },
    )?;
    if h.is_some() {
        wait_caught_up(&ch, new_id, deadline, timeout, env).await?;
    }
    step(env, 7, "promoting the new member")?;
    promote(&ch, new_id, deadline, timeout).await?;

    // 8. Verify.
    step(env, 8, "verifying failure tolerance")?;
    match tolerance_before {
        Some(before) => {
            let h = wait_tolerance(&ch, before, deadline, timeout).await?;
            writeln!(env.out.stdout, "  {}", health::summary_line(&h))?;
        }
        None => {
            let members = member_list(&ch, timeout).await?;
            let voters = members.iter().filter(|m| !m.is_learner).count();
            writeln!(
                env.out.stdout,
                "  {voters} voters; liveness is not available from etcd, check `endpoint health --cluster`"
            )?;
        }
    }
    writeln!(
        env.out.stdout,
        "member {} replaced by {} ({new_id:x})",
        a.old, a.name
    )?;
    Ok(())
}

/// Errors that pass by themselves (elections, a member going away).
fn transient(e: &CtlError) -> bool {
    let m = &e.message;
    m.contains("request timed out")
        || m.contains("leader changed")
        || m.contains("no leader")
        || m.contains("unhealthy cluster")
        || m.contains("context deadline exceeded")
        || m.starts_with("rpc error: code = Unavailable")
}

fn same_endpoint(url: &str, ep: &str) -> bool {
    let strip = |s: &str| {
        s.trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    };
    strip(url) == strip(ep)
}

/// Adds the learner, retrying through leader changes (a retry first looks
/// whether an earlier attempt went through).
async fn add_learner(
    ch: &Channel,
    peer_urls: &[String],
    deadline: Instant,
    timeout: Duration,
) -> Result<u64, CtlError> {
    loop {
        let r = unary(
            timeout,
            client::cluster(ch.clone()).member_add(request(
                MemberAddRequest {
                    peer_ur_ls: peer_urls.to_vec(),
                    is_learner: true,
                },
                timeout,
            )),
        )
        .await;
        let err = match r {
            Ok(r) => {
                return r
                    .member
                    .map(|m| m.id)
                    .ok_or_else(|| CtlError::error("member add answered without the new member"))
            }
            Err(e) => e,
        };
        if let Ok(members) = member_list(ch, timeout).await {
            if let Some(m) = members.iter().find(|m| same_urls(&m.peer_ur_ls, peer_urls)) {
                return Ok(m.id);
            }
        }
        if Instant::now() >= deadline || err.message.contains("too many learner") {
            return Err(err);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Refuses to start when the cluster cannot afford the change.
fn preflight(
    h: &HealthResponse,
    old: Option<&Member>,
    new: Option<&Member>,
    env: &mut Env<'_>,
) -> Result<(), CtlError> {
    let mut except: Vec<u64> = Vec::new();
    let mut figures = Figures::of(h);
    if let Some(old) = old {
        except.push(old.id);
        if let Some(mh) = h.members.iter().find(|m| m.id == old.id) {
            figures = figures.after_remove(mh);
        }
    }
    if let Some(new) = new {
        except.push(new.id);
    }
    // Tolerance 0 because the old member is down is what we are fixing.
    let mut risks: Vec<String> = health::risks(h, &except)
        .into_iter()
        .filter(|r| !r.starts_with("failure tolerance 0"))
        .collect();
    if figures.tolerance() < 0 {
        risks.push(format!(
            "after removing the old member: {} reachable voters, quorum {}: writes would stop",
            figures.reachable, figures.quorum
        ));
    }
    if risks.is_empty() {
        return Ok(());
    }
    for r in &risks {
        writeln!(env.out.stdout, "  risk: {r}")?;
    }
    Err(CtlError::error(format!(
        "pre-flight check failed ({} risk(s)); fix them first (see `quoratectl cluster check`)",
        risks.len()
    )))
}

/// Does the member answer Status on one of its client URLs?
async fn answers_status(m: &Member, dial_timeout: Duration, timeout: Duration) -> bool {
    for u in &m.client_ur_ls {
        let Ok(ch) = client::dial(u, dial_timeout).await else {
            continue;
        };
        let r = unary(
            timeout,
            client::maintenance(ch).status(request(StatusRequest {}, timeout)),
        )
        .await;
        if r.is_ok() {
            return true;
        }
    }
    false
}

/// Streams a snapshot into `file` (via a temp file, fsynced, renamed) and
/// checks its SHA-256 trailer. Returns the size.
async fn save_snapshot(ch: &Channel, file: &Path, timeout: Duration) -> Result<u64, CtlError> {
    let io = |e: std::io::Error| CtlError::new(crate::exit::IO, format!("{}: {e}", file.display()));
    let mut part = file.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut f = std::fs::File::create(&part).map_err(io)?;
    let fetch = async {
        let mut stream = client::maintenance(ch.clone())
            .snapshot(request(SnapshotRequest {}, timeout))
            .await?
            .into_inner();
        let mut hasher = Sha256::new();
        let mut tail: Vec<u8> = Vec::new();
        let mut size = 0u64;
        while let Some(msg) = stream.message().await? {
            f.write_all(&msg.blob).map_err(io)?;
            size += msg.blob.len() as u64;
            tail.extend_from_slice(&msg.blob);
            if tail.len() > 32 {
                let n = tail.len() - 32;
                hasher.update(&tail[..n]);
                tail.drain(..n);
            }
        }
        if tail.len() != 32 || hasher.finalize().as_slice() != tail.as_slice() {
            return Err(CtlError::error(format!(
                "snapshot {} failed its SHA-256 check",
                part.display()
            )));
        }
        f.sync_all().map_err(io)?;
        Ok::<u64, CtlError>(size)
    };
    let r = match tokio::time::timeout(timeout, fetch).await {
        Err(_) => Err(CtlError::deadline_exceeded()),
        Ok(r) => r,
    };
    let size = match r {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, file).map_err(io)?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(size)
}

/// Polls the Health RPC until the learner `id` has caught up (or was
/// promoted by the server), showing its progress.
async fn wait_caught_up(
    ch: &Channel,
    id: u64,
    deadline: Instant,
    timeout: Duration,
    env: &mut Env<'_>,
) -> Result<(), CtlError> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::with_draw_target(
            Some(100),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:40} {pos}% caught up, {elapsed} {msg}")
        {
            pb.set_style(style);
        }
        pb
    });
    let mut last_line = Instant::now() - Duration::from_secs(10);
    let result = loop {
        if Instant::now() >= deadline {
            break Err(CtlError::error(format!(
                "timed out waiting for the new member {id:x} to catch up; is it running? Re-run to continue"
            )));
        }
        match health::fetch(ch.clone(), timeout).await {
            Ok(Some(h)) => match h.members.iter().find(|m| m.id == id) {
                None => {
                    break Err(CtlError::error(format!(
                        "new member {id:x} is no longer in the cluster"
                    )))
                }
                Some(m) if !m.is_learner => break Ok(()),
                Some(m) => {
                    let pct = m.learner_progress_percent.min(100);
                    if let Some(pb) = &bar {
                        pb.set_position(pct as u64);
                        pb.set_message(format!("lag {} entries", m.lag_entries));
                    } else if last_line.elapsed() >= Duration::from_secs(2) {
                        writeln!(
                            env.out.stderr,
                            "  new member {id:x}: {pct}% caught up, lag {} entries{}",
                            m.lag_entries,
                            if m.reachable {
                                ""
                            } else {
                                " (not heard from yet)"
                            }
                        )?;
                        last_line = Instant::now();
                    }
                    if m.reachable && pct >= 100 {
                        break Ok(());
                    }
                }
            },
            Ok(None) => break Ok(()),
            // A leader change mid-wait: ask again.
            Err(_) => {}
        }
        tokio::time::sleep(POLL).await;
    };
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    result
}

/// Promotes `id`, retrying while it is not in sync; "not a learner" is done.
async fn promote(
    ch: &Channel,
    id: u64,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), CtlError> {
    loop {
        let r = unary(
            timeout,
            client::cluster(ch.clone())
                .member_promote(request(MemberPromoteRequest { id }, timeout)),
        )
        .await;
        match r {
            Ok(_) => return Ok(()),
            Err(e) if e.message.contains(NOT_IN_SYNC) => {}
            Err(e) if e.message == NOT_LEARNER => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            // Leader changes and timeouts: retry within the deadline.
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(CtlError::error(format!(
                "timed out waiting to promote {id:x}: it is not in sync with the leader; re-run to continue"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the failure tolerance is at least `before`.
async fn wait_tolerance(
    ch: &Channel,
    before: i32,
    deadline: Instant,
    timeout: Duration,
) -> Result<HealthResponse, CtlError> {
    let mut last = None;
    loop {
        if let Ok(Some(h)) = health::fetch(ch.clone(), timeout).await {
            if h.from_leader && h.failure_tolerance >= before {
                return Ok(h);
            }
            last = Some(h);
        }
        if Instant::now() >= deadline {
            let now = last
                .map(|h| health::summary_line(&h))
                .unwrap_or_else(|| "health unknown".into());
            return Err(CtlError::error(format!(
                "failure tolerance did not come back to {before}: {now}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}
