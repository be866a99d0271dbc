//! quorate.v1.ClusterHealth: every member's real liveness and lag, and the
//! cluster's failure tolerance, as the leader sees them. A follower forwards
//! the request to the leader; without a leader it answers from its own
//! view, marked as such.

use std::sync::Arc;
use std::time::Duration;

use quorate_proto::quorate::v1::cluster_health_client::ClusterHealthClient;
use quorate_proto::quorate::v1::cluster_health_server::ClusterHealth;
use quorate_proto::quorate::v1::{HealthRequest, HealthResponse, MemberHealth};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::core::Core;
use crate::error::ApiError;
use crate::health;

const WARN_INTERVAL: Duration = Duration::from_secs(10);

pub struct HealthService {
    core: Arc<Core>,
}

impl HealthService {
    pub fn new(core: Arc<Core>) -> HealthService {
        HealthService { core }
    }
}

/// The health report computed on this member. On the leader it includes
/// every member's match index and lag.
pub async fn local_health(core: &Core) -> Result<HealthResponse, ApiError> {
    let me = core.member_id.0;
    let leader = core.leader();
    let reachable_within = Duration::from_millis(core.config.election_timeout_ms);
    let progress = if leader == me {
        core.all_progress().await?
    } else {
        None
    };
    let last_index = progress.as_ref().map_or(0, |(l, _)| *l);
    let membership = core.membership();
    let members = membership
        .members
        .iter()
        .map(|m| {
            let since = if m.id == me {
                Some(Duration::ZERO)
            } else {
                core.liveness.since(m.id)
            };
            let matched = progress
                .as_ref()
                .and_then(|(_, p)| p.iter().find(|(id, _)| *id == m.id).map(|(_, x)| *x))
                .unwrap_or(0);
            let matched = if m.id == me && leader == me {
                last_index
            } else {
                matched
            };
            MemberHealth {
                id: m.id,
                name: m.name.clone(),
                peer_urls: m.peer_ur_ls.clone(),
                client_urls: m.client_ur_ls.clone(),
                is_learner: m.is_learner,
                is_leader: m.id == leader,
                reachable: since.is_some_and(|s| s <= reachable_within),
                last_seen_ms_ago: since.map_or(-1, |s| s.as_millis() as i64),
                match_index: matched,
                lag_entries: last_index.saturating_sub(matched),
                learner_progress_percent: (matched.min(last_index) * 100)
                    .checked_div(last_index)
                    .unwrap_or(0) as u32,
            }
        })
        .collect();
    let mut resp = HealthResponse {
        cluster_id: core.cluster_id.0,
        reporter_id: me,
        from_leader: leader == me,
        leader_id: leader,
        raft_term: core.view.term.load(std::sync::atomic::Ordering::Relaxed),
        last_index,
        members,
        ..Default::default()
    };
    health::summarize(
        &mut resp,
        Duration::from_millis(core.config.unhealthy_member_warning_ms),
    );
    let corrupt = match core.corruption.lock() {
        Ok(c) => c.clone(),
        Err(p) => p.into_inner().clone(),
    };
    resp.warnings.extend(corrupt);
    Ok(resp)
}

/// The leader's report, fetched from it when this member is a follower.
pub async fn cluster_health(core: &Core) -> Result<HealthResponse, Status> {
    let leader = core.leader();
    if leader == core.member_id.0 || leader == 0 {
        return Ok(local_health(core).await?);
    }
    for url in core.leader_client_urls() {
        if let Ok(mut c) = ClusterHealthClient::connect(url).await {
            if let Ok(r) = c.health(HealthRequest {}).await {
                return Ok(r.into_inner());
            }
        }
    }
    // The leader did not answer: this member's own view.
    Ok(local_health(core).await?)
}

#[tonic::async_trait]
impl ClusterHealth for HealthService {
    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(cluster_health(&self.core).await?))
    }
}

/// On the leader: logs the health warnings (tolerance 0, long-unreachable
/// members) every few seconds while they last.
pub async fn warn_unhealthy(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(WARN_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if core.leader() != core.member_id.0 {
            continue;
        }
        if let Ok(h) = local_health(&core).await {
            for w in h.warnings.iter().filter(|w| !w.starts_with("learner")) {
                warn!("cluster health: {w}");
            }
        }
    }
}
