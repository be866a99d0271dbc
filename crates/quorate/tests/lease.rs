//! Lease API compatibility suite (LeaseGrant, LeaseRevoke, LeaseKeepAlive,
//! LeaseTimeToLive, LeaseLeases, leases on Put/Txn, expiry, persistence).
//!
//! Runs against a fresh `quorate` server per test by default, and against a
//! real etcd (3.4.23 here) with `QUORATE_TEST_TARGET=etcd`; every expectation
//! in this file was checked against etcd, so a failure under quorate is a
//! compatibility bug in quorate.
//!
//! Most tests use `etcd_client`; the raw tonic client from `quorate_proto`
//! is used where etcd-client hides what the server said (a keep-alive on an
//! unknown lease, which etcd-client turns into a local error).
//!
//! Timing: every wait is bounded; expiry is only asserted to happen "within
//! 15 s" (plus how long the lease should live), never earlier than a bound.

mod common;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions,
    PutOptions, ResponseHeader, Txn, TxnOp, WatchOptions,
};
use quorate_proto::etcdserverpb as pb;
use quorate_proto::etcdserverpb::lease_client::LeaseClient;
use tonic::transport::Channel;
use tonic::Code;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const LEASE_EXISTS: &str = "etcdserver: lease already exists";
const TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
/// etcd's `MaxLeaseTTL` (9e9 seconds).
const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// etcd's minimum lease TTL with the default `--election-timeout` (1000 ms)
/// and `--heartbeat-interval` (100 ms): ceil(1.5 × election timeout) = 2 s.
const MIN_TTL_DEFAULT: i64 = 2;
/// Bound on how long after its TTL a lease that is not kept alive must be
/// gone (keys deleted, lease removed).
const EXPIRY_BOUND: Duration = Duration::from_secs(15);
/// Bound on any single RPC in these tests.
const RPC: Duration = Duration::from_secs(10);

async fn start() -> (common::Server, Client) {
    let srv = common::Server::start();
    let c = srv.client().await;
    (srv, c)
}

async fn raw_lease(srv: &common::Server) -> LeaseClient<Channel> {
    LeaseClient::connect(srv.endpoint.clone())
        .await
        .expect("connect raw Lease client")
}

/// Bounds a future by `RPC`.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(RPC, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {RPC:?}"))
}

/// Asserts an etcd-client result is a gRPC error with exactly this code and message.
#[track_caller]
fn assert_status<T: Debug>(r: Result<T, etcd_client::Error>, code: Code, msg: &str) {
    match r {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            assert_eq!(s.code(), code, "wrong gRPC code, status: {s:?}");
            assert_eq!(s.message(), msg, "wrong gRPC message, status: {s:?}");
        }
        other => panic!("expected gRPC status {code:?} {msg:?}, got {other:?}"),
    }
}

/// Checks a response header: cluster and member set, a term, and `revision`.
#[track_caller]
fn check_header(h: Option<&ResponseHeader>, revision: i64, what: &str) {
    let h = h.unwrap_or_else(|| panic!("{what}: no response header"));
    assert_ne!(h.cluster_id(), 0, "{what}: cluster_id, header {h:?}");
    assert_ne!(h.member_id(), 0, "{what}: member_id, header {h:?}");
    assert!(h.raft_term() > 0, "{what}: raft_term, header {h:?}");
    assert_eq!(h.revision(), revision, "{what}: revision, header {h:?}");
}

/// Same checks on a raw (tonic) header.
#[track_caller]
fn check_raw_header(h: Option<&pb::ResponseHeader>, revision: i64, what: &str) {
    let h = h.unwrap_or_else(|| panic!("{what}: no response header"));
    assert_ne!(h.cluster_id, 0, "{what}: cluster_id, header {h:?}");
    assert_ne!(h.member_id, 0, "{what}: member_id, header {h:?}");
    assert!(h.raft_term > 0, "{what}: raft_term, header {h:?}");
    assert_eq!(h.revision, revision, "{what}: revision, header {h:?}");
}

/// The store's current revision (from a Range header).
async fn current_rev(c: &mut Client) -> i64 {
    bounded("get", c.get("revision-probe", None))
        .await
        .expect("get")
        .header()
        .expect("range header")
        .revision()
}

/// Puts `k=v` attached to `lease` (0: none); returns the put's revision.
async fn put_leased(c: &mut Client, k: &str, v: &str, lease: i64) -> i64 {
    let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
    bounded("put", c.put(k, v, opts))
        .await
        .unwrap_or_else(|e| panic!("put {k} with lease {lease}: {e}"))
        .header()
        .expect("put header")
        .revision()
}

/// `(value, lease)` of `k`, or None when it does not exist.
async fn read(c: &mut Client, k: &str) -> Option<(String, i64)> {
    let r = bounded("get", c.get(k, None)).await.expect("get");
    r.kvs().first().map(|kv| {
        (
            String::from_utf8(kv.value().to_vec()).expect("utf-8 value"),
            kv.lease(),
        )
    })
}

async fn grant(c: &mut Client, ttl: i64) -> i64 {
    let r = bounded("lease grant", c.lease_grant(ttl, None))
        .await
        .unwrap_or_else(|e| panic!("lease grant {ttl}: {e}"));
    assert_eq!(r.ttl(), ttl, "granted TTL");
    r.id()
}

async fn lease_ids(c: &mut Client) -> BTreeSet<i64> {
    bounded("lease leases", c.leases())
        .await
        .expect("lease leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect()
}

/// `(ttl, granted_ttl, keys sorted)` from LeaseTimeToLive with keys.
async fn ttl_of(c: &mut Client, id: i64) -> (i64, i64, Vec<String>) {
    let r = bounded(
        "lease timetolive",
        c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())),
    )
    .await
    .unwrap_or_else(|e| panic!("lease timetolive {id}: {e}"));
    assert_eq!(r.id(), id, "timetolive echoes the ID");
    let mut keys: Vec<String> = r
        .keys()
        .iter()
        .map(|k| String::from_utf8(k.clone()).expect("utf-8 key"))
        .collect();
    // etcd returns the keys in no particular order (a Go map).
    keys.sort();
    (r.ttl(), r.granted_ttl(), keys)
}

/// One event as seen by a watcher: (type, key, mod revision).
type Seen = (EventType, String, i64);

/// A watch on `prefix` from `start_rev`.
async fn watch_prefix(c: &mut Client, prefix: &str, start_rev: i64) -> etcd_client::WatchStream {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start_rev);
    let mut ws = bounded("watch", c.watch(prefix, Some(opts)))
        .await
        .expect("watch");
    // The first response confirms the creation.
    let created = bounded("watch created", ws.message())
        .await
        .expect("watch message")
        .expect("watch stream open");
    assert!(created.created(), "first watch response: {created:?}");
    ws
}

/// Collects events until `n` arrived or `timeout` passed.
async fn collect_events(
    ws: &mut etcd_client::WatchStream,
    n: usize,
    timeout: Duration,
) -> Vec<Seen> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(msg) = tokio::time::timeout(left, ws.message()).await else {
            break;
        };
        let resp = msg.expect("watch message").expect("watch stream open");
        for e in resp.events() {
            let kv = e.kv().expect("event kv");
            out.push((
                e.event_type(),
                String::from_utf8(kv.key().to_vec()).expect("utf-8 key"),
                kv.mod_revision(),
            ));
        }
    }
    out
}

/// Waits (bounded) until `key` is gone; returns how long it took.
async fn wait_gone(c: &mut Client, key: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if read(c, key).await.is_none() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{key} still exists after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// LeaseGrant
// ---------------------------------------------------------------------------

#[tokio::test]
async fn grant_server_chosen_id_is_positive_and_takes_no_revision() {
    let (_srv, mut c) = start().await;
    put_leased(&mut c, "a", "1", 0).await;
    let rev = current_rev(&mut c).await;
    let r = bounded("grant", c.lease_grant(60, None))
        .await
        .expect("grant");
    assert!(r.id() > 0, "server-chosen ID must be positive: {}", r.id());
    assert_eq!(r.ttl(), 60);
    assert_eq!(r.error(), "");
    // A grant is not a key-value write: it takes no revision.
    check_header(r.header(), rev, "grant");
    assert_eq!(current_rev(&mut c).await, rev);
    // Two grants get different IDs.
    let r2 = bounded("grant", c.lease_grant(60, None))
        .await
        .expect("grant");
    assert!(
        r2.id() > 0 && r2.id() != r.id(),
        "{} vs {}",
        r2.id(),
        r.id()
    );
}

#[tokio::test]
async fn grant_client_chosen_id() {
    let (_srv, mut c) = start().await;
    let r = bounded(
        "grant",
        c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x1234))),
    )
    .await
    .expect("grant with ID");
    assert_eq!(r.id(), 0x1234);
    assert_eq!(r.ttl(), 60);
    check_header(r.header(), 1, "grant with ID");
    assert_eq!(lease_ids(&mut c).await, BTreeSet::from([0x1234]));
    let (ttl, granted, keys) = ttl_of(&mut c, 0x1234).await;
    assert_eq!(granted, 60);
    assert!((55..=60).contains(&ttl), "remaining TTL {ttl}");
    assert!(keys.is_empty());
}

#[tokio::test]
async fn grant_negative_client_id_is_accepted() {
    // etcd takes any nonzero ID the client chooses, negative ones included.
    let (_srv, mut c) = start().await;
    let r = bounded(
        "grant",
        c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(-7))),
    )
    .await
    .expect("grant with a negative ID");
    assert_eq!(r.id(), -7);
    assert_eq!(lease_ids(&mut c).await, BTreeSet::from([-7]));
    put_leased(&mut c, "k", "v", -7).await;
    assert_eq!(read(&mut c, "k").await, Some(("v".into(), -7)));
    assert_eq!(ttl_of(&mut c, -7).await.2, vec!["k".to_string()]);
    bounded("revoke", c.lease_revoke(-7))
        .await
        .expect("revoke -7");
    assert_eq!(read(&mut c, "k").await, None);
}

#[tokio::test]
async fn grant_duplicate_id_fails_with_lease_exists() {
    let (_srv, mut c) = start().await;
    let opts = || Some(LeaseGrantOptions::new().with_id(42));
    bounded("grant", c.lease_grant(60, opts()))
        .await
        .expect("first grant");
    let rev = current_rev(&mut c).await;
    assert_status(
        bounded("grant", c.lease_grant(30, opts())).await,
        Code::FailedPrecondition,
        LEASE_EXISTS,
    );
    // The first grant stands.
    assert_eq!(ttl_of(&mut c, 42).await.1, 60);
    assert_eq!(current_rev(&mut c).await, rev);
    assert_eq!(lease_ids(&mut c).await, BTreeSet::from([42]));
}

#[tokio::test]
async fn grant_ttl_below_minimum_is_raised_to_minimum() {
    // etcd raises any TTL below ceil(1.5 × election timeout) to it: with the
    // default 1000 ms election timeout, TTL 1, 0 and negative TTLs become 2.
    let (_srv, mut c) = start().await;
    for ttl in [1, 0, -5] {
        let r = bounded("grant", c.lease_grant(ttl, None))
            .await
            .unwrap_or_else(|e| panic!("grant {ttl}: {e}"));
        assert_eq!(r.ttl(), MIN_TTL_DEFAULT, "grant TTL {ttl}");
        let (_, granted, _) = ttl_of(&mut c, r.id()).await;
        assert_eq!(granted, MIN_TTL_DEFAULT, "granted TTL of TTL {ttl}");
    }
    // The minimum itself is kept as is.
    let r = bounded("grant", c.lease_grant(MIN_TTL_DEFAULT, None))
        .await
        .expect("grant");
    assert_eq!(r.ttl(), MIN_TTL_DEFAULT);
}

#[tokio::test]
async fn grant_ttl_too_large_fails() {
    let (_srv, mut c) = start().await;
    assert_status(
        bounded("grant", c.lease_grant(MAX_LEASE_TTL + 1, None)).await,
        Code::OutOfRange,
        TTL_TOO_LARGE,
    );
    assert_status(
        bounded("grant", c.lease_grant(i64::MAX, None)).await,
        Code::OutOfRange,
        TTL_TOO_LARGE,
    );
    assert!(lease_ids(&mut c).await.is_empty());
    // The maximum itself is accepted.
    let r = bounded("grant", c.lease_grant(MAX_LEASE_TTL, None))
        .await
        .expect("grant the maximum TTL");
    assert_eq!(r.ttl(), MAX_LEASE_TTL);
    assert_eq!(ttl_of(&mut c, r.id()).await.1, MAX_LEASE_TTL);
}

// ---------------------------------------------------------------------------
// LeaseRevoke
// ---------------------------------------------------------------------------

#[tokio::test]
async fn revoke_deletes_every_attached_key_in_one_revision() {
    let (_srv, mut c) = start().await;
    let lease = grant(&mut c, 600).await;
    let other = grant(&mut c, 600).await;
    for k in ["p/b", "p/a", "p/c"] {
        put_leased(&mut c, k, "v", lease).await;
    }
    put_leased(&mut c, "p/other", "v", other).await;
    let before = put_leased(&mut c, "p/plain", "v", 0).await;
    let mut ws = watch_prefix(&mut c, "p/", before + 1).await;

    let r = bounded("revoke", c.lease_revoke(lease))
        .await
        .expect("revoke");
    // One revision for all three deletions.
    check_header(r.header(), before + 1, "revoke");
    assert_eq!(current_rev(&mut c).await, before + 1);

    let events = collect_events(&mut ws, 3, Duration::from_secs(5)).await;
    assert_eq!(
        events,
        vec![
            (EventType::Delete, "p/a".to_string(), before + 1),
            (EventType::Delete, "p/b".to_string(), before + 1),
            (EventType::Delete, "p/c".to_string(), before + 1),
        ],
        "DELETE events of the revocation, in key order, one revision"
    );
    for k in ["p/a", "p/b", "p/c"] {
        assert_eq!(read(&mut c, k).await, None, "{k}");
    }
    assert_eq!(read(&mut c, "p/plain").await, Some(("v".into(), 0)));
    assert_eq!(read(&mut c, "p/other").await, Some(("v".into(), other)));
    assert_eq!(lease_ids(&mut c).await, BTreeSet::from([other]));
    // No more events (p/other and p/plain untouched).
    assert!(collect_events(&mut ws, 1, Duration::from_millis(500))
        .await
        .is_empty());
}

#[tokio::test]
async fn revoke_without_keys_takes_no_revision() {
    let (_srv, mut c) = start().await;
    put_leased(&mut c, "a", "1", 0).await;
    let lease = grant(&mut c, 600).await;
    let rev = current_rev(&mut c).await;
    let r = bounded("revoke", c.lease_revoke(lease))
        .await
        .expect("revoke");
    check_header(r.header(), rev, "revoke of a lease without keys");
    assert_eq!(current_rev(&mut c).await, rev);
    assert!(lease_ids(&mut c).await.is_empty());
}

#[tokio::test]
async fn revoke_unknown_lease_fails_with_not_found() {
    let (_srv, mut c) = start().await;
    assert_status(
        bounded("revoke", c.lease_revoke(0x5678)).await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
}

#[tokio::test]
async fn revoke_twice_fails_the_second_time() {
    let (_srv, mut c) = start().await;
    let lease = grant(&mut c, 600).await;
    put_leased(&mut c, "k", "v", lease).await;
    bounded("revoke", c.lease_revoke(lease))
        .await
        .expect("first revoke");
    let rev = current_rev(&mut c).await;
    assert_status(
        bounded("revoke", c.lease_revoke(lease)).await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
    assert_eq!(current_rev(&mut c).await, rev);
    // The ID is free again.
    let r = bounded(
        "grant",
        c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(lease))),
    )
    .await
    .expect("grant the revoked ID again");
    assert_eq!(r.id(), lease);
    assert!(
        ttl_of(&mut c, lease).await.2.is_empty(),
        "no keys carried over"
    );
}

// ---------------------------------------------------------------------------
// LeaseTimeToLive
// ---------------------------------------------------------------------------

#[tokio::test]
async fn time_to_live_with_and_without_keys() {
    let (_srv, mut c) = start().await;
    let lease = grant(&mut c, 60).await;
    put_leased(&mut c, "k2", "v", lease).await;
    put_leased(&mut c, "k1", "v", lease).await;
    let rev = put_leased(&mut c, "k3", "v", 0).await;

    let with = bounded(
        "timetolive",
        c.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys())),
    )
    .await
    .expect("timetolive with keys");
    assert_eq!(with.id(), lease);
    assert_eq!(with.granted_ttl(), 60);
    assert!((50..=60).contains(&with.ttl()), "remaining {}", with.ttl());
    check_header(with.header(), rev, "timetolive");
    let mut keys: Vec<&[u8]> = with.keys().iter().map(|k| k.as_slice()).collect();
    keys.sort();
    assert_eq!(keys, vec![b"k1".as_slice(), b"k2".as_slice()]);

    let without = bounded("timetolive", c.lease_time_to_live(lease, None))
        .await
        .expect("timetolive without keys");
    assert_eq!(without.id(), lease);
    assert_eq!(without.granted_ttl(), 60);
    assert!((50..=60).contains(&without.ttl()), "{}", without.ttl());
    assert!(without.keys().is_empty(), "keys only on request");
    check_header(without.header(), rev, "timetolive without keys");
}

#[tokio::test]
async fn time_to_live_truncates_to_whole_seconds() {
    // etcd reports the remaining time truncated to whole seconds
    // (`int64(Remaining().Seconds())`): just after a grant or a keep-alive
    // it is below the granted TTL (59 of 60), never the full TTL.
    let (mut srv, mut c) = start().await;
    let lease = grant(&mut c, 60).await;
    let (ttl, granted, _) = ttl_of(&mut c, lease).await;
    assert_eq!(granted, 60);
    assert!(
        (50..60).contains(&ttl),
        "remaining {ttl} just after the grant"
    );
    let (mut keeper, mut stream) = bounded("keep-alive", c.lease_keep_alive(lease))
        .await
        .expect("keep-alive");
    keeper.keep_alive().await.expect("send keep-alive");
    bounded("keep-alive response", stream.message())
        .await
        .expect("keep-alive response");
    let (ttl, _, _) = ttl_of(&mut c, lease).await;
    assert!(
        (50..60).contains(&ttl),
        "remaining {ttl} just after a keep-alive"
    );
    drop((keeper, stream, c));

    // After a restart the clock restarts with the granted TTL plus one
    // election timeout (1 s), so the remaining time is at most the granted
    // TTL again (60 + 1 - ε truncates to 60), never above it.
    srv.restart();
    let mut c = srv.client().await;
    let (ttl, granted, _) = ttl_of(&mut c, lease).await;
    assert_eq!(granted, 60);
    assert!((50..=60).contains(&ttl), "remaining {ttl} after a restart");
}

#[tokio::test]
async fn time_to_live_of_unknown_lease_is_minus_one() {
    // No error: TTL -1, granted TTL 0, no keys, the ID echoed.
    let (_srv, mut c) = start().await;
    let rev = put_leased(&mut c, "a", "1", 0).await;
    for keys in [false, true] {
        let opts = keys.then(|| LeaseTimeToLiveOptions::new().with_keys());
        let r = bounded("timetolive", c.lease_time_to_live(0x9999, opts))
            .await
            .expect("timetolive of an unknown lease");
        assert_eq!(r.id(), 0x9999);
        assert_eq!(r.ttl(), -1);
        assert_eq!(r.granted_ttl(), 0);
        assert!(r.keys().is_empty());
        check_header(r.header(), rev, "timetolive of an unknown lease");
    }
}

#[tokio::test]
async fn time_to_live_follows_key_attachment() {
    let (_srv, mut c) = start().await;
    let a = grant(&mut c, 600).await;
    let b = grant(&mut c, 600).await;
    put_leased(&mut c, "x", "v", a).await;
    put_leased(&mut c, "y", "v", a).await;
    assert_eq!(ttl_of(&mut c, a).await.2, vec!["x", "y"]);
    // Moving a key to another lease.
    put_leased(&mut c, "y", "v2", b).await;
    assert_eq!(ttl_of(&mut c, a).await.2, vec!["x"]);
    assert_eq!(ttl_of(&mut c, b).await.2, vec!["y"]);
    // Deleting a key detaches it.
    bounded("delete", c.delete("x", None))
        .await
        .expect("delete");
    assert!(ttl_of(&mut c, a).await.2.is_empty());
    // Re-creating it without a lease does not re-attach it.
    put_leased(&mut c, "x", "v3", 0).await;
    assert!(ttl_of(&mut c, a).await.2.is_empty());
    // Revoking `a` now deletes nothing and takes no revision.
    let rev = current_rev(&mut c).await;
    let r = bounded("revoke", c.lease_revoke(a)).await.expect("revoke");
    check_header(r.header(), rev, "revoke of a lease whose keys moved away");
    assert_eq!(read(&mut c, "x").await, Some(("v3".into(), 0)));
    assert_eq!(read(&mut c, "y").await, Some(("v2".into(), b)));
}

// ---------------------------------------------------------------------------
// LeaseLeases
// ---------------------------------------------------------------------------

#[tokio::test]
async fn leases_lists_granted_leases() {
    let (_srv, mut c) = start().await;
    let r = bounded("leases", c.leases()).await.expect("leases");
    assert!(r.leases().is_empty());
    check_header(r.header(), 1, "leases");

    let a = grant(&mut c, 600).await;
    let b = grant(&mut c, 60).await;
    let chosen = bounded(
        "grant",
        c.lease_grant(300, Some(LeaseGrantOptions::new().with_id(77))),
    )
    .await
    .expect("grant")
    .id();
    let r = bounded("leases", c.leases()).await.expect("leases");
    let ids: BTreeSet<i64> = r.leases().iter().map(|l| l.id()).collect();
    assert_eq!(ids, BTreeSet::from([a, b, chosen]));
    assert_eq!(r.leases().len(), 3, "no duplicates");
    check_header(r.header(), 1, "leases");

    bounded("revoke", c.lease_revoke(b)).await.expect("revoke");
    assert_eq!(lease_ids(&mut c).await, BTreeSet::from([a, chosen]));
}

// ---------------------------------------------------------------------------
// LeaseKeepAlive
// ---------------------------------------------------------------------------

#[tokio::test]
async fn keep_alive_keeps_a_lease_alive_past_its_ttl() {
    let (_srv, mut c) = start().await;
    let lease = grant(&mut c, 3).await;
    let rev = put_leased(&mut c, "kept", "v", lease).await;
    let (mut keeper, mut stream) = bounded("keep-alive", c.lease_keep_alive(lease))
        .await
        .expect("open keep-alive");
    assert_eq!(keeper.id(), lease);
    // ~8 s of keep-alives, one a second: well past the 3 s TTL.
    let start = Instant::now();
    let mut answered = 0;
    for i in 0..20 {
        if start.elapsed() >= Duration::from_secs(8) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        keeper.keep_alive().await.expect("send keep-alive");
        let resp = bounded("keep-alive response", stream.message())
            .await
            .unwrap_or_else(|e| panic!("keep-alive {i}: {e}"))
            .unwrap_or_else(|| panic!("keep-alive {i}: stream ended"));
        assert_eq!(resp.id(), lease);
        // A renewed lease reports its full granted TTL.
        assert_eq!(resp.ttl(), 3, "keep-alive {i}");
        check_header(resp.header(), rev, "keep-alive");
        answered += 1;
    }
    assert!(answered >= 6, "only {answered} keep-alives answered");
    assert_eq!(read(&mut c, "kept").await, Some(("v".into(), lease)));
    let (ttl, granted, keys) = ttl_of(&mut c, lease).await;
    assert_eq!(granted, 3);
    assert!((1..=3).contains(&ttl), "remaining {ttl}");
    assert_eq!(keys, vec!["kept"]);

    // Once the keep-alives stop, the lease expires.
    drop(keeper);
    drop(stream);
    wait_gone(&mut c, "kept", Duration::from_secs(3) + EXPIRY_BOUND).await;
    assert!(!lease_ids(&mut c).await.contains(&lease));
}

#[tokio::test]
async fn keep_alive_response_header_and_ttl_via_raw_client() {
    let (srv, mut c) = start().await;
    let lease = grant(&mut c, 60).await;
    let rev = put_leased(&mut c, "k", "v", lease).await;
    let mut raw = raw_lease(&srv).await;
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(pb::LeaseKeepAliveRequest { id: lease })
        .expect("queue keep-alive");
    let mut stream = bounded("keep-alive", raw.lease_keep_alive(rx))
        .await
        .expect("open keep-alive")
        .into_inner();
    let r = bounded("keep-alive response", stream.message())
        .await
        .expect("keep-alive response")
        .expect("stream open");
    assert_eq!(r.id, lease);
    assert_eq!(r.ttl, 60);
    check_raw_header(r.header.as_ref(), rev, "keep-alive");

    // An unknown lease: answered on the same stream with TTL 0 (no error),
    // and the stream stays usable.
    tx.unbounded_send(pb::LeaseKeepAliveRequest { id: 0x4242 })
        .expect("queue keep-alive");
    let r = bounded("keep-alive response", stream.message())
        .await
        .expect("keep-alive response for an unknown lease")
        .expect("stream open");
    assert_eq!(r.id, 0x4242);
    assert_eq!(r.ttl, 0);
    check_raw_header(r.header.as_ref(), rev, "keep-alive of an unknown lease");

    // A revoked lease: TTL 0 too.
    let rev = bounded("revoke", c.lease_revoke(lease))
        .await
        .expect("revoke")
        .header()
        .expect("revoke header")
        .revision();
    tx.unbounded_send(pb::LeaseKeepAliveRequest { id: lease })
        .expect("queue keep-alive");
    let r = bounded("keep-alive response", stream.message())
        .await
        .expect("keep-alive response for a revoked lease")
        .expect("stream open");
    assert_eq!((r.id, r.ttl), (lease, 0));
    check_raw_header(r.header.as_ref(), rev, "keep-alive of a revoked lease");
}

#[tokio::test]
async fn keep_alive_after_the_deadline_does_not_resurrect_the_lease() {
    // etcd: a keep-alive for a lease whose TTL has run out is never a
    // renewal, even when the expiry loop (every 500 ms) has not revoked it
    // yet: the keep-alive waits for the revocation and answers TTL 0.
    let (srv, mut c) = start().await;
    let lease = grant(&mut c, 2).await;
    // The lease's clock started before the grant was answered.
    let granted_at = Instant::now();
    put_leased(&mut c, "late", "v", lease).await;
    let mut raw = raw_lease(&srv).await;
    tokio::time::sleep_until((granted_at + Duration::from_millis(2100)).into()).await;
    // (etcd sends the response headers with the first answer, so the
    // request goes first.)
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(pb::LeaseKeepAliveRequest { id: lease })
        .expect("queue keep-alive");
    let mut stream = bounded("keep-alive", raw.lease_keep_alive(rx))
        .await
        .expect("open keep-alive")
        .into_inner();
    let r = bounded("keep-alive response", stream.message())
        .await
        .expect("keep-alive response")
        .expect("stream open");
    assert_eq!(
        (r.id, r.ttl),
        (lease, 0),
        "a keep-alive 100 ms after the deadline renewed the lease"
    );
    wait_gone(&mut c, "late", EXPIRY_BOUND).await;
    assert!(!lease_ids(&mut c).await.contains(&lease));
}

#[tokio::test]
async fn keep_alive_of_unknown_lease_through_etcd_client_fails() {
    // etcd-client reads the server's TTL 0 as "lease not found".
    let (_srv, mut c) = start().await;
    match bounded("keep-alive", c.lease_keep_alive(0x4243)).await {
        Err(etcd_client::Error::LeaseKeepAliveError(m)) => assert_eq!(m, "lease not found"),
        other => panic!("expected LeaseKeepAliveError, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Leases on Put and Txn
// ---------------------------------------------------------------------------

#[tokio::test]
async fn put_attaches_ignore_lease_keeps_plain_put_detaches() {
    let (_srv, mut c) = start().await;
    let lease = grant(&mut c, 600).await;
    put_leased(&mut c, "k", "v1", lease).await;
    put_leased(&mut c, "stays-leased", "v", lease).await;
    assert_eq!(read(&mut c, "k").await, Some(("v1".into(), lease)));

    bounded(
        "put",
        c.put("k", "v2", Some(PutOptions::new().with_ignore_lease())),
    )
    .await
    .expect("put ignore_lease");
    assert_eq!(read(&mut c, "k").await, Some(("v2".into(), lease)));
    assert_eq!(ttl_of(&mut c, lease).await.2, vec!["k", "stays-leased"]);

    // A plain put detaches the key...
    put_leased(&mut c, "k", "v3", 0).await;
    assert_eq!(read(&mut c, "k").await, Some(("v3".into(), 0)));
    assert_eq!(ttl_of(&mut c, lease).await.2, vec!["stays-leased"]);

    // ...so it survives the lease's revocation, the other key does not.
    bounded("revoke", c.lease_revoke(lease))
        .await
        .expect("revoke");
    assert_eq!(read(&mut c, "k").await, Some(("v3".into(), 0)));
    assert_eq!(read(&mut c, "stays-leased").await, None);
}

#[tokio::test]
async fn put_with_unknown_lease_fails_with_not_found() {
    let (_srv, mut c) = start().await;
    let rev = current_rev(&mut c).await;
    assert_status(
        bounded(
            "put",
            c.put("k", "v", Some(PutOptions::new().with_lease(0x777))),
        )
        .await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
    // In a txn as well; nothing of the txn is applied.
    let txn = Txn::new().and_then([
        TxnOp::put("a", "v", None),
        TxnOp::put("b", "v", Some(PutOptions::new().with_lease(0x777))),
    ]);
    assert_status(
        bounded("txn", c.txn(txn)).await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
    assert_eq!(read(&mut c, "a").await, None);
    assert_eq!(current_rev(&mut c).await, rev);
    // A revoked lease is unknown too.
    let lease = grant(&mut c, 600).await;
    bounded("revoke", c.lease_revoke(lease))
        .await
        .expect("revoke");
    assert_status(
        bounded(
            "put",
            c.put("k", "v", Some(PutOptions::new().with_lease(lease))),
        )
        .await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
}

#[tokio::test]
async fn txn_compares_lease_and_puts_with_lease() {
    let (_srv, mut c) = start().await;
    let lease = grant(&mut c, 600).await;
    put_leased(&mut c, "leased", "v", lease).await;
    put_leased(&mut c, "plain", "v", 0).await;
    let cases = [
        ("leased", CompareOp::Equal, lease, true),
        ("leased", CompareOp::NotEqual, lease, false),
        ("leased", CompareOp::Greater, lease - 1, true),
        ("leased", CompareOp::Less, lease, false),
        ("plain", CompareOp::Equal, 0, true),
        ("plain", CompareOp::Equal, lease, false),
        ("missing", CompareOp::Equal, 0, true),
    ];
    for (key, op, value, want) in cases {
        let txn = Txn::new().when([Compare::lease(key, op, value)]);
        let r = bounded("txn", c.txn(txn)).await.expect("txn");
        assert_eq!(r.succeeded(), want, "lease({key}) {op:?} {value}");
    }
    // A txn put with a lease attaches; the compare sees it afterwards.
    let txn = Txn::new()
        .when([Compare::lease("plain", CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            "plain",
            "v2",
            Some(PutOptions::new().with_lease(lease)),
        )]);
    assert!(bounded("txn", c.txn(txn)).await.expect("txn").succeeded());
    assert_eq!(read(&mut c, "plain").await, Some(("v2".into(), lease)));
    assert_eq!(ttl_of(&mut c, lease).await.2, vec!["leased", "plain"]);
}

// ---------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------

#[tokio::test]
async fn lease_without_keep_alive_expires_and_deletes_keys_in_one_revision() {
    let (_srv, mut c) = start().await;
    let lease = grant(&mut c, 2).await;
    for k in ["e/2", "e/1", "e/3"] {
        put_leased(&mut c, k, "v", lease).await;
    }
    let rev = put_leased(&mut c, "e/plain", "v", 0).await;
    let mut ws = watch_prefix(&mut c, "e/", rev + 1).await;
    let events = collect_events(&mut ws, 3, Duration::from_secs(2) + EXPIRY_BOUND).await;
    assert_eq!(
        events,
        vec![
            (EventType::Delete, "e/1".to_string(), rev + 1),
            (EventType::Delete, "e/2".to_string(), rev + 1),
            (EventType::Delete, "e/3".to_string(), rev + 1),
        ],
        "expiry deletes every key in one revision"
    );
    assert_eq!(current_rev(&mut c).await, rev + 1);
    assert_eq!(read(&mut c, "e/plain").await, Some(("v".into(), 0)));
    assert!(lease_ids(&mut c).await.is_empty());
    let (ttl, granted, keys) = ttl_of(&mut c, lease).await;
    assert_eq!((ttl, granted), (-1, 0));
    assert!(keys.is_empty());
    assert!(collect_events(&mut ws, 1, Duration::from_millis(500))
        .await
        .is_empty());
}

#[tokio::test]
async fn lease_without_keys_expires() {
    let (_srv, mut c) = start().await;
    let lease = grant(&mut c, 2).await;
    let rev = current_rev(&mut c).await;
    let start = Instant::now();
    loop {
        if !lease_ids(&mut c).await.contains(&lease) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2) + EXPIRY_BOUND,
            "lease {lease} still listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ttl_of(&mut c, lease).await.0, -1);
    // Expiring a lease without keys takes no revision.
    assert_eq!(current_rev(&mut c).await, rev);
}

// ---------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------

#[tokio::test]
async fn leases_and_attachments_survive_a_restart_then_expire() {
    let (mut srv, mut c) = start().await;
    let long = grant(&mut c, 600).await;
    let short = grant(&mut c, 5).await;
    let chosen = bounded(
        "grant",
        c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(99))),
    )
    .await
    .expect("grant")
    .id();
    put_leased(&mut c, "long/1", "v", long).await;
    put_leased(&mut c, "long/2", "v", long).await;
    put_leased(&mut c, "short/1", "v", short).await;
    put_leased(&mut c, "moved", "v", chosen).await;
    put_leased(&mut c, "moved", "v2", 0).await;
    let revoked = grant(&mut c, 600).await;
    put_leased(&mut c, "revoked/1", "v", revoked).await;
    bounded("revoke", c.lease_revoke(revoked))
        .await
        .expect("revoke");
    let rev = current_rev(&mut c).await;
    drop(c);

    srv.restart();
    let mut c = srv.client().await;
    assert_eq!(current_rev(&mut c).await, rev);
    assert_eq!(
        lease_ids(&mut c).await,
        BTreeSet::from([long, short, chosen])
    );
    let (ttl, granted, keys) = ttl_of(&mut c, long).await;
    assert_eq!(granted, 600);
    // (etcd: at most 600; see time_to_live_truncates_to_whole_seconds)
    assert!(ttl > 500 && ttl <= 601, "remaining {ttl}");
    assert_eq!(keys, vec!["long/1", "long/2"]);
    assert!(ttl_of(&mut c, chosen).await.2.is_empty());
    let (_, granted, keys) = ttl_of(&mut c, short).await;
    assert_eq!(granted, 5);
    assert_eq!(keys, vec!["short/1"]);
    assert_eq!(read(&mut c, "short/1").await, Some(("v".into(), short)));
    assert_eq!(read(&mut c, "moved").await, Some(("v2".into(), 0)));
    assert_eq!(read(&mut c, "revoked/1").await, None);
    assert_eq!(ttl_of(&mut c, revoked).await.0, -1);

    // Attachment still works after the restart (the revocation deletes it).
    put_leased(&mut c, "long/3", "v", long).await;

    // The short lease still expires after the restart, deleting its key.
    let mut ws = watch_prefix(&mut c, "short/", rev + 1).await;
    let events = collect_events(&mut ws, 1, Duration::from_secs(5) + EXPIRY_BOUND).await;
    assert_eq!(events.len(), 1, "expiry of the short lease after restart");
    assert_eq!(events[0].0, EventType::Delete);
    assert_eq!(events[0].1, "short/1");
    assert!(!lease_ids(&mut c).await.contains(&short));
    assert_eq!(
        ttl_of(&mut c, long).await.2,
        vec!["long/1", "long/2", "long/3"]
    );

    // And the long one is still revocable with all its keys.
    bounded("revoke", c.lease_revoke(long))
        .await
        .expect("revoke after restart");
    for k in ["long/1", "long/2", "long/3"] {
        assert_eq!(read(&mut c, k).await, None, "{k}");
    }
}

#[tokio::test]
async fn keys_of_a_lease_that_expired_while_down_are_deleted_after_restart() {
    // A lease's clock restarts on restart (etcd does not persist remaining
    // TTLs without checkpointing), so it expires a TTL after the restart.
    let (mut srv, mut c) = start().await;
    let lease = grant(&mut c, 3).await;
    put_leased(&mut c, "gone-later", "v", lease).await;
    drop(c);
    srv.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    srv.restart();
    let mut c = srv.client().await;
    wait_gone(&mut c, "gone-later", Duration::from_secs(3) + EXPIRY_BOUND).await;
    assert!(lease_ids(&mut c).await.is_empty());
}

// Reads with a revision still see the leased keys as they were.
#[tokio::test]
async fn history_keeps_the_lease_of_deleted_keys() {
    let (_srv, mut c) = start().await;
    let lease = grant(&mut c, 600).await;
    let rev = put_leased(&mut c, "h", "v", lease).await;
    bounded("revoke", c.lease_revoke(lease))
        .await
        .expect("revoke");
    let r = bounded(
        "get",
        c.get("h", Some(GetOptions::new().with_revision(rev))),
    )
    .await
    .expect("get at revision");
    assert_eq!(r.kvs().len(), 1);
    assert_eq!(r.kvs()[0].lease(), lease);
}
