//! The state machine in RocksDB (openraft's `RaftStateMachine`): applies committed
//! entries to the in-memory [`ClusterState`] and persists exactly the rows each batch
//! changed, together with the last applied log id, in one atomic write.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use super::{CF_SM, cf, row_key};
use crate::raft_types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::state::{ClusterState, Response};

/// The applied state, shared with the API handlers that read it.
#[derive(Debug, Clone)]
pub struct SharedState {
    inner: Arc<RwLock<Applied>>,
    /// The last applied log index, for waiters (agent long-polls, `vm` commands).
    applied: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for SharedState {
    fn default() -> Self {
        SharedState {
            inner: Arc::default(),
            applied: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

/// The state machine's state plus where in the log it is.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub state: ClusterState,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

impl SharedState {
    /// Read access. A panic while holding the lock cannot leave the state half-changed
    /// (apply rolls back on rejection and the lock is released on unwind), so a
    /// poisoned lock is still safe to read.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes up on every applied batch.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn notify(&self, index: u64) {
        self.applied.send_replace(index);
    }
}

/// Snapshot file format (versioned; see `FORMAT_VERSION`).
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    version: u64,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// (table, key, JSON value)
    rows: Vec<(String, String, serde_json::Value)>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    shared: SharedState,
    /// Seconds per applied batch (state machine + RocksDB write), for `/metrics`.
    apply_seconds: Histogram,
    /// Counter making snapshot ids unique on this node.
    snapshot_seq: u64,
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachineStore {
    /// Load the persisted state. Errors describe what is damaged.
    pub(super) fn load(db: Arc<DB>) -> Result<Self, String> {
        let sm = cf(&db, CF_SM);
        let mut rows: Vec<(String, String, Vec<u8>)> = Vec::new();
        for item in db.iterator_cf(sm, IteratorMode::From(b"t/", Direction::Forward)) {
            let (k, v) = item.map_err(|e| e.to_string())?;
            let Some(rest) = k.strip_prefix(b"t/") else {
                break;
            };
            let rest = std::str::from_utf8(rest).map_err(|e| format!("row key: {e}"))?;
            let (table, key) = rest
                .split_once('/')
                .ok_or_else(|| format!("row key {rest:?} has no table"))?;
            rows.push((table.to_string(), key.to_string(), v.to_vec()));
        }
        let state = ClusterState::load(
            rows.iter()
                .map(|(t, k, v)| (t.as_str(), k.as_str(), v.as_slice())),
        )?;
        let get = |key: &str| -> Result<Option<Vec<u8>>, String> {
            db.get_cf(sm, key).map_err(|e| e.to_string())
        };
        let last_applied = match get("applied")? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| format!("applied: {e}"))?,
            None => None,
        };
        let membership = match get("membership")? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| format!("membership: {e}"))?,
            None => StoredMembership::default(),
        };
        Ok(StateMachineStore {
            db: db.clone(),
            shared: SharedState {
                inner: Arc::new(RwLock::new(Applied {
                    state,
                    last_applied,
                    membership,
                })),
                applied: Arc::new(
                    tokio::sync::watch::channel(last_applied.map_or(0, |l| l.index)).0,
                ),
            },
            // 50 µs .. ~1.6 s
            apply_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            snapshot_seq: 0,
        })
    }

    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    pub fn apply_histogram(&self) -> Histogram {
        self.apply_seconds.clone()
    }

    /// Write the rows changed since the last call plus the applied position.
    fn persist(&self, a: &mut Applied) -> Result<(), StorageError> {
        let sm = cf(&self.db, CF_SM);
        let mut batch = WriteBatch::default();
        for (table, key, value) in a.state.take_changes() {
            match value {
                Some(v) => batch.put_cf(sm, row_key(table, &key), v),
                None => batch.delete_cf(sm, row_key(table, &key)),
            }
        }
        batch.put_cf(
            sm,
            "applied",
            serde_json::to_vec(&a.last_applied).map_err(sm_write_err)?,
        );
        batch.put_cf(
            sm,
            "membership",
            serde_json::to_vec(&a.membership).map_err(sm_write_err)?,
        );
        self.db
            .write_opt(batch, &WriteOptions::default())
            .map_err(sm_write_err)
    }

    fn snapshot_bytes(a: &Applied) -> Result<Vec<u8>, StorageError> {
        let rows = a
            .state
            .all_rows()
            .into_iter()
            .filter_map(|(t, k, v)| {
                let v = v?;
                Some(serde_json::from_slice(&v).map(|v| (t.to_string(), k, v)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(sm_read_err)?;
        serde_json::to_vec(&SnapshotData {
            version: super::FORMAT_VERSION,
            last_applied: a.last_applied,
            membership: a.membership.clone(),
            rows,
        })
        .map_err(sm_read_err)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Copy under the lock, serialize outside it: applying new entries (which needs
        // the write lock) must not wait for a whole-state serialization.
        let a = self.shared.read().clone();
        let (data, last_applied, membership) = (
            Self::snapshot_bytes(&a)?,
            a.last_applied,
            a.membership.clone(),
        );
        self.snapshot_seq += 1;
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.snapshot_seq),
            None => format!("--{}", self.snapshot_seq),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let bytes = serde_json::to_vec(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let mut w = WriteOptions::default();
        // Synced: the log up to this point may be purged right after.
        w.set_sync(true);
        self.db
            .put_cf_opt(cf(&self.db, CF_SM), "snapshot", bytes, &w)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.shared.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let started = Instant::now();
        let mut a = self.shared.write();
        let mut out = Vec::new();
        for entry in entries {
            a.last_applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => Response::Internal,
                EntryPayload::Normal(req) => a.state.apply(&req),
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::Internal
                }
            });
        }
        self.persist(&mut a)?;
        let index = a.last_applied.map_or(0, |l| l.index);
        drop(a);
        self.shared.notify(index);
        self.apply_seconds.observe(started.elapsed().as_secs_f64());
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let bad = |why: String| -> StorageError {
            StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(why))
                .into()
        };
        let data: SnapshotData = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if data.version != super::FORMAT_VERSION {
            return Err(bad(format!(
                "snapshot format {} is not {}",
                data.version,
                super::FORMAT_VERSION
            )));
        }
        let raw: Vec<(String, String, Vec<u8>)> = data
            .rows
            .iter()
            .map(|(t, k, v)| serde_json::to_vec(v).map(|v| (t.clone(), k.clone(), v)))
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let state = ClusterState::load(
            raw.iter()
                .map(|(t, k, v)| (t.as_str(), k.as_str(), v.as_slice())),
        )
        .map_err(bad)?;

        // Replace every row at once: delete the old rows and write the new ones in one batch.
        let sm = cf(&self.db, CF_SM);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(sm, b"t/".as_slice(), b"t0".as_slice());
        for (t, k, v) in &raw {
            batch.put_cf(sm, row_key(t, k), v);
        }
        let last_applied = meta.last_log_id;
        let membership = meta.last_membership.clone();
        batch.put_cf(
            sm,
            "applied",
            serde_json::to_vec(&last_applied).map_err(sm_write_err)?,
        );
        batch.put_cf(
            sm,
            "membership",
            serde_json::to_vec(&membership).map_err(sm_write_err)?,
        );
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        batch.put_cf(
            sm,
            "snapshot",
            serde_json::to_vec(&stored).map_err(sm_write_err)?,
        );
        let mut w = WriteOptions::default();
        w.set_sync(true);
        self.db.write_opt(batch, &w).map_err(sm_write_err)?;

        {
            let mut a = self.shared.write();
            a.state = state;
            a.last_applied = last_applied;
            a.membership = membership;
        }
        self.shared.notify(last_applied.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(bytes) = self
            .db
            .get_cf(cf(&self.db, CF_SM), "snapshot")
            .map_err(sm_read_err)?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(sm_read_err)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
