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
use topology::{AppId, FailoverPolicy, HostId, SiteId, Topology, VmId, VolumeId};

use super::*;

mod cases;
mod commands;
mod execute;
mod oracle;
mod steps;
mod worlds;

use crate::state::{
    Command, DataState, Epoch, HostState, OpId, OpKind, OpStatus, Outcome, RejectKind, Request,
    Response, Role, SiteState, VmState,
};
use execute::*;
use oracle::*;
use steps::*;

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

fn skip_reason<'p>(p: &'p Plan, a: &AppId) -> Option<&'p SkipReason> {
    p.skipped.iter().find(|k| &k.app == a).map(|k| &k.reason)
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
        Trigger::Restore { .. } => s.apps.get(a).expect("app").active_site.clone(),
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
        Trigger::Restore { vms } => vms.iter().map(|v| v.app.clone()).collect(),
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

/// A generated world, every host up, with an app whose VMs are on two hosts: the app,
/// one host, the other, and a VM on the other.
fn app_on_two_hosts() -> (ClusterState, AppId, HostId, HostId, VmId) {
    (0..50)
        .find_map(|seed| {
            let mut s = applied(&model(6, 10, 2, seed));
            hosts_up(&mut s);
            let found = s.apps.values().find_map(|a| {
                let mut on: BTreeMap<&HostId, Vec<&VmId>> = BTreeMap::new();
                for (vm, h) in &a.placement {
                    on.entry(h).or_default().push(vm);
                }
                let mut hosts = on.into_iter();
                let (one, _) = hosts.next()?;
                let (other, vms) = hosts.next()?;
                Some((a.id.clone(), one.clone(), other.clone(), vms[0].clone()))
            });
            found.map(|(a, l, o, v)| (s, a, l, o, v))
        })
        .expect("a generated app with VMs on two hosts")
}

/// What a test agent reports when it registers at `registered_ms`.
fn inventory(registered_ms: u64) -> crate::state::HostInventory {
    crate::state::HostInventory {
        vcpus: 8,
        memory_bytes: 16 << 30,
        hypervisor: "test".into(),
        domain_type: "qemu".into(),
        agent_version: "t".into(),
        registered_ms,
    }
}
