//! The commands the cluster commits ([`Command`], each in a [`Request`] with who
//! proposed it and when), what applying one yields ([`Outcome`], [`Response`]) or why it
//! was refused ([`Rejection`]), and the field checks that need no state.
//!
//! Never: read the state here (the transitions are in the other modules of `state`).

use serde::{Deserialize, Serialize};
use topology::{AppId, HostId, SiteId, Topology, VmId, VolumeId};

use super::{
    AgentAction, AgentEvent, AppState, CommandId, CommandResult, DataState, Epoch, HostInventory,
    HostState, Issuer, LinkReport, MAX_ACTOR_LEN, MAX_REASON_LEN, OpId, OpKind, OpStatus,
    RejectKind, SiteState, StepAt, StepResult, VmState,
};

/// A command with who proposed it and when (the proposer's clock, so that apply is
/// deterministic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub actor: String,
    pub at_ms: u64,
    pub command: Command,
}

/// Every state transition the cluster can commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// A new topology version. `model` is the validated parse of `text` and
    /// `placements` the proposer's placement of new VMs: apply checks them but does not
    /// recompute them, so nodes running different code versions cannot diverge.
    ApplyTopology {
        text: String,
        model: Box<Topology>,
        placements: Vec<(VmId, HostId)>,
    },
    SetSiteState {
        site: SiteId,
        state: SiteState,
        reason: String,
    },
    SetHostState {
        host: HostId,
        state: HostState,
        reason: String,
        /// When the host was last known alive (the leader's estimate, for records).
        #[serde(default)]
        last_seen_ms: Option<u64>,
    },
    SetAppState {
        app: AppId,
        state: AppState,
        reason: String,
    },
    PlaceVm {
        app: AppId,
        vm: VmId,
        host: HostId,
    },
    /// Make the replica at `site` primary at `epoch` (which must be the volume's epoch
    /// + 1); any other primary becomes secondary with data state `demoted`.
    PromoteReplica {
        volume: VolumeId,
        site: SiteId,
        epoch: Epoch,
        demoted: DataState,
    },
    SetReplicaData {
        volume: VolumeId,
        site: SiteId,
        data: DataState,
    },
    StartOperation {
        kind: OpKind,
        apps: Vec<AppId>,
        note: String,
    },
    /// Start the step of `op`'s plan at `at` (its kind comes from the plan). Starting
    /// a step that is started and unfinished gives its index again (a retried commit).
    StartStep {
        op: OpId,
        at: StepAt,
    },
    /// How step `index` (the outcome of its `StartStep`) of `op` ended.
    FinishStep {
        op: OpId,
        index: u32,
        result: StepResult,
    },
    FinishOperation {
        op: OpId,
        status: OpStatus,
    },
    /// Start executing a plan (the planner's output): an operation that owns the apps
    /// it moves until it finishes. Refused when another running operation owns one.
    BeginPlan {
        plan: Box<crate::plan::Plan>,
        lost_ms: Option<u64>,
    },
    /// An operator approves the apps of an operation that wait for approval (all of
    /// them when `apps` is empty).
    ApproveOperation {
        op: OpId,
        apps: Vec<AppId>,
    },
    /// Move an app to `to` in one step: promote every volume of its consistency group
    /// that is not primary there yet (each at exactly the epoch given, its current + 1;
    /// the old primary becomes secondary with data state `demoted`), make `to` the
    /// active site and record where its VMs run. All or nothing.
    MoveApp {
        op: OpId,
        app: AppId,
        to: SiteId,
        epochs: Vec<(VolumeId, Epoch)>,
        demoted: DataState,
        placement: Vec<(VmId, HostId)>,
    },
    /// The primary of `app`'s consistency group at `site` (at `epoch`) reports its link;
    /// the other replicas' data states follow. Refused from a stale primary.
    ReplicaStatus {
        app: AppId,
        site: SiteId,
        epoch: Epoch,
        link: LinkReport,
        detail: String,
    },
    /// An operator acknowledges that a lost site is back (its orchestrator node and
    /// hosts are up again): its flap history is cleared, so a later loss fails over
    /// automatically again.
    RecoverSite {
        site: SiteId,
    },
    /// An operator's note in the audit log.
    Note {
        text: String,
    },
    /// The orchestrator membership changed (initialization, a node added or removed),
    /// for the audit log. Changes nothing else (membership is Raft's own).
    Membership {
        change: String,
    },
    /// A call (or a connection) the cluster refused, for the audit log: `call` names
    /// it, `reason` says why; `security`: refused for who the caller is (audited as
    /// `security.refused`), else for what it asked (`call.refused`). Changes nothing
    /// else.
    Refused {
        call: String,
        reason: String,
        #[serde(default)]
        security: bool,
    },
    /// A host's agent registered (host goes Up, inventory recorded).
    RegisterHost {
        host: HostId,
        inventory: HostInventory,
        /// The agent fenced its VMs (its lease ran out) since it last registered.
        #[serde(default)]
        fenced: bool,
    },
    /// Queue commands for agents; the outcome lists their ids.
    IssueAgentCommands {
        issuer: Issuer,
        commands: Vec<(HostId, AgentAction)>,
    },
    /// An agent reports how commands went.
    RecordCommandResults {
        host: HostId,
        results: Vec<CommandResult>,
    },
    /// An agent reports VM states that changed.
    SetVmStates {
        host: HostId,
        states: Vec<(VmId, VmState)>,
        reason: String,
    },
    /// An agent lists every VM of its host (at registration): a VM the cluster
    /// records on this host that the list leaves out is gone there (`undefined`), and
    /// the correction is audited like any change.
    ReportAllVms {
        host: HostId,
        states: Vec<(VmId, VmState)>,
        reason: String,
    },
    /// The reconciler's verdict on an app that should run: not running for longer
    /// than its RTO target since `since_ms` (Some), or running again (None).
    SetAppOutage {
        app: AppId,
        since_ms: Option<u64>,
    },
    /// Something an agent did on its own (self-fencing), for the audit log.
    AgentEvent {
        host: HostId,
        event: AgentEvent,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub kind: RejectKind,
    pub reason: String,
}

/// What applying a command yields: its audit event and outcome, or why not.
pub(super) type Applied = Result<(super::AuditEvent, Outcome), Rejection>;

pub(super) fn reject<T>(kind: RejectKind, reason: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection {
        kind,
        reason: reason.into(),
    })
}

/// What a successful command produced, besides its audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Done,
    TopologyVersion(u64),
    Operation(OpId),
    Step(u32),
    Epoch(Epoch),
    Commands(Vec<CommandId>),
}

/// The reply to a committed request (Raft's `R`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Applied {
        audit_seq: u64,
        outcome: Outcome,
    },
    Rejected(Rejection),
    /// A Raft-internal entry (blank or membership) with nothing to report.
    Internal,
}

pub(super) fn not_found(what: &str, id: &str) -> Rejection {
    Rejection {
        kind: RejectKind::NotFound,
        reason: format!("no {what} {id:?}"),
    }
}

/// Field-level checks that need no state.
pub(super) fn check_request(req: &Request) -> Result<(), Rejection> {
    if req.actor.trim().is_empty() {
        return reject(RejectKind::Invalid, "the request names no actor");
    }
    if req.actor.len() > MAX_ACTOR_LEN {
        return reject(
            RejectKind::Invalid,
            format!("the actor name is longer than {MAX_ACTOR_LEN} bytes"),
        );
    }
    let text = match &req.command {
        Command::SetSiteState { reason, .. }
        | Command::SetHostState { reason, .. }
        | Command::SetAppState { reason, .. } => Some(reason),
        Command::StartOperation { note, .. } => Some(note),
        Command::FinishStep {
            result: StepResult::Failed { failure },
            ..
        } => Some(&failure.message),
        Command::ReplicaStatus { detail, .. } => Some(detail),
        Command::Note { text } => Some(text),
        Command::Refused { reason, .. } => Some(reason),
        Command::Membership { change } => Some(change),
        Command::SetVmStates { reason, .. } | Command::ReportAllVms { reason, .. } => Some(reason),
        _ => None,
    };
    if text.is_some_and(|t| t.len() > MAX_REASON_LEN) {
        return reject(
            RejectKind::Invalid,
            format!("a text field is longer than {MAX_REASON_LEN} bytes"),
        );
    }
    Ok(())
}
