//! Records of the replicated state (DESIGN §3): what is known about every site, host,
//! app, volume replica and operation. Plain data; the transitions live in `apply`.
//!
//! - [`step`]: the saga log's records (a step's place in its plan, its typed result);
//! - [`outcome`]: what each kind of step did, with its evidence;
//! - [`production`]: production as a test drill samples it.
//!
//! Never: depend on the state machine, or carry a decision in text.

mod outcome;
mod production;
mod step;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use topology::{AppId, HostId, ReplicationMode, SiteId, SiteRole, VmId, VolumeId};

pub use ids::{CommandId, Epoch, OpId};
pub use outcome::{AgentDid, Healthy, Moved, Promotion, StepOutcome, VmStop, VmStopped};
pub(crate) use production::join;
pub use production::{Production, ProductionChange, ReplicaSample, VmSample};
pub use proto::agent::{
    AgentAction, AgentEvent, CommandFailure, CommandOutcome, CommandTarget, Executed, LinkReport,
    VmState,
};
pub(crate) use step::cut;
pub use step::{FailureReason, Step, StepAt, StepFailure, StepKind, StepResult};

/// A site as the leader sees it.
///
/// ```text
///   Up ──(hosts stop renewing)──► Suspect ──(lease + margin)──► Down
///    ▲                               │                           │
///    └────────(renewals resume)──────┴────(site recover)─────────┘
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteState {
    Up,
    Suspect,
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    pub id: SiteId,
    pub role: SiteRole,
    pub state: SiteState,
    pub since_ms: u64,
    pub reason: String,
    /// When the site last went `Down` (the latest few), to hold a flapping site.
    #[serde(default)]
    pub downs_ms: Vec<u64>,
}

/// A hypervisor host as the leader sees it. `Unknown` until its agent registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    Unknown,
    Up,
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub id: HostId,
    pub site: SiteId,
    pub state: HostState,
    pub since_ms: u64,
    pub reason: String,
    /// What the host's agent reported when it last registered.
    #[serde(default)]
    pub inventory: Option<HostInventory>,
    /// When the host was last known alive, as the leader that declared it down
    /// estimated it (never later than the truth).
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
    /// When the agent came back (registered) after its lease ran out and it fenced
    /// its VMs, until an operation restarts what it fenced (`HostFenced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_ms: Option<u64>,
}

/// A host as its agent sees it (capacity from libvirt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInventory {
    pub vcpus: u32,
    pub memory_bytes: u64,
    /// libvirt URI and driver, e.g. `qemu:///system` (QEMU).
    pub hypervisor: String,
    /// `qemu` (TCG) or `kvm`.
    pub domain_type: String,
    pub agent_version: String,
    pub registered_ms: u64,
}

/// The kebab-case name serde gives an enum value (`UpToDate` → `up-to-date`): how
/// the CLI's tables and JSON and the metrics show record states.
pub fn name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Where a command is in its life, without its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandProgress {
    /// Waiting for the host's agent.
    Pending,
    Succeeded,
    Failed,
}

/// Where a command is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum CommandStatus {
    /// Waiting for the host's agent.
    Pending,
    Succeeded {
        outcome: CommandOutcome,
        at_ms: u64,
    },
    Failed {
        failure: CommandFailure,
        at_ms: u64,
    },
}

impl CommandStatus {
    /// The status an agent's report gives a command.
    pub fn reported(e: Executed, at_ms: u64) -> CommandStatus {
        match e {
            Executed::Done { outcome } => CommandStatus::Succeeded { outcome, at_ms },
            Executed::Failed { failure } => CommandStatus::Failed { failure, at_ms },
        }
    }

    /// The outcome, when the command succeeded.
    pub fn outcome(&self) -> Option<&CommandOutcome> {
        match self {
            CommandStatus::Succeeded { outcome, .. } => Some(outcome),
            _ => None,
        }
    }

    pub fn progress(&self) -> CommandProgress {
        match self {
            CommandStatus::Pending => CommandProgress::Pending,
            CommandStatus::Succeeded { .. } => CommandProgress::Succeeded,
            CommandStatus::Failed { .. } => CommandProgress::Failed,
        }
    }
}

impl std::fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandStatus::Pending => f.write_str("pending"),
            CommandStatus::Succeeded { outcome, .. } => write!(f, "{outcome}"),
            CommandStatus::Failed { failure, .. } => write!(f, "{failure}"),
        }
    }
}

/// Who queued a command for an agent: how a resumed step finds the commands its
/// operation issued before, and what the audit log names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Issuer {
    /// A step of an operation.
    Operation { op: OpId },
    /// The data-path controller (volume groups served where the state says).
    Controller,
    /// An operator's VM action.
    Operator { actor: String },
}

impl std::fmt::Display for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Issuer::Operation { op } => write!(f, "{op}"),
            Issuer::Controller => f.write_str("the controller"),
            Issuer::Operator { actor } => f.write_str(actor),
        }
    }
}

/// One command in a host's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCommandRecord {
    pub id: CommandId,
    pub host: HostId,
    pub action: AgentAction,
    pub issuer: Issuer,
    pub issued_ms: u64,
    pub status: CommandStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub vm: VmId,
    pub app: AppId,
    pub host: HostId,
    pub state: VmState,
    pub since_ms: u64,
    pub reason: String,
    /// Other hosts (where it ran before it moved) whose agents confirmed it is off
    /// there: each confirmation is audited once, not at every periodic report.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub confirmed_off: BTreeSet<HostId>,
}

/// What the operator wants an app to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Desired {
    Running,
    Stopped,
}

/// What an app is.
///
/// ```text
///  Stopped ──start──► Running ◄──────────────┐
///                      │   │                 │ (healthy at target)
///        (replica lost)│   └─(site lost)─► FailingOver ──(gave up)──► Failed
///                      ▼                     ▲
///                   Degraded ──(site lost)───┘      Running ──(switchover)──► Migrating ──► Running
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppState {
    Running,
    Degraded,
    FailingOver,
    Migrating,
    Stopped,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub id: AppId,
    /// The site whose replicas are primary and where the VMs run (or will run).
    pub active_site: SiteId,
    pub desired: Desired,
    pub state: AppState,
    /// Host of every VM at the active site.
    pub placement: BTreeMap<VmId, HostId>,
    /// VMs an operator stopped (shutdown, destroy, suspend, undefine) and has not
    /// started again: the reconciler leaves them as they are.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub held: BTreeSet<VmId>,
    /// It should run and has not, for longer than its RTO target: since when (set and
    /// cleared by the leader's reconciler, audited both ways).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage_since_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Primary,
    Secondary,
}

/// How good a replica's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataState {
    /// Holds every acknowledged write: may be promoted.
    UpToDate,
    /// Known to miss writes (the primary ran alone with permission): never promoted.
    Outdated,
    /// Partially written (initial sync, resync, async over its bound): never promoted.
    Inconsistent,
    /// Catching up from the primary: never promoted until it reports UpToDate.
    Syncing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub site: SiteId,
    /// The host whose agent serves this replica (topologies with `volumes = "agents"`);
    /// None: served by processes outside the cluster's control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostId>,
    pub role: Role,
    /// Epoch at which this replica last changed role.
    pub epoch: Epoch,
    pub data: DataState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: VolumeId,
    pub app: AppId,
    pub mode: ReplicationMode,
    /// Current epoch: the primary's.
    pub epoch: Epoch,
    /// One replica per production site.
    pub replicas: Vec<Replica>,
}

impl VolumeRecord {
    pub fn replica(&self, site: &SiteId) -> Option<&Replica> {
        self.replicas.iter().find(|r| &r.site == site)
    }
    pub fn primary(&self) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.role == Role::Primary)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    Failover,
    Switchover,
    Failback,
    Drill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpStatus {
    Running,
    Succeeded,
    Failed,
    Aborted,
    /// A test drill whose leader changed while it ran: a new leader does not resume
    /// it (its measurements would be wrong); it cleans the drill up and ends it so.
    Interrupted,
}

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectKind {
    /// A field is malformed.
    Invalid,
    /// Something the command names does not exist.
    NotFound,
    /// The command does not fit the current state.
    Conflict,
    /// Applying it would break a safety invariant.
    Invariant,
    /// It would change nothing (a report of what the cluster already knows): not an
    /// error for a reporter.
    Unchanged,
    /// It comes from a party the cluster has moved on from (a primary that is not the
    /// group's primary any more): the party must stop.
    Stale,
}

impl RejectKind {
    const ALL: [RejectKind; 6] = [
        RejectKind::Invalid,
        RejectKind::NotFound,
        RejectKind::Conflict,
        RejectKind::Invariant,
        RejectKind::Unchanged,
        RejectKind::Stale,
    ];

    /// The kebab-case name (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Invalid => "invalid",
            RejectKind::NotFound => "not-found",
            RejectKind::Conflict => "conflict",
            RejectKind::Invariant => "invariant",
            RejectKind::Unchanged => "unchanged",
            RejectKind::Stale => "stale",
        }
    }

    pub fn from_name(name: &str) -> Option<RejectKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One applied topology version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyRecord {
    pub version: u64,
    /// The file as the operator wrote it (comments included).
    pub text: String,
    /// SHA-256 of `text`, hex.
    pub digest: String,
    pub applied_by: String,
    pub applied_ms: u64,
    pub model: topology::Topology,
}
