//! Plans on the wire (`plan.proto`), both ways: the plan, its trigger, waves, app
//! moves and skipped apps, and the pairs of ids the steps carry. The steps themselves
//! are in `step`, the skip reasons in `skip`.
//!
//! Never: decode a bad id or enum into a value (every one is a `WireError`), or panic
//! on what the wire carries.

use proto::agent::wire::{
    port, vm_spec_from_wire, vm_spec_to_wire, vm_state_from_wire, vm_state_to_wire,
};
use topology::spec::VmSpec;
use topology::{AppId, HostId, VmId, VolumeId};

use super::WireError;
use super::audit::{app, host, ids, s, site, strs, vm, volume};
use super::skip::{skip_from_wire, skip_to_wire};
use super::states::{op_kind_from_wire, op_kind_to_wire};
use super::step::{planned_step_from_wire, planned_step_to_wire};
use crate::pb;
use crate::pb::trigger::Kind as T;
use crate::plan::{AppMove, DrillKind, Plan, PlannedStep, StoppedVm, Trigger, Wave};
use crate::records::{Epoch, Promotion};

both_ways!(
    drill_kind_to_wire,
    drill_kind_from_wire,
    "the drill kind",
    DrillKind,
    DrillKind,
    [Test, Switchover, SiteLoss]
);

pub(super) fn missing(what: &'static str) -> WireError {
    WireError::Missing { what }
}

pub(super) fn vm_hosts_to_wire(v: &[(VmId, HostId)]) -> Vec<pb::VmHost> {
    v.iter()
        .map(|(v, h)| pb::VmHost {
            vm: s(v),
            host: s(h),
        })
        .collect()
}

pub(super) fn vm_hosts_from_wire(v: Vec<pb::VmHost>) -> Result<Vec<(VmId, HostId)>, WireError> {
    v.into_iter()
        .map(|p| Ok((vm(p.vm)?, host(p.host)?)))
        .collect()
}

pub(super) fn host_vms_to_wire(v: &[(HostId, VmSpec)]) -> Vec<pb::HostVm> {
    v.iter()
        .map(|(h, spec)| pb::HostVm {
            host: s(h),
            spec: Some(vm_spec_to_wire(spec)),
        })
        .collect()
}

pub(super) fn host_vms_from_wire(v: Vec<pb::HostVm>) -> Result<Vec<(HostId, VmSpec)>, WireError> {
    v.into_iter()
        .map(|p| {
            let spec = p
                .spec
                .ok_or_else(|| missing("the VM spec of a host's VM"))?;
            Ok((host(p.host)?, vm_spec_from_wire(spec)?))
        })
        .collect()
}

pub(super) fn vm_ports_to_wire(v: &[(VmId, u16)]) -> Vec<pb::VmPort> {
    v.iter()
        .map(|(v, port)| pb::VmPort {
            vm: s(v),
            port: u32::from(*port),
        })
        .collect()
}

pub(super) fn vm_ports_from_wire(v: Vec<pb::VmPort>) -> Result<Vec<(VmId, u16)>, WireError> {
    v.into_iter()
        .map(|p| Ok((vm(p.vm)?, port("a VM's port", p.port)?)))
        .collect()
}

pub(super) fn promotions_to_wire(v: &[Promotion]) -> Vec<pb::Promotion> {
    v.iter()
        .map(|p| pb::Promotion {
            volume: s(&p.volume),
            from: p.from.0,
            to: p.to.0,
        })
        .collect()
}

pub(super) fn promotions_from_wire(v: Vec<pb::Promotion>) -> Result<Vec<Promotion>, WireError> {
    v.into_iter()
        .map(|p| {
            Ok(Promotion {
                volume: volume(p.volume)?,
                from: Epoch(p.from),
                to: Epoch(p.to),
            })
        })
        .collect()
}

fn apps(v: Vec<String>) -> Result<Vec<AppId>, WireError> {
    ids("app", v, AppId::new)
}

fn steps_to_wire(v: &[PlannedStep]) -> Vec<pb::PlannedStep> {
    v.iter().map(planned_step_to_wire).collect()
}

fn steps_from_wire(v: Vec<pb::PlannedStep>) -> Result<Vec<PlannedStep>, WireError> {
    v.into_iter().map(planned_step_from_wire).collect()
}

pub fn trigger_to_wire(t: &Trigger) -> pb::Trigger {
    let kind = match t {
        Trigger::SiteLost { site } => T::SiteLost(pb::TriggerSite { site: s(site) }),
        Trigger::HostLost { host } => T::HostLost(pb::TriggerHost { host: s(host) }),
        Trigger::HostFenced { host } => T::HostFenced(pb::TriggerHost { host: s(host) }),
        Trigger::Failover { apps, to } => T::Failover(pb::TriggerMove {
            apps: strs(apps),
            to: s(to),
        }),
        Trigger::Switchover { apps, to } => T::Switchover(pb::TriggerMove {
            apps: strs(apps),
            to: s(to),
        }),
        Trigger::Failback { apps } => T::Failback(pb::TriggerApps { apps: strs(apps) }),
        Trigger::Restore { vms } => T::Restore(pb::TriggerRestore {
            vms: vms
                .iter()
                .map(|v| pb::StoppedVm {
                    app: s(&v.app),
                    vm: s(&v.vm),
                    host: s(&v.host),
                    state: v.state.map(|st| vm_state_to_wire(st).into()),
                    since_ms: v.since_ms,
                })
                .collect(),
        }),
        Trigger::TestDrill { apps, to } => T::TestDrill(pb::TriggerDrill {
            apps: strs(apps),
            to: to.as_ref().map(s),
        }),
    };
    pb::Trigger { kind: Some(kind) }
}

pub fn trigger_from_wire(t: pb::Trigger) -> Result<Trigger, WireError> {
    Ok(match t.kind.ok_or_else(|| missing("the plan's trigger"))? {
        T::SiteLost(t) => Trigger::SiteLost {
            site: site(t.site)?,
        },
        T::HostLost(t) => Trigger::HostLost {
            host: host(t.host)?,
        },
        T::HostFenced(t) => Trigger::HostFenced {
            host: host(t.host)?,
        },
        T::Failover(t) => Trigger::Failover {
            apps: apps(t.apps)?,
            to: site(t.to)?,
        },
        T::Switchover(t) => Trigger::Switchover {
            apps: apps(t.apps)?,
            to: site(t.to)?,
        },
        T::Failback(t) => Trigger::Failback {
            apps: apps(t.apps)?,
        },
        T::Restore(t) => Trigger::Restore {
            vms: t
                .vms
                .into_iter()
                .map(|v| {
                    Ok(StoppedVm {
                        app: app(v.app)?,
                        vm: vm(v.vm)?,
                        host: host(v.host)?,
                        state: v.state.map(vm_state_from_wire).transpose()?,
                        since_ms: v.since_ms,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        },
        T::TestDrill(t) => Trigger::TestDrill {
            apps: apps(t.apps)?,
            to: t.to.map(site).transpose()?,
        },
    })
}

fn app_move_to_wire(m: &AppMove) -> pb::AppMove {
    pb::AppMove {
        app: s(&m.app),
        tier: m.tier,
        from: s(&m.from),
        to: s(&m.to),
        needs_approval: m.needs_approval,
        graceful: m.graceful,
        volumes: strs(&m.volumes),
        placement: vm_hosts_to_wire(&m.placement),
        starts: vm_hosts_to_wire(&m.starts),
        stops: vm_hosts_to_wire(&m.stops),
        rto_target_s: m.rto_target_s,
        health_timeout_ms: m.health_timeout_ms,
        steps: steps_to_wire(&m.steps),
    }
}

fn app_move_from_wire(m: pb::AppMove) -> Result<AppMove, WireError> {
    Ok(AppMove {
        app: app(m.app)?,
        tier: m.tier,
        from: site(m.from)?,
        to: site(m.to)?,
        needs_approval: m.needs_approval,
        graceful: m.graceful,
        volumes: ids("volume", m.volumes, VolumeId::new)?,
        placement: vm_hosts_from_wire(m.placement)?,
        starts: vm_hosts_from_wire(m.starts)?,
        stops: vm_hosts_from_wire(m.stops)?,
        rto_target_s: m.rto_target_s,
        health_timeout_ms: m.health_timeout_ms,
        steps: steps_from_wire(m.steps)?,
    })
}

pub fn plan_to_wire(p: &Plan) -> pb::Plan {
    pb::Plan {
        kind: op_kind_to_wire(p.kind).into(),
        trigger: Some(trigger_to_wire(&p.trigger)),
        waves: p
            .waves
            .iter()
            .map(|w| pb::Wave {
                apps: w.apps.iter().map(app_move_to_wire).collect(),
            })
            .collect(),
        skipped: p.skipped.iter().map(skip_to_wire).collect(),
        drill: p.drill.map(|d| drill_kind_to_wire(d).into()),
        closing: steps_to_wire(&p.closing),
        interrupted: steps_to_wire(&p.interrupted),
    }
}

pub fn plan_from_wire(p: pb::Plan) -> Result<Plan, WireError> {
    Ok(Plan {
        kind: op_kind_from_wire(p.kind)?,
        trigger: trigger_from_wire(p.trigger.ok_or_else(|| missing("the plan's trigger"))?)?,
        waves: p
            .waves
            .into_iter()
            .map(|w| {
                Ok(Wave {
                    apps: w
                        .apps
                        .into_iter()
                        .map(app_move_from_wire)
                        .collect::<Result<_, WireError>>()?,
                })
            })
            .collect::<Result<_, WireError>>()?,
        skipped: p
            .skipped
            .into_iter()
            .map(skip_from_wire)
            .collect::<Result<_, WireError>>()?,
        drill: p.drill.map(drill_kind_from_wire).transpose()?,
        closing: steps_from_wire(p.closing)?,
        interrupted: steps_from_wire(p.interrupted)?,
    })
}
