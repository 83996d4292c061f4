//! State machine tests: targeted transitions, and a property test that drives random
//! command sequences (valid and invalid, with store round-trips standing in for
//! crashes and restarts) and checks the invariants after every step.

use std::collections::BTreeMap;

use proptest::prelude::*;
use topology::SiteRole;
use topology::generate::{GenSpec, generate};

use super::*;

fn req(command: Command) -> Request {
    Request {
        actor: "tester".into(),
        at_ms: 1_000,
        command,
    }
}

/// A small applied topology: 2 hosts per site, `apps` apps.
fn cluster(apps: usize, seed: u64) -> ClusterState {
    let model = generate(GenSpec {
        hosts: 4,
        apps,
        tiers: 2,
        seed,
    });
    let mut s = ClusterState::default();
    let r = s.apply(&apply_topology(&model));
    assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    s.take_changes();
    s
}

fn apply_topology(model: &Topology) -> Request {
    let plan = topology::plan::plan(model);
    req(Command::ApplyTopology {
        text: topology::render::to_toml(model),
        model: Box::new(model.clone()),
        placements: plan
            .placements
            .iter()
            .map(|p| (p.vm.clone(), p.host.clone()))
            .collect(),
    })
}

fn first_volume(s: &ClusterState) -> VolumeRecord {
    s.volumes.values().next().cloned().expect("a volume")
}

fn other_site(v: &VolumeRecord) -> SiteId {
    v.replicas
        .iter()
        .find(|r| r.role == Role::Secondary)
        .map(|r| r.site.clone())
        .expect("a secondary")
}

#[test]
fn applying_a_topology_creates_sites_hosts_apps_and_volumes() {
    let s = cluster(5, 1);
    assert_eq!(s.topology().map(|t| t.version), Some(1));
    assert_eq!(s.sites.len(), 3);
    assert_eq!(s.hosts.len(), 4);
    assert_eq!(s.apps.len(), 5);
    for v in s.volumes.values() {
        let p = v.primary().expect("one primary");
        assert_eq!(p.data, DataState::UpToDate);
        assert_eq!(v.epoch, Epoch(1));
        let app = s.apps.get(&v.app).expect("app");
        assert_eq!(p.site, app.active_site);
        // The secondary must be synced before it can ever be promoted.
        assert!(
            v.replicas
                .iter()
                .any(|r| r.role == Role::Secondary && r.data == DataState::Inconsistent)
        );
    }
    assert!(s.invariants().is_ok());
    assert_eq!(s.audit.len(), 1);
}

#[test]
fn promotion_needs_the_next_epoch_and_an_up_to_date_replica() {
    let mut s = cluster(2, 2);
    let v = first_volume(&s);
    let dr = other_site(&v);
    let promote = |epoch| {
        req(Command::PromoteReplica {
            volume: v.id.clone(),
            site: dr.clone(),
            epoch: Epoch(epoch),
            demoted: DataState::Outdated,
        })
    };
    // The DR replica has not synced yet: refused.
    let r = s.apply(&promote(2));
    assert!(
        matches!(
            r,
            Response::Rejected(Rejection {
                kind: RejectKind::Conflict,
                ..
            })
        ),
        "{r:?}"
    );

    s.apply(&req(Command::SetReplicaData {
        volume: v.id.clone(),
        site: dr.clone(),
        data: DataState::UpToDate,
    }));
    for wrong in [0, 1, 3] {
        let r = s.apply(&promote(wrong));
        assert!(
            matches!(
                r,
                Response::Rejected(Rejection {
                    kind: RejectKind::Conflict,
                    ..
                })
            ),
            "epoch {wrong}: {r:?}"
        );
    }
    let r = s.apply(&promote(2));
    assert!(
        matches!(
            r,
            Response::Applied {
                outcome: Outcome::Epoch(Epoch(2)),
                ..
            }
        ),
        "{r:?}"
    );
    let now = s.volumes.get(&v.id).expect("volume");
    assert_eq!(now.primary().map(|p| &p.site), Some(&dr));
    let old = now
        .replicas
        .iter()
        .find(|r| r.site != dr)
        .cloned()
        .expect("old primary");
    assert_eq!((old.role, old.data), (Role::Secondary, DataState::Outdated));

    // The outdated old primary can never be promoted back, whatever the epoch.
    for e in 3..6 {
        let r = s.apply(&req(Command::PromoteReplica {
            volume: v.id.clone(),
            site: old.site.clone(),
            epoch: Epoch(e),
            demoted: DataState::UpToDate,
        }));
        assert!(matches!(r, Response::Rejected(_)), "{r:?}");
    }
    assert!(s.invariants().is_ok());
}

#[test]
fn a_primary_cannot_be_marked_outdated() {
    let mut s = cluster(1, 3);
    let v = first_volume(&s);
    let p = v.primary().expect("primary").site.clone();
    let r = s.apply(&req(Command::SetReplicaData {
        volume: v.id,
        site: p,
        data: DataState::Outdated,
    }));
    assert!(
        matches!(
            r,
            Response::Rejected(Rejection {
                kind: RejectKind::Conflict,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn reapplying_a_topology_keeps_placement_and_epochs() {
    let mut s = cluster(4, 4);
    let before: BTreeMap<_, _> = s
        .apps
        .iter()
        .map(|(k, v)| (k.clone(), v.placement.clone()))
        .collect();
    let model = s.topology().expect("topology").model.clone();
    let r = s.apply(&apply_topology(&model));
    assert!(
        matches!(
            r,
            Response::Applied {
                outcome: Outcome::TopologyVersion(2),
                ..
            }
        ),
        "{r:?}"
    );
    let after: BTreeMap<_, _> = s
        .apps
        .iter()
        .map(|(k, v)| (k.clone(), v.placement.clone()))
        .collect();
    assert_eq!(before, after);
}

#[test]
fn removing_a_host_that_runs_vms_is_refused() {
    let mut s = cluster(3, 5);
    let mut model = s.topology().expect("topology").model.clone();
    let busy = s
        .apps
        .values()
        .flat_map(|a| a.placement.values())
        .next()
        .cloned()
        .expect("a placed VM");
    model.hosts.retain(|h| h.id != busy);
    let r = s.apply(&apply_topology(&model));
    assert!(
        matches!(
            r,
            Response::Rejected(Rejection {
                kind: RejectKind::Conflict,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn changing_the_sites_is_refused() {
    let mut s = cluster(1, 6);
    let mut model = s.topology().expect("topology").model.clone();
    model.sites[2].id = SiteId::new("elsewhere");
    model.orchestrators[2].site = SiteId::new("elsewhere");
    let r = s.apply(&apply_topology(&model));
    assert!(
        matches!(
            r,
            Response::Rejected(Rejection {
                kind: RejectKind::Conflict,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn operations_record_their_steps() {
    let mut s = cluster(1, 7);
    let app = s.apps.values().next().expect("app").id.clone();
    let r = s.apply(&req(Command::StartOperation {
        kind: OpKind::Failover,
        apps: vec![app.clone()],
        note: "test".into(),
    }));
    let Response::Applied {
        outcome: Outcome::Operation(op),
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    let r = s.apply(&req(Command::StartStep {
        op,
        name: "promote".into(),
        app: Some(app),
    }));
    assert!(
        matches!(
            r,
            Response::Applied {
                outcome: Outcome::Step(0),
                ..
            }
        ),
        "{r:?}"
    );
    let finish = req(Command::FinishStep {
        op,
        index: 0,
        result: StepResult::Ok,
        detail: String::new(),
    });
    assert!(matches!(s.apply(&finish), Response::Applied { .. }));
    assert!(
        matches!(s.apply(&finish), Response::Rejected(_)),
        "a step finishes once"
    );
    let view = s.operation_view(op.0).expect("view");
    assert_eq!(view.steps.len(), 1);
    assert_eq!(view.steps[0].result, Some(StepResult::Ok));
    assert!(
        s.operations.get(&op.0).expect("op").steps.is_empty(),
        "steps live in their own table: a step never copies the operation"
    );
    // A second operation's steps are its own, numbered from 0.
    let r = s.apply(&req(Command::StartOperation {
        kind: OpKind::Drill,
        apps: vec![],
        note: "other".into(),
    }));
    let Response::Applied {
        outcome: Outcome::Operation(op2),
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    let r = s.apply(&req(Command::StartStep {
        op: op2,
        name: "x".into(),
        app: None,
    }));
    assert!(
        matches!(
            r,
            Response::Applied {
                outcome: Outcome::Step(0),
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(s.operation_view(op.0).expect("view").steps.len(), 1);
    assert_eq!(s.operation_view(op2.0).expect("view").steps[0].name, "x");
    assert!(matches!(
        s.apply(&req(Command::FinishOperation {
            op,
            status: OpStatus::Succeeded
        })),
        Response::Applied { .. }
    ));
    assert!(matches!(
        s.apply(&req(Command::StartStep {
            op,
            name: "late".into(),
            app: None
        })),
        Response::Rejected(_)
    ));
}

#[test]
fn requests_without_an_actor_or_with_huge_fields_are_refused() {
    let mut s = cluster(1, 8);
    let mut r = req(Command::Note { text: "hi".into() });
    r.actor = " ".into();
    assert!(matches!(
        s.apply(&r),
        Response::Rejected(Rejection {
            kind: RejectKind::Invalid,
            ..
        })
    ));
    let r = req(Command::Note {
        text: "x".repeat(MAX_REASON_LEN + 1),
    });
    assert!(matches!(
        s.apply(&r),
        Response::Rejected(Rejection {
            kind: RejectKind::Invalid,
            ..
        })
    ));
}

#[test]
fn the_state_survives_a_round_trip_through_persisted_rows() {
    let mut s = ClusterState::default();
    let model = generate(GenSpec {
        hosts: 4,
        apps: 6,
        tiers: 2,
        seed: 9,
    });
    let mut store: BTreeMap<(&'static str, String), Vec<u8>> = BTreeMap::new();
    s.apply(&apply_topology(&model));
    s.apply(&req(Command::Note {
        text: "hello".into(),
    }));
    for (t, k, v) in s.take_changes() {
        match v {
            Some(v) => store.insert((t, k), v),
            None => store.remove(&(t, k)),
        };
    }
    let loaded = ClusterState::load(
        store
            .iter()
            .map(|((t, k), v)| (*t, k.as_str(), v.as_slice())),
    )
    .expect("load");
    assert_eq!(loaded, s);
    assert!(ClusterState::load([("nope", "k", b"{}".as_slice())]).is_err());
    assert!(
        ClusterState::load([("audit", "00000000000000000001", b"not json".as_slice())]).is_err()
    );
}

#[test]
fn agent_commands_are_queued_per_host_and_take_one_result() {
    let mut s = cluster(2, 11);
    let app = s.apps.values().next().cloned().expect("app");
    let (vm, host) = app
        .placement
        .iter()
        .next()
        .map(|(v, h)| (v.clone(), h.clone()))
        .expect("placed VM");
    let r = s.apply(&req(Command::IssueAgentCommands {
        issuer: Issuer::Controller,
        commands: vec![
            (host.clone(), AgentAction::Start { vm: vm.clone() }),
            (host.clone(), AgentAction::Destroy { vm: vm.clone() }),
        ],
    }));
    let Response::Applied {
        outcome: Outcome::Commands(ids),
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| {
        s.commands
            .get(&id.0)
            .is_some_and(|c| c.status == CommandStatus::Pending)
    }));
    let result = |ok| CommandResult {
        id: ids[0],
        executed: if ok {
            Executed::done(CommandOutcome::Started {
                domain: vm.to_string(),
                state: VmState::Running,
            })
        } else {
            Executed::failed(proto::agent::FailureKind::Failed, "no")
        },
    };
    let r = s.apply(&req(Command::RecordCommandResults {
        host: host.clone(),
        results: vec![result(true)],
    }));
    assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    // A second report (a lost reply, a retry) changes nothing.
    s.apply(&req(Command::RecordCommandResults {
        host: host.clone(),
        results: vec![result(false)],
    }));
    assert!(matches!(
        s.commands.get(&ids[0].0).map(|c| &c.status),
        Some(CommandStatus::Succeeded { .. })
    ));
    // Another host cannot answer for this one.
    let other = s
        .hosts
        .iter()
        .map(|(k, _)| k.clone())
        .find(|h| *h != host)
        .expect("another host");
    let r = s.apply(&req(Command::RecordCommandResults {
        host: other,
        results: vec![CommandResult {
            id: ids[1],
            executed: Executed::done(CommandOutcome::Destroyed { vm: vm.clone() }),
        }],
    }));
    assert!(
        matches!(
            r,
            Response::Rejected(Rejection {
                kind: RejectKind::Conflict,
                ..
            })
        ),
        "{r:?}"
    );
    // Unknown VMs and hosts are refused.
    let r = s.apply(&req(Command::IssueAgentCommands {
        issuer: Issuer::Controller,
        commands: vec![(
            host.clone(),
            AgentAction::Start {
                vm: VmId::new("nope"),
            },
        )],
    }));
    assert!(
        matches!(
            r,
            Response::Rejected(Rejection {
                kind: RejectKind::NotFound,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn vm_states_record_changes_only_and_ignore_foreign_domains() {
    let mut s = cluster(2, 12);
    let app = s.apps.values().next().cloned().expect("app");
    let (vm, host) = app
        .placement
        .iter()
        .next()
        .map(|(v, h)| (v.clone(), h.clone()))
        .expect("placed VM");
    let states = |st| {
        vec![
            (vm.clone(), st),
            (VmId::new("someone-elses-domain"), VmState::Running),
        ]
    };
    let r = s.apply(&req(Command::SetVmStates {
        host: host.clone(),
        states: states(VmState::Running),
        reason: "started".into(),
    }));
    assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    assert_eq!(s.vms.get(&vm).map(|v| v.state), Some(VmState::Running));
    assert_eq!(s.vms.len(), 1, "foreign domains are not tracked");
    let r = s.apply(&req(Command::SetVmStates {
        host: host.clone(),
        states: states(VmState::Running),
        reason: "again".into(),
    }));
    assert!(
        matches!(r, Response::Rejected(_)),
        "no change, no entry: {r:?}"
    );
    let r = s.apply(&req(Command::RegisterHost {
        host: host.clone(),
        inventory: HostInventory {
            vcpus: 8,
            memory_bytes: 16 << 30,
            hypervisor: "test:///default".into(),
            domain_type: "qemu".into(),
            agent_version: "0.1.0".into(),
            registered_ms: 1,
        },
        fenced: true,
    }));
    assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    assert_eq!(s.hosts.get(&host).map(|h| h.state), Some(HostState::Up));
    // An agent that fenced its VMs says so when it registers again: the host is owed
    // a restart of what it placed there.
    let placed = s
        .apps
        .values()
        .any(|a| a.placement.values().any(|h| h == &host));
    assert_eq!(
        s.hosts.get(&host).and_then(|h| h.fenced_ms).is_some(),
        placed
    );
}

/// Random commands over real and bogus ids.
fn arb_command(ids: Ids) -> impl Strategy<Value = Command> {
    let vol = proptest::sample::select(ids.volumes.clone());
    let site = proptest::sample::select(ids.sites.clone());
    let app = proptest::sample::select(ids.apps.clone());
    let host = proptest::sample::select(ids.hosts.clone());
    let vm = proptest::sample::select(ids.vms.clone());
    let data = prop_oneof![
        Just(DataState::UpToDate),
        Just(DataState::Outdated),
        Just(DataState::Inconsistent),
        Just(DataState::Syncing)
    ];
    let model = ids.model.clone();
    prop_oneof![
        4 => (vol.clone(), site.clone(), prop_oneof![3 => 2u64..4, 1 => 0u64..8], data.clone()).prop_map(|(volume, site, epoch, demoted)| Command::PromoteReplica {
            volume: VolumeId::new(volume), site: SiteId::new(site), epoch: Epoch(epoch), demoted }),
        4 => (vol, site.clone(), data).prop_map(|(volume, site, data)| Command::SetReplicaData {
            volume: VolumeId::new(volume), site: SiteId::new(site), data }),
        1 => (site, prop_oneof![Just(SiteState::Up), Just(SiteState::Suspect), Just(SiteState::Down)])
            .prop_map(|(site, state)| Command::SetSiteState { site: SiteId::new(site), state, reason: "prop".into() }),
        1 => (host.clone(), prop_oneof![Just(HostState::Up), Just(HostState::Down)])
            .prop_map(|(host, state)| Command::SetHostState { host: HostId::new(host), state, reason: "prop".into(), last_seen_ms: None }),
        1 => (app.clone(), vm.clone(), host.clone()).prop_map(|(app, vm, host)| Command::PlaceVm {
            app: AppId::new(app), vm: VmId::new(vm), host: HostId::new(host) }),
        1 => app.clone().prop_map(|a| Command::StartOperation { kind: OpKind::Drill, apps: vec![AppId::new(a)], note: String::new() }),
        1 => (1u64..4, any::<bool>()).prop_map(|(op, named)| Command::StartStep {
            op: OpId(op), name: "s".into(), app: None.filter(|_: &AppId| named) }),
        1 => (1u64..4, 0u32..3).prop_map(|(op, index)| Command::FinishStep { op: OpId(op), index, result: StepResult::Ok, detail: String::new() }),
        1 => (1u64..4, prop_oneof![Just(OpStatus::Running), Just(OpStatus::Succeeded), Just(OpStatus::Failed)])
            .prop_map(|(op, status)| Command::FinishOperation { op: OpId(op), status }),
        1 => "[a-z ]{0,8}".prop_map(|text| Command::Note { text }),
        2 => (host.clone(), vm.clone(), 0u32..3).prop_map(|(host, vm, k)| Command::IssueAgentCommands { issuer: Issuer::Controller, commands: vec![(
            HostId::new(host),
            match k { 0 => AgentAction::Start { vm: VmId::new(vm) }, 1 => AgentAction::Destroy { vm: VmId::new(vm) }, _ => AgentAction::Shutdown { vm: VmId::new(vm), timeout_s: k * 10 } },
        )] }),
        2 => (host.clone(), 0u64..6, any::<bool>()).prop_map(|(host, id, ok)| Command::RecordCommandResults {
            host: HostId::new(host), results: vec![CommandResult {
                id: CommandId(id),
                executed: if ok {
                    Executed::done(CommandOutcome::Destroyed { vm: VmId::new("v") })
                } else {
                    Executed::failed(proto::agent::FailureKind::Failed, "no")
                },
            }] }),
        1 => (host.clone(), vm.clone(), prop_oneof![Just(VmState::Running), Just(VmState::ShutOff)]).prop_map(|(host, vm, st)| Command::SetVmStates {
            host: HostId::new(host), states: vec![(VmId::new(vm), st)], reason: "prop".into() }),
        1 => (any::<u64>(), any::<bool>()).prop_map(move |(seed, bogus)| {
            // Re-apply the model, possibly with one app dropped and a bogus placement.
            let mut m = model.clone();
            if bogus && !m.apps.is_empty() {
                let i = (seed % m.apps.len() as u64) as usize;
                m.apps.remove(i);
            }
            let plan = topology::plan::plan(&m);
            let mut placements: Vec<(VmId, HostId)> = plan.placements.iter().map(|p| (p.vm.clone(), p.host.clone())).collect();
            if bogus && seed % 3 == 0 {
                placements.clear();
            }
            Command::ApplyTopology { text: String::new(), model: Box::new(m), placements }
        }),
    ]
}

#[derive(Debug, Clone)]
struct Ids {
    volumes: Vec<String>,
    sites: Vec<String>,
    apps: Vec<String>,
    hosts: Vec<String>,
    vms: Vec<String>,
    model: Topology,
}

fn ids_of(s: &ClusterState) -> Ids {
    let bogus = |mut v: Vec<String>| {
        v.push("no-such-id".into());
        v
    };
    let model = s.topology().expect("topology").model.clone();
    Ids {
        // A few volumes only, so that random sequences often hit the same one twice
        // (mark up to date, then promote).
        volumes: bogus(
            s.volumes
                .iter()
                .take(2)
                .map(|(k, _)| k.to_string())
                .collect(),
        ),
        sites: bogus(s.sites.iter().map(|(k, _)| k.to_string()).collect()),
        apps: bogus(s.apps.iter().map(|(k, _)| k.to_string()).collect()),
        hosts: bogus(s.hosts.iter().map(|(k, _)| k.to_string()).collect()),
        vms: bogus(
            model
                .apps
                .iter()
                .flat_map(|a| a.vms.iter().map(|v| v.id.to_string()))
                .collect(),
        ),
        model,
    }
}

fn scenario() -> impl Strategy<Value = (u64, Vec<(Command, bool)>)> {
    any::<u64>().prop_flat_map(|seed| {
        let ids = ids_of(&cluster(4, seed));
        (
            Just(seed),
            proptest::collection::vec((arb_command(ids), any::<bool>()), 1..60),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_every_invariant((seed, cmds) in scenario()) {
        let mut s = cluster(4, seed);
        let mut store: BTreeMap<(&'static str, String), Vec<u8>> = s
            .all_rows()
            .into_iter()
            .filter_map(|(t, k, v)| v.map(|v| ((t, k), v)))
            .collect();
        for (cmd, restart) in cmds {
            let before = s.clone();
            let r = s.apply(&req(cmd.clone()));
            for (t, k, v) in s.take_changes() {
                match v {
                    Some(v) => store.insert((t, k), v),
                    None => store.remove(&(t, k)),
                };
            }
            if let Err(v) = s.invariants_since(&before) {
                return Err(TestCaseError::fail(format!("{v} after {cmd:?} -> {r:?}")));
            }
            match &r {
                Response::Rejected(_) => prop_assert_eq!(&s, &before, "a rejected command changed the state: {:?}", cmd),
                Response::Applied { audit_seq, .. } => prop_assert_eq!(*audit_seq, before.audit.len() as u64 + 1),
                Response::Internal => prop_assert!(false, "apply never answers Internal"),
            }
            if restart {
                // A crash and restart: the node reloads exactly what it persisted.
                let loaded = ClusterState::load(store.iter().map(|((t, k), v)| (*t, k.as_str(), v.as_slice())))
                    .map_err(TestCaseError::fail)?;
                prop_assert_eq!(&loaded, &s);
                s = loaded;
            }
        }
    }
}

/// The property above is only as good as the commands it manages to apply: check that
/// its generator reaches successful promotions, topology re-applies and rejections.
#[test]
fn the_random_scenarios_reach_promotions_and_rejections() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut promoted, mut reapplied, mut rejected) = (0, 0, 0);
    for _ in 0..32 {
        let (seed, cmds) = scenario()
            .new_tree(&mut runner)
            .expect("scenario")
            .current();
        let mut s = cluster(4, seed);
        for (cmd, _) in cmds {
            match (s.apply(&req(cmd)), s.take_changes()) {
                (
                    Response::Applied {
                        outcome: Outcome::Epoch(_),
                        ..
                    },
                    _,
                ) => promoted += 1,
                (
                    Response::Applied {
                        outcome: Outcome::TopologyVersion(_),
                        ..
                    },
                    _,
                ) => reapplied += 1,
                (Response::Rejected(_), _) => rejected += 1,
                _ => {}
            }
        }
    }
    assert!(
        promoted > 5 && reapplied > 5 && rejected > 50,
        "promoted {promoted}, reapplied {reapplied}, rejected {rejected}"
    );
}

#[test]
fn recovering_a_site_needs_it_up_and_forgets_its_losses() {
    let mut s = cluster(2, 11);
    let sites: Vec<(SiteId, SiteRole)> = s.sites.values().map(|r| (r.id.clone(), r.role)).collect();
    let (prod, _) = sites
        .iter()
        .find(|(_, r)| *r == SiteRole::Production)
        .expect("production");
    let (witness, _) = sites
        .iter()
        .find(|(_, r)| *r == SiteRole::Witness)
        .expect("witness");
    let set = |st: SiteState| {
        req(Command::SetSiteState {
            site: prod.clone(),
            state: st,
            reason: "test".into(),
        })
    };
    let recover = |site: &SiteId| req(Command::RecoverSite { site: site.clone() });
    for _ in 0..3 {
        assert!(matches!(
            s.apply(&set(SiteState::Down)),
            Response::Applied { .. }
        ));
        assert!(matches!(
            s.apply(&set(SiteState::Up)),
            Response::Applied { .. }
        ));
    }
    assert_eq!(
        s.sites.get(prod).expect("site").downs_ms.len(),
        3,
        "three losses remembered"
    );
    s.apply(&set(SiteState::Suspect));
    match s.apply(&recover(prod)) {
        Response::Rejected(r) => assert!(r.reason.contains("must be back first"), "{r:?}"),
        r => panic!("a suspect site cannot be recovered: {r:?}"),
    }
    assert!(matches!(s.apply(&recover(witness)), Response::Rejected(_)));
    s.apply(&set(SiteState::Up));
    assert!(matches!(s.apply(&recover(prod)), Response::Applied { .. }));
    assert!(
        s.sites.get(prod).expect("site").downs_ms.is_empty(),
        "the flap hold is cleared"
    );
}
