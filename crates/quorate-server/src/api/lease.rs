//! etcdserverpb.Lease: grant, revoke, keep-alive, time-to-live, list.
//!
//! Grant and revoke are replicated writes. Keep-alive and the remaining TTL
//! are the leader's business (only it tracks deadlines): a follower asks the
//! leader over the peer transport. Expiry is a revocation the leader
//! proposes (`expire_leases`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use quorate_proto::etcdserverpb::lease_server::Lease;
use quorate_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use quorate_proto::quoratepb::internal_request::Request as Write;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::apply::WriteResponse;
use crate::core::Core;
use crate::error::ApiError;
use crate::lessor::MAX_LEASE_TTL_SECONDS;

/// Most lease revocations the leader proposes per expiry pass.
const EXPIRE_PER_PASS: usize = 500;
const EXPIRE_INTERVAL: Duration = Duration::from_millis(500);
/// One forwarded keep-alive attempt; then it is retried.
const RENEW_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
const RENEW_RETRY: Duration = Duration::from_millis(50);
/// Keep-alive responses queued per stream.
const KEEPALIVE_QUEUE_LEN: usize = 64;

pub struct LeaseService {
    core: Arc<Core>,
}

impl LeaseService {
    pub fn new(core: Arc<Core>) -> LeaseService {
        LeaseService { core }
    }

    /// etcd's minimum TTL: 1.5 election timeouts, rounded up to seconds, so a
    /// lease survives an election.
    fn min_ttl(&self) -> i64 {
        let ms = self.core.config.election_timeout_ms as i64 * 3 / 2;
        (ms + 999) / 1000
    }
}

/// Keep-alive or remaining TTL, from this member if it leads, else from the
/// leader. -1 means the lease is unknown. Around an election it waits for a
/// leader and retries, up to the request timeout, as etcd does.
async fn leader_ttl(core: &Core, id: i64, renew: bool) -> Result<i64, Status> {
    let deadline = tokio::time::Instant::now() + core.request_timeout;
    loop {
        if core.lessor.is_primary() {
            let ttl = if renew {
                core.lessor.renew(id)
            } else {
                core.lessor.remaining(id)
            };
            return Ok(ttl.unwrap_or(-1));
        }
        let leader = core.leader();
        if leader != 0 && leader != core.member_id.0 {
            let urls = crate::membership::find(&core.membership(), leader)
                .map(|m| m.peer_ur_ls.clone())
                .unwrap_or_default();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = tokio::time::timeout(
                left.min(RENEW_ATTEMPT_TIMEOUT),
                crate::peer::lease_renew_on(&urls, id, renew),
            )
            .await;
            if let Ok(Ok(ttl)) = attempt {
                return Ok(ttl);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(if core.leader() == 0 {
                ApiError::NoLeader
            } else {
                ApiError::Timeout
            }
            .into());
        }
        tokio::time::sleep(RENEW_RETRY).await;
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut req = req.into_inner();
        if req.ttl > MAX_LEASE_TTL_SECONDS {
            return Err(ApiError::LeaseTtlTooLarge.into());
        }
        req.ttl = req.ttl.max(self.min_ttl());
        if req.id == 0 {
            // Chosen here, before replication, so every member agrees.
            req.id = loop {
                let id = (rand_u64() >> 1) as i64;
                if id != 0 {
                    break id;
                }
            };
        }
        match self.core.propose(Write::LeaseGrant(req)).await? {
            WriteResponse::LeaseGrant(mut r) => {
                self.core.fill_header(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(Status::internal("etcdserver: unexpected response type")),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        match self
            .core
            .propose(Write::LeaseRevoke(req.into_inner()))
            .await?
        {
            WriteResponse::LeaseRevoke(mut r) => {
                self.core.fill_header(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(Status::internal("etcdserver: unexpected response type")),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut requests = req.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_QUEUE_LEN);
        let core = self.core.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = requests.next().await {
                let reply = match leader_ttl(&core, r.id, true).await {
                    Ok(ttl) => {
                        let revision = core.store.get().read().map(|s| s.revision()).unwrap_or(0);
                        Ok(LeaseKeepAliveResponse {
                            header: core.header(revision),
                            id: r.id,
                            // etcd answers an unknown lease with TTL 0.
                            ttl: ttl.max(0),
                        })
                    }
                    Err(e) => Err(e),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    debug!("lease keep-alive stream ended");
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        self.core.read_barrier().await?;
        let read = self.core.store.get().read().map_err(ApiError::from)?;
        let revision = read.revision();
        let Some(granted) = read.lease_ttl(req.id).map_err(ApiError::from)? else {
            // etcd reports an unknown lease with TTL -1, not an error.
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header: self.core.header(revision),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: vec![],
            }));
        };
        let ttl = leader_ttl(&self.core, req.id, false).await?;
        let keys = if req.keys {
            self.core.lease_keys.keys_of(req.id)
        } else {
            vec![]
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.core.header(revision),
            id: req.id,
            ttl,
            granted_ttl: granted,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.core.read_barrier().await?;
        let read = self.core.store.get().read().map_err(ApiError::from)?;
        let leases = read
            .leases()
            .map_err(ApiError::from)?
            .into_iter()
            .map(|(id, _)| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.core.header(read.revision()),
            leases,
        }))
    }
}

/// On the leader: revokes expired leases through Raft, a bounded number per
/// pass, until `stop` is set.
pub async fn expire_leases(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EXPIRE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for id in core.lessor.expired(EXPIRE_PER_PASS, core.request_timeout) {
            let core = core.clone();
            tokio::spawn(async move {
                let r = core
                    .propose(Write::LeaseRevoke(LeaseRevokeRequest { id }))
                    .await;
                if let Err(e) = r {
                    if e != ApiError::LeaseNotFound {
                        debug!(lease = id, error = %e, "lease expiry will be retried");
                    }
                }
            });
        }
    }
}

/// Random bits for lease IDs (not security-relevant).
fn rand_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
