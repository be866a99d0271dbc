//! etcdserverpb.Watch: many watchers on one bidirectional stream.
//!
//! Every watcher is served from the store's history, never from an
//! in-memory event queue: when the store's revision moves, the stream's task
//! reads the new history records (in bounded batches) and hands each watcher
//! the events in its range at or after its next revision. So a slow client
//! only slows its own stream (the response queue is bounded and the task
//! waits), never the writers, and memory stays bounded; a watcher that fell
//! behind catches up from storage exactly like one that started from an old
//! revision. Events of one revision always go out in one response, in
//! revision order, each once (the watcher's next revision only moves past
//! what was sent).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use quorate_mvcc::{KeyRange, KeyValue, RangeOptions, ReadTxn};
use quorate_proto::etcdserverpb::watch_server::Watch;
use quorate_proto::etcdserverpb::{
    watch_create_request, watch_request, WatchCreateRequest, WatchRequest, WatchResponse,
};
use quorate_proto::mvccpb::{event::EventType, Event};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::core::Core;
use crate::error::ApiError;

/// Watchers on one stream.
pub const MAX_WATCHERS_PER_STREAM: usize = 10_000;
/// Responses queued for a client before the stream's task waits.
const RESPONSE_QUEUE_LEN: usize = 128;
/// History records read per catch-up step (the step ends on a revision boundary).
const CATCH_UP_RECORDS: usize = 1000;

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

pub struct WatchService {
    core: Arc<Core>,
    revision_rx: watch::Receiver<i64>,
    progress_interval: Duration,
}

impl WatchService {
    pub fn new(
        core: Arc<Core>,
        revision_rx: watch::Receiver<i64>,
        progress_interval: Duration,
    ) -> WatchService {
        WatchService {
            core,
            revision_rx,
            progress_interval,
        }
    }
}

struct Watcher {
    range: KeyRange,
    /// The next revision this watcher has not seen.
    next_rev: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    last_sent: Instant,
}

struct StreamTask {
    core: Arc<Core>,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    progress_interval: Duration,
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut requests = req.into_inner();
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE_LEN);
        let mut task = StreamTask {
            core: self.core.clone(),
            tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            progress_interval: self.progress_interval,
        };
        let mut revision_rx = self.revision_rx.clone();
        tokio::spawn(async move {
            let mut ticker =
                tokio::time::interval(task.progress_interval.min(Duration::from_secs(1)));
            // After the client half-closes, watchers keep delivering until
            // the response stream is dropped (as etcd does).
            let mut requests_open = true;
            loop {
                tokio::select! {
                    req = requests.next(), if requests_open => match req {
                        Some(Ok(r)) => {
                            if task.handle(r).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(_)) => return,
                        None => requests_open = false,
                    },
                    _ = task.tx.closed() => return,
                    changed = revision_rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = ticker.tick() => {
                        if task.progress().await.is_err() {
                            return;
                        }
                    }
                }
                if task.catch_up().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The client went away; the stream's task ends.
struct Gone;

impl StreamTask {
    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: self.core.header(revision),
            watch_id,
            ..Default::default()
        }
    }

    async fn send(&self, r: WatchResponse) -> Result<(), Gone> {
        self.tx.send(Ok(r)).await.map_err(|_| Gone)
    }

    fn revisions(&self) -> Result<(i64, i64), ApiError> {
        let r = self.core.store.get().read()?;
        Ok((r.revision(), r.compact_revision()))
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(watch_request::RequestUnion::CancelRequest(c)) => {
                let (rev, _) = self.revisions().unwrap_or((0, 0));
                if self.watchers.remove(&c.watch_id).is_some() {
                    let mut r = self.response(c.watch_id, rev);
                    r.canceled = true;
                    self.send(r).await?;
                }
                Ok(())
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                // Answered once every watcher has caught up to the current
                // revision (etcd answers with watch ID -1 in that case).
                self.catch_up().await?;
                let (rev, _) = self.revisions().unwrap_or((0, 0));
                self.send(self.response(-1, rev)).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, mut c: WatchCreateRequest) -> Result<(), Gone> {
        let (rev, compacted) = match self.revisions() {
            Ok(x) => x,
            Err(e) => {
                let _ = self.tx.send(Err(e.into())).await;
                return Err(Gone);
            }
        };
        // etcd watches the key "\0" for an empty key.
        if c.key.is_empty() {
            c.key = vec![0];
        }
        let range = KeyRange::new(&c.key, &c.range_end);
        let refuse = |reason: String| WatchResponse {
            header: self.core.header(rev),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        if range.is_empty() {
            return self
                .send(refuse("mvcc: watcher range is empty".into()))
                .await;
        }
        if c.watch_id != 0 && self.watchers.contains_key(&c.watch_id) {
            return self
                .send(refuse(
                    "mvcc: duplicate watch ID provided on the WatchStream".into(),
                ))
                .await;
        }
        if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            return self
                .send(refuse(format!(
                    "too many watchers on one stream (limit {MAX_WATCHERS_PER_STREAM})"
                )))
                .await;
        }
        // Only server-chosen IDs move the counter; IDs are never reused on a
        // stream.
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        };
        let mut created = self.response(id, rev);
        created.created = true;
        self.send(created).await?;
        let start = if c.start_revision > 0 {
            c.start_revision
        } else {
            rev + 1
        };
        if start < compacted {
            // As etcd: created, then canceled with the compact revision
            // (no reason text, header revision 0).
            let mut r = self.response(id, 0);
            r.canceled = true;
            r.compact_revision = compacted;
            return self.send(r).await;
        }
        let filters = &c.filters;
        self.watchers.insert(
            id,
            Watcher {
                range,
                next_rev: start,
                no_put: filters.contains(&(watch_create_request::FilterType::Noput as i32)),
                no_delete: filters.contains(&(watch_create_request::FilterType::Nodelete as i32)),
                prev_kv: c.prev_kv,
                progress_notify: c.progress_notify,
                fragment: c.fragment,
                last_sent: Instant::now(),
            },
        );
        Ok(())
    }

    /// Brings every watcher up to the store's current revision.
    async fn catch_up(&mut self) -> Result<(), Gone> {
        loop {
            let Some(from) = self.watchers.values().map(|w| w.next_rev).min() else {
                return Ok(());
            };
            let store = self.core.store.get();
            let read = tokio::task::spawn_blocking(move || read_batch(&store, from)).await;
            let batch = match read {
                Ok(Ok(b)) => b,
                Ok(Err(ApiError::Compacted)) => {
                    self.cancel_compacted(from).await?;
                    continue;
                }
                _ => return Ok(()),
            };
            if batch.records.is_empty() {
                return Ok(());
            }
            let ids: Vec<i64> = self.watchers.keys().copied().collect();
            for id in ids {
                self.deliver(id, &batch).await?;
            }
            if !batch.more {
                return Ok(());
            }
        }
    }

    async fn cancel_compacted(&mut self, from: i64) -> Result<(), Gone> {
        let (_, compacted) = self.revisions().unwrap_or((0, 0));
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.next_rev <= from && w.next_rev < compacted)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.watchers.remove(&id);
            let mut r = self.response(id, 0);
            r.canceled = true;
            r.compact_revision = compacted;
            self.send(r).await?;
        }
        Ok(())
    }

    async fn deliver(&mut self, id: i64, batch: &Batch) -> Result<(), Gone> {
        let Some(w) = self.watchers.get(&id) else {
            return Ok(());
        };
        // One response per revision, its header at that revision, as etcd
        // sends to a watcher that keeps up.
        let mut per_revision: Vec<(i64, Vec<Event>)> = Vec::new();
        for (main, kv, prev) in &batch.records {
            if *main < w.next_rev || !w.range.contains(&kv.key) {
                continue;
            }
            let is_delete = kv.version == 0;
            if (is_delete && w.no_delete) || (!is_delete && w.no_put) {
                continue;
            }
            let event = Event {
                r#type: if is_delete {
                    EventType::Delete as i32
                } else {
                    EventType::Put as i32
                },
                kv: Some(kv.clone()),
                prev_kv: if w.prev_kv { prev.clone() } else { None },
            };
            match per_revision.last_mut() {
                Some((rev, events)) if *rev == *main => events.push(event),
                _ => per_revision.push((*main, vec![event])),
            }
        }
        let fragment = w.fragment;
        let next = batch.last_rev + 1;
        if let Some(w) = self.watchers.get_mut(&id) {
            w.next_rev = w.next_rev.max(next);
            if !per_revision.is_empty() {
                w.last_sent = Instant::now();
            }
        }
        // etcd's watch server allows --max-request-bytes plus gRPC overhead.
        let max_bytes = self.core.config.max_request_bytes + crate::config::GRPC_OVERHEAD_BYTES;
        for (rev, events) in per_revision {
            for r in split(self.response(id, rev), events, fragment, max_bytes) {
                self.send(r).await?;
            }
        }
        Ok(())
    }

    /// Progress notifications for idle watchers that asked for them.
    async fn progress(&mut self) -> Result<(), Gone> {
        let (rev, _) = self.revisions().unwrap_or((0, 0));
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| {
                w.progress_notify
                    && w.next_rev > rev
                    && w.last_sent.elapsed() >= self.progress_interval
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(w) = self.watchers.get_mut(&id) {
                w.last_sent = Instant::now();
            }
            self.send(self.response(id, rev)).await?;
        }
        Ok(())
    }
}

/// History records read in one step, with previous values.
struct Batch {
    records: Vec<(i64, KeyValue, Option<KeyValue>)>,
    /// Highest revision covered (complete: the step ends on a boundary).
    last_rev: i64,
    more: bool,
}

fn read_batch(store: &quorate_mvcc::Store, from: i64) -> Result<Batch, ApiError> {
    let read = store.read()?;
    let revision = read.revision();
    let mut records: Vec<(i64, KeyValue, Option<KeyValue>)> = Vec::new();
    let mut more = false;
    let mut last_main = 0i64;
    read.for_each_change_since(from, |rev, kv| {
        if records.len() >= CATCH_UP_RECORDS && rev.main != last_main {
            more = true;
            return false;
        }
        last_main = rev.main;
        records.push((rev.main, kv, None));
        true
    })?;
    for (main, kv, prev) in records.iter_mut() {
        *prev = previous_value(&read, &kv.key, *main - 1);
    }
    let last_rev = if more {
        last_main
    } else {
        revision.max(last_main)
    };
    Ok(Batch {
        records,
        last_rev,
        more,
    })
}

fn previous_value(read: &ReadTxn, key: &[u8], at: i64) -> Option<KeyValue> {
    if at <= 0 {
        return None;
    }
    read.range(
        &KeyRange::new(key, b""),
        RangeOptions {
            revision: at,
            ..Default::default()
        },
    )
    .ok()
    .and_then(|r| r.kvs.into_iter().next())
}

/// Splits events into responses no larger than `max_bytes` when the watcher
/// asked for fragments; never splits one revision's events otherwise.
fn split(
    base: WatchResponse,
    events: Vec<Event>,
    fragment: bool,
    max_bytes: usize,
) -> Vec<WatchResponse> {
    use prost::Message;
    let mut whole = base.clone();
    whole.events = events;
    // Whole when it fits, or when splitting cannot help, as etcd decides:
    // on the size of the entire response.
    if !fragment || whole.events.len() < 2 || whole.encoded_len() < max_bytes {
        return vec![whole];
    }
    let mut out = Vec::new();
    let mut current = base.clone();
    current.fragment = true;
    for e in whole.events {
        current.events.push(e);
        if current.events.len() > 1 && current.encoded_len() >= max_bytes {
            // Close the fragment before the event that reached the limit.
            if let Some(last) = current.events.pop() {
                out.push(std::mem::replace(&mut current, {
                    let mut next = base.clone();
                    next.fragment = true;
                    next
                }));
                current.events.push(last);
            }
        }
    }
    current.fragment = false;
    out.push(current);
    out
}
