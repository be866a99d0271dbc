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
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: member ID already exist")]
    MemberIdExists,
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
            ApiError::Compacted | ApiError::FutureRevision | ApiError::LeaseTtlTooLarge => {
                Code::OutOfRange
            }
            ApiError::LeaseExist => Code::FailedPrecondition,
            ApiError::NoSpace => Code::ResourceExhausted,
            ApiError::LeaseNotFound => Code::NotFound,
            ApiError::Timeout
            | ApiError::Stopped
            | ApiError::NoLeader
            | ApiError::LeaderChanged
            | ApiError::Unhealthy
            | ApiError::NotSupportedForLearner => Code::Unavailable,
            ApiError::NotLeader
            | ApiError::PeerUrlExists
            | ApiError::MemberNotLearner
            | ApiError::LearnerNotReady
            | ApiError::TooManyLearners
            | ApiError::NotEnoughStartedMembers
            | ApiError::BadLeaderTransferee
            | ApiError::MemberIdExists => Code::FailedPrecondition,
            ApiError::MemberNotFound => Code::NotFound,
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
