//! Renderings of protobuf messages that appear inside many responses
//! (`ResponseHeader`, `mvccpb.KeyValue`, `Member`), for the simple, JSON and
//! fields formats, matching etcdctl's printers.

use std::io::Write;

use quorate_proto::etcdserverpb::{Member, ResponseHeader};
use quorate_proto::mvccpb::KeyValue;

use super::json::JsonObject;
use crate::exit::CtlError;
use crate::gofmt::{hex_escaped, quote};

/// `ResponseHeader` as JSON; `None` when absent (Go omits a nil pointer).
pub fn header_json(h: &Option<ResponseHeader>) -> Option<String> {
    h.as_ref().map(|h| {
        JsonObject::new()
            .u64("cluster_id", h.cluster_id)
            .u64("member_id", h.member_id)
            .i64("revision", h.revision)
            .u64("raft_term", h.raft_term)
            .finish()
    })
}

/// `ResponseHeader` as JSON with `--hex`: cluster and member IDs as hex
/// strings (etcdctl does this for member responses only).
pub fn header_json_hex(h: &Option<ResponseHeader>) -> Option<String> {
    h.as_ref().map(|h| {
        JsonObject::new()
            .str_always("cluster_id", &format!("{:x}", h.cluster_id))
            .str_always("member_id", &format!("{:x}", h.member_id))
            .i64("revision", h.revision)
            .u64("raft_term", h.raft_term)
            .finish()
    })
}

/// `mvccpb.KeyValue` as JSON (key and value base64).
pub fn kv_json(kv: &KeyValue) -> String {
    JsonObject::new()
        .bytes("key", &kv.key)
        .i64("create_revision", kv.create_revision)
        .i64("mod_revision", kv.mod_revision)
        .i64("version", kv.version)
        .bytes("value", &kv.value)
        .i64("lease", kv.lease)
        .finish()
}

/// `Member` as JSON; with `hex` the ID is a hex string.
pub fn member_json(m: &Member, hex: bool) -> String {
    let mut o = JsonObject::new();
    if hex {
        o.str_always("ID", &format!("{:x}", m.id));
    } else {
        o.u64("ID", m.id);
    }
    o.str("name", &m.name)
        .strs("peerURLs", &m.peer_ur_ls)
        .strs("clientURLs", &m.client_ur_ls)
        .bool("isLearner", m.is_learner)
        .finish()
}

/// The `fields` header block.
pub fn header_fields(w: &mut dyn Write, h: &Option<ResponseHeader>) -> Result<(), CtlError> {
    let h = h.unwrap_or_default();
    writeln!(w, "\"ClusterID\" : {}", h.cluster_id)?;
    writeln!(w, "\"MemberID\" : {}", h.member_id)?;
    writeln!(w, "\"Revision\" : {}", h.revision)?;
    writeln!(w, "\"RaftTerm\" : {}", h.raft_term)?;
    Ok(())
}

/// The `fields` block of one key-value, names prefixed with `pfx`.
pub fn kv_fields(w: &mut dyn Write, pfx: &str, kv: &KeyValue) -> Result<(), CtlError> {
    writeln!(w, "\"{pfx}Key\" : {}", quote(&kv.key))?;
    writeln!(w, "\"{pfx}CreateRevision\" : {}", kv.create_revision)?;
    writeln!(w, "\"{pfx}ModRevision\" : {}", kv.mod_revision)?;
    writeln!(w, "\"{pfx}Version\" : {}", kv.version)?;
    writeln!(w, "\"{pfx}Value\" : {}", quote(&kv.value))?;
    writeln!(w, "\"{pfx}Lease\" : {}", kv.lease)?;
    Ok(())
}

/// etcdctl's `printKV`: the key line (unless `value_only`) and the value
/// line, raw bytes or `\x..` with `--hex`.
pub fn kv_simple(
    w: &mut dyn Write,
    hex: bool,
    value_only: bool,
    kv: &KeyValue,
) -> Result<(), CtlError> {
    if !value_only {
        write_bytes_line(w, hex, &kv.key)?;
    }
    write_bytes_line(w, hex, &kv.value)
}

fn write_bytes_line(w: &mut dyn Write, hex: bool, b: &[u8]) -> Result<(), CtlError> {
    if hex {
        w.write_all(hex_escaped(b).as_bytes())?;
    } else {
        w.write_all(b)?;
    }
    w.write_all(b"\n")?;
    Ok(())
}

/// Go's `fmt.Println` rendering of a `[]string`: `[a b c]`.
pub fn go_string_slice(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_kv_json() {
        let h = Some(ResponseHeader {
            cluster_id: 324952591200643719,
            member_id: 3319814642761637952,
            revision: 0,
            raft_term: 2,
        });
        assert_eq!(
            header_json(&h).as_deref(),
            Some(
                r#"{"cluster_id":324952591200643719,"member_id":3319814642761637952,"raft_term":2}"#
            )
        );
        assert_eq!(
            header_json_hex(&h).as_deref(),
            Some(
                r#"{"cluster_id":"48276a8f75b6a87","member_id":"2e1259d415f2a040","raft_term":2}"#
            )
        );
        let kv = KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 11,
            version: 10,
            value: b"bar6".to_vec(),
            lease: 0,
        };
        assert_eq!(
            kv_json(&kv),
            r#"{"key":"Zm9v","create_revision":2,"mod_revision":11,"version":10,"value":"YmFyNg=="}"#
        );
    }
}
