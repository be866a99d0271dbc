//! End-to-end tests of `quoratectl watch` and `quoratectl lease ...` against
//! a real server (`QUORATE_TEST_TARGET=etcd` runs them against etcd).
//!
//! Expected outputs are etcdctl's. Where an `etcdctl` binary is installed,
//! the same commands are run with it and the bytes compared (lease IDs and
//! remaining TTLs masked where they legitimately differ).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;

/// One finished run.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn base_command(program: &Path, ep: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(ep)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn exec(program: &Path, ep: &str, args: &[&str]) -> Run {
    let out = base_command(program, ep, args)
        .output()
        .expect("run command");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ep(s: &Server) -> String {
    s.endpoint.trim_start_matches("http://").to_string()
}

fn ctl(s: &Server, args: &[&str]) -> Run {
    exec(&common::quoratectl_bin(), &ep(s), args)
}

fn etcdctl(s: &Server, args: &[&str]) -> Option<Run> {
    common::etcdctl_bin().map(|b| exec(&b, &ep(s), args))
}

/// A long-running command whose stdout is collected in the background.
struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().expect("lock").extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

impl Running {
    fn spawn(program: &Path, ep: &str, args: &[&str]) -> Running {
        let mut child = base_command(program, ep, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("lock")).into_owned()
    }

    fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("lock")).into_owned()
    }

    /// Waits (bounded) until stdout satisfies `done`; returns stdout.
    fn wait_for(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let s = self.out();
            if done(&s) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.out()
    }

    /// Waits (bounded) for the process to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return Some(st.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGINT, then (bounded) SIGKILL; returns the exit code (-1: signal).
    fn interrupt(&mut self) -> i32 {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        match self.wait_exit(Duration::from_secs(5)) {
            Some(code) => code,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                -2
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn revision(c: &mut etcd_client::Client) -> i64 {
    c.get("\0", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

const WAIT: Duration = Duration::from_secs(15);

/// Watch commands (quoratectl, and etcdctl when installed) started on the
/// same arguments; returns the collected outputs after `writes` happen.
fn watch_both(
    server: &Server,
    args: &[&str],
    expected: &str,
    writes: impl FnOnce(),
) -> Vec<(String, String, i32)> {
    let mut procs = vec![(
        "quoratectl",
        Running::spawn(&common::quoratectl_bin(), &ep(server), args),
    )];
    if let Some(b) = common::etcdctl_bin() {
        procs.push(("etcdctl", Running::spawn(&b, &ep(server), args)));
    }
    writes();
    procs
        .iter_mut()
        .map(|(name, p)| {
            let out = p.wait_for(WAIT, |s| s.len() >= expected.len());
            // Give a wrong extra event a moment to show up.
            std::thread::sleep(Duration::from_millis(200));
            let out = if out.len() >= expected.len() {
                p.out()
            } else {
                out
            };
            let code = p.interrupt();
            (name.to_string(), out, code)
        })
        .collect()
}

#[test]
fn watch_prefix_prev_kv_from_revision() {
    let server = Server::start();
    let rt = rt();
    let mut c = rt.block_on(server.client());
    let start = rt.block_on(async {
        c.put("w/a", "1", None).await.expect("put");
        revision(&mut c).await + 1
    });
    let rev = start.to_string();
    let expected =
        "PUT\nw/a\n1\nw/a\n2\nDELETE\nw/a\n2\nw/a\n\nPUT\nw/b\n3\nDELETE\nw/b\n3\nw/b\n\n";
    let args = ["watch", "--prefix", "w/", "--prev-kv", "--rev", &rev];
    let outs = watch_both(&server, &args, expected, || {
        rt.block_on(async {
            c.put("w/a", "2", None).await.expect("put");
            c.delete("w/a", None).await.expect("del");
            c.put("x/other", "9", None).await.expect("put");
            c.put("w/b", "3", None).await.expect("put");
            c.delete("w/", Some(etcd_client::DeleteOptions::new().with_prefix()))
                .await
                .expect("del prefix");
        })
    });
    for (name, out, code) in &outs {
        assert_eq!(out, expected, "{name} stdout");
        if name == "quoratectl" {
            assert_eq!(*code, 5, "quoratectl exits 5 on SIGINT");
        }
    }
}

#[test]
fn watch_history_range_and_json() {
    let server = Server::start();
    let rt = rt();
    let mut c = rt.block_on(server.client());
    rt.block_on(async {
        for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("b", "4")] {
            c.put(k, v, None).await.expect("put");
        }
    });
    // History from revision 1, range [b, c): both versions of b only.
    let expected = "PUT\nb\n2\nPUT\nb\n4\n";
    for (name, out, _) in watch_both(&server, &["watch", "--rev", "1", "b", "c"], expected, || {}) {
        assert_eq!(out, expected, "{name}");
    }

    // JSON: one line per WatchResponse, etcdctl's Go struct field names.
    let outs = watch_both(
        &server,
        &["-w", "json", "watch", "--rev", "1", "a"],
        "x",
        || {},
    );
    let mut texts = Vec::new();
    for (name, out, _) in outs {
        let line = out.lines().next().unwrap_or_default().to_string();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{name}: {e}: {out}"));
        assert_eq!(v["Events"][0]["kv"]["key"], "YQ==", "{name}: {line}");
        assert_eq!(v["Events"][0]["kv"]["value"], "MQ==", "{name}: {line}");
        assert!(v["Events"][0].get("type").is_none(), "PUT omitted: {line}");
        assert_eq!(v["Canceled"], false);
        assert_eq!(v["Created"], false);
        assert_eq!(v["CompactRevision"], 0);
        texts.push(line);
    }
    if texts.len() == 2 {
        assert_eq!(texts[0], texts[1], "quoratectl vs etcdctl JSON");
    }
}

#[test]
fn watch_exec_command_gets_event_environment() {
    let server = Server::start();
    let rt = rt();
    let mut c = rt.block_on(server.client());
    let from = rt.block_on(async { revision(&mut c).await + 1 });
    let script = r#"printf '%s|%s|%s|%s\n' "$ETCD_WATCH_REVISION" "$ETCD_WATCH_EVENT_TYPE" "$ETCD_WATCH_KEY" "$ETCD_WATCH_VALUE""#;
    let rev = from.to_string();
    let args = ["watch", "--rev", &rev, "k", "--", "sh", "-c", script];
    let mut procs = vec![Running::spawn(
        &common::quoratectl_bin(),
        &ep(&server),
        &args,
    )];
    if let Some(b) = common::etcdctl_bin() {
        procs.push(Running::spawn(&b, &ep(&server), &args));
    }
    // One write at a time, so each event is its own WatchResponse (etcd
    // batches events of several revisions, and the exec environment
    // carries the response's revision).
    let put = format!("PUT\nk\nv 1\n{from}|\"PUT\"|\"k\"|\"v 1\"\n");
    rt.block_on(async { c.put("k", "v 1", None).await.expect("put") });
    for p in &procs {
        let out = p.wait_for(WAIT, |s| s.len() >= put.len());
        assert_eq!(out, put, "{}", p.err());
    }
    let expected = format!("{put}DELETE\nk\n\n{}|\"DELETE\"|\"k\"|\"\"\n", from + 1);
    rt.block_on(async { c.delete("k", None).await.expect("del") });
    for p in &mut procs {
        let out = p.wait_for(WAIT, |s| s.len() >= expected.len());
        assert_eq!(out, expected, "{}", p.err());
        p.interrupt();
    }
    // Only the delete: a single event.
    let first = (from + 1).to_string();
    // A failing command stops the watch with exit 1.
    let r = ctl(&server, &["watch", "--rev", &first, "k", "--", "false"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.stderr, "command [\"false\"] error (exit status 1)\n");
    assert_eq!(r.stdout, "DELETE\nk\n\n");
}

#[test]
fn watch_argument_errors_and_compaction() {
    let server = Server::start();
    let cases: &[(&[&str], &str)] = &[
        (&["watch"], "Error: bad number of arguments\n"),
        (
            &["watch", "a", "b", "--prefix"],
            "Error: `range_end` and `--prefix` are mutually exclusive\n",
        ),
        (
            &["watch", "a", "--"],
            "Error: bad number of arguments (found separator --, but no commands)\n",
        ),
        (&["watch", "--", "echo"], "Error: bad number of arguments\n"),
    ];
    for (args, stderr) in cases {
        let r = ctl(&server, args);
        assert_eq!((r.code, r.stderr.as_str()), (128, *stderr), "{args:?}");
        if let Some(e) = etcdctl(&server, args) {
            assert_eq!(
                (e.code, e.stderr.as_str()),
                (128, *stderr),
                "etcdctl {args:?}"
            );
        }
    }

    let rt = rt();
    let mut c = rt.block_on(server.client());
    let rev = rt.block_on(async {
        c.put("k", "1", None).await.expect("put");
        c.put("k", "2", None).await.expect("put");
        let rev = revision(&mut c).await;
        c.compact(rev, None).await.expect("compact");
        rev
    });
    assert!(rev > 2);
    let r = ctl(&server, &["watch", "--rev", "1", "k"]);
    let want_err = "watch was canceled (etcdserver: mvcc: required revision has been compacted)\nError: watch is canceled by the server\n";
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (5, "", want_err)
    );
    let j = ctl(&server, &["-w", "json", "watch", "--rev", "1", "k"]);
    assert_eq!(j.code, 5, "{j:?}");
    let v: serde_json::Value = serde_json::from_str(j.stdout.trim()).expect("json");
    assert_eq!(v["Canceled"], true);
    assert_eq!(v["CompactRevision"], rev);
    if let Some(e) = etcdctl(&server, &["watch", "--rev", "1", "k"]) {
        assert_eq!(
            (e.code, e.stdout.as_str(), e.stderr.as_str()),
            (5, "", want_err)
        );
        let ej = etcdctl(&server, &["-w", "json", "watch", "--rev", "1", "k"]).expect("etcdctl");
        assert_eq!(ej.stdout, j.stdout, "JSON of the compacted response");
    }
}

#[test]
fn watch_progress_notify() {
    let server = Server::start_target(
        common::Target::from_env(),
        &["--experimental-watch-progress-notify-interval=1s"],
    );
    let mut p = Running::spawn(
        &common::quoratectl_bin(),
        &ep(&server),
        &["watch", "--progress-notify", "idle"],
    );
    let out = p.wait_for(WAIT, |s| s.contains("progress notify: "));
    p.interrupt();
    assert!(
        out.starts_with("progress notify: 1\n"),
        "{out:?} / {}",
        p.err()
    );
}

/// Replaces 16-hex-digit lease IDs with `<ID>` and decimal IDs too.
fn mask(s: &str, ids: &[i64]) -> String {
    let mut s = s.to_string();
    for id in ids {
        s = s.replace(&format!("{id:016x}"), "<ID>");
        s = s.replace(&id.to_string(), "<ID>");
    }
    s
}

/// Masks a remaining TTL (the two tools ask a moment apart).
fn mask_ttl(s: &str) -> String {
    let mut s = s.to_string();
    for n in 280..=300 {
        s = s.replace(&format!("remaining({n}s)"), "remaining(N)");
        s = s.replace(&format!("\"ttl\":{n},"), "\"ttl\":N,");
        s = s.replace(
            &format!("\"TTL\" : {n}\n\"GrantedTTL"),
            "\"TTL\" : N\n\"GrantedTTL",
        );
    }
    s
}

fn grant_id(r: &Run) -> i64 {
    let hex = r
        .stdout
        .strip_prefix("lease ")
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("grant output {r:?}"));
    assert_eq!(hex.len(), 16, "{r:?}");
    i64::from_str_radix(hex, 16).expect("hex id")
}

#[test]
fn lease_commands() {
    let server = Server::start();
    let rt = rt();
    let mut c = rt.block_on(server.client());

    let g = ctl(&server, &["lease", "grant", "100"]);
    assert_eq!(g.code, 0, "{g:?}");
    let id = grant_id(&g);
    let hex = format!("{id:016x}");
    assert_eq!(g.stdout, format!("lease {hex} granted with TTL(100s)\n"));

    // put --lease takes the ID in hex, like etcdctl.
    let p = ctl(&server, &["put", "--lease", &hex, "lk", "v"]);
    assert_eq!((p.code, p.stdout.as_str()), (0, "OK\n"), "{p:?}");
    let kv_lease = rt.block_on(async {
        let r = c.get("lk", None).await.expect("get");
        r.kvs()[0].lease()
    });
    assert_eq!(kv_lease, id);

    let t = ctl(&server, &["lease", "timetolive", &hex, "--keys"]);
    assert_eq!(t.code, 0, "{t:?}");
    let prefix = format!("lease {hex} granted with TTL(100s), remaining(");
    assert!(t.stdout.starts_with(&prefix), "{t:?}");
    assert!(t.stdout.ends_with("s), attached keys([lk])\n"), "{t:?}");
    let t = ctl(
        &server,
        &["-w", "json", "lease", "timetolive", &hex, "--keys"],
    );
    let v: serde_json::Value = serde_json::from_str(&t.stdout).expect("json");
    assert_eq!(v["id"], id);
    assert_eq!(v["granted-ttl"], 100);
    assert_eq!(v["keys"], serde_json::json!(["bGs="]));

    let expired = ctl(&server, &["lease", "timetolive", "1234"]);
    assert_eq!(
        (expired.code, expired.stdout.as_str()),
        (0, "lease 0000000000001234 already expired\n")
    );

    let l = ctl(&server, &["lease", "list"]);
    assert_eq!(
        (l.code, l.stdout.clone()),
        (0, format!("found 1 leases\n{hex}\n"))
    );
    let l = ctl(&server, &["-w", "json", "lease", "list"]);
    let v: serde_json::Value = serde_json::from_str(&l.stdout).expect("json");
    assert_eq!(v["leases"], serde_json::json!([{ "id": id }]));

    let k = ctl(&server, &["lease", "keep-alive", "--once", &hex]);
    assert_eq!(
        (k.code, k.stdout.clone()),
        (0, format!("lease {hex} keepalived with TTL(100)\n"))
    );
    let k = ctl(&server, &["lease", "keep-alive", "--once", "1234"]);
    assert_eq!(
        (k.code, k.stderr.as_str()),
        (2, "Error: etcdserver: requested lease not found\n")
    );

    let r = ctl(&server, &["lease", "revoke", &hex]);
    assert_eq!(
        (r.code, r.stdout.clone()),
        (0, format!("lease {hex} revoked\n"))
    );
    let r = ctl(&server, &["lease", "revoke", &hex]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "Error: failed to revoke lease (etcdserver: requested lease not found)\n"
        )
    );
    let l = ctl(&server, &["lease", "list"]);
    assert_eq!(l.stdout, "found 0 leases\n");
    let l = ctl(&server, &["-w", "json", "lease", "list"]);
    assert!(l.stdout.contains("\"leases\":[]"), "{l:?}");

    // Argument errors.
    let cases: &[(&[&str], &str)] = &[
        (&["lease", "grant"], "Error: lease grant command needs TTL argument\n"),
        (
            &["lease", "grant", "x"],
            "Error: bad TTL (strconv.ParseInt: parsing \"x\": invalid syntax)\n",
        ),
        (&["lease", "revoke"], "Error: lease revoke command needs 1 argument\n"),
        (
            &["lease", "revoke", "zz"],
            "Error: bad lease ID arg (strconv.ParseInt: parsing \"zz\": invalid syntax), expecting ID in Hex\n",
        ),
        (
            &["lease", "timetolive"],
            "Error: lease timetolive command needs lease ID as argument\n",
        ),
        (
            &["lease", "keep-alive"],
            "Error: lease keep-alive command needs lease ID as argument\n",
        ),
    ];
    for (args, stderr) in cases {
        let r = ctl(&server, args);
        assert_eq!((r.code, r.stderr.as_str()), (128, *stderr), "{args:?}");
    }
    let r = ctl(&server, &["-w", "table", "lease", "list"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (4, "Error: table not supported as output format\n")
    );
}

#[test]
fn lease_output_matches_etcdctl() {
    let server = Server::start();
    if common::etcdctl_bin().is_none() {
        eprintln!("etcdctl not installed; skipping byte comparison");
        return;
    }
    let rt = rt();
    let mut c = rt.block_on(server.client());
    for w in ["simple", "json", "fields", "protobuf", "table"] {
        // grant: IDs differ, everything else must not.
        let q = ctl(&server, &["-w", w, "lease", "grant", "300"]);
        let e = etcdctl(&server, &["-w", w, "lease", "grant", "300"]).expect("etcdctl");
        let ids: Vec<i64> = rt.block_on(async {
            let r = c.leases().await.expect("leases");
            r.leases().iter().map(|l| l.id()).collect()
        });
        assert_eq!(
            (q.code, mask(&q.stdout, &ids), q.stderr.clone()),
            (e.code, mask(&e.stdout, &ids), e.stderr.clone()),
            "-w {w} lease grant"
        );
    }
    // One lease with one key for the read-only commands.
    let id = rt.block_on(async {
        let r = c.lease_grant(300, None).await.expect("grant");
        let opts = etcd_client::PutOptions::new().with_lease(r.id());
        c.put("lk", "v", Some(opts)).await.expect("put");
        r.id()
    });
    let hex = format!("{id:016x}");
    for w in ["simple", "json", "fields", "protobuf", "table"] {
        for args in [
            vec!["lease", "list"],
            vec!["lease", "timetolive", "--keys", &hex],
            vec!["lease", "timetolive", "00ff"],
            vec!["lease", "keep-alive", "--once", &hex],
            vec!["lease", "keep-alive", "--once", "00ff"],
        ] {
            // etcdctl checks the format only after the request, so its
            // error for a failing request wins over "table not supported";
            // quoratectl refuses the format before sending anything.
            if w == "table" && args.last() == Some(&"00ff") && args[1] == "keep-alive" {
                continue;
            }
            let mut full = vec!["-w", w];
            full.extend(args.iter().copied());
            let q = ctl(&server, &full);
            let e = etcdctl(&server, &full).expect("etcdctl");
            assert_eq!(
                (q.code, mask_ttl(&q.stdout), q.stderr.clone()),
                (e.code, mask_ttl(&e.stdout), e.stderr.clone()),
                "{full:?}"
            );
        }
        // revoke: a fresh lease for each tool.
        let (a, b) = rt.block_on(async {
            let a = c.lease_grant(300, None).await.expect("grant").id();
            let b = c.lease_grant(300, None).await.expect("grant").id();
            (a, b)
        });
        let q = ctl(&server, &["-w", w, "lease", "revoke", &format!("{a:x}")]);
        let e =
            etcdctl(&server, &["-w", w, "lease", "revoke", &format!("{b:x}")]).expect("etcdctl");
        assert_eq!(
            (q.code, mask(&q.stdout, &[a]), q.stderr.clone()),
            (e.code, mask(&e.stdout, &[b]), e.stderr.clone()),
            "-w {w} lease revoke"
        );
    }
}

#[test]
fn lease_keep_alive_until_revoked() {
    let server = Server::start();
    let rt = rt();
    let mut c = rt.block_on(server.client());
    let id = rt.block_on(async { c.lease_grant(3, None).await.expect("grant").id() });
    let hex = format!("{id:016x}");
    let line = format!("lease {hex} keepalived with TTL(3)\n");
    let mut p = Running::spawn(
        &common::quoratectl_bin(),
        &ep(&server),
        &["lease", "keep-alive", &hex],
    );
    // TTL/3 = 1s between renewals: two renewals within a few seconds.
    let out = p.wait_for(WAIT, |s| s.matches(&line).count() >= 2);
    assert!(out.matches(&line).count() >= 2, "{out:?} {}", p.err());
    rt.block_on(async { c.lease_revoke(id).await.expect("revoke") });
    let code = p.wait_exit(WAIT);
    let out = p.out();
    assert_eq!(code, Some(0), "{out:?} {}", p.err());
    assert!(
        out.ends_with(&format!("lease {hex} expired or revoked.\n")),
        "{out:?}"
    );
    assert!(out.starts_with(&line), "{out:?}");
}
