//! Functional tests of `quoratectl benchmark`: tiny runs against a real
//! server (`QUORATE_TEST_TARGET=etcd` runs them against etcd itself) that
//! check the report's shape, the JSON object, error counting and the exit
//! codes. Nothing here measures or asserts on speed.

mod common;

use std::process::Command;

use common::Server;
use serde_json::Value;

/// One finished quoratectl run.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    #[track_caller]
    fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "exit code: {self:?}");
        // stderr is not a terminal here, so no progress bar either.
        assert_eq!(self.stderr, "", "stderr: {self:?}");
        self
    }
}

/// Runs quoratectl with `args`, without any inherited `ETCDCTL_*` variable.
fn quoratectl(args: &[&str]) -> Run {
    let mut cmd = Command::new(common::quoratectl_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.args(args).output().expect("run quoratectl");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `benchmark` against `server` with `args` after the endpoints flag.
fn bench(server: &Server, args: &[&str]) -> Run {
    let mut all = vec!["--endpoints", server.endpoint.as_str(), "benchmark"];
    all.extend_from_slice(args);
    quoratectl(&all)
}

const PERCENTILES: [&str; 8] = ["10", "25", "50", "75", "90", "95", "99", "99.9"];

/// The value after `label` on its line of the simple report, as a number.
#[track_caller]
fn number_after(report: &str, label: &str) -> f64 {
    let line = report
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no line starting with {label:?} in:\n{report}"));
    let rest = line[label.len()..].trim();
    let num = rest.split_whitespace().next().unwrap_or("");
    num.parse()
        .unwrap_or_else(|e| panic!("{label:?}: {num:?} is not a number ({e})"))
}

/// The latency object of a JSON report, checked for its fields and order.
#[track_caller]
fn check_latency(v: &Value) {
    let lat = &v["latency_ms"];
    let fastest = lat["fastest"].as_f64().expect("fastest");
    let slowest = lat["slowest"].as_f64().expect("slowest");
    let average = lat["average"].as_f64().expect("average");
    assert!(lat["stddev"].as_f64().expect("stddev") >= 0.0);
    assert!(
        fastest > 0.0 && fastest <= average && average <= slowest,
        "{v}"
    );
    let mut prev = fastest;
    for p in PERCENTILES {
        let x = lat[format!("p{p}")]
            .as_f64()
            .unwrap_or_else(|| panic!("p{p} in {v}"));
        assert!(prev <= x && x <= slowest, "p{p} out of order in {v}");
        prev = x;
    }
}

#[test]
fn put_prints_etcds_report() {
    let server = Server::start();
    let run = bench(
        &server,
        &[
            "--clients",
            "3",
            "put",
            "--total",
            "30",
            "--val-size",
            "16",
            "--key-space-size",
            "10",
            "--sequential-keys",
        ],
    );
    run.ok();
    let out = &run.stdout;
    assert!(out.starts_with("Summary:\n  Total:\t"), "{out}");
    for label in [
        "  Total:",
        "  Slowest:",
        "  Fastest:",
        "  Average:",
        "  Stddev:",
    ] {
        assert!(number_after(out, label) >= 0.0);
        assert!(out.contains(&format!("{label}\t")), "{out}");
    }
    assert!(number_after(out, "  Requests/sec:") > 0.0);
    assert!(out.contains("\nResponse time histogram:\n"), "{out}");
    let histogram: u64 = out
        .lines()
        .skip_while(|l| *l != "Response time histogram:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let count = l.split('[').nth(1).and_then(|r| r.split(']').next());
            count.and_then(|c| c.parse::<u64>().ok()).expect("[count]")
        })
        .sum();
    assert_eq!(histogram, 30, "{out}");
    assert!(out.contains("\nLatency distribution:\n"), "{out}");
    for p in PERCENTILES {
        let label = format!("  {p}% in");
        assert!(number_after(out, &label) > 0.0);
    }
    assert!(!out.contains("Error distribution"), "{out}");

    // Sequential keys over a key space of 10: exactly 10 keys written.
    let keys = quoratectl(&[
        "--endpoints",
        &server.endpoint,
        "get",
        "--from-key",
        "",
        "--count-only",
        "-w",
        "fields",
    ]);
    keys.ok();
    assert!(keys.stdout.contains("\"Count\" : 10\n"), "{}", keys.stdout);
}

#[test]
fn json_report_over_shared_connections_and_endpoints() {
    let server = Server::start();
    let endpoints = format!("{0},{0}", server.endpoint);
    let run = quoratectl(&[
        "--endpoints",
        &endpoints,
        "-w",
        "json",
        "benchmark",
        "put",
        "--clients",
        "4",
        "--conns",
        "2",
        "--total",
        "20",
        "--val-size",
        "256",
    ]);
    run.ok();
    let v = run.json();
    assert_eq!(v["requests"], 20, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["seconds"].as_f64().expect("seconds") > 0.0);
    assert!(v["requests_per_sec"].as_f64().expect("rps") > 0.0);
    assert_eq!(v["error_distribution"], serde_json::json!({}));
    assert_eq!(v["op"], "put");
    assert_eq!(v["total"], 20);
    assert_eq!(v["clients"], 4);
    assert_eq!(v["conns"], 2);
    assert_eq!(v["stopped_by_timeout"], false);
    check_latency(&v);
    // One JSON object on one line.
    assert_eq!(run.stdout.lines().count(), 1);
}

#[test]
fn range_linearizable_and_serializable() {
    let server = Server::start();
    quoratectl(&["--endpoints", &server.endpoint, "put", "bench-key", "v"]).ok();
    for consistency in ["l", "s"] {
        let run = bench(
            &server,
            &[
                "--clients",
                "2",
                "-w",
                "json",
                "range",
                "bench-key",
                "--consistency",
                consistency,
                "--total",
                "10",
            ],
        );
        run.ok();
        let v = run.json();
        assert_eq!(v["requests"], 10, "{v}");
        assert_eq!(v["errors"], 0, "{v}");
        assert_eq!(v["op"], "range");
        check_latency(&v);
    }
    // A range end and the count-only flag are accepted too.
    bench(
        &server,
        &["range", "a", "z", "--count-only", "--total", "5"],
    )
    .ok();
}

#[test]
fn failed_requests_are_counted_and_reported() {
    let server = Server::start();
    // Larger than the default --max-request-bytes (1.5 MiB): every put fails.
    let run = bench(
        &server,
        &[
            "--clients",
            "2",
            "-w",
            "json",
            "put",
            "--total",
            "3",
            "--val-size",
            "2000000",
        ],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr, "Error: 3 of 3 requests failed\n");
    let v = run.json();
    assert_eq!(v["requests"], 3, "{v}");
    assert_eq!(v["errors"], 3, "{v}");
    assert_eq!(v["requests_per_sec"], 0.0);
    assert_eq!(
        v["error_distribution"],
        serde_json::json!({"etcdserver: request is too large": 3})
    );
    assert_eq!(v["latency_ms"]["p50"], Value::Null);

    let run = bench(&server, &["put", "--total", "2", "--val-size", "2000000"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .ends_with("\nError distribution:\n  [2]\tetcdserver: request is too large\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn timeout_ends_the_run() {
    let server = Server::start();
    let run = bench(
        &server,
        &[
            "--timeout",
            "300ms",
            "-w",
            "json",
            "put",
            "--total",
            "1000000000",
        ],
    );
    run.ok();
    let v = run.json();
    assert_eq!(v["stopped_by_timeout"], true, "{v}");
    assert!(v["requests"].as_u64().expect("requests") < 1_000_000_000);
    assert_eq!(v["errors"], 0, "{v}");
}

#[test]
fn bad_invocations_fail_before_sending() {
    let server = Server::start();
    let cases: [(&[&str], i32, &str); 6] = [
        (
            &["-w", "table", "put"],
            4,
            "Error: table not supported as output format\n",
        ),
        (
            &["range"],
            128,
            "Error: range command needs 1 or 2 arguments\n",
        ),
        (
            &["range", "k", "--consistency", "x"],
            4,
            "Error: unknown consistency flag \"x\"\n",
        ),
        (
            &["--clients", "0", "put"],
            128,
            "Error: --clients must be at least 1\n",
        ),
        (
            &["put", "--key-size", "1", "--key-space-size", "1000"],
            128,
            "Error: --key-space-size 1000 needs --key-size of at least 2\n",
        ),
        (
            &["put", "--total", "x"],
            1,
            "Error: invalid argument \"x\" for \"--total\" flag: invalid digit found in string\n",
        ),
    ];
    for (args, code, stderr) in cases {
        let run = bench(&server, args);
        assert_eq!((run.code, run.stderr.as_str()), (code, stderr), "{args:?}");
        assert_eq!(run.stdout, "", "{args:?}");
    }

    // Nothing listens there: exit 2 before any request.
    let closed = format!("127.0.0.1:{}", common::free_port());
    let run = quoratectl(&["--endpoints", &closed, "benchmark", "put", "--total", "1"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stdout, "");
}

#[test]
fn help_lists_the_load_types() {
    let run = quoratectl(&["benchmark"]);
    run.ok();
    for s in ["put", "range", "--clients", "--conns", "--timeout"] {
        assert!(run.stdout.contains(s), "{s}: {}", run.stdout);
    }
}
