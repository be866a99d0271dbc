//! State shared by the gRPC services of one member: the store, the write
//! pipeline, the member's identity and its limits.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use quorate_mvcc::Store;
use quorate_proto::etcdserverpb::ResponseHeader;

use crate::config::ServerConfig;
use crate::identity::{ClusterId, MemberId};
use crate::pipeline::WritePipeline;

/// The etcd API level Quorate implements; reported as the server version so
/// etcd clients enable the features they know from that version.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// Raft term until replication lands: a single member is leader of term 1.
pub const SINGLE_NODE_TERM: u64 = 1;

pub struct Core {
    pub store: Arc<Store>,
    pub pipeline: WritePipeline,
    pub member_id: MemberId,
    pub cluster_id: ClusterId,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub config: ServerConfig,
}

impl Core {
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id.0,
            member_id: self.member_id.0,
            revision,
            raft_term: SINGLE_NODE_TERM,
        })
    }

    pub fn applied_index(&self) -> u64 {
        self.pipeline.stats.applied_index.load(Ordering::Relaxed)
    }

    pub fn db_size(&self) -> u64 {
        self.pipeline.stats.db_size_bytes.load(Ordering::Relaxed)
    }

    pub fn db_size_in_use(&self) -> u64 {
        self.pipeline
            .stats
            .db_size_in_use_bytes
            .load(Ordering::Relaxed)
    }
}
