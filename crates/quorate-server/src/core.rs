//! State shared by the gRPC services of one member: the store, the way into
//! the Raft thread, Raft's published view, the membership and the limits.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use quorate_proto::etcdserverpb::{Member, ResponseHeader};
use quorate_proto::quoratepb::internal_request::Request;
use quorate_proto::quoratepb::MembershipState;
use quorate_raft::eraftpb::ConfChangeV2;
use tokio::sync::{mpsc, oneshot, watch};

use crate::apply::WriteResponse;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::identity::{ClusterId, MemberId};
use crate::raft_loop::Command;
use crate::replica::{Applied, RaftView, StoreHandle};

/// The etcd API level Quorate implements; reported as the server version so
/// etcd clients enable the features they know from that version.
pub const ETCD_API_VERSION: &str = "3.5.0";

pub struct Core {
    pub store: StoreHandle,
    pub raft_tx: mpsc::Sender<Command>,
    pub view: Arc<RaftView>,
    pub applied_rx: watch::Receiver<u64>,
    pub membership: Arc<RwLock<MembershipState>>,
    pub member_id: MemberId,
    pub cluster_id: ClusterId,
    pub config: ServerConfig,
    pub request_timeout: Duration,
    pub lessor: Arc<crate::lessor::Lessor>,
    pub lease_keys: Arc<crate::lessor::LeaseKeys>,
    pub alarms: Arc<RwLock<Vec<quorate_proto::etcdserverpb::AlarmMember>>>,
    pub liveness: Arc<crate::health::Liveness>,
    /// Members whose HashKV disagreed with ours, as found by the last
    /// corruption check (reported by the health service).
    pub corruption: std::sync::Mutex<Vec<String>>,
}

impl Core {
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id.0,
            member_id: self.member_id.0,
            revision,
            raft_term: self.view.term.load(Ordering::Relaxed),
        })
    }

    /// Completes a header that apply filled with the revision only.
    pub fn fill_header(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = self.header(revision);
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied_rx.borrow()
    }

    pub fn leader(&self) -> u64 {
        self.view.leader.load(Ordering::Relaxed)
    }

    pub fn membership(&self) -> MembershipState {
        match self.membership.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn me(&self) -> Option<Member> {
        crate::membership::find(&self.membership(), self.member_id.0).cloned()
    }

    pub fn is_learner(&self) -> bool {
        self.me().is_some_and(|m| m.is_learner)
    }

    /// Learners replicate but serve only serializable reads, as in etcd.
    pub fn refuse_on_learner(&self) -> Result<(), ApiError> {
        if self.is_learner() {
            return Err(ApiError::NotSupportedForLearner);
        }
        Ok(())
    }

    async fn send(&self, cmd: Command) -> Result<(), ApiError> {
        self.raft_tx.send(cmd).await.map_err(|_| ApiError::Stopped)
    }

    pub fn alarms(&self) -> Vec<quorate_proto::etcdserverpb::AlarmMember> {
        match self.alarms.read() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// etcd's quota: while a NOSPACE alarm is raised, or once the backend
    /// is over `--quota-backend-bytes` (which raises it), writes that add
    /// data are refused; reads, deletes and compaction go on.
    fn check_quota(&self, request: &Request) -> Result<(), ApiError> {
        use quorate_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
        if !crate::apply::adds_data(request) {
            return Ok(());
        }
        let nospace = AlarmType::Nospace as i32;
        if self.alarms().iter().any(|a| a.alarm == nospace) {
            return Err(ApiError::NoSpace);
        }
        if self.store.get().file_size() > self.config.quota_backend_bytes {
            let (respond, _rx) = oneshot::channel();
            let _ = self.raft_tx.try_send(Command::Propose {
                request: Request::Alarm(AlarmRequest {
                    action: AlarmAction::Activate as i32,
                    member_id: self.member_id.0,
                    alarm: nospace,
                }),
                respond,
            });
            tracing::warn!(
                quota = self.config.quota_backend_bytes,
                "backend is over its quota: raising the NOSPACE alarm"
            );
            return Err(ApiError::NoSpace);
        }
        Ok(())
    }

    /// Replicates a write and waits until it is applied here.
    pub async fn propose(&self, request: Request) -> Result<WriteResponse, ApiError> {
        self.refuse_on_learner()?;
        self.check_quota(&request)?;
        let (respond, rx) = oneshot::channel();
        self.send(Command::Propose { request, respond }).await?;
        match rx.await.map_err(|_| ApiError::Stopped)? {
            Applied::Write(r) => r,
            Applied::Membership(_) => Err(ApiError::Internal("unexpected membership reply".into())),
        }
    }

    /// Raises or clears an alarm (not refused by the quota: disarming is
    /// how writes come back).
    pub async fn propose_alarm(
        &self,
        req: quorate_proto::etcdserverpb::AlarmRequest,
    ) -> Result<WriteResponse, ApiError> {
        let (respond, rx) = oneshot::channel();
        self.send(Command::Propose {
            request: Request::Alarm(req),
            respond,
        })
        .await?;
        match rx.await.map_err(|_| ApiError::Stopped)? {
            Applied::Write(r) => r,
            Applied::Membership(_) => Err(ApiError::Internal("unexpected membership reply".into())),
        }
    }

    /// Replicates a membership update carried in a normal entry.
    pub async fn propose_membership(&self, request: Request) -> Result<MembershipState, ApiError> {
        let (respond, rx) = oneshot::channel();
        self.send(Command::Propose { request, respond }).await?;
        match rx.await.map_err(|_| ApiError::Stopped)? {
            Applied::Membership(r) => r,
            Applied::Write(Err(e)) => Err(e),
            Applied::Write(Ok(_)) => Err(ApiError::Internal("unexpected write reply".into())),
        }
    }

    pub async fn propose_conf_change(
        &self,
        cc: ConfChangeV2,
        request_id: u64,
    ) -> Result<MembershipState, ApiError> {
        let (respond, rx) = oneshot::channel();
        self.send(Command::ConfChange {
            cc,
            request_id,
            respond,
        })
        .await?;
        match rx.await.map_err(|_| ApiError::Stopped)? {
            Applied::Membership(r) => r,
            Applied::Write(Err(e)) => Err(e),
            Applied::Write(Ok(_)) => Err(ApiError::Internal("unexpected write reply".into())),
        }
    }

    /// Waits until this member has applied everything committed when the
    /// read arrived (ReadIndex): a read served afterwards is linearizable.
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        self.refuse_on_learner()?;
        let (respond, rx) = oneshot::channel();
        self.send(Command::ReadIndex { respond }).await?;
        let index = rx.await.map_err(|_| ApiError::Stopped)??;
        let mut applied = self.applied_rx.clone();
        let waited = tokio::time::timeout(self.request_timeout, async move {
            applied.wait_for(|a| *a >= index).await.is_ok()
        })
        .await;
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::Stopped),
            Err(_) => Err(ApiError::Timeout),
        }
    }

    pub async fn transfer_leader(&self, to: u64) -> Result<(), ApiError> {
        let (respond, rx) = oneshot::channel();
        self.send(Command::TransferLeader { to, respond }).await?;
        rx.await.map_err(|_| ApiError::Stopped)?
    }

    pub async fn all_progress(&self) -> Result<Option<crate::raft_loop::Progress>, ApiError> {
        let (respond, rx) = oneshot::channel();
        self.send(Command::AllProgress { respond }).await?;
        rx.await.map_err(|_| ApiError::Stopped)
    }

    pub async fn learner_progress(&self, id: u64) -> Result<Option<(u64, u64)>, ApiError> {
        let (respond, rx) = oneshot::channel();
        self.send(Command::Progress { id, respond }).await?;
        rx.await.map_err(|_| ApiError::Stopped)
    }

    pub async fn defragment(&self) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Defragment(tx)).await?;
        rx.await.map_err(|_| ApiError::Stopped)?
    }

    pub async fn wait_compacted(&self) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::WaitCompacted(tx)).await?;
        rx.await.map_err(|_| ApiError::Stopped)
    }

    /// A fresh request ID for membership changes (unique per member).
    pub fn next_request_id(&self) -> u64 {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        ((self.member_id.0 & 0xffff) << 48) ^ ((millis & 0xff_ffff) << 24) ^ (n | 1 << 47)
    }

    /// Client URLs of the current leader, for requests only it can serve.
    pub fn leader_client_urls(&self) -> Vec<String> {
        let leader = self.leader();
        crate::membership::find(&self.membership(), leader)
            .map(|m| m.client_ur_ls.clone())
            .unwrap_or_default()
    }
}
