//! etcdserverpb.Cluster: the membership, changed through Raft configuration
//! changes. Promotion needs the leader's view of the learner's progress, so
//! a follower forwards it to the leader, as etcd does.

use std::sync::Arc;

use quorate_proto::etcdserverpb::cluster_client::ClusterClient;
use quorate_proto::etcdserverpb::cluster_server::Cluster;
use quorate_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use quorate_proto::quoratepb::internal_request::Request as Write;
use quorate_proto::quoratepb::{ConfChangeContext, MemberAttributes};
use quorate_raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::error::ApiError;
use crate::health;
use crate::identity;
use crate::membership::validate_peer_url;

/// A learner may be promoted once it has 90% of the leader's log (etcd).
const PROMOTE_READY_PERCENT: u64 = 90;

/// Adds Quorate's explanation to an error whose message stays etcd's.
fn with_detail(mut status: Status, detail: &str) -> Status {
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(detail) {
        status.metadata_mut().insert("quorate-detail", v);
    }
    status
}

pub struct ClusterService {
    core: Arc<Core>,
}

impl ClusterService {
    pub fn new(core: Arc<Core>) -> ClusterService {
        ClusterService { core }
    }

    fn conf_change(
        &self,
        id: u64,
        kind: ConfChangeType,
        member: Option<Member>,
    ) -> (ConfChangeV2, u64) {
        use prost::Message as _;
        let request_id = self.core.next_request_id();
        let ctx = ConfChangeContext { request_id, member };
        let mut single = ConfChangeSingle {
            node_id: id,
            ..Default::default()
        };
        single.set_change_type(kind);
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        cc.set_context(ctx.encode_to_vec().into());
        (cc, request_id)
    }

    /// A client for the leader's Cluster service, for requests only the
    /// leader can judge (it alone knows every member's liveness and lag).
    async fn leader_client(&self) -> Result<ClusterClient<tonic::transport::Channel>, Status> {
        let urls = self.core.leader_client_urls();
        let url = urls.first().ok_or(ApiError::NoLeader)?;
        ClusterClient::connect(url.clone())
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach the leader at {url}: {e}")))
    }

    /// After a request the leader served, waits until this member has
    /// applied it too, so the client reads its own change here next.
    async fn catch_up(&self) {
        if let Err(e) = self.core.read_barrier().await {
            tracing::debug!(error = %e, "could not catch up after a forwarded request");
        }
    }

    fn is_leader(&self) -> bool {
        self.core.leader() == self.core.member_id.0
    }

    /// The strict reconfiguration check, on the leader's live view.
    async fn check(&self, change: health::Change<'_>) -> Result<(), Status> {
        if !self.core.config.strict_reconfig_check {
            return Ok(());
        }
        let h = crate::api::health::local_health(&self.core).await?;
        match health::check_reconfiguration(&h, change) {
            Some(reason) => {
                tracing::warn!("{reason}");
                Err(Status::failed_precondition(reason))
            }
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let req = req.into_inner();
        if req.peer_ur_ls.is_empty() {
            return Err(Status::invalid_argument(
                "etcdserver: peer URLs are not provided",
            ));
        }
        for u in &req.peer_ur_ls {
            validate_peer_url(u).map_err(Status::invalid_argument)?;
        }
        let membership = self.core.membership();
        let taken = membership
            .members
            .iter()
            .flat_map(|m| m.peer_ur_ls.iter())
            .any(|u| req.peer_ur_ls.contains(u));
        if taken {
            return Err(ApiError::PeerUrlExists.into());
        }
        let learners = membership.members.iter().filter(|m| m.is_learner).count();
        if req.is_learner && learners >= self.core.config.max_learners {
            // etcd's exact string (clients match it); the numbers and the
            // remedy travel in metadata, which quoratectl prints.
            return Err(with_detail(
                ApiError::TooManyLearners.into(),
                &format!(
                    "{learners} learner(s), at most {} (--max-learners); promote or remove the pending learner first: quoratectl member promote|remove <id>",
                    self.core.config.max_learners
                ),
            ));
        }
        if self.core.config.strict_reconfig_check && !req.is_learner {
            if !self.is_leader() {
                let r = self.leader_client().await?.member_add(req).await?;
                self.catch_up().await;
                return Ok(Response::new(r.into_inner()));
            }
            self.check(health::Change::AddVoter).await?;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut urls = req.peer_ur_ls.clone();
        urls.sort();
        // etcd derives a runtime member's ID from its peer URLs and the time
        // in seconds, with no cluster token.
        let id = identity::member_id(&urls, "", Some(now)).0;
        if crate::membership::find(&membership, id).is_some() || membership.removed.contains(&id) {
            return Err(ApiError::MemberIdExists.into());
        }
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: urls,
            client_ur_ls: vec![],
            is_learner: req.is_learner,
        };
        let kind = if req.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let (cc, request_id) = self.conf_change(id, kind, Some(member.clone()));
        let state = self.core.propose_conf_change(cc, request_id).await?;
        Ok(Response::new(MemberAddResponse {
            header: self.core.header(0),
            member: Some(member),
            members: state.members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = req.into_inner().id;
        let membership = self.core.membership();
        // A removed ID is "not found" too, as etcd answers.
        if crate::membership::find(&membership, id).is_none() {
            return Err(ApiError::MemberNotFound.into());
        }
        if self.core.config.strict_reconfig_check {
            if !self.is_leader() {
                let r = self
                    .leader_client()
                    .await?
                    .member_remove(MemberRemoveRequest { id })
                    .await?;
                self.catch_up().await;
                return Ok(Response::new(r.into_inner()));
            }
            let h = crate::api::health::local_health(&self.core).await?;
            if let Some(target) = h.members.iter().find(|m| m.id == id) {
                if let Some(reason) =
                    health::check_reconfiguration(&h, health::Change::Remove { target })
                {
                    tracing::warn!("{reason}");
                    return Err(Status::failed_precondition(reason));
                }
            }
        }
        let (cc, request_id) = self.conf_change(id, ConfChangeType::RemoveNode, None);
        let state = self.core.propose_conf_change(cc, request_id).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.core.header(0),
            members: state.members,
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let req = req.into_inner();
        for u in &req.peer_ur_ls {
            validate_peer_url(u).map_err(Status::invalid_argument)?;
        }
        let membership = self.core.membership();
        if crate::membership::find(&membership, req.id).is_none() {
            return Err(ApiError::MemberNotFound.into());
        }
        let taken = membership
            .members
            .iter()
            .filter(|m| m.id != req.id)
            .flat_map(|m| m.peer_ur_ls.iter())
            .any(|u| req.peer_ur_ls.contains(u));
        if taken {
            return Err(ApiError::PeerUrlExists.into());
        }
        let mut urls = req.peer_ur_ls.clone();
        urls.sort();
        let state = self
            .core
            .propose_membership(Write::MemberAttributes(MemberAttributes {
                id: req.id,
                peer_urls: urls,
                update_peer_urls: true,
                ..Default::default()
            }))
            .await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.core.header(0),
            members: state.members,
        }))
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if req.into_inner().linearizable {
            self.core.read_barrier().await?;
        }
        // etcd leaves the revision out of Cluster API headers.
        Ok(Response::new(MemberListResponse {
            header: self.core.header(0),
            members: self.core.membership().members,
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let id = req.into_inner().id;
        let membership = self.core.membership();
        let member = crate::membership::find(&membership, id).ok_or(ApiError::MemberNotFound)?;
        if !member.is_learner {
            return Err(ApiError::MemberNotLearner.into());
        }
        if self.core.leader() != self.core.member_id.0 {
            // Only the leader knows how far the learner has come.
            let r = self
                .leader_client()
                .await?
                .member_promote(MemberPromoteRequest { id })
                .await?;
            self.catch_up().await;
            return Ok(Response::new(r.into_inner()));
        }
        let progress = self.core.learner_progress(id).await?;
        let ready = match progress {
            Some((matched, last)) => matched * 100 >= last * PROMOTE_READY_PERCENT,
            None => false,
        };
        if !ready {
            // etcd's exact string (clients match it); the numbers and the
            // remedy travel in metadata, which quoratectl prints.
            let (matched, last) = progress.unwrap_or((0, 0));
            return Err(with_detail(
                ApiError::LearnerNotReady.into(),
                &format!(
                    "the learner has {matched} of the leader's {last} log entries, {PROMOTE_READY_PERCENT}% needed; wait until it catches up (quoratectl member list -w table shows its lag)"
                ),
            ));
        }
        let (cc, request_id) = self.conf_change(id, ConfChangeType::AddNode, None);
        let state = self.core.propose_conf_change(cc, request_id).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.core.header(0),
            members: state.members,
        }))
    }
}
