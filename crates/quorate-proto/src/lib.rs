//! Wire types for Quorate.
//!
//! `etcdserverpb`, `mvccpb` and `authpb` are Quorate's own `.proto` files with
//! etcd's package, service, message and field names and numbers, so etcd clients
//! interoperate unchanged. `quoratepb` holds messages that never leave a cluster.
//! This crate contains no logic.

#![allow(clippy::all, clippy::pedantic)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod quoratepb {
    tonic::include_proto!("quoratepb");
}

/// Quorate's own API (`quorate.v1`), beside etcd's.
pub mod quorate {
    pub mod v1 {
        tonic::include_proto!("quorate.v1");
    }
}
