//! Disaster recovery, end to end: every procedure in
//! `docs/disaster-recovery.md`, run with the commands an operator types —
//! the `quorate` binary for the server and for the offline
//! `quorate snapshot status|restore`, and `etcdctl` for the online steps
//! (snapshot save, member add/remove, compaction, defrag, alarm, hashkv).
//!
//! `etcdctl` (Debian package `etcd-client`, or `ETCDCTL_BIN`) is used when it
//! is installed. Without it, each online step sends the same RPC through the
//! etcd-client crate instead (Maintenance.Snapshot, MemberAdd, Compact,
//! Defragment, Alarm, HashKV), so every test still runs except
//! `etcdctl_snapshot_file_is_accepted_and_restores`, which is about
//! etcdctl's own files and is skipped (it passes, printing why).
//!
//! Servers run on 127.0.0.1 with ports from `common::free_port()`, with the
//! doc's command lines (default heartbeat and election timeout). Every wait
//! and loop is bounded. When a test fails, the servers' logs are printed and
//! their temporary directory is kept.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::cluster::{self, Cluster, Keyspace, Stored};
use common::{etcdctl_bin, free_port, quorate_bin, Server, Target};
use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions, DeleteOptions, GetOptions,
    WatchOptions,
};
use serde_json::Value;

/// Bound for one command (etcdctl or an offline `quorate snapshot ...`).
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to report that it serves clients.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for members to agree on a leader or converge on a revision.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for retrying an operation that fails for a transient reason.
const RETRY_TIMEOUT: Duration = Duration::from_secs(20);
/// Per-request bound of the etcd-client calls made here.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors worth retrying right after a (re)start or a membership change.
const TRANSIENT: &[&str] = &[
    "no leader",
    "leader changed",
    "request timed out",
    "unhealthy cluster",
    "not enough started members",
    "transport error",
    "connection",
];

const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

/// What one command printed and how it exited.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn describe(&self) -> String {
        format!(
            "exit code {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            tail(&self.stdout, 20),
            tail(&self.stderr, 20)
        )
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `program args` (no stdin), bounded by CMD_TIMEOUT; the
/// environment's `ETCDCTL_*` and `QUORATE_*` variables are not passed on.
fn run_cmd(program: &Path, args: &[String]) -> Out {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        let k_str = k.to_string_lossy();
        if k_str.starts_with("ETCDCTL_") || k_str.starts_with("QUORATE_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CMD_TIMEOUT) {
        Ok(Ok(out)) => Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("wait for {} {args:?}: {e}", program.display()),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!(
                "{} {args:?} ran longer than {CMD_TIMEOUT:?}",
                program.display()
            );
        }
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// `quorate <args>` (the offline subcommands).
fn quorate(args: &[String]) -> Out {
    run_cmd(&quorate_bin(), args)
}

/// What `quorate snapshot status FILE -w json` reports.
#[derive(Debug)]
struct SnapStatus {
    hash: u64,
    revision: i64,
    total_key: u64,
    total_size: u64,
}

/// `quorate snapshot status FILE -w json`, which must succeed.
fn snapshot_status(file: &Path) -> SnapStatus {
    let out = quorate(&strings(&[
        "snapshot",
        "status",
        &path_str(file),
        "-w",
        "json",
    ]));
    assert_eq!(
        out.code,
        0,
        "quorate snapshot status {}: {}",
        file.display(),
        out.describe()
    );
    let v: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("snapshot status JSON ({e}): {}", out.stdout));
    let num = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("no {k} in snapshot status JSON: {v}"))
    };
    SnapStatus {
        hash: num("hash"),
        revision: num("revision") as i64,
        total_key: num("totalKey"),
        total_size: num("totalSize"),
    }
}

/// `quorate snapshot restore FILE --name N --data-dir D --initial-cluster IC
/// --initial-cluster-token T --initial-advertise-peer-urls U [extra...]`.
fn restore(file: &Path, node: &Node, initial_cluster: &str, token: &str, extra: &[&str]) -> Out {
    let mut args = strings(&[
        "snapshot",
        "restore",
        &path_str(file),
        "--name",
        &node.name,
        "--data-dir",
        &path_str(&node.data_dir),
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-token",
        token,
        "--initial-advertise-peer-urls",
        &node.peer_url(),
    ]);
    args.extend(strings(extra));
    quorate(&args)
}

// ---------------------------------------------------------------------------
// Server processes started with the doc's command lines
// ---------------------------------------------------------------------------

/// One `quorate` server process (possibly not running).
struct Node {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// true: it serves clients; false: its stderr closed (it exited).
    events: Option<mpsc::Receiver<bool>>,
}

impl Node {
    fn client_url(&self) -> String {
        cluster::url(self.client_port)
    }

    fn peer_url(&self) -> String {
        cluster::url(self.peer_port)
    }
}

/// Server processes in one temporary directory, started and stopped one by
/// one (members of several clusters may live in one fleet).
struct Fleet {
    root: PathBuf,
    tmp: Option<tempfile::TempDir>,
    nodes: Vec<Node>,
    ports: HashSet<u16>,
}

impl Fleet {
    fn new() -> Fleet {
        let tmp = tempfile::tempdir().expect("tempdir");
        Fleet {
            root: tmp.path().to_path_buf(),
            tmp: Some(tmp),
            nodes: Vec::new(),
            ports: HashSet::new(),
        }
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn port(&mut self) -> u16 {
        for _ in 0..100 {
            let p = free_port();
            if self.ports.insert(p) {
                return p;
            }
        }
        panic!("no fresh free port in 100 tries");
    }

    /// A new member `name` with its own ports and data dir `<root>/<name>`
    /// (not created, not started). Returns its index.
    fn add(&mut self, name: &str) -> usize {
        assert!(self.nodes.iter().all(|n| n.name != name), "{name} reused");
        let client_port = self.port();
        let peer_port = self.port();
        self.nodes.push(Node {
            name: name.to_string(),
            client_port,
            peer_port,
            data_dir: self.root.join(name),
            log_path: self.root.join(format!("{name}.log")),
            child: None,
            events: None,
        });
        self.nodes.len() - 1
    }

    /// `name=peer-url,...` of the given members.
    fn initial_cluster(&self, idx: &[usize]) -> String {
        idx.iter()
            .map(|&i| format!("{}={}", self.nodes[i].name, self.nodes[i].peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The doc's server command line for member i (without the program).
    fn server_args(
        &self,
        i: usize,
        initial_cluster: &str,
        token: &str,
        state: &str,
        extra: &[&str],
    ) -> Vec<String> {
        let n = &self.nodes[i];
        let mut args = strings(&[
            "--name",
            &n.name,
            "--data-dir",
            &path_str(&n.data_dir),
            "--listen-client-urls",
            &n.client_url(),
            "--advertise-client-urls",
            &n.client_url(),
            "--listen-peer-urls",
            &n.peer_url(),
            "--initial-advertise-peer-urls",
            &n.peer_url(),
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-token",
            token,
            "--initial-cluster-state",
            state,
        ]);
        args.extend(strings(extra));
        args
    }

    /// Starts member i with `args` without waiting for it to serve.
    fn spawn(&mut self, i: usize, args: &[String]) {
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "{} is already running", n.name);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", n.log_path.display()));
        let _ = writeln!(
            log,
            "=== test: quorate {}",
            args.iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut child = Command::new(quorate_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn quorate");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if !ready && line.contains("serving client requests on ") {
                    ready = true;
                    let _ = tx.send(true);
                }
            }
            let _ = writeln!(log, "=== test: stderr closed");
            let _ = tx.send(false);
        });
        n.child = Some(child);
        n.events = Some(rx);
    }

    /// Waits (≤ READY_TIMEOUT) until member i serves clients.
    fn wait_ready(&mut self, i: usize) {
        let n = &self.nodes[i];
        let got = n.events.as_ref().map(|rx| rx.recv_timeout(READY_TIMEOUT));
        match got {
            Some(Ok(true)) => {}
            Some(Ok(false)) | Some(Err(mpsc::RecvTimeoutError::Disconnected)) => {
                self.fail(&format!("{} exited before serving", self.nodes[i].name))
            }
            Some(Err(mpsc::RecvTimeoutError::Timeout)) => self.fail(&format!(
                "{} did not serve within {READY_TIMEOUT:?}",
                self.nodes[i].name
            )),
            None => self.fail(&format!("{} is not running", self.nodes[i].name)),
        }
    }

    /// Starts every listed member, then waits until each serves (a member
    /// serves only once its cluster has a quorum).
    fn start_all(&mut self, starts: &[(usize, Vec<String>)]) {
        for (i, args) in starts {
            self.spawn(*i, args);
        }
        for (i, _) in starts {
            self.wait_ready(*i);
        }
    }

    /// SIGKILL member i.
    fn kill(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        n.events = None;
    }

    /// SIGTERM member i and wait (≤ 20 s, then SIGKILL) for it to exit.
    fn terminate(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let Some(mut c) = n.child.take() else { return };
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        assert!(
            sent.as_ref().is_ok_and(|st| st.success()),
            "kill -TERM {}: {sent:?}",
            c.id()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("{} still runs 20 s after SIGTERM: SIGKILL", n.name);
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        n.events = None;
    }

    fn endpoint(&self, i: usize) -> String {
        self.nodes[i].client_url()
    }

    fn endpoints(&self, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| self.endpoint(i)).collect()
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log_path).unwrap_or_default()
    }

    fn dump_logs(&self) {
        eprintln!("fleet: data and logs in {}", self.root.display());
        for (i, n) in self.nodes.iter().enumerate() {
            eprintln!(
                "--- {} (client {}, peer {}): {} ---",
                n.name,
                n.client_url(),
                n.peer_url(),
                n.log_path.display()
            );
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(25)..] {
                eprintln!("    {l}");
            }
        }
    }

    fn fail(&self, msg: &str) -> ! {
        self.dump_logs();
        panic!("{msg}");
    }

    /// The index (among `idx`) of the member every answering member agrees
    /// leads, bounded by SETTLE_TIMEOUT.
    async fn leader(&self, idx: &[usize]) -> usize {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let mut st = Vec::new();
            for &i in idx {
                if let Ok(s) = cluster::status(&self.endpoint(i)).await {
                    st.push((i, s));
                }
            }
            let claims: Vec<usize> = st
                .iter()
                .filter(|(_, s)| s.leader != 0 && s.leader == s.id)
                .map(|(i, _)| *i)
                .collect();
            if let [l] = claims[..] {
                let lead = st.iter().find(|(i, _)| *i == l).expect("claimant").1;
                if st.len() == idx.len() && st.iter().all(|(_, s)| s.leader == lead.leader) {
                    return l;
                }
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "no agreed leader among {idx:?} within {SETTLE_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every listed member reports the same local revision
    /// twice in a row (bounded); returns it.
    async fn converge(&self, idx: &[usize]) -> i64 {
        converge(&self.endpoints(idx), || self.dump_logs()).await
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            self.dump_logs();
            if let Some(tmp) = self.tmp.take() {
                eprintln!("fleet: kept {}", tmp.keep().display());
            }
        }
    }
}

/// Waits (≤ SETTLE_TIMEOUT) until every endpoint reports the same local
/// (serializable) revision twice in a row; returns it.
async fn converge(endpoints: &[String], on_fail: impl Fn()) -> i64 {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut clients = Vec::new();
    for ep in endpoints {
        clients.push(cluster::connect(std::slice::from_ref(ep)).await);
    }
    let mut prev = None;
    loop {
        let mut revs = Vec::new();
        for c in clients.iter_mut() {
            revs.push(cluster::local_revision(c).await.ok());
        }
        match revs[0] {
            Some(r) if revs.iter().all(|x| *x == Some(r)) => {
                if prev == Some(r) {
                    return r;
                }
                prev = Some(r);
            }
            _ => prev = None,
        }
        if Instant::now() > deadline {
            on_fail();
            panic!("{endpoints:?} did not converge within {SETTLE_TIMEOUT:?}: {revs:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------
// Online steps: etcdctl when installed, else the same RPC via etcd-client
// ---------------------------------------------------------------------------

struct Ctl {
    etcdctl: Option<PathBuf>,
}

impl Ctl {
    fn new() -> Ctl {
        let etcdctl = etcdctl_bin();
        if etcdctl.is_none() {
            eprintln!(
                "etcdctl not found (Debian package etcd-client, or ETCDCTL_BIN): \
                 the online steps use the etcd-client crate instead"
            );
        }
        Ctl { etcdctl }
    }

    /// `etcdctl --endpoints EPS args...`, off the async threads.
    async fn run(&self, endpoints: &[String], args: &[&str]) -> Out {
        let bin = self.etcdctl.clone().expect("etcdctl");
        let mut full = vec!["--endpoints".to_string(), endpoints.join(",")];
        full.extend(strings(args));
        tokio::task::spawn_blocking(move || run_cmd(&bin, &full))
            .await
            .expect("etcdctl thread")
    }

    /// Runs etcdctl until it exits 0, retrying (bounded) while stderr names
    /// a transient condition; returns stdout.
    async fn ok(&self, endpoints: &[String], args: &[&str]) -> String {
        let deadline = Instant::now() + RETRY_TIMEOUT;
        loop {
            let out = self.run(endpoints, args).await;
            if out.code == 0 {
                return out.stdout;
            }
            if Instant::now() > deadline || !TRANSIENT.iter().any(|t| out.stderr.contains(t)) {
                panic!("etcdctl {args:?} failed: {}", out.describe());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// `etcdctl --endpoints EP snapshot save FILE` (one endpoint).
    async fn snapshot_save(&self, endpoint: &str, file: &Path) {
        if self.etcdctl.is_some() {
            let stdout = self
                .ok(
                    &[endpoint.to_string()],
                    &["snapshot", "save", &path_str(file)],
                )
                .await;
            assert!(
                stdout.contains(&format!("Snapshot saved at {}", file.display())),
                "etcdctl snapshot save printed: {stdout}"
            );
            return;
        }
        // What etcdctl does: write the Maintenance.Snapshot stream as is.
        let mut c = cluster::connect(&[endpoint.to_string()]).await;
        let mut stream = tokio::time::timeout(RPC_TIMEOUT, c.snapshot())
            .await
            .expect("snapshot call timed out")
            .expect("snapshot");
        let mut f = std::fs::File::create(file).expect("create snapshot file");
        let deadline = Instant::now() + CMD_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Ok(Ok(Some(chunk))) => f.write_all(chunk.blob()).expect("write snapshot"),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => panic!("snapshot stream: {e}"),
                Err(_) => panic!("snapshot stream took longer than {CMD_TIMEOUT:?}"),
            }
        }
        f.sync_all().expect("fsync snapshot");
    }

    /// `etcdctl member add NAME --peer-urls=URL`; returns the
    /// `ETCD_INITIAL_CLUSTER` value to start the new member with.
    async fn member_add(&self, endpoints: &[String], name: &str, peer_url: &str) -> String {
        if self.etcdctl.is_some() {
            let peers = format!("--peer-urls={peer_url}");
            let out = self.ok(endpoints, &["member", "add", name, &peers]).await;
            let line = out
                .lines()
                .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
                .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in:\n{out}"));
            return line.trim_matches('"').to_string();
        }
        let client = cluster::connect(endpoints).await;
        let resp = cluster::retry_while(RETRY_TIMEOUT, TRANSIENT, || {
            let mut c = client.clone();
            let urls = vec![peer_url.to_string()];
            async move { c.member_add(urls, None).await }
        })
        .await
        .unwrap_or_else(|e| panic!("member add {name}: {e}"));
        let new_id = resp.member().expect("added member").id();
        // As etcdctl prints it: every member's name (the new one's given
        // here) with each of its peer URLs.
        let mut parts = Vec::new();
        for m in resp.member_list() {
            let n = if m.id() == new_id { name } else { m.name() };
            for u in m.peer_urls() {
                parts.push(format!("{n}={u}"));
            }
        }
        parts.join(",")
    }

    /// `etcdctl member remove <hex id>`.
    async fn member_remove(&self, endpoints: &[String], id: u64) {
        if self.etcdctl.is_some() {
            let hex = format!("{id:x}");
            let out = self.ok(endpoints, &["member", "remove", &hex]).await;
            assert!(out.contains("removed from cluster"), "member remove: {out}");
            return;
        }
        let client = cluster::connect(endpoints).await;
        cluster::retry_while(RETRY_TIMEOUT, TRANSIENT, || {
            let mut c = client.clone();
            async move { c.member_remove(id).await }
        })
        .await
        .unwrap_or_else(|e| panic!("member remove {id:x}: {e}"));
    }

    /// `etcdctl compaction REV --physical`.
    async fn compact_physical(&self, endpoints: &[String], rev: i64) {
        if self.etcdctl.is_some() {
            let out = self
                .ok(endpoints, &["compaction", &rev.to_string(), "--physical"])
                .await;
            assert!(
                out.contains(&format!("compacted revision {rev}")),
                "compaction: {out}"
            );
            return;
        }
        let mut c = cluster::connect(endpoints).await;
        tokio::time::timeout(
            RPC_TIMEOUT,
            c.compact(rev, Some(CompactionOptions::new().with_physical())),
        )
        .await
        .expect("compact timed out")
        .expect("compact");
    }

    /// `etcdctl --endpoints EP1,EP2,... defrag`: every listed member.
    async fn defrag(&self, endpoints: &[String]) {
        if self.etcdctl.is_some() {
            let out = self.ok(endpoints, &["defrag"]).await;
            for ep in endpoints {
                assert!(
                    out.contains(&format!("Finished defragmenting etcd member[{ep}]")),
                    "defrag did not report {ep}: {out}"
                );
            }
            return;
        }
        for ep in endpoints {
            let mut c = cluster::connect(std::slice::from_ref(ep)).await;
            tokio::time::timeout(CMD_TIMEOUT, c.defragment())
                .await
                .expect("defragment timed out")
                .unwrap_or_else(|e| panic!("defragment {ep}: {e}"));
        }
    }

    /// `etcdctl alarm list`: lines `memberID:<id> alarm:<TYPE>`.
    async fn alarm_list(&self, endpoints: &[String]) -> Vec<String> {
        if self.etcdctl.is_some() {
            let out = self.ok(endpoints, &["alarm", "list"]).await;
            return out
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
        }
        let mut c = cluster::connect(endpoints).await;
        let resp = tokio::time::timeout(
            RPC_TIMEOUT,
            c.alarm(AlarmAction::Get, AlarmType::None, None),
        )
        .await
        .expect("alarm list timed out")
        .expect("alarm list");
        resp.alarms()
            .iter()
            .map(|a| {
                let kind = format!("{:?}", a.alarm()).to_uppercase();
                format!("memberID:{} alarm:{kind}", a.member_id())
            })
            .collect()
    }

    /// `etcdctl alarm disarm`: every raised alarm.
    async fn alarm_disarm(&self, endpoints: &[String]) {
        if self.etcdctl.is_some() {
            self.ok(endpoints, &["alarm", "disarm"]).await;
            return;
        }
        let mut c = cluster::connect(endpoints).await;
        let list = tokio::time::timeout(
            RPC_TIMEOUT,
            c.alarm(AlarmAction::Get, AlarmType::None, None),
        )
        .await
        .expect("alarm list timed out")
        .expect("alarm list");
        for a in list.alarms() {
            let mut opts = AlarmOptions::new();
            opts.with_member(a.member_id());
            tokio::time::timeout(
                RPC_TIMEOUT,
                c.alarm(AlarmAction::Deactivate, a.alarm(), Some(opts)),
            )
            .await
            .expect("alarm disarm timed out")
            .expect("alarm disarm");
        }
    }

    /// `etcdctl --endpoints EP1,EP2,... endpoint hashkv`: each member's
    /// hash of its keyspace history at its current revision.
    async fn hashkv(&self, endpoints: &[String]) -> Vec<(String, u64)> {
        if self.etcdctl.is_some() {
            let out = self
                .ok(endpoints, &["endpoint", "hashkv", "-w", "json"])
                .await;
            let v: Value = serde_json::from_str(out.trim())
                .unwrap_or_else(|e| panic!("endpoint hashkv JSON ({e}): {out}"));
            return v
                .as_array()
                .unwrap_or_else(|| panic!("endpoint hashkv: not an array: {v}"))
                .iter()
                .map(|e| {
                    (
                        e["Endpoint"].as_str().unwrap_or_default().to_string(),
                        e["HashKV"]["hash"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
        }
        let mut out = Vec::new();
        for ep in endpoints {
            let mut c = cluster::connect(std::slice::from_ref(ep)).await;
            let h = tokio::time::timeout(RPC_TIMEOUT, c.hash_kv(0))
                .await
                .expect("hashkv timed out")
                .unwrap_or_else(|e| panic!("hashkv {ep}: {e}"));
            out.push((ep.clone(), u64::from(h.hash())));
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Data helpers (etcd-client)
// ---------------------------------------------------------------------------

/// Puts `key`, retrying transient errors; returns the write's revision.
async fn put(c: &Client, key: &str, value: impl Into<Vec<u8>>) -> i64 {
    let value: Vec<u8> = value.into();
    let resp = cluster::retry_while(RETRY_TIMEOUT, TRANSIENT, || {
        let mut c = c.clone();
        let (k, v) = (key.to_string(), value.clone());
        async move { c.put(k, v, None).await }
    })
    .await
    .unwrap_or_else(|e| panic!("put {key}: {e}"));
    resp.header().expect("put header").revision()
}

/// Deletes `key` (or the prefix); returns the revision after it.
async fn delete(c: &Client, key: &str, prefix: bool) -> i64 {
    let resp = cluster::retry_while(RETRY_TIMEOUT, TRANSIENT, || {
        let mut c = c.clone();
        let k = key.to_string();
        let opts = prefix.then(|| DeleteOptions::new().with_prefix());
        async move { c.delete(k, opts).await }
    })
    .await
    .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    resp.header().expect("delete header").revision()
}

/// The store revision a linearizable read sees.
async fn current_revision(c: &Client) -> i64 {
    let resp = cluster::retry_while(RETRY_TIMEOUT, TRANSIENT, || {
        let mut c = c.clone();
        async move { c.get("\0", Some(GetOptions::new().with_count_only())).await }
    })
    .await
    .unwrap_or_else(|e| panic!("read revision: {e}"));
    resp.header().expect("range header").revision()
}

/// Writes a keyspace with some history: `n` keys under `prefix`, every
/// third one overwritten, every seventh deleted. Returns the last revision.
async fn seed(c: &Client, prefix: &str, n: usize) -> i64 {
    let mut rev = 0;
    for i in 0..n {
        rev = put(c, &format!("{prefix}{i:04}"), format!("value-{i}")).await;
    }
    for i in (0..n).step_by(3) {
        rev = put(c, &format!("{prefix}{i:04}"), format!("value-{i}-v2")).await;
    }
    for i in (0..n).step_by(7) {
        rev = delete(c, &format!("{prefix}{i:04}"), false).await;
    }
    rev
}

/// A short description of how two keyspaces differ.
fn diff(a: &BTreeMap<Vec<u8>, Stored>, b: &BTreeMap<Vec<u8>, Stored>) -> String {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("only left: {}", String::from_utf8_lossy(k))),
            Some(w) if w != v => out.push(format!(
                "differs: {}: {v:?} vs {w:?}",
                String::from_utf8_lossy(k)
            )),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.push(format!("only right: {}", String::from_utf8_lossy(k)));
    }
    let n = out.len();
    out.truncate(10);
    format!(
        "{} keys vs {} keys, {n} differences: {}",
        a.len(),
        b.len(),
        out.join("; ")
    )
}

fn assert_same_keyspace(what: &str, expected: &Keyspace, got: &Keyspace) {
    assert!(
        expected.1 == got.1,
        "{what}: keyspace differs ({})",
        diff(&expected.1, &got.1)
    );
}

/// Every listed member's own (serializable) keyspace equals `expected`.
async fn assert_every_member_has(f: &Fleet, idx: &[usize], expected: &Keyspace) {
    for &i in idx {
        let mut c = cluster::connect(&[f.endpoint(i)]).await;
        let got = cluster::read_all(&mut c, true, None).await;
        if got.1 != expected.1 {
            f.fail(&format!(
                "{}'s own data differs: {}",
                f.nodes[i].name,
                diff(&expected.1, &got.1)
            ));
        }
    }
}

/// Every member reports the same HashKV (at the same revision).
async fn assert_same_hashkv(ctl: &Ctl, endpoints: &[String]) {
    let hashes = ctl.hashkv(endpoints).await;
    assert_eq!(hashes.len(), endpoints.len(), "hashkv: {hashes:?}");
    assert!(
        hashes.iter().all(|(_, h)| *h == hashes[0].1),
        "members disagree on hashkv: {hashes:?}"
    );
}

/// The member list as (id, name, peer URLs, is learner).
async fn member_list(endpoints: &[String]) -> Vec<MemberRow> {
    let c = cluster::connect(endpoints).await;
    let list = cluster::retry_while(RETRY_TIMEOUT, TRANSIENT, || {
        let mut c = c.clone();
        async move { c.member_list().await }
    })
    .await
    .expect("member list");
    list.members()
        .iter()
        .map(|m| {
            (
                m.id(),
                m.name().to_string(),
                m.peer_urls().to_vec(),
                m.is_learner(),
            )
        })
        .collect()
}

type MemberRow = (u64, String, Vec<String>, bool);

/// Polls the member list (bounded) until `ok` holds. MemberList is served
/// from the answering member's applied state (as etcd serves it unless
/// asked to be linearizable), so a member that has not applied a change
/// yet still lists the old membership for a moment.
async fn wait_members(
    endpoints: &[String],
    what: &str,
    ok: impl Fn(&[MemberRow]) -> bool,
) -> Vec<MemberRow> {
    let deadline = Instant::now() + RETRY_TIMEOUT;
    loop {
        let members = member_list(endpoints).await;
        if ok(&members) {
            return members;
        }
        if Instant::now() > deadline {
            panic!("member list never showed {what}: {members:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Restores `file` into a fresh data dir for each of `idx` (their own
/// `--name` and `--initial-advertise-peer-urls`, the same
/// `--initial-cluster` and token), then starts them: the doc's whole-cluster
/// restore. Returns the token.
fn restore_and_start(f: &mut Fleet, file: &Path, idx: &[usize], restore_extra: &[&str]) -> String {
    let token = cluster::unique_token();
    let initial = f.initial_cluster(idx);
    for &i in idx {
        let out = restore(file, &f.nodes[i], &initial, &token, restore_extra);
        if out.code != 0 {
            f.fail(&format!(
                "quorate snapshot restore for {}: {}",
                f.nodes[i].name,
                out.describe()
            ));
        }
        assert!(
            out.stdout.contains("restored snapshot (revision "),
            "restore printed: {}",
            out.describe()
        );
    }
    let starts: Vec<(usize, Vec<String>)> = idx
        .iter()
        .map(|&i| (i, f.server_args(i, &initial, &token, "new", &[])))
        .collect();
    f.start_all(&starts);
    token
}

/// The doc's command for the newest automatic snapshot in directory `$1`
/// (the highest revision in the file names).
const NEWEST_SNAPSHOT_SH: &str = r#"ls "$1" | sed -n 's/^quorate-.*-rev\([0-9]*\)\.snap$/\1 &/p' | sort -n | tail -n 1 | cut -d' ' -f2"#;

/// The revision in an automatic snapshot's name
/// `quorate-<member>-<unixsecs>-rev<revision>.snap`.
fn auto_snapshot_revision(name: &str) -> Option<(i64, u64)> {
    let stem = name.strip_prefix("quorate-")?.strip_suffix(".snap")?;
    let (rest, rev) = stem.rsplit_once("-rev")?;
    let (_, secs) = rest.rsplit_once('-')?;
    Some((rev.parse().ok()?, secs.parse().ok()?))
}

/// The newest automatic snapshot in `dir`: the highest revision (then the
/// latest time), as the doc tells operators to pick it.
fn newest_auto_snapshot(dir: &Path) -> Option<(PathBuf, i64)> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            auto_snapshot_revision(&name).map(|(rev, secs)| (rev, secs, e.path()))
        })
        .max_by_key(|(rev, secs, _)| (*rev, *secs))
        .map(|(rev, _, p)| (p, rev))
}

#[test]
fn auto_snapshot_names_parse() {
    assert_eq!(
        auto_snapshot_revision("quorate-m0-1795622879-rev51.snap"),
        Some((51, 1795622879))
    );
    assert_eq!(
        auto_snapshot_revision("quorate-my-member-0000000012-rev7.snap"),
        Some((7, 12))
    );
    assert_eq!(auto_snapshot_revision(".quorate-m0-1.snap.tmp"), None);
    assert_eq!(auto_snapshot_revision("quorate-m0-1-rev2.snap.tmp"), None);
}

// ---------------------------------------------------------------------------
// 1. Backup under writes, restore into a new 3-member cluster
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_under_writes_restores_into_a_new_three_member_cluster() {
    let ctl = Ctl::new();
    let src = Cluster::start_target(Target::Quorate, 3);
    let client = src.client_all().await;
    let seeded = seed(&client, "seed/", 150).await;

    // A writer that overwrites and deletes keys while the snapshot is taken
    // (bounded in count and time).
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        let mut c = src.client_all().await;
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut errors = Vec::new();
            for n in 0..20_000u64 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let key = format!("load/{:03}", n % 97);
                match tokio::time::timeout(RPC_TIMEOUT, c.put(key, format!("w{n}"), None)).await {
                    Ok(Ok(_)) => {
                        written.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Err(e)) => errors.push(e.to_string()),
                    Err(_) => errors.push("put timed out".into()),
                }
                if n % 11 == 0 {
                    let key = format!("load/{:03}", (n + 5) % 97);
                    if let Err(e) = c.delete(key, None).await {
                        errors.push(e.to_string());
                    }
                }
            }
            errors
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while written.load(Ordering::SeqCst) < 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = written.load(Ordering::SeqCst);
    assert!(before > 0, "the writer made no progress");

    let backups = tempfile::tempdir().expect("tempdir");
    let file = backups.path().join("backup.db");
    ctl.snapshot_save(&src.endpoint(0), &file).await;
    let during = written.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    let errors = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("writer did not stop")
        .expect("writer task");
    assert!(errors.is_empty(), "writes failed: {errors:?}");

    let st = snapshot_status(&file);
    let final_rev = current_revision(&client).await;
    eprintln!(
        "snapshot at revision {} ({} keys, {} bytes); {during} writes during the save; \
         source now at revision {final_rev}",
        st.revision, st.total_key, st.total_size
    );
    assert!(
        st.revision >= seeded && st.revision <= final_rev,
        "snapshot revision {} outside [{seeded}, {final_rev}]",
        st.revision
    );
    // The source as it was at the snapshot's revision.
    let mut rc = src.client_all().await;
    let expected = cluster::read_all(&mut rc, false, Some(st.revision)).await;
    let expected_seeded = cluster::read_all(&mut rc, false, Some(seeded)).await;

    let mut f = Fleet::new();
    let idx: Vec<usize> = ["r0", "r1", "r2"].iter().map(|n| f.add(n)).collect();
    restore_and_start(&mut f, &file, &idx, &[]);
    let eps = f.endpoints(&idx);
    let new = cluster::connect(&eps).await;
    let mut nc = new.clone();
    let got = cluster::read_all(&mut nc, false, None).await;
    assert_eq!(
        got.0, st.revision,
        "the restored cluster's revision is the snapshot's"
    );
    assert_same_keyspace(
        "restored vs source at the snapshot revision",
        &expected,
        &got,
    );
    // The history before the snapshot came along.
    let got_seeded = cluster::read_all(&mut nc, false, Some(seeded)).await;
    assert_same_keyspace(
        "restored vs source at an older revision",
        &expected_seeded,
        &got_seeded,
    );
    assert_eq!(f.converge(&idx).await, st.revision);
    assert_every_member_has(&f, &idx, &expected).await;
    assert_same_hashkv(&ctl, &eps).await;
    wait_members(&eps, "three members", |m| m.len() == 3).await;

    // A cluster of its own: writes go on from the snapshot's revision and
    // never reach the source.
    let rev = put(&new, "after-restore", "x").await;
    assert_eq!(rev, st.revision + 1);
    let mut sc = src.client_all().await;
    let resp = sc.get("after-restore", None).await.expect("get on source");
    assert!(
        resp.kvs().is_empty(),
        "the source saw the new cluster's write"
    );
}

// ---------------------------------------------------------------------------
// 2. --bump-revision/--mark-compacted
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bump_revision_and_mark_compacted_cancel_old_watches() {
    let ctl = Ctl::new();
    let src = Server::start_with_args(&[]);
    let sclient = cluster::connect(std::slice::from_ref(&src.endpoint)).await;
    seed(&sclient, "k/", 40).await;
    let old = current_revision(&sclient).await;
    let backups = tempfile::tempdir().expect("tempdir");
    let file = backups.path().join("backup.db");
    ctl.snapshot_save(&src.endpoint, &file).await;
    assert_eq!(snapshot_status(&file).revision, old);
    let mut sc = sclient.clone();
    let expected = cluster::read_all(&mut sc, false, Some(old)).await;

    let mut f = Fleet::new();
    let idx: Vec<usize> = ["r0", "r1", "r2"].iter().map(|n| f.add(n)).collect();
    restore_and_start(
        &mut f,
        &file,
        &idx,
        &["--bump-revision", "1000", "--mark-compacted"],
    );
    let eps = f.endpoints(&idx);
    let c = cluster::connect(&eps).await;
    let mut rc = c.clone();
    let got = cluster::read_all(&mut rc, false, None).await;
    assert!(
        got.0 > old + 1000 - 1,
        "restored revision {} is not past {old} + 1000",
        got.0
    );
    assert_same_keyspace("data after a bumped restore", &expected, &got);

    // A watcher resuming from a revision of the old cluster is told that
    // it was compacted (and so re-lists), instead of missing events.
    let mut w = tokio::time::timeout(
        RPC_TIMEOUT,
        rc.watch(
            "k/",
            Some(WatchOptions::new().with_prefix().with_start_revision(old)),
        ),
    )
    .await
    .expect("watch timed out")
    .expect("watch");
    let mut canceled = None;
    for _ in 0..3 {
        let r = tokio::time::timeout(RPC_TIMEOUT, w.message())
            .await
            .expect("no watch response")
            .expect("watch stream")
            .expect("watch stream ended");
        if r.canceled() {
            canceled = Some(r);
            break;
        }
        assert!(
            r.events().is_empty(),
            "events from a compacted revision: {r:?}"
        );
    }
    let canceled = canceled.expect("the watch from an old revision was not canceled");
    assert!(
        canceled.compact_revision() > old,
        "compact_revision {} in {canceled:?}",
        canceled.compact_revision()
    );
    assert_eq!(canceled.compact_revision(), got.0, "{canceled:?}");

    // Old revisions cannot be read either.
    let err = rc
        .get(
            "k/",
            Some(GetOptions::new().with_prefix().with_revision(old)),
        )
        .await
        .expect_err("read at a revision of the old cluster");
    assert!(
        err.to_string()
            .contains("required revision has been compacted"),
        "{err}"
    );

    // New writes continue from the bumped revision, and a watch from there
    // sees them.
    let mut w = tokio::time::timeout(
        RPC_TIMEOUT,
        rc.watch(
            "k/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(got.0 + 1),
            ),
        ),
    )
    .await
    .expect("watch timed out")
    .expect("watch");
    let rev = put(&c, "k/new", "v").await;
    assert_eq!(rev, got.0 + 1);
    let mut seen = None;
    for _ in 0..3 {
        let r = tokio::time::timeout(RPC_TIMEOUT, w.message())
            .await
            .expect("no watch response")
            .expect("watch stream")
            .expect("watch stream ended");
        assert!(!r.canceled(), "{r:?}");
        if let Some(ev) = r.events().first() {
            seen = ev.kv().map(|kv| (kv.key().to_vec(), kv.mod_revision()));
            break;
        }
    }
    assert_eq!(seen, Some((b"k/new".to_vec(), rev)));
}

// ---------------------------------------------------------------------------
// 3. Lose a majority; recover from the newest automatic snapshot
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lose_two_of_three_recover_from_newest_automatic_snapshot() {
    let ctl = Ctl::new();
    let mut f = Fleet::new();
    let snapdir = f.root().join("snapshots");
    let snapdir_s = path_str(&snapdir);
    let old: Vec<usize> = ["m0", "m1", "m2"].iter().map(|n| f.add(n)).collect();
    let token = cluster::unique_token();
    let initial = f.initial_cluster(&old);
    let extra = [
        "--auto-snapshot-interval",
        "1s",
        "--auto-snapshot-dir",
        snapdir_s.as_str(),
        "--auto-snapshot-retention",
        "3",
    ];
    let starts: Vec<(usize, Vec<String>)> = old
        .iter()
        .map(|&i| (i, f.server_args(i, &initial, &token, "new", &extra)))
        .collect();
    f.start_all(&starts);
    let client = cluster::connect(&f.endpoints(&old)).await;
    let last = seed(&client, "data/", 200).await;

    // Wait for an automatic snapshot that covers the last write.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let (file, rev) = loop {
        if let Some((p, rev)) = newest_auto_snapshot(&snapdir) {
            if rev >= last {
                break (p, rev);
            }
        }
        if Instant::now() > deadline {
            f.fail(&format!(
                "no automatic snapshot at revision >= {last} in {} within {SETTLE_TIMEOUT:?}",
                snapdir.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut rc = client.clone();
    let expected = cluster::read_all(&mut rc, false, Some(rev)).await;
    drop(rc);
    drop(client);

    // Lose the leader and one follower, data dirs and all.
    let leader = f.leader(&old).await;
    let other = *old.iter().find(|&&i| i != leader).expect("a follower");
    let survivor = *old
        .iter()
        .find(|&&i| i != leader && i != other)
        .expect("a survivor");
    for i in [leader, other] {
        f.kill(i);
        std::fs::remove_dir_all(&f.nodes[i].data_dir).expect("delete data dir");
    }
    // The old cluster is stopped for good before the new one starts.
    f.terminate(survivor);

    let (newest, newest_rev) = newest_auto_snapshot(&snapdir).expect("a snapshot");
    assert!(newest_rev >= rev, "{newest:?} older than {file:?}");
    // The doc's shell line picks the same file.
    let picked = run_cmd(
        Path::new("/bin/sh"),
        &strings(&["-c", NEWEST_SNAPSHOT_SH, "sh", &snapdir_s]),
    );
    assert_eq!(picked.code, 0, "{}", picked.describe());
    let picked = snapdir.join(picked.stdout.trim());
    assert_eq!(
        snapshot_status(&picked).revision,
        newest_rev,
        "the doc's command picked {}",
        picked.display()
    );
    let st = snapshot_status(&newest);
    assert_eq!(st.revision, newest_rev, "status of {}", newest.display());

    let new: Vec<usize> = ["n0", "n1", "n2"].iter().map(|n| f.add(n)).collect();
    restore_and_start(&mut f, &newest, &new, &[]);
    let eps = f.endpoints(&new);
    let mut nc = cluster::connect(&eps).await;
    let got = cluster::read_all(&mut nc, false, None).await;
    assert_eq!(got.0, newest_rev);
    assert_same_keyspace("recovered from the automatic snapshot", &expected, &got);
    f.converge(&new).await;
    assert_every_member_has(&f, &new, &expected).await;
    assert_same_hashkv(&ctl, &eps).await;
    put(&nc, "after-recovery", "x").await;
}

/// Moves leadership to member `to` (MoveLeader sent to the current
/// leader) and waits until every member agrees.
async fn move_leader(f: &Fleet, idx: &[usize], to: usize) {
    let target = cluster::status(&f.endpoint(to)).await.expect("status").id;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let leader = f.leader(idx).await;
        if leader == to {
            return;
        }
        let mut c = cluster::connect(&[f.endpoint(leader)]).await;
        let r = tokio::time::timeout(RPC_TIMEOUT, c.move_leader(target)).await;
        if Instant::now() > deadline {
            f.fail(&format!("leadership did not move to {to}: {r:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn snapshot_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// With one `--auto-snapshot-dir` shared by every member, the snapshots a
/// new leader takes must be kept (retention prunes the oldest), whatever
/// the members' names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_auto_snapshot_dir_keeps_the_new_leaders_snapshots() {
    let mut f = Fleet::new();
    let snapdir = f.root().join("snapshots");
    let snapdir_s = path_str(&snapdir);
    let idx: Vec<usize> = ["m0", "m1", "m2"].iter().map(|n| f.add(n)).collect();
    let token = cluster::unique_token();
    let initial = f.initial_cluster(&idx);
    let extra = [
        "--auto-snapshot-interval",
        "1s",
        "--auto-snapshot-dir",
        snapdir_s.as_str(),
        "--auto-snapshot-retention",
        "2",
    ];
    let starts: Vec<(usize, Vec<String>)> = idx
        .iter()
        .map(|&i| (i, f.server_args(i, &initial, &token, "new", &extra)))
        .collect();
    f.start_all(&starts);
    let client = cluster::connect(&f.endpoints(&idx)).await;
    put(&client, "k", "v1").await;

    // m2 leads and fills the retention with its snapshots.
    move_leader(&f, &idx, idx[2]).await;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while snapshot_names(&snapdir)
        .iter()
        .filter(|n| n.starts_with("quorate-m2-"))
        .count()
        < 2
    {
        if Instant::now() > deadline {
            f.fail(&format!(
                "m2 took no 2 snapshots: {:?}",
                snapshot_names(&snapdir)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Leadership moves to m0 (whose file names sort first); its snapshots
    // of a newer revision must show up and stay.
    move_leader(&f, &idx, idx[0]).await;
    let rev = put(&client, "k", "v2").await;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        if newest_auto_snapshot(&snapdir).is_some_and(|(_, r)| r >= rev) {
            break;
        }
        if Instant::now() > deadline {
            let log = f.log(idx[0]);
            let saved: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("automatic snapshot saved"))
                .collect();
            f.fail(&format!(
                "no snapshot at revision >= {rev} kept in {}: {:?}; m0 logged {} saves, last: {:?}",
                snapdir.display(),
                snapshot_names(&snapdir),
                saved.len(),
                saved.last()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------
// 4. --force-new-cluster on the survivor, then grow back to 3
// ---------------------------------------------------------------------------

/// A 3-member cluster after a disaster: seeded, converged, then the leader
/// and another member killed with their data dirs deleted. The survivor
/// is still running.
struct LostMajority {
    f: Fleet,
    token: String,
    initial: String,
    /// The keyspace every member had applied before the disaster.
    expected: Keyspace,
    survivor: usize,
}

async fn lose_majority() -> LostMajority {
    let mut f = Fleet::new();
    let old: Vec<usize> = ["m0", "m1", "m2"].iter().map(|n| f.add(n)).collect();
    let token = cluster::unique_token();
    let initial = f.initial_cluster(&old);
    let starts: Vec<(usize, Vec<String>)> = old
        .iter()
        .map(|&i| (i, f.server_args(i, &initial, &token, "new", &[])))
        .collect();
    f.start_all(&starts);
    let client = cluster::connect(&f.endpoints(&old)).await;
    seed(&client, "data/", 200).await;
    f.converge(&old).await;
    let mut rc = client.clone();
    let expected = cluster::read_all(&mut rc, false, None).await;
    let leader = f.leader(&old).await;
    let other = *old.iter().find(|&&i| i != leader).expect("a follower");
    let survivor = *old
        .iter()
        .find(|&&i| i != leader && i != other)
        .expect("a survivor");
    for i in [leader, other] {
        f.kill(i);
        std::fs::remove_dir_all(&f.nodes[i].data_dir).expect("delete data dir");
    }
    LostMajority {
        f,
        token,
        initial,
        expected,
        survivor,
    }
}

/// Starts the (stopped) survivor once with `--force-new-cluster` and
/// checks the warning, the one-member list and the data.
async fn force_new_cluster(lost: &mut LostMajority) -> Client {
    let s = lost.survivor;
    let f = &mut lost.f;
    let args = f.server_args(
        s,
        &lost.initial,
        &lost.token,
        "new",
        &["--force-new-cluster"],
    );
    f.start_all(&[(s, args)]);
    if !f
        .log(s)
        .contains("--force-new-cluster: starting as the ONLY member")
    {
        f.fail("no --force-new-cluster warning in the survivor's log");
    }
    let eps = f.endpoints(&[s]);
    let members = member_list(&eps).await;
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0].1, f.nodes[s].name);
    let c = cluster::connect(&eps).await;
    let mut cc = c.clone();
    let got = cluster::read_all(&mut cc, false, None).await;
    if got.1 != lost.expected.1 {
        f.fail(&format!(
            "the survivor lost data with --force-new-cluster (revision {} -> {}): {}",
            lost.expected.0,
            got.0,
            diff(&lost.expected.1, &got.1)
        ));
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_on_survivor_then_grow_back_to_three() {
    let ctl = Ctl::new();
    let mut lost = lose_majority().await;
    let s = lost.survivor;
    // Stop the survivor and start it once with --force-new-cluster.
    lost.f.terminate(s);
    let c = force_new_cluster(&mut lost).await;
    put(&c, "after-force", "x").await;
    let LostMajority {
        mut f,
        token,
        initial,
        expected,
        ..
    } = lost;
    let eps = f.endpoints(&[s]);

    // Restart it without the flag, as every later start must be.
    f.terminate(s);
    let args = f.server_args(s, &initial, &token, "new", &[]);
    f.start_all(&[(s, args)]);
    assert_eq!(member_list(&eps).await.len(), 1);

    // Grow back one member at a time: member add, then start it with
    // --initial-cluster-state existing and the printed --initial-cluster.
    let mut running = vec![s];
    for name in ["m3", "m4"] {
        let i = f.add(name);
        let peer = f.nodes[i].peer_url();
        let initial = ctl.member_add(&f.endpoints(&running), name, &peer).await;
        let args = f.server_args(i, &initial, &token, "existing", &[]);
        f.start_all(&[(i, args)]);
        running.push(i);
        f.converge(&running).await;
    }
    let eps = f.endpoints(&running);
    wait_members(&eps, "three started voters", |m| {
        m.len() == 3
            && m.iter()
                .all(|(_, name, _, learner)| !name.is_empty() && !learner)
    })
    .await;
    let mut cc = cluster::connect(&eps).await;
    let now = cluster::read_all(&mut cc, false, None).await;
    let mut want = expected.clone();
    want.1.extend(
        now.1
            .iter()
            .filter(|(k, _)| k.as_slice() == b"after-force")
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    assert_eq!(want.1.len(), expected.1.len() + 1, "after-force missing");
    assert_same_keyspace("grown cluster", &want, &now);
    assert_every_member_has(&f, &running, &now).await;
    assert_same_hashkv(&ctl, &eps).await;
    // The new members take writes (a quorum of the three).
    let newest = running[2];
    let nc = cluster::connect(&[f.endpoint(newest)]).await;
    put(&nc, "after-grow", "x").await;
}

/// The survivor may have crashed too (the site lost power): every write it
/// had applied must still be there after `--force-new-cluster`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_keeps_every_write_after_the_survivor_crashed() {
    let mut lost = lose_majority().await;
    let s = lost.survivor;
    lost.f.kill(s);
    let c = force_new_cluster(&mut lost).await;
    put(&c, "after-force", "x").await;
}

// ---------------------------------------------------------------------------
// 5. Damaged snapshot files are refused
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_bit_flipped_snapshots_are_refused() {
    let ctl = Ctl::new();
    let src = Server::start_with_args(&[]);
    let c = cluster::connect(std::slice::from_ref(&src.endpoint)).await;
    seed(&c, "k/", 60).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let good_path = dir.path().join("good.db");
    ctl.snapshot_save(&src.endpoint, &good_path).await;
    snapshot_status(&good_path);
    let good = std::fs::read(&good_path).expect("read snapshot");
    let len = good.len();
    assert!(len > 1024, "snapshot of {len} bytes is too small to cut");
    // etcd's layout: content padded to 512 bytes, then a 32-byte SHA-256.
    assert_eq!((len - 32) % 512, 0, "{len} bytes is not etcd's layout");

    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x01;
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("half", good[..len / 2].to_vec()),
        ("last-byte-missing", good[..len - 1].to_vec()),
        ("checksum-missing", good[..len - 32].to_vec()),
        // Still looks checksummed (512 × k + 32 bytes): the hash must fail.
        ("cut-at-block", good[..len - 512].to_vec()),
        ("flip-first-byte", flip(0)),
        ("flip-middle", flip(len / 2)),
        ("flip-checksum", flip(len - 1)),
    ];
    let restore_root = dir.path().join("restores");
    std::fs::create_dir(&restore_root).expect("mkdir");
    for (name, bytes) in &cases {
        let file = dir.path().join(format!("{name}.db"));
        std::fs::write(&file, bytes).expect("write case");
        let file_s = path_str(&file);

        let out = quorate(&strings(&["snapshot", "status", &file_s]));
        check_refused(name, "snapshot status", &file, &out);

        let data_dir = restore_root.join(name);
        let out = quorate(&strings(&[
            "snapshot",
            "restore",
            &file_s,
            "--name",
            "r0",
            "--data-dir",
            &path_str(&data_dir),
            "--initial-cluster",
            "r0=http://127.0.0.1:2380",
            "--initial-cluster-token",
            "dr-test",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
        ]));
        check_refused(name, "snapshot restore", &file, &out);
        assert!(
            !data_dir.exists(),
            "{name}: restore left {data_dir:?} behind"
        );
        let left: Vec<_> = std::fs::read_dir(&restore_root)
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{name}: restore left {left:?} behind");
    }

    // --skip-hash-check skips only the file's SHA-256: a damaged checksum
    // is then ignored, but damaged content is still caught by the records'
    // own checksums.
    let skip = |name: &str| {
        let file = dir.path().join(format!("{name}.db"));
        let data_dir = restore_root.join(format!("{name}-skip"));
        let out = quorate(&strings(&[
            "snapshot",
            "restore",
            &path_str(&file),
            "--name",
            "r0",
            "--data-dir",
            &path_str(&data_dir),
            "--initial-cluster",
            "r0=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--skip-hash-check",
        ]));
        (out, data_dir)
    };
    let (out, data_dir) = skip("flip-middle");
    check_refused(
        "flip-middle --skip-hash-check",
        "snapshot restore",
        &dir.path().join("flip-middle.db"),
        &out,
    );
    assert!(!data_dir.exists());
    let (out, data_dir) = skip("flip-checksum");
    assert_eq!(out.code, 0, "{}", out.describe());
    assert!(data_dir.join("member").is_dir());
}

/// A damaged file: non-zero exit, nothing on stdout, and an `Error: ...`
/// that names the file and says what is wrong with it.
fn check_refused(case: &str, cmd: &str, file: &Path, out: &Out) {
    assert_ne!(out.code, 0, "{case}: {cmd} accepted it: {}", out.describe());
    assert!(
        out.stdout.trim().is_empty(),
        "{case}: {cmd} printed: {}",
        out.describe()
    );
    let err = out.stderr.trim();
    let name = file.file_name().expect("name").to_string_lossy();
    let lower = err.to_lowercase();
    assert!(
        err.starts_with("Error: ")
            && err.contains(name.as_ref())
            && ["truncated", "damaged", "corrupt", "mismatch", "not a valid"]
                .iter()
                .any(|w| lower.contains(w)),
        "{case}: {cmd}: unclear message: {}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------
// 6. NOSPACE: raised by a small quota, cleared by compact + defrag + disarm
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_cleared_by_compaction_defrag_and_disarm() {
    const QUOTA: u64 = 1024 * 1024;
    let ctl = Ctl::new();
    let mut f = Fleet::new();
    let idx: Vec<usize> = ["m0", "m1", "m2"].iter().map(|n| f.add(n)).collect();
    let token = cluster::unique_token();
    let initial = f.initial_cluster(&idx);
    let quota = QUOTA.to_string();
    let starts: Vec<(usize, Vec<String>)> = idx
        .iter()
        .map(|&i| {
            (
                i,
                f.server_args(
                    i,
                    &initial,
                    &token,
                    "new",
                    &["--quota-backend-bytes", quota.as_str()],
                ),
            )
        })
        .collect();
    f.start_all(&starts);
    let eps = f.endpoints(&idx);
    let c = cluster::connect(&eps).await;
    put(&c, "small", "s").await;

    // Overwrite one key with 100 KB values until the quota refuses.
    let big = vec![b'x'; 100 * 1024];
    let mut refused = None;
    for n in 0..200 {
        let mut cc = c.clone();
        match tokio::time::timeout(RPC_TIMEOUT, cc.put("big", big.clone(), None)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                refused = Some((n, e.to_string()));
                break;
            }
            Err(_) => f.fail("put timed out"),
        }
    }
    let Some((n, err)) = refused else {
        f.fail("200 × 100 KB overwrites never exceeded a 1 MiB quota");
    };
    assert!(err.contains(NOSPACE), "write {n} failed with: {err}");
    eprintln!("NOSPACE after {n} overwrites");

    // The alarm is the cluster's: every member refuses writes (bounded wait
    // for the alarm to be applied everywhere), and lists it.
    for ep in &eps {
        let mut mc = cluster::connect(std::slice::from_ref(ep)).await;
        let deadline = Instant::now() + RETRY_TIMEOUT;
        loop {
            match mc.put("small", "t", None).await {
                Err(e) if e.to_string().contains(NOSPACE) => break,
                r if Instant::now() > deadline => f.fail(&format!("put via {ep}: {r:?}")),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    // The alarm is raised asynchronously by the member that refused a
    // write (as etcd does): wait (bounded) until it is listed.
    let deadline = Instant::now() + RETRY_TIMEOUT;
    loop {
        let alarms = ctl.alarm_list(&eps).await;
        if !alarms.is_empty() {
            assert!(
                alarms.iter().all(|a| a.ends_with("alarm:NOSPACE")),
                "alarm list: {alarms:?}"
            );
            break;
        }
        if Instant::now() > deadline {
            f.fail("no NOSPACE alarm listed");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Reads and deletes go on.
    let mut rc = c.clone();
    let resp = rc.get("big", None).await.expect("read under NOSPACE");
    assert_eq!(resp.kvs()[0].value().len(), big.len());
    delete(&c, "small", false).await;

    // Recovery: compact away the old revisions, defragment every member,
    // then disarm.
    let rev = current_revision(&c).await;
    ctl.compact_physical(&eps, rev).await;
    ctl.defrag(&eps).await;
    ctl.alarm_disarm(&eps).await;
    // Quorate answers an alarm list from the member's applied state (etcd
    // sends it through Raft), so another member may list the alarm until
    // it has applied the disarm: wait (bounded).
    let deadline = Instant::now() + RETRY_TIMEOUT;
    let mut tries = 0;
    loop {
        let alarms = ctl.alarm_list(&eps).await;
        tries += 1;
        if alarms.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            f.fail(&format!("alarms left after disarm: {alarms:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if tries > 1 {
        eprintln!(
            "alarm list showed the alarm {} more time(s) after disarm",
            tries - 1
        );
    }
    for ep in &eps {
        let mut mc = cluster::connect(std::slice::from_ref(ep)).await;
        let st = mc.status().await.expect("status");
        assert!(
            (st.db_size() as u64) < QUOTA,
            "{ep}: db size {} still over the quota after defrag",
            st.db_size()
        );
    }
    // Writes work again, through every member.
    for ep in &eps {
        let mc = cluster::connect(std::slice::from_ref(ep)).await;
        let r = cluster::retry_while(RETRY_TIMEOUT, &[NOSPACE], || {
            let mut mc = mc.clone();
            async move { mc.put("small", "again", None).await }
        })
        .await;
        if let Err(e) = r {
            f.fail(&format!("write via {ep} after disarm: {e}"));
        }
    }
    let mut rc = c.clone();
    let resp = rc.get("big", None).await.expect("read");
    assert_eq!(resp.kvs()[0].value(), big.as_slice());
}

// ---------------------------------------------------------------------------
// 7. etcdctl's snapshot file from a Quorate cluster
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_snapshot_file_is_accepted_and_restores() {
    let ctl = Ctl::new();
    if ctl.etcdctl.is_none() {
        eprintln!("skipped: etcdctl not found (install Debian package etcd-client)");
        return;
    }
    let src = Cluster::start_target(Target::Quorate, 3);
    let client = src.client_all().await;
    seed(&client, "app/", 120).await;
    let rev = current_revision(&client).await;
    let mut sc = client.clone();
    let expected = cluster::read_all(&mut sc, false, Some(rev)).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("etcdctl-backup.db");
    let out = ctl
        .run(&[src.endpoint(1)], &["snapshot", "save", &path_str(&file)])
        .await;
    assert_eq!(out.code, 0, "etcdctl snapshot save: {}", out.describe());
    assert!(
        out.stdout.contains("Snapshot saved at"),
        "{}",
        out.describe()
    );

    let st = snapshot_status(&file);
    assert_eq!(st.revision, rev);
    assert_eq!(
        st.total_size,
        std::fs::metadata(&file).expect("stat").len(),
        "{st:?}"
    );
    let simple = quorate(&strings(&["snapshot", "status", &path_str(&file)]));
    assert_eq!(simple.code, 0, "{}", simple.describe());
    let fields: Vec<&str> = simple.stdout.trim().split(", ").collect();
    assert_eq!(fields.len(), 4, "simple status: {}", simple.stdout);
    assert_eq!(fields[0], format!("{:x}", st.hash));
    assert_eq!(fields[1], rev.to_string());
    let table = quorate(&strings(&[
        "snapshot",
        "status",
        &path_str(&file),
        "-w",
        "table",
    ]));
    assert_eq!(table.code, 0, "{}", table.describe());
    assert!(
        table.stdout.contains("REVISION") && table.stdout.contains(&rev.to_string()),
        "{}",
        table.stdout
    );

    // Restore as a single-member cluster.
    let mut f = Fleet::new();
    let r = f.add("default");
    restore_and_start(&mut f, &file, &[r], &[]);
    let eps = f.endpoints(&[r]);
    let mut rc = cluster::connect(&eps).await;
    let got = cluster::read_all(&mut rc, false, None).await;
    assert_eq!(got.0, rev);
    assert_same_keyspace("restored etcdctl snapshot", &expected, &got);
    let out = ctl
        .run(
            &eps,
            &["get", "app/", "--prefix", "--keys-only", "-w", "json"],
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.describe());
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("get JSON");
    let app_keys = expected.1.keys().filter(|k| k.starts_with(b"app/")).count();
    assert_eq!(v["count"].as_u64(), Some(app_keys as u64), "{v}");

    // Restoring over an existing data dir is refused and changes nothing.
    let listing = |p: &Path| {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(p.join("member"))
            .expect("list")
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect();
        v.sort();
        v
    };
    f.terminate(r);
    let before = listing(&f.nodes[r].data_dir);
    let token = cluster::unique_token();
    let out = restore(&file, &f.nodes[r], &f.initial_cluster(&[r]), &token, &[]);
    assert_ne!(out.code, 0, "restore over a data dir: {}", out.describe());
    assert!(
        out.stderr.contains("already exists and is not empty"),
        "{}",
        out.describe()
    );
    assert_eq!(listing(&f.nodes[r].data_dir), before);
}

// ---------------------------------------------------------------------------
// 8. Defragmentation gives space back
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defrag_shrinks_the_database_after_delete_and_compaction() {
    let ctl = Ctl::new();
    let srv = Server::start_with_args(&[]);
    let eps = vec![srv.endpoint.clone()];
    let c = cluster::connect(&eps).await;
    put(&c, "keep", "kept").await;
    let value = vec![b'v'; 8 * 1024];
    for i in 0..400 {
        put(&c, &format!("bulk/{i:04}"), value.clone()).await;
    }
    delete(&c, "bulk/", true).await;
    let rev = current_revision(&c).await;
    ctl.compact_physical(&eps, rev).await;

    let store_file = srv.data_dir.join("member").join("store.redb");
    let mut sc = c.clone();
    let db_before = sc.status().await.expect("status").db_size();
    let file_before = std::fs::metadata(&store_file).expect("stat").len();
    let hash_before = sc.hash_kv(rev).await.expect("hashkv").hash();

    ctl.defrag(&eps).await;

    let db_after = sc.status().await.expect("status").db_size();
    let file_after = std::fs::metadata(&store_file).expect("stat").len();
    eprintln!("db size {db_before} -> {db_after}; store file {file_before} -> {file_after}");
    assert!(
        db_after < db_before,
        "Status dbSize did not shrink: {db_before} -> {db_after}"
    );
    assert!(
        file_after < file_before,
        "store file did not shrink: {file_before} -> {file_after}"
    );
    // Same content: the same keyspace hash at the same revision.
    let hash_after = sc.hash_kv(rev).await.expect("hashkv").hash();
    assert_eq!(hash_before, hash_after, "defrag changed the keyspace hash");
    let resp = sc.get("keep", None).await.expect("get");
    assert_eq!(resp.kvs()[0].value(), b"kept");
    let resp = sc
        .get(
            "bulk/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert_eq!(resp.count(), 0);
    put(&c, "after-defrag", "x").await;
}

// ---------------------------------------------------------------------------
// 9. Replace one member: remove first, then add
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_one_member_remove_then_add() {
    let ctl = Ctl::new();
    let mut f = Fleet::new();
    let old: Vec<usize> = ["m0", "m1", "m2"].iter().map(|n| f.add(n)).collect();
    let token = cluster::unique_token();
    let initial = f.initial_cluster(&old);
    let starts: Vec<(usize, Vec<String>)> = old
        .iter()
        .map(|&i| (i, f.server_args(i, &initial, &token, "new", &[])))
        .collect();
    f.start_all(&starts);
    let client = cluster::connect(&f.endpoints(&old)).await;
    seed(&client, "data/", 100).await;

    // The member on a failed machine: a follower, gone with its data.
    let leader = f.leader(&old).await;
    let dead = *old.iter().find(|&&i| i != leader).expect("a follower");
    let dead_id = cluster::status(&f.endpoint(dead)).await.expect("status").id;
    f.kill(dead);
    std::fs::remove_dir_all(&f.nodes[dead].data_dir).expect("delete data dir");
    let alive: Vec<usize> = old.iter().copied().filter(|&i| i != dead).collect();

    // 1. Remove it.
    ctl.member_remove(&f.endpoints(&alive), dead_id).await;
    wait_members(&f.endpoints(&alive), "the dead member removed", |m| {
        m.len() == 2 && m.iter().all(|m| m.0 != dead_id)
    })
    .await;
    // 2. Add the replacement and start it with an empty data dir.
    let r = f.add("m3");
    let peer = f.nodes[r].peer_url();
    let initial = ctl.member_add(&f.endpoints(&alive), "m3", &peer).await;
    let args = f.server_args(r, &initial, &token, "existing", &[]);
    f.start_all(&[(r, args)]);
    let mut all = alive.clone();
    all.push(r);
    f.converge(&all).await;

    let eps = f.endpoints(&all);
    wait_members(&eps, "m3 as a started voter", |m| {
        m.len() == 3
            && m.iter()
                .any(|m| m.1 == "m3" && m.2 == vec![peer.clone()] && !m.3)
    })
    .await;
    let mut cc = cluster::connect(&eps).await;
    let expected = cluster::read_all(&mut cc, false, None).await;
    assert_every_member_has(&f, &all, &expected).await;
    assert_same_hashkv(&ctl, &eps).await;
    let nc = cluster::connect(&[f.endpoint(r)]).await;
    put(&nc, "after-replace", "x").await;
}
