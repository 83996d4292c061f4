//! Operations on the wire (`operation.proto`), both ways: the operation with its plan
//! and its saga log, each step's kind, place in the plan and result — a typed outcome
//! (`outcome`) or a typed failure with its text. What `metrodr op show`, the lab and
//! the benchmarks read.
//!
//! Never: send a record as JSON text, or panic on what the wire carries.

use ids::{CommandId, OpId};
use proto::agent::wire::{
    failure_kind_from_wire, failure_kind_to_wire, stopped_from_wire, stopped_to_wire,
};
use topology::AppId;

use super::WireError;
use super::audit::{app, host, ids, s, step_at_from_wire, step_at_to_wire, strs};
use super::outcome::{
    production_change_from_wire, production_change_to_wire, production_in, production_to_wire,
    step_outcome_from_wire, step_outcome_to_wire,
};
use super::plan::{missing, plan_from_wire, plan_to_wire};
use super::states::{op_kind_from_wire, op_kind_to_wire, op_status_from_wire, op_status_to_wire};
use crate::pb;
use crate::pb::failure_reason::Reason as F;
use crate::pb::step_result::Result as R;
use crate::records::{FailureReason, RejectKind, Step, StepFailure, StepKind, StepResult};
use crate::state::Operation;

both_ways!(
    reject_kind_to_wire,
    reject_kind_from_wire,
    "the rejection kind",
    RejectKind,
    RejectKind,
    [Invalid, NotFound, Conflict, Invariant, Unchanged, Stale]
);

/// A step's kind; `Unknown` (a kind a newer metrodr wrote) travels as 0.
pub fn step_kind_to_wire(k: StepKind) -> pb::StepKind {
    use pb::StepKind as P;
    match k {
        StepKind::Approval => P::Approval,
        StepKind::Fence => P::Fence,
        StepKind::Stop => P::Stop,
        StepKind::StopVolumes => P::StopVolumes,
        StepKind::PromoteAndMove => P::PromoteAndMove,
        StepKind::ServeVolumes => P::ServeVolumes,
        StepKind::StartVms => P::StartVms,
        StepKind::HealthGate => P::HealthGate,
        StepKind::Baseline => P::Baseline,
        StepKind::Snapshot => P::Snapshot,
        StepKind::StartDrillVms => P::StartDrillVms,
        StepKind::ProductionCheck => P::ProductionCheck,
        StepKind::Cleanup => P::Cleanup,
        StepKind::ProductionAfter => P::ProductionAfter,
        StepKind::Unknown => P::Unspecified,
    }
}

/// A step's kind; 0 or a value this side does not know reads as `Unknown`, as a
/// kind name it does not know does in JSON (the step is still shown, by its kind's
/// label "unknown step").
pub fn step_kind_from_wire(v: i32) -> StepKind {
    use pb::StepKind as P;
    match P::try_from(v).unwrap_or(P::Unspecified) {
        P::Approval => StepKind::Approval,
        P::Fence => StepKind::Fence,
        P::Stop => StepKind::Stop,
        P::StopVolumes => StepKind::StopVolumes,
        P::PromoteAndMove => StepKind::PromoteAndMove,
        P::ServeVolumes => StepKind::ServeVolumes,
        P::StartVms => StepKind::StartVms,
        P::HealthGate => StepKind::HealthGate,
        P::Baseline => StepKind::Baseline,
        P::Snapshot => StepKind::Snapshot,
        P::StartDrillVms => StepKind::StartDrillVms,
        P::ProductionCheck => StepKind::ProductionCheck,
        P::Cleanup => StepKind::Cleanup,
        P::ProductionAfter => StepKind::ProductionAfter,
        P::Unspecified => StepKind::Unknown,
    }
}

pub fn failure_reason_to_wire(r: &FailureReason) -> pb::FailureReason {
    let x = match r {
        FailureReason::DependencyFailed { app } => {
            F::DependencyFailed(pb::FailDependencyFailed { app: s(app) })
        }
        FailureReason::OperationEnded => F::OperationEnded(pb::FailOperationEnded {}),
        FailureReason::TimedOut { after_ms } => F::TimedOut(pb::FailTimedOut {
            after_ms: *after_ms,
        }),
        FailureReason::CommandFailed { host, action, kind } => {
            F::CommandFailed(pb::FailCommandFailed {
                host: s(host),
                action: action.clone(),
                kind: failure_kind_to_wire(*kind).into(),
            })
        }
        FailureReason::CommandVanished { id } => {
            F::CommandVanished(pb::FailCommandVanished { id: id.0 })
        }
        FailureReason::NoOutcome { host } => F::NoOutcome(pb::FailNoOutcome { host: s(host) }),
        FailureReason::PeerNotConfirmed { host, stopped } => {
            F::PeerNotConfirmed(pb::FailPeerNotConfirmed {
                host: s(host),
                stopped: Some(stopped_to_wire(stopped)),
            })
        }
        FailureReason::NotCommitted { rejected } => F::NotCommitted(pb::FailNotCommitted {
            rejected: rejected.map(|k| reject_kind_to_wire(k).into()),
        }),
        FailureReason::Gone => F::Gone(pb::FailGone {}),
        FailureReason::Unsupported => F::Unsupported(pb::FailUnsupported {}),
        FailureReason::Lagging { production } => F::Lagging(pb::FailLagging {
            production: Some(production_to_wire(production)),
        }),
        FailureReason::ProductionChanged {
            changes,
            production,
        } => F::ProductionChanged(pb::FailProductionChanged {
            changes: changes.iter().map(production_change_to_wire).collect(),
            production: Some(production_to_wire(production)),
        }),
    };
    pb::FailureReason { reason: Some(x) }
}

pub fn failure_reason_from_wire(r: pb::FailureReason) -> Result<FailureReason, WireError> {
    Ok(
        match r.reason.ok_or_else(|| missing("a step failure's reason"))? {
            F::DependencyFailed(x) => FailureReason::DependencyFailed { app: app(x.app)? },
            F::OperationEnded(_) => FailureReason::OperationEnded,
            F::TimedOut(x) => FailureReason::TimedOut {
                after_ms: x.after_ms,
            },
            F::CommandFailed(x) => FailureReason::CommandFailed {
                host: host(x.host)?,
                action: x.action,
                kind: failure_kind_from_wire(x.kind)?,
            },
            F::CommandVanished(x) => FailureReason::CommandVanished {
                id: CommandId(x.id),
            },
            F::NoOutcome(x) => FailureReason::NoOutcome {
                host: host(x.host)?,
            },
            F::PeerNotConfirmed(x) => FailureReason::PeerNotConfirmed {
                host: host(x.host)?,
                stopped: stopped_from_wire(
                    x.stopped
                        .ok_or_else(|| missing("the stopped group the peer did not confirm"))?,
                )?,
            },
            F::NotCommitted(x) => FailureReason::NotCommitted {
                rejected: x.rejected.map(reject_kind_from_wire).transpose()?,
            },
            F::Gone(_) => FailureReason::Gone,
            F::Unsupported(_) => FailureReason::Unsupported,
            F::Lagging(x) => FailureReason::Lagging {
                production: production_in(x.production)?,
            },
            F::ProductionChanged(x) => FailureReason::ProductionChanged {
                changes: x
                    .changes
                    .into_iter()
                    .map(production_change_from_wire)
                    .collect::<Result<_, _>>()?,
                production: production_in(x.production)?,
            },
        },
    )
}

pub fn step_result_to_wire(r: &StepResult) -> pb::StepResult {
    let x = match r {
        StepResult::Done { outcome } => R::Done(step_outcome_to_wire(outcome)),
        StepResult::Failed { failure } => R::Failed(pb::StepFailure {
            reason: Some(failure_reason_to_wire(&failure.reason)),
            message: failure.message.clone(),
        }),
    };
    pb::StepResult { result: Some(x) }
}

pub fn step_result_from_wire(r: pb::StepResult) -> Result<StepResult, WireError> {
    Ok(match r.result.ok_or_else(|| missing("a step's result"))? {
        R::Done(o) => StepResult::Done {
            outcome: step_outcome_from_wire(o)?,
        },
        // Kept as sent (not cut again): the sender's record is the truth.
        R::Failed(f) => StepResult::Failed {
            failure: StepFailure {
                reason: failure_reason_from_wire(
                    f.reason.ok_or_else(|| missing("a step failure's reason"))?,
                )?,
                message: f.message,
            },
        },
    })
}

pub fn step_to_wire(st: &Step) -> pb::Step {
    pb::Step {
        at: Some(step_at_to_wire(&st.at)),
        app: st.app.as_ref().map(s),
        kind: step_kind_to_wire(st.kind).into(),
        started_ms: st.started_ms,
        ended_ms: st.ended_ms,
        result: st.result.as_ref().map(step_result_to_wire),
    }
}

pub fn step_from_wire(st: pb::Step) -> Result<Step, WireError> {
    Ok(Step {
        at: step_at_from_wire(st.at)?,
        app: st.app.map(app).transpose()?,
        kind: step_kind_from_wire(st.kind),
        started_ms: st.started_ms,
        ended_ms: st.ended_ms,
        result: st.result.map(step_result_from_wire).transpose()?,
    })
}

pub fn operation_to_wire(o: &Operation) -> pb::Operation {
    pb::Operation {
        id: o.id.0,
        kind: op_kind_to_wire(o.kind).into(),
        apps: strs(&o.apps),
        started_by: o.started_by.clone(),
        started_ms: o.started_ms,
        ended_ms: o.ended_ms,
        status: op_status_to_wire(o.status).into(),
        note: o.note.clone(),
        steps: o.steps.iter().map(step_to_wire).collect(),
        plan: o.plan.as_deref().map(plan_to_wire),
        lost_ms: o.lost_ms,
        approved: strs(&o.approved),
    }
}

pub fn operation_from_wire(o: pb::Operation) -> Result<Operation, WireError> {
    Ok(Operation {
        id: OpId(o.id),
        kind: op_kind_from_wire(o.kind)?,
        apps: ids("app", o.apps, AppId::new)?,
        started_by: o.started_by,
        started_ms: o.started_ms,
        ended_ms: o.ended_ms,
        status: op_status_from_wire(o.status)?,
        note: o.note,
        steps: o
            .steps
            .into_iter()
            .map(step_from_wire)
            .collect::<Result<_, _>>()?,
        plan: o.plan.map(plan_from_wire).transpose()?.map(Box::new),
        lost_ms: o.lost_ms,
        approved: ids("app", o.approved, AppId::new)?,
    })
}
