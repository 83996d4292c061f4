//! Agent events on the wire (`AgentEvent`).

use ids::VolumeId;

use super::{WireError, checked, missing};
use crate::agent::{AgentEvent, FenceReport};
use crate::pb;
use crate::pb::agent_event::Event as PbEvent;

/// The message for event `seq` of the agent's journal.
pub fn event_to_wire(seq: u64, e: &AgentEvent) -> pb::AgentEvent {
    let event = match e {
        AgentEvent::Fenced(r) => PbEvent::Fenced(pb::Fenced {
            took_ms: r.took_ms,
            paused: r.paused,
            stopped: r.stopped.clone(),
            not_stopped: r.not_stopped.clone(),
            io: r.io.clone(),
            io_failed: r.io_failed,
            error: r.error.clone(),
        }),
        AgentEvent::LeaseRegained => PbEvent::LeaseRegained(pb::LeaseRegained {}),
        AgentEvent::LibvirtUnreachable { error } => {
            PbEvent::LibvirtUnreachable(pb::LibvirtUnreachable {
                error: error.clone(),
            })
        }
        AgentEvent::LibvirtReachable { uri } => {
            PbEvent::LibvirtReachable(pb::LibvirtReachable { uri: uri.clone() })
        }
        AgentEvent::ClockRate { rate_permille } => PbEvent::ClockRate(pb::ClockRate {
            rate: f64::from(*rate_permille) / 1000.0,
        }),
        AgentEvent::DiskFault {
            volume,
            failed,
            detail,
        } => PbEvent::DiskFault(pb::DiskFault {
            volume: volume.to_string(),
            failed: *failed,
            detail: detail.clone(),
        }),
    };
    pb::AgentEvent {
        seq,
        event: Some(event),
    }
}

/// The typed event a message carries, with its journal sequence number.
pub fn event_from_wire(e: pb::AgentEvent) -> Result<(u64, AgentEvent), WireError> {
    let event = match e.event.ok_or_else(|| missing("the agent event"))? {
        PbEvent::Fenced(f) => AgentEvent::Fenced(FenceReport {
            took_ms: f.took_ms,
            paused: f.paused,
            stopped: f.stopped,
            not_stopped: f.not_stopped,
            io: f.io,
            io_failed: f.io_failed,
            error: f.error,
        }),
        PbEvent::LeaseRegained(_) => AgentEvent::LeaseRegained,
        PbEvent::LibvirtUnreachable(u) => AgentEvent::LibvirtUnreachable { error: u.error },
        PbEvent::LibvirtReachable(r) => AgentEvent::LibvirtReachable { uri: r.uri },
        PbEvent::ClockRate(c) => {
            let permille = c.rate * 1000.0;
            if !permille.is_finite() || !(0.0..=f64::from(u32::MAX)).contains(&permille) {
                return Err(WireError::OutOfRange {
                    what: "the clock rate",
                    value: 0,
                });
            }
            AgentEvent::ClockRate {
                rate_permille: permille.round() as u32,
            }
        }
        PbEvent::DiskFault(d) => AgentEvent::DiskFault {
            volume: checked("volume", d.volume, VolumeId::new)?,
            failed: d.failed,
            detail: d.detail,
        },
    };
    Ok((e.seq, event))
}
