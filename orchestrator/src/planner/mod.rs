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
//! Never: plan the promotion of a replica that is not `UpToDate`, place a VM on a host
//! that is not `Up` or lacks room, or order an app before an app it depends on.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use topology::{AppId, FailoverPolicy, HostId, SiteId, SiteRole, VmId, VolumeId};

use crate::state::{ClusterState, DataState, HostState, OpKind, OpStatus, SiteState, VmState};

/// What asks for a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Trigger {
    /// A production site is lost (declared `Down` by the leader, or by an operator with
    /// `site fail`): every app active there fails over to the other site.
    SiteLost { site: SiteId },
    /// One host is lost: its VMs restart on other hosts of the same site (the site's
    /// replicas are intact, so nothing is promoted).
    HostLost { host: HostId },
    /// A host's agent fenced its VMs (its lease ran out, e.g. during a long leader
    /// change) and is back: the VMs it stopped restart where they were placed.
    HostFenced { host: HostId },
    /// An operator moves apps to `to` now, as after a loss (no graceful stop).
    Failover { apps: Vec<AppId>, to: SiteId },
    /// A planned move with zero loss: stop at the source, drain, promote, start.
    Switchover { apps: Vec<AppId>, to: SiteId },
    /// A switchover of apps back to their preferred site.
    Failback { apps: Vec<AppId> },
    /// A non-disruptive test drill: start a copy of each app at `to` (default: the
    /// other production site) on copy-on-write snapshots of its replicas, on an
    /// isolated network; production is not touched.
    TestDrill {
        apps: Vec<AppId>,
        to: Option<SiteId>,
    },
}

impl Trigger {
    pub fn kind(&self) -> OpKind {
        match self {
            Trigger::SiteLost { .. }
            | Trigger::HostLost { .. }
            | Trigger::HostFenced { .. }
            | Trigger::Failover { .. } => OpKind::Failover,
            Trigger::Switchover { .. } => OpKind::Switchover,
            Trigger::Failback { .. } => OpKind::Failback,
            Trigger::TestDrill { .. } => OpKind::Drill,
        }
    }

    /// One line for the operation's note and the audit log.
    pub fn describe(&self) -> String {
        let list = |apps: &[AppId]| {
            apps.iter()
                .map(AppId::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Trigger::SiteLost { site } => format!("site {site} lost"),
            Trigger::HostLost { host } => format!("host {host} lost"),
            Trigger::HostFenced { host } => {
                format!("host {host} fenced its VMs and is back: restart them there")
            }
            Trigger::Failover { apps, to } => format!("failover of [{}] to {to}", list(apps)),
            Trigger::Switchover { apps, to } => {
                format!("switchover of [{}] to {to}", list(apps))
            }
            Trigger::Failback { apps } => format!("failback of [{}]", list(apps)),
            Trigger::TestDrill { apps, to } => match to {
                Some(to) => format!("test drill of [{}] at {to}", list(apps)),
                None => format!("test drill of [{}]", list(apps)),
            },
        }
    }
}

/// How one app moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppMove {
    pub app: AppId,
    pub tier: u32,
    pub from: SiteId,
    pub to: SiteId,
    /// Policy `manual-approval`: wait for `metrodr op approve` before touching anything.
    pub needs_approval: bool,
    /// Stop the VMs at the source and drain replication before promoting (switchover,
    /// failback); false when the source is lost.
    pub graceful: bool,
    /// The consistency group to promote at `to` (empty when `from == to`: a host loss
    /// inside a site promotes nothing).
    pub volumes: Vec<VolumeId>,
    /// Where the app's VMs run afterwards (every VM, including those that stay).
    pub placement: Vec<(VmId, HostId)>,
    /// The VMs that (re)start, with their new host.
    pub starts: Vec<(VmId, HostId)>,
    /// The VMs stopped first: (vm, host at the source): shut down for a graceful move,
    /// destroyed (fenced) when the source is declared lost but its host is still up.
    pub stops: Vec<(VmId, HostId)>,
    pub rto_target_s: u32,
    /// How long to wait for the health gate before the app is marked failed.
    pub health_timeout_ms: u64,
}

/// Apps that start together: each depends only on apps of earlier waves or on apps
/// that do not move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub apps: Vec<AppMove>,
}

/// An app the plan leaves alone, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    pub app: AppId,
    pub reason: String,
}

/// What kind of drill an operation is, if it is one: a test drill (kind `Drill`), or
/// a real switchover or declared site loss run as a drill (its report says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrillKind {
    Test,
    Switchover,
    SiteLoss,
}

/// The immutable plan an operation executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub kind: OpKind,
    pub trigger: Trigger,
    pub waves: Vec<Wave>,
    pub skipped: Vec<Skip>,
    /// Set when the operation runs as a drill (`metrodr drill run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillKind>,
}

impl Plan {
    pub fn apps(&self) -> impl Iterator<Item = &AppMove> {
        self.waves.iter().flat_map(|w| w.apps.iter())
    }
    pub fn is_empty(&self) -> bool {
        self.waves.is_empty()
    }
}

/// Why no plan can be made at all (per-app problems are [`Skip`]s instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no topology has been applied yet (run `metrodr topology apply FILE`)")]
    NoTopology,
    #[error("no site \"{0}\" in the topology")]
    UnknownSite(SiteId),
    #[error("site {0} is the witness; it runs no applications (name a production site)")]
    WitnessSite(SiteId),
    #[error("no host \"{0}\" in the cluster")]
    UnknownHost(HostId),
    #[error("no app \"{0}\" in the topology")]
    UnknownApp(AppId),
    #[error("no apps named (give at least one app)")]
    NoApps,
}

/// Apps that an operation still running is moving: never planned twice. A test
/// drill moves nothing (a real failover of an app under test goes ahead; the drill
/// notices and fails), so its apps are not busy: see [`drilled_apps`].
pub fn busy_apps(state: &ClusterState) -> BTreeSet<AppId> {
    state
        .operations
        .values()
        .filter(|o| o.status == OpStatus::Running && o.kind != OpKind::Drill)
        .flat_map(|o| o.apps.iter().cloned())
        .collect()
}

/// Apps a running test drill has a copy of: one drill per app at a time.
pub fn drilled_apps(state: &ClusterState) -> BTreeSet<AppId> {
    state
        .operations
        .values()
        .filter(|o| o.status == OpStatus::Running && o.kind == OpKind::Drill)
        .flat_map(|o| o.apps.iter().cloned())
        .collect()
}

/// VMs of `app` placed on `host` that are not running there (after a fence: what it
/// stopped). A VM reported paused is not among them (a `pause` fence keeps its memory;
/// resuming it is an operator's decision).
pub fn fenced_vms(state: &ClusterState, app: &AppId, host: &HostId) -> Vec<VmId> {
    let Some(rec) = state.apps.get(app) else {
        return Vec::new();
    };
    rec.placement
        .iter()
        .filter(|(_, h)| *h == host)
        .filter(|(vm, _)| {
            !state.vms.get(*vm).is_some_and(|r| {
                &r.host == host && matches!(r.state, VmState::Running | VmState::Paused)
            })
        })
        .map(|(vm, _)| vm.clone())
        .collect()
}

/// VMs a move leaves where they are (placed, not started by it) whose host is up and
/// whose agent reports them stopped there: a fence stopped them after the plan was
/// made. The health gate starts them where they are.
pub fn stopped_in_place(state: &ClusterState, m: &AppMove) -> Vec<(VmId, HostId)> {
    m.placement
        .iter()
        .filter(|(vm, h)| {
            !m.starts.iter().any(|(s, _)| s == vm) && stopped_on_up_host(state, vm, h)
        })
        .cloned()
        .collect()
}

/// `vm` is placed on `host`, which is up, and its agent reports it stopped there (not
/// running, not paused): a fence there stopped it. The planner's host-loss rule and
/// the health gate ([`stopped_in_place`]) restart such VMs where they are.
fn stopped_on_up_host(state: &ClusterState, vm: &VmId, host: &HostId) -> bool {
    state
        .hosts
        .get(host)
        .is_some_and(|r| r.state == HostState::Up)
        && state.vms.get(vm).is_some_and(|r| {
            &r.host == host && !matches!(r.state, VmState::Running | VmState::Paused)
        })
}

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
    let mut busy = busy_apps(state);
    if drill {
        busy.extend(drilled_apps(state));
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
                if !fenced_vms(state, &a.id, host).is_empty() {
                    wanted.push((a.id.clone(), h.site.clone(), false));
                }
            }
            host_fenced = Some(host.clone());
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
        let skip = |reason: String| Skip {
            app: app_id.clone(),
            reason,
        };
        let (Some(app), Some(rec)) = (index.get(&app_id), state.apps.get(&app_id)) else {
            skipped.push(skip(
                "not in the cluster state (apply the topology first)".into(),
            ));
            continue;
        };
        if busy.contains(&app_id) {
            skipped.push(skip(
                "another operation is moving it or drilling it (wait for it or see `metrodr op list`)".into(),
            ));
            continue;
        }
        if let Some(dep) = app.depends_on.iter().find(|d| {
            skipped.iter().any(|s: &Skip| &s.app == *d)
                && state.apps.get(d).is_some_and(|r| r.active_site != to)
        }) {
            skipped.push(skip(format!(
                "it depends on {dep}, which this plan cannot move (see that app's reason)"
            )));
            continue;
        }
        let from = rec.active_site.clone();
        let same_site = from == to;
        if drill && same_site {
            skipped.push(skip(format!(
                "it is active at {to}: a test drill starts its copy at the other site"
            )));
            continue;
        }
        if same_site && host_lost.is_none() && host_fenced.is_none() {
            skipped.push(skip(format!("already active at {to}")));
            continue;
        }
        if let Some(s) = state.sites.get(&to)
            && s.state == SiteState::Down
        {
            skipped.push(skip(format!(
                "site {to} is down (recover it first: `metrodr site recover {to}`)"
            )));
            continue;
        }
        if graceful
            && let Some(s) = state.sites.get(&from)
            && s.state == SiteState::Down
        {
            skipped.push(skip(format!(
                "site {from} is down: a switchover needs the source up (use `metrodr app failover {app_id} --to {to}`)"
            )));
            continue;
        }
        // Every volume of the group must have an up-to-date replica at `to`.
        let mut volumes = Vec::new();
        let mut refused = None;
        if !same_site {
            for v in &app.volumes {
                let Some(vol) = state.volumes.get(&v.id) else {
                    refused = Some(format!("volume {} is not in the cluster state", v.id));
                    break;
                };
                match vol.replica(&to) {
                    None => {
                        refused = Some(format!("volume {} has no replica at {to}", v.id));
                        break;
                    }
                    Some(r) if r.data != DataState::UpToDate => {
                        refused = Some(format!(
                            "the replica of volume {} at {to} is {:?}: only an up-to-date replica may be promoted (let it resync, then retry)",
                            v.id, r.data
                        ));
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
            refused.get_or_insert_with(|| format!(
                "volume {} replicates asynchronously and is served outside the cluster, which cannot drain its lag (serve the volumes by the agents, or use `metrodr app failover`, whose RPO is bounded by the lag)",
                v.id
            ));
        }
        if drill && !agent_served && !app.volumes.is_empty() {
            refused.get_or_insert_with(|| {
                "its volumes are served outside the cluster, which cannot snapshot them for a drill (serve the volumes by the agents: `volumes = \"agents\"`)".to_string()
            });
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
                skipped.push(skip(format!(
                    "its volumes at {to} were served by the lost host {p}: fail it over to the other site (`metrodr app failover {app_id} --to SITE`)"
                )));
                continue;
            }
            if disks && !room.contains_key(p) {
                skipped.push(skip(format!(
                    "host {p}, which holds its replicas at {to}, is not up"
                )));
                continue;
            }
        }
        // What fences stopped, where: each VM restarts on the host it is placed on. An
        // app with VMs on several hosts (a stalled cluster fences them all) restarts
        // every stopped VM in one move: its health gate needs them all. So does a host
        // loss: the app's VMs on its other up hosts that their agents reported stopped
        // (the same stall fenced them before their hosts were seen down) restart where
        // they are, with the lost host's.
        let fenced: BTreeMap<VmId, HostId> = if host_fenced.is_some() {
            let hosts: BTreeSet<&HostId> = rec.placement.values().collect();
            hosts
                .into_iter()
                .flat_map(|h| {
                    fenced_vms(state, &app_id, h)
                        .into_iter()
                        .map(move |vm| (vm, h.clone()))
                })
                .collect()
        } else if let Some(lost) = &host_lost {
            rec.placement
                .iter()
                .filter(|(vm, h)| *h != lost && stopped_on_up_host(state, vm, h))
                .map(|(vm, h)| (vm.clone(), h.clone()))
                .collect()
        } else {
            BTreeMap::new()
        };
        if let Some(h) = fenced.values().find(|h| !room.contains_key(*h)) {
            skipped.push(skip(format!(
                "host {h}, where its fence stopped the VMs, is not up"
            )));
            continue;
        }
        // The fence stopped serving the group too: its VMs boot once it is served again.
        if let Some(h) = pinned.as_ref().filter(|p| fenced.values().any(|h| h == *p))
            && !crate::controller::serves_since_registration(state, &app_id, h)
        {
            skipped.push(skip(format!(
                "host {h} does not serve its volumes again yet (the fence stopped them)"
            )));
            continue;
        }
        // Hosts: VMs that must (re)start, largest first, best fit on Up hosts at `to`.
        let restart: Vec<&topology::Vm> = app
            .vms
            .iter()
            .filter(|vm| match (&host_lost, &host_fenced) {
                (Some(l), _) => rec.placement.get(&vm.id) == Some(l) || fenced.contains_key(&vm.id),
                (None, Some(_)) => fenced.contains_key(&vm.id),
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
                        Some(p) => format!(
                            "host {p}, which holds its replicas at {to}, has no room for VM {} ({} vCPUs, {})",
                            vm.id, vm.vcpus, vm.memory
                        ),
                        None => format!(
                            "no up host at {to} has room for VM {} ({} vCPUs, {}) (add capacity or move lower tiers)",
                            vm.id, vm.vcpus, vm.memory
                        ),
                    });
                    break;
                }
            }
        }
        if let Some(reason) = short {
            skipped.push(skip(reason));
            continue;
        }
        room = trial;
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
        by_stage.entry(stage).or_default().push(AppMove {
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
        });
    }
    Ok(Plan {
        kind: trigger.kind(),
        trigger: trigger.clone(),
        waves: by_stage.into_values().map(|apps| Wave { apps }).collect(),
        skipped,
        drill: drill.then_some(DrillKind::Test),
    })
}

#[cfg(test)]
mod tests;
