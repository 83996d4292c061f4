//! Raft between nodes over gRPC: the client side (openraft's `RaftNetworkFactory`) and
//! the JSON envelope shared with the server side ([`crate::service::cluster`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use security::Tls;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use crate::pb::RaftMessage;
use crate::pb::cluster_client::ClusterClient;
use crate::raft_types::{NodeId, NodeInfo, TypeConfig};

/// Metadata on a refusal that tells a node it was removed (it halts when it hears it).
pub const REMOVED: &str = "x-metrodr-removed";

/// Version of the JSON envelope in [`RaftMessage::format`] (and of the requests it
/// carries). 2: agent commands carry their issuer, typed results and events; plans
/// carry their typed steps, and steps are started by their place in the plan and
/// finished with a typed outcome or failure. 3: snapshots carry audit events whose
/// skipped apps have a typed reason (store format 3). 4: the reconciler's `restore`
/// trigger and agents' complete VM reports (store format 4).
pub const WIRE_FORMAT: u32 = 4;

/// Largest gRPC message accepted or sent (snapshot chunks are 1 MiB, JSON-encoded).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How long to wait for a TCP connection to a peer before treating it as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

pub fn encode<T: Serialize>(v: &T) -> Result<RaftMessage, serde_json::Error> {
    Ok(RaftMessage {
        format: WIRE_FORMAT,
        payload: serde_json::to_vec(v)?,
    })
}

/// Decode an envelope; errors say what was wrong (never panic on peer input).
pub fn decode<T: DeserializeOwned>(m: &RaftMessage) -> Result<T, String> {
    if m.format != WIRE_FORMAT {
        return Err(format!(
            "message format {} is not supported (this node speaks {WIRE_FORMAT}); are the nodes running different metrodr versions?",
            m.format
        ));
    }
    serde_json::from_slice(&m.payload).map_err(|e| format!("undecodable message: {e}"))
}

/// A gRPC channel to a peer's address (mutual TLS with `tls`); connects lazily and
/// reconnects by itself.
pub fn channel(addr: &str, tls: Option<&Tls>) -> Result<Channel, String> {
    Ok(security::grpc::endpoint(addr, tls)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy())
}

pub fn cluster_client(ch: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// When each peer last answered a Raft RPC (the leader heartbeats every peer, so this
/// tells the failure detector which orchestrator nodes it can reach).
#[derive(Debug, Clone, Default)]
pub struct PeerHealth {
    last_ok: Arc<Mutex<HashMap<NodeId, Instant>>>,
    /// A peer said this node was removed by a forced membership change (its words).
    removed: Arc<Mutex<Option<String>>>,
}

impl PeerHealth {
    fn record(&self, node: NodeId) {
        if let Ok(mut m) = self.last_ok.lock() {
            m.insert(node, Instant::now());
        }
    }

    /// What a peer said when it refused this node as removed, if one did.
    pub fn removed(&self) -> Option<String> {
        self.removed.lock().ok()?.clone()
    }

    /// Time since `node` last answered, if it ever did.
    pub fn silence(&self, node: NodeId, now: Instant) -> Option<Duration> {
        let m = self.last_ok.lock().ok()?;
        m.get(&node).map(|t| now.saturating_duration_since(*t))
    }
}

/// Creates one [`PeerConnection`] per target; openraft asks for them as it needs them.
#[derive(Debug, Clone, Default)]
pub struct Network {
    pub health: PeerHealth,
    /// This node's credentials; None: plain gRPC.
    pub tls: Option<Arc<Tls>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.addr.clone(),
            client: channel(&node.addr, self.tls.as_deref())
                .ok()
                .map(cluster_client),
            health: self.health.clone(),
        }
    }
}

pub struct PeerConnection {
    target: NodeId,
    addr: String,
    /// None when the address does not parse; every RPC then fails as unreachable.
    client: Option<ClusterClient<Channel>>,
    health: PeerHealth,
}

type RpcErr<E> = RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>;

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(format!("bad peer address {:?}", self.addr)),
            )));
        };
        let msg = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let fut = async {
            match method {
                Method::Append => client.append_entries(msg).await,
                Method::Vote => client.vote(msg).await,
                Method::Snapshot => client.install_snapshot(msg).await,
            }
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), fut).await {
            Err(_) => {
                return Err(RPCError::Network(NetworkError::new(&std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{} did not answer within {:?}",
                        self.addr,
                        option.hard_ttl()
                    ),
                ))));
            }
            Ok(Err(status)) if status.metadata().contains_key(REMOVED) => {
                if let Ok(mut r) = self.health.removed.lock() {
                    *r = Some(format!("{}: {}", self.addr, status.message()));
                }
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Ok(Ok(r)) => r.into_inner(),
        };
        self.health.record(self.target);
        let result: Result<Resp, RaftError<NodeId, E>> = decode(&reply)
            .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(Method::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(Method::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(Method::Vote, &rpc, &option).await
    }
}
