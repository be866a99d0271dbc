//! Quorate's server: everything between the client API and the storage.
//!
//! - `api`: etcd v3 gRPC services; translate and validate only.
//! - `validate`: stateless request checks (etcd's gRPC-layer checks).
//! - `apply`: the single, deterministic place that decides what a write does.
//! - `pipeline`: sequencing, group commit and acknowledgement of writes.
//! - `identity`: member and cluster IDs, derived as etcd derives them.
//! - `run`: member lifecycle (data dir, listeners, shutdown).

mod api;
mod apply;
pub mod config;
mod core;
pub mod error;
pub mod identity;
mod pipeline;
mod run;
mod validate;

pub use config::ServerConfig;
pub use run::run;
