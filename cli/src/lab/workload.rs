//! The chaos workload: pipelined NBD writers on the tier-1 app's primary, as its VM's
//! QEMU would write. Block `i` always holds its number; the writers go round the
//! volume until stopped, and keep which blocks had a write acknowledged and how long
//! each write waited, so that a run can check that every acknowledged write survived
//! and that none stalled past a bound.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use replication::nbd::NbdClient;

use crate::demo::storage::block;

pub struct Writers {
    acked: Arc<Mutex<BTreeSet<u64>>>,
    writes: Arc<AtomicU64>,
    max_wait_ms: Arc<AtomicU64>,
    /// Per writer: when its write in flight began (ms since `start`; 0 = none).
    in_flight: Arc<Vec<AtomicU64>>,
    start: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub errors: Arc<Mutex<Vec<String>>>,
}

impl Writers {
    /// `count` writers over blocks `0..blocks`, writer `w` taking every `count`-th,
    /// round and round.
    pub fn start(client: NbdClient, count: u32, blocks: u64) -> Writers {
        let c = Arc::new(client);
        let count = u64::from(count.max(1));
        let start = Instant::now();
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let writes = Arc::new(AtomicU64::new(0));
        let max_wait_ms = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let in_flight: Arc<Vec<AtomicU64>> =
            Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
        let tasks = (0..count)
            .map(|w| {
                let (c, acked, max, errors, fl, writes) = (
                    c.clone(),
                    acked.clone(),
                    max_wait_ms.clone(),
                    errors.clone(),
                    in_flight.clone(),
                    writes.clone(),
                );
                tokio::spawn(async move {
                    let blocks = blocks.max(count);
                    let mut i = w;
                    loop {
                        let t = Instant::now();
                        let began = (t - start).as_millis() as u64;
                        fl[w as usize].store(began.max(1), Ordering::SeqCst);
                        let r = c.write(i * 4096, block(i), false).await;
                        fl[w as usize].store(0, Ordering::SeqCst);
                        if let Err(e) = r {
                            errors
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(format!("writer {w}: {e}"));
                            return;
                        }
                        max.fetch_max(t.elapsed().as_millis() as u64, Ordering::SeqCst);
                        acked.lock().unwrap_or_else(|e| e.into_inner()).insert(i);
                        writes.fetch_add(1, Ordering::Relaxed);
                        i = (i + count) % blocks;
                    }
                })
            })
            .collect();
        Writers {
            acked,
            writes,
            max_wait_ms,
            in_flight,
            start,
            tasks,
            errors,
        }
    }

    /// The longest wait for one write so far, counting writes still in flight.
    pub fn max_wait_ms(&self) -> u64 {
        let now = self.start.elapsed().as_millis() as u64;
        let pending = self
            .in_flight
            .iter()
            .map(|b| b.load(Ordering::SeqCst))
            .filter(|b| *b > 0)
            .map(|b| now.saturating_sub(b))
            .max()
            .unwrap_or(0);
        self.max_wait_ms.load(Ordering::SeqCst).max(pending)
    }

    /// Stop writing: writes in flight are not acknowledged and do not count. Returns
    /// the number of acknowledged writes and the blocks they wrote.
    pub fn stop(self) -> (u64, Vec<u64>) {
        for t in &self.tasks {
            t.abort();
        }
        let blocks = self
            .acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        (self.writes.load(Ordering::Relaxed), blocks)
    }
}
