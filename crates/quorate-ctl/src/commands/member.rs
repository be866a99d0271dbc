//! Membership commands: `member list` (with liveness columns in table form)
//! and `member replace` (in `replace`); add/remove/update/promote come later.
//!
//! Output follows etcdctl 3.5: member IDs in hex in simple and table form,
//! decimal in JSON and fields, and JSON IDs as hex strings with `--hex`.

use prost::Message as _;
use quorate_proto::etcdserverpb::{Member, MemberListRequest, MemberListResponse};

use super::Env;
use crate::client::{self, request, unary};
use crate::exit::CtlError;
use crate::gofmt::quote;
use crate::output::json::JsonObject;
use crate::output::messages::{header_fields, header_json, header_json_hex, member_json};
use crate::output::table::Table;
use crate::output::{Out, OutputFormat, Printer, Render, ALL};

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
