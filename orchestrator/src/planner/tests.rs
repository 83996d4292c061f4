//! Planner tests: targeted cases for every trigger and error, and properties over
//! generated topologies in random states (hosts up, down or never registered, sites
//! down, replicas in every data state, apps owned by running operations, apps already
//! moved by earlier plans). Every plan is checked against the state it was made from
//! ([`check_plan`]) and, in the execution property, carried out through the state
//! machine as the executor would ([`execute`]).
//!
//! Random worlds are derived from two seeds (the topology's and the world's) that
//! proptest prints when a case fails; `world(&generate(spec), seed)` replays it.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use topology::generate::{GenSpec, SplitMix64, generate};
use topology::{AppId, FailoverPolicy, HostId, SiteId, Topology, VmId};

use super::*;
use crate::state::{
    Command, DataState, Epoch, HostState, OpId, OpKind, OpStatus, Outcome, RejectKind, Request,
    Response, Role, SiteState,
};

const A: &str = "site-a";
const B: &str = "site-b";
const WITNESS: &str = "witness";

fn site(id: &str) -> SiteId {
    SiteId::new(id)
}

fn app(i: usize) -> AppId {
    AppId::new(format!("app-{i:05}"))
}

fn req(command: Command) -> Request {
    Request {
        actor: "tester".into(),
        at_ms: 1_000,
        command,
    }
}

/// Apply a command that must succeed (and keep every invariant); its outcome.
#[track_caller]
fn ok(s: &mut ClusterState, command: Command) -> Outcome {
    let before = s.clone();
    match s.apply(&req(command.clone())) {
        Response::Applied { outcome, .. } => {
            if let Err(v) = s.invariants_since(&before) {
                panic!("{v} after {command:?}");
            }
            outcome
        }
        r => panic!("{command:?} should apply: {r:?}"),
    }
}

/// Apply a setup command that must succeed (no invariant check: the tests check the
/// commands under test, and this keeps the random worlds fast).
#[track_caller]
fn setup(s: &mut ClusterState, command: Command) {
    let r = s.apply(&req(command.clone()));
    assert!(matches!(r, Response::Applied { .. }), "{command:?}: {r:?}");
}

/// Apply a command that must be refused with `kind` and leave no trace; the reason.
#[track_caller]
fn refused(s: &mut ClusterState, command: Command, kind: RejectKind) -> String {
    let before = s.clone();
    match s.apply(&req(command.clone())) {
        Response::Rejected(r) if r.kind == kind => {
            assert!(*s == before, "the refused {command:?} changed the state");
            r.reason
        }
        r => panic!("{command:?} should be refused as {kind:?}: {r:?}"),
    }
}

fn topo(s: &ClusterState) -> &Topology {
    &s.topology().expect("a topology").model
}

fn model(hosts: usize, apps: usize, tiers: u32, seed: u64) -> Topology {
    generate(GenSpec {
        hosts,
        apps,
        tiers,
        seed,
    })
}

/// `model` applied: hosts `Unknown` (no agent registered), secondaries not synced.
fn applied(model: &Topology) -> ClusterState {
    let mut s = ClusterState::default();
    let placements = topology::plan::plan(model)
        .placements
        .iter()
        .map(|p| (p.vm.clone(), p.host.clone()))
        .collect();
    ok(
        &mut s,
        Command::ApplyTopology {
            text: topology::render::to_toml(model),
            model: Box::new(model.clone()),
            placements,
        },
    );
    s
}

/// The steady state: every host up, every secondary replica up to date.
fn steady(model: &Topology) -> ClusterState {
    let mut s = applied(model);
    hosts_up(&mut s);
    sync_all(&mut s);
    s
}

fn hosts_up(s: &mut ClusterState) {
    let hosts: Vec<HostId> = s.hosts.iter().map(|(h, _)| h.clone()).collect();
    for h in hosts {
        set_host(s, &h, HostState::Up);
    }
}

fn set_host(s: &mut ClusterState, host: &HostId, state: HostState) {
    setup(
        s,
        Command::SetHostState {
            host: host.clone(),
            state,
            reason: "test".into(),
            last_seen_ms: None,
        },
    );
}

fn set_site(s: &mut ClusterState, id: &str, state: SiteState) {
    setup(
        s,
        Command::SetSiteState {
            site: site(id),
            state,
            reason: "test".into(),
        },
    );
}

fn set_data(s: &mut ClusterState, volume: &VolumeId, at: &SiteId, data: DataState) {
    setup(
        s,
        Command::SetReplicaData {
            volume: volume.clone(),
            site: at.clone(),
            data,
        },
    );
}

fn sync_all(s: &mut ClusterState) {
    let stale: Vec<(VolumeId, SiteId)> = s
        .volumes
        .values()
        .flat_map(|v| {
            v.replicas
                .iter()
                .filter(|r| r.role == Role::Secondary && r.data != DataState::UpToDate)
                .map(|r| (v.id.clone(), r.site.clone()))
        })
        .collect();
    for (v, at) in stale {
        set_data(s, &v, &at, DataState::UpToDate);
    }
}

fn active_at(s: &ClusterState, at: &str) -> BTreeSet<AppId> {
    s.apps
        .values()
        .filter(|a| a.active_site.as_str() == at)
        .map(|a| a.id.clone())
        .collect()
}

fn planned(p: &Plan) -> Vec<AppId> {
    p.apps().map(|m| m.app.clone()).collect()
}

fn skip_reason<'p>(p: &'p Plan, a: &AppId) -> Option<&'p str> {
    p.skipped
        .iter()
        .find(|k| &k.app == a)
        .map(|k| k.reason.as_str())
}

fn the_move<'p>(p: &'p Plan, a: &AppId) -> &'p AppMove {
    p.apps()
        .find(|m| &m.app == a)
        .unwrap_or_else(|| panic!("{a} is not planned: {:?}", skip_reason(p, a)))
}

#[track_caller]
fn plan_ok(s: &ClusterState, t: &Trigger) -> Plan {
    let p = plan(s, t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
    check_plan(s, t, &p);
    p
}

/// Where the trigger sends `a`, worked out independently of the planner.
fn target(s: &ClusterState, t: &Trigger, a: &AppId) -> SiteId {
    match t {
        Trigger::SiteLost { site } => topo(s).peer_site(site).expect("peer").id.clone(),
        Trigger::HostLost { host } | Trigger::HostFenced { host } => {
            s.hosts.get(host).expect("host").site.clone()
        }
        Trigger::Failover { to, .. } | Trigger::Switchover { to, .. } => to.clone(),
        Trigger::Failback { .. } => topo(s).app(a).expect("app").preferred_site.clone(),
        Trigger::TestDrill { to: Some(to), .. } => to.clone(),
        Trigger::TestDrill { to: None, .. } => {
            let active = &s.apps.get(a).expect("app").active_site;
            topo(s).peer_site(active).expect("peer").id.clone()
        }
    }
}

/// The apps a trigger is about: each is either planned or skipped, exactly once.
fn wanted(s: &ClusterState, t: &Trigger) -> BTreeSet<AppId> {
    match t {
        Trigger::SiteLost { site } => active_at(s, site.as_str()),
        Trigger::HostLost { host } => s
            .apps
            .values()
            .filter(|a| a.placement.values().any(|h| h == host))
            .map(|a| a.id.clone())
            .collect(),
        Trigger::HostFenced { host } => {
            let site = &s.hosts.get(host).expect("host").site;
            s.apps
                .values()
                .filter(|a| &a.active_site == site && !stopped_on(s, &a.id, host).is_empty())
                .map(|a| a.id.clone())
                .collect()
        }
        Trigger::Failover { apps, .. }
        | Trigger::Switchover { apps, .. }
        | Trigger::Failback { apps }
        | Trigger::TestDrill { apps, .. } => apps.iter().cloned().collect(),
    }
}

/// VMs of `app` placed on `host` that are not reported running or paused there,
/// worked out independently of the planner.
fn stopped_on(s: &ClusterState, app: &AppId, host: &HostId) -> BTreeSet<VmId> {
    let rec = s.apps.get(app).expect("app");
    rec.placement
        .iter()
        .filter(|(vm, h)| {
            *h == host
                && !matches!(
                    s.vms.get(*vm).map(|r| (&r.host, r.state)),
                    Some((rh, VmState::Running | VmState::Paused)) if rh == host
                )
        })
        .map(|(vm, _)| vm.clone())
        .collect()
}

/// Every promise a plan makes, checked against the state it was made from.
fn check_plan(s: &ClusterState, t: &Trigger, p: &Plan) {
    let topo = topo(s);
    assert_eq!(p.kind, t.kind());
    assert_eq!(&p.trigger, t);
    assert!(p.waves.iter().all(|w| !w.apps.is_empty()), "an empty wave");
    assert_eq!(p.is_empty(), p.waves.is_empty());

    let mut seen = BTreeSet::new();
    for a in p
        .apps()
        .map(|m| &m.app)
        .chain(p.skipped.iter().map(|k| &k.app))
    {
        assert!(seen.insert(a.clone()), "{a} appears twice in {p:#?}");
    }
    assert_eq!(
        seen,
        wanted(s, t),
        "planned + skipped != the apps {t:?} is about"
    );

    let drill = matches!(t, Trigger::TestDrill { .. });
    assert_eq!(p.drill, drill.then_some(crate::planner::DrillKind::Test));
    let mut busy = busy_apps(s);
    if drill {
        busy.extend(crate::planner::drilled_apps(s));
    }
    let lost_host = match t {
        Trigger::HostLost { host } => Some(host),
        _ => None,
    };
    let fenced_host = match t {
        Trigger::HostFenced { host } => Some(host),
        _ => None,
    };
    let graceful = matches!(t, Trigger::Switchover { .. } | Trigger::Failback { .. });
    let loss = matches!(t, Trigger::SiteLost { .. } | Trigger::HostLost { .. });
    let site_down = |id: &SiteId| s.sites.get(id).is_some_and(|r| r.state == SiteState::Down);
    let skipped: BTreeMap<&AppId, &str> = p
        .skipped
        .iter()
        .map(|k| (&k.app, k.reason.as_str()))
        .collect();
    let wave_of: BTreeMap<&AppId, usize> = p
        .waves
        .iter()
        .enumerate()
        .flat_map(|(i, w)| w.apps.iter().map(move |m| (&m.app, i)))
        .collect();

    for m in p.apps() {
        let model = topo.app(&m.app).expect("a planned app is in the topology");
        let rec = s.apps.get(&m.app).expect("a planned app is in the state");
        let to = target(s, t, &m.app);
        let ctx = format!("{} in {t:?}", m.app);
        assert_eq!((&m.from, &m.to), (&rec.active_site, &to), "{ctx}");
        assert_eq!(m.tier, model.tier, "{ctx}");
        assert_eq!(m.graceful, graceful, "{ctx}");
        assert_eq!(
            m.needs_approval,
            loss && model.failover == FailoverPolicy::ManualApproval,
            "{ctx}"
        );
        assert_eq!(m.rto_target_s, model.rto_target_s, "{ctx}");
        assert_eq!(m.health_timeout_ms, topo.timing.health_gate_timeout_ms);
        assert!(
            !busy.contains(&m.app),
            "{ctx}: owned by a running operation"
        );
        assert!(!site_down(&to), "{ctx}: the target is down");
        assert!(
            !(graceful && site_down(&m.from)),
            "{ctx}: graceful from a down site"
        );

        // Promotion: the whole consistency group, every replica at the target up to date.
        let group: Vec<&VolumeId> = model.volumes.iter().map(|v| &v.id).collect();
        if lost_host.is_some() || fenced_host.is_some() {
            assert_eq!(m.from, m.to, "{ctx}");
            assert!(m.volumes.is_empty(), "{ctx}: a host loss promotes nothing");
        } else {
            assert_ne!(m.from, m.to, "{ctx}");
            assert_eq!(m.volumes.iter().collect::<Vec<_>>(), group, "{ctx}");
            for v in &m.volumes {
                let r = s.volumes.get(v).and_then(|r| r.replica(&to).cloned());
                assert_eq!(
                    r.map(|r| r.data),
                    Some(DataState::UpToDate),
                    "{ctx}: promotes {v}"
                );
            }
        }

        // Hosts: which VMs start, where, and where every VM runs afterwards.
        let vms: BTreeSet<&VmId> = model.vms.iter().map(|v| &v.id).collect();
        // A fenced host's restart brings back every stopped VM of the app; a host loss
        // brings back, besides the lost host's, the app's VMs reported stopped on its
        // other up hosts (a stall fenced them too), each where it is placed.
        let fenced: BTreeMap<VmId, HostId> = match (lost_host, fenced_host) {
            (_, Some(_)) => rec
                .placement
                .iter()
                .filter(|(vm, h)| stopped_on(s, &m.app, h).contains(*vm))
                .map(|(vm, h)| (vm.clone(), h.clone()))
                .collect(),
            (Some(l), None) => rec
                .placement
                .iter()
                .filter(|(vm, h)| {
                    *h != l
                        && s.hosts.get(*h).is_some_and(|r| r.state == HostState::Up)
                        && matches!(
                            s.vms.get(*vm).map(|r| (&r.host, r.state)),
                            Some((rh, st)) if rh == *h && !matches!(st, VmState::Running | VmState::Paused)
                        )
                })
                .map(|(vm, h)| (vm.clone(), h.clone()))
                .collect(),
            (None, None) => BTreeMap::new(),
        };
        let restart: BTreeSet<&VmId> = match (lost_host, fenced_host) {
            (Some(l), _) => rec
                .placement
                .iter()
                .filter(|(_, h)| *h == l)
                .map(|(v, _)| v)
                .chain(fenced.keys())
                .collect(),
            (None, Some(_)) => fenced.keys().collect(),
            (None, None) => vms.clone(),
        };
        let started: BTreeSet<&VmId> = m.starts.iter().map(|(v, _)| v).collect();
        assert_eq!(started, restart, "{ctx}: the VMs that start");
        assert_eq!(started.len(), m.starts.len(), "{ctx}: a VM starts twice");
        for (vm, h) in &m.starts {
            let host = topo.host(h).expect("a start host is in the topology");
            assert_eq!(host.site, to, "{ctx}: {vm} starts on {h}");
            assert_eq!(
                s.hosts.get(h).map(|r| r.state),
                Some(HostState::Up),
                "{ctx}: {vm} starts on {h}"
            );
            assert_ne!(Some(h), lost_host, "{ctx}: {vm} restarts on the lost host");
            if fenced_host.is_some() || fenced.contains_key(vm) {
                assert_eq!(
                    Some(h),
                    fenced.get(vm),
                    "{ctx}: {vm} restarts where the fence stopped it"
                );
            }
        }
        let placed: BTreeMap<&VmId, &HostId> = m.placement.iter().map(|(v, h)| (v, h)).collect();
        assert_eq!(placed.len(), m.placement.len(), "{ctx}: a VM placed twice");
        assert_eq!(
            placed.keys().copied().collect::<BTreeSet<_>>(),
            vms,
            "{ctx}"
        );
        for (vm, h) in &placed {
            let expect = m
                .starts
                .iter()
                .find(|(v, _)| v == *vm)
                .map(|(_, h)| h)
                .or_else(|| rec.placement.get(*vm));
            assert_eq!(Some(*h), expect, "{ctx}: {vm} is placed elsewhere");
        }
        // Stops: every VM at the source for a graceful move; otherwise the restarting
        // VMs whose host is still up (it would not fence itself).
        let stops: Vec<(VmId, HostId)> = rec
            .placement
            .iter()
            .filter(|(v, h)| {
                !drill
                    && fenced_host.is_none()
                    && !fenced.contains_key(*v)
                    && (graceful
                        || (restart.contains(v)
                            && s.hosts.get(*h).is_some_and(|r| r.state == HostState::Up)))
            })
            .map(|(v, h)| (v.clone(), h.clone()))
            .collect();
        assert_eq!(m.stops, stops, "{ctx}");
        let agent_served = model.volumes.iter().all(|v| {
            s.volumes
                .get(&v.id)
                .is_some_and(|r| r.replicas.iter().all(|x| x.host.is_some()))
        });
        if drill {
            assert!(
                agent_served,
                "{ctx}: a drill of volumes served outside the cluster (nothing can snapshot them)"
            );
        }
        if graceful {
            let agent_served = model.volumes.iter().all(|v| {
                s.volumes
                    .get(&v.id)
                    .is_some_and(|r| r.replicas.iter().all(|x| x.host.is_some()))
            });
            assert!(
                agent_served
                    || model
                        .volumes
                        .iter()
                        .all(|v| v.replication.mode() == topology::ReplicationMode::Sync),
                "{ctx}: a switchover of an async volume served outside the cluster cannot drain its lag"
            );
        }

        // Order: dependencies first, tiers never backwards; a dependency the plan cannot
        // move must already be active at the target.
        for d in &model.depends_on {
            if let Some(&w) = wave_of.get(d) {
                assert!(
                    w < wave_of[&m.app],
                    "{ctx}: its dependency {d} is not earlier"
                );
            }
            if skipped.contains_key(d) {
                let dep_site = &s.apps.get(d).expect("dependency").active_site;
                assert_eq!(dep_site, &to, "{ctx}: its dependency {d} is skipped");
            }
        }
    }
    for pair in p.waves.windows(2) {
        let max = pair[0].apps.iter().map(|m| m.tier).max();
        let min = pair[1].apps.iter().map(|m| m.tier).min();
        assert!(max <= min, "a higher tier before a lower one: {p:#?}");
    }

    for k in &p.skipped {
        check_skip(s, t, k, &skipped, &busy);
    }

    // Capacity: what runs on a host now plus what the plan starts there fits the host.
    // Counting every VM that runs now (also those of apps that move) keeps a host within
    // its capacity at every moment of the execution, whatever order the stops happen in.
    let size: BTreeMap<&VmId, (u64, u64)> = topo
        .apps
        .iter()
        .flat_map(|a| &a.vms)
        .map(|v| (&v.id, (u64::from(v.vcpus), v.memory.bytes())))
        .collect();
    let mut load: BTreeMap<&HostId, (u64, u64)> = BTreeMap::new();
    let running = s.apps.values().flat_map(|a| &a.placement);
    let placed_now: BTreeMap<&VmId, &HostId> = s.apps.values().flat_map(|a| &a.placement).collect();
    // A VM restarting where it is placed (after a fence) already holds its room there.
    let starts = p
        .apps()
        .flat_map(|m| m.starts.iter().map(|(v, h)| (v, h)))
        .filter(|(v, h)| placed_now.get(v) != Some(h));
    for (vm, h) in running.chain(starts) {
        let (c, mem) = size[vm];
        let l = load.entry(h).or_default();
        *l = (l.0 + c, l.1 + mem);
    }
    for h in p.apps().flat_map(|m| m.starts.iter().map(|(_, h)| h)) {
        let cap = topo.host(h).expect("host");
        let (c, mem) = load[h];
        assert!(
            c <= u64::from(cap.vcpus) && mem <= cap.memory.bytes(),
            "host {h} overcommitted: {c} vCPUs, {mem} bytes for {} and {}",
            cap.vcpus,
            cap.memory
        );
    }
}

/// A skip's reason must be true of the state.
#[track_caller]
/// The host serving the app's replicas at `site` (volumes served by the agents).
fn replica_host_of(s: &ClusterState, model: &topology::App, site: &SiteId) -> Option<HostId> {
    let v = model.volumes.first()?;
    s.volumes.get(&v.id)?.replica(site)?.host.clone()
}

fn check_skip(
    s: &ClusterState,
    t: &Trigger,
    k: &Skip,
    skipped: &BTreeMap<&AppId, &str>,
    busy: &BTreeSet<AppId>,
) {
    let r = k.reason.as_str();
    let ctx = format!("{} skipped in {t:?}: {r}", k.app);
    let rec = s.apps.get(&k.app).expect("a skipped app is in the state");
    let model = topo(s)
        .app(&k.app)
        .expect("a skipped app is in the topology");
    let to = target(s, t, &k.app);
    let state_of = |id: &SiteId| s.sites.get(id).map(|r| r.state);
    if r.contains("another operation is moving it") {
        assert!(busy.contains(&k.app), "{ctx}");
    } else if let Some(rest) = r.strip_prefix("it depends on ") {
        let dep = AppId::new(rest.split(',').next().expect("an id"));
        assert!(model.depends_on.contains(&dep), "{ctx}");
        assert!(skipped.contains_key(&dep), "{ctx}");
        assert_ne!(s.apps.get(&dep).map(|d| &d.active_site), Some(&to), "{ctx}");
    } else if r == format!("it is active at {to}: a test drill starts its copy at the other site") {
        assert!(matches!(t, Trigger::TestDrill { .. }), "{ctx}");
        assert_eq!(rec.active_site, to, "{ctx}");
    } else if r.starts_with("its volumes are served outside the cluster, which cannot snapshot") {
        assert!(matches!(t, Trigger::TestDrill { .. }), "{ctx}");
        assert!(
            model.volumes.iter().any(|v| s
                .volumes
                .get(&v.id)
                .is_some_and(|r| r.replicas.iter().any(|x| x.host.is_none()))),
            "{ctx}"
        );
    } else if let Some(rest) = r.strip_prefix("host ")
        && rest.ends_with(", where its fence stopped the VMs, is not up")
    {
        let h = HostId::new(rest.split(',').next().expect("an id"));
        assert!(matches!(t, Trigger::HostFenced { .. }), "{ctx}");
        assert!(!stopped_on(s, &k.app, &h).is_empty(), "{ctx}");
        assert_ne!(
            s.hosts.get(&h).map(|r| r.state),
            Some(HostState::Up),
            "{ctx}"
        );
    } else if let Some(rest) = r.strip_prefix("host ")
        && rest.ends_with(" does not serve its volumes again yet (the fence stopped them)")
    {
        let h = HostId::new(rest.split(' ').next().expect("an id"));
        assert!(matches!(t, Trigger::HostFenced { .. }), "{ctx}");
        assert!(!stopped_on(s, &k.app, &h).is_empty(), "{ctx}");
        assert_eq!(replica_host_of(s, model, &to), Some(h.clone()), "{ctx}");
        assert!(
            !crate::controller::serves_since_registration(s, &k.app, &h),
            "{ctx}"
        );
    } else if r == format!("already active at {to}") {
        assert_eq!(rec.active_site, to, "{ctx}");
        assert!(!matches!(t, Trigger::HostLost { .. }), "{ctx}");
    } else if r.starts_with(&format!("site {to} is down (")) {
        assert_eq!(state_of(&to), Some(SiteState::Down), "{ctx}");
    } else if r.starts_with(&format!("site {} is down: a switchover", rec.active_site)) {
        assert!(matches!(
            t,
            Trigger::Switchover { .. } | Trigger::Failback { .. }
        ));
        assert_eq!(state_of(&rec.active_site), Some(SiteState::Down), "{ctx}");
    } else if let Some(rest) = r.strip_prefix("the replica of volume ") {
        let v = VolumeId::new(rest.split(' ').next().expect("an id"));
        assert!(model.volume(&v).is_some(), "{ctx}");
        let data = s
            .volumes
            .get(&v)
            .and_then(|r| r.replica(&to))
            .expect("replica")
            .data;
        assert_ne!(data, DataState::UpToDate, "{ctx}");
        assert!(r.contains(&format!(" at {to} is {data:?}: ")), "{ctx}");
    } else if let Some(rest) = r.strip_prefix("volume ")
        && rest.contains(" replicates asynchronously and is served outside the cluster")
    {
        let v = VolumeId::new(rest.split(' ').next().expect("an id"));
        assert!(matches!(
            t,
            Trigger::Switchover { .. } | Trigger::Failback { .. }
        ));
        let mode = model.volume(&v).map(|v| v.replication.mode());
        assert_eq!(mode, Some(topology::ReplicationMode::Async), "{ctx}");
    } else if let Some(rest) = r.strip_prefix(&format!(
        "its volumes at {to} were served by the lost host "
    )) {
        let h = HostId::new(rest.split(':').next().expect("a host"));
        assert!(
            matches!(t, Trigger::HostLost { host } if *host == h),
            "{ctx}"
        );
        assert_eq!(replica_host_of(s, model, &to), Some(h), "{ctx}");
    } else if let Some(rest) = r.strip_prefix("host ")
        && rest.contains(&format!(", which holds its replicas at {to}, "))
    {
        let h = HostId::new(rest.split(',').next().expect("a host"));
        assert_eq!(replica_host_of(s, model, &to), Some(h.clone()), "{ctx}");
        if rest.contains("is not up") {
            assert_ne!(
                s.hosts.get(&h).map(|x| x.state),
                Some(HostState::Up),
                "{ctx}"
            );
        } else {
            assert!(rest.contains("has no room for VM"), "{ctx}");
        }
    } else if let Some(rest) = r.strip_prefix(&format!("no up host at {to} has room for VM ")) {
        let vm = VmId::new(rest.split(' ').next().expect("an id"));
        assert!(model.vms.iter().any(|v| v.id == vm), "{ctx}");
    } else {
        panic!("unexplained skip: {ctx}");
    }
}

/// The MoveApp an executor sends for `m`: the next epoch of every volume of the app
/// that is not primary at the target yet.
fn move_cmd(s: &ClusterState, op: OpId, m: &AppMove, demoted: DataState) -> Command {
    let group = &topo(s).app(&m.app).expect("app").volumes;
    let epochs = group
        .iter()
        .filter_map(|v| s.volumes.get(&v.id))
        .filter(|v| v.primary().is_none_or(|p| p.site != m.to))
        .map(|v| (v.id.clone(), v.epoch.next()))
        .collect();
    Command::MoveApp {
        op,
        app: m.app.clone(),
        to: m.to.clone(),
        epochs,
        demoted,
        placement: m.placement.clone(),
    }
}

/// Plan `t` and carry the plan out; the plan.
fn run(s: &mut ClusterState, t: &Trigger, demoted: DataState) -> Plan {
    let p = plan_ok(s, t);
    execute(s, &p, demoted);
    p
}

fn begin(s: &mut ClusterState, p: &Plan) -> OpId {
    match ok(
        s,
        Command::BeginPlan {
            plan: Box::new(p.clone()),
            lost_ms: Some(500),
        },
    ) {
        Outcome::Operation(op) => op,
        o => panic!("BeginPlan gave {o:?}"),
    }
}

/// Carry `p` out as the executor would — begin, approve what waits for approval, move
/// every app wave by wave, finish — checking every step and trying the wrong moves too.
#[track_caller]
fn execute(s: &mut ClusterState, p: &Plan, demoted: DataState) {
    let begin_cmd = Command::BeginPlan {
        plan: Box::new(p.clone()),
        lost_ms: Some(500),
    };
    if p.is_empty() {
        refused(s, begin_cmd, RejectKind::Invalid);
        return;
    }
    let op = begin(s, p);
    let rec = s.operations.get(&op.0).expect("the operation").clone();
    assert_eq!((rec.kind, rec.status), (p.kind, OpStatus::Running));
    assert_eq!(rec.apps, planned(p));
    assert_eq!(rec.plan.as_deref(), Some(p));
    assert_eq!(rec.lost_ms, Some(500));
    assert!(rec.approved.is_empty());
    // The same apps cannot be owned twice.
    refused(s, begin_cmd, RejectKind::Conflict);

    let waiting: BTreeSet<AppId> = p
        .apps()
        .filter(|m| m.needs_approval)
        .map(|m| m.app.clone())
        .collect();
    let approve = |apps: Vec<AppId>| Command::ApproveOperation { op, apps };
    if let Some(m) = p.apps().find(|m| m.needs_approval) {
        let cmd = move_cmd(s, op, m, demoted);
        refused(s, cmd, RejectKind::Conflict);
    }
    if let Some(m) = p.apps().find(|m| !m.needs_approval) {
        refused(s, approve(vec![m.app.clone()]), RejectKind::Conflict);
    }
    if !waiting.is_empty() {
        ok(s, approve(Vec::new()));
        let approved = &s.operations.get(&op.0).expect("op").approved;
        assert_eq!(approved.iter().cloned().collect::<BTreeSet<_>>(), waiting);
        assert_eq!(approved.len(), waiting.len());
    }
    refused(s, approve(Vec::new()), RejectKind::Conflict);

    for m in p.apps() {
        move_one(s, op, m, demoted);
    }
    let outsider = s.apps.values().find(|a| !rec.apps.contains(&a.id)).cloned();
    if let Some(other) = outsider {
        let cmd = Command::MoveApp {
            op,
            app: other.id.clone(),
            to: other.active_site.clone(),
            epochs: Vec::new(),
            demoted,
            placement: other
                .placement
                .iter()
                .map(|(v, h)| (v.clone(), h.clone()))
                .collect(),
        };
        refused(s, cmd, RejectKind::Conflict);
    }
    ok(
        s,
        Command::FinishOperation {
            op,
            status: OpStatus::Succeeded,
        },
    );
    let m = p.apps().next().expect("a move");
    let late = move_cmd(s, op, m, demoted);
    refused(s, late, RejectKind::Conflict);
}

#[track_caller]
fn move_one(s: &mut ClusterState, op: OpId, m: &AppMove, demoted: DataState) {
    let cmd = move_cmd(s, op, m, demoted);
    let Command::MoveApp { epochs, .. } = &cmd else {
        unreachable!()
    };
    let epochs = epochs.clone();
    // A reused or a skipped epoch is refused, and nothing of the group moves.
    if let Some((_, e)) = epochs.last() {
        for bad in [Epoch(e.0 - 1), Epoch(e.0 + 1)] {
            let mut wrong = cmd.clone();
            if let Command::MoveApp { epochs, .. } = &mut wrong
                && let Some(last) = epochs.last_mut()
            {
                last.1 = bad;
            }
            refused(s, wrong, RejectKind::Conflict);
        }
    }
    let before = s.clone();
    ok(s, cmd.clone());
    let rec = s.apps.get(&m.app).expect("app");
    assert_eq!(rec.active_site, m.to);
    assert_eq!(
        rec.placement
            .iter()
            .map(|(v, h)| (v.clone(), h.clone()))
            .collect::<Vec<_>>(),
        m.placement
    );
    for v in &topo(s).app(&m.app).expect("app").volumes {
        let (old, new) = (
            before.volumes.get(&v.id).expect("volume"),
            s.volumes.get(&v.id).expect("volume"),
        );
        assert_eq!(new.primary().map(|p| &p.site), Some(&m.to), "{}", v.id);
        if epochs.iter().any(|(id, _)| id == &v.id) {
            assert_eq!(new.epoch, old.epoch.next(), "{}: one epoch up", v.id);
            if let Some(was) = old.primary() {
                let now = new.replica(&was.site).expect("old primary");
                assert_eq!(
                    (now.role, now.data, now.epoch),
                    (Role::Secondary, demoted, new.epoch)
                );
            }
        } else {
            assert_eq!(new, old, "{} changed though it was primary already", v.id);
        }
    }
    for (id, a) in before.apps.iter().filter(|(id, _)| **id != m.app) {
        assert_eq!(s.apps.get(id), Some(a), "moving {} changed {id}", m.app);
    }
    for (id, v) in before.volumes.iter().filter(|(_, v)| v.app != m.app) {
        assert_eq!(s.volumes.get(id), Some(v), "moving {} changed {id}", m.app);
    }
    // Replayed (a retry after a lost reply): refused, nothing promoted twice.
    if !epochs.is_empty() {
        refused(s, cmd, RejectKind::Conflict);
    }
}

// ---------------------------------------------------------------------------------
// Random worlds

const DATA: [DataState; 4] = [
    DataState::UpToDate,
    DataState::Outdated,
    DataState::Inconsistent,
    DataState::Syncing,
];

fn pick<'a, T>(rng: &mut SplitMix64, v: &'a [T]) -> &'a T {
    &v[rng.range(0, v.len() as u64 - 1) as usize]
}

/// A non-empty list of apps, sometimes with a duplicate.
fn some_apps(rng: &mut SplitMix64, s: &ClusterState) -> Vec<AppId> {
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

fn random_trigger(rng: &mut SplitMix64, s: &ClusterState) -> Trigger {
    let sites = [site(A), site(B)];
    let hosts: Vec<HostId> = s.hosts.iter().map(|(h, _)| h.clone()).collect();
    match rng.range(0, 10) {
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
fn world(model: &Topology, seed: u64) -> (ClusterState, Trigger) {
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
        let demoted = *pick(&mut rng, &DATA);
        if p.kind == OpKind::Drill {
            // A drill moves nothing; it may still be running.
            if !p.is_empty() {
                begin(&mut s, &p);
            }
            continue;
        }
        execute(&mut s, &p, demoted);
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
                    inventory: crate::state::HostInventory {
                        vcpus: 8,
                        memory_bytes: 16 << 30,
                        hypervisor: "test".into(),
                        domain_type: "qemu".into(),
                        agent_version: "t".into(),
                        registered_ms: 1,
                    },
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

fn arb_world() -> impl Strategy<Value = (GenSpec, u64)> {
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
        let demoted = *pick(&mut SplitMix64::new(seed), &DATA);
        if p.kind == OpKind::Drill {
            // A drill promotes and moves nothing: the state machine refuses it.
            if let Some(m) = p.apps().next() {
                let op = begin(&mut s, &p);
                let cmd = move_cmd(&s, op, m, demoted);
                refused(&mut s, cmd, RejectKind::Conflict);
                prop_assert_eq!(&s.apps.get(&m.app).expect("app").active_site, &m.from);
            }
            return Ok(());
        }
        execute(&mut s, &p, demoted);
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
fn the_random_worlds_reach_every_kind_of_decision() {
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
            let kind = [
                ("another operation", "busy"),
                ("it depends on", "dependency"),
                ("already active", "already active"),
                ("is down (", "target down"),
                ("is down: a switchover", "source down"),
                ("the replica of volume", "replica"),
                ("replicates asynchronously", "async"),
                ("has room", "room"),
                ("has no room", "room"),
                ("served by the lost host", "replica host lost"),
                ("which holds its replicas at", "replica host"),
                ("a test drill starts its copy", "drill at the active site"),
                ("cannot snapshot them", "drill without agents"),
                ("where its fence stopped the VMs", "fenced host down"),
                (
                    "does not serve its volumes again yet",
                    "fenced host not serving",
                ),
            ]
            .into_iter()
            .find(|(needle, _)| k.reason.contains(needle))
            .map_or("other", |(_, kind)| kind);
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

// ---------------------------------------------------------------------------------
// Targeted cases

/// `model` with every volume replicated synchronously (a switchover needs that).
fn all_sync(mut m: Topology) -> Topology {
    for v in m.apps.iter_mut().flat_map(|a| &mut a.volumes) {
        v.replication = topology::Replication::Sync;
    }
    m
}

/// Five apps, all preferring site A: app 0 and 3 of tier 1, app 1 (tier 2) depends on
/// app 0, app 2 (tier 2) on app 1, app 4 of tier 3 on nothing.
fn chain() -> Topology {
    let mut m = all_sync(model(4, 5, 3, 7));
    let shape: [(u32, &[usize]); 5] = [(1, &[]), (2, &[0]), (2, &[1]), (1, &[]), (3, &[])];
    for (a, (tier, deps)) in m.apps.iter_mut().zip(shape) {
        a.tier = tier;
        a.depends_on = deps.iter().map(|&d| app(d)).collect();
        a.preferred_site = site(A);
    }
    m
}

fn first_volume(s: &ClusterState, a: &AppId) -> VolumeId {
    topo(s).app(a).expect("app").volumes[0].id.clone()
}

#[test]
fn a_lost_site_fails_every_app_active_there_over_to_the_other_site() {
    let s = steady(&model(4, 12, 3, 1));
    let at_a = active_at(&s, A);
    assert!(!at_a.is_empty() && at_a.len() < 12, "both sites run apps");
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    assert_eq!(p.kind, OpKind::Failover);
    assert!(p.skipped.is_empty(), "{:?}", p.skipped);
    assert_eq!(planned(&p).into_iter().collect::<BTreeSet<_>>(), at_a);
    for m in p.apps() {
        assert_eq!((m.from.as_str(), m.to.as_str(), m.graceful), (A, B, false));
        let model = topo(&s).app(&m.app).expect("app");
        assert_eq!(m.volumes.len(), model.volumes.len());
        assert_eq!(m.starts.len(), model.vms.len());
    }
    // The apps of site B are not even mentioned.
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(B) });
    assert_eq!(
        planned(&p).into_iter().collect::<BTreeSet<_>>(),
        active_at(&s, B)
    );
}

#[test]
fn a_replica_that_is_not_up_to_date_is_never_promoted() {
    let m = model(4, 8, 1, 2);
    for data in [
        DataState::Outdated,
        DataState::Inconsistent,
        DataState::Syncing,
    ] {
        let mut s = steady(&m);
        let victim = active_at(&s, A).into_iter().next().expect("an app at A");
        let group = &topo(&s).app(&victim).expect("app").volumes;
        let vol = group[group.len() - 1].id.clone();
        set_data(&mut s, &vol, &site(B), data);
        let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
        let reason = skip_reason(&p, &victim).expect("the victim is skipped");
        assert!(
            reason.contains(&format!("volume {vol} at site-b is {data:?}")),
            "{reason}"
        );
        assert_eq!(p.skipped.len(), 1, "only the victim: {:?}", p.skipped);
        assert_eq!(p.apps().count(), active_at(&s, A).len() - 1);
    }
    // Freshly applied, nothing has synced: nothing can fail over.
    let mut s = applied(&m);
    hosts_up(&mut s);
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    assert!(p.is_empty());
    assert!(
        p.skipped
            .iter()
            .all(|k| k.reason.contains("is Inconsistent"))
    );
}

#[test]
fn vms_restart_only_on_up_hosts_of_the_target_site() {
    let m = model(6, 8, 1, 3);
    let mut s = steady(&m);
    let b: Vec<HostId> = topo(&s).hosts_at(&site(B)).map(|h| h.id.clone()).collect();
    set_host(&mut s, &b[0], HostState::Down);
    set_host(&mut s, &b[1], HostState::Unknown);
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    assert!(!p.is_empty());
    assert!(p.apps().flat_map(|m| &m.starts).all(|(_, h)| *h == b[2]));
    // No host up at B: every app is skipped, naming a VM that found no room.
    set_host(&mut s, &b[2], HostState::Down);
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    assert!(p.is_empty());
    assert_eq!(p.skipped.len(), active_at(&s, A).len());
    assert!(p.skipped.iter().all(|k| {
        k.reason
            .starts_with("no up host at site-b has room for VM ")
    }));
}

/// One host per site; site `small`'s host gets `vcpus` vCPUs (memory stays ample).
fn two_apps(small: &str, vcpus: impl Fn(&Topology) -> u64) -> Topology {
    let mut m = all_sync(model(2, 2, 1, 3));
    let v = u32::try_from(vcpus(&m)).expect("small");
    for h in m.hosts.iter_mut().filter(|h| h.site.as_str() == small) {
        h.vcpus = v;
    }
    m
}

fn vcpus_of(m: &Topology, i: usize) -> u64 {
    m.apps[i].vcpus()
}

#[test]
fn an_app_already_at_the_target_keeps_its_room() {
    // app 0 runs at A, app 1 at B; B's host fits both, or one vCPU less.
    let both = |m: &Topology| vcpus_of(m, 0) + vcpus_of(m, 1);
    let failover = Trigger::Failover {
        apps: vec![app(0), app(1)],
        to: site(B),
    };
    let s = steady(&two_apps(B, both));
    let p = plan_ok(&s, &failover);
    assert_eq!(skip_reason(&p, &app(1)), Some("already active at site-b"));
    assert_eq!(planned(&p), vec![app(0)]);

    let s = steady(&two_apps(B, |m| both(m) - 1));
    let p = plan_ok(&s, &failover);
    assert_eq!(skip_reason(&p, &app(1)), Some("already active at site-b"));
    let r = skip_reason(&p, &app(0)).expect("app 0 does not fit");
    assert!(r.starts_with("no up host at site-b has room"), "{r}");
}

#[test]
fn a_failback_does_not_count_on_room_an_app_that_stays_would_free() {
    // A's host holds app 0 or app 1, never both at once.
    let mut s = steady(&two_apps(A, |m| vcpus_of(m, 0) + vcpus_of(m, 1) - 1));
    // Swap them, one at a time: app 0 to B, then app 1 to A.
    for (a, to) in [(0, B), (1, A)] {
        let t = Trigger::Switchover {
            apps: vec![app(a)],
            to: site(to),
        };
        run(&mut s, &t, DataState::UpToDate);
    }
    let back = Trigger::Failback {
        apps: vec![app(0), app(1)],
    };
    // app 1 cannot leave A (its replica at B is resyncing), so app 0 finds no room there.
    let vol = first_volume(&s, &app(1));
    set_data(&mut s, &vol, &site(B), DataState::Syncing);
    let p = plan_ok(&s, &back);
    assert!(skip_reason(&p, &app(1)).is_some_and(|r| r.contains("is Syncing")));
    let r = skip_reason(&p, &app(0)).expect("app 0 does not fit");
    assert!(r.starts_with("no up host at site-a has room"), "{r}");
    // Both may move, but in the same wave: app 1 still runs at A while app 0 starts.
    sync_all(&mut s);
    let p = plan_ok(&s, &back);
    assert_eq!(planned(&p), vec![app(1)]);
    execute(&mut s, &p, DataState::UpToDate);
    let p = plan_ok(&s, &back);
    assert_eq!(planned(&p), vec![app(0)]);
    assert_eq!(skip_reason(&p, &app(1)), Some("already active at site-b"));
}

#[test]
fn waves_follow_tiers_then_dependencies() {
    let s = steady(&chain());
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    let waves: Vec<Vec<AppId>> = p
        .waves
        .iter()
        .map(|w| w.apps.iter().map(|m| m.app.clone()).collect())
        .collect();
    assert_eq!(
        waves,
        vec![
            vec![app(0), app(3)],
            vec![app(1)],
            vec![app(2)],
            vec![app(4)]
        ]
    );
}

#[test]
fn an_app_whose_dependency_cannot_move_stays_too() {
    let mut s = steady(&chain());
    let vol = first_volume(&s, &app(0));
    set_data(&mut s, &vol, &site(B), DataState::Outdated);
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    assert!(skip_reason(&p, &app(0)).is_some_and(|r| r.contains("is Outdated")));
    for (a, dep) in [(1, 0), (2, 1)] {
        let r = skip_reason(&p, &app(a)).expect("skipped");
        assert!(r.starts_with(&format!("it depends on {}", app(dep))), "{r}");
    }
    assert_eq!(planned(&p), vec![app(3), app(4)]);

    // A dependency already at the target holds nothing back.
    let mut s = steady(&chain());
    let first = Trigger::Switchover {
        apps: vec![app(0)],
        to: site(B),
    };
    run(&mut s, &first, DataState::UpToDate);
    let p = plan_ok(
        &s,
        &Trigger::Switchover {
            apps: vec![app(1), app(0)],
            to: site(B),
        },
    );
    assert_eq!(skip_reason(&p, &app(0)), Some("already active at site-b"));
    assert_eq!(planned(&p), vec![app(1)]);
}

#[test]
fn apps_owned_by_a_running_operation_are_left_to_it() {
    let mut s = steady(&model(4, 8, 1, 4));
    let at_a: Vec<AppId> = active_at(&s, A).into_iter().collect();
    let (x, y) = (at_a[0].clone(), at_a[1].clone());
    let lost = Trigger::SiteLost { site: site(A) };
    // A test drill holds nothing back: a real failover of an app under test goes on.
    ok(
        &mut s,
        Command::StartOperation {
            kind: OpKind::Drill,
            apps: vec![x.clone()],
            note: "drill".into(),
        },
    );
    the_move(&plan_ok(&s, &lost), &x);
    let Outcome::Operation(drill) = ok(
        &mut s,
        Command::StartOperation {
            kind: OpKind::Failover,
            apps: vec![x.clone()],
            note: "by hand".into(),
        },
    ) else {
        panic!("no operation")
    };
    let p = plan_ok(&s, &lost);
    assert!(skip_reason(&p, &x).is_some_and(|r| r.contains("another operation")));
    the_move(&p, &y);
    // The operation of an earlier plan owns its apps too.
    let earlier = plan_ok(
        &s,
        &Trigger::Failover {
            apps: vec![y.clone()],
            to: site(B),
        },
    );
    let op = begin(&mut s, &earlier);
    let p = plan_ok(&s, &lost);
    assert!(skip_reason(&p, &y).is_some_and(|r| r.contains("another operation")));
    for op in [drill, op] {
        ok(
            &mut s,
            Command::FinishOperation {
                op,
                status: OpStatus::Aborted,
            },
        );
    }
    let p = plan_ok(&s, &lost);
    assert!(p.skipped.is_empty(), "{:?}", p.skipped);
}

#[test]
fn a_lost_host_restarts_only_its_vms_at_the_same_site() {
    let m = model(6, 10, 2, 5);
    // Nothing is promoted, so replicas that never synced do not matter.
    let mut s = applied(&m);
    hosts_up(&mut s);
    let on = |s: &ClusterState, h: &HostId| {
        s.apps
            .values()
            .flat_map(|a| a.placement.values())
            .filter(|p| *p == h)
            .count()
    };
    let lost = topo(&s)
        .hosts_at(&site(A))
        .map(|h| h.id.clone())
        .max_by_key(|h| on(&s, h))
        .expect("a host");
    let t = Trigger::HostLost { host: lost.clone() };
    // Declared lost while it still runs (an operator's call): its VMs are stopped first.
    let p = plan_ok(&s, &t);
    assert!(p.skipped.is_empty(), "{:?}", p.skipped);
    assert_eq!(
        p.apps().map(|m| m.starts.len()).sum::<usize>(),
        on(&s, &lost)
    );
    assert!(p.apps().all(|m| m.stops.iter().all(|(_, h)| *h == lost)));
    assert!(p.apps().all(|m| m.stops.len() == m.starts.len()));
    // Down, it has fenced itself: nothing to stop.
    set_host(&mut s, &lost, HostState::Down);
    let p = plan_ok(&s, &t);
    assert!(p.apps().all(|m| m.stops.is_empty() && m.volumes.is_empty()));
    assert!(p.apps().all(|m| m.from.as_str() == A && m.to.as_str() == A));
    let epochs: Vec<Epoch> = s.volumes.values().map(|v| v.epoch).collect();
    execute(&mut s, &p, DataState::Outdated);
    assert_eq!(on(&s, &lost), 0);
    assert_eq!(
        s.volumes.values().map(|v| v.epoch).collect::<Vec<_>>(),
        epochs
    );
    assert!(plan_ok(&s, &t).is_empty());
}

/// A stalled control plane: every agent fenced, and the leader, back, sees one host's
/// lease run out before the others renew. The lost host's VMs move to another host of
/// the site, and the app's VMs that the fence stopped on that other host restart where
/// they are, in the same move: the app's health gate needs every VM (seen in a test run,
/// where the gate waited for a VM nothing would start).
#[test]
fn a_lost_host_also_restarts_the_apps_vms_a_fence_stopped_on_its_other_hosts() {
    let (mut s, app_id, lost, other, stopped) = (0..50)
        .find_map(|seed| {
            let mut s = applied(&model(6, 10, 2, seed));
            hosts_up(&mut s);
            let found = s.apps.values().find_map(|a| {
                let mut on: BTreeMap<&HostId, Vec<&VmId>> = BTreeMap::new();
                for (vm, h) in &a.placement {
                    on.entry(h).or_default().push(vm);
                }
                let mut hosts = on.into_iter();
                let (lost, _) = hosts.next()?;
                let (other, vms) = hosts.next()?;
                Some((a.id.clone(), lost.clone(), other.clone(), vms[0].clone()))
            });
            found.map(|(a, l, o, v)| (s, a, l, o, v))
        })
        .expect("a generated app with VMs on two hosts");
    let running_too: Vec<VmId> = s
        .apps
        .get(&app_id)
        .expect("app")
        .placement
        .iter()
        .filter(|(vm, h)| **h == other && **vm != stopped)
        .map(|(vm, _)| vm.clone())
        .collect();
    let mut states = vec![(stopped.clone(), VmState::ShutOff)];
    states.extend(running_too.iter().map(|v| (v.clone(), VmState::Running)));
    ok(
        &mut s,
        Command::SetVmStates {
            host: other.clone(),
            states,
            reason: "test".into(),
        },
    );
    set_host(&mut s, &lost, HostState::Down);
    let p = plan_ok(&s, &Trigger::HostLost { host: lost.clone() });
    let m = the_move(&p, &app_id);
    assert!(
        m.starts.contains(&(stopped.clone(), other.clone())),
        "{stopped} (stopped on {other}) restarts there: {:?}",
        m.starts
    );
    for v in &running_too {
        assert!(
            !m.starts.iter().any(|(x, _)| x == v),
            "{v} runs: {:?}",
            m.starts
        );
    }
    assert!(m.stops.is_empty(), "nothing to stop: {:?}", m.stops);
    // Reported running, it is left alone.
    ok(
        &mut s,
        Command::SetVmStates {
            host: other.clone(),
            states: vec![(stopped.clone(), VmState::Running)],
            reason: "test".into(),
        },
    );
    let p = plan_ok(&s, &Trigger::HostLost { host: lost });
    let m = the_move(&p, &app_id);
    assert!(!m.starts.iter().any(|(v, _)| *v == stopped));
    assert_eq!(crate::planner::stopped_in_place(&s, m), vec![]);
    // Fenced after the plan was made: the health gate starts it where it is, unless
    // its host is down (then it is that host's loss).
    ok(
        &mut s,
        Command::SetVmStates {
            host: other.clone(),
            states: vec![(stopped.clone(), VmState::ShutOff)],
            reason: "test".into(),
        },
    );
    assert_eq!(
        crate::planner::stopped_in_place(&s, m),
        vec![(stopped.clone(), other.clone())]
    );
    set_host(&mut s, &other, HostState::Down);
    assert_eq!(crate::planner::stopped_in_place(&s, m), vec![]);
}

#[test]
fn a_switchover_stops_the_source_first_and_needs_it_up() {
    let mut s = steady(&all_sync(model(4, 8, 1, 6)));
    let at_a: Vec<AppId> = active_at(&s, A).into_iter().collect();
    let at_b = active_at(&s, B).into_iter().next().expect("an app at B");
    let mut apps = at_a.clone();
    apps.push(at_b.clone());
    let t = Trigger::Switchover {
        apps: apps.clone(),
        to: site(B),
    };
    let p = plan_ok(&s, &t);
    assert_eq!(p.kind, OpKind::Switchover);
    assert_eq!(skip_reason(&p, &at_b), Some("already active at site-b"));
    for a in &at_a {
        let m = the_move(&p, a);
        assert!(m.graceful);
        let now: Vec<(VmId, HostId)> = s
            .apps
            .get(a)
            .expect("app")
            .placement
            .clone()
            .into_iter()
            .collect();
        assert_eq!(m.stops, now);
    }
    // An async volume served outside the cluster cannot be drained by it: that app is
    // refused. (Served by the agents it is drained: see the agent-served case below.)
    let mut m = topo(&s).clone();
    m.apps[0].volumes[0].replication = topology::Replication::Async {
        lag_max_s: 5,
        lag_max_size: topology::ByteSize::gib(1),
    };
    let s2 = steady(&m);
    let p = plan_ok(&s2, &t);
    let r = skip_reason(&p, &app(0)).expect("app 0 is refused");
    assert!(r.contains("replicates asynchronously"), "{r}");
    // Served by the agents, the same group is switched over: its primary drains it.
    let mut m3 = m.clone();
    m3.cluster.volumes = topology::VolumeService::Agents;
    let s3 = steady(&m3);
    let p = plan_ok(&s3, &t);
    assert_eq!(skip_reason(&p, &app(0)), None, "{:?}", p.skipped);
    let mv = p.apps().find(|x| x.app == app(0)).expect("app 0 planned");
    let pinned = s3
        .volumes
        .get(&m3.apps[0].volumes[0].id)
        .and_then(|v| v.replica(&mv.to))
        .and_then(|r| r.host.clone())
        .expect("a replica host");
    assert!(
        mv.starts.iter().all(|(_, h)| *h == pinned),
        "VMs with disks start where the replica is: {:?} vs {pinned}",
        mv.starts
    );
    // The source is down: no switchover, but a failover still moves the apps.
    set_site(&mut s, A, SiteState::Down);
    let p = plan_ok(&s, &t);
    assert!(p.is_empty());
    for a in &at_a {
        let r = skip_reason(&p, a).expect("skipped");
        assert!(r.starts_with("site site-a is down: a switchover needs the source up"));
    }
    let p = plan_ok(&s, &Trigger::Failover { apps, to: site(B) });
    assert_eq!(p.apps().count(), at_a.len());
    // The target is down: nothing moves.
    set_site(&mut s, B, SiteState::Down);
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    assert!(p.is_empty());
    assert!(
        p.skipped
            .iter()
            .all(|k| k.reason.starts_with("site site-b is down"))
    );
}

#[test]
fn a_failback_returns_apps_to_their_preferred_site() {
    let mut s = steady(&all_sync(model(4, 8, 2, 8)));
    let home_a = active_at(&s, A);
    run(
        &mut s,
        &Trigger::SiteLost { site: site(A) },
        DataState::Outdated,
    );
    assert!(active_at(&s, A).is_empty());
    let all: Vec<AppId> = s.apps.iter().map(|(a, _)| a.clone()).collect();
    let back = Trigger::Failback { apps: all };
    // The old primaries at A were demoted Outdated: nothing can return yet.
    let p = plan_ok(&s, &back);
    assert!(p.is_empty());
    for k in &p.skipped {
        if home_a.contains(&k.app) {
            assert!(k.reason.contains("is Outdated"), "{}", k.reason);
        } else {
            assert_eq!(k.reason, "already active at site-b");
        }
    }
    sync_all(&mut s);
    let p = plan_ok(&s, &back);
    assert_eq!(p.kind, OpKind::Failback);
    assert_eq!(planned(&p).into_iter().collect::<BTreeSet<_>>(), home_a);
    assert!(p.apps().all(|m| m.graceful && m.to.as_str() == A));
    execute(&mut s, &p, DataState::UpToDate);
    assert_eq!(active_at(&s, A), home_a);
    // Each volume that went there and back is at epoch 3, its old primary in sync.
    for a in &home_a {
        for v in &topo(&s).app(a).expect("app").volumes {
            let rec = s.volumes.get(&v.id).expect("volume");
            assert_eq!(rec.epoch, Epoch(3));
            let b = rec.replica(&site(B)).expect("replica at B");
            assert_eq!((b.role, b.data), (Role::Secondary, DataState::UpToDate));
        }
    }
}

#[test]
fn only_a_loss_waits_for_manual_approval() {
    let mut m = all_sync(model(4, 6, 1, 9));
    for a in &mut m.apps {
        a.failover = FailoverPolicy::ManualApproval;
    }
    let mut s = steady(&m);
    let at_a: Vec<AppId> = active_at(&s, A).into_iter().collect();
    let host = s
        .apps
        .get(&at_a[0])
        .expect("app")
        .placement
        .values()
        .next()
        .cloned()
        .expect("host");
    let cases = [
        (Trigger::SiteLost { site: site(A) }, true),
        (Trigger::HostLost { host }, true),
        (
            Trigger::Failover {
                apps: at_a.clone(),
                to: site(B),
            },
            false,
        ),
        (
            Trigger::Switchover {
                apps: at_a.clone(),
                to: site(B),
            },
            false,
        ),
    ];
    for (t, wait) in cases {
        let p = plan_ok(&s, &t);
        assert!(!p.is_empty(), "{t:?}");
        assert!(p.apps().all(|m| m.needs_approval == wait), "{t:?}");
    }
    let away = Trigger::Switchover {
        apps: at_a.clone(),
        to: site(B),
    };
    run(&mut s, &away, DataState::UpToDate);
    let p = plan_ok(&s, &Trigger::Failback { apps: at_a });
    assert!(!p.is_empty());
    assert!(p.apps().all(|m| !m.needs_approval));
}

#[test]
fn plans_that_cannot_be_made_say_why() {
    assert_eq!(
        plan(
            &ClusterState::default(),
            &Trigger::SiteLost { site: site(A) }
        ),
        Err(PlanError::NoTopology)
    );
    let s = steady(&model(4, 3, 1, 1));
    let ghost = AppId::new("ghost");
    let cases = [
        (
            Trigger::SiteLost {
                site: site("nowhere"),
            },
            PlanError::UnknownSite(site("nowhere")),
        ),
        (
            Trigger::SiteLost {
                site: site(WITNESS),
            },
            PlanError::WitnessSite(site(WITNESS)),
        ),
        (
            Trigger::HostLost {
                host: HostId::new("nope"),
            },
            PlanError::UnknownHost(HostId::new("nope")),
        ),
        (
            Trigger::Failover {
                apps: vec![],
                to: site(B),
            },
            PlanError::NoApps,
        ),
        (
            Trigger::Failover {
                apps: vec![app(0), ghost.clone()],
                to: site(B),
            },
            PlanError::UnknownApp(ghost.clone()),
        ),
        (
            Trigger::Failover {
                apps: vec![app(0)],
                to: site("nowhere"),
            },
            PlanError::UnknownSite(site("nowhere")),
        ),
        (
            Trigger::Failover {
                apps: vec![app(0)],
                to: site(WITNESS),
            },
            PlanError::WitnessSite(site(WITNESS)),
        ),
        (
            Trigger::Switchover {
                apps: vec![],
                to: site(A),
            },
            PlanError::NoApps,
        ),
        (
            Trigger::Switchover {
                apps: vec![app(0)],
                to: site(WITNESS),
            },
            PlanError::WitnessSite(site(WITNESS)),
        ),
        (
            Trigger::Switchover {
                apps: vec![ghost.clone()],
                to: site(A),
            },
            PlanError::UnknownApp(ghost.clone()),
        ),
        (Trigger::Failback { apps: vec![] }, PlanError::NoApps),
        (
            Trigger::Failback {
                apps: vec![ghost.clone()],
            },
            PlanError::UnknownApp(ghost),
        ),
    ];
    for (t, want) in cases {
        let got = plan(&s, &t);
        assert_eq!(got.as_ref().err(), Some(&want), "{t:?}");
        let msg = want.to_string();
        for id in ["nowhere", WITNESS, "nope", "ghost"] {
            if format!("{want:?}").contains(id) {
                assert!(msg.contains(id), "{msg}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Carrying a plan out: BeginPlan, ApproveOperation, MoveApp

#[test]
fn begin_plan_refuses_empty_unknown_duplicate_and_owned_apps() {
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
fn move_app_promotes_at_the_next_epoch_only_what_the_plan_allows() {
    let mut s = steady(&model(4, 6, 1, 11));
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    let op = begin(&mut s, &p);
    if p.apps().any(|m| m.needs_approval) {
        ok(&mut s, Command::ApproveOperation { op, apps: vec![] });
    }
    let m = p.apps().next().expect("a move").clone();
    let good = move_cmd(&s, op, &m, DataState::Outdated);
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
    move_one(&mut s, op, &m, DataState::Outdated);
    for v in &m.volumes {
        assert_eq!(s.volumes.get(v).expect("volume").epoch, Epoch(2));
    }
}

#[test]
fn approval_is_given_once_and_only_to_apps_that_wait_for_it() {
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
    let early = move_cmd(&s, op, the_move(&p, &app(0)), DataState::Outdated);
    let r = refused(&mut s, early, RejectKind::Conflict);
    assert!(r.contains("approv"), "{r}");
    move_one(&mut s, op, the_move(&p, &app(1)), DataState::Outdated);
    ok(&mut s, approve(&[0, 0]));
    assert_eq!(approved(&s), vec![app(0)]);
    refused(&mut s, approve(&[0]), RejectKind::Conflict);
    move_one(&mut s, op, the_move(&p, &app(0)), DataState::Outdated);
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
