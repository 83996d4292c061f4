//! Records of the replicated state (DESIGN §3): what is known about every site, host,
//! app, volume replica and operation. Plain data; the transitions live in `apply`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use topology::{AppId, HostId, ReplicationMode, SiteId, SiteRole, VmId, VolumeId};

pub use ids::{CommandId, Epoch, OpId};

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

/// What an agent is asked to do with one VM. Each command has an id; the agent
/// executes it at most once (it journals the ids it has run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum AgentAction {
    /// Define (or redefine) the domain from the spec.
    Define {
        spec: topology::spec::VmSpec,
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
        group: topology::spec::GroupSpec,
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
        op: u64,
        app: AppId,
    },
    /// Test drill `op`: define and start the drill copy of a VM (`spec.drill` set) on
    /// the drill's snapshot and an isolated network. Never touches production.
    DrillStart {
        op: u64,
        spec: topology::spec::VmSpec,
    },
    /// Test drill `op`: the serial probe of a drill VM.
    DrillProbe {
        op: u64,
        vm: VmId,
        marker: String,
        timeout_s: u32,
    },
    /// Remove whatever test drill `op` made on this host (VMs, snapshots, its
    /// isolated network); idempotent. Reports what is left of the host's production.
    DrillCleanup {
        op: u64,
    },
}

impl AgentAction {
    /// The VM the command is about; None for the commands about a volume group.
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

    /// What the command is about: a VM's id, or `group:APP`. An agent runs the
    /// commands of one target in order.
    pub fn target(&self) -> String {
        match self {
            AgentAction::Serve { group } => format!("group:{}", group.app),
            AgentAction::Unserve { app, .. } => format!("group:{app}"),
            // Its own queue: a long wait must not hold up the VM's other commands.
            AgentAction::Probe { vm, .. } => format!("probe:{vm}"),
            AgentAction::TcpProbe { vm, port, .. } => format!("probe:{vm}:tcp:{port}"),
            // One queue per drill and host: the cleanup runs after every start.
            AgentAction::DrillSnapshot { op, .. }
            | AgentAction::DrillStart { op, .. }
            | AgentAction::DrillCleanup { op } => format!("drill:{op}"),
            AgentAction::DrillProbe { op, vm, .. } => format!("drill:{op}:probe:{vm}"),
            other => other.vm().map(ToString::to_string).unwrap_or_default(),
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum CommandStatus {
    /// Waiting for the host's agent.
    Pending,
    Succeeded {
        message: String,
        at_ms: u64,
    },
    Failed {
        message: String,
        at_ms: u64,
    },
}

/// One command in a host's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCommandRecord {
    pub id: u64,
    pub host: HostId,
    pub action: AgentAction,
    pub issued_by: String,
    pub issued_ms: u64,
    pub status: CommandStatus,
}

/// A VM's runtime state, as its agent last reported it.
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub vm: VmId,
    pub app: AppId,
    pub host: HostId,
    pub state: VmState,
    pub since_ms: u64,
    pub reason: String,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepResult {
    Ok,
    Failed(String),
}

/// One step of an operation's saga log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub app: Option<AppId>,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub result: Option<StepResult>,
    /// What the step did (epochs promoted, hosts chosen, …): the record's evidence.
    #[serde(default)]
    pub detail: String,
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
