//! Drives the real `etcdctl` against a three-member cluster: member list,
//! endpoint status across the cluster, move-leader, and a learner's whole
//! life (member add --learner, start, catch up, promote, remove), checking
//! etcdctl's output as an operator sees it.
//!
//! Skipped (passes) when `etcdctl` is not installed (Debian package
//! `etcd-client`, or `ETCDCTL_BIN`). With `QUORATE_TEST_TARGET=etcd` it runs
//! against a real etcd cluster, which is how the expectations below were
//! checked (etcd/etcdctl 3.4.23).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cluster::{self, Cluster};
use serde_json::Value;

const SKIP_MSG: &str = "skipped: etcdctl not found (install Debian package etcd-client)";
/// Bound for one etcdctl run (its own dial/command timeouts are 2 s / 5 s,
/// but some commands retry internally).
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for conditions polled with etcdctl.
const POLL_TIMEOUT: Duration = Duration::from_secs(20);

/// The output of one etcdctl run.
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
            self.stdout,
            tail(&self.stderr, 10)
        )
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn run_etcdctl(bin: &Path, endpoints: &[String], args: &[&str]) -> Out {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(ETCDCTL_TIMEOUT) {
        Ok(Ok(out)) => Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("wait for etcdctl {args:?}: {e}"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("etcdctl {args:?} ran longer than {ETCDCTL_TIMEOUT:?}");
        }
    }
}

struct Ctl {
    bin: PathBuf,
}

impl Ctl {
    fn run(&self, endpoints: &[String], args: &[&str]) -> Out {
        run_etcdctl(&self.bin, endpoints, args)
    }

    /// Runs etcdctl and insists on exit code 0; returns stdout.
    fn ok(&self, c: &Cluster, endpoints: &[String], args: &[&str]) -> String {
        let out = self.run(endpoints, args);
        if out.code != 0 {
            c.fail(&format!("etcdctl {args:?} failed: {}", out.describe()));
        }
        out.stdout
    }

    fn json(&self, c: &Cluster, endpoints: &[String], args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-w", "json"]);
        let stdout = self.ok(c, endpoints, &a);
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("etcdctl {a:?}: bad JSON ({e}): {stdout}"))
    }

    /// Runs until exit code 0, retrying (bounded) while stderr contains
    /// one of `retry_on`.
    fn ok_retrying(
        &self,
        c: &Cluster,
        endpoints: &[String],
        args: &[&str],
        retry_on: &[&str],
    ) -> (String, usize) {
        let deadline = Instant::now() + POLL_TIMEOUT;
        let mut retries = 0;
        loop {
            let out = self.run(endpoints, args);
            if out.code == 0 {
                return (out.stdout, retries);
            }
            if !retry_on.iter().any(|r| out.stderr.contains(r)) || Instant::now() > deadline {
                c.fail(&format!(
                    "etcdctl {args:?} failed ({retries} retries): {}",
                    out.describe()
                ));
            }
            retries += 1;
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Parses an etcdctl `-w table` into rows of (column name, cell) pairs.
fn parse_table(text: &str) -> Vec<Vec<(String, String)>> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        });
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no table header in:\n{text}"));
    lines
        .map(|row| {
            assert_eq!(row.len(), header.len(), "ragged table:\n{text}");
            header.iter().cloned().zip(row).collect()
        })
        .collect()
}

fn cell<'a>(row: &'a [(String, String)], name: &str) -> &'a str {
    row.iter()
        .find(|(h, _)| h == name)
        .map(|(_, c)| c.as_str())
        .unwrap_or_else(|| panic!("no column {name:?} in {row:?}"))
}

fn columns(table: &[Vec<(String, String)>]) -> Vec<String> {
    table
        .first()
        .map(|r| r.iter().map(|(h, _)| h.clone()).collect())
        .unwrap_or_default()
}

/// A JSON unsigned integer (IDs are uint64; zero fields are omitted).
fn unum(v: &Value) -> u64 {
    match v {
        Value::Null => 0,
        Value::Number(n) => n.as_u64().unwrap_or_else(|| panic!("{n} is not a u64")),
        other => panic!("expected a JSON number, got {other}"),
    }
}

fn flag(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        other => panic!("expected a JSON bool, got {other}"),
    }
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

/// `endpoint status --cluster -w json`, parsed: per endpoint (endpoint,
/// member ID, leader ID, raft term, raft index, is learner, cluster ID).
#[derive(Debug, Clone)]
struct EpStatus {
    endpoint: String,
    id: u64,
    leader: u64,
    term: u64,
    index: u64,
    learner: bool,
    cluster_id: u64,
}

fn status_json(ctl: &Ctl, c: &Cluster, endpoints: &[String]) -> Vec<EpStatus> {
    let v = ctl.json(c, endpoints, &["endpoint", "status", "--cluster"]);
    let arr = v
        .as_array()
        .unwrap_or_else(|| panic!("endpoint status -w json is not an array: {v}"));
    arr.iter()
        .map(|e| {
            let s = &e["Status"];
            EpStatus {
                endpoint: e["Endpoint"].as_str().expect("Endpoint").to_string(),
                id: unum(&s["header"]["member_id"]),
                leader: unum(&s["leader"]),
                term: unum(&s["raftTerm"]),
                index: unum(&s["raftIndex"]),
                learner: flag(&s["isLearner"]),
                cluster_id: unum(&s["header"]["cluster_id"]),
            }
        })
        .collect()
}

/// Whether a cluster-wide status is settled: one leader everyone agrees
/// on, one term, raft index ≥ 1.
fn settled(st: &[EpStatus]) -> Result<u64, String> {
    let leaders: BTreeSet<u64> = st.iter().map(|s| s.leader).collect();
    let terms: BTreeSet<u64> = st.iter().map(|s| s.term).collect();
    let claiming: Vec<&EpStatus> = st.iter().filter(|s| s.id == s.leader).collect();
    if leaders.len() != 1 || claiming.len() != 1 || leaders.contains(&0) {
        return Err(format!("no single agreed leader: {st:?}"));
    }
    if terms.len() != 1 {
        return Err(format!("members in different terms: {st:?}"));
    }
    if st.iter().any(|s| s.index < 1) {
        return Err(format!("raft index 0: {st:?}"));
    }
    Ok(claiming[0].id)
}

/// Polls `endpoint status --cluster -w json` until `want` holds.
fn wait_status(
    ctl: &Ctl,
    c: &Cluster,
    endpoints: &[String],
    what: &str,
    want: impl Fn(&[EpStatus]) -> Result<(), String>,
) -> Vec<EpStatus> {
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        let st = status_json(ctl, c, endpoints);
        match want(&st) {
            Ok(()) => return st,
            Err(e) if Instant::now() > deadline => {
                c.fail(&format!("{what}: not within {POLL_TIMEOUT:?}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The parsed output of `member add`.
struct Added {
    id: String,
    cluster: String,
    as_learner_words: bool,
    name: String,
    initial_cluster: String,
    peer_urls: String,
    state: String,
}

/// Parses etcdctl's `member add` output:
/// `Member <id> added [as learner ]to cluster <cid>` (3.4 omits "as
/// learner"; `%16x` pads short IDs with spaces), a blank line and four
/// `ETCD_*="..."` lines.
fn parse_member_add(out: &str) -> Added {
    let mut lines = out.lines();
    let first = lines.next().unwrap_or_default();
    let words: Vec<&str> = first.split_whitespace().collect();
    let (id, cluster, as_learner_words) = match words[..] {
        ["Member", id, "added", "to", "cluster", cid] => (id, cid, false),
        ["Member", id, "added", "as", "learner", "to", "cluster", cid] => (id, cid, true),
        _ => panic!("unexpected member add output:\n{out}"),
    };
    let env: Vec<(String, String)> = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("bad line {l:?} in:\n{out}"));
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_else(|| panic!("unquoted value in {l:?}"));
            (k.to_string(), v.to_string())
        })
        .collect();
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "ETCD_NAME",
            "ETCD_INITIAL_CLUSTER",
            "ETCD_INITIAL_ADVERTISE_PEER_URLS",
            "ETCD_INITIAL_CLUSTER_STATE"
        ],
        "member add output:\n{out}"
    );
    Added {
        id: id.to_string(),
        cluster: cluster.to_string(),
        as_learner_words,
        name: env[0].1.clone(),
        initial_cluster: env[1].1.clone(),
        peer_urls: env[2].1.clone(),
        state: env[3].1.clone(),
    }
}

#[test]
fn member_add_output_parser() {
    let out = "Member ce4a552e5677b64f added to cluster 12addffca8adc6d1\n\n\
ETCD_NAME=\"m3\"\n\
ETCD_INITIAL_CLUSTER=\"m1=http://127.0.0.1:24180,m3=http://127.0.0.1:24380\"\n\
ETCD_INITIAL_ADVERTISE_PEER_URLS=\"http://127.0.0.1:24380\"\n\
ETCD_INITIAL_CLUSTER_STATE=\"existing\"\n";
    let a = parse_member_add(out);
    assert_eq!(a.id, "ce4a552e5677b64f");
    assert_eq!(a.cluster, "12addffca8adc6d1");
    assert!(!a.as_learner_words);
    assert_eq!(a.name, "m3");
    assert_eq!(a.state, "existing");
    let padded = "Member  cf4a4c96992d5d6 added as learner to cluster 12addffca8adc6d1\n\n\
ETCD_NAME=\"m3\"\nETCD_INITIAL_CLUSTER=\"m3=http://x\"\n\
ETCD_INITIAL_ADVERTISE_PEER_URLS=\"http://x\"\nETCD_INITIAL_CLUSTER_STATE=\"existing\"\n";
    let a = parse_member_add(padded);
    assert_eq!(a.id, "cf4a4c96992d5d6");
    assert!(a.as_learner_words);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_cluster_membership_and_leadership() {
    let Some(bin) = common::etcdctl_bin() else {
        eprintln!("{SKIP_MSG}");
        return;
    };
    let ctl = Ctl { bin };
    let mut c = tokio::task::block_in_place(|| Cluster::start(3));
    let all = c.endpoints();
    let ids = c.member_ids().await;

    // ---- member list ----
    let list = ctl.json(&c, &all, &["member", "list"]);
    let cluster_id = unum(&list["header"]["cluster_id"]);
    assert_ne!(cluster_id, 0, "member list header: {list}");
    let cid = hex(cluster_id);
    let table_text = ctl.ok(&c, &all, &["member", "list", "-w", "table"]);
    let table = parse_table(&table_text);
    assert_eq!(
        columns(&table),
        [
            "ID",
            "STATUS",
            "NAME",
            "PEER ADDRS",
            "CLIENT ADDRS",
            "IS LEARNER"
        ],
        "member list table:\n{table_text}"
    );
    assert_eq!(table.len(), 3, "member list table:\n{table_text}");
    for (i, &id) in ids.iter().enumerate() {
        let row = table
            .iter()
            .find(|r| cell(r, "NAME") == format!("m{i}"))
            .unwrap_or_else(|| panic!("m{i} missing from member list:\n{table_text}"));
        assert_eq!(cell(row, "ID"), hex(id), "{table_text}");
        assert_eq!(cell(row, "STATUS"), "started", "{table_text}");
        assert_eq!(cell(row, "PEER ADDRS"), c.peer_url(i), "{table_text}");
        assert_eq!(cell(row, "CLIENT ADDRS"), c.endpoint(i), "{table_text}");
        assert_eq!(cell(row, "IS LEARNER"), "false", "{table_text}");
    }

    // ---- endpoint status --cluster ----
    let st = wait_status(&ctl, &c, &all, "settled cluster status", |st| {
        if st.len() != 3 {
            return Err(format!("{} endpoints", st.len()));
        }
        settled(st).map(|_| ())
    });
    let leader_id = settled(&st).expect("settled");
    let mut eps: Vec<String> = st.iter().map(|s| s.endpoint.clone()).collect();
    eps.sort();
    let mut want_eps = all.clone();
    want_eps.sort();
    assert_eq!(eps, want_eps, "--cluster expands to every client URL");
    for s in &st {
        assert_eq!(s.cluster_id, cluster_id, "{s:?}");
        assert!(!s.learner, "{s:?}");
        let i = c
            .endpoints()
            .iter()
            .position(|e| *e == s.endpoint)
            .expect("known");
        assert_eq!(s.id, ids[i], "{s:?}");
    }
    let leader = ids
        .iter()
        .position(|&id| id == leader_id)
        .expect("leader is a member");
    assert_eq!(
        c.leader().await,
        leader,
        "harness and etcdctl agree on the leader"
    );

    let table_text = ctl.ok(
        &c,
        &all,
        &["endpoint", "status", "--cluster", "-w", "table"],
    );
    let table = parse_table(&table_text);
    let cols = columns(&table);
    for col in [
        "ENDPOINT",
        "ID",
        "VERSION",
        "DB SIZE",
        "IS LEADER",
        "RAFT TERM",
        "RAFT INDEX",
    ] {
        assert!(cols.iter().any(|h| h == col), "no {col} in:\n{table_text}");
    }
    assert_eq!(table.len(), 3, "{table_text}");
    let leaders: Vec<&Vec<(String, String)>> = table
        .iter()
        .filter(|r| cell(r, "IS LEADER") == "true")
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader:\n{table_text}");
    assert_eq!(cell(leaders[0], "ID"), hex(leader_id), "{table_text}");
    let terms: BTreeSet<&str> = table.iter().map(|r| cell(r, "RAFT TERM")).collect();
    assert_eq!(terms.len(), 1, "one raft term:\n{table_text}");
    for r in &table {
        let idx: u64 = cell(r, "RAFT INDEX").parse().expect("RAFT INDEX");
        assert!(idx >= 1, "{table_text}");
        if cols.iter().any(|h| h == "IS LEARNER") {
            assert_eq!(cell(r, "IS LEARNER"), "false", "{table_text}");
        }
        assert!(
            r.iter().all(|(h, v)| h != "ERRORS" || v.is_empty()),
            "{table_text}"
        );
    }

    // ---- move-leader ----
    let target = (leader + 1) % 3;
    let target_id = ids[target];
    // Through a follower only: etcdctl itself refuses (it looks for the
    // leader among the given endpoints by Status).
    let out = ctl.run(&[c.endpoint(target)], &["move-leader", &hex(target_id)]);
    assert_eq!(out.code, 128, "{}", out.describe());
    assert!(
        out.stderr.contains(&format!(
            "Error: no leader endpoint given at [{}]",
            c.endpoint(target)
        )),
        "{}",
        out.describe()
    );
    // To a member that does not exist.
    let out = ctl.run(&[c.endpoint(leader)], &["move-leader", "123"]);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("Error: etcdserver: bad leader transferee"),
        "{}",
        out.describe()
    );
    let moved = ctl.ok(&c, &[c.endpoint(leader)], &["move-leader", &hex(target_id)]);
    assert_eq!(
        moved,
        format!(
            "Leadership transferred from {} to {}\n",
            hex(leader_id),
            hex(target_id)
        )
    );
    wait_status(&ctl, &c, &all, "leader moved", |st| {
        let l = settled(st)?;
        if l == target_id {
            Ok(())
        } else {
            Err(format!("leader is {l:x}"))
        }
    });
    assert_eq!(c.leader().await, target);

    // ---- member add --learner ----
    let (peer_port, client_port) = cluster::free_port_pair();
    let peer = cluster::url(peer_port);
    let peer_flag = format!("--peer-urls={peer}");
    // etcd 3.4 refuses any member add until the serving member has been
    // connected to every voter for 5 s ("etcdserver: unhealthy cluster").
    let (added_text, retries) = ctl.ok_retrying(
        &c,
        &all,
        &["member", "add", "m3", &peer_flag, "--learner"],
        &["etcdserver: unhealthy cluster"],
    );
    eprintln!("member add: {retries} retries on 'unhealthy cluster'\n{added_text}");
    let added = parse_member_add(&added_text);
    assert_eq!(added.cluster, cid, "{added_text}");
    assert_eq!(added.name, "m3");
    assert_eq!(added.peer_urls, peer);
    assert_eq!(added.state, "existing");
    let got: BTreeSet<&str> = added.initial_cluster.split(',').collect();
    let mut want_pairs: Vec<String> = (0..3).map(|i| format!("m{i}={}", c.peer_url(i))).collect();
    want_pairs.push(format!("m3={peer}"));
    let want: BTreeSet<&str> = want_pairs.iter().map(String::as_str).collect();
    assert_eq!(got, want, "ETCD_INITIAL_CLUSTER in:\n{added_text}");
    let new_id = u64::from_str_radix(&added.id, 16).expect("hex member ID");
    if added.as_learner_words {
        eprintln!("member add printed 'added as learner' (etcdctl 3.5+)");
    }

    let table_text = ctl.ok(&c, &all, &["member", "list", "-w", "table"]);
    let table = parse_table(&table_text);
    assert_eq!(table.len(), 4, "{table_text}");
    let row = table
        .iter()
        .find(|r| cell(r, "ID") == added.id)
        .unwrap_or_else(|| panic!("new member missing:\n{table_text}"));
    assert_eq!(cell(row, "STATUS"), "unstarted", "{table_text}");
    assert_eq!(cell(row, "NAME"), "", "{table_text}");
    assert_eq!(cell(row, "PEER ADDRS"), peer, "{table_text}");
    assert_eq!(cell(row, "CLIENT ADDRS"), "", "{table_text}");
    assert_eq!(cell(row, "IS LEARNER"), "true", "{table_text}");

    // A second learner is refused (at most one by default).
    let (p2, _) = cluster::free_port_pair();
    let out = ctl.run(
        &all,
        &[
            "member",
            "add",
            "m4",
            &format!("--peer-urls={}", cluster::url(p2)),
            "--learner",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("Error: etcdserver: too many learner members in cluster"),
        "{}",
        out.describe()
    );

    // ---- start the learner and let it catch up ----
    let m3 = c.add_member_process("m3", peer_port, client_port, &added.initial_cluster);
    if let Err(e) = tokio::task::block_in_place(|| c.wait_ready(m3)) {
        c.fail(&format!("learner did not start: {e}"));
    }
    let m3_ep = vec![c.endpoint(m3)];
    assert_eq!(ctl.ok(&c, &all, &["put", "etcdctl-marker", "v1"]), "OK\n");
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        let out = ctl.run(
            &m3_ep,
            &[
                "get",
                "etcdctl-marker",
                "--consistency=s",
                "--print-value-only",
            ],
        );
        if out.code == 0 && out.stdout == "v1\n" {
            break;
        }
        if Instant::now() > deadline {
            c.fail(&format!(
                "learner did not catch up within {POLL_TIMEOUT:?}: {}",
                out.describe()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // A linearizable read on the learner is refused (etcdctl retries
    // Unavailable internally for ~2.5 s before giving up).
    let out = ctl.run(&m3_ep, &["get", "etcdctl-marker"]);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("Error: etcdserver: rpc not supported for learner"),
        "{}",
        out.describe()
    );
    // endpoint status --cluster now covers the learner.
    let st = wait_status(&ctl, &c, &all, "status with the learner", |st| {
        if st.len() != 4 {
            return Err(format!("{} endpoints", st.len()));
        }
        settled(st).map(|_| ())
    });
    let s3 = st
        .iter()
        .find(|s| s.endpoint == c.endpoint(m3))
        .expect("learner in endpoint status");
    assert_eq!(s3.id, new_id, "{s3:?}");
    assert!(s3.learner, "learner flag in Status: {s3:?}");
    assert_ne!(s3.leader, new_id);
    let table_text = ctl.ok(&c, &all, &["member", "list", "-w", "table"]);
    let table = parse_table(&table_text);
    let row = table
        .iter()
        .find(|r| cell(r, "ID") == added.id)
        .unwrap_or_else(|| panic!("new member missing:\n{table_text}"));
    assert_eq!(cell(row, "STATUS"), "started", "{table_text}");
    assert_eq!(cell(row, "NAME"), "m3", "{table_text}");
    assert_eq!(cell(row, "CLIENT ADDRS"), c.endpoint(m3), "{table_text}");
    assert_eq!(cell(row, "IS LEARNER"), "true", "{table_text}");

    // ---- promote ----
    let (promoted, retries) = ctl.ok_retrying(
        &c,
        &all,
        &["member", "promote", &added.id],
        &["etcdserver: can only promote a learner member which is in sync with leader"],
    );
    eprintln!("member promote: {retries} retries on 'not in sync'");
    assert_eq!(
        promoted,
        format!("Member {:>16} promoted in cluster {cid:>16}\n", added.id)
    );
    let out = ctl.run(&all, &["member", "promote", &added.id]);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("Error: etcdserver: can only promote a learner member"),
        "{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("in sync"),
        "a voter is not 'out of sync': {}",
        out.describe()
    );
    let table_text = ctl.ok(&c, &all, &["member", "list", "-w", "table"]);
    let table = parse_table(&table_text);
    assert_eq!(table.len(), 4, "{table_text}");
    assert!(
        table
            .iter()
            .all(|r| cell(r, "STATUS") == "started" && cell(r, "IS LEARNER") == "false"),
        "{table_text}"
    );
    // Now a voter, it serves linearizable reads.
    let out = ctl.run(&m3_ep, &["get", "etcdctl-marker", "--print-value-only"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "v1\n"),
        "{}",
        out.describe()
    );

    // ---- remove ----
    let (removed, retries) = ctl.ok_retrying(
        &c,
        &all,
        &["member", "remove", &added.id],
        &["etcdserver: re-configuration failed due to not enough started members"],
    );
    eprintln!("member remove: {retries} retries on 'not enough started members'");
    assert_eq!(
        removed,
        format!("Member {:>16} removed from cluster {cid:>16}\n", added.id)
    );
    let out = ctl.run(&all, &["member", "remove", &added.id]);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert!(
        out.stderr.contains("Error: etcdserver: member not found"),
        "{}",
        out.describe()
    );
    let table_text = ctl.ok(&c, &all, &["member", "list", "-w", "table"]);
    let table = parse_table(&table_text);
    assert_eq!(table.len(), 3, "{table_text}");
    assert!(
        table.iter().all(|r| cell(r, "ID") != added.id),
        "{table_text}"
    );
    let exit = tokio::task::block_in_place(|| c.wait_exit(m3, Duration::from_secs(20)));
    match exit {
        Some(st) => eprintln!("removed member exited by itself: {st}"),
        None => c.fail("the removed member is still running 20 s after its removal"),
    }
    let three: Vec<String> = (0..3).map(|i| c.endpoint(i)).collect();
    let st = wait_status(&ctl, &c, &three, "settled after the removal", |st| {
        if st.len() != 3 {
            return Err(format!("{} endpoints", st.len()));
        }
        settled(st).map(|_| ())
    });
    assert!(st.iter().all(|s| s.id != new_id));
}
