//! Snapshot files: written the way etcd clients save them (snapshot,
//! padding, SHA-256), and the server's automatic backups.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::core::Core;
use crate::error::ApiError;

/// Writes a snapshot as etcd clients expect it: the snapshot bytes followed
/// by the SHA-256 of those bytes. Returns (total size, revision).
pub fn write_snapshot_file(
    store: &quorate_mvcc::Store,
    path: &std::path::Path,
) -> Result<(u64, i64), ApiError> {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    struct Hashing<W: Write> {
        inner: W,
        sha: Sha256,
        len: u64,
    }
    impl<W: Write> Write for Hashing<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.sha.update(&buf[..n]);
            self.len += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let io = |e: std::io::Error| ApiError::Internal(format!("snapshot: {e}"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = Hashing {
        inner: std::io::BufWriter::new(file),
        sha: Sha256::new(),
        len: 0,
    };
    let read = store.read()?;
    let info = read.write_snapshot(&mut w)?;
    // etcd clients look for the checksum only when the content before it is
    // a multiple of 512 bytes (a bbolt file is): pad, ending the padding with
    // its own length (u16 LE) so a reader can strip it.
    let pad = ((512 - (w.len + 2) % 512) % 512) + 2;
    let mut padding = vec![0u8; pad as usize];
    let n = padding.len();
    padding[n - 2..].copy_from_slice(&(pad as u16).to_le_bytes());
    w.write_all(&padding).map_err(io)?;
    let digest = w.sha.finalize();
    let mut inner = w.inner;
    inner.write_all(&digest).map_err(io)?;
    inner.flush().map_err(io)?;
    inner.get_ref().sync_all().map_err(io)?;
    Ok((w.len + digest.len() as u64, info.revision))
}

/// Where automatic snapshots go and how many are kept.
#[derive(Clone, Debug)]
pub struct AutoSnapshot {
    pub interval: Duration,
    pub dir: PathBuf,
    pub retention: usize,
}

/// Takes a snapshot every `interval` while this member is the leader (the
/// leader always has every committed write, and exactly one member takes
/// them at a time). Each is written to a temporary file, fsynced, verified
/// by reading it back, then renamed into place; the oldest beyond
/// `retention` are deleted.
pub async fn auto_snapshots(core: Arc<Core>, cfg: AutoSnapshot, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !core
            .view
            .is_leader
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            continue;
        }
        let store = core.store.get();
        let dir = cfg.dir.clone();
        let name = core.config.name.clone();
        let retention = cfg.retention;
        let done =
            tokio::task::spawn_blocking(move || take_snapshot(&store, &dir, &name, retention))
                .await;
        match done {
            Ok(Ok(path)) => info!(path = %path.display(), "automatic snapshot saved"),
            Ok(Err(e)) => warn!(error = %e, "automatic snapshot failed"),
            Err(e) => warn!(error = %e, "automatic snapshot task failed"),
        }
    }
}

fn take_snapshot(
    store: &quorate_mvcc::Store,
    dir: &Path,
    member: &str,
    retention: usize,
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let tmp = dir.join(format!(".quorate-{member}-{secs}.snap.tmp"));
    let (_, revision) = write_snapshot_file(store, &tmp).map_err(|e| e.to_string())?;
    let verified = quorate_mvcc::open_snapshot_file(&tmp, false)
        .and_then(|(mut body, _)| quorate_mvcc::read_snapshot_info(&mut body));
    if let Err(e) = verified {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("snapshot did not verify: {e}"));
    }
    let path = dir.join(format!("quorate-{member}-{secs:010}-rev{revision}.snap"));
    std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    prune(dir, retention);
    Ok(path)
}

/// Keeps the newest `retention` automatic snapshots (names sort by time).
fn prune(dir: &Path, retention: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut snaps: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("quorate-") && n.ends_with(".snap"))
        })
        .collect();
    // Oldest first by the time in the name (`quorate-<member>-<secs>-rev<r>.snap`):
    // with a directory shared by several members, the member name must not
    // decide what is pruned.
    let secs = |p: &PathBuf| -> u64 {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('-').nth(1))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    };
    snaps.sort_by_key(|p| (secs(p), p.clone()));
    let excess = snaps.len().saturating_sub(retention.max(1));
    for old in snaps.into_iter().take(excess) {
        let _ = std::fs::remove_file(old);
    }
}
