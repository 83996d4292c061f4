//! The node-to-node gRPC service: Raft RPCs and forwarded writes. Every message is
//! decoded defensively: a malformed one is answered with INVALID_ARGUMENT, never a panic.

use std::sync::Arc;
use std::time::Instant;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use security::Access;

use crate::network::{decode, encode};
use crate::node::Node;
use crate::pb::RaftMessage;
use crate::pb::cluster_server::Cluster;
use crate::raft_types::{NodeId, TypeConfig, node_id_of};

pub struct ClusterService {
    pub node: Arc<Node>,
}

impl ClusterService {
    /// Only nodes may call (checked before a message is even decoded).
    async fn admit<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        crate::service::auth::admit(&self.node, req, Access::Peer, what, "")
            .await
            .map(drop)
    }

    /// A node speaks only as itself (with TLS), and a node a forced membership change
    /// removed is refused and told so.
    fn check<T>(&self, req: &Request<T>, sender: Option<NodeId>) -> Result<(), Status> {
        if let (Some(p), Some(id)) = (crate::service::auth::caller(&self.node, req)?, sender)
            && node_id_of(&p.name) != id
        {
            return Err(Status::permission_denied(format!(
                "{p} may not speak for another node (Raft id {id})"
            )));
        }
        let from = match crate::service::auth::caller(&self.node, req)? {
            Some(p) => Some(node_id_of(&p.name)),
            None => sender,
        };
        if let Some(id) = from
            && self.node.membership.is_removed(id)
        {
            let mut s = Status::permission_denied(format!(
                "the node with Raft id {id} was removed from this cluster by a forced membership change on {}: \
                 it must stop; wipe its data directory and add it again with `metrodr cluster add-node`",
                self.node.name
            ));
            s.metadata_mut().insert(
                crate::network::REMOVED,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            return Err(s);
        }
        Ok(())
    }
}

fn bad(e: String) -> Status {
    Status::invalid_argument(e)
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    encode(v)
        .map(Response::new)
        .map_err(|e| Status::internal(format!("cannot encode reply: {e}")))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&req, "append Raft entries").await?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(bad)?;
        self.check(&req, rpc.vote.leader_id().voted_for())?;
        let r = self.node.raft.append_entries(rpc).await;
        if r.is_ok() {
            self.node.heard_from_leader(Instant::now());
        }
        reply(&r)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.admit(&req, "ask for a Raft vote").await?;
        let rpc: VoteRequest<NodeId> = decode(req.get_ref()).map_err(bad)?;
        self.check(&req, rpc.vote.leader_id().voted_for())?;
        reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&req, "install a Raft snapshot").await?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref()).map_err(bad)?;
        self.check(&req, rpc.vote.leader_id().voted_for())?;
        reply(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn propose(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.admit(&req, "forward a write to the leader").await?;
        self.check(&req, None)?;
        let request: crate::state::Request = decode(req.get_ref()).map_err(bad)?;
        let deadline = Instant::now() + self.node.write_timeout;
        let written = self.node.write_local(request, deadline).await?;
        reply(&written)
    }
}
