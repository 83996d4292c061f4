//! What an app is now — from what its VMs, its replicas and the operations say, not from
//! what the last operation wrote down (an app whose VMs an operator started runs; an app
//! whose host died is down). Pure: the table, the JSON and every later consumer read the
//! same value.
//!
//! ```text
//!   an operation is moving it now ─────────────────────► Moving
//!   every VM runs where placed ────────────────────────► Running
//!   some VMs run ──────────────────────────────────────► Degraded
//!   none run ── the operator stopped it ───────────────► Stopped
//!            ├─ the last operation moving it failed ───► Failed
//!            └─ otherwise ──────────────────────────────► Down
//! ```
//!
//! Its protection is reported beside: a replica at the other site that is not up to
//! date is a reason shown with any state (after a site loss the apps run at the
//! survivor, unprotected until the lost site's replicas resync).

use std::fmt;

use serde::{Deserialize, Serialize};
use topology::{AppId, HostId, SiteId, VmId, VolumeId};

use super::{
    AppState, ClusterState, DataState, Desired, HostState, OpId, OpKind, OpStatus, Role, VmState,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppHealth {
    /// Every VM runs where it is placed.
    Running,
    /// It serves, but not fully: some of its VMs do not run where they are placed.
    Degraded,
    /// None of its VMs runs, and nobody stopped it on purpose.
    Down,
    /// An operation is moving it (failover, switchover, failback).
    Moving,
    /// The operator wants it stopped and none of its VMs runs.
    Stopped,
    /// None of its VMs runs and the last operation that moved it failed.
    Failed,
}

impl fmt::Display for AppHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AppHealth::Running => "running",
            AppHealth::Degraded => "degraded",
            AppHealth::Down => "down",
            AppHealth::Moving => "moving",
            AppHealth::Stopped => "stopped",
            AppHealth::Failed => "failed",
        })
    }
}

/// How a VM that does not run where it is placed was last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "seen", rename_all = "kebab-case")]
pub enum VmSeen {
    /// No agent has reported it.
    NotReported,
    /// Its host is down: nothing the host said holds any more.
    HostDown { host: HostId },
    /// Its host's agent reports it in this state.
    State { state: VmState },
    /// Another host reports it running (not where the cluster placed it).
    Elsewhere { host: HostId },
}

/// Why an app is not simply running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum AppReason {
    Moving {
        op: OpId,
        kind: OpKind,
    },
    VmNotRunning {
        vm: VmId,
        /// Where it is placed (None: nowhere yet).
        host: Option<HostId>,
        seen: VmSeen,
    },
    ReplicaBehind {
        volume: VolumeId,
        site: SiteId,
        data: DataState,
    },
    StoppedByOperator,
    LastOperationFailed {
        op: Option<OpId>,
    },
    /// It should run and has not since `since_ms`, for longer than its RTO target (the
    /// reconciler's verdict, recorded until it runs again).
    Outage {
        since_ms: u64,
        rto_target_s: u32,
    },
}

impl fmt::Display for AppReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppReason::Moving { op, kind } => write!(f, "{op} ({kind:?}) is moving it"),
            AppReason::VmNotRunning { vm, host, seen } => {
                match host {
                    Some(h) => write!(f, "VM {vm} does not run on {h}")?,
                    None => write!(f, "VM {vm} is placed nowhere")?,
                }
                match seen {
                    VmSeen::NotReported => write!(f, " (never reported)"),
                    VmSeen::HostDown { host } => write!(f, " (host {host} is down)"),
                    VmSeen::State { state } => write!(f, " ({state})"),
                    VmSeen::Elsewhere { host } => write!(f, " (it runs on {host})"),
                }
            }
            AppReason::ReplicaBehind { volume, site, data } => {
                write!(f, "the replica of {volume} at {site} is {data:?}")
            }
            AppReason::StoppedByOperator => write!(f, "stopped by the operator"),
            AppReason::LastOperationFailed { op: Some(op) } => write!(f, "{op} failed"),
            AppReason::LastOperationFailed { op: None } => {
                write!(f, "the last operation moving it failed")
            }
            AppReason::Outage {
                since_ms,
                rto_target_s,
            } => write!(
                f,
                "should run and has not since {since_ms} ms after the epoch (longer than its RTO target of {rto_target_s} s)"
            ),
        }
    }
}

/// An app's health and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    pub health: AppHealth,
    /// Why it is not simply running, and what reduces its protection (a replica
    /// behind); empty when it runs fully protected.
    pub reasons: Vec<AppReason>,
}

impl AppStatus {
    /// The reasons, for people (one line).
    pub fn summary(&self) -> String {
        self.reasons
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl ClusterState {
    /// What `app` is now; None when the cluster does not know it.
    pub fn app_status(&self, app: &AppId) -> Option<AppStatus> {
        let rec = self.apps.get(app)?;
        let model = self.topology().and_then(|t| t.model.app(app));
        // Moving only between the operation's move starting for this app and ending:
        // an app the operation already brought up (or has not reached, e.g. one waiting
        // for approval) is what its VMs say.
        let in_move = matches!(rec.state, AppState::FailingOver | AppState::Migrating);
        if let Some(o) = self.operations.values().rev().find(|o| {
            in_move
                && o.status == OpStatus::Running
                && o.kind != OpKind::Drill
                && o.apps.contains(app)
        }) {
            return Some(AppStatus {
                health: AppHealth::Moving,
                reasons: vec![AppReason::Moving {
                    op: o.id,
                    kind: o.kind,
                }],
            });
        }
        let vms: Vec<&VmId> = model.map_or_else(
            || rec.placement.keys().collect(),
            |m| m.vms.iter().map(|v| &v.id).collect(),
        );
        let mut not_running = Vec::new();
        for vm in &vms {
            let placed = rec.placement.get(*vm);
            let seen = self.vm_seen(vm, placed);
            if let Some(seen) = seen {
                not_running.push(AppReason::VmNotRunning {
                    vm: (*vm).clone(),
                    host: placed.cloned(),
                    seen,
                });
            }
        }
        let running = vms.len() - not_running.len();
        let (health, mut reasons) = if not_running.is_empty() {
            (AppHealth::Running, Vec::new())
        } else if running > 0 {
            (AppHealth::Degraded, not_running)
        } else if rec.desired == Desired::Stopped {
            (AppHealth::Stopped, vec![AppReason::StoppedByOperator])
        } else if rec.state == AppState::Failed {
            let op = self
                .operations
                .values()
                .rev()
                .find(|o| o.status == OpStatus::Failed && o.apps.contains(app))
                .map(|o| o.id);
            let mut r = vec![AppReason::LastOperationFailed { op }];
            r.extend(not_running);
            (AppHealth::Failed, r)
        } else {
            (AppHealth::Down, not_running)
        };
        if health != AppHealth::Stopped {
            reasons.extend(self.replicas_behind_of(model));
        }
        if let Some(since_ms) = rec.outage_since_ms {
            reasons.insert(
                0,
                AppReason::Outage {
                    since_ms,
                    rto_target_s: model.map_or(0, |m| m.rto_target_s),
                },
            );
        }
        Some(AppStatus { health, reasons })
    }

    /// How `vm` was last seen, when it does not run where it is placed (None: it does).
    fn vm_seen(&self, vm: &VmId, placed: Option<&HostId>) -> Option<VmSeen> {
        let Some(r) = self.vms.get(vm) else {
            return Some(VmSeen::NotReported);
        };
        let host_up = self
            .hosts
            .get(&r.host)
            .is_some_and(|h| h.state == HostState::Up);
        if !host_up {
            return Some(VmSeen::HostDown {
                host: r.host.clone(),
            });
        }
        if Some(&r.host) != placed {
            return Some(match r.state {
                VmState::Running => VmSeen::Elsewhere {
                    host: r.host.clone(),
                },
                state => VmSeen::State { state },
            });
        }
        (r.state != VmState::Running).then_some(VmSeen::State { state: r.state })
    }

    /// The app's secondary replicas that are not up to date.
    fn replicas_behind_of(&self, model: Option<&topology::App>) -> Vec<AppReason> {
        let Some(model) = model else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for v in &model.volumes {
            let Some(vol) = self.volumes.get(&v.id) else {
                continue;
            };
            for r in vol
                .replicas
                .iter()
                .filter(|r| r.role == Role::Secondary && r.data != DataState::UpToDate)
            {
                out.push(AppReason::ReplicaBehind {
                    volume: v.id.clone(),
                    site: r.site.clone(),
                    data: r.data,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
