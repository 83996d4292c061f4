//! Values of every variant of the plan and operation enums that cross the wire, each
//! with distinct field values so that a dropped or swapped field changes the value.
//! Each list is checked against an exhaustive `match` ([`variant`] functions): a new
//! variant fails to compile here until it is listed.

use ids::{ByteSize, CommandId, Epoch, GroupSeq, OpId};
use proto::agent::{CommandOutcome, FailureKind, PeerConfirmation, Served, StoppedGroup, VmState};
use topology::spec::{GroupRole, GroupSpec, VmSpec};
use topology::{AppId, HostId, Probe, SiteId, VmId, VolumeId};

use crate::plan::{PlannedProbe, PlannedStep, SkipReason, Trigger};
use crate::records::{
    AgentDid, DataState, FailureReason, Healthy, Moved, Production, ProductionChange, Promotion,
    RejectKind, ReplicaSample, StepOutcome, VmSample, VmStop, VmStopped,
};

pub fn app(s: &str) -> AppId {
    AppId::new(s)
}
pub fn site(s: &str) -> SiteId {
    SiteId::new(s)
}
pub fn host(s: &str) -> HostId {
    HostId::new(s)
}
pub fn vm(s: &str) -> VmId {
    VmId::new(s)
}
pub fn volume(s: &str) -> VolumeId {
    VolumeId::new(s)
}

/// Asserts that `values` hold every variant of their enum, each once at least.
pub fn covers<T>(values: &[T], count: usize, variant: fn(&T) -> usize) {
    let mut seen = vec![false; count];
    for v in values {
        seen[variant(v)] = true;
    }
    let missing: Vec<usize> = (0..count).filter(|i| !seen[*i]).collect();
    assert!(missing.is_empty(), "variants not listed: {missing:?}");
}

pub fn every_trigger() -> Vec<Trigger> {
    vec![
        Trigger::SiteLost {
            site: site("north"),
        },
        Trigger::HostLost {
            host: host("north-h1"),
        },
        Trigger::HostFenced {
            host: host("south-h2"),
        },
        Trigger::Failover {
            apps: vec![app("db"), app("api")],
            to: site("south"),
        },
        Trigger::Switchover {
            apps: vec![app("portal")],
            to: site("north"),
        },
        Trigger::Failback {
            apps: vec![app("mail"), app("archive")],
        },
        Trigger::Restore {
            vms: vec![
                crate::plan::StoppedVm {
                    app: app("mail"),
                    vm: topology::VmId::new("mail-1"),
                    host: host("north-h1"),
                    state: Some(proto::agent::VmState::ShutOff),
                    since_ms: 1_700_000_000_000,
                },
                crate::plan::StoppedVm {
                    app: app("db"),
                    vm: topology::VmId::new("db-2"),
                    host: host("north-h2"),
                    state: None,
                    since_ms: 5,
                },
            ],
        },
        Trigger::TestDrill {
            apps: vec![app("db")],
            to: None,
        },
        Trigger::TestDrill {
            apps: vec![app("db"), app("portal")],
            to: Some(site("south")),
        },
    ]
}

pub fn trigger_variant(t: &Trigger) -> usize {
    match t {
        Trigger::SiteLost { .. } => 0,
        Trigger::HostLost { .. } => 1,
        Trigger::HostFenced { .. } => 2,
        Trigger::Failover { .. } => 3,
        Trigger::Switchover { .. } => 4,
        Trigger::Failback { .. } => 5,
        Trigger::TestDrill { .. } => 6,
        Trigger::Restore { .. } => 7,
    }
}

pub fn every_skip_reason() -> Vec<SkipReason> {
    vec![
        SkipReason::NotInState,
        SkipReason::Busy,
        SkipReason::DependencySkipped { dep: app("db") },
        SkipReason::DrillAtActiveSite {
            site: site("north"),
        },
        SkipReason::AlreadyActive {
            site: site("south"),
        },
        SkipReason::TargetDown { site: site("west") },
        SkipReason::SourceDown {
            site: site("north"),
            app: app("api"),
            to: site("south"),
        },
        SkipReason::VolumeMissing {
            volume: volume("db-data"),
        },
        SkipReason::NoReplica {
            volume: volume("db-logs"),
            site: site("south"),
        },
        SkipReason::ReplicaNotUpToDate {
            volume: volume("db-data"),
            site: site("south"),
            data: DataState::Syncing,
        },
        SkipReason::AsyncServedOutside {
            volume: volume("archive-data"),
        },
        SkipReason::DrillServedOutside,
        SkipReason::ReplicaHostLost {
            app: app("mail"),
            site: site("north"),
            host: host("north-h2"),
        },
        SkipReason::ReplicaHostDown {
            host: host("south-h1"),
            site: site("south"),
        },
        SkipReason::FencedHostDown {
            host: host("north-h1"),
        },
        SkipReason::NotServedAgain {
            host: host("north-h2"),
        },
        SkipReason::NoRoomOnReplicaHost {
            host: host("south-h2"),
            site: site("south"),
            vm: vm("db-1"),
            vcpus: 4,
            memory: ByteSize(8 << 30),
        },
        SkipReason::NoRoom {
            site: site("north"),
            vm: vm("api-2"),
            vcpus: 2,
            memory: ByteSize(3 << 30),
        },
    ]
}

pub fn skip_variant(r: &SkipReason) -> usize {
    match r {
        SkipReason::NotInState => 0,
        SkipReason::Busy => 1,
        SkipReason::DependencySkipped { .. } => 2,
        SkipReason::DrillAtActiveSite { .. } => 3,
        SkipReason::AlreadyActive { .. } => 4,
        SkipReason::TargetDown { .. } => 5,
        SkipReason::SourceDown { .. } => 6,
        SkipReason::VolumeMissing { .. } => 7,
        SkipReason::NoReplica { .. } => 8,
        SkipReason::ReplicaNotUpToDate { .. } => 9,
        SkipReason::AsyncServedOutside { .. } => 10,
        SkipReason::DrillServedOutside => 11,
        SkipReason::ReplicaHostLost { .. } => 12,
        SkipReason::ReplicaHostDown { .. } => 13,
        SkipReason::FencedHostDown { .. } => 14,
        SkipReason::NotServedAgain { .. } => 15,
        SkipReason::NoRoomOnReplicaHost { .. } => 16,
        SkipReason::NoRoom { .. } => 17,
    }
}

fn probes() -> Vec<PlannedProbe> {
    vec![
        PlannedProbe {
            host: host("south-h1"),
            probe: Probe::Serial {
                vm: vm("db-1"),
                marker: "db ready".into(),
                timeout_s: 90,
            },
        },
        PlannedProbe {
            host: host("south-h2"),
            probe: Probe::Tcp {
                vm: vm("api-1"),
                port: 8443,
                timeout_s: 30,
                address: None,
            },
        },
        PlannedProbe {
            host: host("south-h1"),
            probe: Probe::Tcp {
                vm: vm("api-2"),
                port: 443,
                timeout_s: 45,
                address: Some("10.0.0.7".into()),
            },
        },
    ]
}

/// Every planned step, with the VM and group specs of a real plan.
pub fn every_planned_step(spec: &VmSpec, group: &GroupSpec) -> Vec<PlannedStep> {
    let mut other = spec.clone();
    other.vm = vm("db-2");
    other.vcpus = spec.vcpus + 1;
    vec![
        PlannedStep::Approval,
        PlannedStep::StopVms {
            site: site("north"),
            graceful: true,
            vms: vec![
                (vm("db-1"), host("north-h1")),
                (vm("db-2"), host("north-h2")),
            ],
            shutdown_timeout_s: 60,
        },
        PlannedStep::StopVms {
            site: site("south"),
            graceful: false,
            vms: vec![(vm("api-1"), host("south-h2"))],
            shutdown_timeout_s: 17,
        },
        PlannedStep::UnserveSource {
            site: site("north"),
            host: host("north-h2"),
            grace_s: 30,
            confirm: true,
        },
        PlannedStep::PromoteAndMove {
            to: site("south"),
            promote: vec![
                Promotion {
                    volume: volume("db-data"),
                    from: Epoch(3),
                    to: Epoch(4),
                },
                Promotion {
                    volume: volume("db-logs"),
                    from: Epoch(7),
                    to: Epoch(8),
                },
            ],
            demoted: DataState::Outdated,
            placement: vec![(vm("db-1"), host("south-h1"))],
        },
        PlannedStep::ServeVolumes {
            host: host("south-h1"),
            group: group.clone(),
        },
        PlannedStep::StartVms {
            vms: vec![
                (host("south-h1"), spec.clone()),
                (host("south-h2"), other.clone()),
            ],
        },
        PlannedStep::HealthGate {
            site: site("south"),
            placement: vec![
                (vm("db-1"), host("south-h1")),
                (vm("db-2"), host("south-h2")),
            ],
            restart: vec![(host("south-h2"), other.clone())],
            probes: probes(),
        },
        PlannedStep::Baseline,
        PlannedStep::Snapshot {
            host: host("south-h2"),
        },
        PlannedStep::StartDrillVms {
            site: site("south"),
            copies: vec![(host("south-h2"), spec.clone())],
        },
        PlannedStep::DrillHealthGate {
            site: site("south"),
            copies: 2,
            probes: probes(),
            unchecked: vec![(vm("api-1"), 8443), (vm("api-2"), 443)],
        },
        PlannedStep::ProductionCheck,
        PlannedStep::Cleanup {
            hosts: vec![host("south-h1"), host("south-h2")],
        },
        PlannedStep::ProductionAfter { app: app("portal") },
    ]
}

pub fn planned_step_variant(s: &PlannedStep) -> usize {
    match s {
        PlannedStep::Approval => 0,
        PlannedStep::StopVms { .. } => 1,
        PlannedStep::UnserveSource { .. } => 2,
        PlannedStep::PromoteAndMove { .. } => 3,
        PlannedStep::ServeVolumes { .. } => 4,
        PlannedStep::StartVms { .. } => 5,
        PlannedStep::HealthGate { .. } => 6,
        PlannedStep::Baseline => 7,
        PlannedStep::Snapshot { .. } => 8,
        PlannedStep::StartDrillVms { .. } => 9,
        PlannedStep::DrillHealthGate { .. } => 10,
        PlannedStep::ProductionCheck => 11,
        PlannedStep::Cleanup { .. } => 12,
        PlannedStep::ProductionAfter { .. } => 13,
    }
}

fn stopped_primary(confirmation: PeerConfirmation) -> StoppedGroup {
    StoppedGroup::Primary {
        epoch: Epoch(5),
        confirmation,
    }
}

fn production() -> Production {
    Production {
        active_site: site("north"),
        vms: vec![
            VmSample {
                vm: vm("db-1"),
                host: host("north-h1"),
                state: VmState::Running,
                since_ms: 1_000,
            },
            VmSample {
                vm: vm("db-2"),
                host: host("north-h2"),
                state: VmState::Paused,
                since_ms: 2_500,
            },
        ],
        replicas: vec![
            ReplicaSample {
                volume: volume("db-data"),
                site: site("north"),
                data: DataState::UpToDate,
            },
            ReplicaSample {
                volume: volume("db-data"),
                site: site("south"),
                data: DataState::Inconsistent,
            },
        ],
    }
}

pub fn every_vm_stop() -> Vec<VmStop> {
    vec![
        VmStop::ShutDown {
            destroyed_after_s: None,
        },
        VmStop::ShutDown {
            destroyed_after_s: Some(60),
        },
        VmStop::Destroyed,
        VmStop::FencedByLease,
    ]
}

pub fn vm_stop_variant(s: &VmStop) -> usize {
    match s {
        VmStop::ShutDown { .. } => 0,
        VmStop::Destroyed => 1,
        VmStop::FencedByLease => 2,
    }
}

/// Agents' outcomes of every kind a step records as evidence.
fn agent_dids() -> Vec<AgentDid> {
    let did = |h: &str, outcome| AgentDid {
        host: host(h),
        outcome,
    };
    vec![
        did(
            "south-h1",
            CommandOutcome::Probed {
                domain: "db-1".into(),
                marker: "db ready".into(),
                after_ms: 1_234,
            },
        ),
        did(
            "south-h2",
            CommandOutcome::TcpProbed {
                vm: vm("api-1"),
                target: "10.0.0.7:443 (address)".into(),
                after_ms: 77,
            },
        ),
        did(
            "south-h2",
            CommandOutcome::DrillStarted {
                domain: "db-1.drill-op-4".into(),
                state: VmState::Running,
                domain_type: "kvm".into(),
                disks: 2,
                network: Some("metrodr-drill-4".into()),
                isolated: true,
            },
        ),
        did(
            "south-h1",
            CommandOutcome::DrillStarted {
                domain: "api-1.drill-op-4".into(),
                state: VmState::ShutOff,
                domain_type: "qemu".into(),
                disks: 1,
                network: None,
                isolated: false,
            },
        ),
        did(
            "south-h1",
            CommandOutcome::DrillCleaned {
                removed: vec!["db-1.drill-op-4".into(), "metrodr-drill-4".into()],
            },
        ),
    ]
}

pub fn every_step_outcome() -> Vec<StepOutcome> {
    let dids = agent_dids();
    vec![
        StepOutcome::Approved { op: OpId(12) },
        StepOutcome::VmsStopped {
            vms: every_vm_stop()
                .into_iter()
                .enumerate()
                .map(|(i, how)| VmStopped {
                    vm: vm(&format!("db-{i}")),
                    host: host(&format!("north-h{i}")),
                    how,
                })
                .collect(),
        },
        StepOutcome::SourceUnserved {
            host: host("north-h1"),
            stopped: Some(stopped_primary(PeerConfirmation::Confirmed {
                up_to: GroupSeq(991),
            })),
        },
        StepOutcome::SourceUnserved {
            host: host("north-h2"),
            stopped: Some(StoppedGroup::Secondary {
                epoch: Epoch(9),
                last_applied: GroupSeq(44),
            }),
        },
        StepOutcome::SourceUnserved {
            host: host("north-h2"),
            stopped: None,
        },
        StepOutcome::SourceDown {
            host: host("north-h1"),
        },
        StepOutcome::Moved(Moved {
            to: site("south"),
            promoted: vec![Promotion {
                volume: volume("db-data"),
                from: Epoch(2),
                to: Epoch(3),
            }],
            demoted: DataState::Outdated,
            already: true,
        }),
        StepOutcome::Served {
            host: host("south-h1"),
            served: Served {
                app: app("db"),
                role: GroupRole::Primary,
                epoch: Epoch(3),
                endpoint: "10.1.0.5:7000".into(),
                already: false,
                promoted: true,
                peer: Some("10.0.0.5:7000".into()),
                replaced: Some(StoppedGroup::Secondary {
                    epoch: Epoch(2),
                    last_applied: GroupSeq(123),
                }),
            },
        },
        StepOutcome::VmsStarted {
            vms: vec![
                (vm("db-1"), host("south-h1")),
                (vm("db-2"), host("south-h2")),
            ],
        },
        StepOutcome::Healthy(Healthy {
            site: site("south"),
            running: 2,
            restarted: vec![(vm("db-2"), host("south-h2"))],
            served_again: Some(host("south-h1")),
            probes: dids[..2].to_vec(),
        }),
        StepOutcome::Healthy(Healthy {
            site: site("north"),
            running: 0,
            restarted: Vec::new(),
            served_again: None,
            probes: Vec::new(),
        }),
        StepOutcome::Baseline {
            production: production(),
        },
        StepOutcome::Snapshot {
            host: host("south-h2"),
            app: app("db"),
            seq: GroupSeq(4_567),
            volumes: 2,
            already: true,
        },
        StepOutcome::DrillVmsStarted {
            copies: dids[2..4].to_vec(),
        },
        StepOutcome::DrillHealthy {
            copies: 2,
            site: site("south"),
            probes: dids[..1].to_vec(),
            unchecked: vec![(vm("api-1"), 8443)],
        },
        StepOutcome::ProductionUnchanged {
            production: production(),
        },
        StepOutcome::Cleaned {
            hosts: dids[4..].to_vec(),
        },
    ]
}

pub fn step_outcome_variant(o: &StepOutcome) -> usize {
    match o {
        StepOutcome::Approved { .. } => 0,
        StepOutcome::VmsStopped { .. } => 1,
        StepOutcome::SourceUnserved { .. } => 2,
        StepOutcome::SourceDown { .. } => 3,
        StepOutcome::Moved(_) => 4,
        StepOutcome::Served { .. } => 5,
        StepOutcome::VmsStarted { .. } => 6,
        StepOutcome::Healthy(_) => 7,
        StepOutcome::Baseline { .. } => 8,
        StepOutcome::Snapshot { .. } => 9,
        StepOutcome::DrillVmsStarted { .. } => 10,
        StepOutcome::DrillHealthy { .. } => 11,
        StepOutcome::ProductionUnchanged { .. } => 12,
        StepOutcome::Cleaned { .. } => 13,
    }
}

pub fn every_production_change() -> Vec<ProductionChange> {
    vec![
        ProductionChange::ActiveSite {
            from: site("north"),
            to: site("south"),
        },
        ProductionChange::Moved {
            vm: vm("db-1"),
            from: host("north-h1"),
            to: host("north-h2"),
        },
        ProductionChange::State {
            vm: vm("db-2"),
            from: VmState::Running,
            to: VmState::Crashed,
        },
        ProductionChange::Restarted {
            vm: vm("db-1"),
            state: VmState::Running,
        },
        ProductionChange::Gone { vm: vm("api-1") },
        ProductionChange::Appeared {
            vm: vm("api-1.drill"),
        },
        ProductionChange::ReplicaBehind {
            volume: volume("db-data"),
            site: site("south"),
            data: DataState::Syncing,
        },
    ]
}

pub fn production_change_variant(c: &ProductionChange) -> usize {
    match c {
        ProductionChange::ActiveSite { .. } => 0,
        ProductionChange::Moved { .. } => 1,
        ProductionChange::State { .. } => 2,
        ProductionChange::Restarted { .. } => 3,
        ProductionChange::Gone { .. } => 4,
        ProductionChange::Appeared { .. } => 5,
        ProductionChange::ReplicaBehind { .. } => 6,
    }
}

pub fn every_failure_reason() -> Vec<FailureReason> {
    let mut reasons = vec![
        FailureReason::DependencyFailed { app: app("db") },
        FailureReason::OperationEnded,
        FailureReason::TimedOut { after_ms: 90_000 },
        FailureReason::CommandFailed {
            host: host("south-h1"),
            action: "define".into(),
            kind: FailureKind::Failed,
        },
        FailureReason::CommandFailed {
            host: host("south-h2"),
            action: "serve".into(),
            kind: FailureKind::Interrupted,
        },
        FailureReason::CommandFailed {
            host: host("north-h1"),
            action: "drill-start".into(),
            kind: FailureKind::Unsupported,
        },
        FailureReason::CommandVanished { id: CommandId(321) },
        FailureReason::NoOutcome {
            host: host("south-h2"),
        },
        FailureReason::NotCommitted { rejected: None },
        FailureReason::Gone,
        FailureReason::Unsupported,
        FailureReason::Lagging {
            production: production(),
        },
        FailureReason::ProductionChanged {
            changes: every_production_change(),
            production: production(),
        },
    ];
    for confirmation in [
        PeerConfirmation::NotConfirmed {
            link: "resyncing, 4 MiB behind".into(),
        },
        PeerConfirmation::Fenced,
        PeerConfirmation::StopFailed {
            error: "nbd: connection reset".into(),
        },
    ] {
        reasons.push(FailureReason::PeerNotConfirmed {
            host: host("north-h1"),
            stopped: stopped_primary(confirmation),
        });
    }
    for kind in [
        RejectKind::Invalid,
        RejectKind::NotFound,
        RejectKind::Conflict,
        RejectKind::Invariant,
        RejectKind::Unchanged,
        RejectKind::Stale,
    ] {
        reasons.push(FailureReason::NotCommitted {
            rejected: Some(kind),
        });
    }
    reasons
}

pub fn failure_reason_variant(r: &FailureReason) -> usize {
    match r {
        FailureReason::DependencyFailed { .. } => 0,
        FailureReason::OperationEnded => 1,
        FailureReason::TimedOut { .. } => 2,
        FailureReason::CommandFailed { .. } => 3,
        FailureReason::CommandVanished { .. } => 4,
        FailureReason::NoOutcome { .. } => 5,
        FailureReason::PeerNotConfirmed { .. } => 6,
        FailureReason::NotCommitted { .. } => 7,
        FailureReason::Gone => 8,
        FailureReason::Unsupported => 9,
        FailureReason::Lagging { .. } => 10,
        FailureReason::ProductionChanged { .. } => 11,
    }
}
