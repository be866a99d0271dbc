//! quoratectl's quorum-safety views against a real Quorate cluster:
//! `member list -w table` with liveness and the failure-tolerance summary,
//! and `cluster check` (exit 0 only when one member can safely go down),
//! including the `--stop`/`--remove` what-ifs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::Target;

/// Bound for polled conditions.
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn ctl(endpoints: &[String], args: &[&str]) -> Run {
    let out = Command::new(common::quoratectl_bin())
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .output()
        .expect("run quoratectl");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `args` until `ok` holds for the result, bounded by POLL_TIMEOUT.
fn poll(c: &Cluster, endpoints: &[String], args: &[&str], ok: impl Fn(&Run) -> bool) -> Run {
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        let r = ctl(endpoints, args);
        if ok(&r) {
            return r;
        }
        if Instant::now() >= deadline {
            c.fail(&format!(
                "quoratectl {args:?}: condition not reached: exit {}\n{}\n{}",
                r.code, r.stdout, r.stderr
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn live_endpoints(c: &Cluster, except: usize) -> Vec<String> {
    (0..c.len())
        .filter(|&i| i != except)
        .map(|i| c.endpoint(i))
        .collect()
}

/// The member ID (hex) of the row for `name` in `member list`.
fn member_hex(c: &Cluster, name: &str) -> String {
    let r = ctl(&c.endpoints(), &["member", "list"]);
    r.stdout
        .lines()
        .find(|l| l.split(", ").nth(2) == Some(name))
        .and_then(|l| l.split(", ").next())
        .map(str::to_string)
        .unwrap_or_else(|| c.fail(&format!("no member {name} in {}", r.stdout)))
}

#[test]
fn member_list_table_shows_liveness_and_summary() {
    if Target::from_env() == Target::Etcd {
        return;
    }
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    let r = poll(&c, &eps, &["member", "list", "-w", "table"], |r| {
        r.code == 0
            && !r.stdout.contains("not from the leader")
            && r.stdout
                .contains("3 voters, 3 reachable, quorum 2, failure tolerance 1")
    });
    let header = r.stdout.lines().nth(1).unwrap_or_default();
    for col in [
        "ID",
        "STATUS",
        "NAME",
        "PEER ADDRS",
        "CLIENT ADDRS",
        "IS LEARNER",
        "HEALTH",
        "LAST SEEN",
        "LAG",
    ] {
        assert!(header.contains(col), "{col} missing: {}", r.stdout);
    }
    assert_eq!(r.stdout.matches("| healthy ").count(), 3, "{}", r.stdout);

    // simple output is unchanged (etcdctl's).
    let s = ctl(&eps, &["member", "list"]);
    assert_eq!(s.code, 0);
    assert!(!s.stdout.contains("healthy"), "{}", s.stdout);
    assert_eq!(s.stdout.lines().count(), 3);

    c.kill(1);
    let eps = live_endpoints(&c, 1);
    let r = poll(&c, &eps, &["member", "list", "-w", "table"], |r| {
        r.code == 0
            && !r.stdout.contains("not from the leader")
            && r.stdout.contains(
                "3 voters, 2 reachable, quorum 2, failure tolerance 0: one more failure stops writes",
            )
    });
    let row = r
        .stdout
        .lines()
        .find(|l| l.contains(" m1 |"))
        .unwrap_or_else(|| c.fail(&r.stdout));
    assert!(row.contains("unreachable"), "{}", r.stdout);
}

#[test]
fn cluster_check_exit_codes_and_what_ifs() {
    if Target::from_env() == Target::Etcd {
        return;
    }
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    let r = poll(&c, &eps, &["cluster", "check"], |r| r.code == 0);
    assert!(
        r.stdout.contains("OK: safe to take one member down"),
        "{}",
        r.stdout
    );

    // What-ifs on the healthy cluster: stopping or removing one is fine.
    let m1 = member_hex(&c, "m1");
    let r = ctl(&eps, &["cluster", "check", "--stop", "m1"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("failure tolerance 0"), "{}", r.stdout);
    let r = ctl(&eps, &["cluster", "check", "--remove", &m1]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = ctl(&eps, &["cluster", "check", "--stop", "nosuch"]);
    assert_ne!(r.code, 0);

    // Snapshot age: an empty dir is a risk; a fresh *.db is not.
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    let r = ctl(&eps, &["cluster", "check", "--snapshot-dir", &d]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("no snapshot"), "{}", r.stdout);
    std::fs::write(dir.path().join("x.db"), b"x").expect("write");
    let r = ctl(
        &eps,
        &[
            "cluster",
            "check",
            "--snapshot-dir",
            &d,
            "--snapshot-max-age",
            "1h",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stdout);

    c.kill(1);
    let eps = live_endpoints(&c, 1);
    let r = poll(&c, &eps, &["cluster", "check"], |r| {
        r.stdout.contains("failure tolerance 0") && !r.stdout.contains("not from the leader")
    });
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("unreachable"), "{}", r.stdout);
    assert!(r.stdout.contains("NOT SAFE"), "{}", r.stdout);
    // Stopping another live member now would stop writes.
    let r = ctl(&eps, &["cluster", "check", "--stop", "m2"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("would stop writes"), "{}", r.stdout);
    // Removing the dead one leaves 2 of 2 reachable: allowed.
    let r = ctl(&eps, &["cluster", "check", "--remove", &m1]);
    assert_eq!(r.code, 0, "{}", r.stdout);
}
