//! Quorate's server: everything between the client API and the storage.
//!
//! - `api`: etcd v3 gRPC services; translate and validate only.
//! - `validate`: stateless request checks (etcd's gRPC-layer checks).
//! - `apply`: the single, deterministic place that decides what a write does.
//! - `raft_loop`: the Raft thread; the only code that touches the Raft node.
//! - `replica`: the replicated state machine (applies committed entries).
//! - `peer`: Raft traffic between members (streams, snapshots).
//! - `membership`: the member list the state machine keeps.
//! - `identity`: member and cluster IDs, derived as etcd derives them.
//! - `run`: member lifecycle (data dir, bootstrap, listeners, shutdown).

mod api;
mod apply;
pub mod config;
mod core;
mod corruption;
pub mod error;
pub mod health;
pub mod identity;
pub mod lessor;
pub mod membership;
pub mod offline;
mod peer;
mod raft_loop;
mod replica;
mod run;
pub mod snapshot_file;
mod validate;

pub use config::{ClusterState, ServerConfig};
pub use run::run;
