//! The one place that drives Raft: raft-rs's Ready loop, done one way.
//!
//! Each `process_ready` call: send the messages that may go before
//! persistence, install a received snapshot, apply committed entries,
//! persist new entries and hard state (one fsync), then send the messages
//! that depend on them, advance, and apply what the advance committed.
//! Network, clock and disk are outside: messages leave through
//! [`Transport`], time enters through [`Node::tick`], and the log is a
//! [`DurableLog`]. A whole cluster can therefore run in one thread, stepped
//! in a seeded order (see `sim`).

use raft::eraftpb::{ConfChangeV2, ConfState, Entry, Message, Snapshot};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole};

use crate::log::{DurableLog, LogError};

/// Timing and limits of one member's Raft. Ticks are driven by the caller.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    /// Ticks without a leader before an election (etcd: election-timeout /
    /// heartbeat-interval, 10 by default).
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Bytes of entries per append message.
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// Applied entries kept in the log before it is compacted.
    pub snapshot_count: u64,
    /// Entries kept after compaction, so a slightly slow follower catches up
    /// from the log rather than by snapshot.
    pub snapshot_catchup_entries: u64,
}

impl NodeConfig {
    pub fn new(id: u64) -> NodeConfig {
        NodeConfig {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            snapshot_count: 10_000,
            snapshot_catchup_entries: 5_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("state machine: {0}")]
    StateMachine(String),
}

/// What the state machine may ask of Raft while it applies entries.
pub struct ApplyContext<'a> {
    raw: &'a mut RawNode<DurableLog>,
}

impl ApplyContext<'_> {
    /// Applies a committed configuration change to Raft and persists the
    /// resulting configuration. Must be called for every conf change entry,
    /// including ones whose effect the state machine already holds.
    pub fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> Result<ConfState, NodeError> {
        let cs = self.raw.apply_conf_change(cc)?;
        self.raw.mut_store().set_conf_state(&cs)?;
        Ok(cs)
    }
}

/// The replicated state machine. Apply must be deterministic.
pub trait StateMachine {
    /// Applies committed entries, in order. Entries at or below
    /// `applied_index()` must not change data again (they can be replayed
    /// after a crash or a snapshot), but their conf changes must still be
    /// passed to `ctx.apply_conf_change`.
    fn apply(&mut self, entries: &[Entry], ctx: &mut ApplyContext<'_>) -> Result<(), NodeError>;

    /// Highest entry index applied (visible to readers).
    fn applied_index(&self) -> u64;

    /// Highest entry index whose effects are durable (fsynced) in the state
    /// machine. The log is never compacted past it, so a crash replays what
    /// was applied but not yet durable.
    fn durable_index(&self) -> u64 {
        self.applied_index()
    }

    /// Replaces the state machine with the snapshot's. Afterwards
    /// `applied_index() >= snapshot index`.
    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), NodeError>;

    /// Leader, term and role changes.
    fn on_soft_state(&mut self, _leader: u64, _term: u64, _role: StateRole) {}

    /// Answers to ReadIndex requests: the read with `request_ctx` may be
    /// served once `applied_index() >= index`.
    fn on_read_states(&mut self, _states: Vec<ReadState>) {}
}

/// Where outgoing Raft messages go. Sending never blocks the loop: an
/// implementation queues (bounded) and drops when full; Raft retries.
pub trait Transport {
    fn send(&mut self, msgs: Vec<Message>);
}

pub struct Node<S: StateMachine, T: Transport> {
    raw: RawNode<DurableLog>,
    sm: S,
    transport: T,
    cfg: NodeConfig,
}

impl<S: StateMachine, T: Transport> Node<S, T> {
    /// Starts Raft on `log`. A fresh member of a new cluster must have been
    /// bootstrapped with [`DurableLog::bootstrap`]; a joining member starts
    /// with an empty log and learns the configuration from the leader.
    pub fn new(
        cfg: NodeConfig,
        log: DurableLog,
        sm: S,
        transport: T,
        logger: &slog::Logger,
    ) -> Result<Self, NodeError> {
        let commit = log.hard_state().commit;
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            // Entries the state machine already holds are not re-applied by
            // Raft; anything above is replayed and skipped by index there.
            applied: sm.applied_index().min(commit).max(log.first_index() - 1),
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_cfg.validate()?;
        let raw = RawNode::new(&raft_cfg, log, logger)?;
        Ok(Node {
            raw,
            sm,
            transport,
            cfg,
        })
    }

    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    pub fn tick(&mut self) {
        self.raw.tick();
    }

    pub fn step(&mut self, m: Message) -> Result<(), NodeError> {
        // Messages from members Raft doesn't know (e.g. just removed) are
        // refused by raft-rs with an error; that is not fatal to the loop.
        Ok(self.raw.step(m)?)
    }

    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), NodeError> {
        Ok(self.raw.propose(vec![], data)?)
    }

    pub fn propose_conf_change(
        &mut self,
        context: Vec<u8>,
        cc: ConfChangeV2,
    ) -> Result<(), NodeError> {
        Ok(self.raw.propose_conf_change(context, cc)?)
    }

    pub fn read_index(&mut self, ctx: Vec<u8>) {
        self.raw.read_index(ctx);
    }

    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    pub fn campaign(&mut self) -> Result<(), NodeError> {
        Ok(self.raw.campaign()?)
    }

    pub fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    pub fn report_snapshot(&mut self, id: u64, ok: bool) {
        let status = if ok {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(id, status);
    }

    /// Raft's view: role, term, leader, and per-follower progress on a leader.
    pub fn status(&self) -> raft::Status<'_> {
        self.raw.status()
    }

    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// Whether a ReadIndex request issued now can be answered: raft-rs drops
    /// it on a leader that has not yet committed an entry of its own term.
    pub fn can_serve_read_index(&self) -> bool {
        if self.raw.raft.leader_id == 0 {
            return false;
        }
        self.raw.raft.state != StateRole::Leader || self.raw.raft.commit_to_current_term()
    }

    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    pub fn conf_state(&self) -> ConfState {
        self.raw.store().conf_state()
    }

    pub fn state_machine(&self) -> &S {
        &self.sm
    }

    pub fn state_machine_mut(&mut self) -> &mut S {
        &mut self.sm
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Handles one Ready, if there is one. Returns whether it did anything.
    pub fn process_ready(&mut self) -> Result<bool, NodeError> {
        if !self.raw.has_ready() {
            return Ok(false);
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            self.sm
                .on_soft_state(ss.leader_id, self.raw.raft.term, ss.raft_state);
        }
        if !rd.messages().is_empty() {
            self.transport.send(rd.take_messages());
        }
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.sm.install_snapshot(&snap)?;
            self.raw.mut_store().apply_snapshot(&snap)?;
        }
        if !rd.read_states().is_empty() {
            self.sm.on_read_states(rd.take_read_states());
        }
        let committed = rd.take_committed_entries();
        self.apply(&committed)?;
        let hs = rd.hs().cloned();
        self.raw.mut_store().persist(rd.entries(), hs.as_ref())?;
        if !rd.persisted_messages().is_empty() {
            self.transport.send(rd.take_persisted_messages());
        }
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            // Recoverable after a crash (Raft re-learns it), so no fsync.
            self.raw.mut_store().set_commit_in_memory(commit);
        }
        if !light.messages().is_empty() {
            self.transport.send(light.take_messages());
        }
        let committed = light.take_committed_entries();
        self.apply(&committed)?;
        self.raw.advance_apply();
        self.maybe_compact_log()?;
        Ok(true)
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<(), NodeError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut ctx = ApplyContext { raw: &mut self.raw };
        self.sm.apply(entries, &mut ctx)
    }

    /// Drops log entries the state machine covers, keeping a tail for
    /// followers that are only slightly behind.
    fn maybe_compact_log(&mut self) -> Result<(), NodeError> {
        let applied = self.sm.durable_index();
        let first = self.raw.store().first_index();
        if applied < first + self.cfg.snapshot_count {
            return Ok(());
        }
        let keep_from = applied.saturating_sub(self.cfg.snapshot_catchup_entries) + 1;
        if keep_from > first {
            self.raw.mut_store().compact(keep_from)?;
        }
        Ok(())
    }
}
