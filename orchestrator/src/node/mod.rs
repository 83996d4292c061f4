//! One running orchestrator node, split by duty:
//! - the Raft handle (this module): its Raft instance, the applied state, and the write
//!   path every mutating call goes through ([`write`]);
//! - [`LeaderDuties`]: what it does while it leads (host leases, peer health);
//! - [`NodeSecurity`]: its credentials, refused handshakes, the report-signing key;
//! - [`Membership`]: forced membership changes (removed nodes, its own halt).
//!
//! Never: decide anything here (decisions are in the state machine and the planner).

mod duties;
mod write;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tonic::transport::Channel;

use topology::Timing;

use crate::clock::Clock;
use crate::network::PeerHealth;
use crate::pb::cluster_client::ClusterClient;
use crate::raft_types::{NodeId, NodeInfo, Raft};
use crate::state::Outcome;
use crate::store::SharedState;

pub use duties::{LeaderDuties, Membership, NodeSecurity, Refusals};
pub use write::{no_leader, reject_kind};

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
    pub timing: Timing,
    /// Where time comes from (the system's clocks, or a test's).
    pub clock: Arc<dyn Clock>,
    /// What this node does while it leads: host leases, and which peers answer.
    pub leader: LeaderDuties,
    /// Credentials, handshake refusals, the report-signing key.
    pub security: NodeSecurity,
    /// Forced membership changes: removed nodes, this node's halt.
    pub membership: Membership,
    /// TLS for forwarding writes to the leader (the same as `security.tls`).
    tls: Option<Arc<security::Tls>>,
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
    pub clock: Arc<dyn Clock>,
}

impl Node {
    pub fn new(p: NodeParts) -> Self {
        let t = &p.timing;
        Node {
            id: crate::raft_types::node_id_of(&p.name),
            leader: LeaderDuties::new(t, p.health),
            security: NodeSecurity::new(p.tls.clone(), p.signing_key),
            membership: Membership::new(p.forced.as_ref(), p.log),
            quorum_loss_ms: t.raft_election_max_ms,
            name: p.name,
            raft: p.raft,
            state: p.state,
            committed: p.committed,
            write_timeout: p.write_timeout,
            store_warning: p.store_warning,
            timing: p.timing,
            clock: p.clock,
            tls: p.tls,
            peers: Mutex::new(HashMap::new()),
            leader_contact: std::sync::Mutex::new(None),
        }
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
}
