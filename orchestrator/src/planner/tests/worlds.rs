//! Random worlds: generated topologies in random states, and the properties every
//! plan made in them must have.

use super::*;

pub(super) const DATA: [DataState; 4] = [
    DataState::UpToDate,
    DataState::Outdated,
    DataState::Inconsistent,
    DataState::Syncing,
];

pub(super) fn pick<'a, T>(rng: &mut SplitMix64, v: &'a [T]) -> &'a T {
    &v[rng.range(0, v.len() as u64 - 1) as usize]
}

/// A non-empty list of apps, sometimes with a duplicate.
pub(super) fn some_apps(rng: &mut SplitMix64, s: &ClusterState) -> Vec<AppId> {
    let all: Vec<AppId> = s.apps.iter().map(|(a, _)| a.clone()).collect();
    let mut out: Vec<AppId> = all.iter().filter(|_| rng.chance(40)).cloned().collect();
    if out.is_empty() {
        out.push(pick(rng, &all).clone());
    }
    if rng.chance(10) {
        out.push(out[0].clone());
    }
    out
}

pub(super) fn random_trigger(rng: &mut SplitMix64, s: &ClusterState) -> Trigger {
    let sites = [site(A), site(B)];
    let hosts: Vec<HostId> = s.hosts.iter().map(|(h, _)| h.clone()).collect();
    match rng.range(0, 11) {
        // (A world where nothing is placed has nothing to restore: a failback then.)
        10 if s.apps.iter().all(|(_, a)| a.placement.is_empty()) => Trigger::Failback {
            apps: some_apps(rng, s),
        },
        10 => Trigger::Restore {
            // Some placed VMs of some apps, stopped or not (the planner restarts only
            // those still stopped where they are placed); never none (refused).
            vms: some_apps(rng, s)
                .into_iter()
                .filter_map(|a| s.apps.get(&a).cloned())
                .filter(|rec| !rec.placement.is_empty())
                .chain(
                    s.apps
                        .iter()
                        .map(|(_, a)| a.clone())
                        .filter(|a| !a.placement.is_empty())
                        .take(1),
                )
                .flat_map(|rec| {
                    rec.placement
                        .iter()
                        .map(|(vm, h)| crate::plan::StoppedVm {
                            app: rec.id.clone(),
                            vm: vm.clone(),
                            host: h.clone(),
                            state: None,
                            since_ms: 0,
                        })
                        .collect::<Vec<_>>()
                })
                .enumerate()
                .filter(|(i, _)| *i == 0 || rng.chance(60))
                .map(|(_, v)| v)
                .collect(),
        },
        0..=2 => Trigger::SiteLost {
            site: pick(rng, &sites).clone(),
        },
        3 => Trigger::HostLost {
            host: pick(rng, &hosts).clone(),
        },
        4 => Trigger::HostFenced {
            host: pick(rng, &hosts).clone(),
        },
        5 | 6 => Trigger::Failover {
            apps: some_apps(rng, s),
            to: pick(rng, &sites).clone(),
        },
        7 => Trigger::Switchover {
            apps: some_apps(rng, s),
            to: pick(rng, &sites).clone(),
        },
        8 => Trigger::Failback {
            apps: some_apps(rng, s),
        },
        _ => Trigger::TestDrill {
            apps: some_apps(rng, s),
            to: rng.chance(50).then(|| pick(rng, &sites).clone()),
        },
    }
}

/// A cluster running `model` in a random state derived from `seed`, and a trigger.
pub(super) fn world(model: &Topology, seed: u64) -> (ClusterState, Trigger) {
    let mut rng = SplitMix64::new(seed);
    // Half the worlds have their volumes served by the agents (drills need that).
    let mut model = model.clone();
    if rng.chance(50) {
        model.cluster.volumes = topology::VolumeService::Agents;
    }
    let mut s = steady(&model);
    // Earlier plans moved some apps away from their preferred site.
    for _ in 0..rng.range(0, 2) {
        let t = random_trigger(&mut rng, &s);
        let p = plan_ok(&s, &t);
        if p.kind == OpKind::Drill {
            // A drill moves nothing; it may still be running.
            if !p.is_empty() {
                begin(&mut s, &p);
            }
            continue;
        }
        execute(&mut s, &p);
        sync_all(&mut s);
    }
    // What the agents report: most placed VMs run; some were stopped (by a fence, or
    // by hand), some are paused, some never reported.
    let placed: Vec<(VmId, HostId)> = s
        .apps
        .values()
        .flat_map(|a| a.placement.iter().map(|(v, h)| (v.clone(), h.clone())))
        .collect();
    for (vm, host) in placed {
        let state = match rng.range(0, 99) {
            0..=69 => VmState::Running,
            70..=84 => VmState::ShutOff,
            85..=89 => VmState::Paused,
            _ => continue,
        };
        setup(
            &mut s,
            Command::SetVmStates {
                host,
                states: vec![(vm, state)],
                reason: "test".into(),
            },
        );
    }
    let hosts: Vec<HostId> = s.hosts.iter().map(|(h, _)| h.clone()).collect();
    // Some agents fenced their VMs (and say so as they register again).
    for h in &hosts {
        if rng.chance(15) {
            setup(
                &mut s,
                Command::RegisterHost {
                    host: h.clone(),
                    inventory: inventory(1),
                    fenced: true,
                },
            );
        }
    }
    for h in &hosts {
        match rng.range(0, 99) {
            0..=74 => {}
            75..=89 => set_host(&mut s, h, HostState::Down),
            _ => set_host(&mut s, h, HostState::Unknown),
        }
    }
    let secondaries: Vec<(VolumeId, SiteId)> = s
        .volumes
        .values()
        .flat_map(|v| {
            v.replicas
                .iter()
                .filter(|r| r.role == Role::Secondary)
                .map(|r| (v.id.clone(), r.site.clone()))
        })
        .collect();
    for (v, at) in &secondaries {
        if rng.chance(35) {
            let data = *pick(&mut rng, &DATA[1..]);
            set_data(&mut s, v, at, data);
        }
    }
    for id in [A, B] {
        match rng.range(0, 19) {
            0 | 1 => set_site(&mut s, id, SiteState::Down),
            2 => set_site(&mut s, id, SiteState::Suspect),
            _ => {}
        }
    }
    if rng.chance(30) {
        let apps = some_apps(&mut rng, &s);
        ok(
            &mut s,
            Command::StartOperation {
                kind: OpKind::Drill,
                apps,
                note: "drill".into(),
            },
        );
    }
    if rng.chance(20) {
        let t = random_trigger(&mut rng, &s);
        let p = plan_ok(&s, &t);
        if !p.is_empty() {
            begin(&mut s, &p);
        }
    }
    let t = random_trigger(&mut rng, &s);
    (s, t)
}

pub(super) fn arb_world() -> impl Strategy<Value = (GenSpec, u64)> {
    (
        2usize..=8,
        1usize..=24,
        1u32..=4,
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(hosts, apps, tiers, seed, world)| {
            (
                GenSpec {
                    hosts,
                    apps,
                    tiers,
                    seed,
                },
                world,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Every plan keeps every promise of `check_plan`, and the same input always
    /// gives the same plan (also after a JSON round trip, as Raft stores it).
    #[test]
    fn every_plan_keeps_its_promises((spec, seed) in arb_world()) {
        let (s, t) = world(&generate(spec), seed);
        let p = plan_ok(&s, &t);
        prop_assert_eq!(&plan(&s.clone(), &t).expect("plan"), &p);
        let json = serde_json::to_string(&p).expect("json");
        prop_assert_eq!(&serde_json::from_str::<Plan>(&json).expect("parse"), &p);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Executing a plan through the state machine moves exactly the planned apps, one
    /// epoch up each; planning the same trigger again moves none of them twice.
    #[test]
    fn executing_a_plan_moves_every_planned_app_once((spec, seed) in arb_world()) {
        let (mut s, t) = world(&generate(spec), seed);
        let p = plan_ok(&s, &t);
        if p.kind == OpKind::Drill {
            // A drill runs its steps, promotes and moves nothing.
            if !p.is_empty() {
                execute_drill(&mut s, &p);
            }
            return Ok(());
        }
        execute(&mut s, &p);
        for m in p.apps() {
            prop_assert_eq!(&s.apps.get(&m.app).expect("app").active_site, &m.to);
            // The agents report what started running (a fenced host's restart is done
            // when its VMs run again).
            for (vm, host) in &m.starts {
                setup(
                    &mut s,
                    Command::SetVmStates {
                        host: host.clone(),
                        states: vec![(vm.clone(), VmState::Running)],
                        reason: "test".into(),
                    },
                );
            }
        }
        let again = plan_ok(&s, &t);
        let moved: BTreeSet<AppId> = planned(&p).into_iter().collect();
        prop_assert!(planned(&again).iter().all(|a| !moved.contains(a)), "{:#?}", again);
    }
}

/// The properties above are only as good as the worlds they see: check that those reach
/// plans that move apps and every kind of skip.
#[test]
pub(super) fn the_random_worlds_reach_every_kind_of_decision() {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..480u64 {
        let spec = GenSpec {
            hosts: 2 + (i % 7) as usize,
            apps: 1 + (i * 7 % 24) as usize,
            tiers: 1 + (i % 4) as u32,
            seed: i,
        };
        let (s, t) = world(&generate(spec), i.wrapping_mul(0x9E37_79B9));
        let p = plan_ok(&s, &t);
        *counts.entry("planned").or_default() += p.apps().count();
        *counts.entry("promoted").or_default() +=
            p.apps().filter(|m| !m.volumes.is_empty()).count();
        *counts.entry("approval").or_default() += p.apps().filter(|m| m.needs_approval).count();
        if p.drill.is_some() {
            *counts.entry("drilled").or_default() += p.apps().count();
        }
        if matches!(t, Trigger::HostFenced { .. }) {
            *counts.entry("restarted after a fence").or_default() += p.apps().count();
        }
        for k in &p.skipped {
            let kind = match &k.reason {
                SkipReason::Busy => "busy",
                SkipReason::DependencySkipped { .. } => "dependency",
                SkipReason::AlreadyActive { .. } => "already active",
                SkipReason::TargetDown { .. } => "target down",
                SkipReason::SourceDown { .. } => "source down",
                SkipReason::ReplicaNotUpToDate { .. } => "replica",
                SkipReason::AsyncServedOutside { .. } => "async",
                SkipReason::NoRoom { .. } | SkipReason::NoRoomOnReplicaHost { .. } => "room",
                SkipReason::ReplicaHostLost { .. } => "replica host lost",
                SkipReason::ReplicaHostDown { .. } => "replica host",
                SkipReason::DrillAtActiveSite { .. } => "drill at the active site",
                SkipReason::DrillServedOutside => "drill without agents",
                SkipReason::FencedHostDown { .. } => "fenced host down",
                SkipReason::NotServedAgain { .. } => "fenced host not serving",
                SkipReason::NotInState
                | SkipReason::VolumeMissing { .. }
                | SkipReason::NoReplica { .. } => "other",
            };
            *counts.entry(kind).or_default() += 1;
        }
    }
    println!("{counts:?}");
    for kind in [
        "planned",
        "promoted",
        "approval",
        "busy",
        "dependency",
        "already active",
        "target down",
        "source down",
        "replica",
        "async",
        "drilled",
        "drill at the active site",
        "drill without agents",
        "restarted after a fence",
        "fenced host down",
        "fenced host not serving",
    ] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) > 0,
            "no {kind}: {counts:?}"
        );
    }
    assert_eq!(counts.get("other"), None);
}
