//! `benchmark put|range`: a load generator modelled on etcd's
//! `tools/benchmark`, with its flags and its report.
//!
//! `--clients` workers run concurrently, each sending requests back to back
//! (or paced by the shared `--rate` limiter) over its gRPC connection.
//! There are `--conns` connections, dialed up front and spread round-robin
//! over `--endpoints`; workers share them round-robin. By default every
//! worker has its own connection (etcd's default is one shared connection).
//! Workers take request numbers from one counter until `--total` requests
//! have been sent or `--timeout` has passed; requests still in flight at
//! the timeout are dropped and not counted.
//!
//! Each worker records its own latencies ([`report::Stats`]); they are merged
//! when all have stopped. A failed request is counted under its error text
//! (each request is bounded by `--command-timeout`), never retried, and
//! never stops the run. The report is printed either way; if any request
//! failed the command then ends with `Error: N of M requests failed` (exit
//! 1), so scripts notice.
//!
//! A progress bar goes to stderr, and only when stderr is a terminal.

pub mod report;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quorate_proto::etcdserverpb::kv_client::KvClient;
use quorate_proto::etcdserverpb::{PutRequest, RangeRequest};
use rand::distr::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::Env;
use crate::cli::{arg_bytes, BenchPutArgs, BenchRangeArgs, BenchmarkArgs};
use crate::client::{self, request, unary, ClientConfig};
use crate::exit::CtlError;
use crate::gofmt::quote;
use report::{Report, Stats};

/// `benchmark put`.
pub async fn put(a: &BenchmarkArgs, p: &BenchPutArgs, env: &mut Env<'_>) -> Result<(), CtlError> {
    let printer = env.printer()?;
    printer.check::<Report>()?;
    if p.key_size == 0 {
        return Err(CtlError::bad_args("--key-size must be at least 1"));
    }
    if p.key_space_size == 0 {
        return Err(CtlError::bad_args("--key-space-size must be at least 1"));
    }
    let needed = key_bytes_needed(p.key_space_size);
    if p.key_size < needed {
        return Err(CtlError::bad_args(format!(
            "--key-space-size {} needs --key-size of at least {needed}",
            p.key_space_size
        )));
    }
    let plan = Plan::new(a, p.total, p.rate)?;
    let work = Workload::Put {
        key_size: p.key_size,
        value: random_value(p.val_size),
        key_space: p.key_space_size,
        sequential: p.sequential_keys,
    };
    let report = execute("put", plan, work, &env.cfg).await?;
    finish(&report, &printer, env)
}

/// `benchmark range <key> [end]`.
pub async fn range(
    a: &BenchmarkArgs,
    r: &BenchRangeArgs,
    env: &mut Env<'_>,
) -> Result<(), CtlError> {
    let printer = env.printer()?;
    printer.check::<Report>()?;
    if r.args.is_empty() || r.args.len() > 2 {
        return Err(CtlError::bad_args("range command needs 1 or 2 arguments"));
    }
    let serializable = match r.consistency.as_str() {
        "l" => false,
        "s" => true,
        other => {
            return Err(CtlError::bad_feature(format!(
                "unknown consistency flag {}",
                quote(other.as_bytes())
            )))
        }
    };
    let plan = Plan::new(a, r.total, r.rate)?;
    let work = Workload::Range(RangeRequest {
        key: arg_bytes(&r.args[0]),
        range_end: r.args.get(1).map(arg_bytes).unwrap_or_default(),
        limit: r.limit,
        serializable,
        count_only: r.count_only,
        ..Default::default()
    });
    let report = execute("range", plan, work, &env.cfg).await?;
    finish(&report, &printer, env)
}

/// Prints the report; any failed request makes the command fail after it.
fn finish(
    report: &Report,
    printer: &crate::output::Printer,
    env: &mut Env<'_>,
) -> Result<(), CtlError> {
    printer.print(report, &mut env.out)?;
    let failed = report.stats.errors();
    if failed > 0 {
        return Err(CtlError::error(format!(
            "{failed} of {} requests failed",
            report.stats.finished()
        )));
    }
    Ok(())
}

/// The shape of a run, from the flags.
#[derive(Debug, Clone)]
struct Plan {
    total: u64,
    clients: usize,
    conns: usize,
    /// Requests per second over all clients; 0 is no limit.
    rate: u64,
    /// `--timeout`; `None` is no limit.
    timeout: Option<Duration>,
    precise: bool,
}

impl Plan {
    fn new(a: &BenchmarkArgs, total: u64, rate: u64) -> Result<Plan, CtlError> {
        if a.clients == 0 {
            return Err(CtlError::bad_args("--clients must be at least 1"));
        }
        // More connections than clients would leave some unused.
        let conns = if a.conns == 0 {
            a.clients
        } else {
            a.conns.min(a.clients)
        };
        Ok(Plan {
            total,
            clients: a.clients,
            conns,
            rate,
            timeout: (!a.timeout.is_zero()).then_some(a.timeout),
            precise: a.precise,
        })
    }
}

/// What every request of a run does.
#[derive(Debug)]
enum Workload {
    /// etcd's put benchmark: keys of `key_size` bytes numbered from 0 to
    /// `key_space - 1` (request `n` takes key `n % key_space` when
    /// sequential, a random one otherwise); the same random value each time.
    Put {
        key_size: usize,
        value: Vec<u8>,
        key_space: u64,
        sequential: bool,
    },
    /// The same range request every time.
    Range(RangeRequest),
}

/// One request, built before its latency is measured.
enum Request {
    Put(PutRequest),
    Range(RangeRequest),
}

impl Workload {
    fn request(&self, n: u64, rng: &mut StdRng) -> Request {
        match self {
            Workload::Put {
                key_size,
                value,
                key_space,
                sequential,
            } => {
                let k = if *sequential {
                    n % key_space
                } else {
                    rng.random_range(0..*key_space)
                };
                Request::Put(PutRequest {
                    key: numbered_key(k, *key_size),
                    value: value.clone(),
                    ..Default::default()
                })
            }
            Workload::Range(r) => Request::Range(r.clone()),
        }
    }
}

/// Key number `n` as `size` bytes: big-endian in the last (up to) 8 bytes,
/// zero-padded in front.
fn numbered_key(n: u64, size: usize) -> Vec<u8> {
    let mut key = vec![0u8; size];
    let take = size.min(8);
    key[size - take..].copy_from_slice(&n.to_be_bytes()[8 - take..]);
    key
}

/// The fewest key bytes that give `key_space` distinct keys.
fn key_bytes_needed(key_space: u64) -> usize {
    let max = key_space.saturating_sub(1);
    (((u64::BITS - max.leading_zeros()) as usize).div_ceil(8)).max(1)
}

/// A random alphanumeric value, as etcd's benchmark uses.
fn random_value(size: usize) -> Vec<u8> {
    rand::rng().sample_iter(Alphanumeric).take(size).collect()
}

/// `--rate`: request starts are spaced at least `interval` apart over all
/// clients (etcd uses a token bucket of one token: the same pacing).
#[derive(Debug)]
struct Limiter {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Limiter {
    fn new(rate: u64) -> Option<Limiter> {
        (rate > 0).then(|| Limiter {
            interval: Duration::from_secs_f64(1.0 / rate as f64),
            next: Mutex::new(None),
        })
    }

    /// The time the caller may send its request at.
    fn reserve(&self) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let at = next.map_or(now, |n| n.max(now));
        *next = Some(at + self.interval);
        at
    }
}

/// What the workers share.
struct Shared {
    work: Workload,
    /// The next request number to send.
    next: AtomicU64,
    total: u64,
    /// Each request's bound (`--command-timeout`).
    request_timeout: Duration,
    /// When `--timeout` runs out.
    deadline: Option<Instant>,
    limiter: Option<Limiter>,
    progress: ProgressBar,
}

/// Dials the connections, runs the workers and collects their results.
async fn execute(
    op: &'static str,
    plan: Plan,
    work: Workload,
    cfg: &ClientConfig,
) -> Result<Report, CtlError> {
    let conns = dial_all(cfg, plan.conns).await?;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        work,
        next: AtomicU64::new(0),
        total: plan.total,
        request_timeout: cfg.command_timeout,
        deadline: plan.timeout.map(|t| start + t),
        limiter: Limiter::new(plan.rate),
        progress: progress_bar(plan.total),
    });
    let workers: Vec<_> = (0..plan.clients)
        .map(|i| {
            let kv = client::kv(conns[i % conns.len()].clone());
            let rng = StdRng::from_rng(&mut rand::rng());
            tokio::spawn(worker(kv, Arc::clone(&shared), rng))
        })
        .collect();
    let mut stats = Stats::new();
    let mut crashed = None;
    for w in workers {
        match w.await {
            Ok(s) => stats.merge(&s),
            Err(e) => crashed = Some(e),
        }
    }
    let elapsed = start.elapsed();
    shared.progress.finish();
    if let Some(e) = crashed {
        return Err(CtlError::error(format!("benchmark client failed: {e}")));
    }
    Ok(Report {
        op,
        total: plan.total,
        clients: plan.clients,
        conns: plan.conns,
        elapsed,
        stopped_by_timeout: stats.finished() < plan.total,
        precise: plan.precise,
        stats,
    })
}

/// One client: sends requests until the run is over; returns what it saw.
async fn worker(mut kv: KvClient<Channel>, shared: Arc<Shared>, mut rng: StdRng) -> Stats {
    let mut stats = Stats::new();
    loop {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if n >= shared.total {
            break;
        }
        if let Some(limiter) = &shared.limiter {
            let at = limiter.reserve();
            if shared.deadline.is_some_and(|d| at >= d) {
                break;
            }
            tokio::time::sleep_until(at).await;
        }
        let req = shared.work.request(n, &mut rng);
        let sent = Instant::now();
        let call = send(&mut kv, req, shared.request_timeout);
        let result = match shared.deadline {
            None => call.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, call).await {
                Ok(r) => r,
                // In flight when the run ended: neither a success nor an error.
                Err(_) => break,
            },
        };
        match result {
            Ok(()) => stats.record(sent.elapsed()),
            Err(e) => stats.record_error(e.message),
        }
        shared.progress.inc(1);
    }
    stats
}

async fn send(kv: &mut KvClient<Channel>, req: Request, timeout: Duration) -> Result<(), CtlError> {
    match req {
        Request::Put(r) => unary(timeout, kv.put(request(r, timeout))).await.map(drop),
        Request::Range(r) => unary(timeout, kv.range(request(r, timeout)))
            .await
            .map(drop),
    }
}

/// `n` connections, round-robin over the endpoints, dialed concurrently;
/// any failure stops the benchmark before it starts (exit 2).
async fn dial_all(cfg: &ClientConfig, n: usize) -> Result<Vec<Channel>, CtlError> {
    if cfg.endpoints.is_empty() {
        return Err(CtlError::bad_args("no endpoints given"));
    }
    let dials =
        (0..n).map(|i| client::dial(&cfg.endpoints[i % cfg.endpoints.len()], cfg.dial_timeout));
    futures::future::try_join_all(dials).await
}

/// A progress bar on stderr when it is a terminal; a hidden one otherwise.
fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests, {per_sec}, {elapsed}")
    {
        pb.set_style(style);
    }
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_numbered_big_endian() {
        assert_eq!(numbered_key(1, 8), vec![0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(numbered_key(0x0102, 2), vec![1, 2]);
        assert_eq!(numbered_key(0x0102, 10), vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(numbered_key(7, 1), vec![7]);
    }

    #[test]
    fn key_bytes_for_key_space() {
        assert_eq!(key_bytes_needed(1), 1);
        assert_eq!(key_bytes_needed(256), 1);
        assert_eq!(key_bytes_needed(257), 2);
        assert_eq!(key_bytes_needed(65536), 2);
        assert_eq!(key_bytes_needed(u64::MAX), 8);
    }

    #[test]
    fn sequential_keys_wrap_at_the_key_space() {
        let work = Workload::Put {
            key_size: 2,
            value: random_value(4),
            key_space: 3,
            sequential: true,
        };
        let mut rng = StdRng::seed_from_u64(1);
        let keys: Vec<Vec<u8>> = (0..5)
            .map(|n| match work.request(n, &mut rng) {
                Request::Put(p) => {
                    assert_eq!(p.value.len(), 4);
                    p.key
                }
                Request::Range(_) => unreachable!(),
            })
            .collect();
        assert_eq!(
            keys,
            vec![vec![0, 0], vec![0, 1], vec![0, 2], vec![0, 0], vec![0, 1]]
        );
    }

    #[test]
    fn limiter_spaces_requests() {
        let l = Limiter::new(1).expect("rate > 0");
        let t0 = l.reserve();
        let t1 = l.reserve();
        let t2 = l.reserve();
        assert_eq!(t1 - t0, Duration::from_secs(1));
        assert_eq!(t2 - t1, Duration::from_secs(1));
        assert!(Limiter::new(0).is_none());
    }
}
