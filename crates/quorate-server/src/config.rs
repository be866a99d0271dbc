//! Server configuration, with etcd's flag names and defaults. Parsing from
//! the command line lives in the `quorate` binary; this is the plain value.

use std::path::PathBuf;

/// gRPC framing allowance on top of `--max-request-bytes` (etcd uses the same).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Found a new cluster with the members of `--initial-cluster`.
    New,
    /// Join a running cluster that already lists this member.
    Existing,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    /// Peer URLs this member is known by; they determine its member ID.
    pub initial_advertise_peer_urls: Vec<String>,
    pub initial_cluster_token: String,
    pub listen_peer_urls: Vec<String>,
    /// `name=peer-url,...`; defaults to this member alone.
    pub initial_cluster: Option<String>,
    pub initial_cluster_state: ClusterState,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// Applied entries between Raft log compactions.
    pub snapshot_count: u64,
    /// Restart this member as the only member of its cluster, keeping its data.
    pub force_new_cluster: bool,
    /// Refuse reconfigurations that would leave the cluster unable to reach
    /// quorum, judged on real liveness.
    pub strict_reconfig_check: bool,
    pub max_learners: usize,
    pub auto_promote_learners: bool,
    /// A member unreachable this long is warned about.
    pub unhealthy_member_warning_ms: u64,
    /// Automatic snapshots taken by the leader; None disables them.
    pub auto_snapshot: Option<crate::snapshot_file::AutoSnapshot>,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub quota_backend_bytes: u64,
    /// Interval of progress notifications to idle watchers that asked for them.
    pub watch_progress_notify_interval_ms: u64,
    /// redb page cache size.
    pub backend_cache_bytes: usize,
}

impl ServerConfig {
    pub fn new(name: &str) -> ServerConfig {
        ServerConfig {
            name: name.to_string(),
            data_dir: PathBuf::from(format!("{name}.quorate")),
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            advertise_client_urls: vec!["http://127.0.0.1:2379".into()],
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            initial_cluster_token: "etcd-cluster".into(),
            listen_peer_urls: vec!["http://localhost:2380".into()],
            initial_cluster: None,
            initial_cluster_state: ClusterState::New,
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            snapshot_count: 10_000,
            force_new_cluster: false,
            auto_snapshot: None,
            strict_reconfig_check: true,
            max_learners: 1,
            auto_promote_learners: true,
            unhealthy_member_warning_ms: 60_000,
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
            backend_cache_bytes: 64 * 1024 * 1024,
            watch_progress_notify_interval_ms: 10 * 60 * 1000,
        }
    }
}
