//! openraft's own storage test suite against the RocksDB store, plus reopen tests.

use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::{LogStore, StateMachineStore, open};
use crate::raft_types::{StorageError, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().map_err(|e| openraft::StorageIOError::write(&e))?;
        let (log, sm) = open(dir.path())
            .map_err(|e| openraft::StorageIOError::write(&std::io::Error::other(e.to_string())))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}

#[test]
fn the_formats_are_pinned() {
    assert_eq!(super::FORMAT_VERSION, 4);
    assert_eq!(crate::network::WIRE_FORMAT, 4);
}

#[test]
fn a_store_of_another_format_version_is_refused() {
    let dir = TempDir::new().expect("tempdir");
    drop(open(dir.path()).expect("create"));
    {
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            dir.path(),
            [super::CF_LOGS, super::CF_META, super::CF_SM],
        )
        .expect("raw open");
        db.put_cf(super::cf(&db, super::CF_META), b"format", b"99")
            .expect("put");
    }
    let err = open(dir.path()).expect_err("refused").to_string();
    assert!(err.contains("format version 99"), "{err}");
}

#[test]
fn a_damaged_state_row_is_reported_not_half_loaded() {
    let dir = TempDir::new().expect("tempdir");
    drop(open(dir.path()).expect("create"));
    {
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            dir.path(),
            [super::CF_LOGS, super::CF_META, super::CF_SM],
        )
        .expect("raw open");
        db.put_cf(
            super::cf(&db, super::CF_SM),
            super::row_key("audit", "00000000000000000001"),
            b"{broken",
        )
        .expect("put");
    }
    let err = open(dir.path()).expect_err("refused").to_string();
    assert!(err.contains("damaged"), "{err}");
}
