//! Member lifecycle: open the data dir, bind the client listeners, serve
//! until shutdown, then drain in-flight requests and stop the pipeline.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use quorate_mvcc::{Store, StoreOptions};
use quorate_proto::etcdserverpb::cluster_server::ClusterServer;
use quorate_proto::etcdserverpb::kv_server::KvServer;
use quorate_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};

use crate::api::{cluster::ClusterService, kv::KvService, maintenance::MaintenanceService};
use crate::config::{ServerConfig, GRPC_OVERHEAD_BYTES};
use crate::core::Core;
use crate::identity::{self, ClusterId, MemberId};
use crate::pipeline::WritePipeline;

/// The directory inside the data dir that holds this member's state.
const MEMBER_DIR: &str = "member";
const STORE_FILE: &str = "store.redb";
/// How long shutdown waits for in-flight client requests.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const META_MEMBER_ID: &str = "member_id";
const META_CLUSTER_ID: &str = "cluster_id";

/// Runs a member until `shutdown` resolves.
pub async fn run(cfg: ServerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let store_path = prepare_data_dir(&cfg.data_dir)?;
    let store = Store::open(
        &store_path,
        &StoreOptions {
            cache_size_bytes: cfg.backend_cache_bytes,
        },
    )
    .with_context(|| format!("cannot open data dir {}", cfg.data_dir.display()))?;
    let store = Arc::new(store);
    let (member_id, cluster_id) = load_or_create_identity(&store, &cfg)?;

    let mut listeners = Vec::new();
    for url in &cfg.listen_client_urls {
        let addr = parse_http_url(url)?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {url}"))?;
        let bound = listener.local_addr()?;
        listeners.push((listener, bound));
    }
    let first_port = listeners.first().map(|(_, a)| a.port()).unwrap_or(0);
    let client_urls: Vec<String> = cfg
        .advertise_client_urls
        .iter()
        .map(|u| replace_port_zero(u, first_port))
        .collect();

    let (pipeline, apply_thread) = WritePipeline::start(store.clone())?;
    let core = Arc::new(Core {
        store,
        pipeline,
        member_id,
        cluster_id,
        name: cfg.name.clone(),
        peer_urls: cfg.initial_advertise_peer_urls.clone(),
        client_urls,
        config: cfg.clone(),
    });
    info!(
        name = %cfg.name,
        member_id = %member_id,
        cluster_id = %cluster_id,
        data_dir = %cfg.data_dir.display(),
        "starting member"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Requests between the limit and twice it get etcd's exact error from
    // the KV service; tonic refuses anything larger before decoding.
    let max_msg = 2 * (cfg.max_request_bytes + GRPC_OVERHEAD_BYTES);
    let mut servers = Vec::new();
    for (listener, bound) in listeners {
        let kv = KvServer::new(KvService::new(core.clone())).max_decoding_message_size(max_msg);
        let maintenance = MaintenanceServer::new(MaintenanceService::new(core.clone()))
            .max_decoding_message_size(max_msg);
        let cluster = ClusterServer::new(ClusterService::new(core.clone()))
            .max_decoding_message_size(max_msg);
        let mut stop = stop_rx.clone();
        let server = tonic::transport::Server::builder()
            .add_service(kv)
            .add_service(maintenance)
            .add_service(cluster)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = stop.wait_for(|s| *s).await;
            });
        info!("serving client requests on http://{bound}");
        servers.push(tokio::spawn(server));
    }
    let pipeline = core.pipeline.clone();
    drop(core);

    shutdown.await;
    info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    // In-flight requests finish; idle client connections are not waited for
    // beyond the drain timeout.
    let drain = futures::future::join_all(servers.iter_mut());
    match tokio::time::timeout(DRAIN_TIMEOUT, drain).await {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(error = %e, "client listener stopped with an error"),
                    Err(e) => warn!(error = %e, "client listener task failed"),
                }
            }
        }
        Err(_) => {
            warn!("client connections still open after {DRAIN_TIMEOUT:?}; closing them");
            for s in &servers {
                s.abort();
            }
            for s in servers {
                let _ = s.await;
            }
        }
    }
    pipeline.stop().await;
    tokio::task::spawn_blocking(move || apply_thread.join())
        .await
        .ok();
    info!("stopped");
    Ok(())
}

/// Creates the data dir if needed and refuses one that holds something else.
fn prepare_data_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let member_dir = data_dir.join(MEMBER_DIR);
    let store_path = member_dir.join(STORE_FILE);
    if data_dir.exists() {
        if !data_dir.is_dir() {
            bail!("data dir {} is not a directory", data_dir.display());
        }
        let non_empty = std::fs::read_dir(data_dir)?.next().is_some();
        if non_empty && !store_path.exists() {
            bail!(
                "data dir {} is not empty and holds no Quorate member data ({} missing); \
                 refusing to use it",
                data_dir.display(),
                store_path.display()
            );
        }
    }
    std::fs::create_dir_all(&member_dir)
        .with_context(|| format!("cannot create {}", member_dir.display()))?;
    Ok(store_path)
}

/// IDs are derived at first boot and kept: a restart ignores bootstrap flags.
fn load_or_create_identity(
    store: &Store,
    cfg: &ServerConfig,
) -> anyhow::Result<(MemberId, ClusterId)> {
    let read_u64 = |name: &str| -> anyhow::Result<Option<u64>> {
        match store.get_external_meta(name)? {
            None => Ok(None),
            Some(b) => {
                let arr: [u8; 8] = b
                    .as_slice()
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("stored {name} is corrupt"))?;
                Ok(Some(u64::from_be_bytes(arr)))
            }
        }
    };
    if let (Some(m), Some(c)) = (read_u64(META_MEMBER_ID)?, read_u64(META_CLUSTER_ID)?) {
        return Ok((MemberId(m), ClusterId(c)));
    }
    let member = identity::member_id(
        &cfg.initial_advertise_peer_urls,
        &cfg.initial_cluster_token,
        None,
    );
    let cluster = identity::cluster_id(&[member]);
    let mut w = store.write()?;
    w.set_external_meta(META_MEMBER_ID, &member.0.to_be_bytes())?;
    w.set_external_meta(META_CLUSTER_ID, &cluster.0.to_be_bytes())?;
    w.commit(true)?;
    Ok((member, cluster))
}

fn parse_http_url(url: &str) -> anyhow::Result<SocketAddr> {
    let u = url::Url::parse(url).with_context(|| format!("invalid URL {url}"))?;
    match u.scheme() {
        "http" => {}
        "https" => bail!("{url}: TLS is not supported yet; use http://"),
        s => bail!("{url}: unsupported scheme {s} (expected http)"),
    }
    let host = u
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?;
    let port = u.port().unwrap_or(2379);
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
