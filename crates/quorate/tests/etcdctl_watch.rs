//! `etcdctl watch` against the server: `--prefix`, `--rev`, `--prev-kv`, and
//! a compacted `--rev`. etcdctl runs as a child process; the test writes,
//! then kills it after a bounded time and checks what it printed.
//!
//! Skipped (and passing, with a message) when `etcdctl` is not installed
//! (Debian package `etcd-client`, or `ETCDCTL_BIN`). With
//! `QUORATE_TEST_TARGET=etcd` the same tests run against a real etcd, which
//! is how the expectations below were checked (etcdctl/etcd 3.4.23).

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, DeleteOptions, Txn, TxnOp};

const SKIP_MSG: &str = "skipped: etcdctl not found (install Debian package etcd-client)";

/// A running `etcdctl watch` with its output collected in the background.
struct CtlWatch {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn pump(mut r: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
}

impl CtlWatch {
    fn start(bin: &PathBuf, endpoint: &str, args: &[&str]) -> CtlWatch {
        let mut child = Command::new(bin)
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoint)
            .arg("--dial-timeout")
            .arg("5s")
            .arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcdctl");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        pump(child.stdout.take().unwrap(), stdout.clone());
        pump(child.stderr.take().unwrap(), stderr.clone());
        CtlWatch {
            child,
            stdout,
            stderr,
        }
    }

    fn out(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn err(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (≤ `timeout`) until stdout contains `needle`.
    async fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.out().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Waits (≤ `timeout`) for etcdctl to exit by itself; its exit code.
    async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                // Let the pumps drain.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Some(st.code().unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Kills etcdctl; returns (stdout, stderr).
    async fn stop(mut self) -> (String, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tokio::time::sleep(Duration::from_millis(100)).await;
        (self.out(), self.err())
    }
}

impl Drop for CtlWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn setup() -> Option<(PathBuf, common::Server, Client)> {
    let Some(bin) = common::etcdctl_bin() else {
        eprintln!("{SKIP_MSG}");
        return None;
    };
    let srv = common::Server::start();
    let c = srv.client().await;
    Some((bin, srv, c))
}

async fn put(c: &mut Client, k: &str, v: &str) -> i64 {
    c.put(k, v, None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision()
}

/// etcdctl's simple output for events: type, key, value per event; with
/// prev_kv the previous key and value come between type and key.
fn lines(ls: &[&str]) -> String {
    let mut s = ls.join("\n");
    s.push('\n');
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_prefix_prints_live_events() {
    let Some((bin, srv, mut c)) = setup().await else {
        return;
    };
    let w = CtlWatch::start(&bin, &srv.endpoint, &["--prefix", "w/"]);
    // etcdctl prints nothing when its watch is set up: probe until a probe
    // event shows, then wait for the last probe so nothing is in flight.
    let mut last_probe = None;
    for n in 0..100 {
        put(&mut c, "w/0probe", &format!("p{n}")).await;
        last_probe = Some(n);
        if w.wait_for("w/0probe", Duration::from_millis(200)).await {
            break;
        }
    }
    let n = last_probe.unwrap();
    assert!(
        w.wait_for(&format!("p{n}\n"), Duration::from_secs(10))
            .await,
        "etcdctl watch never printed the probe; stderr: {}",
        w.err()
    );
    let offset = w.out().len();

    put(&mut c, "w/a", "1").await;
    put(&mut c, "x/not-watched", "1").await;
    put(&mut c, "w/b", "two words").await;
    c.delete("w/a", None).await.unwrap();
    c.txn(Txn::new().and_then([TxnOp::put("w/c", "3", None), TxnOp::put("w/d", "4", None)]))
        .await
        .unwrap();
    c.delete("w/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    put(&mut c, "w/end", "done").await;
    assert!(
        w.wait_for("w/end\ndone\n", Duration::from_secs(10)).await,
        "etcdctl did not print the last event; stdout: {}",
        w.out()
    );
    let (out, err) = w.stop().await;
    assert_eq!(
        &out[offset..],
        lines(&[
            "PUT",
            "w/a",
            "1", //
            "PUT",
            "w/b",
            "two words", //
            "DELETE",
            "w/a",
            "", //
            "PUT",
            "w/c",
            "3", //
            "PUT",
            "w/d",
            "4", //
            "DELETE",
            "w/0probe",
            "", //
            "DELETE",
            "w/b",
            "", //
            "DELETE",
            "w/c",
            "", //
            "DELETE",
            "w/d",
            "", //
            "PUT",
            "w/end",
            "done",
        ]),
        "stderr: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_rev_replays_history() {
    let Some((bin, srv, mut c)) = setup().await else {
        return;
    };
    put(&mut c, "before", "x").await;
    let r1 = put(&mut c, "h/a", "1").await;
    put(&mut c, "h/a", "2").await;
    put(&mut c, "h/b", "3").await;
    c.delete("h/a", None).await.unwrap();
    put(&mut c, "other", "y").await;
    let rev = r1.to_string();
    let w = CtlWatch::start(&bin, &srv.endpoint, &["--rev", &rev, "--prefix", "h/"]);
    assert!(
        w.wait_for("DELETE\nh/a\n\n", Duration::from_secs(10)).await,
        "stdout: {}; stderr: {}",
        w.out(),
        w.err()
    );
    // A live event after the replay.
    put(&mut c, "h/c", "4").await;
    assert!(
        w.wait_for("h/c\n4\n", Duration::from_secs(10)).await,
        "{}",
        w.out()
    );
    let (out, err) = w.stop().await;
    assert_eq!(
        out,
        lines(&[
            "PUT", "h/a", "1", //
            "PUT", "h/a", "2", //
            "PUT", "h/b", "3", //
            "DELETE", "h/a", "", //
            "PUT", "h/c", "4",
        ]),
        "stderr: {err}"
    );

    // A single key from a revision (no --prefix).
    let w = CtlWatch::start(&bin, &srv.endpoint, &["--rev", &rev, "h/b"]);
    assert!(
        w.wait_for("h/b\n3\n", Duration::from_secs(10)).await,
        "{}",
        w.err()
    );
    let (out, _) = w.stop().await;
    assert_eq!(out, lines(&["PUT", "h/b", "3"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_prev_kv() {
    let Some((bin, srv, mut c)) = setup().await else {
        return;
    };
    let r1 = put(&mut c, "p/a", "1").await;
    put(&mut c, "p/a", "2").await;
    c.delete("p/a", None).await.unwrap();
    put(&mut c, "p/a", "3").await;
    let rev = r1.to_string();
    let w = CtlWatch::start(
        &bin,
        &srv.endpoint,
        &["--rev", &rev, "--prev-kv", "--prefix", "p/"],
    );
    assert!(
        w.wait_for("p/a\n3\n", Duration::from_secs(10)).await,
        "stdout: {}; stderr: {}",
        w.out(),
        w.err()
    );
    let (out, err) = w.stop().await;
    assert_eq!(
        out,
        lines(&[
            "PUT", "p/a", "1", // created: no previous value
            "PUT", "p/a", "1", "p/a", "2", // previous, then current
            "DELETE", "p/a", "2", "p/a", "", //
            "PUT", "p/a", "3",
        ]),
        "stderr: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_compacted_rev_is_reported() {
    let Some((bin, srv, mut c)) = setup().await else {
        return;
    };
    put(&mut c, "k", "1").await;
    put(&mut c, "k", "2").await;
    let r3 = put(&mut c, "k", "3").await;
    c.compact(r3, None).await.unwrap();
    let mut w = CtlWatch::start(&bin, &srv.endpoint, &["--rev", "2", "k"]);
    let code = w.wait_exit(Duration::from_secs(10)).await;
    let (out, err) = (w.out(), w.err());
    // etcdctl 3.4: the canceled response ends the watch with exit code 5
    // (interrupted).
    assert_eq!(out, "", "stdout");
    assert_eq!(
        err,
        "watch was canceled (etcdserver: mvcc: required revision has been compacted)\n\
         Error: watch is canceled by the server\n",
        "stderr"
    );
    assert_eq!(code, Some(5), "exit code; stderr: {err}");
    let _ = w.stop().await;
}
