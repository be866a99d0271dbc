//! Drives the real `etcdctl` (v3 API) lease commands against the server and
//! checks their output: `lease grant`, `lease keep-alive --once`,
//! `lease timetolive [--keys]`, `lease list`, `lease revoke`,
//! `put --lease`.
//!
//! Every test is skipped (and passes) when `etcdctl` is not installed
//! (Debian package `etcd-client`; or point `ETCDCTL_BIN` at a binary).
//! With `QUORATE_TEST_TARGET=etcd` the same tests run against a real etcd,
//! which is how the expectations below were checked (etcdctl/etcd 3.4.23).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SKIP_MSG: &str = "skipped: etcdctl not found (install Debian package etcd-client)";
/// Bound on one etcdctl run (its own default command timeout is 5 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

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
            self.code, self.stdout, self.stderr
        )
    }

    /// The `Error: ...` line etcdctl printed on stderr (3.4 also logs JSON
    /// warnings from its retry interceptor there).
    fn error_line(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| l.starts_with("Error: "))
            .unwrap_or_else(|| panic!("no `Error:` line: {}", self.describe()))
    }
}

/// A server plus the etcdctl binary that talks to it.
struct Ctl {
    bin: PathBuf,
    srv: common::Server,
}

impl Ctl {
    /// Starts a server; `None` (after printing the skip message) when
    /// etcdctl is not installed.
    fn start() -> Option<Ctl> {
        let Some(bin) = common::etcdctl_bin() else {
            eprintln!("{SKIP_MSG}");
            return None;
        };
        let srv = common::Server::start();
        Some(Ctl { bin, srv })
    }

    /// Runs etcdctl; returns its output whatever the exit code.
    fn run(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(&self.bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.srv.endpoint)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("etcdctl {args:?} did not finish within {RUN_TIMEOUT:?}");
                }
            }
        }
        let out = child.wait_with_output().expect("etcdctl output");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs etcdctl and insists on exit code 0; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.code, 0, "etcdctl {args:?} failed: {}", out.describe());
        out.stdout
    }

    /// Runs etcdctl with `-w json` and parses stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-w", "json"]);
        let stdout = self.ok(&a);
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("etcdctl {a:?}: bad JSON ({e}): {stdout}"))
    }

    /// `lease grant <ttl>`; checks the output and returns the lease ID in
    /// etcdctl's hex form.
    fn grant(&self, ttl: i64) -> String {
        let out = self.ok(&["lease", "grant", &ttl.to_string()]);
        let id = parse_granted(&out, ttl);
        assert_eq!(id.len(), 16, "ID printed as 16 hex digits: {out}");
        id
    }
}

/// Parses `lease <16 hex> granted with TTL(<ttl>s)\n`; returns the hex ID.
#[track_caller]
fn parse_granted(out: &str, ttl: i64) -> String {
    let rest = out
        .strip_prefix("lease ")
        .unwrap_or_else(|| panic!("unexpected grant output: {out:?}"));
    let (id, tail) = rest
        .split_once(' ')
        .unwrap_or_else(|| panic!("unexpected grant output: {out:?}"));
    assert_eq!(
        tail,
        format!("granted with TTL({ttl}s)\n"),
        "grant output {out:?}"
    );
    assert!(
        id.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "lowercase hex ID: {out:?}"
    );
    id.to_string()
}

fn id_of(hex: &str) -> i64 {
    u64::from_str_radix(hex, 16).expect("hex lease ID") as i64
}

/// A JSON integer (etcdctl omits zero fields).
fn num(v: &Value) -> i64 {
    match v {
        Value::Null => 0,
        Value::Number(n) => n
            .as_i64()
            .unwrap_or_else(|| panic!("{n} does not fit an i64")),
        other => panic!("expected a JSON number, got {other}"),
    }
}

/// A JSON unsigned integer (cluster and member IDs are uint64).
fn unum(v: &Value) -> u64 {
    match v {
        Value::Null => 0,
        Value::Number(n) => n.as_u64().unwrap_or_else(|| panic!("{n} is not a u64")),
        other => panic!("expected a JSON number, got {other}"),
    }
}

/// Parses `lease <id> granted with TTL(<g>s), remaining(<r>s)[, attached
/// keys([k1 k2])]\n`; returns (id, granted, remaining, sorted keys).
#[track_caller]
fn parse_timetolive(out: &str) -> (String, i64, i64, Option<Vec<String>>) {
    fn fail(out: &str) -> ! {
        panic!("unexpected timetolive output: {out:?}")
    }
    let line = out.strip_suffix('\n').unwrap_or_else(|| fail(out));
    let rest = line.strip_prefix("lease ").unwrap_or_else(|| fail(out));
    let (id, rest) = rest
        .split_once(" granted with TTL(")
        .unwrap_or_else(|| fail(out));
    let (granted, rest) = rest
        .split_once("s), remaining(")
        .unwrap_or_else(|| fail(out));
    let (remaining, rest) = rest.split_once("s)").unwrap_or_else(|| fail(out));
    let keys = if rest.is_empty() {
        None
    } else {
        let inner = rest
            .strip_prefix(", attached keys([")
            .and_then(|r| r.strip_suffix("])"))
            .unwrap_or_else(|| fail(out));
        // etcd lists the keys in no particular order.
        let mut keys: Vec<String> = inner.split_whitespace().map(str::to_string).collect();
        keys.sort();
        Some(keys)
    };
    (
        id.to_string(),
        granted.parse().unwrap_or_else(|_| fail(out)),
        remaining.parse().unwrap_or_else(|_| fail(out)),
        keys,
    )
}

#[test]
fn lease_grant_prints_hex_id_and_ttl() {
    let Some(ctl) = Ctl::start() else { return };
    let id = ctl.grant(60);
    assert_ne!(id_of(&id), 0);

    // TTL below the minimum (2 s with the default election timeout).
    let out = ctl.ok(&["lease", "grant", "1"]);
    parse_granted(&out, 2);

    // JSON: the header fields flattened, then ID (decimal), TTL, Error.
    let v = ctl.json(&["lease", "grant", "30"]);
    assert_ne!(num(&v["ID"]), 0, "{v}");
    assert_eq!(num(&v["TTL"]), 30, "{v}");
    assert_eq!(v["Error"], Value::String(String::new()), "{v}");
    assert_ne!(unum(&v["cluster_id"]), 0, "{v}");
    assert_ne!(unum(&v["member_id"]), 0, "{v}");
    assert_eq!(num(&v["revision"]), 1, "a grant takes no revision: {v}");
    assert!(num(&v["raft_term"]) > 0, "{v}");

    // Too large a TTL.
    let out = ctl.run(&["lease", "grant", "9000000001"]);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert_eq!(
        out.error_line(),
        "Error: failed to grant lease (etcdserver: too large lease TTL)"
    );
    assert_eq!(out.stdout, "");
}

#[test]
fn lease_keep_alive_once() {
    let Some(ctl) = Ctl::start() else { return };
    let id = ctl.grant(60);
    let out = ctl.ok(&["lease", "keep-alive", "--once", &id]);
    assert_eq!(out, format!("lease {id} keepalived with TTL(60)\n"));

    let v = ctl.json(&["lease", "keep-alive", "--once", &id]);
    assert_eq!(num(&v["ID"]), id_of(&id), "{v}");
    assert_eq!(num(&v["TTL"]), 60, "{v}");
    assert_ne!(unum(&v["cluster_id"]), 0, "{v}");

    // An unknown lease: the server answers TTL 0, which etcdctl reports as
    // not found, with exit code 2 (its "bad connection" code).
    let out = ctl.run(&["lease", "keep-alive", "--once", "1234"]);
    assert_eq!(out.code, 2, "{}", out.describe());
    assert_eq!(
        out.error_line(),
        "Error: etcdserver: requested lease not found"
    );
    assert_eq!(out.stdout, "");
}

#[test]
fn lease_timetolive_with_and_without_keys() {
    let Some(ctl) = Ctl::start() else { return };
    let id = ctl.grant(600);
    assert_eq!(
        ctl.ok(&["put", &format!("--lease={id}"), "k2", "v"]),
        "OK\n"
    );
    assert_eq!(
        ctl.ok(&["put", &format!("--lease={id}"), "k1", "v"]),
        "OK\n"
    );

    let (got, granted, remaining, keys) = parse_timetolive(&ctl.ok(&["lease", "timetolive", &id]));
    assert_eq!(got, id);
    assert_eq!(granted, 600);
    assert!((590..=600).contains(&remaining), "remaining {remaining}");
    assert_eq!(keys, None);

    let (_, _, _, keys) = parse_timetolive(&ctl.ok(&["lease", "timetolive", "--keys", &id]));
    assert_eq!(keys, Some(vec!["k1".to_string(), "k2".to_string()]));

    // JSON: keys base64, "granted-ttl" with a dash.
    let v = ctl.json(&["lease", "timetolive", "--keys", &id]);
    assert_eq!(num(&v["id"]), id_of(&id), "{v}");
    assert_eq!(num(&v["granted-ttl"]), 600, "{v}");
    assert!((590..=600).contains(&num(&v["ttl"])), "{v}");
    let mut keys: Vec<&str> = v["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("keys: {v}"))
        .iter()
        .map(|k| k.as_str().expect("base64 key"))
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["azE=", "azI="], "{v}");
    assert_eq!(num(&v["revision"]), 3, "{v}");

    // A lease without keys.
    let empty = ctl.grant(600);
    let (_, _, _, keys) = parse_timetolive(&ctl.ok(&["lease", "timetolive", "--keys", &empty]));
    assert_eq!(keys, Some(vec![]));

    // An unknown lease: not an error.
    let out = ctl.ok(&["lease", "timetolive", "1234"]);
    assert_eq!(out, "lease 0000000000001234 already expired\n");
    let v = ctl.json(&["lease", "timetolive", "--keys", "1234"]);
    assert_eq!(num(&v["id"]), 0x1234, "{v}");
    assert_eq!(num(&v["ttl"]), -1, "{v}");
    assert_eq!(num(&v["granted-ttl"]), 0, "{v}");
    assert_eq!(v["keys"], Value::Null, "{v}");
}

#[test]
fn lease_list() {
    let Some(ctl) = Ctl::start() else { return };
    assert_eq!(ctl.ok(&["lease", "list"]), "found 0 leases\n");
    let v = ctl.json(&["lease", "list"]);
    assert_eq!(v["leases"], Value::Array(vec![]), "{v}");

    let a = ctl.grant(600);
    let b = ctl.grant(60);
    let out = ctl.ok(&["lease", "list"]);
    let mut lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"found 2 leases"), "{out}");
    lines.remove(0);
    lines.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(lines, want, "{out}");

    let v = ctl.json(&["lease", "list"]);
    let mut ids: Vec<i64> = v["leases"]
        .as_array()
        .unwrap_or_else(|| panic!("leases: {v}"))
        .iter()
        .map(|l| num(&l["id"]))
        .collect();
    ids.sort();
    let mut want = vec![id_of(&a), id_of(&b)];
    want.sort();
    assert_eq!(ids, want, "{v}");
}

#[test]
fn lease_revoke_deletes_keys() {
    let Some(ctl) = Ctl::start() else { return };
    let id = ctl.grant(600);
    assert_eq!(ctl.ok(&["put", &format!("--lease={id}"), "a", "1"]), "OK\n");
    assert_eq!(ctl.ok(&["put", &format!("--lease={id}"), "b", "2"]), "OK\n");
    assert_eq!(ctl.ok(&["put", "c", "3"]), "OK\n");
    assert_eq!(
        ctl.ok(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ctl.ok(&["get", "", "--from-key"]), "c\n3\n");
    assert_eq!(ctl.ok(&["lease", "list"]), "found 0 leases\n");

    // Revoking again, or an unknown lease, fails.
    for target in [id.as_str(), "1234"] {
        let out = ctl.run(&["lease", "revoke", target]);
        assert_eq!(out.code, 1, "{}", out.describe());
        assert_eq!(
            out.error_line(),
            "Error: failed to revoke lease (etcdserver: requested lease not found)"
        );
        assert_eq!(out.stdout, "");
    }

    // JSON: just the header (revision after the deletion).
    let id = ctl.grant(600);
    assert_eq!(ctl.ok(&["put", &format!("--lease={id}"), "d", "4"]), "OK\n");
    let v = ctl.json(&["lease", "revoke", &id]);
    // a, b, c: 2..=4; first revoke: 5; d: 6; this revoke: 7.
    assert_eq!(num(&v["header"]["revision"]), 7, "{v}");
    assert_ne!(unum(&v["header"]["cluster_id"]), 0, "{v}");
}

#[test]
fn put_with_lease() {
    let Some(ctl) = Ctl::start() else { return };
    let id = ctl.grant(600);
    assert_eq!(ctl.ok(&["put", &format!("--lease={id}"), "k", "v"]), "OK\n");
    let v = ctl.json(&["get", "k"]);
    assert_eq!(num(&v["kvs"][0]["lease"]), id_of(&id), "{v}");

    // --ignore-lease keeps it; a plain put drops it.
    assert_eq!(ctl.ok(&["put", "--ignore-lease", "k", "v2"]), "OK\n");
    let v = ctl.json(&["get", "k"]);
    assert_eq!(num(&v["kvs"][0]["lease"]), id_of(&id), "{v}");
    assert_eq!(ctl.ok(&["put", "k", "v3"]), "OK\n");
    let v = ctl.json(&["get", "k"]);
    assert_eq!(num(&v["kvs"][0]["lease"]), 0, "{v}");

    let out = ctl.run(&["put", "--lease=1234", "k", "v"]);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert_eq!(
        out.error_line(),
        "Error: etcdserver: requested lease not found"
    );
    assert_eq!(out.stdout, "");
}
