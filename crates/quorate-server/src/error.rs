//! Client-visible errors, mapped once to etcd's gRPC status codes and strings.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    /// A request field has a value etcd's API does not define.
    #[error("{0}")]
    InvalidArgument(String),
    /// Storage failed; the request's effects were rolled back.
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> Code {
        match self {
            ApiError::EmptyKey
            | ApiError::KeyNotFound
            | ApiError::ValueProvided
            | ApiError::LeaseProvided
            | ApiError::TooManyOps
            | ApiError::DuplicateKey
            | ApiError::RequestTooLarge
            | ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::Compacted | ApiError::FutureRevision => Code::OutOfRange,
            ApiError::NoSpace => Code::ResourceExhausted,
            ApiError::LeaseNotFound => Code::NotFound,
            ApiError::Timeout | ApiError::Stopped => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<quorate_mvcc::MvccError> for ApiError {
    fn from(e: quorate_mvcc::MvccError) -> ApiError {
        use quorate_mvcc::MvccError;
        match e {
            MvccError::Compacted => ApiError::Compacted,
            MvccError::FutureRevision => ApiError::FutureRevision,
            other => ApiError::Internal(other.to_string()),
        }
    }
}
