//! The acknowledged-writes workload and its oracle: pipelined NBD writers on a
//! primary's socket, as a VM's QEMU would write, and the check afterwards that every
//! write the storage acknowledged is still there.
//!
//! Every write is a [`record`] that names its block and its sequence number, so the
//! oracle tells "the acknowledged write survived" (the block holds that write, or a
//! later one to the same block that may have landed unacknowledged) from "an older
//! write came back" (the acknowledged one was lost) — which a block that held the
//! same bytes on every round could not.
//!
//! Never: count a write that was in flight when the writers stopped; its fate is
//! unknown, so it may be found or not.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use replication::nbd::{ClientConfig, NbdClient};

use crate::error::{Context, LabError};

/// The workload's unit: one write is one 4 KiB block.
pub const BLOCK: u64 = 4096;

/// The bytes write number `seq` puts in block `block`: the block number and the
/// sequence number (8 bytes each, big-endian), then a fill that depends on both, so a
/// torn or misplaced write does not read back as a whole record.
pub fn record(block: u64, seq: u64) -> Bytes {
    let mut b = vec![fill(block, seq); BLOCK as usize];
    b[..8].copy_from_slice(&block.to_be_bytes());
    b[8..16].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(b)
}

/// Never 0, so a block never written (zeros) is never a record.
fn fill(block: u64, seq: u64) -> u8 {
    1 + (block.wrapping_mul(31).wrapping_add(seq) % 251) as u8
}

/// The sequence number of the record `data` holds, if it is a whole record of
/// `block`.
pub fn read_record(block: u64, data: &[u8]) -> Option<u64> {
    if data.len() != BLOCK as usize {
        return None;
    }
    let at = |i: usize| data.get(i..i + 8)?.try_into().ok().map(u64::from_be_bytes);
    let (b, seq) = (at(0)?, at(8)?);
    let f = fill(block, seq);
    (b == block && data[16..].iter().all(|x| *x == f)).then_some(seq)
}

/// What the storage acknowledged: how many writes, and per block the latest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acked {
    pub writes: u64,
    latest: BTreeMap<u64, u64>,
}

impl Acked {
    fn note(&mut self, block: u64, seq: u64) {
        self.writes += 1;
        let s = self.latest.entry(block).or_default();
        *s = (*s).max(seq);
    }

    /// How many blocks had a write acknowledged.
    pub fn blocks(&self) -> usize {
        self.latest.len()
    }

    /// Per block, the latest write acknowledged there: (block, sequence number).
    pub fn latest(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.latest.iter().map(|(b, s)| (*b, *s))
    }
}

/// Whether `data`, read back from `block`, holds the acknowledged write `seq` or a
/// later one to that block.
pub fn holds(block: u64, seq: u64, data: &[u8]) -> bool {
    read_record(block, data).is_some_and(|found| found >= seq)
}

/// How the writers write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// How many writers, each with one write in flight (writer `w` takes every
    /// `writers`-th block starting at `w`).
    pub writers: u32,
    /// Blocks `0..blocks` of the volume.
    pub blocks: u64,
    /// Each block once (then the writer ends), or round and round until stopped.
    pub once: bool,
    /// Forced unit access: each write durable before it is acknowledged.
    pub fua: bool,
}

/// The writers, running.
pub struct Writers {
    acked: Arc<Mutex<Acked>>,
    max_wait_ms: Arc<AtomicU64>,
    /// Per writer: when its write in flight began (ms since `start`; 0 = none).
    in_flight: Arc<Vec<AtomicU64>>,
    start: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Writers {
    /// Start `spec.writers` writers on `client`. A writer whose write fails stops (its
    /// error is kept: [`Writers::errors`]).
    pub fn start(client: NbdClient, spec: Spec) -> Writers {
        let c = Arc::new(client);
        let count = u64::from(spec.writers.max(1));
        let blocks = if spec.once {
            spec.blocks
        } else {
            spec.blocks.max(count)
        };
        let start = Instant::now();
        let acked = Arc::new(Mutex::new(Acked::default()));
        let seq = Arc::new(AtomicU64::new(1));
        let max_wait_ms = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let in_flight: Arc<Vec<AtomicU64>> =
            Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
        let tasks = (0..count)
            .map(|w| {
                let (c, acked, seq, max, errors, fl) = (
                    c.clone(),
                    acked.clone(),
                    seq.clone(),
                    max_wait_ms.clone(),
                    errors.clone(),
                    in_flight.clone(),
                );
                tokio::spawn(async move {
                    let slot = &fl[w as usize];
                    let mut i = w;
                    while i < blocks {
                        let s = seq.fetch_add(1, Ordering::SeqCst);
                        let t = Instant::now();
                        slot.store(ms(t - start).max(1), Ordering::SeqCst);
                        let r = c.write(i * BLOCK, record(i, s), spec.fua).await;
                        slot.store(0, Ordering::SeqCst);
                        if let Err(e) = r {
                            errors
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(format!("writer {w}: {e}"));
                            return;
                        }
                        max.fetch_max(ms(t.elapsed()), Ordering::SeqCst);
                        acked.lock().unwrap_or_else(|e| e.into_inner()).note(i, s);
                        i += count;
                        if !spec.once {
                            i %= blocks;
                        }
                    }
                })
            })
            .collect();
        Writers {
            acked,
            max_wait_ms,
            in_flight,
            start,
            tasks,
            errors,
        }
    }

    /// Writes acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).writes
    }

    /// The longest wait for one write so far, counting writes still in flight.
    pub fn max_wait_ms(&self) -> u64 {
        let now = ms(self.start.elapsed());
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

    /// How many writers still write (not ended by a failed write, nor done).
    pub fn running(&self) -> usize {
        self.tasks.iter().filter(|t| !t.is_finished()).count()
    }

    /// Why writers stopped by themselves (their write failed), so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stop writing now: writes in flight are not acknowledged and do not count.
    pub fn stop(self) -> Acked {
        for t in &self.tasks {
            t.abort();
        }
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wait up to `within` for the writers to end by themselves (their server gone, or
    /// every block written once); then stop the rest.
    pub async fn finish(mut self, within: Duration) -> Acked {
        let deadline = tokio::time::Instant::now() + within;
        for t in &mut self.tasks {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
        self.stop()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An NBD client of `export` on the unix socket `socket` (a primary's, as its VM's
/// QEMU connects).
pub async fn connect(socket: &Path, export: &str) -> Result<NbdClient, LabError> {
    let cfg = ClientConfig {
        export: export.into(),
        ..ClientConfig::default()
    };
    NbdClient::connect_unix(socket, &cfg)
        .await
        .with_ctx(|| format!("connecting to {}", socket.display()))
}

/// The oracle: how many blocks with an acknowledged write do not hold that write (or
/// a later one) when read back through `c`.
pub async fn missing(c: &NbdClient, acked: &Acked) -> Result<u64, LabError> {
    let mut n = 0u64;
    for (block, seq) in acked.latest() {
        let data = c
            .read(block * BLOCK, BLOCK as u32)
            .await
            .with_ctx(|| format!("reading block {block} back"))?;
        if !holds(block, seq, &data) {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use replication::nbd::{
        DEFAULT_SOCKET_MODE, Export, ExportSet, FileBackend, ServerConfig, UnixServer,
    };
    use tokio_util::sync::CancellationToken;

    /// Writers round and round a real NBD server (in process, on a file), then the
    /// oracle: every acknowledged write is found; an acknowledged write replaced by an
    /// older one of the same block is found missing.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_oracle_finds_every_acknowledged_write_and_misses_a_lost_one() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FileBackend::create(dir.path().join("v.raw"), 64 * BLOCK).unwrap();
        let exports = ExportSet::single(Export {
            name: "v".into(),
            description: String::new(),
            backend: Arc::new(backend),
            multi_conn: true,
        })
        .unwrap();
        let sock = dir.path().join("v.sock");
        let server = UnixServer::bind(
            &sock,
            DEFAULT_SOCKET_MODE,
            Arc::new(exports),
            ServerConfig::default(),
        )
        .unwrap();
        let stop = CancellationToken::new();
        let run = tokio::spawn(server.run(stop.clone()));
        let spec = Spec {
            writers: 4,
            blocks: 64,
            once: false,
            fua: false,
        };
        let w = Writers::start(connect(&sock, "v").await.unwrap(), spec);
        // Round and round: more writes than blocks.
        crate::wait(Duration::from_secs(10), "two rounds", || {
            let n = w.acknowledged();
            async move { (n > 128).then_some(()) }
        })
        .await
        .unwrap();
        let acked = w.stop();
        assert_eq!(acked.blocks(), 64);
        let c = connect(&sock, "v").await.unwrap();
        assert_eq!(missing(&c, &acked).await.unwrap(), 0);
        // Block 5 loses its latest write: an older record of it comes back.
        let latest = acked.latest().find(|(b, _)| *b == 5).unwrap().1;
        c.write(5 * BLOCK, record(5, latest - 1), true)
            .await
            .unwrap();
        assert_eq!(missing(&c, &acked).await.unwrap(), 1);
        stop.cancel();
        run.await.unwrap().unwrap();
    }

    #[test]
    fn a_record_names_its_block_and_write() {
        let r = record(7, 42);
        assert_eq!(r.len(), BLOCK as usize);
        assert_eq!(read_record(7, &r), Some(42));
        assert_eq!(read_record(8, &r), None, "another block's record");
        let mut torn = r.to_vec();
        torn[2048..].copy_from_slice(&record(7, 41)[2048..]);
        assert_eq!(
            read_record(7, &torn),
            None,
            "half of one write, half of another"
        );
        assert_eq!(read_record(0, &[0u8; 4096]), None, "never written");
        assert_eq!(read_record(7, &r[..100]), None);
    }

    #[test]
    fn acked_keeps_the_latest_write_per_block() {
        let mut a = Acked::default();
        a.note(3, 1);
        a.note(3, 9);
        a.note(5, 4);
        assert_eq!(a.writes, 3);
        assert_eq!(a.blocks(), 2);
        assert_eq!(a.latest[&3], 9);
    }
}
