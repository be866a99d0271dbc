//! Logical, self-verifying snapshots of the whole store.
//!
//! Used to send the state machine to a Raft follower that fell behind and for
//! `Maintenance.Snapshot` / `quorate snapshot save|status|restore`. A snapshot
//! is written from one read transaction, so it is a consistent point-in-time
//! copy; writing and reading stream record by record, so memory stays bounded
//! whatever the store size.
//!
//! Byte layout (integers little-endian):
//!
//! ```text
//! header   magic "QRSNAP\r\n" (8 bytes) | format version u32
//! frame*   kind u8 | len u32 | payload (len bytes, at most MAX_FRAME_BYTES)
//!   kind 1, meta:     name_len u32 | name (UTF-8) | value
//!                     every `meta` entry, names strictly ascending
//!                     (magic, store format, revision, compact revision,
//!                     compaction cursor, applied index, `ext/...`)
//!   kind 2, history:  main i64 | sub i64 | record
//!                     every `history` record, revisions strictly ascending;
//!                     `record` is the stored bytes verbatim
//!                     (`[kind][crc32][mvccpb.KeyValue]`, its own CRC)
//!   kind 3, trailer:  len = 56: meta_entries u64 | history_records u64 |
//!                     total_keys u64 | sha256 [32]
//! ```
//!
//! Frames come in the order meta*, history*, trailer; the trailer ends the
//! stream (nothing may follow it). `sha256` covers every byte before it: the
//! header, all frames and the trailer's own kind, length and counts.
//! `total_keys` is the number of live keys; a restore checks it against the
//! `latest` index it rebuilds. `key_revisions` and `latest` are not in the
//! stream: they are derived from `history`.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata};
use sha2::{Digest, Sha256};

use crate::codec::{self, RecordKind};
use crate::store::{
    RevKey, HISTORY, KEY_REVISIONS, LATEST, MAGIC as STORE_MAGIC, META, META_APPLIED,
    META_COMPACT_CURSOR, META_COMPACT_REVISION, META_FORMAT, META_MAGIC, META_REVISION,
};
use crate::{AppliedIndex, KeyValue, MvccError, ReadTxn, Store, StoreOptions, FORMAT_VERSION};

/// Version of the snapshot stream layout. Bumped on any incompatible change.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

const SNAPSHOT_MAGIC: &[u8; 8] = b"QRSNAP\r\n";
const FRAME_META: u8 = 1;
const FRAME_HISTORY: u8 = 2;
const FRAME_TRAILER: u8 = 3;
/// Counts (3 × u64) + SHA-256.
const TRAILER_LEN: usize = 24 + 32;
/// Largest frame payload accepted; bounds what a corrupt length can make a
/// reader allocate. Far above any record the server accepts.
pub const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;
/// A restore commits a redb transaction after this many frames...
const RESTORE_BATCH_FRAMES: usize = 10_000;
/// ...or this many payload bytes, whichever comes first.
const RESTORE_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// What a snapshot holds; returned by writing, verifying and restoring one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Store revision at the snapshot.
    pub revision: i64,
    pub compact_revision: i64,
    pub applied_index: AppliedIndex,
    /// Live keys at `revision`.
    pub total_keys: u64,
    /// Records in `history` (values and tombstones, all revisions kept).
    pub history_records: u64,
    /// Size of the whole snapshot stream.
    pub bytes: u64,
    /// The trailer's SHA-256 (over every byte before it).
    pub sha256: [u8; 32],
}

fn corrupt(msg: impl Into<String>) -> MvccError {
    MvccError::Corrupt(format!("snapshot: {}", msg.into()))
}

// ---------------------------------------------------------------------------
// Writing

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn put(&mut self, b: &[u8]) -> Result<(), MvccError> {
        self.inner
            .write_all(b)
            .map_err(|e| MvccError::Storage(format!("writing snapshot: {e}")))?;
        self.hasher.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }

    fn frame(&mut self, kind: u8, parts: &[&[u8]]) -> Result<(), MvccError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_FRAME_BYTES {
            return Err(MvccError::Storage(format!(
                "snapshot: a frame of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte limit"
            )));
        }
        let mut head = [0u8; 5];
        head[0] = kind;
        head[1..].copy_from_slice(&(len as u32).to_le_bytes());
        self.put(&head)?;
        for p in parts {
            self.put(p)?;
        }
        Ok(())
    }
}

impl ReadTxn {
    /// Streams a consistent copy of this read snapshot to `out` (see the
    /// module doc for the layout). Output is buffered internally and flushed
    /// at the end; memory use does not depend on the store size.
    pub fn write_snapshot(&self, out: &mut impl Write) -> Result<SnapshotInfo, MvccError> {
        let mut w = HashingWriter {
            inner: BufWriter::with_capacity(64 * 1024, out),
            hasher: Sha256::new(),
            bytes: 0,
        };
        w.put(SNAPSHOT_MAGIC)?;
        w.put(&SNAPSHOT_FORMAT_VERSION.to_le_bytes())?;

        let mut meta_entries = 0u64;
        for entry in self.meta.iter()? {
            let (name, value) = entry?;
            let name = name.value();
            w.frame(
                FRAME_META,
                &[
                    &(name.len() as u32).to_le_bytes(),
                    name.as_bytes(),
                    value.value(),
                ],
            )?;
            meta_entries += 1;
        }

        let mut history_records = 0u64;
        for entry in self.history.iter()? {
            let (rev, record) = entry?;
            let (main, sub) = rev.value();
            let record = record.value();
            // Never pass on a record that fails its own checksum.
            codec::decode(record)?;
            w.frame(
                FRAME_HISTORY,
                &[&main.to_le_bytes(), &sub.to_le_bytes(), record],
            )?;
            history_records += 1;
        }

        let total_keys = self.latest.len()?;
        let mut trailer = [0u8; 5 + TRAILER_LEN - 32];
        trailer[0] = FRAME_TRAILER;
        trailer[1..5].copy_from_slice(&(TRAILER_LEN as u32).to_le_bytes());
        trailer[5..13].copy_from_slice(&meta_entries.to_le_bytes());
        trailer[13..21].copy_from_slice(&history_records.to_le_bytes());
        trailer[21..29].copy_from_slice(&total_keys.to_le_bytes());
        w.put(&trailer)?;
        let sha256: [u8; 32] = w.hasher.finalize_reset().into();
        w.put(&sha256)?;
        w.inner
            .flush()
            .map_err(|e| MvccError::Storage(format!("writing snapshot: {e}")))?;

        Ok(SnapshotInfo {
            revision: self.revision(),
            compact_revision: self.compact_revision(),
            applied_index: self.applied_index()?,
            total_keys,
            history_records,
            bytes: w.bytes,
            sha256,
        })
    }
}

// ---------------------------------------------------------------------------
// Reading

struct HashingReader<R: Read> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn read_error(e: io::Error, what: &str, at: u64) -> MvccError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        corrupt(format!(
            "truncated: the stream ends in the {what} (after {at} bytes)"
        ))
    } else {
        MvccError::Storage(format!("reading snapshot: {e}"))
    }
}

enum Stage {
    Meta,
    History,
    Done,
}

/// One verified element of a snapshot stream.
enum Item<'a> {
    Meta {
        name: &'a str,
        value: &'a [u8],
    },
    History {
        rev: RevKey,
        record: &'a [u8],
        kind: RecordKind,
        kv: KeyValue,
    },
    /// The trailer, checked: counts match and the SHA-256 is right.
    End(SnapshotInfo),
}

/// Parses and verifies a snapshot stream item by item. Everything it yields
/// has passed the structural checks; the stream as a whole is only proven
/// intact once [`Item::End`] is returned.
struct Parser<R: Read> {
    input: HashingReader<R>,
    buf: Vec<u8>,
    stage: Stage,
    last_meta: Option<String>,
    last_rev: Option<RevKey>,
    meta_entries: u64,
    history_records: u64,
    magic_ok: bool,
    store_format: Option<u32>,
    revision: Option<i64>,
    compact_revision: Option<i64>,
    applied_index: AppliedIndex,
}

impl<R: Read> Parser<R> {
    fn new(input: R) -> Result<Self, MvccError> {
        let mut p = Parser {
            input: HashingReader {
                inner: input,
                hasher: Sha256::new(),
                bytes: 0,
            },
            buf: Vec::new(),
            stage: Stage::Meta,
            last_meta: None,
            last_rev: None,
            meta_entries: 0,
            history_records: 0,
            magic_ok: false,
            store_format: None,
            revision: None,
            compact_revision: None,
            applied_index: AppliedIndex::default(),
        };
        let mut header = [0u8; 12];
        p.read_exact(&mut header, "header")?;
        if &header[..8] != SNAPSHOT_MAGIC {
            return Err(corrupt("not a Quorate snapshot (wrong magic bytes)"));
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(corrupt(format!(
                "snapshot format version {version}; this build reads version {SNAPSHOT_FORMAT_VERSION}"
            )));
        }
        Ok(p)
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), MvccError> {
        let at = self.input.bytes;
        self.input
            .read_exact(buf)
            .map_err(|e| read_error(e, what, at))
    }

    fn next(&mut self) -> Result<Item<'_>, MvccError> {
        if matches!(self.stage, Stage::Done) {
            return Err(corrupt("read past the trailer"));
        }
        let at = self.input.bytes;
        let mut head = [0u8; 5];
        self.read_exact(&mut head, "frame header")?;
        let kind = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(corrupt(format!(
                "frame at byte {at} claims {len} bytes, over the {MAX_FRAME_BYTES}-byte limit"
            )));
        }
        match kind {
            FRAME_META => {
                if !matches!(self.stage, Stage::Meta) {
                    return Err(corrupt(format!(
                        "meta frame at byte {at} after the history frames"
                    )));
                }
                self.read_payload(len)?;
                self.meta_frame(at)
            }
            FRAME_HISTORY => {
                if matches!(self.stage, Stage::Meta) {
                    self.end_meta()?;
                }
                self.read_payload(len)?;
                self.history_frame(at)
            }
            FRAME_TRAILER => {
                if matches!(self.stage, Stage::Meta) {
                    self.end_meta()?;
                }
                if len != TRAILER_LEN {
                    return Err(corrupt(format!(
                        "trailer at byte {at} has length {len}, expected {TRAILER_LEN}"
                    )));
                }
                self.trailer()
            }
            other => Err(corrupt(format!("unknown frame kind {other} at byte {at}"))),
        }
    }

    fn read_payload(&mut self, len: usize) -> Result<(), MvccError> {
        let at = self.input.bytes;
        self.buf.clear();
        // Grows with the data actually present, so a corrupt length on a
        // short stream does not allocate up front.
        let got = (&mut self.input)
            .take(len as u64)
            .read_to_end(&mut self.buf)
            .map_err(|e| read_error(e, "frame payload", at))?;
        if got < len {
            return Err(corrupt(format!(
                "truncated: a {len}-byte frame payload ends after {got} bytes (at byte {})",
                self.input.bytes
            )));
        }
        Ok(())
    }

    fn meta_frame(&mut self, at: u64) -> Result<Item<'_>, MvccError> {
        let b = self.buf.as_slice();
        if b.len() < 4 {
            return Err(corrupt(format!("meta frame at byte {at} is too short")));
        }
        let name_len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let rest = &b[4..];
        if name_len > rest.len() {
            return Err(corrupt(format!(
                "meta frame at byte {at}: name of {name_len} bytes overruns the frame"
            )));
        }
        let (name, value) = rest.split_at(name_len);
        let name = std::str::from_utf8(name)
            .map_err(|_| corrupt(format!("meta frame at byte {at}: name is not UTF-8")))?;
        if self.last_meta.as_deref().is_some_and(|last| last >= name) {
            return Err(corrupt(format!(
                "meta entry {name:?} at byte {at} is out of order or repeated"
            )));
        }
        match name {
            META_MAGIC => {
                if value != STORE_MAGIC {
                    return Err(corrupt("store magic entry is not Quorate's"));
                }
                self.magic_ok = true;
            }
            META_FORMAT => {
                let v: [u8; 4] = value
                    .try_into()
                    .map_err(|_| corrupt("store format entry has the wrong size"))?;
                self.store_format = Some(u32::from_le_bytes(v));
            }
            META_REVISION => self.revision = Some(le_i64(name, value)?),
            META_COMPACT_REVISION => self.compact_revision = Some(le_i64(name, value)?),
            META_APPLIED => {
                let (index, term) = le_rev(name, value)?;
                self.applied_index = AppliedIndex {
                    index: index as u64,
                    term: term as u64,
                };
            }
            META_COMPACT_CURSOR => {
                le_rev(name, value)?;
            }
            _ => {}
        }
        self.last_meta = Some(name.to_owned());
        self.meta_entries += 1;
        Ok(Item::Meta { name, value })
    }

    /// Checks, once all meta entries are in, that they describe a store this
    /// build can hold.
    fn end_meta(&mut self) -> Result<(), MvccError> {
        if !self.magic_ok {
            return Err(corrupt("no store magic entry"));
        }
        match self.store_format {
            Some(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(corrupt(format!(
                    "holds store format {v}; this build reads format {FORMAT_VERSION}"
                )))
            }
            None => return Err(corrupt("no store format entry")),
        }
        let revision = self.revision.ok_or_else(|| corrupt("no revision entry"))?;
        let compact = self
            .compact_revision
            .ok_or_else(|| corrupt("no compact revision entry"))?;
        if revision < 1 || compact > revision {
            return Err(corrupt(format!(
                "inconsistent revisions: revision {revision}, compact revision {compact}"
            )));
        }
        self.stage = Stage::History;
        Ok(())
    }

    fn history_frame(&mut self, at: u64) -> Result<Item<'_>, MvccError> {
        let b = self.buf.as_slice();
        if b.len() < 16 {
            return Err(corrupt(format!("history frame at byte {at} is too short")));
        }
        let rev = (le_i64("main", &b[..8])?, le_i64("sub", &b[8..16])?);
        let record = &b[16..];
        if self.last_rev.is_some_and(|last| last >= rev) {
            return Err(corrupt(format!(
                "history record {rev:?} at byte {at} is out of order or repeated"
            )));
        }
        let revision = self.revision.unwrap_or_default();
        if rev.0 < 1 || rev.0 > revision || rev.1 < 0 {
            return Err(corrupt(format!(
                "history record {rev:?} at byte {at} is outside revisions 1..={revision}"
            )));
        }
        let (kind, kv) = codec::decode(record)
            .map_err(|e| corrupt(format!("history record {rev:?} at byte {at}: {e}")))?;
        if kv.mod_revision != rev.0 {
            return Err(corrupt(format!(
                "history record {rev:?} at byte {at} claims mod revision {}",
                kv.mod_revision
            )));
        }
        self.last_rev = Some(rev);
        self.history_records += 1;
        Ok(Item::History {
            rev,
            record,
            kind,
            kv,
        })
    }

    fn trailer(&mut self) -> Result<Item<'_>, MvccError> {
        let mut counts = [0u8; TRAILER_LEN - 32];
        self.read_exact(&mut counts, "trailer")?;
        let expected: [u8; 32] = self.input.hasher.finalize_reset().into();
        let mut stored = [0u8; 32];
        let at = self.input.bytes;
        self.input
            .inner
            .read_exact(&mut stored)
            .map_err(|e| read_error(e, "trailer checksum", at))?;
        self.input.bytes += 32;
        if stored != expected {
            return Err(corrupt(format!(
                "SHA-256 mismatch (stored {}, computed {})",
                hex(&stored),
                hex(&expected)
            )));
        }
        let count = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&counts[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let (meta_entries, history_records, total_keys) = (count(0), count(1), count(2));
        if meta_entries != self.meta_entries || history_records != self.history_records {
            return Err(corrupt(format!(
                "trailer counts {meta_entries} meta entries and {history_records} history records; \
                 the stream holds {} and {}",
                self.meta_entries, self.history_records
            )));
        }
        if total_keys > history_records {
            return Err(corrupt(format!(
                "trailer counts {total_keys} live keys in {history_records} history records"
            )));
        }
        // The trailer ends the stream.
        let mut extra = [0u8; 1];
        loop {
            match self.input.inner.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => return Err(corrupt("unexpected data after the trailer")),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(MvccError::Storage(format!("reading snapshot: {e}"))),
            }
        }
        self.stage = Stage::Done;
        Ok(Item::End(SnapshotInfo {
            revision: self.revision.unwrap_or_default(),
            compact_revision: self.compact_revision.unwrap_or_default(),
            applied_index: self.applied_index,
            total_keys,
            history_records,
            bytes: self.input.bytes,
            sha256: stored,
        }))
    }
}

fn le_i64(name: &str, b: &[u8]) -> Result<i64, MvccError> {
    let a: [u8; 8] = b
        .try_into()
        .map_err(|_| corrupt(format!("{name} has the wrong size")))?;
    Ok(i64::from_le_bytes(a))
}

fn le_rev(name: &str, b: &[u8]) -> Result<RevKey, MvccError> {
    if b.len() != 16 {
        return Err(corrupt(format!("meta entry {name} has the wrong size")));
    }
    Ok((le_i64(name, &b[..8])?, le_i64(name, &b[8..])?))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Verifies a whole snapshot stream without building a store (for
/// `snapshot status`): layout, every record's CRC, ordering, the trailer's
/// counts and SHA-256. `total_keys` is the trailer's count, covered by the
/// SHA-256 (counting live keys from the stream itself would need a set of
/// every key; a restore cross-checks it against the index it rebuilds).
pub fn read_snapshot_info(input: &mut impl Read) -> Result<SnapshotInfo, MvccError> {
    let mut parser = Parser::new(input)?;
    loop {
        if let Item::End(info) = parser.next()? {
            return Ok(info);
        }
    }
}

// ---------------------------------------------------------------------------
// Restoring

impl Store {
    /// Builds a new store at `path` (which must not exist) from a snapshot
    /// stream, rebuilding `key_revisions` and `latest` from the history and
    /// verifying everything as it goes. Commits in bounded batches; the last
    /// commit is durable. On any error the partial file is removed; an
    /// intact-looking stream that fails a check is [`MvccError::Corrupt`].
    pub fn restore_snapshot(
        input: &mut impl Read,
        path: &Path,
        opts: &StoreOptions,
    ) -> Result<(Store, SnapshotInfo), MvccError> {
        restore(input, path, opts, RESTORE_BATCH_FRAMES)
    }
}

fn restore(
    input: &mut impl Read,
    path: &Path,
    opts: &StoreOptions,
    batch_frames: usize,
) -> Result<(Store, SnapshotInfo), MvccError> {
    // create_new: never touch an existing file, even one that appears
    // between a check and the create.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                MvccError::Storage(format!(
                    "{} already exists; a snapshot is restored into a new file",
                    path.display()
                ))
            } else {
                MvccError::Storage(format!("creating {}: {e}", path.display()))
            }
        })?;
    let built = (|| {
        let mut builder = Database::builder();
        builder.set_cache_size(opts.cache_size_bytes);
        let db = builder.create_with_backend(redb::backends::FileBackend::new(file)?)?;
        let info = restore_into(&db, input, batch_frames)?;
        Ok((db, info))
    })();
    match built {
        Ok((db, info)) => Ok((
            Store {
                db,
                path: path.to_path_buf(),
            },
            info,
        )),
        Err(e) => {
            // The database (and its file handle) is dropped by now.
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

fn restore_into(
    db: &Database,
    input: &mut impl Read,
    batch_frames: usize,
) -> Result<SnapshotInfo, MvccError> {
    let mut parser = Parser::new(input)?;
    loop {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let mut end = None;
        {
            let mut meta = txn.open_table(META)?;
            let mut history = txn.open_table(HISTORY)?;
            let mut key_revisions = txn.open_table(KEY_REVISIONS)?;
            let mut latest = txn.open_table(LATEST)?;
            let (mut frames, mut bytes) = (0usize, 0usize);
            while frames < batch_frames.max(1) && bytes < RESTORE_BATCH_BYTES {
                match parser.next()? {
                    Item::Meta { name, value } => {
                        bytes += name.len() + value.len();
                        meta.insert(name, value)?;
                    }
                    Item::History {
                        rev,
                        record,
                        kind,
                        kv,
                    } => {
                        bytes += record.len() + kv.key.len();
                        history.insert(rev, record)?;
                        key_revisions.insert((kv.key.as_slice(), rev.0, rev.1), kind as u8)?;
                        match kind {
                            RecordKind::Put => {
                                latest.insert(kv.key.as_slice(), rev)?;
                            }
                            RecordKind::Tombstone => {
                                latest.remove(kv.key.as_slice())?;
                            }
                        }
                    }
                    Item::End(info) => {
                        let live = latest.len()?;
                        if live != info.total_keys {
                            return Err(corrupt(format!(
                                "trailer counts {} live keys; the history yields {live}",
                                info.total_keys
                            )));
                        }
                        end = Some(info);
                        break;
                    }
                }
                frames += 1;
            }
        }
        match end {
            Some(info) => {
                txn.set_durability(Durability::Immediate)?;
                txn.commit()?;
                return Ok(info);
            }
            None => txn.commit()?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyRange, RangeOptions};

    fn open(dir: &tempfile::TempDir, name: &str) -> Store {
        Store::open(&dir.path().join(name), &StoreOptions::default()).expect("open")
    }

    fn put(s: &Store, key: &str, value: &str) {
        let mut w = s.write().expect("write");
        w.put(key.as_bytes(), value.as_bytes().to_vec(), 0)
            .expect("put");
        w.finish_revision().expect("finish");
        w.commit(true).expect("commit");
    }

    fn del(s: &Store, key: &str, end: &str) {
        let mut w = s.write().expect("write");
        w.delete_range(&KeyRange::new(key.as_bytes(), end.as_bytes()))
            .expect("delete");
        w.finish_revision().expect("finish");
        w.commit(true).expect("commit");
    }

    /// Puts, overwrites, a multi-write transaction, deletes, a compaction
    /// only partly reclaimed, writes after it, applied index and external meta.
    fn populated(dir: &tempfile::TempDir) -> Store {
        let s = open(dir, "src");
        for i in 0..20 {
            put(&s, &format!("k{:02}", i % 7), &format!("v{i}"));
        }
        del(&s, "k03", "");
        let mut w = s.write().expect("write");
        w.put(b"t1", b"a".to_vec(), 5).expect("put");
        w.put(b"t2", b"b".to_vec(), 0).expect("put");
        w.put(b"t1", b"c".to_vec(), 0).expect("put");
        w.finish_revision().expect("finish");
        w.commit(true).expect("commit");
        del(&s, "k05", "k07"); // two keys, sub-revisions 0 and 1
        put(&s, "k03", "back");
        let mut w = s.write().expect("write");
        w.compact(18).expect("compact");
        w.commit(true).expect("commit");
        assert!(
            s.compact_step(3).expect("step"),
            "compaction left unfinished"
        );
        put(&s, "k00", "after");
        del(&s, "t2", "");
        put(&s, "\u{0}bin\u{ff}", "x");
        let mut w = s.write().expect("write");
        w.set_applied(AppliedIndex { index: 42, term: 3 })
            .expect("applied");
        w.set_external_meta("member_id", b"\x01\x02").expect("ext");
        w.set_external_meta("cluster_id", b"\x03").expect("ext");
        w.commit(true).expect("commit");
        s
    }

    fn dump(s: &Store) -> (Vec<u8>, SnapshotInfo) {
        let mut out = Vec::new();
        let info = s
            .read()
            .expect("read")
            .write_snapshot(&mut out)
            .expect("snapshot");
        (out, info)
    }

    fn all_at(s: &Store, rev: i64) -> Result<crate::RangeResult, MvccError> {
        s.read()?.range(
            &KeyRange::new(b"\0", b"\0"),
            RangeOptions {
                revision: rev,
                ..Default::default()
            },
        )
    }

    fn assert_same_store(a: &Store, b: &Store) {
        let (ra, rb) = (a.read().expect("read"), b.read().expect("read"));
        assert_eq!(ra.revision(), rb.revision());
        assert_eq!(ra.compact_revision(), rb.compact_revision());
        assert_eq!(
            a.applied_index().expect("applied"),
            b.applied_index().expect("applied")
        );
        for name in ["member_id", "cluster_id", "missing"] {
            assert_eq!(
                a.get_external_meta(name).expect("meta"),
                b.get_external_meta(name).expect("meta")
            );
        }
        assert_eq!(
            ra.history_len().expect("len"),
            rb.history_len().expect("len")
        );
        for rev in ra.compact_revision().max(1)..=ra.revision() {
            let (x, y) = (
                all_at(a, rev).expect("range"),
                all_at(b, rev).expect("range"),
            );
            assert_eq!(x, y, "all keys at revision {rev}");
            for kv in &x.kvs {
                let one = |s: &Store| {
                    s.read()
                        .expect("read")
                        .range(
                            &KeyRange::new(&kv.key, b""),
                            RangeOptions {
                                revision: rev,
                                ..Default::default()
                            },
                        )
                        .expect("range")
                };
                assert_eq!(one(a), one(b));
            }
        }
        if ra.compact_revision() > 1 {
            let below = ra.compact_revision() - 1;
            assert!(matches!(all_at(a, below), Err(MvccError::Compacted)));
            assert!(matches!(all_at(b, below), Err(MvccError::Compacted)));
        }
    }

    #[test]
    fn round_trip_preserves_every_readable_revision_and_meta() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = populated(&dir);
        let (bytes, info) = dump(&src);
        let r = src.read().expect("read");
        assert_eq!(info.revision, r.revision());
        assert_eq!(info.compact_revision, 18);
        assert_eq!(info.applied_index, AppliedIndex { index: 42, term: 3 });
        assert_eq!(info.history_records, r.history_len().expect("len"));
        assert_eq!(
            info.total_keys as usize,
            all_at(&src, 0).expect("all").count
        );
        assert_eq!(info.bytes, bytes.len() as u64);

        // Small batches: several redb transactions.
        for batch in [RESTORE_BATCH_FRAMES, 3] {
            let path = dir.path().join(format!("restored-{batch}"));
            let (dst, rinfo) = restore(
                &mut bytes.as_slice(),
                &path,
                &StoreOptions::default(),
                batch,
            )
            .expect("restore");
            assert_eq!(rinfo, info);
            assert_same_store(&src, &dst);
            // Dumping the restored store gives the same bytes.
            assert_eq!(dump(&dst).0, bytes);
            // It is a working store: reopen, write, finish the compaction.
            drop(dst);
            let dst = Store::open(&path, &StoreOptions::default()).expect("reopen");
            assert_same_store(&src, &dst);
            put(&dst, "new", "v");
            assert_eq!(dst.read().expect("read").revision(), info.revision + 1);
            while dst.compact_step(2).expect("step") {}
            assert_eq!(
                all_at(&dst, 18).expect("range"),
                crate::RangeResult {
                    revision: info.revision + 1,
                    ..all_at(&src, 18).expect("range")
                }
            );
        }
    }

    #[test]
    fn empty_store_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = open(&dir, "src");
        let (bytes, info) = dump(&src);
        assert_eq!((info.revision, info.compact_revision), (1, -1));
        assert_eq!((info.total_keys, info.history_records), (0, 0));
        let (dst, rinfo) = Store::restore_snapshot(
            &mut bytes.as_slice(),
            &dir.path().join("dst"),
            &StoreOptions::default(),
        )
        .expect("restore");
        assert_eq!(rinfo, info);
        assert_same_store(&src, &dst);
        put(&dst, "a", "1");
        assert_eq!(dst.read().expect("read").revision(), 2);
    }

    #[test]
    fn info_of_a_dump_matches_the_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = populated(&dir);
        let (bytes, info) = dump(&src);
        assert_eq!(
            read_snapshot_info(&mut bytes.as_slice()).expect("info"),
            info
        );
        let expected: [u8; 32] = Sha256::digest(&bytes[..bytes.len() - 32]).into();
        assert_eq!(info.sha256, expected);
    }

    fn restore_fails(dir: &tempfile::TempDir, bytes: &[u8], what: &str) -> MvccError {
        let path = dir.path().join("bad");
        let err = Store::restore_snapshot(&mut &bytes[..], &path, &StoreOptions::default())
            .err()
            .unwrap_or_else(|| panic!("restore accepted {what}"));
        assert!(!path.exists(), "partial file left behind for {what}");
        err
    }

    #[test]
    fn truncated_stream_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, _) = dump(&populated(&dir));
        for len in 0..bytes.len() {
            let err = read_snapshot_info(&mut &bytes[..len]).expect_err("truncated accepted");
            assert!(matches!(err, MvccError::Corrupt(_)), "len {len}: {err}");
        }
        for len in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
            let err = restore_fails(&dir, &bytes[..len], &format!("a {len}-byte prefix"));
            assert!(matches!(err, MvccError::Corrupt(_)), "len {len}: {err}");
        }
        let err = read_snapshot_info(&mut &bytes[..bytes.len() - 1]).expect_err("short");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn a_flipped_bit_anywhere_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, _) = dump(&populated(&dir));
        let mut flipped = bytes.clone();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                flipped[i] ^= 1 << bit;
                let err =
                    read_snapshot_info(&mut flipped.as_slice()).expect_err("flipped bit accepted");
                assert!(matches!(err, MvccError::Corrupt(_)), "byte {i}: {err}");
                flipped[i] = bytes[i];
            }
        }
        for i in (0..bytes.len()).step_by(61).chain([bytes.len() - 1]) {
            flipped[i] ^= 0x10;
            let err = restore_fails(&dir, &flipped, &format!("a flip at byte {i}"));
            assert!(matches!(err, MvccError::Corrupt(_)), "byte {i}: {err}");
            flipped[i] = bytes[i];
        }
    }

    #[test]
    fn wrong_magic_version_and_trailing_data_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, _) = dump(&populated(&dir));
        let mut b = bytes.clone();
        b[0] = b'X';
        let err = restore_fails(&dir, &b, "wrong magic");
        assert!(err.to_string().contains("magic"), "{err}");
        let mut b = bytes.clone();
        b[8..12].copy_from_slice(&(SNAPSHOT_FORMAT_VERSION + 1).to_le_bytes());
        let err = restore_fails(&dir, &b, "another version");
        assert!(err.to_string().contains("format version"), "{err}");
        let mut b = bytes.clone();
        b.push(0);
        let err = restore_fails(&dir, &b, "trailing data");
        assert!(err.to_string().contains("after the trailer"), "{err}");
        let err = restore_fails(&dir, b"", "an empty stream");
        assert!(matches!(err, MvccError::Corrupt(_)), "{err}");
    }

    #[test]
    fn existing_target_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bytes, _) = dump(&populated(&dir));
        let path = dir.path().join("taken");
        std::fs::write(&path, b"precious").expect("write");
        let res = Store::restore_snapshot(&mut bytes.as_slice(), &path, &StoreOptions::default());
        assert!(res.is_err(), "restored over an existing file");
        assert_eq!(std::fs::read(&path).expect("read"), b"precious");
        // An existing store is refused too.
        let res = Store::restore_snapshot(
            &mut bytes.as_slice(),
            &dir.path().join("src"),
            &StoreOptions::default(),
        );
        assert!(res.is_err(), "restored over an existing store");
    }

    #[test]
    fn restore_spans_several_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = open(&dir, "src");
        let mut w = src.write().expect("write");
        for i in 0..(RESTORE_BATCH_FRAMES as u32 * 3) {
            let key = format!("key{:06}", i % 9_000);
            if i % 10 == 9 {
                w.delete_range(&KeyRange::new(key.as_bytes(), b""))
                    .expect("delete");
            } else {
                w.put(key.as_bytes(), i.to_le_bytes().to_vec(), 0)
                    .expect("put");
            }
            w.finish_revision().expect("finish");
        }
        w.commit(true).expect("commit");
        let (bytes, info) = dump(&src);
        assert!(info.history_records > RESTORE_BATCH_FRAMES as u64 * 2);
        let (dst, rinfo) = Store::restore_snapshot(
            &mut bytes.as_slice(),
            &dir.path().join("dst"),
            &StoreOptions::default(),
        )
        .expect("restore");
        assert_eq!(rinfo, info);
        for rev in [0, 2, info.revision / 2, info.revision - 1] {
            assert_eq!(
                all_at(&src, rev).expect("range"),
                all_at(&dst, rev).expect("range")
            );
        }
        assert_eq!(dump(&dst).0, bytes);
    }
}

/// How a snapshot file was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotEnvelope {
    /// As `Maintenance.Snapshot` streams it (and `etcdctl snapshot save`
    /// saves it): the snapshot, padding to a multiple of 512 bytes ending
    /// with the padding length (u16 LE), then the SHA-256 of all before it.
    EtcdChecksummed,
    /// The bare snapshot stream.
    Bare,
}

const ENVELOPE_HASH_LEN: u64 = 32;

/// Opens a snapshot file and returns a reader over the snapshot stream in
/// it. An etcd-style file's SHA-256 is verified first, unless
/// `skip_hash_check`; a mismatch is `Corrupt`.
pub fn open_snapshot_file(
    path: &Path,
    skip_hash_check: bool,
) -> Result<(io::Take<io::BufReader<std::fs::File>>, SnapshotEnvelope), MvccError> {
    use std::io::{Seek, SeekFrom};
    let io_err = |e: io::Error| MvccError::Storage(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let checksummed = len >= ENVELOPE_HASH_LEN + 2 && (len - ENVELOPE_HASH_LEN).is_multiple_of(512);
    if !checksummed {
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        return Ok((io::BufReader::new(file).take(len), SnapshotEnvelope::Bare));
    }
    let content_len = len - ENVELOPE_HASH_LEN;
    if !skip_hash_check {
        let mut sha = Sha256::new();
        let mut reader = io::BufReader::new(&mut file).take(content_len);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
        }
        let mut stored = [0u8; 32];
        file.seek(SeekFrom::Start(content_len)).map_err(io_err)?;
        file.read_exact(&mut stored).map_err(io_err)?;
        if sha.finalize().as_slice() != stored {
            return Err(MvccError::Corrupt(format!(
                "{}: SHA-256 mismatch: the file is truncated or damaged",
                path.display()
            )));
        }
    }
    let mut pad = [0u8; 2];
    file.seek(SeekFrom::Start(content_len - 2))
        .map_err(io_err)?;
    file.read_exact(&mut pad).map_err(io_err)?;
    let pad = u64::from(u16::from_le_bytes(pad));
    if !(2..=513).contains(&pad) || pad > content_len {
        return Err(MvccError::Corrupt(format!(
            "{}: not a Quorate snapshot (bad padding)",
            path.display()
        )));
    }
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    Ok((
        io::BufReader::new(file).take(content_len - pad),
        SnapshotEnvelope::EtcdChecksummed,
    ))
}
