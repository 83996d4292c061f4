//! The state machine's property test: random command sequences over real and bogus
//! ids (valid and invalid, with store round-trips standing in for crashes and
//! restarts), the invariants checked after every step; and a check that the generator
//! reaches what the property needs.

use proptest::prelude::*;

use super::*;

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
        1 => (1u64..4, app.clone(), 0u32..3).prop_map(|(op, app, index)| Command::StartStep {
            op: OpId(op), at: StepAt::App { app: AppId::new(app), index } }),
        1 => (1u64..4, 0u32..3).prop_map(|(op, index)| Command::FinishStep {
            op: OpId(op), index, result: StepResult::Done { outcome: StepOutcome::Approved { op: OpId(op) } } }),
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
