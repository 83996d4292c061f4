//! openraft type configuration: what travels through the log (a [`Request`]), what
//! comes back ([`Response`]), and how nodes are named.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::{Request, Response};

/// Raft node id. Derived from the topology's orchestrator id by [`node_id_of`], so a
/// node knows its own Raft id before it has joined anything.
pub type NodeId = u64;

/// What the cluster membership records about each node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The orchestrator id from the topology (e.g. `orch-north`).
    pub name: String,
    /// The site it runs at.
    pub site: String,
    /// gRPC address (`host:port`) for peers, agents and operators.
    pub addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} ({})", self.name, self.addr, self.site)
    }
}

openraft::declare_raft_types!(
    /// metrodr's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;

/// The Raft id of an orchestrator: the first 8 bytes of SHA-256 of its name, never 0.
/// Stable across restarts and code versions; `cluster init` refuses the (2^-64)
/// case of two names with one id.
pub fn node_id_of(name: &str) -> NodeId {
    let d = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        // Pinned: changing this function would orphan every existing cluster.
        assert_eq!(node_id_of("orch-north"), node_id_of("orch-north"));
        assert_ne!(node_id_of("orch-north"), node_id_of("orch-south"));
        assert_eq!(node_id_of("a"), 0xca97_8112_ca1b_bdca);
    }
}
