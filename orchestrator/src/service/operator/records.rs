//! The operator API's topology and audit calls: apply and read the topology, list and
//! verify the audit log, write a note in it. Reads come from this node's applied
//! state. Never: apply a topology that does not validate.

use security::Access;
use tonic::{Request, Response, Status};

use super::OperatorService;
use crate::clock::now_ms;
use crate::pb::*;
use crate::state::{self, Command};
use crate::wire;

fn audit_pb(e: &state::AuditEntry) -> AuditEntry {
    AuditEntry {
        seq: e.seq,
        at_ms: e.at_ms,
        actor: e.actor.clone(),
        action: e.action.clone(),
        detail: e.detail.clone(),
        prev: e.prev.clone(),
        digest: e.digest.clone(),
        event: Some(wire::audit_event_to_wire(&e.event)),
    }
}

pub(super) async fn apply_topology(
    svc: &OperatorService,
    req: Request<ApplyTopologyRequest>,
) -> Result<Response<ApplyTopologyReply>, Status> {
    let what = "apply a topology";
    svc.guarded(Access::Administer, what, req, |req, actor| async move {
        let report = topology::check_str(&req.text);
        let (Some(model), Some(plan)) = (report.topology, report.plan) else {
            let map = topology::SourceMap::new(&req.text);
            let lines: Vec<String> = report
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .take(10)
                .map(|d| {
                    let at = d.span.as_ref().map(|s| map.line_col(s.start));
                    match at {
                        Some(p) => {
                            format!("line {}:{}: [{}] {}", p.line, p.column, d.code, d.message)
                        }
                        None => format!("[{}] {}", d.code, d.message),
                    }
                })
                .collect();
            return Err(Status::invalid_argument(format!(
                "the topology is invalid ({} errors; nothing was applied):\n{}\nrun `metrodr topology validate FILE` for details",
                report.diagnostics.iter().filter(|d| d.is_error()).count(),
                lines.join("\n")
            )));
        };
        let warnings = report
            .diagnostics
            .iter()
            .map(|d| format!("[{}] {}", d.code, d.message))
            .collect();
        let placements = plan
            .placements
            .iter()
            .map(|p| (p.vm.clone(), p.host.clone()))
            .collect();
        let written = svc
            .node
            .write(state::Request {
                actor,
                at_ms: now_ms(),
                command: Command::ApplyTopology {
                    text: req.text,
                    model: Box::new(model),
                    placements,
                },
            })
            .await?;
        let version = match written.outcome {
            state::Outcome::TopologyVersion(v) => v,
            _ => 0,
        };
        Ok(Response::new(ApplyTopologyReply {
            version,
            audit_seq: written.audit_seq,
            warnings,
        }))
    })
    .await
}

pub(super) async fn get_topology(
    svc: &OperatorService,
    req: Request<GetTopologyRequest>,
) -> Result<Response<GetTopologyReply>, Status> {
    svc.read(&req, "read the topology").await?;

    let want = req.into_inner().version;
    let a = svc.node.state.read();
    let latest = a.state.topology().map_or(0, |t| t.version);
    let rec = if want == 0 {
        a.state.topology()
    } else {
        a.state.topologies.get(&want)
    };
    let rec = rec.ok_or_else(|| {
        if latest == 0 {
            Status::not_found("no topology has been applied yet: run `metrodr topology apply FILE`")
        } else {
            Status::not_found(format!(
                "no topology version {want}; versions 1..={latest} exist"
            ))
        }
    })?;
    Ok(Response::new(GetTopologyReply {
        version: rec.version,
        text: rec.text.clone(),
        digest: rec.digest.clone(),
        applied_by: rec.applied_by.clone(),
        applied_ms: rec.applied_ms,
        latest_version: latest,
    }))
}

pub(super) async fn audit_list(
    svc: &OperatorService,
    req: Request<AuditListRequest>,
) -> Result<Response<AuditListReply>, Status> {
    svc.read(&req, "read the audit log").await?;

    let req = req.into_inner();
    let limit = match req.limit {
        0 => 100,
        n if n > 10_000 => {
            return Err(Status::invalid_argument(
                "limit is at most 10000; page with from_seq",
            ));
        }
        n => n as usize,
    };
    let a = svc.node.state.read();
    let entries = a
        .state
        .audit
        .iter()
        .skip_while(|(seq, _)| **seq < req.from_seq)
        .take(limit)
        .map(|(_, e)| audit_pb(e))
        .collect();
    Ok(Response::new(AuditListReply {
        entries,
        total: a.state.audit.len() as u64,
    }))
}

pub(super) async fn audit_verify(
    svc: &OperatorService,
    req: Request<AuditVerifyRequest>,
) -> Result<Response<AuditVerifyReply>, Status> {
    svc.read(&req, "verify the audit log").await?;

    let at = req.into_inner().at_seq;
    let a = svc.node.state.read();
    let v = a.state.verify_audit();
    let (broken_seq, broken_reason) = v.broken.clone().unwrap_or((0, String::new()));
    Ok(Response::new(AuditVerifyReply {
        node: svc.node.name.clone(),
        ok: v.ok(),
        entries: a.state.audit.len() as u64,
        head: v.head,
        broken_seq,
        broken_reason,
        digest_at_seq: a
            .state
            .audit
            .get(&at)
            .map(|e| e.digest.clone())
            .unwrap_or_default(),
    }))
}

pub(super) async fn note(
    svc: &OperatorService,
    req: Request<NoteRequest>,
) -> Result<Response<WriteReply>, Status> {
    let what = "write a note in the audit log";
    svc.guarded(Access::Operate, what, req, |req, actor| async move {
        let w = svc
            .node
            .write(state::Request {
                actor,
                at_ms: now_ms(),
                command: Command::Note { text: req.text },
            })
            .await?;
        Ok(Response::new(WriteReply {
            audit_seq: w.audit_seq,
            log_index: w.log_index,
        }))
    })
    .await
}
