//! Measures the Raft log's write path: one durable `persist` of a batch of
//! entries (what a Ready costs), against the floor of an append-only file
//! with `fdatasync`. Run: `cargo run --release -p quorate-raft --example log_write_path`.

use std::io::Write;
use std::time::Instant;

use quorate_raft::eraftpb::{Entry, HardState};
use quorate_raft::DurableLog;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut micros: Vec<f64>) {
    micros.sort_by(|a, b| a.total_cmp(b));
    let mean = micros.iter().sum::<f64>() / micros.len() as f64;
    println!(
        "{name:<40} n={:<5} mean={mean:>8.0}us p50={:>8.0}us p99={:>8.0}us",
        micros.len(),
        percentile(&micros, 0.5),
        percentile(&micros, 0.99)
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let rounds = 500;
    for batch in [1usize, 64] {
        let mut log = DurableLog::open(&dir.path().join(format!("raft-{batch}.redb")))?;
        log.bootstrap(&[1])?;
        let mut next = 2u64;
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let entries: Vec<Entry> = (0..batch)
                .map(|i| Entry {
                    index: next + i as u64,
                    term: 1,
                    data: vec![7u8; 256].into(),
                    ..Default::default()
                })
                .collect();
            let hs = HardState {
                term: 1,
                commit: next,
                ..Default::default()
            };
            let t = Instant::now();
            log.persist(&entries, Some(&hs))?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
            next += batch as u64;
        }
        report(&format!("redb log, {batch} x 256 B entries"), times);

        let mut f = std::fs::File::create(dir.path().join(format!("wal-{batch}")))?;
        let mut times = Vec::with_capacity(rounds);
        let record = vec![7u8; 256 * batch + 16 * batch];
        for _ in 0..rounds {
            let t = Instant::now();
            f.write_all(&record)?;
            f.sync_data()?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        report(&format!("append + fdatasync, {batch} x 256 B"), times);
    }
    Ok(())
}
