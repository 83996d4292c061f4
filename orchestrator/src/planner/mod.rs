//! The failover planner (DESIGN §6): cluster state + an event → an immutable [`Plan`].
//!
//! Pure and deterministic: the same state and trigger always give the same plan, so a
//! plan can be committed through Raft and a new leader can finish it without
//! re-deciding anything. The plan says, per app, in *waves* (priority tiers, and inside a
//! tier `depends_on` order): which consistency group is promoted at which site, on which
//! hosts its VMs restart, whether an operator must approve it first and whether the
//! source is stopped gracefully (switchover, failback). Apps that cannot move are listed
//! in [`Plan::skipped`] with the reason — a replica that is not `UpToDate`, no capacity,
//! an operation already running — never silently dropped.
//!
//! Each move carries its steps with every parameter decided here ([`steps`]): the
//! executor chooses no host, peer, epoch or spec.
//!
//! Never: plan the promotion of a replica that is not `UpToDate`, place a VM on a host
//! that is not `Up` or lacks room, or order an app before an app it depends on.

mod steps;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use topology::{AppId, FailoverPolicy, HostId, SiteId, SiteRole, VmId};

pub use crate::plan::{
    AppMove, DrillKind, Plan, PlanError, PlannedProbe, PlannedStep, Skip, SkipReason, Trigger, Wave,
};
use crate::state::{ClusterState, DataState, HostState, SiteState};
pub use steps::DRAIN_MARGIN_S;

/// Free capacity of one host: (vcpus, memory bytes).
#[derive(Debug, Clone, Copy)]
struct Room {
    vcpus: u64,
    memory: u64,
}

/// Make the plan for `trigger` in `state`.
pub fn plan(state: &ClusterState, trigger: &Trigger) -> Result<Plan, PlanError> {
    let topo = &state.topology().ok_or(PlanError::NoTopology)?.model;
    let drill = matches!(trigger, Trigger::TestDrill { .. });
    let mut busy = state.busy_apps();
    if drill {
        busy.extend(state.drilled_apps());
    }
    let production = |site: &SiteId| -> Result<(), PlanError> {
        match topo.site(site) {
            None => Err(PlanError::UnknownSite(site.clone())),
            Some(s) if s.role == SiteRole::Witness => Err(PlanError::WitnessSite(site.clone())),
            Some(_) => Ok(()),
        }
    };
    let named = |apps: &[AppId]| -> Result<(), PlanError> {
        if apps.is_empty() {
            return Err(PlanError::NoApps);
        }
        match apps.iter().find(|a| topo.app(a).is_none()) {
            Some(a) => Err(PlanError::UnknownApp(a.clone())),
            None => Ok(()),
        }
    };
    // (app, target site, graceful) before the per-app checks.
    let mut wanted: Vec<(AppId, SiteId, bool)> = Vec::new();
    let mut host_lost: Option<HostId> = None;
    let mut host_fenced: Option<HostId> = None;
    // Restore: the VMs the reconciler found stopped, and where they are placed.
    let mut restore: Option<BTreeMap<VmId, HostId>> = None;
    match trigger {
        Trigger::SiteLost { site } => {
            production(site)?;
            let to = topo
                .peer_site(site)
                .ok_or_else(|| PlanError::UnknownSite(site.clone()))?
                .id
                .clone();
            for a in state.apps.values().filter(|a| &a.active_site == site) {
                wanted.push((a.id.clone(), to.clone(), false));
            }
        }
        Trigger::HostLost { host } => {
            let h = state
                .hosts
                .get(host)
                .ok_or_else(|| PlanError::UnknownHost(host.clone()))?;
            for a in state
                .apps
                .values()
                .filter(|a| a.placement.values().any(|p| p == host))
            {
                wanted.push((a.id.clone(), h.site.clone(), false));
            }
            host_lost = Some(host.clone());
        }
        Trigger::HostFenced { host } => {
            let h = state
                .hosts
                .get(host)
                .ok_or_else(|| PlanError::UnknownHost(host.clone()))?;
            for a in state.apps.values().filter(|a| a.active_site == h.site) {
                if !state.fenced_vms(&a.id, host).is_empty() {
                    wanted.push((a.id.clone(), h.site.clone(), false));
                }
            }
            host_fenced = Some(host.clone());
        }
        Trigger::Restore { vms } => {
            let apps: Vec<AppId> = vms.iter().map(|v| v.app.clone()).collect();
            named(&apps)?;
            for a in apps {
                if let Some(rec) = state.apps.get(&a) {
                    wanted.push((a, rec.active_site.clone(), false));
                }
            }
            restore = Some(vms.iter().map(|v| (v.vm.clone(), v.host.clone())).collect());
        }
        Trigger::Failover { apps, to } => {
            named(apps)?;
            production(to)?;
            wanted.extend(apps.iter().map(|a| (a.clone(), to.clone(), false)));
        }
        Trigger::Switchover { apps, to } => {
            named(apps)?;
            production(to)?;
            wanted.extend(apps.iter().map(|a| (a.clone(), to.clone(), true)));
        }
        Trigger::TestDrill { apps, to } => {
            named(apps)?;
            if let Some(to) = to {
                production(to)?;
            }
            for a in apps {
                let target = match to {
                    Some(t) => Some(t.clone()),
                    None => state
                        .apps
                        .get(a)
                        .and_then(|r| topo.peer_site(&r.active_site))
                        .map(|s| s.id.clone()),
                };
                if let Some(t) = target {
                    wanted.push((a.clone(), t, false));
                }
            }
        }
        Trigger::Failback { apps } => {
            named(apps)?;
            for a in apps {
                let pref = topo.app(a).map(|m| m.preferred_site.clone());
                if let Some(p) = pref {
                    wanted.push((a.clone(), p, true));
                }
            }
        }
    }

    // Free room on every Up host, after every VM that runs there now. The VMs of an
    // app that moves keep their room too: the app may still be skipped below (and keep
    // running), and a failback moves apps both ways inside one wave, so an app may start
    // at a site before another has stopped there. (The lost host offers no room.)
    let mut room: BTreeMap<HostId, Room> = BTreeMap::new();
    for h in &topo.hosts {
        let up = state
            .hosts
            .get(&h.id)
            .is_some_and(|r| r.state == HostState::Up);
        if up && host_lost.as_ref() != Some(&h.id) {
            room.insert(
                h.id.clone(),
                Room {
                    vcpus: u64::from(h.vcpus),
                    memory: h.memory.bytes(),
                },
            );
        }
    }
    let index = topo.app_index();
    for rec in state.apps.values() {
        let Some(app) = index.get(&rec.id) else {
            continue;
        };
        for vm in &app.vms {
            let Some(host) = rec.placement.get(&vm.id) else {
                continue;
            };
            if let Some(r) = room.get_mut(host) {
                r.vcpus = r.vcpus.saturating_sub(u64::from(vm.vcpus));
                r.memory = r.memory.saturating_sub(vm.memory.bytes());
            }
        }
    }

    // Order: the topology's dependency stages (tiers, then depends_on).
    let order = topology::validate::dependency_order(topo);
    let stage_of: HashMap<&AppId, usize> = order.as_ref().map(|o| o.stage_of()).unwrap_or_default();
    let mut wanted_sorted = wanted.clone();
    wanted_sorted.sort_by(|(a, _, _), (b, _, _)| {
        let key = |x: &AppId| {
            (
                stage_of.get(x).copied().unwrap_or(usize::MAX),
                index.get(x).map_or(u32::MAX, |m| m.tier),
            )
        };
        key(a).cmp(&key(b)).then_with(|| a.cmp(b))
    });

    let mut skipped = Vec::new();
    let mut by_stage: BTreeMap<usize, Vec<AppMove>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (app_id, to, graceful) in wanted_sorted {
        if !seen.insert(app_id.clone()) {
            continue;
        }
        let skip = |reason: SkipReason| Skip {
            app: app_id.clone(),
            reason,
        };
        let (Some(app), Some(rec)) = (index.get(&app_id), state.apps.get(&app_id)) else {
            skipped.push(skip(SkipReason::NotInState));
            continue;
        };
        if busy.contains(&app_id) {
            skipped.push(skip(SkipReason::Busy));
            continue;
        }
        if let Some(dep) = app.depends_on.iter().find(|d| {
            skipped.iter().any(|s: &Skip| &s.app == *d)
                && state.apps.get(d).is_some_and(|r| r.active_site != to)
        }) {
            skipped.push(skip(SkipReason::DependencySkipped { dep: dep.clone() }));
            continue;
        }
        let from = rec.active_site.clone();
        let same_site = from == to;
        if drill && same_site {
            skipped.push(skip(SkipReason::DrillAtActiveSite { site: to }));
            continue;
        }
        if same_site && host_lost.is_none() && host_fenced.is_none() && restore.is_none() {
            skipped.push(skip(SkipReason::AlreadyActive { site: to }));
            continue;
        }
        if let Some(s) = state.sites.get(&to)
            && s.state == SiteState::Down
        {
            skipped.push(skip(SkipReason::TargetDown { site: to }));
            continue;
        }
        if graceful
            && let Some(s) = state.sites.get(&from)
            && s.state == SiteState::Down
        {
            skipped.push(skip(SkipReason::SourceDown {
                site: from,
                app: app_id.clone(),
                to,
            }));
            continue;
        }
        // Every volume of the group must have an up-to-date replica at `to`.
        let mut volumes = Vec::new();
        let mut refused = None;
        if !same_site {
            for v in &app.volumes {
                let Some(vol) = state.volumes.get(&v.id) else {
                    refused = Some(SkipReason::VolumeMissing {
                        volume: v.id.clone(),
                    });
                    break;
                };
                match vol.replica(&to) {
                    None => {
                        refused = Some(SkipReason::NoReplica {
                            volume: v.id.clone(),
                            site: to.clone(),
                        });
                        break;
                    }
                    Some(r) if r.data != DataState::UpToDate => {
                        refused = Some(SkipReason::ReplicaNotUpToDate {
                            volume: v.id.clone(),
                            site: to.clone(),
                            data: r.data,
                        });
                        break;
                    }
                    Some(_) => {}
                }
                volumes.push(v.id.clone());
            }
        }
        // An async group's lag is drained by the agent that serves its primary (the
        // switchover's `stop volumes` step); volumes served outside the cluster cannot
        // be drained by it.
        let agent_served = app
            .volumes
            .first()
            .and_then(|v| state.volumes.get(&v.id))
            .is_some_and(|v| v.replicas.iter().all(|r| r.host.is_some()));
        if graceful
            && !agent_served
            && let Some(v) = app
                .volumes
                .iter()
                .find(|v| matches!(v.replication, topology::Replication::Async { .. }))
        {
            refused.get_or_insert_with(|| SkipReason::AsyncServedOutside {
                volume: v.id.clone(),
            });
        }
        if drill && !agent_served && !app.volumes.is_empty() {
            refused.get_or_insert(SkipReason::DrillServedOutside);
        }
        if let Some(reason) = refused {
            skipped.push(skip(reason));
            continue;
        }
        // Volumes served by agents live on one host per site: VMs with disks must run
        // there (their NBD socket is local).
        let pinned: Option<HostId> = app
            .volumes
            .first()
            .and_then(|v| state.volumes.get(&v.id))
            .and_then(|v| v.replica(&to))
            .and_then(|r| r.host.clone());
        if let Some(p) = &pinned {
            let disks = app.vms.iter().any(|vm| !vm.disks.is_empty());
            if disks && host_lost.as_ref() == Some(p) {
                skipped.push(skip(SkipReason::ReplicaHostLost {
                    app: app_id.clone(),
                    site: to,
                    host: p.clone(),
                }));
                continue;
            }
            if disks && !room.contains_key(p) {
                skipped.push(skip(SkipReason::ReplicaHostDown {
                    host: p.clone(),
                    site: to,
                }));
                continue;
            }
        }
        // What fences stopped, where: each VM restarts on the host it is placed on. An
        // app with VMs on several hosts (a stalled cluster fences them all) restarts
        // every stopped VM in one move: its health gate needs them all. So does a host
        // loss: the app's VMs on its other up hosts that their agents reported stopped
        // (the same stall fenced them before their hosts were seen down) restart where
        // they are, with the lost host's.
        // A restore restarts the VMs it names that are still stopped where placed.
        let fenced: BTreeMap<VmId, HostId> = if let Some(r) = &restore {
            r.iter()
                .filter(|(vm, h)| {
                    rec.placement.get(*vm) == Some(*h) && state.fenced_vms(&app_id, h).contains(*vm)
                })
                .map(|(vm, h)| (vm.clone(), h.clone()))
                .collect()
        } else if host_fenced.is_some() {
            let hosts: BTreeSet<&HostId> = rec.placement.values().collect();
            hosts
                .into_iter()
                .flat_map(|h| {
                    state
                        .fenced_vms(&app_id, h)
                        .into_iter()
                        .map(move |vm| (vm, h.clone()))
                })
                .collect()
        } else if let Some(lost) = &host_lost {
            rec.placement
                .iter()
                .filter(|(vm, h)| *h != lost && state.stopped_on_up_host(vm, h))
                .map(|(vm, h)| (vm.clone(), h.clone()))
                .collect()
        } else {
            BTreeMap::new()
        };
        if restore.is_some() && fenced.is_empty() {
            // It runs again already (started since the reconciler looked).
            skipped.push(skip(SkipReason::AlreadyActive { site: to }));
            continue;
        }
        if let Some(h) = fenced.values().find(|h| !room.contains_key(*h)) {
            skipped.push(skip(SkipReason::FencedHostDown { host: h.clone() }));
            continue;
        }
        // The fence stopped serving the group too: its VMs boot once it is served again.
        if let Some(h) = pinned.as_ref().filter(|p| fenced.values().any(|h| h == *p))
            && !state.serves_since_registration(&app_id, h)
        {
            skipped.push(skip(SkipReason::NotServedAgain { host: h.clone() }));
            continue;
        }
        // Hosts: VMs that must (re)start, largest first, best fit on Up hosts at `to`.
        let restart: Vec<&topology::Vm> = app
            .vms
            .iter()
            .filter(|vm| match (&host_lost, &host_fenced) {
                (Some(l), _) => rec.placement.get(&vm.id) == Some(l) || fenced.contains_key(&vm.id),
                (None, Some(_)) => fenced.contains_key(&vm.id),
                (None, None) if restore.is_some() => fenced.contains_key(&vm.id),
                (None, None) => true,
            })
            .collect();
        let mut order_vms = restart.clone();
        order_vms.sort_by(|a, b| b.memory.cmp(&a.memory).then(a.id.cmp(&b.id)));
        let mut trial = room.clone();
        let mut starts = Vec::new();
        let mut used: Vec<HostId> = Vec::new();
        let mut short = None;
        for vm in order_vms {
            // What a fence stopped restarts where it was placed: its room there is
            // still reserved, and its disks are served there.
            if let Some(h) = fenced.get(&vm.id) {
                starts.push((vm.id.clone(), h.clone()));
                continue;
            }
            let (vc, mem) = (u64::from(vm.vcpus), vm.memory.bytes());
            let fits = |r: &Room| r.vcpus >= vc && r.memory >= mem;
            let at_site = |h: &HostId| topo.host(h).is_some_and(|x| x.site == to);
            let need = if vm.disks.is_empty() {
                None
            } else {
                pinned.as_ref()
            };
            let allowed = |h: &HostId| at_site(h) && need.is_none_or(|p| p == h);
            // Best fit (least free memory that fits), other hosts of this app first.
            let pick = |avoid: bool| {
                trial
                    .iter()
                    .filter(|(h, r)| allowed(h) && fits(r) && !(avoid && used.contains(h)))
                    .min_by_key(|(h, r)| (r.memory, (*h).clone()))
                    .map(|(h, _)| h.clone())
            };
            match pick(true).or_else(|| pick(false)) {
                Some(h) => {
                    if let Some(r) = trial.get_mut(&h) {
                        r.vcpus -= vc;
                        r.memory -= mem;
                    }
                    used.push(h.clone());
                    starts.push((vm.id.clone(), h));
                }
                None => {
                    short = Some(match need {
                        Some(p) => SkipReason::NoRoomOnReplicaHost {
                            host: p.clone(),
                            site: to.clone(),
                            vm: vm.id.clone(),
                            vcpus: vm.vcpus,
                            memory: vm.memory,
                        },
                        None => SkipReason::NoRoom {
                            site: to.clone(),
                            vm: vm.id.clone(),
                            vcpus: vm.vcpus,
                            memory: vm.memory,
                        },
                    });
                    break;
                }
            }
        }
        if let Some(reason) = short {
            skipped.push(skip(reason));
            continue;
        }
        starts.sort();
        let mut placement: BTreeMap<VmId, HostId> = if same_site {
            rec.placement.clone()
        } else {
            BTreeMap::new()
        };
        placement.extend(starts.iter().cloned());
        // Stop what still runs at the source first: every VM for a graceful move;
        // otherwise the restarting VMs whose host still holds its lease (an operator
        // declared the loss). Hosts without a lease have fenced themselves.
        let stops = rec
            .placement
            .iter()
            .filter(|(v, h)| {
                // A drill stops nothing: production keeps running.
                // A fenced host stopped its VMs itself.
                !drill
                    && host_fenced.is_none()
                    && !fenced.contains_key(*v)
                    && (graceful
                        || (starts.iter().any(|(s, _)| s == *v)
                            && state.hosts.get(h).is_some_and(|r| r.state == HostState::Up)))
            })
            .map(|(v, h)| (v.clone(), h.clone()))
            .collect();
        let health_timeout_ms = topo.timing.health_gate_timeout_ms;
        let stage = stage_of.get(&app_id).copied().unwrap_or(usize::MAX);
        let mut m = AppMove {
            app: app_id.clone(),
            tier: app.tier,
            from,
            to,
            needs_approval: app.failover == FailoverPolicy::ManualApproval
                && matches!(trigger, Trigger::SiteLost { .. } | Trigger::HostLost { .. }),
            graceful,
            volumes,
            placement: placement.into_iter().collect(),
            starts,
            stops,
            rto_target_s: app.rto_target_s,
            health_timeout_ms,
            steps: Vec::new(),
        };
        match steps::move_steps(state, app, &m, drill) {
            Ok(s) => m.steps = s,
            Err(reason) => {
                skipped.push(skip(reason));
                continue;
            }
        }
        room = trial;
        by_stage.entry(stage).or_default().push(m);
    }
    let waves: Vec<Wave> = by_stage.into_values().map(|apps| Wave { apps }).collect();
    let (closing, interrupted) = if drill && !waves.is_empty() {
        steps::drill_closing(&waves.iter().flat_map(|w| &w.apps).collect::<Vec<_>>())
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(Plan {
        kind: trigger.kind(),
        trigger: trigger.clone(),
        waves,
        skipped,
        drill: drill.then_some(DrillKind::Test),
        closing,
        interrupted,
    })
}

#[cfg(test)]
mod tests;
