//! The agent's calls to the orchestrator (registration, renewal, the command poll,
//! reports), each made by a task of its own and answered as the core's [`Input`].
//! The core picks the address; [`Clients`] keeps one lazy connection per address.
//!
//! Never: decide anything from an answer's text (the core gets typed answers), or
//! wait without a deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ids::CommandId;
use proto::agent::wire::{command_from_wire, event_to_wire, outcome_to_wire, vm_state_to_wire};
use proto::pb;
use proto::pb::agent_client::AgentClient;
use tonic::transport::Channel;

use super::{Resources, hv};
use crate::config::DomainTypeSetting;
use crate::core::vm_states::reportable;
use crate::core::{Batch, Delivered, Input, ObsSeq, RegisterFailure, RenewAnswer};
use crate::domain_xml::DomainType;
use crate::hypervisor::{detect_domain_type, only_ours};

/// How long a report or a registration may take: a node cut off by a partition must
/// not hold the agent's reports (nor, after them, its registration).
pub(super) const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// One lazily connected client per orchestrator address.
pub(super) struct Clients {
    tls: Option<Arc<security::Tls>>,
    by_addr: HashMap<String, AgentClient<Channel>>,
}

impl Clients {
    pub(super) fn new(tls: Option<Arc<security::Tls>>) -> Clients {
        Clients {
            tls,
            by_addr: HashMap::new(),
        }
    }

    /// The client for `addr`, or why there can be none (a malformed address).
    pub(super) fn get(&mut self, addr: &str) -> Result<AgentClient<Channel>, String> {
        if let Some(c) = self.by_addr.get(addr) {
            return Ok(c.clone());
        }
        let ep = security::grpc::endpoint(addr, self.tls.as_deref())?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        let c = AgentClient::new(ep.connect_lazy());
        self.by_addr.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

async fn within<T>(
    ms: u64,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_millis(ms), call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(e)) => Err(e.message().to_string()),
        Err(_) => Err(format!("the orchestrator did not answer within {ms} ms")),
    }
}

fn rpc_ms() -> u64 {
    u64::try_from(RPC_TIMEOUT.as_millis()).unwrap_or(u64::MAX)
}

/// List capacity and domains, then register.
pub(super) async fn register(
    res: Arc<Resources>,
    client: Result<AgentClient<Channel>, String>,
    obs: ObsSeq,
    fenced: bool,
) -> Input {
    let failed = |why| Input::RegisterFailed { obs, why };
    let host = res.cfg.host.clone();
    let listed = hv(&res, move |h| {
        Ok((h.capacity()?, only_ours(h.list()?, &host)))
    })
    .await;
    let (cap, domains) = match listed {
        Ok(v) => v,
        Err(e) => return failed(RegisterFailure::Libvirt(e.to_string())),
    };
    let mut client = match client {
        Ok(c) => c,
        Err(e) => return failed(RegisterFailure::Cluster(e)),
    };
    let ty = match res.cfg.domain_type {
        DomainTypeSetting::Qemu => DomainType::Qemu,
        DomainTypeSetting::Kvm => DomainType::Kvm,
        DomainTypeSetting::Auto => detect_domain_type(&cap, None),
    };
    let states = reportable(&domains);
    let req = pb::AgentRegisterRequest {
        host: res.cfg.host.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        vcpus: cap.vcpus,
        memory_bytes: cap.memory_bytes,
        hypervisor: format!("{} ({})", res.hv.uri(), cap.driver),
        domain_type: ty.as_str().into(),
        domains: states
            .iter()
            .map(|(vm, state)| pb::DomainReport {
                vm: vm.to_string(),
                state: vm_state_to_wire(*state).into(),
            })
            .collect(),
        fenced,
        protocol_version: proto::agent::PROTOCOL_VERSION,
    };
    match within(rpc_ms(), client.register(req)).await {
        Ok(r) => Input::Registered {
            obs,
            states,
            domain_type: ty,
            renew_ms: r.renew_ms,
            leader: r.leader_addr,
            adopted: domains.iter().filter(|d| d.managed.is_some()).count(),
        },
        Err(e) => failed(RegisterFailure::Cluster(e)),
    }
}

pub(super) async fn renew(
    host: String,
    client: Result<AgentClient<Channel>, String>,
    seq: u64,
    timeout_ms: u64,
) -> Input {
    let mut client = match client {
        Ok(c) => c,
        Err(error) => return Input::RenewFailed { seq, error },
    };
    match within(timeout_ms, client.renew(pb::RenewRequest { host, seq })).await {
        Ok(r) if r.granted => Input::Renewed {
            seq,
            answer: RenewAnswer::Granted {
                lease_ms: r.lease_ms,
                leader: r.leader_addr,
            },
        },
        Ok(r) => Input::Renewed {
            seq,
            answer: RenewAnswer::Refused {
                leader: r.leader_addr,
                reason: r.reason,
            },
        },
        Err(error) => Input::RenewFailed { seq, error },
    }
}

pub(super) async fn poll(
    host: String,
    client: Result<AgentClient<Channel>, String>,
    after: CommandId,
    wait_ms: u32,
    timeout_ms: u64,
) -> Input {
    let mut client = match client {
        Ok(c) => c,
        Err(error) => return Input::PollFailed { error },
    };
    let req = pb::PollRequest {
        host,
        after_id: after.0,
        wait_ms,
    };
    match within(timeout_ms, client.poll(req)).await {
        Ok(r) => Input::Polled {
            commands: r
                .commands
                .into_iter()
                .map(|cmd| {
                    let id = CommandId(cmd.id);
                    match command_from_wire(cmd) {
                        Ok((id, action)) => Delivered::Command {
                            id,
                            action: Box::new(action),
                        },
                        Err(e) => Delivered::Unreadable {
                            id,
                            why: e.to_string(),
                        },
                    }
                })
                .collect(),
        },
        Err(error) => Input::PollFailed { error },
    }
}

pub(super) async fn report(
    host: String,
    client: Result<AgentClient<Channel>, String>,
    batch: Batch,
) -> Input {
    let mut client = match client {
        Ok(c) => c,
        Err(error) => return Input::ReportFailed { error },
    };
    let req = pb::ReportRequest {
        host,
        results: batch
            .results
            .iter()
            .map(|(id, e)| outcome_to_wire(*id, e))
            .collect(),
        domains: batch
            .domains
            .iter()
            .map(|(vm, (state, _))| pb::DomainReport {
                vm: vm.to_string(),
                state: vm_state_to_wire(*state).into(),
            })
            .collect(),
        events: batch
            .events
            .iter()
            .map(|(seq, e)| event_to_wire(*seq, e))
            .collect(),
    };
    match within(rpc_ms(), client.report(req)).await {
        Ok(_) => Input::ReportSent,
        Err(error) => Input::ReportFailed { error },
    }
}
