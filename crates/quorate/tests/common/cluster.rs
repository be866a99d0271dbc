//! Multi-member cluster harness: runs n real server processes on 127.0.0.1,
//! bootstrapped with etcd's static-bootstrap flags, identical for quorate
//! and etcd (`QUORATE_TEST_TARGET=etcd` runs `etcd` from `$ETCD_BIN` or
//! PATH instead of quorate):
//!
//! ```text
//! --name m{i} --data-dir <tmp>/m{i}
//! --listen-client-urls http://127.0.0.1:{c} --advertise-client-urls http://127.0.0.1:{c}
//! --listen-peer-urls http://127.0.0.1:{p} --initial-advertise-peer-urls http://127.0.0.1:{p}
//! --initial-cluster m0=http://127.0.0.1:{p0},m1=... --initial-cluster-token <unique>
//! --initial-cluster-state new --heartbeat-interval 50 --election-timeout 500
//! ```
//!
//! Every member's stderr goes to its own log file (`<tmp>/m{i}.log`, all
//! incarnations appended, each starting with a `=== harness:` line). When a
//! test panics, the harness prints the log paths and the tail of each log
//! and keeps the temporary directory.
//!
//! Readiness: quorate logs `serving client requests on http://...`; etcd
//! logs `ready to serve client requests` (a cluster member only once a
//! quorum is up, so `start` launches every process before waiting).
//!
//! Everything here is bounded in time.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions, GetOptions};

use super::{etcd_bin, free_port, quorate_bin, Target};

pub const HEARTBEAT_INTERVAL_MS: u64 = 50;
pub const ELECTION_TIMEOUT_MS: u64 = 500;
/// How long a member may take to report that it serves clients.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `leader()` waits for an agreed leader.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Per-request timeout of the clients made here.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `terminate` waits for a clean exit before SIGKILL.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(20);
/// Keys per page when reading a whole keyspace.
pub const PAGE: i64 = 500;

static CLUSTERS: AtomicU64 = AtomicU64::new(0);

/// A token no other cluster uses (in this run or, practically, any other).
pub fn unique_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "quorate-test-{}-{}-{nanos}",
        std::process::id(),
        CLUSTERS.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// What a member's log pump reports.
enum Event {
    Ready,
    Exited,
}

/// One member process (possibly not running).
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub initial_cluster: String,
    pub initial_cluster_state: String,
    pub token: String,
    child: Option<Child>,
    events: Option<mpsc::Receiver<Event>>,
    /// Byte offset in the log file where the current incarnation starts.
    log_start: u64,
    incarnation: u32,
    /// Exit status of the last incarnation that exited.
    last_exit: Option<ExitStatus>,
    id: Option<u64>,
}

impl Member {
    pub fn client_url(&self) -> String {
        url(self.client_port)
    }

    pub fn peer_url(&self) -> String {
        url(self.peer_port)
    }
}

/// n members of one cluster plus any processes added later.
pub struct Cluster {
    pub target: Target,
    pub token: String,
    pub members: Vec<Member>,
    root: PathBuf,
    tmp: Option<tempfile::TempDir>,
    /// Quorate only: leave `--auto-promote-learners` on (off by default in
    /// the harness, since the shared tests promote explicitly as on etcd).
    pub auto_promote: bool,
}

/// n distinct free ports (a port may come back twice from the OS).
fn distinct_ports(n: usize, taken: &mut HashSet<u16>) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n * 20 + 20 {
        if out.len() == n {
            break;
        }
        let p = free_port();
        if taken.insert(p) {
            out.push(p);
        }
    }
    assert_eq!(out.len(), n, "could not find {n} distinct free ports");
    out
}

/// A port pair (peer, client) for a member added at runtime.
pub fn free_port_pair() -> (u16, u16) {
    let ports = distinct_ports(2, &mut HashSet::new());
    (ports[0], ports[1])
}

impl Cluster {
    /// Starts an n-member cluster of the target chosen by
    /// `QUORATE_TEST_TARGET` and waits until every member serves clients.
    pub fn start(n: usize) -> Cluster {
        Self::start_target(Target::from_env(), n)
    }

    pub fn start_target(target: Target, n: usize) -> Cluster {
        assert!(n >= 1);
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        let token = unique_token();
        let mut taken = HashSet::new();
        let peers = distinct_ports(n, &mut taken);
        let clients = distinct_ports(n, &mut taken);
        let initial_cluster = (0..n)
            .map(|i| format!("m{i}={}", url(peers[i])))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            target,
            token: token.clone(),
            members: Vec::new(),
            root: root.clone(),
            tmp: Some(tmp),
            auto_promote: false,
        };
        for i in 0..n {
            let name = format!("m{i}");
            c.members.push(Member {
                data_dir: root.join(&name),
                log_path: root.join(format!("{name}.log")),
                name,
                client_port: clients[i],
                peer_port: peers[i],
                initial_cluster: initial_cluster.clone(),
                initial_cluster_state: "new".to_string(),
                token: token.clone(),
                child: None,
                events: None,
                log_start: 0,
                incarnation: 0,
                last_exit: None,
                id: None,
            });
        }
        // All processes first: an etcd member is only ready once a quorum
        // is up.
        for i in 0..n {
            c.spawn(i);
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = c.wait_ready_for(i, left) {
                c.fail(&format!("cluster did not start: {e}"));
            }
        }
        c
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The temporary directory that holds data dirs and logs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Client URLs of all members the harness knows (running or not).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url()).collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    pub fn peer_url(&self, i: usize) -> String {
        self.members[i].peer_url()
    }

    /// `name=peer-url` pairs of the given members, comma-separated.
    pub fn initial_cluster_of(&self, idx: &[usize]) -> String {
        idx.iter()
            .map(|&i| format!("{}={}", self.members[i].name, self.members[i].peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn program(&self) -> PathBuf {
        match self.target {
            Target::Quorate => quorate_bin(),
            Target::Etcd => etcd_bin()
                .expect("QUORATE_TEST_TARGET=etcd needs an etcd binary (ETCD_BIN or PATH)"),
        }
    }

    fn ready_marker(&self) -> &'static str {
        match self.target {
            Target::Quorate => "serving client requests on ",
            Target::Etcd => "ready to serve client requests",
        }
    }

    /// The command line of member i (without the program).
    pub fn args(&self, i: usize) -> Vec<String> {
        let m = &self.members[i];
        vec![
            "--name".into(),
            m.name.clone(),
            "--data-dir".into(),
            m.data_dir.display().to_string(),
            "--listen-client-urls".into(),
            m.client_url(),
            "--advertise-client-urls".into(),
            m.client_url(),
            "--listen-peer-urls".into(),
            m.peer_url(),
            "--initial-advertise-peer-urls".into(),
            m.peer_url(),
            "--initial-cluster".into(),
            m.initial_cluster.clone(),
            "--initial-cluster-token".into(),
            m.token.clone(),
            "--initial-cluster-state".into(),
            m.initial_cluster_state.clone(),
            "--heartbeat-interval".into(),
            HEARTBEAT_INTERVAL_MS.to_string(),
            "--election-timeout".into(),
            ELECTION_TIMEOUT_MS.to_string(),
        ]
    }

    /// Starts member i's process (it must not be running) without waiting
    /// for it to serve.
    pub fn spawn(&mut self, i: usize) {
        assert!(
            self.members[i].child.is_none(),
            "{} is already running",
            self.members[i].name
        );
        let program = self.program();
        let marker = self.ready_marker();
        let args = self.args(i);
        let target = self.target;
        let m = &mut self.members[i];
        m.incarnation += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", m.log_path.display()));
        m.log_start = log.seek(SeekFrom::End(0)).unwrap_or(0);
        let _ = writeln!(
            log,
            "=== harness: starting {} (incarnation {}): {} {}",
            m.name,
            m.incarnation,
            program.display(),
            args.join(" ")
        );
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if target == Target::Quorate {
            cmd.env("RUST_LOG", "info");
            // The shared tests promote learners explicitly, as on etcd;
            // auto-promotion has its own test.
            if !self.auto_promote {
                cmd.arg("--auto-promote-learners=false");
            }
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || pump(stderr, log, marker, tx));
        m.child = Some(child);
        m.events = Some(rx);
        m.last_exit = None;
    }

    /// Waits (≤ READY_TIMEOUT) until member i serves clients.
    pub fn wait_ready(&mut self, i: usize) -> Result<(), String> {
        self.wait_ready_for(i, READY_TIMEOUT)
    }

    pub fn wait_ready_for(&mut self, i: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let m = &mut self.members[i];
        let Some(rx) = m.events.as_ref() else {
            return Err(format!("{} is not running", m.name));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Ready) => Ok(()),
            Ok(Event::Exited) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = m
                    .child
                    .as_mut()
                    .and_then(|c| wait_child(c, Duration::from_secs(5)));
                Err(format!(
                    "{} exited before serving ({status:?}); log {}",
                    m.name,
                    m.log_path.display()
                ))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "{} did not serve within {timeout:?}; log {}",
                m.name,
                m.log_path.display()
            )),
        }
    }

    /// Whether member i's process is alive.
    pub fn is_running(&mut self, i: usize) -> bool {
        let m = &mut self.members[i];
        match m.child.as_mut() {
            None => false,
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                Ok(Some(st)) => {
                    m.last_exit = Some(st);
                    m.child = None;
                    false
                }
                Err(_) => false,
            },
        }
    }

    /// Waits (bounded) for member i's process to exit by itself; returns
    /// its exit status, or `None` if it still runs after `timeout`.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let m = &mut self.members[i];
        let Some(c) = m.child.as_mut() else {
            return m.last_exit;
        };
        let st = wait_child(c, timeout)?;
        m.child = None;
        m.last_exit = Some(st);
        Some(st)
    }

    /// SIGKILL member i (no-op if it is not running).
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            m.last_exit = c.wait().ok();
        }
        m.events = None;
    }

    /// SIGTERM member i and wait (≤ TERMINATE_TIMEOUT, then SIGKILL) for it
    /// to exit; returns the exit status.
    pub fn terminate(&mut self, i: usize) -> Option<ExitStatus> {
        let m = &mut self.members[i];
        let mut c = m.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let st = match wait_child(&mut c, TERMINATE_TIMEOUT) {
            Some(st) => Some(st),
            None => {
                let _ = c.kill();
                c.wait().ok()
            }
        };
        m.last_exit = st;
        m.events = None;
        st
    }

    /// Kills member i if it runs, starts it again with the same flags, data
    /// dir and ports, and waits until it serves.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        if let Err(e) = self.wait_ready(i) {
            self.fail(&format!("restart: {e}"));
        }
    }

    /// Starts a process for a member just added with `member add`:
    /// `--initial-cluster-state existing`, a fresh data dir `<tmp>/<name>`.
    /// Does not wait for it to serve (see `wait_ready`). Returns its index.
    pub fn add_member_process(
        &mut self,
        name: &str,
        peer_port: u16,
        client_port: u16,
        initial_cluster: &str,
    ) -> usize {
        let dir = self.root.join(name);
        self.add_member_process_in(name, peer_port, client_port, initial_cluster, &dir)
    }

    /// Like `add_member_process` with a given data dir (which may already
    /// hold data, e.g. another cluster's).
    pub fn add_member_process_in(
        &mut self,
        name: &str,
        peer_port: u16,
        client_port: u16,
        initial_cluster: &str,
        data_dir: &Path,
    ) -> usize {
        assert!(
            self.members.iter().all(|m| m.name != name),
            "member name {name} already used"
        );
        self.members.push(Member {
            name: name.to_string(),
            client_port,
            peer_port,
            data_dir: data_dir.to_path_buf(),
            log_path: self.root.join(format!("{name}.log")),
            initial_cluster: initial_cluster.to_string(),
            initial_cluster_state: "existing".to_string(),
            token: self.token.clone(),
            child: None,
            events: None,
            log_start: 0,
            incarnation: 0,
            last_exit: None,
            id: None,
        });
        let i = self.members.len() - 1;
        self.spawn(i);
        i
    }

    /// Everything member i logged, all incarnations.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log_path).unwrap_or_default()
    }

    /// What member i's current (or last) incarnation logged.
    pub fn current_log(&self, i: usize) -> String {
        let m = &self.members[i];
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&m.log_path) {
            if f.seek(SeekFrom::Start(m.log_start)).is_ok() {
                let _ = f.read_to_string(&mut s);
            }
        }
        s
    }

    pub fn log_paths(&self) -> Vec<PathBuf> {
        self.members.iter().map(|m| m.log_path.clone()).collect()
    }

    /// Prints where the logs are and the tail of each.
    pub fn dump_logs(&self) {
        eprintln!(
            "cluster harness ({:?}, token {}): data and logs in {}",
            self.target,
            self.token,
            self.root.display()
        );
        for (i, m) in self.members.iter().enumerate() {
            eprintln!(
                "--- {} (client {}, peer {}): log {} ---",
                m.name,
                m.client_url(),
                m.peer_url(),
                m.log_path.display()
            );
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(25)..] {
                eprintln!("    {l}");
            }
        }
    }

    /// Prints the logs and panics.
    pub fn fail(&self, msg: &str) -> ! {
        self.dump_logs();
        panic!("{msg}");
    }

    // ---- clients ----

    /// A client for all the harness's members.
    pub async fn client_all(&self) -> Client {
        connect(&self.endpoints()).await
    }

    /// A client for member i only.
    pub async fn client(&self, i: usize) -> Client {
        connect(&[self.endpoint(i)]).await
    }

    /// Status of every running member (`None` where it did not answer).
    pub async fn statuses(&mut self) -> Vec<Option<MemberStatus>> {
        let mut out = Vec::new();
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                out.push(None);
                continue;
            }
            let st = status(&self.endpoint(i)).await.ok();
            if let Some(st) = st {
                self.members[i].id = Some(st.id);
            }
            out.push(st);
        }
        out
    }

    /// The leader's index and term if exactly one member claims to lead
    /// and every member that answered agrees with it (and, with `all`,
    /// every running member answered), all in one term.
    async fn agreed_leader(&mut self, all: bool) -> Result<(usize, u64), String> {
        let running: Vec<bool> = (0..self.members.len())
            .map(|i| self.is_running(i))
            .collect();
        let st = self.statuses().await;
        let answered: Vec<(usize, MemberStatus)> = st
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)))
            .collect();
        let claims: Vec<usize> = answered
            .iter()
            .filter(|(_, s)| s.leader != 0 && s.id == s.leader)
            .map(|(i, _)| *i)
            .collect();
        let describe = || format!("statuses {st:x?}");
        if all && running.iter().zip(&st).any(|(r, s)| *r && s.is_none()) {
            return Err(format!("not every running member answers: {}", describe()));
        }
        let [i] = claims[..] else {
            return Err(format!("leader claims {claims:?}: {}", describe()));
        };
        let lead = st[i].expect("answered");
        if answered
            .iter()
            .any(|(_, s)| s.leader != lead.leader || s.term != lead.term)
        {
            return Err(format!("no agreement on m{i}: {}", describe()));
        }
        Ok((i, lead.term))
    }

    /// Index of the member whose Status says it is the leader, once every
    /// running member that answers agrees (retried, ≤ LEADER_TIMEOUT).
    pub async fn leader(&mut self) -> usize {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            match self.agreed_leader(false).await {
                Ok((i, _)) => return i,
                Err(e) if Instant::now() > deadline => {
                    self.fail(&format!("no agreed leader within {LEADER_TIMEOUT:?}: {e}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until every running member answers Status and they agree on
    /// one leader and term that then stay the same for `quiet`; returns
    /// the leader's index. Bounded by `timeout`.
    pub async fn wait_stable(&mut self, quiet: Duration, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut since: Option<(usize, u64, Instant)> = None;
        loop {
            match self.agreed_leader(true).await {
                Ok((i, term)) => match since {
                    Some((j, t, at)) if j == i && t == term => {
                        if at.elapsed() >= quiet {
                            return i;
                        }
                    }
                    _ => since = Some((i, term, Instant::now())),
                },
                Err(e) => {
                    if Instant::now() > deadline {
                        self.fail(&format!("cluster not stable within {timeout:?}: {e}"));
                    }
                    since = None;
                }
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "leader and term did not stay put for {quiet:?} within {timeout:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Member IDs by index, from MemberList (matched by peer URL) or
    /// Status; cached, so members that are down or removed keep theirs.
    pub async fn member_ids(&mut self) -> Vec<u64> {
        if self.members.iter().any(|m| m.id.is_none()) {
            let mut client = self.client_all().await;
            if let Ok(Ok(list)) = tokio::time::timeout(RPC_TIMEOUT, client.member_list()).await {
                for mem in list.members() {
                    for m in self.members.iter_mut() {
                        if mem.peer_urls().contains(&m.peer_url()) && m.id.is_none() {
                            m.id = Some(mem.id());
                        }
                    }
                }
            }
        }
        for i in 0..self.members.len() {
            if self.members[i].id.is_none() {
                if let Ok(st) = status(&self.endpoint(i)).await {
                    self.members[i].id = Some(st.id);
                }
            }
        }
        self.members
            .iter()
            .map(|m| {
                m.id.unwrap_or_else(|| panic!("member ID of {} unknown", m.name))
            })
            .collect()
    }

    pub async fn member_id(&mut self, i: usize) -> u64 {
        self.member_ids().await[i]
    }

    /// Waits (≤ timeout) until every listed member reports the same local
    /// (serializable) revision twice in a row; returns it.
    pub async fn wait_same_revision(&self, idx: &[usize], timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        let mut clients = Vec::new();
        for &i in idx {
            clients.push(self.client(i).await);
        }
        let mut prev: Option<i64> = None;
        loop {
            let mut revs = Vec::new();
            for c in clients.iter_mut() {
                revs.push(local_revision(c).await.ok());
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
                self.fail(&format!(
                    "members {idx:?} did not converge on one revision within {timeout:?}: {revs:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            self.dump_logs();
            if let Some(tmp) = self.tmp.take() {
                let kept = tmp.keep();
                eprintln!("cluster harness: kept {}", kept.display());
            }
        }
    }
}

/// Copies `stream` to `log` line by line; reports the first line with
/// `marker` and the end of the stream.
fn pump(stream: impl Read, mut log: std::fs::File, marker: &'static str, tx: mpsc::Sender<Event>) {
    let mut ready_sent = false;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        if !ready_sent && line.contains(marker) {
            ready_sent = true;
            let _ = tx.send(Event::Ready);
        }
    }
    let _ = writeln!(log, "=== harness: stderr closed");
    let _ = tx.send(Event::Exited);
}

fn wait_child(c: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match c.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client with bounded connect and request times.
pub async fn connect(endpoints: &[String]) -> Client {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(RPC_TIMEOUT);
    match tokio::time::timeout(RPC_TIMEOUT, Client::connect(endpoints, Some(opts))).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("connect {endpoints:?}: {e}"),
        Err(_) => panic!("connect {endpoints:?}: timed out"),
    }
}

/// What one member's Status says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberStatus {
    /// The answering member's ID (response header).
    pub id: u64,
    pub leader: u64,
    pub term: u64,
    pub raft_index: u64,
    pub applied_index: u64,
    pub is_learner: bool,
}

/// One member's Status (bounded: 2 s).
pub async fn status(endpoint: &str) -> Result<MemberStatus, String> {
    let mut c = connect(&[endpoint.to_string()]).await;
    match tokio::time::timeout(Duration::from_secs(2), c.status()).await {
        Ok(Ok(s)) => Ok(MemberStatus {
            id: s.header().map(|h| h.member_id()).unwrap_or(0),
            leader: s.leader(),
            term: s.raft_term(),
            raft_index: s.raft_index(),
            applied_index: s.raft_applied_index(),
            is_learner: s.is_learner(),
        }),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("status timed out".into()),
    }
}

/// The member's own current revision (a serializable read: no quorum).
pub async fn local_revision(c: &mut Client) -> Result<i64, String> {
    let opts = GetOptions::new().with_serializable().with_count_only();
    match tokio::time::timeout(Duration::from_secs(2), c.get("\0", Some(opts))).await {
        Ok(Ok(r)) => r
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| "no header".to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// One key as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub value: Vec<u8>,
    pub create: i64,
    pub modr: i64,
    pub version: i64,
    pub lease: i64,
}

/// A store revision and every key at it.
pub type Keyspace = (i64, BTreeMap<Vec<u8>, Stored>);

/// Reads every key, page by page, at `rev` (or the current revision of
/// the first page), serializable (this member's own data) or not.
pub async fn read_all(c: &mut Client, serializable: bool, rev: Option<i64>) -> Keyspace {
    let opts = |rev: Option<i64>| {
        let mut o = GetOptions::new().with_from_key().with_limit(PAGE);
        if serializable {
            o = o.with_serializable();
        }
        if let Some(r) = rev {
            o = o.with_revision(r);
        }
        o
    };
    let mut start = vec![0u8];
    let mut at = rev;
    let mut all = BTreeMap::new();
    for page in 0..100_000 {
        let resp = tokio::time::timeout(RPC_TIMEOUT, c.get(start.clone(), Some(opts(at))))
            .await
            .unwrap_or_else(|_| panic!("range page {page} timed out"))
            .unwrap_or_else(|e| panic!("range page {page}: {e}"));
        let hrev = resp.header().expect("range header").revision();
        let at_rev = *at.get_or_insert(hrev);
        assert!(
            hrev >= at_rev,
            "header revision {hrev} below read revision {at_rev}"
        );
        for kv in resp.kvs() {
            let prev = all.insert(
                kv.key().to_vec(),
                Stored {
                    value: kv.value().to_vec(),
                    create: kv.create_revision(),
                    modr: kv.mod_revision(),
                    version: kv.version(),
                    lease: kv.lease(),
                },
            );
            assert!(prev.is_none(), "key {:?} returned twice", kv.key_str());
        }
        if !resp.more() {
            return (at_rev, all);
        }
        start = resp
            .kvs()
            .last()
            .expect("more=true with no kvs")
            .key()
            .to_vec();
        start.push(0);
    }
    panic!("too many pages");
}

/// SHA-256 over every (key, value, mod_revision), length-prefixed, in key
/// order: equal keyspaces give equal hashes on every member.
pub fn keyspace_hash(kvs: &BTreeMap<Vec<u8>, Stored>) -> String {
    let mut h = Sha256::new();
    for (k, s) in kvs {
        h.update(&(k.len() as u64).to_be_bytes());
        h.update(k);
        h.update(&(s.value.len() as u64).to_be_bytes());
        h.update(&s.value);
        h.update(&s.modr.to_be_bytes());
    }
    h.finish().iter().map(|b| format!("{b:02x}")).collect()
}

/// A small SHA-256 (FIPS 180-4), so the tests need no extra crate.
pub struct Sha256 {
    state: [u32; 8],
    buf: Vec<u8>,
    len: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Sha256 {
        Sha256 {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            buf: Vec::with_capacity(64),
            len: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        while !data.is_empty() {
            let take = (64 - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == 64 {
                let block: [u8; 64] = self.buf[..].try_into().expect("64 bytes");
                self.compress(&block);
                self.buf.clear();
            }
        }
    }

    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        while (self.buf.len() + pad.len()) % 64 != 56 {
            pad.push(0);
        }
        pad.extend_from_slice(&bits.to_be_bytes());
        let len = self.len;
        self.update(&pad);
        self.len = len;
        let mut out = [0u8; 32];
        for (i, w) in self.state.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    fn compress(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for (i, chunk) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes(chunk.try_into().expect("4 bytes"));
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }
}

/// The gRPC status of an etcd-client error, if it is one.
pub fn grpc_status(e: &etcd_client::Error) -> Option<(tonic::Code, String)> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some((s.code(), s.message().to_string())),
        _ => None,
    }
}

/// Runs `op` until it succeeds or fails with an error whose message does
/// not contain any of `retry_on`; bounded by `timeout` (the last error is
/// returned then).
pub async fn retry_while<T, F, Fut>(
    timeout: Duration,
    retry_on: &[&str],
    mut op: F,
) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut seen: Vec<String> = Vec::new();
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let msg = e.to_string();
                if Instant::now() > deadline || !retry_on.iter().any(|r| msg.contains(r)) {
                    return Err(e);
                }
                if !seen.contains(&msg) {
                    eprintln!(
                        "retry_while: retrying after {:.1}s on: {msg}",
                        start.elapsed().as_secs_f64()
                    );
                    seen.push(msg);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
