//! What an agent did on its own, without a command: fencing itself when its lease ran
//! out, regaining a lease, losing and finding libvirt, and the lab's faults it noticed.
//! Reported to the cluster for the audit log.

use std::fmt;

use ids::VolumeId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum AgentEvent {
    /// Its lease ran out: it stopped guest I/O and stopped (or paused) its VMs.
    Fenced(FenceReport),
    /// It has a lease again; it restarted nothing (the cluster decides).
    LeaseRegained,
    LibvirtUnreachable {
        error: String,
    },
    LibvirtReachable {
        uri: String,
    },
    /// The lab's clock fault: the lease clock runs at `rate_permille` / 1000 x real time.
    ClockRate {
        rate_permille: u32,
    },
    /// The lab's disk fault on a volume served here changed.
    DiskFault {
        volume: VolumeId,
        /// Failed now (else repaired).
        failed: bool,
        detail: String,
    },
}

/// What a fence did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceReport {
    pub took_ms: u64,
    /// `fence_action = "pause"`: the VMs were paused (else destroyed).
    pub paused: bool,
    /// The VMs stopped, each with how (for people).
    pub stopped: Vec<String>,
    /// The VMs it could not stop, each with why.
    pub not_stopped: Vec<String>,
    /// What stopping guest I/O did (or why it failed, with `io_failed`).
    pub io: String,
    pub io_failed: bool,
    /// Set when it could not even list or stop its VMs: nothing above is known then.
    pub error: Option<String>,
}

impl fmt::Display for AgentEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentEvent::Fenced(r) => write!(f, "{r}"),
            AgentEvent::LeaseRegained => {
                write!(f, "lease regained; nothing restarted by the agent")
            }
            AgentEvent::LibvirtUnreachable { error } => write!(f, "libvirt unreachable: {error}"),
            AgentEvent::LibvirtReachable { uri } => {
                write!(f, "libvirt at {uri} is reachable again")
            }
            AgentEvent::ClockRate { rate_permille } => write!(
                f,
                "the lease clock runs at {} x real time (lab clock fault)",
                f64::from(*rate_permille) / 1000.0
            ),
            AgentEvent::DiskFault {
                volume,
                failed,
                detail,
            } => write!(
                f,
                "the disk under {volume} {}: {detail}",
                if *failed { "failed" } else { "was repaired" }
            ),
        }
    }
}

impl fmt::Display for FenceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.error {
            return write!(
                f,
                "lease expired: could not list or stop the VMs to fence them: {e}"
            );
        }
        write!(
            f,
            "lease expired: fenced in {} ms; {} [{}]",
            self.took_ms,
            if self.paused { "paused" } else { "destroyed" },
            self.stopped.join(", ")
        )?;
        if !self.not_stopped.is_empty() {
            write!(f, "; FAILED to stop [{}]", self.not_stopped.join("; "))?;
        }
        if self.io_failed {
            write!(f, "; guest I/O: FAILED to stop: {}", self.io)
        } else {
            write!(f, "; guest I/O: {}", self.io)
        }
    }
}
