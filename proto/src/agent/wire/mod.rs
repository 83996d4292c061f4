//! Between the Rust forms of the agent protocol and the protobuf messages of
//! `agent.proto` / `spec.proto`. Decoding checks every id, enum value and range, and
//! says what is wrong; it never panics on what the wire carries.

mod event;
mod outcome;
mod spec;

use ids::{AppId, CommandId, OpId, VmId};

use super::{AgentAction, LinkReport, VmState};
use crate::pb;
use crate::pb::agent_command::Action as PbAction;

pub use event::{event_from_wire, event_to_wire};
pub use outcome::{
    command_outcome_from_wire, command_outcome_to_wire, failure_kind_from_wire,
    failure_kind_to_wire, outcome_from_wire, outcome_to_wire, served_from_wire, served_to_wire,
    stopped_from_wire, stopped_to_wire,
};
pub use spec::{
    group_from_wire, group_to_wire, mode_from_wire, mode_to_wire, vm_spec_from_wire,
    vm_spec_to_wire,
};

/// A protobuf message that does not make a valid typed value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what} is missing")]
    Missing { what: &'static str },
    #[error("{what} {value:?} is not a valid id: {why}")]
    BadId {
        what: &'static str,
        value: String,
        why: String,
    },
    #[error("{what} has the unknown value {value} (a newer peer?)")]
    UnknownEnum { what: &'static str, value: i32 },
    #[error("{what} = {value} is out of range")]
    OutOfRange { what: &'static str, value: u64 },
    #[error("{what} is not valid: {why}")]
    Invalid {
        what: &'static str,
        why: &'static str,
    },
}

pub(crate) fn missing(what: &'static str) -> WireError {
    WireError::Missing { what }
}

/// A checked id from the wire.
pub(crate) fn checked<T>(
    what: &'static str,
    s: String,
    make: impl FnOnce(String) -> T,
) -> Result<T, WireError> {
    match ids::check_id(&s) {
        Ok(()) => Ok(make(s)),
        Err(why) => Err(WireError::BadId {
            what,
            value: s.chars().take(80).collect(),
            why,
        }),
    }
}

pub(crate) fn vm_id(s: String) -> Result<VmId, WireError> {
    checked("vm", s, VmId::new)
}

pub(crate) fn app_id(s: String) -> Result<AppId, WireError> {
    checked("app", s, AppId::new)
}

/// A port from the wire: in range for a `u16`.
pub fn port(what: &'static str, p: u32) -> Result<u16, WireError> {
    u16::try_from(p).map_err(|_| WireError::OutOfRange {
        what,
        value: u64::from(p),
    })
}

/// The command message for `action` with id `id`.
pub fn command_to_wire(id: CommandId, action: &AgentAction) -> pb::AgentCommand {
    let vm = |v: &VmId| pb::VmTarget { vm: v.to_string() };
    let a = match action {
        AgentAction::Define { spec } => PbAction::Define(vm_spec_to_wire(spec)),
        AgentAction::Start { vm: v } => PbAction::Start(vm(v)),
        AgentAction::Shutdown { vm: v, timeout_s } => PbAction::Shutdown(pb::ShutdownVm {
            vm: v.to_string(),
            timeout_s: *timeout_s,
        }),
        AgentAction::Destroy { vm: v } => PbAction::Destroy(vm(v)),
        AgentAction::Undefine { vm: v } => PbAction::Undefine(vm(v)),
        AgentAction::Suspend { vm: v } => PbAction::Suspend(vm(v)),
        AgentAction::Resume { vm: v } => PbAction::Resume(vm(v)),
        AgentAction::Probe {
            vm: v,
            marker,
            timeout_s,
        } => PbAction::Probe(pb::SerialProbe {
            vm: v.to_string(),
            marker: marker.clone(),
            timeout_s: *timeout_s,
        }),
        AgentAction::TcpProbe {
            vm: v,
            port,
            address,
            timeout_s,
        } => PbAction::TcpProbe(pb::TcpProbe {
            vm: v.to_string(),
            port: u32::from(*port),
            address: address.clone(),
            timeout_s: *timeout_s,
        }),
        AgentAction::Serve { group } => PbAction::Serve(group_to_wire(group)),
        AgentAction::Unserve { app, grace_s } => PbAction::Unserve(pb::UnserveGroup {
            app: app.to_string(),
            grace_s: *grace_s,
        }),
        AgentAction::DrillSnapshot { op, app } => PbAction::DrillSnapshot(pb::DrillSnapshot {
            op: op.0,
            app: app.to_string(),
        }),
        AgentAction::DrillStart { op, spec } => PbAction::DrillStart(pb::DrillStart {
            op: op.0,
            spec: Some(vm_spec_to_wire(spec)),
        }),
        AgentAction::DrillProbe {
            op,
            vm: v,
            marker,
            timeout_s,
        } => PbAction::DrillProbe(pb::DrillProbe {
            op: op.0,
            vm: v.to_string(),
            marker: marker.clone(),
            timeout_s: *timeout_s,
        }),
        AgentAction::DrillCleanup { op } => PbAction::DrillCleanup(pb::DrillCleanup { op: op.0 }),
    };
    pb::AgentCommand {
        id: id.0,
        action: Some(a),
    }
}

/// The typed command a message carries.
pub fn command_from_wire(c: pb::AgentCommand) -> Result<(CommandId, AgentAction), WireError> {
    let id = CommandId(c.id);
    let action = match c.action.ok_or_else(|| missing("the command's action"))? {
        PbAction::Define(spec) => AgentAction::Define {
            spec: vm_spec_from_wire(spec)?,
        },
        PbAction::Start(t) => AgentAction::Start { vm: vm_id(t.vm)? },
        PbAction::Shutdown(s) => AgentAction::Shutdown {
            vm: vm_id(s.vm)?,
            timeout_s: s.timeout_s,
        },
        PbAction::Destroy(t) => AgentAction::Destroy { vm: vm_id(t.vm)? },
        PbAction::Undefine(t) => AgentAction::Undefine { vm: vm_id(t.vm)? },
        PbAction::Suspend(t) => AgentAction::Suspend { vm: vm_id(t.vm)? },
        PbAction::Resume(t) => AgentAction::Resume { vm: vm_id(t.vm)? },
        PbAction::Probe(p) => AgentAction::Probe {
            vm: vm_id(p.vm)?,
            marker: p.marker,
            timeout_s: p.timeout_s,
        },
        PbAction::TcpProbe(p) => AgentAction::TcpProbe {
            vm: vm_id(p.vm)?,
            port: port("the tcp probe's port", p.port)?,
            address: p.address,
            timeout_s: p.timeout_s,
        },
        PbAction::Serve(g) => AgentAction::Serve {
            group: group_from_wire(g)?,
        },
        PbAction::Unserve(u) => AgentAction::Unserve {
            app: app_id(u.app)?,
            grace_s: u.grace_s,
        },
        PbAction::DrillSnapshot(d) => AgentAction::DrillSnapshot {
            op: OpId(d.op),
            app: app_id(d.app)?,
        },
        PbAction::DrillStart(d) => AgentAction::DrillStart {
            op: OpId(d.op),
            spec: vm_spec_from_wire(d.spec.ok_or_else(|| missing("the drill start's spec"))?)?,
        },
        PbAction::DrillProbe(d) => AgentAction::DrillProbe {
            op: OpId(d.op),
            vm: vm_id(d.vm)?,
            marker: d.marker,
            timeout_s: d.timeout_s,
        },
        PbAction::DrillCleanup(d) => AgentAction::DrillCleanup { op: OpId(d.op) },
    };
    Ok((id, action))
}

pub fn vm_state_to_wire(s: VmState) -> pb::DomainState {
    match s {
        VmState::Running => pb::DomainState::Running,
        VmState::Paused => pb::DomainState::Paused,
        VmState::ShuttingDown => pb::DomainState::ShuttingDown,
        VmState::ShutOff => pb::DomainState::ShutOff,
        VmState::Crashed => pb::DomainState::Crashed,
        VmState::Undefined => pb::DomainState::Undefined,
        VmState::Other => pb::DomainState::Other,
    }
}

pub fn vm_state_from_wire(v: i32) -> Result<VmState, WireError> {
    let bad = WireError::UnknownEnum {
        what: "the domain state",
        value: v,
    };
    Ok(
        match pb::DomainState::try_from(v).map_err(|_| bad.clone())? {
            pb::DomainState::Unspecified => return Err(bad),
            pb::DomainState::Running => VmState::Running,
            pb::DomainState::Paused => VmState::Paused,
            pb::DomainState::ShuttingDown => VmState::ShuttingDown,
            pb::DomainState::ShutOff => VmState::ShutOff,
            pb::DomainState::Crashed => VmState::Crashed,
            pb::DomainState::Undefined => VmState::Undefined,
            pb::DomainState::Other => VmState::Other,
        },
    )
}

pub fn link_to_wire(l: LinkReport) -> pb::LinkReport {
    match l {
        LinkReport::InSync => pb::LinkReport::InSync,
        LinkReport::Resyncing => pb::LinkReport::Resyncing,
        LinkReport::Down => pb::LinkReport::Down,
        LinkReport::Alone => pb::LinkReport::Alone,
    }
}

pub fn link_from_wire(v: i32) -> Result<LinkReport, WireError> {
    let bad = WireError::UnknownEnum {
        what: "the link state",
        value: v,
    };
    Ok(
        match pb::LinkReport::try_from(v).map_err(|_| bad.clone())? {
            pb::LinkReport::Unspecified => return Err(bad),
            pb::LinkReport::InSync => LinkReport::InSync,
            pb::LinkReport::Resyncing => LinkReport::Resyncing,
            pb::LinkReport::Down => LinkReport::Down,
            pb::LinkReport::Alone => LinkReport::Alone,
        },
    )
}
