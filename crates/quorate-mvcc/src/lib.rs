//! Multi-version key-value storage with etcd's revision semantics, on redb.
//!
//! What it is: the state machine's storage. One global [`Revision`] counter,
//! bumped once per write transaction; each write inside it gets a sub-revision.
//! Every key keeps its history (including delete tombstones) until compaction.
//!
//! What it is not: it knows nothing of gRPC, Raft, leases or watchers. It never
//! decides *what* to write: the server's apply path does, deterministically.
//!
//! Invariants:
//! - Every change and the applied index that covers it are committed in the same
//!   redb transaction ([`WriteTxn::set_applied`]), so apply is exactly-once
//!   across crashes.
//! - Every stored record carries a CRC32 that is verified when it is read back.
//! - Memory does not grow with the key count: the key index lives in redb
//!   (bounded page cache), not in a heap structure.

mod codec;
mod error;
mod keys;
mod snapshot;
mod store;

pub use error::MvccError;
pub use keys::KeyRange;
pub use quorate_proto::mvccpb::KeyValue;
pub use snapshot::{
    open_snapshot_file, read_snapshot_info, SnapshotEnvelope, SnapshotInfo, MAX_FRAME_BYTES,
    SNAPSHOT_FORMAT_VERSION,
};
pub use store::{
    AppliedIndex, RangeOptions, RangeResult, ReadTxn, Revision, Store, StoreOptions, WriteTxn,
    FORMAT_VERSION,
};
