//! `watch [options] [key or prefix] [range_end] [--] [exec-command arg1 arg2 ...]`.
//!
//! Follows etcdctl's `watch_command.go` and the Go client's watcher: the
//! key may come from `ETCDCTL_WATCH_KEY`/`ETCDCTL_WATCH_RANGE_END`; the
//! created notification is not printed; a progress notification prints
//! `progress notify: REV`; after a transport error the watch is re-created
//! from the revision after the last one seen; when the server cancels the
//! watch the command exits 5 with "watch is canceled by the server". With a
//! command after `--`, it runs once per event with `ETCD_WATCH_*` set.
//! `-i/--interactive` is not supported.

use std::ffi::OsString;
use std::time::Duration;

use clap::{ArgAction, Args};
use futures::StreamExt as _;
use prost::Message as _;
use quorate_proto::etcdserverpb::watch_client::WatchClient;
use quorate_proto::etcdserverpb::watch_request::RequestUnion;
use quorate_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use quorate_proto::mvccpb::event::EventType;
use quorate_proto::mvccpb::Event;

use super::kv::prefix_range_end;
use super::Env;
use crate::cli::arg_bytes;
use crate::client;
use crate::exit::{status_message, CtlError, INTERRUPTED};
use crate::gofmt::{parse_bool, parse_i64, quote};
use crate::output::json::{array, JsonObject};
use crate::output::messages::{header_fields, header_json, kv_fields, kv_json, kv_simple};
use crate::output::{Out, OutputFormat, Printer, Render, ALL_BUT_TABLE};

/// `watch` flags and arguments.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[arg(value_name = "KEY [RANGE_END]", value_parser = clap::value_parser!(OsString))]
    pub args: Vec<OsString>,

    /// Command to run for each event, after `--`
    #[arg(last = true, value_name = "EXEC_COMMAND", value_parser = clap::value_parser!(OsString))]
    pub exec: Vec<OsString>,

    /// Interactive mode (not supported by quoratectl)
    #[arg(short = 'i', long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub interactive: bool,

    /// Watch on a prefix if prefix is set
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub prefix: bool,

    /// Revision to start watching
    #[arg(long, default_value = "0", value_parser = parse_i64, allow_negative_numbers = true)]
    pub rev: i64,

    /// get the previous key-value pair before the event happens
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub prev_kv: bool,

    /// get periodic watch progress notification from server
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub progress_notify: bool,
}

const BAD_ARGS_NUM: &str = "bad number of arguments";
const BAD_ARGS_NUM_CONFLICT_ENV: &str =
    "bad number of arguments (found conflicting environment key)";
const BAD_ARGS_NUM_SEPARATOR: &str =
    "bad number of arguments (found separator --, but no commands)";

/// What to watch and what to run per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchTarget {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub exec: Vec<OsString>,
}

/// Whether the process arguments end in a `--` after `watch` (clap drops an
/// empty `--`; etcdctl rejects `watch foo --`, looking at `os.Args` too).
fn trailing_separator() -> bool {
    let args: Vec<OsString> = std::env::args_os().collect();
    let after_watch = args.iter().position(|a| a == "watch").map(|i| i + 1);
    matches!(after_watch, Some(i) if i < args.len() && args.last().is_some_and(|a| a == "--"))
}

/// etcdctl's `parseWatchArgs` + `getWatchChan` checks, with the
/// `ETCDCTL_WATCH_KEY` / `ETCDCTL_WATCH_RANGE_END` values given.
pub fn watch_target(
    a: &WatchArgs,
    env_key: &[u8],
    env_range: &[u8],
    trailing_sep: bool,
) -> Result<WatchTarget, CtlError> {
    if env_key.is_empty() && !env_range.is_empty() {
        return Err(CtlError::bad_args(format!(
            "ETCDCTL_WATCH_KEY is empty but got ETCDCTL_WATCH_RANGE_END={}",
            quote(env_range)
        )));
    }
    if a.interactive {
        return Err(CtlError::bad_feature(
            "interactive watch (-i) is not supported by quoratectl",
        ));
    }
    if trailing_sep && a.exec.is_empty() {
        return Err(CtlError::bad_args(BAD_ARGS_NUM_SEPARATOR));
    }
    let mut args: Vec<Vec<u8>> = a.args.iter().map(arg_bytes).collect();
    if !env_key.is_empty() {
        if !args.is_empty() {
            return Err(CtlError::bad_args(BAD_ARGS_NUM_CONFLICT_ENV));
        }
        args.push(env_key.to_vec());
        if !env_range.is_empty() {
            args.push(env_range.to_vec());
        }
    }
    let Some(key) = args.first().cloned() else {
        return Err(CtlError::bad_args(BAD_ARGS_NUM));
    };
    let mut range_end = Vec::new();
    // Like etcdctl, a third argument is ignored and the range end only
    // applies with exactly two.
    if args.len() == 2 {
        if a.prefix {
            return Err(CtlError::bad_args(
                "`range_end` and `--prefix` are mutually exclusive",
            ));
        }
        range_end = args[1].clone();
    }
    let mut key = key;
    if a.prefix {
        if key.is_empty() {
            key = vec![0];
            range_end = vec![0];
        } else {
            range_end = prefix_range_end(&key);
        }
    }
    Ok(WatchTarget {
        key,
        range_end,
        exec: a.exec.clone(),
    })
}

fn env_bytes(name: &str) -> Vec<u8> {
    std::env::var_os(name)
        .map(|v| arg_bytes(&v))
        .unwrap_or_default()
}

/// How a watch stream ended.
enum StreamEnd {
    /// Transport trouble: re-create the watch.
    Retry,
    /// The server canceled the watch or a non-retryable error happened.
    Canceled,
}

/// Errors the Go client retries (`isHaltErr` is false), except "no leader".
fn retryable(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(s.code(), Code::Unavailable | Code::Internal | Code::Unknown)
        && s.message() != "etcdserver: no leader"
}

/// `watch`.
pub async fn watch(a: WatchArgs, env: &mut Env<'_>) -> Result<(), CtlError> {
    let target = watch_target(
        &a,
        &env_bytes("ETCDCTL_WATCH_KEY"),
        &env_bytes("ETCDCTL_WATCH_RANGE_END"),
        trailing_separator(),
    )?;
    let printer = env.printer()?;
    printer.check::<WatchEvents>()?;
    let ch = client::dial_any(&env.cfg).await?;
    let mut wc = WatchClient::new(ch).max_decoding_message_size(i32::MAX as usize);

    let mut next_rev = a.rev;
    loop {
        let create = WatchCreateRequest {
            key: target.key.clone(),
            range_end: target.range_end.clone(),
            start_revision: next_rev,
            progress_notify: a.progress_notify,
            prev_kv: a.prev_kv,
            ..Default::default()
        };
        let req = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        };
        // Keep the request stream open: closing it would end the watch.
        let outbound = futures::stream::iter([req]).chain(futures::stream::pending());
        let mut request = tonic::Request::new(outbound);
        // clientv3.WithRequireLeader
        request.metadata_mut().insert(
            "hasleader",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let end = match wc.watch(request).await {
            Err(s) if retryable(&s) => StreamEnd::Retry,
            Err(s) => {
                close_err(&status_message(&s), &printer, &mut env.out)?;
                StreamEnd::Canceled
            }
            Ok(resp) => {
                let mut inbound = resp.into_inner();
                serve(&mut inbound, &mut next_rev, &target, &printer, &mut env.out).await?
            }
        };
        match end {
            StreamEnd::Canceled => {
                return Err(CtlError::new(
                    INTERRUPTED,
                    "watch is canceled by the server",
                ))
            }
            StreamEnd::Retry => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Prints one stream's responses until it ends.
async fn serve(
    inbound: &mut tonic::Streaming<WatchResponse>,
    next_rev: &mut i64,
    target: &WatchTarget,
    printer: &Printer,
    out: &mut Out<'_>,
) -> Result<StreamEnd, CtlError> {
    loop {
        let resp = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(StreamEnd::Retry),
            Err(s) if retryable(&s) => return Ok(StreamEnd::Retry),
            Err(s) => {
                close_err(&status_message(&s), printer, out)?;
                return Ok(StreamEnd::Canceled);
            }
        };
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        if resp.created && !resp.canceled {
            // Not shown (no WithCreatedNotify); a resumed watch starts after
            // the revision it was created at.
            if *next_rev == 0 {
                *next_rev = rev + 1;
            }
            continue;
        }
        if resp.canceled {
            // The Go client passes compaction on to the user; other
            // cancellations just close the channel.
            if resp.compact_revision != 0 {
                writeln!(
                    out.stderr,
                    "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
                )?;
                printer.print(&WatchEvents::from_server(resp), out)?;
                out.stdout.flush()?;
            } else if resp.created {
                writeln!(out.stderr, "watch was canceled ({})", cancel_reason(&resp))?;
            }
            return Ok(StreamEnd::Canceled);
        }
        let progress = resp.events.is_empty() && resp.compact_revision == 0 && rev != 0;
        if progress {
            writeln!(out.stdout, "progress notify: {rev}")?;
            *next_rev = (*next_rev).max(rev + 1);
        }
        if let Some(last) = resp.events.last() {
            if let Some(kv) = &last.kv {
                *next_rev = kv.mod_revision + 1;
            }
        }
        let events = WatchEvents::from_server(resp);
        printer.print(&events, out)?;
        out.stdout.flush()?;
        if !target.exec.is_empty() {
            for ev in &events.resp.events {
                run_exec(&target.exec, rev, ev, out)?;
            }
        }
    }
}

/// The Go client's `WatchResponse.Err()` text for a server cancellation.
fn cancel_reason(resp: &WatchResponse) -> String {
    let r = &resp.cancel_reason;
    if r.is_empty() {
        "etcdserver: mvcc: required revision is a future revision".to_string()
    } else if r.starts_with("etcdserver: ") {
        r.clone()
    } else {
        format!("rpc error: code = FailedPrecondition desc = {r}")
    }
}

/// A watch closed by an error: the Go client hands etcdctl an empty
/// canceled response carrying the error.
fn close_err(msg: &str, printer: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
    writeln!(out.stderr, "watch was canceled ({msg})")?;
    let resp = WatchEvents {
        resp: WatchResponse {
            canceled: true,
            ..Default::default()
        },
        events_nil: true,
    };
    printer.print(&resp, out)?;
    out.stdout.flush()?;
    Ok(())
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quoted_slice(v: &[OsString]) -> String {
    let items: Vec<String> = v.iter().map(|a| quote(&arg_bytes(a))).collect();
    format!("[{}]", items.join(" "))
}

/// Runs the exec command for one event, as etcdctl does.
fn run_exec(exec: &[OsString], rev: i64, ev: &Event, out: &mut Out<'_>) -> Result<(), CtlError> {
    let kv = ev.kv.clone().unwrap_or_default();
    let ty = if ev.r#type == EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    };
    let mut cmd = std::process::Command::new(&exec[0]);
    cmd.args(&exec[1..])
        .env("ETCD_WATCH_REVISION", rev.to_string())
        .env("ETCD_WATCH_EVENT_TYPE", quote(ty.as_bytes()))
        .env("ETCD_WATCH_KEY", quote(&kv.key))
        .env("ETCD_WATCH_VALUE", quote(&kv.value));
    let err = match cmd.status() {
        Ok(st) if st.success() => return Ok(()),
        Ok(st) => match st.code() {
            Some(c) => format!("exit status {c}"),
            None => {
                use std::os::unix::process::ExitStatusExt as _;
                format!("signal: {}", st.signal().unwrap_or(0))
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!(
            "exec: {}: executable file not found in $PATH",
            quote(&arg_bytes(&exec[0]))
        ),
        Err(e) => e.to_string(),
    };
    writeln!(
        out.stderr,
        "command {} error ({err})",
        go_quoted_slice(exec)
    )?;
    Err(CtlError::silent(crate::exit::ERROR))
}

/// A `clientv3.WatchResponse` as etcdctl prints it.
pub struct WatchEvents {
    pub resp: WatchResponse,
    /// Responses the Go client makes up itself have a nil `Events`.
    pub events_nil: bool,
}

impl WatchEvents {
    pub fn from_server(resp: WatchResponse) -> Self {
        WatchEvents {
            resp,
            events_nil: false,
        }
    }
}

fn event_type_name(t: i32) -> &'static str {
    if t == EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    }
}

fn event_json(ev: &Event) -> String {
    let mut o = JsonObject::new();
    if ev.r#type != 0 {
        o.raw("type", &ev.r#type.to_string());
    }
    o.object("kv", ev.kv.as_ref().map(kv_json))
        .object("prev_kv", ev.prev_kv.as_ref().map(kv_json))
        .finish()
}

impl Render for WatchEvents {
    const FORMATS: &'static [OutputFormat] = ALL_BUT_TABLE;

    fn simple(&self, p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        for ev in &self.resp.events {
            writeln!(out.stdout, "{}", event_type_name(ev.r#type))?;
            if let Some(prev) = &ev.prev_kv {
                kv_simple(out.stdout, p.hex, false, prev)?;
            }
            kv_simple(out.stdout, p.hex, false, &ev.kv.clone().unwrap_or_default())?;
        }
        Ok(())
    }

    fn json(&self, _p: &Printer) -> Result<String, CtlError> {
        let r = &self.resp;
        let events = if self.events_nil {
            "null".to_string()
        } else {
            array(r.events.iter().map(event_json).collect())
        };
        Ok(JsonObject::new()
            .raw(
                "Header",
                &header_json(&r.header).unwrap_or_else(|| "{}".to_string()),
            )
            .raw("Events", &events)
            .raw("CompactRevision", &r.compact_revision.to_string())
            .bool_always("Canceled", r.canceled)
            .bool_always("Created", r.created)
            .finish())
    }

    fn protobuf(&self) -> Result<Vec<u8>, CtlError> {
        let r = &self.resp;
        Ok(WatchResponse {
            header: Some(r.header.unwrap_or_default()),
            events: r.events.clone(),
            compact_revision: r.compact_revision,
            canceled: r.canceled,
            created: r.created,
            ..Default::default()
        }
        .encode_to_vec())
    }

    fn fields(&self, _p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        header_fields(out.stdout, &self.resp.header)?;
        for ev in &self.resp.events {
            writeln!(out.stdout, "\"Type\" : {}", event_type_name(ev.r#type))?;
            if let Some(prev) = &ev.prev_kv {
                kv_fields(out.stdout, "Prev", prev)?;
            }
            kv_fields(out.stdout, "", &ev.kv.clone().unwrap_or_default())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::BAD_ARGS;

    fn args(pos: &[&str], exec: &[&str]) -> WatchArgs {
        WatchArgs {
            args: pos.iter().map(OsString::from).collect(),
            exec: exec.iter().map(OsString::from).collect(),
            interactive: false,
            prefix: false,
            rev: 0,
            prev_kv: false,
            progress_notify: false,
        }
    }

    fn err(r: Result<WatchTarget, CtlError>) -> (i32, String) {
        r.map(|_| (0, String::new()))
            .unwrap_or_else(|e| (e.code, e.message))
    }

    #[test]
    fn arguments_like_etcdctl() {
        assert_eq!(
            err(watch_target(&args(&[], &[]), b"", b"", false)),
            (BAD_ARGS, BAD_ARGS_NUM.to_string())
        );
        assert_eq!(
            err(watch_target(&args(&[], &["echo"]), b"", b"", false)),
            (BAD_ARGS, BAD_ARGS_NUM.to_string())
        );
        assert_eq!(
            err(watch_target(&args(&["a"], &[]), b"", b"", true)),
            (BAD_ARGS, BAD_ARGS_NUM_SEPARATOR.to_string())
        );
        assert_eq!(
            err(watch_target(&args(&["a"], &[]), b"k", b"", false)),
            (BAD_ARGS, BAD_ARGS_NUM_CONFLICT_ENV.to_string())
        );
        let mut p = args(&["a", "b"], &[]);
        p.prefix = true;
        assert_eq!(
            err(watch_target(&p, b"", b"", false)).0,
            BAD_ARGS,
            "range_end with --prefix"
        );
        let mut p = args(&["foo"], &["echo", "x"]);
        p.prefix = true;
        let t = watch_target(&p, b"", b"", false).ok();
        assert_eq!(
            t.map(|t| (t.key, t.range_end, t.exec.len())),
            Some((b"foo".to_vec(), b"fop".to_vec(), 2))
        );
        let t = watch_target(&args(&[], &[]), b"a", b"c", false).ok();
        assert_eq!(
            t.map(|t| (t.key, t.range_end)),
            Some((b"a".to_vec(), b"c".to_vec()))
        );
    }

    #[test]
    fn json_like_go_client() {
        let resp = WatchResponse {
            header: Some(quorate_proto::etcdserverpb::ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 7,
                raft_term: 2,
            }),
            events: vec![Event {
                r#type: EventType::Delete as i32,
                kv: Some(quorate_proto::mvccpb::KeyValue {
                    key: b"w1".to_vec(),
                    mod_revision: 7,
                    ..Default::default()
                }),
                prev_kv: None,
            }],
            ..Default::default()
        };
        let p = Printer::new(OutputFormat::Json, false);
        assert_eq!(
            WatchEvents::from_server(resp).json(&p).unwrap_or_default(),
            r#"{"Header":{"cluster_id":1,"member_id":2,"revision":7,"raft_term":2},"Events":[{"type":1,"kv":{"key":"dzE=","mod_revision":7}}],"CompactRevision":0,"Canceled":false,"Created":false}"#
        );
    }
}
