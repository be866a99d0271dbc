//! The server process: flags and their environment variables, restart on an
//! existing data dir, clean shutdown on SIGTERM, and clear start-up errors on
//! data dirs that are corrupt, truncated or not Quorate's.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{quorate_bin, Server};

/// Runs quorate on `data_dir` expecting it to fail at start-up.
fn start_expecting_failure(data_dir: &Path) -> Output {
    let mut child = Command::new(quorate_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-client-urls", "http://127.0.0.1:0"])
        .args(["--listen-peer-urls", "http://127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn quorate");
    // Bounded wait: a server that starts instead of failing is killed.
    for _ in 0..200 {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "quorate started on a bad data dir; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates a valid data dir with a few keys, then SIGKILLs the server.
async fn populated_data_dir(dir: &Path) {
    let mut srv = Server::start_on(dir, &[]);
    let mut c = srv.client().await;
    for i in 0..20 {
        c.put(format!("k{i}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    srv.kill();
}

fn store_file(dir: &Path) -> std::path::PathBuf {
    dir.join("member").join("store.redb")
}

#[tokio::test]
async fn restart_after_sigterm_keeps_data_and_identity() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut srv = Server::start_on(&dir, &[]);
    let mut c = srv.client().await;
    let put = c.put("a", "1", None).await.expect("put");
    let member = put.header().expect("header").member_id();
    let status = srv.terminate().expect("exit status");
    assert!(status.success(), "SIGTERM exit status: {status:?}");
    assert!(srv.log().contains("stopped"), "log: {}", srv.log());

    let srv = Server::start_on(&dir, &["--initial-cluster-token", "other-token"]);
    let mut c = srv.client().await;
    let got = c.get("a", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"1");
    assert_eq!(got.header().expect("header").revision(), 2);
    // Bootstrap flags are ignored on an existing data dir: same identity.
    assert_eq!(got.header().expect("header").member_id(), member);
}

#[tokio::test]
async fn flags_are_read_from_quorate_environment_variables() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("envdir");
    let mut child = Command::new(quorate_bin())
        .env("QUORATE_NAME", "from-env")
        .env("QUORATE_DATA_DIR", &dir)
        .env("QUORATE_LISTEN_CLIENT_URLS", "http://127.0.0.1:0")
        .env("QUORATE_ADVERTISE_CLIENT_URLS", "http://127.0.0.1:0")
        .env("QUORATE_LISTEN_PEER_URLS", "http://127.0.0.1:0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut endpoint = None;
    for line in lines.by_ref().take(50) {
        let line = line.expect("line");
        if let Some(p) = line.find("serving client requests on ") {
            endpoint = Some(
                line[p + "serving client requests on ".len()..]
                    .trim()
                    .to_string(),
            );
            break;
        }
    }
    let endpoint = endpoint.expect("server announced its endpoint");
    let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .expect("connect");
    let members = c.member_list().await.expect("member list");
    assert_eq!(members.members()[0].name(), "from-env");
    assert!(store_file(&dir).exists(), "QUORATE_DATA_DIR was used");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn truncated_store_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    populated_data_dir(&dir).await;
    let f = store_file(&dir);
    let len = std::fs::metadata(&f).expect("meta").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .expect("open");
    file.set_len(len / 2).expect("truncate");
    drop(file);
    let out = start_expecting_failure(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open data dir"), "stderr: {err}");
    assert!(err.contains("corrupt"), "stderr: {err}");
}

#[tokio::test]
async fn foreign_store_file_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    populated_data_dir(&dir).await;
    std::fs::write(store_file(&dir), b"not a database at all").expect("overwrite");
    let out = start_expecting_failure(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open data dir"), "stderr: {err}");
    // The file is left as it was: never reset.
    assert_eq!(
        std::fs::read(store_file(&dir)).expect("read"),
        b"not a database at all"
    );
}

#[tokio::test]
async fn non_quorate_data_dir_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("etcd-data");
    std::fs::create_dir_all(dir.join("member").join("snap")).expect("mkdir");
    std::fs::write(dir.join("member").join("snap").join("db"), b"etcd").expect("write");
    let out = start_expecting_failure(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds no Quorate member data"),
        "stderr: {err}"
    );
}

#[tokio::test]
async fn corrupted_pages_are_refused_not_reset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    populated_data_dir(&dir).await;
    let f = store_file(&dir);
    let mut bytes = std::fs::read(&f).expect("read");
    // Flip one byte in every page after the header.
    let mut i = 4096 + 100;
    while i < bytes.len() {
        bytes[i] ^= 0xff;
        i += 4096;
    }
    std::fs::write(&f, &bytes).expect("write");
    let out = start_expecting_failure(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt"), "stderr: {err}");
}
