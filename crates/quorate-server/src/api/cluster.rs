//! etcdserverpb.Cluster: MemberList for the single member. Reconfiguration
//! arrives with replication.

use std::sync::Arc;

use quorate_proto::etcdserverpb::cluster_server::Cluster;
use quorate_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::unimplemented;
use crate::core::Core;

pub struct ClusterService {
    core: Arc<Core>,
}

impl ClusterService {
    pub fn new(core: Arc<Core>) -> ClusterService {
        ClusterService { core }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(unimplemented("Cluster.MemberAdd"))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(unimplemented("Cluster.MemberRemove"))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(unimplemented("Cluster.MemberUpdate"))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        // etcd leaves the revision out of Cluster API headers.
        Ok(Response::new(MemberListResponse {
            header: self.core.header(0),
            members: vec![Member {
                id: self.core.member_id.0,
                name: self.core.name.clone(),
                peer_ur_ls: self.core.peer_urls.clone(),
                client_ur_ls: self.core.client_urls.clone(),
                is_learner: false,
            }],
        }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(unimplemented("Cluster.MemberPromote"))
    }
}
