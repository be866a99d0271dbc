//! etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use prost::Message;
use quorate_proto::etcdserverpb::kv_server::Kv;
use quorate_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use quorate_proto::quoratepb::internal_request::Request as Write;
use tonic::{Request, Response, Status};

use crate::apply::{self, WriteResponse};
use crate::config::GRPC_OVERHEAD_BYTES;
use crate::core::Core;
use crate::error::ApiError;
use crate::validate;

pub struct KvService {
    core: Arc<Core>,
}

impl KvService {
    pub fn new(core: Arc<Core>) -> KvService {
        KvService { core }
    }

    /// gRPC's own message limit, with etcd's (grpc-go's) code and wording.
    /// tonic enforces a hard bound at twice this size before decoding.
    fn check_message_size(&self, encoded_len: usize) -> Result<(), Status> {
        let max = self.core.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
        if encoded_len > max {
            return Err(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({encoded_len} vs. {max})"
            )));
        }
        Ok(())
    }

    /// etcd refuses a write whose encoded request exceeds --max-request-bytes.
    fn check_size(&self, encoded_len: usize) -> Result<(), ApiError> {
        if encoded_len > self.core.config.max_request_bytes {
            return Err(ApiError::RequestTooLarge);
        }
        Ok(())
    }

    async fn write(&self, w: Write) -> Result<WriteResponse, Status> {
        Ok(self.core.propose(w).await?)
    }

    /// Runs a read on a store snapshot off the async workers.
    async fn read<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&quorate_mvcc::ReadTxn) -> Result<T, ApiError> + Send + 'static,
    {
        let store = self.core.store.get();
        let r = tokio::task::spawn_blocking(move || {
            let snapshot = store.read().map_err(ApiError::from)?;
            f(&snapshot)
        })
        .await
        .map_err(|e| Status::internal(format!("read task failed: {e}")))?;
        Ok(r?)
    }
}

fn unexpected() -> Status {
    Status::internal("etcdserver: unexpected response type")
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = req.into_inner();
        self.check_message_size(req.encoded_len())?;
        validate::check_range(&req)?;
        if !req.serializable {
            self.core.read_barrier().await?;
        }
        let mut resp = self.read(move |s| apply::range(s, &req)).await?;
        self.core.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        self.check_message_size(req.encoded_len())?;
        validate::check_put(&req)?;
        self.check_size(req.encoded_len())?;
        match self.write(Write::Put(req)).await? {
            WriteResponse::Put(mut r) => {
                self.core.fill_header(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        self.check_message_size(req.encoded_len())?;
        validate::check_delete_range(&req)?;
        self.check_size(req.encoded_len())?;
        match self.write(Write::DeleteRange(req)).await? {
            WriteResponse::DeleteRange(mut r) => {
                self.core.fill_header(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = req.into_inner();
        self.check_message_size(req.encoded_len())?;
        validate::check_txn(&req, self.core.config.max_txn_ops)?;
        let mut resp = if apply::txn_is_read_only(&req) {
            if !apply::txn_is_serializable(&req) {
                self.core.read_barrier().await?;
            }
            self.read(move |s| apply::read_only_txn(s, &req)).await?
        } else {
            self.check_size(req.encoded_len())?;
            match self.write(Write::Txn(req)).await? {
                WriteResponse::Txn(r) => r,
                _ => return Err(unexpected()),
            }
        };
        self.core.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = req.into_inner();
        self.check_message_size(req.encoded_len())?;
        let physical = req.physical;
        let mut resp = match self.write(Write::Compaction(req)).await? {
            WriteResponse::Compaction(r) => r,
            _ => return Err(unexpected()),
        };
        if physical {
            self.core.wait_compacted().await?;
        }
        self.core.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }
}
