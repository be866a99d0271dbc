//! `quorate`: the server. Flags follow etcd's names and defaults; every flag
//! can also be given as an environment variable `QUORATE_<FLAG_IN_CAPS>`
//! (e.g. `QUORATE_DATA_DIR`), as etcd accepts `ETCD_*`.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Parser;
use quorate_server::{ClusterState, ServerConfig};

#[derive(Parser, Debug)]
#[command(
    name = "quorate",
    version,
    about = "Quorate: an etcd-compatible, quorum-safe key-value store",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Offline>,
    #[command(flatten)]
    flags: Flags,
}

/// Offline data-dir tools; with no subcommand, `quorate` runs the server.
#[derive(clap::Subcommand, Debug)]
enum Offline {
    /// Snapshot files: status and restore.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(clap::Subcommand, Debug)]
enum SnapshotCommand {
    /// Verifies a snapshot file and shows its hash, revision, key count and size.
    Status {
        file: PathBuf,
        /// Output format: simple, table or json.
        #[arg(short = 'w', long = "write-out", default_value = "simple")]
        write_out: String,
    },
    /// Creates a fresh data dir for one member of a new cluster from a snapshot.
    Restore {
        file: PathBuf,
        #[arg(long, default_value = "default")]
        name: String,
        /// Defaults to <name>.quorate; must not exist (or be empty).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "default=http://localhost:2380")]
        initial_cluster: String,
        #[arg(long, default_value = "etcd-cluster")]
        initial_cluster_token: String,
        #[arg(long, value_delimiter = ',', default_value = "http://localhost:2380")]
        initial_advertise_peer_urls: Vec<String>,
        /// Move the revision forward by this much (use with --mark-compacted).
        #[arg(long, default_value_t = 0)]
        bump_revision: i64,
        /// Mark the bumped revision compacted, so old watches are told to re-list.
        #[arg(long)]
        mark_compacted: bool,
        /// Restore a file whose SHA-256 does not verify.
        #[arg(long)]
        skip_hash_check: bool,
    },
}

#[derive(clap::Args, Debug)]
struct Flags {
    /// Human-readable name for this member.
    #[arg(long, env = "QUORATE_NAME", default_value = "default")]
    name: String,

    /// Path to the data directory (default: <name>.quorate).
    #[arg(long, env = "QUORATE_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// URLs to listen on for client traffic (comma-separated). Port 0 picks a free port.
    #[arg(
        long,
        env = "QUORATE_LISTEN_CLIENT_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    listen_client_urls: Vec<String>,

    /// Client URLs to advertise to the cluster (comma-separated). Port 0 means the bound port.
    #[arg(
        long,
        env = "QUORATE_ADVERTISE_CLIENT_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    advertise_client_urls: Vec<String>,

    /// This member's peer URLs, as advertised to the cluster (comma-separated).
    #[arg(
        long,
        env = "QUORATE_INITIAL_ADVERTISE_PEER_URLS",
        value_delimiter = ',',
        default_value = "http://localhost:2380"
    )]
    initial_advertise_peer_urls: Vec<String>,

    /// Cluster token used to derive member and cluster IDs at bootstrap.
    #[arg(
        long,
        env = "QUORATE_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    initial_cluster_token: String,

    /// URLs to listen on for peer traffic (comma-separated).
    #[arg(
        long,
        env = "QUORATE_LISTEN_PEER_URLS",
        value_delimiter = ',',
        default_value = "http://localhost:2380"
    )]
    listen_peer_urls: Vec<String>,

    /// Initial cluster configuration for bootstrapping: name=peer-url,... (default: this member alone).
    #[arg(long, env = "QUORATE_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,

    /// Initial cluster state: new (found a cluster) or existing (join a running one).
    #[arg(long, env = "QUORATE_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    initial_cluster_state: String,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "QUORATE_HEARTBEAT_INTERVAL", default_value_t = 100)]
    heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "QUORATE_ELECTION_TIMEOUT", default_value_t = 1000)]
    election_timeout: u64,

    /// Restart as the only member of the cluster, keeping this member's data
    /// (disaster recovery after losing a majority). Dangerous if the other
    /// members are still alive.
    #[arg(long, env = "QUORATE_FORCE_NEW_CLUSTER")]
    force_new_cluster: bool,

    /// Take a snapshot this often on the leader (Go duration, e.g. 30m; 0 disables).
    #[arg(long, env = "QUORATE_AUTO_SNAPSHOT_INTERVAL", default_value = "0", value_parser = parse_go_duration)]
    auto_snapshot_interval: std::time::Duration,

    /// Where automatic snapshots go (default: <data-dir>-snapshots, beside the data dir).
    #[arg(long, env = "QUORATE_AUTO_SNAPSHOT_DIR")]
    auto_snapshot_dir: Option<PathBuf>,

    /// How many automatic snapshots to keep (the newest).
    #[arg(long, env = "QUORATE_AUTO_SNAPSHOT_RETENTION", default_value_t = 5)]
    auto_snapshot_retention: usize,

    /// Refuse reconfigurations that would leave the cluster unable to reach
    /// quorum, judged on real liveness (--strict-reconfig-check=false disables).
    #[arg(long, env = "QUORATE_STRICT_RECONFIG_CHECK", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    strict_reconfig_check: bool,

    /// The leader promotes a learner once it has caught up (=false disables).
    #[arg(long, env = "QUORATE_AUTO_PROMOTE_LEARNERS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    auto_promote_learners: bool,

    /// Most learners the cluster may have at once.
    #[arg(long, env = "QUORATE_MAX_LEARNERS", default_value_t = 1)]
    max_learners: usize,

    /// Warn (log and health service) about a member unreachable this long (Go duration).
    #[arg(long, env = "QUORATE_UNHEALTHY_MEMBER_WARNING", default_value = "1m", value_parser = parse_go_duration)]
    unhealthy_member_warning: std::time::Duration,

    /// Number of committed transactions between Raft log compactions.
    #[arg(long, env = "QUORATE_SNAPSHOT_COUNT", default_value_t = 10_000)]
    snapshot_count: u64,

    /// Interval of progress notifications to idle watchers that asked for
    /// them (Go duration, e.g. 10m, 500ms), as etcd's flag.
    #[arg(long, env = "QUORATE_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = parse_go_duration)]
    experimental_watch_progress_notify_interval: std::time::Duration,

    /// Largest client write request accepted, in bytes.
    #[arg(long, env = "QUORATE_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    max_request_bytes: usize,

    /// Most operations in one txn branch.
    #[arg(long, env = "QUORATE_MAX_TXN_OPS", default_value_t = 128)]
    max_txn_ops: usize,

    /// Backend size, in bytes, above which writes are refused.
    #[arg(long, env = "QUORATE_QUOTA_BACKEND_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    quota_backend_bytes: u64,

    /// Backend page cache, in bytes (bounds resident memory).
    #[arg(long, env = "QUORATE_BACKEND_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    backend_cache_bytes: usize,

    /// Log level: debug, info, warn or error (RUST_LOG overrides).
    #[arg(long, env = "QUORATE_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

impl Flags {
    fn into_config(self) -> ServerConfig {
        let mut cfg = ServerConfig::new(&self.name);
        if let Some(d) = self.data_dir {
            cfg.data_dir = d;
        }
        cfg.listen_client_urls = self.listen_client_urls;
        cfg.advertise_client_urls = self.advertise_client_urls;
        cfg.initial_advertise_peer_urls = self.initial_advertise_peer_urls;
        cfg.initial_cluster_token = self.initial_cluster_token;
        cfg.listen_peer_urls = self.listen_peer_urls;
        cfg.initial_cluster = self.initial_cluster;
        cfg.initial_cluster_state = if self.initial_cluster_state == "existing" {
            ClusterState::Existing
        } else {
            ClusterState::New
        };
        cfg.heartbeat_interval_ms = self.heartbeat_interval;
        cfg.election_timeout_ms = self.election_timeout;
        cfg.snapshot_count = self.snapshot_count;
        cfg.force_new_cluster = self.force_new_cluster;
        cfg.strict_reconfig_check = self.strict_reconfig_check;
        cfg.max_learners = self.max_learners;
        cfg.auto_promote_learners = self.auto_promote_learners;
        cfg.unhealthy_member_warning_ms = self.unhealthy_member_warning.as_millis() as u64;
        if !self.auto_snapshot_interval.is_zero() {
            let dir = self.auto_snapshot_dir.unwrap_or_else(|| {
                let mut d = cfg.data_dir.clone().into_os_string();
                d.push("-snapshots");
                PathBuf::from(d)
            });
            cfg.auto_snapshot = Some(quorate_server::snapshot_file::AutoSnapshot {
                interval: self.auto_snapshot_interval,
                dir,
                retention: self.auto_snapshot_retention,
            });
        }
        cfg.watch_progress_notify_interval_ms =
            self.experimental_watch_progress_notify_interval.as_millis() as u64;
        cfg.max_request_bytes = self.max_request_bytes;
        cfg.max_txn_ops = self.max_txn_ops;
        cfg.quota_backend_bytes = self.quota_backend_bytes;
        cfg.backend_cache_bytes = self.backend_cache_bytes;
        cfg
    }
}

/// Go's duration syntax as etcd's flags take it: `1h2m3s`, `500ms`, `1.5s`.
fn parse_go_duration(s: &str) -> Result<std::time::Duration, String> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    if rest == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("unknown unit {unit:?} in duration {s:?}")),
        };
        total += value * scale;
        rest = tail;
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
        _ = term => tracing::info!("received SIGTERM"),
    }
}

fn human_size(bytes: u64) -> String {
    // etcd prints sizes with SI units, e.g. "2.1 MB".
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn run_offline(cmd: Offline) -> std::process::ExitCode {
    use std::process::ExitCode;
    match cmd {
        Offline::Snapshot(SnapshotCommand::Status { file, write_out }) => {
            match quorate_server::offline::snapshot_status(&file) {
                Ok(st) => {
                    match write_out.as_str() {
                        "simple" => println!(
                            "{:x}, {}, {}, {}",
                            st.hash,
                            st.revision,
                            st.total_keys,
                            human_size(st.total_size)
                        ),
                        "json" => println!(
                            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{},\"version\":\"{}\"}}",
                            st.hash, st.revision, st.total_keys, st.total_size, st.version
                        ),
                        "table" => {
                            let cells = [
                                format!("{:x}", st.hash),
                                st.revision.to_string(),
                                st.total_keys.to_string(),
                                human_size(st.total_size),
                                st.version.clone(),
                            ];
                            let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE", "VERSION"];
                            let widths: Vec<usize> = heads
                                .iter()
                                .zip(cells.iter())
                                .map(|(h, c)| h.len().max(c.len()) + 2)
                                .collect();
                            let line: String = widths
                                .iter()
                                .map(|w| format!("+{}", "-".repeat(*w)))
                                .collect::<String>()
                                + "+";
                            let row = |vals: Vec<String>| {
                                vals.iter()
                                    .zip(widths.iter())
                                    .map(|(v, w)| format!("|{v:^w$}"))
                                    .collect::<String>()
                                    + "|"
                            };
                            println!("{line}");
                            println!("{}", row(heads.iter().map(|h| h.to_string()).collect()));
                            println!("{line}");
                            println!("{}", row(cells.to_vec()));
                            println!("{line}");
                        }
                        other => {
                            eprintln!("Error: unsupported output format {other:?}");
                            return ExitCode::from(4);
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Offline::Snapshot(SnapshotCommand::Restore {
            file,
            name,
            data_dir,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
            bump_revision,
            mark_compacted,
            skip_hash_check,
        }) => {
            let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.quorate")));
            let opts = quorate_server::offline::RestoreOptions {
                snapshot: file,
                name,
                data_dir: data_dir.clone(),
                initial_cluster,
                initial_cluster_token,
                initial_advertise_peer_urls,
                bump_revision,
                mark_compacted,
                skip_hash_check,
            };
            match quorate_server::offline::snapshot_restore(&opts) {
                Ok((member, cluster, info)) => {
                    println!(
                        "restored snapshot (revision {}, {} keys) into {} as member {member:x} of cluster {cluster:x}",
                        info.revision,
                        info.total_keys,
                        data_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(cmd) = cli.command {
        return run_offline(cmd);
    }
    let flags = cli.flags;
    if flags.heartbeat_interval == 0 || flags.election_timeout < 5 * flags.heartbeat_interval {
        eprintln!(
            "quorate: --election-timeout[{}ms] should be at least 5 times as large as --heartbeat-interval[{}ms]",
            flags.election_timeout, flags.heartbeat_interval
        );
        return std::process::ExitCode::FAILURE;
    }
    init_logging(&flags.log_level);
    let cfg = flags.into_config();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quorate: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(quorate_server::run(cfg, shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
