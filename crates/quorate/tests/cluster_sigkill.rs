//! Cluster crash test: three members under continuous write load; again and
//! again SIGKILL the leader or a follower (alternating), leave it down for a
//! moment, restart it on its data dir. Writes must keep going with one
//! member down, and at the end every member must hold every acknowledged
//! write at its acknowledged revision, with identical keyspaces.
//!
//! Writers (etcd clients connected to all three endpoints) put unique keys
//! `w{writer}/{seq:08}`, never retried. A put that fails or times out is
//! not acknowledged: it may or may not have been applied, and if it was,
//! it must be complete. Errors while a member is down (or its restart is
//! settling) are allowed and counted.
//!
//! The victims and timings are random but seeded: the seed is printed and
//! `QUORATE_CLUSTER_SEED=<n>` replays a run. `QUORATE_CLUSTER_ROUNDS=<n>`
//! sets the number of kills (default 10, at most 20).
//!
//! Run against a real etcd with `QUORATE_TEST_TARGET=etcd`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{self, Cluster, Keyspace, Stored};
use etcd_client::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MEMBERS: usize = 3;
const WRITERS: usize = 4;
const DEFAULT_ROUNDS: usize = 10;
const MAX_ROUNDS: usize = 20;
/// Budget for the kill phase; the whole test stays under 3 minutes.
const KILL_PHASE_BUDGET: Duration = Duration::from_secs(150);
/// The writers must get new acks within this time, even with one member
/// down.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(20);
/// New acks (all writers together) required before each kill.
const ACKS_BEFORE_KILL: u64 = 20;
/// New acks required while the victim is down: a majority keeps going.
const ACKS_WHILE_DOWN: u64 = 10;
/// A put taking longer than this is treated as failed.
const PUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for all members to reach the same revision at the end.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

fn key(writer: usize, seq: u64) -> String {
    format!("w{writer}/{seq:08}")
}

/// Deterministic value of varying length, so torn writes are visible.
fn value(writer: usize, seq: u64) -> Vec<u8> {
    let mut v = format!("writer={writer};seq={seq};").into_bytes();
    let len = ((seq * 7 + writer as u64 * 13) % 251) as usize;
    v.extend((0..len).map(|i| b'a' + ((writer + seq as usize + i) % 26) as u8));
    v
}

fn parse_key(k: &[u8]) -> Option<(usize, u64)> {
    let s = std::str::from_utf8(k).ok()?;
    let (w, seq) = s.strip_prefix('w')?.split_once('/')?;
    if seq.len() != 8 {
        return None;
    }
    Some((w.parse().ok()?, seq.parse().ok()?))
}

#[derive(Default)]
struct WriterLog {
    /// seq -> revision of every acknowledged put.
    acked: BTreeMap<u64, i64>,
    /// Puts that returned an error or timed out: outcome unknown.
    failed: BTreeSet<u64>,
    /// Failures while a member was down or settling after its restart.
    errors_disturbed: usize,
    /// Errors the server returned while every member was up and settled.
    errors_calm: Vec<String>,
    /// Client-side failures (transport errors, timeouts) while every
    /// member was up and settled: tonic reports a failed reconnect to a
    /// member that was down on the next request, even once it is back.
    client_errors_calm: Vec<String>,
    /// The next unused seq: no key with seq >= this was ever sent.
    next_seq: u64,
}

/// Shared between the test and the writers.
struct Shared {
    stop: AtomicBool,
    /// True from just before a kill until the restarted member has settled.
    disturbed: AtomicBool,
    acks: AtomicU64,
    /// The highest acknowledged revision.
    max_rev: AtomicI64,
}

async fn writer(id: usize, endpoints: Vec<String>, shared: Arc<Shared>) -> WriterLog {
    let mut log = WriterLog::default();
    let mut client: Client = cluster::connect(&endpoints).await;
    let mut consecutive_errors = 0u32;
    while !shared.stop.load(Ordering::SeqCst) {
        let seq = log.next_seq;
        log.next_seq += 1;
        let disturbed_before = shared.disturbed.load(Ordering::SeqCst);
        let res =
            tokio::time::timeout(PUT_TIMEOUT, client.put(key(id, seq), value(id, seq), None)).await;
        let (err, from_server) = match res {
            Ok(Ok(resp)) => match resp.header() {
                Some(h) => {
                    log.acked.insert(seq, h.revision());
                    shared.max_rev.fetch_max(h.revision(), Ordering::SeqCst);
                    shared.acks.fetch_add(1, Ordering::SeqCst);
                    consecutive_errors = 0;
                    continue;
                }
                None => ("put response without a header".to_string(), true),
            },
            Ok(Err(e)) => {
                let from_server = match &e {
                    etcd_client::Error::GRpcStatus(st) => std::error::Error::source(st).is_none(),
                    _ => false,
                };
                (e.to_string(), from_server)
            }
            Err(_) => ("put timed out".to_string(), false),
        };
        // Outcome unknown: never retry this key.
        log.failed.insert(seq);
        if disturbed_before || shared.disturbed.load(Ordering::SeqCst) {
            log.errors_disturbed += 1;
        } else if from_server {
            log.errors_calm.push(format!("put {}: {err}", key(id, seq)));
        } else {
            log.client_errors_calm
                .push(format!("put {}: {err}", key(id, seq)));
        }
        consecutive_errors += 1;
        if consecutive_errors.is_multiple_of(5) {
            // A fresh client, in case the old one is stuck on a dead
            // connection.
            client = cluster::connect(&endpoints).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log
}

/// Checks one member's keyspace against what the writers saw. Returns how
/// many keys come from failed (unacknowledged) puts.
fn verify(snapshot: &Keyspace, logs: &[WriterLog], ctx: &str) -> usize {
    let (rev, all) = snapshot;
    let mut revisions = HashSet::new();
    let mut per_writer: Vec<BTreeMap<u64, i64>> = vec![BTreeMap::new(); logs.len()];
    let mut unacked_present = 0;

    for (k, stored) in all {
        let Stored {
            value: v,
            create,
            modr,
            version,
            lease,
        } = stored;
        let ks = String::from_utf8_lossy(k);
        let (w, seq) = parse_key(k).unwrap_or_else(|| panic!("unexpected key {ks:?} {ctx}"));
        assert!(w < logs.len(), "key {ks} from no writer {ctx}");
        let log = &logs[w];
        assert!(
            seq < log.next_seq,
            "key {ks} was never written (writer {w} stopped at seq {}) {ctx}",
            log.next_seq
        );
        assert_eq!(
            v,
            &value(w, seq),
            "key {ks}: wrong or partial value {:?} {ctx}",
            String::from_utf8_lossy(v)
        );
        assert_eq!(*version, 1, "key {ks} was written once {ctx}");
        assert_eq!(create, modr, "key {ks}: create_revision {ctx}");
        assert_eq!(*lease, 0, "key {ks}: lease {ctx}");
        assert!(
            *modr >= 2 && *modr <= *rev,
            "key {ks}: mod_revision {modr} outside 2..={rev} {ctx}"
        );
        assert!(
            revisions.insert(*modr),
            "revision {modr} used by two keys (one is {ks}) {ctx}"
        );
        match log.acked.get(&seq) {
            Some(r) => assert_eq!(
                modr, r,
                "key {ks}: mod_revision differs from the acknowledged revision {ctx}"
            ),
            None => {
                assert!(
                    log.failed.contains(&seq),
                    "key {ks} neither acknowledged nor failed {ctx}"
                );
                unacked_present += 1;
            }
        }
        per_writer[w].insert(seq, *modr);
    }

    // Every acknowledged write is there, at its revision.
    for (w, log) in logs.iter().enumerate() {
        for (seq, r) in &log.acked {
            assert!(
                *r <= *rev,
                "acknowledged write {} (revision {r}) is beyond the converged revision {rev} {ctx}",
                key(w, *seq)
            );
            let got = per_writer[w].get(seq);
            assert_eq!(
                got,
                Some(r),
                "acknowledged write {} (revision {r}) is missing {ctx}",
                key(w, *seq)
            );
        }
    }

    // Each writer's writes are applied in the order they were made.
    for (w, revs) in per_writer.iter().enumerate() {
        let mut last: Option<(u64, i64)> = None;
        for (&seq, &r) in revs {
            if let Some((pseq, prev)) = last {
                assert!(
                    r > prev,
                    "writer {w}: seq {seq} got revision {r} <= {prev} of seq {pseq} {ctx}"
                );
            }
            last = Some((seq, r));
        }
    }

    // Every revision 2..=rev is exactly one of these puts: no holes.
    let expected = (*rev - 1).max(0) as usize;
    if revisions.len() != expected {
        let holes: Vec<i64> = (2..=*rev).filter(|r| !revisions.contains(r)).collect();
        panic!(
            "revision history has {} hole(s) in 2..={rev}, e.g. {:?} {ctx}",
            holes.len(),
            &holes[..holes.len().min(20)]
        );
    }
    unacked_present
}

async fn wait_for_acks(c: &Cluster, shared: &Shared, n: u64, what: &str, seed: u64) {
    let target = shared.acks.load(Ordering::SeqCst) + n;
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    while shared.acks.load(Ordering::SeqCst) < target {
        if Instant::now() > deadline {
            c.fail(&format!(
                "writes stalled for {PROGRESS_TIMEOUT:?} {what} (seed {seed}, replay with QUORATE_CLUSTER_SEED={seed})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_leader_and_followers_under_write_load() {
    let seed: u64 = match std::env::var("QUORATE_CLUSTER_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("QUORATE_CLUSTER_SEED must be a u64"),
        Err(_) => rand::rng().random(),
    };
    let rounds: usize = match std::env::var("QUORATE_CLUSTER_ROUNDS") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("QUORATE_CLUSTER_ROUNDS must be a number"),
        Err(_) => DEFAULT_ROUNDS,
    }
    .clamp(1, MAX_ROUNDS);
    eprintln!(
        "cluster sigkill: seed {seed} (set QUORATE_CLUSTER_SEED={seed} to replay), {rounds} rounds"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let ctx = format!("(seed {seed}; replay with QUORATE_CLUSTER_SEED={seed})");

    let mut c = tokio::task::block_in_place(|| Cluster::start(MEMBERS));
    let ids = c.member_ids().await;
    eprintln!(
        "cluster sigkill: {:?} cluster up in {:.1}s, member IDs {:x?}, endpoints {:?}",
        c.target,
        started.elapsed().as_secs_f64(),
        ids,
        c.endpoints()
    );

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        disturbed: AtomicBool::new(false),
        acks: AtomicU64::new(0),
        max_rev: AtomicI64::new(0),
    });
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| tokio::spawn(writer(id, c.endpoints(), shared.clone())))
        .collect();

    let mut history = Vec::new();
    let mut done = 0;
    while done < rounds && started.elapsed() < KILL_PHASE_BUDGET {
        wait_for_acks(
            &c,
            &shared,
            ACKS_BEFORE_KILL,
            &format!("before kill #{done}"),
            seed,
        )
        .await;
        let leader = c.leader().await;
        let kill_leader = done % 2 == 0;
        let victim = if kill_leader {
            leader
        } else {
            let followers: Vec<usize> = (0..MEMBERS).filter(|&i| i != leader).collect();
            followers[rng.random_range(0..followers.len())]
        };
        let pre_kill_delay = rng.random_range(0..300u64);
        let down_for = rng.random_range(0..1000u64);
        tokio::time::sleep(Duration::from_millis(pre_kill_delay)).await;

        shared.disturbed.store(true, Ordering::SeqCst);
        let t_kill = Instant::now();
        c.kill(victim);
        // A majority is still up: writes must go on.
        wait_for_acks(
            &c,
            &shared,
            ACKS_WHILE_DOWN,
            &format!(
                "while m{victim} ({}) was down, kill #{done}",
                if kill_leader { "leader" } else { "follower" }
            ),
            seed,
        )
        .await;
        let resumed_after = t_kill.elapsed();
        tokio::time::sleep(Duration::from_millis(down_for)).await;
        tokio::task::block_in_place(|| c.restart(victim));
        // Settle before errors count as calm again: the restarted member
        // has caught up, leader and term have stayed put for two election
        // timeouts (a restarted member may still force an election), and
        // writes flow.
        let restarted = Instant::now();
        let target_rev = shared.max_rev.load(Ordering::SeqCst);
        let mut vc = c.client(victim).await;
        loop {
            match cluster::local_revision(&mut vc).await {
                Ok(r) if r >= target_rev => break,
                other => {
                    if restarted.elapsed() > PROGRESS_TIMEOUT {
                        c.fail(&format!(
                            "restarted m{victim} did not catch up to revision {target_rev} within {PROGRESS_TIMEOUT:?}: {other:?} {ctx}"
                        ));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let caught_up = restarted.elapsed();
        let new_leader = c
            .wait_stable(
                Duration::from_millis(2 * cluster::ELECTION_TIMEOUT_MS),
                cluster::LEADER_TIMEOUT,
            )
            .await;
        wait_for_acks(
            &c,
            &shared,
            ACKS_BEFORE_KILL,
            &format!("after restarting m{victim}, kill #{done}"),
            seed,
        )
        .await;
        shared.disturbed.store(false, Ordering::SeqCst);
        history.push(format!(
            "#{done}: killed m{victim} ({}), writes resumed after {:.2}s, down {:.2}s, caught up {:.2}s after its restart, leader now m{new_leader}",
            if kill_leader { "leader" } else { "follower" },
            resumed_after.as_secs_f64(),
            (t_kill.elapsed() - restarted.elapsed()).as_secs_f64(),
            caught_up.as_secs_f64(),
        ));
        done += 1;
    }
    // Let the load run a little with everyone up.
    wait_for_acks(
        &c,
        &shared,
        ACKS_BEFORE_KILL,
        "after the last restart",
        seed,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(50..300u64))).await;
    shared.stop.store(true, Ordering::SeqCst);
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.await.expect("writer task"));
    }

    for h in &history {
        eprintln!("cluster sigkill: {h}");
    }
    let acked: usize = logs.iter().map(|l| l.acked.len()).sum();
    let failed: usize = logs.iter().map(|l| l.failed.len()).sum();
    let disturbed: usize = logs.iter().map(|l| l.errors_disturbed).sum();
    let calm: Vec<&String> = logs.iter().flat_map(|l| &l.errors_calm).collect();
    let calm_client: Vec<&String> = logs.iter().flat_map(|l| &l.client_errors_calm).collect();
    eprintln!(
        "cluster sigkill: {done} kills, {acked} writes acknowledged, {failed} failed \
         ({disturbed} while a member was down or settling; with all members up: {} server errors, \
         {} client-side errors), {:.1}s",
        calm.len(),
        calm_client.len(),
        started.elapsed().as_secs_f64()
    );
    for e in calm.iter().take(10) {
        eprintln!("  server error with all members up: {e}");
    }
    for e in calm_client.iter().take(10) {
        eprintln!("  client-side error with all members up: {e}");
    }
    if done < rounds {
        c.fail(&format!(
            "only {done} of {rounds} kills within {KILL_PHASE_BUDGET:?}: restarts too slow {ctx}"
        ));
    }
    // At most a stale reconnect error or a stuck connection per writer
    // and restart; more means writes fail while the cluster is healthy.
    let client_error_budget = 2 * WRITERS * done.max(1);
    if calm_client.len() > client_error_budget {
        c.fail(&format!(
            "{} client-side errors with every member up (budget {client_error_budget}), e.g. {} {ctx}",
            calm_client.len(),
            calm_client[0]
        ));
    }
    if !calm.is_empty() {
        c.fail(&format!(
            "{} puts failed while every member was up and settled, e.g. {} {ctx}",
            calm.len(),
            calm[0]
        ));
    }

    // Every member reaches the same revision; then each member's own data
    // (serializable reads) is checked and hashed at that revision.
    let all: Vec<usize> = (0..MEMBERS).collect();
    let rev = c.wait_same_revision(&all, CONVERGE_TIMEOUT).await;
    let mut hashes = Vec::new();
    let mut spaces = Vec::new();
    for i in 0..MEMBERS {
        let mut client = c.client(i).await;
        let space = cluster::read_all(&mut client, true, Some(rev)).await;
        assert_eq!(space.0, rev);
        let unacked = verify(&space, &logs, &format!("on m{i} {ctx}"));
        let hash = cluster::keyspace_hash(&space.1);
        eprintln!(
            "cluster sigkill: m{i}: revision {rev}, {} keys ({unacked} from failed puts), sha256 {hash}",
            space.1.len()
        );
        hashes.push(hash);
        spaces.push(space);
    }
    for i in 1..MEMBERS {
        if hashes[i] != hashes[0] || spaces[i] != spaces[0] {
            c.fail(&format!(
                "m{i}'s keyspace differs from m0's at revision {rev}: {} vs {} {ctx}",
                hashes[i], hashes[0]
            ));
        }
    }
    // A linearizable read through any member sees the same.
    let mut client = c.client_all().await;
    let lin = cluster::read_all(&mut client, false, Some(rev)).await;
    assert!(lin == spaces[0], "linearizable read differs {ctx}");
    eprintln!(
        "cluster sigkill: done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

// The checker and the hash, on made-up data.

fn fake(entries: &[(usize, u64, i64)]) -> BTreeMap<Vec<u8>, Stored> {
    entries
        .iter()
        .map(|&(w, seq, r)| {
            let stored = Stored {
                value: value(w, seq),
                create: r,
                modr: r,
                version: 1,
                lease: 0,
            };
            (key(w, seq).into_bytes(), stored)
        })
        .collect()
}

fn fake_log(acked: &[(u64, i64)], failed: &[u64], next_seq: u64) -> WriterLog {
    WriterLog {
        acked: acked.iter().copied().collect(),
        failed: failed.iter().copied().collect(),
        next_seq,
        ..WriterLog::default()
    }
}

#[test]
fn checker_accepts_a_consistent_history() {
    let logs = [fake_log(&[(0, 2)], &[1, 2], 3), fake_log(&[(0, 3)], &[], 1)];
    let snap = (4, fake(&[(0, 0, 2), (1, 0, 3), (0, 1, 4)]));
    assert_eq!(verify(&snap, &logs, ""), 1);
}

#[test]
#[should_panic(expected = "is missing")]
fn checker_detects_a_lost_write() {
    let logs = [fake_log(&[(0, 2), (1, 3)], &[], 2)];
    let snap = (3, fake(&[(0, 0, 2)]));
    verify(&snap, &logs, "");
}

#[test]
#[should_panic(expected = "beyond the converged revision")]
fn checker_detects_an_acked_write_past_the_end() {
    let logs = [fake_log(&[(0, 2), (1, 3)], &[], 2)];
    let snap = (2, fake(&[(0, 0, 2)]));
    verify(&snap, &logs, "");
}

#[test]
#[should_panic(expected = "hole")]
fn checker_detects_a_hole() {
    let logs = [fake_log(&[(0, 2), (1, 4)], &[], 2)];
    let snap = (4, fake(&[(0, 0, 2), (0, 1, 4)]));
    verify(&snap, &logs, "");
}

#[test]
#[should_panic(expected = "differs from the acknowledged revision")]
fn checker_detects_a_wrong_revision() {
    let logs = [fake_log(&[(0, 3)], &[1], 2)];
    let snap = (3, fake(&[(0, 0, 2), (0, 1, 3)]));
    verify(&snap, &logs, "");
}

#[test]
#[should_panic(expected = "partial value")]
fn checker_detects_a_partial_value() {
    let logs = [fake_log(&[], &[0], 1)];
    let mut snap = (2, fake(&[(0, 0, 2)]));
    snap.1.values_mut().for_each(|v| v.value.truncate(5));
    verify(&snap, &logs, "");
}

#[test]
fn sha256_matches_known_vectors() {
    let hex = |d: [u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let h = |data: &[u8]| {
        let mut s = cluster::Sha256::new();
        s.update(data);
        hex(s.finish())
    };
    assert_eq!(
        h(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        h(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        h(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
    // Fed in odd pieces, a million 'a's.
    let mut s = cluster::Sha256::new();
    let chunk = [b'a'; 997];
    let mut left = 1_000_000usize;
    while left > 0 {
        let n = left.min(chunk.len());
        s.update(&chunk[..n]);
        left -= n;
    }
    assert_eq!(
        hex(s.finish()),
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
    );
    // The keyspace hash depends on keys, values and revisions.
    let a = fake(&[(0, 0, 2)]);
    let mut b = a.clone();
    b.values_mut().for_each(|v| v.modr = 3);
    assert_ne!(cluster::keyspace_hash(&a), cluster::keyspace_hash(&b));
    assert_eq!(
        cluster::keyspace_hash(&a),
        cluster::keyspace_hash(&a.clone())
    );
}
