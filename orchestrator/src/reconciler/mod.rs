//! The reconciler (level-triggered): on the leader, every executor tick, it compares
//! what should run — every VM of every app, at the app's active site, on the host the
//! cluster placed it — with what the agents report, and asks for a restart of what
//! does not run ([`Trigger::Restore`], planned and executed like every operation, so
//! it is audited with its reason and shows in `op list`).
//!
//! Event-triggered plans (a site lost, a host lost, a host fenced and back) stay; the
//! reconciler catches everything else: a site back within the lease window (never
//! declared lost), a site back after a second loss, a report lost or a record wrong.
//!
//! It restarts a VM only when all of these hold (the planner's rules beside):
//! - its app should run (the operator did not stop it, nor this VM: `held`), and no
//!   operation is moving the app;
//! - the app's active site is up, and the VM's placed host is up (its agent holds a
//!   lease and has registered), and the agent reports the VM not running there — a VM
//!   never reported is left to whoever starts it first (`lab up`, an operator);
//! - no other up host reports it running, and no start of it is pending there;
//! - it has not run for [`grace_ms`] (lease + margin) since it stopped or its host
//!   registered: damping, so a report in flight or a start under way is not raced;
//! - no restore of its app ended within [`RETRY_MS`] (a restore that cannot succeed
//!   is retried at that pace, not every tick).
//!
//! It also says when an app that should run has not run for longer than its RTO target
//! ([`outages`]), and when it runs again: the app's record carries it (`app status`,
//! the `metrodr_apps_outage` metric) and the audit log has both ends (`app.outage`).
//!
//! Pure: the executor calls [`restore`] and [`outages`] with the state and the time; it
//! decides nothing else and does no I/O.

use std::collections::BTreeSet;

use topology::{AppId, HostId, VmId};

use crate::plan::{StoppedVm, Trigger};
use crate::state::{
    AgentAction, AppHealth, ClusterState, CommandStatus, Desired, HostState, OpStatus, SiteState,
};

/// A restore of an app is not begun again within this long after the last one ended.
pub const RETRY_MS: u64 = 30_000;

/// How long a VM must have been stopped (or its host registered) before it is restored.
pub fn grace_ms(s: &ClusterState) -> u64 {
    s.topology().map_or(0, |t| {
        let t = &t.model.timing;
        t.lease_ms + t.lease_margin_ms
    })
}

/// The restore the state calls for at `now_ms`, if any (pure).
pub fn restore(s: &ClusterState, now_ms: u64) -> Option<Trigger> {
    let vms = stopped(s, now_ms);
    (!vms.is_empty()).then_some(Trigger::Restore { vms })
}

/// Every VM the reconciler would restart now, by app then VM.
pub fn stopped(s: &ClusterState, now_ms: u64) -> Vec<StoppedVm> {
    let Some(topo) = s.topology().map(|t| &t.model) else {
        return Vec::new();
    };
    let busy = s.busy_apps();
    let grace = grace_ms(s);
    let mut out = Vec::new();
    for rec in s.apps.values() {
        if rec.desired != Desired::Running || busy.contains(&rec.id) {
            continue;
        }
        if !s
            .sites
            .get(&rec.active_site)
            .is_some_and(|x| x.state == SiteState::Up)
        {
            continue;
        }
        if restored_lately(s, &rec.id, now_ms) {
            continue;
        }
        let Some(app) = topo.app(&rec.id) else {
            continue;
        };
        for vm in &app.vms {
            if rec.held.contains(&vm.id) {
                continue;
            }
            let Some(host) = rec.placement.get(&vm.id) else {
                continue;
            };
            if let Some(since_ms) = stopped_since(s, &vm.id, host)
                && now_ms.saturating_sub(since_ms) >= grace
            {
                out.push(StoppedVm {
                    app: rec.id.clone(),
                    vm: vm.id.clone(),
                    host: host.clone(),
                    state: s.vms.get(&vm.id).map(|r| r.state),
                    since_ms,
                });
            }
        }
    }
    out
}

/// Since when `vm`, placed on `host`, has been reported not running there by an agent
/// that holds a lease; None if it runs (there or on another up host), was never
/// reported, its host is not up, or a start of it is pending there.
fn stopped_since(s: &ClusterState, vm: &VmId, host: &HostId) -> Option<u64> {
    let h = s.hosts.get(host).filter(|h| h.state == HostState::Up)?;
    let registered = h.inventory.as_ref()?.registered_ms;
    let rec = s.vms.get(vm)?;
    if rec.state.is_active() {
        // Here, or on another host that still holds its lease: it runs.
        let there = s.hosts.get(&rec.host).map(|h| h.state);
        if &rec.host == host || there == Some(HostState::Up) {
            return None;
        }
    }
    let pending = s.commands.values().any(|c| {
        &c.host == host
            && c.issued_ms >= registered
            && c.status == CommandStatus::Pending
            && matches!(&c.action, AgentAction::Start { vm: v } if v == vm)
    });
    if pending {
        return None;
    }
    let since = if &rec.host == host { rec.since_ms } else { 0 };
    Some(since.max(registered).max(h.since_ms))
}

/// Whether a restore of `app` ended less than [`RETRY_MS`] ago.
fn restored_lately(s: &ClusterState, app: &AppId, now_ms: u64) -> bool {
    s.operations
        .values()
        .rev()
        .filter(|o| o.status != OpStatus::Running && o.apps.contains(app))
        .find(|o| {
            o.plan
                .as_ref()
                .is_some_and(|p| matches!(p.trigger, Trigger::Restore { .. }))
        })
        .and_then(|o| o.ended_ms)
        .is_some_and(|end| now_ms.saturating_sub(end) < RETRY_MS)
}

/// What the reconciler says about apps that should run and do not (pure): per app
/// whose verdict changes, `Some(since)` — it has not run for longer than its RTO target
/// since then — or `None` — it runs again (or should not run any more).
pub fn outages(s: &ClusterState, now_ms: u64) -> Vec<(AppId, Option<u64>)> {
    let Some(topo) = s.topology().map(|t| &t.model) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for rec in s.apps.values() {
        let Some(app) = topo.app(&rec.id) else {
            continue;
        };
        let health = s.app_status(&rec.id).map(|st| st.health);
        let down = matches!(
            health,
            Some(AppHealth::Down | AppHealth::Degraded | AppHealth::Failed)
        );
        let should_run = rec.desired == Desired::Running;
        match rec.outage_since_ms {
            None if should_run && down => {
                let since = app
                    .vms
                    .iter()
                    .filter_map(|vm| not_running_since(s, &vm.id, rec.placement.get(&vm.id)))
                    .min();
                if let Some(since) = since
                    && now_ms.saturating_sub(since) > u64::from(app.rto_target_s) * 1000
                {
                    out.push((rec.id.clone(), Some(since)));
                }
            }
            Some(_) if !should_run || health == Some(AppHealth::Running) => {
                out.push((rec.id.clone(), None));
            }
            _ => {}
        }
    }
    out
}

/// Since when `vm` (placed on `placed`) has not run there, as far as the reports say;
/// None when it runs there, or was never reported (not started yet).
fn not_running_since(s: &ClusterState, vm: &VmId, placed: Option<&HostId>) -> Option<u64> {
    let rec = s.vms.get(vm)?;
    let host = placed.and_then(|h| s.hosts.get(h));
    if let Some(h) = host
        && h.state != HostState::Up
    {
        return Some(h.last_seen_ms.unwrap_or(h.since_ms).min(rec.since_ms));
    }
    if rec.state.is_active() && Some(&rec.host) == placed {
        return None;
    }
    Some(rec.since_ms)
}

/// The apps a restore names (for logs and tests).
pub fn apps(vms: &[StoppedVm]) -> BTreeSet<&AppId> {
    vms.iter().map(|v| &v.app).collect()
}

#[cfg(test)]
mod tests;
