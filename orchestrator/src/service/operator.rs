//! The operator gRPC service: status, cluster membership, topology, apps, volumes and
//! the audit log. Reads are served from this node's applied state; writes go through
//! [`Node::write`] (forwarded to the leader when needed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::ChangeMembers;
use tonic::{Request, Response, Status};

use security::Access;

use crate::clock::now_ms;
use crate::node::{Node, no_leader};
use crate::pb::operator_server::Operator;
use crate::pb::*;
use crate::raft_types::{NodeInfo, node_id_of};
use crate::service::auth::{admit, audited};
use crate::state::{self, ClusterState, Command};

pub struct OperatorService {
    pub node: Arc<Node>,
}

/// The kebab-case name serde gives an enum value (`UpToDate` → `up-to-date`).
pub fn name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub(crate) fn actor(a: &str) -> Result<String, Status> {
    let a = a.trim();
    if a.is_empty() {
        return Err(Status::invalid_argument(
            "the request names no actor: say who is acting (e.g. alice@ops)",
        ));
    }
    Ok(a.to_string())
}

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
        desired: name(&a.desired),
        placement: a
            .placement
            .iter()
            .map(|(vm, host)| Placement {
                vm: vm.to_string(),
                host: host.to_string(),
            })
            .collect(),
        health: crate::wire::app_health_to_wire(status.health).into(),
        summary: status.summary(),
        reasons: status
            .reasons
            .iter()
            .map(crate::wire::app_reason_to_wire)
            .collect(),
    }
}

fn audit_pb(e: &state::AuditEntry) -> AuditEntry {
    AuditEntry {
        seq: e.seq,
        at_ms: e.at_ms,
        actor: e.actor.clone(),
        action: e.action.clone(),
        detail: e.detail.clone(),
        prev: e.prev.clone(),
        digest: e.digest.clone(),
        event: Some(crate::wire::audit_event_to_wire(&e.event)),
    }
}

impl OperatorService {
    /// Record a membership change in the audit log. In the background, since right
    /// after `cluster init` there is no leader yet to commit it (it retries for 10 s).
    fn audit_membership(&self, actor: &str, change: String) {
        let node = self.node.clone();
        let actor = actor.to_string();
        tokio::spawn(async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let req = state::Request {
                    actor: actor.clone(),
                    at_ms: now_ms(),
                    command: Command::Membership {
                        change: change.clone(),
                    },
                };
                match node.write(req).await {
                    Ok(_) => return,
                    Err(e) if std::time::Instant::now() > deadline => {
                        tracing::error!(node = %node.name, "cannot audit the membership change ({change}): {}", e.message());
                        return;
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                }
            }
        });
    }

    /// Admit a read (any operator role; nodes and agents are refused).
    async fn read<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        admit(&self.node, req, Access::Read, what, "")
            .await
            .map(drop)
    }

    /// Admit a call: the actor for the audit log (see [`admit`]); without TLS, the name
    /// the request claims, which a mutating call must give.
    /// `claimed` is None for calls whose request names no actor (membership).
    async fn admit<T>(
        &self,
        req: &Request<T>,
        access: Access,
        what: &str,
        claimed: Option<&str>,
    ) -> Result<String, Status> {
        let a = admit(&self.node, req, access, what, claimed.unwrap_or_default()).await?;
        match (access, claimed) {
            (Access::Read, _) => Ok(a),
            _ if self.node.security.tls.is_some() => Ok(a),
            (_, None) => Ok("operator (no TLS)".into()),
            (_, Some(_)) => actor(&a),
        }
    }

    /// A mutating call: admitted (see [`Self::admit`]), then `body` with the request
    /// and the actor, whose refusal by the state machine is audited (see [`audited`]).
    async fn guarded<T, R, Fut>(
        &self,
        access: Access,
        what: &str,
        claimed: Option<String>,
        req: Request<T>,
        body: impl FnOnce(T, String) -> Fut,
    ) -> Result<R, Status>
    where
        Fut: std::future::Future<Output = Result<R, Status>>,
    {
        let actor = self.admit(&req, access, what, claimed.as_deref()).await?;
        let r = body(req.into_inner(), actor.clone()).await;
        audited(&self.node, &actor, what, r).await
    }

    /// Membership changes must run on the leader; elsewhere say where it is.
    fn require_leader(&self) -> Result<(), Status> {
        match self.node.leader() {
            Some((id, _)) if id == self.node.id => Ok(()),
            Some((_, info)) => {
                let mut s = Status::failed_precondition(format!(
                    "membership changes run on the leader: {info}; send the request there"
                ));
                if let Ok(v) = info.addr.parse() {
                    s.metadata_mut().insert("x-metrodr-leader", v);
                }
                Err(s)
            }
            None => Err(no_leader(&self.node.name)),
        }
    }

    fn membership_reply(&self) -> MembershipReply {
        let m = self.node.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<_> = mem.voter_ids().collect();
        let mut reply = MembershipReply::default();
        for (id, info) in mem.nodes() {
            if voters.contains(id) {
                reply.voters.push(info.name.clone());
            } else {
                reply.learners.push(info.name.clone());
            }
        }
        reply
    }
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        self.read(&req, "read the cluster status").await?;

        let m = self.node.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<_> = mem.voter_ids().collect();
        let leader = m.current_leader.and_then(|id| mem.get_node(&id).cloned());
        let matched: BTreeMap<u64, Option<u64>> = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        let nodes = mem
            .nodes()
            .map(|(id, info)| NodeStatus {
                name: info.name.clone(),
                site: info.site.clone(),
                addr: info.addr.clone(),
                voter: voters.contains(id),
                leader: m.current_leader == Some(*id),
                matched_index: matched
                    .get(id)
                    .copied()
                    .flatten()
                    .map_or(-1, |i| i64::try_from(i).unwrap_or(i64::MAX)),
            })
            .collect();
        let a = self.node.state.read();
        let s = &a.state;
        let reply = StatusReply {
            node: self.node.name.clone(),
            initialized: mem.nodes().next().is_some(),
            raft_state: format!("{:?}", m.state).to_lowercase(),
            leader: leader.as_ref().map(|l| l.name.clone()).unwrap_or_default(),
            leader_addr: leader.as_ref().map(|l| l.addr.clone()).unwrap_or_default(),
            term: m.current_term,
            commit_index: self.node.committed_index(),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            millis_since_quorum_ack: m.millis_since_quorum_ack.unwrap_or(0),
            nodes,
            sites: s
                .sites
                .values()
                .map(|r| SiteStatus {
                    id: r.id.to_string(),
                    role: name(&r.role),
                    state: name(&r.state),
                    since_ms: r.since_ms,
                    reason: r.reason.clone(),
                })
                .collect(),
            hosts: s
                .hosts
                .values()
                .map(|h| HostStatus {
                    id: h.id.to_string(),
                    site: h.site.to_string(),
                    state: name(&h.state),
                    since_ms: h.since_ms,
                    reason: h.reason.clone(),
                })
                .collect(),
            apps: s.apps.values().map(|r| app_status(s, r)).collect(),
            topology_version: s.topology().map_or(0, |t| t.version),
            audit_entries: s.audit.len() as u64,
            audit_head: s.audit_head(),
            store_warning: self
                .node
                .membership
                .halted()
                .unwrap_or_else(|| self.node.store_warning.clone()),
        };
        Ok(Response::new(reply))
    }

    async fn init_cluster(
        &self,
        req: Request<InitClusterRequest>,
    ) -> Result<Response<InitClusterReply>, Status> {
        let what = "initialize the cluster";
        self.guarded(Access::Administer, what, None, req, |req, actor| async move {
            if req.nodes.is_empty() {
                return Err(Status::invalid_argument(
                    "no nodes given: list the orchestrator nodes (name, site, addr)",
                ));
            }
            let mut members = BTreeMap::new();
            for n in &req.nodes {
                topology::ids::check_id(&n.name)
                    .map_err(|e| Status::invalid_argument(format!("node name {:?}: {e}", n.name)))?;
                if n.addr.parse::<std::net::SocketAddr>().is_err() && !n.addr.contains(':') {
                    return Err(Status::invalid_argument(format!(
                        "node {} has address {:?}; expected host:port",
                        n.name, n.addr
                    )));
                }
                let info = NodeInfo {
                    name: n.name.clone(),
                    site: n.site.clone(),
                    addr: n.addr.clone(),
                };
                if members.insert(node_id_of(&n.name), info).is_some() {
                    return Err(Status::invalid_argument(format!(
                        "node {} is listed twice (or two names share a Raft id)",
                        n.name
                    )));
                }
            }
            if !members.contains_key(&self.node.id) {
                return Err(Status::invalid_argument(format!(
                    "this node ({}) is not in the list; send `cluster init` to one of the listed nodes",
                    self.node.name
                )));
            }
            let voters: Vec<String> = members.values().map(|n| n.name.clone()).collect();
            match self.node.raft.initialize(members).await {
                Ok(()) => {
                    self.audit_membership(&actor, format!("initialized with voters {}", voters.join(", ")));
                    Ok(Response::new(InitClusterReply { voters }))
                }
                Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(e),
                )) => Err(Status::failed_precondition(format!(
                    "the cluster is already initialized ({e}); use `metrodr cluster add-node` to grow it"
                ))),
                Err(e) => Err(Status::internal(format!("initialize failed: {e}"))),
            }
        })
        .await
    }

    async fn add_node(
        &self,
        req: Request<AddNodeRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let what = "add an orchestrator node";
        self.guarded(
            Access::Administer,
            what,
            None,
            req,
            |req, actor| async move {
                self.require_leader()?;
                let n = req
                    .node
                    .ok_or_else(|| Status::invalid_argument("no node given"))?;
                topology::ids::check_id(&n.name).map_err(|e| {
                    Status::invalid_argument(format!("node name {:?}: {e}", n.name))
                })?;
                let id = node_id_of(&n.name);
                let info = NodeInfo {
                    name: n.name.clone(),
                    site: n.site,
                    addr: n.addr,
                };
                // A node a forced change removed comes back wiped: stop refusing it.
                self.node.membership.readmit(&n.name, &self.node.name);
                self.node
                    .raft
                    .add_learner(id, info, true)
                    .await
                    .map_err(|e| {
                        Status::failed_precondition(format!(
                            "adding {} as a learner failed: {e}",
                            n.name
                        ))
                    })?;
                if req.voter {
                    self.node
                        .raft
                        .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                        .await
                        .map_err(|e| {
                            Status::failed_precondition(format!(
                                "making {} a voter failed: {e}",
                                n.name
                            ))
                        })?;
                }
                self.audit_membership(
                    &actor,
                    format!(
                        "added {} as {}",
                        n.name,
                        if req.voter { "a voter" } else { "a learner" }
                    ),
                );
                Ok(Response::new(self.membership_reply()))
            },
        )
        .await
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let what = "remove an orchestrator node";
        self.guarded(
            Access::Administer,
            what,
            None,
            req,
            |req, actor| async move {
                self.require_leader()?;
                let name = req.name;
                let id = node_id_of(&name);
                let m = self.node.raft.metrics().borrow().clone();
                if m.membership_config.membership().get_node(&id).is_none() {
                    return Err(Status::not_found(format!(
                        "no node {name:?} in the cluster"
                    )));
                }
                let voters: BTreeSet<_> = m.membership_config.membership().voter_ids().collect();
                if voters.contains(&id) {
                    if voters.len() <= 1 {
                        return Err(Status::failed_precondition(
                            "refusing to remove the last voter",
                        ));
                    }
                    self.node
                        .raft
                        .change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                        .await
                        .map_err(|e| {
                            Status::failed_precondition(format!(
                                "removing voter {name} failed: {e}"
                            ))
                        })?;
                }
                self.node
                    .raft
                    .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                    .await
                    .map_err(|e| {
                        Status::failed_precondition(format!("removing {name} failed: {e}"))
                    })?;
                self.audit_membership(&actor, format!("removed {name}"));
                Ok(Response::new(self.membership_reply()))
            },
        )
        .await
    }

    async fn apply_topology(
        &self,
        req: Request<ApplyTopologyRequest>,
    ) -> Result<Response<ApplyTopologyReply>, Status> {
        let what = "apply a topology";
        self.guarded(Access::Administer, what, Some(req.get_ref().actor.clone()), req, |req, actor| async move {
            let report = topology::check_str(&req.text);
            let (Some(model), Some(plan)) = (report.topology, report.plan) else {
                let map = topology::SourceMap::new(&req.text);
                let lines: Vec<String> = report
                    .diagnostics
                    .iter()
                    .filter(|d| d.is_error())
                    .take(10)
                    .map(|d| {
                        let at = d.span.as_ref().map(|s| map.line_col(s.start));
                        match at {
                            Some(p) => {
                                format!("line {}:{}: [{}] {}", p.line, p.column, d.code, d.message)
                            }
                            None => format!("[{}] {}", d.code, d.message),
                        }
                    })
                    .collect();
                return Err(Status::invalid_argument(format!(
                    "the topology is invalid ({} errors; nothing was applied):\n{}\nrun `metrodr topology validate FILE` for details",
                    report.diagnostics.iter().filter(|d| d.is_error()).count(),
                    lines.join("\n")
                )));
            };
            let warnings = report
                .diagnostics
                .iter()
                .map(|d| format!("[{}] {}", d.code, d.message))
                .collect();
            let placements = plan
                .placements
                .iter()
                .map(|p| (p.vm.clone(), p.host.clone()))
                .collect();
            let written = self
                .node
                .write(state::Request {
                    actor,
                    at_ms: now_ms(),
                    command: Command::ApplyTopology {
                        text: req.text,
                        model: Box::new(model),
                        placements,
                    },
                })
                .await?;
            let version = match written.outcome {
                state::Outcome::TopologyVersion(v) => v,
                _ => 0,
            };
            Ok(Response::new(ApplyTopologyReply {
                version,
                audit_seq: written.audit_seq,
                warnings,
            }))
        })
        .await
    }

    async fn get_topology(
        &self,
        req: Request<GetTopologyRequest>,
    ) -> Result<Response<GetTopologyReply>, Status> {
        self.read(&req, "read the topology").await?;

        let want = req.into_inner().version;
        let a = self.node.state.read();
        let latest = a.state.topology().map_or(0, |t| t.version);
        let rec = if want == 0 {
            a.state.topology()
        } else {
            a.state.topologies.get(&want)
        };
        let rec = rec.ok_or_else(|| {
            if latest == 0 {
                Status::not_found(
                    "no topology has been applied yet: run `metrodr topology apply FILE`",
                )
            } else {
                Status::not_found(format!(
                    "no topology version {want}; versions 1..={latest} exist"
                ))
            }
        })?;
        Ok(Response::new(GetTopologyReply {
            version: rec.version,
            text: rec.text.clone(),
            digest: rec.digest.clone(),
            applied_by: rec.applied_by.clone(),
            applied_ms: rec.applied_ms,
            latest_version: latest,
        }))
    }

    async fn list_apps(
        &self,
        req: Request<ListAppsRequest>,
    ) -> Result<Response<ListAppsReply>, Status> {
        self.read(&req, "list apps").await?;

        let a = self.node.state.read();
        let apps = a
            .state
            .apps
            .values()
            .map(|r| app_status(&a.state, r))
            .collect();
        Ok(Response::new(ListAppsReply { apps }))
    }

    async fn list_volumes(
        &self,
        req: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesReply>, Status> {
        self.read(&req, "list volumes").await?;

        let app = req.into_inner().app;
        let a = self.node.state.read();
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
                mode: name(&v.mode),
                epoch: v.epoch.0,
                replicas: v
                    .replicas
                    .iter()
                    .map(|r| ReplicaStatus {
                        site: r.site.to_string(),
                        role: name(&r.role),
                        epoch: r.epoch.0,
                        data: name(&r.data),
                        host: r.host.as_ref().map(ToString::to_string).unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListVolumesReply { volumes }))
    }

    async fn audit_list(
        &self,
        req: Request<AuditListRequest>,
    ) -> Result<Response<AuditListReply>, Status> {
        self.read(&req, "read the audit log").await?;

        let req = req.into_inner();
        let limit = match req.limit {
            0 => 100,
            n if n > 10_000 => {
                return Err(Status::invalid_argument(
                    "limit is at most 10000; page with from_seq",
                ));
            }
            n => n as usize,
        };
        let a = self.node.state.read();
        let entries = a
            .state
            .audit
            .iter()
            .skip_while(|(seq, _)| **seq < req.from_seq)
            .take(limit)
            .map(|(_, e)| audit_pb(e))
            .collect();
        Ok(Response::new(AuditListReply {
            entries,
            total: a.state.audit.len() as u64,
        }))
    }

    async fn audit_verify(
        &self,
        req: Request<AuditVerifyRequest>,
    ) -> Result<Response<AuditVerifyReply>, Status> {
        self.read(&req, "verify the audit log").await?;

        let at = req.into_inner().at_seq;
        let a = self.node.state.read();
        let v = a.state.verify_audit();
        let (broken_seq, broken_reason) = v.broken.clone().unwrap_or((0, String::new()));
        Ok(Response::new(AuditVerifyReply {
            node: self.node.name.clone(),
            ok: v.ok(),
            entries: a.state.audit.len() as u64,
            head: v.head,
            broken_seq,
            broken_reason,
            digest_at_seq: a
                .state
                .audit
                .get(&at)
                .map(|e| e.digest.clone())
                .unwrap_or_default(),
        }))
    }

    async fn note(&self, req: Request<NoteRequest>) -> Result<Response<WriteReply>, Status> {
        let what = "write a note in the audit log";
        self.guarded(
            Access::Operate,
            what,
            Some(req.get_ref().actor.clone()),
            req,
            |req, actor| async move {
                let w = self
                    .node
                    .write(state::Request {
                        actor,
                        at_ms: now_ms(),
                        command: Command::Note { text: req.text },
                    })
                    .await?;
                Ok(Response::new(WriteReply {
                    audit_seq: w.audit_seq,
                    log_index: w.log_index,
                }))
            },
        )
        .await
    }

    async fn list_hosts(
        &self,
        req: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsReply>, Status> {
        self.read(&req, "list hosts").await?;

        let now = std::time::Instant::now();
        let from_leader = self.node.leader.leases().is_leader();
        let a = self.node.state.read();
        let leases = self.node.leader.leases();
        let hosts = a
            .state
            .hosts
            .values()
            .map(|h| {
                let inv = h.inventory.clone();
                HostInfo {
                    id: h.id.to_string(),
                    site: h.site.to_string(),
                    state: name(&h.state),
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

    async fn list_vms(
        &self,
        req: Request<ListVmsRequest>,
    ) -> Result<Response<ListVmsReply>, Status> {
        self.read(&req, "list VMs").await?;

        let a = self.node.state.read();
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
                    state: match down {
                        Some(_) => "unknown".into(),
                        None => rec.map(|r| name(&r.state)).unwrap_or_default(),
                    },
                    reported_host: rec.map(|r| r.host.to_string()).unwrap_or_default(),
                    since_ms: rec.map_or(0, |r| r.since_ms),
                    reason: match (down, rec) {
                        (Some(h), Some(r)) => format!(
                            "host {} is down ({}); last reported {} ({})",
                            h.id,
                            h.reason,
                            name(&r.state),
                            r.reason
                        ),
                        _ => rec.map(|r| r.reason.clone()).unwrap_or_default(),
                    },
                });
            }
        }
        Ok(Response::new(ListVmsReply { vms }))
    }

    async fn vm_action(
        &self,
        req: Request<VmActionRequest>,
    ) -> Result<Response<VmActionReply>, Status> {
        let what = "act on a VM";
        self.guarded(Access::Operate, what, Some(req.get_ref().actor.clone()), req, |req, actor| async move {
            let vm = topology::VmId::new(req.vm.as_str());
            let timeout_s = if req.timeout_s == 0 {
                60
            } else {
                req.timeout_s
            };
            let (host, action) = {
                let a = self.node.state.read();
                let (app, host) = a
                    .state
                    .apps
                    .values()
                    .find_map(|app| app.placement.get(&vm).map(|h| (app.id.clone(), h.clone())))
                    .ok_or_else(|| {
                        Status::not_found(format!("no VM {:?} is placed on any host", req.vm))
                    })?;
                let action = match req.action.as_str() {
                    "define" => {
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
                    "start" => state::AgentAction::Start { vm: vm.clone() },
                    "shutdown" => state::AgentAction::Shutdown {
                        vm: vm.clone(),
                        timeout_s,
                    },
                    "destroy" => state::AgentAction::Destroy { vm: vm.clone() },
                    "undefine" => state::AgentAction::Undefine { vm: vm.clone() },
                    "suspend" => state::AgentAction::Suspend { vm: vm.clone() },
                    "resume" => state::AgentAction::Resume { vm: vm.clone() },
                    other => {
                        return Err(Status::invalid_argument(format!(
                            "unknown action {other:?}: use define, start, shutdown, destroy, undefine, suspend or resume"
                        )));
                    }
                };
                (host, action)
            };
            let mut changes = self.node.state.subscribe();
            let issuer = state::Issuer::Operator {
                actor: actor.clone(),
            };
            let w = self
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
            let mut status = status_of(&self.node);
            let mut message = None;
            if req.wait {
                let deadline = tokio::time::Instant::now()
                    + std::time::Duration::from_secs(u64::from(timeout_s) + 30);
                while status == state::CommandStatus::Pending {
                    match tokio::time::timeout_at(deadline, changes.changed()).await {
                        Ok(Ok(())) => status = status_of(&self.node),
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
                status: status.name().into(),
                message,
            }))
        })
        .await
    }

    async fn start_operation(
        &self,
        req: Request<StartOperationRequest>,
    ) -> Result<Response<StartOperationReply>, Status> {
        let dry_run = req.get_ref().dry_run;
        let what = "start an operation";
        let actor = self
            .admit(
                &req,
                if dry_run {
                    Access::Read
                } else {
                    Access::Operate
                },
                what,
                Some(&req.get_ref().actor),
            )
            .await?;
        let r = async {
            let actor = actor.clone();

            let req = req.into_inner();
            Ok(Response::new(
                super::operations::start(&self.node, actor, req).await?,
            ))
        }
        .await;
        if dry_run {
            // A plan that cannot be made changed nothing: the caller hears why.
            r
        } else {
            audited(&self.node, &actor, what, r).await
        }
    }

    async fn get_operation(
        &self,
        req: Request<GetOperationRequest>,
    ) -> Result<Response<OperationReply>, Status> {
        self.read(&req, "read an operation").await?;

        Ok(Response::new(super::operations::get(
            &self.node,
            &req.into_inner(),
        )?))
    }

    async fn list_operations(
        &self,
        req: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsReply>, Status> {
        self.read(&req, "list operations").await?;

        Ok(Response::new(super::operations::list(
            &self.node,
            &req.into_inner(),
        )?))
    }

    async fn approve_operation(
        &self,
        req: Request<ApproveOperationRequest>,
    ) -> Result<Response<WriteReply>, Status> {
        let what = "approve an operation";
        self.guarded(
            Access::Operate,
            what,
            Some(req.get_ref().actor.clone()),
            req,
            |req, actor| async move {
                Ok(Response::new(
                    super::operations::approve(&self.node, actor, req).await?,
                ))
            },
        )
        .await
    }

    async fn force_membership(
        &self,
        req: Request<ForceMembershipRequest>,
    ) -> Result<Response<ForceMembershipReply>, Status> {
        let what = "force the membership (declare a site lost without a quorum)";
        let actor = self
            .admit(&req, Access::Administer, what, Some(&req.get_ref().actor))
            .await?;
        let req = req.into_inner();
        // No audit entry can be committed now (there is no quorum): a refusal is in
        // this node's log; the change itself is audited once the node leads again.
        let refuse = |why: String| {
            tracing::warn!(node = %self.node.name, %actor, "refused to force the membership: {why}");
            Err(Status::failed_precondition(why))
        };
        let m = self.node.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership().clone();
        let me = mem.get_node(&self.node.id).cloned();
        let Some(me) = me.filter(|_| mem.voter_ids().any(|v| v == self.node.id)) else {
            return refuse(format!(
                "{} is not a voter of the cluster; force it on a surviving voter",
                self.node.name
            ));
        };
        if let Some((_, leader)) = self.node.leader()
            && (leader.name != me.name || self.node.is_confirmed_leader())
        {
            return refuse(format!(
                "the cluster has a quorum (leader {leader}): declare the loss without --force (`metrodr site fail {}`)",
                req.site
            ));
        }
        if req.site == me.site {
            return refuse(format!(
                "{} runs at {}, the site to declare lost: force it on a node of the surviving site",
                me.name, me.site
            ));
        }
        if !mem.nodes().any(|(_, n)| n.site == req.site) {
            return refuse(format!(
                "no orchestrator node runs at a site {:?}",
                req.site
            ));
        }
        let removed: Vec<NodeInfo> = mem
            .nodes()
            .filter(|(id, _)| **id != self.node.id)
            .map(|(_, n)| n.clone())
            .collect();
        let names: Vec<String> = removed.iter().map(|n| n.name.clone()).collect();
        tracing::warn!(
            node = %self.node.name, %actor,
            "forcing the membership: {} alone, {} removed (site {} declared lost without a quorum); restarting",
            me.name, names.join(", "), req.site
        );
        self.node
            .membership
            .force
            .send_replace(Some(crate::store::force::Forced {
                actor,
                site: req.site,
                removed,
                at_ms: now_ms(),
                log_id: None,
                audited: false,
            }));
        Ok(Response::new(ForceMembershipReply {
            voter: me.name,
            removed: names,
        }))
    }

    async fn recover_site(
        &self,
        req: Request<RecoverSiteRequest>,
    ) -> Result<Response<RecoverSiteReply>, Status> {
        let what = "recover a site";
        self.guarded(
            Access::Operate,
            what,
            Some(req.get_ref().actor.clone()),
            req,
            |req, actor| async move {
                Ok(Response::new(
                    super::operations::recover_site(&self.node, actor, req).await?,
                ))
            },
        )
        .await
    }

    async fn get_report(
        &self,
        req: Request<GetReportRequest>,
    ) -> Result<Response<GetReportReply>, Status> {
        self.read(&req, "read a report").await?;

        Ok(Response::new(super::reports::get(
            &self.node,
            &req.into_inner(),
        )?))
    }

    async fn drill_schedules(
        &self,
        req: Request<DrillSchedulesRequest>,
    ) -> Result<Response<DrillSchedulesReply>, Status> {
        self.read(&req, "read drill schedules").await?;

        let list = crate::schedule::status(&self.node.state.read().state);
        Ok(Response::new(DrillSchedulesReply {
            schedules_json: serde_json::to_string(&list)
                .map_err(|e| Status::internal(format!("cannot encode: {e}")))?,
        }))
    }

    async fn readiness(
        &self,
        req: Request<ReadinessRequest>,
    ) -> Result<Response<ReadinessReply>, Status> {
        self.read(&req, "read readiness").await?;

        Ok(Response::new(super::reports::readiness(
            &self.node,
            &req.into_inner(),
        )?))
    }
}
