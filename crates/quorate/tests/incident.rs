//! The incident from ../shared/incident-report.txt, replayed against a real
//! Quorate cluster:
//!
//! (a) the unsafe sequence: a member dies and a replacement is added as a
//!     voter without removing the dead one first. Quorate refuses the add
//!     with the numbers and the remedy; `cluster check` reports the risk and
//!     exits non-zero; `member list -w table` shows the member unreachable.
//! (b) the safe sequence: `quoratectl member replace` for all three members
//!     one after another under continuous writes; no acknowledged write is
//!     lost and the failure tolerance (polled through the Health RPC) never
//!     goes negative.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{self, Cluster};
use common::Target;
use quorate_proto::etcdserverpb::kv_client::KvClient;
use quorate_proto::etcdserverpb::{PutRequest, RangeRequest};
use quorate_proto::quorate::v1::cluster_health_client::ClusterHealthClient;
use quorate_proto::quorate::v1::HealthRequest;

/// Upper bound for the whole background load and the health poller.
const LOAD_LIMIT: Duration = Duration::from_secs(240);
/// Upper bound on writes.
const MAX_WRITES: u64 = 200_000;
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ctl(endpoints: &[String], args: &[&str]) -> Run {
    let out = Command::new(common::quoratectl_bin())
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .output()
        .expect("run quoratectl");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn channel(ep: &str) -> Option<tonic::transport::Channel> {
    let ep = tonic::transport::Endpoint::from_shared(ep.to_string())
        .ok()?
        .connect_timeout(Duration::from_secs(1));
    tokio::time::timeout(Duration::from_secs(2), ep.connect())
        .await
        .ok()?
        .ok()
}

/// Continuous writes against whichever of the current endpoints answers.
struct Load {
    stop: Arc<AtomicBool>,
    endpoints: Arc<Mutex<Vec<String>>>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(endpoints: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let eps = Arc::new(Mutex::new(endpoints));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let (s, e, a) = (stop.clone(), eps.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            rt().block_on(async move {
                let start = Instant::now();
                let mut n = 0u64;
                let mut next_ep = 0usize;
                while !s.load(Ordering::SeqCst) && start.elapsed() < LOAD_LIMIT && n < MAX_WRITES {
                    let list = e.lock().unwrap().clone();
                    let ep = list[next_ep % list.len()].clone();
                    let Some(ch) = channel(&ep).await else {
                        next_ep += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let mut kv = KvClient::new(ch);
                    // Write on this connection until it fails.
                    while !s.load(Ordering::SeqCst) && start.elapsed() < LOAD_LIMIT {
                        let key = format!("incident/{n:08}");
                        let val = format!("v{n}");
                        let put = kv.put(PutRequest {
                            key: key.clone().into_bytes(),
                            value: val.clone().into_bytes(),
                            ..Default::default()
                        });
                        match tokio::time::timeout(Duration::from_secs(3), put).await {
                            Ok(Ok(_)) => {
                                a.lock().unwrap().insert(key, val);
                                n += 1;
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            _ => {
                                n += 1; // never reuse a key whose fate is unknown
                                break;
                            }
                        }
                    }
                    next_ep += 1;
                }
            })
        });
        Load {
            stop,
            endpoints: eps,
            acked,
            thread: Some(thread),
        }
    }

    fn set_endpoints(&self, eps: Vec<String>) {
        *self.endpoints.lock().unwrap() = eps;
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn stop(&mut self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Waits until `n` more writes were acknowledged (bounded).
fn wait_writes(c: &Cluster, load: &Load, n: usize) {
    let target = load.acked() + n;
    let deadline = Instant::now() + POLL_TIMEOUT;
    while load.acked() < target {
        if Instant::now() >= deadline {
            c.fail(&format!("writes stalled at {}", load.acked()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls the Health RPC; records the lowest failure tolerance seen.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    endpoints: Arc<Mutex<Vec<String>>>,
    min: Arc<Mutex<(i32, String)>>,
    polls: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthWatch {
    fn start(endpoints: Vec<String>) -> HealthWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let eps = Arc::new(Mutex::new(endpoints));
        let min = Arc::new(Mutex::new((i32::MAX, String::new())));
        let polls = Arc::new(Mutex::new(0u64));
        let (s, e, m, p) = (stop.clone(), eps.clone(), min.clone(), polls.clone());
        let thread = std::thread::spawn(move || {
            rt().block_on(async move {
                let start = Instant::now();
                let mut i = 0usize;
                while !s.load(Ordering::SeqCst) && start.elapsed() < LOAD_LIMIT {
                    let list = e.lock().unwrap().clone();
                    i += 1;
                    let ep = list[i % list.len()].clone();
                    if let Some(ch) = channel(&ep).await {
                        let mut h = ClusterHealthClient::new(ch);
                        let r = tokio::time::timeout(
                            Duration::from_secs(2),
                            h.health(HealthRequest {}),
                        )
                        .await;
                        // Only the leader knows who is reachable; a
                        // follower answers with its own view when there
                        // is no leader to ask (e.g. right after the leader
                        // was killed).
                        if let Ok(Ok(r)) = r {
                            let r = r.into_inner();
                            if !r.from_leader {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                            *p.lock().unwrap() += 1;
                            let mut g = m.lock().unwrap();
                            if r.failure_tolerance < g.0 {
                                *g = (
                                    r.failure_tolerance,
                                    format!(
                                        "{} voters, {} reachable, quorum {}: {:?} (at {:?}, reporter {:x}, from_leader {}, leader {:x}, term {}, members {:?})",
                                        r.voters, r.reachable_voters, r.quorum, r.warnings,
                                        start.elapsed(), r.reporter_id, r.from_leader, r.leader_id, r.raft_term,
                                        r.members.iter().map(|m| (m.name.clone(), m.is_learner, m.reachable, m.last_seen_ms_ago)).collect::<Vec<_>>()
                                    ),
                                );
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        });
        HealthWatch {
            stop,
            endpoints: eps,
            min,
            polls,
            thread: Some(thread),
        }
    }

    fn set_endpoints(&self, eps: Vec<String>) {
        *self.endpoints.lock().unwrap() = eps;
    }

    fn stop(&mut self) -> ((i32, String), u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.min.lock().unwrap().clone(),
            *self.polls.lock().unwrap(),
        )
    }
}

fn member_hex(c: &Cluster, eps: &[String], name: &str) -> String {
    let r = ctl(eps, &["member", "list"]);
    r.stdout
        .lines()
        .find(|l| l.split(", ").nth(2) == Some(name))
        .and_then(|l| l.split(", ").next())
        .map(str::to_string)
        .unwrap_or_else(|| c.fail(&format!("no member {name} in {}{}", r.stdout, r.stderr)))
}

fn wait_healthy(c: &Cluster, eps: &[String], summary: &str) {
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        let r = ctl(eps, &["member", "list", "-w", "table"]);
        if r.code == 0 && r.stdout.contains(summary) && !r.stdout.contains("not from the leader") {
            return;
        }
        if Instant::now() >= deadline {
            c.fail(&format!("never saw {summary:?}: {}{}", r.stdout, r.stderr));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn unsafe_sequence_is_refused_and_reported() {
    if Target::from_env() == Target::Etcd {
        return;
    }
    let mut c = Cluster::start(3);
    let mut load = Load::start(c.endpoints());
    wait_healthy(&c, &c.endpoints(), "failure tolerance 1");
    wait_writes(&c, &load, 20);
    let m1 = member_hex(&c, &c.endpoints(), "m1");

    c.kill(1);
    let live = vec![c.endpoint(0), c.endpoint(2)];
    load.set_endpoints(live.clone());
    wait_healthy(
        &c,
        &live,
        "3 voters, 2 reachable, quorum 2, failure tolerance 0",
    );

    // The replacement added as a voter without removing m1: 2 of 4 would
    // be reachable with a quorum of 3. Refused, with the numbers and remedy.
    let (peer, _client) = cluster::free_port_pair();
    let peer_url = cluster::url(peer);
    let msg = rt().block_on(async {
        let mut cl = cluster::connect(&live).await;
        match cl.member_add(vec![peer_url.clone()], None).await {
            Ok(r) => format!("unexpectedly added: {r:?}"),
            Err(e) => e.to_string(),
        }
    });
    for want in [
        "refusing to add a voter",
        "2 of 3 voters reachable",
        "quorum would be 3 of 4",
        &format!("quoratectl member remove {m1}"),
    ] {
        assert!(msg.contains(want), "{want:?} not in {msg}");
    }
    // etcdctl (if installed) gets the same refusal.
    if let Some(etcdctl) = common::etcdctl_bin() {
        let out = Command::new(etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", live.join(",")))
            .args([
                "member",
                "add",
                "m1-new",
                &format!("--peer-urls={peer_url}"),
            ])
            .output()
            .expect("etcdctl");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("refusing to add a voter"), "{err}");
        assert!(
            err.contains(&format!("quoratectl member remove {m1}")),
            "{err}"
        );
    }

    let r = ctl(&live, &["cluster", "check"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("risk: failure tolerance 0"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("quoratectl member remove {m1}")),
        "{}",
        r.stdout
    );

    let r = ctl(&live, &["member", "list", "-w", "table"]);
    let row = r
        .stdout
        .lines()
        .find(|l| l.contains(" m1 |"))
        .unwrap_or_default();
    assert!(row.contains("unreachable"), "{}", r.stdout);

    // Writes still flow (2 of 3), and none acknowledged was lost.
    wait_writes(&c, &load, 20);
    let acked = load.stop();
    check_acked(&c, &live, &acked);
}

/// Every acknowledged write is readable (linearizable) with its value.
fn check_acked(c: &Cluster, eps: &[String], acked: &BTreeMap<String, String>) {
    let got: BTreeMap<String, String> = rt().block_on(async {
        for ep in eps {
            let Some(ch) = channel(ep).await else {
                continue;
            };
            let r = KvClient::new(ch)
                .range(RangeRequest {
                    key: b"incident/".to_vec(),
                    range_end: b"incident0".to_vec(),
                    ..Default::default()
                })
                .await;
            if let Ok(r) = r {
                return r
                    .into_inner()
                    .kvs
                    .into_iter()
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(&kv.key).into_owned(),
                            String::from_utf8_lossy(&kv.value).into_owned(),
                        )
                    })
                    .collect();
            }
        }
        c.fail("no member answered the final read")
    });
    for (k, v) in acked {
        match got.get(k) {
            Some(g) if g == v => {}
            other => c.fail(&format!("acknowledged {k}={v} lost: {other:?}")),
        }
    }
}

#[test]
fn safe_sequence_replaces_every_member() {
    if Target::from_env() == Target::Etcd {
        return;
    }
    let mut c = Cluster::start(3);
    let mut live: Vec<usize> = vec![0, 1, 2];
    let eps_of = |c: &Cluster, live: &[usize]| -> Vec<String> {
        live.iter().map(|&i| c.endpoint(i)).collect()
    };
    let mut load = Load::start(c.endpoints());
    wait_healthy(&c, &c.endpoints(), "failure tolerance 1");
    let mut watch = HealthWatch::start(c.endpoints());
    wait_writes(&c, &load, 20);
    let snaps = tempfile::tempdir().expect("tempdir");

    for old in 0..3usize {
        let old_name = format!("m{old}");
        let new_name = format!("n{old}");
        let eps = eps_of(&c, &live);
        wait_healthy(&c, &eps, "failure tolerance 1");
        // m0 and m2 have died (the incident's case); m1 is replaced alive.
        let stop_old = old == 1;
        if !stop_old {
            c.kill(old);
            live.retain(|&i| i != old);
            let eps = eps_of(&c, &live);
            load.set_endpoints(eps.clone());
            watch.set_endpoints(eps.clone());
            wait_healthy(&c, &eps, "failure tolerance 0");
        }
        let eps = eps_of(&c, &live);
        let (peer, idx) = run_replace(&mut c, &eps, &old_name, &new_name, stop_old, snaps.path());
        if let Err(e) = c.wait_ready(idx) {
            c.fail(&format!("{new_name} not ready: {e}"));
        }
        if stop_old {
            // A removed member stops by itself; make sure it is gone.
            c.kill(old);
        }
        live.retain(|&i| i != old);
        live.push(idx);
        let eps = eps_of(&c, &live);
        load.set_endpoints(eps.clone());
        watch.set_endpoints(eps.clone());
        wait_healthy(
            &c,
            &eps,
            "3 voters, 3 reachable, quorum 2, failure tolerance 1",
        );
        // Idempotent: a re-run finds everything done.
        if old == 0 {
            let r = ctl(
                &eps,
                &[
                    "member",
                    "replace",
                    &old_name,
                    "--name",
                    &new_name,
                    &format!("--peer-urls={}", cluster::url(peer)),
                    &format!(
                        "--snapshot-file={}",
                        snaps.path().join("rerun.db").display()
                    ),
                    "--timeout=30s",
                ],
            );
            assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
            assert!(r.stdout.contains("already removed"), "{}", r.stdout);
            assert!(r.stdout.contains("already added"), "{}", r.stdout);
        }
        wait_writes(&c, &load, 20);
    }

    let eps = eps_of(&c, &live);
    let acked = load.stop();
    let ((min_tolerance, at), polls) = watch.stop();
    assert!(polls > 10, "health polled only {polls} times");
    assert!(
        min_tolerance >= 0,
        "quorum lost: tolerance {min_tolerance} at {at}"
    );
    assert!(acked.len() > 60, "only {} writes acknowledged", acked.len());
    check_acked(&c, &eps, &acked);
    let r = ctl(&eps, &["member", "list"]);
    for n in ["n0", "n1", "n2"] {
        assert!(r.stdout.contains(&format!(", {n}, ")), "{}", r.stdout);
    }
}

/// Runs `quoratectl member replace`, starts the new member as it says, and
/// waits for quoratectl to finish. Returns the new member's peer port and
/// harness index.
fn run_replace(
    c: &mut Cluster,
    eps: &[String],
    old_name: &str,
    new_name: &str,
    stop_old: bool,
    snap_dir: &std::path::Path,
) -> (u16, usize) {
    let (peer, client) = cluster::free_port_pair();
    let snap = snap_dir.join(format!("before-{new_name}.db"));
    let mut cmd = Command::new(common::quoratectl_bin());
    cmd.arg(format!("--endpoints={}", eps.join(",")))
        .args(["member", "replace", old_name, "--name", new_name])
        .arg(format!("--peer-urls={}", cluster::url(peer)))
        .arg(format!("--snapshot-file={}", snap.display()))
        .arg("--timeout=60s")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stop_old {
        cmd.arg("--stop-old");
    }
    let mut child = cmd.spawn().expect("spawn quoratectl");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut transcript = String::new();
    let mut initial_cluster = None;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        transcript.push_str(&line);
        transcript.push('\n');
        if let Some(v) = line.trim().strip_prefix("ETCD_INITIAL_CLUSTER=") {
            initial_cluster = Some(v.to_string());
        }
        if line.trim().starts_with("flags:") {
            break;
        }
    }
    let Some(initial_cluster) = initial_cluster else {
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        c.fail(&format!(
            "replace {old_name}: no start instructions:\n{transcript}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    };
    assert!(
        initial_cluster.contains(&format!("{new_name}={}", cluster::url(peer))),
        "{initial_cluster}"
    );
    assert!(
        !initial_cluster.contains(&format!("{old_name}=")),
        "{initial_cluster}"
    );
    let idx = c.add_member_process(new_name, peer, client, &initial_cluster);
    // The rest of quoratectl's output; it exits by itself (--timeout).
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        transcript.push_str(&line);
        transcript.push('\n');
    }
    let out = child.wait_with_output().expect("wait quoratectl");
    if !out.status.success() {
        c.fail(&format!(
            "replace {old_name} failed ({:?}):\n{transcript}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprintln!("quoratectl member replace {old_name}:\n{transcript}");
    assert!(transcript.contains("SHA-256 verified"), "{transcript}");
    assert!(snap.exists());
    (peer, idx)
}

/// (c) The same procedure against etcd 3.4 (no Health RPC): the dead
/// member is found dead by its Status, catch-up by retried promotes.
#[test]
fn safe_replace_against_etcd() {
    if common::etcd_bin().is_none() {
        eprintln!("skipping: no etcd binary");
        return;
    }
    let mut c = Cluster::start_target(Target::Etcd, 3);
    let mut load = Load::start(c.endpoints());
    wait_writes(&c, &load, 20);
    let snaps = tempfile::tempdir().expect("tempdir");
    c.kill(0);
    let eps = vec![c.endpoint(1), c.endpoint(2)];
    load.set_endpoints(eps.clone());
    let r = ctl(&eps, &["cluster", "check"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("liveness is not available from etcd"),
        "{}",
        r.stderr
    );
    let r = ctl(&eps, &["member", "list", "-w", "table"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("only means the member booted once"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("HEALTH"), "{}", r.stdout);

    let (_peer, idx) = run_replace(&mut c, &eps, "m0", "n0", false, snaps.path());
    if let Err(e) = c.wait_ready(idx) {
        c.fail(&format!("n0 not ready: {e}"));
    }
    let eps = vec![c.endpoint(1), c.endpoint(2), c.endpoint(idx)];
    load.set_endpoints(eps.clone());
    wait_writes(&c, &load, 20);
    let acked = load.stop();
    check_acked(&c, &eps, &acked);
    let r = ctl(&eps, &["member", "list"]);
    assert!(r.stdout.contains(", n0, "), "{}", r.stdout);
    assert!(!r.stdout.contains(", m0, "), "{}", r.stdout);
    assert!(
        !r.stdout.contains("true"),
        "a learner is left: {}",
        r.stdout
    );
}
