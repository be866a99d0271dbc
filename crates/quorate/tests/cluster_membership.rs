//! Membership changes through the Cluster API (etcd-client): learners
//! (add, catch up, reads, promote), removing live and dead members, what a
//! removed member does when restarted, reconfiguration errors, and a
//! member whose data dir belongs to another cluster.
//!
//! Run against a real etcd with `QUORATE_TEST_TARGET=etcd`; the exact error
//! strings, codes and log lines asserted here are etcd 3.4.23's.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{self, Cluster};
use etcd_client::{Client, GetOptions, MemberAddOptions};
use tonic::Code;

/// Bound for retried reconfigurations and polled conditions.
const RETRY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a removed member may take to notice and exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// etcd 3.4 (strict reconfig check) refuses MemberAdd until the serving
/// member has been connected to every voter for 5 s.
const UNHEALTHY: &str = "etcdserver: unhealthy cluster";
const NOT_ENOUGH_STARTED: &str =
    "etcdserver: re-configuration failed due to not enough started members";
const NOT_IN_SYNC: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";
const NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
const NOT_FOUND: &str = "etcdserver: member not found";
const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";
const TOO_MANY_LEARNERS: &str = "etcdserver: too many learner members in cluster";
const LEARNER_RPC: &str = "etcdserver: rpc not supported for learner";
/// What a removed member logs, etcd and quorate alike (etcd 3.4 logs
/// `E | etcdserver: the member has been permanently removed from the
/// cluster` and then `I | etcdserver: the data-dir used by this member must
/// be removed.`).
const REMOVED_LOG: &str = "the member has been permanently removed from the cluster";
/// Logged on both sides when a peer belongs to another cluster (etcd 3.4:
/// the stranger logs `rafthttp: request cluster ID mismatch (got <ours>
/// want <its own>)`, our members log `rafthttp: request sent was ignored
/// (cluster ID mismatch: peer[<id>]=<its>, local=<ours>)`).
const MISMATCH_LOG: &str = "cluster ID mismatch";

/// Asserts that `r` failed with exactly this gRPC code and message.
fn expect_status<T: std::fmt::Debug>(
    c: &Cluster,
    r: Result<T, etcd_client::Error>,
    code: Code,
    msg: &str,
    what: &str,
) {
    match r {
        Ok(v) => c.fail(&format!(
            "{what}: succeeded ({v:?}), expected {code:?} {msg:?}"
        )),
        Err(e) => match cluster::grpc_status(&e) {
            Some((got_code, got_msg)) if got_code == code && got_msg == msg => {}
            _ => c.fail(&format!("{what}: got {e}, expected {code:?} {msg:?}")),
        },
    }
}

async fn add_member(
    client: &Client,
    peer: &str,
    learner: bool,
) -> Result<etcd_client::MemberAddResponse, etcd_client::Error> {
    let opts = if learner {
        MemberAddOptions::new().with_is_learner()
    } else {
        MemberAddOptions::new()
    };
    cluster::retry_while(RETRY_TIMEOUT, &[UNHEALTHY], || {
        let mut cl = client.clone();
        let urls = vec![peer.to_string()];
        let opts = opts.clone();
        async move { cl.member_add(urls, Some(opts)).await }
    })
    .await
}

async fn remove_member(
    client: &Client,
    id: u64,
) -> Result<etcd_client::MemberRemoveResponse, etcd_client::Error> {
    cluster::retry_while(RETRY_TIMEOUT, &[NOT_ENOUGH_STARTED, UNHEALTHY], || {
        let mut cl = client.clone();
        async move { cl.member_remove(id).await }
    })
    .await
}

/// (id, name, is_learner) of every member in a MemberList.
async fn members(c: &Cluster, client: &mut Client) -> Vec<(u64, String, Vec<String>, bool)> {
    match tokio::time::timeout(cluster::RPC_TIMEOUT, client.member_list()).await {
        Ok(Ok(l)) => l
            .members()
            .iter()
            .map(|m| {
                (
                    m.id(),
                    m.name().to_string(),
                    m.client_urls().to_vec(),
                    m.is_learner(),
                )
            })
            .collect(),
        Ok(Err(e)) => c.fail(&format!("member list: {e}")),
        Err(_) => c.fail("member list timed out"),
    }
}

async fn get_value(
    client: &mut Client,
    key: &str,
    serializable: bool,
) -> Result<Option<Vec<u8>>, etcd_client::Error> {
    let opts = if serializable {
        Some(GetOptions::new().with_serializable())
    } else {
        None
    };
    let r = client.get(key, opts).await?;
    Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_add_catch_up_read_and_promote() {
    let mut c = tokio::task::block_in_place(|| Cluster::start(3));
    let ids = c.member_ids().await;
    let mut all = c.client_all().await;
    for i in 0..50 {
        all.put(format!("before/{i:02}"), format!("v{i}"), None)
            .await
            .expect("put");
    }

    // Add a learner.
    let (peer_port, client_port) = cluster::free_port_pair();
    let peer = cluster::url(peer_port);
    let t = Instant::now();
    let resp = match add_member(&all, &peer, true).await {
        Ok(r) => r,
        Err(e) => c.fail(&format!("member add --learner: {e}")),
    };
    eprintln!(
        "learner added after {:.1}s (retrying on {UNHEALTHY:?})",
        t.elapsed().as_secs_f64()
    );
    let new = resp.member().expect("added member").clone();
    let new_id = new.id();
    assert!(new.is_learner(), "{new:?}");
    assert_eq!(new.peer_urls(), std::slice::from_ref(&peer));
    assert_eq!(new.name(), "", "unstarted: no name yet");
    assert!(new.client_urls().is_empty());
    assert!(!ids.contains(&new_id));
    // The response lists every member, the new one included.
    assert_eq!(resp.member_list().len(), 4, "{:?}", resp.member_list());
    let list = members(&c, &mut all).await;
    assert_eq!(list.len(), 4);
    assert!(list.iter().any(|m| m.0 == new_id && m.3 && m.1.is_empty()));

    // Not started: it cannot be in sync.
    let r = all.member_promote(new_id).await;
    expect_status(
        &c,
        r,
        Code::FailedPrecondition,
        NOT_IN_SYNC,
        "promote an unstarted learner",
    );
    // One learner at a time (etcd's default).
    let (p2, _) = cluster::free_port_pair();
    let r = add_member(&all, &cluster::url(p2), true).await;
    expect_status(
        &c,
        r,
        Code::FailedPrecondition,
        TOO_MANY_LEARNERS,
        "a second learner",
    );

    // Start it with the initial cluster that `member add` implies.
    let mut pairs: Vec<String> = Vec::new();
    for m in resp.member_list() {
        let name = if m.id() == new_id { "m3" } else { m.name() };
        for u in m.peer_urls() {
            pairs.push(format!("{name}={u}"));
        }
    }
    let m3 = c.add_member_process("m3", peer_port, client_port, &pairs.join(","));
    if let Err(e) = tokio::task::block_in_place(|| c.wait_ready(m3)) {
        c.fail(&format!("learner did not start: {e}"));
    }
    all.put("marker", "m", None).await.expect("put marker");
    let mut learner = c.client(m3).await;

    // Serializable reads are served by the learner from its own data.
    let deadline = Instant::now() + RETRY_TIMEOUT;
    loop {
        match get_value(&mut learner, "marker", true).await {
            Ok(Some(v)) if v == b"m" => break,
            other => {
                if Instant::now() > deadline {
                    c.fail(&format!("learner did not catch up: {other:?}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get_value(&mut learner, "before/07", true)
            .await
            .expect("serializable get"),
        Some(b"v7".to_vec())
    );
    // Linearizable reads and writes are not.
    let r = get_value(&mut learner, "marker", false).await;
    expect_status(
        &c,
        r,
        Code::Unavailable,
        LEARNER_RPC,
        "linearizable get on a learner",
    );
    let r = learner.put("on-learner", "x", None).await;
    expect_status(&c, r, Code::Unavailable, LEARNER_RPC, "put on a learner");
    // Status works on a learner and says so.
    let st = learner.status().await.expect("status on the learner");
    assert!(st.is_learner(), "{st:?}");
    assert_eq!(st.header().map(|h| h.member_id()), Some(new_id));
    let list = members(&c, &mut all).await;
    let me = list.iter().find(|m| m.0 == new_id).expect("learner listed");
    assert_eq!(me.1, "m3", "started learner has published its name");
    assert_eq!(me.2, [c.endpoint(m3)]);
    assert!(me.3);

    // Promote (retrying while the leader thinks it is behind).
    let t = Instant::now();
    let r = cluster::retry_while(RETRY_TIMEOUT, &[NOT_IN_SYNC], || {
        let mut cl = all.clone();
        async move { cl.member_promote(new_id).await }
    })
    .await;
    let promoted = match r {
        Ok(p) => p,
        Err(e) => c.fail(&format!("promote: {e}")),
    };
    eprintln!("promoted after {:.1}s", t.elapsed().as_secs_f64());
    assert!(promoted
        .members()
        .iter()
        .any(|m| m.id() == new_id && !m.is_learner()));
    let list = members(&c, &mut all).await;
    assert!(list.iter().all(|m| !m.3), "no learners left: {list:?}");
    // A voter now: linearizable reads work on it.
    let deadline = Instant::now() + RETRY_TIMEOUT;
    loop {
        match get_value(&mut learner, "marker", false).await {
            Ok(v) => {
                assert_eq!(v, Some(b"m".to_vec()));
                break;
            }
            Err(e) if Instant::now() > deadline => {
                c.fail(&format!("linearizable get on the promoted member: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }

    // Promoting a voter, or nobody.
    let r = all.member_promote(ids[0]).await;
    expect_status(
        &c,
        r,
        Code::FailedPrecondition,
        NOT_LEARNER,
        "promote a voter",
    );
    let r = all.member_promote(new_id).await;
    expect_status(
        &c,
        r,
        Code::FailedPrecondition,
        NOT_LEARNER,
        "promote twice",
    );
    let r = all.member_promote(0x1234).await;
    expect_status(&c, r, Code::NotFound, NOT_FOUND, "promote an unknown ID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_dead_and_live_members_and_refuse_their_return() {
    let mut c = tokio::task::block_in_place(|| Cluster::start(3));
    let ids = c.member_ids().await;
    let leader = c.leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (dead, live) = (followers[0], followers[1]);
    let mut client = cluster::connect(&[c.endpoint(leader), c.endpoint(live)]).await;
    client.put("k", "v0", None).await.expect("put");

    // A dead member can always be removed.
    c.kill(dead);
    let r = remove_member(&client, ids[dead]).await;
    if let Err(e) = r {
        c.fail(&format!("remove dead m{dead}: {e}"));
    }
    let list = members(&c, &mut client).await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|m| m.0 != ids[dead]));
    client
        .put("k", "v1", None)
        .await
        .expect("put with 2 members");

    // A live one: it stops by itself.
    let t = Instant::now();
    if let Err(e) = remove_member(&client, ids[live]).await {
        c.fail(&format!("remove live m{live}: {e}"));
    }
    let removed_at = Instant::now();
    eprintln!(
        "removed live m{live} after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let exit = tokio::task::block_in_place(|| c.wait_exit(live, EXIT_TIMEOUT));
    let Some(status) = exit else {
        c.fail(&format!(
            "m{live} still runs {EXIT_TIMEOUT:?} after its removal"
        ));
    };
    eprintln!(
        "removed live member exited after {:.2}s: {status}",
        removed_at.elapsed().as_secs_f64()
    );
    let log = c.current_log(live);
    if !log.contains(REMOVED_LOG) {
        c.fail(&format!("m{live}'s log lacks {REMOVED_LOG:?}"));
    }

    // The survivor serves alone.
    let mut solo = c.client(leader).await;
    solo.put("k", "v2", None)
        .await
        .expect("put on the last member");
    let list = members(&c, &mut solo).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].0, ids[leader]);

    // Removed members that come back are refused and stop.
    for (i, how) in [(dead, "while dead"), (live, "while running")] {
        c.spawn(i);
        let t = Instant::now();
        let exit = tokio::task::block_in_place(|| c.wait_exit(i, EXIT_TIMEOUT));
        let Some(status) = exit else {
            c.fail(&format!(
                "m{i} (removed {how}) still runs {EXIT_TIMEOUT:?} after its restart"
            ));
        };
        eprintln!(
            "restarted m{i} (removed {how}) exited after {:.2}s: {status}",
            t.elapsed().as_secs_f64()
        );
        let log = c.current_log(i);
        if !log.contains(REMOVED_LOG) {
            c.fail(&format!(
                "restarted m{i} (removed {how}): log lacks {REMOVED_LOG:?}"
            ));
        }
    }
    // Nothing changed for the survivor.
    let list = members(&c, &mut solo).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        get_value(&mut solo, "k", false).await.expect("get"),
        Some(b"v2".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfiguration_errors() {
    let mut c = tokio::task::block_in_place(|| Cluster::start(3));
    let ids = c.member_ids().await;
    let mut all = c.client_all().await;

    // A peer URL already in use.
    let r = add_member(&all, &c.peer_url(1), false).await;
    expect_status(
        &c,
        r,
        Code::FailedPrecondition,
        PEER_URL_EXISTS,
        "add a member with a used peer URL",
    );
    let r = add_member(&all, &c.peer_url(2), true).await;
    expect_status(
        &c,
        r,
        Code::FailedPrecondition,
        PEER_URL_EXISTS,
        "add a learner with a used peer URL",
    );
    // Unknown IDs.
    let unknown = (1..)
        .map(|k: u64| 0x5eed_0000_0000_0000 + k)
        .find(|id| !ids.contains(id))
        .expect("an unused ID");
    let r = all.member_remove(unknown).await;
    expect_status(&c, r, Code::NotFound, NOT_FOUND, "remove an unknown ID");
    let r = all.member_promote(unknown).await;
    expect_status(&c, r, Code::NotFound, NOT_FOUND, "promote an unknown ID");
    let list = members(&c, &mut all).await;
    assert_eq!(list.len(), 3, "nothing changed: {list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_with_another_clusters_data_is_refused() {
    // Cluster B: one member with its own token and some data, then stopped.
    let mut b = tokio::task::block_in_place(|| Cluster::start(1));
    let mut bc = b.client(0).await;
    bc.put("from-b", "b", None).await.expect("put on B");
    drop(bc);
    let b_status = tokio::task::block_in_place(|| b.terminate(0));
    eprintln!("cluster B's member stopped: {b_status:?}");
    let (b_peer_port, b_client_port) = (b.members[0].peer_port, b.members[0].client_port);
    let b_dir = b.members[0].data_dir.clone();

    // Cluster A expects a new member at B's peer URL.
    let mut c = tokio::task::block_in_place(|| Cluster::start(3));
    let mut all = c.client_all().await;
    all.put("from-a", "a", None).await.expect("put on A");
    let peer = cluster::url(b_peer_port);
    let resp = match add_member(&all, &peer, true).await {
        Ok(r) => r,
        Err(e) => c.fail(&format!("member add: {e}")),
    };
    let new_id = resp.member().expect("added").id();
    let initial = format!("{},m3={peer}", c.initial_cluster_of(&[0, 1, 2]));
    let m3 = c.add_member_process_in("m3", b_peer_port, b_client_port, &initial, &b_dir);

    // Both sides notice the cluster ID mismatch.
    let deadline = Instant::now() + RETRY_TIMEOUT;
    loop {
        let stranger = c.current_log(m3).contains(MISMATCH_LOG);
        let ours = (0..3).any(|i| c.log(i).contains(MISMATCH_LOG));
        if stranger && ours {
            break;
        }
        if Instant::now() > deadline {
            c.fail(&format!(
                "no {MISMATCH_LOG:?} within {RETRY_TIMEOUT:?} in the logs of the stranger ({stranger}) \
                 and of the cluster's members ({ours}); etcd logs it on both sides"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let still_running = c.is_running(m3);
    eprintln!(
        "stranger with B's data dir: still running = {still_running} (etcd keeps serving its own cluster)"
    );

    // It never joined A: A still lists it unstarted, will not promote it,
    // and carries on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let list = members(&c, &mut all).await;
    let me = list.iter().find(|m| m.0 == new_id).expect("still a member");
    assert!(me.1.is_empty() && me.2.is_empty(), "never started: {me:?}");
    let r = all.member_promote(new_id).await;
    expect_status(
        &c,
        r,
        Code::FailedPrecondition,
        NOT_IN_SYNC,
        "promote the stranger",
    );
    all.put("from-a-2", "a2", None)
        .await
        .expect("A still writes");
    // It got none of A's data.
    if c.is_running(m3) {
        let mut s = c.client(m3).await;
        match get_value(&mut s, "from-a", true).await {
            Ok(None) | Err(_) => {}
            Ok(Some(v)) => c.fail(&format!("the stranger serves A's data: {v:?}")),
        }
    }
    drop(b);
}

/// Quorate's `--auto-promote-learners` (on by default): the leader promotes a
/// learner by itself once it has caught up. Quorate only.
#[tokio::test]
async fn caught_up_learner_is_promoted_automatically() {
    if common::Target::from_env() != common::Target::Quorate {
        eprintln!("skipped: auto-promotion is a Quorate feature");
        return;
    }
    let mut c = Cluster::start(3);
    c.auto_promote = true;
    // Restart the members with auto-promotion on.
    for i in 0..3 {
        c.restart(i);
    }
    let mut client = c.client_all().await;
    for i in 0..20 {
        client
            .put(format!("k{i}"), "v", None)
            .await
            .expect("put before the learner joins");
    }
    let (peer, client_port) = cluster::free_port_pair();
    let peer_url = format!("http://127.0.0.1:{peer}");
    let added = client
        .member_add(
            [peer_url.clone()],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("add learner");
    let id = added.member().expect("member").id();
    let initial = format!("{},m3={peer_url}", c.initial_cluster_of(&[0, 1, 2]));
    let m3 = c.add_member_process("m3", peer, client_port, &initial);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let list = client.member_list().await.expect("member list");
        let learner = list
            .members()
            .iter()
            .find(|m| m.id() == id)
            .map(|m| m.is_learner());
        if learner == Some(false) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "learner {id:x} was not promoted within 30 s (member process {m3})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
