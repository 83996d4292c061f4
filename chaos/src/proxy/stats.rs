//! Counters of a running proxy, and the snapshot [`ProxyStats`] callers read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use super::conn::Dir;

/// What one direction of the link has done so far, summed over all connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DirStats {
    /// Bytes written to the receiving side.
    pub bytes: u64,
    /// Chunks (reads) forwarded; each got one delay/jitter/loss draw.
    pub chunks: u64,
    /// Chunks hit by the loss model (each held one `loss_stall_ms` longer).
    pub loss_stalls: u64,
    /// Bytes read but not yet written, now (in flight on the simulated wire).
    pub queued_bytes: u64,
}

/// A snapshot of a proxy's counters. Counters only grow; `connections_active`,
/// `queued_bytes` and `listening` are current values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// Connections accepted on the listening socket, including rejected ones.
    pub connections_accepted: u64,
    /// Connections open now (accepted and not yet closed).
    pub connections_active: u64,
    /// Accepted beyond `connections_max` and reset at once.
    pub connections_rejected: u64,
    /// Closed by `cut(CutMode::Reset)`.
    pub connections_reset: u64,
    /// Ended because a side failed (reset by peer, write error) and reset in turn.
    pub connections_failed: u64,
    /// Accepted, but the target could not be reached (refused, or no answer within
    /// the connect timeout); the client was reset.
    pub connect_failures: u64,
    /// Errors of accept(2) itself (e.g. out of file descriptors).
    pub accept_errors: u64,
    /// Failed attempts to listen again after a reset was healed (someone else took
    /// the port?); the proxy keeps retrying with backoff.
    pub rebind_failures: u64,
    /// Whether the listening socket is open (false during `CutMode::Reset`).
    pub listening: bool,
    /// Client → target.
    pub to_target: DirStats,
    /// Target → client.
    pub to_client: DirStats,
}

#[derive(Default)]
pub(crate) struct DirCounters {
    pub bytes: AtomicU64,
    pub chunks: AtomicU64,
    pub loss_stalls: AtomicU64,
    pub queued_bytes: AtomicU64,
}

impl DirCounters {
    fn snapshot(&self) -> DirStats {
        DirStats {
            bytes: self.bytes.load(Relaxed),
            chunks: self.chunks.load(Relaxed),
            loss_stalls: self.loss_stalls.load(Relaxed),
            queued_bytes: self.queued_bytes.load(Relaxed),
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub rejected: AtomicU64,
    pub reset: AtomicU64,
    pub failed: AtomicU64,
    pub connect_failures: AtomicU64,
    pub accept_errors: AtomicU64,
    pub rebind_failures: AtomicU64,
    pub listening: AtomicBool,
    pub to_target: DirCounters,
    pub to_client: DirCounters,
}

impl Counters {
    pub(crate) fn dir(&self, dir: Dir) -> &DirCounters {
        match dir {
            Dir::ToTarget => &self.to_target,
            Dir::ToClient => &self.to_client,
        }
    }

    pub(crate) fn snapshot(&self) -> ProxyStats {
        ProxyStats {
            connections_accepted: self.accepted.load(Relaxed),
            connections_active: self.active.load(Relaxed),
            connections_rejected: self.rejected.load(Relaxed),
            connections_reset: self.reset.load(Relaxed),
            connections_failed: self.failed.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
            rebind_failures: self.rebind_failures.load(Relaxed),
            listening: self.listening.load(Relaxed),
            to_target: self.to_target.snapshot(),
            to_client: self.to_client.snapshot(),
        }
    }
}

/// Counts a connection as active from its accept until its task ends, however it ends
/// (including being aborted when the proxy stops).
pub(crate) struct ActiveGuard(Arc<Counters>);

impl ActiveGuard {
    pub(crate) fn new(counters: &Arc<Counters>) -> Self {
        counters.active.fetch_add(1, Relaxed);
        ActiveGuard(Arc::clone(counters))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}
