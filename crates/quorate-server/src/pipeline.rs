//! The write pipeline: sequences write requests, applies them in order and
//! acknowledges them only after they are durable.
//!
//! One thread owns the store's write transaction. It takes every proposal
//! waiting in the (bounded) queue, applies the whole batch in one redb
//! transaction and commits it with one fsync: concurrent writers share the
//! fsync (group commit). Each request is one log position: the applied index
//! is written in the same transaction as the data it covers.
//!
//! With replication this thread becomes the Raft Ready loop: the batch is
//! then what Raft committed, and the log fsync is the durability point.
//!
//! Between batches the thread also reclaims compacted history in bounded
//! steps, so compaction never stalls writes for long.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorate_mvcc::{AppliedIndex, Store};
use quorate_proto::quoratepb::internal_request::Request;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::apply::{self, WriteResponse};
use crate::error::ApiError;

/// Proposals waiting to be applied; beyond this, writers wait (backpressure).
pub const PROPOSAL_QUEUE_LEN: usize = 4096;
/// Most requests applied and fsynced together.
pub const BATCH_MAX_REQUESTS: usize = 1024;
/// Most history records reclaimed per compaction step between batches.
const COMPACTION_STEP_RECORDS: usize = 1000;
/// How often the (costly) in-use size of the database is recomputed.
const SIZE_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

struct Proposal {
    request: Request,
    respond: oneshot::Sender<Result<WriteResponse, ApiError>>,
}

enum Command {
    Propose(Proposal),
    /// Resolves once history up to the current compact revision is reclaimed.
    WaitCompacted(oneshot::Sender<()>),
    /// Finish the batch in progress and exit; later proposals fail.
    Stop,
}

/// Figures the pipeline publishes for status reporting.
#[derive(Default)]
pub struct PipelineStats {
    pub applied_index: AtomicU64,
    pub db_size_bytes: AtomicU64,
    pub db_size_in_use_bytes: AtomicU64,
}

#[derive(Clone)]
pub struct WritePipeline {
    tx: mpsc::Sender<Command>,
    pub stats: Arc<PipelineStats>,
}

impl WritePipeline {
    /// Starts the pipeline thread. It stops when every `WritePipeline`
    /// handle is dropped, after finishing the batch in progress.
    pub fn start(
        store: Arc<Store>,
    ) -> Result<(WritePipeline, std::thread::JoinHandle<()>), ApiError> {
        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE_LEN);
        let stats = Arc::new(PipelineStats::default());
        let applied = store.applied_index()?;
        stats.applied_index.store(applied.index, Ordering::Relaxed);
        stats
            .db_size_bytes
            .store(store.file_size(), Ordering::Relaxed);
        let in_use = store.size_in_use().unwrap_or_else(|_| store.file_size());
        stats.db_size_in_use_bytes.store(in_use, Ordering::Relaxed);
        let loop_stats = stats.clone();
        let handle = std::thread::Builder::new()
            .name("quorate-apply".into())
            .spawn(move || run(store, rx, loop_stats, applied))
            .map_err(|e| ApiError::Internal(format!("cannot start apply thread: {e}")))?;
        Ok((WritePipeline { tx, stats }, handle))
    }

    /// Sequences `request` and waits until it is applied and durable.
    pub async fn propose(&self, request: Request) -> Result<WriteResponse, ApiError> {
        let (respond, rx) = oneshot::channel();
        self.tx
            .send(Command::Propose(Proposal { request, respond }))
            .await
            .map_err(|_| ApiError::Stopped)?;
        rx.await.map_err(|_| ApiError::Stopped)?
    }

    /// Asks the pipeline thread to exit after the batch in progress. Client
    /// connections may outlive shutdown, so their handles can't be relied on
    /// to close the queue.
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }

    /// Waits until compacted history has been physically removed.
    pub async fn wait_compacted(&self) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::WaitCompacted(tx))
            .await
            .map_err(|_| ApiError::Stopped)?;
        rx.await.map_err(|_| ApiError::Stopped)
    }
}

fn run(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Command>,
    stats: Arc<PipelineStats>,
    mut applied: AppliedIndex,
) {
    let mut compaction_pending = true;
    let mut compaction_waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut size_refreshed = Instant::now();
    let mut batch: Vec<Proposal> = Vec::with_capacity(BATCH_MAX_REQUESTS);
    loop {
        // Block only when there is no background work to do.
        let first = if compaction_pending {
            match rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        } else {
            match rx.blocking_recv() {
                Some(c) => Some(c),
                None => break,
            }
        };
        let mut next = first;
        let mut stopping = false;
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Propose(p) => batch.push(p),
                Command::WaitCompacted(w) => {
                    compaction_waiters.push(w);
                    compaction_pending = true;
                }
                Command::Stop => {
                    stopping = true;
                    break;
                }
            }
            if batch.len() < BATCH_MAX_REQUESTS {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let had_compaction = batch
                .iter()
                .any(|p| matches!(p.request, Request::Compaction(_)));
            apply_batch(&store, &mut batch, &mut applied);
            stats.applied_index.store(applied.index, Ordering::Relaxed);
            stats
                .db_size_bytes
                .store(store.file_size(), Ordering::Relaxed);
            compaction_pending |= had_compaction;
        } else if compaction_pending {
            match store.compact_step(COMPACTION_STEP_RECORDS) {
                Ok(true) => {}
                Ok(false) => {
                    compaction_pending = false;
                    for w in compaction_waiters.drain(..) {
                        let _ = w.send(());
                    }
                }
                Err(e) => {
                    error!(error = %e, "compaction step failed; will retry after the next write");
                    compaction_pending = false;
                }
            }
        }
        if stopping {
            break;
        }
        if size_refreshed.elapsed() >= SIZE_REFRESH_INTERVAL {
            size_refreshed = Instant::now();
            if let Ok(n) = store.size_in_use() {
                stats.db_size_in_use_bytes.store(n, Ordering::Relaxed);
            }
        }
    }
}

/// Applies and commits one batch, then answers every proposal in it.
fn apply_batch(store: &Store, batch: &mut Vec<Proposal>, applied: &mut AppliedIndex) {
    let mut results: Vec<Result<WriteResponse, ApiError>> = Vec::with_capacity(batch.len());
    let outcome = (|| -> Result<AppliedIndex, ApiError> {
        let mut w = store.write()?;
        let mut position = *applied;
        for p in batch.iter() {
            position.index += 1;
            position.term = position.term.max(1);
            let r = apply::apply_write(&mut w, &p.request);
            // A storage failure may leave the request half-applied: roll
            // back the whole batch rather than commit a partial request.
            if let Err(ApiError::Internal(msg)) = &r {
                return Err(ApiError::Internal(msg.clone()));
            }
            results.push(r);
        }
        w.set_applied(position)?;
        w.commit(true)?;
        Ok(position)
    })();
    match outcome {
        Ok(position) => {
            *applied = position;
            for (p, r) in batch.drain(..).zip(results) {
                let _ = p.respond.send(r);
            }
        }
        Err(e) => {
            // Nothing of the batch is on disk: every request fails.
            warn!(error = %e, requests = batch.len(), "write batch failed and was rolled back");
            for p in batch.drain(..) {
                let _ = p.respond.send(Err(e.clone()));
            }
        }
    }
}
