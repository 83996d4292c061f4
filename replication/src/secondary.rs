//! The secondary side of a consistency group: a TCP endpoint that accepts the primary's
//! stream (one connection at a time; a newer one replaces an older one), refuses lower
//! epochs, applies writes in stream order to the local files, acknowledges them, makes
//! them durable on flush barriers, and answers checksum requests during a resync.
//!
//! A region enters the activity log before a write to it is applied and stays busy
//! until the next fsync (a flush barrier from the primary, or at least every
//! [`FSYNC_INTERVAL`]). A secondary that crashed reports the regions its log held
//! ("suspect": writes it acknowledged may not have reached its disk) in every hello
//! until a resync has covered them.
//!
//! Never: apply a frame from an epoch lower than the highest it has seen (that epoch is
//! persisted before the first frame of a new one is applied), or report itself
//! consistent before a resync finished.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use ids::{Epoch, GroupSeq};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::frame::{
    CodecError, Envelope, Frame, FrameCodec, FrameError, Hello, HelloReply, Refusal, VERSION,
    VolumeInfo,
};
use crate::meta::ReplicaMeta;
use crate::replica::{HelloDecision, accept_hello, demote};
use crate::volume::VolumeFile;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A primary that sends nothing (not even pings) for this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Applied writes are made durable at least this often.
pub const FSYNC_INTERVAL: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplicaStatus {
    pub connected: bool,
    pub primary: String,
    pub epoch: Epoch,
    pub consistent: bool,
    pub last_seq: GroupSeq,
    pub resync_bytes: u64,
    pub last_error: String,
}

pub struct ReplicaGroup {
    pub name: String,
    pub volumes: Vec<Arc<VolumeFile>>,
    meta: Mutex<ReplicaMeta>,
    /// Bumped by every accepted connection; an older connection stops when it sees it.
    conn_gen: watch::Sender<u64>,
    status: watch::Sender<ReplicaStatus>,
    /// Regions the activity log held when this process started (a crash may have lost
    /// acknowledged writes there), per volume; reported until a resync covers them.
    suspect: Mutex<Vec<(u16, Vec<u32>)>>,
    /// Held while one frame is applied: a snapshot is taken between two frames.
    applying: tokio::sync::Mutex<()>,
}

impl ReplicaGroup {
    pub fn new(name: &str, volumes: Vec<Arc<VolumeFile>>, meta: ReplicaMeta) -> Arc<ReplicaGroup> {
        let status = ReplicaStatus {
            epoch: meta.epoch,
            consistent: meta.consistent,
            last_seq: meta.last_seq,
            ..Default::default()
        };
        let suspect = volumes
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u16, v.al_regions()))
            .filter(|(_, r)| !r.is_empty())
            .collect();
        Arc::new(ReplicaGroup {
            name: name.to_string(),
            suspect: Mutex::new(suspect),
            applying: tokio::sync::Mutex::new(()),
            volumes,
            meta: Mutex::new(meta),
            conn_gen: watch::channel(0).0,
            status: watch::channel(status).0,
        })
    }

    pub fn status(&self) -> watch::Receiver<ReplicaStatus> {
        self.status.subscribe()
    }

    pub fn meta(&self) -> ReplicaMeta {
        lock(&self.meta).clone()
    }

    /// A copy-on-write snapshot of every volume at the last applied frame (files in
    /// `dir`); replication goes on. Refused while the replica is not consistent (a
    /// resync is running, or it never finished one): a drill on it would test garbage.
    pub async fn snapshot(
        self: &Arc<Self>,
        dir: &std::path::Path,
    ) -> Result<crate::snapshot::GroupSnapshot, String> {
        let _between_frames = self.applying.lock().await;
        let meta = self.meta();
        if !meta.consistent || !self.status.borrow().consistent {
            return Err(format!(
                "the replica of {} is not consistent (a resync is running or never finished): a drill on it would test garbage; wait until it is up to date",
                self.name
            ));
        }
        if self.volumes.iter().any(|v| v.preserver().is_some()) {
            return Err(format!(
                "the replica of {} already has a drill snapshot (one at a time)",
                self.name
            ));
        }
        crate::snapshot::GroupSnapshot::attach(&self.name, &self.volumes, meta.last_seq, dir)
    }

    /// Make everything applied durable; then no region of the log is busy.
    async fn fsync_all(&self) -> Result<(), String> {
        for v in &self.volumes {
            v.sync()
                .await
                .map_err(|e| format!("{}: fsync: {e}", v.path.display()))?;
            v.all_flushed();
        }
        Ok(())
    }

    /// A clean stop: everything durable, the last sequence number recorded, the
    /// activity log empty (nothing is suspect at the next start).
    pub async fn close(&self) -> Result<(), String> {
        let meta = self.meta();
        self.save(&meta).await?;
        for v in &self.volumes {
            v.all_flushed();
            if self.suspect_regions().is_empty() {
                v.clear_al().map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn suspect_regions(&self) -> Vec<(u16, Vec<u32>)> {
        lock(&self.suspect).clone()
    }

    fn infos(&self) -> Vec<VolumeInfo> {
        self.volumes
            .iter()
            .map(|v| VolumeInfo {
                id: v.id.clone(),
                size: v.size,
            })
            .collect()
    }

    /// Persist the group's metadata to every volume (data made durable first, so the
    /// recorded sequence number never claims more than the disk holds).
    async fn save(&self, meta: &ReplicaMeta) -> Result<(), String> {
        for v in &self.volumes {
            v.sync()
                .await
                .map_err(|e| format!("{}: fsync: {e}", v.path.display()))?;
        }
        for v in &self.volumes {
            let mut m = meta.clone();
            m.volume.clone_from(&v.id);
            m.size = v.size;
            m.save(&v.path).map_err(|e| e.to_string())?;
        }
        *lock(&self.meta) = meta.clone();
        Ok(())
    }
}

/// Accept primaries on `listener` until `stop` turns true. Connections live in a
/// `JoinSet` owned by this future: when it returns or is dropped, they all end.
pub async fn serve(
    group: Arc<ReplicaGroup>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    tls: Option<Arc<security::Tls>>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    let g = group.clone();
                    let tls = tls.clone();
                    conns.spawn(async move {
                        let io = match secure(s, tls.as_deref()).await {
                            Ok(io) => io,
                            Err(why) => {
                                tracing::warn!(group = %g.name, %peer, "refused a replication connection: {why}");
                                g.status.send_modify(|st| {
                                    st.last_error = format!("refused a connection from {peer}: {why}");
                                });
                                return;
                            }
                        };
                        if let Err(why) = connection(&g, io).await {
                            tracing::warn!(group = %g.name, %peer, "replication connection closed: {why}");
                            g.status.send_modify(|st| {
                                st.connected = false;
                                st.last_error = why;
                            });
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(group = %group.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = stopped(&mut stop) => break,
        }
    }
    conns.shutdown().await;
    if let Err(e) = group.close().await {
        tracing::error!(group = %group.name, "clean stop failed: {e}");
    }
    group.status.send_modify(|st| st.connected = false);
}

/// Resolves when `stop` turns true (or its sender is gone). Holds no watch guard
/// across an await, so the futures that use it stay `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

async fn replaced(gen_rx: &mut watch::Receiver<u64>, mine: u64) {
    let _ = gen_rx.wait_for(|g| *g != mine).await.map(|_| ());
}

type Writer = FramedWrite<crate::WriteHalf, FrameCodec>;

/// The two halves of a connection: plain TCP, or TLS after a handshake that proved the
/// primary holds an agent certificate of this cluster's CA.
async fn secure(
    tcp: TcpStream,
    tls: Option<&security::Tls>,
) -> Result<(crate::ReadHalf, crate::WriteHalf), String> {
    let Some(tls) = tls else {
        let (r, w) = tcp.into_split();
        return Ok((Box::new(r), Box::new(w)));
    };
    let (s, who) = tls.accept(tcp).await?;
    security::authorize(
        &who,
        security::Access::Replicate,
        "stream writes to a replica",
    )
    .map_err(|d| d.to_string())?;
    let (r, w) = tokio::io::split(s);
    Ok((Box::new(r), Box::new(w)))
}

/// Tell the primary why this replica will not go on, then end the connection (the
/// error is what the replica's status shows).
async fn refuse(w: &mut Writer, epoch: Epoch, why: Refusal) -> Result<(), String> {
    let text = why.to_string();
    let _ = w
        .send(Envelope {
            seq: GroupSeq(0),
            epoch,
            frame: Frame::Refused(why),
        })
        .await;
    Err(text)
}

async fn connection(
    group: &Arc<ReplicaGroup>,
    (rd, wr): (crate::ReadHalf, crate::WriteHalf),
) -> Result<(), String> {
    let mut reader = FramedRead::new(rd, FrameCodec);
    let mut writer = FramedWrite::new(wr, FrameCodec);
    let (hello, epoch): (Hello, Epoch) =
        match tokio::time::timeout(HELLO_TIMEOUT, reader.next()).await {
            Ok(Some(Ok(Envelope {
                frame: Frame::Hello(h),
                epoch,
                ..
            }))) => (h, epoch),
            Ok(Some(Ok(other))) => {
                let got = other.frame.name().to_string();
                return refuse(&mut writer, Epoch(0), Refusal::ExpectedHello { got }).await;
            }
            // A primary of another metrodr version: say so in this version's words (its
            // decoder reports the version of the refusal frame, which is as clear).
            Ok(Some(Err(CodecError::Frame(FrameError::Version(theirs))))) => {
                let why = Refusal::Version {
                    theirs,
                    ours: VERSION,
                };
                return refuse(&mut writer, group.meta().epoch, why).await;
            }
            Ok(Some(Err(e))) => return Err(format!("bad frame: {e}")),
            Ok(None) => return Err("closed before the hello".into()),
            Err(_) => return Err("no hello within 10 s".into()),
        };
    let meta = group.meta();
    let (epoch, demoted) = match accept_hello(&meta, &group.infos(), epoch, &hello) {
        HelloDecision::Reject(why) => return refuse(&mut writer, meta.epoch, why).await,
        HelloDecision::Accept { epoch, demoted } => (epoch, demoted),
    };
    let mut meta = meta;
    if demoted {
        tracing::warn!(group = %group.name, %epoch, "a newer primary connected: this replica is now secondary");
        meta = demote(&meta, epoch).map_err(|e| e.to_string())?;
    }
    if epoch != meta.epoch || demoted {
        meta.epoch = epoch;
        group.save(&meta).await?;
    }
    // Replace any older connection.
    group.conn_gen.send_modify(|g| *g += 1);
    let my_gen = *group.conn_gen.borrow();
    let mut gen_rx = group.conn_gen.subscribe();
    let own_regions = group.suspect_regions();
    let reply = HelloReply {
        epoch: meta.epoch,
        generation: meta.generation.clone(),
        history: meta.history.clone(),
        last_seq: meta.last_seq,
        consistent: meta.consistent,
        own_regions,
    };
    writer
        .send(Envelope {
            seq: GroupSeq(0),
            epoch: meta.epoch,
            frame: Frame::HelloReply(reply),
        })
        .await
        .map_err(|e| format!("sending the hello reply: {e}"))?;
    group.status.send_modify(|st| {
        st.connected = true;
        st.primary.clone_from(&hello.group);
        st.epoch = meta.epoch;
        st.consistent = meta.consistent;
        st.last_error.clear();
    });
    tracing::info!(group = %group.name, %epoch, generation = %hello.generation, "primary connected");

    let mut last_seq = meta.last_seq;
    let mut resyncing = false;
    let mut last_fsync = tokio::time::Instant::now();
    loop {
        let first = tokio::select! {
            f = tokio::time::timeout(IDLE_TIMEOUT, reader.next()) => f,
            () = replaced(&mut gen_rx, my_gen) => return Err("replaced by a newer connection".into()),
        };
        let mut env = match first {
            Err(_) => return Err("the primary went silent".into()),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => {
                let why = Refusal::BadFrame { why: e.to_string() };
                return refuse(&mut writer, epoch, why).await;
            }
            Ok(Some(Ok(e))) => e,
        };
        // Handle this frame and every one already buffered, then acknowledge once.
        let mut ack = None;
        loop {
            if env.epoch < epoch {
                let why = Refusal::StaleEpoch {
                    epoch: env.epoch,
                    seen: epoch,
                };
                return refuse(&mut writer, epoch, why).await;
            }
            match handle(
                group,
                &hello,
                env,
                &mut writer,
                &mut resyncing,
                &mut last_seq,
            )
            .await?
            {
                Some(Reply::Ack(seq)) => ack = Some(seq),
                Some(Reply::Now(f)) => writer.send(f).await.map_err(|e| format!("sending: {e}"))?,
                None => {}
            }
            match reader.next().now_or_never() {
                Some(Some(Ok(e))) => env = e,
                Some(Some(Err(e))) => {
                    let why = Refusal::BadFrame { why: e.to_string() };
                    return refuse(&mut writer, epoch, why).await;
                }
                Some(None) => return Ok(()),
                None => break,
            }
        }
        if let Some(seq) = ack {
            writer
                .send(Envelope {
                    seq,
                    epoch,
                    frame: Frame::Ack,
                })
                .await
                .map_err(|e| format!("sending: {e}"))?;
        }
        if last_fsync.elapsed() >= FSYNC_INTERVAL {
            if group.volumes.iter().any(|v| v.has_unflushed()) {
                group.fsync_all().await?;
            }
            last_fsync = tokio::time::Instant::now();
        }
        group.status.send_modify(|st| st.last_seq = last_seq);
    }
}

enum Reply {
    Ack(GroupSeq),
    Now(Envelope),
}

fn check_range(v: &VolumeFile, offset: u64, len: u64) -> Result<(), Refusal> {
    if offset.checked_add(len).is_none_or(|end| end > v.size) {
        return Err(Refusal::OutOfRange {
            volume: v.id.clone(),
            offset,
            len,
            size: v.size,
        });
    }
    Ok(())
}

async fn handle(
    group: &Arc<ReplicaGroup>,
    hello: &Hello,
    env: Envelope,
    writer: &mut Writer,
    resyncing: &mut bool,
    last_seq: &mut GroupSeq,
) -> Result<Option<Reply>, String> {
    let _applying = group.applying.lock().await;
    let epoch = env.epoch;
    let volume = |i: u16| {
        group
            .volumes
            .get(i as usize)
            .cloned()
            .ok_or(Refusal::NoSuchVolume { volume: i })
    };
    match env.frame {
        Frame::Write {
            volume: vi,
            offset,
            data,
            fua,
            resync,
        } => {
            let v = match volume(vi) {
                Ok(v) => v,
                Err(why) => return refuse(writer, epoch, why).await.map(|()| None),
            };
            if let Err(why) = check_range(&v, offset, data.len() as u64) {
                return refuse(writer, epoch, why).await.map(|()| None);
            }
            if resync && !*resyncing {
                // From the first resync write until the resync is done, this copy is
                // not consistent: say so on disk before changing anything.
                let mut m = group.meta();
                m.consistent = false;
                group.save(&m).await?;
                *resyncing = true;
                group.status.send_modify(|st| st.consistent = false);
            }
            let n = data.len() as u64;
            if !resync {
                v.track(v.regions_of(offset, n), false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            v.write(offset, data)
                .await
                .map_err(|e| format!("{}: write: {e}", v.path.display()))?;
            if fua {
                v.sync()
                    .await
                    .map_err(|e| format!("{}: fsync: {e}", v.path.display()))?;
            }
            if resync {
                group.status.send_modify(|st| st.resync_bytes += n);
            }
            *last_seq = env.seq;
            lock(&group.meta).last_seq = env.seq;
            Ok(Some(Reply::Ack(env.seq)))
        }
        Frame::Zero {
            volume: vi,
            offset,
            len,
            trim,
        } => {
            let v = match volume(vi) {
                Ok(v) => v,
                Err(why) => return refuse(writer, epoch, why).await.map(|()| None),
            };
            if let Err(why) = check_range(&v, offset, len) {
                return refuse(writer, epoch, why).await.map(|()| None);
            }
            v.track(v.regions_of(offset, len), false)
                .await
                .map_err(|e| e.to_string())?;
            v.zero(offset, len, trim)
                .await
                .map_err(|e| format!("{}: zero: {e}", v.path.display()))?;
            *last_seq = env.seq;
            lock(&group.meta).last_seq = env.seq;
            Ok(Some(Reply::Ack(env.seq)))
        }
        Frame::Flush => {
            group.fsync_all().await?;
            *last_seq = env.seq;
            lock(&group.meta).last_seq = env.seq;
            Ok(Some(Reply::Now(Envelope {
                seq: env.seq,
                epoch,
                frame: Frame::FlushAck,
            })))
        }
        Frame::SumsRequest(req) => {
            let v = match volume(req.volume) {
                Ok(v) => v,
                Err(why) => return refuse(writer, epoch, why).await.map(|()| None),
            };
            if req.region_size != v.region_size
                || req.regions.iter().any(|r| *r >= v.regions())
                || req.regions.len() > 65_536
            {
                let why = Refusal::BadSumsRequest { volume: req.volume };
                return refuse(writer, epoch, why).await.map(|()| None);
            }
            let sums = v
                .region_sums(req.regions)
                .await
                .map_err(|e| format!("{}: read: {e}", v.path.display()))?;
            Ok(Some(Reply::Now(Envelope {
                seq: GroupSeq(0),
                epoch,
                frame: Frame::Sums {
                    volume: req.volume,
                    region_size: v.region_size,
                    sums,
                },
            })))
        }
        Frame::ResyncDone(summary) => {
            let mut m = group.meta();
            m.consistent = true;
            m.generation.clone_from(&hello.generation);
            m.history.clone_from(&hello.history);
            m.last_seq = env.seq;
            group.save(&m).await?;
            for v in &group.volumes {
                v.all_flushed();
                v.clear_al().map_err(|e| e.to_string())?;
            }
            lock(&group.suspect).clear();
            *resyncing = false;
            *last_seq = env.seq;
            tracing::info!(group = %group.name, copied = summary.regions_copied, bytes = summary.bytes_copied, "resync complete: this replica is consistent");
            group.status.send_modify(|st| st.consistent = true);
            Ok(Some(Reply::Ack(env.seq)))
        }
        Frame::Ping(n) => Ok(Some(Reply::Now(Envelope {
            seq: GroupSeq(0),
            epoch,
            frame: Frame::Pong(n),
        }))),
        other => {
            let got = other.name().to_string();
            refuse(writer, epoch, Refusal::UnexpectedFrame { got })
                .await
                .map(|()| None)
        }
    }
}
