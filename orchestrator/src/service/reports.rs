//! Reports and readiness, read from the committed state of this node (no write).

use tonic::Status;
use topology::AppId;

use crate::node::Node;
use crate::pb::*;

/// The history of every operation, one row per app, unsigned (`report list --format csv`).
fn history(node: &Node, public_key: String) -> GetReportReply {
    let a = node.state.read();
    let reports: Vec<drills::Report> = a
        .state
        .operations
        .keys()
        .filter_map(|id| a.state.operation_view(*id))
        .map(|o| crate::report::build(&a.state, &o))
        .collect();
    GetReportReply {
        document: drills::history_csv(&reports),
        public_key,
        passed: reports.iter().all(drills::Report::passed),
    }
}

/// The signed report of one operation, or the CSV history of every operation.
pub fn get(node: &Node, req: &GetReportRequest) -> Result<GetReportReply, Status> {
    use crate::pb::ReportFormat as F;
    // The request first: a bad one is told so whatever the node's keys.
    let format = match F::try_from(req.format).unwrap_or(F::Unspecified) {
        F::Json => Some(drills::Format::Json),
        F::Html => Some(drills::Format::Html),
        F::Text => Some(drills::Format::Text),
        F::Csv => None,
        F::Unspecified => {
            return Err(super::unknown_request_enum(
                "report format",
                req.format,
                "json, html, text or csv",
            ));
        }
    };
    let key = node.security.signing_key.as_ref().ok_or_else(|| {
        Status::failed_precondition(format!(
            "{} has no cluster signing key, so it cannot sign reports: create one with \
             `metrodr report keygen --out FILE`, give every orchestrator node the same file \
             (`signing_key = \"FILE\"` in its config) and restart it",
            node.name
        ))
    })?;
    let public_key = drills::public_key_hex(&key.verifying_key());
    let Some(format) = format else {
        return Ok(history(node, public_key));
    };
    let a = node.state.read();
    let o = a.state.operation_view(req.op).ok_or_else(|| {
        Status::not_found(format!(
            "no operation op-{} (see `metrodr report list`)",
            req.op
        ))
    })?;
    let report = crate::report::build(&a.state, &o);
    let document = drills::render_signed(&report, format, key)
        .map_err(|e| Status::failed_precondition(format!("cannot sign the report: {e}")))?;
    Ok(GetReportReply {
        document,
        public_key,
        passed: report.passed(),
    })
}

pub fn readiness(node: &Node, req: &ReadinessRequest) -> Result<ReadinessReply, Status> {
    let a = node.state.read();
    let apps: Vec<AppId> = req.apps.iter().map(|x| AppId::new(x.as_str())).collect();
    if let Some(missing) = apps.iter().find(|x| !a.state.apps.contains(x)) {
        return Err(Status::not_found(format!(
            "no app {missing} in the cluster (see `metrodr app list`)"
        )));
    }
    let list = crate::readiness::assess(&a.state, &apps, crate::clock::now_ms());
    Ok(ReadinessReply {
        apps: list.iter().map(crate::wire::readiness_to_wire).collect(),
    })
}
