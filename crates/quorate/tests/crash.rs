//! Crash test: SIGKILL the server again and again under concurrent write
//! load, restart it on the same data dir, and check that nothing
//! acknowledged was lost and that the revision history has no holes.
//!
//! Writers put unique keys `w{writer}/{seq:08}` (each key is written at most
//! once, never retried), with a value derived from (writer, seq), and
//! remember the header revision of every acknowledged put. A put that fails
//! (it was in flight at the kill) may or may not have been applied; if it
//! was, it must be complete.
//!
//! Kill moments are random but seeded: the seed is printed, and
//! `QUORATE_CRASH_SEED=<n>` replays a run. `QUORATE_CRASH_KILLS=<n>` changes
//! the number of kills (default 20, at most 25).
//!
//! Run against a real etcd with `QUORATE_TEST_TARGET=etcd`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

const WRITERS: usize = 4;
const DEFAULT_KILLS: usize = 20;
const MAX_KILLS: usize = 25;
/// Budget for the kill phase; the whole test stays under 3 minutes.
const KILL_PHASE_BUDGET: Duration = Duration::from_secs(150);
/// After a restart, the writers must get an ack within this time.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(20);
/// New acks (all writers together) required between two kills, so that
/// every kill lands in the middle of the load.
const ACKS_BETWEEN_KILLS: u64 = 8;
/// Share of kills made right after a restart instead of under full load.
const EARLY_KILL_CHANCE: f64 = 0.2;
/// A single put taking longer than this is treated as failed.
const PUT_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys per page when reading everything back.
const PAGE: i64 = 500;

fn key(writer: usize, seq: u64) -> String {
    format!("w{writer}/{seq:08}")
}

/// Deterministic value of varying length (0..=250 bytes of filler), so a
/// torn or mixed-up write is visible.
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

/// What the writers see: `None` while the server is down (being killed and
/// restarted), else the generation number and endpoint of the live server.
type ServerState = Option<(u64, String)>;

#[derive(Default)]
struct WriterLog {
    /// seq -> revision of every acknowledged put.
    acked: BTreeMap<u64, i64>,
    /// Puts that returned an error (or timed out): outcome unknown.
    failed: BTreeSet<u64>,
    /// Failures that happened while the server was not being killed.
    unexpected_errors: Vec<String>,
    /// The next unused seq: no key with seq >= this was ever sent.
    next_seq: u64,
}

async fn connect(endpoint: &str) -> Result<Client, String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(PUT_TIMEOUT);
    match tokio::time::timeout(
        Duration::from_secs(5),
        Client::connect([endpoint], Some(opts)),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connect {endpoint}: {e}")),
        Err(_) => Err(format!("connect {endpoint}: timed out")),
    }
}

async fn writer(
    id: usize,
    mut state: watch::Receiver<ServerState>,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
) -> WriterLog {
    let mut log = WriterLog::default();
    'outer: while !stop.load(Ordering::SeqCst) {
        // Wait for a live server.
        let Ok(current) = state.wait_for(|s| s.is_some()).await.map(|s| s.clone()) else {
            break;
        };
        let (generation, endpoint) = current.expect("live server");
        let mut client = match connect(&endpoint).await {
            Ok(c) => c,
            Err(e) => {
                if *state.borrow() == Some((generation, endpoint.clone())) {
                    log.unexpected_errors.push(e);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        loop {
            if stop.load(Ordering::SeqCst) {
                break 'outer;
            }
            let seq = log.next_seq;
            log.next_seq += 1;
            let res =
                tokio::time::timeout(PUT_TIMEOUT, client.put(key(id, seq), value(id, seq), None))
                    .await;
            let err = match res {
                Ok(Ok(resp)) => match resp.header() {
                    Some(h) => {
                        log.acked.insert(seq, h.revision());
                        acks.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    None => "put response without a header".to_string(),
                },
                Ok(Err(e)) => e.to_string(),
                Err(_) => "put timed out".to_string(),
            };
            // The outcome of this put is unknown; never retry the key.
            log.failed.insert(seq);
            let killed = *state.borrow() != Some((generation, endpoint.clone()));
            if !killed {
                log.unexpected_errors
                    .push(format!("put {} failed: {err}", key(id, seq)));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Reconnect (to the restarted server, once it is up).
            continue 'outer;
        }
    }
    log
}

/// One key as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    value: Vec<u8>,
    create: i64,
    modr: i64,
    version: i64,
    lease: i64,
}

/// The store revision and every key in it.
type Snapshot = (i64, BTreeMap<Vec<u8>, Stored>);

/// Reads every key at one revision, page by page.
async fn read_all(client: &mut Client) -> Snapshot {
    let first = client
        .get(
            vec![0u8],
            Some(GetOptions::new().with_from_key().with_limit(PAGE)),
        )
        .await
        .expect("range over all keys");
    let rev = first.header().expect("range header").revision();
    let mut all = BTreeMap::new();
    let mut resp = first;
    loop {
        for kv in resp.kvs() {
            let prev = all.insert(
                kv.key().to_vec(),
                Stored {
                    value: kv.value().to_vec(),
                    create: kv.create_revision(),
                    modr: kv.mod_revision(),
                    version: kv.version(),
                    lease: kv.lease(),
                },
            );
            assert!(prev.is_none(), "key {:?} returned twice", kv.key_str());
        }
        if !resp.more() {
            break;
        }
        let mut next = resp
            .kvs()
            .last()
            .expect("more=true with no kvs")
            .key()
            .to_vec();
        next.push(0);
        resp = client
            .get(
                next,
                Some(
                    GetOptions::new()
                        .with_from_key()
                        .with_limit(PAGE)
                        .with_revision(rev),
                ),
            )
            .await
            .expect("next page");
        assert_eq!(
            resp.header().expect("range header").revision(),
            rev,
            "no writes during the read-back"
        );
    }
    (rev, all)
}

/// Checks the final store contents against what the writers saw.
fn verify(snapshot: &Snapshot, logs: &[WriterLog], seed: u64) -> usize {
    let (rev, all) = snapshot;
    let ctx = format!("(replay with QUORATE_CRASH_SEED={seed})");
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

    // (a) every acknowledged write is there, at its revision.
    for (w, log) in logs.iter().enumerate() {
        for (seq, r) in &log.acked {
            let got = per_writer[w].get(seq);
            assert_eq!(
                got,
                Some(r),
                "acknowledged write {} (revision {r}) is missing {ctx}",
                key(w, *seq)
            );
        }
    }

    // (b) each writer's writes are applied in the order they were made.
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

    // (b) every revision 2..=rev is exactly one of these puts: no holes.
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

/// Kills and restarts the server off the async runtime (restart blocks until
/// the new process is serving).
async fn kill_and_restart(srv: common::Server) -> common::Server {
    tokio::task::spawn_blocking(move || {
        let mut srv = srv;
        srv.kill();
        srv.restart();
        srv
    })
    .await
    .expect("restart task")
}

async fn wait_for_acks(acks: &AtomicU64, target: u64, what: &str, seed: u64) {
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    while acks.load(Ordering::SeqCst) < target {
        assert!(
            Instant::now() < deadline,
            "no progress for {PROGRESS_TIMEOUT:?} {what} (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_write_load_loses_nothing() {
    let seed: u64 = match std::env::var("QUORATE_CRASH_SEED") {
        Ok(s) => s.trim().parse().expect("QUORATE_CRASH_SEED must be a u64"),
        Err(_) => rand::rng().random(),
    };
    let kills_wanted: usize = match std::env::var("QUORATE_CRASH_KILLS") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("QUORATE_CRASH_KILLS must be a number"),
        Err(_) => DEFAULT_KILLS,
    }
    .clamp(1, MAX_KILLS);
    eprintln!(
        "crash test: seed {seed} (set QUORATE_CRASH_SEED={seed} to replay), {kills_wanted} kills"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let started = Instant::now();
    let mut srv = common::Server::start();
    let mut generation = 0u64;
    let (state_tx, state_rx) =
        watch::channel::<ServerState>(Some((generation, srv.endpoint.clone())));
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));

    let writers: Vec<_> = (0..WRITERS)
        .map(|id| tokio::spawn(writer(id, state_rx.clone(), stop.clone(), acks.clone())))
        .collect();

    let mut kills = 0;
    let mut early_kills = 0;
    while kills < kills_wanted && started.elapsed() < KILL_PHASE_BUDGET {
        if rng.random_bool(EARLY_KILL_CHANCE) {
            // Kill right after start-up, while the writers reconnect.
            let delay = rng.random_range(0..50u64);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            early_kills += 1;
        } else {
            // Let the load get going on this incarnation, then kill at a
            // random moment.
            let base = acks.load(Ordering::SeqCst);
            wait_for_acks(
                &acks,
                base + ACKS_BETWEEN_KILLS,
                &format!("after restart #{kills}"),
                seed,
            )
            .await;
            let delay = rng.random_range(0..300u64);
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }

        state_tx.send_replace(None);
        srv = kill_and_restart(srv).await;
        kills += 1;
        generation += 1;
        state_tx.send_replace(Some((generation, srv.endpoint.clone())));
    }
    // Writes acknowledged after the last restart must be there too.
    let base = acks.load(Ordering::SeqCst);
    wait_for_acks(
        &acks,
        base + ACKS_BETWEEN_KILLS,
        "after the last restart",
        seed,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(50..300u64))).await;
    stop.store(true, Ordering::SeqCst);
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.await.expect("writer task"));
    }
    drop(state_tx);

    let acked: usize = logs.iter().map(|l| l.acked.len()).sum();
    let failed: usize = logs.iter().map(|l| l.failed.len()).sum();
    let unexpected: Vec<&String> = logs.iter().flat_map(|l| &l.unexpected_errors).collect();
    eprintln!(
        "crash test: {kills} kills ({early_kills} right after start-up), {acked} writes acknowledged, {failed} failed/in flight, \
         {} errors outside kills, {:.1}s",
        unexpected.len(),
        started.elapsed().as_secs_f64()
    );
    for e in unexpected.iter().take(10) {
        eprintln!("  error outside a kill: {e}");
    }
    assert!(
        kills >= kills_wanted,
        "only {kills} of {kills_wanted} kills within {KILL_PHASE_BUDGET:?}: restarts too slow (seed {seed})"
    );

    let mut client = connect(&srv.endpoint).await.expect("connect for read-back");
    let snap = read_all(&mut client).await;
    let unacked_present = verify(&snap, &logs, seed);
    eprintln!(
        "crash test: revision {}, {} keys, {} of them from failed (in-flight) puts",
        snap.0,
        snap.1.len(),
        unacked_present
    );

    // One more restart with no load: the same state must come back.
    drop(client);
    srv = kill_and_restart(srv).await;
    let mut client = connect(&srv.endpoint)
        .await
        .expect("connect after final restart");
    let again = read_all(&mut client).await;
    assert_eq!(
        again.0, snap.0,
        "revision changed across an idle restart (seed {seed})"
    );
    assert!(
        again.1 == snap.1,
        "contents changed across an idle restart (seed {seed})"
    );
    eprintln!(
        "crash test: done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

// The checker itself, on made-up data.

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
        unexpected_errors: Vec::new(),
        next_seq,
    }
}

#[test]
fn checker_accepts_a_consistent_history() {
    // Writer 0: seq 0 acked at 2, seq 1 failed but applied at 4, seq 2 failed
    // and lost. Writer 1: seq 0 acked at 3.
    let logs = [fake_log(&[(0, 2)], &[1, 2], 3), fake_log(&[(0, 3)], &[], 1)];
    let snap = (4, fake(&[(0, 0, 2), (1, 0, 3), (0, 1, 4)]));
    assert_eq!(verify(&snap, &logs, 0), 1);
}

#[test]
#[should_panic(expected = "is missing")]
fn checker_detects_a_lost_write() {
    let logs = [fake_log(&[(0, 2), (1, 3)], &[], 2)];
    let snap = (2, fake(&[(0, 0, 2)]));
    verify(&snap, &logs, 0);
}

#[test]
#[should_panic(expected = "hole")]
fn checker_detects_a_hole() {
    let logs = [fake_log(&[(0, 2), (1, 4)], &[], 2)];
    let snap = (4, fake(&[(0, 0, 2), (0, 1, 4)]));
    verify(&snap, &logs, 0);
}

#[test]
#[should_panic(expected = "partial value")]
fn checker_detects_a_partial_value() {
    let logs = [fake_log(&[], &[0], 1)];
    let mut snap = (2, fake(&[(0, 0, 2)]));
    snap.1.values_mut().for_each(|v| v.value.truncate(5));
    verify(&snap, &logs, 0);
}

#[test]
#[should_panic(expected = "differs from the acknowledged revision")]
fn checker_detects_a_wrong_revision() {
    let logs = [fake_log(&[(0, 3)], &[1], 2)];
    let snap = (3, fake(&[(0, 0, 2), (0, 1, 3)]));
    verify(&snap, &logs, 0);
}

#[test]
#[should_panic(expected = "never written")]
fn checker_detects_a_phantom_write() {
    let logs = [fake_log(&[(0, 2)], &[], 1)];
    let snap = (3, fake(&[(0, 0, 2), (0, 1, 3)]));
    verify(&snap, &logs, 0);
}

#[test]
#[should_panic(expected = "writer 0: seq 1 got revision 2")]
fn checker_detects_reordered_writes() {
    let logs = [fake_log(&[(1, 2)], &[0], 2)];
    let snap = (3, fake(&[(0, 0, 3), (0, 1, 2)]));
    verify(&snap, &logs, 0);
}
