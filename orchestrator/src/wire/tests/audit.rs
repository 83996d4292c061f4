//! Every audit event crosses the wire and back unchanged.

use crate::pb;
use crate::pb::audit_event::Event as E;
use crate::state::{
    AgentEvent, AppState, DataState, HostState, LinkReport, OpKind, OpStatus, SiteState, StepAt,
    StepKind, VmState,
};
use crate::state::{AuditEvent, CommandId, Epoch, Issuer, OpId, VmStateChange};
use crate::wire::WireError;
use crate::wire::audit::*;
use topology::{AppId, HostId, SiteId, VmId, VolumeId};

fn every_event() -> Vec<AuditEvent> {
    let (a, h, st, v, vm) = (
        AppId::new("db"),
        HostId::new("north-h1"),
        SiteId::new("north"),
        VolumeId::new("db-data"),
        VmId::new("db-1"),
    );
    vec![
        AuditEvent::TopologyApplied {
            version: 2,
            digest: "ab".repeat(32),
            hosts: 4,
            apps: 5,
            volumes: 6,
            removed_apps: 1,
            removed_hosts: 0,
        },
        AuditEvent::SiteState {
            site: st.clone(),
            from: SiteState::Up,
            to: SiteState::Down,
            reason: "r".into(),
        },
        AuditEvent::HostState {
            host: h.clone(),
            from: HostState::Unknown,
            to: HostState::Up,
            reason: "r".into(),
        },
        AuditEvent::AppState {
            app: a.clone(),
            from: AppState::Running,
            to: AppState::FailingOver,
            reason: "r".into(),
        },
        AuditEvent::VmPlaced {
            app: a.clone(),
            vm: vm.clone(),
            host: h.clone(),
        },
        AuditEvent::ReplicaPromoted {
            volume: v.clone(),
            site: st.clone(),
            epoch: Epoch(3),
            demoted_sites: vec![SiteId::new("south")],
            demoted: DataState::Outdated,
        },
        AuditEvent::ReplicaData {
            volume: v.clone(),
            site: st.clone(),
            from: DataState::Syncing,
            to: DataState::UpToDate,
        },
        AuditEvent::OpStarted {
            op: OpId(7),
            kind: OpKind::Failover,
            apps: vec![a.clone()],
            note: "site north lost".into(),
            waves: 2,
            skipped: vec![crate::plan::Skip {
                app: AppId::new("mail"),
                reason: crate::plan::SkipReason::NoRoom {
                    site: SiteId::new("south"),
                    vm: VmId::new("mail-1"),
                    vcpus: 4,
                    memory: topology::ByteSize(8 << 30),
                },
            }],
        },
        AuditEvent::StepStarted {
            op: OpId(7),
            index: 0,
            at: StepAt::App {
                app: a.clone(),
                index: 5,
            },
            kind: StepKind::HealthGate,
            again: true,
        },
        AuditEvent::StepFinished {
            op: OpId(7),
            index: 0,
            at: StepAt::Closing { index: 1 },
            kind: StepKind::ProductionAfter,
            ok: false,
            detail: "timed out".into(),
        },
        AuditEvent::StepStarted {
            op: OpId(7),
            index: 1,
            at: StepAt::Interrupted { index: 0 },
            kind: StepKind::Cleanup,
            again: false,
        },
        AuditEvent::OpFinished {
            op: OpId(7),
            status: OpStatus::Interrupted,
        },
        AuditEvent::OpApproved {
            op: OpId(7),
            apps: vec![a.clone()],
        },
        AuditEvent::AppMoved {
            op: OpId(7),
            app: a.clone(),
            from: st.clone(),
            to: SiteId::new("south"),
            promoted: vec![(v.clone(), Epoch(4))],
            demoted: DataState::Outdated,
            placement: vec![(vm.clone(), HostId::new("south-h1"))],
        },
        AuditEvent::ReplicaLink {
            app: a.clone(),
            site: st.clone(),
            epoch: Epoch(4),
            link: LinkReport::Alone,
            detail: "d".into(),
            changes: vec![(
                v.clone(),
                SiteId::new("south"),
                DataState::UpToDate,
                DataState::Outdated,
            )],
        },
        AuditEvent::SiteRecovered {
            site: st.clone(),
            losses_forgotten: 2,
            behind: vec![(v.clone(), DataState::Inconsistent)],
        },
        AuditEvent::AppOutage {
            app: a.clone(),
            since_ms: 1_000,
            rto_target_s: 30,
            ended_ms: None,
        },
        AuditEvent::AppOutage {
            app: a.clone(),
            since_ms: 1_000,
            rto_target_s: 30,
            ended_ms: Some(90_000),
        },
        AuditEvent::Note { text: "n".into() },
        AuditEvent::Membership { change: "c".into() },
        AuditEvent::Refused {
            call: "x".into(),
            reason: "y".into(),
            security: true,
        },
        AuditEvent::HostRegistered {
            host: h.clone(),
            agent_version: "0.1.0".into(),
            vcpus: 8,
            memory_mib: 16384,
            hypervisor: "test".into(),
            domain_type: "qemu".into(),
            from: HostState::Down,
            fenced: true,
        },
        AuditEvent::CommandsIssued {
            issuer: Issuer::Operation { op: OpId(7) },
            listed: vec![(CommandId(9), h.clone(), "start".into(), "db-1".into())],
            total: 12,
        },
        AuditEvent::CommandsIssued {
            issuer: Issuer::Operator {
                actor: "alice".into(),
            },
            listed: vec![],
            total: 0,
        },
        AuditEvent::CommandsIssued {
            issuer: Issuer::Controller,
            listed: vec![],
            total: 0,
        },
        AuditEvent::CommandResults {
            host: h.clone(),
            recorded: vec![(CommandId(9), "start".into(), "db-1".into(), true)],
        },
        AuditEvent::VmStates {
            host: h.clone(),
            changes: vec![VmStateChange {
                vm: vm.clone(),
                state: VmState::ShutOff,
                placed_here: false,
            }],
            reason: "r".into(),
        },
        AuditEvent::Agent {
            host: h,
            event: AgentEvent::LeaseRegained,
        },
    ]
}

#[test]
fn every_audit_event_crosses_the_wire_unchanged() {
    for e in every_event() {
        assert_eq!(audit_event_from_wire(audit_event_to_wire(&e)).unwrap(), e);
    }
}

#[test]
fn a_malformed_event_is_an_error() {
    assert!(audit_event_from_wire(pb::AuditEvent { event: None }).is_err());
    let bad_state = pb::AuditEvent {
        event: Some(E::SiteState(pb::SiteStateChange {
            site: "north".into(),
            from: 0,
            to: 1,
            reason: String::new(),
        })),
    };
    assert!(matches!(
        audit_event_from_wire(bad_state),
        Err(WireError::UnknownEnum { .. })
    ));
}

#[test]
fn every_app_reason_crosses_the_wire_unchanged() {
    use crate::state::{AppReason, DataState, OpKind, VmSeen, VmState};
    use crate::wire::{app_reason_from_wire, app_reason_to_wire};
    let reasons = vec![
        AppReason::Moving {
            op: OpId(3),
            kind: OpKind::Failover,
        },
        AppReason::VmNotRunning {
            vm: VmId::new("db-1"),
            host: Some(HostId::new("north-h1")),
            seen: VmSeen::State {
                state: VmState::ShutOff,
            },
        },
        AppReason::VmNotRunning {
            vm: VmId::new("db-1"),
            host: None,
            seen: VmSeen::NotReported,
        },
        AppReason::ReplicaBehind {
            volume: VolumeId::new("db-data"),
            site: SiteId::new("south"),
            data: DataState::Syncing,
        },
        AppReason::StoppedByOperator,
        AppReason::LastOperationFailed { op: Some(OpId(2)) },
        AppReason::Outage {
            since_ms: 1_700_000_000_000,
            rto_target_s: 60,
        },
    ];
    for r in reasons {
        assert_eq!(app_reason_from_wire(app_reason_to_wire(&r)).unwrap(), r);
    }
}
