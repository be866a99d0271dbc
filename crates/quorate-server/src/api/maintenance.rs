//! etcdserverpb.Maintenance: Status and Alarm (GET) for now.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::Stream;
use quorate_proto::etcdserverpb::maintenance_server::Maintenance;
use quorate_proto::etcdserverpb::{
    alarm_request, AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
};
use tonic::{Request, Response, Status};

use super::unimplemented;
use crate::core::{Core, ETCD_API_VERSION};
use crate::error::ApiError;

pub struct MaintenanceService {
    core: Arc<Core>,
}

impl MaintenanceService {
    pub fn new(core: Arc<Core>) -> MaintenanceService {
        MaintenanceService { core }
    }

    fn revision(&self) -> Result<i64, Status> {
        let r = self.core.store.get().read().map_err(ApiError::from)?;
        Ok(r.revision())
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // No alarm can be raised yet: GET and DEACTIVATE see an empty list.
        match alarm_request::AlarmAction::try_from(req.into_inner().action) {
            Ok(alarm_request::AlarmAction::Get) | Ok(alarm_request::AlarmAction::Deactivate) => {
                Ok(Response::new(AlarmResponse {
                    header: self.core.header(self.revision()?),
                    alarms: vec![],
                }))
            }
            _ => Err(unimplemented("Maintenance.Alarm(ACTIVATE)")),
        }
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let store = self.core.store.get();
        let db_size = store.file_size();
        // The in-use size needs the write lock briefly; off the async workers.
        let in_use = tokio::task::spawn_blocking(move || store.size_in_use().unwrap_or(db_size))
            .await
            .unwrap_or(db_size);
        let view = &self.core.view;
        Ok(Response::new(StatusResponse {
            header: self.core.header(self.revision()?),
            version: ETCD_API_VERSION.to_string(),
            db_size: db_size as i64,
            leader: self.core.leader(),
            raft_index: view.commit.load(Ordering::Relaxed),
            raft_term: view.term.load(Ordering::Relaxed),
            raft_applied_index: self.core.applied_index(),
            errors: vec![],
            db_size_in_use: in_use as i64,
            is_learner: self.core.is_learner(),
            storage_version: String::new(),
            db_size_quota: self.core.config.quota_backend_bytes as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(unimplemented("Maintenance.Defragment"))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(unimplemented("Maintenance.Hash"))
    }

    async fn hash_kv(&self, _: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(unimplemented("Maintenance.HashKV"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unimplemented("Maintenance.Snapshot"))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = req.into_inner().target_id;
        let membership = self.core.membership();
        // etcd refuses an unknown or learner target the same way.
        let member =
            crate::membership::find(&membership, target).ok_or(ApiError::BadLeaderTransferee)?;
        if member.is_learner {
            return Err(ApiError::BadLeaderTransferee.into());
        }
        if self.core.leader() != self.core.member_id.0 {
            return Err(ApiError::NotLeader.into());
        }
        if target == self.core.member_id.0 {
            return Ok(Response::new(MoveLeaderResponse {
                header: self.core.header(self.revision()?),
            }));
        }
        self.core.transfer_leader(target).await?;
        // Leadership moves within an election timeout; give up after the
        // request timeout, as etcd does.
        let deadline = tokio::time::Instant::now() + self.core.request_timeout;
        while self.core.leader() != target {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Timeout.into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(Response::new(MoveLeaderResponse {
            header: self.core.header(self.revision()?),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(unimplemented("Maintenance.Downgrade"))
    }
}
