//! A plan's steps on the wire (`PlannedStep`, `PlannedProbe`), both ways: every
//! parameter the planner decided, the VM and group specs in `spec.proto`'s messages
//! (converted by `proto::agent::wire`), the probes in `agent.proto`'s.
//!
//! Never: decode a bad id or enum into a value, or panic on what the wire carries.

use proto::agent::wire::{group_from_wire, group_to_wire, port};
use topology::{HostId, Probe};

use super::WireError;
use super::audit::{app, host, ids, s, site, strs, vm};
use super::plan::{
    host_vms_from_wire, host_vms_to_wire, missing, promotions_from_wire, promotions_to_wire,
    vm_hosts_from_wire, vm_hosts_to_wire, vm_ports_from_wire, vm_ports_to_wire,
};
use super::states::{data_state_from_wire, data_state_to_wire};
use crate::pb;
use crate::pb::planned_probe::Probe as P;
use crate::pb::planned_step::Step as S;
use crate::plan::{PlannedProbe, PlannedStep};

fn probes_to_wire(v: &[PlannedProbe]) -> Vec<pb::PlannedProbe> {
    v.iter().map(planned_probe_to_wire).collect()
}

fn probes_from_wire(v: Vec<pb::PlannedProbe>) -> Result<Vec<PlannedProbe>, WireError> {
    v.into_iter().map(planned_probe_from_wire).collect()
}

pub fn planned_probe_to_wire(p: &PlannedProbe) -> pb::PlannedProbe {
    let probe = match &p.probe {
        Probe::Serial {
            vm,
            marker,
            timeout_s,
        } => P::Serial(pb::SerialProbe {
            vm: s(vm),
            marker: marker.clone(),
            timeout_s: *timeout_s,
        }),
        Probe::Tcp {
            vm,
            port,
            timeout_s,
            address,
        } => P::Tcp(pb::TcpProbe {
            vm: s(vm),
            port: u32::from(*port),
            address: address.clone(),
            timeout_s: *timeout_s,
        }),
    };
    pb::PlannedProbe {
        host: s(&p.host),
        probe: Some(probe),
    }
}

pub fn planned_probe_from_wire(p: pb::PlannedProbe) -> Result<PlannedProbe, WireError> {
    let probe = match p.probe.ok_or_else(|| missing("a planned probe's probe"))? {
        P::Serial(x) => Probe::Serial {
            vm: vm(x.vm)?,
            marker: x.marker,
            timeout_s: x.timeout_s,
        },
        P::Tcp(x) => Probe::Tcp {
            vm: vm(x.vm)?,
            port: port("the tcp probe's port", x.port)?,
            timeout_s: x.timeout_s,
            address: x.address,
        },
    };
    Ok(PlannedProbe {
        host: host(p.host)?,
        probe,
    })
}

pub fn planned_step_to_wire(step: &PlannedStep) -> pb::PlannedStep {
    let x = match step {
        PlannedStep::Approval => S::Approval(pb::PlannedApproval {}),
        PlannedStep::StopVms {
            site,
            graceful,
            vms,
            shutdown_timeout_s,
        } => S::StopVms(pb::PlannedStopVms {
            site: s(site),
            graceful: *graceful,
            vms: vm_hosts_to_wire(vms),
            shutdown_timeout_s: *shutdown_timeout_s,
        }),
        PlannedStep::UnserveSource {
            site,
            host,
            grace_s,
            confirm,
        } => S::UnserveSource(pb::PlannedUnserveSource {
            site: s(site),
            host: s(host),
            grace_s: *grace_s,
            confirm: *confirm,
        }),
        PlannedStep::PromoteAndMove {
            to,
            promote,
            demoted,
            placement,
        } => S::PromoteAndMove(pb::PlannedPromoteAndMove {
            to: s(to),
            promote: promotions_to_wire(promote),
            demoted: data_state_to_wire(*demoted).into(),
            placement: vm_hosts_to_wire(placement),
        }),
        PlannedStep::ServeVolumes { host, group } => S::ServeVolumes(pb::PlannedServeVolumes {
            host: s(host),
            group: Some(group_to_wire(group)),
        }),
        PlannedStep::StartVms { vms } => S::StartVms(pb::PlannedStartVms {
            vms: host_vms_to_wire(vms),
        }),
        PlannedStep::HealthGate {
            site,
            placement,
            restart,
            probes,
        } => S::HealthGate(pb::PlannedHealthGate {
            site: s(site),
            placement: vm_hosts_to_wire(placement),
            restart: host_vms_to_wire(restart),
            probes: probes_to_wire(probes),
        }),
        PlannedStep::Baseline => S::Baseline(pb::PlannedBaseline {}),
        PlannedStep::Snapshot { host } => S::Snapshot(pb::PlannedSnapshot { host: s(host) }),
        PlannedStep::StartDrillVms { site, copies } => S::StartDrillVms(pb::PlannedStartDrillVms {
            site: s(site),
            copies: host_vms_to_wire(copies),
        }),
        PlannedStep::DrillHealthGate {
            site,
            copies,
            probes,
            unchecked,
        } => S::DrillHealthGate(pb::PlannedDrillHealthGate {
            site: s(site),
            copies: *copies,
            probes: probes_to_wire(probes),
            unchecked: vm_ports_to_wire(unchecked),
        }),
        PlannedStep::ProductionCheck => S::ProductionCheck(pb::PlannedProductionCheck {}),
        PlannedStep::Cleanup { hosts } => S::Cleanup(pb::PlannedCleanup { hosts: strs(hosts) }),
        PlannedStep::ProductionAfter { app } => {
            S::ProductionAfter(pb::PlannedProductionAfter { app: s(app) })
        }
    };
    pb::PlannedStep { step: Some(x) }
}

pub fn planned_step_from_wire(step: pb::PlannedStep) -> Result<PlannedStep, WireError> {
    Ok(match step.step.ok_or_else(|| missing("a planned step"))? {
        S::Approval(_) => PlannedStep::Approval,
        S::StopVms(x) => PlannedStep::StopVms {
            site: site(x.site)?,
            graceful: x.graceful,
            vms: vm_hosts_from_wire(x.vms)?,
            shutdown_timeout_s: x.shutdown_timeout_s,
        },
        S::UnserveSource(x) => PlannedStep::UnserveSource {
            site: site(x.site)?,
            host: host(x.host)?,
            grace_s: x.grace_s,
            confirm: x.confirm,
        },
        S::PromoteAndMove(x) => PlannedStep::PromoteAndMove {
            to: site(x.to)?,
            promote: promotions_from_wire(x.promote)?,
            demoted: data_state_from_wire(x.demoted)?,
            placement: vm_hosts_from_wire(x.placement)?,
        },
        S::ServeVolumes(x) => PlannedStep::ServeVolumes {
            host: host(x.host)?,
            group: group_from_wire(x.group.ok_or_else(|| missing("the served group's spec"))?)?,
        },
        S::StartVms(x) => PlannedStep::StartVms {
            vms: host_vms_from_wire(x.vms)?,
        },
        S::HealthGate(x) => PlannedStep::HealthGate {
            site: site(x.site)?,
            placement: vm_hosts_from_wire(x.placement)?,
            restart: host_vms_from_wire(x.restart)?,
            probes: probes_from_wire(x.probes)?,
        },
        S::Baseline(_) => PlannedStep::Baseline,
        S::Snapshot(x) => PlannedStep::Snapshot {
            host: host(x.host)?,
        },
        S::StartDrillVms(x) => PlannedStep::StartDrillVms {
            site: site(x.site)?,
            copies: host_vms_from_wire(x.copies)?,
        },
        S::DrillHealthGate(x) => PlannedStep::DrillHealthGate {
            site: site(x.site)?,
            copies: x.copies,
            probes: probes_from_wire(x.probes)?,
            unchecked: vm_ports_from_wire(x.unchecked)?,
        },
        S::ProductionCheck(_) => PlannedStep::ProductionCheck,
        S::Cleanup(x) => PlannedStep::Cleanup {
            hosts: ids("host", x.hosts, HostId::new)?,
        },
        S::ProductionAfter(x) => PlannedStep::ProductionAfter { app: app(x.app)? },
    })
}
