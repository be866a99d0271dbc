//! The benchmark's results: each client's [`Stats`], merged into one
//! [`Report`] and printed as etcd's benchmark prints its report (`simple`)
//! or as one JSON object (`-w json`).
//!
//! Latency statistics cover the requests that succeeded. Fastest, slowest,
//! average and standard deviation (population, as etcd computes it) are
//! exact; percentiles and the response-time histogram come from an HDR
//! histogram of microseconds with 3 significant digits, so memory stays
//! bounded however large `--total` is.
//!
//! JSON fields: `requests` (requests that finished, whether they succeeded
//! or failed), `errors` (those that failed), `seconds` (wall time of the
//! run), `requests_per_sec` (successful requests per second, as etcd
//! reports it), `latency_ms` (`fastest`, `slowest`, `average`, `stddev`
//! and `p10` … `p99.9`; `null` when no request succeeded),
//! `error_distribution` (error text → count), then the run's shape: `op`,
//! `total`, `clients`, `conns`, `stopped_by_timeout`.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::exit::CtlError;
use crate::output::json::JsonObject;
use crate::output::{Out, OutputFormat, Printer, Render};

/// The latency percentiles etcd's benchmark reports.
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Buckets of the response-time histogram (etcd's count).
const HISTOGRAM_BUCKETS: usize = 10;

/// Width of the longest histogram bar (etcd's).
const BAR_WIDTH: u64 = 40;

/// What some requests took and how they failed.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latencies of successful requests, in microseconds.
    hist: Histogram<u64>,
    ok: u64,
    sum_ns: u128,
    sum_sq_ns: u128,
    fastest_ns: u64,
    slowest_ns: u64,
    /// Failed requests by error text.
    errors: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            // Auto-resizing: it grows only to the largest latency seen.
            hist: Histogram::new(3).expect("3 significant digits is a valid precision"),
            ok: 0,
            sum_ns: 0,
            sum_sq_ns: 0,
            fastest_ns: u64::MAX,
            slowest_ns: 0,
            errors: BTreeMap::new(),
        }
    }

    /// A request that succeeded after `took`.
    pub fn record(&mut self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.ok += 1;
        self.sum_ns += u128::from(ns);
        self.sum_sq_ns += u128::from(ns) * u128::from(ns);
        self.fastest_ns = self.fastest_ns.min(ns);
        self.slowest_ns = self.slowest_ns.max(ns);
        // Truncated, so no bucket's lowest value exceeds the exact fastest.
        let us = (ns / 1000).max(1);
        // `record` grows the histogram; only a value beyond what it can
        // ever hold (hundreds of years) falls back to clamping.
        if self.hist.record(us).is_err() {
            self.hist.saturating_record(us);
        }
    }

    /// A request that failed with `message`.
    pub fn record_error(&mut self, message: String) {
        *self.errors.entry(message).or_insert(0) += 1;
    }

    /// Adds another client's results to these.
    pub fn merge(&mut self, other: &Stats) {
        // Cannot fail: both histograms auto-resize.
        let _ = self.hist.add(&other.hist);
        self.ok += other.ok;
        self.sum_ns += other.sum_ns;
        self.sum_sq_ns += other.sum_sq_ns;
        self.fastest_ns = self.fastest_ns.min(other.fastest_ns);
        self.slowest_ns = self.slowest_ns.max(other.slowest_ns);
        for (msg, n) in &other.errors {
            *self.errors.entry(msg.clone()).or_insert(0) += n;
        }
    }

    /// Requests that succeeded.
    pub fn ok(&self) -> u64 {
        self.ok
    }

    /// Requests that failed.
    pub fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Requests that finished, one way or the other.
    pub fn finished(&self) -> u64 {
        self.ok + self.errors()
    }

    /// Error texts with their counts, most frequent first.
    pub fn error_distribution(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.errors.iter().map(|(m, n)| (m.as_str(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }

    /// Latency summary in seconds; `None` when no request succeeded.
    pub fn latency(&self) -> Option<Latency> {
        if self.ok == 0 {
            return None;
        }
        let n = self.ok as f64;
        let mean_ns = self.sum_ns as f64 / n;
        let var_ns = (self.sum_sq_ns as f64 / n - mean_ns * mean_ns).max(0.0);
        let fastest = self.fastest_ns as f64 * 1e-9;
        let slowest = self.slowest_ns as f64 * 1e-9;
        let percentiles = PERCENTILES.map(|p| {
            let us = self.hist.value_at_quantile(p / 100.0);
            (us as f64 * 1e-6).clamp(fastest, slowest)
        });
        Some(Latency {
            fastest,
            slowest,
            average: mean_ns * 1e-9,
            stddev: var_ns.sqrt() * 1e-9,
            percentiles,
            histogram: self.histogram(fastest, slowest),
        })
    }

    /// etcd's response-time histogram: bucket `i` holds the latencies up to
    /// `fastest + i * (slowest - fastest) / 10` (the last up to `slowest`)
    /// not counted in an earlier bucket.
    fn histogram(&self, fastest: f64, slowest: f64) -> Vec<(f64, u64)> {
        let step = (slowest - fastest) / HISTOGRAM_BUCKETS as f64;
        let mut buckets: Vec<(f64, u64)> = (0..HISTOGRAM_BUCKETS)
            .map(|i| (fastest + step * i as f64, 0))
            .chain(std::iter::once((slowest, 0)))
            .collect();
        for v in self.hist.iter_recorded() {
            let secs = (self.hist.lowest_equivalent(v.value_iterated_to()) as f64 * 1e-6)
                .clamp(fastest, slowest);
            let i = buckets
                .iter()
                .position(|(upper, _)| secs <= *upper)
                .unwrap_or(HISTOGRAM_BUCKETS);
            buckets[i].1 += v.count_at_value();
        }
        buckets
    }
}

/// Latency statistics of the successful requests, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    pub fastest: f64,
    pub slowest: f64,
    pub average: f64,
    pub stddev: f64,
    /// One value per entry of [`PERCENTILES`].
    pub percentiles: [f64; PERCENTILES.len()],
    /// (bucket upper bound, count).
    pub histogram: Vec<(f64, u64)>,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Report {
    /// `put` or `range`.
    pub op: &'static str,
    /// `--total`.
    pub total: u64,
    pub clients: usize,
    pub conns: usize,
    /// Wall time from the first request to the last answer.
    pub elapsed: Duration,
    /// `--timeout` ended the run before `--total` requests finished.
    pub stopped_by_timeout: bool,
    /// `--precise`: full float precision in the simple output.
    pub precise: bool,
    pub stats: Stats,
}

impl Report {
    /// Successful requests per second (etcd's Requests/sec).
    pub fn requests_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.stats.ok() as f64 / secs
        } else {
            0.0
        }
    }

    /// etcd's `%4.4f`, or with `--precise` every digit.
    fn num(&self, x: f64) -> String {
        if self.precise {
            format!("{x}")
        } else {
            format!("{x:4.4}")
        }
    }
}

/// A JSON number with `decimals` digits after the point.
fn json_number(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "null".to_string()
    }
}

/// A percentile's label: `10`, `99.9`.
fn percentile_label(p: f64) -> String {
    format!("{p}")
}

impl Render for Report {
    const FORMATS: &'static [OutputFormat] = &[OutputFormat::Simple, OutputFormat::Json];

    fn simple(&self, _p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        let mut s = String::from("Summary:\n");
        s += &format!("  Total:\t{} secs.\n", self.num(self.elapsed.as_secs_f64()));
        let latency = self.stats.latency();
        if let Some(l) = &latency {
            s += &format!("  Slowest:\t{} secs.\n", self.num(l.slowest));
            s += &format!("  Fastest:\t{} secs.\n", self.num(l.fastest));
            s += &format!("  Average:\t{} secs.\n", self.num(l.average));
            s += &format!("  Stddev:\t{} secs.\n", self.num(l.stddev));
        }
        s += &format!("  Requests/sec:\t{}\n", self.num(self.requests_per_sec()));
        if self.stopped_by_timeout {
            s += &format!(
                "  Requests:\t{} of {} (stopped by --timeout)\n",
                self.stats.finished(),
                self.total
            );
        }
        if let Some(l) = &latency {
            s += "\nResponse time histogram:\n";
            let max = l.histogram.iter().map(|(_, c)| *c).max().unwrap_or(0);
            for (upper, count) in &l.histogram {
                let bar = (count * BAR_WIDTH).checked_div(max).unwrap_or(0);
                s += &format!(
                    "  {} [{count}]\t|{}\n",
                    self.num(*upper),
                    "∎".repeat(bar as usize)
                );
            }
            s += "\nLatency distribution:\n";
            for (p, v) in PERCENTILES.iter().zip(l.percentiles) {
                s += &format!("  {}% in {:.3} ms.\n", percentile_label(*p), v * 1000.0);
            }
        }
        let errors = self.stats.error_distribution();
        if !errors.is_empty() {
            s += "\nError distribution:\n";
            for (msg, n) in errors {
                s += &format!("  [{n}]\t{msg}\n");
            }
        }
        out.stdout.write_all(s.as_bytes())?;
        Ok(())
    }

    fn json(&self, _p: &Printer) -> Result<String, CtlError> {
        let mut latency = JsonObject::new();
        let latency_stats = self.stats.latency();
        let ms = |v: Option<f64>| v.map_or("null".to_string(), |s| json_number(s * 1000.0, 3));
        let l = latency_stats.as_ref();
        latency
            .raw("fastest", &ms(l.map(|l| l.fastest)))
            .raw("slowest", &ms(l.map(|l| l.slowest)))
            .raw("average", &ms(l.map(|l| l.average)))
            .raw("stddev", &ms(l.map(|l| l.stddev)));
        for (i, p) in PERCENTILES.iter().enumerate() {
            latency.raw(
                &format!("p{}", percentile_label(*p)),
                &ms(l.map(|l| l.percentiles[i])),
            );
        }
        let mut errors = JsonObject::new();
        for (msg, n) in self.stats.error_distribution() {
            errors.raw(msg, &n.to_string());
        }
        Ok(JsonObject::new()
            .raw("requests", &self.stats.finished().to_string())
            .raw("errors", &self.stats.errors().to_string())
            .raw("seconds", &json_number(self.elapsed.as_secs_f64(), 6))
            .raw("requests_per_sec", &json_number(self.requests_per_sec(), 3))
            .raw("latency_ms", &latency.finish())
            .raw("error_distribution", &errors.finish())
            .str_always("op", self.op)
            .raw("total", &self.total.to_string())
            .raw("clients", &self.clients.to_string())
            .raw("conns", &self.conns.to_string())
            .bool_always("stopped_by_timeout", self.stopped_by_timeout)
            .finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn report(stats: Stats) -> Report {
        Report {
            op: "put",
            total: 4,
            clients: 2,
            conns: 2,
            elapsed: Duration::from_secs(2),
            stopped_by_timeout: false,
            precise: false,
            stats,
        }
    }

    #[test]
    fn exact_summary_and_percentiles() {
        let mut a = Stats::new();
        a.record(ms(1));
        a.record(ms(3));
        let mut b = Stats::new();
        b.record(ms(2));
        b.record_error("context deadline exceeded".into());
        a.merge(&b);
        assert_eq!((a.ok(), a.errors(), a.finished()), (3, 1, 4));
        let l = a.latency().expect("some requests succeeded");
        assert_eq!(l.fastest, 0.001);
        assert_eq!(l.slowest, 0.003);
        assert!((l.average - 0.002).abs() < 1e-12);
        assert!((l.stddev - (2.0f64 / 3.0).sqrt() * 1e-3).abs() < 1e-12);
        // p50 of {1, 2, 3} ms is 2 ms, to 3 significant digits.
        assert!((l.percentiles[2] - 0.002).abs() < 0.002 * 1e-3);
        assert_eq!(l.percentiles[7], 0.003);
        assert_eq!(l.histogram.len(), 11);
        assert_eq!(l.histogram.iter().map(|(_, c)| c).sum::<u64>(), 3);
        assert_eq!(l.histogram[0].1, 1);
        assert_eq!(l.histogram[5].1, 1);
        assert_eq!(l.histogram[10].1, 1);
    }

    #[test]
    fn simple_output_has_etcds_sections() {
        let mut s = Stats::new();
        for i in 1..=3 {
            s.record(ms(i));
        }
        s.record_error("etcdserver: request is too large".into());
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let r = report(s);
        let p = Printer::new(OutputFormat::Simple, false);
        p.print(
            &r,
            &mut Out {
                stdout: &mut stdout,
                stderr: &mut stderr,
            },
        )
        .expect("print");
        let text = String::from_utf8(stdout).expect("utf-8");
        assert!(text.starts_with("Summary:\n  Total:\t2.0000 secs.\n  Slowest:\t0.0030 secs.\n"));
        assert!(text.contains("  Requests/sec:\t1.5000\n"));
        assert!(text.contains("\nResponse time histogram:\n  0.0010 [1]\t|"));
        assert!(text.contains("\nLatency distribution:\n  10% in "));
        assert!(text.contains("  99.9% in 3.000 ms.\n"));
        assert!(text.ends_with("\nError distribution:\n  [1]\tetcdserver: request is too large\n"));
    }

    #[test]
    fn json_output() {
        let mut s = Stats::new();
        s.record(ms(2));
        let j = report(s)
            .json(&Printer::new(OutputFormat::Json, false))
            .expect("json");
        let v: serde_json::Value = serde_json::from_str(&j).expect("valid JSON");
        assert_eq!(v["requests"], 1);
        assert_eq!(v["errors"], 0);
        assert_eq!(v["seconds"], 2.0);
        assert_eq!(v["requests_per_sec"], 0.5);
        assert_eq!(v["latency_ms"]["p99.9"], 2.0);
        assert_eq!(v["latency_ms"]["fastest"], 2.0);
        assert_eq!(v["error_distribution"], serde_json::json!({}));
        assert_eq!(v["op"], "put");

        let mut s = Stats::new();
        s.record_error("boom \"quoted\"".into());
        let j = report(s)
            .json(&Printer::new(OutputFormat::Json, false))
            .expect("json");
        let v: serde_json::Value = serde_json::from_str(&j).expect("valid JSON");
        assert_eq!(v["requests"], 1);
        assert_eq!(v["errors"], 1);
        assert_eq!(v["latency_ms"]["p50"], serde_json::Value::Null);
        assert_eq!(v["error_distribution"]["boom \"quoted\""], 1);
    }
}
