//! The reconciler's rules, one by one, on the lab topology with every agent registered
//! and every VM reported running; then one VM stops.
#![allow(clippy::unwrap_used)]

use proto::agent::VmState;
use topology::{HostId, SiteId, VmId};

use super::*;
use crate::state::{Command, HostInventory, Issuer, OpKind, Outcome, SiteState};
use crate::test_support::{apply, lab, serve_once};

const REGISTERED: u64 = 10;
const STOPPED: u64 = 100_000;

/// The lab, every host registered at `REGISTERED`, every placed VM running; then the
/// first placed VM reported shut off at `STOPPED`. Returns it and its host.
fn one_stopped() -> (ClusterState, VmId, HostId) {
    let mut s = lab();
    let hosts: Vec<HostId> = s.hosts.keys().cloned().collect();
    for host in &hosts {
        apply(
            &mut s,
            REGISTERED,
            Command::RegisterHost {
                host: host.clone(),
                inventory: HostInventory {
                    vcpus: 8,
                    memory_bytes: 16 << 30,
                    hypervisor: "test:///default".into(),
                    domain_type: "qemu".into(),
                    agent_version: "test".into(),
                    registered_ms: REGISTERED,
                },
                fenced: false,
            },
        );
    }
    // The controller serves every group again (two rounds: secondaries, then primaries).
    while !serve_once(&mut s, REGISTERED).is_empty() {}
    let placed: Vec<(VmId, HostId)> = s
        .apps
        .values()
        .flat_map(|a| a.placement.iter().map(|(v, h)| (v.clone(), h.clone())))
        .collect();
    for (vm, host) in &placed {
        report(&mut s, REGISTERED + 1, host, vm, VmState::Running);
    }
    let (vm, host) = placed[0].clone();
    report(&mut s, STOPPED, &host, &vm, VmState::ShutOff);
    (s, vm, host)
}

fn report(s: &mut ClusterState, at_ms: u64, host: &HostId, vm: &VmId, state: VmState) {
    apply(
        s,
        at_ms,
        Command::SetVmStates {
            host: host.clone(),
            states: vec![(vm.clone(), state)],
            reason: "test".into(),
        },
    );
}

fn names(s: &ClusterState, now_ms: u64) -> Vec<(VmId, HostId)> {
    stopped(s, now_ms)
        .into_iter()
        .map(|v| (v.vm, v.host))
        .collect()
}

#[test]
fn a_stopped_vm_is_restored_where_placed_after_the_grace_and_not_before() {
    let (s, vm, host) = one_stopped();
    let grace = grace_ms(&s);
    assert!(grace > 0);
    assert_eq!(names(&s, STOPPED + grace - 1), vec![]);
    assert_eq!(names(&s, STOPPED + grace), vec![(vm.clone(), host.clone())]);
    let Some(Trigger::Restore { vms }) = restore(&s, STOPPED + grace) else {
        panic!("a restore is due")
    };
    assert_eq!(vms[0].state, Some(VmState::ShutOff));
    assert_eq!(vms[0].since_ms, STOPPED);
    // Running again: nothing to do.
    let mut s = s;
    report(&mut s, STOPPED + 1, &host, &vm, VmState::Running);
    assert_eq!(names(&s, STOPPED + 10 * grace), vec![]);
}

#[test]
fn a_vm_never_reported_or_on_a_host_that_is_not_up_is_left_alone() {
    let (mut s, vm, host) = one_stopped();
    let later = STOPPED + 10 * grace_ms(&s);
    s.vms.remove(&vm);
    assert_eq!(
        names(&s, later),
        vec![],
        "never reported: not ours to start"
    );
    let (mut s, _, host2) = one_stopped();
    assert_eq!(host, host2);
    apply(
        &mut s,
        STOPPED + 1,
        Command::SetHostState {
            host: host.clone(),
            state: HostState::Down,
            reason: "test".into(),
            last_seen_ms: None,
        },
    );
    assert_eq!(names(&s, later), vec![], "a host down is a host loss");
}

#[test]
fn an_app_at_a_site_not_up_is_left_to_the_site_rules() {
    let (mut s, _, host) = one_stopped();
    let later = STOPPED + 10 * grace_ms(&s);
    let site: SiteId = s.hosts.get(&host).unwrap().site.clone();
    for state in [SiteState::Suspect, SiteState::Down] {
        apply(
            &mut s,
            STOPPED + 1,
            Command::SetSiteState {
                site: site.clone(),
                state,
                reason: "test".into(),
            },
        );
        assert_eq!(names(&s, later), vec![], "{state:?}");
    }
}

#[test]
fn what_an_operator_stopped_stays_stopped_until_the_operator_starts_it() {
    let (mut s, vm, host) = one_stopped();
    let later = STOPPED + 10 * grace_ms(&s);
    let operator = Issuer::Operator {
        actor: "alice".into(),
    };
    let issue = |s: &mut ClusterState, at: u64, action: AgentAction| {
        apply(
            s,
            at,
            Command::IssueAgentCommands {
                issuer: operator.clone(),
                commands: vec![(host.clone(), action)],
            },
        );
    };
    issue(&mut s, STOPPED, AgentAction::Destroy { vm: vm.clone() });
    assert_eq!(names(&s, later), vec![], "held by the operator");
    issue(&mut s, STOPPED + 1, AgentAction::Start { vm: vm.clone() });
    assert_eq!(names(&s, later), vec![], "a start is pending: not raced");
}

#[test]
fn an_app_an_operation_moves_is_the_operations_and_a_restore_is_not_repeated_at_once() {
    let (mut s, vm, host) = one_stopped();
    let grace = grace_ms(&s);
    let app = s.vms.get(&vm).unwrap().app.clone();
    let Outcome::Operation(op) = apply(
        &mut s,
        STOPPED + 1,
        Command::StartOperation {
            kind: OpKind::Failover,
            apps: vec![app.clone()],
            note: "by hand".into(),
        },
    ) else {
        panic!("an operation")
    };
    assert_eq!(names(&s, STOPPED + 10 * grace), vec![], "busy");
    apply(
        &mut s,
        STOPPED + 2,
        Command::FinishOperation {
            op,
            status: OpStatus::Failed,
        },
    );
    assert_eq!(
        names(&s, STOPPED + 10 * grace),
        vec![(vm.clone(), host.clone())],
        "an operation that is not a restore does not hold it back"
    );
    // A restore that ended (here: failed) holds the app back for RETRY_MS.
    let trigger = restore(&s, STOPPED + grace).unwrap();
    let plan = crate::planner::plan(&s, &trigger).unwrap();
    let m = &plan.waves[0].apps[0];
    assert_eq!(
        m.starts,
        vec![(vm.clone(), host.clone())],
        "restarted in place"
    );
    assert!(m.stops.is_empty(), "nothing stopped: {:?}", m.stops);
    assert_eq!(
        (&m.from, &m.to),
        (&m.to, &s.apps.get(&app).unwrap().active_site)
    );
    let ended = STOPPED + grace + 5;
    let started = apply(
        &mut s,
        STOPPED + grace,
        Command::BeginPlan {
            plan: Box::new(plan),
            lost_ms: Some(STOPPED),
        },
    );
    let Outcome::Operation(op) = started else {
        panic!("{started:?}")
    };
    apply(
        &mut s,
        ended,
        Command::FinishOperation {
            op,
            status: OpStatus::Failed,
        },
    );
    assert_eq!(names(&s, ended + RETRY_MS - 1), vec![]);
    assert_eq!(names(&s, ended + RETRY_MS), vec![(vm, host)]);
}

#[test]
fn an_app_down_past_its_rto_is_said_once_and_said_again_when_it_runs() {
    let (mut s, vm, host) = one_stopped();
    let app = s.vms.get(&vm).unwrap().app.clone();
    let rto_ms = u64::from(
        s.topology()
            .and_then(|t| t.model.app(&app))
            .unwrap()
            .rto_target_s,
    ) * 1000;
    assert_eq!(outages(&s, STOPPED + rto_ms), vec![], "within its RTO");
    let due = outages(&s, STOPPED + rto_ms + 1);
    assert_eq!(due, vec![(app.clone(), Some(STOPPED))]);
    apply(
        &mut s,
        STOPPED + rto_ms + 1,
        Command::SetAppOutage {
            app: app.clone(),
            since_ms: Some(STOPPED),
        },
    );
    let said = |s: &ClusterState| match s.audit.last().map(|(_, e)| &e.event) {
        Some(crate::state::AuditEvent::AppOutage {
            app: a, ended_ms, ..
        }) if *a == app => Some(*ended_ms),
        _ => None,
    };
    assert_eq!(said(&s), Some(None), "audited: not running past its RTO");
    let status = s.app_status(&app).unwrap();
    assert!(
        matches!(status.reasons.first(), Some(crate::state::AppReason::Outage { since_ms, .. }) if *since_ms == STOPPED),
        "{status:?}"
    );
    assert_eq!(outages(&s, STOPPED + 2 * rto_ms), vec![], "said once");
    // It runs again: said, and the record is clear.
    report(&mut s, STOPPED + 3 * rto_ms, &host, &vm, VmState::Running);
    assert_eq!(outages(&s, STOPPED + 3 * rto_ms), vec![(app.clone(), None)]);
    apply(
        &mut s,
        STOPPED + 3 * rto_ms,
        Command::SetAppOutage {
            app: app.clone(),
            since_ms: None,
        },
    );
    assert_eq!(said(&s), Some(Some(STOPPED + 3 * rto_ms)));
    assert_eq!(s.apps.get(&app).unwrap().outage_since_ms, None);
    assert_eq!(outages(&s, STOPPED + 4 * rto_ms), vec![]);
}

/// The health gate's view (`stopped_in_place`): a VM whose start on its new host was
/// never reported, last seen on a host that is not up any more, runs nowhere; one last
/// seen running on a host that is up is not the gate's to start.
#[test]
fn a_vm_last_seen_on_a_lost_host_is_stopped_in_place_for_the_health_gate() {
    let (mut s, _, _) = one_stopped();
    // A running VM, and another up host of its site to place it on.
    let (vm, old) = s
        .vms
        .values()
        .find(|r| r.state == VmState::Running)
        .map(|r| (r.vm.clone(), r.host.clone()))
        .unwrap();
    let site = s.hosts.get(&old).unwrap().site.clone();
    let new = s
        .hosts
        .values()
        .find(|h| h.site == site && h.id != old)
        .map(|h| h.id.clone())
        .unwrap();
    let topo = s.topology().unwrap().model.clone();
    let app = topo
        .apps
        .iter()
        .find(|a| a.vms.iter().any(|v| v.id == vm))
        .unwrap();
    let model = app.vms.iter().find(|v| v.id == vm).unwrap();
    let spec = topology::spec::VmSpec::from_model(app, model, topology::spec::NetworkSpec::None);
    let restart = vec![(new.clone(), spec)];
    assert!(
        s.stopped_in_place(&restart).is_empty(),
        "it runs on {old}, which is up"
    );
    apply(
        &mut s,
        STOPPED + 1,
        Command::SetHostState {
            host: old.clone(),
            state: HostState::Down,
            reason: "test".into(),
            last_seen_ms: None,
        },
    );
    assert_eq!(
        s.stopped_in_place(&restart).len(),
        1,
        "{old} is down: {vm} runs nowhere"
    );
}
