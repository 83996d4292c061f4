//! Transitions driven by agents: registration, the per-host command queues and their
//! results, VM runtime states, and agent events (self-fencing) for the audit log.

use std::collections::BTreeSet;

use topology::{HostId, VmId};

use super::*;

/// Most commands or results one request may carry.
pub const MAX_BATCH: usize = 10_000;

/// Result of one agent command, as reported by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: CommandId,
    pub executed: Executed,
}

/// Largest result (as JSON) recorded as reported; a larger one is recorded as a
/// failure that says so (it would bloat every node's state).
pub const MAX_RESULT_BYTES: usize = 16 * 1024;

impl ClusterState {
    fn vm_app(&self, vm: &VmId) -> Option<AppId> {
        let t = self.topology()?;
        t.model
            .apps
            .iter()
            .find(|a| a.vms.iter().any(|v| &v.id == vm))
            .map(|a| a.id.clone())
    }

    pub(super) fn register_host(
        &mut self,
        req: &Request,
        host: &HostId,
        inventory: &HostInventory,
        fenced: bool,
    ) -> Applied {
        // VMs of apps placed on this host: what a fence there stopped.
        let placed = self
            .apps
            .values()
            .any(|a| a.placement.values().any(|h| h == host));
        let rec = self
            .hosts
            .get_mut(host)
            .ok_or_else(|| not_found("host", host.as_str()))?;
        let old = rec.state;
        rec.inventory = Some(inventory.clone());
        rec.state = HostState::Up;
        rec.since_ms = req.at_ms;
        rec.reason = "agent registered".into();
        if fenced && placed {
            rec.fenced_ms = Some(req.at_ms);
        }
        Ok((
            AuditEvent::HostRegistered {
                host: host.clone(),
                agent_version: inventory.agent_version.clone(),
                vcpus: inventory.vcpus,
                memory_mib: inventory.memory_bytes >> 20,
                hypervisor: inventory.hypervisor.clone(),
                domain_type: inventory.domain_type.clone(),
                from: old,
                fenced,
            },
            Outcome::Done,
        ))
    }

    pub(super) fn issue_commands(
        &mut self,
        req: &Request,
        issuer: &Issuer,
        commands: &[(HostId, AgentAction)],
    ) -> Applied {
        if commands.is_empty() || commands.len() > MAX_BATCH {
            return reject(
                RejectKind::Invalid,
                format!("send 1 to {MAX_BATCH} commands at a time"),
            );
        }
        match issuer {
            Issuer::Operation { op } => {
                self.running_op_ref(*op)?;
            }
            Issuer::Operator { actor }
                if actor.trim().is_empty() || actor.len() > MAX_ACTOR_LEN =>
            {
                return reject(
                    RejectKind::Invalid,
                    "name the operator who issues the command",
                );
            }
            Issuer::Operator { .. } | Issuer::Controller => {}
        }
        let mut ids = Vec::with_capacity(commands.len());
        let first = self.commands.last().map_or(1, |(k, _)| k + 1);
        for (next, (host, action)) in (first..).zip(commands) {
            if !self.hosts.contains(host) {
                return Err(not_found("host", host.as_str()));
            }
            match action {
                AgentAction::Serve { group } => {
                    if !self.apps.contains(&group.app) {
                        return Err(not_found("app", group.app.as_str()));
                    }
                }
                AgentAction::Unserve { app, grace_s } => {
                    if !self.apps.contains(app) {
                        return Err(not_found("app", app.as_str()));
                    }
                    if *grace_s > 3600 {
                        return reject(
                            RejectKind::Invalid,
                            "an unserve grace must be at most 3600 s",
                        );
                    }
                }
                AgentAction::DrillSnapshot { app, .. } => {
                    if !self.apps.contains(app) {
                        return Err(not_found("app", app.as_str()));
                    }
                }
                AgentAction::DrillStart { op, spec } => {
                    if self.vm_app(&spec.vm).is_none() {
                        return Err(not_found("VM in the topology", spec.vm.as_str()));
                    }
                    if spec.drill != Some(*op) {
                        return reject(
                            RejectKind::Invalid,
                            format!(
                                "a drill start of {} must carry drill {op} in its spec",
                                spec.vm
                            ),
                        );
                    }
                }
                AgentAction::DrillProbe { vm, .. } => {
                    if self.vm_app(vm).is_none() {
                        return Err(not_found("VM in the topology", vm.as_str()));
                    }
                }
                AgentAction::DrillCleanup { .. } => {}
                _ => {
                    let vm = action.vm().map(VmId::as_str).unwrap_or_default();
                    if self.vm_app(&VmId::new(vm)).is_none() {
                        return Err(not_found("VM in the topology", vm));
                    }
                }
            }
            if let AgentAction::Probe {
                timeout_s, marker, ..
            }
            | AgentAction::DrillProbe {
                timeout_s, marker, ..
            } = action
                && (!(1..=3600).contains(timeout_s) || marker.is_empty() || marker.len() > 256)
            {
                return reject(
                    RejectKind::Invalid,
                    "a probe needs a marker of 1 to 256 bytes and a timeout of 1 to 3600 s",
                );
            }
            if let AgentAction::TcpProbe {
                port,
                address,
                timeout_s,
                ..
            } = action
            {
                if !(1..=3600).contains(timeout_s) || *port == 0 {
                    return reject(
                        RejectKind::Invalid,
                        "a tcp probe needs a port of 1 to 65535 and a timeout of 1 to 3600 s",
                    );
                }
                if let Some(why) = address
                    .as_deref()
                    .and_then(topology::model::probe_address_problem)
                {
                    return reject(RejectKind::Invalid, why);
                }
            }
            if let AgentAction::Shutdown { timeout_s, .. } = action
                && !(1..=3600).contains(timeout_s)
            {
                return reject(
                    RejectKind::Invalid,
                    "a shutdown timeout must be 1 to 3600 s",
                );
            }
            if matches!(issuer, Issuer::Operator { .. }) {
                self.note_operator_intent(action);
            }
            self.commands.insert(
                next,
                AgentCommandRecord {
                    id: CommandId(next),
                    host: host.clone(),
                    action: action.clone(),
                    issuer: issuer.clone(),
                    issued_ms: req.at_ms,
                    status: CommandStatus::Pending,
                },
            );
            ids.push(CommandId(next));
        }
        let listed = commands
            .iter()
            .zip(&ids)
            .take(MAX_LISTED)
            .map(|((h, a), id)| (*id, h.clone(), a.name().to_string(), a.target().to_string()))
            .collect();
        Ok((
            AuditEvent::CommandsIssued {
                issuer: issuer.clone(),
                listed,
                total: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            },
            Outcome::Commands(ids),
        ))
    }

    /// Results are idempotent: a result for a command that already has one is ignored
    /// (an agent may report twice when a reply is lost).
    pub(super) fn record_results(
        &mut self,
        req: &Request,
        host: &HostId,
        results: &[CommandResult],
    ) -> Applied {
        if results.is_empty() || results.len() > MAX_BATCH {
            return reject(
                RejectKind::Invalid,
                format!("report 1 to {MAX_BATCH} results at a time"),
            );
        }
        let mut recorded = Vec::new();
        for r in results {
            let rec = self
                .commands
                .get(&r.id.0)
                .ok_or_else(|| not_found("command", &r.id.to_string()))?;
            if &rec.host != host {
                return reject(
                    RejectKind::Conflict,
                    format!("command {} belongs to host {}, not {host}", r.id, rec.host),
                );
            }
            if rec.status != CommandStatus::Pending {
                continue;
            }
            let size = serde_json::to_vec(&r.executed).map_or(usize::MAX, |v| v.len());
            let executed = if size > MAX_RESULT_BYTES {
                Executed::failed(
                    proto::agent::FailureKind::Failed,
                    format!(
                        "the agent's report of this command was {size} bytes, more than {MAX_RESULT_BYTES}"
                    ),
                )
            } else {
                r.executed.clone()
            };
            let ok = executed.is_ok();
            if let Some(rec) = self.commands.get_mut(&r.id.0) {
                recorded.push((
                    r.id,
                    rec.action.name().to_string(),
                    rec.action.target().to_string(),
                    ok,
                ));
                rec.status = CommandStatus::reported(executed, req.at_ms);
            }
        }
        Ok((
            AuditEvent::CommandResults {
                host: host.clone(),
                recorded,
            },
            Outcome::Done,
        ))
    }

    /// An operator who stops a VM wants it stopped (the reconciler holds it); one
    /// who starts it wants it running again.
    fn note_operator_intent(&mut self, action: &AgentAction) {
        let (vm, hold) = match action {
            AgentAction::Shutdown { vm, .. }
            | AgentAction::Destroy { vm }
            | AgentAction::Suspend { vm }
            | AgentAction::Undefine { vm } => (vm, true),
            AgentAction::Start { vm } | AgentAction::Resume { vm } => (vm, false),
            _ => return,
        };
        let Some(app) = self.vm_app(vm) else { return };
        if let Some(rec) = self.apps.get_mut(&app) {
            if hold {
                rec.held.insert(vm.clone());
            } else {
                rec.held.remove(vm);
            }
        }
    }

    pub(super) fn set_vm_states(
        &mut self,
        req: &Request,
        host: &HostId,
        states: &[(VmId, VmState)],
        reason: &str,
        complete: bool,
    ) -> Applied {
        if !self.hosts.contains(host) {
            return Err(not_found("host", host.as_str()));
        }
        if states.len() > MAX_BATCH {
            return reject(
                RejectKind::Invalid,
                format!("report at most {MAX_BATCH} VM states at a time"),
            );
        }
        // A complete list: what the cluster records on this host and the list leaves
        // out is gone there (the agent restarted on an empty hypervisor, or a report of
        // its end was lost).
        let gone: Vec<(VmId, VmState)> = if complete {
            let listed: BTreeSet<&VmId> = states.iter().map(|(vm, _)| vm).collect();
            self.vms
                .values()
                .filter(|r| &r.host == host && r.state != VmState::Undefined)
                .filter(|r| !listed.contains(&r.vm))
                .map(|r| (r.vm.clone(), VmState::Undefined))
                .collect()
        } else {
            Vec::new()
        };
        let states: Vec<(VmId, VmState)> = states.iter().cloned().chain(gone).collect();
        let mut changes = Vec::new();
        let mut seen = BTreeSet::new();
        for (vm, state) in &states {
            if !seen.insert(vm) {
                return reject(RejectKind::Invalid, format!("VM {vm} is reported twice"));
            }
            // Domains that are not VMs of the topology (foreign domains) are not tracked.
            let Some(app) = self.vm_app(vm) else {
                continue;
            };
            // A host the VM has moved away from reports it stopped: the record stays at
            // the VM's current host. (One that reports it running is recorded: a VM
            // running where it is not placed must be visible.)
            let moved_away = self
                .apps
                .get(&app)
                .and_then(|a| a.placement.get(vm))
                .is_some_and(|p| p != host)
                && self.vms.get(vm).is_some_and(|r| &r.host != host)
                && !matches!(state, VmState::Running | VmState::Paused);
            if moved_away {
                // Recorded in the audit log only (the old host confirms the VM is off
                // there), once per host: agents send every state again periodically.
                let said = self
                    .vms
                    .get_mut(vm)
                    .is_some_and(|r| !r.confirmed_off.insert(host.clone()));
                if !said {
                    changes.push(VmStateChange {
                        vm: vm.clone(),
                        state: *state,
                        placed_here: false,
                    });
                }
                continue;
            }
            let unchanged = self
                .vms
                .get(vm)
                .is_some_and(|r| r.state == *state && &r.host == host);
            if unchanged {
                continue;
            }
            changes.push(VmStateChange {
                vm: vm.clone(),
                state: *state,
                placed_here: true,
            });
            // Confirmations from other hosts hold while the VM stays on this one.
            let confirmed_off = self
                .vms
                .get(vm)
                .filter(|r| &r.host == host)
                .map(|r| r.confirmed_off.clone())
                .unwrap_or_default();
            self.vms.insert(
                vm.clone(),
                VmRecord {
                    vm: vm.clone(),
                    app,
                    host: host.clone(),
                    state: *state,
                    since_ms: req.at_ms,
                    reason: reason.to_string(),
                    confirmed_off,
                },
            );
        }
        if changes.is_empty() {
            return reject(RejectKind::Unchanged, "no VM state changed");
        }
        // A fenced host whose placed VMs all run again is owed nothing any more.
        if self.hosts.get(host).is_some_and(|h| h.fenced_ms.is_some()) {
            let stopped = self
                .apps
                .values()
                .any(|a| !self.fenced_vms(&a.id, host).is_empty());
            if !stopped && let Some(h) = self.hosts.get_mut(host) {
                h.fenced_ms = None;
            }
        }
        Ok((
            AuditEvent::VmStates {
                host: host.clone(),
                changes,
                reason: reason.to_string(),
            },
            Outcome::Done,
        ))
    }

    pub(super) fn agent_event(&mut self, host: &HostId, event: &AgentEvent) -> Applied {
        if !self.hosts.contains(host) {
            return Err(not_found("host", host.as_str()));
        }
        if event.to_string().len() > MAX_REASON_LEN {
            return reject(
                RejectKind::Invalid,
                format!("the event is longer than {MAX_REASON_LEN} bytes"),
            );
        }
        Ok((
            AuditEvent::Agent {
                host: host.clone(),
                event: event.clone(),
            },
            Outcome::Done,
        ))
    }
}
