//! What the cluster knows of a VM now (`VmInfo.seen`), both ways. Never: show a VM
//! whose host is down as what it last reported there.

use proto::agent::wire::{vm_state_from_wire, vm_state_to_wire};

use crate::pb::vm_info::Seen;
use crate::state::VmState;

use super::WireError;

/// What the cluster knows of a VM now, as `vm list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmReport {
    /// Its agent has never reported it.
    NotReported,
    /// The host that reported it is down: `last` is what it last reported there,
    /// which says nothing about now (its agent has fenced its VMs or is gone).
    HostDown { last: VmState },
    /// As its agent last reported.
    Reported(VmState),
}

impl VmReport {
    /// The name `vm list` shows: empty when never reported, `unknown` when its host
    /// is down, else the state's (`shut-off`).
    pub fn as_str(self) -> &'static str {
        match self {
            VmReport::NotReported => "",
            VmReport::HostDown { .. } => "unknown",
            VmReport::Reported(s) => s.as_str(),
        }
    }

    pub fn is_running(self) -> bool {
        self == VmReport::Reported(VmState::Running)
    }
}

impl std::fmt::Display for VmReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub fn vm_report_to_wire(r: VmReport) -> Option<Seen> {
    match r {
        VmReport::NotReported => None,
        VmReport::HostDown { last } => Some(Seen::HostDown(vm_state_to_wire(last).into())),
        VmReport::Reported(s) => Some(Seen::State(vm_state_to_wire(s).into())),
    }
}

pub fn vm_report_from_wire(seen: Option<Seen>) -> Result<VmReport, WireError> {
    Ok(match seen {
        None => VmReport::NotReported,
        Some(Seen::HostDown(last)) => VmReport::HostDown {
            last: vm_state_from_wire(last)?,
        },
        Some(Seen::State(s)) => VmReport::Reported(vm_state_from_wire(s)?),
    })
}

/// The name people type and read for an operator's VM action (`metrodr vm do start`);
/// `None` for an unspecified or unknown value.
pub fn vm_action_name(action: i32) -> Option<&'static str> {
    use crate::pb::VmAction as A;
    Some(match A::try_from(action).ok()? {
        A::Define => "define",
        A::Start => "start",
        A::Shutdown => "shutdown",
        A::Destroy => "destroy",
        A::Undefine => "undefine",
        A::Suspend => "suspend",
        A::Resume => "resume",
        A::Unspecified => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_report_crosses_the_wire_and_shows_its_old_name() {
        let all = [
            (VmReport::NotReported, ""),
            (
                VmReport::HostDown {
                    last: VmState::Running,
                },
                "unknown",
            ),
            (VmReport::Reported(VmState::Running), "running"),
            (VmReport::Reported(VmState::ShutOff), "shut-off"),
            (VmReport::Reported(VmState::Undefined), "undefined"),
        ];
        for (r, shown) in all {
            assert_eq!(vm_report_from_wire(vm_report_to_wire(r)).unwrap(), r);
            assert_eq!(r.to_string(), shown);
        }
        assert!(VmReport::Reported(VmState::Running).is_running());
        assert!(
            !VmReport::HostDown {
                last: VmState::Running
            }
            .is_running(),
            "a VM on a down host is not known to run"
        );
        assert!(vm_report_from_wire(Some(Seen::State(0))).is_err());
        assert!(vm_report_from_wire(Some(Seen::HostDown(42))).is_err());
    }
}
