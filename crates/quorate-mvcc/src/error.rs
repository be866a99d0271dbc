//! Errors of the storage layer. The server maps them once to etcd's gRPC
//! status codes and strings.

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// The data dir holds something that is not a Quorate store, or one
    /// written by an incompatible format version.
    #[error("{0}")]
    Foreign(String),
    /// A record failed its checksum or could not be decoded.
    #[error("data corruption: {0}")]
    Corrupt(String),
    #[error("storage error: {0}")]
    Storage(String),
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for MvccError {
            fn from(e: $t) -> Self {
                MvccError::Storage(e.to_string())
            }
        }
    )*};
}

storage_from!(
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::CompactionError,
    redb::SetDurabilityError
);

impl From<redb::DatabaseError> for MvccError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(msg)) => {
                MvccError::Corrupt(msg)
            }
            redb::DatabaseError::UpgradeRequired(v) => MvccError::Foreign(format!(
                "database file format {v} is not supported by this build"
            )),
            other => MvccError::Storage(other.to_string()),
        }
    }
}
