//! The store: redb tables, read snapshots and the single write transaction.
//!
//! Layout (all in one redb file):
//! - `history`: `(main, sub)` revision -> record (the key's full state at that
//!   revision, or a tombstone). Ordered by revision, so watch replay and
//!   compaction walk it in order.
//! - `key_revisions`: `(key, main, sub)` -> record kind. Answers "which
//!   revisions does this key have", for historical reads and compaction.
//! - `latest`: key -> revision of its live value. Live keys only, so reads at
//!   the current revision touch one small entry per key plus its record.
//! - `meta`: format version, current and compacted revisions, applied index.

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use crate::codec::{self, RecordKind};
use crate::{KeyRange, KeyValue, MvccError};

/// Version of the on-disk layout. Bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
pub(crate) const MAGIC: &[u8] = b"quorate-mvcc";

pub(crate) type RevKey = (i64, i64);
pub(crate) const HISTORY: TableDefinition<RevKey, &[u8]> = TableDefinition::new("history");
pub(crate) const KEY_REVISIONS: TableDefinition<(&[u8], i64, i64), u8> =
    TableDefinition::new("key_revisions");
pub(crate) const LATEST: TableDefinition<&[u8], RevKey> = TableDefinition::new("latest");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

pub(crate) const META_MAGIC: &str = "magic";
pub(crate) const META_FORMAT: &str = "format_version";
pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACT_REVISION: &str = "compact_revision";
/// Physical compaction progress: history below this `(main, sub)` is done.
pub(crate) const META_COMPACT_CURSOR: &str = "compact_cursor";
pub(crate) const META_APPLIED: &str = "applied_index";
/// Prefix for metadata owned by layers above (cluster identity, ...).
const META_EXTERNAL_PREFIX: &str = "ext/";

/// A store revision: `main` is etcd's revision, `sub` orders writes within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// Position in the replicated log covered by the store's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AppliedIndex {
    pub index: u64,
    pub term: u64,
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// redb page cache; the main knob for resident memory.
    pub cache_size_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_size_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RangeOptions {
    /// 0 = the current revision.
    pub revision: i64,
    /// 0 = no limit. The result's `count` is unaffected by the limit.
    pub limit: usize,
    /// Count only; `kvs` stays empty.
    pub count_only: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range at that revision.
    pub count: usize,
    /// The store's current revision when the read was served.
    pub revision: i64,
}

pub struct Store {
    pub(crate) db: Database,
    pub(crate) path: PathBuf,
}

impl Store {
    /// Opens the store at `path`, creating it if the file does not exist.
    /// A file that exists but is not a Quorate store (or is from another
    /// format version) is refused, never reset.
    pub fn open(path: &Path, opts: &StoreOptions) -> Result<Store, MvccError> {
        let exists = path.exists();
        let mut builder = Database::builder();
        builder.set_cache_size(opts.cache_size_bytes);
        let db = if exists {
            builder.open(path)?
        } else {
            builder.create(path)?
        };
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        if exists {
            store.check_format()?;
        } else {
            store.initialize()?;
        }
        Ok(store)
    }

    fn initialize(&self) -> Result<(), MvccError> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(HISTORY)?;
            txn.open_table(KEY_REVISIONS)?;
            txn.open_table(LATEST)?;
            let mut meta = txn.open_table(META)?;
            meta.insert(META_MAGIC, MAGIC)?;
            meta.insert(META_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())?;
            // etcd starts at revision 1: the empty store.
            meta.insert(META_REVISION, 1i64.to_le_bytes().as_slice())?;
            // Nothing compacted yet: etcd starts at -1, so compacting at 0 works once.
            meta.insert(META_COMPACT_REVISION, (-1i64).to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn check_format(&self) -> Result<(), MvccError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META).map_err(|e| {
            MvccError::Foreign(format!(
                "{} is not a Quorate store ({e})",
                self.path.display()
            ))
        })?;
        let magic = meta.get(META_MAGIC)?.map(|g| g.value().to_vec());
        if magic.as_deref() != Some(MAGIC) {
            return Err(MvccError::Foreign(format!(
                "{} is not a Quorate store (no Quorate header)",
                self.path.display()
            )));
        }
        let format = meta
            .get(META_FORMAT)?
            .and_then(|g| g.value().try_into().ok().map(u32::from_le_bytes));
        if format != Some(FORMAT_VERSION) {
            return Err(MvccError::Foreign(format!(
                "{} has store format {:?}; this build reads format {FORMAT_VERSION}",
                self.path.display(),
                format
            )));
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the database file in bytes.
    pub fn file_size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// A consistent snapshot for reads; never blocks or is blocked by writes.
    pub fn read(&self) -> Result<ReadTxn, MvccError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let revision = get_i64(&meta, META_REVISION)?;
        let compact_revision = get_i64(&meta, META_COMPACT_REVISION)?;
        Ok(ReadTxn {
            history: txn.open_table(HISTORY)?,
            key_revisions: txn.open_table(KEY_REVISIONS)?,
            latest: txn.open_table(LATEST)?,
            meta,
            revision,
            compact_revision,
        })
    }

    /// Starts the write transaction. redb allows one at a time; callers
    /// serialize through the apply loop.
    pub fn write(&self) -> Result<WriteTxn, MvccError> {
        let txn = self.db.begin_write()?;
        let (revision, compact_revision) = {
            let meta = txn.open_table(META)?;
            (
                get_i64(&meta, META_REVISION)?,
                get_i64(&meta, META_COMPACT_REVISION)?,
            )
        };
        Ok(WriteTxn {
            txn,
            revision,
            compact_revision,
            pending_main: None,
            next_sub: 0,
            lease_changes: Vec::new(),
        })
    }

    /// Bytes of the file holding live data (the rest is free pages).
    pub fn size_in_use(&self) -> Result<u64, MvccError> {
        let txn = self.db.begin_write()?;
        let stats = txn.stats()?;
        txn.abort()?;
        Ok(stats.allocated_pages() * stats.page_size() as u64)
    }

    /// Removes history below the compact revision, at most `max_records`
    /// history records per call, in its own write transaction. Returns true
    /// when more work remains. Not durable by itself: a crash only loses
    /// progress, which is redone.
    pub fn compact_step(&self, max_records: usize) -> Result<bool, MvccError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let more = {
            let mut meta = txn.open_table(META)?;
            let target = get_i64(&meta, META_COMPACT_REVISION)?;
            let cursor = get_rev(&meta, META_COMPACT_CURSOR)?.unwrap_or((0, 0));
            if (target, i64::MAX) < cursor {
                return Ok(false);
            }
            let mut history = txn.open_table(HISTORY)?;
            let mut key_revs = txn.open_table(KEY_REVISIONS)?;
            let mut latest_seen: Option<(RevKey, RecordKind, Vec<u8>)>;
            let mut visited = 0usize;
            let mut next_cursor = cursor;
            let mut done = true;
            loop {
                latest_seen = None;
                {
                    let mut it = history.range(next_cursor..=(target, i64::MAX))?;
                    if let Some(entry) = it.next() {
                        let (k, v) = entry?;
                        let rev = k.value();
                        let (kind, kv) = codec::decode(v.value())?;
                        latest_seen = Some((rev, kind, kv.key));
                    }
                }
                let Some((rev, kind, key)) = latest_seen.take() else {
                    break;
                };
                if visited >= max_records {
                    done = false;
                    break;
                }
                visited += 1;
                next_cursor = (rev.0, rev.1.saturating_add(1));
                // Is this the key's newest revision at or below the target?
                let superseded = key_revs
                    .range((key.as_slice(), rev.0, rev.1 + 1)..=(key.as_slice(), target, i64::MAX))?
                    .next()
                    .is_some();
                if superseded {
                    continue;
                }
                // It is: everything older of this key is unreachable.
                let older: Vec<RevKey> = key_revs
                    .range((key.as_slice(), i64::MIN, i64::MIN)..(key.as_slice(), rev.0, rev.1))?
                    .map(|e| e.map(|(k, _)| (k.value().1, k.value().2)))
                    .collect::<Result<_, _>>()?;
                for r in older {
                    key_revs.remove((key.as_slice(), r.0, r.1))?;
                    history.remove(r)?;
                }
                if kind == RecordKind::Tombstone {
                    key_revs.remove((key.as_slice(), rev.0, rev.1))?;
                    history.remove(rev)?;
                }
            }
            put_rev(&mut meta, META_COMPACT_CURSOR, next_cursor)?;
            !done
        };
        txn.commit()?;
        Ok(more)
    }

    /// Rewrites the file to release free pages. Needs exclusive access.
    pub fn defragment(&mut self) -> Result<(), MvccError> {
        self.db.compact()?;
        Ok(())
    }

    /// Reads metadata stored by a layer above under `name`.
    pub fn get_external_meta(&self, name: &str) -> Result<Option<Vec<u8>>, MvccError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let v = meta
            .get(format!("{META_EXTERNAL_PREFIX}{name}").as_str())?
            .map(|g| g.value().to_vec());
        Ok(v)
    }

    pub fn applied_index(&self) -> Result<AppliedIndex, MvccError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        read_applied(&meta)
    }
}

fn get_i64<T: ReadableTable<&'static str, &'static [u8]>>(
    meta: &T,
    name: &str,
) -> Result<i64, MvccError> {
    let v = meta
        .get(name)?
        .ok_or_else(|| MvccError::Corrupt(format!("meta entry {name} is missing")))?;
    let bytes: [u8; 8] = v
        .value()
        .try_into()
        .map_err(|_| MvccError::Corrupt(format!("meta entry {name} has the wrong size")))?;
    Ok(i64::from_le_bytes(bytes))
}

fn get_rev<T: ReadableTable<&'static str, &'static [u8]>>(
    meta: &T,
    name: &str,
) -> Result<Option<RevKey>, MvccError> {
    let Some(v) = meta.get(name)? else {
        return Ok(None);
    };
    let b = v.value();
    if b.len() != 16 {
        return Err(MvccError::Corrupt(format!(
            "meta entry {name} has the wrong size"
        )));
    }
    let mut main = [0u8; 8];
    let mut sub = [0u8; 8];
    main.copy_from_slice(&b[..8]);
    sub.copy_from_slice(&b[8..]);
    Ok(Some((i64::from_le_bytes(main), i64::from_le_bytes(sub))))
}

fn put_rev(
    meta: &mut redb::Table<&'static str, &'static [u8]>,
    name: &str,
    rev: RevKey,
) -> Result<(), MvccError> {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&rev.0.to_le_bytes());
    b[8..].copy_from_slice(&rev.1.to_le_bytes());
    meta.insert(name, b.as_slice())?;
    Ok(())
}

fn read_applied<T: ReadableTable<&'static str, &'static [u8]>>(
    meta: &T,
) -> Result<AppliedIndex, MvccError> {
    Ok(get_rev(meta, META_APPLIED)?
        .map(|(i, t)| AppliedIndex {
            index: i as u64,
            term: t as u64,
        })
        .unwrap_or_default())
}

/// Reads shared by snapshots and the write transaction.
fn range_impl<H, K, L>(
    history: &H,
    key_revisions: &K,
    latest: &L,
    current: i64,
    range: &KeyRange,
    opts: RangeOptions,
) -> Result<RangeResult, MvccError>
where
    H: ReadableTable<RevKey, &'static [u8]>,
    K: ReadableTable<(&'static [u8], i64, i64), u8>,
    L: ReadableTable<&'static [u8], RevKey>,
{
    let revision = if opts.revision <= 0 || opts.revision >= current {
        current
    } else {
        opts.revision
    };
    // etcd reports the store's current revision even for historical reads.
    let mut out = RangeResult {
        kvs: Vec::new(),
        count: 0,
        revision: current,
    };
    if range.is_empty() {
        return Ok(out);
    }
    let want_more =
        |out: &RangeResult| !opts.count_only && (opts.limit == 0 || out.kvs.len() < opts.limit);
    let fetch = |rev: RevKey| -> Result<KeyValue, MvccError> {
        let rec = history.get(rev)?.ok_or_else(|| {
            MvccError::Corrupt(format!("revision {rev:?} is indexed but missing"))
        })?;
        let (_, kv) = codec::decode(rec.value())?;
        Ok(kv)
    };

    if revision == current {
        // Fast path: live keys only.
        let visit = |k: &[u8], rev: RevKey, out: &mut RangeResult| -> Result<(), MvccError> {
            let _ = k;
            out.count += 1;
            if want_more(out) {
                out.kvs.push(fetch(rev)?);
            }
            Ok(())
        };
        match range {
            KeyRange::Single(key) => {
                if let Some(rev) = latest.get(key.as_slice())? {
                    visit(key, rev.value(), &mut out)?;
                }
            }
            KeyRange::Span { start, end } => {
                let iter = match end {
                    Some(end) => latest.range(start.as_slice()..end.as_slice())?,
                    None => latest.range(start.as_slice()..)?,
                };
                for entry in iter {
                    let (k, rev) = entry?;
                    visit(k.value(), rev.value(), &mut out)?;
                }
            }
        }
        return Ok(out);
    }

    // Historical read: the newest revision <= `revision` of every key in range.
    let emit = |best: Option<(RevKey, u8)>, out: &mut RangeResult| -> Result<(), MvccError> {
        if let Some((rev, kind)) = best {
            if kind == RecordKind::Put as u8 {
                out.count += 1;
                if want_more(out) {
                    out.kvs.push(fetch(rev)?);
                }
            }
        }
        Ok(())
    };
    match range {
        KeyRange::Single(key) => {
            let best = key_revisions
                .range((key.as_slice(), i64::MIN, i64::MIN)..=(key.as_slice(), revision, i64::MAX))?
                .next_back()
                .transpose()?
                .map(|(k, v)| ((k.value().1, k.value().2), v.value()));
            emit(best, &mut out)?;
        }
        KeyRange::Span { start, end } => {
            let lo = (start.as_slice(), i64::MIN, i64::MIN);
            let iter = match end {
                Some(end) => key_revisions.range(lo..(end.as_slice(), i64::MIN, i64::MIN))?,
                None => key_revisions.range(lo..)?,
            };
            let mut current_key: Option<Vec<u8>> = None;
            let mut best: Option<(RevKey, u8)> = None;
            for entry in iter {
                let (k, v) = entry?;
                let (key, main, sub) = k.value();
                if current_key.as_deref() != Some(key) {
                    emit(best.take(), &mut out)?;
                    current_key = Some(key.to_vec());
                }
                if main <= revision {
                    best = Some(((main, sub), v.value()));
                }
            }
            emit(best, &mut out)?;
        }
    }
    Ok(out)
}

fn check_revision(rev: i64, current: i64, compacted: i64) -> Result<(), MvccError> {
    if rev > current {
        return Err(MvccError::FutureRevision);
    }
    if rev > 0 && rev < compacted {
        return Err(MvccError::Compacted);
    }
    Ok(())
}

/// A read-only snapshot of the store.
pub struct ReadTxn {
    pub(crate) history: ReadOnlyTable<RevKey, &'static [u8]>,
    key_revisions: ReadOnlyTable<(&'static [u8], i64, i64), u8>,
    pub(crate) latest: ReadOnlyTable<&'static [u8], RevKey>,
    pub(crate) meta: ReadOnlyTable<&'static str, &'static [u8]>,
    revision: i64,
    compact_revision: i64,
}

impl ReadTxn {
    /// Every lease: `(id, granted TTL in seconds)`, by ID.
    pub fn leases(&self) -> Result<Vec<(i64, i64)>, MvccError> {
        leases_in(&self.meta)
    }

    /// Every live key that is attached to a lease, as `(key, lease)`.
    pub fn leased_keys(&self) -> Result<Vec<(Vec<u8>, i64)>, MvccError> {
        let mut out = Vec::new();
        for entry in self.latest.iter()? {
            let (_, rev) = entry?;
            let rec = self.history.get(rev.value())?.ok_or_else(|| {
                MvccError::Corrupt(format!("revision {:?} is indexed but missing", rev.value()))
            })?;
            let (_, kv) = codec::decode(rec.value())?;
            if kv.lease != 0 {
                out.push((kv.key, kv.lease));
            }
        }
        Ok(out)
    }

    pub fn lease_ttl(&self, id: i64) -> Result<Option<i64>, MvccError> {
        Ok(self
            .meta
            .get(lease_meta_key(id).as_str())?
            .and_then(|v| v.value().try_into().ok().map(i64::from_le_bytes)))
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    pub fn applied_index(&self) -> Result<AppliedIndex, MvccError> {
        read_applied(&self.meta)
    }

    pub fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        check_revision(opts.revision, self.revision, self.compact_revision)?;
        range_impl(
            &self.history,
            &self.key_revisions,
            &self.latest,
            self.revision,
            range,
            opts,
        )
    }

    /// Every record with `from <= main revision`, in revision order, until
    /// `f` returns false. Tombstones are yielded with `version == 0`.
    pub fn for_each_change_since(
        &self,
        from: i64,
        mut f: impl FnMut(Revision, KeyValue) -> bool,
    ) -> Result<(), MvccError> {
        if from > 0 && from < self.compact_revision {
            return Err(MvccError::Compacted);
        }
        for entry in self.history.range((from, i64::MIN)..)? {
            let (k, v) = entry?;
            let (main, sub) = k.value();
            let (_, kv) = codec::decode(v.value())?;
            if !f(Revision { main, sub }, kv) {
                break;
            }
        }
        Ok(())
    }

    /// Number of records in the history table (for tests and status).
    pub fn history_len(&self) -> Result<u64, MvccError> {
        Ok(self.history.len()?)
    }
}

/// The write transaction: every change between [`Store::write`] and
/// [`WriteTxn::commit`] becomes visible and durable atomically.
pub struct WriteTxn {
    txn: redb::WriteTransaction,
    /// Highest committed revision as seen by this transaction.
    revision: i64,
    compact_revision: i64,
    /// Main revision of the etcd-level transaction in progress, once it writes.
    pending_main: Option<i64>,
    next_sub: i64,
    /// `(key, old lease, new lease)` for every write that changed a key's
    /// lease, so the layer above can keep its lease-to-keys index.
    lease_changes: Vec<(Vec<u8>, i64, i64)>,
}

/// Leases live in `meta` as `lease/<id as 16 hex digits>` -> granted TTL
/// (i64 LE), so snapshots carry them with the rest of the metadata.
const META_LEASE_PREFIX: &str = "lease/";

fn lease_meta_key(id: i64) -> String {
    format!("{META_LEASE_PREFIX}{:016x}", id as u64)
}

fn leases_in<T: ReadableTable<&'static str, &'static [u8]>>(
    meta: &T,
) -> Result<Vec<(i64, i64)>, MvccError> {
    let mut out = Vec::new();
    for entry in meta.range(META_LEASE_PREFIX..)? {
        let (k, v) = entry?;
        let Some(hex) = k.value().strip_prefix(META_LEASE_PREFIX) else {
            break;
        };
        let id = u64::from_str_radix(hex, 16)
            .map_err(|_| MvccError::Corrupt(format!("bad lease entry {}", k.value())))?
            as i64;
        let ttl: [u8; 8] = v
            .value()
            .try_into()
            .map_err(|_| MvccError::Corrupt(format!("bad lease entry {}", k.value())))?;
        out.push((id, i64::from_le_bytes(ttl)));
    }
    Ok(out)
}

impl WriteTxn {
    /// Revision reads in this transaction see: including writes made by the
    /// etcd-level transaction in progress.
    pub fn revision(&self) -> i64 {
        self.pending_main.unwrap_or(self.revision)
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    fn allocate(&mut self) -> RevKey {
        let main = *self.pending_main.get_or_insert(self.revision + 1);
        let sub = self.next_sub;
        self.next_sub += 1;
        (main, sub)
    }

    /// Ends one etcd-level transaction (one client request). If it wrote
    /// anything, the store revision advances by exactly one.
    pub fn finish_revision(&mut self) -> Result<i64, MvccError> {
        if let Some(main) = self.pending_main.take() {
            self.revision = main;
            let mut meta = self.txn.open_table(META)?;
            meta.insert(META_REVISION, main.to_le_bytes().as_slice())?;
        }
        self.next_sub = 0;
        Ok(self.revision)
    }

    pub fn range(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        let current = self.revision();
        check_revision(opts.revision, current, self.compact_revision)?;
        let history = self.txn.open_table(HISTORY)?;
        let key_revisions = self.txn.open_table(KEY_REVISIONS)?;
        let latest = self.txn.open_table(LATEST)?;
        range_impl(&history, &key_revisions, &latest, current, range, opts)
    }

    /// Writes `key`; returns its previous live value, if any.
    pub fn put(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
    ) -> Result<Option<KeyValue>, MvccError> {
        let rev = self.allocate();
        let mut history = self.txn.open_table(HISTORY)?;
        let mut key_revisions = self.txn.open_table(KEY_REVISIONS)?;
        let mut latest = self.txn.open_table(LATEST)?;
        let prev_rev = latest.get(key)?.map(|g| g.value());
        let prev = match prev_rev {
            Some(r) => {
                let rec = history.get(r)?.ok_or_else(|| {
                    MvccError::Corrupt(format!("revision {r:?} is indexed but missing"))
                })?;
                Some(codec::decode(rec.value())?.1)
            }
            None => None,
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: prev.as_ref().map_or(rev.0, |p| p.create_revision),
            mod_revision: rev.0,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        history.insert(rev, codec::encode(RecordKind::Put, &kv).as_slice())?;
        key_revisions.insert((key, rev.0, rev.1), RecordKind::Put as u8)?;
        latest.insert(key, rev)?;
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            self.lease_changes.push((key.to_vec(), old_lease, lease));
        }
        Ok(prev)
    }

    /// Deletes every live key in `range`; returns the deleted values in key
    /// order. Writes nothing (and takes no revision) when nothing matches.
    pub fn delete_range(&mut self, range: &KeyRange) -> Result<Vec<KeyValue>, MvccError> {
        let live = self.range(
            range,
            RangeOptions {
                revision: 0,
                ..Default::default()
            },
        )?;
        if live.kvs.is_empty() {
            return Ok(Vec::new());
        }
        for kv in &live.kvs {
            let rev = self.allocate();
            let tomb = KeyValue {
                key: kv.key.clone(),
                mod_revision: rev.0,
                ..Default::default()
            };
            let mut history = self.txn.open_table(HISTORY)?;
            let mut key_revisions = self.txn.open_table(KEY_REVISIONS)?;
            let mut latest = self.txn.open_table(LATEST)?;
            history.insert(rev, codec::encode(RecordKind::Tombstone, &tomb).as_slice())?;
            key_revisions.insert(
                (kv.key.as_slice(), rev.0, rev.1),
                RecordKind::Tombstone as u8,
            )?;
            latest.remove(kv.key.as_slice())?;
            if kv.lease != 0 {
                self.lease_changes.push((kv.key.clone(), kv.lease, 0));
            }
        }
        Ok(live.kvs)
    }

    /// Records a compaction at `rev`. History below it becomes unreadable at
    /// once; [`Store::compact_step`] reclaims the space afterwards.
    pub fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.compact_revision {
            return Err(MvccError::Compacted);
        }
        if rev > self.revision() {
            return Err(MvccError::FutureRevision);
        }
        self.compact_revision = rev;
        let mut meta = self.txn.open_table(META)?;
        meta.insert(META_COMPACT_REVISION, rev.to_le_bytes().as_slice())?;
        Ok(())
    }

    /// Moves the store revision forward by `by` without writing keys (for a
    /// restore that must stay ahead of revisions clients have seen).
    pub fn bump_revision(&mut self, by: i64) -> Result<i64, MvccError> {
        let new = self.revision().saturating_add(by.max(0));
        self.revision = new;
        let mut meta = self.txn.open_table(META)?;
        meta.insert(META_REVISION, new.to_le_bytes().as_slice())?;
        Ok(new)
    }

    /// Key lease attachments changed since the last call.
    pub fn take_lease_changes(&mut self) -> Vec<(Vec<u8>, i64, i64)> {
        std::mem::take(&mut self.lease_changes)
    }

    pub fn lease_ttl(&self, id: i64) -> Result<Option<i64>, MvccError> {
        let meta = self.txn.open_table(META)?;
        let v = meta
            .get(lease_meta_key(id).as_str())?
            .and_then(|v| v.value().try_into().ok().map(i64::from_le_bytes));
        Ok(v)
    }

    pub fn leases(&self) -> Result<Vec<(i64, i64)>, MvccError> {
        let meta = self.txn.open_table(META)?;
        leases_in(&meta)
    }

    /// Records a lease with its granted TTL. Takes no revision (as in etcd).
    pub fn put_lease(&mut self, id: i64, ttl: i64) -> Result<(), MvccError> {
        let mut meta = self.txn.open_table(META)?;
        meta.insert(lease_meta_key(id).as_str(), ttl.to_le_bytes().as_slice())?;
        Ok(())
    }

    pub fn remove_lease(&mut self, id: i64) -> Result<(), MvccError> {
        let mut meta = self.txn.open_table(META)?;
        meta.remove(lease_meta_key(id).as_str())?;
        Ok(())
    }

    /// Records the log position these changes cover; same transaction, so
    /// data and applied index can never disagree after a crash.
    pub fn set_applied(&mut self, applied: AppliedIndex) -> Result<(), MvccError> {
        let mut meta = self.txn.open_table(META)?;
        put_rev(
            &mut meta,
            META_APPLIED,
            (applied.index as i64, applied.term as i64),
        )
    }

    pub fn set_external_meta(&mut self, name: &str, value: &[u8]) -> Result<(), MvccError> {
        let mut meta = self.txn.open_table(META)?;
        meta.insert(format!("{META_EXTERNAL_PREFIX}{name}").as_str(), value)?;
        Ok(())
    }

    /// Commits. With `durable`, returns only after the data is fsynced.
    pub fn commit(mut self, durable: bool) -> Result<(), MvccError> {
        debug_assert!(self.pending_main.is_none(), "finish_revision before commit");
        if !durable {
            self.txn.set_durability(Durability::None)?;
        }
        self.txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db"), &StoreOptions::default()).expect("open");
        (dir, store)
    }

    fn put(store: &Store, key: &str, value: &str) -> i64 {
        let mut w = store.write().expect("write");
        w.put(key.as_bytes(), value.as_bytes().to_vec(), 0)
            .expect("put");
        let rev = w.finish_revision().expect("finish");
        w.commit(true).expect("commit");
        rev
    }

    fn del(store: &Store, key: &str, end: &str) -> i64 {
        let mut w = store.write().expect("write");
        w.delete_range(&KeyRange::new(key.as_bytes(), end.as_bytes()))
            .expect("delete");
        let rev = w.finish_revision().expect("finish");
        w.commit(true).expect("commit");
        rev
    }

    fn get_at(store: &Store, key: &str, rev: i64) -> Result<Option<KeyValue>, MvccError> {
        let r = store.read()?;
        let res = r.range(
            &KeyRange::new(key.as_bytes(), b""),
            RangeOptions {
                revision: rev,
                ..Default::default()
            },
        )?;
        Ok(res.kvs.into_iter().next())
    }

    #[test]
    fn revisions_versions_and_tombstones_follow_etcd() {
        let (_d, s) = open();
        assert_eq!(s.read().expect("read").revision(), 1);
        assert_eq!(put(&s, "a", "1"), 2);
        assert_eq!(put(&s, "a", "2"), 3);
        let kv = get_at(&s, "a", 0).expect("get").expect("present");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(del(&s, "a", ""), 4);
        assert_eq!(get_at(&s, "a", 0).expect("get"), None);
        // Deleting nothing takes no revision.
        assert_eq!(del(&s, "a", ""), 4);
        assert_eq!(put(&s, "a", "3"), 5);
        let kv = get_at(&s, "a", 0).expect("get").expect("present");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
        // History is readable.
        assert_eq!(get_at(&s, "a", 2).expect("get").expect("v").value, b"1");
        assert_eq!(get_at(&s, "a", 4).expect("get"), None);
        assert!(matches!(get_at(&s, "a", 6), Err(MvccError::FutureRevision)));
    }

    #[test]
    fn writes_in_one_transaction_share_the_main_revision() {
        let (_d, s) = open();
        let mut w = s.write().expect("write");
        w.put(b"x", b"1".to_vec(), 0).expect("put");
        w.put(b"y", b"2".to_vec(), 0).expect("put");
        assert_eq!(w.revision(), 2);
        assert_eq!(w.finish_revision().expect("finish"), 2);
        w.commit(true).expect("commit");
        let r = s.read().expect("read");
        let all = r
            .range(&KeyRange::new(b"\0", b"\0"), RangeOptions::default())
            .expect("range");
        assert_eq!(all.count, 2);
        assert!(all.kvs.iter().all(|kv| kv.mod_revision == 2));
    }

    #[test]
    fn compaction_keeps_newest_value_at_or_below_the_compact_revision() {
        let (_d, s) = open();
        put(&s, "a", "1"); // 2
        put(&s, "a", "2"); // 3
        put(&s, "b", "1"); // 4
        del(&s, "b", ""); // 5
        put(&s, "c", "1"); // 6
        let mut w = s.write().expect("write");
        w.compact(5).expect("compact");
        w.commit(true).expect("commit");
        while s.compact_step(1).expect("step") {}
        assert!(matches!(get_at(&s, "a", 4), Err(MvccError::Compacted)));
        assert_eq!(get_at(&s, "a", 5).expect("get").expect("a").value, b"2");
        assert_eq!(get_at(&s, "b", 5).expect("get"), None);
        // Only a@3 and c@6 remain in history.
        assert_eq!(s.read().expect("read").history_len().expect("len"), 2);
        let mut w = s.write().expect("write");
        assert!(matches!(w.compact(5), Err(MvccError::Compacted)));
        assert!(matches!(w.compact(7), Err(MvccError::FutureRevision)));
    }

    #[test]
    fn applied_index_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let s = Store::open(&path, &StoreOptions::default()).expect("open");
            let mut w = s.write().expect("write");
            w.put(b"k", b"v".to_vec(), 0).expect("put");
            w.finish_revision().expect("finish");
            w.set_applied(AppliedIndex { index: 7, term: 2 })
                .expect("applied");
            w.commit(true).expect("commit");
        }
        let s = Store::open(&path, &StoreOptions::default()).expect("reopen");
        assert_eq!(
            s.applied_index().expect("applied"),
            AppliedIndex { index: 7, term: 2 }
        );
        assert_eq!(s.read().expect("read").revision(), 2);
    }

    #[test]
    fn foreign_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        std::fs::write(&path, b"this is not a database").expect("write");
        assert!(Store::open(&path, &StoreOptions::default()).is_err());
    }
}
