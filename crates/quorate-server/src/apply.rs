//! The one place that decides what a request does to the store.
//!
//! Invariant: apply is deterministic. Its result depends only on the store
//! state and the request, never on time, randomness or local configuration,
//! so every replica that applies the same log reaches the same state.
//! Invariant: a request either applies completely or not at all: everything
//! that can fail for a client reason is checked before the first write.

use quorate_mvcc::{KeyRange, KeyValue, MvccError, RangeOptions, RangeResult, ReadTxn, WriteTxn};
use quorate_proto::etcdserverpb::{
    compare, range_request, request_op, response_op, AlarmResponse, CompactionRequest,
    CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use quorate_proto::quoratepb::internal_request::Request;

use crate::error::ApiError;

/// Read access shared by snapshots and the write transaction.
pub trait KvRead {
    fn range_kv(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, MvccError>;
    fn current_revision(&self) -> i64;
    fn compacted_revision(&self) -> i64;
    fn lease_granted_ttl(&self, id: i64) -> Result<Option<i64>, MvccError>;
}

impl KvRead for ReadTxn {
    fn range_kv(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        self.range(range, opts)
    }
    fn current_revision(&self) -> i64 {
        self.revision()
    }
    fn compacted_revision(&self) -> i64 {
        self.compact_revision()
    }
    fn lease_granted_ttl(&self, id: i64) -> Result<Option<i64>, MvccError> {
        self.lease_ttl(id)
    }
}

impl KvRead for WriteTxn {
    fn range_kv(&self, range: &KeyRange, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        self.range(range, opts)
    }
    fn current_revision(&self) -> i64 {
        self.revision()
    }
    fn compacted_revision(&self) -> i64 {
        self.compact_revision()
    }
    fn lease_granted_ttl(&self, id: i64) -> Result<Option<i64>, MvccError> {
        self.lease_ttl(id)
    }
}

/// What applying one write request produced. Headers carry only the
/// revision; the API layer fills in cluster, member and term.
#[derive(Debug, Clone)]
pub enum WriteResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Alarm(AlarmResponse),
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Serves a Range request, as etcd does: sorting and revision filters see
/// the whole range; `limit` cuts afterwards and sets `more`.
pub fn range<R: KvRead>(r: &R, req: &RangeRequest) -> Result<RangeResponse, ApiError> {
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let sorted = req.sort_order != range_request::SortOrder::None as i32;
    let limit = usize::try_from(req.limit.max(0)).unwrap_or(usize::MAX);
    let fetch_limit = if sorted || filtered || limit == 0 {
        0
    } else {
        limit.saturating_add(1)
    };
    let res = r.range_kv(
        &KeyRange::new(&req.key, &req.range_end),
        RangeOptions {
            revision: req.revision,
            limit: fetch_limit,
            count_only: req.count_only,
        },
    )?;
    let mut kvs = res.kvs;
    if filtered {
        kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
    }
    sort_kvs(&mut kvs, req.sort_order, req.sort_target);
    let mut more = false;
    if limit > 0 && kvs.len() > limit {
        kvs.truncate(limit);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: header(res.revision),
        kvs,
        more,
        count: res.count as i64,
    })
}

fn sort_kvs(kvs: &mut [KeyValue], order: i32, target: i32) {
    use range_request::{SortOrder, SortTarget};
    let target = SortTarget::try_from(target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(order).unwrap_or(SortOrder::None);
    // Results come in ascending key order already; any other target with no
    // order given sorts ascending, as etcd does.
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    if order == SortOrder::None {
        return;
    }
    let cmp = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
        _ => kvs.sort_by(cmp),
    }
}

/// Applies one write request inside the batch's write transaction and ends
/// its revision. On error nothing of this request was written.
pub fn apply_write(w: &mut WriteTxn, req: &Request) -> Result<WriteResponse, ApiError> {
    let resp = match req {
        Request::Put(p) => {
            check_put_state(w, p)?;
            WriteResponse::Put(put(w, p)?)
        }
        Request::DeleteRange(d) => WriteResponse::DeleteRange(delete_range(w, d)?),
        Request::Txn(t) => WriteResponse::Txn(txn(w, t)?),
        Request::Compaction(c) => WriteResponse::Compaction(compaction(w, c)?),
        Request::LeaseGrant(g) => {
            if w.lease_ttl(g.id)?.is_some() {
                return Err(ApiError::LeaseExist);
            }
            w.put_lease(g.id, g.ttl)?;
            WriteResponse::LeaseGrant(LeaseGrantResponse {
                header: None,
                id: g.id,
                ttl: g.ttl,
                error: String::new(),
            })
        }
        // Membership entries and revocations are applied by the replica,
        // which holds what they need.
        Request::MemberAttributes(_) | Request::LeaseRevoke(_) | Request::Alarm(_) => {
            return Err(ApiError::Internal(
                "entry kind not applied on the KV path".into(),
            ))
        }
    };
    let revision = w.finish_revision()?;
    Ok(with_revision(resp, revision))
}

fn with_revision(mut resp: WriteResponse, revision: i64) -> WriteResponse {
    *resp.header_mut() = header(revision);
    resp
}

impl WriteResponse {
    /// The response's header, whatever the request was.
    pub fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
        match self {
            WriteResponse::Put(r) => &mut r.header,
            WriteResponse::DeleteRange(r) => &mut r.header,
            WriteResponse::Txn(r) => &mut r.header,
            WriteResponse::Compaction(r) => &mut r.header,
            WriteResponse::LeaseGrant(r) => &mut r.header,
            WriteResponse::LeaseRevoke(r) => &mut r.header,
            WriteResponse::Alarm(r) => &mut r.header,
        }
    }
}

/// Checks of a put against the store, done before anything is written.
fn check_put_state<R: KvRead>(r: &R, p: &PutRequest) -> Result<(), ApiError> {
    if p.ignore_value || p.ignore_lease {
        let cur = r.range_kv(&KeyRange::new(&p.key, b""), RangeOptions::default())?;
        if cur.kvs.is_empty() {
            return Err(ApiError::KeyNotFound);
        }
    }
    if p.lease != 0 && r.lease_granted_ttl(p.lease)?.is_none() {
        return Err(ApiError::LeaseNotFound);
    }
    Ok(())
}

fn check_range_state<R: KvRead>(r: &R, q: &RangeRequest) -> Result<(), ApiError> {
    if q.revision > r.current_revision() {
        return Err(ApiError::FutureRevision);
    }
    if q.revision > 0 && q.revision < r.compacted_revision() {
        return Err(ApiError::Compacted);
    }
    Ok(())
}

fn put(w: &mut WriteTxn, p: &PutRequest) -> Result<PutResponse, ApiError> {
    let cur = w.range(&KeyRange::new(&p.key, b""), RangeOptions::default())?;
    let prev = cur.kvs.into_iter().next();
    let value = match (&prev, p.ignore_value) {
        (Some(prev), true) => prev.value.clone(),
        _ => p.value.clone(),
    };
    let lease = match (&prev, p.ignore_lease) {
        (Some(prev), true) => prev.lease,
        _ => p.lease,
    };
    w.put(&p.key, value, lease)?;
    Ok(PutResponse {
        header: header(w.revision()),
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

fn delete_range(w: &mut WriteTxn, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, ApiError> {
    let deleted = w.delete_range(&KeyRange::new(&d.key, &d.range_end))?;
    Ok(DeleteRangeResponse {
        header: header(w.revision()),
        deleted: deleted.len() as i64,
        prev_kvs: if d.prev_kv { deleted } else { Vec::new() },
    })
}

fn compaction(w: &mut WriteTxn, c: &CompactionRequest) -> Result<CompactionResponse, ApiError> {
    w.compact(c.revision)?;
    Ok(CompactionResponse {
        header: header(w.revision()),
    })
}

/// Which branch each txn takes: decided for the whole tree, nested txns
/// included, on the state before the txn writes anything (as etcd does).
struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

fn compare_path<R: KvRead>(r: &R, t: &TxnRequest) -> Result<TxnPath, ApiError> {
    let mut succeeded = true;
    for c in &t.compare {
        if !compare_holds(r, c)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &t.success } else { &t.failure };
    let mut nested = Vec::new();
    for op in ops {
        if let Some(request_op::Request::RequestTxn(n)) = &op.request {
            nested.push(compare_path(r, n)?);
        }
    }
    Ok(TxnPath { succeeded, nested })
}

fn compare_holds<R: KvRead>(r: &R, c: &Compare) -> Result<bool, ApiError> {
    let res = r.range_kv(
        &KeyRange::new(&c.key, &c.range_end),
        RangeOptions::default(),
    )?;
    if res.kvs.is_empty() {
        // A missing key has version, revisions and lease 0, and no value.
        if c.target == compare::CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(res.kvs.iter().all(|kv| compare_kv(c, kv)))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    use std::cmp::Ordering;
    // A target value set for another field than the compare's target counts
    // as zero (or empty), and an unknown target compares equal, as in etcd.
    let number = |v: Option<i64>| v.unwrap_or(0);
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Ok(CompareTarget::Version) => kv.version.cmp(&number(match c.target_union {
            Some(TargetUnion::Version(v)) => Some(v),
            _ => None,
        })),
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&number(match c.target_union {
            Some(TargetUnion::CreateRevision(v)) => Some(v),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&number(match c.target_union {
            Some(TargetUnion::ModRevision(v)) => Some(v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&number(match c.target_union {
            Some(TargetUnion::Lease(v)) => Some(v),
            _ => None,
        })),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        // etcd treats an unknown compare result as satisfied.
        Err(_) => true,
    }
}

fn check_path<R: KvRead>(r: &R, t: &TxnRequest, path: &TxnPath) -> Result<(), ApiError> {
    let ops = if path.succeeded {
        &t.success
    } else {
        &t.failure
    };
    let mut nested = path.nested.iter();
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(q)) => check_range_state(r, q)?,
            Some(request_op::Request::RequestPut(p)) => check_put_state(r, p)?,
            Some(request_op::Request::RequestTxn(n)) => {
                let p = nested
                    .next()
                    .ok_or_else(|| ApiError::Internal("txn path out of step".into()))?;
                check_path(r, n, p)?;
            }
            Some(request_op::Request::RequestDeleteRange(_)) | None => {}
        }
    }
    Ok(())
}

fn txn(w: &mut WriteTxn, t: &TxnRequest) -> Result<TxnResponse, ApiError> {
    let path = compare_path(w, t)?;
    check_path(w, t, &path)?;
    apply_path(w, t, &path)
}

fn apply_path(w: &mut WriteTxn, t: &TxnRequest, path: &TxnPath) -> Result<TxnResponse, ApiError> {
    let ops: &[RequestOp] = if path.succeeded {
        &t.success
    } else {
        &t.failure
    };
    let mut nested = path.nested.iter();
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(q)) => {
                response_op::Response::ResponseRange(range(w, q)?)
            }
            Some(request_op::Request::RequestPut(p)) => {
                response_op::Response::ResponsePut(put(w, p)?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(delete_range(w, d)?)
            }
            Some(request_op::Request::RequestTxn(n)) => {
                let p = nested
                    .next()
                    .ok_or_else(|| ApiError::Internal("txn path out of step".into()))?;
                response_op::Response::ResponseTxn(apply_path(w, n, p)?)
            }
            None => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: header(w.revision()),
        succeeded: path.succeeded,
        responses,
    })
}

/// Revokes a lease: its keys (`keys`, in key order) are deleted in one
/// revision, then the lease is removed.
pub fn apply_revoke(
    w: &mut WriteTxn,
    id: i64,
    keys: &[Vec<u8>],
) -> Result<WriteResponse, ApiError> {
    if w.lease_ttl(id)?.is_none() {
        return Err(ApiError::LeaseNotFound);
    }
    for key in keys {
        w.delete_range(&KeyRange::new(key, b""))?;
    }
    w.remove_lease(id)?;
    let revision = w.finish_revision()?;
    Ok(WriteResponse::LeaseRevoke(LeaseRevokeResponse {
        header: header(revision),
    }))
}

/// Whether a write adds data (refused while the NOSPACE alarm is raised;
/// deletes and compaction are what frees space, so they go through).
pub fn adds_data(req: &Request) -> bool {
    fn txn_puts(t: &TxnRequest) -> bool {
        t.success
            .iter()
            .chain(t.failure.iter())
            .any(|op| match &op.request {
                Some(request_op::Request::RequestPut(_)) => true,
                Some(request_op::Request::RequestTxn(n)) => txn_puts(n),
                _ => false,
            })
    }
    match req {
        Request::Put(_) | Request::LeaseGrant(_) => true,
        Request::Txn(t) => txn_puts(t),
        _ => false,
    }
}

/// A txn with no writes is served like a read, without sequencing.
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(t.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(n)) => txn_is_read_only(n),
            _ => false,
        })
}

/// A read-only txn whose every range asks for a serializable read may be
/// served from local state, as etcd does.
pub fn txn_is_serializable(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(t.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => r.serializable,
            Some(request_op::Request::RequestTxn(n)) => txn_is_serializable(n),
            None => true,
            _ => false,
        })
}

/// Serves a read-only txn from a snapshot.
pub fn read_only_txn<R: KvRead>(r: &R, t: &TxnRequest) -> Result<TxnResponse, ApiError> {
    let path = compare_path(r, t)?;
    check_path(r, t, &path)?;
    read_path(r, t, &path)
}

fn read_path<R: KvRead>(r: &R, t: &TxnRequest, path: &TxnPath) -> Result<TxnResponse, ApiError> {
    let ops: &[RequestOp] = if path.succeeded {
        &t.success
    } else {
        &t.failure
    };
    let mut nested = path.nested.iter();
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(q)) => {
                response_op::Response::ResponseRange(range(r, q)?)
            }
            Some(request_op::Request::RequestTxn(n)) => {
                let p = nested
                    .next()
                    .ok_or_else(|| ApiError::Internal("txn path out of step".into()))?;
                response_op::Response::ResponseTxn(read_path(r, n, p)?)
            }
            _ => return Err(ApiError::Internal("write in a read-only txn".into())),
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: header(r.current_revision()),
        succeeded: path.succeeded,
        responses,
    })
}
