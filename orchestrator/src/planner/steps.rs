//! The steps of each app's move, with every parameter decided from the state the plan
//! is made in (pure): the replica hosts at both sites, the peer endpoint the promoted
//! primary streams to, the epoch each volume gets, the data state the old primary
//! gets, the drain's grace, the VM specs and where each probe runs. Also a test
//! drill's closing steps (cleanup, production after) and its interruption cleanup.
//!
//! Never: read anything but the state and the move, or leave a choice to the executor.

use std::collections::BTreeSet;

use topology::spec::{GroupRole, GroupSpec, NetworkSpec, VmSpec};
use topology::{HostId, Probe, VmId};

use crate::plan::{AppMove, PlannedProbe, PlannedStep, SHUTDOWN_TIMEOUT_S, SkipReason};
use crate::records::{DataState, Epoch, Promotion};
use crate::state::ClusterState;

/// How long past its lag bound a graceful move's source primary drains before it
/// stops anyway (and the step then refuses to promote).
pub const DRAIN_MARGIN_S: u32 = 10;

/// Longest probe timeout a plan gives an agent.
const PROBE_TIMEOUT_MAX_S: u32 = 3600;

/// The steps of move `m` of `app` in `state` (a test drill's when `drill`).
pub(super) fn move_steps(
    state: &ClusterState,
    app: &topology::App,
    m: &AppMove,
    drill: bool,
) -> Result<Vec<PlannedStep>, SkipReason> {
    if drill {
        drill_steps(state, app, m)
    } else {
        Ok(failover_steps(state, app, m))
    }
}

fn failover_steps(state: &ClusterState, app: &topology::App, m: &AppMove) -> Vec<PlannedStep> {
    let mut steps = Vec::new();
    if m.needs_approval {
        steps.push(PlannedStep::Approval);
    }
    if !m.stops.is_empty() {
        steps.push(PlannedStep::StopVms {
            site: m.from.clone(),
            graceful: m.graceful,
            vms: m.stops.clone(),
            shutdown_timeout_s: SHUTDOWN_TIMEOUT_S,
        });
    }
    let moves_site = m.from != m.to;
    let source = state.replica_host(app, &m.from).filter(|_| moves_site);
    let target = state.replica_host(app, &m.to).filter(|_| moves_site);
    if let Some(host) = &source {
        // A graceful move drains: the primary waits for its peer to confirm every
        // write (an async group's lag included, up to its bound and then some).
        let grace_s = if m.graceful {
            GroupSpec::from_model(app, &m.from, GroupRole::Primary, Epoch(0))
                .lag_max_s
                .saturating_add(DRAIN_MARGIN_S)
        } else {
            0
        };
        steps.push(PlannedStep::UnserveSource {
            site: m.from.clone(),
            host: host.clone(),
            grace_s,
            confirm: m.graceful,
        });
    }
    let promote: Vec<Promotion> = m
        .volumes
        .iter()
        .filter_map(|v| state.volumes.get(v))
        .filter(|v| v.primary().is_none_or(|p| p.site != m.to))
        .map(|v| Promotion {
            volume: v.id.clone(),
            from: v.epoch,
            to: v.epoch.next(),
        })
        .collect();
    // After a loss the old primary misses what it never received. After a graceful
    // stop it holds every write — but a primary the agents promote acknowledges writes
    // alone until the old one reconnects as its secondary, so that replica is marked
    // outdated at once rather than after the new primary's first report: promoting it
    // in between would lose those writes. The reversed link reports it in sync again.
    let agent_served = !m.volumes.is_empty()
        && m.volumes.iter().all(|v| {
            state
                .volumes
                .get(v)
                .is_some_and(|r| r.replicas.iter().all(|x| x.host.is_some()))
        });
    let demoted = if m.graceful && !agent_served {
        DataState::UpToDate
    } else {
        DataState::Outdated
    };
    // The group's epoch once moved: every volume's (they move together).
    let group_epoch = app
        .volumes
        .iter()
        .filter_map(|v| {
            promote
                .iter()
                .find(|p| p.volume == v.id)
                .map(|p| p.to)
                .or_else(|| state.volumes.get(&v.id).map(|r| r.epoch))
        })
        .max();
    steps.push(PlannedStep::PromoteAndMove {
        to: m.to.clone(),
        promote,
        demoted,
        placement: m.placement.clone(),
    });
    if let (Some(host), Some(epoch)) = (target, group_epoch) {
        // Promote the target's replica and serve it as primary, pointing its link at
        // the source's endpoint for reprotection (None: the source never served).
        let mut group = GroupSpec::from_model(app, &m.to, GroupRole::Primary, epoch);
        group.promote = true;
        group.peer = source.as_ref().and_then(|h| state.endpoint(&m.app, h));
        steps.push(PlannedStep::ServeVolumes { host, group });
    }
    if !m.starts.is_empty() {
        steps.push(PlannedStep::StartVms {
            vms: specs(app, &m.starts),
        });
    }
    steps.push(PlannedStep::HealthGate {
        site: m.to.clone(),
        placement: m.placement.clone(),
        restart: specs(app, &m.placement),
        probes: probes(app, &m.placement, |_| true),
    });
    steps
}

fn drill_steps(
    state: &ClusterState,
    app: &topology::App,
    m: &AppMove,
) -> Result<Vec<PlannedStep>, SkipReason> {
    let mut steps = vec![PlannedStep::Baseline];
    if !app.volumes.is_empty() {
        // The agent serving the app's secondary at the drill site snapshots it.
        let host = state
            .replica_host(app, &m.to)
            .ok_or(SkipReason::DrillServedOutside)?;
        steps.push(PlannedStep::Snapshot { host });
    }
    steps.push(PlannedStep::StartDrillVms {
        site: m.to.clone(),
        copies: specs(app, &m.starts),
    });
    // The copies' isolated network has no route from the host: no agent can reach a
    // copy's port, so a drill names its tcp probes but cannot check them.
    let unchecked = app
        .probes
        .iter()
        .filter_map(|p| match p {
            Probe::Tcp { vm, port, .. } => Some((vm.clone(), *port)),
            Probe::Serial { .. } => None,
        })
        .collect();
    steps.push(PlannedStep::DrillHealthGate {
        site: m.to.clone(),
        copies: u32::try_from(m.starts.len()).unwrap_or(u32::MAX),
        probes: probes(app, &m.starts, |p| matches!(p, Probe::Serial { .. })),
        unchecked,
    });
    steps.push(PlannedStep::ProductionCheck);
    Ok(steps)
}

/// A test drill's closing steps (the cleanup of every host it may touch, then each
/// app's production once the drill is gone) and its interruption cleanup.
pub(super) fn drill_closing(moves: &[&AppMove]) -> (Vec<PlannedStep>, Vec<PlannedStep>) {
    let mut hosts: BTreeSet<HostId> = BTreeSet::new();
    for m in moves {
        hosts.extend(m.starts.iter().map(|(_, h)| h.clone()));
        for s in &m.steps {
            if let PlannedStep::Snapshot { host } = s {
                hosts.insert(host.clone());
            }
        }
    }
    let cleanup = PlannedStep::Cleanup {
        hosts: hosts.into_iter().collect(),
    };
    let mut closing = vec![cleanup.clone()];
    closing.extend(
        moves
            .iter()
            .map(|m| PlannedStep::ProductionAfter { app: m.app.clone() }),
    );
    (closing, vec![cleanup])
}

/// The spec of each of `vms` (of `app`) with its host; VMs the topology lacks are left
/// out (they cannot be planned).
fn specs(app: &topology::App, vms: &[(VmId, HostId)]) -> Vec<(HostId, VmSpec)> {
    vms.iter()
        .filter_map(|(vm, host)| {
            let v = app.vms.iter().find(|v| &v.id == vm)?;
            Some((host.clone(), VmSpec::from_model(app, v, NetworkSpec::None)))
        })
        .collect()
}

/// The app's probes that `keep`, each run by the agent of its VM's host in `placed`
/// (a probe of a VM not placed there is left out), timeouts within 1 s..=1 h.
fn probes(
    app: &topology::App,
    placed: &[(VmId, HostId)],
    keep: impl Fn(&Probe) -> bool,
) -> Vec<PlannedProbe> {
    app.probes
        .iter()
        .filter(|p| keep(p))
        .filter_map(|p| {
            let vm = match p {
                Probe::Serial { vm, .. } | Probe::Tcp { vm, .. } => vm,
            };
            let host = placed.iter().find(|(v, _)| v == vm).map(|(_, h)| h)?;
            let mut probe = p.clone();
            match &mut probe {
                Probe::Serial { timeout_s, .. } | Probe::Tcp { timeout_s, .. } => {
                    *timeout_s = (*timeout_s).clamp(1, PROBE_TIMEOUT_MAX_S);
                }
            }
            Some(PlannedProbe {
                host: host.clone(),
                probe,
            })
        })
        .collect()
}
