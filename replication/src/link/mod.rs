//! The primary's connection to its peer: connect, hello, plan (replay or compare and
//! copy regions), stream every enqueued frame in order, track acknowledgements, and
//! when the link is down, hold sync writes until the peer returns or the orchestrator
//! lets this primary continue alone ([`crate::primary::DegradePermission`]). What the
//! link is doing is a [`LinkState`] in the group's status.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ids::{Epoch, GroupSeq};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::frame::{
    Envelope, Frame, FrameCodec, Hello, HelloReply, Refusal, ResyncSummary, SumsRequest, VolumeInfo,
};
use crate::primary::{PrimaryGroup, lock};
use crate::replica::{Mode, PrimaryView, ResyncPlan, plan_resync};

pub mod state;
pub use state::LinkState;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Resync reads pause while this much is buffered for the peer.
const RESYNC_BUFFER_MAX: usize = 64 << 20;

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Stopped,
    /// The peer has seen a newer epoch: this primary is stale and must fence.
    Stale(String),
    Failed(String),
}

/// What the peer's refusal means for this primary. One that says a newer primary
/// exists, or that the peer is itself primary at this epoch, fences it: it must
/// acknowledge nothing more. Any other ends this connection; the next one retries.
fn refused(why: Refusal) -> End {
    match why {
        Refusal::StaleEpoch { .. } | Refusal::TwoPrimaries { .. } => {
            End::Stale(format!("the peer refused this primary: {why}"))
        }
        Refusal::VolumesDiffer { .. }
        | Refusal::Version { .. }
        | Refusal::ExpectedHello { .. }
        | Refusal::UnexpectedFrame { .. }
        | Refusal::BadFrame { .. }
        | Refusal::NoSuchVolume { .. }
        | Refusal::OutOfRange { .. }
        | Refusal::BadSumsRequest { .. } => End::Failed(format!("the peer refused: {why}")),
    }
}

/// Run the link until the group is stopped (or fenced). Spawn it on the runtime.
pub async fn run(group: Arc<PrimaryGroup>) {
    let Some(peer) = group.cfg.peer.clone() else {
        group.refresh_status(Some(LinkState::NotReplicated));
        return;
    };
    let watch = tokio::spawn(hold_watch(group.clone()));
    let mut stop = group.stop.subscribe();
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            break;
        }
        match connect_and_stream(&group, &peer).await {
            End::Stopped => break,
            End::Stale(why) => {
                group.fence(&why);
                break;
            }
            End::Failed(why) => {
                if group.streaming.swap(false, Ordering::SeqCst) {
                    *lock(&group.down_since) = Instant::now();
                    tracing::warn!(group = %group.cfg.name, %peer, "replication link down: {why}");
                }
                group.refresh_status(Some(LinkState::Down { why }));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
        if group.streaming.load(Ordering::SeqCst) {
            backoff = Duration::from_millis(100);
        }
    }
    watch.abort();
}

/// Sync writes are held while the peer is away; once the link has been down for
/// `hold_before_asking`, ask (again every second) for permission to go on alone. Runs
/// beside the reconnect attempts, which may each take a peer timeout.
async fn hold_watch(group: Arc<PrimaryGroup>) {
    let mut stop = group.stop.subscribe();
    let mut last_ask = None::<Instant>;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let holding = group.cfg.mode == Mode::Sync
            && !group.streaming.load(Ordering::SeqCst)
            && !group.is_fenced()
            && !group.confirm.borrow().degraded
            && !lock(&group.state).buffer.is_empty();
        let down_for = lock(&group.down_since).elapsed();
        if !holding
            || down_for < group.cfg.hold_before_asking
            || last_ask.is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            continue;
        }
        last_ask = Some(Instant::now());
        let epoch = group.meta().epoch;
        match group.permission.request(&group.cfg.name, epoch).await {
            Ok(()) => {
                group
                    .go_degraded("the orchestrator committed the peer outdated")
                    .await
            }
            Err(e) => {
                tracing::warn!(group = %group.cfg.name, "holding writes: permission to continue alone refused: {e}");
                group.refresh_status(Some(LinkState::HoldingWrites { why: e }));
            }
        }
    }
}

async fn connect_and_stream(group: &Arc<PrimaryGroup>, peer: &str) -> End {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return End::Failed(format!("cannot connect to {peer}: {e}")),
        Err(_) => return End::Failed(format!("connecting to {peer} timed out")),
    };
    let _ = stream.set_nodelay(true);
    let (rd, wr): (crate::ReadHalf, crate::WriteHalf) = match &group.cfg.tls {
        None => {
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        // A paused peer accepts TCP but never answers: bound the handshake like a hello.
        Some(tls) => match tokio::time::timeout(
            group.cfg.peer_timeout,
            tls.connect(stream, security::AGENT_SERVER_NAME),
        )
        .await
        {
            Ok(Ok(s)) => {
                let (r, w) = tokio::io::split(s);
                (Box::new(r), Box::new(w))
            }
            Ok(Err(why)) => return End::Failed(format!("TLS to {peer}: {why}")),
            Err(_) => {
                return End::Failed(format!(
                    "TLS to {peer}: no handshake within {:?}",
                    group.cfg.peer_timeout
                ));
            }
        },
    };
    let mut reader = FramedRead::new(rd, FrameCodec);
    let mut writer = FramedWrite::new(wr, FrameCodec);

    let (hello, epoch) = {
        let s = lock(&group.state);
        let hello = Hello {
            group: group.cfg.name.clone(),
            volumes: group
                .volumes
                .iter()
                .map(|v| VolumeInfo {
                    id: v.id.clone(),
                    size: v.size,
                })
                .collect(),
            generation: s.meta.generation.clone(),
            history: s.meta.history.clone(),
            mode: match group.cfg.mode {
                Mode::Sync => "sync".into(),
                Mode::Async => "async".into(),
            },
            resend_from: s.buffer.front().map_or(s.next_seq, |b| b.seq),
        };
        (hello, s.meta.epoch)
    };
    if let Err(e) = writer
        .send(Envelope {
            seq: GroupSeq(0),
            epoch,
            frame: Frame::Hello(hello),
        })
        .await
    {
        return End::Failed(format!("sending hello: {e}"));
    }
    let reply: HelloReply = match tokio::time::timeout(group.cfg.peer_timeout, reader.next()).await
    {
        Ok(Some(Ok(Envelope {
            frame: Frame::HelloReply(r),
            ..
        }))) => r,
        Ok(Some(Ok(Envelope {
            frame: Frame::Refused(why),
            ..
        }))) => return refused(why),
        Ok(Some(Ok(other))) => {
            return End::Failed(format!("unexpected first frame: {}", other.frame.name()));
        }
        Ok(Some(Err(e))) => return End::Failed(format!("bad frame from the peer: {e}")),
        Ok(None) => {
            return End::Failed("the peer closed the connection during the handshake".into());
        }
        Err(_) => return End::Failed("the peer did not answer the hello".into()),
    };
    if reply.epoch > epoch {
        return End::Stale(format!(
            "the peer has seen epoch {} (this primary is at {epoch})",
            reply.epoch
        ));
    }

    // Plan under the state lock, so no write slips between the snapshot and the stream.
    let (plans, snapshot) = {
        let mut s = lock(&group.state);
        let snapshot = s.next_seq.prev();
        let resend_from = s.buffer.front().map_or(s.next_seq, |b| b.seq);
        let mut plans = Vec::new();
        for (i, v) in group.volumes.iter().enumerate() {
            let changed = v.changed_regions();
            let own: Vec<(u16, Vec<u32>)> = reply
                .own_regions
                .iter()
                .filter(|(vi, _)| *vi as usize == i)
                .cloned()
                .collect();
            let r = HelloReply {
                own_regions: own,
                ..reply.clone()
            };
            let view = PrimaryView {
                meta: &s.meta,
                changed: &changed,
                resend_from,
            };
            plans.push(plan_resync(&view, &r));
        }
        let replay = plans.iter().all(|p| matches!(p, ResyncPlan::Replay { .. }));
        if replay {
            s.sent_upto = reply.last_seq;
            group.confirm.send_modify(|c| {
                c.snapshot = GroupSeq(0);
                c.acked = c.acked.max(reply.last_seq);
            });
        } else {
            // Frames up to the snapshot are covered by the resync (their regions are in
            // the activity log): they are not sent, and their writers wait for it.
            while s.buffer.front().is_some_and(|b| b.seq <= snapshot) {
                if let Some(b) = s.buffer.pop_front() {
                    s.buffer_bytes -= b.bytes;
                }
            }
            s.sent_upto = snapshot;
            group.confirm.send_modify(|c| c.snapshot = snapshot);
        }
        group.streaming.store(true, Ordering::SeqCst);
        (if replay { None } else { Some(plans) }, snapshot)
    };
    group.update_confirm(|_| false);
    tracing::info!(group = %group.cfg.name, %peer, resync = plans.is_some(), "replication link up");
    group.refresh_status(Some(if plans.is_some() {
        LinkState::Resyncing
    } else {
        LinkState::Streaming
    }));

    let (sums_tx, sums_rx) = mpsc::channel::<(u16, Vec<(u32, u32)>)>(4);
    let (ctl_tx, ctl_rx) = mpsc::channel::<Frame>(16);
    let mut reading = tokio::spawn(read_loop(group.clone(), reader, sums_tx));
    let mut writing = tokio::spawn(write_loop(group.clone(), writer, ctl_rx, epoch));
    let mut resyncing = match plans {
        Some(plans) => tokio::spawn(resync(
            group.clone(),
            plans,
            snapshot,
            sums_rx,
            ctl_tx.clone(),
        )),
        None => tokio::spawn(async { Ok(()) }),
    };
    let mut stop = group.stop.subscribe();
    let end = loop {
        tokio::select! {
            r = &mut reading => break r.unwrap_or_else(|e| End::Failed(e.to_string())),
            r = &mut writing => break r.unwrap_or_else(|e| End::Failed(e.to_string())),
            r = &mut resyncing, if !resyncing.is_finished() => {
                if let Ok(Err(e)) = r {
                    break End::Failed(format!("resync: {e}"));
                }
            }
            _ = stop.wait_for(|s| *s) => break End::Stopped,
            () = group.kick.notified() => break End::Failed("the peer must be resynced (this primary went on without it)".into()),
        }
    };
    reading.abort();
    writing.abort();
    resyncing.abort();
    drop(ctl_tx);
    end
}

async fn read_loop(
    group: Arc<PrimaryGroup>,
    mut reader: FramedRead<crate::ReadHalf, FrameCodec>,
    sums: mpsc::Sender<(u16, Vec<(u32, u32)>)>,
) -> End {
    loop {
        let next = match tokio::time::timeout(group.cfg.peer_timeout, reader.next()).await {
            Err(_) => {
                return End::Failed(format!(
                    "no frame from the peer for {:?}",
                    group.cfg.peer_timeout
                ));
            }
            Ok(None) => return End::Failed("the peer closed the connection".into()),
            Ok(Some(Err(e))) => return End::Failed(format!("bad frame from the peer: {e}")),
            Ok(Some(Ok(env))) => env,
        };
        match next.frame {
            Frame::Ack => {
                drop_acknowledged(&group, next.seq);
                group.update_confirm(|c| {
                    let changed = next.seq > c.acked;
                    c.acked = c.acked.max(next.seq);
                    changed
                });
            }
            Frame::FlushAck => {
                // The peer applies frames in order: everything up to the barrier is in.
                drop_acknowledged(&group, next.seq);
                group.update_confirm(|c| {
                    let changed = next.seq > c.flushed;
                    c.flushed = c.flushed.max(next.seq);
                    c.acked = c.acked.max(next.seq);
                    changed
                });
            }
            Frame::Sums {
                volume, sums: list, ..
            } => {
                if sums.send((volume, list)).await.is_err() {
                    return End::Failed("checksums arrived with no resync running".into());
                }
            }
            Frame::Pong(_) => {}
            Frame::Refused(why) => return refused(why),
            other => {
                return End::Failed(format!("unexpected frame from the peer: {}", other.name()));
            }
        }
    }
}

/// The peer has every frame up to `seq`: they leave the resend buffer.
fn drop_acknowledged(group: &PrimaryGroup, seq: GroupSeq) {
    let mut s = lock(&group.state);
    while s.buffer.front().is_some_and(|b| b.seq <= seq) {
        if let Some(b) = s.buffer.pop_front() {
            s.buffer_bytes -= b.bytes;
        }
    }
}

async fn write_loop(
    group: Arc<PrimaryGroup>,
    mut writer: FramedWrite<crate::WriteHalf, FrameCodec>,
    mut ctl: mpsc::Receiver<Frame>,
    epoch: Epoch,
) -> End {
    let mut ping = tokio::time::interval(group.cfg.ping_interval);
    let mut nonce = 0u64;
    loop {
        let wake = group.wake_link.notified();
        // Everything enqueued and not yet sent, in order.
        let batch: Vec<Envelope> = {
            let mut s = lock(&group.state);
            let from = s.buffer.partition_point(|b| b.seq <= s.sent_upto);
            let batch: Vec<Envelope> = s.buffer.iter().skip(from).map(|b| b.env.clone()).collect();
            if let Some(last) = batch.last() {
                s.sent_upto = last.seq;
            }
            batch
        };
        if !batch.is_empty() {
            for env in batch {
                if let Err(e) = writer.feed(env).await {
                    return End::Failed(format!("sending to the peer: {e}"));
                }
            }
            if let Err(e) = writer.flush().await {
                return End::Failed(format!("sending to the peer: {e}"));
            }
            continue;
        }
        tokio::select! {
            _ = wake => {}
            Some(f) = ctl.recv() => {
                if let Err(e) = writer.send(Envelope { seq: GroupSeq(0), epoch, frame: f }).await {
                    return End::Failed(format!("sending to the peer: {e}"));
                }
            }
            _ = ping.tick() => {
                nonce += 1;
                if let Err(e) = writer.send(Envelope { seq: GroupSeq(0), epoch, frame: Frame::Ping(nonce) }).await {
                    return End::Failed(format!("sending to the peer: {e}"));
                }
            }
        }
    }
}

/// Compare the planned regions by checksum and send the ones that differ, in order
/// with live writes; then mark the peer consistent.
async fn resync(
    group: Arc<PrimaryGroup>,
    plans: Vec<ResyncPlan>,
    snapshot: GroupSeq,
    mut sums: mpsc::Receiver<(u16, Vec<(u32, u32)>)>,
    ctl: mpsc::Sender<Frame>,
) -> Result<(), String> {
    let started = Instant::now();
    let mut summary = ResyncSummary {
        regions_compared: 0,
        regions_copied: 0,
        bytes_copied: 0,
    };
    let sets: Vec<BTreeSet<u32>> = plans
        .iter()
        .zip(&group.volumes)
        .map(|(p, v)| match p {
            ResyncPlan::Full => (0..v.regions()).collect(),
            ResyncPlan::Regions(r) => r.iter().copied().filter(|r| *r < v.regions()).collect(),
            ResyncPlan::Replay { .. } => BTreeSet::new(),
        })
        .collect();
    let total: u64 = sets.iter().map(|s| s.len() as u64).sum();
    group.status.send_modify(|st| {
        st.resync_total = total;
        st.resync_done = 0;
    });
    tracing::info!(group = %group.cfg.name, regions = total, "resync: comparing");
    for (vi, set) in sets.iter().enumerate() {
        let vol = group.volumes[vi].clone();
        let regions: Vec<u32> = set.iter().copied().collect();
        for batch in regions.chunks(group.cfg.resync_batch.max(1)) {
            ctl.send(Frame::SumsRequest(SumsRequest {
                volume: vi as u16,
                region_size: vol.region_size,
                regions: batch.to_vec(),
            }))
            .await
            .map_err(|_| "the link closed".to_string())?;
            let (v, theirs) = sums.recv().await.ok_or("the link closed")?;
            if v as usize != vi || theirs.len() != batch.len() {
                return Err(format!(
                    "checksums for the wrong regions (volume {v}, {} sums)",
                    theirs.len()
                ));
            }
            let ours = vol
                .region_sums(batch.to_vec())
                .await
                .map_err(|e| e.to_string())?;
            for ((r, mine), (r2, theirs)) in ours.iter().zip(&theirs) {
                summary.regions_compared += 1;
                if r != r2 {
                    return Err(format!("checksum for region {r2}, expected {r}"));
                }
                if mine == theirs {
                    continue;
                }
                // Copy the region in order with live writes: under its range lock, read
                // it and enqueue it (a later write to it gets a later seq).
                while lock(&group.state).buffer_bytes > RESYNC_BUFFER_MAX {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let off = u64::from(*r) * u64::from(vol.region_size);
                let len = (vol.size - off).min(u64::from(vol.region_size));
                let _g = vol.ranges.lock(off, off + len).await;
                let data = vol
                    .read(off, len as usize)
                    .await
                    .map_err(|e| e.to_string())?;
                group.enqueue(Frame::Write {
                    volume: vi as u16,
                    offset: off,
                    data,
                    fua: false,
                    resync: true,
                });
                summary.regions_copied += 1;
                summary.bytes_copied += len;
            }
            let done = summary.regions_compared;
            group.status.send_modify(|st| st.resync_done = done);
        }
    }
    let done_seq = group.enqueue(Frame::ResyncDone(summary.clone()));
    // Wait for the peer to have everything up to the marker.
    let mut rx = group.confirm.subscribe();
    while rx.borrow_and_update().acked < done_seq {
        rx.changed().await.map_err(|_| "stopped".to_string())?;
    }
    // The peer is a complete copy again.
    let meta = {
        let mut s = lock(&group.state);
        s.meta = crate::replica::resynced(&s.meta);
        s.meta.clone()
    };
    for (vi, set) in sets.iter().enumerate() {
        group.volumes[vi].synced(set).map_err(|e| e.to_string())?;
    }
    group.save_meta(&meta)?;
    group.update_confirm(|c| {
        c.resynced = c.resynced.max(snapshot);
        c.degraded = false;
        true
    });
    tracing::info!(
        group = %group.cfg.name,
        compared = summary.regions_compared,
        copied = summary.regions_copied,
        bytes = summary.bytes_copied,
        secs = started.elapsed().as_secs_f64(),
        "resync done"
    );
    group.status.send_modify(|st| {
        st.resynced_bytes_total += summary.bytes_copied;
        st.last_resync = Some(summary);
    });
    group.refresh_status(Some(LinkState::Streaming));
    Ok(())
}

#[cfg(test)]
mod tests {
    use ids::Epoch;

    use super::*;

    /// The status lines (JSON) and the people read the link as they always did.
    #[test]
    fn the_link_state_renders_as_the_status_showed_it() {
        let why = || "cannot connect to b:1: refused".to_string();
        for (state, text) in [
            (LinkState::Starting, "starting".to_string()),
            (LinkState::NotReplicated, "not replicated".into()),
            (LinkState::Resyncing, "resyncing".into()),
            (LinkState::Streaming, "streaming".into()),
            (LinkState::Down { why: why() }, format!("down: {}", why())),
            (
                LinkState::HoldingWrites { why: why() },
                format!("down, holding writes: {}", why()),
            ),
            (
                LinkState::Fenced { why: why() },
                format!("fenced: {}", why()),
            ),
        ] {
            assert_eq!(state.to_string(), text);
            assert_eq!(
                serde_json::to_value(&state).unwrap(),
                serde_json::Value::String(text)
            );
        }
    }

    /// Only a refusal that says another primary is at least as new fences this one; a
    /// refusal for any other reason leaves it running and retrying.
    #[test]
    fn only_a_newer_or_equal_primary_fences() {
        let stale = refused(Refusal::StaleEpoch {
            epoch: Epoch(3),
            seen: Epoch(5),
        });
        assert_eq!(
            stale,
            End::Stale(
                "the peer refused this primary: stale epoch 3: this replica has seen epoch 5; a newer primary exists"
                    .into()
            )
        );
        assert!(matches!(
            refused(Refusal::TwoPrimaries { epoch: Epoch(4) }),
            End::Stale(_)
        ));
        for why in [
            Refusal::Version { theirs: 1, ours: 2 },
            Refusal::BadFrame {
                why: "stale epoch".into(),
            },
            Refusal::NoSuchVolume { volume: 2 },
            Refusal::UnexpectedFrame {
                got: "two primaries".into(),
            },
        ] {
            assert!(matches!(refused(why.clone()), End::Failed(_)), "{why}");
        }
    }
}
