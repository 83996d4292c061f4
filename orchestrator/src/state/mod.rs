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
mod command;
mod event;
mod invariants;
mod operations;
mod outage;
mod queries;
mod steps;
pub mod table;

use serde::{Deserialize, Serialize};
use topology::{AppId, HostId, SiteId, VmId, VolumeId};

pub use crate::records::*;
pub use agents::{CommandResult, MAX_BATCH};
pub use app_status::{AppHealth, AppReason, AppStatus, VmSeen};
pub use audit::{AuditEntry, Verification};
use command::{Applied, check_request, not_found, reject};
pub use command::{Command, Outcome, Rejection, Request, Response};
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
                self.start_operation(req, *kind, apps, note)
            }
            Command::StartStep { op, at } => self.start_step(req, *op, at),
            Command::FinishStep { op, index, result } => self.finish_step(req, *op, *index, result),
            Command::FinishOperation { op, status } => self.finish_operation(req, *op, *status),
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
            } => self.set_vm_states(req, host, states, reason, false),
            Command::ReportAllVms {
                host,
                states,
                reason,
            } => self.set_vm_states(req, host, states, reason, true),
            Command::AgentEvent { host, event } => self.agent_event(host, event),
            Command::SetAppOutage { app, since_ms } => self.set_app_outage(req, app, *since_ms),
        }
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

#[cfg(test)]
mod tests;
