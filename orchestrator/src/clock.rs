//! Time, as the orchestrator reads it.
//!
//! Requests carry the proposer's wall-clock time (`at_ms`) so that applying them is
//! deterministic; leases and failure detection run on a monotonic clock. Both come from
//! a [`Clock`], so that leader duties can be driven by a test's clock.
//!
//! Never: read the clock inside the state machine's `apply` (only the request's time).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where the time comes from.
pub trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds (wall clock; for records and requests).
    fn now_ms(&self) -> u64;
    /// Monotonic time (for leases, timeouts and the failure detector).
    fn now(&self) -> Instant;
}

/// The machine's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Unix time in milliseconds from the machine's wall clock (0 before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
