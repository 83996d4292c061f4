#![allow(clippy::unwrap_used)]

use ids::{AppId, ByteSize, CommandId, Epoch, GroupSeq, OpId, SiteId, VmId, VolumeId};
use topology::ReplicationMode;
use topology::model::Boot;
use topology::spec::{DiskSpec, GroupRole, GroupSpec, NetworkSpec, PortForward, VmSpec};

use super::wire::*;
use super::*;
use crate::pb;

fn vm() -> VmId {
    VmId::new("web-1")
}

fn spec(drill: Option<OpId>, network: NetworkSpec, boot: Boot) -> VmSpec {
    VmSpec {
        vm: vm(),
        app: AppId::new("web"),
        vcpus: 2,
        memory: ByteSize::mib(512),
        boot,
        disks: vec![DiskSpec {
            volume: VolumeId::new("web-data"),
            size: ByteSize::gib(1),
        }],
        network,
        probe_ports: vec![80, 443],
        drill,
    }
}

fn group(role: GroupRole, peer: Option<&str>) -> GroupSpec {
    GroupSpec {
        app: AppId::new("web"),
        site: SiteId::new("north"),
        role,
        epoch: Epoch(4),
        promote: role == GroupRole::Primary,
        mode: ReplicationMode::Async,
        peer: peer.map(str::to_string),
        volumes: vec![DiskSpec {
            volume: VolumeId::new("web-data"),
            size: ByteSize::gib(1),
        }],
        lag_max_s: 30,
        lag_max_bytes: 64 << 20,
    }
}

/// One of every action, with every optional part both set and unset somewhere.
fn every_action() -> Vec<AgentAction> {
    let kernel = Boot::Kernel {
        kernel: "/k".into(),
        initrd: Some("/i".into()),
        cmdline: None,
    };
    let op = OpId(7);
    vec![
        AgentAction::Define {
            spec: spec(None, NetworkSpec::None, Boot::Disk),
        },
        AgentAction::Define {
            spec: spec(
                None,
                NetworkSpec::User {
                    forwards: vec![PortForward {
                        guest: 80,
                        host: 40080,
                    }],
                },
                kernel.clone(),
            ),
        },
        AgentAction::Define {
            spec: spec(
                None,
                NetworkSpec::Network {
                    name: "default".into(),
                },
                Boot::Disk,
            ),
        },
        AgentAction::Start { vm: vm() },
        AgentAction::Shutdown {
            vm: vm(),
            timeout_s: 60,
        },
        AgentAction::Destroy { vm: vm() },
        AgentAction::Undefine { vm: vm() },
        AgentAction::Suspend { vm: vm() },
        AgentAction::Resume { vm: vm() },
        AgentAction::Probe {
            vm: vm(),
            marker: "READY".into(),
            timeout_s: 30,
        },
        AgentAction::TcpProbe {
            vm: vm(),
            port: 443,
            address: Some("10.0.0.5".into()),
            timeout_s: 20,
        },
        AgentAction::TcpProbe {
            vm: vm(),
            port: 80,
            address: None,
            timeout_s: 20,
        },
        AgentAction::Serve {
            group: group(GroupRole::Primary, Some("10.1.0.2:7100")),
        },
        AgentAction::Serve {
            group: group(GroupRole::Secondary, None),
        },
        AgentAction::Unserve {
            app: AppId::new("web"),
            grace_s: 40,
        },
        AgentAction::DrillSnapshot {
            op,
            app: AppId::new("web"),
        },
        AgentAction::DrillStart {
            op,
            spec: spec(
                Some(op),
                NetworkSpec::Isolated {
                    name: "mdr-drill-7".into(),
                },
                kernel,
            ),
        },
        AgentAction::DrillProbe {
            op,
            vm: vm(),
            marker: "READY".into(),
            timeout_s: 30,
        },
        AgentAction::DrillCleanup { op },
    ]
}

#[test]
fn every_action_crosses_the_wire_unchanged() {
    for (i, a) in every_action().into_iter().enumerate() {
        let id = CommandId(100 + i as u64);
        let back = command_from_wire(command_to_wire(id, &a)).unwrap();
        assert_eq!(back, (id, a));
    }
}

fn every_outcome() -> Vec<Executed> {
    let primary_stop = StoppedGroup::Primary {
        epoch: Epoch(3),
        confirmation: PeerConfirmation::Confirmed {
            up_to: GroupSeq(812),
        },
    };
    let outcomes = vec![
        CommandOutcome::Defined {
            domain: "web-1".into(),
            domain_type: "qemu".into(),
            disks: 1,
        },
        CommandOutcome::Started {
            domain: "web-1".into(),
            state: VmState::Running,
        },
        CommandOutcome::ShutDown {
            vm: vm(),
            destroyed_after_s: None,
        },
        CommandOutcome::ShutDown {
            vm: vm(),
            destroyed_after_s: Some(60),
        },
        CommandOutcome::Destroyed { vm: vm() },
        CommandOutcome::Undefined { vm: vm() },
        CommandOutcome::Suspended { vm: vm() },
        CommandOutcome::Resumed { vm: vm() },
        CommandOutcome::Probed {
            domain: "drill-7-web-1".into(),
            marker: "READY".into(),
            after_ms: 1200,
        },
        CommandOutcome::TcpProbed {
            vm: vm(),
            target: "127.0.0.1:40080".into(),
            after_ms: 30,
        },
        CommandOutcome::Served(Served {
            app: AppId::new("web"),
            role: GroupRole::Primary,
            epoch: Epoch(4),
            endpoint: "10.0.0.1:7100".into(),
            already: false,
            promoted: true,
            peer: Some("10.1.0.2:7100".into()),
            replaced: Some(StoppedGroup::Secondary {
                epoch: Epoch(3),
                last_applied: GroupSeq(99),
            }),
        }),
        CommandOutcome::Served(Served {
            app: AppId::new("web"),
            role: GroupRole::Secondary,
            epoch: Epoch(4),
            endpoint: "10.0.0.1:7100".into(),
            already: true,
            promoted: false,
            peer: None,
            replaced: None,
        }),
        CommandOutcome::Unserved {
            app: AppId::new("web"),
            stopped: Some(primary_stop),
        },
        CommandOutcome::Unserved {
            app: AppId::new("web"),
            stopped: Some(StoppedGroup::Primary {
                epoch: Epoch(3),
                confirmation: PeerConfirmation::NotConfirmed {
                    link: "down".into(),
                },
            }),
        },
        CommandOutcome::Unserved {
            app: AppId::new("web"),
            stopped: Some(StoppedGroup::Primary {
                epoch: Epoch(3),
                confirmation: PeerConfirmation::Fenced,
            }),
        },
        CommandOutcome::Unserved {
            app: AppId::new("web"),
            stopped: Some(StoppedGroup::Primary {
                epoch: Epoch(3),
                confirmation: PeerConfirmation::StopFailed { error: "io".into() },
            }),
        },
        CommandOutcome::Unserved {
            app: AppId::new("web"),
            stopped: None,
        },
        CommandOutcome::DrillSnapshotTaken {
            app: AppId::new("web"),
            seq: GroupSeq(812),
            volumes: 1,
            already: false,
        },
        CommandOutcome::DrillStarted {
            domain: "drill-7-web-1".into(),
            state: VmState::Running,
            domain_type: "qemu".into(),
            disks: 1,
            network: Some("mdr-drill-7".into()),
            isolated: true,
        },
        CommandOutcome::DrillCleaned {
            removed: vec!["drill-7-web-1 removed".into()],
        },
    ];
    let mut all: Vec<Executed> = outcomes.into_iter().map(Executed::done).collect();
    for kind in [
        FailureKind::Failed,
        FailureKind::Interrupted,
        FailureKind::Unsupported,
    ] {
        all.push(Executed::failed(kind, "it went wrong"));
    }
    all
}

#[test]
fn every_outcome_crosses_the_wire_unchanged() {
    for (i, e) in every_outcome().into_iter().enumerate() {
        let id = CommandId(i as u64 + 1);
        let back = outcome_from_wire(outcome_to_wire(id, &e)).unwrap();
        assert_eq!(back, (id, e));
    }
}

#[test]
fn every_event_crosses_the_wire_unchanged() {
    let events = vec![
        AgentEvent::Fenced(FenceReport {
            took_ms: 1824,
            paused: false,
            stopped: vec!["web-1 (QEMU killed 0 ms)".into()],
            not_stopped: vec![],
            io: "fenced primaries [web]".into(),
            io_failed: false,
            error: None,
        }),
        AgentEvent::Fenced(FenceReport {
            took_ms: 30_000,
            paused: true,
            stopped: vec![],
            not_stopped: vec!["web-1: timed out".into()],
            io: "no".into(),
            io_failed: true,
            error: Some("libvirt did not answer".into()),
        }),
        AgentEvent::LeaseRegained,
        AgentEvent::LibvirtUnreachable {
            error: "socket".into(),
        },
        AgentEvent::LibvirtReachable {
            uri: "qemu:///system".into(),
        },
        AgentEvent::ClockRate {
            rate_permille: 1050,
        },
        AgentEvent::DiskFault {
            volume: VolumeId::new("web-data"),
            failed: true,
            detail: "failed by the lab".into(),
        },
    ];
    for (i, e) in events.into_iter().enumerate() {
        let back = event_from_wire(event_to_wire(i as u64, &e)).unwrap();
        assert_eq!(back, (i as u64, e));
    }
}

#[test]
fn bad_messages_are_errors_that_say_what_is_wrong() {
    let no_action = pb::AgentCommand {
        id: 1,
        action: None,
    };
    assert_eq!(
        command_from_wire(no_action).unwrap_err().to_string(),
        "the command's action is missing"
    );
    let bad_vm = pb::AgentCommand {
        id: 1,
        action: Some(pb::agent_command::Action::Start(pb::VmTarget {
            vm: "../etc".into(),
        })),
    };
    assert!(matches!(
        command_from_wire(bad_vm),
        Err(WireError::BadId { what: "vm", .. })
    ));
    let big_port = pb::AgentCommand {
        id: 1,
        action: Some(pb::agent_command::Action::TcpProbe(pb::TcpProbe {
            vm: "web-1".into(),
            port: 70_000,
            address: None,
            timeout_s: 1,
        })),
    };
    assert!(matches!(
        command_from_wire(big_port),
        Err(WireError::OutOfRange { .. })
    ));
    let unknown_state = pb::CommandOutcome {
        id: 1,
        result: Some(pb::command_outcome::Result::Started(pb::Started {
            domain: "web-1".into(),
            state: 99,
        })),
    };
    assert!(matches!(
        outcome_from_wire(unknown_state),
        Err(WireError::UnknownEnum { value: 99, .. })
    ));
    assert!(vm_state_from_wire(0).is_err(), "unspecified is not a state");
    assert!(
        link_from_wire(0).is_err(),
        "unspecified is not a link state"
    );
}

/// The serde forms are persisted (the replicated state, the agent's journal): pinned.
#[test]
fn persisted_forms_are_pinned() {
    assert_eq!(PROTOCOL_VERSION, 2);
    assert_eq!(
        serde_json::to_string(&AgentAction::Start { vm: vm() }).unwrap(),
        r#"{"action":"start","vm":"web-1"}"#
    );
    assert_eq!(
        serde_json::to_string(&AgentAction::DrillCleanup { op: OpId(7) }).unwrap(),
        r#"{"action":"drill-cleanup","op":7}"#
    );
    assert_eq!(
        serde_json::to_string(&Executed::done(CommandOutcome::Destroyed { vm: vm() })).unwrap(),
        r#"{"result":"done","outcome":{"outcome":"destroyed","vm":"web-1"}}"#
    );
    assert_eq!(
        serde_json::to_string(&VmState::ShutOff).unwrap(),
        "\"shut-off\""
    );
    for a in every_action() {
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<AgentAction>(&json).unwrap(), a);
    }
    for e in every_outcome() {
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Executed>(&json).unwrap(), e);
    }
}

#[test]
fn a_switchover_may_promote_only_after_a_confirmed_stop() {
    let stop = |confirmation| StoppedGroup::Primary {
        epoch: Epoch(3),
        confirmation,
    };
    assert!(stop(PeerConfirmation::Confirmed { up_to: GroupSeq(9) }).peer_has_everything());
    assert!(
        !stop(PeerConfirmation::NotConfirmed {
            link: "down".into()
        })
        .peer_has_everything()
    );
    assert!(!stop(PeerConfirmation::Fenced).peer_has_everything());
    assert!(!stop(PeerConfirmation::StopFailed { error: "x".into() }).peer_has_everything());
}

#[test]
fn targets_render_as_the_agents_queue_names() {
    let targets: Vec<String> = every_action()
        .iter()
        .map(|a| a.target().to_string())
        .collect();
    assert!(targets.contains(&"web-1".to_string()));
    assert!(targets.contains(&"group:web".to_string()));
    assert!(targets.contains(&"probe:web-1".to_string()));
    assert!(targets.contains(&"probe:web-1:tcp:443".to_string()));
    assert!(targets.contains(&"drill:7".to_string()));
    assert!(targets.contains(&"drill:7:probe:web-1".to_string()));
}
