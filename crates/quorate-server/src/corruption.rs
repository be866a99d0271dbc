//! Replica consistency check: compares this member's HashKV with every
//! other member's at the same revision, once shortly after start-up and then
//! periodically on the leader. A disagreement is logged and shown by the
//! health service; it is never repaired automatically.

use std::sync::Arc;
use std::time::Duration;

use quorate_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use quorate_proto::etcdserverpb::HashKvRequest;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::core::Core;

/// Delay before the start-up check (the cluster settles first).
const STARTUP_DELAY: Duration = Duration::from_secs(5);
/// Between periodic checks on the leader.
const CHECK_INTERVAL: Duration = Duration::from_secs(300);
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn check_loop(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut first = true;
    loop {
        let wait = if first { STARTUP_DELAY } else { CHECK_INTERVAL };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if first || core.leader() == core.member_id.0 {
            check_once(&core).await;
        }
        first = false;
    }
}

/// Compares HashKV at this member's current revision with every reachable
/// member that has applied it. Members behind, or unreachable, are skipped.
pub async fn check_once(core: &Core) {
    let store = core.store.get();
    let computed =
        tokio::task::spawn_blocking(move || crate::api::maintenance::keyspace_hash(&store, 0))
            .await;
    let Ok(Ok((mine, _, rev))) = computed else {
        return;
    };
    let mut problems = Vec::new();
    let mut compared = 0;
    for m in core.membership().members {
        if m.id == core.member_id.0 {
            continue;
        }
        let Some(url) = m.client_ur_ls.first().cloned() else {
            continue;
        };
        let answer = tokio::time::timeout(PEER_TIMEOUT, async {
            let mut c = MaintenanceClient::connect(url).await.ok()?;
            c.hash_kv(HashKvRequest { revision: rev }).await.ok()
        })
        .await;
        let Ok(Some(resp)) = answer else {
            continue;
        };
        compared += 1;
        let theirs = resp.into_inner().hash;
        if theirs != mine {
            let msg = format!(
                "corruption check: member {} ({:x}) has HashKV {theirs:08x} at revision {rev}, \
                 this member {:x} has {mine:08x}: the replicas disagree",
                m.name, m.id, core.member_id.0
            );
            warn!("{msg}");
            problems.push(msg);
        }
    }
    if compared > 0 && problems.is_empty() {
        info!(
            revision = rev,
            members = compared,
            "corruption check: replicas agree"
        );
    }
    match core.corruption.lock() {
        Ok(mut c) => *c = problems,
        Err(p) => *p.into_inner() = problems,
    }
}
