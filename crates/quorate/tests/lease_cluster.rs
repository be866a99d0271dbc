//! Leases in a 3-member cluster: keep-alive and TimeToLive served by a
//! follower, leases across a leader failover (SIGKILL), expiry driven by
//! the new leader.
//!
//! The harness runs members with `--heartbeat-interval 50
//! --election-timeout 500`, so etcd's minimum lease TTL is
//! ceil(1.5 × 500 ms) = 1 s.
//!
//! Run against a real etcd with `QUORATE_TEST_TARGET=etcd`; every
//! expectation here was checked against etcd 3.4.23. All waits are bounded.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, RPC_TIMEOUT};
use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions, PutOptions};
use quorate_proto::etcdserverpb as pb;
use quorate_proto::etcdserverpb::lease_client::LeaseClient;

/// How long after its TTL a lease that is not kept alive must be gone.
const EXPIRY_BOUND: Duration = Duration::from_secs(15);

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(RPC_TIMEOUT * 2, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {:?}", RPC_TIMEOUT * 2))
}

/// Starts 3 members; returns the cluster, the leader and a follower.
async fn start() -> (Cluster, usize, usize) {
    let mut c = Cluster::start(3);
    let leader = c
        .wait_stable(Duration::from_secs(1), Duration::from_secs(30))
        .await;
    let follower = (leader + 1) % 3;
    (c, leader, follower)
}

/// Panics, naming the exit status, if any of `members` is not running.
fn check_alive(cluster: &mut Cluster, members: &[usize]) {
    for &i in members {
        if !cluster.is_running(i) {
            let st = cluster.wait_exit(i, Duration::ZERO);
            cluster.fail(&format!("member {i} died: {st:?}"));
        }
    }
}

/// `(value, lease)` of `k` as member `c` has it locally (serializable).
async fn read_local(c: &mut Client, k: &str) -> Option<(Vec<u8>, i64)> {
    let r = bounded("get", c.get(k, Some(GetOptions::new().with_serializable())))
        .await
        .unwrap_or_else(|e| panic!("get {k}: {e}"));
    r.kvs().first().map(|kv| (kv.value().to_vec(), kv.lease()))
}

/// `(ttl, granted ttl, sorted keys)`.
async fn ttl_of(c: &mut Client, id: i64) -> (i64, i64, Vec<Vec<u8>>) {
    let r = bounded(
        "timetolive",
        c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())),
    )
    .await
    .unwrap_or_else(|e| panic!("timetolive {id}: {e}"));
    assert_eq!(r.id(), id);
    let mut keys = r.keys().to_vec();
    keys.sort();
    (r.ttl(), r.granted_ttl(), keys)
}

async fn lease_ids(c: &mut Client) -> BTreeSet<i64> {
    bounded("leases", c.leases())
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect()
}

/// Waits until `key` is gone on every given client (serializable reads).
async fn wait_gone_everywhere(clients: &mut [Client], key: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for (i, c) in clients.iter_mut().enumerate() {
        loop {
            if read_local(c, key).await.is_none() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{key} still exists on client {i} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn keep_alive_and_time_to_live_through_a_follower() {
    let (mut cluster, _leader, f) = start().await;
    let f_id = cluster.member_id(f).await;
    let mut c = cluster.client(f).await;

    // The cluster's minimum TTL is 1 s: TTL 1 is kept.
    let r = bounded("grant", c.lease_grant(1, None))
        .await
        .expect("grant TTL 1");
    assert_eq!(r.ttl(), 1, "minimum TTL with a 500 ms election timeout");

    let r = bounded("grant", c.lease_grant(3, None))
        .await
        .expect("grant through a follower");
    let lease = r.id();
    assert_eq!(r.ttl(), 3);
    assert_eq!(r.header().expect("header").member_id(), f_id);
    bounded(
        "put",
        c.put("fk", "v", Some(PutOptions::new().with_lease(lease))),
    )
    .await
    .expect("put with lease through a follower");

    let (mut keeper, mut stream) = bounded("keep-alive", c.lease_keep_alive(lease))
        .await
        .expect("open keep-alive on a follower");
    let start = Instant::now();
    let mut answered = 0;
    for i in 0..20 {
        if start.elapsed() >= Duration::from_secs(8) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sent = keeper.keep_alive().await;
        let resp = bounded("keep-alive response", stream.message()).await;
        let resp = match (sent, resp) {
            (Ok(()), Ok(Some(resp))) => resp,
            (sent, resp) => {
                check_alive(&mut cluster, &[0, 1, 2]);
                panic!("keep-alive {i}: sent {sent:?}, answer {resp:?}");
            }
        };
        assert_eq!((resp.id(), resp.ttl()), (lease, 3), "keep-alive {i}");
        let h = resp.header().expect("keep-alive header");
        assert_eq!(h.member_id(), f_id, "answered by the follower itself");
        assert!(h.raft_term() > 0);
        answered += 1;
    }
    assert!(answered >= 6, "only {answered} keep-alives answered");

    // TimeToLive on the follower (the remaining time is the leader's).
    let (ttl, granted, keys) = ttl_of(&mut c, lease).await;
    assert_eq!(granted, 3);
    assert!((0..=3).contains(&ttl), "remaining {ttl}");
    assert_eq!(keys, vec![b"fk".to_vec()]);
    let unknown = bounded("timetolive", c.lease_time_to_live(0x5151, None))
        .await
        .expect("timetolive of an unknown lease on a follower");
    assert_eq!((unknown.ttl(), unknown.granted_ttl()), (-1, 0));
    assert_eq!(unknown.header().expect("header").member_id(), f_id);
    assert!(lease_ids(&mut c).await.contains(&lease));

    // Every member still has the key.
    let mut all = Vec::new();
    for i in 0..3 {
        all.push(cluster.client(i).await);
    }
    for (i, m) in all.iter_mut().enumerate() {
        assert_eq!(
            read_local(m, "fk").await,
            Some((b"v".to_vec(), lease)),
            "member {i}"
        );
    }

    // A keep-alive for an unknown lease on a follower: TTL 0.
    let mut raw = LeaseClient::connect(cluster.endpoint(f))
        .await
        .expect("connect raw lease client");
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(pb::LeaseKeepAliveRequest { id: 0x5151 })
        .expect("queue keep-alive");
    let mut raw_stream = bounded("raw keep-alive", raw.lease_keep_alive(rx))
        .await
        .expect("open raw keep-alive")
        .into_inner();
    let r = bounded("raw keep-alive response", raw_stream.message())
        .await
        .expect("keep-alive response")
        .expect("stream open");
    assert_eq!((r.id, r.ttl), (0x5151, 0));

    // Stop keeping it alive: the leader expires it, every member deletes it.
    drop(keeper);
    drop(stream);
    wait_gone_everywhere(&mut all, "fk", Duration::from_secs(3) + EXPIRY_BOUND).await;
    for m in all.iter_mut() {
        assert!(!lease_ids(m).await.contains(&lease));
    }
    assert_eq!(ttl_of(&mut c, lease).await.0, -1);
}

#[tokio::test]
async fn revoke_through_a_follower_deletes_keys_on_every_member() {
    let (cluster, _leader, f) = start().await;
    let mut c = cluster.client(f).await;
    let lease = bounded("grant", c.lease_grant(600, None))
        .await
        .expect("grant")
        .id();
    for k in ["r/1", "r/2"] {
        bounded(
            "put",
            c.put(k, "v", Some(PutOptions::new().with_lease(lease))),
        )
        .await
        .expect("put");
    }
    let before = bounded("get", c.get("r/", None))
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    let r = bounded("revoke", c.lease_revoke(lease))
        .await
        .expect("revoke through a follower");
    assert_eq!(r.header().expect("header").revision(), before + 1);
    let rev = cluster
        .wait_same_revision(&[0, 1, 2], Duration::from_secs(20))
        .await;
    assert_eq!(rev, before + 1);
    for i in 0..3 {
        let mut m = cluster.client(i).await;
        assert_eq!(read_local(&mut m, "r/1").await, None, "member {i}");
        assert_eq!(read_local(&mut m, "r/2").await, None, "member {i}");
        assert!(!lease_ids(&mut m).await.contains(&lease), "member {i}");
    }
}

#[tokio::test]
async fn leader_failover_does_not_expire_a_kept_alive_lease() {
    const TTL: i64 = 5;
    let (mut cluster, leader, survivor) = start().await;
    let other = 3 - leader - survivor;
    let mut c = cluster.client(survivor).await;
    let lease = bounded("grant", c.lease_grant(TTL, None))
        .await
        .expect("grant")
        .id();
    bounded(
        "put",
        c.put("kept", "v", Some(PutOptions::new().with_lease(lease))),
    )
    .await
    .expect("put with lease");

    // Keep alive through the survivor (never the leader) once a second,
    // for 3 × TTL; SIGKILL the leader after 2 s. A failed keep-alive
    // stream is reopened, as clients do.
    let mut keep = bounded("keep-alive", c.lease_keep_alive(lease)).await.ok();
    let start = Instant::now();
    let mut killed_at = None;
    let mut answered_after_kill = 0;
    let mut errors: Vec<String> = Vec::new();
    for _ in 0..200 {
        if start.elapsed() >= Duration::from_secs(3 * TTL as u64) {
            break;
        }
        if killed_at.is_none() && start.elapsed() >= Duration::from_secs(2) {
            cluster.kill(leader);
            killed_at = Some(Instant::now());
        }
        let ok = match keep.as_mut() {
            None => false,
            Some((keeper, stream)) => {
                let sent = keeper.keep_alive().await.is_ok();
                match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
                    Ok(Ok(Some(resp))) if sent => {
                        assert_eq!(resp.id(), lease);
                        assert!(resp.ttl() > 0, "keep-alive says the lease is gone");
                        true
                    }
                    other => {
                        errors.push(format!("{:.1}s: {other:?}", start.elapsed().as_secs_f64()));
                        false
                    }
                }
            }
        };
        if ok {
            if killed_at.is_some() {
                answered_after_kill += 1;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match tokio::time::timeout(Duration::from_secs(3), c.lease_keep_alive(lease)).await {
                Ok(Ok(k)) => keep = Some(k),
                Ok(Err(e)) => {
                    errors.push(format!("reopen: {e}"));
                    keep = None;
                }
                Err(_) => {
                    errors.push("reopen: timed out".into());
                    keep = None;
                }
            }
        }
    }
    eprintln!(
        "keep-alive errors around the failover ({}): {:#?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    check_alive(&mut cluster, &[survivor, other]);
    let killed_at = killed_at.expect("leader killed");
    assert!(
        killed_at.elapsed() >= Duration::from_secs(2 * TTL as u64),
        "kept alive past 2 TTLs after the kill"
    );
    assert!(
        answered_after_kill >= 5,
        "only {answered_after_kill} keep-alives answered after the kill; {} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);

    // The lease and its key survived.
    assert_eq!(
        read_local(&mut c, "kept").await,
        Some((b"v".to_vec(), lease))
    );
    let (ttl, granted, keys) = ttl_of(&mut c, lease).await;
    assert_eq!(granted, TTL);
    assert!(ttl > 0, "remaining {ttl}");
    assert_eq!(keys, vec![b"kept".to_vec()]);

    // Without keep-alives the new leader expires it.
    drop(keep);
    let mut survivors = vec![c, cluster.client(other).await];
    wait_gone_everywhere(
        &mut survivors,
        "kept",
        Duration::from_secs(TTL as u64) + EXPIRY_BOUND,
    )
    .await;
    for m in survivors.iter_mut() {
        assert!(!lease_ids(m).await.contains(&lease));
    }

    // etcd never broke the keep-alive stream: a follower holds a renewal
    // until there is a new leader (up to its request timeout) rather than
    // failing it.
    assert!(
        errors.is_empty(),
        "the keep-alive stream failed around the failover ({} errors): {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

#[tokio::test]
async fn lease_granted_before_failover_expires_afterwards() {
    let (mut cluster, leader, survivor) = start().await;
    let other = 3 - leader - survivor;
    let mut c = cluster.client(survivor).await;
    let short = bounded("grant", c.lease_grant(3, None))
        .await
        .expect("grant")
        .id();
    let long = bounded("grant", c.lease_grant(600, None))
        .await
        .expect("grant")
        .id();
    for (k, l) in [("short/1", short), ("short/2", short), ("long/1", long)] {
        bounded("put", c.put(k, "v", Some(PutOptions::new().with_lease(l))))
            .await
            .expect("put with lease");
    }
    let before = bounded("get", c.get("x", None))
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    cluster.kill(leader);
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);

    let mut survivors = vec![c, cluster.client(other).await];
    wait_gone_everywhere(
        &mut survivors,
        "short/1",
        Duration::from_secs(3) + EXPIRY_BOUND,
    )
    .await;
    let rev = cluster
        .wait_same_revision(&[survivor, other], Duration::from_secs(20))
        .await;
    // Both keys went in one revision, and nothing else happened.
    assert_eq!(rev, before + 1);
    for m in survivors.iter_mut() {
        assert_eq!(read_local(m, "short/2").await, None);
        assert_eq!(read_local(m, "long/1").await, Some((b"v".to_vec(), long)));
        let ids = lease_ids(m).await;
        assert!(!ids.contains(&short) && ids.contains(&long), "{ids:?}");
        assert_eq!(ttl_of(m, short).await.0, -1);
        let (ttl, granted, keys) = ttl_of(m, long).await;
        assert_eq!(granted, 600);
        assert!(ttl > 0 && ttl <= 600, "remaining {ttl}");
        assert_eq!(keys, vec![b"long/1".to_vec()]);
    }
}
