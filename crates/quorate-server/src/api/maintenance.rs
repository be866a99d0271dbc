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
use crate::apply::WriteResponse;
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

/// Bytes per `Maintenance.Snapshot` message.
const SNAPSHOT_CHUNK_BYTES: usize = 64 * 1024;
/// Keys read per step when hashing the keyspace.
const HASH_PAGE_KEYS: usize = 10_000;

/// CRC-32 over every live key at `at` (0: current revision): key, value,
/// create and mod revisions, version and lease, in key order. Equal on every
/// member holding the same data at that revision. Returns (hash, compact
/// revision, revision hashed).
pub(crate) fn keyspace_hash(
    store: &quorate_mvcc::Store,
    at: i64,
) -> Result<(u32, i64, i64), ApiError> {
    use quorate_mvcc::{KeyRange, RangeOptions};
    let read = store.read()?;
    let rev = if at <= 0 { read.revision() } else { at };
    let mut hasher = crc32fast::Hasher::new();
    let mut start = vec![0u8];
    loop {
        let page = read.range(
            &KeyRange::new(&start, b"\0"),
            RangeOptions {
                revision: rev,
                limit: HASH_PAGE_KEYS,
                count_only: false,
            },
        )?;
        for kv in &page.kvs {
            hasher.update(&(kv.key.len() as u64).to_le_bytes());
            hasher.update(&kv.key);
            hasher.update(&(kv.value.len() as u64).to_le_bytes());
            hasher.update(&kv.value);
            for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
                hasher.update(&n.to_le_bytes());
            }
        }
        match page.kvs.last() {
            Some(last) if page.kvs.len() == HASH_PAGE_KEYS => {
                start = last.key.clone();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok((hasher.finalize(), read.compact_revision(), rev))
}

fn stream_file(
    path: &std::path::Path,
    size: u64,
    header: Option<quorate_proto::etcdserverpb::ResponseHeader>,
    tx: tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.blocking_send(Err(Status::internal(format!("snapshot: {e}"))));
            return;
        }
    };
    let mut remaining = size;
    let mut first = true;
    loop {
        let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
        let n = match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(format!("snapshot: {e}"))));
                return;
            }
        };
        buf.truncate(n);
        remaining = remaining.saturating_sub(n as u64);
        let msg = SnapshotResponse {
            header: if first { header } else { None },
            remaining_bytes: remaining,
            blob: buf,
            version: String::new(),
        };
        first = false;
        if tx.blocking_send(Ok(msg)).is_err() {
            return;
        }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = req.into_inner();
        match alarm_request::AlarmAction::try_from(req.action) {
            Ok(alarm_request::AlarmAction::Get) => Ok(Response::new(AlarmResponse {
                header: self.core.header(self.revision()?),
                alarms: self.core.alarms(),
            })),
            Ok(_) => match self.core.propose_alarm(req).await? {
                WriteResponse::Alarm(mut r) => {
                    self.core.fill_header(&mut r.header);
                    Ok(Response::new(r))
                }
                _ => Err(Status::internal("etcdserver: unexpected response type")),
            },
            Err(_) => Err(Status::invalid_argument("etcdserver: unknown alarm action")),
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
        // Applied first: the commit index is published before it moves.
        let applied = self.core.applied_index();
        Ok(Response::new(StatusResponse {
            header: self.core.header(self.revision()?),
            version: ETCD_API_VERSION.to_string(),
            db_size: db_size as i64,
            leader: self.core.leader(),
            raft_index: view.commit.load(Ordering::Relaxed),
            raft_term: view.term.load(Ordering::Relaxed),
            raft_applied_index: applied,
            errors: self
                .core
                .alarms()
                .iter()
                .map(|a| {
                    let name = quorate_proto::etcdserverpb::AlarmType::try_from(a.alarm)
                        .map(|t| t.as_str_name().to_string())
                        .unwrap_or_else(|_| a.alarm.to_string());
                    format!("memberID:{} alarm:{name} ", a.member_id)
                })
                .collect(),
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
        self.core.defragment().await?;
        Ok(Response::new(DefragmentResponse {
            header: self.core.header(self.revision()?),
        }))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let store = self.core.store.get();
        let (hash, _, rev) = tokio::task::spawn_blocking(move || keyspace_hash(&store, 0))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(HashResponse {
            header: self.core.header(rev),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let at = req.into_inner().revision;
        let store = self.core.store.get();
        let (hash, compact_revision, rev) =
            tokio::task::spawn_blocking(move || keyspace_hash(&store, at))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
        let current = self.revision()?;
        Ok(Response::new(HashKvResponse {
            header: self.core.header(current),
            hash,
            compact_revision,
            hash_revision: rev,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let store = self.core.store.get();
        let dir = self.core.config.data_dir.join("member").join("snap");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = dir.join(format!("save-{nanos}.tmp"));
        let written = path.clone();
        // A consistent copy is written to disk first (bounded memory, and
        // the total size is known for `remaining_bytes`), then streamed.
        let (size, revision) = tokio::task::spawn_blocking(move || {
            crate::snapshot_file::write_snapshot_file(&store, &written)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let header = self.core.header(revision);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            stream_file(&path, size, header, tx);
            let _ = std::fs::remove_file(&path);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
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
