//! Consensus for Quorate: tikv raft-rs (etcd's Raft) driven one way.
//!
//! - `log`: the durable Raft log (redb file + raft-rs `MemStorage` mirror).
//! - `node`: the Ready loop; Raft's only driver. The state machine, transport
//!   and clock are supplied by the caller, so tests run whole clusters in one
//!   thread from a seed.
//!
//! What it is not: it knows nothing of etcd's API, MVCC or gRPC.

pub mod log;
pub mod node;

pub use log::{DurableLog, LogError};
pub use node::{ApplyContext, Node, NodeConfig, NodeError, StateMachine, Transport};
pub use raft::eraftpb;
pub use raft::{ReadState, StateRole};
pub use raft_proto::ConfChangeI;

/// A logger for raft-rs that forwards nothing (Quorate logs with tracing).
pub fn discard_logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}
