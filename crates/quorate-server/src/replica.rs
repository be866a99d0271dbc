//! The replicated state machine: applies committed log entries to the MVCC
//! store and answers the clients waiting for them.
//!
//! Invariant: an entry's effects and its index are committed in one redb
//! transaction; entries at or below the stored applied index are skipped
//! (their configuration changes are still handed to Raft).
//! Invariant: a waiting client is answered only after the batch holding its
//! entry is committed to the store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prost::Message as _;
use protobuf::Message as _;
use quorate_mvcc::{AppliedIndex, Store, StoreOptions};
use quorate_proto::etcdserverpb::{
    alarm_request, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, Member,
};
use quorate_proto::quoratepb::{
    internal_request::Request, ConfChangeContext, InternalRequest, MembershipState,
};
use quorate_raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Snapshot};
use quorate_raft::{ApplyContext, ConfChangeI, NodeError, ReadState, StateMachine, StateRole};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::apply::{self, WriteResponse};
use crate::error::ApiError;
use crate::lessor::{LeaseKeys, Lessor};
use crate::membership::{self, META_MEMBERSHIP};

/// What a waiting client gets back when its entry is applied.
pub enum Applied {
    Write(Result<WriteResponse, ApiError>),
    Membership(Result<MembershipState, ApiError>),
}

pub type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Applied>>>>;

/// The store, swappable when a snapshot replaces it.
#[derive(Clone)]
pub struct StoreHandle(Arc<RwLock<Arc<Store>>>);

impl StoreHandle {
    pub fn new(store: Store) -> StoreHandle {
        StoreHandle(Arc::new(RwLock::new(Arc::new(store))))
    }

    pub fn get(&self) -> Arc<Store> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, store: Store) {
        match self.0.write() {
            Ok(mut g) => *g = Arc::new(store),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(store),
        }
    }
}

/// Raft's view, published for headers, status and routing.
#[derive(Default)]
pub struct RaftView {
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub commit: AtomicU64,
    pub is_leader: std::sync::atomic::AtomicBool,
}

pub struct Replica {
    pub store: StoreHandle,
    pub store_path: PathBuf,
    pub store_options: StoreOptions,
    pub waiters: Waiters,
    pub membership: Arc<RwLock<MembershipState>>,
    pub view: Arc<RaftView>,
    /// Applied index, for readers waiting on a ReadIndex.
    pub applied_tx: watch::Sender<u64>,
    /// Store revision after each applied batch, for watchers.
    pub revision_tx: watch::Sender<i64>,
    /// ReadIndex answers, by request context.
    pub read_states: Vec<ReadState>,
    pub member_id: u64,
    /// Set when this member applies its own removal.
    pub removed: bool,
    /// Set when a compaction was applied; the loop reclaims space.
    pub compaction_pending: bool,
    pub lessor: Arc<Lessor>,
    pub lease_keys: Arc<LeaseKeys>,
    /// Added to every lease's TTL when this member becomes leader.
    pub lease_extend: std::time::Duration,
    /// Raised alarms (replicated), for the API's quota checks and Status.
    pub alarms: Arc<RwLock<Vec<AlarmMember>>>,
    applied: u64,
    /// Applied index of the last fsynced store commit.
    durable: u64,
    /// When the store was last fsynced.
    durable_at: std::time::Instant,
}

/// Store commits are fsynced when this many entries or this much time
/// accumulated; in between they rely on the Raft log (already fsynced on a
/// quorum), which is never compacted past the durable index.
const DURABLE_EVERY_ENTRIES: u64 = 1000;
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

impl Replica {
    pub fn new(
        store: StoreHandle,
        store_path: PathBuf,
        store_options: StoreOptions,
        membership: MembershipState,
        member_id: u64,
    ) -> Result<Replica, ApiError> {
        let applied = store.get().applied_index()?.index;
        let (applied_tx, _) = watch::channel(applied);
        let (revision_tx, _) = watch::channel(store.get().read()?.revision());
        let alarms = load_alarms(&store.get())?;
        let lease_keys = Arc::new(LeaseKeys::default());
        lease_keys.rebuild(store.get().read()?.leased_keys()?);
        Ok(Replica {
            store,
            store_path,
            store_options,
            waiters: Arc::new(Mutex::new(HashMap::new())),
            membership: Arc::new(RwLock::new(membership)),
            view: Arc::new(RaftView::default()),
            applied_tx,
            revision_tx,
            read_states: Vec::new(),
            member_id,
            removed: false,
            compaction_pending: true,
            lessor: Arc::new(Lessor::default()),
            lease_keys,
            lease_extend: std::time::Duration::ZERO,
            durable: applied,
            durable_at: std::time::Instant::now(),
            alarms: Arc::new(RwLock::new(alarms)),
            applied,
        })
    }

    fn respond(&self, id: u64, result: Applied) {
        let waiter = match self.waiters.lock() {
            Ok(mut w) => w.remove(&id),
            Err(poisoned) => poisoned.into_inner().remove(&id),
        };
        if let Some(w) = waiter {
            let _ = w.send(result);
        }
    }

    fn membership_snapshot(&self) -> MembershipState {
        match self.membership.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_membership(&self, state: MembershipState) {
        match self.membership.write() {
            Ok(mut m) => *m = state,
            Err(p) => *p.into_inner() = state,
        }
    }
}

const META_ALARMS: &str = "alarms";

fn encode_alarms(alarms: &[AlarmMember]) -> Vec<u8> {
    AlarmResponse {
        header: None,
        alarms: alarms.to_vec(),
    }
    .encode_to_vec()
}

fn load_alarms(store: &Store) -> Result<Vec<AlarmMember>, ApiError> {
    match store.get_external_meta(META_ALARMS)? {
        None => Ok(Vec::new()),
        Some(b) => AlarmResponse::decode(b.as_slice())
            .map(|r| r.alarms)
            .map_err(|e| ApiError::Internal(format!("stored alarms do not decode: {e}"))),
    }
}

/// ACTIVATE adds the member's alarm (once); DEACTIVATE removes it. The
/// response lists the alarms that changed, as etcd's does.
fn apply_alarm(alarms: &mut Vec<AlarmMember>, req: &AlarmRequest) -> WriteResponse {
    let target = AlarmMember {
        member_id: req.member_id,
        alarm: req.alarm,
    };
    let changed = match alarm_request::AlarmAction::try_from(req.action) {
        Ok(alarm_request::AlarmAction::Activate) => {
            if req.alarm != AlarmType::None as i32 && !alarms.contains(&target) {
                alarms.push(target);
            }
            vec![target]
        }
        Ok(alarm_request::AlarmAction::Deactivate) => {
            let before = alarms.len();
            alarms.retain(|a| a != &target);
            if alarms.len() < before {
                vec![target]
            } else {
                vec![]
            }
        }
        _ => vec![],
    };
    WriteResponse::Alarm(AlarmResponse {
        header: None,
        alarms: changed,
    })
}

/// Applies one configuration change to the membership list. Returns an error
/// (with no change) when it cannot apply; Raft has applied it regardless.
fn change_membership(
    state: &mut MembershipState,
    cc: &ConfChangeV2,
    ctx: &ConfChangeContext,
) -> Result<(), ApiError> {
    for change in cc.get_changes() {
        let id = change.node_id;
        match change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let learner = change.get_change_type() == ConfChangeType::AddLearnerNode;
                if let Some(m) = state.members.iter_mut().find(|m| m.id == id) {
                    // Promotion of a learner, or a re-add of the same member.
                    m.is_learner = learner;
                } else {
                    let mut m = ctx.member.clone().unwrap_or(Member {
                        id,
                        ..Default::default()
                    });
                    m.id = id;
                    m.is_learner = learner;
                    state.members.push(m);
                    state.members.sort_by_key(|m| m.id);
                }
            }
            ConfChangeType::RemoveNode => {
                state.members.retain(|m| m.id != id);
                if !state.removed.contains(&id) {
                    state.removed.push(id);
                }
            }
        }
    }
    Ok(())
}

impl StateMachine for Replica {
    fn apply(&mut self, entries: &[Entry], ctx: &mut ApplyContext<'_>) -> Result<(), NodeError> {
        let store = self.store.get();
        let fail = |e: ApiError| NodeError::StateMachine(e.to_string());
        let mut w = store.write().map_err(|e| fail(e.into()))?;
        let mut answers: Vec<(u64, Applied)> = Vec::new();
        let mut membership = self.membership_snapshot();
        let mut membership_changed = false;
        let mut granted: Vec<(i64, i64)> = Vec::new();
        let mut alarms = match self.alarms.read() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut alarms_changed = false;
        let mut revoked: Vec<i64> = Vec::new();
        let mut last = AppliedIndex {
            index: self.applied,
            term: 0,
        };
        for e in entries {
            let replay = e.index <= self.applied;
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if replay || e.data.is_empty() {
                        // Leader's empty entry, or already applied.
                    } else {
                        match InternalRequest::decode(e.data.as_ref()) {
                            Ok(req) => match req.request {
                                Some(Request::MemberAttributes(attrs)) => {
                                    let found =
                                        membership.members.iter_mut().find(|m| m.id == attrs.id);
                                    let result = match found {
                                        Some(m) => {
                                            if attrs.update_peer_urls {
                                                m.peer_ur_ls = attrs.peer_urls;
                                            } else {
                                                m.name = attrs.name;
                                                m.client_ur_ls = attrs.client_urls;
                                            }
                                            membership_changed = true;
                                            Ok(membership.clone())
                                        }
                                        None => Err(ApiError::MemberNotFound),
                                    };
                                    answers.push((req.id, Applied::Membership(result)));
                                }
                                Some(Request::Alarm(a)) => {
                                    let result = apply_alarm(&mut alarms, &a);
                                    alarms_changed = true;
                                    answers.push((req.id, Applied::Write(Ok(result))));
                                }
                                Some(Request::LeaseRevoke(rv)) => {
                                    let keys = self.lease_keys.keys_of(rv.id);
                                    let result = apply::apply_revoke(&mut w, rv.id, &keys);
                                    if let Err(ApiError::Internal(msg)) = &result {
                                        return Err(NodeError::StateMachine(msg.clone()));
                                    }
                                    self.lease_keys.apply_changes(w.take_lease_changes());
                                    if result.is_ok() {
                                        revoked.push(rv.id);
                                    }
                                    answers.push((req.id, Applied::Write(result)));
                                }
                                Some(r) => {
                                    let result = apply::apply_write(&mut w, &r);
                                    self.lease_keys.apply_changes(w.take_lease_changes());
                                    if let (Request::LeaseGrant(g), Ok(_)) = (&r, &result) {
                                        granted.push((g.id, g.ttl));
                                    }
                                    if let Err(ApiError::Internal(msg)) = &result {
                                        // A storage failure: nothing of this batch
                                        // is committed; the entries are applied
                                        // again after restart.
                                        return Err(NodeError::StateMachine(msg.clone()));
                                    }
                                    if matches!(r, Request::Compaction(_)) && result.is_ok() {
                                        self.compaction_pending = true;
                                    }
                                    answers.push((req.id, Applied::Write(result)));
                                }
                                None => warn!(index = e.index, "empty request in log entry"),
                            },
                            Err(err) => {
                                warn!(index = e.index, error = %err, "log entry does not decode; skipped")
                            }
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let cc = if e.get_entry_type() == EntryType::EntryConfChange {
                        ConfChange::parse_from_bytes(&e.data)
                            .map(|c| c.into_v2())
                            .map_err(|err| NodeError::StateMachine(err.to_string()))?
                    } else {
                        ConfChangeV2::parse_from_bytes(&e.data)
                            .map_err(|err| NodeError::StateMachine(err.to_string()))?
                    };
                    let cctx = ConfChangeContext::decode(cc.get_context()).unwrap_or_default();
                    ctx.apply_conf_change(&cc)?;
                    if !replay {
                        let r = change_membership(&mut membership, &cc, &cctx);
                        membership_changed = true;
                        if cc.get_changes().iter().any(|c| {
                            c.get_change_type() == ConfChangeType::RemoveNode
                                && c.node_id == self.member_id
                        }) {
                            self.removed = true;
                        }
                        answers.push((
                            cctx.request_id,
                            Applied::Membership(r.map(|_| membership.clone())),
                        ));
                    }
                }
            }
            if !replay {
                last = AppliedIndex {
                    index: e.index,
                    term: e.term,
                };
            }
        }
        if last.index > self.applied {
            if membership_changed {
                w.set_external_meta(META_MEMBERSHIP, &membership::encode(&membership))
                    .map_err(|e| fail(e.into()))?;
            }
            if alarms_changed {
                w.set_external_meta(META_ALARMS, &encode_alarms(&alarms))
                    .map_err(|e| fail(e.into()))?;
            }
            w.set_applied(last).map_err(|e| fail(e.into()))?;
            let revision = w.revision();
            let durable = membership_changed
                || last.index - self.durable >= DURABLE_EVERY_ENTRIES
                || self.durable_at.elapsed() >= DURABLE_EVERY;
            w.commit(durable).map_err(|e| fail(e.into()))?;
            if durable {
                self.durable = last.index;
                self.durable_at = std::time::Instant::now();
            }
            self.revision_tx.send_if_modified(|r| {
                let changed = *r != revision;
                *r = revision;
                changed
            });
            self.applied = last.index;
            if membership_changed {
                self.set_membership(membership);
            }
            // Applied entries are committed: publish the commit first, so a
            // reader never sees applied > commit.
            self.view.commit.fetch_max(self.applied, Ordering::Relaxed);
            let _ = self.applied_tx.send(self.applied);
        }
        if alarms_changed {
            match self.alarms.write() {
                Ok(mut a) => *a = alarms,
                Err(p) => *p.into_inner() = alarms,
            }
        }
        for (id, ttl) in granted {
            self.lessor.granted(id, ttl);
        }
        for id in revoked {
            self.lessor.revoked(id);
        }
        for (id, a) in answers {
            self.respond(id, a);
        }
        Ok(())
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn durable_index(&self) -> u64 {
        self.durable
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), NodeError> {
        // The data was received and verified by the peer transport, which
        // built a complete store file; the message carries its path.
        let staged = PathBuf::from(String::from_utf8_lossy(&snapshot.data).into_owned());
        if staged.as_os_str().is_empty() || !staged.exists() {
            return Err(NodeError::StateMachine(format!(
                "snapshot at index {} has no staged store file",
                snapshot.get_metadata().index
            )));
        }
        let applied = self.swap_store(&staged).map_err(NodeError::StateMachine)?;
        info!(
            index = snapshot.get_metadata().index,
            applied, "installed a snapshot from the leader"
        );
        Ok(())
    }

    fn on_soft_state(&mut self, leader: u64, term: u64, role: StateRole) {
        if role == StateRole::Leader && !self.lessor.is_primary() {
            // A new leader restarts every lease's clock.
            match self.store.get().read().and_then(|r| r.leases()) {
                Ok(leases) => self.lessor.promote(&leases, self.lease_extend),
                Err(e) => warn!(error = %e, "cannot load leases on becoming leader"),
            }
        } else if role != StateRole::Leader {
            self.lessor.demote();
        }
        self.view.leader.store(leader, Ordering::Relaxed);
        self.view.term.store(term, Ordering::Relaxed);
        self.view
            .is_leader
            .store(role == StateRole::Leader, Ordering::Relaxed);
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        self.read_states.extend(states);
    }
}

impl Replica {
    /// Replaces the store with the complete store file at `staged` (moved
    /// into place). The file keeps this member's own identity.
    fn swap_store(&mut self, staged: &std::path::Path) -> Result<u64, String> {
        std::fs::rename(staged, &self.store_path)
            .map_err(|e| format!("cannot install store file: {e}"))?;
        let store = Store::open(&self.store_path, &self.store_options)
            .map_err(|e| format!("cannot open installed store: {e}"))?;
        // A snapshot carries the sender's identity; this member keeps its own.
        let mut w = store.write().map_err(|e| e.to_string())?;
        w.set_external_meta(membership::META_MEMBER_ID, &self.member_id.to_be_bytes())
            .map_err(|e| e.to_string())?;
        w.commit(true).map_err(|e| e.to_string())?;
        let applied = store.applied_index().map_err(|e| e.to_string())?.index;
        let membership = store
            .get_external_meta(META_MEMBERSHIP)
            .map_err(|e| e.to_string())?
            .map(|b| membership::decode(&b))
            .transpose()?
            .unwrap_or_default();
        let read = store.read().map_err(|e| e.to_string())?;
        let revision = read.revision();
        self.lease_keys
            .rebuild(read.leased_keys().map_err(|e| e.to_string())?);
        drop(read);
        let alarms = load_alarms(&store).map_err(|e| e.to_string())?;
        match self.alarms.write() {
            Ok(mut a) => *a = alarms,
            Err(p) => *p.into_inner() = alarms,
        }
        self.store.replace(store);
        self.applied = applied;
        self.durable = applied;
        self.set_membership(membership);
        self.compaction_pending = true;
        let _ = self.applied_tx.send(applied);
        let _ = self.revision_tx.send(revision);
        Ok(applied)
    }

    /// Rewrites the store into a new, compact file (etcd's defragment):
    /// dump it as a snapshot, rebuild a fresh file from it, swap it in.
    /// Runs on the Raft thread, so no write is applied meanwhile.
    pub fn defragment(&mut self) -> Result<(), String> {
        let dir = self
            .store_path
            .parent()
            .map(|p| p.join("snap"))
            .ok_or("store path has no parent")?;
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let dump = dir.join("defrag.snap");
        let staged = dir.join("defrag.redb");
        let _ = std::fs::remove_file(&dump);
        let _ = std::fs::remove_file(&staged);
        {
            use std::io::Write;
            let file = std::fs::File::create(&dump).map_err(|e| e.to_string())?;
            let mut w = std::io::BufWriter::new(file);
            let read = self.store.get().read().map_err(|e| e.to_string())?;
            read.write_snapshot(&mut w).map_err(|e| e.to_string())?;
            w.flush().map_err(|e| e.to_string())?;
        }
        {
            let file = std::fs::File::open(&dump).map_err(|e| e.to_string())?;
            let mut r = std::io::BufReader::new(file);
            let (store, _) = Store::restore_snapshot(&mut r, &staged, &self.store_options)
                .map_err(|e| e.to_string())?;
            drop(store);
        }
        let _ = std::fs::remove_file(&dump);
        let before = self.store.get().file_size();
        self.swap_store(&staged)?;
        info!(
            before,
            after = self.store.get().file_size(),
            "defragmented the store"
        );
        Ok(())
    }
}
