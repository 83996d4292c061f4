//! Questions about the state that more than one decision asks (which apps an
//! operation owns, which VMs a fence stopped, which group a host serves and at which
//! endpoint, production as a drill samples it): pure reads, used by the planner, the
//! executor, the controller and apply.

use topology::{AppId, HostId, SiteId, VmId};

use super::{
    AgentAction, AgentCommandRecord, ClusterState, CommandOutcome, CommandStatus, Epoch, HostState,
    Issuer, OpId, OpKind, OpStatus, Production, ReplicaSample, VmSample, VmState,
};
use std::collections::BTreeSet;
use topology::spec::VmSpec;

impl ClusterState {
    /// Apps that an operation still running is moving: never planned twice. A test
    /// drill moves nothing (a real failover of an app under test goes ahead; the drill
    /// notices and fails), so its apps are not busy: see [`Self::drilled_apps`].
    pub fn busy_apps(&self) -> BTreeSet<AppId> {
        self.operations
            .values()
            .filter(|o| o.status == OpStatus::Running && o.kind != OpKind::Drill)
            .flat_map(|o| o.apps.iter().cloned())
            .collect()
    }

    /// Apps a running test drill has a copy of: one drill per app at a time.
    pub fn drilled_apps(&self) -> BTreeSet<AppId> {
        self.operations
            .values()
            .filter(|o| o.status == OpStatus::Running && o.kind == OpKind::Drill)
            .flat_map(|o| o.apps.iter().cloned())
            .collect()
    }

    /// VMs of `app` placed on `host` that are not running there (after a fence: what it
    /// stopped). A VM reported paused is not among them (a `pause` fence keeps its memory;
    /// resuming it is an operator's decision).
    pub fn fenced_vms(&self, app: &AppId, host: &HostId) -> Vec<VmId> {
        let Some(rec) = self.apps.get(app) else {
            return Vec::new();
        };
        rec.placement
            .iter()
            .filter(|(_, h)| *h == host)
            .filter(|(vm, _)| {
                !self.vms.get(*vm).is_some_and(|r| {
                    &r.host == host && matches!(r.state, VmState::Running | VmState::Paused)
                })
            })
            .map(|(vm, _)| vm.clone())
            .collect()
    }

    /// Of a health gate's `restart` (every VM the move places, with its spec), those
    /// whose host is up and whose agent reports them stopped there: a fence stopped them
    /// after the plan was made (or after the move started them).
    pub fn stopped_in_place<'r>(
        &self,
        restart: &'r [(HostId, VmSpec)],
    ) -> Vec<&'r (HostId, VmSpec)> {
        restart
            .iter()
            .filter(|(h, spec)| {
                self.stopped_on_up_host(&spec.vm, h) || self.last_seen_on_a_lost_host(&spec.vm, h)
            })
            .collect()
    }

    /// `vm` is placed on `host`, which is up, and was last reported on another host that
    /// is not up (its start on `host` was never reported: `host` died and came back
    /// before its report landed, on an empty hypervisor). It runs nowhere the cluster
    /// can see; the host that last ran it fenced itself.
    fn last_seen_on_a_lost_host(&self, vm: &VmId, host: &HostId) -> bool {
        let up = |h: &HostId| self.hosts.get(h).is_some_and(|r| r.state == HostState::Up);
        up(host)
            && self
                .vms
                .get(vm)
                .is_some_and(|r| &r.host != host && !up(&r.host))
    }

    /// What operation `op`'s health gate owes of its `restart`: the VMs stopped in place
    /// ([`Self::stopped_in_place`]) that `op` has not started there since that host's
    /// agent last registered. A start issued before it (by the move, or by the gate
    /// before) was undone by the fence that made the agent register again; a start
    /// issued after it is still under way. So each fence costs one start, whichever
    /// leader runs the gate.
    pub fn owed_restarts<'r>(
        &self,
        op: OpId,
        restart: &'r [(HostId, VmSpec)],
    ) -> Vec<&'r (HostId, VmSpec)> {
        self.stopped_in_place(restart)
            .into_iter()
            .filter(|(h, spec)| !self.started_since_registration(op, &spec.vm, h))
            .collect()
    }

    /// Whether operation `op` issued a start of `vm` on `host` since that host's agent
    /// last registered.
    fn started_since_registration(&self, op: OpId, vm: &VmId, host: &HostId) -> bool {
        let since = self.registered_ms(host).unwrap_or(0);
        let by = Issuer::Operation { op };
        self.commands.values().any(|c| {
            c.issuer == by
                && &c.host == host
                && c.issued_ms >= since
                && matches!(&c.action, AgentAction::Start { vm: v } if v == vm)
        })
    }

    /// When `host`'s agent last registered (None: it never did).
    pub fn registered_ms(&self, host: &HostId) -> Option<u64> {
        self.hosts
            .get(host)
            .and_then(|h| h.inventory.as_ref())
            .map(|i| i.registered_ms)
    }

    /// `vm` is placed on `host`, which is up, and its agent reports it stopped there (not
    /// running, not paused): a fence there stopped it. The planner's host-loss rule and
    /// the health gate ([`Self::stopped_in_place`]) restart such VMs where they are.
    pub fn stopped_on_up_host(&self, vm: &VmId, host: &HostId) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|r| r.state == HostState::Up)
            && self.vms.get(vm).is_some_and(|r| {
                &r.host == host && !matches!(r.state, VmState::Running | VmState::Paused)
            })
    }

    /// Whether the agent on `host` serves `app`'s group again since it last registered:
    /// the latest group command there is a serve, issued after the registration, that
    /// succeeded. (A fenced agent stopped serving; its VMs may restart only after this.)
    pub fn serves_since_registration(&self, app: &AppId, host: &HostId) -> bool {
        // Never registered: nothing is served.
        let since = self.registered_ms(host).unwrap_or(u64::MAX);
        let latest = self.commands.values().rev().find(|c| {
            &c.host == host
                && match &c.action {
                    AgentAction::Serve { group } => &group.app == app,
                    AgentAction::Unserve { app: a, .. } => a == app,
                    _ => false,
                }
        });
        latest.is_some_and(|c| {
            matches!(c.action, AgentAction::Serve { .. })
                && c.issued_ms >= since
                && matches!(c.status, CommandStatus::Succeeded { .. })
        })
    }

    /// The replication endpoint the agent on `host` reported for `app`'s group: from the
    /// latest successful serve command there (whenever it ran).
    pub fn endpoint(&self, app: &AppId, host: &HostId) -> Option<String> {
        self.commands
            .values()
            .rev()
            .filter(|c| &c.host == host)
            .find_map(|c| served_endpoint(c, app))
    }

    /// The group's epoch: the highest of its volumes' (they move together).
    pub fn group_epoch(&self, app: &topology::App) -> Option<Epoch> {
        app.volumes
            .iter()
            .filter_map(|v| self.volumes.get(&v.id))
            .map(|v| v.epoch)
            .max()
    }

    /// Production of `app` as a test drill samples it: its active site, every VM an
    /// agent reported (host, state, since when) and every replica's data state. None:
    /// the app is not in the state.
    pub fn production(&self, app: &AppId) -> Option<Production> {
        let rec = self.apps.get(app)?;
        let vms = self
            .vms
            .values()
            .filter(|v| &v.app == app)
            .map(|v| VmSample {
                vm: v.vm.clone(),
                host: v.host.clone(),
                state: v.state,
                since_ms: v.since_ms,
            })
            .collect();
        let replicas = self
            .volumes
            .values()
            .filter(|v| &v.app == app)
            .flat_map(|v| {
                v.replicas.iter().map(move |r| ReplicaSample {
                    volume: v.id.clone(),
                    site: r.site.clone(),
                    data: r.data,
                })
            })
            .collect();
        Some(Production {
            active_site: rec.active_site.clone(),
            vms,
            replicas,
        })
    }

    /// The host serving `app`'s replicas at `site`, if the agents serve them.
    pub fn replica_host(&self, app: &topology::App, site: &SiteId) -> Option<HostId> {
        app.volumes
            .first()
            .and_then(|v| self.volumes.get(&v.id))
            .and_then(|v| v.replica(site))
            .and_then(|r| r.host.clone())
    }
}

/// The endpoint a successful serve of `app`'s group reported (its typed outcome).
pub fn served_endpoint(c: &AgentCommandRecord, app: &AppId) -> Option<String> {
    match (&c.action, c.status.outcome()) {
        (AgentAction::Serve { group }, Some(CommandOutcome::Served(s))) if &group.app == app => {
            Some(s.endpoint.clone())
        }
        _ => None,
    }
}
