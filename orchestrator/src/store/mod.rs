//! RocksDB storage for one orchestrator node: the Raft log and vote ([`LogStore`]) and
//! the state machine ([`StateMachineStore`]), in one database with three column
//! families:
//!
//! | cf     | keys                                   | values                 |
//! |--------|----------------------------------------|------------------------|
//! | `logs` | log index, 8 bytes big-endian          | JSON `Entry`           |
//! | `meta` | `format`, `vote`, `committed`, `purged`, `forced` | JSON         |
//! | `sm`   | `t/<table>/<key>`, `applied`, `membership`, `snapshot` | JSON    |
//!
//! Durability: a log append or vote is written with `sync = true` (the WAL is flushed
//! to disk) **before** openraft is told it is done. State machine writes are not
//! synced individually: they are re-derived from the log, which is only purged after
//! a snapshot that is itself synced. The WAL is shared, so every synced log write also
//! makes the state machine writes before it durable.

// openraft's `StorageError` is large; its trait methods return it, so ours do too.
#![allow(clippy::result_large_err)]

pub mod force;
mod log;
mod sm;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Options};

pub use log::LogStore;
pub use sm::{SharedState, StateMachineStore};

/// Version of the on-disk format. Bump it (and write a migration) when keys or value
/// encodings change; a node refuses to open a store of another version.
/// 2 (2026-12): agent commands carry their issuer, typed results and events; plans
/// carry every step of each app's move with its parameters (and a drill's closing and
/// interruption steps), skipped apps a typed reason; a step record names its place in
/// the plan and ends with a typed outcome or failure; audit entries carry a typed
/// event (audit v2).
/// 3 (2026-12): an `op.start` audit event names each skipped app's reason by its typed
/// `SkipReason`, not its text.
/// 4 (2026-12): the reconciler's `restore` trigger in plans; `report-all-vms` (an
/// agent's complete VM list) in the log; apps record the VMs an operator holds stopped.
pub const FORMAT_VERSION: u64 = 4;

pub(crate) const CF_LOGS: &str = "logs";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_SM: &str = "sm";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the RocksDB store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error(
        "the store at {path} has format version {found}; this metrodr reads version {FORMAT_VERSION}"
    )]
    Format { path: PathBuf, found: String },
    #[error(
        "the state machine in {path} does not load: {why} (the store is damaged; restore it from another node)"
    )]
    Corrupt { path: PathBuf, why: String },
}

/// Open (or create) the store in `dir`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_LOGS, CF_META, CF_SM].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| OpenError::Open {
        path: dir.to_path_buf(),
        source,
    })?;
    let db = Arc::new(db);
    check_format(&db, dir)?;
    let sm = StateMachineStore::load(db.clone()).map_err(|why| OpenError::Corrupt {
        path: dir.to_path_buf(),
        why,
    })?;
    Ok((LogStore::new(db), sm))
}

fn check_format(db: &DB, dir: &Path) -> Result<(), OpenError> {
    let cf = cf(db, CF_META);
    let found = db.get_cf(cf, b"format").map_err(|source| OpenError::Open {
        path: dir.to_path_buf(),
        source,
    })?;
    match found {
        None => db
            .put_cf(cf, b"format", FORMAT_VERSION.to_string())
            .map_err(|source| OpenError::Open {
                path: dir.to_path_buf(),
                source,
            }),
        Some(v) if v == FORMAT_VERSION.to_string().as_bytes() => Ok(()),
        Some(v) => Err(OpenError::Format {
            path: dir.to_path_buf(),
            found: String::from_utf8_lossy(&v).into_owned(),
        }),
    }
}

/// A column family handle. The three families are created by `open`, so a missing
/// one is a programming error, not a world error.
pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family created at open")
}

/// Key of a state-machine row.
pub(crate) fn row_key(table: &str, key: &str) -> Vec<u8> {
    format!("t/{table}/{key}").into_bytes()
}
