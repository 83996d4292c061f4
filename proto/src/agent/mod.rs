//! The agent protocol in Rust: what the cluster asks an agent to do ([`AgentAction`]),
//! how it went ([`Executed`]: a typed [`CommandOutcome`] or a [`CommandFailure`]), what
//! an agent did on its own ([`AgentEvent`]), and what it reports about its VMs
//! ([`VmState`]) and its primaries' replication links ([`LinkReport`]).
//!
//! The orchestrator and the agents both use these types, so neither parses the other's
//! prose: every decision `match`es on them, and `Display` renders them for people.
//! [`wire`] converts them to and from the protobuf messages of `agent.proto`.
//!
//! The serde forms are persisted in the orchestrator's replicated state and the agent's
//! journal: renaming a variant or a field is a format change.
//!
//! Never: carry a decision in a string, or panic on a message from the wire.

mod event;
mod outcome;
pub mod wire;

use std::fmt;

use ids::{AppId, OpId, VmId};
use serde::{Deserialize, Serialize};
use topology::spec::{GroupSpec, VmSpec};

pub use event::{AgentEvent, FenceReport};
pub use outcome::{
    CommandFailure, CommandOutcome, Executed, FailureKind, PeerConfirmation, Served, StoppedGroup,
};

/// The version of the agent protocol (this file and `agent.proto`): an agent sends it
/// when it registers and a node refuses any other. 1 was the protocol that carried
/// commands and results as JSON and text; 2 is typed.
pub const PROTOCOL_VERSION: u32 = 2;

/// What an agent is asked to do. Each command has an id; the agent executes it at most
/// once (it journals the ids it has run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum AgentAction {
    /// Define (or redefine) the domain from the spec.
    Define {
        spec: VmSpec,
    },
    Start {
        vm: VmId,
    },
    /// Ask the guest to shut down; destroy it if it is still running after `timeout_s`.
    Shutdown {
        vm: VmId,
        timeout_s: u32,
    },
    Destroy {
        vm: VmId,
    },
    Undefine {
        vm: VmId,
    },
    Suspend {
        vm: VmId,
    },
    Resume {
        vm: VmId,
    },
    /// Wait until `marker` appears on the VM's serial console (since its latest
    /// start); fails after `timeout_s`. The app's serial probe (health gate).
    Probe {
        vm: VmId,
        marker: String,
        timeout_s: u32,
    },
    /// Connect to `port` of the VM until a connection is accepted; fails after
    /// `timeout_s`. At `address` when the probe names one, else at the VM's own
    /// address as its host's agent knows it. The app's tcp probe (health gate).
    TcpProbe {
        vm: VmId,
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
        timeout_s: u32,
    },
    /// Serve an app's consistency group (as primary or secondary); replaces whatever
    /// this host served of the group before.
    Serve {
        group: GroupSpec,
    },
    /// Stop serving an app's group. A primary first waits up to `grace_s` (0: the
    /// agent's default, 5 s) for its peer to confirm every write — the drain of a
    /// switchover.
    Unserve {
        app: AppId,
        #[serde(default)]
        grace_s: u32,
    },
    /// Test drill `op`: take a copy-on-write snapshot of the app's replicas (the
    /// secondary this host serves) at one sequence point and export it, with a
    /// private writable overlay, for the drill's VMs. Replication goes on.
    DrillSnapshot {
        op: OpId,
        app: AppId,
    },
    /// Test drill `op`: define and start the drill copy of a VM (`spec.drill` set) on
    /// the drill's snapshot and an isolated network. Never touches production.
    DrillStart {
        op: OpId,
        spec: VmSpec,
    },
    /// Test drill `op`: the serial probe of a drill VM.
    DrillProbe {
        op: OpId,
        vm: VmId,
        marker: String,
        timeout_s: u32,
    },
    /// Remove whatever test drill `op` made on this host (VMs, snapshots, its
    /// isolated network); idempotent.
    DrillCleanup {
        op: OpId,
    },
}

/// What a command is about. An agent runs the commands of one target in order, and
/// the commands of different targets concurrently.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommandTarget {
    /// A production VM's lifecycle.
    Vm(VmId),
    /// An app's volume group.
    Group(AppId),
    /// A serial probe of a VM: its own queue, so that a long wait does not hold up the
    /// VM's other commands.
    SerialProbe(VmId),
    /// A tcp probe of a VM's port.
    TcpProbe(VmId, u16),
    /// A test drill on this host: the cleanup runs after every start.
    Drill(OpId),
    /// A test drill's probe of one of its VMs.
    DrillProbe(OpId, VmId),
}

impl fmt::Display for CommandTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandTarget::Vm(vm) => write!(f, "{vm}"),
            CommandTarget::Group(app) => write!(f, "group:{app}"),
            CommandTarget::SerialProbe(vm) => write!(f, "probe:{vm}"),
            CommandTarget::TcpProbe(vm, port) => write!(f, "probe:{vm}:tcp:{port}"),
            CommandTarget::Drill(op) => write!(f, "drill:{}", op.0),
            CommandTarget::DrillProbe(op, vm) => write!(f, "drill:{}:probe:{vm}", op.0),
        }
    }
}

impl AgentAction {
    /// The production VM the command is about; None for the commands about a volume
    /// group or a drill copy.
    pub fn vm(&self) -> Option<&VmId> {
        match self {
            AgentAction::Define { spec } => Some(&spec.vm),
            AgentAction::Start { vm }
            | AgentAction::Shutdown { vm, .. }
            | AgentAction::Destroy { vm }
            | AgentAction::Undefine { vm }
            | AgentAction::Suspend { vm }
            | AgentAction::Resume { vm }
            | AgentAction::Probe { vm, .. }
            | AgentAction::TcpProbe { vm, .. } => Some(vm),
            // Drill commands are about drill copies, never the production VM.
            AgentAction::Serve { .. }
            | AgentAction::Unserve { .. }
            | AgentAction::DrillSnapshot { .. }
            | AgentAction::DrillStart { .. }
            | AgentAction::DrillProbe { .. }
            | AgentAction::DrillCleanup { .. } => None,
        }
    }

    /// What the command is about (its queue on the agent).
    pub fn target(&self) -> CommandTarget {
        match self {
            AgentAction::Define { spec } => CommandTarget::Vm(spec.vm.clone()),
            AgentAction::Start { vm }
            | AgentAction::Shutdown { vm, .. }
            | AgentAction::Destroy { vm }
            | AgentAction::Undefine { vm }
            | AgentAction::Suspend { vm }
            | AgentAction::Resume { vm } => CommandTarget::Vm(vm.clone()),
            AgentAction::Probe { vm, .. } => CommandTarget::SerialProbe(vm.clone()),
            AgentAction::TcpProbe { vm, port, .. } => CommandTarget::TcpProbe(vm.clone(), *port),
            AgentAction::Serve { group } => CommandTarget::Group(group.app.clone()),
            AgentAction::Unserve { app, .. } => CommandTarget::Group(app.clone()),
            AgentAction::DrillSnapshot { op, .. }
            | AgentAction::DrillStart { op, .. }
            | AgentAction::DrillCleanup { op } => CommandTarget::Drill(*op),
            AgentAction::DrillProbe { op, vm, .. } => CommandTarget::DrillProbe(*op, vm.clone()),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            AgentAction::Define { .. } => "define",
            AgentAction::Start { .. } => "start",
            AgentAction::Shutdown { .. } => "shutdown",
            AgentAction::Destroy { .. } => "destroy",
            AgentAction::Undefine { .. } => "undefine",
            AgentAction::Suspend { .. } => "suspend",
            AgentAction::Resume { .. } => "resume",
            AgentAction::Probe { .. } => "probe",
            AgentAction::TcpProbe { .. } => "tcp-probe",
            AgentAction::Serve { .. } => "serve",
            AgentAction::Unserve { .. } => "unserve",
            AgentAction::DrillSnapshot { .. } => "drill-snapshot",
            AgentAction::DrillStart { .. } => "drill-start",
            AgentAction::DrillProbe { .. } => "drill-probe",
            AgentAction::DrillCleanup { .. } => "drill-cleanup",
        }
    }
}

/// A VM's runtime state, as its host's libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    Running,
    Paused,
    ShuttingDown,
    ShutOff,
    Crashed,
    /// Not defined on its host (never defined, or undefined).
    Undefined,
    Other,
}

impl VmState {
    /// Running or paused: it holds its memory and its place on the host.
    pub fn is_active(self) -> bool {
        matches!(self, VmState::Running | VmState::Paused)
    }

    /// The kebab-case name (`shut-off`), as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting-down",
            VmState::ShutOff => "shut-off",
            VmState::Crashed => "crashed",
            VmState::Undefined => "undefined",
            VmState::Other => "other",
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the primary of a consistency group says about its replication link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkReport {
    /// Streaming with nothing outstanding to resync: the peer holds every acknowledged
    /// write (sync) or follows within its bound (async). The peer is `UpToDate`.
    InSync,
    /// Connected and copying what the peer missed: the peer is `Syncing`.
    Resyncing,
    /// Not connected; sync writes are held, so the peer misses nothing acknowledged
    /// yet: its data state does not change.
    Down,
    /// Running alone (the peer was given up on): the peer is `Outdated`.
    Alone,
}

impl fmt::Display for LinkReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkReport::InSync => "in-sync",
            LinkReport::Resyncing => "resyncing",
            LinkReport::Down => "down",
            LinkReport::Alone => "alone",
        })
    }
}

#[cfg(test)]
mod tests;
