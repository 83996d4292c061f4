//! What a step did, on the wire (`StepOutcome` of `operation.proto`), both ways, with
//! its evidence: the VMs stopped and how, the promotions, what the agents did (their
//! `CommandOutcome`s and `Served`/`StoppedGroup`, converted by `proto::agent::wire`),
//! production as a drill sampled it and what changed in it.
//!
//! Never: carry a claim only as text, or panic on what the wire carries.

use ids::{GroupSeq, OpId};
use proto::agent::wire::{
    command_outcome_from_wire, command_outcome_to_wire, served_from_wire, served_to_wire,
    stopped_from_wire, stopped_to_wire, vm_state_from_wire, vm_state_to_wire,
};

use super::WireError;
use super::audit::{app, host, s, site, vm, volume};
use super::plan::{
    missing, promotions_from_wire, promotions_to_wire, vm_hosts_from_wire, vm_hosts_to_wire,
    vm_ports_from_wire, vm_ports_to_wire,
};
use super::states::{data_state_from_wire, data_state_to_wire};
use crate::pb;
use crate::pb::production_change::Change as C;
use crate::pb::step_outcome::Outcome as O;
use crate::pb::vm_stop::How;
use crate::records::{
    AgentDid, Healthy, Moved, Production, ProductionChange, ReplicaSample, StepOutcome, VmSample,
    VmStop, VmStopped,
};

fn agent_did_to_wire(d: &AgentDid) -> pb::AgentDid {
    pb::AgentDid {
        host: s(&d.host),
        outcome: Some(command_outcome_to_wire(&d.outcome)),
    }
}

fn agent_did_from_wire(d: pb::AgentDid) -> Result<AgentDid, WireError> {
    Ok(AgentDid {
        host: host(d.host)?,
        outcome: command_outcome_from_wire(
            d.outcome.ok_or_else(|| missing("an agent's outcome"))?,
        )?,
    })
}

fn dids_to_wire(v: &[AgentDid]) -> Vec<pb::AgentDid> {
    v.iter().map(agent_did_to_wire).collect()
}

fn dids_from_wire(v: Vec<pb::AgentDid>) -> Result<Vec<AgentDid>, WireError> {
    v.into_iter().map(agent_did_from_wire).collect()
}

pub fn vm_stop_to_wire(h: &VmStop) -> pb::VmStop {
    let how = match h {
        VmStop::ShutDown { destroyed_after_s } => How::ShutDown(pb::StopShutDown {
            destroyed_after_s: *destroyed_after_s,
        }),
        VmStop::Destroyed => How::Destroyed(pb::StopDestroyed {}),
        VmStop::FencedByLease => How::FencedByLease(pb::StopFencedByLease {}),
    };
    pb::VmStop { how: Some(how) }
}

pub fn vm_stop_from_wire(h: pb::VmStop) -> Result<VmStop, WireError> {
    Ok(
        match h.how.ok_or_else(|| missing("how a VM was stopped"))? {
            How::ShutDown(x) => VmStop::ShutDown {
                destroyed_after_s: x.destroyed_after_s,
            },
            How::Destroyed(_) => VmStop::Destroyed,
            How::FencedByLease(_) => VmStop::FencedByLease,
        },
    )
}

pub fn production_to_wire(p: &Production) -> pb::Production {
    pb::Production {
        active_site: s(&p.active_site),
        vms: p
            .vms
            .iter()
            .map(|v| pb::VmSample {
                vm: s(&v.vm),
                host: s(&v.host),
                state: vm_state_to_wire(v.state).into(),
                since_ms: v.since_ms,
            })
            .collect(),
        replicas: p
            .replicas
            .iter()
            .map(|r| pb::ReplicaSample {
                volume: s(&r.volume),
                site: s(&r.site),
                data: data_state_to_wire(r.data).into(),
            })
            .collect(),
    }
}

pub fn production_from_wire(p: pb::Production) -> Result<Production, WireError> {
    Ok(Production {
        active_site: site(p.active_site)?,
        vms: p
            .vms
            .into_iter()
            .map(|v| {
                Ok(VmSample {
                    vm: vm(v.vm)?,
                    host: host(v.host)?,
                    state: vm_state_from_wire(v.state)?,
                    since_ms: v.since_ms,
                })
            })
            .collect::<Result<_, WireError>>()?,
        replicas: p
            .replicas
            .into_iter()
            .map(|r| {
                Ok(ReplicaSample {
                    volume: volume(r.volume)?,
                    site: site(r.site)?,
                    data: data_state_from_wire(r.data)?,
                })
            })
            .collect::<Result<_, WireError>>()?,
    })
}

/// A production sample a message must carry.
pub(super) fn production_in(p: Option<pb::Production>) -> Result<Production, WireError> {
    production_from_wire(p.ok_or_else(|| missing("the production sample"))?)
}

pub fn production_change_to_wire(c: &ProductionChange) -> pb::ProductionChange {
    let x = match c {
        ProductionChange::ActiveSite { from, to } => C::ActiveSite(pb::ChangeActiveSite {
            from: s(from),
            to: s(to),
        }),
        ProductionChange::Moved { vm, from, to } => C::Moved(pb::ChangeMoved {
            vm: s(vm),
            from: s(from),
            to: s(to),
        }),
        ProductionChange::State { vm, from, to } => C::State(pb::ChangeState {
            vm: s(vm),
            from: vm_state_to_wire(*from).into(),
            to: vm_state_to_wire(*to).into(),
        }),
        ProductionChange::Restarted { vm, state } => C::Restarted(pb::ChangeRestarted {
            vm: s(vm),
            state: vm_state_to_wire(*state).into(),
        }),
        ProductionChange::Gone { vm } => C::Gone(pb::ChangeGone { vm: s(vm) }),
        ProductionChange::Appeared { vm } => C::Appeared(pb::ChangeAppeared { vm: s(vm) }),
        ProductionChange::ReplicaBehind { volume, site, data } => {
            C::ReplicaBehind(pb::ReplicaBehind {
                volume: s(volume),
                site: s(site),
                data: data_state_to_wire(*data).into(),
            })
        }
    };
    pb::ProductionChange { change: Some(x) }
}

pub fn production_change_from_wire(c: pb::ProductionChange) -> Result<ProductionChange, WireError> {
    Ok(
        match c.change.ok_or_else(|| missing("a production change"))? {
            C::ActiveSite(x) => ProductionChange::ActiveSite {
                from: site(x.from)?,
                to: site(x.to)?,
            },
            C::Moved(x) => ProductionChange::Moved {
                vm: vm(x.vm)?,
                from: host(x.from)?,
                to: host(x.to)?,
            },
            C::State(x) => ProductionChange::State {
                vm: vm(x.vm)?,
                from: vm_state_from_wire(x.from)?,
                to: vm_state_from_wire(x.to)?,
            },
            C::Restarted(x) => ProductionChange::Restarted {
                vm: vm(x.vm)?,
                state: vm_state_from_wire(x.state)?,
            },
            C::Gone(x) => ProductionChange::Gone { vm: vm(x.vm)? },
            C::Appeared(x) => ProductionChange::Appeared { vm: vm(x.vm)? },
            C::ReplicaBehind(x) => ProductionChange::ReplicaBehind {
                volume: volume(x.volume)?,
                site: site(x.site)?,
                data: data_state_from_wire(x.data)?,
            },
        },
    )
}

pub fn step_outcome_to_wire(o: &StepOutcome) -> pb::StepOutcome {
    let x = match o {
        StepOutcome::Approved { op } => O::Approved(pb::OutcomeApproved { op: op.0 }),
        StepOutcome::VmsStopped { vms } => O::VmsStopped(pb::OutcomeVmsStopped {
            vms: vms
                .iter()
                .map(|v| pb::VmStopped {
                    vm: s(&v.vm),
                    host: s(&v.host),
                    how: Some(vm_stop_to_wire(&v.how)),
                })
                .collect(),
        }),
        StepOutcome::SourceUnserved { host, stopped } => {
            O::SourceUnserved(pb::OutcomeSourceUnserved {
                host: s(host),
                stopped: stopped.as_ref().map(stopped_to_wire),
            })
        }
        StepOutcome::SourceDown { host } => O::SourceDown(pb::OutcomeSourceDown { host: s(host) }),
        StepOutcome::Moved(m) => O::Moved(pb::Moved {
            to: s(&m.to),
            promoted: promotions_to_wire(&m.promoted),
            demoted: data_state_to_wire(m.demoted).into(),
            already: m.already,
        }),
        StepOutcome::Served { host, served } => O::Served(pb::OutcomeServed {
            host: s(host),
            served: Some(served_to_wire(served)),
        }),
        StepOutcome::VmsStarted { vms } => O::VmsStarted(pb::OutcomeVmsStarted {
            vms: vm_hosts_to_wire(vms),
        }),
        StepOutcome::Healthy(h) => O::Healthy(pb::Healthy {
            site: s(&h.site),
            running: h.running,
            restarted: vm_hosts_to_wire(&h.restarted),
            served_again: h.served_again.as_ref().map(s),
            probes: dids_to_wire(&h.probes),
        }),
        StepOutcome::Baseline { production } => O::Baseline(pb::OutcomeBaseline {
            production: Some(production_to_wire(production)),
        }),
        StepOutcome::Snapshot {
            host,
            app,
            seq,
            volumes,
            already,
        } => O::Snapshot(pb::OutcomeSnapshot {
            host: s(host),
            app: s(app),
            seq: seq.0,
            volumes: *volumes,
            already: *already,
        }),
        StepOutcome::DrillVmsStarted { copies } => O::DrillVmsStarted(pb::OutcomeDrillVmsStarted {
            copies: dids_to_wire(copies),
        }),
        StepOutcome::DrillHealthy {
            copies,
            site,
            probes,
            unchecked,
        } => O::DrillHealthy(pb::OutcomeDrillHealthy {
            copies: *copies,
            site: s(site),
            probes: dids_to_wire(probes),
            unchecked: vm_ports_to_wire(unchecked),
        }),
        StepOutcome::ProductionUnchanged { production } => {
            O::ProductionUnchanged(pb::OutcomeProductionUnchanged {
                production: Some(production_to_wire(production)),
            })
        }
        StepOutcome::Cleaned { hosts } => O::Cleaned(pb::OutcomeCleaned {
            hosts: dids_to_wire(hosts),
        }),
    };
    pb::StepOutcome { outcome: Some(x) }
}

pub fn step_outcome_from_wire(o: pb::StepOutcome) -> Result<StepOutcome, WireError> {
    Ok(
        match o.outcome.ok_or_else(|| missing("a step's outcome"))? {
            O::Approved(x) => StepOutcome::Approved { op: OpId(x.op) },
            O::VmsStopped(x) => StepOutcome::VmsStopped {
                vms: x
                    .vms
                    .into_iter()
                    .map(|v| {
                        Ok(VmStopped {
                            vm: vm(v.vm)?,
                            host: host(v.host)?,
                            how: vm_stop_from_wire(
                                v.how.ok_or_else(|| missing("how a VM was stopped"))?,
                            )?,
                        })
                    })
                    .collect::<Result<_, WireError>>()?,
            },
            O::SourceUnserved(x) => StepOutcome::SourceUnserved {
                host: host(x.host)?,
                stopped: x.stopped.map(stopped_from_wire).transpose()?,
            },
            O::SourceDown(x) => StepOutcome::SourceDown {
                host: host(x.host)?,
            },
            O::Moved(x) => StepOutcome::Moved(Moved {
                to: site(x.to)?,
                promoted: promotions_from_wire(x.promoted)?,
                demoted: data_state_from_wire(x.demoted)?,
                already: x.already,
            }),
            O::Served(x) => StepOutcome::Served {
                host: host(x.host)?,
                served: served_from_wire(
                    x.served.ok_or_else(|| missing("what the agent served"))?,
                )?,
            },
            O::VmsStarted(x) => StepOutcome::VmsStarted {
                vms: vm_hosts_from_wire(x.vms)?,
            },
            O::Healthy(x) => StepOutcome::Healthy(Healthy {
                site: site(x.site)?,
                running: x.running,
                restarted: vm_hosts_from_wire(x.restarted)?,
                served_again: x.served_again.map(host).transpose()?,
                probes: dids_from_wire(x.probes)?,
            }),
            O::Baseline(x) => StepOutcome::Baseline {
                production: production_in(x.production)?,
            },
            O::Snapshot(x) => StepOutcome::Snapshot {
                host: host(x.host)?,
                app: app(x.app)?,
                seq: GroupSeq(x.seq),
                volumes: x.volumes,
                already: x.already,
            },
            O::DrillVmsStarted(x) => StepOutcome::DrillVmsStarted {
                copies: dids_from_wire(x.copies)?,
            },
            O::DrillHealthy(x) => StepOutcome::DrillHealthy {
                copies: x.copies,
                site: site(x.site)?,
                probes: dids_from_wire(x.probes)?,
                unchecked: vm_ports_from_wire(x.unchecked)?,
            },
            O::ProductionUnchanged(x) => StepOutcome::ProductionUnchanged {
                production: production_in(x.production)?,
            },
            O::Cleaned(x) => StepOutcome::Cleaned {
                hosts: dids_from_wire(x.hosts)?,
            },
        },
    )
}
