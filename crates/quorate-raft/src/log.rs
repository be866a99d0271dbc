//! The durable Raft log: entries, hard state, conf state and the index of the
//! last snapshot, in their own redb file, mirrored in raft-rs's `MemStorage`
//! for the reads Raft makes on its hot path (as etcd mirrors its WAL in
//! `MemoryStorage`).
//!
//! Invariant: `persist` returns only after the entries and hard state are
//! fsynced; the Ready loop sends the messages that depend on them afterwards.
//! Invariant: the mirror never holds anything the file does not.

use std::path::Path;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state");
const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
/// `(index, term)` of the last snapshot: the log starts after it.
const SNAPSHOT_META: &str = "snapshot_meta";
const FORMAT: &str = "format_version";
const FORMAT_VERSION: &[u8] = b"quorate-raft-log/1";
/// Log position of a founding member's initial configuration.
pub const BOOTSTRAP_INDEX: u64 = 1;
const BOOTSTRAP_TERM: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("raft log storage: {0}")]
    Storage(String),
    #[error("raft log is corrupt: {0}")]
    Corrupt(String),
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for LogError {
            fn from(e: $t) -> Self {
                LogError::Storage(e.to_string())
            }
        }
    )*};
}
storage_from!(
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError,
    protobuf::ProtobufError,
    raft::Error
);

/// The Raft log: a redb file plus its in-memory mirror. Implements
/// `raft::Storage` by delegating to the mirror.
pub struct DurableLog {
    db: Database,
    mem: MemStorage,
}

impl DurableLog {
    /// Opens (or creates) the log at `path` and loads it into memory.
    pub fn open(path: &Path) -> Result<DurableLog, LogError> {
        let exists = path.exists();
        let db = if exists {
            Database::open(path)?
        } else {
            Database::create(path)?
        };
        let mem = MemStorage::new();
        if !exists {
            let txn = db.begin_write()?;
            {
                txn.open_table(ENTRIES)?;
                let mut st = txn.open_table(STATE)?;
                st.insert(FORMAT, FORMAT_VERSION)?;
            }
            txn.commit()?;
        } else {
            let txn = db.begin_read()?;
            let st = txn.open_table(STATE)?;
            let format = st.get(FORMAT)?.map(|v| v.value().to_vec());
            if format.as_deref() != Some(FORMAT_VERSION) {
                return Err(LogError::Corrupt(format!(
                    "{} is not a Quorate raft log (format {:?})",
                    path.display(),
                    format.map(|f| String::from_utf8_lossy(&f).into_owned())
                )));
            }
            let mut core = mem.wl();
            let mut snap_index = 0;
            if let Some(v) = st.get(SNAPSHOT_META)? {
                let (index, term) = decode_pair(v.value())?;
                snap_index = index;
                let mut snap = Snapshot::default();
                snap.mut_metadata().index = index;
                snap.mut_metadata().term = term;
                if let Some(cs) = st.get(CONF_STATE)? {
                    snap.mut_metadata()
                        .set_conf_state(ConfState::parse_from_bytes(cs.value())?);
                }
                core.apply_snapshot(snap)?;
            }
            let entries = txn.open_table(ENTRIES)?;
            let mut batch = Vec::new();
            for e in entries.iter()? {
                let (_, v) = e?;
                batch.push(Entry::parse_from_bytes(v.value())?);
            }
            core.append(&batch)?;
            if let Some(cs) = st.get(CONF_STATE)? {
                core.set_conf_state(ConfState::parse_from_bytes(cs.value())?);
            }
            if let Some(hs) = st.get(HARD_STATE)? {
                let mut hs = HardState::parse_from_bytes(hs.value())?;
                // The commit index is persisted lazily; it is at least the
                // position the log was compacted to.
                hs.commit = hs.commit.max(snap_index);
                core.set_hardstate(hs);
            }
        }
        Ok(DurableLog { db, mem })
    }

    /// True when the log has never been given a configuration (a fresh
    /// member that has neither bootstrapped nor joined yet).
    pub fn is_empty(&self) -> bool {
        let core = self.mem.rl();
        core.hard_state() == &HardState::default()
            && self.mem.last_index().unwrap_or(0) == 0
            && self
                .mem
                .initial_state()
                .map(|s| s.conf_state == ConfState::default())
                .unwrap_or(true)
    }

    /// Bootstraps a new cluster: every founding member starts from the same
    /// configuration, recorded as a snapshot at index 1, so they agree
    /// without a leader. A member that joins later has an empty log and must
    /// receive a snapshot, which carries the configuration (an empty log at
    /// index 0 could otherwise accept entries without it).
    pub fn bootstrap(&mut self, voters: &[u64]) -> Result<(), LogError> {
        let cs = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        let mut snap = Snapshot::default();
        snap.set_metadata(snapshot_metadata(BOOTSTRAP_INDEX, BOOTSTRAP_TERM, cs));
        self.apply_snapshot(&snap)?;
        let hs = HardState {
            term: BOOTSTRAP_TERM,
            commit: BOOTSTRAP_INDEX,
            ..Default::default()
        };
        self.persist(&[], Some(&hs))
    }

    /// Appends entries and records the hard state, durably, in one fsync.
    /// Entries that conflict with the tail are replaced, as Raft requires.
    pub fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<(), LogError> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ENTRIES)?;
            if let Some(first) = entries.first() {
                // Drop any tail that the new entries overwrite.
                let stale: Vec<u64> = table
                    .range(first.index..)?
                    .map(|e| e.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()?;
                for k in stale {
                    table.remove(k)?;
                }
            }
            for e in entries {
                table.insert(e.index, e.write_to_bytes()?.as_slice())?;
            }
            if let Some(hs) = hs {
                let mut st = txn.open_table(STATE)?;
                st.insert(HARD_STATE, hs.write_to_bytes()?.as_slice())?;
            }
        }
        txn.commit()?;
        let mut core = self.mem.wl();
        core.append(entries)?;
        if let Some(hs) = hs {
            core.set_hardstate(hs.clone());
        }
        Ok(())
    }

    /// Records a commit index learned without a new hard state. Not fsynced:
    /// after a crash Raft learns the commit index again from the leader.
    pub fn set_commit_in_memory(&mut self, commit: u64) {
        let mut core = self.mem.wl();
        if core.hard_state().commit < commit {
            core.mut_hard_state().commit = commit;
        }
    }

    pub fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogError> {
        let txn = self.db.begin_write()?;
        {
            let mut st = txn.open_table(STATE)?;
            st.insert(CONF_STATE, cs.write_to_bytes()?.as_slice())?;
        }
        txn.commit()?;
        self.mem.wl().set_conf_state(cs.clone());
        Ok(())
    }

    /// Replaces the log with a snapshot's position (entries are dropped).
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), LogError> {
        let meta = snap.get_metadata();
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ENTRIES)?;
            let all: Vec<u64> = table
                .iter()?
                .map(|e| e.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for k in all {
                table.remove(k)?;
            }
            let mut st = txn.open_table(STATE)?;
            st.insert(SNAPSHOT_META, encode_pair(meta.index, meta.term).as_slice())?;
            st.insert(
                CONF_STATE,
                meta.get_conf_state().write_to_bytes()?.as_slice(),
            )?;
            let mut hs = self.mem.rl().hard_state().clone();
            hs.commit = hs.commit.max(meta.index);
            st.insert(HARD_STATE, hs.write_to_bytes()?.as_slice())?;
        }
        txn.commit()?;
        let mut core = self.mem.wl();
        let mut s = Snapshot::default();
        s.set_metadata(meta.clone());
        core.apply_snapshot(s)?;
        Ok(())
    }

    /// For `--force-new-cluster`: this member becomes the only voter.
    /// Committed entries after `index` (the state machine's durable applied
    /// position) are kept so they are applied on start, with their
    /// configuration changes turned into empty entries (every other member
    /// is gone for good); uncommitted entries are dropped, as etcd does.
    pub fn force_single_voter(&mut self, id: u64, index: u64, term: u64) -> Result<(), LogError> {
        let cs = ConfState {
            voters: vec![id],
            ..Default::default()
        };
        let mut hs = self.mem.rl().hard_state().clone();
        let commit = hs.commit.max(index).min(self.last_index().max(index));
        let kept: Vec<Entry> = if commit > index && index + 1 >= self.first_index() {
            self.mem
                .entries(index + 1, commit + 1, None, GetEntriesContext::empty(false))?
                .into_iter()
                .map(|mut e| {
                    if e.get_entry_type() != EntryType::EntryNormal {
                        e.set_entry_type(EntryType::EntryNormal);
                        e.data = Default::default();
                        e.context = Default::default();
                    }
                    e
                })
                .collect()
        } else {
            Vec::new()
        };
        let commit = kept.last().map_or(index, |e| e.index);
        hs.commit = commit;
        hs.term = hs.term.max(term).max(kept.last().map_or(0, |e| e.term));
        hs.vote = 0;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ENTRIES)?;
            let all: Vec<u64> = table
                .iter()?
                .map(|e| e.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for k in all {
                table.remove(k)?;
            }
            for e in &kept {
                table.insert(e.index, e.write_to_bytes()?.as_slice())?;
            }
            let mut st = txn.open_table(STATE)?;
            st.insert(SNAPSHOT_META, encode_pair(index, term).as_slice())?;
            st.insert(CONF_STATE, cs.write_to_bytes()?.as_slice())?;
            st.insert(HARD_STATE, hs.write_to_bytes()?.as_slice())?;
        }
        txn.commit()?;
        let mem = MemStorage::new();
        {
            let mut core = mem.wl();
            let mut snap = Snapshot::default();
            snap.set_metadata(snapshot_metadata(index, term, cs));
            core.apply_snapshot(snap)?;
            core.append(&kept)?;
            core.set_hardstate(hs);
        }
        self.mem = mem;
        Ok(())
    }

    /// Discards entries before `index` (they are covered by the state
    /// machine). Not fsynced by itself: losing it in a crash only keeps more.
    pub fn compact(&mut self, index: u64) -> Result<(), LogError> {
        let first = self.mem.first_index()?;
        if index <= first {
            return Ok(());
        }
        let term = self.mem.term(index - 1)?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut table = txn.open_table(ENTRIES)?;
            let old: Vec<u64> = table
                .range(..index)?
                .map(|e| e.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for k in old {
                table.remove(k)?;
            }
            let mut st = txn.open_table(STATE)?;
            st.insert(SNAPSHOT_META, encode_pair(index - 1, term).as_slice())?;
        }
        txn.commit()?;
        self.mem.wl().compact(index)?;
        Ok(())
    }

    pub fn hard_state(&self) -> HardState {
        self.mem.rl().hard_state().clone()
    }

    pub fn conf_state(&self) -> ConfState {
        self.mem
            .initial_state()
            .map(|s| s.conf_state)
            .unwrap_or_default()
    }

    pub fn first_index(&self) -> u64 {
        self.mem.first_index().unwrap_or(1)
    }

    pub fn last_index(&self) -> u64 {
        self.mem.last_index().unwrap_or(0)
    }
}

fn encode_pair(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

fn decode_pair(b: &[u8]) -> Result<(u64, u64), LogError> {
    if b.len() != 16 {
        return Err(LogError::Corrupt(
            "snapshot metadata has the wrong size".into(),
        ));
    }
    let mut x = [0u8; 8];
    let mut y = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    y.copy_from_slice(&b[8..]);
    Ok((u64::from_be_bytes(x), u64::from_be_bytes(y)))
}

/// Raft reads the log through the in-memory mirror. Snapshots are described
/// by the state machine's applied position (see `node::Node`), so the
/// mirror's own snapshot is only used for its metadata.
impl Storage for DurableLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.mem.snapshot(request_index, to)
    }
}

/// The metadata of a snapshot at `index`.
pub fn snapshot_metadata(index: u64, term: u64, conf_state: ConfState) -> SnapshotMetadata {
    SnapshotMetadata {
        index,
        term,
        conf_state: Some(conf_state).into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_and_hard_state_survive_reopen_and_tail_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        {
            let mut log = DurableLog::open(&path).expect("open");
            log.bootstrap(&[1, 2, 3]).expect("bootstrap");
            let hs = HardState {
                term: 2,
                vote: 1,
                commit: 2,
                ..Default::default()
            };
            log.persist(&[entry(2, 1), entry(3, 1)], Some(&hs))
                .expect("persist");
            // A new leader overwrites index 3.
            log.persist(&[entry(3, 2)], None).expect("persist");
        }
        let log = DurableLog::open(&path).expect("reopen");
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(3).expect("term"), 2);
        assert_eq!(log.hard_state().vote, 1);
        assert_eq!(log.conf_state().voters, vec![1, 2, 3]);
    }

    #[test]
    fn compaction_and_snapshot_move_the_first_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        {
            let mut log = DurableLog::open(&path).expect("open");
            log.bootstrap(&[1]).expect("bootstrap");
            let ents: Vec<Entry> = (2..=10).map(|i| entry(i, 1)).collect();
            log.persist(&ents, None).expect("persist");
            log.compact(6).expect("compact");
            assert_eq!(log.first_index(), 6);
        }
        let mut log = DurableLog::open(&path).expect("reopen");
        assert_eq!(log.first_index(), 6);
        assert_eq!(log.last_index(), 10);
        let mut snap = Snapshot::default();
        snap.set_metadata(snapshot_metadata(
            20,
            3,
            ConfState {
                voters: vec![1, 2],
                ..Default::default()
            },
        ));
        log.apply_snapshot(&snap).expect("apply snapshot");
        assert_eq!(log.first_index(), 21);
        assert_eq!(log.last_index(), 20);
        drop(log);
        let log = DurableLog::open(&path).expect("reopen");
        assert_eq!(log.first_index(), 21);
        assert_eq!(log.conf_state().voters, vec![1, 2]);
    }
}
