//! Carrying a plan out through the state machine as the executor would (begin,
//! approve, run every planned step of every app wave by wave — the move with the
//! plan's epochs, demotion and placement — finish), checking every step and trying the
//! wrong moves too.

use super::*;
use crate::plan::PlannedStep;
use crate::state::{AgentDid, Healthy, Moved, StepAt, StepOutcome, StepResult, VmStop, VmStopped};

/// The move step of `m`: what the plan promotes, how it demotes, where the VMs go.
pub(super) fn planned_move(
    m: &AppMove,
) -> (&[crate::state::Promotion], DataState, &[(VmId, HostId)]) {
    m.steps
        .iter()
        .find_map(|s| match s {
            PlannedStep::PromoteAndMove {
                promote,
                demoted,
                placement,
                ..
            } => Some((promote.as_slice(), *demoted, placement.as_slice())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{} has no move step: {:?}", m.app, m.steps))
}

/// The MoveApp an executor sends for `m`: the plan's epochs of the volumes not primary
/// at the target yet, its demotion and its placement.
pub(super) fn move_cmd(s: &ClusterState, op: OpId, m: &AppMove) -> Command {
    let (promote, demoted, placement) = planned_move(m);
    let epochs = promote
        .iter()
        .filter(|p| {
            s.volumes
                .get(&p.volume)
                .is_some_and(|v| v.primary().is_none_or(|r| r.site != m.to))
        })
        .map(|p| (p.volume.clone(), p.to))
        .collect();
    Command::MoveApp {
        op,
        app: m.app.clone(),
        to: m.to.clone(),
        epochs,
        demoted,
        placement: placement.to_vec(),
    }
}

/// Plan `t` and carry the plan out; the plan.
pub(super) fn run(s: &mut ClusterState, t: &Trigger) -> Plan {
    let p = plan_ok(s, t);
    execute(s, &p);
    p
}

pub(super) fn begin(s: &mut ClusterState, p: &Plan) -> OpId {
    match ok(
        s,
        Command::BeginPlan {
            plan: Box::new(p.clone()),
            lost_ms: Some(500),
        },
    ) {
        Outcome::Operation(op) => op,
        o => panic!("BeginPlan gave {o:?}"),
    }
}

/// Carry `p` out as the executor would — begin, approve what waits for approval, run
/// every planned step of every app wave by wave, finish — checking every step and
/// trying the wrong moves too.
#[track_caller]
pub(super) fn execute(s: &mut ClusterState, p: &Plan) {
    let begin_cmd = Command::BeginPlan {
        plan: Box::new(p.clone()),
        lost_ms: Some(500),
    };
    if p.is_empty() {
        refused(s, begin_cmd, RejectKind::Invalid);
        return;
    }
    let op = begin(s, p);
    let rec = s.operations.get(&op.0).expect("the operation").clone();
    assert_eq!((rec.kind, rec.status), (p.kind, OpStatus::Running));
    assert_eq!(rec.apps, planned(p));
    assert_eq!(rec.plan.as_deref(), Some(p));
    assert_eq!(rec.lost_ms, Some(500));
    assert!(rec.approved.is_empty());
    // The same apps cannot be owned twice.
    refused(s, begin_cmd, RejectKind::Conflict);

    let waiting: BTreeSet<AppId> = p
        .apps()
        .filter(|m| m.needs_approval)
        .map(|m| m.app.clone())
        .collect();
    let approve = |apps: Vec<AppId>| Command::ApproveOperation { op, apps };
    if let Some(m) = p.apps().find(|m| m.needs_approval) {
        let cmd = move_cmd(s, op, m);
        refused(s, cmd, RejectKind::Conflict);
    }
    if let Some(m) = p.apps().find(|m| !m.needs_approval) {
        refused(s, approve(vec![m.app.clone()]), RejectKind::Conflict);
    }
    if !waiting.is_empty() {
        ok(s, approve(Vec::new()));
        let approved = &s.operations.get(&op.0).expect("op").approved;
        assert_eq!(approved.iter().cloned().collect::<BTreeSet<_>>(), waiting);
        assert_eq!(approved.len(), waiting.len());
    }
    refused(s, approve(Vec::new()), RejectKind::Conflict);

    for m in p.apps() {
        run_steps(s, op, m);
    }
    let outsider = s.apps.values().find(|a| !rec.apps.contains(&a.id)).cloned();
    if let Some(other) = outsider {
        let cmd = Command::MoveApp {
            op,
            app: other.id.clone(),
            to: other.active_site.clone(),
            epochs: Vec::new(),
            demoted: DataState::Outdated,
            placement: other
                .placement
                .iter()
                .map(|(v, h)| (v.clone(), h.clone()))
                .collect(),
        };
        refused(s, cmd, RejectKind::Conflict);
    }
    ok(
        s,
        Command::FinishOperation {
            op,
            status: OpStatus::Succeeded,
        },
    );
    let m = p.apps().next().expect("a move");
    let late = move_cmd(s, op, m);
    refused(s, late, RejectKind::Conflict);
    let at = StepAt::App {
        app: m.app.clone(),
        index: 0,
    };
    refused(s, Command::StartStep { op, at }, RejectKind::Conflict);
}

/// Every planned step of `m`, in order, as the executor runs it: started (a retried
/// start is the same step), its work (the move commits the plan's MoveApp), finished
/// with an outcome of its kind (once).
#[track_caller]
pub(super) fn run_steps(s: &mut ClusterState, op: OpId, m: &AppMove) {
    for (index, step) in (0u32..).zip(&m.steps) {
        let at = StepAt::App {
            app: m.app.clone(),
            index,
        };
        let Outcome::Step(i) = ok(s, Command::StartStep { op, at: at.clone() }) else {
            panic!("StartStep gave no index")
        };
        assert_eq!(
            ok(s, Command::StartStep { op, at: at.clone() }),
            Outcome::Step(i),
            "a retried start"
        );
        let outcome = match step {
            PlannedStep::PromoteAndMove {
                to,
                promote,
                demoted,
                ..
            } => {
                move_one(s, op, m);
                StepOutcome::Moved(Moved {
                    to: to.clone(),
                    promoted: promote.clone(),
                    demoted: *demoted,
                    already: false,
                })
            }
            other => outcome_of(s, m, other, op),
        };
        let finish = Command::FinishStep {
            op,
            index: i,
            result: StepResult::Done { outcome },
        };
        ok(s, finish.clone());
        refused(s, finish, RejectKind::Conflict);
        let rec = s
            .steps_of(op)
            .find(|(_, r)| r.at == at)
            .expect("recorded")
            .1;
        assert_eq!(rec.kind, step.kind(), "{at}");
    }
}

/// An outcome of the kind of `step` (what an executor would record, minus the agents).
fn outcome_of(s: &ClusterState, m: &AppMove, step: &PlannedStep, op: OpId) -> StepOutcome {
    let production = || s.production(&m.app).expect("the app is in the state");
    match step {
        PlannedStep::Approval => StepOutcome::Approved { op },
        PlannedStep::StopVms { vms, graceful, .. } => StepOutcome::VmsStopped {
            vms: vms
                .iter()
                .map(|(vm, host)| VmStopped {
                    vm: vm.clone(),
                    host: host.clone(),
                    how: if *graceful {
                        VmStop::ShutDown {
                            destroyed_after_s: None,
                        }
                    } else {
                        VmStop::Destroyed
                    },
                })
                .collect(),
        },
        PlannedStep::UnserveSource { host, .. } => StepOutcome::SourceUnserved {
            host: host.clone(),
            stopped: None,
        },
        PlannedStep::StartVms { vms } => StepOutcome::VmsStarted {
            vms: vms
                .iter()
                .map(|(h, spec)| (spec.vm.clone(), h.clone()))
                .collect(),
        },
        PlannedStep::HealthGate {
            site, placement, ..
        } => StepOutcome::Healthy(Healthy {
            site: site.clone(),
            running: u32::try_from(placement.len()).expect("few"),
            restarted: Vec::new(),
            served_again: None,
            probes: Vec::new(),
        }),
        PlannedStep::Baseline => StepOutcome::Baseline {
            production: production(),
        },
        PlannedStep::Snapshot { host } => StepOutcome::Snapshot {
            host: host.clone(),
            app: m.app.clone(),
            seq: ids::GroupSeq(1),
            volumes: 1,
            already: false,
        },
        PlannedStep::StartDrillVms { copies, .. } => StepOutcome::DrillVmsStarted {
            copies: copies
                .iter()
                .map(|(host, spec)| {
                    let copy = crate::plan::drill_copy(spec, op);
                    AgentDid {
                        host: host.clone(),
                        outcome: crate::state::CommandOutcome::DrillStarted {
                            domain: copy.domain_name(),
                            state: VmState::Running,
                            domain_type: "qemu".into(),
                            disks: u32::try_from(copy.disks.len()).expect("few"),
                            network: Some(topology::spec::drill_network_name(op)),
                            isolated: true,
                        },
                    }
                })
                .collect(),
        },
        PlannedStep::DrillHealthGate {
            site,
            copies,
            unchecked,
            ..
        } => StepOutcome::DrillHealthy {
            copies: *copies,
            site: site.clone(),
            probes: Vec::new(),
            unchecked: unchecked.clone(),
        },
        PlannedStep::ProductionCheck | PlannedStep::ProductionAfter { .. } => {
            StepOutcome::ProductionUnchanged {
                production: production(),
            }
        }
        PlannedStep::Cleanup { .. } => StepOutcome::Cleaned { hosts: Vec::new() },
        PlannedStep::ServeVolumes { host, group } => StepOutcome::Served {
            host: host.clone(),
            served: proto::agent::Served {
                app: group.app.clone(),
                role: group.role,
                epoch: group.epoch,
                endpoint: format!("{host}:7000"),
                already: false,
                promoted: group.promote,
                peer: group.peer.clone(),
                replaced: None,
            },
        },
        PlannedStep::PromoteAndMove { .. } => {
            panic!("the move's outcome is the state machine's (run_steps commits it)")
        }
    }
}

/// Carry a test drill's plan out: every app's steps, then the closing steps; nothing
/// moves (the state machine refuses a move in a drill), and the operation ends.
#[track_caller]
pub(super) fn execute_drill(s: &mut ClusterState, p: &Plan) {
    let op = begin(s, p);
    let before = s.clone();
    for m in p.apps() {
        let mv = Command::MoveApp {
            op,
            app: m.app.clone(),
            to: m.to.clone(),
            epochs: Vec::new(),
            demoted: DataState::Outdated,
            placement: m.placement.clone(),
        };
        refused(s, mv, RejectKind::Conflict);
        run_steps(s, op, m);
    }
    for (index, step) in (0u32..).zip(&p.closing) {
        let at = StepAt::Closing { index };
        let Outcome::Step(i) = ok(s, Command::StartStep { op, at }) else {
            panic!("StartStep gave no index")
        };
        let m = match step {
            PlannedStep::ProductionAfter { app } => the_move(p, app),
            _ => p.apps().next().expect("a move"),
        };
        let outcome = outcome_of(s, m, step, op);
        ok(
            s,
            Command::FinishStep {
                op,
                index: i,
                result: StepResult::Done { outcome },
            },
        );
    }
    for (id, a) in before.apps.iter() {
        assert_eq!(s.apps.get(id), Some(a), "the drill changed {id}");
    }
    for (id, v) in before.volumes.iter() {
        assert_eq!(s.volumes.get(id), Some(v), "the drill changed {id}");
    }
    ok(
        s,
        Command::FinishOperation {
            op,
            status: OpStatus::Succeeded,
        },
    );
}

#[track_caller]
pub(super) fn move_one(s: &mut ClusterState, op: OpId, m: &AppMove) {
    let cmd = move_cmd(s, op, m);
    let Command::MoveApp {
        epochs, demoted, ..
    } = &cmd
    else {
        unreachable!()
    };
    let (epochs, demoted) = (epochs.clone(), *demoted);
    // A reused or a skipped epoch is refused, and nothing of the group moves.
    if let Some((_, e)) = epochs.last() {
        for bad in [Epoch(e.0 - 1), Epoch(e.0 + 1)] {
            let mut wrong = cmd.clone();
            if let Command::MoveApp { epochs, .. } = &mut wrong
                && let Some(last) = epochs.last_mut()
            {
                last.1 = bad;
            }
            refused(s, wrong, RejectKind::Conflict);
        }
    }
    let before = s.clone();
    ok(s, cmd.clone());
    let rec = s.apps.get(&m.app).expect("app");
    assert_eq!(rec.active_site, m.to);
    assert_eq!(
        rec.placement
            .iter()
            .map(|(v, h)| (v.clone(), h.clone()))
            .collect::<Vec<_>>(),
        m.placement
    );
    for v in &topo(s).app(&m.app).expect("app").volumes {
        let (old, new) = (
            before.volumes.get(&v.id).expect("volume"),
            s.volumes.get(&v.id).expect("volume"),
        );
        assert_eq!(new.primary().map(|p| &p.site), Some(&m.to), "{}", v.id);
        if epochs.iter().any(|(id, _)| id == &v.id) {
            assert_eq!(new.epoch, old.epoch.next(), "{}: one epoch up", v.id);
            if let Some(was) = old.primary() {
                let now = new.replica(&was.site).expect("old primary");
                assert_eq!(
                    (now.role, now.data, now.epoch),
                    (Role::Secondary, demoted, new.epoch)
                );
            }
        } else {
            assert_eq!(new, old, "{} changed though it was primary already", v.id);
        }
    }
    for (id, a) in before.apps.iter().filter(|(id, _)| **id != m.app) {
        assert_eq!(s.apps.get(id), Some(a), "moving {} changed {id}", m.app);
    }
    for (id, v) in before.volumes.iter().filter(|(_, v)| v.app != m.app) {
        assert_eq!(s.volumes.get(id), Some(v), "moving {} changed {id}", m.app);
    }
    // Replayed (a retry after a lost reply): refused, nothing promoted twice.
    if !epochs.is_empty() {
        refused(s, cmd, RejectKind::Conflict);
    }
}
