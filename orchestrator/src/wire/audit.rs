//! Typed audit events on the wire (`audit.proto`), both ways.

use proto::agent::wire::{
    event_from_wire, event_to_wire, link_from_wire, link_to_wire, vm_state_from_wire,
    vm_state_to_wire,
};
use topology::{AppId, HostId, SiteId, VmId, VolumeId};

use super::WireError;
use super::checked as id;
use super::operation::{step_kind_from_wire, step_kind_to_wire};
use super::skip::{skip_from_wire, skip_to_wire};
use super::states::*;
use crate::pb;
use crate::pb::audit_event::Event as E;
use crate::state::{AuditEvent, CommandId, Epoch, Issuer, OpId, StepAt, VmStateChange};

pub(super) fn s<T: ToString>(v: &T) -> String {
    v.to_string()
}

pub(super) fn strs<T: ToString>(v: &[T]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

pub(super) fn ids<T>(
    what: &'static str,
    v: Vec<String>,
    make: fn(String) -> T,
) -> Result<Vec<T>, WireError> {
    v.into_iter().map(|x| id(what, x, make)).collect()
}

pub(super) fn app(v: String) -> Result<AppId, WireError> {
    id("app", v, AppId::new)
}
pub(super) fn site(v: String) -> Result<SiteId, WireError> {
    id("site", v, SiteId::new)
}
pub(super) fn host(v: String) -> Result<HostId, WireError> {
    id("host", v, HostId::new)
}
pub(super) fn vm(v: String) -> Result<VmId, WireError> {
    id("vm", v, VmId::new)
}
pub(super) fn volume(v: String) -> Result<VolumeId, WireError> {
    id("volume", v, VolumeId::new)
}

pub(super) fn step_at_to_wire(at: &StepAt) -> pb::StepAt {
    use pb::step_at::Part;
    let part = match at {
        StepAt::App { app, index } => Part::App(pb::AppStepAt {
            app: s(app),
            index: *index,
        }),
        StepAt::Closing { index } => Part::Closing(*index),
        StepAt::Interrupted { index } => Part::Interrupted(*index),
    };
    pb::StepAt { part: Some(part) }
}

pub(super) fn step_at_from_wire(at: Option<pb::StepAt>) -> Result<StepAt, WireError> {
    use pb::step_at::Part;
    match at.and_then(|a| a.part) {
        Some(Part::App(x)) => Ok(StepAt::App {
            app: app(x.app)?,
            index: x.index,
        }),
        Some(Part::Closing(index)) => Ok(StepAt::Closing { index }),
        Some(Part::Interrupted(index)) => Ok(StepAt::Interrupted { index }),
        None => Err(WireError::Missing {
            what: "a step's place in its plan",
        }),
    }
}

pub fn audit_event_to_wire(e: &AuditEvent) -> pb::AuditEvent {
    let ev = match e {
        AuditEvent::TopologyApplied {
            version,
            digest,
            hosts,
            apps,
            volumes,
            removed_apps,
            removed_hosts,
        } => E::TopologyApplied(pb::TopologyApplied {
            version: *version,
            digest: digest.clone(),
            hosts: *hosts,
            apps: *apps,
            volumes: *volumes,
            removed_apps: *removed_apps,
            removed_hosts: *removed_hosts,
        }),
        AuditEvent::SiteState {
            site,
            from,
            to,
            reason,
        } => E::SiteState(pb::SiteStateChange {
            site: s(site),
            from: site_state_to_wire(*from).into(),
            to: site_state_to_wire(*to).into(),
            reason: reason.clone(),
        }),
        AuditEvent::HostState {
            host,
            from,
            to,
            reason,
        } => E::HostState(pb::HostStateChange {
            host: s(host),
            from: host_state_to_wire(*from).into(),
            to: host_state_to_wire(*to).into(),
            reason: reason.clone(),
        }),
        AuditEvent::AppState {
            app,
            from,
            to,
            reason,
        } => E::AppState(pb::AppStateChange {
            app: s(app),
            from: app_state_to_wire(*from).into(),
            to: app_state_to_wire(*to).into(),
            reason: reason.clone(),
        }),
        AuditEvent::VmPlaced { app, vm, host } => E::VmPlaced(pb::VmPlaced {
            app: s(app),
            vm: s(vm),
            host: s(host),
        }),
        AuditEvent::ReplicaPromoted {
            volume,
            site,
            epoch,
            demoted_sites,
            demoted,
        } => E::ReplicaPromoted(pb::ReplicaPromoted {
            volume: s(volume),
            site: s(site),
            epoch: epoch.0,
            demoted_sites: strs(demoted_sites),
            demoted: data_state_to_wire(*demoted).into(),
        }),
        AuditEvent::ReplicaData {
            volume,
            site,
            from,
            to,
        } => E::ReplicaData(pb::ReplicaData {
            volume: s(volume),
            site: s(site),
            from: data_state_to_wire(*from).into(),
            to: data_state_to_wire(*to).into(),
        }),
        AuditEvent::OpStarted {
            op,
            kind,
            apps,
            note,
            waves,
            skipped,
        } => E::OpStarted(pb::OpStarted {
            op: op.0,
            kind: op_kind_to_wire(*kind).into(),
            apps: strs(apps),
            note: note.clone(),
            waves: *waves,
            skipped: skipped.iter().map(skip_to_wire).collect(),
        }),
        AuditEvent::StepStarted {
            op,
            index,
            at,
            kind,
            again,
        } => E::StepStarted(pb::StepStarted {
            op: op.0,
            index: *index,
            at: Some(step_at_to_wire(at)),
            kind: step_kind_to_wire(*kind).into(),
            again: *again,
        }),
        AuditEvent::StepFinished {
            op,
            index,
            at,
            kind,
            ok,
            detail,
        } => E::StepFinished(pb::StepFinished {
            op: op.0,
            index: *index,
            ok: *ok,
            detail: detail.clone(),
            at: Some(step_at_to_wire(at)),
            kind: step_kind_to_wire(*kind).into(),
        }),
        AuditEvent::OpFinished { op, status } => E::OpFinished(pb::OpFinished {
            op: op.0,
            status: op_status_to_wire(*status).into(),
        }),
        AuditEvent::OpApproved { op, apps } => E::OpApproved(pb::OpApproved {
            op: op.0,
            apps: strs(apps),
        }),
        AuditEvent::AppMoved {
            op,
            app,
            from,
            to,
            promoted,
            demoted,
            placement,
        } => E::AppMoved(pb::AppMoved {
            op: op.0,
            app: s(app),
            from: s(from),
            to: s(to),
            promoted: promoted
                .iter()
                .map(|(v, e)| pb::VolumeEpoch {
                    volume: s(v),
                    epoch: e.0,
                })
                .collect(),
            demoted: data_state_to_wire(*demoted).into(),
            placement: placement
                .iter()
                .map(|(v, h)| pb::VmHost {
                    vm: s(v),
                    host: s(h),
                })
                .collect(),
        }),
        AuditEvent::ReplicaLink {
            app,
            site,
            epoch,
            link,
            detail,
            changes,
        } => E::ReplicaLink(pb::ReplicaLink {
            app: s(app),
            site: s(site),
            epoch: epoch.0,
            link: link_to_wire(*link).into(),
            detail: detail.clone(),
            changes: changes
                .iter()
                .map(|(v, st, from, to)| pb::DataChange {
                    volume: s(v),
                    site: s(st),
                    from: data_state_to_wire(*from).into(),
                    to: data_state_to_wire(*to).into(),
                })
                .collect(),
        }),
        AuditEvent::AppOutage {
            app,
            since_ms,
            rto_target_s,
            ended_ms,
        } => E::AppOutage(pb::AppOutage {
            app: s(app),
            since_ms: *since_ms,
            rto_target_s: *rto_target_s,
            ended_ms: *ended_ms,
        }),
        AuditEvent::SiteRecovered {
            site,
            losses_forgotten,
            behind,
        } => E::SiteRecovered(pb::SiteRecovered {
            site: s(site),
            losses_forgotten: *losses_forgotten,
            behind: behind
                .iter()
                .map(|(v, d)| pb::VolumeData {
                    volume: s(v),
                    data: data_state_to_wire(*d).into(),
                })
                .collect(),
        }),
        AuditEvent::Note { text } => E::Note(pb::Text { text: text.clone() }),
        AuditEvent::Membership { change } => E::Membership(pb::Text {
            text: change.clone(),
        }),
        AuditEvent::Refused {
            call,
            reason,
            security,
        } => E::Refused(pb::Refused {
            call: call.clone(),
            reason: reason.clone(),
            security: *security,
        }),
        AuditEvent::HostRegistered {
            host,
            agent_version,
            vcpus,
            memory_mib,
            hypervisor,
            domain_type,
            from,
            fenced,
        } => E::HostRegistered(pb::HostRegistered {
            host: s(host),
            agent_version: agent_version.clone(),
            vcpus: *vcpus,
            memory_mib: *memory_mib,
            hypervisor: hypervisor.clone(),
            domain_type: domain_type.clone(),
            from: host_state_to_wire(*from).into(),
            fenced: *fenced,
        }),
        AuditEvent::CommandsIssued {
            issuer,
            listed,
            total,
        } => E::CommandsIssued(pb::CommandsIssued {
            issuer: Some(pb::CommandIssuer {
                by: Some(match issuer {
                    Issuer::Operation { op } => pb::command_issuer::By::Operation(op.0),
                    Issuer::Controller => pb::command_issuer::By::Controller(true),
                    Issuer::Operator { actor } => pb::command_issuer::By::Operator(actor.clone()),
                }),
            }),
            listed: listed
                .iter()
                .map(|(id, h, a, t)| pb::IssuedCommand {
                    id: id.0,
                    host: s(h),
                    action: a.clone(),
                    target: t.clone(),
                })
                .collect(),
            total: *total,
        }),
        AuditEvent::CommandResults { host, recorded } => E::CommandResults(pb::CommandResults {
            host: s(host),
            recorded: recorded
                .iter()
                .map(|(id, a, t, ok)| pb::RecordedResult {
                    id: id.0,
                    action: a.clone(),
                    target: t.clone(),
                    ok: *ok,
                })
                .collect(),
        }),
        AuditEvent::VmStates {
            host,
            changes,
            reason,
        } => E::VmStates(pb::VmStates {
            host: s(host),
            changes: changes
                .iter()
                .map(|c| pb::VmStateChange {
                    vm: s(&c.vm),
                    state: vm_state_to_wire(c.state).into(),
                    placed_here: c.placed_here,
                })
                .collect(),
            reason: reason.clone(),
        }),
        AuditEvent::Agent { host, event } => E::Agent(pb::HostAgentEvent {
            host: s(host),
            event: Some(event_to_wire(0, event)),
        }),
    };
    pb::AuditEvent { event: Some(ev) }
}

pub fn audit_event_from_wire(e: pb::AuditEvent) -> Result<AuditEvent, WireError> {
    let missing = |what| WireError::Missing { what };
    Ok(match e.event.ok_or_else(|| missing("the audit event"))? {
        E::TopologyApplied(t) => AuditEvent::TopologyApplied {
            version: t.version,
            digest: t.digest,
            hosts: t.hosts,
            apps: t.apps,
            volumes: t.volumes,
            removed_apps: t.removed_apps,
            removed_hosts: t.removed_hosts,
        },
        E::SiteState(c) => AuditEvent::SiteState {
            site: site(c.site)?,
            from: site_state_from_wire(c.from)?,
            to: site_state_from_wire(c.to)?,
            reason: c.reason,
        },
        E::HostState(c) => AuditEvent::HostState {
            host: host(c.host)?,
            from: host_state_from_wire(c.from)?,
            to: host_state_from_wire(c.to)?,
            reason: c.reason,
        },
        E::AppState(c) => AuditEvent::AppState {
            app: app(c.app)?,
            from: app_state_from_wire(c.from)?,
            to: app_state_from_wire(c.to)?,
            reason: c.reason,
        },
        E::VmPlaced(p) => AuditEvent::VmPlaced {
            app: app(p.app)?,
            vm: vm(p.vm)?,
            host: host(p.host)?,
        },
        E::ReplicaPromoted(p) => AuditEvent::ReplicaPromoted {
            volume: volume(p.volume)?,
            site: site(p.site)?,
            epoch: Epoch(p.epoch),
            demoted_sites: ids("site", p.demoted_sites, SiteId::new)?,
            demoted: data_state_from_wire(p.demoted)?,
        },
        E::ReplicaData(d) => AuditEvent::ReplicaData {
            volume: volume(d.volume)?,
            site: site(d.site)?,
            from: data_state_from_wire(d.from)?,
            to: data_state_from_wire(d.to)?,
        },
        E::OpStarted(o) => AuditEvent::OpStarted {
            op: OpId(o.op),
            kind: op_kind_from_wire(o.kind)?,
            apps: ids("app", o.apps, AppId::new)?,
            note: o.note,
            waves: o.waves,
            skipped: o
                .skipped
                .into_iter()
                .map(skip_from_wire)
                .collect::<Result<_, WireError>>()?,
        },
        E::StepStarted(x) => AuditEvent::StepStarted {
            op: OpId(x.op),
            index: x.index,
            at: step_at_from_wire(x.at)?,
            kind: step_kind_from_wire(x.kind),
            again: x.again,
        },
        E::StepFinished(x) => AuditEvent::StepFinished {
            op: OpId(x.op),
            index: x.index,
            at: step_at_from_wire(x.at)?,
            kind: step_kind_from_wire(x.kind),
            ok: x.ok,
            detail: x.detail,
        },
        E::OpFinished(x) => AuditEvent::OpFinished {
            op: OpId(x.op),
            status: op_status_from_wire(x.status)?,
        },
        E::OpApproved(x) => AuditEvent::OpApproved {
            op: OpId(x.op),
            apps: ids("app", x.apps, AppId::new)?,
        },
        E::AppMoved(m) => AuditEvent::AppMoved {
            op: OpId(m.op),
            app: app(m.app)?,
            from: site(m.from)?,
            to: site(m.to)?,
            promoted: m
                .promoted
                .into_iter()
                .map(|p| Ok((volume(p.volume)?, Epoch(p.epoch))))
                .collect::<Result<_, WireError>>()?,
            demoted: data_state_from_wire(m.demoted)?,
            placement: m
                .placement
                .into_iter()
                .map(|p| Ok((vm(p.vm)?, host(p.host)?)))
                .collect::<Result<_, WireError>>()?,
        },
        E::ReplicaLink(l) => AuditEvent::ReplicaLink {
            app: app(l.app)?,
            site: site(l.site)?,
            epoch: Epoch(l.epoch),
            link: link_from_wire(l.link)?,
            detail: l.detail,
            changes: l
                .changes
                .into_iter()
                .map(|c| {
                    Ok((
                        volume(c.volume)?,
                        site(c.site)?,
                        data_state_from_wire(c.from)?,
                        data_state_from_wire(c.to)?,
                    ))
                })
                .collect::<Result<_, WireError>>()?,
        },
        E::AppOutage(o) => AuditEvent::AppOutage {
            app: app(o.app)?,
            since_ms: o.since_ms,
            rto_target_s: o.rto_target_s,
            ended_ms: o.ended_ms,
        },
        E::SiteRecovered(r) => AuditEvent::SiteRecovered {
            site: site(r.site)?,
            losses_forgotten: r.losses_forgotten,
            behind: r
                .behind
                .into_iter()
                .map(|b| Ok((volume(b.volume)?, data_state_from_wire(b.data)?)))
                .collect::<Result<_, WireError>>()?,
        },
        E::Note(t) => AuditEvent::Note { text: t.text },
        E::Membership(t) => AuditEvent::Membership { change: t.text },
        E::Refused(r) => AuditEvent::Refused {
            call: r.call,
            reason: r.reason,
            security: r.security,
        },
        E::HostRegistered(h) => AuditEvent::HostRegistered {
            host: host(h.host)?,
            agent_version: h.agent_version,
            vcpus: h.vcpus,
            memory_mib: h.memory_mib,
            hypervisor: h.hypervisor,
            domain_type: h.domain_type,
            from: host_state_from_wire(h.from)?,
            fenced: h.fenced,
        },
        E::CommandsIssued(c) => AuditEvent::CommandsIssued {
            issuer: match c
                .issuer
                .and_then(|i| i.by)
                .ok_or_else(|| missing("the commands' issuer"))?
            {
                pb::command_issuer::By::Operation(op) => Issuer::Operation { op: OpId(op) },
                pb::command_issuer::By::Controller(_) => Issuer::Controller,
                pb::command_issuer::By::Operator(actor) => Issuer::Operator { actor },
            },
            listed: c
                .listed
                .into_iter()
                .map(|x| Ok((CommandId(x.id), host(x.host)?, x.action, x.target)))
                .collect::<Result<_, WireError>>()?,
            total: c.total,
        },
        E::CommandResults(r) => AuditEvent::CommandResults {
            host: host(r.host)?,
            recorded: r
                .recorded
                .into_iter()
                .map(|x| (CommandId(x.id), x.action, x.target, x.ok))
                .collect(),
        },
        E::VmStates(v) => AuditEvent::VmStates {
            host: host(v.host)?,
            changes: v
                .changes
                .into_iter()
                .map(|c| {
                    Ok(VmStateChange {
                        vm: vm(c.vm)?,
                        state: vm_state_from_wire(c.state)?,
                        placed_here: c.placed_here,
                    })
                })
                .collect::<Result<_, WireError>>()?,
            reason: v.reason,
        },
        E::Agent(a) => AuditEvent::Agent {
            host: host(a.host)?,
            event: event_from_wire(a.event.ok_or_else(|| missing("the agent's event"))?)?.1,
        },
    })
}
