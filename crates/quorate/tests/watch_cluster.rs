//! Watch on a 3-member cluster, with faults: a watch works on every member
//! (followers too); a watch whose member is SIGKILLed mid-stream resumes on
//! another member from its last revision + 1 with no gap and no duplicate;
//! a watch on a follower continues across a leader change; and under
//! repeated member kills and restarts the guarantee checker (ordered,
//! unique, reliable, atomic, correct `prev_kv`) finds no violation.
//!
//! Same switch as the other suites: `QUORATE_TEST_TARGET=etcd` runs real
//! etcd members (every expectation here was checked against etcd 3.4.23).
//! The fault test prints its seed; `QUORATE_WATCH_SEED` replays it. Every
//! wait and loop is bounded.
//!
//! The history all checks compare with is read back after the load through
//! one watch of every key from revision 1, itself checked two ways: it must
//! be self-consistent (each event's `prev_kv` and create revision/version
//! follow from the events before it) and must contain every acknowledged
//! write at its acknowledged revision.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use etcd_client::{Client, ConnectOptions, DeleteOptions, Txn, TxnOp, TxnOpResponse};
use futures::channel::mpsc as fmpsc;
use quorate_proto::etcdserverpb as pb;
use quorate_proto::etcdserverpb::watch_client::WatchClient;
use quorate_proto::mvccpb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MSG_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Raw watch streams
// ---------------------------------------------------------------------------

fn create_req(c: pb::WatchCreateRequest) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(c)),
    }
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn on_prefix(prefix: &str, start: i64, prev_kv: bool) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_end(prefix.as_bytes()),
        start_revision: start,
        prev_kv,
        ..Default::default()
    }
}

struct Raw {
    _tx: fmpsc::UnboundedSender<pb::WatchRequest>,
    rx: tonic::Streaming<pb::WatchResponse>,
}

impl Raw {
    /// Opens a stream carrying `requests` (bounded in time; an error when
    /// the member does not answer).
    async fn try_open(endpoint: &str, requests: Vec<pb::WatchRequest>) -> Result<Raw, String> {
        let ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2));
        let channel = tokio::time::timeout(Duration::from_secs(3), ep.connect())
            .await
            .map_err(|_| format!("connect {endpoint}: timed out"))?
            .map_err(|e| format!("connect {endpoint}: {e}"))?;
        let mut client = WatchClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = fmpsc::unbounded();
        for r in requests {
            tx.unbounded_send(r).map_err(|e| e.to_string())?;
        }
        let rx = tokio::time::timeout(Duration::from_secs(5), client.watch(rx))
            .await
            .map_err(|_| format!("Watch on {endpoint}: timed out"))?
            .map_err(|e| format!("Watch on {endpoint}: {e:?}"))?
            .into_inner();
        Ok(Raw { _tx: tx, rx })
    }

    async fn open(endpoint: &str, c: pb::WatchCreateRequest) -> Raw {
        let mut raw = Raw::try_open(endpoint, vec![create_req(c)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let created = raw.next().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(created.created && !created.canceled, "{created:?}");
        raw
    }

    /// The next response; Err when the stream failed, ended or was silent
    /// for `MSG_TIMEOUT`.
    async fn next(&mut self) -> Result<pb::WatchResponse, String> {
        match tokio::time::timeout(MSG_TIMEOUT, self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err("stream ended".into()),
            Ok(Err(s)) => Err(format!("stream failed: {s:?}")),
            Err(_) => Err(format!("no response within {MSG_TIMEOUT:?}")),
        }
    }
}

// ---------------------------------------------------------------------------
// Events and histories
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
struct Kv {
    key: Vec<u8>,
    value: Vec<u8>,
    create: i64,
    modr: i64,
    version: i64,
    lease: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Ev {
    put: bool,
    kv: Kv,
    prev: Option<Kv>,
}

fn kv_of(kv: &mvccpb::KeyValue) -> Kv {
    Kv {
        key: kv.key.clone(),
        value: kv.value.clone(),
        create: kv.create_revision,
        modr: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

fn ev_of(e: &mvccpb::Event) -> Ev {
    Ev {
        put: match e.r#type {
            0 => true,
            1 => false,
            t => panic!("unknown event type {t}"),
        },
        kv: kv_of(e.kv.as_ref().expect("event without kv")),
        prev: e.prev_kv.as_ref().map(kv_of),
    }
}

fn kv_of_client(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create: kv.create_revision(),
        modr: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn show(e: &Ev) -> String {
    format!(
        "{} {}@{}",
        if e.put { "PUT" } else { "DELETE" },
        String::from_utf8_lossy(&e.kv.key),
        e.kv.modr
    )
}

/// Every revision's events, in sub-revision order.
type History = BTreeMap<i64, Vec<Ev>>;

/// Reads every event of every key in (from - 1, to] through one watch on
/// `endpoint` (prev_kv on).
async fn history_by_watch(endpoint: &str, from: i64, to: i64) -> History {
    let mut raw = Raw::open(
        endpoint,
        pb::WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision: from,
            prev_kv: true,
            ..Default::default()
        },
    )
    .await;
    let mut h = History::new();
    let mut last = from - 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while last < to {
        assert!(
            Instant::now() < deadline,
            "history watch stuck at {last} < {to}"
        );
        let r = raw
            .next()
            .await
            .unwrap_or_else(|e| panic!("history watch: {e}"));
        assert!(!r.canceled, "history watch canceled: {r:?}");
        for e in &r.events {
            let e = ev_of(e);
            last = last.max(e.kv.modr);
            h.entry(e.kv.modr).or_default().push(e);
        }
    }
    h
}

/// Checks that a history read from revision 1 is self-consistent: each
/// event's prev_kv, create revision and version follow from the events
/// before it.
fn check_history(h: &History) -> Vec<String> {
    let mut state: BTreeMap<Vec<u8>, Kv> = BTreeMap::new();
    let mut v = Vec::new();
    for (rev, evs) in h {
        for e in evs {
            let prev = state.get(&e.kv.key).cloned();
            if e.kv.modr != *rev {
                v.push(format!(
                    "{}: mod_revision {} under {rev}",
                    show(e),
                    e.kv.modr
                ));
            }
            if e.prev != prev {
                v.push(format!(
                    "{}: prev_kv {:?}, the history before says {:?}",
                    show(e),
                    e.prev,
                    prev
                ));
            }
            if e.put {
                let (create, version) = prev
                    .as_ref()
                    .map_or((*rev, 1), |p| (p.create, p.version + 1));
                if (e.kv.create, e.kv.version) != (create, version) {
                    v.push(format!(
                        "{}: create/version ({}, {}), want ({create}, {version})",
                        show(e),
                        e.kv.create,
                        e.kv.version
                    ));
                }
                state.insert(e.kv.key.clone(), e.kv.clone());
            } else {
                if prev.is_none() {
                    v.push(format!("{}: delete of a key that does not exist", show(e)));
                }
                state.remove(&e.kv.key);
            }
        }
        if v.len() > 20 {
            break;
        }
    }
    v
}

// ---------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------

/// What one acknowledged write did, in op order.
#[derive(Clone, Debug)]
enum Change {
    Put { key: Vec<u8>, value: Vec<u8> },
    Del { prev: Kv },
}

#[derive(Clone, Debug)]
struct Ack {
    rev: i64,
    changes: Vec<Change>,
}

/// Checks that every acknowledged write is in the history at its revision,
/// exactly as acknowledged.
fn check_acks(h: &History, acks: &[Ack]) -> Vec<String> {
    let mut v = Vec::new();
    for a in acks {
        let got: Vec<(bool, Vec<u8>, Vec<u8>)> = h
            .get(&a.rev)
            .map(|evs| {
                evs.iter()
                    .map(|e| (e.put, e.kv.key.clone(), e.kv.value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let want: Vec<(bool, Vec<u8>, Vec<u8>)> = a
            .changes
            .iter()
            .map(|c| match c {
                Change::Put { key, value } => (true, key.clone(), value.clone()),
                Change::Del { prev } => (false, prev.key.clone(), Vec::new()),
            })
            .collect();
        if got != want {
            v.push(format!(
                "acknowledged write at {} not in the history as acknowledged: history has {:?}",
                a.rev,
                h.get(&a.rev)
                    .map(|e| e.iter().map(show).collect::<Vec<_>>())
            ));
        }
        if v.len() > 20 {
            break;
        }
    }
    v
}

fn key_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:03}")
}

/// One random write (put, delete, delete-range or multi-key txn) on keys
/// `prefix000..`; returns its ack (None: it changed nothing).
async fn random_write(
    c: &mut Client,
    rng: &mut StdRng,
    prefix: &str,
    nkeys: usize,
    tag: &str,
) -> Result<Option<Ack>, etcd_client::Error> {
    let dopts = || DeleteOptions::new().with_prev_key();
    let value = |rng: &mut StdRng| {
        let pad = rng.random_range(0..48);
        format!("{tag}-{}", "p".repeat(pad)).into_bytes()
    };
    let roll = rng.random_range(0..100);
    if roll < 55 {
        let key = key_name(prefix, rng.random_range(0..nkeys)).into_bytes();
        let v = value(rng);
        let r = c.put(key.clone(), v.clone(), None).await?;
        Ok(Some(Ack {
            rev: r.header().expect("put header").revision(),
            changes: vec![Change::Put { key, value: v }],
        }))
    } else if roll < 75 {
        let a = rng.random_range(0..nkeys);
        let mut opts = dopts();
        if roll >= 70 {
            opts = opts.with_range(key_name(prefix, (a + 4).min(nkeys)));
        }
        let r = c.delete(key_name(prefix, a), Some(opts)).await?;
        if r.deleted() == 0 {
            return Ok(None);
        }
        Ok(Some(Ack {
            rev: r.header().expect("delete header").revision(),
            changes: r
                .prev_kvs()
                .iter()
                .map(|kv| Change::Del {
                    prev: kv_of_client(kv),
                })
                .collect(),
        }))
    } else {
        let n = rng.random_range(2..=4);
        let mut idx = BTreeSet::new();
        while idx.len() < n {
            idx.insert(rng.random_range(0..nkeys));
        }
        let mut idx: Vec<usize> = idx.into_iter().collect();
        idx.rotate_left(rng.random_range(0..n));
        let mut ops = Vec::new();
        let mut puts = Vec::new();
        for &i in &idx {
            let key = key_name(prefix, i).into_bytes();
            if rng.random_bool(0.7) {
                let v = value(rng);
                ops.push(TxnOp::put(key.clone(), v.clone(), None));
                puts.push(Some((key, v)));
            } else {
                ops.push(TxnOp::delete(key, Some(dopts())));
                puts.push(None);
            }
        }
        let r = c.txn(Txn::new().and_then(ops)).await?;
        let rev = r.header().expect("txn header").revision();
        let mut changes = Vec::new();
        for (op, put) in r.op_responses().into_iter().zip(puts) {
            match (op, put) {
                (TxnOpResponse::Put(_), Some((key, value))) => {
                    changes.push(Change::Put { key, value })
                }
                (TxnOpResponse::Delete(d), None) => {
                    for kv in d.prev_kvs() {
                        changes.push(Change::Del {
                            prev: kv_of_client(kv),
                        });
                    }
                }
                (op, put) => panic!("txn response {op:?} for {put:?}"),
            }
        }
        if changes.is_empty() {
            return Ok(None);
        }
        Ok(Some(Ack { rev, changes }))
    }
}

/// A client for one endpoint with bounded connect and request times.
async fn try_connect(endpoint: &str) -> Result<Client, String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    match tokio::time::timeout(
        Duration::from_secs(3),
        Client::connect([endpoint], Some(opts)),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

#[derive(Default)]
struct WriterLog {
    acks: Vec<Ack>,
    attempts: usize,
    /// Writes whose outcome is unknown (an error came back).
    errors: Vec<String>,
}

/// `ops` random writes, starting on endpoint `first` and moving to the
/// next endpoint after an error; bounded by `deadline`.
async fn writer(
    endpoints: Vec<String>,
    first: usize,
    seed: u64,
    ops: usize,
    prefix: &'static str,
    nkeys: usize,
    deadline: Instant,
) -> WriterLog {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = WriterLog::default();
    let mut at = first;
    let mut client: Option<Client> = None;
    for n in 0..ops {
        if Instant::now() > deadline {
            break;
        }
        if client.is_none() {
            match try_connect(&endpoints[at % endpoints.len()]).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    log.errors.push(format!("connect: {e}"));
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        log.attempts += 1;
        let tag = format!("w{seed}-{n}");
        let c = client.as_mut().expect("client");
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            random_write(c, &mut rng, prefix, nkeys, &tag),
        )
        .await;
        match r {
            Ok(Ok(Some(a))) => log.acks.push(a),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                log.errors.push(e.to_string());
                client = None;
                at += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => {
                log.errors.push("write timed out".into());
                client = None;
                at += 1;
            }
        }
    }
    log
}

// ---------------------------------------------------------------------------
// The guarantee checker
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Spec {
    key: Vec<u8>,
    range_end: Vec<u8>,
    start: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
}

impl Spec {
    fn request(&self, start: i64) -> pb::WatchCreateRequest {
        let mut filters = Vec::new();
        if self.no_put {
            filters.push(pb::watch_create_request::FilterType::Noput as i32);
        }
        if self.no_delete {
            filters.push(pb::watch_create_request::FilterType::Nodelete as i32);
        }
        pb::WatchCreateRequest {
            key: self.key.clone(),
            range_end: self.range_end.clone(),
            start_revision: start,
            prev_kv: self.prev_kv,
            filters,
            ..Default::default()
        }
    }

    fn contains(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            k == self.key.as_slice()
        } else if self.range_end == [0] {
            k >= self.key.as_slice()
        } else {
            k >= self.key.as_slice() && k < self.range_end.as_slice()
        }
    }

    fn wants(&self, e: &Ev) -> bool {
        self.contains(&e.kv.key) && if e.put { !self.no_put } else { !self.no_delete }
    }
}

/// Checks one watcher's deliveries, (response number, event), against the
/// history in [start, end]; returns violations.
fn check_watcher(
    id: String,
    spec: &Spec,
    end: i64,
    history: &History,
    got: &[(usize, Ev)],
) -> Vec<String> {
    let mut v = Vec::new();
    let expected: Vec<Ev> = history
        .range(spec.start..=end)
        .flat_map(|(_, evs)| evs.iter())
        .filter(|e| spec.wants(e))
        .map(|e| {
            let mut e = e.clone();
            if !spec.prev_kv {
                e.prev = None;
            }
            e
        })
        .collect();
    for w in got.windows(2) {
        if w[1].1.kv.modr < w[0].1.kv.modr {
            v.push(format!(
                "{id}: out of order: {} after {}",
                show(&w[1].1),
                show(&w[0].1)
            ));
        }
    }
    let mut seen: HashMap<(i64, Vec<u8>), usize> = HashMap::new();
    for (_, e) in got {
        *seen.entry((e.kv.modr, e.kv.key.clone())).or_default() += 1;
    }
    for ((rev, key), n) in &seen {
        if *n > 1 {
            v.push(format!(
                "{id}: duplicate: {}@{rev} delivered {n} times",
                String::from_utf8_lossy(key)
            ));
        }
    }
    let mut resp_of: BTreeMap<i64, BTreeSet<usize>> = BTreeMap::new();
    for (n, e) in got {
        resp_of.entry(e.kv.modr).or_default().insert(*n);
    }
    for (rev, resps) in &resp_of {
        if resps.len() > 1 {
            v.push(format!(
                "{id}: revision {rev} split over responses {resps:?}"
            ));
        }
    }
    let want: HashMap<(i64, Vec<u8>), &Ev> = expected
        .iter()
        .map(|e| ((e.kv.modr, e.kv.key.clone()), e))
        .collect();
    for e in &expected {
        if !seen.contains_key(&(e.kv.modr, e.kv.key.clone())) {
            v.push(format!("{id}: gap: missing {}", show(e)));
        }
    }
    for (_, e) in got {
        match want.get(&(e.kv.modr, e.kv.key.clone())) {
            None => v.push(format!("{id}: unexpected event {} ({spec:?})", show(e))),
            Some(w) if e.prev != w.prev => v.push(format!(
                "{id}: wrong prev_kv on {}: got {:?}, want {:?}",
                show(e),
                e.prev,
                w.prev
            )),
            Some(w) if *w != e => v.push(format!("{id}: wrong event: got {e:?}, want {w:?}")),
            Some(_) => {}
        }
    }
    if v.is_empty() {
        let a: Vec<&Ev> = got.iter().map(|(_, e)| e).collect();
        let b: Vec<&Ev> = expected.iter().collect();
        if a != b {
            v.push(format!(
                "{id}: events of one revision not in sub-revision order"
            ));
        }
    }
    v
}

/// What one resilient stream's watchers received.
struct Tracker {
    specs: Vec<Spec>,
    /// Next revision each watcher needs (where a reconnect resumes).
    resume: Vec<i64>,
    /// Highest event revision each watcher received.
    last: Vec<i64>,
    got: Vec<Vec<(usize, Ev)>>,
    responses: usize,
    reconnects: usize,
    problems: Vec<String>,
    endpoints_used: Vec<usize>,
}

impl Tracker {
    fn new(specs: Vec<Spec>) -> Tracker {
        let n = specs.len();
        Tracker {
            resume: specs.iter().map(|s| s.start).collect(),
            specs,
            last: vec![0; n],
            got: vec![Vec::new(); n],
            responses: 0,
            reconnects: 0,
            problems: Vec::new(),
            endpoints_used: Vec::new(),
        }
    }
}

/// Keeps every watcher of `tr` on one stream; when the stream fails,
/// reopens it on the next endpoint with each watcher resuming at its next
/// needed revision. Ends when `stop` is set (bounded reconnects).
async fn resilient_stream(
    endpoints: Vec<String>,
    first: usize,
    tr: Arc<Mutex<Tracker>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut at = first;
    for _attempt in 0..500 {
        if *stop.borrow() {
            return;
        }
        let ep = endpoints[at % endpoints.len()].clone();
        let requests: Vec<pb::WatchRequest> = {
            let t = tr.lock().unwrap();
            t.specs
                .iter()
                .zip(&t.resume)
                .map(|(s, &r)| create_req(s.request(r)))
                .collect()
        };
        let n = requests.len();
        let mut raw = match Raw::try_open(&ep, requests).await {
            Ok(r) => r,
            Err(_) => {
                at += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        tr.lock().unwrap().endpoints_used.push(at % endpoints.len());
        let mut created = 0;
        loop {
            let msg = tokio::select! {
                _ = stop.changed() => return,
                m = raw.rx.message() => m,
            };
            let r = match msg {
                Ok(Some(r)) => r,
                _ => break,
            };
            let mut t = tr.lock().unwrap();
            t.responses += 1;
            let no = t.responses;
            if r.created {
                if r.watch_id != created as i64 || r.canceled {
                    t.problems.push(format!("bad created response {r:?}"));
                }
                created += 1;
                continue;
            }
            if r.canceled || r.compact_revision != 0 || r.events.is_empty() {
                t.problems.push(format!("unexpected response {r:?}"));
                continue;
            }
            let id = r.watch_id as usize;
            if id >= n {
                t.problems.push(format!("unknown watch_id in {r:?}"));
                continue;
            }
            for e in &r.events {
                let ev = ev_of(e);
                t.last[id] = t.last[id].max(ev.kv.modr);
                t.got[id].push((no, ev));
            }
            // A response carries whole revisions: resume after the last.
            t.resume[id] = t.resume[id].max(t.last[id] + 1);
        }
        tr.lock().unwrap().reconnects += 1;
        at += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Reads `raw` until an event at or above `to` arrived; returns events.
async fn read_until(raw: &mut Raw, to: i64) -> Vec<Ev> {
    let mut out: Vec<Ev> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.last().is_none_or(|e| e.kv.modr < to) {
        assert!(Instant::now() < deadline, "watch stuck before {to}");
        let r = raw.next().await.unwrap_or_else(|e| panic!("watch: {e}"));
        assert!(!r.canceled && !r.created, "{r:?}");
        out.extend(r.events.iter().map(ev_of));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_works_on_every_member() {
    let mut c = tokio::task::block_in_place(|| Cluster::start(3));
    let ids = c.member_ids().await;
    let leader = c.leader().await;
    let mut client = c.client_all().await;
    let start = client
        .get("probe", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
        + 1;
    let mut streams = Vec::new();
    for i in 0..3 {
        streams.push(Raw::open(&c.endpoint(i), on_prefix("e/", start, true)).await);
    }
    let mut rng = StdRng::seed_from_u64(7);
    let mut acks = Vec::new();
    for n in 0..60 {
        if let Some(a) = random_write(&mut client, &mut rng, "e/", 12, &format!("e{n}"))
            .await
            .expect("write")
        {
            acks.push(a);
        }
    }
    let end = acks.iter().map(|a| a.rev).max().unwrap();
    let mut seen = Vec::new();
    for (i, raw) in streams.iter_mut().enumerate() {
        let mut evs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while evs.last().is_none_or(|e: &Ev| e.kv.modr < end) {
            assert!(Instant::now() < deadline, "m{i} stuck");
            let r = raw.next().await.unwrap_or_else(|e| panic!("m{i}: {e}"));
            assert_eq!(
                r.header.map(|h| h.member_id),
                Some(ids[i]),
                "m{i} (leader m{leader}) answers with its own member ID"
            );
            evs.extend(r.events.iter().map(ev_of));
        }
        seen.push(evs);
    }
    assert_eq!(seen[0], seen[1], "m0 and m1 delivered different events");
    assert_eq!(seen[0], seen[2], "m0 and m2 delivered different events");
    let h: History = {
        let mut h = History::new();
        for e in &seen[0] {
            h.entry(e.kv.modr).or_default().push(e.clone());
        }
        h
    };
    let v = check_acks(&h, &acks);
    assert!(v.is_empty(), "{v:#?}");
    assert_eq!(h.keys().next(), Some(&start));
    // Every member replays the same history from revision 1.
    let h0 = history_by_watch(&c.endpoint(0), 1, end).await;
    let v = check_history(&h0);
    assert!(v.is_empty(), "{v:#?}");
    for i in 1..3 {
        let hi = history_by_watch(&c.endpoint(i), 1, end).await;
        assert!(hi == h0, "m{i} replays another history than m0");
    }
}

/// A writer of `n` puts on unique keys `prefix{i}` through `endpoints`,
/// retrying the next key after an error; returns (acked revision, key).
async fn put_writer(
    endpoints: Vec<String>,
    prefix: &'static str,
    n: usize,
    pause: Duration,
    deadline: Instant,
) -> (Vec<(i64, String)>, Vec<String>) {
    let mut acks = Vec::new();
    let mut errors = Vec::new();
    let mut at = 0;
    let mut client: Option<Client> = None;
    let mut i = 0;
    while i < n && Instant::now() < deadline {
        if client.is_none() {
            match try_connect(&endpoints[at % endpoints.len()]).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    errors.push(e);
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let key = format!("{prefix}{i:05}");
        i += 1;
        let c = client.as_mut().unwrap();
        match tokio::time::timeout(Duration::from_secs(10), c.put(key.clone(), "v", None)).await {
            Ok(Ok(r)) => acks.push((r.header().unwrap().revision(), key)),
            Ok(Err(e)) => {
                errors.push(e.to_string());
                client = None;
                at += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => {
                errors.push("timed out".into());
                client = None;
                at += 1;
            }
        }
        tokio::time::sleep(pause).await;
    }
    (acks, errors)
}

/// Checks a watcher's events against the acknowledged puts and the
/// reference history: ordered, no duplicate, no gap.
fn check_against(events: &[Ev], reference: &History, acks: &[(i64, String)], what: &str) {
    let got: Vec<(i64, Vec<u8>)> = events
        .iter()
        .map(|e| (e.kv.modr, e.kv.key.clone()))
        .collect();
    let want: Vec<(i64, Vec<u8>)> = reference
        .values()
        .flatten()
        .map(|e| (e.kv.modr, e.kv.key.clone()))
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), got.len(), "{what}: duplicates");
    assert_eq!(sorted, got, "{what}: out of order");
    if got != want {
        let g: BTreeSet<_> = got.iter().collect();
        let w: BTreeSet<_> = want.iter().collect();
        let missing: Vec<_> = w.difference(&g).take(10).collect();
        let extra: Vec<_> = g.difference(&w).take(10).collect();
        panic!("{what}: differs from the reference history; missing {missing:?}, extra {extra:?}");
    }
    let got: BTreeSet<(i64, Vec<u8>)> = got.into_iter().collect();
    for (rev, key) in acks {
        assert!(
            got.contains(&(*rev, key.clone().into_bytes())),
            "{what}: acknowledged put {key}@{rev} missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_resumes_on_another_member_after_sigkill() {
    let mut c = tokio::task::block_in_place(|| Cluster::start(3));
    let leader = c.leader().await;
    let victim = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let mut client = c.client(other).await;
    let start = client
        .get("probe", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
        + 1;
    let mut raw = Raw::open(&c.endpoint(victim), on_prefix("r/", start, false)).await;

    let writer = tokio::spawn(put_writer(
        vec![c.endpoint(leader), c.endpoint(other)],
        "r/",
        600,
        Duration::from_millis(2),
        Instant::now() + Duration::from_secs(60),
    ));
    // Read from the victim until 100 events, then SIGKILL it mid-stream.
    let mut events: Vec<Ev> = Vec::new();
    while events.len() < 100 {
        let r = raw
            .next()
            .await
            .unwrap_or_else(|e| panic!("watch on m{victim}: {e}"));
        events.extend(r.events.iter().map(ev_of));
    }
    c.kill(victim);
    // The stream fails (more events may still have been buffered).
    let deadline = Instant::now() + Duration::from_secs(15);
    let why = loop {
        assert!(
            Instant::now() < deadline,
            "stream of the killed member never failed"
        );
        match raw.next().await {
            Ok(r) => events.extend(r.events.iter().map(ev_of)),
            Err(e) => break e,
        }
    };
    let last = events.last().unwrap().kv.modr;
    eprintln!(
        "sigkill resume: m{victim} killed after {} events (last revision {last}): {why}",
        events.len()
    );
    // Resume on another member from last + 1.
    let mut raw = Raw::open(&c.endpoint(other), on_prefix("r/", last + 1, false)).await;
    let (acks, errors) = tokio::time::timeout(Duration::from_secs(90), writer)
        .await
        .expect("writer")
        .expect("writer task");
    assert!(!acks.is_empty());
    let end = acks.iter().map(|a| a.0).max().unwrap();
    events.extend(read_until(&mut raw, end).await);
    eprintln!(
        "sigkill resume: {} acked puts, {} errors, {} events",
        acks.len(),
        errors.len(),
        events.len()
    );
    let reference = history_by_watch(&c.endpoint(leader), start, end).await;
    check_against(&events, &reference, &acks, "resumed watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_on_a_follower_continues_across_a_leader_change() {
    let mut c = tokio::task::block_in_place(|| Cluster::start(3));
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let third = (leader + 2) % 3;
    let mut client = c.client(follower).await;
    let start = client
        .get("probe", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
        + 1;
    let mut raw = Raw::open(&c.endpoint(follower), on_prefix("l/", start, true)).await;

    let writer = tokio::spawn(put_writer(
        vec![c.endpoint(follower), c.endpoint(third)],
        "l/",
        500,
        Duration::from_millis(2),
        Instant::now() + Duration::from_secs(60),
    ));
    let mut events: Vec<Ev> = Vec::new();
    while events.len() < 100 {
        let r = raw.next().await.unwrap_or_else(|e| panic!("watch: {e}"));
        events.extend(r.events.iter().map(ev_of));
    }
    c.kill(leader);
    eprintln!(
        "leader change: killed leader m{leader} after {} events",
        events.len()
    );
    let (acks, errors) = tokio::time::timeout(Duration::from_secs(90), writer)
        .await
        .expect("writer")
        .expect("writer task");
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    let end = acks.iter().map(|a| a.0).max().unwrap();
    // The same stream, no reconnect.
    events.extend(read_until(&mut raw, end).await);
    eprintln!(
        "leader change: new leader m{new_leader}; {} acked puts, {} errors, {} events on the same stream",
        acks.len(),
        errors.len(),
        events.len()
    );
    let reference = history_by_watch(&c.endpoint(third), start, end).await;
    check_against(&events, &reference, &acks, "watch across a leader change");
    for e in &events {
        assert_eq!(e.prev, None, "{}: a new key has no prev_kv", show(e));
    }
}

const CF_PREFIX: &str = "cf/";
const CF_KEYS: usize = 200;

fn fault_specs(n: usize, stream: usize, start: i64) -> Vec<Spec> {
    (0..n)
        .map(|j| {
            let i = j * 3 + stream;
            let (key, range_end) = match i % 4 {
                0 => (
                    key_name(CF_PREFIX, (i * 7) % CF_KEYS).into_bytes(),
                    Vec::new(),
                ),
                1 => {
                    let p = format!("{CF_PREFIX}{:02}", (i / 4) % (CF_KEYS / 10));
                    (p.clone().into_bytes(), prefix_end(p.as_bytes()))
                }
                2 => {
                    let a = (i * 13) % (CF_KEYS - 8);
                    (
                        key_name(CF_PREFIX, a).into_bytes(),
                        key_name(CF_PREFIX, a + 8).into_bytes(),
                    )
                }
                _ if i % 50 == 3 => (
                    CF_PREFIX.as_bytes().to_vec(),
                    prefix_end(CF_PREFIX.as_bytes()),
                ),
                _ => (
                    key_name(CF_PREFIX, (i * 31) % CF_KEYS).into_bytes(),
                    Vec::new(),
                ),
            };
            Spec {
                key,
                range_end,
                start,
                prev_kv: i.is_multiple_of(2),
                no_put: i % 17 == 5,
                no_delete: i % 19 == 7,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guarantees_hold_under_member_kills_and_restarts() {
    const STREAMS: usize = 3;
    const WATCHERS_PER_STREAM: usize = 100;
    const WRITERS: usize = 4;
    const WRITES_PER_WRITER: usize = 750;
    const ROUNDS: usize = 3;
    let seed: u64 = std::env::var("QUORATE_WATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("watch faults: seed {seed} (replay with QUORATE_WATCH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(100);

    let mut c = tokio::task::block_in_place(|| Cluster::start(3));
    let endpoints = c.endpoints();
    let mut client = c.client_all().await;
    let start = client
        .get("probe", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
        + 1;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut trackers = Vec::new();
    let mut streams = Vec::new();
    for s in 0..STREAMS {
        let tr = Arc::new(Mutex::new(Tracker::new(fault_specs(
            WATCHERS_PER_STREAM,
            s,
            start,
        ))));
        trackers.push(tr.clone());
        streams.push(tokio::spawn(resilient_stream(
            endpoints.clone(),
            s,
            tr,
            stop_rx.clone(),
        )));
    }
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        writers.push(tokio::spawn(writer(
            endpoints.clone(),
            w,
            seed.wrapping_add(w as u64),
            WRITES_PER_WRITER,
            CF_PREFIX,
            CF_KEYS,
            deadline,
        )));
    }

    // Faults: kill a member (the leader in round 0), keep it down a while,
    // restart it.
    for round in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2000))).await;
        if writers.iter().all(|w| w.is_finished()) {
            break;
        }
        let leader = c.leader().await;
        let victim = if round == 0 {
            leader
        } else {
            rng.random_range(0..3)
        };
        c.kill(victim);
        let down = Duration::from_millis(rng.random_range(300..1500));
        eprintln!(
            "watch faults: round {round}: killed m{victim} (leader m{leader}) for {down:?} at {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        tokio::time::sleep(down).await;
        tokio::task::block_in_place(|| c.restart(victim));
    }
    let mut logs = Vec::new();
    for w in writers {
        logs.push(
            tokio::time::timeout(Duration::from_secs(120), w)
                .await
                .expect("writer")
                .expect("writer task"),
        );
    }
    let acks: Vec<Ack> = logs.iter().flat_map(|l| l.acks.clone()).collect();
    let attempts: usize = logs.iter().map(|l| l.attempts).sum();
    let errors: usize = logs.iter().map(|l| l.errors.len()).sum();
    let end = c
        .wait_same_revision(&[0, 1, 2], Duration::from_secs(30))
        .await;
    eprintln!(
        "watch faults: {attempts} writes, {} acknowledged changes, {errors} errors (outcome unknown), revision {end}, {:.1}s",
        acks.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        acks.len() >= attempts / 2,
        "too few writes succeeded: {} of {attempts}",
        acks.len()
    );

    // The history, checked for self-consistency and against the acks.
    let history = history_by_watch(&c.endpoint(0), 1, end).await;
    let v = check_history(&history);
    assert!(v.is_empty(), "history watch is inconsistent: {v:#?}");
    let v = check_acks(&history, &acks);
    assert!(v.is_empty(), "history watch vs acknowledged writes: {v:#?}");

    // Wait (bounded) until every watcher has its last expected event.
    let expected_last: Vec<Vec<i64>> = trackers
        .iter()
        .map(|tr| {
            tr.lock()
                .unwrap()
                .specs
                .iter()
                .map(|s| {
                    history
                        .range(s.start..=end)
                        .rev()
                        .find(|(_, evs)| evs.iter().any(|e| s.wants(e)))
                        .map_or(0, |(r, _)| *r)
                })
                .collect()
        })
        .collect();
    let wait_until = Instant::now() + Duration::from_secs(60);
    loop {
        let behind: usize = trackers
            .iter()
            .zip(&expected_last)
            .map(|(tr, exp)| {
                let t = tr.lock().unwrap();
                t.last.iter().zip(exp).filter(|(l, e)| l < e).count()
            })
            .sum();
        if behind == 0 {
            break;
        }
        if Instant::now() > wait_until {
            eprintln!("watch faults: {behind} watchers still behind after 60 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(true);
    for s in streams {
        let _ = tokio::time::timeout(Duration::from_secs(10), s).await;
    }

    let mut violations = Vec::new();
    let mut delivered = 0;
    for (s, tr) in trackers.iter().enumerate() {
        let t = tr.lock().unwrap();
        eprintln!(
            "watch faults: stream {s}: {} responses, {} reconnects, members used {:?}",
            t.responses, t.reconnects, t.endpoints_used
        );
        violations.extend(t.problems.iter().map(|p| format!("stream {s}: {p}")));
        for (j, spec) in t.specs.iter().enumerate() {
            delivered += t.got[j].len();
            violations.extend(check_watcher(
                format!("stream {s} watcher {j}"),
                spec,
                end,
                &history,
                &t.got[j],
            ));
        }
    }
    eprintln!(
        "watch faults: {delivered} events checked, {:.1}s in all (seed {seed})",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations, first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(20)]
    );
}
