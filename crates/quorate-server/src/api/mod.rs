//! gRPC services wire-compatible with etcd's v3 API. Handlers only validate,
//! translate and route: reads go to a store snapshot (after a ReadIndex when
//! linearizable), writes to the Raft thread. What a request does is decided
//! in `apply`.
//!
//! Services etcd has that are not built yet (Auth) are not
//! registered, so tonic answers their methods with UNIMPLEMENTED; methods of
//! registered services that are not built yet do the same explicitly.

pub mod cluster;
pub mod health;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use tonic::Status;

pub(crate) fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!("{method} is not implemented by Quorate yet"))
}
