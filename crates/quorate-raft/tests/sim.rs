//! Whole clusters in one thread, stepped in an order chosen by a seeded RNG:
//! elections, failover, partitions, healing and catch-up by snapshot.
//! Every test prints its seed; `QUORATE_SIM_SEED=<seed>` replays it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;

use protobuf::Message as _;
use quorate_raft::eraftpb::{
    ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot,
};
use quorate_raft::{
    discard_logger, ApplyContext, ConfChangeI, DurableLog, Node, NodeConfig, NodeError,
    StateMachine, StateRole, Transport,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A key-value map applied from `key=value` entries.
#[derive(Default, Clone)]
struct KvMachine {
    applied: u64,
    data: BTreeMap<String, String>,
    snapshots_installed: u32,
}

impl KvMachine {
    fn encode(&self) -> Vec<u8> {
        let mut out = format!("{}\n", self.applied);
        for (k, v) in &self.data {
            out.push_str(&format!("{k}={v}\n"));
        }
        out.into_bytes()
    }
}

impl StateMachine for KvMachine {
    fn apply(&mut self, entries: &[Entry], ctx: &mut ApplyContext<'_>) -> Result<(), NodeError> {
        for e in entries {
            let replay = e.index <= self.applied;
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if !replay && !e.data.is_empty() {
                        let s = String::from_utf8_lossy(&e.data).into_owned();
                        if let Some((k, v)) = s.split_once('=') {
                            self.data.insert(k.to_string(), v.to_string());
                        }
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)
                        .map_err(|e| NodeError::StateMachine(e.to_string()))?;
                    ctx.apply_conf_change(&cc.into_v2())?;
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)
                        .map_err(|e| NodeError::StateMachine(e.to_string()))?;
                    ctx.apply_conf_change(&cc)?;
                }
            }
            self.applied = self.applied.max(e.index);
        }
        Ok(())
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), NodeError> {
        let text = String::from_utf8_lossy(&snapshot.data).into_owned();
        let mut lines = text.lines();
        let applied: u64 = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| NodeError::StateMachine("snapshot without data".into()))?;
        self.data = lines
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.applied = applied.max(snapshot.get_metadata().index);
        self.snapshots_installed += 1;
        Ok(())
    }
}

#[derive(Clone, Default)]
struct Outbox(Rc<RefCell<Vec<Message>>>);

impl Transport for Outbox {
    fn send(&mut self, msgs: Vec<Message>) {
        self.0.borrow_mut().extend(msgs);
    }
}

struct InFlight {
    deliver_at: u64,
    msg: Message,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    nodes: Vec<Option<Node<KvMachine, Outbox>>>,
    /// State machines of crashed members, as they were on disk.
    saved: Vec<Option<KvMachine>>,
    outboxes: Vec<Outbox>,
    _dirs: Vec<tempfile::TempDir>,
    cfg: NodeConfig,
    in_flight: Vec<InFlight>,
    blocked: HashSet<(u64, u64)>,
    drop_per_mille: u32,
    max_delay_steps: u64,
    now: u64,
    next_value: u64,
}

fn seed_from_env(test: &str) -> u64 {
    let seed = std::env::var("QUORATE_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("{test}: seed {seed} (replay with QUORATE_SIM_SEED={seed})");
    seed
}

impl Sim {
    fn new(n: usize, seed: u64, cfg_for: impl Fn(u64) -> NodeConfig) -> Sim {
        let voters: Vec<u64> = (1..=n as u64).collect();
        let mut sim = Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            nodes: Vec::new(),
            saved: Vec::new(),
            outboxes: Vec::new(),
            _dirs: Vec::new(),
            cfg: cfg_for(1),
            in_flight: Vec::new(),
            blocked: HashSet::new(),
            drop_per_mille: 0,
            max_delay_steps: 2,
            now: 0,
            next_value: 0,
        };
        for &id in &voters {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut log = DurableLog::open(&dir.path().join("raft.redb")).expect("open log");
            log.bootstrap(&voters).expect("bootstrap");
            let outbox = Outbox::default();
            let node = Node::new(
                cfg_for(id),
                log,
                KvMachine::default(),
                outbox.clone(),
                &discard_logger(),
            )
            .expect("node");
            sim.nodes.push(Some(node));
            sim.saved.push(None);
            sim.outboxes.push(outbox);
            sim._dirs.push(dir);
        }
        sim
    }

    fn ids(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64).collect()
    }

    fn node(&self, id: u64) -> Option<&Node<KvMachine, Outbox>> {
        self.nodes[(id - 1) as usize].as_ref()
    }

    /// One step: every live member ticks and handles its Ready; messages
    /// are routed (delayed, dropped or blocked) and delivered when due.
    fn step(&mut self) {
        self.now += 1;
        let mut order = self.ids();
        // Seeded shuffle: members act in a different order each step.
        for i in (1..order.len()).rev() {
            let j = self.rng.random_range(0..=i);
            order.swap(i, j);
        }
        for &id in &order {
            if let Some(node) = self.nodes[(id - 1) as usize].as_mut() {
                node.tick();
                while node.process_ready().expect("ready") {}
            }
        }
        for &id in &order {
            let msgs: Vec<Message> = self.outboxes[(id - 1) as usize]
                .0
                .borrow_mut()
                .drain(..)
                .collect();
            for m in msgs {
                if self.blocked.contains(&(m.from, m.to)) {
                    continue;
                }
                if self.drop_per_mille > 0 && self.rng.random_range(0..1000) < self.drop_per_mille {
                    continue;
                }
                let delay = self.rng.random_range(0..=self.max_delay_steps);
                self.in_flight.push(InFlight {
                    deliver_at: self.now + delay,
                    msg: m,
                });
            }
        }
        let now = self.now;
        let (due, later): (Vec<InFlight>, Vec<InFlight>) =
            self.in_flight.drain(..).partition(|f| f.deliver_at <= now);
        self.in_flight = later;
        for f in due {
            let mut m = f.msg;
            if self.blocked.contains(&(m.from, m.to)) {
                continue;
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // The snapshot's data is the sender's state machine now
                // (at or after the snapshot index), streamed out of band.
                match self.node(m.from) {
                    Some(sender) => {
                        let data = sender.state_machine().encode();
                        m.mut_snapshot().data = data.into();
                    }
                    None => continue,
                }
            }
            if let Some(node) = self.nodes[(m.to - 1) as usize].as_mut() {
                let _ = node.step(m);
            }
        }
    }

    fn run_until(&mut self, max_steps: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// The single member all live members agree is leader, if any.
    fn leader(&self) -> Option<u64> {
        let leaders: Vec<u64> = self
            .nodes
            .iter()
            .flatten()
            .filter(|n| n.role() == StateRole::Leader)
            .map(|n| n.id())
            .collect();
        match leaders.as_slice() {
            [only] => Some(*only),
            _ => None,
        }
    }

    fn wait_leader(&mut self) -> u64 {
        let seed = self.seed;
        assert!(
            self.run_until(2000, |s| s.leader().is_some()),
            "no leader elected (seed {seed})"
        );
        self.leader().expect("leader")
    }

    /// Proposes `key=<unique>` at member `id`; returns the value.
    fn propose(&mut self, id: u64, key: &str) -> Option<String> {
        self.next_value += 1;
        let value = format!("v{}", self.next_value);
        let node = self.nodes[(id - 1) as usize].as_mut()?;
        node.propose(format!("{key}={value}").into_bytes()).ok()?;
        Some(value)
    }

    fn value_on(&self, id: u64, key: &str) -> Option<String> {
        self.node(id)?.state_machine().data.get(key).cloned()
    }

    fn crash(&mut self, id: u64) {
        let i = (id - 1) as usize;
        if let Some(node) = self.nodes[i].take() {
            self.saved[i] = Some(node.state_machine().clone());
        }
        self.in_flight
            .retain(|f| f.msg.to != id && f.msg.from != id);
        self.outboxes[i].0.borrow_mut().clear();
    }

    fn restart(&mut self, id: u64) {
        let i = (id - 1) as usize;
        let log = DurableLog::open(&self._dirs[i].path().join("raft.redb")).expect("reopen log");
        let sm = self.saved[i].take().unwrap_or_default();
        let mut cfg = self.cfg.clone();
        cfg.id = id;
        let node = Node::new(cfg, log, sm, self.outboxes[i].clone(), &discard_logger())
            .expect("restart node");
        self.nodes[i] = Some(node);
    }

    /// Cuts every link between `group` and the other members.
    fn isolate(&mut self, group: &[u64]) {
        for a in self.ids() {
            for b in self.ids() {
                if group.contains(&a) != group.contains(&b) {
                    self.blocked.insert((a, b));
                }
            }
        }
    }

    fn heal(&mut self) {
        self.blocked.clear();
    }

    fn all_equal(&self) -> bool {
        let live: Vec<&Node<KvMachine, Outbox>> = self.nodes.iter().flatten().collect();
        live.windows(2)
            .all(|w| w[0].state_machine().data == w[1].state_machine().data)
    }
}

fn small_cfg(id: u64) -> NodeConfig {
    let mut c = NodeConfig::new(id);
    c.election_tick = 10;
    c.heartbeat_tick = 2;
    c
}

#[test]
fn a_single_leader_is_elected_in_clusters_of_one_three_and_five() {
    for n in [1, 3, 5] {
        let seed = seed_from_env(&format!("election n={n}"));
        let mut sim = Sim::new(n, seed, small_cfg);
        let leader = sim.wait_leader();
        // Every live member follows that leader.
        assert!(
            sim.run_until(500, |s| s
                .nodes
                .iter()
                .flatten()
                .all(|node| node.leader_id() == leader)),
            "members disagree on the leader (seed {seed})"
        );
        let v = sim.propose(leader, "k").expect("propose on leader");
        assert!(
            sim.run_until(500, |s| s
                .ids()
                .iter()
                .all(|&id| s.value_on(id, "k").as_deref() == Some(v.as_str()))),
            "write not applied everywhere (seed {seed})"
        );
    }
}

#[test]
fn a_new_leader_takes_over_when_the_leader_crashes() {
    let seed = seed_from_env("failover");
    let mut sim = Sim::new(3, seed, small_cfg);
    let old = sim.wait_leader();
    sim.crash(old);
    let seed_copy = seed;
    assert!(
        sim.run_until(3000, |s| s.leader().is_some_and(|l| l != old)),
        "no new leader after the leader crashed (seed {seed_copy})"
    );
    let new = sim.leader().expect("leader");
    let v = sim.propose(new, "after-failover").expect("propose");
    assert!(
        sim.run_until(500, |s| s.value_on(new, "after-failover").as_deref()
            == Some(v.as_str())),
        "new leader cannot commit (seed {seed})"
    );
    // The old leader comes back as a follower and catches up.
    sim.restart(old);
    assert!(
        sim.run_until(2000, |s| s.value_on(old, "after-failover").as_deref()
            == Some(v.as_str())),
        "restarted member did not catch up (seed {seed})"
    );
}

#[test]
fn a_partitioned_minority_cannot_commit_and_its_leader_steps_down() {
    let seed = seed_from_env("minority partition");
    let mut sim = Sim::new(5, seed, small_cfg);
    let old = sim.wait_leader();
    let follower = sim
        .ids()
        .into_iter()
        .find(|&id| id != old)
        .expect("follower");
    // The old leader and one follower are cut off from the other three.
    sim.isolate(&[old, follower]);
    let lost = sim
        .propose(old, "minority")
        .expect("old leader accepts the proposal");
    // check-quorum: the isolated leader notices it lost the majority.
    assert!(
        sim.run_until(3000, |s| s
            .node(old)
            .is_some_and(|n| n.role() != StateRole::Leader)),
        "partitioned leader did not step down (seed {seed})"
    );
    assert_eq!(
        sim.value_on(old, "minority"),
        None,
        "a minority committed a write (seed {seed})"
    );
    // The majority elects its own leader and commits.
    let majority: Vec<u64> = sim
        .ids()
        .into_iter()
        .filter(|&id| id != old && id != follower)
        .collect();
    assert!(
        sim.run_until(3000, |s| s
            .nodes
            .iter()
            .flatten()
            .any(|n| n.role() == StateRole::Leader && majority.contains(&n.id()))),
        "majority did not elect a leader (seed {seed})"
    );
    let new = sim
        .nodes
        .iter()
        .flatten()
        .find(|n| n.role() == StateRole::Leader && majority.contains(&n.id()))
        .map(|n| n.id())
        .expect("majority leader");
    let v = sim.propose(new, "majority").expect("propose");
    assert!(
        sim.run_until(1000, |s| majority
            .iter()
            .all(|&id| s.value_on(id, "majority").as_deref() == Some(v.as_str()))),
        "majority cannot commit (seed {seed})"
    );
    // Healing converges everyone on the majority's history; the minority's
    // uncommitted write is gone.
    sim.heal();
    assert!(
        sim.run_until(3000, |s| s
            .ids()
            .iter()
            .all(|&id| s.value_on(id, "majority").as_deref() == Some(v.as_str()))
            && s.all_equal()),
        "healed cluster did not converge (seed {seed})"
    );
    assert_ne!(
        sim.value_on(old, "minority").as_deref(),
        Some(lost.as_str())
    );
}

#[test]
fn writes_survive_message_loss_and_delay() {
    let seed = seed_from_env("lossy network");
    let mut sim = Sim::new(3, seed, small_cfg);
    sim.drop_per_mille = 100;
    sim.max_delay_steps = 5;
    let mut expected = BTreeMap::new();
    for i in 0..50 {
        let key = format!("k{i}");
        // Propose until some leader accepts and the write is applied.
        let mut done = false;
        for _ in 0..20 {
            let leader = sim.wait_leader();
            if let Some(v) = sim.propose(leader, &key) {
                let k2 = key.clone();
                let v2 = v.clone();
                if sim.run_until(300, |s| {
                    s.value_on(leader, &k2).as_deref() == Some(v2.as_str())
                }) {
                    expected.insert(key.clone(), v);
                    done = true;
                    break;
                }
            }
        }
        assert!(done, "write {key} never committed (seed {seed})");
    }
    sim.drop_per_mille = 0;
    assert!(
        sim.run_until(3000, |s| s.all_equal()
            && s.ids().iter().all(|&id| expected
                .iter()
                .all(|(k, v)| s.value_on(id, k).as_ref() == Some(v)))),
        "members diverged (seed {seed})"
    );
}

#[test]
fn a_far_behind_follower_catches_up_by_snapshot() {
    let seed = seed_from_env("snapshot catch-up");
    let cfg = |id| {
        let mut c = small_cfg(id);
        c.snapshot_count = 20;
        c.snapshot_catchup_entries = 5;
        c
    };
    let mut sim = Sim::new(3, seed, cfg);
    let leader = sim.wait_leader();
    let behind = sim
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("follower");
    sim.crash(behind);
    let mut last = String::new();
    for i in 0..100 {
        let l = sim.wait_leader();
        if let Some(v) = sim.propose(l, &format!("k{i}")) {
            last = v;
        }
        sim.step();
    }
    let leader = sim.wait_leader();
    assert!(
        sim.run_until(2000, |s| s.value_on(leader, "k99").as_deref()
            == Some(last.as_str())),
        "writes did not commit (seed {seed})"
    );
    assert!(
        sim.node(leader).expect("leader").state_machine().applied > 30,
        "not enough entries to force a snapshot (seed {seed})"
    );
    sim.restart(behind);
    assert!(
        sim.run_until(3000, |s| s.value_on(behind, "k99").as_deref()
            == Some(last.as_str())
            && s.all_equal()),
        "far-behind follower did not catch up (seed {seed})"
    );
    assert!(
        sim.node(behind)
            .expect("follower")
            .state_machine()
            .snapshots_installed
            >= 1,
        "follower caught up without a snapshot: log was not compacted (seed {seed})"
    );
}
