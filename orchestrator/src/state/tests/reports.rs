//! Agents' VM reports: a complete list (registration) corrects what the cluster
//! records wrongly; a state sent again unchanged adds nothing to the audit log.

use super::*;

fn placed(s: &ClusterState) -> (VmId, HostId) {
    s.apps
        .values()
        .flat_map(|a| a.placement.iter())
        .next()
        .map(|(v, h)| (v.clone(), h.clone()))
        .expect("a placed VM")
}

/// A cluster with one placed VM reported running on its host, and another host.
fn running_and_another_host() -> (ClusterState, VmId, HostId, HostId) {
    let mut s = cluster(2, 12);
    let (vm, host) = placed(&s);
    applied(&s.apply(&req(Command::SetVmStates {
        host: host.clone(),
        states: vec![(vm.clone(), VmState::Running)],
        reason: "started".into(),
    })));
    let other = s
        .hosts
        .keys()
        .find(|h| **h != host)
        .cloned()
        .expect("another host");
    (s, vm, host, other)
}

fn applied(r: &Response) {
    assert!(matches!(r, Response::Applied { .. }), "not applied: {r:?}");
}

fn last_changes(s: &ClusterState) -> Vec<(VmId, VmState)> {
    match s.audit.last().map(|(_, e)| &e.event) {
        Some(AuditEvent::VmStates { changes, .. }) => {
            changes.iter().map(|c| (c.vm.clone(), c.state)).collect()
        }
        other => panic!("the last audit entry is not a VM report: {other:?}"),
    }
}

#[test]
fn a_complete_report_marks_what_it_leaves_out_gone_and_audits_it() {
    let mut s = cluster(2, 12);
    let (vm, host) = placed(&s);
    applied(&s.apply(&req(Command::SetVmStates {
        host: host.clone(),
        states: vec![(vm.clone(), VmState::Running)],
        reason: "started".into(),
    })));
    // The agent comes back on an empty hypervisor and lists nothing.
    applied(&s.apply(&req(Command::ReportAllVms {
        host: host.clone(),
        states: Vec::new(),
        reason: "found by the agent at registration".into(),
    })));
    assert_eq!(s.vms.get(&vm).map(|r| r.state), Some(VmState::Undefined));
    assert_eq!(last_changes(&s), vec![(vm.clone(), VmState::Undefined)]);
    // Saying it again changes nothing and is not audited.
    let before = s.audit.len();
    let r = s.apply(&req(Command::ReportAllVms {
        host: host.clone(),
        states: Vec::new(),
        reason: "again".into(),
    }));
    assert!(matches!(r, Response::Rejected(_)), "{r:?}");
    assert_eq!(s.audit.len(), before);
    // A change report (not complete) leaves unlisted VMs as they are.
    applied(&s.apply(&req(Command::SetVmStates {
        host: host.clone(),
        states: vec![(vm.clone(), VmState::Running)],
        reason: "started".into(),
    })));
    let r = s.apply(&req(Command::SetVmStates {
        host: host.clone(),
        states: vec![(VmId::new("someone-elses-domain"), VmState::Running)],
        reason: "a foreign domain".into(),
    }));
    assert!(matches!(r, Response::Rejected(_)), "{r:?}");
    assert_eq!(s.vms.get(&vm).map(|r| r.state), Some(VmState::Running));
}

#[test]
fn a_complete_report_leaves_vms_recorded_on_other_hosts_alone() {
    let (mut s, vm, _, other) = running_and_another_host();
    let r = s.apply(&req(Command::ReportAllVms {
        host: other,
        states: Vec::new(),
        reason: "found by the agent at registration".into(),
    }));
    assert!(matches!(r, Response::Rejected(_)), "{r:?}");
    assert_eq!(s.vms.get(&vm).map(|r| r.state), Some(VmState::Running));
}

#[test]
fn the_host_a_vm_moved_from_confirms_it_off_once_however_often_it_reports() {
    let (mut s, vm, host, old) = running_and_another_host();
    // The old host says it is off there: audited once (placed elsewhere).
    let off = |s: &mut ClusterState| {
        s.apply(&req(Command::ReportAllVms {
            host: old.clone(),
            states: vec![(vm.clone(), VmState::ShutOff)],
            reason: "periodic".into(),
        }))
    };
    applied(&off(&mut s));
    let Some(AuditEvent::VmStates { changes, .. }) = s.audit.last().map(|(_, e)| &e.event) else {
        panic!("a VM report")
    };
    assert_eq!(changes.len(), 1);
    assert!(!changes[0].placed_here);
    assert_eq!(s.vms.get(&vm).map(|r| r.host.clone()), Some(host.clone()));
    let before = s.audit.len();
    for _ in 0..3 {
        assert!(matches!(off(&mut s), Response::Rejected(_)));
    }
    assert_eq!(s.audit.len(), before, "said once");
    // A change where it runs keeps the confirmation.
    applied(&s.apply(&req(Command::SetVmStates {
        host: host.clone(),
        states: vec![(vm.clone(), VmState::Paused)],
        reason: "paused".into(),
    })));
    assert!(matches!(off(&mut s), Response::Rejected(_)));
}
