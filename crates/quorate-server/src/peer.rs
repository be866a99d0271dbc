//! Peer transport: Raft messages between members, on the peer URLs.
//!
//! Outgoing: one long-lived gRPC stream per peer, fed from a bounded queue
//! (a slow or dead peer drops messages, which Raft retransmits; memory stays
//! bounded), batched, reconnected with backoff. Snapshots go on their own
//! stream, in bounded chunks, produced from a store read snapshot.
//! Incoming: batches are checked (cluster ID, removed members) and queued for
//! the Raft thread; snapshots are written to disk, verified and turned into a
//! complete store file before Raft sees the message.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protobuf::Message as _;
use quorate_mvcc::StoreOptions;
use quorate_proto::quoratepb::raft_peer_client::RaftPeerClient;
use quorate_proto::quoratepb::raft_peer_server::RaftPeer;
use quorate_proto::quoratepb::{
    LeaseRenewRequest, LeaseRenewResponse, MembersRequest, MembersResponse, MembershipState,
    PeerBatch, PeerReply, SnapshotChunk,
};
use quorate_raft::eraftpb::{Message, MessageType};
use quorate_raft::Transport;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info, warn};

use crate::raft_loop::Command;
use crate::replica::StoreHandle;

/// Messages queued per peer; beyond this they are dropped (Raft retries).
pub const PEER_QUEUE_LEN: usize = 4096;
/// Raft messages per batch on the wire.
const BATCH_MAX_MESSAGES: usize = 256;
/// Snapshot chunk size on the wire.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest peer message accepted.
pub const PEER_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What a removed member is told, and logs before it exits.
pub const REMOVED_MESSAGE: &str = "the member has been permanently removed from the cluster";

/// Shared by the transport and the peer service.
#[derive(Clone)]
pub struct PeerContext {
    pub cluster_id: u64,
    pub member_id: u64,
    pub membership: Arc<RwLock<MembershipState>>,
    pub loop_tx: mpsc::Sender<Command>,
    pub store: StoreHandle,
    pub store_options: StoreOptions,
    /// Where incoming snapshots are staged.
    pub snap_dir: PathBuf,
    /// Set when a peer says this member was removed.
    pub fatal_tx: tokio::sync::watch::Sender<Option<String>>,
    pub runtime: tokio::runtime::Handle,
    pub lessor: Arc<crate::lessor::Lessor>,
    pub liveness: Arc<crate::health::Liveness>,
}

impl PeerContext {
    fn membership(&self) -> MembershipState {
        match self.membership.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn peer_urls(&self, id: u64) -> Vec<String> {
        crate::membership::find(&self.membership(), id)
            .map(|m| m.peer_ur_ls.clone())
            .unwrap_or_default()
    }
}

/// The Raft thread's transport: routes messages to per-peer senders.
pub struct PeerTransport {
    ctx: PeerContext,
    links: HashMap<u64, mpsc::Sender<Message>>,
}

impl PeerTransport {
    pub fn new(ctx: PeerContext) -> PeerTransport {
        PeerTransport {
            ctx,
            links: HashMap::new(),
        }
    }

    fn link(&mut self, to: u64) -> Option<mpsc::Sender<Message>> {
        if let Some(tx) = self.links.get(&to) {
            if !tx.is_closed() {
                return Some(tx.clone());
            }
        }
        if self.ctx.peer_urls(to).is_empty() {
            return None;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE_LEN);
        let ctx = self.ctx.clone();
        self.ctx.runtime.spawn(run_link(ctx, to, rx));
        self.links.insert(to, tx.clone());
        Some(tx)
    }
}

impl Transport for PeerTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.to == self.ctx.member_id {
                continue;
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let ctx = self.ctx.clone();
                self.ctx.runtime.spawn(send_snapshot(ctx, m));
                continue;
            }
            let to = m.to;
            match self.link(to) {
                Some(tx) => {
                    if tx.try_send(m).is_err() {
                        debug!(peer = %format!("{to:x}"), "peer queue full; dropping a raft message");
                    }
                }
                None => {
                    debug!(peer = %format!("{to:x}"), "no peer URL known; dropping a raft message")
                }
            }
        }
    }
}

async fn connect(url: &str) -> Option<RaftPeerClient<tonic::transport::Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.ok()?;
    Some(
        RaftPeerClient::new(channel)
            .max_decoding_message_size(PEER_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(PEER_MAX_MESSAGE_BYTES),
    )
}

fn is_removed(status: &Status) -> bool {
    status.code() == tonic::Code::PermissionDenied && status.message().contains(REMOVED_MESSAGE)
}

/// Streams messages to one peer until its queue closes.
async fn run_link(ctx: PeerContext, to: u64, mut rx: mpsc::Receiver<Message>) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut url_index = 0usize;
    loop {
        let urls = ctx.peer_urls(to);
        if urls.is_empty() {
            return;
        }
        let url = urls[url_index % urls.len()].clone();
        url_index += 1;
        let Some(mut client) = connect(&url).await else {
            let _ = ctx.loop_tx.try_send(Command::Unreachable(to));
            // Drop what queued up meanwhile: Raft resends what matters.
            while rx.try_recv().is_ok() {}
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            continue;
        };
        let (btx, brx) = mpsc::channel::<PeerBatch>(16);
        let call = tokio::spawn(async move {
            client
                .send(tokio_stream::wrappers::ReceiverStream::new(brx))
                .await
        });
        backoff = RECONNECT_BACKOFF_MIN;
        loop {
            let Some(first) = rx.recv().await else {
                drop(btx);
                let _ = call.await;
                return;
            };
            let mut pending = vec![first];
            while pending.len() < BATCH_MAX_MESSAGES {
                match rx.try_recv() {
                    Ok(m) => pending.push(m),
                    Err(_) => break,
                }
            }
            let messages: Vec<Vec<u8>> = pending
                .iter()
                .filter_map(|m| match m.write_to_bytes() {
                    Ok(b) => Some(b),
                    Err(e) => {
                        warn!(error = %e, "cannot encode a raft message");
                        None
                    }
                })
                .collect();
            let batch = PeerBatch {
                cluster_id: ctx.cluster_id,
                from: ctx.member_id,
                messages,
            };
            if btx.send(batch).await.is_err() {
                break;
            }
        }
        match call.await {
            Ok(Err(status)) if is_removed(&status) => {
                error!("{REMOVED_MESSAGE}");
                let _ = ctx.fatal_tx.send(Some(REMOVED_MESSAGE.to_string()));
                return;
            }
            Ok(Err(status))
                if status.code() == tonic::Code::FailedPrecondition
                    && status.message().contains("cluster ID mismatch") =>
            {
                warn!(
                    peer = %format!("{to:x}"),
                    local = %format!("{:x}", ctx.cluster_id),
                    "request sent was ignored ({})",
                    status.message()
                );
            }
            Ok(Err(status)) => {
                debug!(peer = %format!("{to:x}"), %status, "peer stream ended");
            }
            _ => {}
        }
        let _ = ctx.loop_tx.try_send(Command::Unreachable(to));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

/// Streams the current state machine to a follower, then reports the
/// outcome to Raft. The data is at least as new as the snapshot index: the
/// state machine has applied everything committed before Raft asked.
async fn send_snapshot(ctx: PeerContext, mut msg: Message) {
    let to = msg.to;
    let ok = match send_snapshot_inner(&ctx, &mut msg).await {
        Ok(()) => {
            info!(peer = %format!("{to:x}"), index = msg.get_snapshot().get_metadata().index, "sent snapshot");
            true
        }
        Err(e) => {
            warn!(peer = %format!("{to:x}"), error = %e, "sending snapshot failed");
            false
        }
    };
    let _ = ctx.loop_tx.send(Command::SnapshotStatus(to, ok)).await;
}

/// A `Write` that hands fixed-size chunks to an async channel.
struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        while self.buf.len() >= SNAPSHOT_CHUNK_BYTES {
            let rest = self.buf.split_off(SNAPSHOT_CHUNK_BYTES);
            let chunk = std::mem::replace(&mut self.buf, rest);
            self.tx
                .blocking_send(chunk)
                .map_err(|_| std::io::Error::other("snapshot receiver went away"))?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.tx
                .blocking_send(chunk)
                .map_err(|_| std::io::Error::other("snapshot receiver went away"))?;
        }
        Ok(())
    }
}

async fn send_snapshot_inner(ctx: &PeerContext, msg: &mut Message) -> Result<(), String> {
    let urls = ctx.peer_urls(msg.to);
    let url = urls.first().ok_or("no peer URL")?;
    let mut client = connect(url).await.ok_or("cannot connect")?;
    msg.mut_snapshot().data = Default::default();
    let header = msg.write_to_bytes().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let store = ctx.store.get();
    let producer = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let snapshot = store.read().map_err(|e| e.to_string())?;
        let mut w = ChunkWriter {
            tx,
            buf: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
        };
        snapshot.write_snapshot(&mut w).map_err(|e| e.to_string())?;
        w.flush().map_err(|e| e.to_string())?;
        Ok(())
    });
    let cluster_id = ctx.cluster_id;
    let from = ctx.member_id;
    // The Raft message first, then the data.
    let first = SnapshotChunk {
        cluster_id,
        from,
        message: header,
        data: vec![],
    };
    let rest = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |data| SnapshotChunk {
        cluster_id,
        from,
        message: vec![],
        data,
    });
    let chunks = tokio_stream::once(first).chain(rest);
    let result = client.snapshot(chunks).await;
    let produced = producer.await.map_err(|e| e.to_string())?;
    produced?;
    result.map(|_| ()).map_err(|s| s.to_string())
}

/// The peer service: receives Raft traffic for this member.
pub struct PeerService {
    ctx: PeerContext,
}

impl PeerService {
    pub fn new(ctx: PeerContext) -> PeerService {
        PeerService { ctx }
    }

    fn admit(&self, cluster_id: u64, from: u64) -> Result<(), Status> {
        if cluster_id != self.ctx.cluster_id {
            warn!(
                peer = %format!("{from:x}"),
                theirs = %format!("{cluster_id:x}"),
                ours = %format!("{:x}", self.ctx.cluster_id),
                "refusing peer: cluster ID mismatch"
            );
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: member {from:x} belongs to cluster {cluster_id:x}, this is {:x}",
                self.ctx.cluster_id
            )));
        }
        if self.ctx.membership().removed.contains(&from) {
            return Err(Status::permission_denied(REMOVED_MESSAGE));
        }
        Ok(())
    }
}

type ReplyResult = Result<Response<PeerReply>, Status>;

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn send(&self, req: Request<Streaming<PeerBatch>>) -> ReplyResult {
        let mut stream = req.into_inner();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            self.admit(batch.cluster_id, batch.from)?;
            self.ctx.liveness.heard(batch.from);
            for bytes in batch.messages {
                match Message::parse_from_bytes(&bytes) {
                    Ok(m) => {
                        if self
                            .ctx
                            .loop_tx
                            .try_send(Command::Step(Box::new(m)))
                            .is_err()
                        {
                            debug!("raft queue full; dropping a peer message");
                        }
                    }
                    Err(e) => {
                        return Err(Status::invalid_argument(format!(
                            "raft message does not decode: {e}"
                        )))
                    }
                }
            }
        }
        Ok(Response::new(PeerReply {}))
    }

    async fn snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> ReplyResult {
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        self.admit(first.cluster_id, first.from)?;
        let mut msg = Message::parse_from_bytes(&first.message)
            .map_err(|e| Status::invalid_argument(format!("snapshot message: {e}")))?;
        let index = msg.get_snapshot().get_metadata().index;
        std::fs::create_dir_all(&self.ctx.snap_dir)
            .map_err(|e| Status::internal(format!("cannot create snapshot dir: {e}")))?;
        let incoming = self
            .ctx
            .snap_dir
            .join(format!("incoming-{:x}-{index}.snap", first.from));
        let staged = self.ctx.snap_dir.join(format!("store-{index}.redb"));
        let _ = std::fs::remove_file(&staged);
        let mut file = std::fs::File::create(&incoming)
            .map_err(|e| Status::internal(format!("cannot stage snapshot: {e}")))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if chunk.data.len() > PEER_MAX_MESSAGE_BYTES {
                return Err(Status::invalid_argument("snapshot chunk too large"));
            }
            file.write_all(&chunk.data)
                .map_err(|e| Status::internal(format!("cannot stage snapshot: {e}")))?;
        }
        file.sync_all()
            .map_err(|e| Status::internal(format!("cannot stage snapshot: {e}")))?;
        drop(file);
        let opts = self.ctx.store_options.clone();
        let staged2 = staged.clone();
        let incoming2 = incoming.clone();
        let built = tokio::task::spawn_blocking(move || {
            let mut input = std::io::BufReader::new(
                std::fs::File::open(&incoming2).map_err(|e| e.to_string())?,
            );
            let (store, info) = quorate_mvcc::Store::restore_snapshot(&mut input, &staged2, &opts)
                .map_err(|e| e.to_string())?;
            drop(store);
            Ok::<_, String>(info)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let _ = std::fs::remove_file(&incoming);
        let info = built.map_err(|e| {
            let _ = std::fs::remove_file(&staged);
            Status::data_loss(format!("snapshot refused: {e}"))
        })?;
        info!(
            index,
            applied = info.applied_index.index,
            bytes = info.bytes,
            "received snapshot"
        );
        msg.mut_snapshot().data = staged.to_string_lossy().into_owned().into_bytes().into();
        self.ctx
            .loop_tx
            .send(Command::Step(Box::new(msg)))
            .await
            .map_err(|_| Status::unavailable("member is stopping"))?;
        Ok(Response::new(PeerReply {}))
    }

    async fn lease_renew(
        &self,
        req: Request<LeaseRenewRequest>,
    ) -> Result<Response<LeaseRenewResponse>, Status> {
        let req = req.into_inner();
        if !self.ctx.lessor.is_primary() {
            return Err(Status::unavailable("etcdserver: not leader"));
        }
        let ttl = if req.renew {
            self.ctx.lessor.renew(req.id)
        } else {
            self.ctx.lessor.remaining(req.id)
        };
        Ok(Response::new(LeaseRenewResponse {
            ttl: ttl.unwrap_or(-1),
        }))
    }

    async fn members(
        &self,
        _: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(MembersResponse {
            cluster_id: self.ctx.cluster_id,
            membership: Some(self.ctx.membership()),
        }))
    }
}

/// Keep-alive (or TTL query) of a lease on the leader, at one of its peer
/// URLs. Returns the TTL (-1: unknown lease).
pub async fn lease_renew_on(urls: &[String], id: i64, renew: bool) -> Result<i64, Status> {
    for url in urls {
        if let Some(mut c) = connect(url).await {
            let r = c.lease_renew(LeaseRenewRequest { id, renew }).await?;
            return Ok(r.into_inner().ttl);
        }
    }
    Err(Status::unavailable("etcdserver: no leader"))
}

/// Asks the members listed in `--initial-cluster` for the membership, for a
/// member joining an existing cluster.
pub async fn fetch_membership(peer_urls: &[String]) -> Result<MembersResponse, String> {
    let mut last_err = String::from("no peers to ask");
    for _ in 0..20 {
        for url in peer_urls {
            match connect(url).await {
                Some(mut c) => match c.members(MembersRequest {}).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s) => last_err = format!("{url}: {s}"),
                },
                None => last_err = format!("{url}: cannot connect"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last_err)
}
