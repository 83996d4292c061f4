//! The contract between the NBD front end and what stores the blocks.
//!
//! The NBD server ([`crate::nbd`]) turns each client request into one call here and
//! answers the client when the returned future completes. A backend may hold a future
//! for as long as it must (a sync replica waiting for its peer, a fenced primary that
//! no longer acknowledges anything): the server keeps serving other requests meanwhile
//! (requests are pipelined and answered out of order).
//!
//! Must never: acknowledge (complete with `Ok`) a write before it is as durable as the
//! backend promises — for a sync replica, on the local file *and* received by the peer.

use std::future::Future;

use bytes::Bytes;

/// Why a request failed; each maps to an NBD error code sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The storage failed (NBD_EIO).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// No space left (NBD_ENOSPC).
    #[error("no space left")]
    NoSpace,
    /// The export is read-only, or this replica may not accept writes now (NBD_EPERM).
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// The request is malformed for this export (NBD_EINVAL).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The operation is not supported by this backend (NBD_ENOTSUP).
    #[error("not supported: {0}")]
    NotSupported(String),
}

/// Where an extent stands, for NBD_CMD_BLOCK_STATUS (`base:allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    /// Not allocated: reads return zeroes and cost nothing (NBD_STATE_HOLE).
    pub hole: bool,
    /// Reads as zeroes (NBD_STATE_ZERO).
    pub zero: bool,
}

/// Block storage behind one NBD export. Offsets and lengths are in bytes; the server
/// has already checked `offset + len <= size()`.
pub trait BlockBackend: Send + Sync + 'static {
    /// Size in bytes (fixed for the life of an export).
    fn size(&self) -> u64;

    /// True when writes are refused outright (the export is offered read-only).
    fn read_only(&self) -> bool {
        false
    }

    /// Read `len` bytes at `offset`.
    fn read(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes, BackendError>> + Send;

    /// Write `data` at `offset`. `fua`: the data must be durable when this completes.
    fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Make every write completed before this call durable.
    fn flush(&self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// The range's contents no longer matter (may read back as anything, usually zeroes).
    fn trim(&self, offset: u64, len: u64) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Make the range read as zeroes. `may_trim`: the backend may deallocate it.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        may_trim: bool,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Allocation status from `offset` for up to `len` bytes (at least one extent).
    /// The default says "all data".
    fn extents(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<Extent>, BackendError>> + Send {
        async move {
            let _ = offset;
            Ok(vec![Extent {
                length: len,
                hole: false,
                zero: false,
            }])
        }
    }
}
