//! How a command went: a typed outcome per kind of command, or a typed failure. The
//! cluster decides on these (a switchover refuses to promote unless the old primary's
//! peer confirmed every write; the controller points a primary at the endpoint a
//! secondary reported); `Display` renders them for the audit log and operators.

use std::fmt;

use ids::{AppId, Epoch, GroupSeq, VmId};
use serde::{Deserialize, Serialize};
use topology::spec::GroupRole;

use super::VmState;

/// The result of one command: done with an outcome, or failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Executed {
    Done { outcome: CommandOutcome },
    Failed { failure: CommandFailure },
}

impl Executed {
    pub fn done(outcome: CommandOutcome) -> Executed {
        Executed::Done { outcome }
    }

    pub fn failed(kind: FailureKind, message: impl Into<String>) -> Executed {
        Executed::Failed {
            failure: CommandFailure {
                kind,
                message: message.into(),
            },
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Executed::Done { .. })
    }
}

impl fmt::Display for Executed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Executed::Done { outcome } => write!(f, "{outcome}"),
            Executed::Failed { failure } => write!(f, "{failure}"),
        }
    }
}

/// Why a command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The action was tried and failed.
    Failed,
    /// The agent stopped while running it: its outcome is unknown, and it is not run
    /// again (see the VM's state).
    Interrupted,
    /// This agent cannot run such a command.
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandFailure {
    pub kind: FailureKind,
    /// What went wrong, for people.
    pub message: String,
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FailureKind::Failed => write!(f, "{}", self.message),
            FailureKind::Interrupted => write!(f, "interrupted: {}", self.message),
            FailureKind::Unsupported => write!(f, "not supported by this agent: {}", self.message),
        }
    }
}

/// What a command that succeeded did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum CommandOutcome {
    Defined {
        domain: String,
        domain_type: String,
        disks: u32,
    },
    Started {
        domain: String,
        state: VmState,
    },
    ShutDown {
        vm: VmId,
        /// Set when the guest did not stop in time and was destroyed.
        destroyed_after_s: Option<u32>,
    },
    Destroyed {
        vm: VmId,
    },
    Undefined {
        vm: VmId,
    },
    Suspended {
        vm: VmId,
    },
    Resumed {
        vm: VmId,
    },
    /// A serial probe (of a production VM or a drill copy) saw its marker.
    Probed {
        domain: String,
        marker: String,
        after_ms: u64,
    },
    /// A tcp probe's connection was accepted.
    TcpProbed {
        vm: VmId,
        /// What accepted, for people (address, port, how it was reached).
        target: String,
        after_ms: u64,
    },
    Served(Served),
    Unserved {
        app: AppId,
        /// None: nothing was served here.
        stopped: Option<StoppedGroup>,
    },
    DrillSnapshotTaken {
        app: AppId,
        /// The sequence point of the copy.
        seq: GroupSeq,
        volumes: u32,
        /// Taken earlier by the same drill.
        already: bool,
    },
    DrillStarted {
        domain: String,
        state: VmState,
        domain_type: String,
        disks: u32,
        /// The network the copy joined; None: it has no network interface.
        network: Option<String>,
        /// What the agent verified of that network: no forward, no host address.
        isolated: bool,
    },
    DrillCleaned {
        /// Domains, snapshots and networks removed.
        removed: Vec<String>,
    },
}

/// A volume group served here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub app: AppId,
    pub role: GroupRole,
    pub epoch: Epoch,
    /// `host:port`: the group's replication endpoint on this host (a secondary listens
    /// on it; kept for the group's life).
    pub endpoint: String,
    /// It was served so already: nothing changed.
    pub already: bool,
    /// Primary: the local replica was promoted to `epoch` first.
    pub promoted: bool,
    /// Primary: the secondary it streams to (None: the other site is lost).
    pub peer: Option<String>,
    /// What it replaced, as that stopped.
    pub replaced: Option<StoppedGroup>,
}

/// A group that stopped being served, and what it had when it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "kebab-case")]
pub enum StoppedGroup {
    Primary {
        epoch: Epoch,
        confirmation: PeerConfirmation,
    },
    Secondary {
        epoch: Epoch,
        last_applied: GroupSeq,
    },
}

/// What a primary knew of its peer when it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "peer", rename_all = "kebab-case")]
pub enum PeerConfirmation {
    /// The peer confirmed every write up to `up_to`: it holds every acknowledged write.
    Confirmed { up_to: GroupSeq },
    /// The peer may miss acknowledged writes: the link was not in sync (`link`).
    NotConfirmed { link: String },
    /// The primary had been fenced: it acknowledged nothing since.
    Fenced,
    /// Stopping failed; nothing is known about the peer.
    StopFailed { error: String },
}

impl StoppedGroup {
    /// A primary whose peer holds every write it acknowledged (a secondary has nothing
    /// to confirm).
    pub fn peer_has_everything(&self) -> bool {
        match self {
            StoppedGroup::Primary { confirmation, .. } => {
                matches!(confirmation, PeerConfirmation::Confirmed { .. })
            }
            StoppedGroup::Secondary { .. } => true,
        }
    }
}

impl fmt::Display for StoppedGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoppedGroup::Primary {
                epoch,
                confirmation,
            } => match confirmation {
                PeerConfirmation::Confirmed { up_to } => write!(
                    f,
                    "stopped the primary at epoch {epoch} (the peer confirmed every write up to seq {up_to})"
                ),
                PeerConfirmation::NotConfirmed { link } => write!(
                    f,
                    "stopped the primary at epoch {epoch} (the peer did not confirm every write: {link})"
                ),
                PeerConfirmation::Fenced => {
                    write!(f, "stopped the fenced primary at epoch {epoch}")
                }
                PeerConfirmation::StopFailed { error } => {
                    write!(f, "stopped the primary at epoch {epoch}: {error}")
                }
            },
            StoppedGroup::Secondary {
                epoch,
                last_applied,
            } => write!(
                f,
                "stopped the secondary (epoch {epoch}, last applied seq {last_applied})"
            ),
        }
    }
}

fn role_name(r: GroupRole) -> &'static str {
    match r {
        GroupRole::Primary => "primary",
        GroupRole::Secondary => "secondary",
    }
}

impl fmt::Display for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.already {
            return write!(
                f,
                "already serving {} as {} at epoch {}; endpoint {}",
                self.app,
                role_name(self.role),
                self.epoch,
                self.endpoint
            );
        }
        write!(
            f,
            "serving {} as {} at epoch {}{}",
            self.app,
            role_name(self.role),
            self.epoch,
            if self.promoted { " (promoted)" } else { "" }
        )?;
        if self.role == GroupRole::Primary {
            write!(
                f,
                "; peer {}",
                self.peer
                    .as_deref()
                    .unwrap_or("none (the other site is lost)")
            )?;
        }
        if let Some(r) = &self.replaced {
            write!(f, " (replaced: {r})")?;
        }
        write!(f, "; endpoint {}", self.endpoint)
    }
}

impl fmt::Display for CommandOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandOutcome::Defined {
                domain,
                domain_type,
                disks,
            } => write!(f, "defined {domain} ({domain_type}, {disks} disk(s))"),
            CommandOutcome::Started { domain, state } => write!(f, "{domain}: {state}"),
            CommandOutcome::ShutDown {
                vm,
                destroyed_after_s: None,
            } => write!(f, "{vm} shut down gracefully"),
            CommandOutcome::ShutDown {
                vm,
                destroyed_after_s: Some(s),
            } => write!(f, "{vm} did not stop within {s} s; destroyed"),
            CommandOutcome::Destroyed { vm } => write!(f, "{vm} destroyed"),
            CommandOutcome::Undefined { vm } => write!(f, "{vm} undefined"),
            CommandOutcome::Suspended { vm } => write!(f, "{vm} paused"),
            CommandOutcome::Resumed { vm } => write!(f, "{vm} resumed"),
            CommandOutcome::Probed {
                domain,
                marker,
                after_ms,
            } => write!(
                f,
                "{domain}: {marker:?} on the serial console {after_ms} ms after the probe began"
            ),
            CommandOutcome::TcpProbed {
                vm,
                target,
                after_ms,
            } => write!(
                f,
                "{vm}: tcp {target} accepted a connection {after_ms} ms after the probe began"
            ),
            CommandOutcome::Served(s) => write!(f, "{s}"),
            CommandOutcome::Unserved { app, stopped: None } => {
                write!(f, "{app}: nothing served here")
            }
            CommandOutcome::Unserved {
                app,
                stopped: Some(s),
            } => write!(f, "{app}: {s}"),
            CommandOutcome::DrillSnapshotTaken {
                app,
                seq,
                volumes,
                already,
            } => write!(
                f,
                "snapshot of {app} at sequence {seq} ({volumes} volume(s)){}",
                if *already {
                    ", taken earlier by this drill"
                } else {
                    " with a private overlay; replication goes on"
                }
            ),
            CommandOutcome::DrillStarted {
                domain,
                state,
                domain_type,
                disks,
                network,
                isolated,
            } => {
                write!(
                    f,
                    "{domain} {state} ({domain_type}, {disks} disk(s) on the drill snapshot; "
                )?;
                match (network, isolated) {
                    (None, _) => write!(f, "no network interface)"),
                    (Some(n), true) => {
                        write!(f, "isolated network {n} (no forward, no host address))")
                    }
                    (Some(n), false) => write!(f, "network {n}, NOT verified isolated)"),
                }
            }
            CommandOutcome::DrillCleaned { removed } if removed.is_empty() => {
                write!(f, "nothing of the drill was left here")
            }
            CommandOutcome::DrillCleaned { removed } => write!(f, "{}", removed.join("; ")),
        }
    }
}
