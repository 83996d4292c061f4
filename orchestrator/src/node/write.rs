//! The write path every mutating call goes through: commit on this node when it leads,
//! forward to the leader otherwise, with a deadline, and errors that say what to do when
//! there is no quorum. A write is forwarded at most once.
//!
//! Never: report a write as done before the state machine applied it, or retry a write
//! whose outcome is unknown (it may have committed).

use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use tonic::Status;

use super::{Node, Written};
use crate::network::{self, decode, encode};
use crate::raft_types::{NodeId, NodeInfo};
use crate::state::{RejectKind, Request, Response};

impl Node {
    /// Commit a request through Raft: locally when this node leads, else at the
    /// leader. Rejections become gRPC errors with the state machine's reason.
    pub async fn write(&self, req: Request) -> Result<Written, Status> {
        let deadline = Instant::now() + self.write_timeout;
        match self.leader_within(deadline).await {
            Some((id, _)) if id == self.id => self.write_local(req, deadline).await,
            Some((_, info)) => self.forward(&info, &req, deadline).await,
            None => Err(no_leader(&self.name)),
        }
    }

    /// The leader, waiting up to one election (two election timeouts, within the
    /// write's deadline) when none is known: a write that arrives while the cluster
    /// elects one waits for it instead of failing. Nothing was sent yet, so waiting
    /// cannot commit anything twice.
    async fn leader_within(&self, deadline: Instant) -> Option<(NodeId, NodeInfo)> {
        let election = Duration::from_millis(self.timing.raft_election_max_ms * 2);
        let until = deadline.min(Instant::now() + election);
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, metrics.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or Raft shut down.
                _ => return self.leader(),
            }
        }
    }

    /// Commit on this node, which must be the leader (used for forwarded writes, so a
    /// write is forwarded at most once).
    pub async fn write_local(&self, req: Request, deadline: Instant) -> Result<Written, Status> {
        self.write_local_inner(req, deadline)
            .await
            .map_err(from_server)
    }

    async fn write_local_inner(&self, req: Request, deadline: Instant) -> Result<Written, Status> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.id) {
            return Err(Status::unavailable(format!(
                "{} is not the leader (it may have just lost leadership); retry the request",
                self.name
            )));
        }
        if let Some(ms) = m.millis_since_quorum_ack
            && ms > self.quorum_loss_ms
        {
            {
                return Err(Status::unavailable(format!(
                    "{} is leader but has not heard from a majority of the orchestrator nodes for {ms} ms: \
                     it is cut off from the cluster and cannot commit; the other side elects a new leader",
                    self.name
                )));
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.raft.client_write(req)).await {
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the write was not committed within {} ms: {} could not reach a majority. \
                 Its outcome is unknown: it may still commit if the cluster heals (check `metrodr audit list`)",
                self.write_timeout.as_millis(),
                self.name
            ))),
            Ok(Ok(resp)) => applied(resp.data, resp.log_id.index),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(Status::unavailable(format!(
                    "{} lost leadership while writing; the leader is now {}; retry",
                    self.name,
                    f.leader_node
                        .map_or_else(|| "unknown".to_string(), |n| n.to_string())
                )))
            }
            Ok(Err(e)) => Err(Status::internal(format!("raft failed to write: {e}"))),
        }
    }

    async fn forward(
        &self,
        leader: &NodeInfo,
        req: &Request,
        deadline: Instant,
    ) -> Result<Written, Status> {
        let mut client = {
            let mut peers = self.peers.lock().await;
            match peers.get(&leader.addr) {
                Some(c) => c.clone(),
                None => {
                    let ch = network::channel(&leader.addr, self.tls.as_deref()).map_err(|e| {
                        Status::internal(format!("bad leader address {:?}: {e}", leader.addr))
                    })?;
                    let c = network::cluster_client(ch);
                    peers.insert(leader.addr.clone(), c.clone());
                    c
                }
            }
        };
        let msg =
            encode(req).map_err(|e| Status::internal(format!("cannot encode request: {e}")))?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let reply = match tokio::time::timeout(remaining, client.propose(msg)).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "the leader {leader} did not commit the write within {} ms; its outcome is unknown",
                    self.write_timeout.as_millis()
                )));
            }
            // An answer from the leader's write path is relayed as it is; anything else
            // means the leader could not be reached.
            Ok(Err(s)) if s.metadata().get(ORIGIN).is_some() => return Err(s),
            Ok(Err(s)) => {
                return Err(Status::unavailable(format!(
                    "{} cannot reach the leader {leader} ({}): a network partition or the leader is down. \
                     Writes resume when a majority reachable from here elects a leader",
                    self.name,
                    s.message()
                )));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        decode::<Written>(&reply)
            .map_err(|e| Status::internal(format!("bad reply from the leader: {e}")))
    }
}

/// Metadata key marking a status produced by a node's write path (as opposed to a
/// transport failure on the way to it).
const ORIGIN: &str = "x-metrodr-origin";

fn from_server(mut s: Status) -> Status {
    s.metadata_mut().insert(
        ORIGIN,
        tonic::metadata::MetadataValue::from_static("write-path"),
    );
    s
}

fn applied(resp: Response, log_index: u64) -> Result<Written, Status> {
    match resp {
        Response::Applied { audit_seq, outcome } => Ok(Written {
            audit_seq,
            outcome,
            log_index,
        }),
        Response::Rejected(r) => {
            let mut s = match r.kind {
                RejectKind::Invalid => Status::invalid_argument(r.reason),
                RejectKind::NotFound => Status::not_found(r.reason),
                RejectKind::Conflict | RejectKind::Unchanged | RejectKind::Stale => {
                    Status::failed_precondition(r.reason)
                }
                RejectKind::Invariant => {
                    Status::failed_precondition(format!("refused: {}", r.reason))
                }
            };
            s.metadata_mut().insert(
                REJECT,
                tonic::metadata::MetadataValue::from_static(r.kind.as_str()),
            );
            Err(s)
        }
        Response::Internal => Err(Status::internal(
            "the state machine gave no answer to a write",
        )),
    }
}

/// Metadata key carrying the state machine's [`RejectKind`] of a refused write (it
/// travels with the status when a follower relays the leader's answer).
const REJECT: &str = "x-metrodr-reject";

/// Why the state machine refused a write, when `s` is such a refusal.
pub fn reject_kind(s: &Status) -> Option<RejectKind> {
    s.metadata()
        .get(REJECT)
        .and_then(|v| v.to_str().ok())
        .and_then(RejectKind::from_name)
}

pub fn no_leader(name: &str) -> Status {
    Status::unavailable(format!(
        "{name} knows no leader: a majority of the orchestrator nodes is not reachable from it \
         (or the cluster is not initialized: run `metrodr cluster init`). Writes are refused until a quorum is back"
    ))
}
