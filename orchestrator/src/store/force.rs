//! A forced membership change (`metrodr site fail SITE --force`): the other voters are
//! lost for good and no quorum is left, so this node's log gets one more entry, a
//! membership of itself alone, written while the node is stopped. On restart it elects
//! itself and commits everything in its log. Raft cannot do this safely by itself: the
//! operator asserts that the removed nodes are gone. They are refused from then on
//! ([`Forced::removed`]): a removed node that comes back and reaches this one halts,
//! and must be wiped and added again (`metrodr cluster add-node`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use openraft::storage::RaftLogStorage;
use openraft::{CommittedLeaderId, EntryPayload, Membership};
use serde::{Deserialize, Serialize};

use super::{LogStore, OpenError, open};
use crate::raft_types::{Entry, LogId, NodeId, NodeInfo, Vote};

/// What was forced, by whom; kept in the store's meta family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forced {
    pub actor: String,
    /// The site declared lost.
    pub site: String,
    /// The nodes taken out of the membership.
    pub removed: Vec<NodeInfo>,
    pub at_ms: u64,
    /// The forced entry.
    #[serde(default)]
    pub log_id: Option<LogId>,
    /// The audit log has the change (written by the node once it leads).
    #[serde(default)]
    pub audited: bool,
}

/// Open the store, waiting (up to 10 s) for a just-stopped instance of this node to
/// release the RocksDB lock.
fn open_when_free(dir: &Path) -> Result<LogStore, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open(dir) {
            Ok((log, _)) => return Ok(log),
            // The lock of a just-stopped instance is an I/O error of RocksDB's: retried
            // until the deadline (a real I/O problem stays and ends it).
            Err(OpenError::Open { source, .. })
                if source.kind() == rocksdb::ErrorKind::IOError && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Append a membership of `me` alone to the (stopped) node's log in `dir`, under a
/// new term, and record `forced`. Returns the entry's log id.
pub async fn force_single_voter(
    dir: &Path,
    me: NodeId,
    info: &NodeInfo,
    mut forced: Forced,
) -> Result<LogId, String> {
    let mut log = open_when_free(dir)?;
    let state = log.get_log_state().await.map_err(|e| e.to_string())?;
    let last = state.last_log_id.ok_or(
        "this node's log is empty: it was never part of a cluster, there is nothing to force",
    )?;
    let vote = log.read_vote().await.map_err(|e| e.to_string())?;
    let term = vote
        .map_or(0, |v| v.leader_id().term)
        .max(last.leader_id.term)
        + 1;
    log.save_vote(&Vote::new(term, me))
        .await
        .map_err(|e| e.to_string())?;
    let log_id = LogId::new(CommittedLeaderId::new(term, me), last.index + 1);
    let entry = Entry {
        log_id,
        payload: EntryPayload::Membership(Membership::new(
            vec![BTreeSet::from([me])],
            BTreeMap::from([(me, info.clone())]),
        )),
    };
    log.force_append(&entry).map_err(|e| e.to_string())?;
    forced.log_id = Some(log_id);
    log.set_forced(&forced).map_err(|e| e.to_string())?;
    Ok(log_id)
}
