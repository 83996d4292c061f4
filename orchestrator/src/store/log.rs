//! The Raft log and vote in RocksDB (openraft's `RaftLogStorage`).

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CF_LOGS, CF_META, cf};
use crate::raft_types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The log store. Cheap to clone (openraft asks for separate readers).
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// Highest log index known committed (for status and metrics).
    committed: Arc<AtomicU64>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

impl LogStore {
    pub(super) fn new(db: Arc<DB>) -> Self {
        let s = LogStore {
            db,
            committed: Arc::new(AtomicU64::new(0)),
        };
        if let Ok(Some(Some(c))) = s.get_meta::<Option<LogId>>("committed") {
            s.committed.store(c.index, Ordering::Relaxed);
        }
        s
    }

    /// The forced membership change this node went through, if any.
    pub fn forced(&self) -> Result<Option<super::force::Forced>, StorageError> {
        self.get_meta("forced")
    }

    pub fn set_forced(&self, f: &super::force::Forced) -> Result<(), std::io::Error> {
        self.put_meta("forced", f, true)
    }

    /// Write one entry at its index, synced, outside openraft (the node is stopped):
    /// only [`super::force::force_single_voter`] does this.
    pub(super) fn force_append(&self, entry: &Entry) -> Result<(), std::io::Error> {
        let bytes = serde_json::to_vec(entry)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_LOGS), index_key(entry.log_id.index), bytes);
        self.db
            .write_opt(batch, &synced())
            .map_err(std::io::Error::other)
    }

    /// A live view of the highest committed log index.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let v = self
            .db
            .get_cf(cf(&self.db, CF_META), key)
            .map_err(|e| StorageIOError::read(&e))?;
        v.map(|b| serde_json::from_slice(&b).map_err(|e| StorageIOError::read(&e).into()))
            .transpose()
    }

    fn put_meta<T: Serialize>(&self, key: &str, v: &T, sync: bool) -> Result<(), std::io::Error> {
        let bytes = serde_json::to_vec(v)?;
        let opts = if sync {
            synced()
        } else {
            WriteOptions::default()
        };
        self.db
            .put_cf_opt(cf(&self.db, CF_META), key, bytes, &opts)
            .map_err(std::io::Error::other)
    }
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            std::ops::Bound::Included(x) => *x,
            std::ops::Bound::Excluded(x) => x.saturating_add(1),
            std::ops::Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let key = index_key(start);
        let it = self.db.iterator_cf(
            cf(&self.db, CF_LOGS),
            IteratorMode::From(&key, Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(read_err)?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                read_err(std::io::Error::other(format!(
                    "log key of {} bytes",
                    k.len()
                )))
            })?);
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = serde_json::from_slice(&v).map_err(read_err)?;
            if entry.log_id.index != index {
                return Err(read_err(std::io::Error::other(format!(
                    "log entry stored at index {index} says it is {}",
                    entry.log_id.index
                ))));
            }
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last = self
            .db
            .iterator_cf(cf(&self.db, CF_LOGS), IteratorMode::End)
            .next()
            .transpose()
            .map_err(read_err)?;
        let last_log_id = match last {
            Some((_, v)) => Some(
                serde_json::from_slice::<Entry>(&v)
                    .map_err(read_err)?
                    .log_id,
            ),
            None => None,
        };
        let last_purged_log_id: Option<LogId> = self.get_meta("purged")?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last_log_id.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // Synced: a vote forgotten after a crash could let this node vote twice in a term.
        self.put_meta("vote", vote, true)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        // Not synced: losing it only delays re-applying committed entries after a crash.
        self.put_meta("committed", &committed, false)
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let logs = cf(&self.db, CF_LOGS);
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(write_err)?;
            batch.put_cf(logs, index_key(entry.log_id.index), bytes);
        }
        // The entries are on disk (WAL fsynced) before openraft hears they are.
        let res = self
            .db
            .write_opt(batch, &synced())
            .map_err(std::io::Error::other);
        let ok = res.is_ok();
        callback.log_io_completed(res);
        if ok {
            Ok(())
        } else {
            Err(write_err(std::io::Error::other("log append failed")))
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf(&self.db, CF_LOGS),
            index_key(log_id.index),
            index_key(u64::MAX),
        );
        // delete_range excludes its end: remove the very last possible index too.
        batch.delete_cf(cf(&self.db, CF_LOGS), index_key(u64::MAX));
        self.db.write_opt(batch, &synced()).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: entries at or below it are ignored from then on,
        // so a crash between the two writes leaves nothing inconsistent.
        self.put_meta("purged", &log_id, true).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf(&self.db, CF_LOGS),
            index_key(0),
            index_key(log_id.index.saturating_add(1)),
        );
        self.db.write_opt(batch, &synced()).map_err(write_err)
    }
}
