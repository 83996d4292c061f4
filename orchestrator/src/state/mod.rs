//! The replicated state machine (DESIGN §3): pure, deterministic, no I/O.
//!
//! Every change to the cluster's decisions is a [`Request`] committed through Raft and
//! applied here, on every node, in log order. [`ClusterState::apply`] either applies a
//! command completely — checking the safety invariants on what it touched and appending
//! a hash-chained audit entry — or rejects it and leaves no trace. Apply never reads a
//! clock or anything else outside the request, so all nodes reach the same state.
//!
//! Never: panic on any request (requests arrive over the network), or let an epoch go
//! down, a second primary appear, or a non-UpToDate replica become primary.

mod agents;
mod app_status;
mod apply_topology;
pub mod audit;
mod event;
mod invariants;
mod operations;
mod queries;
pub mod table;

use serde::{Deserialize, Serialize};
use topology::{AppId, HostId, SiteId, Topology, VmId, VolumeId};

pub use crate::records::*;
pub use agents::{CommandResult, MAX_BATCH};
pub use app_status::{AppHealth, AppReason, AppStatus, VmSeen};
pub use audit::{AuditEntry, Verification};
pub use event::{AuditEvent, MAX_LISTED, VmStateChange};
pub use invariants::Violation;
pub use operations::Operation;
pub use queries::served_endpoint;
use table::{DynTable, Table};

/// Limits on request fields; bigger values are refused (they would bloat every node's
/// state and the audit log).
pub const MAX_ACTOR_LEN: usize = 256;
pub const MAX_REASON_LEN: usize = 4096;
/// How many past losses a site record keeps (for flap damping).
pub const MAX_SITE_DOWNS: usize = 10;
pub const MAX_TOPOLOGY_BYTES: usize = topology::MAX_FILE_BYTES;

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
    StartStep {
        op: OpId,
        name: String,
        app: Option<AppId>,
    },
    FinishStep {
        op: OpId,
        index: u32,
        result: StepResult,
        #[serde(default)]
        detail: String,
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
    /// Something an agent did on its own (self-fencing), for the audit log.
    AgentEvent {
        host: HostId,
        event: AgentEvent,
    },
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub kind: RejectKind,
    pub reason: String,
}

/// What applying a command yields: its audit event and outcome, or why not.
type Applied = Result<(AuditEvent, Outcome), Rejection>;

fn reject<T>(kind: RejectKind, reason: impl Into<String>) -> Result<T, Rejection> {
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

/// The whole replicated state. Each field is a table persisted row by row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub topologies: Table<u64, TopologyRecord>,
    pub sites: Table<SiteId, SiteRecord>,
    pub hosts: Table<HostId, HostRecord>,
    pub apps: Table<AppId, AppRecord>,
    pub volumes: Table<VolumeId, VolumeRecord>,
    /// Runtime state of every VM an agent reported.
    pub vms: Table<VmId, VmRecord>,
    /// Commands to agents (the per-host queues), with their results.
    pub commands: Table<u64, AgentCommandRecord>,
    pub operations: Table<u64, Operation>,
    /// Every operation's steps, keyed by [`step_key`].
    pub op_steps: Table<u64, Step>,
    pub audit: Table<u64, AuditEntry>,
}

/// Row key of step `index` of operation `op` (2^24 steps per operation).
pub fn step_key(op: OpId, index: u32) -> u64 {
    (op.0 << 24) | u64::from(index & 0x00ff_ffff)
}

/// Most steps one operation may record.
pub const MAX_STEPS: u32 = 1 << 24;

/// One changed row, ready to persist: table name, encoded key, JSON value (None = delete).
pub type RowWrite = (&'static str, String, Option<Vec<u8>>);

impl ClusterState {
    /// The current topology, if any has been applied.
    pub fn topology(&self) -> Option<&TopologyRecord> {
        self.topologies.last().map(|(_, t)| t)
    }

    /// Digest of the last audit entry (the chain head).
    pub fn audit_head(&self) -> String {
        self.audit
            .last()
            .map_or_else(|| audit::GENESIS.to_string(), |(_, e)| e.digest.clone())
    }

    pub fn verify_audit(&self) -> Verification {
        audit::verify(self.audit.values())
    }

    /// A new state with the topology `text` applied at its planned placement (what
    /// `cluster init` does; also the start of many tests). Errors say why.
    pub fn from_topology(text: &str) -> Result<ClusterState, String> {
        let report = topology::check_str(text);
        let model = report
            .topology
            .ok_or_else(|| format!("invalid topology ({} problems)", report.diagnostics.len()))?;
        let placements = topology::plan::plan(&model)
            .placements
            .iter()
            .map(|p| (p.vm.clone(), p.host.clone()))
            .collect();
        let mut s = ClusterState::default();
        match s.apply(&Request {
            actor: "metrodr".into(),
            at_ms: 0,
            command: Command::ApplyTopology {
                text: text.into(),
                model: Box::new(model),
                placements,
            },
        }) {
            Response::Applied { .. } => Ok(s),
            Response::Rejected(r) => Err(r.reason),
            other => Err(format!("{other:?}")),
        }
    }

    /// Apply one committed request. On rejection nothing changes.
    pub fn apply(&mut self, req: &Request) -> Response {
        let result = check_request(req)
            .and_then(|()| self.apply_command(req))
            .and_then(|applied| match self.check_touched() {
                Ok(()) => Ok(applied),
                Err(v) => reject(RejectKind::Invariant, v.to_string()),
            });
        match result {
            Ok((event, outcome)) => {
                let seq = self.append_audit(req, event);
                self.seal();
                Response::Applied {
                    audit_seq: seq,
                    outcome,
                }
            }
            Err(r) => {
                self.rollback();
                Response::Rejected(r)
            }
        }
    }

    fn append_audit(&mut self, req: &Request, event: AuditEvent) -> u64 {
        let seq = self.audit.last().map_or(1, |(s, _)| s + 1);
        let entry = AuditEntry::new(seq, req.at_ms, &req.actor, event, &self.audit_head());
        self.audit.insert(seq, entry);
        seq
    }

    /// Every table with its name, in a fixed order.
    fn tables(&self) -> [(&'static str, &dyn DynTable); 10] {
        [
            ("topologies", &self.topologies),
            ("sites", &self.sites),
            ("hosts", &self.hosts),
            ("apps", &self.apps),
            ("volumes", &self.volumes),
            ("vms", &self.vms),
            ("commands", &self.commands),
            ("operations", &self.operations),
            ("op_steps", &self.op_steps),
            ("audit", &self.audit),
        ]
    }

    fn tables_mut(&mut self) -> [(&'static str, &mut dyn DynTable); 10] {
        [
            ("topologies", &mut self.topologies),
            ("sites", &mut self.sites),
            ("hosts", &mut self.hosts),
            ("apps", &mut self.apps),
            ("volumes", &mut self.volumes),
            ("vms", &mut self.vms),
            ("commands", &mut self.commands),
            ("operations", &mut self.operations),
            ("op_steps", &mut self.op_steps),
            ("audit", &mut self.audit),
        ]
    }

    fn seal(&mut self) {
        self.tables_mut().into_iter().for_each(|(_, t)| t.seal());
    }

    fn rollback(&mut self) {
        self.tables_mut()
            .into_iter()
            .for_each(|(_, t)| t.rollback());
    }

    /// Hand over every row changed by applied commands since the last call, serialized
    /// for the store.
    pub fn take_changes(&mut self) -> Vec<RowWrite> {
        let mut out = Vec::new();
        for (name, t) in self.tables_mut() {
            out.extend(t.take_dirty_rows().into_iter().map(|(k, v)| (name, k, v)));
        }
        out
    }

    /// Every row of the state, serialized (for snapshots).
    pub fn all_rows(&self) -> Vec<RowWrite> {
        let mut out = Vec::new();
        for (name, t) in self.tables() {
            out.extend(t.all_rows().into_iter().map(|(k, v)| (name, k, Some(v))));
        }
        out
    }

    /// Rebuild from persisted rows `(table, key, json)`. Unknown tables or undecodable
    /// rows are errors: a store that does not parse must not be half-loaded.
    pub fn load<'a>(
        rows: impl IntoIterator<Item = (&'a str, &'a str, &'a [u8])>,
    ) -> Result<Self, String> {
        let mut s = ClusterState::default();
        {
            let mut tables = s.tables_mut();
            for (table, key, bytes) in rows {
                let t = tables
                    .iter_mut()
                    .find(|(n, _)| *n == table)
                    .ok_or_else(|| format!("unknown table {table:?}"))?;
                t.1.load_row(key, bytes)
                    .map_err(|e| format!("table {table}: {e}"))?;
            }
        }
        Ok(s)
    }

    /// Dispatch; returns (audit action, audit detail, outcome).
    fn apply_command(&mut self, req: &Request) -> Applied {
        let at = req.at_ms;
        match &req.command {
            Command::ApplyTopology {
                text,
                model,
                placements,
            } => self.apply_topology(req, text, model, placements),
            Command::SetSiteState {
                site,
                state,
                reason,
            } => {
                let rec = self
                    .sites
                    .get_mut(site)
                    .ok_or_else(|| not_found("site", site.as_str()))?;
                let old = rec.state;
                rec.state = *state;
                rec.since_ms = at;
                rec.reason.clone_from(reason);
                if *state == SiteState::Down && old != SiteState::Down {
                    rec.downs_ms.push(at);
                    let n = rec.downs_ms.len();
                    rec.downs_ms.drain(..n.saturating_sub(MAX_SITE_DOWNS));
                }
                Ok((
                    AuditEvent::SiteState {
                        site: site.clone(),
                        from: old,
                        to: *state,
                        reason: reason.clone(),
                    },
                    Outcome::Done,
                ))
            }
            Command::SetHostState {
                host,
                state,
                reason,
                last_seen_ms,
            } => {
                let rec = self
                    .hosts
                    .get_mut(host)
                    .ok_or_else(|| not_found("host", host.as_str()))?;
                let old = rec.state;
                rec.state = *state;
                rec.since_ms = at;
                rec.reason.clone_from(reason);
                rec.last_seen_ms = *last_seen_ms;
                Ok((
                    AuditEvent::HostState {
                        host: host.clone(),
                        from: old,
                        to: *state,
                        reason: reason.clone(),
                    },
                    Outcome::Done,
                ))
            }
            Command::SetAppState { app, state, reason } => {
                let rec = self
                    .apps
                    .get_mut(app)
                    .ok_or_else(|| not_found("app", app.as_str()))?;
                let old = rec.state;
                rec.state = *state;
                Ok((
                    AuditEvent::AppState {
                        app: app.clone(),
                        from: old,
                        to: *state,
                        reason: reason.clone(),
                    },
                    Outcome::Done,
                ))
            }
            Command::PlaceVm { app, vm, host } => self.place_vm(app, vm, host),
            Command::PromoteReplica {
                volume,
                site,
                epoch,
                demoted,
            } => self.promote(volume, site, *epoch, *demoted),
            Command::SetReplicaData { volume, site, data } => {
                let vol = self
                    .volumes
                    .get_mut(volume)
                    .ok_or_else(|| not_found("volume", volume.as_str()))?;
                let rep = vol
                    .replicas
                    .iter_mut()
                    .find(|r| &r.site == site)
                    .ok_or_else(|| not_found("replica at site", site.as_str()))?;
                if rep.role == Role::Primary && *data != DataState::UpToDate {
                    return reject(
                        RejectKind::Conflict,
                        format!(
                            "the replica of {volume} at {site} is primary; a primary is always up to date (promote the other replica first)"
                        ),
                    );
                }
                let old = rep.data;
                rep.data = *data;
                Ok((
                    AuditEvent::ReplicaData {
                        volume: volume.clone(),
                        site: site.clone(),
                        from: old,
                        to: *data,
                    },
                    Outcome::Done,
                ))
            }
            Command::StartOperation { kind, apps, note } => {
                for a in apps {
                    if !self.apps.contains(a) {
                        return Err(not_found("app", a.as_str()));
                    }
                }
                let id = self.operations.last().map_or(1, |(k, _)| k + 1);
                self.operations.insert(
                    id,
                    Operation {
                        id: OpId(id),
                        kind: *kind,
                        apps: apps.clone(),
                        started_by: req.actor.clone(),
                        started_ms: at,
                        ended_ms: None,
                        status: OpStatus::Running,
                        note: note.clone(),
                        steps: Vec::new(),
                        plan: None,
                        lost_ms: None,
                        approved: Vec::new(),
                    },
                );
                Ok((
                    AuditEvent::OpStarted {
                        op: OpId(id),
                        kind: *kind,
                        apps: apps.clone(),
                        note: note.clone(),
                        waves: 0,
                        skipped: Vec::new(),
                    },
                    Outcome::Operation(OpId(id)),
                ))
            }
            Command::StartStep { op, name, app } => {
                if let Some(a) = app
                    && !self.apps.contains(a)
                {
                    return Err(not_found("app", a.as_str()));
                }
                self.running_op_ref(*op)?;
                let index = self
                    .steps_of(*op)
                    .next_back()
                    .map_or(0, |(i, _)| i.saturating_add(1));
                if index >= MAX_STEPS - 1 {
                    return reject(
                        RejectKind::Conflict,
                        format!("{op} has {MAX_STEPS} steps already"),
                    );
                }
                self.op_steps.insert(
                    step_key(*op, index),
                    Step {
                        name: name.clone(),
                        app: app.clone(),
                        started_ms: at,
                        ended_ms: None,
                        result: None,
                        detail: String::new(),
                    },
                );
                Ok((
                    AuditEvent::StepStarted {
                        op: *op,
                        index,
                        step: name.clone(),
                    },
                    Outcome::Step(index),
                ))
            }
            Command::FinishStep {
                op,
                index,
                result,
                detail,
            } => {
                self.running_op_ref(*op)?;
                let step = (*index < MAX_STEPS)
                    .then(|| self.op_steps.get_mut(&step_key(*op, *index)))
                    .flatten()
                    .ok_or_else(|| not_found("step", &format!("{op} #{index}")))?;
                if step.result.is_some() {
                    return reject(
                        RejectKind::Conflict,
                        format!("{op} step {index} already finished"),
                    );
                }
                step.ended_ms = Some(at);
                step.result = Some(result.clone());
                step.detail.clone_from(detail);
                Ok((
                    AuditEvent::StepFinished {
                        op: *op,
                        index: *index,
                        ok: *result == StepResult::Ok,
                        detail: match result {
                            StepResult::Ok => detail.clone(),
                            StepResult::Failed(why) => why.clone(),
                        },
                    },
                    Outcome::Done,
                ))
            }
            Command::FinishOperation { op, status } => {
                if *status == OpStatus::Running {
                    return reject(
                        RejectKind::Invalid,
                        "an operation cannot finish with status running",
                    );
                }
                let rec = self.running_op(*op)?;
                rec.status = *status;
                rec.ended_ms = Some(at);
                Ok((
                    AuditEvent::OpFinished {
                        op: *op,
                        status: *status,
                    },
                    Outcome::Done,
                ))
            }
            Command::BeginPlan { plan, lost_ms } => self.begin_plan(req, plan, *lost_ms),
            Command::ApproveOperation { op, apps } => self.approve(*op, apps),
            Command::MoveApp {
                op,
                app,
                to,
                epochs,
                demoted,
                placement,
            } => self.move_app(*op, app, to, epochs, *demoted, placement),
            Command::ReplicaStatus {
                app,
                site,
                epoch,
                link,
                detail,
            } => self.replica_status(app, site, *epoch, *link, detail),
            Command::RecoverSite { site } => self.recover_site(site),
            Command::Note { text } => {
                if text.trim().is_empty() {
                    return reject(RejectKind::Invalid, "the note is empty");
                }
                Ok((AuditEvent::Note { text: text.clone() }, Outcome::Done))
            }
            Command::Membership { change } => Ok((
                AuditEvent::Membership {
                    change: change.clone(),
                },
                Outcome::Done,
            )),
            Command::Refused {
                call,
                reason,
                security,
            } => Ok((
                AuditEvent::Refused {
                    call: call.clone(),
                    reason: reason.clone(),
                    security: *security,
                },
                Outcome::Done,
            )),
            Command::RegisterHost {
                host,
                inventory,
                fenced,
            } => self.register_host(req, host, inventory, *fenced),
            Command::IssueAgentCommands { issuer, commands } => {
                self.issue_commands(req, issuer, commands)
            }
            Command::RecordCommandResults { host, results } => {
                self.record_results(req, host, results)
            }
            Command::SetVmStates {
                host,
                states,
                reason,
            } => self.set_vm_states(req, host, states, reason),
            Command::AgentEvent { host, event } => self.agent_event(host, event),
        }
    }

    /// Steps of `op` in order, with their index.
    pub fn steps_of(&self, op: OpId) -> impl DoubleEndedIterator<Item = (u32, &Step)> {
        self.op_steps
            .range(step_key(op, 0)..=step_key(op, MAX_STEPS - 1))
            .map(|(k, s)| ((k & 0x00ff_ffff) as u32, s))
    }

    /// An operation with its steps (as operators and reports see it).
    pub fn operation_view(&self, id: u64) -> Option<Operation> {
        let mut o = self.operations.get(&id)?.clone();
        o.steps
            .extend(self.steps_of(OpId(id)).map(|(_, s)| s.clone()));
        Some(o)
    }

    fn running_op_ref(&self, op: OpId) -> Result<&Operation, Rejection> {
        let rec = self
            .operations
            .get(&op.0)
            .ok_or_else(|| not_found("operation", &op.to_string()))?;
        if rec.status != OpStatus::Running {
            return reject(
                RejectKind::Conflict,
                format!("{op} already finished ({:?})", rec.status),
            );
        }
        Ok(rec)
    }

    fn running_op(&mut self, op: OpId) -> Result<&mut Operation, Rejection> {
        self.running_op_ref(op)?;
        self.operations
            .get_mut(&op.0)
            .ok_or_else(|| not_found("operation", &op.to_string()))
    }

    fn place_vm(&mut self, app: &AppId, vm: &VmId, host: &HostId) -> Applied {
        let vm_known = self
            .topology()
            .and_then(|t| t.model.app(app))
            .is_some_and(|a| a.vms.iter().any(|v| &v.id == vm));
        if !vm_known {
            return Err(not_found("VM of that app", vm.as_str()));
        }
        let host_site = self
            .hosts
            .get(host)
            .map(|h| h.site.clone())
            .ok_or_else(|| not_found("host", host.as_str()))?;
        let rec = self
            .apps
            .get_mut(app)
            .ok_or_else(|| not_found("app", app.as_str()))?;
        if host_site != rec.active_site {
            return reject(
                RejectKind::Conflict,
                format!(
                    "host {host} is at site {host_site} but app {app} is active at {}",
                    rec.active_site
                ),
            );
        }
        rec.placement.insert(vm.clone(), host.clone());
        Ok((
            AuditEvent::VmPlaced {
                app: app.clone(),
                vm: vm.clone(),
                host: host.clone(),
            },
            Outcome::Done,
        ))
    }

    fn promote(
        &mut self,
        volume: &VolumeId,
        site: &SiteId,
        epoch: Epoch,
        demoted: DataState,
    ) -> Applied {
        let vol = self
            .volumes
            .get_mut(volume)
            .ok_or_else(|| not_found("volume", volume.as_str()))?;
        if epoch != vol.epoch.next() {
            return reject(
                RejectKind::Conflict,
                format!(
                    "promotion of {volume} must use epoch {} (current {}), not {epoch}",
                    vol.epoch.next(),
                    vol.epoch
                ),
            );
        }
        let target = vol
            .replicas
            .iter()
            .find(|r| &r.site == site)
            .ok_or_else(|| not_found("replica at site", site.as_str()))?;
        if target.data != DataState::UpToDate {
            return reject(
                RejectKind::Conflict,
                format!(
                    "the replica of {volume} at {site} is {:?}; only an up-to-date replica may be promoted",
                    target.data
                ),
            );
        }
        let mut previous = Vec::new();
        for r in &mut vol.replicas {
            if &r.site == site {
                r.role = Role::Primary;
                r.epoch = epoch;
            } else if r.role == Role::Primary {
                previous.push(r.site.clone());
                r.role = Role::Secondary;
                r.epoch = epoch;
                r.data = demoted;
            }
        }
        vol.epoch = epoch;
        Ok((
            AuditEvent::ReplicaPromoted {
                volume: volume.clone(),
                site: site.clone(),
                epoch,
                demoted_sites: previous,
                demoted,
            },
            Outcome::Epoch(epoch),
        ))
    }
}

fn not_found(what: &str, id: &str) -> Rejection {
    Rejection {
        kind: RejectKind::NotFound,
        reason: format!("no {what} {id:?}"),
    }
}

/// Field-level checks that need no state.
fn check_request(req: &Request) -> Result<(), Rejection> {
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
        Command::StartStep { name, .. } => Some(name),
        Command::FinishStep { detail, .. } | Command::ReplicaStatus { detail, .. } => Some(detail),
        Command::Note { text } => Some(text),
        Command::Refused { reason, .. } => Some(reason),
        Command::Membership { change } => Some(change),
        Command::SetVmStates { reason, .. } => Some(reason),
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

#[cfg(test)]
mod tests;
