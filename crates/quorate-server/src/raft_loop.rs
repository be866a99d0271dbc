//! The member's Raft thread: the only code that touches the Raft node.
//!
//! Everything reaches it as a [`Command`] on one bounded queue: client
//! proposals, configuration changes, ReadIndex requests, peer messages,
//! ticks. Each turn it drains what is queued (so concurrent writes share one
//! Ready and one fsync), then handles Readies until there are none.
//! Requests wait, bounded, while there is no leader, then fail with etcd's
//! errors.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use prost::Message as _;
use quorate_proto::quoratepb::{internal_request::Request, InternalRequest, MemberAttributes};
use quorate_raft::eraftpb::{ConfChangeV2, Message};
use quorate_raft::{Node, NodeError, StateRole};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::error::ApiError;
use crate::peer::PeerTransport;
use crate::replica::{Applied, Replica};

/// Commands queued for the Raft thread; beyond this, senders wait.
pub const COMMAND_QUEUE_LEN: usize = 8192;
/// Most commands handled before the next Ready.
const MAX_COMMANDS_PER_TURN: usize = 4096;
/// History records reclaimed per compaction step between turns.
const COMPACTION_STEP_RECORDS: usize = 1000;

/// The leader's last index and every member's matched index.
pub type Progress = (u64, Vec<(u64, u64)>);

pub enum Command {
    Propose {
        request: Request,
        respond: oneshot::Sender<Applied>,
    },
    ConfChange {
        cc: ConfChangeV2,
        request_id: u64,
        respond: oneshot::Sender<Applied>,
    },
    ReadIndex {
        respond: oneshot::Sender<Result<u64, ApiError>>,
    },
    Step(Box<Message>),
    Unreachable(u64),
    SnapshotStatus(u64, bool),
    TransferLeader {
        to: u64,
        respond: oneshot::Sender<Result<(), ApiError>>,
    },
    WaitCompacted(oneshot::Sender<()>),
    /// Rewrite the store compactly; writes wait meanwhile.
    Defragment(oneshot::Sender<Result<(), ApiError>>),
    /// On the leader: every member's matched index, and the last index.
    AllProgress {
        respond: oneshot::Sender<Option<Progress>>,
    },
    /// On the leader: a member's matched index and the leader's last index.
    Progress {
        id: u64,
        respond: oneshot::Sender<Option<(u64, u64)>>,
    },
    Tick,
    Stop,
}

/// Timing of the loop, from the etcd-named flags.
#[derive(Clone, Copy, Debug)]
pub struct LoopTiming {
    pub tick: Duration,
    /// Promote a learner once it has caught up (`--auto-promote-learners`).
    pub auto_promote_learners: bool,
    /// How long a request may wait for a leader and for its entry to apply
    /// (etcd: 5 s + 2 × election timeout).
    pub request_timeout: Duration,
}

pub struct RaftLoop {
    /// When each learner's promotion was last proposed.
    promoting: HashMap<u64, Instant>,
    node: Node<Replica, PeerTransport>,
    rx: mpsc::Receiver<Command>,
    timing: LoopTiming,
    member_id: u64,
    name: String,
    client_urls: Vec<String>,
    next_request_id: u64,
    /// Proposals that found no leader, retried on each tick until deadline.
    stalled: VecDeque<(Instant, Command)>,
    /// Deadlines of proposals handed to Raft.
    deadlines: VecDeque<(Instant, u64, bool)>,
    /// Reads waiting for a leader to ask for a ReadIndex, with deadlines.
    pending_reads: Vec<(Instant, oneshot::Sender<Result<u64, ApiError>>)>,
    /// ReadIndex requests sent and not yet answered: deadline, waiters, and
    /// when the request was last (re)sent. Raft may drop one silently (e.g.
    /// around a leader change), so unanswered ones are sent again.
    reads_in_flight: HashMap<u64, ReadInFlight>,
    next_read_ctx: u64,
    compaction_waiters: Vec<oneshot::Sender<()>>,
    last_leader: u64,
    /// When this member last proposed its attributes.
    published_at: Option<Instant>,
}

struct ReadInFlight {
    deadline: Instant,
    waiters: Vec<oneshot::Sender<Result<u64, ApiError>>>,
    sent: Instant,
}

/// Ticks after which an unanswered ReadIndex request is sent again.
const READ_INDEX_RETRY_TICKS: u32 = 3;

/// A request ID unique across members and restarts: the low bits of the
/// member ID, then a counter seeded from the clock.
fn first_request_id(member_id: u64) -> u64 {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ((member_id & 0xffff) << 48) | ((millis & 0xff_ffff_ffff) << 8)
}

impl RaftLoop {
    pub fn new(
        node: Node<Replica, PeerTransport>,
        rx: mpsc::Receiver<Command>,
        timing: LoopTiming,
        name: String,
        client_urls: Vec<String>,
    ) -> RaftLoop {
        let member_id = node.id();
        RaftLoop {
            promoting: HashMap::new(),
            node,
            rx,
            timing,
            member_id,
            name,
            client_urls,
            next_request_id: first_request_id(member_id),
            stalled: VecDeque::new(),
            deadlines: VecDeque::new(),
            pending_reads: Vec::new(),
            reads_in_flight: HashMap::new(),
            next_read_ctx: 1,
            compaction_waiters: Vec::new(),
            last_leader: 0,
            published_at: None,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_request_id = self.next_request_id.wrapping_add(1);
        self.next_request_id
    }

    /// Runs until stopped. Returns an error when the member must exit
    /// (storage failure, or it was removed from the cluster).
    pub fn run(mut self) -> Result<(), String> {
        // The only voter need not wait an election timeout to lead.
        let cs = self.node.conf_state();
        if cs.voters == [self.member_id] && cs.learners.is_empty() {
            if let Err(e) = self.node.campaign() {
                warn!(error = %e, "cannot campaign at start-up");
            }
            self.drain_ready()?;
            self.after_ready();
            self.drain_ready()?;
        }
        loop {
            let compaction_pending = self.node.state_machine().compaction_pending;
            let first = if compaction_pending {
                match self.rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
                }
            } else {
                match self.rx.blocking_recv() {
                    Some(c) => Some(c),
                    None => return Ok(()),
                }
            };
            let Some(first) = first else {
                self.compaction_step();
                continue;
            };
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(cmd) = next.take() {
                if matches!(cmd, Command::Stop) {
                    self.fail_all(ApiError::Stopped);
                    return Ok(());
                }
                self.handle(cmd);
                handled += 1;
                if handled < MAX_COMMANDS_PER_TURN {
                    next = self.rx.try_recv().ok();
                }
            }
            // Handling a Ready can make more work (a leader's first commit
            // lets reads go; a new leader prompts publishing attributes).
            loop {
                self.start_reads();
                self.drain_ready()?;
                self.answer_reads();
                self.after_ready();
                let reads_ready =
                    !self.pending_reads.is_empty() && self.node.can_serve_read_index();
                if !self.node.has_ready() && !reads_ready {
                    break;
                }
            }
            if self.node.state_machine().removed {
                self.fail_all(ApiError::Stopped);
                return Err("the member has been permanently removed from the cluster".into());
            }
        }
    }

    /// Handles Readies until Raft has none.
    fn drain_ready(&mut self) -> Result<(), String> {
        loop {
            match self.node.process_ready() {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => {
                    error!(error = %e, "raft: cannot handle ready; stopping the member");
                    self.fail_all(ApiError::Internal(e.to_string()));
                    return Err(format!("raft loop failed: {e}"));
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Propose { .. } | Command::ConfChange { .. } => self.propose(cmd),
            Command::ReadIndex { respond } => self
                .pending_reads
                .push((Instant::now() + self.timing.request_timeout, respond)),
            Command::Step(m) => {
                if let Err(e) = self.node.step(*m) {
                    // Stale or foreign messages are normal around elections.
                    tracing::debug!(error = %e, "raft rejected a peer message");
                }
            }
            Command::Unreachable(id) => self.node.report_unreachable(id),
            Command::SnapshotStatus(id, ok) => self.node.report_snapshot(id, ok),
            Command::TransferLeader { to, respond } => {
                if self.node.role() != StateRole::Leader {
                    let _ = respond.send(Err(ApiError::NotLeader));
                } else {
                    self.node.transfer_leader(to);
                    let _ = respond.send(Ok(()));
                }
            }
            Command::WaitCompacted(w) => {
                self.compaction_waiters.push(w);
                self.node.state_machine_mut().compaction_pending = true;
            }
            Command::AllProgress { respond } => {
                let last = self.node.last_index();
                let all = self.node.status().progress.map(|p| {
                    p.iter()
                        .map(|(id, pr)| (*id, pr.matched))
                        .collect::<Vec<_>>()
                });
                let _ = respond.send(all.map(|a| (last, a)));
            }
            Command::Progress { id, respond } => {
                let last = self.node.last_index();
                let matched = self
                    .node
                    .status()
                    .progress
                    .and_then(|p| p.get(id).map(|pr| pr.matched));
                let _ = respond.send(matched.map(|m| (m, last)));
            }
            Command::Defragment(respond) => {
                let r = self
                    .node
                    .state_machine_mut()
                    .defragment()
                    .map_err(ApiError::Internal);
                let _ = respond.send(r);
            }
            Command::Tick => self.tick(),
            Command::Stop => {}
        }
    }

    fn propose(&mut self, cmd: Command) {
        let deadline = Instant::now() + self.timing.request_timeout;
        self.propose_with_deadline(cmd, deadline);
    }

    fn propose_with_deadline(&mut self, cmd: Command, deadline: Instant) {
        if self.node.leader_id() == 0 {
            self.stalled.push_back((deadline, cmd));
            return;
        }
        match cmd {
            Command::Propose { request, respond } => {
                let id = self.next_id();
                let data = InternalRequest {
                    id,
                    request: Some(request.clone()),
                }
                .encode_to_vec();
                self.register(id, respond);
                match self.node.propose(data) {
                    Ok(()) => self.deadlines.push_back((deadline, id, false)),
                    Err(NodeError::Raft(raft::Error::ProposalDropped)) => {
                        if let Some(respond) = self.unregister(id) {
                            self.stalled
                                .push_back((deadline, Command::Propose { request, respond }));
                        }
                    }
                    Err(e) => {
                        if let Some(r) = self.unregister(id) {
                            let _ = r.send(Applied::Write(Err(ApiError::Internal(e.to_string()))));
                        }
                    }
                }
            }
            Command::ConfChange {
                cc,
                request_id,
                respond,
            } => {
                self.register(request_id, respond);
                match self.node.propose_conf_change(vec![], cc.clone()) {
                    Ok(()) => self.deadlines.push_back((deadline, request_id, true)),
                    Err(NodeError::Raft(raft::Error::ProposalDropped)) => {
                        if let Some(respond) = self.unregister(request_id) {
                            self.stalled.push_back((
                                deadline,
                                Command::ConfChange {
                                    cc,
                                    request_id,
                                    respond,
                                },
                            ));
                        }
                    }
                    Err(e) => {
                        if let Some(r) = self.unregister(request_id) {
                            let _ =
                                r.send(Applied::Membership(Err(ApiError::Internal(e.to_string()))));
                        }
                    }
                }
            }
            other => self.handle(other),
        }
    }

    fn register(&self, id: u64, respond: oneshot::Sender<Applied>) {
        let waiters = &self.node.state_machine().waiters;
        match waiters.lock() {
            Ok(mut w) => w.insert(id, respond),
            Err(p) => p.into_inner().insert(id, respond),
        };
    }

    fn unregister(&self, id: u64) -> Option<oneshot::Sender<Applied>> {
        let waiters = &self.node.state_machine().waiters;
        match waiters.lock() {
            Ok(mut w) => w.remove(&id),
            Err(p) => p.into_inner().remove(&id),
        }
    }

    /// On the leader: proposes the promotion of every learner that has
    /// caught up (90% of the leader's log, etcd's readiness rule), at most
    /// once per request timeout each.
    fn auto_promote(&mut self) {
        if !self.timing.auto_promote_learners || self.node.role() != StateRole::Leader {
            return;
        }
        let learners = self.node.conf_state().learners;
        if learners.is_empty() {
            return;
        }
        let last = self.node.last_index();
        let ready: Vec<u64> = match self.node.status().progress {
            Some(p) => learners
                .iter()
                .filter(|id| {
                    p.get(**id)
                        .is_some_and(|pr| pr.recent_active && pr.matched * 100 >= last * 90)
                })
                .copied()
                .collect(),
            None => return,
        };
        for id in ready {
            if self
                .promoting
                .get(&id)
                .is_some_and(|t| t.elapsed() < self.timing.request_timeout)
            {
                continue;
            }
            self.promoting.insert(id, Instant::now());
            info!(learner = %format!("{id:x}"), "learner caught up: promoting it to voter");
            let request_id = self.next_id();
            let ctx = quorate_proto::quoratepb::ConfChangeContext {
                request_id,
                member: None,
            };
            let mut single = quorate_raft::eraftpb::ConfChangeSingle {
                node_id: id,
                ..Default::default()
            };
            single.set_change_type(quorate_raft::eraftpb::ConfChangeType::AddNode);
            let mut cc = ConfChangeV2::default();
            cc.set_changes(vec![single].into());
            cc.set_context(ctx.encode_to_vec().into());
            let (respond, _rx) = oneshot::channel();
            self.propose(Command::ConfChange {
                cc,
                request_id,
                respond,
            });
        }
    }

    fn tick(&mut self) {
        self.node.tick();
        self.auto_promote();
        let now = Instant::now();
        // Retry proposals that were waiting for a leader.
        if self.node.leader_id() != 0 {
            let stalled: Vec<(Instant, Command)> = self.stalled.drain(..).collect();
            for (deadline, cmd) in stalled {
                self.propose_with_deadline(cmd, deadline);
            }
        }
        while self.stalled.front().is_some_and(|(d, _)| *d <= now) {
            if let Some((_, cmd)) = self.stalled.pop_front() {
                fail_command(cmd, ApiError::NoLeader);
            }
        }
        while self.deadlines.front().is_some_and(|(d, _, _)| *d <= now) {
            if let Some((_, id, membership)) = self.deadlines.pop_front() {
                if let Some(r) = self.unregister(id) {
                    let err = ApiError::Timeout;
                    let _ = r.send(if membership {
                        Applied::Membership(Err(err))
                    } else {
                        Applied::Write(Err(err))
                    });
                }
            }
        }
        let (expired_reads, waiting): (Vec<_>, Vec<_>) =
            self.pending_reads.drain(..).partition(|(d, _)| *d <= now);
        self.pending_reads = waiting;
        for (_, w) in expired_reads {
            let _ = w.send(Err(ApiError::NoLeader));
        }
        self.start_reads();
        let retry_after = self.timing.tick * READ_INDEX_RETRY_TICKS;
        if self.node.can_serve_read_index() {
            for (ctx, read) in self.reads_in_flight.iter_mut() {
                if now.duration_since(read.sent) >= retry_after {
                    read.sent = now;
                    self.node.read_index(ctx.to_be_bytes().to_vec());
                }
            }
        }
        let expired: Vec<u64> = self
            .reads_in_flight
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for ctx in expired {
            if let Some(ReadInFlight { waiters, .. }) = self.reads_in_flight.remove(&ctx) {
                let err = if self.node.leader_id() == 0 {
                    ApiError::NoLeader
                } else {
                    ApiError::Timeout
                };
                for w in waiters {
                    let _ = w.send(Err(err.clone()));
                }
            }
        }
    }

    /// One ReadIndex request covers every read that arrived this turn.
    /// Without a leader, Raft would drop it: reads wait for one instead.
    fn start_reads(&mut self) {
        if self.pending_reads.is_empty() || !self.node.can_serve_read_index() {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let waiters: Vec<_> = self.pending_reads.drain(..).map(|(_, w)| w).collect();
        self.node.read_index(ctx.to_be_bytes().to_vec());
        let now = Instant::now();
        self.reads_in_flight.insert(
            ctx,
            ReadInFlight {
                deadline: now + self.timing.request_timeout,
                waiters,
                sent: now,
            },
        );
    }

    fn answer_reads(&mut self) {
        let states = std::mem::take(&mut self.node.state_machine_mut().read_states);
        for rs in states {
            let Ok(bytes) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            let ctx = u64::from_be_bytes(bytes);
            if let Some(read) = self.reads_in_flight.remove(&ctx) {
                for w in read.waiters {
                    let _ = w.send(Ok(rs.index));
                }
            }
        }
    }

    fn after_ready(&mut self) {
        let view = &self.node.state_machine().view;
        view.commit.store(
            self.node.commit_index(),
            std::sync::atomic::Ordering::Relaxed,
        );
        view.term
            .store(self.node.term(), std::sync::atomic::Ordering::Relaxed);
        let leader = self.node.leader_id();
        if leader != self.last_leader {
            if self.last_leader != 0 && !self.reads_in_flight.is_empty() {
                // The reads' ReadIndex may never be answered by the new leader.
                for (_, read) in self.reads_in_flight.drain() {
                    for w in read.waiters {
                        let _ = w.send(Err(ApiError::LeaderChanged));
                    }
                }
            }
            info!(leader = %format!("{leader:x}"), term = self.node.term(), "raft leader changed");
            self.last_leader = leader;
        }
        self.maybe_publish_attributes();
    }

    /// Publishes this member's name and client URLs until the membership
    /// shows them (etcd does the same at start-up), retrying at most once per
    /// half request timeout.
    fn maybe_publish_attributes(&mut self) {
        if self.node.leader_id() == 0
            || self
                .published_at
                .is_some_and(|t| t.elapsed() < self.timing.request_timeout / 2)
        {
            return;
        }
        let current = {
            let m = match self.node.state_machine().membership.read() {
                Ok(m) => m.clone(),
                Err(p) => p.into_inner().clone(),
            };
            crate::membership::find(&m, self.member_id).cloned()
        };
        let Some(me) = current else {
            return;
        };
        if me.name == self.name && me.client_ur_ls == self.client_urls {
            return;
        }
        self.published_at = Some(Instant::now());
        let (tx, _rx) = oneshot::channel();
        let cmd = Command::Propose {
            request: Request::MemberAttributes(MemberAttributes {
                id: self.member_id,
                name: self.name.clone(),
                client_urls: self.client_urls.clone(),
                ..Default::default()
            }),
            respond: tx,
        };
        self.propose(cmd);
    }

    fn compaction_step(&mut self) {
        let store = self.node.state_machine().store.get();
        match store.compact_step(COMPACTION_STEP_RECORDS) {
            Ok(true) => {}
            Ok(false) => {
                self.node.state_machine_mut().compaction_pending = false;
                for w in self.compaction_waiters.drain(..) {
                    let _ = w.send(());
                }
            }
            Err(e) => {
                warn!(error = %e, "compaction step failed; will retry after the next compaction");
                self.node.state_machine_mut().compaction_pending = false;
            }
        }
    }

    fn fail_all(&mut self, err: ApiError) {
        for (_, cmd) in self.stalled.drain(..) {
            fail_command(cmd, err.clone());
        }
        let waiters: Vec<oneshot::Sender<Applied>> = {
            let w = &self.node.state_machine().waiters;
            match w.lock() {
                Ok(mut m) => m.drain().map(|(_, v)| v).collect(),
                Err(p) => p.into_inner().drain().map(|(_, v)| v).collect(),
            }
        };
        for w in waiters {
            let _ = w.send(Applied::Write(Err(err.clone())));
        }
        for (_, w) in self.pending_reads.drain(..) {
            let _ = w.send(Err(err.clone()));
        }
        for (_, read) in self.reads_in_flight.drain() {
            for w in read.waiters {
                let _ = w.send(Err(err.clone()));
            }
        }
    }
}

fn fail_command(cmd: Command, err: ApiError) {
    match cmd {
        Command::Propose { respond, .. } => {
            let _ = respond.send(Applied::Write(Err(err)));
        }
        Command::ConfChange { respond, .. } => {
            let _ = respond.send(Applied::Membership(Err(err)));
        }
        Command::ReadIndex { respond } => {
            let _ = respond.send(Err(err));
        }
        Command::TransferLeader { respond, .. } => {
            let _ = respond.send(Err(err));
        }
        _ => {}
    }
}

/// Sends a tick every `interval` until the loop's queue closes.
pub fn start_ticker(tx: mpsc::Sender<Command>, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("quorate-tick".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            // A full queue already wakes the loop; a dropped tick is harmless.
            match tx.try_send(Command::Tick) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        });
    if let Err(e) = spawned {
        error!(error = %e, "cannot start the raft ticker thread");
    }
}
