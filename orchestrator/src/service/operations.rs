//! Operator verbs that move apps: plan (dry run) or begin a failover, switchover,
//! failback or declared site loss; read and approve operations.

use tonic::Status;
use topology::{AppId, SiteId};

use crate::clock::now_ms;
use crate::node::Node;
use crate::pb::*;
use crate::planner::{self, Trigger};
use crate::state::{self, Command, OpId, Outcome, SiteState};

fn json<T: serde::Serialize>(v: &T) -> Result<String, Status> {
    serde_json::to_string(v).map_err(|e| Status::internal(format!("cannot encode: {e}")))
}

/// The trigger an operator's verb names.
fn trigger(req: &StartOperationRequest) -> Result<Trigger, Status> {
    let apps: Vec<AppId> = req.apps.iter().map(|a| AppId::new(a.as_str())).collect();
    let site = || -> Result<SiteId, Status> {
        if req.site.trim().is_empty() {
            return Err(Status::invalid_argument(format!(
                "{} needs a site (--to SITE)",
                req.verb
            )));
        }
        Ok(SiteId::new(req.site.trim()))
    };
    Ok(match req.verb.as_str() {
        "failover" => Trigger::Failover { apps, to: site()? },
        "switchover" => Trigger::Switchover { apps, to: site()? },
        "failback" => Trigger::Failback { apps },
        "site-fail" | "site-loss-drill" => Trigger::SiteLost { site: site()? },
        "test-drill" => Trigger::TestDrill {
            apps,
            to: (!req.site.trim().is_empty()).then(|| SiteId::new(req.site.trim())),
        },
        "switchover-drill" => Trigger::Switchover { apps, to: site()? },
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown verb {other:?}: use failover, switchover, failback, site-fail, \
                 test-drill, switchover-drill or site-loss-drill"
            )));
        }
    })
}

pub async fn start(
    node: &Node,
    actor: String,
    req: StartOperationRequest,
) -> Result<StartOperationReply, Status> {
    let t = trigger(&req)?;
    let mut plan = {
        let a = node.state.read();
        planner::plan(&a.state, &t).map_err(|e| Status::failed_precondition(e.to_string()))?
    };
    match req.verb.as_str() {
        "switchover-drill" => plan.drill = Some(planner::DrillKind::Switchover),
        "site-loss-drill" => plan.drill = Some(planner::DrillKind::SiteLoss),
        _ => {}
    }
    let plan_json = json(&plan)?;
    if req.dry_run {
        return Ok(StartOperationReply { op: 0, plan_json });
    }
    if plan.is_empty() {
        let why = plan
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.app, s.reason))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Status::failed_precondition(if why.is_empty() {
            format!("{} moves no app", t.describe())
        } else {
            format!("{} moves no app ({why})", t.describe())
        }));
    }
    if let Trigger::SiteLost { site } = &t {
        // Recorded first, so that the audit log says who declared the loss.
        let down = node
            .state
            .read()
            .state
            .sites
            .get(site)
            .is_some_and(|s| s.state == SiteState::Down);
        if !down {
            node.write(state::Request {
                actor: actor.clone(),
                at_ms: now_ms(),
                command: Command::SetSiteState {
                    site: site.clone(),
                    state: SiteState::Down,
                    reason: format!("declared lost by {actor}"),
                },
            })
            .await?;
        }
    }
    let w = node
        .write(state::Request {
            actor,
            at_ms: now_ms(),
            command: Command::BeginPlan {
                plan: Box::new(plan),
                lost_ms: None,
            },
        })
        .await?;
    let Outcome::Operation(OpId(op)) = w.outcome else {
        return Err(Status::internal(format!(
            "unexpected outcome {:?}",
            w.outcome
        )));
    };
    Ok(StartOperationReply { op, plan_json })
}

pub fn get(node: &Node, req: &GetOperationRequest) -> Result<OperationReply, Status> {
    let a = node.state.read();
    let op = a.state.operation_view(req.op).ok_or_else(|| {
        Status::not_found(format!(
            "no operation op-{} (see `metrodr op list`)",
            req.op
        ))
    })?;
    let timing = a.state.topology().map(|t| t.model.timing.clone());
    Ok(OperationReply {
        operation_json: json(&op)?,
        timing_json: json(&timing)?,
    })
}

pub fn list(node: &Node, req: &ListOperationsRequest) -> Result<ListOperationsReply, Status> {
    let limit = if req.limit == 0 {
        50
    } else {
        req.limit as usize
    };
    let a = node.state.read();
    let operations_json = a
        .state
        .operations
        .keys()
        .rev()
        .take(limit)
        .filter_map(|id| a.state.operation_view(*id))
        .map(|o| json(&o))
        .collect::<Result<_, _>>()?;
    Ok(ListOperationsReply { operations_json })
}

pub async fn approve(
    node: &Node,
    actor: String,
    req: ApproveOperationRequest,
) -> Result<WriteReply, Status> {
    let w = node
        .write(state::Request {
            actor,
            at_ms: now_ms(),
            command: Command::ApproveOperation {
                op: OpId(req.op),
                apps: req.apps.iter().map(|a| AppId::new(a.as_str())).collect(),
            },
        })
        .await?;
    Ok(WriteReply {
        audit_seq: w.audit_seq,
        log_index: w.log_index,
    })
}

pub async fn recover_site(
    node: &Node,
    actor: String,
    req: RecoverSiteRequest,
) -> Result<RecoverSiteReply, Status> {
    let site = SiteId::new(req.site.trim());
    let w = node
        .write(state::Request {
            actor,
            at_ms: now_ms(),
            command: Command::RecoverSite { site: site.clone() },
        })
        .await?;
    let not_up_to_date = node
        .state
        .read()
        .state
        .replicas_behind(&site)
        .into_iter()
        .map(|(v, d)| format!("{v} ({d:?})"))
        .collect();
    Ok(RecoverSiteReply {
        audit_seq: w.audit_seq,
        not_up_to_date,
    })
}
