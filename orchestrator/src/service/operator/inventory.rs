//! The operator API's apps, volumes, hosts and VMs: what the state records of each,
//! with its state as an enum, and an operator's action on a VM (queued for the agent
//! of its host). Never: show the last report of a VM whose host is down as its state
//! now.

use security::Access;
use tonic::{Request, Response, Status};

use super::OperatorService;
use crate::clock::now_ms;
use crate::node::Node;
use crate::pb::*;
use crate::state::{self, ClusterState, Command};
use crate::wire;

pub fn app_status(s: &ClusterState, a: &state::AppRecord) -> AppStatus {
    let model = s.topology().and_then(|t| t.model.app(&a.id));
    let status = s.app_status(&a.id).unwrap_or(state::AppStatus {
        health: state::AppHealth::Down,
        reasons: Vec::new(),
    });
    AppStatus {
        id: a.id.to_string(),
        name: model.map(|m| m.name.clone()).unwrap_or_default(),
        tier: model.map_or(0, |m| m.tier),
        active_site: a.active_site.to_string(),
        preferred_site: model
            .map(|m| m.preferred_site.to_string())
            .unwrap_or_default(),
        desired: wire::desired_to_wire(a.desired).into(),
        placement: a
            .placement
            .iter()
            .map(|(vm, host)| Placement {
                vm: vm.to_string(),
                host: host.to_string(),
            })
            .collect(),
        health: wire::app_health_to_wire(status.health).into(),
        summary: status.summary(),
        reasons: status
            .reasons
            .iter()
            .map(wire::app_reason_to_wire)
            .collect(),
    }
}

pub(super) async fn list_apps(
    svc: &OperatorService,
    req: Request<ListAppsRequest>,
) -> Result<Response<ListAppsReply>, Status> {
    svc.read(&req, "list apps").await?;

    let a = svc.node.state.read();
    let apps = a
        .state
        .apps
        .values()
        .map(|r| app_status(&a.state, r))
        .collect();
    Ok(Response::new(ListAppsReply { apps }))
}

pub(super) async fn list_volumes(
    svc: &OperatorService,
    req: Request<ListVolumesRequest>,
) -> Result<Response<ListVolumesReply>, Status> {
    svc.read(&req, "list volumes").await?;

    let app = req.into_inner().app;
    let a = svc.node.state.read();
    if !app.is_empty() && !a.state.apps.contains(&topology::AppId::new(app.as_str())) {
        return Err(Status::not_found(format!("no app {app:?}")));
    }
    let volumes = a
        .state
        .volumes
        .values()
        .filter(|v| app.is_empty() || v.app.as_str() == app)
        .map(|v| VolumeStatus {
            id: v.id.to_string(),
            app: v.app.to_string(),
            mode: wire::replication_mode_to_wire(v.mode).into(),
            epoch: v.epoch.0,
            replicas: v
                .replicas
                .iter()
                .map(|r| ReplicaStatus {
                    site: r.site.to_string(),
                    role: wire::replica_role_to_wire(r.role).into(),
                    epoch: r.epoch.0,
                    data: wire::data_state_to_wire(r.data).into(),
                    host: r.host.as_ref().map(ToString::to_string).unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    Ok(Response::new(ListVolumesReply { volumes }))
}

pub(super) async fn list_hosts(
    svc: &OperatorService,
    req: Request<ListHostsRequest>,
) -> Result<Response<ListHostsReply>, Status> {
    svc.read(&req, "list hosts").await?;

    let now = std::time::Instant::now();
    let from_leader = svc.node.leader.leases().is_leader();
    let a = svc.node.state.read();
    let leases = svc.node.leader.leases();
    let hosts = a
        .state
        .hosts
        .values()
        .map(|h| {
            let inv = h.inventory.clone();
            HostInfo {
                id: h.id.to_string(),
                site: h.site.to_string(),
                state: wire::host_state_to_wire(h.state).into(),
                since_ms: h.since_ms,
                reason: h.reason.clone(),
                vcpus: inv.as_ref().map_or(0, |i| i.vcpus),
                memory_bytes: inv.as_ref().map_or(0, |i| i.memory_bytes),
                hypervisor: inv
                    .as_ref()
                    .map(|i| i.hypervisor.clone())
                    .unwrap_or_default(),
                domain_type: inv
                    .as_ref()
                    .map(|i| i.domain_type.clone())
                    .unwrap_or_default(),
                agent_version: inv
                    .as_ref()
                    .map(|i| i.agent_version.clone())
                    .unwrap_or_default(),
                lease_silence_ms: leases
                    .silence(&h.id, now)
                    .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                vms: a
                    .state
                    .apps
                    .values()
                    .flat_map(|app| app.placement.iter())
                    .filter(|(_, host)| **host == h.id)
                    .map(|(vm, _)| vm.to_string())
                    .collect(),
            }
        })
        .collect();
    Ok(Response::new(ListHostsReply { hosts, from_leader }))
}

pub(super) async fn list_vms(
    svc: &OperatorService,
    req: Request<ListVmsRequest>,
) -> Result<Response<ListVmsReply>, Status> {
    svc.read(&req, "list VMs").await?;

    let a = svc.node.state.read();
    let mut vms = Vec::new();
    for app in a.state.apps.values() {
        for (vm, host) in &app.placement {
            let rec = a.state.vms.get(vm);
            // The last report from a host that is down says nothing about now: its
            // agent has fenced (destroyed) its VMs or is gone.
            let down = rec
                .and_then(|r| a.state.hosts.get(&r.host))
                .filter(|h| h.state == state::HostState::Down);
            vms.push(VmInfo {
                vm: vm.to_string(),
                app: app.id.to_string(),
                host: host.to_string(),
                seen: wire::vm_report_to_wire(match (down, rec) {
                    (_, None) => wire::VmReport::NotReported,
                    (Some(_), Some(r)) => wire::VmReport::HostDown { last: r.state },
                    (None, Some(r)) => wire::VmReport::Reported(r.state),
                }),
                reported_host: rec.map(|r| r.host.to_string()).unwrap_or_default(),
                since_ms: rec.map_or(0, |r| r.since_ms),
                reason: match (down, rec) {
                    (Some(h), Some(r)) => format!(
                        "host {} is down ({}); last reported {} ({})",
                        h.id,
                        h.reason,
                        r.state.as_str(),
                        r.reason
                    ),
                    _ => rec.map(|r| r.reason.clone()).unwrap_or_default(),
                },
            });
        }
    }
    Ok(Response::new(ListVmsReply { vms }))
}

fn unknown_action(value: i32) -> Status {
    crate::service::unknown_request_enum(
        "VM action",
        value,
        "define, start, shutdown, destroy, undefine, suspend or resume",
    )
}

pub(super) async fn vm_action(
    svc: &OperatorService,
    req: Request<VmActionRequest>,
) -> Result<Response<VmActionReply>, Status> {
    let what = "act on a VM";
    svc.guarded(Access::Operate, what, req, |req, actor| async move {
        // The request first: a bad action is told so whatever the VM.
        if crate::wire::vm_action_name(req.action).is_none() {
            return Err(unknown_action(req.action));
        }
        let vm = topology::VmId::new(req.vm.as_str());
        let timeout_s = if req.timeout_s == 0 {
            60
        } else {
            req.timeout_s
        };
        let (host, action) = {
            let a = svc.node.state.read();
            let (app, host) = a
                .state
                .apps
                .values()
                .find_map(|app| app.placement.get(&vm).map(|h| (app.id.clone(), h.clone())))
                .ok_or_else(|| {
                    Status::not_found(format!("no VM {:?} is placed on any host", req.vm))
                })?;
            use crate::pb::VmAction as A;
            let action = match A::try_from(req.action).unwrap_or(A::Unspecified) {
                A::Define => {
                    let model = a.state.topology().and_then(|t| t.model.app(&app).cloned());
                    let spec = model.and_then(|m| {
                        m.vms.iter().find(|v| v.id == vm).map(|v| {
                            topology::spec::VmSpec::from_model(
                                &m,
                                v,
                                topology::spec::NetworkSpec::None,
                            )
                        })
                    });
                    state::AgentAction::Define {
                        spec: spec.ok_or_else(|| {
                            Status::not_found(format!("VM {vm} is not in the applied topology"))
                        })?,
                    }
                }
                A::Start => state::AgentAction::Start { vm: vm.clone() },
                A::Shutdown => state::AgentAction::Shutdown {
                    vm: vm.clone(),
                    timeout_s,
                },
                A::Destroy => state::AgentAction::Destroy { vm: vm.clone() },
                A::Undefine => state::AgentAction::Undefine { vm: vm.clone() },
                A::Suspend => state::AgentAction::Suspend { vm: vm.clone() },
                A::Resume => state::AgentAction::Resume { vm: vm.clone() },
                A::Unspecified => return Err(unknown_action(req.action)),
            };
            (host, action)
        };
        let mut changes = svc.node.state.subscribe();
        let issuer = state::Issuer::Operator {
            actor: actor.clone(),
        };
        let w = svc
            .node
            .write(state::Request {
                actor,
                at_ms: now_ms(),
                command: Command::IssueAgentCommands {
                    issuer,
                    commands: vec![(host.clone(), action)],
                },
            })
            .await?;
        let state::Outcome::Commands(ids) = w.outcome else {
            return Err(Status::internal("the command was queued without an id"));
        };
        let id = ids
            .first()
            .copied()
            .ok_or_else(|| Status::internal("the command was queued without an id"))?;
        let status_of = |node: &Node| -> state::CommandStatus {
            let a = node.state.read();
            a.state
                .commands
                .get(&id.0)
                .map_or(state::CommandStatus::Pending, |c| c.status.clone())
        };
        let mut status = status_of(&svc.node);
        let mut message = None;
        if req.wait {
            let deadline = tokio::time::Instant::now()
                + std::time::Duration::from_secs(u64::from(timeout_s) + 30);
            while status == state::CommandStatus::Pending {
                match tokio::time::timeout_at(deadline, changes.changed()).await {
                    Ok(Ok(())) => status = status_of(&svc.node),
                    _ => {
                        message = Some(format!(
                            "no result yet: the agent of {host} has not reported (is it running and holding its lease? see `metrodr host list`)"
                        ));
                        break;
                    }
                }
            }
        }
        let message = match (&status, message) {
            (_, Some(m)) => m,
            (state::CommandStatus::Pending, None) => String::new(),
            (s, None) => s.to_string(),
        };
        Ok(Response::new(VmActionReply {
            command_id: id.0,
            host: host.to_string(),
            status: wire::command_progress_to_wire(status.progress()).into(),
            message,
        }))
    })
    .await
}
