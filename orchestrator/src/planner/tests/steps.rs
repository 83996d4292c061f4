//! The oracle of a plan's steps: every parameter the executor will use, checked
//! against the state the plan was made from, worked out independently of the planner
//! (which steps an app's move has and in what order, the hosts, the epochs, the
//! demotion, the peer endpoint, the drain's grace, the specs, the probes; a drill's
//! closing and interruption steps).

use super::*;
use crate::plan::{PlannedStep, SHUTDOWN_TIMEOUT_S};
use crate::planner::DRAIN_MARGIN_S;
use crate::state::StepKind;
use topology::spec::{GroupRole, NetworkSpec};
use topology::{Probe, ReplicationMode};

/// Every step of `m` (of `model`), in `s` before the plan `t` ran.
#[track_caller]
pub(super) fn check_steps(s: &ClusterState, t: &Trigger, m: &AppMove, model: &topology::App) {
    let ctx = format!("{} in {t:?}: {:?}", m.app, m.steps);
    let drill = matches!(t, Trigger::TestDrill { .. });
    let kinds: Vec<StepKind> = m.steps.iter().map(PlannedStep::kind).collect();
    let moves_site = m.from != m.to;
    let source = replica_host_of(s, model, &m.from).filter(|_| moves_site);
    let target = replica_host_of(s, model, &m.to).filter(|_| moves_site);
    let mut want = Vec::new();
    if drill {
        want.push(StepKind::Baseline);
        if !model.volumes.is_empty() {
            want.push(StepKind::Snapshot);
        }
        want.extend([
            StepKind::StartDrillVms,
            StepKind::HealthGate,
            StepKind::ProductionCheck,
        ]);
    } else {
        if m.needs_approval {
            want.push(StepKind::Approval);
        }
        if !m.stops.is_empty() {
            want.push(if m.graceful {
                StepKind::Stop
            } else {
                StepKind::Fence
            });
        }
        if source.is_some() {
            want.push(StepKind::StopVolumes);
        }
        want.push(StepKind::PromoteAndMove);
        if target.is_some() {
            want.push(StepKind::ServeVolumes);
        }
        if !m.starts.is_empty() {
            want.push(StepKind::StartVms);
        }
        want.push(StepKind::HealthGate);
    }
    assert_eq!(kinds, want, "{ctx}");

    let vm_model = |vm: &VmId| {
        model
            .vms
            .iter()
            .find(|v| &v.id == vm)
            .expect("a VM of the app")
    };
    let started = |vms: &[(HostId, topology::spec::VmSpec)]| -> Vec<(VmId, HostId)> {
        for (_, spec) in vms {
            let v = vm_model(&spec.vm);
            assert_eq!(&spec.app, &m.app, "{ctx}");
            assert_eq!((spec.vcpus, spec.memory), (v.vcpus, v.memory), "{ctx}");
            assert_eq!(spec.disks.len(), v.disks.len(), "{ctx}: {}", spec.vm);
            assert_eq!(spec.network, NetworkSpec::None, "{ctx}");
            assert_eq!(spec.drill, None, "{ctx}: the executor makes the drill copy");
        }
        vms.iter()
            .map(|(h, spec)| (spec.vm.clone(), h.clone()))
            .collect()
    };
    let probe_vm = |p: &Probe| match p {
        Probe::Serial { vm, .. } | Probe::Tcp { vm, .. } => vm.clone(),
    };
    for step in &m.steps {
        match step {
            PlannedStep::Approval | PlannedStep::Baseline | PlannedStep::ProductionCheck => {}
            PlannedStep::StopVms {
                site,
                graceful,
                vms,
                shutdown_timeout_s,
            } => {
                assert_eq!(
                    (site, *graceful, vms),
                    (&m.from, m.graceful, &m.stops),
                    "{ctx}"
                );
                assert_eq!(*shutdown_timeout_s, SHUTDOWN_TIMEOUT_S);
            }
            PlannedStep::UnserveSource {
                site,
                host,
                grace_s,
                confirm,
            } => {
                assert_eq!(
                    (site, Some(host), *confirm),
                    (&m.from, source.as_ref(), m.graceful)
                );
                let lag = model
                    .volumes
                    .iter()
                    .map(|v| match v.replication {
                        topology::Replication::Async { lag_max_s, .. } => lag_max_s,
                        topology::Replication::Sync => 0,
                    })
                    .max()
                    .unwrap_or(0);
                let grace = if m.graceful { lag + DRAIN_MARGIN_S } else { 0 };
                assert_eq!(*grace_s, grace, "{ctx}");
            }
            PlannedStep::PromoteAndMove {
                to,
                promote,
                demoted,
                placement,
            } => {
                assert_eq!((to, placement), (&m.to, &m.placement), "{ctx}");
                // Every volume of the group not primary at the target, one epoch up.
                let want: Vec<(VolumeId, Epoch, Epoch)> = m
                    .volumes
                    .iter()
                    .map(|v| s.volumes.get(v).expect("volume"))
                    .filter(|v| v.primary().map(|p| &p.site) != Some(&m.to))
                    .map(|v| (v.id.clone(), v.epoch, Epoch(v.epoch.0 + 1)))
                    .collect();
                let got: Vec<(VolumeId, Epoch, Epoch)> = promote
                    .iter()
                    .map(|p| (p.volume.clone(), p.from, p.to))
                    .collect();
                assert_eq!(got, want, "{ctx}");
                let agent_served = !m.volumes.is_empty()
                    && model.volumes.iter().all(|v| {
                        s.volumes
                            .get(&v.id)
                            .is_some_and(|r| r.replicas.iter().all(|x| x.host.is_some()))
                    });
                let want = if m.graceful && !agent_served {
                    DataState::UpToDate
                } else {
                    DataState::Outdated
                };
                assert_eq!(*demoted, want, "{ctx}");
            }
            PlannedStep::ServeVolumes { host, group } => {
                assert_eq!(Some(host), target.as_ref(), "{ctx}");
                assert_eq!((&group.app, &group.site), (&m.app, &m.to), "{ctx}");
                assert_eq!(
                    (group.role, group.promote),
                    (GroupRole::Primary, true),
                    "{ctx}"
                );
                // The group's epoch once moved: one up from the highest now.
                let now = model
                    .volumes
                    .iter()
                    .filter_map(|v| s.volumes.get(&v.id))
                    .map(|v| v.epoch.0)
                    .max()
                    .expect("a group with volumes");
                assert_eq!(group.epoch, Epoch(now + 1), "{ctx}");
                let peer = source.as_ref().and_then(|h| s.endpoint(&m.app, h));
                assert_eq!(group.peer, peer, "{ctx}: the source's endpoint");
                let sync = model
                    .volumes
                    .iter()
                    .any(|v| v.replication.mode() == ReplicationMode::Sync);
                assert_eq!(group.mode == ReplicationMode::Sync, sync, "{ctx}");
                assert_eq!(group.volumes.len(), model.volumes.len(), "{ctx}");
            }
            PlannedStep::StartVms { vms } => {
                assert_eq!(started(vms), m.starts, "{ctx}");
            }
            PlannedStep::HealthGate {
                site,
                placement,
                restart,
                probes,
            } => {
                assert_eq!((site, placement), (&m.to, &m.placement), "{ctx}");
                // Every placed VM, where placed: a fence may stop any after the plan.
                assert_eq!(started(restart), m.placement, "{ctx}");
                let placed: BTreeMap<&VmId, &HostId> =
                    m.placement.iter().map(|(v, h)| (v, h)).collect();
                let want = model
                    .probes
                    .iter()
                    .filter(|p| placed.contains_key(&probe_vm(p)))
                    .count();
                assert_eq!(probes.len(), want, "{ctx}");
                for p in probes {
                    assert_eq!(placed.get(&probe_vm(&p.probe)), Some(&&p.host), "{ctx}");
                    assert!((1..=3600).contains(&p.timeout_s()), "{ctx}");
                }
            }
            PlannedStep::Snapshot { host } => {
                assert_eq!(
                    Some(host),
                    replica_host_of(s, model, &m.to).as_ref(),
                    "{ctx}"
                );
            }
            PlannedStep::StartDrillVms { site, copies } => {
                assert_eq!(site, &m.to, "{ctx}");
                assert_eq!(started(copies), m.starts, "{ctx}");
            }
            PlannedStep::DrillHealthGate {
                site,
                copies,
                probes,
                unchecked,
            } => {
                assert_eq!((site, *copies as usize), (&m.to, m.starts.len()), "{ctx}");
                for p in probes {
                    assert!(matches!(p.probe, Probe::Serial { .. }), "{ctx}");
                    let on = m.starts.iter().find(|(v, _)| *v == probe_vm(&p.probe));
                    assert_eq!(on.map(|(_, h)| h), Some(&p.host), "{ctx}");
                }
                // Every tcp probe is named, none checked.
                let tcp = |p: &&Probe| matches!(p, Probe::Tcp { .. });
                assert_eq!(unchecked.len(), model.probes.iter().filter(tcp).count());
                for (vm, port) in unchecked {
                    assert!(
                        model.probes.iter().any(
                            |p| matches!(p, Probe::Tcp { vm: v, port: n, .. } if v == vm && n == port)
                        ),
                        "{ctx}: {vm}:{port}"
                    );
                }
            }
            PlannedStep::Cleanup { .. } | PlannedStep::ProductionAfter { .. } => {
                panic!("{ctx}: an app's step that closes a drill")
            }
        }
    }
}

/// A drill's closing steps clean up every host it may touch (where its copies start,
/// where its snapshots are taken: the replica hosts at the drill site) and check every
/// app after; its interruption steps clean up the same hosts. Other plans have neither.
#[track_caller]
pub(super) fn check_closing(s: &ClusterState, t: &Trigger, p: &Plan) {
    if !matches!(t, Trigger::TestDrill { .. }) || p.is_empty() {
        assert!(p.closing.is_empty() && p.interrupted.is_empty(), "{p:?}");
        return;
    }
    let mut touched: BTreeSet<HostId> = BTreeSet::new();
    for m in p.apps() {
        let model = topo(s).app(&m.app).expect("a planned app");
        touched.extend(m.starts.iter().map(|(_, h)| h.clone()));
        if !model.volumes.is_empty() {
            touched.extend(replica_host_of(s, model, &m.to));
        }
    }
    let Some(PlannedStep::Cleanup { hosts }) = p.closing.first() else {
        panic!("a drill closes with its cleanup: {p:?}")
    };
    assert_eq!(
        hosts.iter().cloned().collect::<BTreeSet<_>>(),
        touched,
        "{p:?}"
    );
    let after: Vec<Option<&AppId>> = p.closing[1..].iter().map(PlannedStep::app).collect();
    let apps: Vec<Option<&AppId>> = p.apps().map(|m| Some(&m.app)).collect();
    assert_eq!(after, apps, "{p:?}");
    assert!(
        p.closing[1..]
            .iter()
            .all(|c| c.kind() == StepKind::ProductionAfter)
    );
    assert_eq!(p.interrupted, p.closing[..1], "{p:?}");
}

#[test]
pub(super) fn a_switchover_plans_the_drain_the_promotion_and_the_peer_endpoint() {
    use crate::state::{AgentAction, CommandOutcome, CommandResult, Executed, Issuer};
    use proto::agent::Served;
    use topology::spec::GroupSpec;
    let mut m = cases::all_sync(model(4, 4, 1, 21));
    m.cluster.volumes = topology::VolumeService::Agents;
    let mut s = steady(&m);
    let a = active_at(&s, A)
        .into_iter()
        .find(|a| !topo(&s).app(a).expect("app").volumes.is_empty())
        .expect("an app with volumes at A");
    let model = topo(&s).app(&a).expect("app").clone();
    let (source, target) = (
        replica_host_of(&s, &model, &site(A)).expect("a replica host at A"),
        replica_host_of(&s, &model, &site(B)).expect("a replica host at B"),
    );
    // The controller served the group at the source; its agent reported its endpoint.
    let group = GroupSpec::from_model(&model, &site(A), GroupRole::Primary, Epoch(1));
    let Outcome::Commands(ids) = ok(
        &mut s,
        Command::IssueAgentCommands {
            issuer: Issuer::Controller,
            commands: vec![(source.clone(), AgentAction::Serve { group })],
        },
    ) else {
        panic!("no command ids")
    };
    let endpoint = "10.0.0.1:7001".to_string();
    ok(
        &mut s,
        Command::RecordCommandResults {
            host: source.clone(),
            results: vec![CommandResult {
                id: ids[0],
                executed: Executed::done(CommandOutcome::Served(Served {
                    app: a.clone(),
                    role: GroupRole::Primary,
                    epoch: Epoch(1),
                    endpoint: endpoint.clone(),
                    already: false,
                    promoted: false,
                    peer: None,
                    replaced: None,
                })),
            }],
        },
    );
    let p = plan_ok(
        &s,
        &Trigger::Switchover {
            apps: vec![a.clone()],
            to: site(B),
        },
    );
    let mv = the_move(&p, &a);
    let mut saw = Vec::new();
    for step in &mv.steps {
        saw.push(step.kind());
        match step {
            PlannedStep::UnserveSource {
                host,
                confirm,
                grace_s,
                ..
            } => {
                assert_eq!((host, *confirm), (&source, true));
                assert!(*grace_s >= DRAIN_MARGIN_S);
            }
            PlannedStep::PromoteAndMove {
                promote, demoted, ..
            } => {
                assert!(promote.iter().all(|p| p.to == Epoch(2)), "{promote:?}");
                // Agent-served: the old primary is outdated until the reversed link
                // reports it in sync.
                assert_eq!(*demoted, DataState::Outdated);
            }
            PlannedStep::ServeVolumes { host, group } => {
                assert_eq!(host, &target);
                assert_eq!((group.epoch, group.promote), (Epoch(2), true));
                assert_eq!(group.peer.as_ref(), Some(&endpoint));
            }
            _ => {}
        }
    }
    for k in [
        StepKind::Stop,
        StepKind::StopVolumes,
        StepKind::PromoteAndMove,
        StepKind::ServeVolumes,
        StepKind::StartVms,
        StepKind::HealthGate,
    ] {
        assert!(saw.contains(&k), "no {k:?} in {:?}", mv.steps);
    }
}
