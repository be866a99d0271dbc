//! Offline data-dir tools (no running server needed): snapshot status and
//! restore, as `quorate snapshot ...`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use quorate_mvcc::{open_snapshot_file, AppliedIndex, SnapshotInfo, Store, StoreOptions};
use quorate_raft::DurableLog;

use crate::membership::{self, META_CLUSTER_ID, META_MEMBERSHIP, META_MEMBER_ID};

/// What `snapshot status` reports.
#[derive(Debug, Clone)]
pub struct SnapshotStatus {
    /// First 4 bytes of the snapshot's SHA-256, as etcd reports a u32 hash.
    pub hash: u32,
    pub revision: i64,
    pub total_keys: u64,
    pub total_size: u64,
    pub version: String,
}

pub fn snapshot_status(path: &Path) -> anyhow::Result<SnapshotStatus> {
    let (mut body, _) = open_snapshot_file(path, false)?;
    let info: SnapshotInfo = quorate_mvcc::read_snapshot_info(&mut body)
        .with_context(|| format!("{} is not a valid snapshot", path.display()))?;
    let total_size = std::fs::metadata(path)?.len();
    Ok(SnapshotStatus {
        hash: u32::from_be_bytes([
            info.sha256[0],
            info.sha256[1],
            info.sha256[2],
            info.sha256[3],
        ]),
        revision: info.revision,
        total_keys: info.total_keys,
        total_size,
        version: format!("quorate-snapshot/{}", quorate_mvcc::SNAPSHOT_FORMAT_VERSION),
    })
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub snapshot: PathBuf,
    pub name: String,
    pub data_dir: PathBuf,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub bump_revision: i64,
    pub mark_compacted: bool,
    pub skip_hash_check: bool,
}

/// Creates a fresh data dir for one member of a new cluster from a snapshot:
/// the data is kept, the membership and IDs come from the flags (as etcd's
/// restore does), and the Raft log starts anew. Never touches an existing
/// data dir.
pub fn snapshot_restore(opts: &RestoreOptions) -> anyhow::Result<(u64, u64, SnapshotInfo)> {
    if opts.mark_compacted && opts.bump_revision <= 0 {
        bail!("--mark-compacted requires --bump-revision > 0");
    }
    if opts.data_dir.exists()
        && std::fs::read_dir(&opts.data_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "data dir {} already exists and is not empty; refusing to overwrite it",
            opts.data_dir.display()
        );
    }
    let initial =
        membership::parse_initial_cluster(&opts.initial_cluster).map_err(|e| anyhow!(e))?;
    let mut own = opts.initial_advertise_peer_urls.clone();
    own.sort();
    match initial.get(&opts.name) {
        Some(urls) => {
            let mut urls = urls.clone();
            urls.sort();
            if urls != own {
                bail!(
                    "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
                    opts.name,
                    urls.join(","),
                    own.join(",")
                );
            }
        }
        None => bail!(
            "couldn't find local name {:?} in the initial cluster configuration",
            opts.name
        ),
    }
    let (state, cluster_id) =
        membership::bootstrap_membership(&initial, &opts.initial_cluster_token);
    let member_id = state
        .members
        .iter()
        .find(|m| m.name == opts.name)
        .map(|m| m.id)
        .ok_or_else(|| anyhow!("local member missing from the initial cluster"))?;

    // Build in a temporary sibling and rename, so a failed restore leaves
    // nothing behind that looks like a data dir.
    let parent = opts
        .data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let staging = tempfile_dir_in(parent)?;
    let result = (|| -> anyhow::Result<SnapshotInfo> {
        let member_dir = staging.join("member");
        std::fs::create_dir_all(member_dir.join("snap"))?;
        let (mut body, _) = open_snapshot_file(&opts.snapshot, opts.skip_hash_check)?;
        let (store, info) = Store::restore_snapshot(
            &mut body,
            &member_dir.join("store.redb"),
            &StoreOptions::default(),
        )
        .with_context(|| format!("cannot restore {}", opts.snapshot.display()))?;
        let mut w = store.write()?;
        if opts.bump_revision > 0 {
            let rev = w.bump_revision(opts.bump_revision)?;
            if opts.mark_compacted {
                w.compact(rev)?;
            }
        }
        w.set_external_meta(META_MEMBERSHIP, &membership::encode(&state))?;
        w.set_external_meta(META_MEMBER_ID, &member_id.to_be_bytes())?;
        w.set_external_meta(META_CLUSTER_ID, &cluster_id.0.to_be_bytes())?;
        // The new cluster's log starts over: the store covers its bootstrap.
        w.set_applied(AppliedIndex {
            index: quorate_raft::log::BOOTSTRAP_INDEX,
            term: 1,
        })?;
        w.commit(true)?;
        drop(store);
        let mut log = DurableLog::open(&member_dir.join("raft.redb"))?;
        log.bootstrap(&membership::voters(&state))?;
        Ok(info)
    })();
    match result {
        Ok(info) => {
            std::fs::rename(&staging, &opts.data_dir).with_context(|| {
                format!(
                    "cannot move the restored data into {}",
                    opts.data_dir.display()
                )
            })?;
            Ok((member_id, cluster_id.0, info))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn tempfile_dir_in(parent: &Path) -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = parent.join(format!(".quorate-restore-{nanos}"));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
