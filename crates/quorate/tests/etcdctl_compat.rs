//! Drives the real `etcdctl` (v3 API) against the server and checks its
//! output, so that what operators see from etcd's own CLI is what etcd
//! would show.
//!
//! Every test is skipped (and passes) when `etcdctl` is not installed
//! (Debian package `etcd-client`; or point `ETCDCTL_BIN` at a binary).
//! With `QUORATE_TEST_TARGET=etcd` the same tests run against a real etcd,
//! which is how the expectations below were checked (etcdctl/etcd 3.4.23).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const SKIP_MSG: &str = "skipped: etcdctl not found (install Debian package etcd-client)";

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

    /// stdout and stderr together (etcdctl 3.4 prints some results, e.g.
    /// `endpoint health`, on stderr; 3.5 prints them on stdout).
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
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

    fn ep(&self) -> &str {
        &self.srv.endpoint
    }

    fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Out {
        run_etcdctl(&self.bin, self.ep(), args, stdin)
    }

    /// Runs etcdctl; returns its output whatever the exit code.
    fn run(&self, args: &[&str]) -> Out {
        self.run_with_stdin(args, None)
    }

    /// Runs etcdctl and insists on exit code 0; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.code, 0, "etcdctl {:?} failed: {}", args, out.describe());
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

    /// `put` that must print `OK`; returns the new revision.
    fn put(&self, key: &str, value: &str) -> i64 {
        let out = self.ok(&["put", key, value]);
        assert_eq!(out, "OK\n", "put {key} {value}");
        self.revision()
    }

    /// The current store revision (from a `get -w json` header).
    fn revision(&self) -> i64 {
        let v = self.json(&["get", "__quorate_test_no_such_key__"]);
        num(&v["header"]["revision"])
    }
}

fn run_etcdctl(bin: &Path, endpoint: &str, args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = Command::new(bin);
    // Make sure nothing from the environment changes etcdctl's behaviour.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        pipe.write_all(input.as_bytes())
            .expect("write etcdctl stdin");
        // Dropping the pipe closes it: etcdctl sees EOF.
    }
    let out = child.wait_with_output().expect("wait for etcdctl");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A JSON integer (etcdctl prints int64/uint64 fields as JSON numbers and
/// omits them when zero).
fn num(v: &Value) -> i64 {
    match v {
        Value::Null => 0,
        Value::Number(n) => n
            .as_i64()
            .unwrap_or_else(|| panic!("{n} does not fit an i64")),
        other => panic!("expected a JSON number, got {other}"),
    }
}

/// A JSON unsigned integer (IDs are uint64 and may exceed i64).
fn unum(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap_or_else(|| panic!("{n} is not a u64")),
        other => panic!("expected a JSON number, got {other}"),
    }
}

/// A JSON bool that etcdctl omits when false.
fn flag(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        other => panic!("expected a JSON bool, got {other}"),
    }
}

/// Standard base64 with padding (what Go's encoding/json does for []byte).
fn b64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `simple` output of `get`: `key\nvalue\n` per pair.
fn simple_kvs(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}\n{v}\n")).collect()
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

#[test]
fn base64_helper_matches_go() {
    assert_eq!(b64(b""), "");
    assert_eq!(b64(b"a"), "YQ==");
    assert_eq!(b64(b"ab"), "YWI=");
    assert_eq!(b64(b"abc"), "YWJj");
    assert_eq!(b64(b"k"), "aw==");
    assert_eq!(b64(&[0xfb, 0xff]), "+/8=");
}

#[test]
fn put_and_get() {
    let Some(c) = Ctl::start() else { return };

    let r_a1 = c.put("p/a", "1");
    let r_b = c.put("p/b", "22");
    let r_a2 = c.put("p/a", "333");
    let r_c = c.put("p/c", "4");
    c.put("q/outside", "x");
    assert!(r_a1 < r_b && r_b < r_a2 && r_a2 < r_c, "revisions increase");
    assert_eq!(r_b, r_a1 + 1);

    // Single key, simple output.
    assert_eq!(c.ok(&["get", "p/a"]), "p/a\n333\n");
    // Missing key: nothing printed, exit 0.
    assert_eq!(c.ok(&["get", "p/missing"]), "");
    // --print-value-only
    assert_eq!(c.ok(&["get", "p/b", "--print-value-only"]), "22\n");

    // --prefix, in key order.
    assert_eq!(
        c.ok(&["get", "--prefix", "p/"]),
        simple_kvs(&[("p/a", "333"), ("p/b", "22"), ("p/c", "4")])
    );
    // Range [p/a, p/c).
    assert_eq!(
        c.ok(&["get", "p/a", "p/c"]),
        simple_kvs(&[("p/a", "333"), ("p/b", "22")])
    );
    // --from-key
    assert_eq!(
        c.ok(&["get", "--from-key", "p/c"]),
        simple_kvs(&[("p/c", "4"), ("q/outside", "x")])
    );
    // --limit
    assert_eq!(
        c.ok(&["get", "--prefix", "p/", "--limit", "2"]),
        simple_kvs(&[("p/a", "333"), ("p/b", "22")])
    );
    // --keys-only: each key followed by an empty line (empty value).
    assert_eq!(
        c.ok(&["get", "--prefix", "p/", "--keys-only"]),
        "p/a\n\np/b\n\np/c\n\n"
    );

    // --sort-by / --order (values compare as bytes: "22" < "333" < "4")
    let sorted = |target: &str, order: &str| {
        c.ok(&[
            "get",
            "--prefix",
            "p/",
            "--sort-by",
            target,
            "--order",
            order,
        ])
    };
    assert_eq!(
        sorted("KEY", "DESCEND"),
        simple_kvs(&[("p/c", "4"), ("p/b", "22"), ("p/a", "333")])
    );
    assert_eq!(
        sorted("VALUE", "ASCEND"),
        simple_kvs(&[("p/b", "22"), ("p/a", "333"), ("p/c", "4")])
    );
    assert_eq!(
        sorted("VALUE", "DESCEND"),
        simple_kvs(&[("p/c", "4"), ("p/a", "333"), ("p/b", "22")])
    );
    // create: a (r_a1) < b < c
    assert_eq!(
        sorted("CREATE", "DESCEND"),
        simple_kvs(&[("p/c", "4"), ("p/b", "22"), ("p/a", "333")])
    );
    // modify: b (r_b) < a (r_a2) < c (r_c)
    assert_eq!(
        sorted("MODIFY", "ASCEND"),
        simple_kvs(&[("p/b", "22"), ("p/a", "333"), ("p/c", "4")])
    );
    // version: a has 2, b and c have 1 -> a comes last ascending.
    let by_version = sorted("VERSION", "ASCEND");
    assert!(
        by_version.ends_with("p/a\n333\n"),
        "sort by VERSION ASCEND: {by_version:?}"
    );
    // sort + limit: the server sorts the whole range, then limits.
    assert_eq!(
        c.ok(&[
            "get",
            "--prefix",
            "p/",
            "--sort-by",
            "MODIFY",
            "--order",
            "DESCEND",
            "--limit",
            "1"
        ]),
        simple_kvs(&[("p/c", "4")])
    );

    // --rev: historical reads.
    assert_eq!(
        c.ok(&["get", "p/a", "--rev", &r_a1.to_string()]),
        "p/a\n1\n"
    );
    assert_eq!(
        c.ok(&["get", "--prefix", "p/", "--rev", &r_b.to_string()]),
        simple_kvs(&[("p/a", "1"), ("p/b", "22")])
    );
    // Before the key existed: nothing.
    assert_eq!(c.ok(&["get", "p/c", "--rev", &r_a2.to_string()]), "");
    // A future revision is an error.
    let future = c.run(&["get", "p/a", "--rev", &(r_c + 1000).to_string()]);
    assert_eq!(future.code, 1, "{}", future.describe());
    assert!(
        future
            .stderr
            .contains("Error: etcdserver: mvcc: required revision is a future revision"),
        "{}",
        future.describe()
    );

    // -w json, field by field.
    let now = c.revision();
    let v = c.json(&["get", "--prefix", "p/"]);
    let header = &v["header"];
    assert_eq!(num(&header["revision"]), now, "{v}");
    assert!(unum(&header["cluster_id"]) != 0, "cluster_id set: {v}");
    assert!(unum(&header["member_id"]) != 0, "member_id set: {v}");
    assert!(num(&header["raft_term"]) >= 1, "raft_term set: {v}");
    assert_eq!(num(&v["count"]), 3, "{v}");
    assert!(!flag(&v["more"]), "more is false/omitted: {v}");
    let kvs = v["kvs"].as_array().expect("kvs array");
    let expect = [
        ("p/a", "333", r_a1, r_a2, 2),
        ("p/b", "22", r_b, r_b, 1),
        ("p/c", "4", r_c, r_c, 1),
    ];
    assert_eq!(kvs.len(), expect.len(), "{v}");
    for (kv, (key, value, create, modr, version)) in kvs.iter().zip(expect) {
        assert_eq!(kv["key"], Value::from(b64(key.as_bytes())), "{kv}");
        assert_eq!(kv["value"], Value::from(b64(value.as_bytes())), "{kv}");
        assert_eq!(num(&kv["create_revision"]), create, "{key}: {kv}");
        assert_eq!(num(&kv["mod_revision"]), modr, "{key}: {kv}");
        assert_eq!(num(&kv["version"]), version, "{key}: {kv}");
        assert_eq!(num(&kv["lease"]), 0, "{key}: {kv}");
    }

    // --limit: more=true, count is the total in range.
    let v = c.json(&["get", "--prefix", "p/", "--limit", "2"]);
    assert_eq!(num(&v["count"]), 3, "{v}");
    assert!(flag(&v["more"]), "more=true with a limit: {v}");
    assert_eq!(v["kvs"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["kvs"][1]["key"], Value::from(b64(b"p/b")), "{v}");

    // --keys-only: no values in the JSON.
    let v = c.json(&["get", "--prefix", "p/", "--keys-only"]);
    assert_eq!(num(&v["count"]), 3, "{v}");
    for kv in v["kvs"].as_array().expect("kvs") {
        assert!(
            kv.get("value").is_none() || kv["value"] == "",
            "keys-only returns no value: {kv}"
        );
        assert!(num(&kv["mod_revision"]) > 0, "{kv}");
    }

    // --rev in JSON: old data, but the header carries the current revision.
    let v = c.json(&["get", "p/a", "--rev", &r_a1.to_string()]);
    assert_eq!(num(&v["header"]["revision"]), now, "{v}");
    assert_eq!(num(&v["count"]), 1, "{v}");
    assert_eq!(v["kvs"][0]["value"], Value::from(b64(b"1")), "{v}");
    assert_eq!(num(&v["kvs"][0]["mod_revision"]), r_a1, "{v}");
    assert_eq!(num(&v["kvs"][0]["version"]), 1, "{v}");

    // A miss: count 0 (omitted), no kvs.
    let v = c.json(&["get", "p/missing"]);
    assert_eq!(num(&v["count"]), 0, "{v}");
    assert!(
        v.get("kvs").is_none() || v["kvs"] == Value::Array(vec![]),
        "{v}"
    );
    assert_eq!(num(&v["header"]["revision"]), now, "{v}");

    // Binary-safe values with spaces.
    c.put("p/space", "hello world");
    assert_eq!(c.ok(&["get", "p/space"]), "p/space\nhello world\n");
}

#[test]
fn delete() {
    let Some(c) = Ctl::start() else { return };

    c.put("d/1", "a");
    c.put("d/2", "b");
    c.put("d/3", "c");
    c.put("e", "z");

    // Single key: prints the number deleted.
    assert_eq!(c.ok(&["del", "d/1"]), "1\n");
    assert_eq!(c.ok(&["del", "d/1"]), "0\n");
    assert_eq!(c.ok(&["del", "nothing-here"]), "0\n");
    let before = c.revision();
    assert_eq!(c.ok(&["del", "--prefix", "d/"]), "2\n");
    // One delete-range is one revision, however many keys it removes.
    assert_eq!(c.revision(), before + 1);
    assert_eq!(c.ok(&["get", "--prefix", "d/"]), "");
    assert_eq!(c.ok(&["get", "e"]), "e\nz\n");

    // --prev-kv prints the count, then the deleted pairs.
    c.put("f", "old");
    assert_eq!(c.ok(&["del", "f", "--prev-kv"]), "1\nf\nold\n");

    // JSON: `deleted` (omitted when 0) and the new revision in the header.
    c.put("g/1", "1");
    c.put("g/2", "2");
    let rev = c.revision();
    let v = c.json(&["del", "--prefix", "g/"]);
    assert_eq!(num(&v["deleted"]), 2, "{v}");
    assert_eq!(num(&v["header"]["revision"]), rev + 1, "{v}");
    let v = c.json(&["del", "--prefix", "g/"]);
    assert_eq!(num(&v["deleted"]), 0, "{v}");
    // Deleting nothing does not create a revision.
    assert_eq!(num(&v["header"]["revision"]), rev + 1, "{v}");
}

#[test]
fn txn_from_stdin() {
    let Some(c) = Ctl::start() else { return };

    c.put("t/k", "v1");
    c.put("t/n", "10");
    let k_rev = c.revision() - 1;

    // Format (non-interactive): compares, blank line, success ops, blank
    // line, failure ops, blank line. Each section ends with an empty line.
    let txn = |input: &str| c.run_with_stdin(&["txn"], Some(input));

    // All compares hold: SUCCESS, then each success op's output followed
    // by an empty line.
    let out = txn(&format!(
        "value(\"t/k\") = \"v1\"\n\
         mod(\"t/k\") = \"{k_rev}\"\n\
         version(\"t/k\") = \"1\"\n\
         create(\"t/missing\") = \"0\"\n\
         \n\
         put t/k v2\n\
         get t/n\n\
         del t/n\n\
         \n\
         put t/failed yes\n\
         \n"
    ));
    assert_eq!(out.code, 0, "{}", out.describe());
    assert_eq!(
        out.stdout,
        "SUCCESS\n\nOK\n\nt/n\n10\n\n1\n",
        "{}",
        out.describe()
    );
    assert_eq!(c.ok(&["get", "t/k"]), "t/k\nv2\n");
    assert_eq!(c.ok(&["get", "t/n"]), "");
    assert_eq!(c.ok(&["get", "t/failed"]), "");

    // One compare fails: FAILURE and the failure ops run.
    let out = txn("value(\"t/k\") = \"v2\"\n\
         value(\"t/k\") = \"wrong\"\n\
         \n\
         put t/k v3\n\
         \n\
         put t/failed yes\n\
         get t/k\n\
         \n");
    assert_eq!(out.code, 0, "{}", out.describe());
    assert_eq!(
        out.stdout,
        "FAILURE\n\nOK\n\nt/k\nv2\n",
        "{}",
        out.describe()
    );
    assert_eq!(c.ok(&["get", "t/k"]), "t/k\nv2\n");
    assert_eq!(c.ok(&["get", "t/failed"]), "t/failed\nyes\n");

    // Comparison operators: > and < and != on revisions / versions.
    let out = txn("version(\"t/k\") > \"1\"\n\
         mod(\"t/k\") < \"1000000\"\n\
         value(\"t/k\") != \"v1\"\n\
         \n\
         put t/cmp ok\n\
         \n\
         \n");
    assert_eq!(out.stdout, "SUCCESS\n\nOK\n", "{}", out.describe());

    // Empty compares: always succeeds.
    let out = txn("\nput t/empty 1\n\n\n");
    assert_eq!(out.stdout, "SUCCESS\n\nOK\n", "{}", out.describe());

    // -w json
    let rev = c.revision();
    let out = c.run_with_stdin(
        &["txn", "-w", "json"],
        Some("value(\"t/k\") = \"v2\"\n\nput t/k v4\nget t/k\n\n\n"),
    );
    assert_eq!(out.code, 0, "{}", out.describe());
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("txn json");
    assert!(flag(&v["succeeded"]), "{v}");
    assert_eq!(num(&v["header"]["revision"]), rev + 1, "{v}");
    let resps = v["responses"].as_array().expect("responses");
    assert_eq!(resps.len(), 2, "{v}");
    let put = &resps[0]["Response"]["ResponsePut"];
    assert!(put.is_object(), "first response is a put: {v}");
    let range = &resps[1]["Response"]["ResponseRange"];
    assert_eq!(num(&range["count"]), 1, "{v}");
    assert_eq!(range["kvs"][0]["value"], Value::from(b64(b"v4")), "{v}");
    assert_eq!(num(&range["kvs"][0]["mod_revision"]), rev + 1, "{v}");

    let out = c.run_with_stdin(
        &["txn", "-w", "json"],
        Some("value(\"t/k\") = \"nope\"\n\n\nget t/k\n\n"),
    );
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("txn json");
    assert!(!flag(&v["succeeded"]), "{v}");
    // A read-only txn does not move the revision.
    assert_eq!(num(&v["header"]["revision"]), rev + 1, "{v}");

    // A missing section terminator is an input error (exit 3, "Error: EOF")
    // and nothing is applied.
    let out = txn("value(\"t/k\") = \"v4\"\n\nput t/k v5\n\n");
    assert_eq!(out.code, 3, "{}", out.describe());
    assert!(out.stderr.contains("Error: EOF"), "{}", out.describe());
    assert_eq!(c.ok(&["get", "t/k"]), "t/k\nv4\n");
}

#[test]
fn compaction() {
    let Some(c) = Ctl::start() else { return };

    let r1 = c.put("c/k", "1");
    let r2 = c.put("c/k", "2");
    let r3 = c.put("c/k", "3");
    c.put("c/k", "4");

    assert_eq!(
        c.ok(&["compaction", &r2.to_string()]),
        format!("compacted revision {r2}\n")
    );

    // Below the compaction revision: error, exit 1.
    let out = c.run(&["get", "c/k", "--rev", &r1.to_string()]);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("Error: etcdserver: mvcc: required revision has been compacted"),
        "{}",
        out.describe()
    );
    // At and above the compaction revision: still readable.
    assert_eq!(c.ok(&["get", "c/k", "--rev", &r2.to_string()]), "c/k\n2\n");
    assert_eq!(c.ok(&["get", "c/k", "--rev", &r3.to_string()]), "c/k\n3\n");
    assert_eq!(c.ok(&["get", "c/k"]), "c/k\n4\n");

    // Compacting again at or below the compacted revision is an error.
    let out = c.run(&["compaction", &r1.to_string()]);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("Error: etcdserver: mvcc: required revision has been compacted"),
        "{}",
        out.describe()
    );
    // So is compacting a future revision.
    let out = c.run(&["compaction", "1000000"]);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert!(
        out.stderr
            .contains("Error: etcdserver: mvcc: required revision is a future revision"),
        "{}",
        out.describe()
    );
    // --physical waits for the compaction to hit the backend.
    let r4 = c.revision();
    assert_eq!(
        c.ok(&["compaction", "--physical", &r4.to_string()]),
        format!("compacted revision {r4}\n")
    );
    let out = c.run(&["get", "c/k", "--rev", &r3.to_string()]);
    assert_eq!(out.code, 1, "{}", out.describe());
    assert_eq!(c.ok(&["get", "c/k"]), "c/k\n4\n");
}

#[test]
fn endpoint_status() {
    let Some(c) = Ctl::start() else { return };
    c.put("s", "1");

    let v = c.json(&["endpoint", "status"]);
    let list = v.as_array().expect("endpoint status -w json is an array");
    assert_eq!(list.len(), 1, "{v}");
    let e = &list[0];
    assert_eq!(e["Endpoint"], Value::from(c.ep()), "{v}");
    let st = &e["Status"];
    let member_id = unum(&st["header"]["member_id"]);
    assert!(member_id != 0, "{v}");
    assert!(unum(&st["header"]["cluster_id"]) != 0, "{v}");
    assert_eq!(num(&st["header"]["revision"]), c.revision(), "{v}");
    assert_eq!(unum(&st["leader"]), member_id, "single member leads: {v}");
    let version = st["version"].as_str().expect("version string");
    assert!(!version.is_empty(), "{v}");
    assert!(num(&st["dbSize"]) > 0, "{v}");
    assert!(num(&st["raftTerm"]) >= 1, "{v}");
    assert!(num(&st["raftIndex"]) >= 1, "{v}");

    // Simple: comma-separated, same columns as the table.
    let simple = c.ok(&["endpoint", "status"]);
    assert!(
        simple.starts_with(&format!("{}, {:x}, {version}, ", c.ep(), member_id)),
        "{simple}"
    );

    let table = c.ok(&["endpoint", "status", "-w", "table"]);
    let rows = parse_table(&table);
    assert_eq!(rows.len(), 1, "{table}");
    let row = &rows[0];
    assert_eq!(cell(row, "ENDPOINT"), c.ep(), "{table}");
    assert_eq!(cell(row, "ID"), format!("{member_id:x}"), "{table}");
    assert_eq!(cell(row, "VERSION"), version, "{table}");
    assert!(!cell(row, "DB SIZE").is_empty(), "{table}");
    assert_eq!(cell(row, "IS LEADER"), "true", "{table}");
    assert_eq!(cell(row, "IS LEARNER"), "false", "{table}");
    assert_eq!(
        cell(row, "RAFT TERM"),
        num(&st["raftTerm"]).to_string(),
        "{table}"
    );
    assert_eq!(cell(row, "ERRORS"), "", "{table}");
}

#[test]
fn endpoint_health() {
    let Some(c) = Ctl::start() else { return };

    let out = c.run(&["endpoint", "health"]);
    assert_eq!(out.code, 0, "{}", out.describe());
    // etcdctl 3.4 prints this on stderr, 3.5 on stdout.
    let expect = format!(
        "{} is healthy: successfully committed proposal: took = ",
        c.ep()
    );
    assert!(out.all().contains(&expect), "{}", out.describe());

    let out = c.run(&["endpoint", "health", "-w", "json"]);
    assert_eq!(out.code, 0, "{}", out.describe());
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("health json");
    assert_eq!(v[0]["endpoint"], Value::from(c.ep()), "{v}");
    assert_eq!(v[0]["health"], Value::from(true), "{v}");

    let table = c.ok(&["endpoint", "health", "-w", "table"]);
    let rows = parse_table(&table);
    assert_eq!(rows.len(), 1, "{table}");
    assert_eq!(cell(&rows[0], "ENDPOINT"), c.ep(), "{table}");
    assert_eq!(cell(&rows[0], "HEALTH"), "true", "{table}");
    assert_eq!(cell(&rows[0], "ERROR"), "", "{table}");
}

#[test]
fn member_list() {
    let Some(c) = Ctl::start() else { return };

    let st = c.json(&["endpoint", "status"]);
    let self_id = unum(&st[0]["Status"]["header"]["member_id"]);
    let cluster_id = unum(&st[0]["Status"]["header"]["cluster_id"]);

    let v = c.json(&["member", "list"]);
    assert_eq!(unum(&v["header"]["member_id"]), self_id, "{v}");
    assert_eq!(unum(&v["header"]["cluster_id"]), cluster_id, "{v}");
    let members = v["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{v}");
    let m = &members[0];
    assert_eq!(unum(&m["ID"]), self_id, "{v}");
    assert_eq!(m["name"], Value::from("default"), "{v}");
    let peers = m["peerURLs"].as_array().expect("peerURLs");
    assert!(!peers.is_empty(), "{v}");
    let clients = m["clientURLs"].as_array().expect("clientURLs");
    assert!(
        clients.contains(&Value::from(c.ep())),
        "clientURLs advertise the real client URL: {v}"
    );
    assert!(!flag(&m["isLearner"]), "{v}");

    let table = c.ok(&["member", "list", "-w", "table"]);
    let rows = parse_table(&table);
    assert_eq!(rows.len(), 1, "{table}");
    let row = &rows[0];
    assert_eq!(cell(row, "ID"), format!("{self_id:x}"), "{table}");
    assert_eq!(cell(row, "STATUS"), "started", "{table}");
    assert_eq!(cell(row, "NAME"), "default", "{table}");
    assert_eq!(
        cell(row, "PEER ADDRS"),
        peers
            .iter()
            .map(|p| p.as_str().expect("peer URL string"))
            .collect::<Vec<_>>()
            .join(","),
        "{table}"
    );
    assert!(
        cell(row, "CLIENT ADDRS").split(',').any(|u| u == c.ep()),
        "{table}"
    );
    assert_eq!(cell(row, "IS LEARNER"), "false", "{table}");

    // Simple: `id, status, name, peers, clients, is-learner`.
    let simple = c.ok(&["member", "list"]);
    assert!(
        simple.starts_with(&format!("{self_id:x}, started, default, ")),
        "{simple}"
    );
    assert!(simple.trim_end().ends_with(", false"), "{simple}");
}
