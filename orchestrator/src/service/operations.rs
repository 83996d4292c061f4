//! Operator verbs that move apps: plan (dry run) or begin a failover, switchover,
//! failback or declared site loss; read and approve operations.

use tonic::Status;
use topology::{AppId, SiteId};

use crate::clock::now_ms;
use crate::node::Node;
use crate::pb::*;
use crate::planner::{self, Trigger};
use crate::state::{self, Command, OpId, Outcome, SiteState};

/// The verb as the CLI spells it, for messages.
fn verb_name(v: OperationVerb) -> &'static str {
    match v {
        OperationVerb::Unspecified => "an unspecified verb",
        OperationVerb::Failover => "failover",
        OperationVerb::Switchover => "switchover",
        OperationVerb::Failback => "failback",
        OperationVerb::SiteFail => "site-fail",
        OperationVerb::TestDrill => "test-drill",
        OperationVerb::SwitchoverDrill => "switchover-drill",
        OperationVerb::SiteLossDrill => "site-loss-drill",
    }
}

/// The trigger an operator's verb names, and the kind of drill it runs as (if any).
fn trigger(req: &StartOperationRequest) -> Result<(Trigger, Option<planner::DrillKind>), Status> {
    let Ok(verb) = OperationVerb::try_from(req.verb) else {
        return Err(unknown_verb(req.verb));
    };
    let apps: Vec<AppId> = req.apps.iter().map(|a| AppId::new(a.as_str())).collect();
    let site = || -> Result<SiteId, Status> {
        if req.site.trim().is_empty() {
            return Err(Status::invalid_argument(format!(
                "{} needs a site (--to SITE)",
                verb_name(verb)
            )));
        }
        Ok(SiteId::new(req.site.trim()))
    };
    Ok(match verb {
        OperationVerb::Failover => (Trigger::Failover { apps, to: site()? }, None),
        OperationVerb::Switchover => (Trigger::Switchover { apps, to: site()? }, None),
        OperationVerb::Failback => (Trigger::Failback { apps }, None),
        OperationVerb::SiteFail => (Trigger::SiteLost { site: site()? }, None),
        OperationVerb::SiteLossDrill => (
            Trigger::SiteLost { site: site()? },
            Some(planner::DrillKind::SiteLoss),
        ),
        OperationVerb::TestDrill => (
            Trigger::TestDrill {
                apps,
                to: (!req.site.trim().is_empty()).then(|| SiteId::new(req.site.trim())),
            },
            None,
        ),
        OperationVerb::SwitchoverDrill => (
            Trigger::Switchover { apps, to: site()? },
            Some(planner::DrillKind::Switchover),
        ),
        OperationVerb::Unspecified => return Err(unknown_verb(req.verb)),
    })
}

fn unknown_verb(v: i32) -> Status {
    super::unknown_request_enum(
        "verb",
        v,
        "failover, switchover, failback, site-fail, test-drill, switchover-drill or \
         site-loss-drill",
    )
}

pub async fn start(
    node: &Node,
    actor: String,
    req: StartOperationRequest,
) -> Result<StartOperationReply, Status> {
    let (t, drill) = trigger(&req)?;
    let mut plan = {
        let a = node.state.read();
        planner::plan(&a.state, &t).map_err(|e| Status::failed_precondition(e.to_string()))?
    };
    if drill.is_some() {
        plan.drill = drill;
    }
    let sent = Some(crate::wire::plan_to_wire(&plan));
    if req.dry_run {
        return Ok(StartOperationReply { op: 0, plan: sent });
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
    Ok(StartOperationReply { op, plan: sent })
}

pub fn get(node: &Node, req: &GetOperationRequest) -> Result<OperationReply, Status> {
    let a = node.state.read();
    let op = a.state.operation_view(req.op).ok_or_else(|| {
        Status::not_found(format!(
            "no operation op-{} (see `metrodr op list`)",
            req.op
        ))
    })?;
    let timing = a
        .state
        .topology()
        .map(|t| crate::wire::timing_to_wire(&t.model.timing));
    Ok(OperationReply {
        operation: Some(crate::wire::operation_to_wire(&op)),
        timing,
    })
}

pub fn list(node: &Node, req: &ListOperationsRequest) -> Result<ListOperationsReply, Status> {
    let limit = if req.limit == 0 {
        50
    } else {
        req.limit as usize
    };
    let a = node.state.read();
    let operations = a
        .state
        .operations
        .keys()
        .rev()
        .take(limit)
        .filter_map(|id| a.state.operation_view(*id))
        .map(|o| crate::wire::operation_to_wire(&o))
        .collect();
    Ok(ListOperationsReply { operations })
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
        .map(|(volume, data)| ReplicaBehind {
            volume: volume.to_string(),
            site: site.to_string(),
            data: crate::wire::data_state_to_wire(data).into(),
        })
        .collect();
    Ok(RecoverSiteReply {
        audit_seq: w.audit_seq,
        not_up_to_date,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn req(verb: i32, site: &str) -> StartOperationRequest {
        StartOperationRequest {
            actor: "alice".into(),
            verb,
            apps: vec!["db".into()],
            site: site.into(),
            dry_run: true,
        }
    }

    #[test]
    fn an_unspecified_or_unknown_verb_is_refused_naming_the_verbs() {
        for v in [OperationVerb::Unspecified as i32, 99] {
            let e = trigger(&req(v, "south")).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains("site-loss-drill"), "{}", e.message());
        }
    }

    #[test]
    fn each_verb_names_its_trigger_and_drill() {
        use planner::DrillKind;
        let south = SiteId::new("south");
        let apps = vec![AppId::new("db")];
        let failover = Trigger::Failover {
            apps: apps.clone(),
            to: south.clone(),
        };
        let switchover = Trigger::Switchover {
            apps: apps.clone(),
            to: south.clone(),
        };
        let lost = Trigger::SiteLost {
            site: south.clone(),
        };
        let all = [
            (OperationVerb::Failover, "south", failover, None),
            (OperationVerb::Switchover, "south", switchover.clone(), None),
            (
                OperationVerb::Failback,
                "",
                Trigger::Failback { apps: apps.clone() },
                None,
            ),
            (OperationVerb::SiteFail, "south", lost.clone(), None),
            (
                OperationVerb::TestDrill,
                "",
                Trigger::TestDrill {
                    apps: apps.clone(),
                    to: None,
                },
                None,
            ),
            (
                OperationVerb::TestDrill,
                "south",
                Trigger::TestDrill {
                    apps,
                    to: Some(south.clone()),
                },
                None,
            ),
            (
                OperationVerb::SwitchoverDrill,
                "south",
                switchover,
                Some(DrillKind::Switchover),
            ),
            (
                OperationVerb::SiteLossDrill,
                "south",
                lost,
                Some(DrillKind::SiteLoss),
            ),
        ];
        for (verb, site, trig, drill) in all {
            assert_eq!(
                trigger(&req(verb.into(), site)).unwrap(),
                (trig, drill),
                "{verb:?} {site:?}"
            );
        }
        let e = trigger(&req(OperationVerb::Switchover.into(), " ")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), "switchover needs a site (--to SITE)");
    }
}
