//! Sub-millisecond sleeps for async code: one timer thread per proxy.
//!
//! tokio's timer ticks in whole milliseconds, so `sleep(600 µs)` wakes after 1–2 ms
//! and a 0.6 ms link would measure 2–4 ms of RTT. Instead, writers register their
//! deadline here and a dedicated thread parks until the earliest one (a futex wait on
//! an hrtimer, with this thread's timer slack cut from the default 50 µs to 1 µs),
//! then wakes the waiting tasks. A wake arrives within tens of microseconds of its
//! deadline. (A timerfd on tokio's reactor would need `unsafe` or an API tokio has
//! deprecated as unsound; the workspace denies both.)
//!
//! The thread only holds wakers; it never runs task code. It stops when its
//! [`TimerThread`] guard is dropped.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// A deadline closer than this counts as reached by the timer thread.
const EARLY_OK: Duration = Duration::from_micros(5);

/// How long before its deadline a sleeper is woken; it spends the rest yielding to
/// the runtime until the deadline has passed. Waking a parked tokio worker from
/// another thread takes tens of microseconds on a VM (a halted vCPU gets an IPI), so a
/// wake at the deadline would arrive that much late. The cost is at most this much
/// busy time per sleep, shared with other tasks of the worker through `yield_now`.
const WAKE_LEAD: Duration = Duration::from_micros(80);

/// The timer thread's slack: how late the kernel may fire its wakeups to batch them.
const TIMER_SLACK_NS: u64 = 1_000;

#[derive(Default)]
struct State {
    /// Deadlines by id, earliest first. Entries of cancelled sleeps stay until due and
    /// are skipped then (their waker is gone).
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    wakers: HashMap<u64, Waker>,
    next_id: u64,
    stopping: bool,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock left the maps consistent (every
        // critical section is a few map operations), so keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle to register sleeps with a proxy's timer thread.
#[derive(Clone)]
pub(crate) struct Timers {
    inner: Arc<Inner>,
    thread: Thread,
}

/// Owns the timer thread: dropping it stops and joins the thread.
pub(crate) struct TimerThread {
    inner: Arc<Inner>,
    handle: Option<JoinHandle<()>>,
}

impl Timers {
    /// Starts a timer thread.
    pub(crate) fn start() -> io::Result<(Timers, TimerThread)> {
        let inner = Arc::new(Inner::default());
        let for_thread = Arc::clone(&inner);
        let handle = thread::Builder::new()
            .name("metrodr-link-timer".into())
            .spawn(move || run(&for_thread))?;
        let timers = Timers {
            inner: Arc::clone(&inner),
            thread: handle.thread().clone(),
        };
        Ok((
            timers,
            TimerThread {
                inner,
                handle: Some(handle),
            },
        ))
    }

    /// Sleeps until `deadline` has passed: parked until [`WAKE_LEAD`] before it, then
    /// yielding to the runtime.
    pub(crate) async fn sleep_until(&self, deadline: Instant) {
        if let Some(wake_at) = deadline.checked_sub(WAKE_LEAD) {
            Sleep {
                timers: self,
                deadline: wake_at,
                id: None,
            }
            .await;
        }
        while Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for TimerThread {
    fn drop(&mut self) {
        self.inner.lock().stopping = true;
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            // The thread never panics while holding user code; nothing to report.
            let _ = handle.join();
        }
    }
}

/// The future of [`Timers::sleep_until`].
pub(crate) struct Sleep<'a> {
    timers: &'a Timers,
    deadline: Instant,
    id: Option<u64>,
}

impl Future for Sleep<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() + EARLY_OK >= self.deadline {
            self.cancel();
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let mut state = self.timers.inner.lock();
        let id = *self.id.get_or_insert_with(|| {
            state.next_id += 1;
            state.next_id
        });
        let mut now_earliest = false;
        // Not registered (first poll, or woken early by someone else after the thread
        // already took our waker): put the deadline back in the heap.
        if state.wakers.insert(id, cx.waker().clone()).is_none() {
            state.heap.push(Reverse((deadline, id)));
            now_earliest = state.heap.peek().is_some_and(|e| e.0.1 == id);
        }
        drop(state);
        if now_earliest {
            self.timers.thread.unpark();
        }
        Poll::Pending
    }
}

impl Sleep<'_> {
    fn cancel(&mut self) {
        if let Some(id) = self.id.take() {
            self.timers.inner.lock().wakers.remove(&id);
        }
    }
}

impl Drop for Sleep<'_> {
    fn drop(&mut self) {
        self.cancel();
    }
}

fn run(inner: &Inner) {
    // Best effort: without it wakeups are up to 50 µs later, still far below 1 ms.
    let _ = nix::sys::prctl::set_timerslack(TIMER_SLACK_NS);
    let mut due = Vec::new();
    loop {
        let next = {
            let mut state = inner.lock();
            if state.stopping {
                return;
            }
            let horizon = Instant::now() + EARLY_OK;
            while let Some(&Reverse((at, id))) = state.heap.peek() {
                if at > horizon {
                    break;
                }
                state.heap.pop();
                if let Some(waker) = state.wakers.remove(&id) {
                    due.push(waker);
                }
            }
            state.heap.peek().map(|e| e.0.0)
        };
        // Wake outside the lock: a woken task may register its next sleep at once.
        for waker in due.drain(..) {
            waker.wake();
        }
        match next {
            Some(at) => thread::park_timeout(at.saturating_duration_since(Instant::now())),
            None => thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_wake_close_to_their_deadline_in_order() {
        let (timers, _thread) = Timers::start().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut late_us = Vec::new();
            for _ in 0..200 {
                let deadline = Instant::now() + Duration::from_micros(300);
                timers.sleep_until(deadline).await;
                let now = Instant::now();
                assert!(now >= deadline, "woke too early");
                late_us.push(now.duration_since(deadline).as_micros());
            }
            late_us.sort_unstable();
            let p50 = late_us[late_us.len() / 2];
            println!("timer lateness p50 {p50} µs, max {:?} µs", late_us.last());
            // Generous: tokio's own timer would be ~700 µs late here.
            assert!(p50 < 400, "timer p50 lateness {p50} µs");
        });
    }

    #[test]
    fn cancelled_sleeps_do_not_block_later_ones() {
        let (timers, _thread) = Timers::start().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let far = timers.sleep_until(Instant::now() + Duration::from_secs(3600));
            let _ = tokio::time::timeout(Duration::from_millis(5), far).await;
            let start = Instant::now();
            timers.sleep_until(start + Duration::from_millis(1)).await;
            assert!(start.elapsed() < Duration::from_secs(1));
        });
    }
}
