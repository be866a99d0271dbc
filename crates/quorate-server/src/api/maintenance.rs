//! etcdserverpb.Maintenance: Status and Alarm (GET) for now.

use std::pin::Pin;
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
use crate::core::{Core, ETCD_API_VERSION, SINGLE_NODE_TERM};
use crate::error::ApiError;

pub struct MaintenanceService {
    core: Arc<Core>,
}

impl MaintenanceService {
    pub fn new(core: Arc<Core>) -> MaintenanceService {
        MaintenanceService { core }
    }

    fn revision(&self) -> Result<i64, Status> {
        let r = self.core.store.read().map_err(ApiError::from)?;
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
        let applied = self.core.applied_index();
        Ok(Response::new(StatusResponse {
            header: self.core.header(self.revision()?),
            version: ETCD_API_VERSION.to_string(),
            db_size: self.core.db_size() as i64,
            leader: self.core.member_id.0,
            raft_index: applied,
            raft_term: SINGLE_NODE_TERM,
            raft_applied_index: applied,
            errors: vec![],
            db_size_in_use: self.core.db_size_in_use() as i64,
            is_learner: false,
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
        _: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(unimplemented("Maintenance.MoveLeader"))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(unimplemented("Maintenance.Downgrade"))
    }
}
