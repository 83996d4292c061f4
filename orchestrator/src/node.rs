//! One running orchestrator node: its Raft instance, applied state, and the write path
//! every mutating API call goes through (commit locally when leader, forward to the
//! leader otherwise, with a deadline and clear errors when there is no quorum).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::Mutex;
use tonic::Status;
use tonic::transport::Channel;

use topology::Timing;

use crate::leases::LeaseTable;
use crate::network::{self, PeerHealth, decode, encode};
use crate::pb::cluster_client::ClusterClient;
use crate::raft_types::{NodeId, NodeInfo, Raft};
use crate::state::{Outcome, RejectKind, Request, Response};
use crate::store::SharedState;

/// A committed, applied write.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Written {
    pub audit_seq: u64,
    pub outcome: Outcome,
    pub log_index: u64,
}

pub struct Node {
    pub name: String,
    pub id: NodeId,
    pub raft: Raft,
    pub state: SharedState,
    pub committed: Arc<AtomicU64>,
    pub write_timeout: Duration,
    /// Longest Raft election timeout: a leader that has not heard from a majority for
    /// longer than this is cut off, and says so instead of letting writes hang.
    pub quorum_loss_ms: u64,
    /// A problem found in this node's own store at startup (e.g. a broken audit chain).
    pub store_warning: String,
    /// Host leases (meaningful on the leader only).
    pub leases: std::sync::Mutex<LeaseTable>,
    /// Which peers answer Raft RPCs.
    pub health: PeerHealth,
    pub timing: Timing,
    /// The cluster key that signs reports (the same file on every node); None: this
    /// node cannot sign, and says so when asked for a report.
    pub signing_key: Option<drills::SigningKey>,
    /// This node's credentials: every connection is mutual TLS and every call is
    /// authorized ([`crate::service::auth`]). None: plain gRPC, no authorization.
    pub tls: Option<Arc<security::Tls>>,
    /// Connections refused during the TLS handshake, not yet in the audit log.
    pub refusals: std::sync::Mutex<crate::service::auth::Refusals>,
    /// Nodes a forced membership change removed: their Raft RPCs are refused.
    pub removed: std::sync::Mutex<std::collections::BTreeSet<NodeId>>,
    /// Set by `ForceMembership`: the process restarts this node as the only voter.
    pub force: tokio::sync::watch::Sender<Option<crate::store::force::Forced>>,
    /// Why this node stopped taking part (another node said it was removed).
    pub halted: std::sync::Mutex<Option<String>>,
    /// The Raft log store (for the forced-change record).
    pub log: crate::store::LogStore,
    peers: Mutex<HashMap<String, ClusterClient<Channel>>>,
    /// When this node last accepted an AppendEntries (heartbeat) from a leader.
    leader_contact: std::sync::Mutex<Option<Instant>>,
}

/// Everything a [`Node`] is made of.
pub struct NodeParts {
    pub name: String,
    pub raft: Raft,
    pub state: SharedState,
    pub committed: Arc<AtomicU64>,
    pub write_timeout: Duration,
    pub store_warning: String,
    pub health: PeerHealth,
    pub timing: Timing,
    pub signing_key: Option<drills::SigningKey>,
    pub tls: Option<Arc<security::Tls>>,
    /// The forced membership change this node went through, if any, and the store
    /// that keeps its record.
    pub forced: Option<crate::store::force::Forced>,
    pub log: crate::store::LogStore,
}

impl Node {
    pub fn new(p: NodeParts) -> Self {
        let t = &p.timing;
        Node {
            id: crate::raft_types::node_id_of(&p.name),
            leases: std::sync::Mutex::new(LeaseTable::new(
                Duration::from_millis(t.lease_ms),
                Duration::from_millis(t.lease_margin_ms),
            )),
            quorum_loss_ms: t.raft_election_max_ms,
            name: p.name,
            raft: p.raft,
            state: p.state,
            committed: p.committed,
            write_timeout: p.write_timeout,
            store_warning: p.store_warning,
            health: p.health,
            timing: p.timing,
            signing_key: p.signing_key,
            tls: p.tls,
            refusals: Default::default(),
            removed: std::sync::Mutex::new(
                p.forced
                    .iter()
                    .flat_map(|f| {
                        f.removed
                            .iter()
                            .map(|n| crate::raft_types::node_id_of(&n.name))
                    })
                    .collect(),
            ),
            log: p.log,
            force: tokio::sync::watch::channel(None).0,
            halted: std::sync::Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
            leader_contact: std::sync::Mutex::new(None),
        }
    }

    /// Was `id` removed from the cluster by a forced membership change here?
    pub fn is_removed(&self, id: NodeId) -> bool {
        self.removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }

    /// `name` is added to the cluster again (wiped, fresh): stop refusing it, here and
    /// in the stored record.
    pub fn readmit(&self, name: &str) {
        let id = crate::raft_types::node_id_of(name);
        let was = self
            .removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if was && let Ok(Some(mut f)) = self.log.forced() {
            f.removed.retain(|n| n.name != name);
            if let Err(e) = self.log.set_forced(&f) {
                tracing::error!(node = %self.name, "cannot record that {name} is readmitted: {e}");
            }
        }
    }

    /// Why this node halted, if it did.
    pub fn halted(&self) -> Option<String> {
        self.halted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A leader's AppendEntries was handled at `at`.
    pub fn heard_from_leader(&self, at: Instant) {
        *self
            .leader_contact
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    /// When this node last heard from a leader (before becoming one itself).
    pub fn previous_leader_contact(&self) -> Option<Instant> {
        *self
            .leader_contact
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The lease table (a poisoned lock is still usable: it holds plain data).
    pub fn leases(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when this node is leader and a majority acknowledged it recently: only then
    /// may it grant leases (DESIGN §4).
    pub fn is_confirmed_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.current_leader == Some(self.id)
            && m.millis_since_quorum_ack
                .is_some_and(|ms| ms <= self.quorum_loss_ms)
    }

    pub fn committed_index(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// The leader as this node knows it.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let info = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, info))
    }

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
        Response::Rejected(r) => Err(match r.kind {
            RejectKind::Invalid => Status::invalid_argument(r.reason),
            RejectKind::NotFound => Status::not_found(r.reason),
            RejectKind::Conflict => Status::failed_precondition(r.reason),
            RejectKind::Invariant => Status::failed_precondition(format!("refused: {}", r.reason)),
        }),
        Response::Internal => Err(Status::internal(
            "the state machine gave no answer to a write",
        )),
    }
}

pub fn no_leader(name: &str) -> Status {
    Status::unavailable(format!(
        "{name} knows no leader: a majority of the orchestrator nodes is not reachable from it \
         (or the cluster is not initialized: run `metrodr cluster init`). Writes are refused until a quorum is back"
    ))
}
