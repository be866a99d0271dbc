//! Membership commands: `member list` (with liveness columns in table form),
//! `member add|remove|promote` (simple output, as etcdctl prints it) and
//! `member replace` (in `replace`).
//!
//! Output follows etcdctl 3.5: member IDs in hex in simple and table form,
//! decimal in JSON and fields, and JSON IDs as hex strings with `--hex`.

use prost::Message as _;
use quorate_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberRemoveRequest,
};

use super::Env;
use crate::client::{self, request, unary};
use crate::exit::CtlError;
use crate::gofmt::quote;
use crate::output::json::JsonObject;
use crate::output::messages::{header_fields, header_json, header_json_hex, member_json};
use crate::output::table::Table;
use crate::output::{Out, OutputFormat, Printer, Render, ALL};

fn parse_member_id(arg: &str) -> Result<u64, CtlError> {
    u64::from_str_radix(arg, 16).map_err(|e| {
        CtlError::new(
            crate::exit::BAD_ARGS,
            format!("bad member ID arg ({e}), expecting ID in Hex"),
        )
    })
}

/// Membership changes print etcdctl's simple output only.
fn simple_only(env: &Env<'_>) -> Result<(), CtlError> {
    let printer = env.printer()?;
    if printer.format != OutputFormat::Simple {
        return Err(CtlError::new(
            crate::exit::BAD_FEATURE,
            format!("{} not supported as output format", printer.format.name()),
        ));
    }
    Ok(())
}

/// `member add NAME --peer-urls URLS [--learner]`.
pub async fn add(
    name: String,
    peer_urls: Vec<String>,
    learner: bool,
    env: &mut Env<'_>,
) -> Result<(), CtlError> {
    simple_only(env)?;
    let timeout = env.cfg.command_timeout;
    let ch = client::dial_any(&env.cfg).await?;
    let resp = unary(
        timeout,
        client::cluster(ch).member_add(request(
            MemberAddRequest {
                peer_ur_ls: peer_urls.clone(),
                is_learner: learner,
            },
            timeout,
        )),
    )
    .await?;
    let id = resp.member.as_ref().map_or(0, |m| m.id);
    let cluster = resp.header.as_ref().map_or(0, |h| h.cluster_id);
    let mut conf = Vec::new();
    for m in &resp.members {
        for u in &m.peer_ur_ls {
            let n = if m.id == id {
                name.as_str()
            } else {
                m.name.as_str()
            };
            conf.push(format!("{n}={u}"));
        }
    }
    let w = &mut *env.out.stdout;
    writeln!(w, "Member {id:16x} added to cluster {cluster:16x}")?;
    writeln!(w)?;
    writeln!(w, "ETCD_NAME=\"{name}\"")?;
    writeln!(w, "ETCD_INITIAL_CLUSTER=\"{}\"", conf.join(","))?;
    writeln!(
        w,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{}\"",
        peer_urls.join(",")
    )?;
    writeln!(w, "ETCD_INITIAL_CLUSTER_STATE=\"existing\"")?;
    Ok(())
}

/// `member remove ID`.
pub async fn remove(id: String, env: &mut Env<'_>) -> Result<(), CtlError> {
    simple_only(env)?;
    let id = parse_member_id(&id)?;
    let timeout = env.cfg.command_timeout;
    let ch = client::dial_any(&env.cfg).await?;
    let resp = unary(
        timeout,
        client::cluster(ch).member_remove(request(MemberRemoveRequest { id }, timeout)),
    )
    .await?;
    let cluster = resp.header.as_ref().map_or(0, |h| h.cluster_id);
    writeln!(
        env.out.stdout,
        "Member {id:16x} removed from cluster {cluster:16x}"
    )?;
    Ok(())
}

/// `member promote ID`.
pub async fn promote(id: String, env: &mut Env<'_>) -> Result<(), CtlError> {
    simple_only(env)?;
    let id = parse_member_id(&id)?;
    let timeout = env.cfg.command_timeout;
    let ch = client::dial_any(&env.cfg).await?;
    let resp = unary(
        timeout,
        client::cluster(ch).member_promote(request(MemberPromoteRequest { id }, timeout)),
    )
    .await?;
    let cluster = resp.header.as_ref().map_or(0, |h| h.cluster_id);
    writeln!(
        env.out.stdout,
        "Member {id:16x} promoted in cluster {cluster:16x}"
    )?;
    Ok(())
}

/// `member list`.
pub async fn list(env: &mut Env<'_>) -> Result<(), CtlError> {
    let printer = env.printer()?;
    printer.check::<MemberListResponse>()?;
    let timeout = env.cfg.command_timeout;
    let ch = client::dial_any(&env.cfg).await?;
    let resp = unary(
        timeout,
        client::cluster(ch.clone())
            .member_list(request(MemberListRequest { linearizable: true }, timeout)),
    )
    .await?;
    if printer.format != OutputFormat::Table {
        return printer.print(&resp, &mut env.out);
    }
    // Table: etcdctl's columns plus real liveness (Quorate only).
    let health = match super::health::fetch(ch, timeout).await {
        Ok(h) => h,
        Err(e) => {
            writeln!(env.out.stderr, "liveness unavailable: {}", e.message)?;
            None
        }
    };
    let Some(h) = health else {
        writeln!(env.out.stderr, "{}", super::health::ETCD_NO_LIVENESS)?;
        return printer.print(&resp, &mut env.out);
    };
    let mut t = resp.table(&printer)?;
    for title in ["Health", "Last Seen", "Lag"] {
        t.header.push(title.to_string());
    }
    for (row, m) in t.rows.iter_mut().zip(&resp.members) {
        row.extend(super::health::health_cells(&h, m.id));
    }
    let w = &mut *env.out.stdout;
    w.write_all(t.render().as_bytes())?;
    writeln!(w, "{}", super::health::summary_line(&h))?;
    for warning in &h.warnings {
        writeln!(w, "warning: {warning}")?;
    }
    Ok(())
}

/// etcdctl's `makeMemberListTable` row. A member that never published its
/// name is "unstarted".
fn member_row(m: &Member) -> Vec<String> {
    let status = if m.name.is_empty() {
        "unstarted"
    } else {
        "started"
    };
    vec![
        format!("{:x}", m.id),
        status.to_string(),
        m.name.clone(),
        m.peer_ur_ls.join(","),
        m.client_ur_ls.join(","),
        m.is_learner.to_string(),
    ]
}

impl Render for MemberListResponse {
    const FORMATS: &'static [OutputFormat] = ALL;

    fn simple(&self, _p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        for m in &self.members {
            writeln!(out.stdout, "{}", member_row(m).join(", "))?;
        }
        Ok(())
    }

    fn json(&self, p: &Printer) -> Result<String, CtlError> {
        let header = if p.hex {
            header_json_hex(&self.header)
        } else {
            header_json(&self.header)
        };
        Ok(JsonObject::new()
            .object("header", header)
            .array(
                "members",
                self.members.iter().map(|m| member_json(m, p.hex)).collect(),
            )
            .finish())
    }

    fn protobuf(&self) -> Result<Vec<u8>, CtlError> {
        Ok(self.encode_to_vec())
    }

    fn fields(&self, _p: &Printer, out: &mut Out<'_>) -> Result<(), CtlError> {
        let w = &mut *out.stdout;
        header_fields(w, &self.header)?;
        for m in &self.members {
            writeln!(w, "\"ID\" : {}", m.id)?;
            writeln!(w, "\"Name\" : {}", quote(m.name.as_bytes()))?;
            for u in &m.peer_ur_ls {
                writeln!(w, "\"PeerURL\" : {}", quote(u.as_bytes()))?;
            }
            for u in &m.client_ur_ls {
                writeln!(w, "\"ClientURL\" : {}", quote(u.as_bytes()))?;
            }
            writeln!(w, "\"IsLearner\" : {}", m.is_learner)?;
            writeln!(w)?;
        }
        Ok(())
    }

    fn table(&self, _p: &Printer) -> Result<Table, CtlError> {
        let mut t = Table::new(&[
            "ID",
            "Status",
            "Name",
            "Peer Addrs",
            "Client Addrs",
            "Is Learner",
        ]);
        for m in &self.members {
            t.push(member_row(m));
        }
        Ok(t)
    }
}
