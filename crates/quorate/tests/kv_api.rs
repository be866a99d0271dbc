//! KV API compatibility suite (Range, Put, DeleteRange, Txn, Compact, response
//! headers, Maintenance.Status, Cluster.MemberList).
//!
//! Runs against a fresh `quorate` server per test by default, and against a
//! real etcd (3.4.23 here) with `QUORATE_TEST_TARGET=etcd`; every expectation
//! in this file was checked against etcd, so a failure under quorate is a
//! compatibility bug in quorate.
//!
//! Most tests use `etcd_client` (what real users run); a few use the raw
//! tonic client from `quorate_proto` where etcd-client rewrites or hides a
//! field (sort KEY+ASCEND, empty `RequestOp`, inner txn headers).

mod common;

use std::cmp::Ordering;
use std::fmt::Debug;

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse,
    KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use quorate_proto::etcdserverpb as pb;
use quorate_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;
use tonic::Code;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const EMPTY_KEY: &str = "etcdserver: key is not provided";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";
const VALUE_PROVIDED: &str = "etcdserver: value is provided";
const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const TOO_LARGE: &str = "etcdserver: request is too large";

/// etcd's default `--max-request-bytes` (1.5 MiB).
const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's gRPC server limit: max request bytes + 512 KiB of overhead (2 MiB).
const GRPC_MAX_RECV: usize = MAX_REQUEST_BYTES + 512 * 1024;

async fn start() -> (common::Server, Client) {
    let srv = common::Server::start();
    let c = srv.client().await;
    (srv, c)
}

async fn raw_kv(srv: &common::Server) -> KvClient<Channel> {
    KvClient::connect(srv.endpoint.clone())
        .await
        .expect("connect raw KV client")
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

/// Same as `assert_status` for a raw tonic result.
#[track_caller]
fn assert_raw_status<T: Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    msg: &str,
) {
    match r {
        Err(s) => {
            assert_eq!(s.code(), code, "wrong gRPC code, status: {s:?}");
            assert_eq!(s.message(), msg, "wrong gRPC message, status: {s:?}");
        }
        Ok(resp) => panic!("expected gRPC status {code:?} {msg:?}, got {resp:?}"),
    }
}

/// Puts `k=v` and returns the revision of the put.
async fn put(c: &mut Client, k: &str, v: &str) -> i64 {
    c.put(k, v, None)
        .await
        .expect("put")
        .header()
        .expect("put header")
        .revision()
}

/// The store's current revision (from a Range header).
async fn current_rev(c: &mut Client) -> i64 {
    c.get("revision-probe", None)
        .await
        .expect("get")
        .header()
        .expect("range header")
        .revision()
}

async fn get(c: &mut Client, k: &str, opts: Option<GetOptions>) -> GetResponse {
    c.get(k, opts).await.expect("get")
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key().to_vec()).unwrap())
        .collect()
}

fn values(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.value().to_vec()).unwrap())
        .collect()
}

fn raw_keys(kvs: &[quorate_proto::mvccpb::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

/// Bytes of a protobuf varint encoding `n`.
fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// Puts each `(key, value)` in order.
async fn put_all(c: &mut Client, kvs: &[(&str, &str)]) {
    for (k, v) in kvs {
        put(c, k, v).await;
    }
}

fn txn_gets(resp: &etcd_client::TxnResponse) -> Vec<GetResponse> {
    resp.op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Range
// ---------------------------------------------------------------------------

#[tokio::test]
async fn fresh_store_starts_at_revision_one() {
    let (_srv, mut c) = start().await;
    let r = get(&mut c, "anything", None).await;
    assert_eq!(r.header().unwrap().revision(), 1);
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);
    assert!(!r.more());
    // The first write is revision 2.
    assert_eq!(put(&mut c, "k", "v").await, 2);
}

#[tokio::test]
async fn range_single_key_returns_only_that_key() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("a", "1"), ("ab", "2"), ("b", "3")]).await;
    let r = get(&mut c, "a", None).await;
    assert_eq!(keys(r.kvs()), ["a"]);
    assert_eq!(values(r.kvs()), ["1"]);
    assert_eq!(r.count(), 1);
    assert!(!r.more());
    let kv = &r.kvs()[0];
    assert_eq!(kv.create_revision(), 2);
    assert_eq!(kv.mod_revision(), 2);
    assert_eq!(kv.version(), 1);
    assert_eq!(kv.lease(), 0);
}

#[tokio::test]
async fn range_missing_key_returns_no_kvs_and_zero_count() {
    let (_srv, mut c) = start().await;
    put(&mut c, "a", "1").await;
    let r = get(&mut c, "missing", None).await;
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);
    assert!(!r.more());
    assert_eq!(r.header().unwrap().revision(), 2);
}

#[tokio::test]
async fn range_with_range_end_is_half_open() {
    let (_srv, mut c) = start().await;
    put_all(
        &mut c,
        &[("a", "1"), ("b", "2"), ("b1", "3"), ("c", "4"), ("d", "5")],
    )
    .await;
    let r = get(&mut c, "b", Some(GetOptions::new().with_range("d"))).await;
    assert_eq!(keys(r.kvs()), ["b", "b1", "c"]);
    assert_eq!(r.count(), 3);
    assert!(!r.more());
}

#[tokio::test]
async fn range_end_not_after_key_returns_nothing() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("a", "1"), ("b", "2"), ("c", "3")]).await;
    // range_end == key: empty interval, not a single-key read.
    let r = get(&mut c, "b", Some(GetOptions::new().with_range("b"))).await;
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);
    // range_end < key: empty, no error.
    let r = get(&mut c, "c", Some(GetOptions::new().with_range("a"))).await;
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);
}

#[tokio::test]
async fn range_with_prefix_returns_prefixed_keys() {
    let (_srv, mut c) = start().await;
    put_all(
        &mut c,
        &[
            ("fo", "0"),
            ("foo", "1"),
            ("foo/a", "2"),
            ("foo0", "3"),
            ("fop", "4"),
        ],
    )
    .await;
    let r = get(&mut c, "foo", Some(GetOptions::new().with_prefix())).await;
    assert_eq!(keys(r.kvs()), ["foo", "foo/a", "foo0"]);
    assert_eq!(r.count(), 3);
}

#[tokio::test]
async fn range_prefix_of_0xff_key_uses_nul_range_end() {
    // The prefix end of "\xff" is "\0" (no upper bound), i.e. all keys >= key.
    let (_srv, mut c) = start().await;
    c.put(vec![0xffu8], "1", None).await.unwrap();
    c.put(vec![0xffu8, 0x01], "2", None).await.unwrap();
    put(&mut c, "a", "3").await;
    let r = c
        .get(vec![0xffu8], Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = r.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    assert_eq!(got, vec![vec![0xffu8], vec![0xffu8, 0x01]]);
}

#[tokio::test]
async fn range_end_nul_returns_all_keys_from_key() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("a", "1"), ("b", "2"), ("c", "3"), ("zzz", "4")]).await;
    let r = get(&mut c, "b", Some(GetOptions::new().with_range("\0"))).await;
    assert_eq!(keys(r.kvs()), ["b", "c", "zzz"]);
    assert_eq!(r.count(), 3);
}

#[tokio::test]
async fn range_key_nul_and_end_nul_returns_all_keys() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("a", "1"), ("b", "2"), ("c", "3")]).await;
    c.put(vec![0u8], "nul", None).await.unwrap();
    let r = c
        .get("\0", Some(GetOptions::new().with_range("\0")))
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = r.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    assert_eq!(
        got,
        vec![vec![0u8], b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    assert_eq!(r.count(), 4);
    // Key "\0" with no range_end is the single key "\0".
    let r = get(&mut c, "\0", None).await;
    assert_eq!(values(r.kvs()), ["nul"]);
}

#[tokio::test]
async fn range_limit_sets_more_and_count_counts_all_matches() {
    let (_srv, mut c) = start().await;
    put_all(
        &mut c,
        &[
            ("k1", "1"),
            ("k2", "2"),
            ("k3", "3"),
            ("k4", "4"),
            ("x", "5"),
        ],
    )
    .await;
    let r = get(
        &mut c,
        "k",
        Some(GetOptions::new().with_prefix().with_limit(2)),
    )
    .await;
    assert_eq!(keys(r.kvs()), ["k1", "k2"]);
    assert!(r.more());
    assert_eq!(r.count(), 4, "count ignores limit");

    // limit == number of matches: no more.
    let r = get(
        &mut c,
        "k",
        Some(GetOptions::new().with_prefix().with_limit(4)),
    )
    .await;
    assert_eq!(r.kvs().len(), 4);
    assert!(!r.more());
    assert_eq!(r.count(), 4);

    // limit larger than matches.
    let r = get(
        &mut c,
        "k",
        Some(GetOptions::new().with_prefix().with_limit(10)),
    )
    .await;
    assert_eq!(r.kvs().len(), 4);
    assert!(!r.more());

    // limit 0 means no limit.
    let r = get(
        &mut c,
        "k",
        Some(GetOptions::new().with_prefix().with_limit(0)),
    )
    .await;
    assert_eq!(r.kvs().len(), 4);
    assert!(!r.more());

    // A negative limit also means no limit.
    let r = get(
        &mut c,
        "k",
        Some(GetOptions::new().with_prefix().with_limit(-1)),
    )
    .await;
    assert_eq!(r.kvs().len(), 4);
    assert!(!r.more());
    assert_eq!(r.count(), 4);
}

#[tokio::test]
async fn range_paging_with_limit_and_next_key() {
    // Kubernetes-style pagination: limit + start after the last key.
    let (_srv, mut c) = start().await;
    for i in 0..7 {
        put(&mut c, &format!("p/{i}"), "v").await;
    }
    let rev = current_rev(&mut c).await;
    let mut seen = Vec::new();
    let mut start_key = "p/".to_string();
    loop {
        let r = get(
            &mut c,
            &start_key,
            Some(
                GetOptions::new()
                    .with_range("p0")
                    .with_limit(3)
                    .with_revision(rev),
            ),
        )
        .await;
        seen.extend(keys(r.kvs()));
        if !r.more() {
            break;
        }
        start_key = format!("{}\0", seen.last().unwrap());
    }
    let expected: Vec<String> = (0..7).map(|i| format!("p/{i}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn range_count_only_returns_count_without_kvs() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("k1", "1"), ("k2", "2"), ("k3", "3")]).await;
    let r = get(
        &mut c,
        "k",
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await;
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 3);
    assert!(!r.more());
    // With a limit, count_only still counts everything and `more` stays false
    // (etcd computes `more` from the returned kvs, of which there are none).
    let r = get(
        &mut c,
        "k",
        Some(
            GetOptions::new()
                .with_prefix()
                .with_count_only()
                .with_limit(1),
        ),
    )
    .await;
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 3);
    assert!(!r.more());
    assert_eq!(r.header().unwrap().revision(), 4);
}

#[tokio::test]
async fn range_keys_only_omits_values_but_keeps_metadata() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("k1", "v1"), ("k2", "v2"), ("k1", "v1b")]).await;
    let r = get(
        &mut c,
        "k",
        Some(GetOptions::new().with_prefix().with_keys_only()),
    )
    .await;
    assert_eq!(keys(r.kvs()), ["k1", "k2"]);
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(r.count(), 2);
    let k1 = &r.kvs()[0];
    assert_eq!(k1.create_revision(), 2);
    assert_eq!(k1.mod_revision(), 4);
    assert_eq!(k1.version(), 2);
}

#[tokio::test]
async fn range_at_historical_revision_reads_old_value() {
    let (_srv, mut c) = start().await;
    let r1 = put(&mut c, "k", "v1").await;
    let r2 = put(&mut c, "k", "v2").await;
    put(&mut c, "k", "v3").await;

    let r = get(&mut c, "k", Some(GetOptions::new().with_revision(r1))).await;
    assert_eq!(values(r.kvs()), ["v1"]);
    assert_eq!(r.kvs()[0].version(), 1);
    assert_eq!(r.kvs()[0].mod_revision(), r1);

    let r = get(&mut c, "k", Some(GetOptions::new().with_revision(r2))).await;
    assert_eq!(values(r.kvs()), ["v2"]);
    assert_eq!(r.kvs()[0].version(), 2);
    assert_eq!(r.kvs()[0].create_revision(), r1);
    assert_eq!(r.kvs()[0].mod_revision(), r2);

    let r = get(&mut c, "k", None).await;
    assert_eq!(values(r.kvs()), ["v3"]);
}

#[tokio::test]
async fn range_at_historical_revision_sees_key_deleted_later() {
    let (_srv, mut c) = start().await;
    let created = put(&mut c, "gone", "old").await;
    put(&mut c, "other", "x").await;
    let deleted = c.delete("gone", None).await.unwrap();
    let del_rev = deleted.header().unwrap().revision();

    let now = get(&mut c, "gone", None).await;
    assert!(now.kvs().is_empty());

    let r = get(
        &mut c,
        "gone",
        Some(GetOptions::new().with_revision(del_rev - 1)),
    )
    .await;
    assert_eq!(values(r.kvs()), ["old"]);
    assert_eq!(r.kvs()[0].create_revision(), created);

    // At the deletion revision itself the key is gone.
    let r = get(
        &mut c,
        "gone",
        Some(GetOptions::new().with_revision(del_rev)),
    )
    .await;
    assert!(r.kvs().is_empty());

    // Range over history: count reflects the keys alive at that revision.
    let r = get(
        &mut c,
        "\0",
        Some(GetOptions::new().with_all_keys().with_revision(created)),
    )
    .await;
    assert_eq!(keys(r.kvs()), ["gone"]);
    assert_eq!(r.count(), 1);
}

#[tokio::test]
async fn range_at_revision_before_key_existed_returns_nothing() {
    let (_srv, mut c) = start().await;
    put(&mut c, "a", "1").await;
    put(&mut c, "b", "2").await;
    let r = get(&mut c, "b", Some(GetOptions::new().with_revision(2))).await;
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);
    // Revision 1 (the empty initial store) is readable.
    let r = get(&mut c, "a", Some(GetOptions::new().with_revision(1))).await;
    assert!(r.kvs().is_empty());
}

#[tokio::test]
async fn range_header_revision_is_current_revision_even_for_historical_read() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v1").await;
    put(&mut c, "k", "v2").await;
    let latest = put(&mut c, "k", "v3").await;
    let r = get(&mut c, "k", Some(GetOptions::new().with_revision(2))).await;
    assert_eq!(values(r.kvs()), ["v1"]);
    assert_eq!(r.header().unwrap().revision(), latest);
}

#[tokio::test]
async fn range_negative_revision_reads_latest() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v1").await;
    put(&mut c, "k", "v2").await;
    let r = get(&mut c, "k", Some(GetOptions::new().with_revision(-5))).await;
    assert_eq!(values(r.kvs()), ["v2"]);
}

/// Builds the store used by the sort tests. Every sort target gives a
/// different, tie-free order:
///
/// | key | value | create | mod | version |
/// |-----|-------|--------|-----|---------|
/// | a   | 4     | 4      | 4   | 1       |
/// | b   | 3     | 2      | 10  | 3       |
/// | c   | 2     | 5      | 11  | 2       |
/// | d   | 1     | 3      | 8   | 4       |
async fn sort_fixture(c: &mut Client) {
    put_all(
        c,
        &[
            ("b", "3"), // rev 2
            ("d", "1"), // rev 3
            ("a", "4"), // rev 4
            ("c", "2"), // rev 5
            ("d", "1"), // rev 6
            ("d", "1"), // rev 7
            ("d", "1"), // rev 8
            ("b", "3"), // rev 9
            ("b", "3"), // rev 10
            ("c", "2"), // rev 11
        ],
    )
    .await;
}

fn sorted_range(
    order: pb::range_request::SortOrder,
    target: pb::range_request::SortTarget,
) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b"a".to_vec(),
        range_end: b"e".to_vec(),
        sort_order: order as i32,
        sort_target: target as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn range_sorts_by_every_target_in_both_orders() {
    use pb::range_request::{SortOrder, SortTarget};
    let srv = common::Server::start();
    let mut c = srv.client().await;
    sort_fixture(&mut c).await;
    let mut kv = raw_kv(&srv).await;

    let cases = [
        (SortTarget::Key, ["a", "b", "c", "d"]),
        (SortTarget::Version, ["a", "c", "b", "d"]),
        (SortTarget::Create, ["b", "d", "a", "c"]),
        (SortTarget::Mod, ["a", "d", "b", "c"]),
        (SortTarget::Value, ["d", "c", "b", "a"]),
    ];
    for (target, ascending) in cases {
        let r = kv
            .range(sorted_range(SortOrder::Ascend, target))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(raw_keys(&r.kvs), ascending, "{target:?} ascend");
        assert_eq!(r.count, 4);

        let mut descending = ascending.to_vec();
        descending.reverse();
        let r = kv
            .range(sorted_range(SortOrder::Descend, target))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(raw_keys(&r.kvs), descending, "{target:?} descend");
    }
}

#[tokio::test]
async fn range_sort_target_with_order_none_sorts_ascending_except_key() {
    use pb::range_request::{SortOrder, SortTarget};
    let srv = common::Server::start();
    let mut c = srv.client().await;
    sort_fixture(&mut c).await;
    let mut kv = raw_kv(&srv).await;

    // etcd: a non-KEY sort target with sort_order NONE is sorted ASCEND.
    let cases = [
        (SortTarget::Key, ["a", "b", "c", "d"]),
        (SortTarget::Version, ["a", "c", "b", "d"]),
        (SortTarget::Create, ["b", "d", "a", "c"]),
        (SortTarget::Mod, ["a", "d", "b", "c"]),
        (SortTarget::Value, ["d", "c", "b", "a"]),
    ];
    for (target, expected) in cases {
        let r = kv
            .range(sorted_range(SortOrder::None, target))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(raw_keys(&r.kvs), expected, "{target:?} with order NONE");
    }

    // etcd-client's with_sort is the same on the wire for these.
    let r = get(
        &mut c,
        "a",
        Some(GetOptions::new().with_range("e").with_sort(
            etcd_client::SortTarget::Value,
            etcd_client::SortOrder::Descend,
        )),
    )
    .await;
    assert_eq!(keys(r.kvs()), ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn range_sort_is_applied_before_limit() {
    use pb::range_request::{SortOrder, SortTarget};
    let srv = common::Server::start();
    let mut c = srv.client().await;
    sort_fixture(&mut c).await;
    let mut kv = raw_kv(&srv).await;

    let mut req = sorted_range(SortOrder::Descend, SortTarget::Mod);
    req.limit = 2;
    let r = kv.range(req).await.unwrap().into_inner();
    assert_eq!(raw_keys(&r.kvs), ["c", "b"]);
    assert!(r.more);
    assert_eq!(r.count, 4);

    let mut req = sorted_range(SortOrder::Descend, SortTarget::Key);
    req.limit = 1;
    let r = kv.range(req).await.unwrap().into_inner();
    assert_eq!(raw_keys(&r.kvs), ["d"]);
    assert!(r.more);

    let mut req = sorted_range(SortOrder::None, SortTarget::Create);
    req.limit = 3;
    let r = kv.range(req).await.unwrap().into_inner();
    assert_eq!(raw_keys(&r.kvs), ["b", "d", "a"]);
    assert!(r.more);
    assert_eq!(r.count, 4);
}

#[tokio::test]
async fn range_serializable_reads_same_data() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("k1", "1"), ("k2", "2")]).await;
    let lin = get(&mut c, "k", Some(GetOptions::new().with_prefix())).await;
    let ser = get(
        &mut c,
        "k",
        Some(GetOptions::new().with_prefix().with_serializable()),
    )
    .await;
    assert_eq!(keys(ser.kvs()), keys(lin.kvs()));
    assert_eq!(values(ser.kvs()), values(lin.kvs()));
    assert_eq!(ser.count(), 2);
    assert_eq!(
        ser.header().unwrap().revision(),
        lin.header().unwrap().revision()
    );
    // Serializable historical reads work too.
    let r = get(
        &mut c,
        "k1",
        Some(GetOptions::new().with_serializable().with_revision(2)),
    )
    .await;
    assert_eq!(values(r.kvs()), ["1"]);
}

/// Fixture for the revision filters:
/// k1: create 2, mod 6; k2: create 3, mod 3; k3: create 4, mod 7; k4: create 5, mod 5.
async fn filter_fixture(c: &mut Client) {
    put_all(
        c,
        &[
            ("k1", "a"), // 2
            ("k2", "a"), // 3
            ("k3", "a"), // 4
            ("k4", "a"), // 5
            ("k1", "b"), // 6
            ("k3", "b"), // 7
        ],
    )
    .await;
}

#[tokio::test]
async fn range_min_max_mod_revision_filters() {
    let (_srv, mut c) = start().await;
    filter_fixture(&mut c).await;
    let opts = || GetOptions::new().with_prefix();

    let r = get(&mut c, "k", Some(opts().with_min_mod_revision(5))).await;
    assert_eq!(keys(r.kvs()), ["k1", "k3", "k4"]);
    assert_eq!(r.count(), 4, "count is not affected by filters");

    let r = get(&mut c, "k", Some(opts().with_max_mod_revision(5))).await;
    assert_eq!(keys(r.kvs()), ["k2", "k4"]);

    // Both bounds are inclusive.
    let r = get(
        &mut c,
        "k",
        Some(opts().with_min_mod_revision(5).with_max_mod_revision(6)),
    )
    .await;
    assert_eq!(keys(r.kvs()), ["k1", "k4"]);
    assert_eq!(r.count(), 4);
}

#[tokio::test]
async fn range_min_max_create_revision_filters() {
    let (_srv, mut c) = start().await;
    filter_fixture(&mut c).await;
    let opts = || GetOptions::new().with_prefix();

    let r = get(&mut c, "k", Some(opts().with_min_create_revision(4))).await;
    assert_eq!(keys(r.kvs()), ["k3", "k4"]);
    assert_eq!(r.count(), 4);

    let r = get(&mut c, "k", Some(opts().with_max_create_revision(3))).await;
    assert_eq!(keys(r.kvs()), ["k1", "k2"]);

    let r = get(
        &mut c,
        "k",
        Some(
            opts()
                .with_min_create_revision(3)
                .with_max_create_revision(4),
        ),
    )
    .await;
    assert_eq!(keys(r.kvs()), ["k2", "k3"]);
}

#[tokio::test]
async fn range_filters_apply_before_limit_and_more() {
    let (_srv, mut c) = start().await;
    filter_fixture(&mut c).await;
    // Matching after filtering: k1, k3, k4. Limit 2 -> k1, k3 and more.
    let r = get(
        &mut c,
        "k",
        Some(
            GetOptions::new()
                .with_prefix()
                .with_min_mod_revision(5)
                .with_limit(2),
        ),
    )
    .await;
    assert_eq!(keys(r.kvs()), ["k1", "k3"]);
    assert!(r.more());
    assert_eq!(r.count(), 4);

    // Limit equal to the filtered size: no more, although the unfiltered
    // range has more keys than the limit.
    let r = get(
        &mut c,
        "k",
        Some(
            GetOptions::new()
                .with_prefix()
                .with_min_mod_revision(5)
                .with_limit(3),
        ),
    )
    .await;
    assert_eq!(keys(r.kvs()), ["k1", "k3", "k4"]);
    assert!(!r.more());
    assert_eq!(r.count(), 4);
}

#[tokio::test]
async fn range_empty_key_fails_with_key_not_provided() {
    let (srv, mut c) = start().await;
    assert_status(c.get("", None).await, Code::InvalidArgument, EMPTY_KEY);
    // Also when only range_end is given.
    let mut kv = raw_kv(&srv).await;
    let r = kv
        .range(pb::RangeRequest {
            key: vec![],
            range_end: b"z".to_vec(),
            ..Default::default()
        })
        .await;
    assert_raw_status(r, Code::InvalidArgument, EMPTY_KEY);
}

#[tokio::test]
async fn range_future_revision_fails_with_out_of_range() {
    let (_srv, mut c) = start().await;
    let rev = put(&mut c, "k", "v").await;
    // The current revision itself is fine.
    let r = get(&mut c, "k", Some(GetOptions::new().with_revision(rev))).await;
    assert_eq!(values(r.kvs()), ["v"]);
    assert_status(
        c.get("k", Some(GetOptions::new().with_revision(rev + 1)))
            .await,
        Code::OutOfRange,
        FUTURE_REV,
    );
    assert_status(
        c.get("k", Some(GetOptions::new().with_revision(1_000_000)))
            .await,
        Code::OutOfRange,
        FUTURE_REV,
    );
}

#[tokio::test]
async fn range_compacted_revision_fails_with_out_of_range() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v1").await; // 2
    put(&mut c, "k", "v2").await; // 3
    put(&mut c, "k", "v3").await; // 4
    c.compact(3, None).await.unwrap();
    assert_status(
        c.get("k", Some(GetOptions::new().with_revision(2))).await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_status(
        c.get("k", Some(GetOptions::new().with_revision(1))).await,
        Code::OutOfRange,
        COMPACTED,
    );
    // A future revision is reported as future even after compaction.
    assert_status(
        c.get("k", Some(GetOptions::new().with_revision(99))).await,
        Code::OutOfRange,
        FUTURE_REV,
    );
}

// ---------------------------------------------------------------------------
// Put
// ---------------------------------------------------------------------------

#[tokio::test]
async fn put_new_key_sets_create_and_mod_revision_and_version_one() {
    let (_srv, mut c) = start().await;
    put(&mut c, "other", "x").await; // 2
    let resp = c.put("k", "v", None).await.unwrap();
    assert_eq!(resp.header().unwrap().revision(), 3);
    assert!(resp.prev_key().is_none());
    let kv = get(&mut c, "k", None).await.kvs()[0].clone();
    assert_eq!(kv.create_revision(), 3);
    assert_eq!(kv.mod_revision(), 3);
    assert_eq!(kv.version(), 1);
    assert_eq!(kv.value(), b"v");
}

#[tokio::test]
async fn put_existing_key_increments_version_and_keeps_create_revision() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v1").await; // 2
    put(&mut c, "x", "y").await; // 3
    put(&mut c, "k", "v2").await; // 4
                                  // Writing the same value again is still a new revision and version.
    let rev = put(&mut c, "k", "v2").await; // 5
    assert_eq!(rev, 5);
    let kv = get(&mut c, "k", None).await.kvs()[0].clone();
    assert_eq!(kv.create_revision(), 2);
    assert_eq!(kv.mod_revision(), 5);
    assert_eq!(kv.version(), 3);
    assert_eq!(kv.value(), b"v2");
}

#[tokio::test]
async fn put_after_delete_resets_version_and_create_revision() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v1").await; // 2
    put(&mut c, "k", "v2").await; // 3
    let del = c.delete("k", None).await.unwrap(); // 4
    assert_eq!(del.header().unwrap().revision(), 4);
    let rev = put(&mut c, "k", "v3").await; // 5
    assert_eq!(rev, 5);
    let kv = get(&mut c, "k", None).await.kvs()[0].clone();
    assert_eq!(kv.create_revision(), 5);
    assert_eq!(kv.mod_revision(), 5);
    assert_eq!(kv.version(), 1);
}

#[tokio::test]
async fn put_prev_kv_returns_previous_pair() {
    let (_srv, mut c) = start().await;
    let resp = c
        .put("k", "v1", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(resp.prev_key().is_none(), "no prev_kv for a new key");

    let resp = c
        .put("k", "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    let prev = resp.prev_key().expect("prev_kv");
    assert_eq!(prev.key(), b"k");
    assert_eq!(prev.value(), b"v1");
    assert_eq!(prev.version(), 1);
    assert_eq!(prev.create_revision(), 2);
    assert_eq!(prev.mod_revision(), 2);

    // Without prev_kv nothing is returned.
    let resp = c.put("k", "v3", None).await.unwrap();
    assert!(resp.prev_key().is_none());

    // After a delete the key is new again: no prev_kv.
    c.delete("k", None).await.unwrap();
    let resp = c
        .put("k", "v4", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(resp.prev_key().is_none());
}

#[tokio::test]
async fn put_ignore_value_keeps_value_and_bumps_version() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "original").await; // 2
    let resp = c
        .put(
            "k",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(resp.header().unwrap().revision(), 3);
    assert_eq!(resp.prev_key().unwrap().value(), b"original");
    let kv = get(&mut c, "k", None).await.kvs()[0].clone();
    assert_eq!(kv.value(), b"original");
    assert_eq!(kv.version(), 2);
    assert_eq!(kv.mod_revision(), 3);
    assert_eq!(kv.create_revision(), 2);
}

#[tokio::test]
async fn put_ignore_value_on_missing_key_fails_with_key_not_found() {
    let (_srv, mut c) = start().await;
    put(&mut c, "other", "x").await;
    let before = current_rev(&mut c).await;
    assert_status(
        c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
    );
    assert_eq!(
        current_rev(&mut c).await,
        before,
        "failed put must not bump"
    );
    assert!(get(&mut c, "missing", None).await.kvs().is_empty());
}

#[tokio::test]
async fn put_ignore_value_with_value_fails_with_value_provided() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v").await;
    assert_status(
        c.put("k", "new", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        VALUE_PROVIDED,
    );
    assert_eq!(values(get(&mut c, "k", None).await.kvs()), ["v"]);
}

#[tokio::test]
async fn put_ignore_lease_keeps_existing_lease() {
    let (_srv, mut c) = start().await;
    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.put("k", "v1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    assert_eq!(get(&mut c, "k", None).await.kvs()[0].lease(), lease);

    c.put("k", "v2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    let kv = get(&mut c, "k", None).await.kvs()[0].clone();
    assert_eq!(kv.lease(), lease);
    assert_eq!(kv.value(), b"v2");

    // A plain put detaches the lease.
    c.put("k", "v3", None).await.unwrap();
    assert_eq!(get(&mut c, "k", None).await.kvs()[0].lease(), 0);
}

#[tokio::test]
async fn put_ignore_lease_on_missing_key_fails_with_key_not_found() {
    let (_srv, mut c) = start().await;
    assert_status(
        c.put("missing", "v", Some(PutOptions::new().with_ignore_lease()))
            .await,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
    );
    assert_eq!(current_rev(&mut c).await, 1);
}

#[tokio::test]
async fn put_ignore_lease_with_lease_fails_with_lease_provided() {
    // Checked before anything else: the lease need not exist, nor the key.
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v").await;
    for key in ["k", "missing"] {
        assert_status(
            c.put(
                key,
                "v2",
                Some(PutOptions::new().with_ignore_lease().with_lease(12345)),
            )
            .await,
            Code::InvalidArgument,
            LEASE_PROVIDED,
        );
    }
    // Request validation order: empty key, then ignore_value+value, then
    // ignore_lease+lease.
    assert_status(
        c.put(
            "",
            "v",
            Some(
                PutOptions::new()
                    .with_ignore_value()
                    .with_ignore_lease()
                    .with_lease(1),
            ),
        )
        .await,
        Code::InvalidArgument,
        EMPTY_KEY,
    );
    assert_status(
        c.put(
            "k",
            "v",
            Some(
                PutOptions::new()
                    .with_ignore_value()
                    .with_ignore_lease()
                    .with_lease(1),
            ),
        )
        .await,
        Code::InvalidArgument,
        VALUE_PROVIDED,
    );
    assert_eq!(current_rev(&mut c).await, 2);
}

#[tokio::test]
async fn put_with_unknown_lease_fails_with_lease_not_found() {
    let (_srv, mut c) = start().await;
    assert_status(
        c.put("k", "v", Some(PutOptions::new().with_lease(12345)))
            .await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
    assert!(get(&mut c, "k", None).await.kvs().is_empty());
    assert_eq!(current_rev(&mut c).await, 1);
}

#[tokio::test]
async fn put_empty_key_fails_with_key_not_provided() {
    let (_srv, mut c) = start().await;
    assert_status(c.put("", "v", None).await, Code::InvalidArgument, EMPTY_KEY);
    assert_eq!(current_rev(&mut c).await, 1);
}

#[tokio::test]
async fn put_value_just_under_max_request_bytes_succeeds() {
    let (_srv, mut c) = start().await;
    // etcd limits the raft entry (the request plus ~18 bytes of framing) to
    // 1.5 MiB; 64 bytes under the limit is accepted.
    let value = vec![b'x'; MAX_REQUEST_BYTES - 64];
    c.put("big", value.clone(), None).await.unwrap();
    let r = get(&mut c, "big", None).await;
    assert_eq!(r.kvs()[0].value(), value.as_slice());
    // So is a 1.4 MiB value inside a txn.
    let value = vec![b'y'; 1400 * 1024];
    c.txn(Txn::new().and_then([TxnOp::put("big2", value, None)]))
        .await
        .unwrap();
}

#[tokio::test]
async fn put_over_max_request_bytes_fails_with_request_too_large() {
    let (_srv, mut c) = start().await;
    // Exactly 1.5 MiB of value: the raft entry (request + header) exceeds
    // --max-request-bytes, while the gRPC message is still under 2 MiB.
    let value = vec![b'x'; MAX_REQUEST_BYTES];
    assert_status(
        c.put("big", value, None).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    let value = vec![b'x'; MAX_REQUEST_BYTES + 100 * 1024];
    assert_status(
        c.put("big", value, None).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    // The same limit applies to a txn as a whole.
    let half = vec![b'x'; MAX_REQUEST_BYTES / 2 + 1024];
    assert_status(
        c.txn(Txn::new().and_then([
            TxnOp::put("a", half.clone(), None),
            TxnOp::put("b", half, None),
        ]))
        .await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    assert_eq!(current_rev(&mut c).await, 1);
}

#[tokio::test]
async fn put_over_grpc_message_limit_fails_with_resource_exhausted() {
    let (_srv, mut c) = start().await;
    // Above 2 MiB the gRPC server rejects the message before etcd sees it.
    let value = vec![b'x'; 3 * 1024 * 1024];
    // Protobuf size of PutRequest{key: "big", value}: two length-delimited fields.
    let encoded = (1 + varint_len(3) + 3) + (1 + varint_len(value.len()) + value.len());
    let msg = format!("grpc: received message larger than max ({encoded} vs. {GRPC_MAX_RECV})");
    assert_status(
        c.put("big", value, None).await,
        Code::ResourceExhausted,
        &msg,
    );
    assert_eq!(current_rev(&mut c).await, 1);
}

// ---------------------------------------------------------------------------
// DeleteRange
// ---------------------------------------------------------------------------

#[tokio::test]
async fn delete_single_key_reports_one_deleted() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("a", "1"), ("ab", "2")]).await;
    let resp = c.delete("a", None).await.unwrap();
    assert_eq!(resp.deleted(), 1);
    assert!(resp.prev_kvs().is_empty(), "prev_kvs only when asked");
    assert_eq!(resp.header().unwrap().revision(), 4);
    let r = get(&mut c, "a", Some(GetOptions::new().with_prefix())).await;
    assert_eq!(keys(r.kvs()), ["ab"]);
}

#[tokio::test]
async fn delete_range_is_half_open_and_uses_one_revision() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]).await; // 2..5
    let resp = c
        .delete("b", Some(DeleteOptions::new().with_range("d")))
        .await
        .unwrap();
    assert_eq!(resp.deleted(), 2);
    assert_eq!(
        resp.header().unwrap().revision(),
        6,
        "one revision per delete"
    );
    let r = get(&mut c, "\0", Some(GetOptions::new().with_all_keys())).await;
    assert_eq!(keys(r.kvs()), ["a", "d"]);
    assert_eq!(put(&mut c, "e", "5").await, 7);
}

#[tokio::test]
async fn delete_prefix_deletes_prefixed_keys_only() {
    let (_srv, mut c) = start().await;
    put_all(
        &mut c,
        &[("fo", "0"), ("foo", "1"), ("foo/x", "2"), ("fop", "3")],
    )
    .await;
    let resp = c
        .delete("foo", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(resp.deleted(), 2);
    let r = get(&mut c, "\0", Some(GetOptions::new().with_all_keys())).await;
    assert_eq!(keys(r.kvs()), ["fo", "fop"]);
}

#[tokio::test]
async fn delete_from_key_with_nul_range_end() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("a", "1"), ("b", "2"), ("c", "3")]).await;
    let resp = c
        .delete("b", Some(DeleteOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(resp.deleted(), 2);
    let r = get(&mut c, "\0", Some(GetOptions::new().with_all_keys())).await;
    assert_eq!(keys(r.kvs()), ["a"]);
}

#[tokio::test]
async fn delete_all_keys_with_nul_key_and_range_end() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("a", "1"), ("b", "2"), ("c", "3")]).await;
    let resp = c
        .delete("\0", Some(DeleteOptions::new().with_range("\0")))
        .await
        .unwrap();
    assert_eq!(resp.deleted(), 3);
    let r = get(&mut c, "\0", Some(GetOptions::new().with_all_keys())).await;
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);
}

#[tokio::test]
async fn delete_prev_kv_returns_deleted_pairs_in_key_order() {
    let (_srv, mut c) = start().await;
    put_all(
        &mut c,
        &[("k2", "b"), ("k1", "a"), ("k3", "c"), ("k1", "a2")],
    )
    .await;
    let resp = c
        .delete(
            "k",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(resp.deleted(), 3);
    assert_eq!(keys(resp.prev_kvs()), ["k1", "k2", "k3"]);
    assert_eq!(values(resp.prev_kvs()), ["a2", "b", "c"]);
    let k1 = &resp.prev_kvs()[0];
    assert_eq!(k1.version(), 2);
    assert_eq!(k1.create_revision(), 3);
    assert_eq!(k1.mod_revision(), 5);
}

#[tokio::test]
async fn delete_missing_key_does_not_bump_revision() {
    let (_srv, mut c) = start().await;
    put(&mut c, "a", "1").await; // 2
    let resp = c
        .delete("missing", Some(DeleteOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(resp.deleted(), 0);
    assert!(resp.prev_kvs().is_empty());
    assert_eq!(resp.header().unwrap().revision(), 2);
    let resp = c
        .delete("x", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(resp.deleted(), 0);
    assert_eq!(resp.header().unwrap().revision(), 2);
    // Deleting an already-deleted key does not bump either.
    c.delete("a", None).await.unwrap(); // 3
    let resp = c.delete("a", None).await.unwrap();
    assert_eq!(resp.deleted(), 0);
    assert_eq!(resp.header().unwrap().revision(), 3);
    assert_eq!(put(&mut c, "b", "2").await, 4);
}

#[tokio::test]
async fn delete_empty_key_fails_with_key_not_provided() {
    let (_srv, mut c) = start().await;
    assert_status(c.delete("", None).await, Code::InvalidArgument, EMPTY_KEY);
}

// ---------------------------------------------------------------------------
// Txn: compares
// ---------------------------------------------------------------------------

const OPS: [CompareOp; 4] = [
    CompareOp::Equal,
    CompareOp::Greater,
    CompareOp::Less,
    CompareOp::NotEqual,
];

/// Whether `stored <op> given` holds, with `ord = stored.cmp(given)`.
fn holds(op: CompareOp, ord: Ordering) -> bool {
    match op {
        CompareOp::Equal => ord == Ordering::Equal,
        CompareOp::Greater => ord == Ordering::Greater,
        CompareOp::Less => ord == Ordering::Less,
        CompareOp::NotEqual => ord != Ordering::Equal,
    }
}

async fn txn_succeeds(c: &mut Client, cmp: Compare) -> bool {
    let desc = format!("{cmp:?}");
    c.txn(Txn::new().when([cmp]))
        .await
        .unwrap_or_else(|e| panic!("txn {desc}: {e}"))
        .succeeded()
}

/// Checks every result against an integer target, for given < / = / > stored.
async fn check_int_compare(
    c: &mut Client,
    stored: i64,
    mk: impl Fn(CompareOp, i64) -> Compare,
    what: &str,
) {
    for given in [stored - 1, stored, stored + 1] {
        for op in OPS {
            let want = holds(op, stored.cmp(&given));
            assert_eq!(
                txn_succeeds(c, mk(op, given)).await,
                want,
                "{what}: stored {stored} {op:?} {given}"
            );
        }
    }
}

#[tokio::test]
async fn txn_compare_value_with_every_result() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "m").await;
    // Values compare as bytes: "" < "l" < "m" < "ma" < "n".
    for given in ["", "l", "m", "ma", "n"] {
        for op in OPS {
            let want = holds(op, "m".as_bytes().cmp(given.as_bytes()));
            assert_eq!(
                txn_succeeds(&mut c, Compare::value("k", op, given)).await,
                want,
                "value \"m\" {op:?} {given:?}"
            );
        }
    }
}

#[tokio::test]
async fn txn_compare_version_with_every_result() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "1").await;
    put(&mut c, "k", "2").await;
    check_int_compare(&mut c, 2, |op, v| Compare::version("k", op, v), "version").await;
}

#[tokio::test]
async fn txn_compare_create_revision_with_every_result() {
    let (_srv, mut c) = start().await;
    put(&mut c, "x", "1").await; // 2
    put(&mut c, "k", "1").await; // 3
    put(&mut c, "k", "2").await; // 4
    check_int_compare(
        &mut c,
        3,
        |op, v| Compare::create_revision("k", op, v),
        "create",
    )
    .await;
}

#[tokio::test]
async fn txn_compare_mod_revision_with_every_result() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "1").await; // 2
    put(&mut c, "k", "2").await; // 3
    put(&mut c, "x", "1").await; // 4
    check_int_compare(&mut c, 3, |op, v| Compare::mod_revision("k", op, v), "mod").await;
}

#[tokio::test]
async fn txn_compare_lease_with_every_result() {
    let (_srv, mut c) = start().await;
    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.put("k", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    check_int_compare(&mut c, lease, |op, v| Compare::lease("k", op, v), "lease").await;
    // A key without a lease has lease 0.
    put(&mut c, "plain", "v").await;
    check_int_compare(
        &mut c,
        0,
        |op, v| Compare::lease("plain", op, v),
        "no lease",
    )
    .await;
}

#[tokio::test]
async fn txn_compare_on_missing_key_treats_numbers_as_zero() {
    let (_srv, mut c) = start().await;
    put(&mut c, "other", "v").await;
    check_int_compare(
        &mut c,
        0,
        |op, v| Compare::version("nope", op, v),
        "version",
    )
    .await;
    check_int_compare(
        &mut c,
        0,
        |op, v| Compare::create_revision("nope", op, v),
        "create",
    )
    .await;
    check_int_compare(
        &mut c,
        0,
        |op, v| Compare::mod_revision("nope", op, v),
        "mod",
    )
    .await;
    check_int_compare(&mut c, 0, |op, v| Compare::lease("nope", op, v), "lease").await;
}

#[tokio::test]
async fn txn_compare_value_on_missing_key_always_fails() {
    let (_srv, mut c) = start().await;
    for given in ["", "a"] {
        for op in OPS {
            assert!(
                !txn_succeeds(&mut c, Compare::value("nope", op, given)).await,
                "value of missing key {op:?} {given:?} must be false"
            );
        }
    }
    // A deleted key is missing too.
    put(&mut c, "gone", "v").await;
    c.delete("gone", None).await.unwrap();
    assert!(!txn_succeeds(&mut c, Compare::value("gone", CompareOp::NotEqual, "x")).await);
    assert!(txn_succeeds(&mut c, Compare::version("gone", CompareOp::Equal, 0)).await);
}

#[tokio::test]
async fn txn_compare_over_range_requires_every_key_to_match() {
    let (_srv, mut c) = start().await;
    put_all(
        &mut c,
        &[("r/1", "x"), ("r/2", "x"), ("r/2", "x"), ("s", "y")],
    )
    .await;
    // versions: r/1 = 1, r/2 = 2
    let pre = |cmp: Compare| cmp.with_prefix();
    assert!(txn_succeeds(&mut c, pre(Compare::version("r/", CompareOp::Greater, 0))).await);
    assert!(txn_succeeds(&mut c, pre(Compare::version("r/", CompareOp::Less, 3))).await);
    assert!(!txn_succeeds(&mut c, pre(Compare::version("r/", CompareOp::Equal, 1))).await);
    assert!(!txn_succeeds(&mut c, pre(Compare::version("r/", CompareOp::Greater, 1))).await);
    assert!(txn_succeeds(&mut c, pre(Compare::value("r/", CompareOp::Equal, "x"))).await);
    assert!(!txn_succeeds(&mut c, pre(Compare::value("r/", CompareOp::NotEqual, "x"))).await);

    // Explicit range_end, half-open: [r/1, r/2) only holds r/1.
    assert!(
        txn_succeeds(
            &mut c,
            Compare::version("r/1", CompareOp::Equal, 1).with_range("r/2")
        )
        .await
    );
    // range_end "\0": every key >= "r/" (includes "s" with value "y").
    assert!(
        !txn_succeeds(
            &mut c,
            Compare::value("r/", CompareOp::Equal, "x").with_range("\0")
        )
        .await
    );
    assert!(
        txn_succeeds(
            &mut c,
            Compare::create_revision("r/", CompareOp::Greater, 1).with_range("\0")
        )
        .await
    );
}

#[tokio::test]
async fn txn_compare_over_empty_range_behaves_like_missing_key() {
    let (_srv, mut c) = start().await;
    put(&mut c, "a", "1").await;
    let pre = |cmp: Compare| cmp.with_prefix();
    assert!(txn_succeeds(&mut c, pre(Compare::version("none/", CompareOp::Equal, 0))).await);
    assert!(
        txn_succeeds(
            &mut c,
            pre(Compare::create_revision("none/", CompareOp::Less, 1))
        )
        .await
    );
    assert!(
        !txn_succeeds(
            &mut c,
            pre(Compare::version("none/", CompareOp::Greater, 0))
        )
        .await
    );
    assert!(
        !txn_succeeds(
            &mut c,
            pre(Compare::value("none/", CompareOp::NotEqual, "z"))
        )
        .await
    );
}

#[tokio::test]
async fn txn_compare_without_matching_target_value_compares_against_zero() {
    // A Compare whose target_union is unset (or set for another target)
    // compares against 0 (or the empty value).
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let srv = common::Server::start();
    let mut c = srv.client().await;
    put(&mut c, "k", "v").await;
    let mut kv = raw_kv(&srv).await;
    let check =
        |target: CompareTarget, result: CompareResult, union: Option<TargetUnion>| pb::TxnRequest {
            compare: vec![pb::Compare {
                result: result as i32,
                target: target as i32,
                key: b"k".to_vec(),
                range_end: vec![],
                target_union: union,
            }],
            success: vec![],
            failure: vec![],
        };
    let cases = [
        (CompareTarget::Version, CompareResult::Greater, None, true),
        (CompareTarget::Version, CompareResult::Equal, None, false),
        (
            CompareTarget::Version,
            CompareResult::Greater,
            Some(TargetUnion::Value(b"zzz".to_vec())),
            true,
        ),
        (
            CompareTarget::Mod,
            CompareResult::Equal,
            Some(TargetUnion::ModRevision(2)),
            true,
        ),
        (
            CompareTarget::Mod,
            CompareResult::Greater,
            Some(TargetUnion::CreateRevision(2)),
            true,
        ),
        (CompareTarget::Value, CompareResult::Greater, None, true),
        (CompareTarget::Lease, CompareResult::Equal, None, true),
    ];
    for (target, result, union, want) in cases {
        let desc = format!("{target:?} {result:?} {union:?}");
        let resp = kv
            .txn(check(target, result, union))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.succeeded, want, "{desc}");
    }
}

#[tokio::test]
async fn txn_all_compares_must_hold() {
    let (_srv, mut c) = start().await;
    put(&mut c, "a", "1").await;
    put(&mut c, "b", "2").await;
    let yes = Compare::value("a", CompareOp::Equal, "1");
    let no = Compare::value("b", CompareOp::Equal, "1");
    let r = c.txn(Txn::new().when([yes.clone(), no])).await.unwrap();
    assert!(!r.succeeded());
    let r = c
        .txn(Txn::new().when([yes, Compare::version("b", CompareOp::Equal, 1)]))
        .await
        .unwrap();
    assert!(r.succeeded());
}

#[tokio::test]
async fn txn_compare_empty_key_fails_with_key_not_provided() {
    let (_srv, mut c) = start().await;
    assert_status(
        c.txn(Txn::new().when([Compare::version("", CompareOp::Equal, 0)]))
            .await,
        Code::InvalidArgument,
        EMPTY_KEY,
    );
}

// ---------------------------------------------------------------------------
// Txn: branches and ops
// ---------------------------------------------------------------------------

#[tokio::test]
async fn txn_success_branch_runs_put_get_delete() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("k", "v"), ("del1", "x"), ("del2", "y")]).await; // 2..4
    let resp = c
        .txn(
            Txn::new()
                .when([Compare::value("k", CompareOp::Equal, "v")])
                .and_then([
                    TxnOp::put("new", "n", Some(PutOptions::new().with_prev_key())),
                    TxnOp::get("k", None),
                    TxnOp::delete(
                        "del",
                        Some(DeleteOptions::new().with_prefix().with_prev_key()),
                    ),
                ])
                .or_else([TxnOp::put("failed", "f", None)]),
        )
        .await
        .unwrap();
    assert!(resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 5);
    let ops = resp.op_responses();
    assert_eq!(ops.len(), 3);
    match &ops[0] {
        TxnOpResponse::Put(p) => assert!(p.prev_key().is_none()),
        other => panic!("expected put response, got {other:?}"),
    }
    match &ops[1] {
        TxnOpResponse::Get(g) => {
            assert_eq!(values(g.kvs()), ["v"]);
            assert_eq!(g.count(), 1);
        }
        other => panic!("expected range response, got {other:?}"),
    }
    match &ops[2] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted(), 2);
            assert_eq!(keys(d.prev_kvs()), ["del1", "del2"]);
        }
        other => panic!("expected delete response, got {other:?}"),
    }
    let all = get(&mut c, "\0", Some(GetOptions::new().with_all_keys())).await;
    assert_eq!(keys(all.kvs()), ["k", "new"]);
}

#[tokio::test]
async fn txn_failure_branch_runs_when_a_compare_fails() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v").await; // 2
    let resp = c
        .txn(
            Txn::new()
                .when([Compare::value("k", CompareOp::Equal, "other")])
                .and_then([TxnOp::put("success", "s", None)])
                .or_else([
                    TxnOp::put("failure", "f", None),
                    TxnOp::get("k", None),
                    TxnOp::delete("k", None),
                ]),
        )
        .await
        .unwrap();
    assert!(!resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 3);
    let ops = resp.op_responses();
    assert_eq!(ops.len(), 3);
    assert!(matches!(ops[0], TxnOpResponse::Put(_)));
    assert!(matches!(ops[1], TxnOpResponse::Get(_)));
    match &ops[2] {
        TxnOpResponse::Delete(d) => assert_eq!(d.deleted(), 1),
        other => panic!("expected delete response, got {other:?}"),
    }
    let all = get(&mut c, "\0", Some(GetOptions::new().with_all_keys())).await;
    assert_eq!(keys(all.kvs()), ["failure"]);
}

#[tokio::test]
async fn txn_without_compares_takes_success_branch() {
    let (_srv, mut c) = start().await;
    let resp = c
        .txn(
            Txn::new()
                .and_then([TxnOp::put("s", "1", None)])
                .or_else([TxnOp::put("f", "1", None)]),
        )
        .await
        .unwrap();
    assert!(resp.succeeded());
    assert_eq!(values(get(&mut c, "s", None).await.kvs()), ["1"]);
    assert!(get(&mut c, "f", None).await.kvs().is_empty());
    // A completely empty txn succeeds and does not bump the revision.
    let resp = c.txn(Txn::new()).await.unwrap();
    assert!(resp.succeeded());
    assert!(resp.op_responses().is_empty());
    assert_eq!(resp.header().unwrap().revision(), 2);
}

#[tokio::test]
async fn txn_ops_share_one_revision() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("a", "0"), ("gone", "x")]).await; // 2, 3
    let resp = c
        .txn(Txn::new().and_then([
            TxnOp::put("a", "1", None),
            TxnOp::put("b", "1", None),
            TxnOp::put("c", "1", None),
            TxnOp::delete("gone", None),
        ]))
        .await
        .unwrap();
    assert_eq!(resp.header().unwrap().revision(), 4);
    let all = get(&mut c, "\0", Some(GetOptions::new().with_all_keys())).await;
    assert_eq!(keys(all.kvs()), ["a", "b", "c"]);
    for kv in all.kvs() {
        assert_eq!(kv.mod_revision(), 4, "key {:?}", kv.key_str());
    }
    let a = &all.kvs()[0];
    assert_eq!(a.version(), 2);
    assert_eq!(a.create_revision(), 2);
    let b = &all.kvs()[1];
    assert_eq!(b.create_revision(), 4);
    assert_eq!(b.version(), 1);
    // The next write is the very next revision.
    assert_eq!(put(&mut c, "d", "1").await, 5);
}

#[tokio::test]
async fn txn_get_after_put_in_same_txn_sees_the_put() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("k", "old"), ("d", "x")]).await; // 2, 3
    let resp = c
        .txn(Txn::new().and_then([
            TxnOp::get("k", None),
            TxnOp::put("k", "new", None),
            TxnOp::get("k", None),
            TxnOp::get("d", None),
            TxnOp::delete("d", None),
            TxnOp::get("d", None),
            TxnOp::get(
                "\0",
                Some(GetOptions::new().with_all_keys().with_count_only()),
            ),
        ]))
        .await
        .unwrap();
    let gets = txn_gets(&resp);
    assert_eq!(gets.len(), 5);
    assert_eq!(values(gets[0].kvs()), ["old"]);
    assert_eq!(values(gets[1].kvs()), ["new"]);
    assert_eq!(gets[1].kvs()[0].mod_revision(), 4);
    assert_eq!(gets[1].kvs()[0].version(), 2);
    assert_eq!(values(gets[2].kvs()), ["x"]);
    assert!(gets[3].kvs().is_empty(), "get after delete sees the delete");
    assert_eq!(gets[4].count(), 1);
}

#[tokio::test]
async fn txn_nested_txn_runs_inner_branch() {
    let (_srv, mut c) = start().await;
    put(&mut c, "flag", "on").await; // 2
    let inner = Txn::new()
        .when([Compare::value("flag", CompareOp::Equal, "on")])
        .and_then([TxnOp::put("inner-yes", "1", None), TxnOp::get("flag", None)])
        .or_else([TxnOp::put("inner-no", "1", None)]);
    let resp = c
        .txn(
            Txn::new()
                .when([Compare::version("flag", CompareOp::Greater, 0)])
                .and_then([TxnOp::put("outer", "1", None), TxnOp::txn(inner)]),
        )
        .await
        .unwrap();
    assert!(resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 3);
    let ops = resp.op_responses();
    assert_eq!(ops.len(), 2);
    match &ops[1] {
        TxnOpResponse::Txn(t) => {
            assert!(t.succeeded());
            let inner_ops = t.op_responses();
            assert_eq!(inner_ops.len(), 2);
            match &inner_ops[1] {
                TxnOpResponse::Get(g) => assert_eq!(values(g.kvs()), ["on"]),
                other => panic!("expected range response, got {other:?}"),
            }
        }
        other => panic!("expected txn response, got {other:?}"),
    }
    let all = get(&mut c, "\0", Some(GetOptions::new().with_all_keys())).await;
    assert_eq!(keys(all.kvs()), ["flag", "inner-yes", "outer"]);
    assert!(all.kvs().iter().skip(1).all(|kv| kv.mod_revision() == 3));

    // Inner failure branch.
    let inner = Txn::new()
        .when([Compare::value("flag", CompareOp::Equal, "off")])
        .and_then([TxnOp::put("inner-yes2", "1", None)])
        .or_else([TxnOp::put("inner-no2", "1", None)]);
    let resp = c
        .txn(Txn::new().and_then([TxnOp::txn(inner)]))
        .await
        .unwrap();
    match &resp.op_responses()[0] {
        TxnOpResponse::Txn(t) => assert!(!t.succeeded()),
        other => panic!("expected txn response, got {other:?}"),
    }
    assert_eq!(get(&mut c, "inner-no2", None).await.kvs().len(), 1);
    assert!(get(&mut c, "inner-yes2", None).await.kvs().is_empty());
}

#[tokio::test]
async fn txn_nested_compare_sees_state_before_the_txn() {
    // etcd evaluates every compare on the chosen path (outer and nested)
    // against the store as it was before the txn, not after earlier ops.
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "old").await;
    let inner = Txn::new()
        .when([Compare::value("k", CompareOp::Equal, "new")])
        .and_then([TxnOp::put("saw", "new", None)])
        .or_else([TxnOp::put("saw", "old", None)]);
    let resp = c
        .txn(Txn::new().and_then([TxnOp::put("k", "new", None), TxnOp::txn(inner)]))
        .await
        .unwrap();
    match &resp.op_responses()[1] {
        TxnOpResponse::Txn(t) => assert!(!t.succeeded()),
        other => panic!("expected txn response, got {other:?}"),
    }
    assert_eq!(values(get(&mut c, "saw", None).await.kvs()), ["old"]);
    assert_eq!(values(get(&mut c, "k", None).await.kvs()), ["new"]);
}

#[tokio::test]
async fn txn_read_only_does_not_bump_revision() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v").await; // 2
    let resp = c
        .txn(
            Txn::new()
                .when([Compare::value("k", CompareOp::Equal, "v")])
                .and_then([TxnOp::get("k", None), TxnOp::get("x", None)]),
        )
        .await
        .unwrap();
    assert!(resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 2);

    // A failed compare with an empty failure branch changes nothing.
    let resp = c
        .txn(
            Txn::new()
                .when([Compare::value("k", CompareOp::Equal, "nope")])
                .and_then([TxnOp::put("k", "changed", None)]),
        )
        .await
        .unwrap();
    assert!(!resp.succeeded());
    assert!(resp.op_responses().is_empty());
    assert_eq!(resp.header().unwrap().revision(), 2);

    // Deleting nothing inside a txn does not bump either.
    let resp = c
        .txn(Txn::new().and_then([TxnOp::delete("missing", None)]))
        .await
        .unwrap();
    assert_eq!(resp.header().unwrap().revision(), 2);
    assert_eq!(current_rev(&mut c).await, 2);
    assert_eq!(put(&mut c, "k2", "v").await, 3);
}

#[tokio::test]
async fn txn_response_header_revision_is_the_new_revision() {
    let (_srv, mut c) = start().await;
    put(&mut c, "a", "1").await; // 2
    let resp = c
        .txn(Txn::new().and_then([TxnOp::put("b", "1", None), TxnOp::put("c", "1", None)]))
        .await
        .unwrap();
    assert_eq!(resp.header().unwrap().revision(), 3);
    assert_eq!(current_rev(&mut c).await, 3);
}

#[tokio::test]
async fn txn_inner_response_headers_carry_only_revision() {
    // Record of etcd's wire format: responses inside a txn have a header with
    // only `revision` set (no cluster/member id, no raft term).
    let srv = common::Server::start();
    let mut c = srv.client().await;
    put(&mut c, "k", "v").await; // 2
    let mut kv = raw_kv(&srv).await;
    let op = |r: pb::request_op::Request| pb::RequestOp { request: Some(r) };
    let resp = kv
        .txn(pb::TxnRequest {
            compare: vec![],
            success: vec![
                op(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })),
                op(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: b"n".to_vec(),
                    value: b"1".to_vec(),
                    ..Default::default()
                })),
                op(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })),
                op(pb::request_op::Request::RequestDeleteRange(
                    pb::DeleteRangeRequest {
                        key: b"k".to_vec(),
                        ..Default::default()
                    },
                )),
            ],
            failure: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let outer = resp.header.unwrap();
    assert_eq!(outer.revision, 3);
    assert_ne!(outer.cluster_id, 0);
    let mut inner_revs = Vec::new();
    for r in &resp.responses {
        use pb::response_op::Response;
        let h = match r.response.as_ref().unwrap() {
            Response::ResponseRange(x) => x.header,
            Response::ResponsePut(x) => x.header,
            Response::ResponseDeleteRange(x) => x.header,
            Response::ResponseTxn(x) => x.header,
        }
        .expect("inner header present");
        assert_eq!(h.cluster_id, 0);
        assert_eq!(h.member_id, 0);
        assert_eq!(h.raft_term, 0);
        inner_revs.push(h.revision);
    }
    // A range before any write sees the pre-txn revision; after a write in
    // the txn it reports the txn's revision.
    assert_eq!(inner_revs, [2, 3, 3, 3]);
}

#[tokio::test]
async fn txn_op_error_aborts_the_whole_txn() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v").await; // 2
    assert_status(
        c.txn(Txn::new().and_then([
            TxnOp::put("a", "1", None),
            TxnOp::put("b", "1", Some(PutOptions::new().with_lease(999))),
        ]))
        .await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
    assert_status(
        c.txn(Txn::new().and_then([
            TxnOp::put("a", "1", None),
            TxnOp::put("missing", "", Some(PutOptions::new().with_ignore_value())),
        ]))
        .await,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
    );
    assert_status(
        c.txn(Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::put("", "1", None)]))
            .await,
        Code::InvalidArgument,
        EMPTY_KEY,
    );
    assert_status(
        c.txn(Txn::new().and_then([
            TxnOp::put("a", "1", None),
            TxnOp::get("k", Some(GetOptions::new().with_revision(3))),
        ]))
        .await,
        Code::OutOfRange,
        FUTURE_REV,
    );
    assert!(get(&mut c, "a", None).await.kvs().is_empty());
    assert_eq!(current_rev(&mut c).await, 2);
}

#[tokio::test]
async fn txn_errors_only_on_the_branch_taken() {
    // Lease and ignore_value checks run on the branch that executes only;
    // the other branch may hold ops that would fail.
    let (_srv, mut c) = start().await;
    let resp = c
        .txn(
            Txn::new()
                .when([Compare::version("k", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("k", "1", None)])
                .or_else([TxnOp::put(
                    "k",
                    "1",
                    Some(PutOptions::new().with_lease(999)),
                )]),
        )
        .await
        .unwrap();
    assert!(resp.succeeded());
    assert_eq!(values(get(&mut c, "k", None).await.kvs()), ["1"]);
}

#[tokio::test]
async fn txn_get_at_compacted_revision_fails_whole_txn() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "1").await; // 2
    put(&mut c, "k", "2").await; // 3
    c.compact(3, None).await.unwrap();
    assert_status(
        c.txn(Txn::new().and_then([
            TxnOp::put("a", "1", None),
            TxnOp::get("k", Some(GetOptions::new().with_revision(2))),
        ]))
        .await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_eq!(current_rev(&mut c).await, 3);
}

#[tokio::test]
async fn txn_empty_request_op_fails_with_key_not_found() {
    // A RequestOp with no request set is rejected as "key not found".
    let srv = common::Server::start();
    let mut kv = raw_kv(&srv).await;
    let r = kv
        .txn(pb::TxnRequest {
            compare: vec![],
            success: vec![pb::RequestOp { request: None }],
            failure: vec![],
        })
        .await;
    assert_raw_status(r, Code::InvalidArgument, KEY_NOT_FOUND);
}

// ---------------------------------------------------------------------------
// Txn: limits and duplicate keys
// ---------------------------------------------------------------------------

fn puts(prefix: &str, n: usize) -> Vec<TxnOp> {
    (0..n)
        .map(|i| TxnOp::put(format!("{prefix}{i}"), "v", None))
        .collect()
}

fn compares(n: usize) -> Vec<Compare> {
    (0..n)
        .map(|i| Compare::version(format!("c{i}"), CompareOp::Equal, 0))
        .collect()
}

#[tokio::test]
async fn txn_more_than_128_ops_fails_with_too_many_operations() {
    let (_srv, mut c) = start().await;
    // 128 is allowed.
    let resp = c.txn(Txn::new().and_then(puts("s", 128))).await.unwrap();
    assert_eq!(resp.op_responses().len(), 128);
    assert_eq!(resp.header().unwrap().revision(), 2);

    assert_status(
        c.txn(Txn::new().and_then(puts("t", 129))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    assert_status(
        c.txn(Txn::new().or_else(puts("t", 129))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    assert_status(
        c.txn(Txn::new().when(compares(129))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    assert_eq!(current_rev(&mut c).await, 2);
}

#[tokio::test]
async fn txn_op_limit_is_per_list_not_the_sum() {
    // The limit applies to max(len(compare), len(success), len(failure)).
    let (_srv, mut c) = start().await;
    let resp = c
        .txn(
            Txn::new()
                .when(compares(128))
                .and_then(puts("s", 128))
                .or_else(puts("f", 128)),
        )
        .await
        .unwrap();
    assert!(resp.succeeded());
    assert_eq!(resp.op_responses().len(), 128);
}

#[tokio::test]
async fn txn_nested_txn_gets_the_remaining_op_budget() {
    // A nested txn may hold at most 128 - opc ops, where opc is the outer
    // txn's max(len(compare), len(success), len(failure)), counting the
    // nested txn op itself: here 101, leaving 27.
    let (_srv, mut c) = start().await;
    let mut outer = puts("o", 100);
    outer.push(TxnOp::txn(Txn::new().and_then(puts("i", 27))));
    let resp = c.txn(Txn::new().and_then(outer)).await.unwrap();
    assert_eq!(resp.op_responses().len(), 101);
    assert_eq!(get(&mut c, "i26", None).await.kvs().len(), 1);

    let mut outer = puts("p", 100);
    outer.push(TxnOp::txn(Txn::new().and_then(puts("j", 28))));
    assert_status(
        c.txn(Txn::new().and_then(outer)).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );

    // The budget also shrinks with the outer compares (the largest list counts).
    let mut outer = puts("q", 10);
    outer.push(TxnOp::txn(Txn::new().or_else(puts("k", 28))));
    assert_status(
        c.txn(Txn::new().when(compares(101)).and_then(outer)).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    assert_eq!(current_rev(&mut c).await, 2);
}

#[tokio::test]
async fn txn_duplicate_put_fails_with_duplicate_key() {
    let (_srv, mut c) = start().await;
    assert_status(
        c.txn(Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]))
            .await,
        Code::InvalidArgument,
        DUPLICATE_KEY,
    );
    assert_status(
        c.txn(Txn::new().or_else([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]))
            .await,
        Code::InvalidArgument,
        DUPLICATE_KEY,
    );
    assert_eq!(current_rev(&mut c).await, 1);
}

#[tokio::test]
async fn txn_put_and_get_of_same_key_is_allowed() {
    let (_srv, mut c) = start().await;
    let resp = c
        .txn(Txn::new().and_then([
            TxnOp::put("k", "1", None),
            TxnOp::get("k", None),
            TxnOp::get("k", Some(GetOptions::new().with_prefix())),
        ]))
        .await
        .unwrap();
    assert_eq!(resp.op_responses().len(), 3);
    // Delete and get of the same key is allowed too.
    c.txn(Txn::new().and_then([TxnOp::delete("k", None), TxnOp::get("k", None)]))
        .await
        .unwrap();
}

#[tokio::test]
async fn txn_put_and_overlapping_delete_is_a_duplicate() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "0").await;
    // Same key, either order.
    assert_status(
        c.txn(Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::delete("k", None)]))
            .await,
        Code::InvalidArgument,
        DUPLICATE_KEY,
    );
    assert_status(
        c.txn(Txn::new().and_then([TxnOp::delete("k", None), TxnOp::put("k", "1", None)]))
            .await,
        Code::InvalidArgument,
        DUPLICATE_KEY,
    );
    // Put inside a deleted range.
    assert_status(
        c.txn(Txn::new().and_then([
            TxnOp::delete("a", Some(DeleteOptions::new().with_range("z"))),
            TxnOp::put("k", "1", None),
        ]))
        .await,
        Code::InvalidArgument,
        DUPLICATE_KEY,
    );
    // Put outside the (half-open) deleted range is fine.
    c.txn(Txn::new().and_then([
        TxnOp::delete("a", Some(DeleteOptions::new().with_range("k"))),
        TxnOp::put("k", "1", None),
    ]))
    .await
    .unwrap();
    assert_eq!(current_rev(&mut c).await, 3);
}

#[tokio::test]
async fn txn_overlapping_deletes_are_allowed() {
    let (_srv, mut c) = start().await;
    put_all(&mut c, &[("a", "1"), ("b", "2"), ("c", "3")]).await; // 2..4
    let resp = c
        .txn(Txn::new().and_then([
            TxnOp::delete("a", Some(DeleteOptions::new().with_range("c"))),
            TxnOp::delete("b", None),
            TxnOp::delete("b", Some(DeleteOptions::new().with_from_key())),
        ]))
        .await
        .unwrap();
    let deleted: Vec<i64> = resp
        .op_responses()
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Delete(d) => d.deleted(),
            other => panic!("expected delete response, got {other:?}"),
        })
        .collect();
    // Sequential effects: the later deletes only see what is left.
    assert_eq!(deleted, [2, 0, 1]);
    assert_eq!(resp.header().unwrap().revision(), 5);
}

#[tokio::test]
async fn txn_same_key_in_success_and_failure_is_allowed() {
    let (_srv, mut c) = start().await;
    let resp = c
        .txn(
            Txn::new()
                .when([Compare::version("k", CompareOp::Equal, 0)])
                .and_then([TxnOp::put("k", "s", None)])
                .or_else([TxnOp::put("k", "f", None), TxnOp::delete("x", None)]),
        )
        .await
        .unwrap();
    assert!(resp.succeeded());
    assert_eq!(values(get(&mut c, "k", None).await.kvs()), ["s"]);
}

#[tokio::test]
async fn txn_duplicate_key_across_nested_txn_fails() {
    let (_srv, mut c) = start().await;
    // Outer put and nested put of the same key.
    let inner = Txn::new().and_then([TxnOp::put("k", "2", None)]);
    assert_status(
        c.txn(Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::txn(inner)]))
            .await,
        Code::InvalidArgument,
        DUPLICATE_KEY,
    );
    // Outer delete range covering a nested put.
    let inner = Txn::new().or_else([TxnOp::put("k", "2", None)]);
    assert_status(
        c.txn(Txn::new().and_then([
            TxnOp::delete("k", Some(DeleteOptions::new().with_prefix())),
            TxnOp::txn(inner),
        ]))
        .await,
        Code::InvalidArgument,
        DUPLICATE_KEY,
    );
    // Nested delete covering an outer put.
    let inner = Txn::new().and_then([TxnOp::delete("k", None)]);
    assert_status(
        c.txn(Txn::new().and_then([TxnOp::txn(inner), TxnOp::put("k", "1", None)]))
            .await,
        Code::InvalidArgument,
        DUPLICATE_KEY,
    );
    // Two nested txns putting the same key.
    let t1 = Txn::new().and_then([TxnOp::put("k", "1", None)]);
    let t2 = Txn::new().and_then([TxnOp::put("k", "2", None)]);
    assert_status(
        c.txn(Txn::new().and_then([TxnOp::txn(t1), TxnOp::txn(t2)]))
            .await,
        Code::InvalidArgument,
        DUPLICATE_KEY,
    );
    // The same key in the two branches of one nested txn is fine.
    let inner = Txn::new()
        .when([Compare::version("k", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("k", "then", None)])
        .or_else([TxnOp::put("k", "else", None)]);
    c.txn(Txn::new().and_then([TxnOp::txn(inner)]))
        .await
        .unwrap();
    assert_eq!(values(get(&mut c, "k", None).await.kvs()), ["then"]);
}

// ---------------------------------------------------------------------------
// Compact
// ---------------------------------------------------------------------------

#[tokio::test]
async fn compacted_revision_read_fails_with_etcd_error() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v1").await; // 2
    put(&mut c, "k", "v2").await; // 3
    put(&mut c, "k", "v3").await; // 4
    let resp = c.compact(3, None).await.unwrap();
    assert_eq!(resp.header().unwrap().revision(), 4);
    assert_status(
        c.get("k", Some(GetOptions::new().with_revision(2))).await,
        Code::OutOfRange,
        COMPACTED,
    );
    // Latest reads are unaffected.
    assert_eq!(values(get(&mut c, "k", None).await.kvs()), ["v3"]);
}

#[tokio::test]
async fn compact_keeps_values_visible_at_the_compact_revision() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v1").await; // 2
    put(&mut c, "k", "v2").await; // 3
    put(&mut c, "gone", "x").await; // 4
    put(&mut c, "stays", "s").await; // 5
    c.delete("gone", None).await.unwrap(); // 6
    put(&mut c, "k", "v3").await; // 7
    c.compact(5, None).await.unwrap();

    // Reading at the compact revision itself still works and sees the
    // values that were current then, including the later-deleted key.
    let r = get(
        &mut c,
        "\0",
        Some(GetOptions::new().with_all_keys().with_revision(5)),
    )
    .await;
    assert_eq!(keys(r.kvs()), ["gone", "k", "stays"]);
    assert_eq!(values(r.kvs()), ["x", "v2", "s"]);
    assert_eq!(r.kvs()[1].version(), 2);
    assert_eq!(r.kvs()[1].create_revision(), 2);
    assert_eq!(r.count(), 3);

    let r = get(
        &mut c,
        "\0",
        Some(GetOptions::new().with_all_keys().with_revision(6)),
    )
    .await;
    assert_eq!(keys(r.kvs()), ["k", "stays"]);

    assert_status(
        c.get("k", Some(GetOptions::new().with_revision(4))).await,
        Code::OutOfRange,
        COMPACTED,
    );

    // Compacting past the delete drops the tombstoned key from history.
    c.compact(7, None).await.unwrap();
    let r = get(
        &mut c,
        "\0",
        Some(GetOptions::new().with_all_keys().with_revision(7)),
    )
    .await;
    assert_eq!(keys(r.kvs()), ["k", "stays"]);
    assert_eq!(values(r.kvs()), ["v3", "s"]);
    // Versions and create revisions survive compaction.
    assert_eq!(r.kvs()[0].version(), 3);
    assert_eq!(r.kvs()[0].create_revision(), 2);
    assert_eq!(r.kvs()[1].mod_revision(), 5);
}

#[tokio::test]
async fn compact_to_future_revision_fails_with_future_revision() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v").await; // 2
    assert_status(c.compact(3, None).await, Code::OutOfRange, FUTURE_REV);
    assert_status(c.compact(100, None).await, Code::OutOfRange, FUTURE_REV);
    // Compacting to the current revision is allowed.
    c.compact(2, None).await.unwrap();
    assert_eq!(values(get(&mut c, "k", None).await.kvs()), ["v"]);
}

#[tokio::test]
async fn compact_twice_to_same_or_lower_revision_fails_with_compacted() {
    let (_srv, mut c) = start().await;
    for i in 0..5 {
        put(&mut c, "k", &format!("v{i}")).await; // 2..6
    }
    c.compact(4, None).await.unwrap();
    assert_status(c.compact(4, None).await, Code::OutOfRange, COMPACTED);
    assert_status(c.compact(3, None).await, Code::OutOfRange, COMPACTED);
    c.compact(5, None).await.unwrap();
}

#[tokio::test]
async fn compact_to_zero_or_negative_revision() {
    // On a fresh store, compacting to 0 (or 1) succeeds and does nothing
    // visible; a negative revision is "compacted" (it is below the initial
    // compact revision).
    let (_srv, mut c) = start().await;
    assert_status(c.compact(-1, None).await, Code::OutOfRange, COMPACTED);
    let resp = c.compact(0, None).await.unwrap();
    assert_eq!(resp.header().unwrap().revision(), 1);
    assert_status(c.compact(0, None).await, Code::OutOfRange, COMPACTED);
    c.compact(1, None).await.unwrap();
    assert_eq!(put(&mut c, "k", "v").await, 2);
    let r = get(&mut c, "k", Some(GetOptions::new().with_revision(1))).await;
    assert!(r.kvs().is_empty());
}

#[tokio::test]
async fn compact_physical_succeeds_and_data_stays_readable() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v1").await; // 2
    put(&mut c, "k", "v2").await; // 3
    put(&mut c, "k", "v3").await; // 4
    let resp = c
        .compact(3, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    assert_eq!(resp.header().unwrap().revision(), 4);
    let r = get(&mut c, "k", Some(GetOptions::new().with_revision(3))).await;
    assert_eq!(values(r.kvs()), ["v2"]);
    assert_status(
        c.get("k", Some(GetOptions::new().with_revision(2))).await,
        Code::OutOfRange,
        COMPACTED,
    );
}

#[tokio::test]
async fn compact_does_not_bump_revision() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v1").await; // 2
    put(&mut c, "k", "v2").await; // 3
    let resp = c.compact(2, None).await.unwrap();
    assert_eq!(resp.header().unwrap().revision(), 3);
    assert_eq!(current_rev(&mut c).await, 3);
    assert_eq!(put(&mut c, "k", "v3").await, 4);
}

// ---------------------------------------------------------------------------
// Response headers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_kv_response_header_has_ids_term_and_store_revision() {
    let (_srv, mut c) = start().await;
    let mut headers = Vec::new();

    let r = c.get("k", None).await.unwrap();
    headers.push(("range on empty store", r.header().unwrap().clone(), 1));
    let r = c.put("k", "v", None).await.unwrap();
    headers.push(("put", r.header().unwrap().clone(), 2));
    let r = c.get("k", None).await.unwrap();
    headers.push(("range", r.header().unwrap().clone(), 2));
    let r = c.delete("nope", None).await.unwrap();
    headers.push(("delete of nothing", r.header().unwrap().clone(), 2));
    let r = c
        .txn(Txn::new().and_then([TxnOp::put("t", "1", None)]))
        .await
        .unwrap();
    headers.push(("txn", r.header().unwrap().clone(), 3));
    let r = c.delete("t", None).await.unwrap();
    headers.push(("delete", r.header().unwrap().clone(), 4));
    let r = c.compact(3, None).await.unwrap();
    headers.push(("compact", r.header().unwrap().clone(), 4));
    let r = c.txn(Txn::new()).await.unwrap();
    headers.push(("empty txn", r.header().unwrap().clone(), 4));
    let r = c.status().await.unwrap();
    headers.push(("status", r.header().unwrap().clone(), 4));

    let first = headers[0].1.clone();
    assert_ne!(first.cluster_id(), 0);
    assert_ne!(first.member_id(), 0);
    assert!(first.raft_term() >= 1);
    for (what, h, rev) in &headers {
        assert_eq!(h.cluster_id(), first.cluster_id(), "{what}");
        assert_eq!(h.member_id(), first.member_id(), "{what}");
        assert_eq!(h.raft_term(), first.raft_term(), "{what}");
        assert_eq!(h.revision(), *rev, "{what}");
    }
}

// ---------------------------------------------------------------------------
// Maintenance.Status and Cluster.MemberList
// ---------------------------------------------------------------------------

#[tokio::test]
async fn status_reports_version_db_size_leader_and_raft_index() {
    let (_srv, mut c) = start().await;
    put(&mut c, "k", "v").await;
    let st = c.status().await.unwrap();
    let h = st.header().unwrap().clone();
    assert!(!st.version().is_empty());
    assert!(st.db_size() > 0);
    assert_eq!(st.leader(), h.member_id());
    assert_ne!(st.leader(), 0);
    assert!(st.raft_index() >= 1);
    assert_eq!(st.raft_term(), h.raft_term());
    assert!(st.raft_applied_index() >= 1);
    assert!(st.raft_applied_index() <= st.raft_index());
    assert!(st.raft_used_db_size() > 0);
    assert!(st.raft_used_db_size() <= st.db_size());
    assert!(st.errors().is_empty());
    assert!(!st.is_learner());
    assert_eq!(h.revision(), 2);

    // Every write is a new raft entry.
    put(&mut c, "k", "v2").await;
    let st2 = c.status().await.unwrap();
    assert!(st2.raft_index() > st.raft_index());
}

#[tokio::test]
async fn member_list_has_single_member_matching_header_and_endpoint() {
    let (srv, mut c) = start().await;
    let ml = c.member_list().await.unwrap();
    let h = ml.header().unwrap().clone();
    assert_ne!(h.cluster_id(), 0);
    assert_ne!(h.member_id(), 0);
    assert!(h.raft_term() >= 1);
    // etcd leaves the revision unset in cluster API headers.
    assert_eq!(h.revision(), 0);
    let members = ml.members();
    assert_eq!(members.len(), 1);
    let m = &members[0];
    assert_eq!(m.id(), h.member_id());
    assert_eq!(m.client_urls(), std::slice::from_ref(&srv.endpoint));
    assert!(!m.peer_urls().is_empty());
    assert!(!m.name().is_empty());
    assert!(!m.is_learner());

    let st = c.status().await.unwrap();
    assert_eq!(st.header().unwrap().cluster_id(), h.cluster_id());
    assert_eq!(st.leader(), m.id());
}
