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

pub mod audit;
mod invariants;
pub mod table;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use topology::{AppId, HostId, SiteId, SiteRole, Topology, VmId, VolumeId};

pub use audit::{AuditEntry, Verification};
pub use invariants::Violation;
use table::{RowKey, Table};
pub use types::*;

/// Limits on request fields; bigger values are refused (they would bloat every node's
/// state and the audit log).
pub const MAX_ACTOR_LEN: usize = 256;
pub const MAX_REASON_LEN: usize = 4096;
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
    },
    FinishOperation {
        op: OpId,
        status: OpStatus,
    },
    /// An operator's note in the audit log.
    Note {
        text: String,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub kind: RejectKind,
    pub reason: String,
}

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
    pub operations: Table<u64, Operation>,
    pub audit: Table<u64, AuditEntry>,
}

/// One changed row, ready to persist: table name, encoded key, JSON value (None = delete).
pub type RowWrite = (&'static str, String, Option<Vec<u8>>);

/// Names of the tables, as used in store keys and snapshots.
pub const TABLES: [&str; 7] = [
    "topologies",
    "sites",
    "hosts",
    "apps",
    "volumes",
    "operations",
    "audit",
];

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

    /// Apply one committed request. On rejection nothing changes.
    pub fn apply(&mut self, req: &Request) -> Response {
        let result = check_request(req)
            .and_then(|()| self.apply_command(req))
            .and_then(|applied| match self.check_touched() {
                Ok(()) => Ok(applied),
                Err(v) => reject(RejectKind::Invariant, v.to_string()),
            });
        match result {
            Ok((action, detail, outcome)) => {
                let seq = self.append_audit(req, action, &detail);
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

    fn append_audit(&mut self, req: &Request, action: &str, detail: &str) -> u64 {
        let seq = self.audit.last().map_or(1, |(s, _)| s + 1);
        let entry = AuditEntry::new(
            seq,
            req.at_ms,
            &req.actor,
            action,
            detail,
            &self.audit_head(),
        );
        self.audit.insert(seq, entry);
        seq
    }

    fn seal(&mut self) {
        self.topologies.seal();
        self.sites.seal();
        self.hosts.seal();
        self.apps.seal();
        self.volumes.seal();
        self.operations.seal();
        self.audit.seal();
    }

    fn rollback(&mut self) {
        self.topologies.rollback();
        self.sites.rollback();
        self.hosts.rollback();
        self.apps.rollback();
        self.volumes.rollback();
        self.operations.rollback();
        self.audit.rollback();
    }

    /// Hand over every row changed by applied commands since the last call, serialized
    /// for the store.
    pub fn take_changes(&mut self) -> Vec<RowWrite> {
        let mut out = Vec::new();
        push_rows(&mut out, "topologies", self.topologies.take_dirty());
        push_rows(&mut out, "sites", self.sites.take_dirty());
        push_rows(&mut out, "hosts", self.hosts.take_dirty());
        push_rows(&mut out, "apps", self.apps.take_dirty());
        push_rows(&mut out, "volumes", self.volumes.take_dirty());
        push_rows(&mut out, "operations", self.operations.take_dirty());
        push_rows(&mut out, "audit", self.audit.take_dirty());
        out
    }

    /// Every row of the state, serialized (for snapshots).
    pub fn all_rows(&self) -> Vec<RowWrite> {
        fn all<K: RowKey, V: Clone>(t: &Table<K, V>) -> Vec<(K, Option<V>)> {
            t.iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect()
        }
        let mut out = Vec::new();
        push_rows(&mut out, "topologies", all(&self.topologies));
        push_rows(&mut out, "sites", all(&self.sites));
        push_rows(&mut out, "hosts", all(&self.hosts));
        push_rows(&mut out, "apps", all(&self.apps));
        push_rows(&mut out, "volumes", all(&self.volumes));
        push_rows(&mut out, "operations", all(&self.operations));
        push_rows(&mut out, "audit", all(&self.audit));
        out
    }

    /// Rebuild from persisted rows `(table, key, json)`. Unknown tables or undecodable
    /// rows are errors: a store that does not parse must not be half-loaded.
    pub fn load<'a>(
        rows: impl IntoIterator<Item = (&'a str, &'a str, &'a [u8])>,
    ) -> Result<Self, String> {
        fn put<K: RowKey, V: serde::de::DeserializeOwned>(
            m: &mut BTreeMap<K, V>,
            table: &str,
            key: &str,
            bytes: &[u8],
        ) -> Result<(), String> {
            let k = K::decode(key).ok_or_else(|| format!("table {table}: bad key {key:?}"))?;
            let v = serde_json::from_slice(bytes)
                .map_err(|e| format!("table {table}, key {key:?}: {e}"))?;
            m.insert(k, v);
            Ok(())
        }
        let (mut t, mut s, mut h, mut a, mut v, mut o, mut au) = Default::default();
        for (table, key, bytes) in rows {
            match table {
                "topologies" => put(&mut t, table, key, bytes)?,
                "sites" => put(&mut s, table, key, bytes)?,
                "hosts" => put(&mut h, table, key, bytes)?,
                "apps" => put(&mut a, table, key, bytes)?,
                "volumes" => put(&mut v, table, key, bytes)?,
                "operations" => put(&mut o, table, key, bytes)?,
                "audit" => put(&mut au, table, key, bytes)?,
                other => return Err(format!("unknown table {other:?}")),
            }
        }
        Ok(ClusterState {
            topologies: Table::from_rows(t),
            sites: Table::from_rows(s),
            hosts: Table::from_rows(h),
            apps: Table::from_rows(a),
            volumes: Table::from_rows(v),
            operations: Table::from_rows(o),
            audit: Table::from_rows(au),
        })
    }

    /// Dispatch; returns (audit action, audit detail, outcome).
    fn apply_command(
        &mut self,
        req: &Request,
    ) -> Result<(&'static str, String, Outcome), Rejection> {
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
                Ok((
                    "site.state",
                    format!("site {site}: {old:?} -> {state:?} ({reason})"),
                    Outcome::Done,
                ))
            }
            Command::SetHostState {
                host,
                state,
                reason,
            } => {
                let rec = self
                    .hosts
                    .get_mut(host)
                    .ok_or_else(|| not_found("host", host.as_str()))?;
                let old = rec.state;
                rec.state = *state;
                rec.since_ms = at;
                rec.reason.clone_from(reason);
                Ok((
                    "host.state",
                    format!("host {host}: {old:?} -> {state:?} ({reason})"),
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
                    "app.state",
                    format!("app {app}: {old:?} -> {state:?} ({reason})"),
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
                    "replica.data",
                    format!("volume {volume} at {site}: {old:?} -> {data:?}"),
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
                    },
                );
                let names = apps
                    .iter()
                    .map(AppId::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                Ok((
                    "op.start",
                    format!("{} {kind:?} of [{names}]: {note}", OpId(id)),
                    Outcome::Operation(OpId(id)),
                ))
            }
            Command::StartStep { op, name, app } => {
                if let Some(a) = app
                    && !self.apps.contains(a)
                {
                    return Err(not_found("app", a.as_str()));
                }
                let rec = self.running_op(*op)?;
                let index = u32::try_from(rec.steps.len()).unwrap_or(u32::MAX);
                rec.steps.push(Step {
                    name: name.clone(),
                    app: app.clone(),
                    started_ms: at,
                    ended_ms: None,
                    result: None,
                });
                Ok((
                    "op.step",
                    format!("{op} step {index} started: {name}"),
                    Outcome::Step(index),
                ))
            }
            Command::FinishStep { op, index, result } => {
                let rec = self.running_op(*op)?;
                let step = rec
                    .steps
                    .get_mut(*index as usize)
                    .ok_or_else(|| not_found("step", &format!("{op} #{index}")))?;
                if step.result.is_some() {
                    return reject(
                        RejectKind::Conflict,
                        format!("{op} step {index} already finished"),
                    );
                }
                step.ended_ms = Some(at);
                step.result = Some(result.clone());
                Ok((
                    "op.step",
                    format!("{op} step {index} finished: {result:?}"),
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
                    "op.finish",
                    format!("{op} finished: {status:?}"),
                    Outcome::Done,
                ))
            }
            Command::Note { text } => {
                if text.trim().is_empty() {
                    return reject(RejectKind::Invalid, "the note is empty");
                }
                Ok(("note", text.clone(), Outcome::Done))
            }
        }
    }

    fn running_op(&mut self, op: OpId) -> Result<&mut Operation, Rejection> {
        let rec = self
            .operations
            .get_mut(&op.0)
            .ok_or_else(|| not_found("operation", &op.to_string()))?;
        if rec.status != OpStatus::Running {
            return reject(
                RejectKind::Conflict,
                format!("{op} already finished ({:?})", rec.status),
            );
        }
        Ok(rec)
    }

    fn place_vm(
        &mut self,
        app: &AppId,
        vm: &VmId,
        host: &HostId,
    ) -> Result<(&'static str, String, Outcome), Rejection> {
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
            "vm.place",
            format!("VM {vm} of {app} on host {host}"),
            Outcome::Done,
        ))
    }

    fn promote(
        &mut self,
        volume: &VolumeId,
        site: &SiteId,
        epoch: Epoch,
        demoted: DataState,
    ) -> Result<(&'static str, String, Outcome), Rejection> {
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
        let prev = match previous.as_slice() {
            [] => String::new(),
            p => format!(
                " (previous primary {} now secondary, {demoted:?})",
                p.iter().map(SiteId::as_str).collect::<Vec<_>>().join(", ")
            ),
        };
        Ok((
            "replica.promote",
            format!("volume {volume}: {site} primary at epoch {epoch}{prev}"),
            Outcome::Epoch(epoch),
        ))
    }

    fn apply_topology(
        &mut self,
        req: &Request,
        text: &str,
        model: &Topology,
        placements: &[(VmId, HostId)],
    ) -> Result<(&'static str, String, Outcome), Rejection> {
        if text.len() > MAX_TOPOLOGY_BYTES {
            return reject(
                RejectKind::Invalid,
                "the topology text is larger than 64 MiB",
            );
        }
        // Sites are the frame everything else hangs on: once applied they stay.
        if let Some(cur) = self.topology() {
            let ids = |t: &Topology| {
                t.sites
                    .iter()
                    .map(|s| (s.id.clone(), s.role))
                    .collect::<BTreeSet<_>>()
            };
            if ids(&cur.model) != ids(model) {
                return reject(
                    RejectKind::Conflict,
                    "the sites (ids and roles) differ from the applied topology; sites cannot change once applied",
                );
            }
        }
        let production: Vec<&SiteId> = model
            .sites
            .iter()
            .filter(|s| s.role == SiteRole::Production)
            .map(|s| &s.id)
            .collect();
        if production.len() != 2 || model.sites.len() != 3 {
            return reject(
                RejectKind::Invalid,
                "a topology needs exactly two production sites and one witness",
            );
        }
        let host_site: BTreeMap<&HostId, &SiteId> =
            model.hosts.iter().map(|h| (&h.id, &h.site)).collect();
        let placed: BTreeMap<&VmId, &HostId> = placements.iter().map(|(v, h)| (v, h)).collect();
        let version = self.topologies.last().map_or(1, |(v, _)| v + 1);

        // Hosts: removed hosts must run nothing.
        let new_hosts: BTreeSet<&HostId> = model.hosts.iter().map(|h| &h.id).collect();
        let gone: Vec<HostId> = self
            .hosts
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|h| !new_hosts.contains(h))
            .collect();
        for h in &gone {
            let users: Vec<&AppId> = self
                .apps
                .values()
                .filter(|a| model.app(&a.id).is_some() && a.placement.values().any(|p| p == h))
                .map(|a| &a.id)
                .collect();
            if let Some(a) = users.first() {
                return reject(
                    RejectKind::Conflict,
                    format!(
                        "host {h} is removed but app {a} has VMs placed on it; move them first"
                    ),
                );
            }
            self.hosts.remove(h);
        }
        for s in &model.sites {
            if !self.sites.contains(&s.id) {
                self.sites.insert(
                    s.id.clone(),
                    SiteRecord {
                        id: s.id.clone(),
                        role: s.role,
                        state: SiteState::Up,
                        since_ms: req.at_ms,
                        reason: "site added by topology".into(),
                    },
                );
            }
        }
        for h in &model.hosts {
            match self.hosts.get(&h.id) {
                Some(rec) if rec.site == h.site => {}
                Some(_) => {
                    return reject(
                        RejectKind::Conflict,
                        format!(
                            "host {} moved to another site; remove it and add it under a new id",
                            h.id
                        ),
                    );
                }
                None => self.hosts.insert(
                    h.id.clone(),
                    HostRecord {
                        id: h.id.clone(),
                        site: h.site.clone(),
                        state: HostState::Unknown,
                        since_ms: req.at_ms,
                        reason: "host added by topology; no agent has registered yet".into(),
                    },
                ),
            }
        }

        // Apps and their volumes.
        let new_apps: BTreeSet<&AppId> = model.apps.iter().map(|a| &a.id).collect();
        let removed_apps: Vec<AppId> = self
            .apps
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|a| !new_apps.contains(a))
            .collect();
        for a in &removed_apps {
            self.apps.remove(a);
        }
        let new_vols: BTreeSet<&VolumeId> = model
            .apps
            .iter()
            .flat_map(|a| a.volumes.iter().map(|v| &v.id))
            .collect();
        let removed_vols: Vec<VolumeId> = self
            .volumes
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|v| !new_vols.contains(v))
            .collect();
        for v in &removed_vols {
            self.volumes.remove(v);
        }
        for app in &model.apps {
            let mut rec = self
                .apps
                .get(&app.id)
                .cloned()
                .unwrap_or_else(|| AppRecord {
                    id: app.id.clone(),
                    active_site: app.preferred_site.clone(),
                    desired: Desired::Running,
                    state: AppState::Stopped,
                    placement: BTreeMap::new(),
                });
            if !production.contains(&&rec.active_site) {
                return reject(
                    RejectKind::Invalid,
                    format!(
                        "app {} is active at {}, which is not a production site",
                        app.id, rec.active_site
                    ),
                );
            }
            let vm_ids: BTreeSet<&VmId> = app.vms.iter().map(|v| &v.id).collect();
            rec.placement.retain(|vm, _| vm_ids.contains(vm));
            for vm in &app.vms {
                if rec.placement.contains_key(&vm.id) {
                    continue;
                }
                let Some(host) = placed.get(&vm.id) else {
                    return reject(
                        RejectKind::Invalid,
                        format!("VM {} of app {} has no placement", vm.id, app.id),
                    );
                };
                if host_site.get(*host) != Some(&&rec.active_site) {
                    return reject(
                        RejectKind::Invalid,
                        format!(
                            "VM {} is placed on {host}, which is not a host of site {}",
                            vm.id, rec.active_site
                        ),
                    );
                }
                rec.placement.insert(vm.id.clone(), (*host).clone());
            }
            for vol in &app.volumes {
                match self.volumes.get_mut(&vol.id) {
                    Some(existing) if existing.app == app.id => {
                        existing.mode = vol.replication.mode()
                    }
                    Some(existing) => {
                        return reject(
                            RejectKind::Conflict,
                            format!(
                                "volume {} belongs to app {}; it cannot move to app {}",
                                vol.id, existing.app, app.id
                            ),
                        );
                    }
                    None => {
                        let replicas = production
                            .iter()
                            .map(|s| Replica {
                                site: (*s).clone(),
                                role: if *s == &rec.active_site {
                                    Role::Primary
                                } else {
                                    Role::Secondary
                                },
                                epoch: Epoch(1),
                                // The secondary holds nothing until the initial sync.
                                data: if *s == &rec.active_site {
                                    DataState::UpToDate
                                } else {
                                    DataState::Inconsistent
                                },
                            })
                            .collect();
                        self.volumes.insert(
                            vol.id.clone(),
                            VolumeRecord {
                                id: vol.id.clone(),
                                app: app.id.clone(),
                                mode: vol.replication.mode(),
                                epoch: Epoch(1),
                                replicas,
                            },
                        );
                    }
                }
            }
            self.apps.insert(app.id.clone(), rec);
        }
        let digest = hex::encode(Sha256::digest(text.as_bytes()));
        self.topologies.insert(
            version,
            TopologyRecord {
                version,
                text: text.to_string(),
                digest: digest.clone(),
                applied_by: req.actor.clone(),
                applied_ms: req.at_ms,
                model: model.clone(),
            },
        );
        Ok((
            "topology.apply",
            format!(
                "version {version} (sha256 {}…): {} hosts, {} apps, {} volumes; removed {} apps, {} hosts",
                &digest[..12],
                model.hosts.len(),
                model.apps.len(),
                new_vols.len(),
                removed_apps.len(),
                gone.len()
            ),
            Outcome::TopologyVersion(version),
        ))
    }
}

fn push_rows<K: RowKey, V: Serialize>(
    out: &mut Vec<RowWrite>,
    name: &'static str,
    rows: Vec<(K, Option<V>)>,
) {
    for (k, v) in rows {
        // Serializing this plain data to JSON cannot fail (every map key is a string);
        // should it ever, the empty value is refused by `load` as corrupt.
        let bytes = v.map(|v| serde_json::to_vec(&v).unwrap_or_default());
        out.push((name, k.encode(), bytes));
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
        Command::Note { text } => Some(text),
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
