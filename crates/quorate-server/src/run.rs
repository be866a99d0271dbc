//! Member lifecycle: open or bootstrap the data dir, bind client and peer
//! listeners, run the Raft thread, serve until shutdown (or until the member
//! must exit), then drain in-flight requests and stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use quorate_mvcc::{AppliedIndex, Store, StoreOptions};
use quorate_proto::etcdserverpb::cluster_server::ClusterServer;
use quorate_proto::etcdserverpb::kv_server::KvServer;
use quorate_proto::etcdserverpb::lease_server::LeaseServer;
use quorate_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use quorate_proto::etcdserverpb::watch_server::WatchServer;
use quorate_proto::quorate::v1::cluster_health_server::ClusterHealthServer;
use quorate_proto::quoratepb::raft_peer_server::RaftPeerServer;
use quorate_proto::quoratepb::MembershipState;
use quorate_raft::{discard_logger, DurableLog, Node, NodeConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};

use crate::api::health::HealthService;
use crate::api::lease::LeaseService;
use crate::api::watch::WatchService;
use crate::api::{cluster::ClusterService, kv::KvService, maintenance::MaintenanceService};
use crate::config::{ClusterState, ServerConfig, GRPC_OVERHEAD_BYTES};
use crate::core::Core;
use crate::identity::{ClusterId, MemberId};
use crate::membership::{self, META_CLUSTER_ID, META_MEMBERSHIP, META_MEMBER_ID};
use crate::peer::{self, PeerContext, PeerService, PeerTransport, PEER_MAX_MESSAGE_BYTES};
use crate::raft_loop::{self, Command, LoopTiming, RaftLoop, COMMAND_QUEUE_LEN};
use crate::replica::{Replica, StoreHandle};

/// The directory inside the data dir that holds this member's state.
const MEMBER_DIR: &str = "member";
const STORE_FILE: &str = "store.redb";
const RAFT_FILE: &str = "raft.redb";
const SNAP_DIR: &str = "snap";
/// How long shutdown waits for in-flight client requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Raft log entries kept after a compaction for slow followers (etcd: 5000).
const SNAPSHOT_CATCHUP_ENTRIES: u64 = 5000;

struct DataDir {
    store: PathBuf,
    raft: PathBuf,
    snap: PathBuf,
}

/// Runs a member until `shutdown` resolves, or until it must stop (removed
/// from the cluster, storage failure), which is returned as an error.
pub async fn run(cfg: ServerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let dirs = prepare_data_dir(&cfg.data_dir)?;
    let store_options = StoreOptions {
        cache_size_bytes: cfg.backend_cache_bytes,
    };
    let store = Store::open(&dirs.store, &store_options)
        .with_context(|| format!("cannot open data dir {}", cfg.data_dir.display()))?;
    let mut log = DurableLog::open(&dirs.raft)
        .with_context(|| format!("cannot open data dir {}", cfg.data_dir.display()))?;
    let (member_id, cluster_id, mut membership) = match load_identity(&store)? {
        Some(found) => {
            info!("restarting member from its data dir; bootstrap flags are ignored");
            found
        }
        None if cfg.force_new_cluster => {
            bail!("--force-new-cluster needs the data dir of an existing member")
        }
        None => bootstrap(&cfg, &store, &mut log).await?,
    };
    if cfg.force_new_cluster {
        force_new_cluster(&store, &mut log, member_id, &mut membership)?;
    }
    if membership.removed.contains(&member_id.0) {
        bail!("{}", peer::REMOVED_MESSAGE);
    }

    let mut client_listeners = Vec::new();
    for url in &cfg.listen_client_urls {
        client_listeners.push(bind(url, 2379).await?);
    }
    let mut peer_listeners = Vec::new();
    for url in &cfg.listen_peer_urls {
        peer_listeners.push(bind(url, 2380).await?);
    }
    let first_port = client_listeners.first().map(|(_, a)| a.port()).unwrap_or(0);
    let client_urls: Vec<String> = cfg
        .advertise_client_urls
        .iter()
        .map(|u| replace_port_zero(u, first_port))
        .collect();

    let store = StoreHandle::new(store);
    let mut replica = Replica::new(
        store.clone(),
        dirs.store.clone(),
        store_options.clone(),
        membership,
        member_id.0,
    )?;
    replica.lease_extend = Duration::from_millis(cfg.election_timeout_ms);
    let lessor = replica.lessor.clone();
    let lease_keys = replica.lease_keys.clone();
    let alarms = replica.alarms.clone();
    let liveness = Arc::new(crate::health::Liveness::default());
    let view = replica.view.clone();
    let membership = replica.membership.clone();
    let applied_rx = replica.applied_tx.subscribe();
    let revision_rx = replica.revision_tx.subscribe();
    let (raft_tx, raft_rx) = mpsc::channel(COMMAND_QUEUE_LEN);
    let (fatal_tx, mut fatal_rx) = watch::channel::<Option<String>>(None);
    let peer_ctx = PeerContext {
        cluster_id: cluster_id.0,
        member_id: member_id.0,
        membership: membership.clone(),
        loop_tx: raft_tx.clone(),
        store: store.clone(),
        store_options,
        snap_dir: dirs.snap.clone(),
        fatal_tx: fatal_tx.clone(),
        runtime: tokio::runtime::Handle::current(),
        lessor: lessor.clone(),
        liveness: liveness.clone(),
    };
    let heartbeat = cfg.heartbeat_interval_ms.max(1);
    let mut node_cfg = NodeConfig::new(member_id.0);
    node_cfg.heartbeat_tick = 1;
    node_cfg.election_tick = (cfg.election_timeout_ms / heartbeat).max(2) as usize;
    node_cfg.snapshot_count = cfg.snapshot_count.max(1);
    node_cfg.snapshot_catchup_entries = SNAPSHOT_CATCHUP_ENTRIES.min(cfg.snapshot_count / 2);
    let node = Node::new(
        node_cfg,
        log,
        replica,
        PeerTransport::new(peer_ctx.clone()),
        &discard_logger(),
    )
    .context("cannot start raft")?;
    let request_timeout = Duration::from_millis(5000 + 2 * cfg.election_timeout_ms);
    let timing = LoopTiming {
        tick: Duration::from_millis(heartbeat),
        auto_promote_learners: cfg.auto_promote_learners,
        request_timeout,
    };
    let raft_loop = RaftLoop::new(node, raft_rx, timing, cfg.name.clone(), client_urls.clone());
    let loop_fatal = fatal_tx.clone();
    let loop_thread = std::thread::Builder::new()
        .name("quorate-raft".into())
        .spawn(move || {
            if let Err(e) = raft_loop.run() {
                let _ = loop_fatal.send(Some(e));
            }
        })
        .context("cannot start the raft thread")?;
    raft_loop::start_ticker(raft_tx.clone(), timing.tick);

    let (stop_tx, stop_rx) = watch::channel(false);
    // Requests between the limit and twice it get etcd's exact error from
    // the KV service; tonic refuses anything larger before decoding.
    let max_msg = 2 * (cfg.max_request_bytes + GRPC_OVERHEAD_BYTES);
    let mut servers = Vec::new();
    for (listener, bound) in peer_listeners {
        let svc = RaftPeerServer::new(PeerService::new(peer_ctx.clone()))
            .max_decoding_message_size(PEER_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(PEER_MAX_MESSAGE_BYTES);
        let mut stop = stop_rx.clone();
        let server = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(nodelay(listener), async move {
                let _ = stop.wait_for(|s| *s).await;
            });
        info!("listening for peers on http://{bound}");
        servers.push(tokio::spawn(server));
    }
    // Like etcd, serve clients only once this member's name and client URLs
    // are published through Raft (which needs a quorum).
    let published = wait_published(&membership, member_id.0, &cfg.name, &client_urls);
    let mut fatal_early = fatal_rx.clone();
    let mut stopped_early = false;
    tokio::select! {
        _ = published => info!("published local member to the cluster through raft"),
        _ = fatal_early.wait_for(|f| f.is_some()) => {}
        _ = &mut shutdown => stopped_early = true,
    }

    let core = Arc::new(Core {
        store,
        raft_tx: raft_tx.clone(),
        view,
        applied_rx,
        membership,
        member_id,
        cluster_id,
        config: cfg.clone(),
        request_timeout,
        lessor,
        lease_keys,
        alarms,
        liveness,
        corruption: std::sync::Mutex::new(Vec::new()),
    });
    tokio::spawn(crate::corruption::check_loop(core.clone(), stop_rx.clone()));
    tokio::spawn(crate::api::health::warn_unhealthy(
        core.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::api::lease::expire_leases(
        core.clone(),
        stop_rx.clone(),
    ));
    if let Some(auto) = cfg.auto_snapshot.clone() {
        info!(
            dir = %auto.dir.display(),
            interval = ?auto.interval,
            retention = auto.retention,
            "automatic snapshots on (taken by the leader)"
        );
        tokio::spawn(crate::snapshot_file::auto_snapshots(
            core.clone(),
            auto,
            stop_rx.clone(),
        ));
    }
    info!(
        name = %cfg.name,
        member_id = %member_id,
        cluster_id = %cluster_id,
        data_dir = %cfg.data_dir.display(),
        "starting member"
    );

    for (listener, bound) in client_listeners {
        let kv = KvServer::new(KvService::new(core.clone())).max_decoding_message_size(max_msg);
        let maintenance = MaintenanceServer::new(MaintenanceService::new(core.clone()))
            .max_decoding_message_size(max_msg);
        let cluster = ClusterServer::new(ClusterService::new(core.clone()))
            .max_decoding_message_size(max_msg);
        let lease =
            LeaseServer::new(LeaseService::new(core.clone())).max_decoding_message_size(max_msg);
        let health = ClusterHealthServer::new(HealthService::new(core.clone()));
        let watch_svc = WatchServer::new(WatchService::new(
            core.clone(),
            revision_rx.clone(),
            Duration::from_millis(cfg.watch_progress_notify_interval_ms.max(1)),
        ))
        .max_decoding_message_size(max_msg);
        let mut stop = stop_rx.clone();
        let server = tonic::transport::Server::builder()
            .add_service(kv)
            .add_service(maintenance)
            .add_service(cluster)
            .add_service(watch_svc)
            .add_service(lease)
            .add_service(health)
            .serve_with_incoming_shutdown(nodelay(listener), async move {
                let _ = stop.wait_for(|s| *s).await;
            });
        info!("serving client requests on http://{bound}");
        servers.push(tokio::spawn(server));
    }
    drop(core);

    let fatal = tokio::select! {
        _ = &mut shutdown, if !stopped_early => None,
        _ = std::future::ready(()), if stopped_early => None,
        changed = fatal_rx.wait_for(|f| f.is_some()) => {
            changed.ok().and_then(|f| f.clone())
        }
    };
    if let Some(reason) = &fatal {
        tracing::error!("{reason}");
    }
    info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    let drain = futures::future::join_all(servers.iter_mut());
    match tokio::time::timeout(DRAIN_TIMEOUT, drain).await {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(error = %e, "listener stopped with an error"),
                    Err(e) => warn!(error = %e, "listener task failed"),
                }
            }
        }
        Err(_) => {
            warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
            // Some handles were already polled to completion above; abort
            // the rest without awaiting them again.
            for s in &servers {
                s.abort();
            }
        }
    }
    let _ = raft_tx.send(Command::Stop).await;
    tokio::task::spawn_blocking(move || loop_thread.join())
        .await
        .ok();
    info!("stopped");
    match fatal {
        Some(reason) => Err(anyhow!(reason)),
        None => Ok(()),
    }
}

async fn wait_published(
    membership: &std::sync::RwLock<MembershipState>,
    member_id: u64,
    name: &str,
    client_urls: &[String],
) {
    loop {
        let done = {
            let m = match membership.read() {
                Ok(m) => m.clone(),
                Err(p) => p.into_inner().clone(),
            };
            membership::find(&m, member_id)
                .is_some_and(|me| me.name == name && me.client_ur_ls == client_urls)
        };
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Creates the data dir if needed and refuses one that holds something else.
fn prepare_data_dir(data_dir: &Path) -> anyhow::Result<DataDir> {
    let member_dir = data_dir.join(MEMBER_DIR);
    let dirs = DataDir {
        store: member_dir.join(STORE_FILE),
        raft: member_dir.join(RAFT_FILE),
        snap: member_dir.join(SNAP_DIR),
    };
    if data_dir.exists() {
        if !data_dir.is_dir() {
            bail!("data dir {} is not a directory", data_dir.display());
        }
        let non_empty = std::fs::read_dir(data_dir)?.next().is_some();
        if non_empty && !dirs.store.exists() {
            bail!(
                "data dir {} is not empty and holds no Quorate member data ({} missing); \
                 refusing to use it",
                data_dir.display(),
                dirs.store.display()
            );
        }
        if dirs.store.exists() && !dirs.raft.exists() {
            bail!(
                "data dir {} has a store but no raft log ({} missing); refusing to start",
                data_dir.display(),
                dirs.raft.display()
            );
        }
    }
    std::fs::create_dir_all(&dirs.snap)
        .with_context(|| format!("cannot create {}", dirs.snap.display()))?;
    Ok(dirs)
}

fn read_u64(store: &Store, name: &str) -> anyhow::Result<Option<u64>> {
    match store.get_external_meta(name)? {
        None => Ok(None),
        Some(b) => {
            let arr: [u8; 8] = b
                .as_slice()
                .try_into()
                .map_err(|_| anyhow!("stored {name} is corrupt"))?;
            Ok(Some(u64::from_be_bytes(arr)))
        }
    }
}

/// The identity and membership a previous run stored, if any.
fn load_identity(store: &Store) -> anyhow::Result<Option<(MemberId, ClusterId, MembershipState)>> {
    let (Some(m), Some(c)) = (
        read_u64(store, META_MEMBER_ID)?,
        read_u64(store, META_CLUSTER_ID)?,
    ) else {
        return Ok(None);
    };
    let membership = match store.get_external_meta(META_MEMBERSHIP)? {
        Some(b) => membership::decode(&b).map_err(|e| anyhow!(e))?,
        None => MembershipState::default(),
    };
    Ok(Some((MemberId(m), ClusterId(c), membership)))
}

/// `--force-new-cluster`: this member becomes the only member of its
/// cluster, with its data and IDs; every other member is removed for good
/// and entries it had not applied are dropped (as etcd does).
fn force_new_cluster(
    store: &Store,
    log: &mut DurableLog,
    member_id: MemberId,
    membership: &mut MembershipState,
) -> anyhow::Result<()> {
    let others: Vec<String> = membership
        .members
        .iter()
        .filter(|m| m.id != member_id.0)
        .map(|m| format!("{} ({:x})", m.name, m.id))
        .collect();
    warn!(
        "--force-new-cluster: starting as the ONLY member of the cluster; removing {} other member(s): {}. \
         Their data dirs must never be started again; grow the cluster back with member add.",
        others.len(),
        others.join(", ")
    );
    for m in membership.members.iter().filter(|m| m.id != member_id.0) {
        if !membership.removed.contains(&m.id) {
            membership.removed.push(m.id);
        }
    }
    membership.members.retain(|m| m.id == member_id.0);
    for m in &mut membership.members {
        m.is_learner = false;
    }
    let applied = store.applied_index()?;
    log.force_single_voter(member_id.0, applied.index, applied.term.max(1))?;
    let mut w = store.write()?;
    w.set_external_meta(META_MEMBERSHIP, &membership::encode(membership))?;
    w.commit(true)?;
    Ok(())
}

/// First start on an empty data dir: found a new cluster, or join one.
async fn bootstrap(
    cfg: &ServerConfig,
    store: &Store,
    log: &mut DurableLog,
) -> anyhow::Result<(MemberId, ClusterId, MembershipState)> {
    let spec = cfg.initial_cluster.clone().unwrap_or_else(|| {
        cfg.initial_advertise_peer_urls
            .iter()
            .map(|u| format!("{}={u}", cfg.name))
            .collect::<Vec<_>>()
            .join(",")
    });
    let initial = membership::parse_initial_cluster(&spec).map_err(|e| anyhow!(e))?;
    let mut own_urls = cfg.initial_advertise_peer_urls.clone();
    own_urls.sort();
    match initial.get(&cfg.name) {
        None => bail!(
            "couldn't find local name {:?} in the initial cluster configuration ({spec})",
            cfg.name
        ),
        Some(urls) => {
            let mut urls = urls.clone();
            urls.sort();
            if urls != own_urls {
                bail!(
                    "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
                    cfg.name,
                    urls.join(","),
                    own_urls.join(",")
                );
            }
        }
    }
    let (member_id, cluster_id, state, applied) = match cfg.initial_cluster_state {
        ClusterState::New => {
            let (state, cluster_id) =
                membership::bootstrap_membership(&initial, &cfg.initial_cluster_token);
            let me = state
                .members
                .iter()
                .find(|m| m.name == cfg.name)
                .map(|m| MemberId(m.id))
                .ok_or_else(|| anyhow!("local member missing from the initial cluster"))?;
            if log.is_empty() {
                log.bootstrap(&membership::voters(&state))?;
            }
            let applied = AppliedIndex {
                index: quorate_raft::log::BOOTSTRAP_INDEX,
                term: 1,
            };
            info!(
                members = state.members.len(),
                cluster_id = %cluster_id,
                "bootstrapping a new cluster"
            );
            (me, cluster_id, state, applied)
        }
        ClusterState::Existing => {
            let peers: Vec<String> = initial
                .iter()
                .filter(|(name, _)| **name != cfg.name)
                .flat_map(|(_, urls)| urls.iter().cloned())
                .collect();
            let resp = peer::fetch_membership(&peers).await.map_err(|e| {
                anyhow!("cannot fetch the membership from the cluster's peers: {e}")
            })?;
            let state = resp.membership.unwrap_or_default();
            let me = state
                .members
                .iter()
                .find(|m| {
                    let mut u = m.peer_ur_ls.clone();
                    u.sort();
                    u == own_urls
                })
                .map(|m| MemberId(m.id))
                .ok_or_else(|| {
                    anyhow!(
                        "no member with peer URLs {} in the running cluster; \
                         add it first (etcdctl member add {} --peer-urls={})",
                        own_urls.join(","),
                        cfg.name,
                        own_urls.join(",")
                    )
                })?;
            info!(member_id = %me, "joining an existing cluster");
            (
                me,
                ClusterId(resp.cluster_id),
                state,
                AppliedIndex::default(),
            )
        }
    };
    let mut w = store.write()?;
    w.set_external_meta(META_MEMBERSHIP, &membership::encode(&state))?;
    if applied.index > 0 {
        w.set_applied(applied)?;
    }
    w.set_external_meta(META_CLUSTER_ID, &cluster_id.0.to_be_bytes())?;
    w.set_external_meta(META_MEMBER_ID, &member_id.0.to_be_bytes())?;
    w.commit(true)?;
    Ok((member_id, cluster_id, state))
}

/// Accepted connections with Nagle off: small gRPC responses must not wait
/// for the peer's delayed ACK (that cost ~40 ms per request).
fn nodelay(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

async fn bind(url: &str, default_port: u16) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let addr = parse_http_url(url, default_port)?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {url}"))?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

fn parse_http_url(url: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    let u = url::Url::parse(url).with_context(|| format!("invalid URL {url}"))?;
    match u.scheme() {
        "http" => {}
        "https" => bail!("{url}: TLS is not supported yet; use http://"),
        s => bail!("{url}: unsupported scheme {s} (expected http)"),
    }
    let host = u.host_str().ok_or_else(|| anyhow!("{url}: no host"))?;
    let port = u.port().unwrap_or(default_port);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let ip: std::net::IpAddr = host
        .parse()
        .with_context(|| format!("{url}: listen address must be an IP address"))?;
    Ok(SocketAddr::new(ip, port))
}

/// `http://127.0.0.1:0` advertises the port actually bound.
fn replace_port_zero(url: &str, port: u16) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.port() == Some(0) => {
            let _ = u.set_port(Some(port));
            u.as_str().trim_end_matches('/').to_string()
        }
        _ => url.to_string(),
    }
}
