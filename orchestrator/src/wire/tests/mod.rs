//! Plans and operations cross the wire unchanged (every variant of every enum they
//! carry, and real plans from the planner), and a message that does not make a valid
//! value is refused with an error that says what is wrong.
#![allow(clippy::unwrap_used)]

mod audit;
mod every;

use every::*;
use ids::OpId;

use super::*;
use crate::pb;
use crate::plan::{AppMove, DrillKind, Plan, Skip, Trigger, Wave};
use crate::planner;
use crate::records::{OpKind, OpStatus, Step, StepAt, StepFailure, StepKind, StepResult};
use crate::state::{Command, Operation, Outcome};
use crate::test_support::{apply, lab};

/// `x` crosses the wire and back unchanged, and prints the same JSON (what the CLI
/// shows) after.
fn round_trip<T, P>(x: &T, to: impl Fn(&T) -> P, from: impl Fn(P) -> Result<T, WireError>)
where
    T: PartialEq + std::fmt::Debug + serde::Serialize,
{
    let back = from(to(x)).unwrap_or_else(|e| panic!("{x:?} does not decode: {e}"));
    assert_eq!(&back, x);
    assert_eq!(
        serde_json::to_string(&back).unwrap(),
        serde_json::to_string(x).unwrap()
    );
}

/// Plans the planner makes in the lab: a site loss, a switchover, a failback and a
/// test drill.
fn real_plans() -> Vec<Plan> {
    let s = lab();
    let active_north: Vec<_> = s
        .apps
        .values()
        .filter(|a| a.active_site.as_str() == "north")
        .map(|a| a.id.clone())
        .collect();
    assert!(!active_north.is_empty(), "the lab has apps active at north");
    let triggers = [
        Trigger::SiteLost {
            site: site("north"),
        },
        Trigger::Switchover {
            apps: active_north.clone(),
            to: site("south"),
        },
        Trigger::Failback {
            apps: s.apps.keys().cloned().collect(),
        },
        Trigger::TestDrill {
            apps: active_north,
            to: None,
        },
    ];
    triggers
        .iter()
        .map(|t| planner::plan(&s, t).unwrap_or_else(|e| panic!("{t:?}: {e}")))
        .collect()
}

/// The VM and group specs of the lab's site-loss plan.
fn real_specs() -> (topology::spec::VmSpec, topology::spec::GroupSpec) {
    let plan = &real_plans()[0];
    let steps = || plan.apps().flat_map(|m| m.steps.iter());
    let spec = steps()
        .find_map(|s| match s {
            crate::plan::PlannedStep::StartVms { vms } => vms.first().map(|(_, v)| v.clone()),
            _ => None,
        })
        .expect("the site-loss plan starts VMs");
    let group = steps()
        .find_map(|s| match s {
            crate::plan::PlannedStep::ServeVolumes { group, .. } => Some(group.clone()),
            _ => None,
        })
        .expect("the site-loss plan serves volumes (the lab's volumes = \"agents\")");
    (spec, group)
}

/// A plan holding every planned step, every skip reason and `trigger`.
fn plan_with_everything(trigger: Trigger, drill: Option<DrillKind>) -> Plan {
    let (spec, group) = real_specs();
    let steps = every_planned_step(&spec, &group);
    let app_move = |a: &str, tier: u32, graceful: bool| AppMove {
        app: app(a),
        tier,
        from: site("north"),
        to: site("south"),
        needs_approval: !graceful,
        graceful,
        volumes: vec![volume(&format!("{a}-data")), volume(&format!("{a}-logs"))],
        placement: vec![(vm(&format!("{a}-1")), host("south-h1"))],
        starts: vec![(vm(&format!("{a}-2")), host("south-h2"))],
        stops: vec![(vm(&format!("{a}-1")), host("north-h1"))],
        rto_target_s: 120 + tier,
        health_timeout_ms: 300_000 + u64::from(tier),
        steps: steps.clone(),
    };
    Plan {
        kind: trigger.kind(),
        trigger,
        waves: vec![
            Wave {
                apps: vec![app_move("db", 1, true), app_move("api", 1, false)],
            },
            Wave {
                apps: vec![app_move("portal", 2, true)],
            },
        ],
        skipped: every_skip_reason()
            .into_iter()
            .enumerate()
            .map(|(i, reason)| Skip {
                app: app(&format!("app-{i}")),
                reason,
            })
            .collect(),
        drill,
        closing: steps[8..].to_vec(),
        interrupted: steps[12..13].to_vec(),
    }
}

#[test]
fn every_variant_is_listed() {
    let (spec, group) = real_specs();
    covers(&every_trigger(), 8, trigger_variant);
    covers(&every_skip_reason(), 18, skip_variant);
    covers(&every_planned_step(&spec, &group), 14, planned_step_variant);
    covers(&every_step_outcome(), 14, step_outcome_variant);
    covers(&every_failure_reason(), 12, failure_reason_variant);
    covers(&every_vm_stop(), 3, vm_stop_variant);
    covers(&every_production_change(), 7, production_change_variant);
}

#[test]
fn every_part_of_a_plan_crosses_the_wire_unchanged() {
    for t in every_trigger() {
        round_trip(&t, trigger_to_wire, trigger_from_wire);
    }
    for r in every_skip_reason() {
        round_trip(&r, skip_reason_to_wire, skip_reason_from_wire);
    }
    let (spec, group) = real_specs();
    for s in every_planned_step(&spec, &group) {
        round_trip(&s, planned_step_to_wire, planned_step_from_wire);
    }
    let drills = [
        None,
        Some(DrillKind::Test),
        Some(DrillKind::Switchover),
        Some(DrillKind::SiteLoss),
    ];
    for (t, drill) in every_trigger().into_iter().zip(drills.iter().cycle()) {
        round_trip(
            &plan_with_everything(t, *drill),
            plan_to_wire,
            plan_from_wire,
        );
    }
}

#[test]
fn the_planners_plans_cross_the_wire_unchanged() {
    for plan in real_plans() {
        // The lab's apps are at their preferred sites: a failback skips every one.
        if matches!(plan.trigger, Trigger::Failback { .. }) {
            assert!(plan.is_empty() && !plan.skipped.is_empty(), "{plan:?}");
        } else {
            assert!(!plan.is_empty(), "{:?} moves no app", plan.trigger);
        }
        round_trip(&plan, plan_to_wire, plan_from_wire);
    }
}

#[test]
fn every_part_of_an_operation_crosses_the_wire_unchanged() {
    for o in every_step_outcome() {
        round_trip(&o, step_outcome_to_wire, step_outcome_from_wire);
    }
    for r in every_failure_reason() {
        round_trip(&r, failure_reason_to_wire, failure_reason_from_wire);
    }
    for c in every_production_change() {
        round_trip(&c, production_change_to_wire, production_change_from_wire);
    }
    for h in every_vm_stop() {
        round_trip(&h, vm_stop_to_wire, vm_stop_from_wire);
    }
}

/// An operation whose saga log holds every outcome, every failure and a running step.
fn operation_with_everything() -> Operation {
    let mut steps: Vec<Step> = Vec::new();
    let mut at = 0u32;
    let mut step = |kind, app: Option<&str>, result: Option<StepResult>| {
        at += 1;
        Step {
            at: match at % 3 {
                0 => StepAt::App {
                    app: every::app("db"),
                    index: at,
                },
                1 => StepAt::Closing { index: at },
                _ => StepAt::Interrupted { index: at },
            },
            app: app.map(every::app),
            kind,
            started_ms: 1_000 + u64::from(at),
            ended_ms: result.as_ref().map(|_| 2_000 + u64::from(at)),
            result,
        }
    };
    for outcome in every_step_outcome() {
        steps.push(step(
            StepKind::HealthGate,
            Some("db"),
            Some(StepResult::Done { outcome }),
        ));
    }
    for (i, reason) in every_failure_reason().into_iter().enumerate() {
        steps.push(step(
            StepKind::PromoteAndMove,
            None,
            Some(StepResult::Failed {
                failure: StepFailure::new(reason, format!("failure {i}: what to do")),
            }),
        ));
    }
    for kind in [
        StepKind::Approval,
        StepKind::Fence,
        StepKind::Stop,
        StepKind::StopVolumes,
        StepKind::ServeVolumes,
        StepKind::StartVms,
        StepKind::Baseline,
        StepKind::Snapshot,
        StepKind::StartDrillVms,
        StepKind::ProductionCheck,
        StepKind::Cleanup,
        StepKind::ProductionAfter,
        StepKind::Unknown,
    ] {
        steps.push(step(kind, Some("api"), None));
    }
    Operation {
        id: OpId(7),
        kind: OpKind::Switchover,
        apps: vec![app("db"), app("api")],
        started_by: "alice".into(),
        started_ms: 1_000,
        ended_ms: Some(9_000),
        status: OpStatus::Failed,
        note: "switchover of [db, api] to south".into(),
        steps,
        plan: Some(Box::new(plan_with_everything(
            Trigger::Switchover {
                apps: vec![app("db"), app("api")],
                to: site("south"),
            },
            Some(DrillKind::Switchover),
        ))),
        lost_ms: Some(900),
        approved: vec![app("api")],
    }
}

#[test]
fn an_operation_with_every_outcome_and_failure_crosses_the_wire_unchanged() {
    let o = operation_with_everything();
    round_trip(&o, operation_to_wire, operation_from_wire);
    let bare = Operation {
        ended_ms: None,
        status: OpStatus::Running,
        steps: Vec::new(),
        plan: None,
        lost_ms: None,
        approved: Vec::new(),
        ..o
    };
    round_trip(&bare, operation_to_wire, operation_from_wire);
}

#[test]
fn an_operation_the_state_machine_began_crosses_the_wire_unchanged() {
    let mut s = lab();
    for plan in real_plans().into_iter().take(1) {
        let Outcome::Operation(OpId(id)) = apply(
            &mut s,
            10,
            Command::BeginPlan {
                plan: Box::new(plan),
                lost_ms: Some(5),
            },
        ) else {
            panic!("BeginPlan did not begin an operation");
        };
        let o = s.operation_view(id).unwrap();
        assert!(o.plan.is_some());
        round_trip(&o, operation_to_wire, operation_from_wire);
    }
}

#[test]
fn a_bad_plan_or_operation_is_refused_with_what_is_wrong() {
    let plan = real_plans().remove(0);
    let good = plan_to_wire(&plan);

    let no_trigger = pb::Plan {
        trigger: None,
        ..good.clone()
    };
    let e = plan_from_wire(no_trigger).unwrap_err();
    assert!(matches!(e, WireError::Missing { .. }), "{e}");
    assert!(e.to_string().contains("trigger"), "{e}");

    let no_kind = pb::Plan {
        kind: 0,
        ..good.clone()
    };
    let e = plan_from_wire(no_kind).unwrap_err();
    assert!(matches!(e, WireError::UnknownEnum { value: 0, .. }), "{e}");

    let unknown_drill = pb::Plan {
        drill: Some(42),
        ..good.clone()
    };
    let e = plan_from_wire(unknown_drill).unwrap_err();
    assert!(matches!(e, WireError::UnknownEnum { value: 42, .. }), "{e}");

    let mut empty_step = good.clone();
    empty_step.waves[0].apps[0].steps[0] = pb::PlannedStep { step: None };
    let e = plan_from_wire(empty_step).unwrap_err();
    assert!(matches!(e, WireError::Missing { .. }), "{e}");

    let mut bad_app = good.clone();
    bad_app.waves[0].apps[0].app = "Not An Id!".into();
    let e = plan_from_wire(bad_app).unwrap_err();
    assert!(
        matches!(&e, WireError::BadId { what: "app", value, .. } if value == "Not An Id!"),
        "{e}"
    );

    let bad_skip = pb::SkipReason {
        reason: Some(pb::skip_reason::Reason::ReplicaNotUpToDate(
            pb::SkipReplicaNotUpToDate {
                volume: "db-data".into(),
                site: "south".into(),
                data: 0,
            },
        )),
    };
    assert!(matches!(
        skip_reason_from_wire(bad_skip),
        Err(WireError::UnknownEnum { value: 0, .. })
    ));

    let big_port = pb::PlannedProbe {
        host: "south-h1".into(),
        probe: Some(pb::planned_probe::Probe::Tcp(pb::TcpProbe {
            vm: "api-1".into(),
            port: 70_000,
            address: None,
            timeout_s: 5,
        })),
    };
    assert!(matches!(
        planned_probe_from_wire(big_port),
        Err(WireError::OutOfRange { value: 70_000, .. })
    ));

    let op = operation_to_wire(&operation_with_everything());
    let mut no_status = op.clone();
    no_status.status = 0;
    assert!(matches!(
        operation_from_wire(no_status),
        Err(WireError::UnknownEnum { value: 0, .. })
    ));
    let mut no_at = op.clone();
    no_at.steps[0].at = None;
    assert!(matches!(
        operation_from_wire(no_at),
        Err(WireError::Missing { .. })
    ));
    let mut no_outcome = op.clone();
    no_outcome.steps[0].result = Some(pb::StepResult {
        result: Some(pb::step_result::Result::Done(pb::StepOutcome {
            outcome: None,
        })),
    });
    assert!(matches!(
        operation_from_wire(no_outcome),
        Err(WireError::Missing { .. })
    ));
}

#[test]
fn an_agent_failure_is_refused_as_a_steps_evidence() {
    let failed = proto::agent::wire::outcome_to_wire(
        crate::records::CommandId(3),
        &proto::agent::Executed::failed(proto::agent::FailureKind::Failed, "no such domain"),
    );
    let cleaned = pb::StepOutcome {
        outcome: Some(pb::step_outcome::Outcome::Cleaned(pb::OutcomeCleaned {
            hosts: vec![pb::AgentDid {
                host: "south-h1".into(),
                outcome: Some(failed),
            }],
        })),
    };
    let e = step_outcome_from_wire(cleaned).unwrap_err();
    assert!(matches!(e, WireError::Invalid { .. }), "{e}");
}

#[test]
fn a_step_kind_this_side_does_not_know_reads_as_unknown() {
    assert_eq!(step_kind_from_wire(0), StepKind::Unknown);
    assert_eq!(step_kind_from_wire(999), StepKind::Unknown);
    assert_eq!(
        step_kind_to_wire(StepKind::Unknown),
        pb::StepKind::Unspecified
    );
    assert_eq!(
        step_kind_from_wire(step_kind_to_wire(StepKind::StopVolumes).into()),
        StepKind::StopVolumes
    );
}
