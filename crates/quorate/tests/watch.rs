//! Watch compatibility suite (single server): event contents, key ranges,
//! filters, `prev_kv`, history replay from a start revision, compaction,
//! watch IDs, cancel, progress (notifications and requests), fragments,
//! a guarantee checker (ordered, unique, reliable, atomic, correct
//! `prev_kv`) over 1,000 watchers and 10,000 writes, and a slow watcher.
//!
//! Runs against a fresh `quorate` server per test by default, and against a
//! real etcd (3.4.23 here) with `QUORATE_TEST_TARGET=etcd`; every
//! expectation was checked against etcd, so a failure under quorate is a
//! compatibility bug in quorate. Where etcd's exact answer is asserted, the
//! comment says what etcd 3.4.23 sends.
//!
//! Tests use `etcd_client` (what real users run) and, where the crate hides
//! a field or cannot express a request (several watchers on one stream,
//! `fragment`, the exact cancel responses), the raw tonic client from
//! `quorate_proto`. Every wait is bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, DeleteOptions, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchFilterType,
    WatchOptions, WatchStream,
};
use futures::channel::mpsc as fmpsc;
use quorate_proto::etcdserverpb as pb;
use quorate_proto::etcdserverpb::watch_client::WatchClient;
use quorate_proto::mvccpb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------
// Helpers: raw tonic watch streams
// ---------------------------------------------------------------------------

/// How long one expected message may take.
const MSG_TIMEOUT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is observed.
const QUIET: Duration = Duration::from_millis(700);

fn create_req(c: pb::WatchCreateRequest) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(c)),
    }
}

fn cancel_req(watch_id: i64) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CancelRequest(
            pb::WatchCancelRequest { watch_id },
        )),
    }
}

fn progress_req() -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
            pb::WatchProgressRequest {},
        )),
    }
}

/// A create request for `key` (other fields default).
fn on_key(key: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A create request for every key with `prefix`.
fn on_prefix(prefix: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_end(prefix.as_bytes()),
        ..Default::default()
    }
}

/// The range end that covers every key with `prefix` (etcd's GetPrefixRangeEnd).
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

/// One raw bidirectional Watch stream (its own connection).
struct Raw {
    tx: fmpsc::UnboundedSender<pb::WatchRequest>,
    rx: tonic::Streaming<pb::WatchResponse>,
}

impl Raw {
    /// Opens a stream whose first request is `first` (grpc-go servers send
    /// the response headers only with the first response, so the call must
    /// carry a request to complete).
    async fn open(endpoint: &str, first: pb::WatchRequest) -> Raw {
        Raw::open_window(endpoint, first, None).await
    }

    /// `open` with an HTTP/2 flow-control window of `window` bytes (stream
    /// and connection), so an unread stream pushes back on the server soon.
    async fn open_window(endpoint: &str, first: pb::WatchRequest, window: Option<u32>) -> Raw {
        let ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .expect("endpoint")
            .initial_stream_window_size(window)
            .initial_connection_window_size(window);
        let channel = tokio::time::timeout(MSG_TIMEOUT, ep.connect())
            .await
            .expect("connect watch client: timed out")
            .expect("connect watch client");
        let mut client = WatchClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        let (tx, requests) = fmpsc::unbounded();
        tx.unbounded_send(first).expect("queue first request");
        let rx = tokio::time::timeout(MSG_TIMEOUT, client.watch(requests))
            .await
            .expect("Watch call: timed out")
            .expect("Watch call")
            .into_inner();
        Raw { tx, rx }
    }

    /// Opens a stream with one watcher and returns it with the created response.
    async fn open_watch(endpoint: &str, c: pb::WatchCreateRequest) -> (Raw, pb::WatchResponse) {
        let mut raw = Raw::open(endpoint, create_req(c)).await;
        let created = raw.next().await;
        assert!(created.created, "expected a created response: {created:?}");
        (raw, created)
    }

    fn send(&self, r: pb::WatchRequest) {
        self.tx.unbounded_send(r).expect("request stream closed");
    }

    fn create(&self, c: pb::WatchCreateRequest) {
        self.send(create_req(c));
    }

    /// The next response (panics on timeout, error or end of stream).
    async fn next(&mut self) -> pb::WatchResponse {
        match tokio::time::timeout(MSG_TIMEOUT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => panic!("watch stream ended"),
            Ok(Err(s)) => panic!("watch stream failed: {s:?}"),
            Err(_) => panic!("no watch response within {MSG_TIMEOUT:?}"),
        }
    }

    /// The next response within `d`, if any.
    async fn next_within(&mut self, d: Duration) -> Option<pb::WatchResponse> {
        match tokio::time::timeout(d, self.rx.message()).await {
            Ok(Ok(Some(r))) => Some(r),
            Ok(Ok(None)) => panic!("watch stream ended"),
            Ok(Err(s)) => panic!("watch stream failed: {s:?}"),
            Err(_) => None,
        }
    }

    /// Asserts that nothing arrives for `QUIET`.
    async fn expect_quiet(&mut self) {
        if let Some(r) = self.next_within(QUIET).await {
            panic!("expected no watch response, got {r:?}");
        }
    }

    /// Every response until the stream is quiet for `QUIET` (at most `max`).
    async fn drain(&mut self, max: usize) -> Vec<pb::WatchResponse> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.next_within(QUIET).await {
                Some(r) => out.push(r),
                None => break,
            }
        }
        out
    }
}

/// A compact, comparable view of one event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Kv {
    key: Vec<u8>,
    value: Vec<u8>,
    create: i64,
    modr: i64,
    version: i64,
    lease: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
    let put = match e.r#type {
        0 => true,
        1 => false,
        t => panic!("unknown event type {t}"),
    };
    Ev {
        put,
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

fn ev_of_client(e: &etcd_client::Event) -> Ev {
    Ev {
        put: e.event_type() == EventType::Put,
        kv: kv_of_client(e.kv().expect("event without kv")),
        prev: e.prev_kv().map(kv_of_client),
    }
}

/// `Kv` for a live value.
fn live(key: &str, value: &str, create: i64, modr: i64, version: i64) -> Kv {
    Kv {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        create,
        modr,
        version,
        lease: 0,
    }
}

/// A PUT event as etcd sends it.
fn put_ev(key: &str, value: &str, create: i64, modr: i64, version: i64) -> Ev {
    Ev {
        put: true,
        kv: live(key, value, create, modr, version),
        prev: None,
    }
}

/// A DELETE event as etcd sends it: the key and the deletion's revision only.
fn del_ev(key: &str, modr: i64) -> Ev {
    Ev {
        put: false,
        kv: Kv {
            key: key.as_bytes().to_vec(),
            value: Vec::new(),
            create: 0,
            modr,
            version: 0,
            lease: 0,
        },
        prev: None,
    }
}

fn with_prev(mut e: Ev, prev: Kv) -> Ev {
    e.prev = Some(prev);
    e
}

/// Short text for an event, for messages.
fn show(e: &Ev) -> String {
    format!(
        "{} {}@{}",
        if e.put { "PUT" } else { "DELETE" },
        String::from_utf8_lossy(&e.kv.key),
        e.kv.modr
    )
}

fn events(r: &pb::WatchResponse) -> Vec<Ev> {
    r.events.iter().map(ev_of).collect()
}

/// A response with events only (not created/canceled/fragment), for `watch_id`.
#[track_caller]
fn assert_event_response(r: &pb::WatchResponse, watch_id: i64) {
    assert_eq!(r.watch_id, watch_id, "watch_id of {r:?}");
    assert!(!r.created && !r.canceled, "not an event response: {r:?}");
    assert!(!r.events.is_empty(), "no events in {r:?}");
    assert_eq!(r.compact_revision, 0, "compact_revision in {r:?}");
}

// ---------------------------------------------------------------------------
// Helpers: etcd-client
// ---------------------------------------------------------------------------

async fn start() -> (common::Server, Client) {
    let srv = common::Server::start();
    let c = srv.client().await;
    (srv, c)
}

/// Starts the chosen target with extra flags (for both etcd and quorate).
async fn start_with(args: &[&str]) -> (common::Server, Client) {
    let srv = common::Server::start_target(common::Target::from_env(), args);
    let c = srv.client().await;
    (srv, c)
}

async fn put(c: &mut Client, k: &str, v: &str) -> i64 {
    c.put(k, v, None)
        .await
        .expect("put")
        .header()
        .expect("put header")
        .revision()
}

async fn current_rev(c: &mut Client) -> i64 {
    c.get("revision-probe", None)
        .await
        .expect("get")
        .header()
        .expect("range header")
        .revision()
}

async fn ec_next(w: &mut WatchStream) -> etcd_client::WatchResponse {
    match tokio::time::timeout(MSG_TIMEOUT, w.message()).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => panic!("watch stream ended"),
        Ok(Err(e)) => panic!("watch stream failed: {e:?}"),
        Err(_) => panic!("no watch response within {MSG_TIMEOUT:?}"),
    }
}

async fn ec_quiet(w: &mut WatchStream) {
    if let Ok(r) = tokio::time::timeout(QUIET, w.message()).await {
        panic!("expected no watch response, got {r:?}");
    }
}

/// Opens a watch through etcd-client and returns the stream and the
/// created response.
async fn ec_watch(
    c: &mut Client,
    key: &str,
    opts: WatchOptions,
) -> (WatchStream, etcd_client::WatchResponse) {
    let mut w = tokio::time::timeout(MSG_TIMEOUT, c.watch(key, Some(opts)))
        .await
        .expect("watch: timed out")
        .expect("watch");
    let created = ec_next(&mut w).await;
    assert!(created.created(), "expected created: {created:?}");
    assert!(
        !created.canceled(),
        "watch canceled at creation: {created:?}"
    );
    (w, created)
}

fn ec_events(r: &etcd_client::WatchResponse) -> Vec<Ev> {
    r.events().iter().map(ev_of_client).collect()
}

// ---------------------------------------------------------------------------
// Events: contents, ranges, prev_kv, filters
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_key_events_carry_type_kv_and_revisions() {
    let (_srv, mut c) = start().await;
    let r0 = put(&mut c, "other", "x").await;
    let (mut w, created) = ec_watch(&mut c, "k", WatchOptions::new()).await;
    assert_eq!(created.watch_id(), 0, "first server-chosen ID");
    let h = created.header().expect("created header");
    assert_eq!(
        h.revision(),
        r0,
        "created header revision = current revision"
    );
    assert_ne!(h.cluster_id(), 0, "cluster_id");
    assert_ne!(h.member_id(), 0, "member_id");
    assert!(h.raft_term() >= 1, "raft_term");
    assert_eq!(created.compact_revision(), 0);
    assert_eq!(created.cancel_reason(), "");
    assert!(created.events().is_empty());

    let r1 = put(&mut c, "k", "v1").await;
    put(&mut c, "other", "y").await; // not watched
    let r2 = put(&mut c, "k", "v2").await;
    let r3 = c.delete("k", None).await.expect("delete");
    let r3 = r3.header().expect("delete header").revision();
    let r4 = put(&mut c, "k", "v3").await;

    let want = [
        (r1, put_ev("k", "v1", r1, r1, 1)),
        (r2, put_ev("k", "v2", r1, r2, 2)),
        (r3, del_ev("k", r3)),
        (r4, put_ev("k", "v3", r4, r4, 1)),
    ];
    for (rev, ev) in want {
        let resp = ec_next(&mut w).await;
        assert_eq!(resp.watch_id(), 0);
        assert!(!resp.created() && !resp.canceled(), "{resp:?}");
        assert_eq!(ec_events(&resp), vec![ev], "event at revision {rev}");
        let h = resp.header().expect("event header");
        assert_eq!(h.revision(), rev, "event response header revision");
        assert_ne!(h.member_id(), 0);
    }
    ec_quiet(&mut w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_prefixes_from_key_and_all_keys() {
    let (srv, mut c) = start().await;
    let mut raw = Raw::open(
        &srv.endpoint,
        create_req(pb::WatchCreateRequest {
            key: b"b".to_vec(),
            range_end: b"d".to_vec(),
            ..Default::default()
        }),
    )
    .await;
    raw.create(on_prefix("p/"));
    raw.create(pb::WatchCreateRequest {
        key: b"m".to_vec(),
        range_end: vec![0], // from key
        ..Default::default()
    });
    raw.create(pb::WatchCreateRequest {
        key: vec![0],
        range_end: vec![0], // all keys
        ..Default::default()
    });
    raw.create(on_key("c")); // a second watcher on a key the range covers
    for id in 0..5 {
        let r = raw.next().await;
        assert!(r.created && !r.canceled, "{r:?}");
        assert_eq!(r.watch_id, id, "server-chosen IDs count up per stream");
    }
    // Also through etcd-client's option builders.
    let (mut w_prefix, _) = ec_watch(&mut c, "p/", WatchOptions::new().with_prefix()).await;
    let (mut w_range, _) = ec_watch(&mut c, "b", WatchOptions::new().with_range("d")).await;
    let (mut w_from, _) = ec_watch(&mut c, "m", WatchOptions::new().with_from_key()).await;
    let (mut w_all, _) = ec_watch(&mut c, "", WatchOptions::new().with_all_keys()).await;

    let keys = ["a", "b", "bz", "c", "d", "m", "p", "p/", "p/x", "p0", "z"];
    for k in keys {
        put(&mut c, k, "v").await;
    }
    let resps = raw.drain(100).await;
    let mut got: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in &resps {
        assert!(!r.created && !r.canceled, "{r:?}");
        assert_eq!(r.events.len(), 1, "one put per revision: {r:?}");
        for e in &r.events {
            got.entry(r.watch_id)
                .or_default()
                .push(String::from_utf8_lossy(&e.kv.as_ref().unwrap().key).into_owned());
        }
    }
    let want = |ks: &[&str]| ks.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(got.get(&0), Some(&want(&["b", "bz", "c"])), "[b, d)");
    assert_eq!(got.get(&1), Some(&want(&["p/", "p/x"])), "prefix p/");
    assert_eq!(
        got.get(&2),
        Some(&want(&["m", "p", "p/", "p/x", "p0", "z"])),
        "from key m"
    );
    assert_eq!(got.get(&3), Some(&want(&keys)), "all keys");
    assert_eq!(got.get(&4), Some(&want(&["c"])), "key c");
    assert_eq!(got.len(), 5, "{got:?}");

    for (w, want_keys) in [
        (&mut w_prefix, want(&["p/", "p/x"])),
        (&mut w_range, want(&["b", "bz", "c"])),
        (&mut w_from, want(&["m", "p", "p/", "p/x", "p0", "z"])),
        (&mut w_all, want(&keys)),
    ] {
        let mut seen = Vec::new();
        while seen.len() < want_keys.len() {
            for e in ec_events(&ec_next(w).await) {
                seen.push(String::from_utf8_lossy(&e.kv.key).into_owned());
            }
        }
        assert_eq!(seen, want_keys);
        ec_quiet(w).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_key_watches_the_nul_key() {
    // etcd turns an empty key into "\0": a watch on "" with no range end
    // watches the key "\0".
    let (srv, mut c) = start().await;
    let (mut raw, _) = Raw::open_watch(&srv.endpoint, on_key("")).await;
    put(&mut c, "a", "v").await;
    let r = c.put("\0", "nul", None).await.expect("put \\0");
    let rev = r.header().unwrap().revision();
    let resp = raw.next().await;
    assert_event_response(&resp, 0);
    assert_eq!(events(&resp), vec![put_ev("\0", "nul", rev, rev, 1)]);
    raw.expect_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_range_is_refused_at_creation() {
    // etcd: key >= range_end → created, canceled, watch_id -1,
    // cancel_reason "mvcc: watcher range is empty"; the stream stays usable.
    let (srv, mut c) = start().await;
    let rev = current_rev(&mut c).await;
    let mut raw = Raw::open(
        &srv.endpoint,
        create_req(pb::WatchCreateRequest {
            key: b"b".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        }),
    )
    .await;
    raw.create(pb::WatchCreateRequest {
        key: b"b".to_vec(),
        range_end: b"b".to_vec(),
        ..Default::default()
    });
    for _ in 0..2 {
        let r = raw.next().await;
        assert_eq!(r.watch_id, -1, "{r:?}");
        assert!(r.created && r.canceled, "{r:?}");
        assert_eq!(r.cancel_reason, "mvcc: watcher range is empty", "{r:?}");
        assert_eq!(r.compact_revision, 0);
        assert_eq!(r.header.map(|h| h.revision), Some(rev));
    }
    raw.create(on_key("b"));
    let r = raw.next().await;
    assert!(r.created && !r.canceled, "{r:?}");
    assert_eq!(r.watch_id, 0, "a refused watch takes no ID");
    put(&mut c, "b", "v").await;
    assert_event_response(&raw.next().await, 0);
    raw.expect_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prev_kv_on_put_and_delete() {
    let (_srv, mut c) = start().await;
    let (mut w, _) = ec_watch(&mut c, "k", WatchOptions::new().with_prev_key()).await;
    let r1 = put(&mut c, "k", "v1").await;
    let r2 = put(&mut c, "k", "v2").await;
    let r3 = c
        .delete("k", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let r4 = put(&mut c, "k", "v3").await;
    let want = [
        put_ev("k", "v1", r1, r1, 1),
        with_prev(put_ev("k", "v2", r1, r2, 2), live("k", "v1", r1, r1, 1)),
        with_prev(del_ev("k", r3), live("k", "v2", r1, r2, 2)),
        put_ev("k", "v3", r4, r4, 1), // created anew: no prev_kv
    ];
    for ev in want {
        assert_eq!(ec_events(&ec_next(&mut w).await), vec![ev]);
    }
    ec_quiet(&mut w).await;

    // A delete-range: every DELETE carries its own key's previous value.
    let (mut w, _) = ec_watch(
        &mut c,
        "d/",
        WatchOptions::new().with_prefix().with_prev_key(),
    )
    .await;
    let a = put(&mut c, "d/a", "1").await;
    let b = put(&mut c, "d/b", "2").await;
    let d = c
        .delete("d/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    ec_next(&mut w).await;
    ec_next(&mut w).await;
    let resp = ec_next(&mut w).await;
    assert_eq!(
        ec_events(&resp),
        vec![
            with_prev(del_ev("d/a", d), live("d/a", "1", a, a, 1)),
            with_prev(del_ev("d/b", d), live("d/b", "2", b, b, 1)),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noput_and_nodelete_filters() {
    let (_srv, mut c) = start().await;
    let (mut no_put, _) = ec_watch(
        &mut c,
        "f/",
        WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoPut]),
    )
    .await;
    let (mut no_delete, _) = ec_watch(
        &mut c,
        "f/",
        WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoDelete]),
    )
    .await;
    let (mut neither, _) = ec_watch(
        &mut c,
        "f/",
        WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoPut, WatchFilterType::NoDelete]),
    )
    .await;
    let r1 = put(&mut c, "f/a", "1").await;
    let r2 = put(&mut c, "f/b", "2").await;
    let r3 = c
        .delete("f/a", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let r4 = put(&mut c, "f/a", "3").await;
    let r5 = c
        .delete("f/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    assert_eq!(
        ec_events(&ec_next(&mut no_put).await),
        vec![del_ev("f/a", r3)]
    );
    assert_eq!(
        ec_events(&ec_next(&mut no_put).await),
        vec![del_ev("f/a", r5), del_ev("f/b", r5)]
    );
    ec_quiet(&mut no_put).await;

    for ev in [
        put_ev("f/a", "1", r1, r1, 1),
        put_ev("f/b", "2", r2, r2, 1),
        put_ev("f/a", "3", r4, r4, 1),
    ] {
        assert_eq!(ec_events(&ec_next(&mut no_delete).await), vec![ev]);
    }
    ec_quiet(&mut no_delete).await;
    ec_quiet(&mut neither).await;
}

// ---------------------------------------------------------------------------
// History: start_revision, compaction
// ---------------------------------------------------------------------------

/// Writes a small history under `h/` and returns the expected events of a
/// prefix watch with prev_kv, by revision.
async fn write_history(c: &mut Client) -> Vec<(i64, Vec<Ev>)> {
    let r1 = put(c, "h/a", "1").await;
    let r2 = put(c, "h/b", "1").await;
    let r3 = put(c, "h/a", "2").await;
    let r4 = c
        .delete("h/b", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let txn = Txn::new().and_then([TxnOp::put("h/d", "1", None), TxnOp::put("h/c", "1", None)]);
    let r5 = c.txn(txn).await.unwrap().header().unwrap().revision();
    let r6 = c
        .delete("h/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let r7 = put(c, "h/a", "3").await;
    vec![
        (r1, vec![put_ev("h/a", "1", r1, r1, 1)]),
        (r2, vec![put_ev("h/b", "1", r2, r2, 1)]),
        (
            r3,
            vec![with_prev(
                put_ev("h/a", "2", r1, r3, 2),
                live("h/a", "1", r1, r1, 1),
            )],
        ),
        (
            r4,
            vec![with_prev(del_ev("h/b", r4), live("h/b", "1", r2, r2, 1))],
        ),
        (
            r5,
            // In the txn's op order (sub-revisions), not key order.
            vec![put_ev("h/d", "1", r5, r5, 1), put_ev("h/c", "1", r5, r5, 1)],
        ),
        (
            r6,
            // A delete-range deletes in key order.
            vec![
                with_prev(del_ev("h/a", r6), live("h/a", "2", r1, r3, 2)),
                with_prev(del_ev("h/c", r6), live("h/c", "1", r5, r5, 1)),
                with_prev(del_ev("h/d", r6), live("h/d", "1", r5, r5, 1)),
            ],
        ),
        (r7, vec![put_ev("h/a", "3", r7, r7, 1)]),
    ]
}

/// Reads responses until `n` events arrived; checks that no revision is
/// split over two responses. Returns events grouped by revision.
async fn read_events(raw: &mut Raw, watch_id: i64, n: usize) -> Vec<(i64, Vec<Ev>)> {
    let mut out: Vec<(i64, Vec<Ev>)> = Vec::new();
    let mut count = 0;
    while count < n {
        let r = raw.next().await;
        assert_event_response(&r, watch_id);
        let mut revs_here = BTreeSet::new();
        for e in events(&r) {
            let rev = e.kv.modr;
            if revs_here.insert(rev) {
                assert!(
                    out.last().is_none_or(|(last, _)| *last < rev),
                    "revision {rev} out of order or split over responses: {out:?} then {r:?}"
                );
                out.push((rev, Vec::new()));
            }
            out.last_mut().unwrap().1.push(e);
            count += 1;
        }
        assert!(
            r.header.map(|h| h.revision).unwrap_or(0) >= *revs_here.last().unwrap(),
            "response header revision below its events: {r:?}"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_revision_replays_history_including_deleted_keys() {
    let (srv, mut c) = start().await;
    let history = write_history(&mut c).await;
    let first = history[0].0;
    let total: usize = history.iter().map(|(_, e)| e.len()).sum();

    // From the first revision: everything, then live events.
    let (mut raw, created) = Raw::open_watch(
        &srv.endpoint,
        pb::WatchCreateRequest {
            start_revision: first,
            prev_kv: true,
            ..on_prefix("h/")
        },
    )
    .await;
    assert_eq!(created.watch_id, 0);
    let got = read_events(&mut raw, 0, total).await;
    assert_eq!(got, history);
    let r8 = put(&mut c, "h/e", "1").await;
    let got = read_events(&mut raw, 0, 1).await;
    assert_eq!(got, vec![(r8, vec![put_ev("h/e", "1", r8, r8, 1)])]);
    raw.expect_quiet().await;

    // From the middle (the revision of a delete), without prev_kv.
    let mid = history[3].0;
    let (mut raw, _) = Raw::open_watch(
        &srv.endpoint,
        pb::WatchCreateRequest {
            start_revision: mid,
            ..on_prefix("h/")
        },
    )
    .await;
    let want: Vec<(i64, Vec<Ev>)> = history[3..]
        .iter()
        .cloned()
        .chain([(r8, vec![put_ev("h/e", "1", r8, r8, 1)])])
        .map(|(r, evs)| {
            (
                r,
                evs.into_iter()
                    .map(|mut e| {
                        e.prev = None;
                        e
                    })
                    .collect(),
            )
        })
        .collect();
    let n: usize = want.iter().map(|(_, e)| e.len()).sum();
    assert_eq!(read_events(&mut raw, 0, n).await, want);
    raw.expect_quiet().await;

    // A key that is deleted now: its whole life replays.
    let (mut raw, _) = Raw::open_watch(
        &srv.endpoint,
        pb::WatchCreateRequest {
            start_revision: 1,
            ..on_key("h/b")
        },
    )
    .await;
    let (r2, r4) = (history[1].0, history[3].0);
    assert_eq!(
        read_events(&mut raw, 0, 2).await,
        vec![
            (r2, vec![put_ev("h/b", "1", r2, r2, 1)]),
            (r4, vec![del_ev("h/b", r4)]),
        ]
    );
    raw.expect_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_start_revision_skips_earlier_events() {
    let (srv, mut c) = start().await;
    let now = current_rev(&mut c).await;
    let (mut raw, created) = Raw::open_watch(
        &srv.endpoint,
        pb::WatchCreateRequest {
            start_revision: now + 3,
            ..on_key("k")
        },
    )
    .await;
    assert_eq!(created.header.map(|h| h.revision), Some(now));
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(put(&mut c, "k", &format!("v{i}")).await);
    }
    assert_eq!(revs[0], now + 1);
    let got = read_events(&mut raw, 0, 3).await;
    let got_revs: Vec<i64> = got.iter().map(|(r, _)| *r).collect();
    assert_eq!(got_revs, revs[2..].to_vec());
    raw.expect_quiet().await;
}

/// Collects mismatches so that one run reports every difference from etcd.
#[derive(Default)]
struct Diffs(Vec<String>);

impl Diffs {
    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.0
                .push(format!("{what}: got {got:?}, etcd sends {want:?}"));
        }
    }

    #[track_caller]
    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "differences from etcd:\n{}",
            self.0.join("\n")
        );
    }
}

/// (watch_id, created, canceled, compact_revision, cancel_reason, header revision, events)
type Fields = (i64, bool, bool, i64, String, i64, usize);

fn fields(r: &pb::WatchResponse) -> Fields {
    (
        r.watch_id,
        r.created,
        r.canceled,
        r.compact_revision,
        r.cancel_reason.clone(),
        r.header.map_or(-99, |h| h.revision),
        r.events.len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_start_revision_is_created_then_canceled() {
    let (srv, mut c) = start().await;
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(put(&mut c, &format!("k{i}"), "v").await);
    }
    let compact = revs[2];
    c.compact(compact, None).await.expect("compact");
    let now = current_rev(&mut c).await;
    let mut d = Diffs::default();

    // etcd 3.4.23 sends two responses: created (watch_id 0), then canceled
    // with compact_revision set, an empty cancel_reason and a header whose
    // revision is 0 (cluster and member IDs are set).
    let mut raw = Raw::open(
        &srv.endpoint,
        create_req(pb::WatchCreateRequest {
            start_revision: compact - 1,
            ..on_prefix("k")
        }),
    )
    .await;
    let created = raw.next().await;
    d.eq(
        "created response (watch_id, created, canceled, compact_revision, cancel_reason, header revision, events)",
        fields(&created),
        (0, true, false, 0, String::new(), now, 0),
    );
    let canceled = raw.next().await;
    let h = canceled.header.expect("canceled header");
    assert_ne!(h.member_id, 0, "{canceled:?}");
    assert_ne!(h.cluster_id, 0, "{canceled:?}");
    d.eq(
        "canceled response (watch_id, created, canceled, compact_revision, cancel_reason, header revision, events)",
        fields(&canceled),
        (0, false, true, compact, String::new(), 0, 0),
    );
    raw.expect_quiet().await;

    // The canceled watcher had taken ID 0: the next server-chosen ID is 1.
    raw.create(on_key("k4"));
    let r = raw.next().await;
    assert!(r.created && !r.canceled, "{r:?}");
    d.eq("server-chosen ID after a compacted watch", r.watch_id, 1);
    let next_id = r.watch_id + 1;

    // Watching from the compact revision itself works: it is still readable.
    raw.create(pb::WatchCreateRequest {
        start_revision: compact,
        ..on_prefix("k")
    });
    let r = raw.next().await;
    assert!(r.created && !r.canceled, "{r:?}");
    assert_eq!(r.watch_id, next_id);
    let got = read_events(&mut raw, next_id, 3).await;
    let got_revs: Vec<i64> = got.iter().map(|(r, _)| *r).collect();
    assert_eq!(got_revs, revs[2..].to_vec());

    // Through etcd-client: the same two responses.
    let mut w = c
        .watch("k", Some(WatchOptions::new().with_start_revision(1)))
        .await
        .expect("watch");
    let created = ec_next(&mut w).await;
    assert!(created.created() && !created.canceled());
    let canceled = ec_next(&mut w).await;
    assert!(canceled.canceled(), "{canceled:?}");
    assert_eq!(canceled.compact_revision(), compact);
    assert_eq!(canceled.watch_id(), created.watch_id());
    d.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prev_kv_older_than_the_compact_revision_is_omitted() {
    // etcd reads prev_kv at mod_revision - 1; below the compact revision
    // that read fails and the event comes without prev_kv.
    let (srv, mut c) = start().await;
    let r1 = put(&mut c, "pk", "1").await;
    let r2 = put(&mut c, "pk", "2").await;
    c.compact(r2, None).await.expect("compact");
    let r3 = put(&mut c, "pk", "3").await;
    let (mut raw, _) = Raw::open_watch(
        &srv.endpoint,
        pb::WatchCreateRequest {
            start_revision: r2,
            prev_kv: true,
            ..on_key("pk")
        },
    )
    .await;
    assert_eq!(
        read_events(&mut raw, 0, 2).await,
        vec![
            (r2, vec![put_ev("pk", "2", r1, r2, 2)]),
            (
                r3,
                vec![with_prev(
                    put_ev("pk", "3", r1, r3, 3),
                    live("pk", "2", r1, r2, 2)
                )]
            ),
        ]
    );
}

// ---------------------------------------------------------------------------
// Watch IDs and cancel
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_client_chosen_watch_ids() {
    let (srv, mut c) = start().await;
    let rev = current_rev(&mut c).await;
    let mut d = Diffs::default();
    let mut raw = Raw::open(&srv.endpoint, create_req(on_key("k"))).await;
    raw.create(on_key("k"));
    raw.create(on_key("k"));
    for id in 0..3 {
        let r = raw.next().await;
        assert_eq!(
            (r.watch_id, r.created, r.canceled),
            (id, true, false),
            "{r:?}"
        );
        assert_eq!(r.header.map(|h| h.revision), Some(rev));
    }
    let mut live_ids = vec![0, 1, 2];
    // Client-chosen.
    raw.create(pb::WatchCreateRequest {
        watch_id: 100,
        ..on_key("k")
    });
    let r = raw.next().await;
    assert_eq!(
        (r.watch_id, r.created, r.canceled),
        (100, true, false),
        "{r:?}"
    );
    live_ids.push(100);
    // etcd: a client-chosen ID does not move the server's counter.
    raw.create(on_key("k"));
    let r = raw.next().await;
    assert!(r.created && !r.canceled, "{r:?}");
    d.eq("server-chosen ID after client-chosen 100", r.watch_id, 3);
    live_ids.push(r.watch_id);
    // Cancel 1: answered with canceled=true and the ID.
    raw.send(cancel_req(1));
    let r = raw.next().await;
    assert_eq!(
        (r.watch_id, r.created, r.canceled, r.cancel_reason.as_str()),
        (1, false, true, ""),
        "{r:?}"
    );
    assert_eq!(r.header.map(|h| h.revision), Some(rev));
    live_ids.retain(|&i| i != 1);
    // etcd never reuses a server-chosen ID on a stream: next is 4.
    raw.create(on_key("k"));
    let r = raw.next().await;
    d.eq(
        "server-chosen ID after 0..=3 and cancel of 1",
        r.watch_id,
        4,
    );
    live_ids.push(r.watch_id);
    // A client may take a freed ID...
    raw.create(pb::WatchCreateRequest {
        watch_id: 1,
        ..on_key("k")
    });
    let r = raw.next().await;
    assert_eq!(
        (r.watch_id, r.created, r.canceled),
        (1, true, false),
        "{r:?}"
    );
    live_ids.push(1);
    // ...but not one in use: etcd answers created+canceled with watch_id -1.
    raw.create(pb::WatchCreateRequest {
        watch_id: 2,
        ..on_key("k")
    });
    let r = raw.next().await;
    assert_eq!(
        (
            r.watch_id,
            r.created,
            r.canceled,
            r.cancel_reason.as_str(),
            r.compact_revision
        ),
        (
            -1,
            true,
            true,
            "mvcc: duplicate watch ID provided on the WatchStream",
            0
        ),
        "duplicate client-chosen ID: {r:?}"
    );
    assert_eq!(r.header.map(|h| h.revision), Some(rev));
    // Cancel of an unknown ID: no answer at all; the stream stays usable.
    raw.send(cancel_req(999));
    raw.expect_quiet().await;

    // One put: each live watcher gets it once, in its own response.
    let wr = put(&mut c, "k", "v").await;
    let mut ids = Vec::new();
    for r in raw.drain(20).await {
        assert!(!r.created && !r.canceled, "{r:?}");
        assert_eq!(events(&r), vec![put_ev("k", "v", wr, wr, 1)]);
        ids.push(r.watch_id);
    }
    ids.sort();
    live_ids.sort();
    assert_eq!(ids, live_ids);

    // A stream that starts with client-chosen 1: server-chosen IDs fill in
    // from 0, skipping IDs in use (etcd: 0, then 2).
    let mut raw = Raw::open(
        &srv.endpoint,
        create_req(pb::WatchCreateRequest {
            watch_id: 1,
            ..on_key("k")
        }),
    )
    .await;
    assert_eq!(raw.next().await.watch_id, 1);
    raw.create(on_key("k"));
    raw.create(on_key("k"));
    let a = raw.next().await.watch_id;
    let b = raw.next().await.watch_id;
    d.eq("server-chosen IDs after client-chosen 1", (a, b), (0, 2));

    // etcd-client's with_watch_id.
    let (mut w, created) = ec_watch(&mut c, "k", WatchOptions::new().with_watch_id(7)).await;
    assert_eq!(created.watch_id(), 7);
    w.watch("k", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    let dup = ec_next(&mut w).await;
    assert_eq!(dup.watch_id(), -1, "{dup:?}");
    assert!(dup.created() && dup.canceled(), "{dup:?}");
    assert_eq!(
        dup.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    d.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_events_and_the_stream_stays_usable() {
    let (_srv, mut c) = start().await;
    let (mut w, created) = ec_watch(&mut c, "k", WatchOptions::new()).await;
    let id = created.watch_id();
    let r = put(&mut c, "k", "1").await;
    assert_eq!(
        ec_events(&ec_next(&mut w).await),
        vec![put_ev("k", "1", r, r, 1)]
    );
    w.cancel(id).await.expect("cancel");
    let resp = ec_next(&mut w).await;
    assert!(resp.canceled() && !resp.created(), "{resp:?}");
    assert_eq!(resp.watch_id(), id);
    assert_eq!(resp.compact_revision(), 0);
    put(&mut c, "k", "2").await;
    ec_quiet(&mut w).await;
    // Cancel it again: nothing.
    w.cancel(id).await.expect("cancel");
    ec_quiet(&mut w).await;
    // New watcher on the same stream.
    w.watch("k", None).await.expect("watch");
    let created = ec_next(&mut w).await;
    assert!(created.created() && !created.canceled(), "{created:?}");
    assert_eq!(created.watch_id(), id + 1);
    let r = put(&mut c, "k", "3").await;
    let resp = ec_next(&mut w).await;
    assert_eq!(resp.watch_id(), id + 1);
    assert_eq!(ec_events(&resp), vec![put_ev("k", "3", r - 2, r, 3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_events_after_the_canceled_response_under_load() {
    let (srv, mut c) = start().await;
    let (mut raw, _) = Raw::open_watch(&srv.endpoint, on_key("busy")).await;
    raw.create(on_key("busy"));
    assert_eq!(raw.next().await.watch_id, 1);
    let ep = srv.endpoint.clone();
    let writer = tokio::spawn(async move {
        let mut c = Client::connect([ep.as_str()], None).await.expect("connect");
        let mut last = 0;
        for i in 0..300 {
            last = put(&mut c, "busy", &i.to_string()).await;
        }
        last
    });
    // Cancel 0 once some events arrived.
    let mut seen = 0;
    while seen < 20 {
        let r = raw.next().await;
        seen += r.events.len();
    }
    raw.send(cancel_req(0));
    let mut canceled = false;
    let mut last1 = 0;
    let end = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("writer")
        .expect("writer task");
    let deadline = Instant::now() + Duration::from_secs(30);
    while last1 < end {
        assert!(
            Instant::now() < deadline,
            "watcher 1 stuck at {last1} < {end}"
        );
        let r = raw.next().await;
        if r.canceled {
            assert_eq!((r.watch_id, r.created), (0, false), "{r:?}");
            assert!(!canceled, "canceled twice");
            canceled = true;
            continue;
        }
        if r.watch_id == 0 {
            assert!(
                !canceled,
                "event for watcher 0 after its canceled response: {r:?}"
            );
        } else {
            last1 = r
                .events
                .last()
                .map_or(last1, |e| e.kv.as_ref().unwrap().mod_revision);
        }
    }
    assert!(canceled, "no canceled response");
    let _ = put(&mut c, "busy", "after").await;
    let r = raw.next().await;
    assert_eq!(r.watch_id, 1, "{r:?}");
    raw.expect_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_response_header_is_the_event_revision_for_a_live_watcher() {
    // etcd answers a watcher that keeps up with the header revision of the
    // write that produced the events, even while other keys are written.
    let (srv, mut c) = start().await;
    let (mut raw, _) = Raw::open_watch(&srv.endpoint, on_key("a")).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut noise = Vec::new();
    for w in 0..2 {
        let ep = srv.endpoint.clone();
        let stop = stop.clone();
        noise.push(tokio::spawn(async move {
            let mut c = Client::connect([ep.as_str()], None).await.expect("connect");
            for i in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                put(&mut c, &format!("b{w}"), &i.to_string()).await;
            }
        }));
    }
    let mut mismatches = Vec::new();
    for i in 0..50 {
        let r = put(&mut c, "a", &i.to_string()).await;
        let resp = raw.next().await;
        assert_event_response(&resp, 0);
        let ev_rev = resp.events[0].kv.as_ref().unwrap().mod_revision;
        assert_eq!(ev_rev, r);
        let h = resp.header.map_or(0, |h| h.revision);
        if h != ev_rev {
            mismatches.push((ev_rev, h));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for n in noise {
        let _ = n.await;
    }
    assert!(
        mismatches.is_empty(),
        "{} of 50 responses had a header revision other than their event's \
         (event revision, header revision): {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_watcher_gets_one_response_per_revision() {
    // etcd notifies a watcher that keeps up once per write: each response
    // holds one revision's events and its header carries that revision,
    // even when writes come in faster than one at a time.
    const PER_WRITER: usize = 300;
    let (srv, mut c) = start().await;
    let start_rev = current_rev(&mut c).await;
    let (mut raw, _) = Raw::open_watch(&srv.endpoint, on_prefix("a/")).await;
    let mut writers = Vec::new();
    for w in 0..3 {
        let ep = srv.endpoint.clone();
        writers.push(tokio::spawn(async move {
            let mut c = Client::connect([ep.as_str()], None).await.expect("connect");
            for i in 0..PER_WRITER {
                put(&mut c, &format!("a/{w}"), &i.to_string()).await;
            }
        }));
    }
    let end = start_rev + 3 * PER_WRITER as i64;
    let mut last = start_rev;
    let mut multi = Vec::new();
    let mut responses = 0;
    while last < end {
        let r = raw.next().await;
        assert_event_response(&r, 0);
        responses += 1;
        let revs: BTreeSet<i64> = r
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect();
        let h = r.header.map_or(0, |h| h.revision);
        if revs.len() > 1 || revs.first() != Some(&h) {
            multi.push((revs.iter().copied().collect::<Vec<_>>(), h));
        }
        for rev in revs {
            assert_eq!(rev, last + 1, "gap or disorder");
            last = rev;
        }
    }
    for w in writers {
        w.await.expect("writer");
    }
    assert!(
        multi.is_empty(),
        "{} of {responses} responses did not hold exactly one revision with that \
         revision in the header ((event revisions, header revision), first 5): {:?}",
        multi.len(),
        &multi[..multi.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_request_stream_keeps_delivering() {
    // etcd: the client closing its sending side (no more requests) does not
    // end the watch; events keep coming until the RPC is canceled.
    let (srv, mut c) = start().await;
    let (mut raw, _) = Raw::open_watch(&srv.endpoint, on_key("h")).await;
    raw.tx.close_channel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = put(&mut c, "h", "v").await;
    match tokio::time::timeout(MSG_TIMEOUT, raw.rx.message()).await {
        Ok(Ok(Some(resp))) => {
            assert_event_response(&resp, 0);
            assert_eq!(events(&resp), vec![put_ev("h", "v", r, r, 1)]);
        }
        other => panic!(
            "after the client half-closed, expected the event at revision {r}, got {other:?}"
        ),
    }
}

// ---------------------------------------------------------------------------
// Atomicity per revision
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_revision_arrives_in_one_response() {
    let (srv, mut c) = start().await;
    let mut raw = Raw::open(&srv.endpoint, create_req(on_prefix("t/"))).await;
    raw.create(pb::WatchCreateRequest {
        key: b"t/a".to_vec(),
        range_end: b"t/c".to_vec(),
        prev_kv: true,
        ..Default::default()
    });
    for id in 0..2 {
        assert_eq!(raw.next().await.watch_id, id);
    }
    // A txn writing several keys (op order c, a, b).
    let txn = Txn::new().and_then([
        TxnOp::put("t/c", "1", None),
        TxnOp::put("t/a", "1", None),
        TxnOp::put("t/b", "1", None),
    ]);
    let r1 = c.txn(txn).await.unwrap().header().unwrap().revision();
    // A txn mixing a put and a delete.
    let txn = Txn::new().and_then([TxnOp::put("t/x", "1", None), TxnOp::delete("t/a", None)]);
    let r2 = c.txn(txn).await.unwrap().header().unwrap().revision();
    // A delete-range of several keys.
    let r3 = c
        .delete("t/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let mut by_id: BTreeMap<i64, Vec<Vec<Ev>>> = BTreeMap::new();
    for r in raw.drain(20).await {
        assert!(!r.created && !r.canceled && !r.fragment, "{r:?}");
        by_id.entry(r.watch_id).or_default().push(events(&r));
    }
    assert_eq!(
        by_id.get(&0),
        Some(&vec![
            vec![
                put_ev("t/c", "1", r1, r1, 1),
                put_ev("t/a", "1", r1, r1, 1),
                put_ev("t/b", "1", r1, r1, 1),
            ],
            vec![put_ev("t/x", "1", r2, r2, 1), del_ev("t/a", r2)],
            vec![del_ev("t/b", r3), del_ev("t/c", r3), del_ev("t/x", r3),],
        ]),
        "prefix watcher: one response per revision, ops in order"
    );
    assert_eq!(
        by_id.get(&1),
        Some(&vec![
            vec![put_ev("t/a", "1", r1, r1, 1), put_ev("t/b", "1", r1, r1, 1),],
            vec![with_prev(del_ev("t/a", r2), live("t/a", "1", r1, r1, 1))],
            vec![with_prev(del_ev("t/b", r3), live("t/b", "1", r1, r1, 1))],
        ]),
        "range watcher: only its keys, one response per revision"
    );
    assert_eq!(by_id.len(), 2);
}

// ---------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------

const PROGRESS_FLAG: &str = "--experimental-watch-progress-notify-interval";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_with_a_short_interval() {
    if common::Target::from_env() == common::Target::Quorate {
        let help = std::process::Command::new(common::quorate_bin())
            .arg("--help")
            .output()
            .expect("quorate --help");
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.contains(PROGRESS_FLAG),
            "quorate does not accept {PROGRESS_FLAG} (etcd does; the server's \
             watch_progress_notify_interval_ms has no flag)"
        );
    }
    let (srv, mut c) = start_with(&[PROGRESS_FLAG, "500ms"]).await;
    let rev = put(&mut c, "other", "x").await;
    let mut raw = Raw::open(
        &srv.endpoint,
        create_req(pb::WatchCreateRequest {
            progress_notify: true,
            ..on_key("idle")
        }),
    )
    .await;
    raw.create(on_key("idle")); // no progress_notify
    raw.create(pb::WatchCreateRequest {
        progress_notify: true,
        ..on_key("busy")
    });
    for id in 0..3 {
        assert_eq!(raw.next().await.watch_id, id);
    }
    // Within 3 s: several notifications for 0 and 2, none for 1.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    while Instant::now() < deadline {
        let Some(r) = raw.next_within(Duration::from_millis(200)).await else {
            continue;
        };
        assert!(r.events.is_empty(), "{r:?}");
        assert!(!r.created && !r.canceled, "{r:?}");
        assert_eq!(
            r.header.map(|h| h.revision),
            Some(rev),
            "progress header revision: {r:?}"
        );
        *counts.entry(r.watch_id).or_default() += 1;
    }
    assert!(counts.get(&0).copied().unwrap_or(0) >= 2, "{counts:?}");
    assert!(counts.get(&2).copied().unwrap_or(0) >= 2, "{counts:?}");
    assert_eq!(counts.get(&1), None, "no progress_notify asked: {counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");

    // After an event, notifications carry the new revision (one already
    // in flight may still carry the old one).
    let r2 = put(&mut c, "busy", "1").await;
    let mut seen_event = false;
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    let mut at_r2: BTreeMap<i64, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let Some(r) = raw.next_within(Duration::from_millis(200)).await else {
            continue;
        };
        if !r.events.is_empty() {
            assert_eq!(r.watch_id, 2, "{r:?}");
            seen_event = true;
            continue;
        }
        let hrev = r.header.map(|h| h.revision).unwrap_or(0);
        assert!(hrev == rev || hrev == r2, "progress header revision: {r:?}");
        let prev = last.insert(r.watch_id, hrev).unwrap_or(0);
        assert!(hrev >= prev, "progress revision went back: {r:?}");
        if hrev == r2 {
            *at_r2.entry(r.watch_id).or_default() += 1;
        }
    }
    assert!(seen_event, "the event on busy");
    assert!(at_r2.get(&0).copied().unwrap_or(0) >= 2, "{at_r2:?}");
    assert!(at_r2.get(&2).copied().unwrap_or(0) >= 2, "{at_r2:?}");
    assert_eq!(at_r2.get(&1), None, "{at_r2:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_request_reports_the_current_revision() {
    let (srv, mut c) = start().await;
    let (mut w, _) = ec_watch(&mut c, "a", WatchOptions::new()).await;
    w.watch("b", None).await.unwrap();
    assert!(ec_next(&mut w).await.created());
    put(&mut c, "x", "1").await;
    let rev = put(&mut c, "x", "2").await;
    w.request_progress().await.expect("request_progress");
    let r = ec_next(&mut w).await;
    // etcd 3.4.23: watch_id -1 (not tied to a watcher), no events.
    assert_eq!(r.watch_id(), -1, "{r:?}");
    assert!(!r.created() && !r.canceled(), "{r:?}");
    assert!(r.events().is_empty(), "{r:?}");
    assert_eq!(r.compact_revision(), 0);
    let h = r.header().expect("progress header");
    assert_eq!(h.revision(), rev, "progress header revision");
    assert_ne!(h.member_id(), 0);
    ec_quiet(&mut w).await;

    // Also answered on a stream with no watchers.
    let mut raw = Raw::open(&srv.endpoint, progress_req()).await;
    let r = raw.next().await;
    assert_eq!(r.watch_id, -1, "{r:?}");
    assert_eq!(r.header.map(|h| h.revision), Some(rev));
    raw.expect_quiet().await;
}

// ---------------------------------------------------------------------------
// Fragments
// ---------------------------------------------------------------------------

/// etcd's watch server fragments at `--max-request-bytes` plus gRPC's
/// overhead allowance (`grpcOverheadBytes`, 512 KiB), not at
/// `--max-request-bytes` itself.
const GRPC_OVERHEAD: usize = 512 * 1024;

fn varint_len(v: u64) -> usize {
    let mut n = 1;
    let mut v = v >> 7;
    while v != 0 {
        n += 1;
        v >>= 7;
    }
    n
}

/// Size of a length-delimited field with a one-byte tag (0 when empty).
fn bytes_field(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        1 + varint_len(len as u64) + len
    }
}

fn msg_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn int_field(v: i64) -> usize {
    if v == 0 {
        0
    } else {
        1 + varint_len(v as u64)
    }
}

fn kv_size(kv: &mvccpb::KeyValue) -> usize {
    bytes_field(kv.key.len())
        + int_field(kv.create_revision)
        + int_field(kv.mod_revision)
        + int_field(kv.version)
        + bytes_field(kv.value.len())
        + int_field(kv.lease)
}

fn event_size(e: &mvccpb::Event) -> usize {
    int_field(e.r#type as i64)
        + e.kv.as_ref().map_or(0, |kv| msg_field(kv_size(kv)))
        + e.prev_kv.as_ref().map_or(0, |kv| msg_field(kv_size(kv)))
}

/// The protobuf-encoded size of a WatchResponse (what etcd's `Size()` returns).
fn response_size(r: &pb::WatchResponse) -> usize {
    let header = r.header.map_or(0, |h| {
        msg_field(
            int_field(h.cluster_id as i64)
                + int_field(h.member_id as i64)
                + int_field(h.revision)
                + int_field(h.raft_term as i64),
        )
    });
    header
        + int_field(r.watch_id)
        + if r.created { 2 } else { 0 }
        + if r.canceled { 2 } else { 0 }
        + int_field(r.compact_revision)
        + bytes_field(r.cancel_reason.len())
        + if r.fragment { 2 } else { 0 }
        + r.events
            .iter()
            .map(|e| msg_field(event_size(e)))
            .sum::<usize>()
}

/// Reads the responses of one revision for `watch_id`, following fragments.
async fn read_fragmented(raw: &mut Raw, watch_id: i64) -> Vec<pb::WatchResponse> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let r = raw.next().await;
        assert_eq!(r.watch_id, watch_id, "{:?}", r.header);
        let more = r.fragment;
        out.push(r);
        if !more {
            return out;
        }
    }
    panic!("more than 1000 fragments");
}

/// Checks one fragmented delivery: fragment=true on all but the last, the
/// same header on all, each smaller than `limit` unless it holds a single
/// event (etcd's sendFragments rule), and returns the reassembled events.
#[track_caller]
fn check_fragments(parts: &[pb::WatchResponse], limit: usize) -> Vec<Ev> {
    let n = parts.len();
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.fragment, i + 1 < n, "fragment flag of part {i} of {n}");
        assert!(!p.created && !p.canceled);
        assert!(!p.events.is_empty(), "part {i} has no events");
        assert_eq!(p.header, parts[0].header, "part {i} header");
        let size = response_size(p);
        assert!(
            p.events.len() == 1 || size < limit,
            "part {i} of {n}: {size} bytes with {} events, not below {limit} \
             (--max-request-bytes + 512 KiB)",
            p.events.len()
        );
    }
    parts.iter().flat_map(events).collect()
}

/// Reads one revision delivered to a fragmenting watcher (ID 0) and a
/// plain one (ID 1) on the same stream.
async fn read_frag_and_whole(raw: &mut Raw) -> (Vec<pb::WatchResponse>, Vec<pb::WatchResponse>) {
    let mut frag: Vec<pb::WatchResponse> = Vec::new();
    let mut whole = Vec::new();
    for _ in 0..1000 {
        if frag.last().is_some_and(|r| !r.fragment) && !whole.is_empty() {
            break;
        }
        let r = raw.next().await;
        match r.watch_id {
            0 => frag.push(r),
            1 => whole.push(r),
            id => panic!("unexpected watch_id {id}"),
        }
    }
    (frag, whole)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_splits_a_large_revision() {
    // With --max-request-bytes 600000, etcd fragments responses from
    // 600000 + 512 KiB = 1,124,288 bytes on.
    const MAX: usize = 600_000;
    let limit = MAX + GRPC_OVERHEAD;
    let max = MAX.to_string();
    let (srv, mut c) = start_with(&["--max-request-bytes", &max]).await;
    let big = "x".repeat(59_000);
    let mut created = Vec::new();
    for i in 0..24 {
        created.push(put(&mut c, &format!("fr/{i:02}"), &big).await);
    }
    let mut raw = Raw::open(
        &srv.endpoint,
        create_req(pb::WatchCreateRequest {
            fragment: true,
            prev_kv: true,
            ..on_prefix("fr/")
        }),
    )
    .await;
    raw.create(pb::WatchCreateRequest {
        prev_kv: true,
        ..on_prefix("fr/")
    });
    for id in 0..2 {
        assert_eq!(raw.next().await.watch_id, id);
    }
    // 1) A delete-range: 24 DELETEs with a 59 kB prev_kv each (~1.4 MB).
    let del = c
        .delete("fr/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let want: Vec<Ev> = (0..24)
        .map(|i| {
            let k = format!("fr/{i:02}");
            with_prev(del_ev(&k, del), live(&k, &big, created[i], created[i], 1))
        })
        .collect();
    let (frag, whole) = read_frag_and_whole(&mut raw).await;
    assert!(
        frag.len() >= 2,
        "expected fragments, got {} response(s)",
        frag.len()
    );
    assert_eq!(check_fragments(&frag, limit), want, "reassembled events");
    assert_eq!(whole.len(), 1, "no fragment asked: one response");
    assert!(!whole[0].fragment);
    assert_eq!(events(&whole[0]), want);
    raw.expect_quiet().await;

    // 2) A txn within the request limit (10 × 58 kB) whose events with
    //    prev_kv (10 × 2 × 58 kB) exceed the fragment limit.
    let mid = "y".repeat(58_000);
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(put(&mut c, &format!("fr/{i:02}"), &mid).await);
    }
    let _ = raw.drain(100).await;
    let newv = "z".repeat(58_000);
    let txn = Txn::new().and_then(
        (0..10)
            .map(|i| TxnOp::put(format!("fr/{i:02}"), newv.clone(), None))
            .collect::<Vec<_>>(),
    );
    let tr = c.txn(txn).await.expect("txn").header().unwrap().revision();
    let want: Vec<Ev> = (0..10)
        .map(|i| {
            let k = format!("fr/{i:02}");
            with_prev(
                put_ev(&k, &newv, revs[i], tr, 2),
                live(&k, &mid, revs[i], revs[i], 1),
            )
        })
        .collect();
    let (frag, whole) = read_frag_and_whole(&mut raw).await;
    assert!(
        frag.len() >= 2,
        "expected fragments, got {} response(s)",
        frag.len()
    );
    assert_eq!(check_fragments(&frag, limit), want);
    assert_eq!(whole.len(), 1);
    assert_eq!(events(&whole[0]), want);
    raw.expect_quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_limit_is_max_request_bytes_plus_512_kib() {
    const MAX: usize = 65536;
    let limit = MAX + GRPC_OVERHEAD;
    let max = MAX.to_string();
    let (srv, mut c) = start_with(&["--max-request-bytes", &max]).await;
    let (mut raw, _) = Raw::open_watch(
        &srv.endpoint,
        pb::WatchCreateRequest {
            fragment: true,
            prev_kv: true,
            ..on_prefix("fb/")
        },
    )
    .await;

    // 1) 240 kB of events: above --max-request-bytes, below the limit
    //    (589,824 bytes): etcd sends one response, not fragmented.
    let v = "v".repeat(60_000);
    for i in 0..4 {
        put(&mut c, &format!("fb/{i}"), &v).await;
    }
    for _ in 0..4 {
        raw.next().await;
    }
    c.delete("fb/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let parts = read_fragmented(&mut raw, 0).await;
    let sizes: Vec<usize> = parts.iter().map(response_size).collect();
    assert_eq!(
        parts.len(),
        1,
        "etcd does not fragment below --max-request-bytes + 512 KiB (sizes {sizes:?})"
    );
    assert_eq!(parts[0].events.len(), 4);
    assert!(!parts[0].fragment);

    // 2) 660 kB of events, above the limit: fragments, each below it.
    for i in 0..11 {
        put(&mut c, &format!("fb/{i:02}"), &v).await;
    }
    for _ in 0..11 {
        raw.next().await;
    }
    c.delete("fb/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let parts = read_fragmented(&mut raw, 0).await;
    let counts: Vec<usize> = parts.iter().map(|p| p.events.len()).collect();
    assert!(parts.len() >= 2, "expected fragments: {counts:?}");
    assert_eq!(check_fragments(&parts, limit).len(), 11);
    // etcd fills each fragment up to the limit: 9 events of ~60 kB, then 2.
    assert_eq!(counts, vec![9, 2], "events per fragment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_size_counts_the_whole_response() {
    const MAX: usize = 65536;
    let limit = MAX + GRPC_OVERHEAD;
    let max = MAX.to_string();
    let (srv, mut c) = start_with(&["--max-request-bytes", &max]).await;
    let (mut raw, _) = Raw::open_watch(
        &srv.endpoint,
        pb::WatchCreateRequest {
            fragment: true,
            prev_kv: true,
            ..on_prefix("fb/")
        },
    )
    .await;
    // Ten DELETEs whose event bodies sum to 16 bytes below the limit,
    // while the whole response (header and per-event framing included) is
    // above it: etcd sends 9 events, then 1. Body of one event: 2 (type) +
    // 10 (kv: 4-byte key, revision < 128 on this fresh server) + 20 + V
    // (prev_kv) = 32 + V.
    let total_v = limit - 16 - 10 * 32;
    let mut sizes_v = [total_v / 10; 10];
    sizes_v[9] += total_v % 10;
    for (i, n) in sizes_v.iter().enumerate() {
        put(&mut c, &format!("fb/{i}"), &"w".repeat(*n)).await;
    }
    for _ in 0..10 {
        raw.next().await;
    }
    c.delete("fb/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let parts = read_fragmented(&mut raw, 0).await;
    let bodies: usize = parts
        .iter()
        .flat_map(|p| p.events.iter())
        .map(event_size)
        .sum();
    assert_eq!(bodies, limit - 16, "test setup: event bodies");
    let sizes: Vec<usize> = parts.iter().map(response_size).collect();
    let counts: Vec<usize> = parts.iter().map(|p| p.events.len()).collect();
    assert_eq!(
        counts,
        vec![9, 1],
        "etcd splits on the whole response size (sizes {sizes:?}, event bodies {bodies})"
    );
    assert_eq!(check_fragments(&parts, limit).len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_does_not_reassemble_fragments() {
    // etcd-client 0.21 passes fragments through as separate responses (and
    // has no accessor for the flag): a user must reassemble them.
    let max = "65536";
    let (_srv, mut c) = start_with(&["--max-request-bytes", max]).await;
    let big = "x".repeat(60_000);
    for i in 0..11 {
        put(&mut c, &format!("ef/{i:02}"), &big).await;
    }
    let (mut w, _) = ec_watch(
        &mut c,
        "ef/",
        WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_fragment(),
    )
    .await;
    let del = c
        .delete("ef/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut parts = Vec::new();
    let mut n = 0;
    while n < 11 {
        let r = ec_next(&mut w).await;
        n += r.events().len();
        parts.push(r);
    }
    assert_eq!(n, 11);
    assert!(
        parts.len() >= 2,
        "expected separate fragments: {}",
        parts.len()
    );
    for p in &parts {
        assert_eq!(p.header().unwrap().revision(), del);
        for e in p.events() {
            assert_eq!(e.kv().unwrap().mod_revision(), del);
        }
    }
    ec_quiet(&mut w).await;
}

// ---------------------------------------------------------------------------
// The guarantee checker
// ---------------------------------------------------------------------------

/// One watcher's parameters.
#[derive(Clone, Debug)]
struct Spec {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// 0: from now.
    start: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
}

impl Spec {
    fn request(&self) -> pb::WatchCreateRequest {
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
            start_revision: self.start,
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

/// The store's history: every revision's events in sub-revision order.
type History = BTreeMap<i64, Vec<Ev>>;

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

#[derive(Default)]
struct WriterLog {
    acks: Vec<Ack>,
    attempts: usize,
    errors: Vec<String>,
    max_latency: Duration,
}

fn key_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:03}")
}

/// One random write (put, delete, delete-range or multi-key txn) on keys
/// `prefix000..prefix{nkeys-1}`; returns its ack (None: no change).
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
        let rev = r.header().expect("put header").revision();
        Ok(Some(Ack {
            rev,
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
        assert_eq!(r.deleted() as usize, r.prev_kvs().len());
        let rev = r.header().expect("delete header").revision();
        Ok(Some(Ack {
            rev,
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
        // Op order differs from key order.
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

/// Runs `ops` random writes on one connection (bounded by `deadline`).
async fn writer(
    endpoint: String,
    seed: u64,
    ops: usize,
    prefix: &'static str,
    nkeys: usize,
    deadline: Instant,
) -> WriterLog {
    let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(10));
    let mut c = Client::connect([endpoint.as_str()], Some(opts))
        .await
        .expect("writer connect");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = WriterLog::default();
    for n in 0..ops {
        if Instant::now() > deadline {
            log.errors
                .push(format!("deadline reached after {n} writes"));
            break;
        }
        log.attempts += 1;
        let t = Instant::now();
        let tag = format!("w{seed}-{n}");
        match random_write(&mut c, &mut rng, prefix, nkeys, &tag).await {
            Ok(Some(a)) => log.acks.push(a),
            Ok(None) => {}
            Err(e) => log.errors.push(e.to_string()),
        }
        log.max_latency = log.max_latency.max(t.elapsed());
    }
    log
}

/// Builds the history from acknowledgements alone: every revision in
/// (from, to] must be acknowledged exactly once. `state` is the keyspace
/// at `from` and ends at `to`.
fn replay(acks: &[Ack], state: &mut BTreeMap<Vec<u8>, Kv>) -> History {
    let mut sorted: Vec<&Ack> = acks.iter().collect();
    sorted.sort_by_key(|a| a.rev);
    for w in sorted.windows(2) {
        assert!(
            w[1].rev == w[0].rev + 1,
            "acknowledged revisions not contiguous: {} then {}",
            w[0].rev,
            w[1].rev
        );
    }
    let mut history = History::new();
    for a in sorted {
        let mut evs = Vec::new();
        for ch in &a.changes {
            match ch {
                Change::Put { key, value } => {
                    let prev = state.get(key).cloned();
                    let kv = Kv {
                        key: key.clone(),
                        value: value.clone(),
                        create: prev.as_ref().map_or(a.rev, |p| p.create),
                        modr: a.rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        lease: 0,
                    };
                    state.insert(key.clone(), kv.clone());
                    evs.push(Ev {
                        put: true,
                        kv,
                        prev,
                    });
                }
                Change::Del { prev } => {
                    let had = state.remove(&prev.key);
                    assert_eq!(
                        had.as_ref(),
                        Some(prev),
                        "delete's prev_kv differs from the replayed state at {}",
                        a.rev
                    );
                    evs.push(Ev {
                        put: false,
                        kv: Kv {
                            key: prev.key.clone(),
                            value: Vec::new(),
                            create: 0,
                            modr: a.rev,
                            version: 0,
                            lease: 0,
                        },
                        prev: Some(prev.clone()),
                    });
                }
            }
        }
        history.insert(a.rev, evs);
    }
    history
}

/// What one stream delivered, per watch ID: (response number, event).
#[derive(Default)]
struct Delivered {
    created: Vec<pb::WatchResponse>,
    events: HashMap<i64, Vec<(usize, Ev)>>,
    last_rev: HashMap<i64, i64>,
    other: Vec<pb::WatchResponse>,
    responses: usize,
}

impl Delivered {
    fn absorb(&mut self, r: pb::WatchResponse) {
        self.responses += 1;
        let n = self.responses;
        if r.created {
            self.created.push(r);
            return;
        }
        if r.canceled || r.events.is_empty() || r.compact_revision != 0 {
            self.other.push(r);
            return;
        }
        let list = self.events.entry(r.watch_id).or_default();
        for e in &r.events {
            let ev = ev_of(e);
            let last = self.last_rev.entry(r.watch_id).or_insert(0);
            *last = (*last).max(ev.kv.modr);
            list.push((n, ev));
        }
    }
}

/// Checks one watcher's deliveries against the history; returns violations.
fn check_watcher(
    id: i64,
    spec: &Spec,
    start: i64,
    end: i64,
    history: &History,
    got: &[(usize, Ev)],
) -> Vec<String> {
    let mut v = Vec::new();
    let expected: Vec<Ev> = history
        .range(start..=end)
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
    // Ordered.
    for w in got.windows(2) {
        if w[1].1.kv.modr < w[0].1.kv.modr {
            v.push(format!(
                "watcher {id}: out of order: {} after {}",
                show(&w[1].1),
                show(&w[0].1)
            ));
        }
    }
    // Unique.
    let mut seen: HashMap<(i64, Vec<u8>), usize> = HashMap::new();
    for (_, e) in got {
        *seen.entry((e.kv.modr, e.kv.key.clone())).or_default() += 1;
    }
    for ((rev, key), n) in &seen {
        if *n > 1 {
            v.push(format!(
                "watcher {id}: duplicate: {}@{rev} delivered {n} times",
                String::from_utf8_lossy(key)
            ));
        }
    }
    // Atomic: one revision's events in one response.
    let mut resp_of: BTreeMap<i64, BTreeSet<usize>> = BTreeMap::new();
    for (n, e) in got {
        resp_of.entry(e.kv.modr).or_default().insert(*n);
    }
    for (rev, resps) in &resp_of {
        if resps.len() > 1 {
            v.push(format!(
                "watcher {id}: revision {rev} split over responses {resps:?}"
            ));
        }
    }
    // Reliable and correct: exactly the expected events.
    let want: HashMap<(i64, Vec<u8>), &Ev> = expected
        .iter()
        .map(|e| ((e.kv.modr, e.kv.key.clone()), e))
        .collect();
    for e in &expected {
        if !seen.contains_key(&(e.kv.modr, e.kv.key.clone())) {
            v.push(format!("watcher {id}: gap: missing {}", show(e)));
        }
    }
    for (_, e) in got {
        match want.get(&(e.kv.modr, e.kv.key.clone())) {
            None => v.push(format!(
                "watcher {id}: unexpected event {} (start {start}, spec {spec:?})",
                show(e)
            )),
            Some(w) if e.prev != w.prev => v.push(format!(
                "watcher {id}: wrong prev_kv on {}: got {:?}, want {:?}",
                show(e),
                e.prev,
                w.prev
            )),
            Some(w) if *w != e => {
                v.push(format!("watcher {id}: wrong event: got {e:?}, want {w:?}"))
            }
            Some(_) => {}
        }
    }
    // Sub-revision order within a revision.
    if v.is_empty() {
        let got_plain: Vec<&Ev> = got.iter().map(|(_, e)| e).collect();
        let want_plain: Vec<&Ev> = expected.iter().collect();
        if got_plain != want_plain {
            v.push(format!(
                "watcher {id}: events of one revision not in sub-revision order"
            ));
        }
    }
    v
}

/// Reads a raw stream into an unbounded channel (so the client side always
/// keeps up); the task ends with the stream or when the receiver is gone.
fn spawn_reader(
    mut rx: tonic::Streaming<pb::WatchResponse>,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<Result<pb::WatchResponse, String>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, out) = tokio::sync::mpsc::unbounded_channel();
    let h = tokio::spawn(async move {
        loop {
            match rx.message().await {
                Ok(Some(r)) => {
                    if tx.send(Ok(r)).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = tx.send(Err("stream ended".into()));
                    return;
                }
                Err(s) => {
                    let _ = tx.send(Err(format!("stream failed: {s:?}")));
                    return;
                }
            }
        }
    });
    (out, h)
}

/// Reads every event of all keys from revision 1 to `to` through a fresh
/// watch (prev_kv), grouped by revision.
async fn history_by_watch(endpoint: &str, to: i64) -> History {
    let mut raw = Raw::open(
        endpoint,
        create_req(pb::WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision: 1,
            prev_kv: true,
            ..Default::default()
        }),
    )
    .await;
    let created = raw.next().await;
    assert!(created.created && !created.canceled, "{created:?}");
    let mut h = History::new();
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while last < to {
        assert!(
            Instant::now() < deadline,
            "history watch stuck at {last} < {to}"
        );
        let r = raw.next().await;
        for e in events(&r) {
            last = last.max(e.kv.modr);
            h.entry(e.kv.modr).or_default().push(e);
        }
    }
    h
}

/// Compares two histories; returns the first differences.
fn diff_histories(a: &History, b: &History) -> Vec<String> {
    let mut out = Vec::new();
    let revs: BTreeSet<i64> = a.keys().chain(b.keys()).copied().collect();
    for r in revs {
        if a.get(&r) != b.get(&r) {
            out.push(format!(
                "revision {r}: acks say {:?}, watch says {:?}",
                a.get(&r).map(|e| e.iter().map(show).collect::<Vec<_>>()),
                b.get(&r).map(|e| e.iter().map(show).collect::<Vec<_>>())
            ));
            if out.len() >= 10 {
                break;
            }
        }
    }
    out
}

const CK_PREFIX: &str = "ck/";
const CK_KEYS: usize = 600;

/// The checker's watchers: single keys, 10-key prefixes, 8-key ranges and a
/// few all-of-`ck/` prefixes; some with prev_kv, filters, or a start
/// revision in the past (≤ `base`).
fn checker_specs(n: usize, base: i64) -> Vec<Spec> {
    (0..n)
        .map(|i| {
            let (key, range_end) = match i % 4 {
                0 => (
                    key_name(CK_PREFIX, (i * 7) % CK_KEYS).into_bytes(),
                    Vec::new(),
                ),
                1 => {
                    let p = format!("{CK_PREFIX}{:02}", (i / 4) % (CK_KEYS / 10));
                    (p.clone().into_bytes(), prefix_end(p.as_bytes()))
                }
                2 => {
                    let a = (i * 13) % (CK_KEYS - 8);
                    (
                        key_name(CK_PREFIX, a).into_bytes(),
                        key_name(CK_PREFIX, a + 8).into_bytes(),
                    )
                }
                _ if i % 100 == 3 => (
                    CK_PREFIX.as_bytes().to_vec(),
                    prefix_end(CK_PREFIX.as_bytes()),
                ),
                _ => (
                    key_name(CK_PREFIX, (i * 31) % CK_KEYS).into_bytes(),
                    Vec::new(),
                ),
            };
            Spec {
                key,
                range_end,
                start: if i.is_multiple_of(5) {
                    1 + (i as i64 * 37) % base
                } else {
                    0
                },
                prev_kv: i.is_multiple_of(2),
                no_put: i % 17 == 5,
                no_delete: i % 19 == 7,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guarantees_hold_for_1000_watchers_under_10000_writes() {
    const WATCHERS: usize = 1000;
    const PRELOAD: usize = 500;
    const WRITES: usize = 10_000;
    const WRITERS: usize = 8;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(240);
    let (srv, mut c) = start().await;
    let rev0 = current_rev(&mut c).await;

    // Some history before the watchers exist (replayed by those with a
    // start revision).
    let pre = writer(
        srv.endpoint.clone(),
        999,
        PRELOAD,
        CK_PREFIX,
        CK_KEYS,
        deadline,
    )
    .await;
    assert!(pre.errors.is_empty(), "preload errors: {:?}", pre.errors);
    let base = current_rev(&mut c).await;

    let specs = checker_specs(WATCHERS, base);
    let raw = Raw::open(&srv.endpoint, create_req(specs[0].request())).await;
    for s in &specs[1..] {
        raw.create(s.request());
    }
    let Raw { tx, rx } = raw;
    let (mut resp_rx, reader) = spawn_reader(rx);
    let mut got = Delivered::default();
    while got.created.len() < WATCHERS {
        match tokio::time::timeout(MSG_TIMEOUT, resp_rx.recv()).await {
            Ok(Some(Ok(r))) => got.absorb(r),
            other => panic!(
                "only {} of {WATCHERS} watchers created: {other:?}",
                got.created.len()
            ),
        }
    }
    let mut starts = Vec::new();
    for (i, (cr, s)) in got.created.iter().zip(&specs).enumerate() {
        assert_eq!(cr.watch_id, i as i64, "created responses in request order");
        assert!(!cr.canceled, "{cr:?}");
        let hrev = cr.header.expect("header").revision;
        starts.push(if s.start > 0 { s.start } else { hrev + 1 });
    }
    eprintln!("checker: {WATCHERS} watchers created at revision {base}");

    // The load: WRITERS concurrent clients.
    let per = WRITES / WRITERS;
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        handles.push(tokio::spawn(writer(
            srv.endpoint.clone(),
            w as u64,
            per,
            CK_PREFIX,
            CK_KEYS,
            deadline,
        )));
    }
    let mut logs = vec![pre];
    let mut pending = handles;
    // Keep draining while writers run.
    while !pending.is_empty() {
        while let Ok(m) = resp_rx.try_recv() {
            got.absorb(m.unwrap_or_else(|e| panic!("watch stream: {e}")));
        }
        if pending[0].is_finished() {
            logs.push(pending.remove(0).await.expect("writer task"));
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let attempts: usize = logs.iter().map(|l| l.attempts).sum();
    let errors: Vec<&String> = logs.iter().flat_map(|l| &l.errors).collect();
    assert!(errors.is_empty(), "write errors: {errors:?}");
    let acks: Vec<Ack> = logs.iter().flat_map(|l| l.acks.clone()).collect();
    let end = current_rev(&mut c).await;
    eprintln!(
        "checker: {attempts} writes ({} changed something), revision {end}, {:.1}s",
        acks.len(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(acks.iter().map(|a| a.rev).max(), Some(end));
    assert_eq!(
        acks.len() as i64,
        end - rev0,
        "every revision acknowledged once"
    );

    let mut state = BTreeMap::new();
    let history = replay(&acks, &mut state);

    // Wait (bounded) until every watcher has its last expected event.
    let expected_last: Vec<i64> = specs
        .iter()
        .zip(&starts)
        .map(|(s, &st)| {
            history
                .range(st..=end)
                .rev()
                .find(|(_, evs)| evs.iter().any(|e| s.wants(e)))
                .map_or(0, |(r, _)| *r)
        })
        .collect();
    let wait_until = Instant::now()
        + Duration::from_secs(60).min(deadline.saturating_duration_since(Instant::now()));
    loop {
        let behind = (0..WATCHERS)
            .filter(|&i| got.last_rev.get(&(i as i64)).copied().unwrap_or(0) < expected_last[i])
            .count();
        if behind == 0 {
            break;
        }
        match tokio::time::timeout_at(wait_until.into(), resp_rx.recv()).await {
            Ok(Some(Ok(r))) => got.absorb(r),
            Ok(Some(Err(e))) => panic!("watch stream: {e}"),
            Ok(None) => panic!("reader ended"),
            Err(_) => {
                eprintln!("checker: {behind} watchers still behind at the deadline");
                break;
            }
        }
    }
    // A little more, to catch late duplicates or extras.
    let grace = Instant::now() + Duration::from_millis(500);
    while let Ok(Some(m)) = tokio::time::timeout_at(grace.into(), resp_rx.recv()).await {
        got.absorb(m.unwrap_or_else(|e| panic!("watch stream: {e}")));
    }
    reader.abort();
    drop(tx);

    // The watch's own view of the history must match the acknowledgements.
    let watched = history_by_watch(&srv.endpoint, end).await;
    let d = diff_histories(&history, &watched);
    assert!(d.is_empty(), "history watch differs from the acks: {d:#?}");

    let mut violations = Vec::new();
    let mut delivered = 0;
    for (i, s) in specs.iter().enumerate() {
        let id = i as i64;
        let evs = got.events.get(&id).map(|v| v.as_slice()).unwrap_or(&[]);
        delivered += evs.len();
        violations.extend(check_watcher(id, s, starts[i], end, &history, evs));
    }
    assert!(
        got.other.is_empty(),
        "unexpected responses: {:?}",
        &got.other[..got.other.len().min(5)]
    );
    eprintln!(
        "checker: {delivered} events in {} responses checked in {:.1}s total",
        got.responses,
        t0.elapsed().as_secs_f64()
    );
    assert!(
        violations.is_empty(),
        "{} violations, first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(20)]
    );
}

// ---------------------------------------------------------------------------
// A slow watcher
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_watcher_catches_up_and_never_blocks_writers() {
    const WRITES: usize = 5000;
    const WRITERS: usize = 4;
    let (srv, mut c) = start().await;
    let start_rev = current_rev(&mut c).await;
    // The slow stream: a prefix watcher whose client reads nothing for now.
    let mut slow =
        Raw::open_window(&srv.endpoint, create_req(on_prefix("slow/")), Some(65_535)).await;
    assert!(slow.next().await.created);
    // A fast stream on the same server, read all along.
    let (fast, _) = Raw::open_watch(&srv.endpoint, on_prefix("slow/")).await;
    let Raw { tx: _fast_tx, rx } = fast;
    let (mut fast_rx, fast_reader) = spawn_reader(rx);

    let value = "s".repeat(1024);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let ep = srv.endpoint.clone();
        let value = value.clone();
        handles.push(tokio::spawn(async move {
            let mut c = Client::connect([ep.as_str()], None).await.expect("connect");
            let mut revs = Vec::new();
            let mut max = Duration::ZERO;
            for n in 0..WRITES / WRITERS {
                let t = Instant::now();
                let k = format!("slow/{w}/{}", n % 50);
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    c.put(k, value.clone(), Some(PutOptions::new())),
                )
                .await
                .expect("write blocked for 10 s")
                .expect("put");
                max = max.max(t.elapsed());
                revs.push(r.header().unwrap().revision());
            }
            (revs, max)
        }));
    }
    let mut acked = Vec::new();
    let mut max_latency = Duration::ZERO;
    for h in handles {
        let (revs, max) = tokio::time::timeout(Duration::from_secs(240), h)
            .await
            .expect("writers did not finish within 100 s while a watcher was not reading")
            .expect("writer task");
        acked.extend(revs);
        max_latency = max_latency.max(max);
    }
    let write_time = t0.elapsed();
    eprintln!(
        "slow watcher: {} writes acknowledged in {:.1}s (max latency {:?}) while it did not read",
        acked.len(),
        write_time.as_secs_f64(),
        max_latency
    );
    assert_eq!(acked.len(), WRITES);
    assert!(
        max_latency < Duration::from_secs(5),
        "a write waited {max_latency:?}"
    );
    acked.sort();
    let end = *acked.last().unwrap();
    assert_eq!(acked, ((start_rev + 1)..=end).collect::<Vec<_>>());

    // Now read the slow stream: everything, in order, once.
    let mut revs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while revs.last().is_none_or(|r| *r < end) {
        assert!(
            Instant::now() < deadline,
            "slow watcher stuck at {:?}",
            revs.last()
        );
        let r = slow.next().await;
        assert_event_response(&r, 0);
        for e in &r.events {
            let kv = e.kv.as_ref().unwrap();
            assert_eq!(kv.value.len(), 1024);
            revs.push(kv.mod_revision);
        }
    }
    assert_eq!(revs, acked, "slow watcher: gaps, duplicates or disorder");
    slow.expect_quiet().await;

    // The fast stream got the same.
    let mut fast_revs = Vec::new();
    while fast_revs.last().is_none_or(|r| *r < end) {
        match tokio::time::timeout(MSG_TIMEOUT, fast_rx.recv()).await {
            Ok(Some(Ok(r))) => {
                fast_revs.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision))
            }
            other => panic!("fast stream: {other:?}"),
        }
    }
    fast_reader.abort();
    assert_eq!(fast_revs, acked, "fast watcher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_watcher_is_complete_or_canceled_after_compaction() {
    // A watcher that fell behind when history is compacted past its next
    // revision must not silently skip: it either still gets every event
    // (it was not behind the compaction) or a canceled response whose
    // compact_revision is above the next revision it needed.
    const WRITES: usize = 3000;
    let (srv, mut c) = start().await;
    let start_rev = current_rev(&mut c).await;
    let mut slow =
        Raw::open_window(&srv.endpoint, create_req(on_prefix("lag/")), Some(65_535)).await;
    assert!(slow.next().await.created);
    let value = "l".repeat(1024);
    let mut handles = Vec::new();
    for w in 0..4 {
        let ep = srv.endpoint.clone();
        let value = value.clone();
        handles.push(tokio::spawn(async move {
            let mut c = Client::connect([ep.as_str()], None).await.expect("connect");
            for n in 0..WRITES / 4 {
                c.put(format!("lag/{w}/{}", n % 20), value.clone(), None)
                    .await
                    .expect("put");
            }
        }));
    }
    for h in handles {
        tokio::time::timeout(Duration::from_secs(240), h)
            .await
            .expect("writers")
            .expect("writer task");
    }
    let end = current_rev(&mut c).await;
    assert_eq!(end, start_rev + WRITES as i64);
    c.compact(end, None).await.expect("compact");

    let mut next = start_rev + 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "lagging watcher stuck at {next}");
        let r = slow.next().await;
        if r.canceled {
            assert_eq!(r.watch_id, 0, "{r:?}");
            assert!(
                r.compact_revision > next,
                "canceled with compact_revision {} but revision {next} was still needed \
                 and readable: {r:?}",
                r.compact_revision
            );
            eprintln!(
                "lagging watcher: canceled at {next}, compact_revision {}",
                r.compact_revision
            );
            break;
        }
        assert_event_response(&r, 0);
        for e in &r.events {
            let rev = e.kv.as_ref().unwrap().mod_revision;
            assert_eq!(rev, next, "gap or duplicate");
            next += 1;
        }
        if next > end {
            eprintln!("lagging watcher: got every event");
            break;
        }
    }
    slow.expect_quiet().await;
}
