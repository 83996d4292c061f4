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
use crate::raft_types::{NodeId, TypeConfig};

pub struct ClusterService {
    pub node: Arc<Node>,
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
        crate::service::auth::admit(&self.node, &req, Access::Peer, "append Raft entries", "")
            .await?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(bad)?;
        let r = self.node.raft.append_entries(rpc).await;
        if r.is_ok() {
            self.node.heard_from_leader(Instant::now());
        }
        reply(&r)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        crate::service::auth::admit(&self.node, &req, Access::Peer, "ask for a Raft vote", "")
            .await?;
        let rpc: VoteRequest<NodeId> = decode(req.get_ref()).map_err(bad)?;
        reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        crate::service::auth::admit(
            &self.node,
            &req,
            Access::Peer,
            "install a Raft snapshot",
            "",
        )
        .await?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref()).map_err(bad)?;
        reply(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn propose(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        crate::service::auth::admit(
            &self.node,
            &req,
            Access::Peer,
            "forward a write to the leader",
            "",
        )
        .await?;
        let request: crate::state::Request = decode(req.get_ref()).map_err(bad)?;
        let deadline = Instant::now() + self.node.write_timeout;
        let written = self.node.write_local(request, deadline).await?;
        reply(&written)
    }
}
