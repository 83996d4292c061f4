//! The agent API: registration, leases (granted only by a confirmed leader), the
//! long-polled command queue, and reports of results, VM states and agent events.
//! Every report is committed through Raft, so a new leader sees all of it.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use topology::{HostId, VmId};

use security::Access;

use proto::agent::wire::{
    WireError, command_to_wire, event_from_wire, link_from_wire, outcome_from_wire,
    vm_state_from_wire,
};

use crate::node::{Node, no_leader, reject_kind};
use crate::pb::agent_server::Agent;
use crate::pb::*;
use crate::service::auth::{admit, audit_refusal, caller};
use crate::state::{
    self, Command, CommandResult, CommandStatus, HostInventory, HostState, RejectKind, VmState,
};

pub struct AgentService {
    pub node: Arc<Node>,
}

/// Longest long-poll an agent may ask for.
const MAX_WAIT: Duration = Duration::from_secs(10);

fn host_id(h: &str) -> Result<HostId, Status> {
    topology::ids::check_id(h).map_err(|e| Status::invalid_argument(format!("host {h:?}: {e}")))?;
    Ok(HostId::new(h))
}

/// A message the agent sent that does not make a typed value.
fn bad(e: WireError) -> Status {
    Status::invalid_argument(format!("the agent's report is malformed: {e}"))
}

/// The VM states an agent reports, checked.
fn domain_states(domains: &[DomainReport]) -> Result<Vec<(VmId, VmState)>, Status> {
    domains
        .iter()
        .map(|d| {
            topology::ids::check_id(&d.vm)
                .map_err(|e| Status::invalid_argument(format!("VM {:?}: {e}", d.vm)))?;
            Ok((
                VmId::new(d.vm.as_str()),
                vm_state_from_wire(d.state).map_err(bad)?,
            ))
        })
        .collect()
}

impl AgentService {
    /// With TLS, only the agent of `host` may speak for it.
    async fn admit_host<T>(&self, req: &Request<T>, host: &str, what: &str) -> Result<(), Status> {
        let actor = admit(&self.node, req, Access::Host, what, "").await?;
        if let Some(p) = caller(&self.node, req)?
            && p.name != host
        {
            let why = format!("the agent of {} may not speak for host {host:?}", p.name);
            audit_refusal(&self.node, &actor, what, &why).await;
            return Err(Status::permission_denied(why));
        }
        Ok(())
    }

    fn known_host(&self, host: &HostId) -> Result<String, Status> {
        let a = self.node.state.read();
        a.state
            .hosts
            .get(host)
            .map(|h| h.site.to_string())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "host {host} is not in the applied topology; add it with `metrodr topology apply` first"
                ))
            })
    }

    fn leader_addr(&self) -> String {
        self.node.leader().map(|(_, i)| i.addr).unwrap_or_default()
    }

    async fn commit(&self, command: Command, host: &HostId) -> Result<(), Status> {
        let req = state::Request {
            actor: format!("agent:{host}"),
            at_ms: self.node.clock.now_ms(),
            command,
        };
        match self.node.write(req).await {
            Ok(_) => Ok(()),
            // "Nothing changed" is not an error for a reporter.
            Err(s) if reject_kind(&s) == Some(RejectKind::Unchanged) => Ok(()),
            Err(s) => Err(s),
        }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn register(
        &self,
        req: Request<AgentRegisterRequest>,
    ) -> Result<Response<AgentRegisterReply>, Status> {
        self.admit_host(&req, &req.get_ref().host, "register a host")
            .await?;
        let r = req.into_inner();
        let host = host_id(&r.host)?;
        let site = self.known_host(&host)?;
        if r.protocol_version != proto::agent::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "the agent of {host} speaks agent protocol {} and this node speaks {}: run agents and orchestrator nodes of the same metrodr release (agent {}, node {})",
                r.protocol_version,
                proto::agent::PROTOCOL_VERSION,
                if r.agent_version.is_empty() {
                    "unknown"
                } else {
                    r.agent_version.as_str()
                },
                env!("CARGO_PKG_VERSION")
            )));
        }
        let inventory = HostInventory {
            vcpus: r.vcpus,
            memory_bytes: r.memory_bytes,
            hypervisor: r.hypervisor,
            domain_type: r.domain_type,
            agent_version: r.agent_version,
            registered_ms: self.node.clock.now_ms(),
        };
        self.commit(
            Command::RegisterHost {
                host: host.clone(),
                inventory,
                fenced: r.fenced,
            },
            &host,
        )
        .await?;
        // Every domain of the host, as listed at registration: a VM recorded here
        // and not listed is gone (the agent came back on an empty hypervisor).
        let states = domain_states(&r.domains)?;
        self.commit(
            Command::ReportAllVms {
                host: host.clone(),
                states,
                reason: "found by the agent at registration".into(),
            },
            &host,
        )
        .await?;
        let t = &self.node.timing;
        Ok(Response::new(AgentRegisterReply {
            lease_ms: t.lease_ms,
            renew_ms: t.lease_renew_ms,
            leader_addr: self.leader_addr(),
            site,
            protocol_version: proto::agent::PROTOCOL_VERSION,
        }))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewReply>, Status> {
        self.admit_host(&req, &req.get_ref().host, "renew a lease")
            .await?;
        let r = req.into_inner();
        let host = host_id(&r.host)?;
        let lease_ms = self.node.timing.lease_ms;
        if !self.node.is_confirmed_leader() {
            let leader = self.leader_addr();
            return Ok(Response::new(RenewReply {
                granted: false,
                lease_ms,
                reason: if leader.is_empty() {
                    format!(
                        "{} is not a confirmed leader and knows none",
                        self.node.name
                    )
                } else {
                    format!("{} is not the leader; renew at {leader}", self.node.name)
                },
                leader_addr: leader,
            }));
        }
        self.known_host(&host)?;
        let granted = self
            .node
            .leader
            .leases()
            .grant(&host, self.node.clock.now());
        // A host that comes back (or was never seen by Raft as up) goes Up.
        let needs_up = self
            .node
            .state
            .read()
            .state
            .hosts
            .get(&host)
            .is_some_and(|h| h.state != HostState::Up);
        if granted && needs_up {
            let node = self.node.clone();
            let h = host.clone();
            tokio::spawn(async move {
                let req = state::Request {
                    actor: crate::detector::SYSTEM_ACTOR.into(),
                    at_ms: node.clock.now_ms(),
                    command: Command::SetHostState {
                        host: h,
                        state: HostState::Up,
                        reason: "lease renewed".into(),
                        last_seen_ms: None,
                    },
                };
                let _ = node.write(req).await;
            });
        }
        Ok(Response::new(RenewReply {
            granted,
            lease_ms,
            leader_addr: self.leader_addr(),
            reason: String::new(),
        }))
    }

    async fn poll(&self, req: Request<PollRequest>) -> Result<Response<PollReply>, Status> {
        self.admit_host(&req, &req.get_ref().host, "poll for commands")
            .await?;
        let r = req.into_inner();
        let host = host_id(&r.host)?;
        self.known_host(&host)?;
        let wait = Duration::from_millis(u64::from(r.wait_ms)).min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.node.state.subscribe();
        loop {
            let commands: Vec<AgentCommand> = {
                let a = self.node.state.read();
                a.state
                    .commands
                    .iter()
                    .filter(|(id, c)| {
                        **id > r.after_id && c.host == host && c.status == CommandStatus::Pending
                    })
                    .map(|(_, c)| command_to_wire(c.id, &c.action))
                    .collect()
            };
            if !commands.is_empty() {
                return Ok(Response::new(PollReply { commands }));
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out (or the node is stopping): nothing for now.
                _ => {
                    return Ok(Response::new(PollReply {
                        commands: Vec::new(),
                    }));
                }
            }
        }
    }

    async fn report(&self, req: Request<ReportRequest>) -> Result<Response<ReportReply>, Status> {
        self.admit_host(&req, &req.get_ref().host, "report results and VM states")
            .await?;
        let r = req.into_inner();
        let host = host_id(&r.host)?;
        self.known_host(&host)?;
        if r.results.len() > state::MAX_BATCH
            || r.domains.len() > state::MAX_BATCH
            || r.events.len() > 100
        {
            return Err(Status::invalid_argument(
                "report too large: send at most 10000 results or states and 100 events",
            ));
        }
        if !r.results.is_empty() {
            let results = r
                .results
                .into_iter()
                .map(|o| {
                    let (id, executed) = outcome_from_wire(o).map_err(bad)?;
                    Ok(CommandResult { id, executed })
                })
                .collect::<Result<Vec<_>, Status>>()?;
            self.commit(
                Command::RecordCommandResults {
                    host: host.clone(),
                    results,
                },
                &host,
            )
            .await?;
        }
        if !r.domains.is_empty() {
            let states = domain_states(&r.domains)?;
            self.commit(
                Command::SetVmStates {
                    host: host.clone(),
                    states,
                    reason: "reported by the agent".into(),
                },
                &host,
            )
            .await?;
        }
        for e in r.events {
            let (_, event) = event_from_wire(e).map_err(bad)?;
            self.commit(
                Command::AgentEvent {
                    host: host.clone(),
                    event,
                },
                &host,
            )
            .await?;
        }
        if self.node.leader().is_none() {
            return Err(no_leader(&self.node.name));
        }
        Ok(Response::new(ReportReply {}))
    }

    async fn report_replica(
        &self,
        req: Request<ReplicaReportRequest>,
    ) -> Result<Response<ReplicaReportReply>, Status> {
        let what = "report a replica";
        let actor = admit(&self.node, &req, Access::Host, what, "").await?;
        // An agent reports for the replicas of its own site only.
        if let Some(p) = caller(&self.node, &req)? {
            let site = self.known_host(&HostId::new(p.name.as_str())).ok();
            if site.as_deref() != Some(req.get_ref().site.as_str()) {
                let why = format!(
                    "the agent of {} (site {}) may not report for site {:?}",
                    p.name,
                    site.as_deref().unwrap_or("unknown"),
                    req.get_ref().site
                );
                audit_refusal(&self.node, &actor, what, &why).await;
                return Err(Status::permission_denied(why));
            }
        }
        let r = req.into_inner();
        let link = link_from_wire(r.link).map_err(bad)?;
        if r.app.trim().is_empty() || r.site.trim().is_empty() {
            return Err(Status::invalid_argument("name the app and the site"));
        }
        let res = self
            .node
            .write(state::Request {
                actor: format!("replica {}@{}", r.app, r.site),
                at_ms: self.node.clock.now_ms(),
                command: Command::ReplicaStatus {
                    app: topology::AppId::new(r.app.as_str()),
                    site: topology::SiteId::new(r.site.as_str()),
                    epoch: state::Epoch(r.epoch),
                    link,
                    detail: r.detail.chars().take(512).collect(),
                },
            })
            .await;
        let reply = |result: ReplicaReportResult, detail: String| {
            Ok(Response::new(ReplicaReportReply {
                result: result.into(),
                detail,
            }))
        };
        match res {
            Ok(_) => reply(ReplicaReportResult::Changed, String::new()),
            Err(e) => match reject_kind(&e) {
                Some(RejectKind::Unchanged) => reply(ReplicaReportResult::Unchanged, String::new()),
                Some(RejectKind::Stale) => {
                    reply(ReplicaReportResult::Stale, e.message().to_string())
                }
                _ => Err(e),
            },
        }
    }
}
