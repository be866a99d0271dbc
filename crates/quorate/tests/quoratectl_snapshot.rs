//! `quoratectl snapshot save`: the file is written atomically, verified, and
//! accepted by `quorate snapshot status` and `restore`.

mod common;

use std::process::Command;

#[tokio::test]
async fn snapshot_save_writes_a_verified_file_that_restores() {
    let srv = common::Server::start();
    let mut c = srv.client().await;
    for i in 0..50 {
        c.put(format!("k{i}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    let out = Command::new(common::quoratectl_bin())
        .args(["--endpoints", &srv.endpoint, "snapshot", "save"])
        .arg(&file)
        .output()
        .expect("run quoratectl");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("Snapshot saved at {}\n", file.display())
    );
    assert!(
        !dir.path().join("backup.db.part").exists(),
        "no partial file left"
    );
    if srv.target != common::Target::Quorate {
        return; // etcd's snapshot is a bbolt file, not Quorate's format.
    }
    let status = Command::new(common::quorate_bin())
        .args(["snapshot", "status", "-w", "json"])
        .arg(&file)
        .output()
        .expect("run quorate snapshot status");
    assert!(status.status.success(), "{status:?}");
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(v["totalKey"], 50, "{v}");
    assert_eq!(v["revision"], 51, "{v}");
    let restored = dir.path().join("restored");
    let r = Command::new(common::quorate_bin())
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&restored)
        .output()
        .expect("run quorate snapshot restore");
    assert!(r.status.success(), "{r:?}");
    let srv2 = common::Server::start_on(&restored, &[]);
    let mut c2 = srv2.client().await;
    let got = c2
        .get("k", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(got.count(), 50);
}

#[test]
fn snapshot_save_refuses_several_endpoints() {
    let out = Command::new(common::quoratectl_bin())
        .args([
            "--endpoints",
            "127.0.0.1:1,127.0.0.1:2",
            "snapshot",
            "save",
            "/nonexistent/x.db",
        ])
        .output()
        .expect("run quoratectl");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("snapshot must be requested to one selected node"));
}
