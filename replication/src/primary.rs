//! The primary side of a consistency group: its volumes' NBD backends and the ordered
//! stream to the peer (sync or async).
//!
//! Every write gets the next group sequence number and a place in the resend buffer
//! *before* its local write starts (overlapping writes are ordered by the volume's range
//! lock, so the local file and the stream apply them in one order). In sync mode the
//! guest's write completes when it is on the local file and the peer confirmed it; if
//! the peer is unreachable, writes are held until it is back or the orchestrator has
//! committed it outdated (the [`DegradePermission`]). In async mode writes complete
//! locally and the buffer is bounded: over the bound the writer is throttled, then the
//! buffer is folded into the dirty bitmap and the peer is resynced later.
//!
//! The connection itself (handshake, resync, streaming) is in [`crate::link`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ids::{Epoch, Generation, GroupSeq};
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::backend::{BackendError, BlockBackend};
use crate::frame::{Envelope, Frame};
use crate::link::state::LinkState;
use crate::meta::ReplicaMeta;
use crate::replica::Mode;
use crate::volume::VolumeFile;

/// Asks the orchestrator for permission to run without the peer (it commits the peer
/// replica `Outdated` first). Until it says yes, sync writes stay unacknowledged.
pub trait DegradePermission: Send + Sync + 'static {
    fn request(
        &self,
        group: &str,
        epoch: Epoch,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// No orchestrator to ask: hold writes until the peer is back (the safe default).
pub struct NeverDegrade;

impl DegradePermission for NeverDegrade {
    fn request(
        &self,
        _group: &str,
        _epoch: Epoch,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async {
            Err("no orchestrator is configured to commit the peer outdated; holding writes until the peer is back".to_string())
        })
    }
}

/// Permission granted without asking anyone. Loses RPO = 0 on a double failure:
/// for benchmarks and lab tests only.
pub struct AlwaysDegrade;

impl DegradePermission for AlwaysDegrade {
    fn request(
        &self,
        _group: &str,
        _epoch: Epoch,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
}

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub name: String,
    pub mode: Mode,
    /// The peer's replica endpoint (`host:port`); None: not replicated.
    pub peer: Option<String>,
    /// Async: most bytes the peer may lag before writes are throttled.
    pub lag_max_bytes: u64,
    /// Async: most seconds the peer may lag; also how long a throttled writer waits
    /// before the buffer is folded into the bitmap.
    pub lag_max: Duration,
    /// Sync: how long writes are held for an unreachable peer before asking for
    /// permission to continue alone.
    pub hold_before_asking: Duration,
    pub ping_interval: Duration,
    /// No frame from the peer for this long: the link is down.
    pub peer_timeout: Duration,
    /// Resync batch: regions compared per checksum request.
    pub resync_batch: usize,
    /// Mutual TLS to the peer (it must hold an agent certificate of the same CA);
    /// None: plain TCP.
    pub tls: Option<std::sync::Arc<security::Tls>>,
}

impl GroupConfig {
    pub fn new(name: &str, mode: Mode, peer: Option<String>) -> Self {
        GroupConfig {
            name: name.to_string(),
            mode,
            peer,
            lag_max_bytes: 256 << 20,
            lag_max: Duration::from_secs(10),
            hold_before_asking: Duration::from_secs(1),
            ping_interval: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(3),
            resync_batch: 256,
            tls: None,
        }
    }
}

/// What the group reports (status lines, metrics, the agent).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupStatus {
    pub link: LinkState,
    pub epoch: Epoch,
    pub generation: Generation,
    /// Running alone with the peer committed outdated (sync) or overflowed (async).
    pub degraded: bool,
    /// This primary learned that a newer one exists: it acknowledges nothing any more.
    pub fenced: bool,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub resync_done: u64,
    pub resync_total: u64,
    pub resynced_bytes_total: u64,
    pub last_resync: Option<crate::frame::ResyncSummary>,
    pub dirty_regions: u64,
    pub next_seq: GroupSeq,
}

/// A frame waiting for the peer's acknowledgement.
#[derive(Debug, Clone)]
pub(crate) struct Buffered {
    pub seq: GroupSeq,
    pub env: Envelope,
    pub bytes: usize,
    pub at: Instant,
}

#[derive(Debug)]
pub(crate) struct State {
    pub next_seq: GroupSeq,
    pub buffer: VecDeque<Buffered>,
    pub buffer_bytes: usize,
    /// Highest seq handed to the current connection's writer.
    pub sent_upto: GroupSeq,
    pub meta: ReplicaMeta,
    /// Async mode: writes done locally whose regions stay "in flight" in the activity
    /// log until the peer confirms them (so a crash of this primary finds them there).
    pub unconfirmed: VecDeque<(GroupSeq, usize, std::ops::RangeInclusive<u32>)>,
}

/// Which writes the peer confirmably has: seq > `snapshot` with seq ≤ `acked`, and every
/// seq ≤ `resynced` (a resync covered them). See `wait_confirmed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Confirm {
    pub acked: GroupSeq,
    pub flushed: GroupSeq,
    pub snapshot: GroupSeq,
    pub resynced: GroupSeq,
    pub degraded: bool,
}

impl Confirm {
    /// Does the peer have write `seq` (`durable`: on its disk), or need it no more?
    pub fn covers(&self, seq: GroupSeq, durable: bool) -> bool {
        self.degraded
            || self.resynced >= seq
            || (seq > self.snapshot
                && if durable {
                    self.flushed >= seq
                } else {
                    self.acked >= seq
                })
    }
}

pub struct PrimaryGroup {
    pub cfg: GroupConfig,
    pub volumes: Vec<Arc<VolumeFile>>,
    pub(crate) state: Mutex<State>,
    pub(crate) confirm: watch::Sender<Confirm>,
    pub(crate) wake_link: Notify,
    pub(crate) permission: Arc<dyn DegradePermission>,
    pub(crate) status: watch::Sender<GroupStatus>,
    pub(crate) fenced: AtomicBool,
    /// The link is streaming to the peer (frames are sent as they are enqueued).
    pub(crate) streaming: AtomicBool,
    /// When the link last stopped streaming (or this run started).
    pub(crate) down_since: Mutex<Instant>,
    /// Ends the current connection (the next one plans a resync).
    pub(crate) kick: Notify,
    pub(crate) stop: watch::Sender<bool>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PrimaryGroup {
    /// Start a run of this primary: fold the activity log into the dirty bitmap
    /// (durably), begin a new generation ([`crate::replica::start_run`]) and persist
    /// it. `meta` is the group's (every volume's meta file holds the same role, epoch
    /// and generation; this writes it to all of them). Blocks on disk I/O: call it at
    /// startup, before serving.
    pub fn open(
        cfg: GroupConfig,
        volumes: Vec<Arc<VolumeFile>>,
        meta: ReplicaMeta,
        permission: Arc<dyn DegradePermission>,
    ) -> Result<Arc<PrimaryGroup>, String> {
        if meta.role != crate::meta::Role::Primary {
            return Err(format!(
                "group {}: this replica is a secondary at epoch {}; promote it to serve writes",
                cfg.name, meta.epoch
            ));
        }
        for v in &volumes {
            v.fold_al_into_bitmap().map_err(|e| e.to_string())?;
        }
        let meta = crate::replica::start_run(&meta);
        let degraded = meta.peer_outdated;
        let g = Arc::new(PrimaryGroup {
            state: Mutex::new(State {
                next_seq: meta.last_seq.next(),
                buffer: VecDeque::new(),
                buffer_bytes: 0,
                sent_upto: meta.last_seq,
                meta: meta.clone(),
                unconfirmed: VecDeque::new(),
            }),
            confirm: watch::channel(Confirm {
                degraded,
                ..Confirm::default()
            })
            .0,
            wake_link: Notify::new(),
            permission,
            status: watch::channel(GroupStatus::default()).0,
            fenced: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
            down_since: Mutex::new(Instant::now()),
            kick: Notify::new(),
            stop: watch::channel(false).0,
            cfg,
            volumes,
        });
        g.save_meta(&meta)?;
        g.refresh_status(Some(LinkState::Starting));
        Ok(g)
    }

    /// Change what the peer is known to have, then let the activity log forget the
    /// regions of async writes that are now confirmed.
    pub(crate) fn update_confirm(&self, f: impl FnOnce(&mut Confirm) -> bool) {
        self.confirm.send_if_modified(f);
        let c = *self.confirm.borrow();
        let mut done = Vec::new();
        {
            let mut s = lock(&self.state);
            while let Some((seq, _, _)) = s.unconfirmed.front() {
                if !c.covers(*seq, false) {
                    break;
                }
                if let Some(e) = s.unconfirmed.pop_front() {
                    done.push(e);
                }
            }
        }
        for (_, v, regions) in done {
            self.volumes[v].untrack(regions);
        }
    }

    pub fn status(&self) -> watch::Receiver<GroupStatus> {
        self.status.subscribe()
    }

    /// Recompute the lag and counters in the status now (they are otherwise refreshed
    /// on link events).
    pub fn refresh(&self) {
        self.refresh_status(None);
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// Stop acknowledging anything (a newer primary exists, or the host lost its lease).
    pub fn fence(&self, why: &str) {
        if !self.fenced.swap(true, Ordering::SeqCst) {
            tracing::error!(group = %self.cfg.name, "FENCED: no write is acknowledged any more: {why}");
        }
        self.refresh_status(Some(LinkState::Fenced {
            why: why.to_string(),
        }));
    }

    pub fn meta(&self) -> ReplicaMeta {
        lock(&self.state).meta.clone()
    }

    /// Persist the group's metadata to every volume.
    pub(crate) fn save_meta(&self, meta: &ReplicaMeta) -> Result<(), String> {
        for v in &self.volumes {
            let mut m = meta.clone();
            m.volume.clone_from(&v.id);
            m.size = v.size;
            m.save(&v.path).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Recompute the status (the link's state too, when `link` says it changed).
    pub(crate) fn refresh_status(&self, link: Option<LinkState>) {
        let (meta, lag_bytes, lag_seconds, next_seq) = {
            let s = lock(&self.state);
            let lag_s = s
                .buffer
                .front()
                .map_or(0.0, |b| b.at.elapsed().as_secs_f64());
            (s.meta.clone(), s.buffer_bytes as u64, lag_s, s.next_seq)
        };
        let c = *self.confirm.borrow();
        let dirty = self.volumes.iter().map(|v| v.dirty_count()).sum();
        self.status.send_modify(|st| {
            if let Some(link) = link {
                st.link = link;
            }
            st.epoch = meta.epoch;
            st.generation.clone_from(&meta.generation);
            st.degraded = c.degraded;
            st.fenced = self.fenced.load(Ordering::SeqCst);
            st.lag_bytes = lag_bytes;
            st.lag_seconds = lag_seconds;
            st.dirty_regions = dirty;
            st.next_seq = next_seq;
        });
    }

    /// Append a frame to the stream; returns its sequence number.
    pub(crate) fn enqueue(&self, frame: Frame) -> GroupSeq {
        self.enqueue_frame(frame).0
    }

    /// Append a frame to the stream: its sequence number, and whether it was buffered
    /// for the peer. A frame that was not (the peer is outdated and no link streams)
    /// must have its regions in the bitmap before its write is acknowledged; deciding
    /// under the state lock closes the race with [`go_degraded`](Self::go_degraded).
    pub(crate) fn enqueue_frame(&self, frame: Frame) -> (GroupSeq, bool) {
        let mut s = lock(&self.state);
        let seq = s.next_seq;
        s.next_seq = seq.next();
        let bytes = match &frame {
            Frame::Write { data, .. } => data.len() + 42,
            _ => 32,
        };
        let env = Envelope {
            seq,
            epoch: s.meta.epoch,
            frame,
        };
        // A degraded group with no link tracks writes in the bitmap instead of buffering
        // them (the buffer would grow without bound while the peer is away).
        let buffer = self.cfg.peer.is_some()
            && (self.streaming.load(Ordering::SeqCst) || !s.meta.peer_outdated);
        if buffer {
            s.buffer.push_back(Buffered {
                seq,
                env,
                bytes,
                at: Instant::now(),
            });
            s.buffer_bytes += bytes;
        }
        drop(s);
        self.wake_link.notify_one();
        (seq, buffer)
    }

    /// Wait until the peer confirmably has write `seq` (or the group runs degraded).
    /// A fenced group never returns: a stale primary acknowledges nothing.
    pub(crate) async fn wait_confirmed(&self, seq: GroupSeq, durable: bool) {
        let mut rx = self.confirm.subscribe();
        loop {
            if !self.is_fenced() && rx.borrow_and_update().covers(seq, durable) {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Async mode: hold a writer while the peer lags more than the bounds, for at most
    /// `lag_max`; past that, fold the buffer into the bitmap (the peer is resynced later).
    async fn throttle(&self) {
        let over = |s: &State| {
            s.buffer_bytes as u64 > self.cfg.lag_max_bytes
                || s.buffer
                    .front()
                    .is_some_and(|b| b.at.elapsed() > self.cfg.lag_max)
        };
        let deadline = Instant::now() + self.cfg.lag_max;
        let mut rx = self.confirm.subscribe();
        loop {
            if !over(&lock(&self.state)) || rx.borrow().degraded {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(group = %self.cfg.name, "async peer over its lag bound for {:?}: continuing with dirty tracking", self.cfg.lag_max);
                self.go_degraded("async lag over its bound").await;
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
        }
    }

    /// Continue without the peer: a new generation, every buffered write's regions into
    /// the bitmap (durably), then release the waiting writers. A connection that is
    /// streaming (an async peer over its lag bound, or a peer that came back while the
    /// permission was asked for) is ended: what it would have carried is in the bitmap
    /// now, so the next connection resyncs.
    pub(crate) async fn go_degraded(&self, why: &str) {
        let (meta, frames, was_streaming) = {
            let mut s = lock(&self.state);
            if s.meta.peer_outdated {
                return;
            }
            let was_streaming = self.streaming.swap(false, Ordering::SeqCst);
            s.meta = crate::replica::degrade(&s.meta);
            let frames: Vec<Buffered> = s.buffer.drain(..).collect();
            s.buffer_bytes = 0;
            s.sent_upto = s.next_seq.prev();
            (s.meta.clone(), frames, was_streaming)
        };
        if was_streaming {
            self.kick.notify_one();
        }
        let mut dirty: Vec<Vec<u32>> = vec![Vec::new(); self.volumes.len()];
        for b in &frames {
            let (v, off, len) = match &b.env.frame {
                Frame::Write {
                    volume,
                    offset,
                    data,
                    ..
                } => (*volume, *offset, data.len() as u64),
                Frame::Zero {
                    volume,
                    offset,
                    len,
                    ..
                } => (*volume, *offset, *len),
                _ => continue,
            };
            if let (Some(vol), Some(d)) = (self.volumes.get(v as usize), dirty.get_mut(v as usize))
            {
                d.extend(vol.regions_of(off, len));
            }
        }
        for (vol, regions) in self.volumes.iter().zip(dirty) {
            if let Err(e) = vol.mark_dirty(regions).await {
                // Cannot record what the peer misses: acknowledging would be unsafe.
                self.fence(&format!("cannot write the dirty bitmap: {e}"));
                return;
            }
        }
        if let Err(e) = self.save_meta(&meta) {
            self.fence(&format!("cannot persist metadata: {e}"));
            return;
        }
        tracing::warn!(group = %self.cfg.name, generation = %meta.generation, "continuing without the peer ({why}); its replica is outdated until resynced");
        self.update_confirm(|c| {
            c.degraded = true;
            true
        });
        self.refresh_status(None);
    }

    fn volume(&self, v: usize) -> &Arc<VolumeFile> {
        &self.volumes[v]
    }

    pub(crate) async fn write(
        &self,
        v: usize,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), BackendError> {
        if self.is_fenced() {
            std::future::pending::<()>().await;
        }
        let vol = self.volume(v).clone();
        let len = data.len() as u64;
        let regions = vol.regions_of(offset, len);
        let degraded = self.confirm.borrow().degraded;
        let guard = vol.ranges.lock(offset, offset + len).await;
        vol.track(regions.clone(), degraded)
            .await
            .map_err(|e| BackendError::Io(std::io::Error::other(e.to_string())))?;
        let (seq, buffered) = self.enqueue_frame(Frame::Write {
            volume: v as u16,
            offset,
            data: data.clone(),
            fua,
            resync: false,
        });
        let local = vol.write(offset, data).await;
        drop(guard);
        self.finish(v, &vol, regions, seq, buffered, fua, local)
            .await
    }

    pub(crate) async fn zero(
        &self,
        v: usize,
        offset: u64,
        len: u64,
        fua: bool,
        trim: bool,
    ) -> Result<(), BackendError> {
        if self.is_fenced() {
            std::future::pending::<()>().await;
        }
        let vol = self.volume(v).clone();
        let regions = vol.regions_of(offset, len);
        let degraded = self.confirm.borrow().degraded;
        let guard = vol.ranges.lock(offset, offset + len).await;
        vol.track(regions.clone(), degraded)
            .await
            .map_err(|e| BackendError::Io(std::io::Error::other(e.to_string())))?;
        let (seq, buffered) = self.enqueue_frame(Frame::Zero {
            volume: v as u16,
            offset,
            len,
            trim,
        });
        let local = vol.zero(offset, len, trim).await;
        drop(guard);
        self.finish(v, &vol, regions, seq, buffered, fua, local)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        v: usize,
        vol: &Arc<VolumeFile>,
        regions: std::ops::RangeInclusive<u32>,
        seq: GroupSeq,
        buffered: bool,
        fua: bool,
        local: std::io::Result<()>,
    ) -> Result<(), BackendError> {
        if let Err(e) = local {
            vol.untrack(regions);
            return Err(BackendError::Io(e));
        }
        if !buffered && self.cfg.peer.is_some() {
            // The peer will not get this write: it must be in the bitmap first (usually
            // already is; then this costs nothing).
            if let Err(e) = vol.mark_dirty(regions.clone().collect()).await {
                vol.untrack(regions);
                self.fence(&format!("cannot write the dirty bitmap: {e}"));
                return Err(BackendError::Io(std::io::Error::other(e.to_string())));
            }
        }
        if fua && let Err(e) = vol.sync().await {
            vol.untrack(regions);
            return Err(BackendError::Io(e));
        }
        if self.cfg.peer.is_none() {
            vol.untrack(regions);
            return Ok(());
        }
        match self.cfg.mode {
            Mode::Sync => {
                if fua {
                    let barrier = self.enqueue(Frame::Flush);
                    self.wait_confirmed(barrier, true).await;
                }
                self.wait_confirmed(seq, false).await;
                vol.untrack(regions);
            }
            Mode::Async => {
                // The regions stay in the activity log until the peer confirms the write.
                lock(&self.state).unconfirmed.push_back((seq, v, regions));
                self.update_confirm(|_| false);
                self.throttle().await;
            }
        }
        Ok(())
    }

    pub(crate) async fn flush(&self, v: usize) -> Result<(), BackendError> {
        if self.is_fenced() {
            std::future::pending::<()>().await;
        }
        let barrier = self.enqueue(Frame::Flush);
        self.volume(v).sync().await?;
        if self.cfg.peer.is_some() && self.cfg.mode == Mode::Sync {
            self.wait_confirmed(barrier, true).await;
        }
        Ok(())
    }

    /// Serve volume `v` of this group as an NBD backend.
    pub fn backend(self: &Arc<Self>, v: usize) -> PrimaryVolume {
        PrimaryVolume {
            group: self.clone(),
            v,
        }
    }

    /// A clean stop (after the NBD server stopped taking requests): wait up to `grace`
    /// for the peer to confirm every write, make the local files durable, and when
    /// nothing is left unconfirmed, empty the activity log so the next run has nothing
    /// to resync. Then stop the link. Returns whether the peer confirmed everything.
    pub async fn close(&self, grace: Duration) -> Result<bool, String> {
        let last = lock(&self.state).next_seq.prev();
        let confirmed = self.cfg.peer.is_none()
            || tokio::time::timeout(grace, self.wait_confirmed(last, false))
                .await
                .is_ok();
        for v in &self.volumes {
            v.sync()
                .await
                .map_err(|e| format!("{}: fsync: {e}", v.path.display()))?;
        }
        let quiet = confirmed && !self.is_fenced() && lock(&self.state).unconfirmed.is_empty();
        if quiet {
            for v in &self.volumes {
                v.clear_al().map_err(|e| e.to_string())?;
            }
        }
        self.stop();
        Ok(quiet)
    }

    /// Stop the link task (writers still waiting are not released).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        self.wake_link.notify_waiters();
    }
}

/// One volume of a primary group, as an NBD backend.
#[derive(Clone)]
pub struct PrimaryVolume {
    group: Arc<PrimaryGroup>,
    v: usize,
}

impl BlockBackend for PrimaryVolume {
    fn size(&self) -> u64 {
        self.group.volumes[self.v].size
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BackendError> {
        Ok(self.group.volumes[self.v]
            .read(offset, len as usize)
            .await?)
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), BackendError> {
        self.group.write(self.v, offset, data, fua).await
    }

    async fn flush(&self) -> Result<(), BackendError> {
        self.group.flush(self.v).await
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.group.zero(self.v, offset, len, false, true).await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        may_trim: bool,
    ) -> Result<(), BackendError> {
        self.group.zero(self.v, offset, len, fua, may_trim).await
    }

    async fn extents(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<Vec<crate::backend::Extent>, BackendError> {
        self.group.volumes[self.v].extents(offset, len).await
    }
}
