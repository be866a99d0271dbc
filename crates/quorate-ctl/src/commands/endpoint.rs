//! `endpoint health` and `endpoint status`, per endpoint in `--endpoints`
//! or, with `--cluster`, per client URL in the member list.
//!
//! Health follows etcdctl 3.5: a linearizable Range of key "health" on each
//! endpoint (concurrently; "permission denied" still counts as healthy),
//! then an alarm check; healthy lines go to stdout, unhealthy ones to
//! stderr, and any unhealthy endpoint ends with `Error: unhealthy cluster`
//! and exit 1. Status prints the Maintenance.Status of every endpoint that
//! answers, reports the others on stderr, and exits 1 if any failed.

use std::time::Instant;

use quorate_proto::etcdserverpb::alarm_request::AlarmAction;
use quorate_proto::etcdserverpb::{
    AlarmRequest, AlarmType, MemberListRequest, RangeRequest, StatusRequest, StatusResponse,
};

use super::Env;
use crate::client::{self, request, unary, ClientConfig};
use crate::exit::{CtlError, ERROR};
use crate::gofmt::{duration, humanize_bytes, quote};
use crate::output::json::{array, JsonObject};
use crate::output::messages::{go_string_slice, header_fields, header_json};
use crate::output::table::Table;
use crate::output::{Out, OutputFormat, Printer, Render, ALL_BUT_PROTOBUF};

/// The endpoints to check: `--endpoints`, or with `--cluster` every member's
/// client URLs.
async fn target_endpoints(cluster: bool, cfg: &ClientConfig) -> Result<Vec<String>, CtlError> {
    if !cluster {
        return Ok(cfg.endpoints.clone());
    }
    let ch = client::dial_any(cfg).await?;
    let timeout = cfg.command_timeout;
    let resp = unary(
        timeout,
        client::cluster(ch).member_list(request(MemberListRequest { linearizable: true }, timeout)),
    )
    .await
    .map_err(|e| {
        CtlError::new(
            e.code,
            format!(
                "failed to fetch endpoints from etcd cluster member list: {}",
                e.message
            ),
        )
    })?;
    Ok(resp
        .members
        .into_iter()
        .flat_map(|m| m.client_ur_ls)
        .collect())
}

/// One endpoint's health (etcdctl's `epHealth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpHealth {
    pub ep: String,
    pub health: bool,
    pub took: String,
    pub error: String,
}

/// `endpoint health`.
pub async fn health(cluster: bool, env: &mut Env<'_>) -> Result<(), CtlError> {
    let printer = env.printer()?;
    printer.check::<HealthList>()?;
    let eps = target_endpoints(cluster, &env.cfg).await?;
    let cfg = env.cfg.clone();
    let list = futures::future::join_all(eps.into_iter().map(|ep| check_health(ep, &cfg))).await;
    let unhealthy = list.iter().any(|h| !h.error.is_empty());
    printer.print(&HealthList(list), &mut env.out)?;
    if unhealthy {
        return Err(CtlError::error("unhealthy cluster"));
    }
    Ok(())
}

async fn check_health(ep: String, cfg: &ClientConfig) -> EpHealth {
    let dial_start = Instant::now();
    let ch = match client::dial(&ep, cfg.dial_timeout).await {
        Ok(ch) => ch,
        Err(e) => {
            return EpHealth {
                ep,
                health: false,
                took: duration(dial_start.elapsed()),
                error: e.message,
            }
        }
    };
    let timeout = cfg.command_timeout;
    let start = Instant::now();
    let deadline = start + timeout;
    let get = RangeRequest {
        key: b"health".to_vec(),
        ..Default::default()
    };
    let result = unary(timeout, client::kv(ch.clone()).range(request(get, timeout))).await;
    let mut h = EpHealth {
        ep,
        health: false,
        took: duration(start.elapsed()),
        error: String::new(),
    };
    match result {
        Ok(_) => h.health = true,
        // The request went through consensus; auth just refused the read.
        Err(e) if e.message == "etcdserver: permission denied" => h.health = true,
        Err(e) => h.error = e.message,
    }
    if h.health {
        let left = deadline.saturating_duration_since(Instant::now());
        let alarms = AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        };
        match unary(left, client::maintenance(ch).alarm(request(alarms, left))).await {
            Ok(resp) if !resp.alarms.is_empty() => {
                h.health = false;
                h.error = "Active Alarm(s): ".to_string();
                for a in &resp.alarms {
                    h.error.push_str(match AlarmType::try_from(a.alarm) {
                        Ok(AlarmType::Nospace) => "NOSPACE ",
                        Ok(AlarmType::Corrupt) => "CORRUPT ",
                        _ => "UNKNOWN ",
                    });
                }
            }
            Ok(_) => {}
            Err(_) => {
                h.health = false;
                h.error = "Unable to fetch the alarm list".to_string();
            }
        }
    }
    h
}

/// The result of `endpoint health`.
pub struct HealthList(pub Vec<EpHealth>);

impl Render for HealthList {
    const FORMATS: &'static [OutputFormat] = ALL_BUT_PROTOBUF;

    fn simple(&self, _p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        for h in &self.0 {
            if h.error.is_empty() {
                writeln!(
                    out.stdout,
                    "{} is healthy: successfully committed proposal: took = {}",
                    h.ep, h.took
                )?;
            } else {
                writeln!(
                    out.stderr,
                    "{} is unhealthy: failed to commit proposal: {}",
                    h.ep, h.error
                )?;
            }
        }
        Ok(())
    }

    fn json(&self, _p: &Printer) -> Result<String, CtlError> {
        Ok(array(
            self.0
                .iter()
                .map(|h| {
                    JsonObject::new()
                        .str_always("endpoint", &h.ep)
                        .bool_always("health", h.health)
                        .str_always("took", &h.took)
                        .str("error", &h.error)
                        .finish()
                })
                .collect(),
        ))
    }

    fn fields(&self, _p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        for h in &self.0 {
            writeln!(out.stdout, "\"Endpoint\" : {}", quote(h.ep.as_bytes()))?;
            writeln!(out.stdout, "\"Health\" : {}", h.health)?;
            writeln!(out.stdout, "\"Took\" : {}", h.took)?;
            writeln!(out.stdout, "\"Error\" : {}", h.error)?;
            writeln!(out.stdout)?;
        }
        Ok(())
    }

    fn table(&self, _p: &Printer) -> Result<Table, CtlError> {
        let mut t = Table::new(&["endpoint", "health", "took", "error"]);
        for h in &self.0 {
            t.push(vec![
                h.ep.clone(),
                h.health.to_string(),
                h.took.clone(),
                h.error.clone(),
            ]);
        }
        Ok(t)
    }
}

/// One endpoint's status (etcdctl's `epStatus`).
pub struct EpStatus {
    pub ep: String,
    pub resp: StatusResponse,
}

/// `endpoint status`.
pub async fn status(cluster: bool, env: &mut Env<'_>) -> Result<(), CtlError> {
    let printer = env.printer()?;
    printer.check::<StatusList>()?;
    let eps = target_endpoints(cluster, &env.cfg).await?;
    let timeout = env.cfg.command_timeout;
    let mut list = Vec::new();
    let mut failed = false;
    for ep in eps {
        let result = async {
            let ch = client::dial(&ep, env.cfg.dial_timeout).await?;
            unary(
                timeout,
                client::maintenance(ch).status(request(StatusRequest {}, timeout)),
            )
            .await
        }
        .await;
        match result {
            Ok(resp) => list.push(EpStatus { ep, resp }),
            Err(e) => {
                failed = true;
                writeln!(
                    env.out.stderr,
                    "Failed to get the status of endpoint {ep} ({})",
                    e.message
                )?;
            }
        }
    }
    printer.print(&StatusList(list), &mut env.out)?;
    if failed {
        // etcdctl exits 1 here without a final "Error:" line.
        return Err(CtlError::silent(ERROR));
    }
    Ok(())
}

/// The result of `endpoint status`.
pub struct StatusList(pub Vec<EpStatus>);

/// etcdctl 3.5's status columns.
fn status_row(s: &EpStatus) -> Vec<String> {
    let r = &s.resp;
    let member_id = r.header.as_ref().map(|h| h.member_id).unwrap_or(0);
    vec![
        s.ep.clone(),
        format!("{member_id:x}"),
        r.version.clone(),
        humanize_bytes(r.db_size as u64),
        (r.leader == member_id).to_string(),
        r.is_learner.to_string(),
        r.raft_term.to_string(),
        r.raft_index.to_string(),
        r.raft_applied_index.to_string(),
        r.errors.join(", "),
    ]
}

fn status_json(r: &StatusResponse) -> String {
    let downgrade = r.downgrade_info.as_ref().map(|d| {
        JsonObject::new()
            .bool("enabled", d.enabled)
            .str("targetVersion", &d.target_version)
            .finish()
    });
    JsonObject::new()
        .object("header", header_json(&r.header))
        .str("version", &r.version)
        .i64("dbSize", r.db_size)
        .u64("leader", r.leader)
        .u64("raftIndex", r.raft_index)
        .u64("raftTerm", r.raft_term)
        .u64("raftAppliedIndex", r.raft_applied_index)
        .strs("errors", &r.errors)
        .i64("dbSizeInUse", r.db_size_in_use)
        .bool("isLearner", r.is_learner)
        .str("storageVersion", &r.storage_version)
        .i64("dbSizeQuota", r.db_size_quota)
        .object("downgradeInfo", downgrade)
        .finish()
}

impl Render for StatusList {
    const FORMATS: &'static [OutputFormat] = ALL_BUT_PROTOBUF;

    fn simple(&self, _p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        for s in &self.0 {
            writeln!(out.stdout, "{}", status_row(s).join(", "))?;
        }
        Ok(())
    }

    fn json(&self, _p: &Printer) -> Result<String, CtlError> {
        Ok(array(
            self.0
                .iter()
                .map(|s| {
                    JsonObject::new()
                        .str_always("Endpoint", &s.ep)
                        .raw("Status", &status_json(&s.resp))
                        .finish()
                })
                .collect(),
        ))
    }

    fn fields(&self, _p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        for s in &self.0 {
            let r = &s.resp;
            let w = &mut *out.stdout;
            header_fields(w, &r.header)?;
            writeln!(w, "\"Version\" : {}", quote(r.version.as_bytes()))?;
            writeln!(w, "\"DBSize\" : {}", r.db_size)?;
            writeln!(w, "\"Leader\" : {}", r.leader)?;
            writeln!(w, "\"IsLearner\" : {}", r.is_learner)?;
            writeln!(w, "\"RaftIndex\" : {}", r.raft_index)?;
            writeln!(w, "\"RaftTerm\" : {}", r.raft_term)?;
            writeln!(w, "\"RaftAppliedIndex\" : {}", r.raft_applied_index)?;
            writeln!(w, "\"Errors\" : {}", go_string_slice(&r.errors))?;
            writeln!(w, "\"Endpoint\" : {}", quote(s.ep.as_bytes()))?;
            writeln!(w)?;
        }
        Ok(())
    }

    fn table(&self, _p: &Printer) -> Result<Table, CtlError> {
        let mut t = Table::new(&[
            "endpoint",
            "ID",
            "version",
            "db size",
            "is leader",
            "is learner",
            "raft term",
            "raft index",
            "raft applied index",
            "errors",
        ]);
        for s in &self.0 {
            t.push(status_row(s));
        }
        Ok(t)
    }
}
