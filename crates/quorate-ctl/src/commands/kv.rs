//! Key-value commands: `put`, `get`, `del`.
//!
//! Argument handling follows etcdctl's `getPutOp`/`getGetOp`/`getDelOp`
//! (same checks, messages and exit codes), request building follows the Go
//! client's option helpers (prefix range ends, sort defaults), and the
//! printers reproduce etcdctl's simple/json/protobuf/fields output.

use std::io::Read;

use prost::Message as _;
use quorate_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use quorate_proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
};

use super::Env;
use std::ffi::OsString;

use crate::cli::{arg_bytes, DelArgs, GetArgs, PutArgs};
use crate::client::{self, request, unary};
use crate::exit::CtlError;
use crate::gofmt::parse_int;
use crate::output::json::JsonObject;
use crate::output::messages::{header_fields, header_json, kv_fields, kv_json, kv_simple};
use crate::output::{Out, OutputFormat, Printer, Render, ALL_BUT_TABLE};

/// `put`.
pub async fn put(a: PutArgs, env: &mut Env<'_>) -> Result<(), CtlError> {
    let req = put_request(&a, env.stdin)?;
    let printer = env.printer()?;
    printer.check::<PutResponse>()?;
    let timeout = env.cfg.command_timeout;
    let ch = client::dial_any(&env.cfg).await?;
    let resp = unary(timeout, client::kv(ch).put(request(req, timeout))).await?;
    printer.print(&resp, &mut env.out)
}

/// `get`.
pub async fn get(a: GetArgs, env: &mut Env<'_>) -> Result<(), CtlError> {
    let req = get_request(&a)?;
    let mut printer = env.printer()?;
    if a.count_only && printer.format != OutputFormat::Fields {
        return Err(CtlError::bad_args(
            "--count-only is only for `--write-out=fields`",
        ));
    }
    if a.print_value_only {
        printer.require_simple("print-value-only")?;
        printer.value_only = true;
    }
    printer.check::<RangeResponse>()?;
    let timeout = env.cfg.command_timeout;
    let ch = client::dial_any(&env.cfg).await?;
    let resp = unary(timeout, client::kv(ch).range(request(req, timeout))).await?;
    printer.print(&resp, &mut env.out)
}

/// `del`.
pub async fn del(a: DelArgs, env: &mut Env<'_>) -> Result<(), CtlError> {
    let req = del_request(&a)?;
    let printer = env.printer()?;
    printer.check::<DeleteRangeResponse>()?;
    let timeout = env.cfg.command_timeout;
    let ch = client::dial_any(&env.cfg).await?;
    let resp = unary(timeout, client::kv(ch).delete_range(request(req, timeout))).await?;
    printer.print(&resp, &mut env.out)
}

/// etcdctl's `getPutOp`: key, value (argument or all of stdin), options.
pub fn put_request(a: &PutArgs, stdin: &mut dyn Read) -> Result<PutRequest, CtlError> {
    const NEEDS_ARGS: &str = "put command needs 1 argument and input from stdin or 2 arguments";
    let Some(key) = a.args.first() else {
        return Err(CtlError::bad_args(NEEDS_ARGS));
    };
    if a.ignore_value && a.args.len() > 1 {
        return Err(CtlError::bad_args(
            "put command needs only 1 argument when 'ignore-value' is set",
        ));
    }
    let mut value = Vec::new();
    if !a.ignore_value {
        match a.args.get(1) {
            Some(v) => value = arg_bytes(v),
            None => {
                if stdin.read_to_end(&mut value).is_err() || value.is_empty() {
                    return Err(CtlError::bad_args(NEEDS_ARGS));
                }
            }
        }
    }
    let lease = parse_int(&a.lease, 16)
        .map_err(|e| CtlError::bad_args(format!("bad lease ID ({e}), expecting ID in Hex")))?;
    Ok(PutRequest {
        key: arg_bytes(key),
        value,
        lease,
        prev_kv: a.prev_kv,
        ignore_value: a.ignore_value,
        ignore_lease: a.ignore_lease,
    })
}

/// The Go client's `GetPrefixRangeEnd`: the key after every key with this
/// prefix, or `\0` (to the end of the keyspace) when there is none.
pub fn prefix_range_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Applies `--prefix` / `--from-key` / an explicit range end to the key,
/// as etcdctl does (an empty key with either flag means "all keys").
fn key_range(
    args: &[OsString],
    prefix: bool,
    from_key: bool,
) -> Result<(Vec<u8>, Vec<u8>), CtlError> {
    let mut key = args.first().map(arg_bytes).unwrap_or_default();
    let mut range_end = Vec::new();
    if let Some(end) = args.get(1) {
        if prefix || from_key {
            return Err(CtlError::bad_args(
                "too many arguments, only accept one argument when `--prefix` or `--from-key` is set",
            ));
        }
        range_end = arg_bytes(end);
    }
    if prefix {
        if key.is_empty() {
            key = vec![0];
            range_end = vec![0];
        } else {
            range_end = prefix_range_end(&key);
        }
    }
    if from_key {
        if key.is_empty() {
            key = vec![0];
        }
        range_end = vec![0];
    }
    Ok((key, range_end))
}

/// etcdctl's `getGetOp`.
pub fn get_request(a: &GetArgs) -> Result<RangeRequest, CtlError> {
    if a.args.is_empty() {
        return Err(CtlError::bad_args(
            "get command needs one argument as key and an optional argument as range_end",
        ));
    }
    if a.prefix && a.from_key {
        return Err(CtlError::bad_args(
            "`--prefix` and `--from-key` cannot be set at the same time, choose one",
        ));
    }
    if a.keys_only && a.count_only {
        return Err(CtlError::bad_args(
            "`--keys-only` and `--count-only` cannot be set at the same time, choose one",
        ));
    }
    let serializable = match a.consistency.as_str() {
        "s" => true,
        "l" => false,
        other => {
            return Err(CtlError::bad_feature(format!(
                "unknown consistency flag {}",
                crate::gofmt::quote(other.as_bytes())
            )))
        }
    };
    let (key, range_end) = key_range(&a.args, a.prefix, a.from_key)?;

    let order = match a.order.to_uppercase().as_str() {
        "ASCEND" => SortOrder::Ascend,
        "DESCEND" => SortOrder::Descend,
        "" => SortOrder::None,
        _ => return Err(CtlError::bad_feature(format!("bad sort order {}", a.order))),
    };
    let target = match a.sort_by.to_uppercase().as_str() {
        "CREATE" => SortTarget::Create,
        "KEY" | "" => SortTarget::Key,
        "MODIFY" => SortTarget::Mod,
        "VALUE" => SortTarget::Value,
        "VERSION" => SortTarget::Version,
        _ => {
            return Err(CtlError::bad_feature(format!(
                "bad sort target {}",
                a.sort_by
            )))
        }
    };
    // The Go client drops ASCEND-by-KEY: the server returns that order anyway,
    // and an explicit order would make it fetch the whole range to sort.
    let order = if target == SortTarget::Key && order == SortOrder::Ascend {
        SortOrder::None
    } else {
        order
    };

    Ok(RangeRequest {
        key,
        range_end,
        limit: a.limit,
        revision: a.rev.max(0),
        sort_order: order as i32,
        sort_target: target as i32,
        serializable,
        keys_only: a.keys_only,
        count_only: a.count_only,
        min_mod_revision: a.min_mod_revision,
        max_mod_revision: a.max_mod_revision,
        min_create_revision: a.min_create_revision,
        max_create_revision: a.max_create_revision,
    })
}

/// etcdctl's `getDelOp`.
pub fn del_request(a: &DelArgs) -> Result<DeleteRangeRequest, CtlError> {
    if a.args.is_empty() || a.args.len() > 2 {
        return Err(CtlError::bad_args(
            "del command needs one argument as key and an optional argument as range_end",
        ));
    }
    if a.prefix && a.from_key {
        return Err(CtlError::bad_args(
            "`--prefix` and `--from-key` cannot be set at the same time, choose one",
        ));
    }
    let (key, range_end) = key_range(&a.args, a.prefix, a.from_key)?;
    Ok(DeleteRangeRequest {
        key,
        range_end,
        prev_kv: a.prev_kv,
    })
}

impl Render for PutResponse {
    const FORMATS: &'static [OutputFormat] = ALL_BUT_TABLE;

    fn simple(&self, p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        writeln!(out.stdout, "OK")?;
        if let Some(kv) = &self.prev_kv {
            kv_simple(out.stdout, p.hex, false, kv)?;
        }
        Ok(())
    }

    fn json(&self, _p: &Printer) -> Result<String, CtlError> {
        Ok(JsonObject::new()
            .object("header", header_json(&self.header))
            .object("prev_kv", self.prev_kv.as_ref().map(kv_json))
            .finish())
    }

    fn protobuf(&self) -> Result<Vec<u8>, CtlError> {
        Ok(self.encode_to_vec())
    }

    fn fields(&self, _p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        header_fields(out.stdout, &self.header)?;
        if let Some(kv) = &self.prev_kv {
            kv_fields(out.stdout, "Prev", kv)?;
        }
        Ok(())
    }
}

impl Render for RangeResponse {
    const FORMATS: &'static [OutputFormat] = ALL_BUT_TABLE;

    fn simple(&self, p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        for kv in &self.kvs {
            kv_simple(out.stdout, p.hex, p.value_only, kv)?;
        }
        Ok(())
    }

    fn json(&self, _p: &Printer) -> Result<String, CtlError> {
        Ok(JsonObject::new()
            .object("header", header_json(&self.header))
            .array("kvs", self.kvs.iter().map(kv_json).collect())
            .bool("more", self.more)
            .i64("count", self.count)
            .finish())
    }

    fn protobuf(&self) -> Result<Vec<u8>, CtlError> {
        Ok(self.encode_to_vec())
    }

    fn fields(&self, _p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        header_fields(out.stdout, &self.header)?;
        for kv in &self.kvs {
            kv_fields(out.stdout, "", kv)?;
        }
        writeln!(out.stdout, "\"More\" : {}", self.more)?;
        writeln!(out.stdout, "\"Count\" : {}", self.count)?;
        Ok(())
    }
}

impl Render for DeleteRangeResponse {
    const FORMATS: &'static [OutputFormat] = ALL_BUT_TABLE;

    fn simple(&self, p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        writeln!(out.stdout, "{}", self.deleted)?;
        for kv in &self.prev_kvs {
            kv_simple(out.stdout, p.hex, false, kv)?;
        }
        Ok(())
    }

    fn json(&self, _p: &Printer) -> Result<String, CtlError> {
        Ok(JsonObject::new()
            .object("header", header_json(&self.header))
            .i64("deleted", self.deleted)
            .array("prev_kvs", self.prev_kvs.iter().map(kv_json).collect())
            .finish())
    }

    fn protobuf(&self) -> Result<Vec<u8>, CtlError> {
        Ok(self.encode_to_vec())
    }

    fn fields(&self, _p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        header_fields(out.stdout, &self.header)?;
        writeln!(out.stdout, "\"Deleted\" : {}", self.deleted)?;
        for kv in &self.prev_kvs {
            kv_fields(out.stdout, "Prev", kv)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end() {
        assert_eq!(prefix_range_end(b"foo"), b"fop".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
    }

    fn get_args(args: &[&str]) -> GetArgs {
        GetArgs {
            args: args.iter().map(OsString::from).collect(),
            consistency: "l".into(),
            order: String::new(),
            sort_by: String::new(),
            limit: 0,
            prefix: false,
            from_key: false,
            rev: 0,
            keys_only: false,
            count_only: false,
            print_value_only: false,
            min_mod_revision: 0,
            max_mod_revision: 0,
            min_create_revision: 0,
            max_create_revision: 0,
        }
    }

    #[test]
    fn get_options_like_go_client() {
        let mut a = get_args(&[""]);
        a.prefix = true;
        let r = get_request(&a).unwrap_or_default();
        assert_eq!((r.key, r.range_end), (vec![0], vec![0]));

        let mut a = get_args(&["k"]);
        a.order = "ascend".into();
        let r = get_request(&a).unwrap_or_default();
        assert_eq!(
            r.sort_order,
            SortOrder::None as i32,
            "ASCEND by KEY is dropped"
        );

        let mut a = get_args(&["k"]);
        a.sort_by = "modify".into();
        let r = get_request(&a).unwrap_or_default();
        assert_eq!(r.sort_target, SortTarget::Mod as i32);

        let mut a = get_args(&["k"]);
        a.order = "sideways".into();
        assert_eq!(
            get_request(&a).map_err(|e| e.code),
            Err(crate::exit::BAD_FEATURE)
        );

        let mut a = get_args(&["a", "b"]);
        a.from_key = true;
        assert_eq!(
            get_request(&a).map_err(|e| e.code),
            Err(crate::exit::BAD_ARGS)
        );
    }

    #[test]
    fn put_reads_stdin_only_without_value() {
        let a = PutArgs {
            args: vec![OsString::from("k")],
            lease: "0".into(),
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        };
        let mut stdin: &[u8] = b"line\n";
        let r = put_request(&a, &mut stdin).unwrap_or_default();
        assert_eq!(r.value, b"line\n".to_vec());
        let mut empty: &[u8] = b"";
        assert_eq!(
            put_request(&a, &mut empty).map_err(|e| e.code),
            Err(crate::exit::BAD_ARGS)
        );
    }
}
