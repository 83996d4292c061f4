//! The operator API's cluster calls: the status of the cluster (Raft, sites, hosts,
//! apps) and its membership (init, add and remove nodes, a forced membership when no
//! quorum is left). Membership changes run on the leader and are audited in the
//! background. Never: change the membership from a node that is not the leader
//! (except the forced change, which exists for exactly that).

use std::collections::{BTreeMap, BTreeSet};

use openraft::ChangeMembers;
use security::Access;
use tonic::{Request, Response, Status};

use super::OperatorService;
use super::inventory::app_status;
use crate::clock::now_ms;
use crate::node::no_leader;
use crate::pb::*;
use crate::raft_types::{NodeInfo, node_id_of};
use crate::state::{self, Command};
use crate::wire;

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

pub(super) async fn status(
    svc: &OperatorService,
    req: Request<StatusRequest>,
) -> Result<Response<StatusReply>, Status> {
    svc.read(&req, "read the cluster status").await?;

    let m = svc.node.raft.metrics().borrow().clone();
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
    let a = svc.node.state.read();
    let s = &a.state;
    let reply = StatusReply {
        node: svc.node.name.clone(),
        initialized: mem.nodes().next().is_some(),
        raft_state: wire::raft_role_to_wire(m.state.into()).into(),
        leader: leader.as_ref().map(|l| l.name.clone()).unwrap_or_default(),
        leader_addr: leader.as_ref().map(|l| l.addr.clone()).unwrap_or_default(),
        term: m.current_term,
        commit_index: svc.node.committed_index(),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        last_log_index: m.last_log_index.unwrap_or(0),
        millis_since_quorum_ack: m.millis_since_quorum_ack.unwrap_or(0),
        nodes,
        sites: s
            .sites
            .values()
            .map(|r| SiteStatus {
                id: r.id.to_string(),
                role: wire::site_role_to_wire(r.role).into(),
                state: wire::site_state_to_wire(r.state).into(),
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
                state: wire::host_state_to_wire(h.state).into(),
                since_ms: h.since_ms,
                reason: h.reason.clone(),
            })
            .collect(),
        apps: s.apps.values().map(|r| app_status(s, r)).collect(),
        topology_version: s.topology().map_or(0, |t| t.version),
        audit_entries: s.audit.len() as u64,
        audit_head: s.audit_head(),
        store_warning: svc
            .node
            .membership
            .halted()
            .unwrap_or_else(|| svc.node.store_warning.clone()),
    };
    Ok(Response::new(reply))
}

pub(super) async fn init_cluster(
    svc: &OperatorService,
    req: Request<InitClusterRequest>,
) -> Result<Response<InitClusterReply>, Status> {
    let what = "initialize the cluster";
    svc.guarded(Access::Administer, what, req, |req, actor| async move {
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
        if !members.contains_key(&svc.node.id) {
            return Err(Status::invalid_argument(format!(
                "this node ({}) is not in the list; send `cluster init` to one of the listed nodes",
                svc.node.name
            )));
        }
        let voters: Vec<String> = members.values().map(|n| n.name.clone()).collect();
        match svc.node.raft.initialize(members).await {
            Ok(()) => {
                svc.audit_membership(&actor, format!("initialized with voters {}", voters.join(", ")));
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

pub(super) async fn add_node(
    svc: &OperatorService,
    req: Request<AddNodeRequest>,
) -> Result<Response<MembershipReply>, Status> {
    let what = "add an orchestrator node";
    svc.guarded(Access::Administer, what, req, |req, actor| async move {
        svc.require_leader()?;
        let n = req
            .node
            .ok_or_else(|| Status::invalid_argument("no node given"))?;
        topology::ids::check_id(&n.name)
            .map_err(|e| Status::invalid_argument(format!("node name {:?}: {e}", n.name)))?;
        let id = node_id_of(&n.name);
        let info = NodeInfo {
            name: n.name.clone(),
            site: n.site,
            addr: n.addr,
        };
        // A node a forced change removed comes back wiped: stop refusing it.
        svc.node.membership.readmit(&n.name, &svc.node.name);
        svc.node
            .raft
            .add_learner(id, info, true)
            .await
            .map_err(|e| {
                Status::failed_precondition(format!("adding {} as a learner failed: {e}", n.name))
            })?;
        if req.voter {
            svc.node
                .raft
                .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                .await
                .map_err(|e| {
                    Status::failed_precondition(format!("making {} a voter failed: {e}", n.name))
                })?;
        }
        svc.audit_membership(
            &actor,
            format!(
                "added {} as {}",
                n.name,
                if req.voter { "a voter" } else { "a learner" }
            ),
        );
        Ok(Response::new(svc.membership_reply()))
    })
    .await
}

pub(super) async fn remove_node(
    svc: &OperatorService,
    req: Request<RemoveNodeRequest>,
) -> Result<Response<MembershipReply>, Status> {
    let what = "remove an orchestrator node";
    svc.guarded(Access::Administer, what, req, |req, actor| async move {
        svc.require_leader()?;
        let name = req.name;
        let id = node_id_of(&name);
        let m = svc.node.raft.metrics().borrow().clone();
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
            svc.node
                .raft
                .change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                .await
                .map_err(|e| {
                    Status::failed_precondition(format!("removing voter {name} failed: {e}"))
                })?;
        }
        svc.node
            .raft
            .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
            .await
            .map_err(|e| Status::failed_precondition(format!("removing {name} failed: {e}")))?;
        svc.audit_membership(&actor, format!("removed {name}"));
        Ok(Response::new(svc.membership_reply()))
    })
    .await
}

pub(super) async fn force_membership(
    svc: &OperatorService,
    req: Request<ForceMembershipRequest>,
) -> Result<Response<ForceMembershipReply>, Status> {
    let what = "force the membership (declare a site lost without a quorum)";
    let actor = svc
        .admit(&req, Access::Administer, what, Some(&req.get_ref().actor))
        .await?;
    let req = req.into_inner();
    // No audit entry can be committed now (there is no quorum): a refusal is in
    // this node's log; the change itself is audited once the node leads again.
    let refuse = |why: String| {
        tracing::warn!(node = %svc.node.name, %actor, "refused to force the membership: {why}");
        Err(Status::failed_precondition(why))
    };
    let m = svc.node.raft.metrics().borrow().clone();
    let mem = m.membership_config.membership().clone();
    let me = mem.get_node(&svc.node.id).cloned();
    let Some(me) = me.filter(|_| mem.voter_ids().any(|v| v == svc.node.id)) else {
        return refuse(format!(
            "{} is not a voter of the cluster; force it on a surviving voter",
            svc.node.name
        ));
    };
    if let Some((_, leader)) = svc.node.leader()
        && (leader.name != me.name || svc.node.is_confirmed_leader())
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
        .filter(|(id, _)| **id != svc.node.id)
        .map(|(_, n)| n.clone())
        .collect();
    let names: Vec<String> = removed.iter().map(|n| n.name.clone()).collect();
    tracing::warn!(
        node = %svc.node.name, %actor,
        "forcing the membership: {} alone, {} removed (site {} declared lost without a quorum); restarting",
        me.name, names.join(", "), req.site
    );
    svc.node
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
