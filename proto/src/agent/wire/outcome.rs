//! Command outcomes on the wire (`CommandOutcome`).

use ids::{CommandId, Epoch, GroupSeq};

use super::spec::{role_from_wire, role_to_wire};
use super::{WireError, app_id, missing, vm_id, vm_state_from_wire, vm_state_to_wire};
use crate::agent::{
    CommandFailure, CommandOutcome, Executed, FailureKind, PeerConfirmation, Served, StoppedGroup,
};
use crate::pb;
use crate::pb::command_outcome::Result as PbResult;

/// A group that stopped being served, and what it had.
pub fn stopped_to_wire(s: &StoppedGroup) -> pb::StoppedGroup {
    let role = match s {
        StoppedGroup::Primary {
            epoch,
            confirmation,
        } => {
            let (c, seq, detail) = match confirmation {
                PeerConfirmation::Confirmed { up_to } => {
                    (pb::PeerConfirmation::Confirmed, up_to.0, String::new())
                }
                PeerConfirmation::NotConfirmed { link } => {
                    (pb::PeerConfirmation::NotConfirmed, 0, link.clone())
                }
                PeerConfirmation::Fenced => (pb::PeerConfirmation::Fenced, 0, String::new()),
                PeerConfirmation::StopFailed { error } => {
                    (pb::PeerConfirmation::StopFailed, 0, error.clone())
                }
            };
            pb::stopped_group::Role::Primary(pb::StoppedPrimary {
                epoch: epoch.0,
                confirmation: c.into(),
                confirmed_seq: seq,
                detail,
            })
        }
        StoppedGroup::Secondary {
            epoch,
            last_applied,
        } => pb::stopped_group::Role::Secondary(pb::StoppedSecondary {
            epoch: epoch.0,
            last_applied_seq: last_applied.0,
        }),
    };
    pb::StoppedGroup { role: Some(role) }
}

pub fn stopped_from_wire(s: pb::StoppedGroup) -> Result<StoppedGroup, WireError> {
    Ok(
        match s.role.ok_or_else(|| missing("the stopped group's role"))? {
            pb::stopped_group::Role::Primary(p) => {
                let bad = WireError::UnknownEnum {
                    what: "the peer confirmation",
                    value: p.confirmation,
                };
                let confirmation = match pb::PeerConfirmation::try_from(p.confirmation)
                    .map_err(|_| bad.clone())?
                {
                    pb::PeerConfirmation::Confirmed => PeerConfirmation::Confirmed {
                        up_to: GroupSeq(p.confirmed_seq),
                    },
                    pb::PeerConfirmation::NotConfirmed => {
                        PeerConfirmation::NotConfirmed { link: p.detail }
                    }
                    pb::PeerConfirmation::Fenced => PeerConfirmation::Fenced,
                    pb::PeerConfirmation::StopFailed => {
                        PeerConfirmation::StopFailed { error: p.detail }
                    }
                    pb::PeerConfirmation::Unspecified => return Err(bad),
                };
                StoppedGroup::Primary {
                    epoch: Epoch(p.epoch),
                    confirmation,
                }
            }
            pb::stopped_group::Role::Secondary(s) => StoppedGroup::Secondary {
                epoch: Epoch(s.epoch),
                last_applied: GroupSeq(s.last_applied_seq),
            },
        },
    )
}

/// The message reporting how command `id` went.
pub fn outcome_to_wire(id: CommandId, e: &Executed) -> pb::CommandOutcome {
    let r = match e {
        Executed::Failed { failure } => PbResult::Failed(pb::CommandFailed {
            kind: failure_kind_to_wire(failure.kind).into(),
            message: failure.message.clone(),
        }),
        Executed::Done { outcome } => done_to_wire(outcome),
    };
    pb::CommandOutcome {
        id: id.0,
        result: Some(r),
    }
}

pub fn failure_kind_to_wire(k: FailureKind) -> pb::FailureKind {
    match k {
        FailureKind::Failed => pb::FailureKind::Failed,
        FailureKind::Interrupted => pb::FailureKind::Interrupted,
        FailureKind::Unsupported => pb::FailureKind::Unsupported,
    }
}

pub fn failure_kind_from_wire(v: i32) -> Result<FailureKind, WireError> {
    let bad = WireError::UnknownEnum {
        what: "the failure kind",
        value: v,
    };
    match pb::FailureKind::try_from(v).map_err(|_| bad.clone())? {
        pb::FailureKind::Failed => Ok(FailureKind::Failed),
        pb::FailureKind::Interrupted => Ok(FailureKind::Interrupted),
        pb::FailureKind::Unsupported => Ok(FailureKind::Unsupported),
        pb::FailureKind::Unspecified => Err(bad),
    }
}

pub fn served_to_wire(s: &Served) -> pb::Served {
    pb::Served {
        app: s.app.to_string(),
        role: role_to_wire(s.role).into(),
        epoch: s.epoch.0,
        endpoint: s.endpoint.clone(),
        already: s.already,
        promoted: s.promoted,
        peer: s.peer.clone(),
        replaced: s.replaced.as_ref().map(stopped_to_wire),
    }
}

pub fn served_from_wire(s: pb::Served) -> Result<Served, WireError> {
    Ok(Served {
        app: app_id(s.app)?,
        role: role_from_wire(s.role)?,
        epoch: Epoch(s.epoch),
        endpoint: s.endpoint,
        already: s.already,
        promoted: s.promoted,
        peer: s.peer,
        replaced: s.replaced.map(stopped_from_wire).transpose()?,
    })
}

/// The result message of an outcome (a command that succeeded).
fn done_to_wire(outcome: &CommandOutcome) -> PbResult {
    let vm = |v: &ids::VmId| pb::VmTarget { vm: v.to_string() };
    match outcome {
        CommandOutcome::Defined {
            domain,
            domain_type,
            disks,
        } => PbResult::Defined(pb::Defined {
            domain: domain.clone(),
            domain_type: domain_type.clone(),
            disks: *disks,
        }),
        CommandOutcome::Started { domain, state } => PbResult::Started(pb::Started {
            domain: domain.clone(),
            state: vm_state_to_wire(*state).into(),
        }),
        CommandOutcome::ShutDown {
            vm,
            destroyed_after_s,
        } => PbResult::ShutDown(pb::ShutDown {
            vm: vm.to_string(),
            destroyed_after_s: *destroyed_after_s,
        }),
        CommandOutcome::Destroyed { vm: v } => PbResult::Destroyed(vm(v)),
        CommandOutcome::Undefined { vm: v } => PbResult::Undefined(vm(v)),
        CommandOutcome::Suspended { vm: v } => PbResult::Suspended(vm(v)),
        CommandOutcome::Resumed { vm: v } => PbResult::Resumed(vm(v)),
        CommandOutcome::Probed {
            domain,
            marker,
            after_ms,
        } => PbResult::Probed(pb::Probed {
            domain: domain.clone(),
            marker: marker.clone(),
            after_ms: *after_ms,
        }),
        CommandOutcome::TcpProbed {
            vm,
            target,
            after_ms,
        } => PbResult::TcpProbed(pb::TcpProbed {
            vm: vm.to_string(),
            target: target.clone(),
            after_ms: *after_ms,
        }),
        CommandOutcome::Served(s) => PbResult::Served(served_to_wire(s)),
        CommandOutcome::Unserved { app, stopped } => PbResult::Unserved(pb::Unserved {
            app: app.to_string(),
            stopped: stopped.as_ref().map(stopped_to_wire),
        }),
        CommandOutcome::DrillSnapshotTaken {
            app,
            seq,
            volumes,
            already,
        } => PbResult::DrillSnapshot(pb::DrillSnapshotTaken {
            app: app.to_string(),
            seq: seq.0,
            volumes: *volumes,
            already: *already,
        }),
        CommandOutcome::DrillStarted {
            domain,
            state,
            domain_type,
            disks,
            network,
            isolated,
        } => PbResult::DrillStarted(pb::DrillStarted {
            domain: domain.clone(),
            state: vm_state_to_wire(*state).into(),
            domain_type: domain_type.clone(),
            disks: *disks,
            network: network.clone(),
            isolated: *isolated,
        }),
        CommandOutcome::DrillCleaned { removed } => PbResult::DrillCleaned(pb::DrillCleaned {
            removed: removed.clone(),
        }),
    }
}

/// A command outcome message without an id (an outcome recorded as a step's evidence).
pub fn command_outcome_to_wire(outcome: &CommandOutcome) -> pb::CommandOutcome {
    pb::CommandOutcome {
        id: 0,
        result: Some(done_to_wire(outcome)),
    }
}

/// The outcome a message carries; a failure is refused (evidence is what succeeded).
pub fn command_outcome_from_wire(o: pb::CommandOutcome) -> Result<CommandOutcome, WireError> {
    match outcome_from_wire(o)?.1 {
        Executed::Done { outcome } => Ok(outcome),
        Executed::Failed { .. } => Err(WireError::Invalid {
            what: "an agent's outcome",
            why: "it is a failure where only a command that succeeded belongs",
        }),
    }
}

/// The typed outcome a message reports.
pub fn outcome_from_wire(o: pb::CommandOutcome) -> Result<(CommandId, Executed), WireError> {
    let id = CommandId(o.id);
    let done = |outcome| Ok::<_, WireError>(Executed::Done { outcome });
    let e = match o.result.ok_or_else(|| missing("the command's result"))? {
        PbResult::Failed(f) => Ok(Executed::Failed {
            failure: CommandFailure {
                kind: failure_kind_from_wire(f.kind)?,
                message: f.message,
            },
        }),
        PbResult::Defined(d) => done(CommandOutcome::Defined {
            domain: d.domain,
            domain_type: d.domain_type,
            disks: d.disks,
        }),
        PbResult::Started(s) => done(CommandOutcome::Started {
            domain: s.domain,
            state: vm_state_from_wire(s.state)?,
        }),
        PbResult::ShutDown(s) => done(CommandOutcome::ShutDown {
            vm: vm_id(s.vm)?,
            destroyed_after_s: s.destroyed_after_s,
        }),
        PbResult::Destroyed(t) => done(CommandOutcome::Destroyed { vm: vm_id(t.vm)? }),
        PbResult::Undefined(t) => done(CommandOutcome::Undefined { vm: vm_id(t.vm)? }),
        PbResult::Suspended(t) => done(CommandOutcome::Suspended { vm: vm_id(t.vm)? }),
        PbResult::Resumed(t) => done(CommandOutcome::Resumed { vm: vm_id(t.vm)? }),
        PbResult::Probed(p) => done(CommandOutcome::Probed {
            domain: p.domain,
            marker: p.marker,
            after_ms: p.after_ms,
        }),
        PbResult::TcpProbed(p) => done(CommandOutcome::TcpProbed {
            vm: vm_id(p.vm)?,
            target: p.target,
            after_ms: p.after_ms,
        }),
        PbResult::Served(s) => done(CommandOutcome::Served(served_from_wire(s)?)),
        PbResult::Unserved(u) => done(CommandOutcome::Unserved {
            app: app_id(u.app)?,
            stopped: u.stopped.map(stopped_from_wire).transpose()?,
        }),
        PbResult::DrillSnapshot(d) => done(CommandOutcome::DrillSnapshotTaken {
            app: app_id(d.app)?,
            seq: GroupSeq(d.seq),
            volumes: d.volumes,
            already: d.already,
        }),
        PbResult::DrillStarted(d) => done(CommandOutcome::DrillStarted {
            domain: d.domain,
            state: vm_state_from_wire(d.state)?,
            domain_type: d.domain_type,
            disks: d.disks,
            network: d.network,
            isolated: d.isolated,
        }),
        PbResult::DrillCleaned(d) => done(CommandOutcome::DrillCleaned { removed: d.removed }),
    }?;
    Ok((id, e))
}
