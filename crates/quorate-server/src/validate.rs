//! Stateless request checks done before a request is sequenced, as etcd's
//! gRPC layer does them. Anything that needs the store is checked in apply.

use quorate_mvcc::KeyRange;
use quorate_proto::etcdserverpb::{
    range_request, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

use crate::error::ApiError;

pub fn check_range(r: &RangeRequest) -> Result<(), ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if range_request::SortOrder::try_from(r.sort_order).is_err() {
        return Err(ApiError::InvalidArgument(
            "etcdserver: invalid sort option".into(),
        ));
    }
    if range_request::SortTarget::try_from(r.sort_target).is_err() {
        return Err(ApiError::InvalidArgument(
            "etcdserver: invalid sort option".into(),
        ));
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(ApiError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ApiError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete_range(r: &DeleteRangeRequest) -> Result<(), ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    Ok(())
}

pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), ApiError> {
    // The widest part of this txn uses up budget its nested txns can't have.
    let width = r.compare.len().max(r.success.len()).max(r.failure.len());
    if width > max_txn_ops {
        return Err(ApiError::TooManyOps);
    }
    for c in &r.compare {
        check_compare(c)?;
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        check_op(op, max_txn_ops - width)?;
    }
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_compare(c: &Compare) -> Result<(), ApiError> {
    // Unknown compare results and targets are not refused: etcd evaluates
    // them (see apply::compare_kv).
    if c.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_txn_ops: usize) -> Result<(), ApiError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_range(r),
        Some(request_op::Request::RequestPut(r)) => check_put(r),
        Some(request_op::Request::RequestDeleteRange(r)) => check_delete_range(r),
        Some(request_op::Request::RequestTxn(r)) => check_txn(r, max_txn_ops),
        // etcd answers an op with no request set this way.
        None => Err(ApiError::KeyNotFound),
    }
}

/// Writes of one branch (and the nested branches that may run with it):
/// a key may be put at most once, and never inside a range the same branch
/// deletes. Sibling success/failure branches of a nested txn never both run,
/// so they may overlap each other but not the enclosing branch.
fn check_intervals(ops: &[RequestOp]) -> Result<(Vec<KeyRange>, Vec<Vec<u8>>), ApiError> {
    let mut dels: Vec<KeyRange> = Vec::new();
    let mut puts: Vec<Vec<u8>> = Vec::new();
    for op in ops {
        if let Some(request_op::Request::RequestTxn(t)) = &op.request {
            let (sdels, sputs) = check_intervals(&t.success)?;
            let (fdels, fputs) = check_intervals(&t.failure)?;
            for k in sputs.iter().chain(fputs.iter()) {
                if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                    return Err(ApiError::DuplicateKey);
                }
            }
            // Both branches' keys now belong to this branch.
            let mut merged = sputs;
            for k in fputs {
                if !merged.contains(&k) {
                    merged.push(k);
                }
            }
            puts.extend(merged);
            dels.extend(sdels);
            dels.extend(fdels);
        }
    }
    for op in ops {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            let range = KeyRange::new(&d.key, &d.range_end);
            if puts.iter().any(|k| range.contains(k)) {
                return Err(ApiError::DuplicateKey);
            }
            dels.push(range);
        }
    }
    for op in ops {
        if let Some(request_op::Request::RequestPut(p)) = &op.request {
            if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
                return Err(ApiError::DuplicateKey);
            }
            puts.push(p.key.clone());
        }
    }
    Ok((dels, puts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.into(),
                    range_end: end.into(),
                    ..Default::default()
                },
            )),
        }
    }
    fn get(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_puts_and_put_inside_deleted_range_are_refused() {
        assert_eq!(
            check_txn(&txn(vec![put("a"), put("a")], vec![]), 128),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![put("b"), del("a", "c")], vec![]), 128),
            Err(ApiError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![put("a"), get("a")], vec![]), 128),
            Ok(())
        );
        assert_eq!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![del("a", "c"), del("b", "d")], vec![]), 128),
            Ok(())
        );
    }

    #[test]
    fn nested_txn_keys_conflict_with_the_enclosing_branch_only() {
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(txn(
                vec![put("a")],
                vec![put("a")],
            ))),
        };
        assert_eq!(check_txn(&txn(vec![nested.clone()], vec![]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![nested, put("a")], vec![]), 128),
            Err(ApiError::DuplicateKey)
        );
    }

    #[test]
    fn too_many_ops_is_refused() {
        let ops: Vec<RequestOp> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check_txn(&txn(ops, vec![]), 128), Err(ApiError::TooManyOps));
    }
}
