//! The one polling wait of the lab, its tests and its benchmarks: ask a condition
//! again and again until it gives a value or a deadline passes.
//!
//! Never a bare sleep standing in for a condition: every wait names what it waits for
//! (the error says it) and has a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a wait asks again. Each ask is usually a gRPC call or a file read: often
/// enough that a test sees a change within a heartbeat, rarely enough to leave the
/// machine to what is being waited for.
pub const POLL: Duration = Duration::from_millis(50);

/// A condition that did not come true in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {} s waiting for {what}", within.as_secs_f64())]
pub struct TimedOut {
    pub what: String,
    pub within: Duration,
}

/// Ask `f` every [`POLL`] until it gives `Some(value)`, or fail after `within`.
pub async fn wait<T, F, Fut>(within: Duration, what: &str, f: F) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_every(POLL, within, what, f).await
}

/// [`wait`], asking every `every`.
pub async fn wait_every<T, F, Fut>(
    every: Duration,
    within: Duration,
    what: &str,
    mut f: F,
) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(TimedOut {
                what: what.to_string(),
                within,
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// [`wait`] for code outside an async runtime (it blocks the thread).
pub fn wait_blocking<T>(
    within: Duration,
    what: &str,
    f: impl FnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    wait_blocking_every(POLL, within, what, f)
}

/// [`wait_blocking`], asking every `every` (an ask that runs a command is costly).
pub fn wait_blocking_every<T>(
    every: Duration,
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(TimedOut {
                what: what.to_string(),
                within,
            });
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_wait_returns_the_first_value_or_says_what_it_waited_for() {
        let mut n = 0;
        let v = wait(Duration::from_secs(5), "three asks", || {
            n += 1;
            let v = (n >= 3).then_some(n);
            async move { v }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
        let e = wait(Duration::from_millis(120), "never", || async { None::<()> })
            .await
            .unwrap_err();
        assert_eq!(e.what, "never");
        assert_eq!(e.to_string(), "timed out after 0.12 s waiting for never");
    }

    #[test]
    fn a_blocking_wait_gives_up_at_its_deadline() {
        let t = Instant::now();
        let e = wait_blocking(Duration::from_millis(100), "nothing", || None::<()>).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert_eq!(e.within, Duration::from_millis(100));
        let mut left = 2;
        let v = wait_blocking(Duration::from_secs(5), "a countdown", || {
            left -= 1;
            (left == 0).then_some("done")
        })
        .unwrap();
        assert_eq!(v, "done");
    }
}
