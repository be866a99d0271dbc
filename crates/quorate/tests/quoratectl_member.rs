//! `quoratectl member add|remove|promote`: etcdctl's simple output.

mod common;

use std::process::Command;

use common::cluster::{self, Cluster};

fn ctl(endpoints: &str, args: &[&str]) -> std::process::Output {
    Command::new(common::quoratectl_bin())
        .args(["--endpoints", endpoints])
        .args(args)
        .output()
        .expect("run quoratectl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_add_promote_remove_print_etcdctls_lines() {
    let c = tokio::task::block_in_place(|| Cluster::start(3));
    let eps = c.endpoints().join(",");
    let (peer, _) = cluster::free_port_pair();
    let url = format!("http://127.0.0.1:{peer}");
    // etcd refuses reconfiguration for ~5 s after start ("unhealthy cluster").
    let add = || {
        ctl(
            &eps,
            &[
                "member",
                "add",
                "m9",
                &format!("--peer-urls={url}"),
                "--learner",
            ],
        )
    };
    let mut out = add();
    for _ in 0..40 {
        if out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("unhealthy cluster")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        out = add();
    }
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("Member ") && lines[0].contains(" added to cluster "),
        "{text}"
    );
    assert_eq!(lines[1], "");
    assert_eq!(lines[2], "ETCD_NAME=\"m9\"");
    assert!(
        lines[3].starts_with("ETCD_INITIAL_CLUSTER=\"") && lines[3].contains(&format!("m9={url}")),
        "{text}"
    );
    assert_eq!(
        lines[4],
        format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{url}\"")
    );
    assert_eq!(lines[5], "ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
    let id = lines[0]
        .trim_start_matches("Member ")
        .split(" added")
        .next()
        .expect("id")
        .trim()
        .to_string();
    // Never started: not in sync, with etcd's message.
    let out = ctl(&eps, &["member", "promote", &id]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("etcdserver: can only promote a learner member which is in sync with leader"),
        "{err}"
    );
    if common::Target::from_env() == common::Target::Quorate {
        // The message stays etcd's; Quorate's numbers and remedy follow.
        assert!(
            err.contains("log entries") && err.contains("member list -w table"),
            "{err}"
        );
    }
    let out = ctl(&eps, &["member", "remove", &id]);
    assert!(out.status.success(), "{out:?}");
    let removed = String::from_utf8_lossy(&out.stdout);
    assert!(
        removed.starts_with("Member ") && removed.contains(" removed from cluster "),
        "{removed}"
    );
    let out = ctl(&eps, &["member", "remove", "not-hex"]);
    assert_eq!(out.status.code(), Some(128), "{out:?}");
}
