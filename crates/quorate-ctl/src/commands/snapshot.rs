//! `snapshot save FILE`: streams Maintenance.Snapshot from one member into a
//! file: written to `FILE.part`, fsynced, its SHA-256 trailer verified, then
//! renamed (atomic), with a progress bar when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use quorate_proto::etcdserverpb::SnapshotRequest;
use sha2::{Digest, Sha256};

use super::Env;
use crate::client::{self, request};
use crate::exit::CtlError;

/// A snapshot of a large store may take a while; etcdctl does not apply the
/// command timeout to it either.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3600);

pub async fn save(file: String, env: &mut Env<'_>) -> Result<(), CtlError> {
    if env.cfg.endpoints.len() != 1 {
        return Err(CtlError::new(
            crate::exit::INVALID_INPUT,
            format!(
                "snapshot must be requested to one selected node, not multiple {:?}",
                env.cfg.endpoints
            ),
        ));
    }
    let file = PathBuf::from(file);
    let io = |e: std::io::Error| CtlError::new(crate::exit::IO, format!("{}: {e}", file.display()));
    let ch = client::dial(&env.cfg.endpoints[0], env.cfg.dial_timeout).await?;
    let mut part = file.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut f = std::fs::File::create(&part).map_err(io)?;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let fetch = async {
        let mut stream = client::maintenance(ch)
            .snapshot(request(SnapshotRequest {}, SNAPSHOT_TIMEOUT))
            .await?
            .into_inner();
        let mut hasher = Sha256::new();
        let mut tail: Vec<u8> = Vec::new();
        let mut size = 0u64;
        while let Some(msg) = stream.message().await? {
            f.write_all(&msg.blob).map_err(io)?;
            size += msg.blob.len() as u64;
            if let Some(b) = &bar {
                b.set_length(size + msg.remaining_bytes);
                b.set_position(size);
            }
            tail.extend_from_slice(&msg.blob);
            if tail.len() > 32 {
                let n = tail.len() - 32;
                hasher.update(&tail[..n]);
                tail.drain(..n);
            }
        }
        if tail.len() != 32 || hasher.finalize().as_slice() != tail.as_slice() {
            return Err(CtlError::error(format!(
                "snapshot {} failed its SHA-256 check",
                part.display()
            )));
        }
        f.sync_all().map_err(io)?;
        Ok::<u64, CtlError>(size)
    };
    let result = match tokio::time::timeout(SNAPSHOT_TIMEOUT, fetch).await {
        Err(_) => Err(CtlError::deadline_exceeded()),
        Ok(r) => r,
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, &file).map_err(io)?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    writeln!(env.out.stdout, "Snapshot saved at {}", file.display()).map_err(CtlError::from)?;
    Ok(())
}
