//! Carrying a plan out: the state machine's BeginPlan, ApproveOperation and MoveApp.

use super::*;

#[test]
pub(super) fn begin_plan_refuses_empty_unknown_duplicate_and_owned_apps() {
    let mut s = steady(&model(4, 4, 1, 12));
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    let cmd = |p: &Plan| Command::BeginPlan {
        plan: Box::new(p.clone()),
        lost_ms: None,
    };
    let at_b: Vec<AppId> = active_at(&s, B).into_iter().collect();
    let empty = plan_ok(
        &s,
        &Trigger::Failover {
            apps: at_b,
            to: site(B),
        },
    );
    assert!(empty.is_empty());
    refused(&mut s, cmd(&empty), RejectKind::Invalid);
    // A plan made for another cluster.
    let other = steady(&model(4, 6, 1, 12));
    let foreign = plan_ok(
        &other,
        &Trigger::Failover {
            apps: vec![app(5)],
            to: site(A),
        },
    );
    refused(&mut s, cmd(&foreign), RejectKind::NotFound);
    let mut twice = p.clone();
    twice.waves.push(twice.waves[0].clone());
    refused(&mut s, cmd(&twice), RejectKind::Conflict);
    let mut ghost_host = p.clone();
    ghost_host.waves[0].apps[0].placement[0].1 = HostId::new("ghost");
    refused(&mut s, cmd(&ghost_host), RejectKind::NotFound);

    let op = begin(&mut s, &p);
    refused(&mut s, cmd(&p), RejectKind::Conflict);
    ok(
        &mut s,
        Command::FinishOperation {
            op,
            status: OpStatus::Aborted,
        },
    );
    let again = begin(&mut s, &p);
    assert_eq!(again, OpId(op.0 + 1));
}

#[test]
pub(super) fn move_app_promotes_at_the_next_epoch_only_what_the_plan_allows() {
    let mut s = steady(&model(4, 6, 1, 11));
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    let op = begin(&mut s, &p);
    if p.apps().any(|m| m.needs_approval) {
        ok(&mut s, Command::ApproveOperation { op, apps: vec![] });
    }
    let m = p.apps().next().expect("a move").clone();
    let good = move_cmd(&s, op, &m);
    type Edit<'a> = &'a dyn Fn(&mut Vec<(VolumeId, Epoch)>, &mut SiteId, &mut Vec<(VmId, HostId)>);
    let with = |f: Edit<'_>| {
        let mut c = good.clone();
        if let Command::MoveApp {
            epochs,
            to,
            placement,
            ..
        } = &mut c
        {
            f(epochs, to, placement);
        }
        c
    };
    // The replica at the target fell behind after the plan was made.
    set_data(&mut s, &m.volumes[0], &site(B), DataState::Syncing);
    let r = refused(&mut s, good.clone(), RejectKind::Conflict);
    assert!(r.contains("Syncing"), "{r}");
    set_data(&mut s, &m.volumes[0], &site(B), DataState::UpToDate);
    // Not a production site; a volume left out; a volume or VM of another app; a
    // host of the other site.
    refused(
        &mut s,
        with(&|_, to, _| *to = site(WITNESS)),
        RejectKind::Invalid,
    );
    refused(
        &mut s,
        with(&|e, _, _| drop(e.remove(0))),
        RejectKind::Invalid,
    );
    let stranger = p.apps().nth(1).expect("another move").clone();
    let (sv, sm) = (stranger.volumes[0].clone(), stranger.placement[0].clone());
    refused(
        &mut s,
        with(&|e, _, _| e.push((sv.clone(), Epoch(2)))),
        RejectKind::NotFound,
    );
    refused(
        &mut s,
        with(&|_, _, pl| pl.push(sm.clone())),
        RejectKind::NotFound,
    );
    let a_host = topo(&s).hosts_at(&site(A)).next().expect("host").id.clone();
    refused(
        &mut s,
        with(&|_, _, pl| pl[0].1 = a_host.clone()),
        RejectKind::Invariant,
    );
    let mut unknown_op = good.clone();
    if let Command::MoveApp { op, .. } = &mut unknown_op {
        *op = OpId(99);
    }
    refused(&mut s, unknown_op, RejectKind::NotFound);
    move_one(&mut s, op, &m);
    for v in &m.volumes {
        assert_eq!(s.volumes.get(v).expect("volume").epoch, Epoch(2));
    }
}

#[test]
pub(super) fn approval_is_given_once_and_only_to_apps_that_wait_for_it() {
    let mut m = model(4, 8, 1, 13);
    for (i, a) in m.apps.iter_mut().enumerate() {
        a.preferred_site = site(A);
        a.failover = if i % 2 == 0 {
            FailoverPolicy::ManualApproval
        } else {
            FailoverPolicy::Auto
        };
    }
    let mut s = steady(&m);
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    assert_eq!(p.apps().count(), 8);
    let op = begin(&mut s, &p);
    let approve = |apps: &[usize]| Command::ApproveOperation {
        op,
        apps: apps.iter().map(|&i| app(i)).collect(),
    };
    let approved = |s: &ClusterState| s.operations.get(&op.0).expect("op").approved.clone();
    refused(&mut s, approve(&[1]), RejectKind::Conflict);
    refused(&mut s, approve(&[0, 1]), RejectKind::Conflict);
    refused(
        &mut s,
        Command::ApproveOperation {
            op,
            apps: vec![AppId::new("ghost")],
        },
        RejectKind::Conflict,
    );
    // A waiting app cannot move; the others do not wait.
    let early = move_cmd(&s, op, the_move(&p, &app(0)));
    let r = refused(&mut s, early, RejectKind::Conflict);
    assert!(r.contains("approv"), "{r}");
    move_one(&mut s, op, the_move(&p, &app(1)));
    ok(&mut s, approve(&[0, 0]));
    assert_eq!(approved(&s), vec![app(0)]);
    refused(&mut s, approve(&[0]), RejectKind::Conflict);
    move_one(&mut s, op, the_move(&p, &app(0)));
    ok(&mut s, approve(&[]));
    let all: BTreeSet<AppId> = [0, 2, 4, 6].map(app).into();
    assert_eq!(approved(&s).into_iter().collect::<BTreeSet<_>>(), all);
    assert_eq!(approved(&s).len(), 4);
    let r = refused(&mut s, approve(&[]), RejectKind::Conflict);
    assert!(r.contains("waits for no approval"), "{r}");
    // A hand-made operation has no plan and nothing to approve; unknown and finished
    // operations approve nothing.
    let Outcome::Operation(drill) = ok(
        &mut s,
        Command::StartOperation {
            kind: OpKind::Drill,
            apps: vec![app(3)],
            note: String::new(),
        },
    ) else {
        panic!("no operation")
    };
    refused(
        &mut s,
        Command::ApproveOperation {
            op: drill,
            apps: vec![],
        },
        RejectKind::Conflict,
    );
    refused(
        &mut s,
        Command::ApproveOperation {
            op: OpId(99),
            apps: vec![],
        },
        RejectKind::NotFound,
    );
    ok(
        &mut s,
        Command::FinishOperation {
            op,
            status: OpStatus::Succeeded,
        },
    );
    refused(&mut s, approve(&[]), RejectKind::Conflict);
}

/// Apply `command` at `at_ms`; it must succeed.
#[track_caller]
fn ok_at(s: &mut ClusterState, at_ms: u64, command: Command) {
    let r = s.apply(&Request {
        actor: "tester".into(),
        at_ms,
        command: command.clone(),
    });
    assert!(matches!(r, Response::Applied { .. }), "{command:?}: {r:?}");
}

/// The agent of `host` registers at `at_ms` (`fenced`: after its lease ran out).
fn registers(s: &mut ClusterState, host: &HostId, at_ms: u64, fenced: bool) {
    let inventory = inventory(at_ms);
    let host = host.clone();
    ok_at(
        s,
        at_ms,
        Command::RegisterHost {
            host,
            inventory,
            fenced,
        },
    );
}

/// The move starts a VM on its new host; that host's lease runs out before the VM is
/// seen running (its agent fences it and registers again): the health gate owes that
/// VM one start where placed — not while the move's start is under way, not twice for
/// one fence, whichever leader asks (seen in a test run, where the gate waited until
/// its timeout for a VM nothing would start again).
#[test]
pub(super) fn the_health_gate_owes_a_start_to_a_vm_fenced_after_the_move_started_it() {
    let (mut s, app_id, lost, _, _) = app_on_two_hosts();
    set_host(&mut s, &lost, HostState::Down);
    let p = plan_ok(&s, &Trigger::HostLost { host: lost.clone() });
    let m = the_move(&p, &app_id).clone();
    let Some(PlannedStep::HealthGate { restart, .. }) = m.steps.last() else {
        panic!("a move ends with its health gate: {:?}", m.steps)
    };
    let (vm, target) = m
        .starts
        .first()
        .cloned()
        .expect("the lost host's VMs start");
    assert!(
        restart
            .iter()
            .any(|(h, spec)| *h == target && spec.vm == vm),
        "{vm} on {target} is the gate's to restart: {restart:?}"
    );
    registers(&mut s, &target, 500, false);
    let op = begin(&mut s, &p);
    let owed = |s: &ClusterState| -> Vec<(VmId, HostId)> {
        s.owed_restarts(op, restart)
            .into_iter()
            .map(|(h, spec)| (spec.vm.clone(), h.clone()))
            .collect()
    };
    let start = |s: &mut ClusterState, at_ms: u64| {
        ok_at(
            s,
            at_ms,
            Command::IssueAgentCommands {
                issuer: crate::state::Issuer::Operation { op },
                commands: vec![(
                    target.clone(),
                    crate::state::AgentAction::Start { vm: vm.clone() },
                )],
            },
        );
    };
    let report = |s: &mut ClusterState, at_ms: u64, state: VmState| {
        ok_at(
            s,
            at_ms,
            Command::SetVmStates {
                host: target.clone(),
                states: vec![(vm.clone(), state)],
                reason: "test".into(),
            },
        );
    };
    start(&mut s, 1_000);
    // Defined, not running yet: its start is under way.
    report(&mut s, 1_100, VmState::ShutOff);
    assert_eq!(owed(&s), vec![]);
    // The fence undid the start.
    registers(&mut s, &target, 2_000, true);
    assert_eq!(owed(&s), vec![(vm.clone(), target.clone())]);
    // Started again: owed nothing more, running or not yet.
    start(&mut s, 2_100);
    assert_eq!(owed(&s), vec![]);
    report(&mut s, 2_200, VmState::Running);
    assert_eq!(owed(&s), vec![]);
    // A host down owes nothing: that is its loss, for the next plan.
    report(&mut s, 2_300, VmState::ShutOff);
    registers(&mut s, &target, 3_000, true);
    assert_eq!(owed(&s), vec![(vm.clone(), target.clone())]);
    set_host(&mut s, &target, HostState::Down);
    assert_eq!(owed(&s), vec![]);
}
