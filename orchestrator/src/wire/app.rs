//! An app's health and its reasons on the wire, both ways.

use proto::agent::wire::{vm_state_from_wire, vm_state_to_wire};
use topology::{HostId, SiteId, VmId, VolumeId};

use super::states::{data_state_from_wire, data_state_to_wire, op_kind_from_wire, op_kind_to_wire};
use super::{WireError, checked};
use crate::pb;
use crate::pb::app_reason::Reason as R;
use crate::pb::vm_not_running::Seen as S;
use crate::state::{AppHealth, AppReason, AppStatus, OpId, VmSeen};

pub fn app_health_to_wire(h: AppHealth) -> pb::AppHealth {
    match h {
        AppHealth::Running => pb::AppHealth::Running,
        AppHealth::Degraded => pb::AppHealth::Degraded,
        AppHealth::Down => pb::AppHealth::Down,
        AppHealth::Moving => pb::AppHealth::Moving,
        AppHealth::Stopped => pb::AppHealth::Stopped,
        AppHealth::Failed => pb::AppHealth::Failed,
    }
}

pub fn app_health_from_wire(v: i32) -> Result<AppHealth, WireError> {
    let bad = WireError::UnknownEnum {
        what: "the app's health",
        value: v,
    };
    Ok(match pb::AppHealth::try_from(v).map_err(|_| bad.clone())? {
        pb::AppHealth::Unspecified => return Err(bad),
        pb::AppHealth::Running => AppHealth::Running,
        pb::AppHealth::Degraded => AppHealth::Degraded,
        pb::AppHealth::Down => AppHealth::Down,
        pb::AppHealth::Moving => AppHealth::Moving,
        pb::AppHealth::Stopped => AppHealth::Stopped,
        pb::AppHealth::Failed => AppHealth::Failed,
    })
}

pub fn app_reason_to_wire(r: &AppReason) -> pb::AppReason {
    let reason = match r {
        AppReason::Moving { op, kind } => R::Moving(pb::Moving {
            op: op.0,
            kind: op_kind_to_wire(*kind).into(),
        }),
        AppReason::VmNotRunning { vm, host, seen } => R::VmNotRunning(pb::VmNotRunning {
            vm: vm.to_string(),
            host: host.as_ref().map(ToString::to_string),
            seen: Some(match seen {
                VmSeen::NotReported => S::NotReported(pb::NotReported {}),
                VmSeen::HostDown { host } => S::HostDown(host.to_string()),
                VmSeen::State { state } => S::State(pb::DomainStateSeen {
                    state: vm_state_to_wire(*state).into(),
                }),
                VmSeen::Elsewhere { host } => S::Elsewhere(host.to_string()),
            }),
        }),
        AppReason::ReplicaBehind { volume, site, data } => R::ReplicaBehind(pb::ReplicaBehind {
            volume: volume.to_string(),
            site: site.to_string(),
            data: data_state_to_wire(*data).into(),
        }),
        AppReason::StoppedByOperator => R::StoppedByOperator(pb::StoppedByOperator {}),
        AppReason::LastOperationFailed { op } => R::LastOperationFailed(pb::LastOperationFailed {
            op: op.map(|o| o.0),
        }),
        AppReason::Outage {
            since_ms,
            rto_target_s,
        } => R::Outage(pb::Outage {
            since_ms: *since_ms,
            rto_target_s: *rto_target_s,
        }),
    };
    pb::AppReason {
        reason: Some(reason),
    }
}

pub fn app_reason_from_wire(r: pb::AppReason) -> Result<AppReason, WireError> {
    let missing = |what| WireError::Missing { what };
    Ok(match r.reason.ok_or_else(|| missing("the app's reason"))? {
        R::Moving(m) => AppReason::Moving {
            op: OpId(m.op),
            kind: op_kind_from_wire(m.kind)?,
        },
        R::VmNotRunning(v) => AppReason::VmNotRunning {
            vm: checked("vm", v.vm, VmId::new)?,
            host: v
                .host
                .map(|h| checked("host", h, HostId::new))
                .transpose()?,
            seen: match v.seen.ok_or_else(|| missing("how the VM was seen"))? {
                S::NotReported(_) => VmSeen::NotReported,
                S::HostDown(h) => VmSeen::HostDown {
                    host: checked("host", h, HostId::new)?,
                },
                S::State(d) => VmSeen::State {
                    state: vm_state_from_wire(d.state)?,
                },
                S::Elsewhere(h) => VmSeen::Elsewhere {
                    host: checked("host", h, HostId::new)?,
                },
            },
        },
        R::ReplicaBehind(b) => AppReason::ReplicaBehind {
            volume: checked("volume", b.volume, VolumeId::new)?,
            site: checked("site", b.site, SiteId::new)?,
            data: data_state_from_wire(b.data)?,
        },
        R::StoppedByOperator(_) => AppReason::StoppedByOperator,
        R::LastOperationFailed(f) => AppReason::LastOperationFailed { op: f.op.map(OpId) },
        R::Outage(o) => AppReason::Outage {
            since_ms: o.since_ms,
            rto_target_s: o.rto_target_s,
        },
    })
}

/// An app's status as its `AppStatus` message carries it.
pub fn app_status_from_wire(a: &pb::AppStatus) -> Result<AppStatus, WireError> {
    Ok(AppStatus {
        health: app_health_from_wire(a.health)?,
        reasons: a
            .reasons
            .iter()
            .cloned()
            .map(app_reason_from_wire)
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::state::{DataState, OpKind, VmState};

    #[test]
    fn every_reason_and_health_crosses_the_wire_unchanged() {
        let reasons = vec![
            AppReason::Moving {
                op: OpId(3),
                kind: OpKind::Failback,
            },
            AppReason::VmNotRunning {
                vm: VmId::new("db-1"),
                host: Some(HostId::new("north-h1")),
                seen: VmSeen::NotReported,
            },
            AppReason::VmNotRunning {
                vm: VmId::new("db-1"),
                host: None,
                seen: VmSeen::HostDown {
                    host: HostId::new("north-h1"),
                },
            },
            AppReason::VmNotRunning {
                vm: VmId::new("db-1"),
                host: Some(HostId::new("north-h1")),
                seen: VmSeen::State {
                    state: VmState::Crashed,
                },
            },
            AppReason::VmNotRunning {
                vm: VmId::new("db-1"),
                host: Some(HostId::new("north-h1")),
                seen: VmSeen::Elsewhere {
                    host: HostId::new("north-h2"),
                },
            },
            AppReason::ReplicaBehind {
                volume: VolumeId::new("db-data"),
                site: SiteId::new("south"),
                data: DataState::Outdated,
            },
            AppReason::StoppedByOperator,
            AppReason::LastOperationFailed { op: Some(OpId(9)) },
            AppReason::LastOperationFailed { op: None },
        ];
        for r in reasons {
            assert_eq!(app_reason_from_wire(app_reason_to_wire(&r)).unwrap(), r);
        }
        for h in [
            AppHealth::Running,
            AppHealth::Degraded,
            AppHealth::Down,
            AppHealth::Moving,
            AppHealth::Stopped,
            AppHealth::Failed,
        ] {
            assert_eq!(
                app_health_from_wire(app_health_to_wire(h).into()).unwrap(),
                h
            );
        }
        assert!(app_health_from_wire(0).is_err());
    }
}
