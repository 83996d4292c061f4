//! The replication engine in one process, over real TCP on loopback and real files:
//! sync and async streaming, a secondary that goes away and comes back (replay or
//! delta resync), a primary held by a missing peer until permission to go on alone,
//! a stale primary fenced by the peer's epoch or by a peer that is itself primary in
//! that epoch, peers of the previous frame format refused with a clear reason, and
//! garbage on the replica endpoint.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ids::Epoch;
use replication::backend::BlockBackend;
use replication::link::LinkState;
use replication::meta::Role;
use replication::primary::{
    AlwaysDegrade, DegradePermission, GroupConfig, NeverDegrade, PrimaryGroup,
};
use replication::replica::Mode;
use replication::secondary::{ReplicaGroup, serve};
use replication::volume::open_replica;
use tokio::net::TcpListener;
use tokio::sync::watch;

const SIZE: u64 = 16 << 20;

struct Secondary {
    group: Arc<ReplicaGroup>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn secondary(path: &Path, listen: &str, epoch: Epoch) -> (Secondary, String) {
    replica_endpoint(path, listen, Role::Secondary, epoch).await
}

/// A replica endpoint over files of `role` (a new file starts at `epoch`).
async fn replica_endpoint(
    path: &Path,
    listen: &str,
    role: Role,
    epoch: Epoch,
) -> (Secondary, String) {
    let (vol, meta) = open_replica("v", path, Some(SIZE), role, epoch).unwrap();
    let group = ReplicaGroup::new("g", vec![vol], meta);
    let listener = TcpListener::bind(listen).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(serve(group.clone(), listener, rx, None));
    (Secondary { group, stop, task }, addr)
}

impl Secondary {
    async fn kill(self) {
        let _ = self.stop.send(true);
        self.task.abort();
        let _ = self.task.await;
        // Give spawned connection tasks a moment to notice their sockets closing.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn primary(
    path: &Path,
    peer: &str,
    mode: Mode,
    perm: Arc<dyn DegradePermission>,
) -> Arc<PrimaryGroup> {
    let (vol, meta) = open_replica("v", path, Some(SIZE), Role::Primary, Epoch(1)).unwrap();
    let mut cfg = GroupConfig::new("g", mode, Some(peer.to_string()));
    cfg.hold_before_asking = Duration::from_millis(300);
    cfg.peer_timeout = Duration::from_secs(1);
    let g = PrimaryGroup::open(cfg, vec![vol], meta, perm).unwrap();
    tokio::spawn(replication::link::run(g.clone()));
    g
}

fn block(i: u64, tag: u8) -> Bytes {
    let mut b = vec![tag; 4096];
    b[..8].copy_from_slice(&i.to_be_bytes());
    Bytes::from(b)
}

async fn wait(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

async fn streaming(g: &PrimaryGroup) {
    let mut st = g.status();
    wait("the link to stream", Duration::from_secs(10), || {
        st.borrow_and_update().link == LinkState::Streaming
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_writes_are_on_the_secondary_when_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let (p_path, s_path) = (d.path().join("p.raw"), d.path().join("s.raw"));
    let (sec, addr) = secondary(&s_path, "127.0.0.1:0", Epoch(1)).await;
    let g = primary(&p_path, &addr, Mode::Sync, Arc::new(NeverDegrade));
    streaming(&g).await;
    let b = g.backend(0);
    // An initial full resync made the secondary consistent.
    let mut st = sec.group.status();
    wait(
        "the secondary to be consistent",
        Duration::from_secs(10),
        || st.borrow_and_update().consistent,
    )
    .await;
    for i in 0..200u64 {
        b.write((i * 7919 % 4096) * 4096, block(i, 0xa5), false)
            .await
            .unwrap();
        // Acknowledged: the secondary's file has it now.
        let mut got = vec![0u8; 8];
        let f = std::fs::File::open(&s_path).unwrap();
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut got, (i * 7919 % 4096) * 4096).unwrap();
        assert_eq!(
            got,
            i.to_be_bytes(),
            "write {i} acknowledged but not on the secondary"
        );
    }
    b.flush().await.unwrap();
    assert!(same(&p_path, &s_path));
    g.stop();
    sec.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secondary_that_returns_is_brought_back_by_delta_resync() {
    let d = tempfile::tempdir().unwrap();
    let (p_path, s_path) = (d.path().join("p.raw"), d.path().join("s.raw"));
    let (sec, addr) = secondary(&s_path, "127.0.0.1:0", Epoch(1)).await;
    let g = primary(&p_path, &addr, Mode::Sync, Arc::new(AlwaysDegrade));
    streaming(&g).await;
    let b = g.backend(0);
    for i in 0..50 {
        b.write(i * 4096, block(i, 1), false).await.unwrap();
    }
    sec.kill().await;
    // The peer is gone: after the hold time the primary goes on alone (permitted).
    // 64 writes inside one 1 MiB region (4 MiB .. 4.25 MiB).
    for i in 0..64u64 {
        b.write((1024 + i) * 4096, block(i, 2), false)
            .await
            .unwrap();
    }
    let st = g.status().borrow().clone();
    assert!(st.degraded, "{st:?}");
    assert!(st.dirty_regions > 0);
    let (sec, _) = secondary(&s_path, &addr, Epoch(1)).await;
    let mut st = g.status();
    wait("the resync to finish", Duration::from_secs(20), || {
        let s = st.borrow_and_update();
        s.link == LinkState::Streaming && !s.degraded
    })
    .await;
    let s = g.status().borrow().clone();
    let r = s.last_resync.clone().unwrap();
    eprintln!("resync: {r:?}");
    // The written region, plus at most the region the secondary had in flight when it
    // died: a delta, not the 16 MiB volume.
    assert!(
        r.regions_copied >= 1 && r.bytes_copied <= 2 << 20,
        "delta, not full: {r:?}"
    );
    b.flush().await.unwrap();
    assert!(same(&p_path, &s_path), "files differ after the resync");
    g.stop();
    sec.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_permission_sync_writes_are_held_until_the_peer_is_back() {
    let d = tempfile::tempdir().unwrap();
    let (p_path, s_path) = (d.path().join("p.raw"), d.path().join("s.raw"));
    let (sec, addr) = secondary(&s_path, "127.0.0.1:0", Epoch(1)).await;
    let g = primary(&p_path, &addr, Mode::Sync, Arc::new(NeverDegrade));
    streaming(&g).await;
    sec.kill().await;
    let b = g.backend(0);
    let w = tokio::spawn(async move { b.write(4096, block(9, 9), false).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !w.is_finished(),
        "a sync write was acknowledged with no peer and no permission"
    );
    let (sec, _) = secondary(&s_path, &addr, Epoch(1)).await;
    tokio::time::timeout(Duration::from_secs(10), w)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(same(&p_path, &s_path));
    g.stop();
    sec.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn async_writes_are_acknowledged_locally_and_catch_up() {
    let d = tempfile::tempdir().unwrap();
    let (p_path, s_path) = (d.path().join("p.raw"), d.path().join("s.raw"));
    let (sec, addr) = secondary(&s_path, "127.0.0.1:0", Epoch(1)).await;
    let g = primary(&p_path, &addr, Mode::Async, Arc::new(NeverDegrade));
    streaming(&g).await;
    let b = g.backend(0);
    for i in 0..300 {
        b.write(i * 4096, block(i, 3), false).await.unwrap();
    }
    let mut st = g.status();
    wait(
        "the async peer to catch up",
        Duration::from_secs(10),
        || {
            g.refresh();
            st.borrow_and_update().lag_bytes == 0
        },
    )
    .await;
    assert!(same(&p_path, &s_path));
    g.stop();
    sec.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_primary_is_refused_and_fences_itself() {
    let d = tempfile::tempdir().unwrap();
    let (p_path, s_path) = (d.path().join("p.raw"), d.path().join("s.raw"));
    // The secondary has seen epoch 5; this primary is at epoch 1.
    let (sec, addr) = secondary(&s_path, "127.0.0.1:0", Epoch(5)).await;
    let g = primary(&p_path, &addr, Mode::Sync, Arc::new(AlwaysDegrade));
    let mut st = g.status();
    wait("the primary to be fenced", Duration::from_secs(10), || {
        st.borrow_and_update().fenced
    })
    .await;
    let b = g.backend(0);
    let w = tokio::time::timeout(Duration::from_millis(500), b.write(0, block(1, 1), false)).await;
    assert!(w.is_err(), "a fenced primary acknowledged a write");
    assert_eq!(sec.group.meta().epoch, Epoch(5));
    g.stop();
    sec.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_the_replica_endpoint_closes_that_connection_only() {
    use tokio::io::AsyncWriteExt;
    let d = tempfile::tempdir().unwrap();
    let (p_path, s_path) = (d.path().join("p.raw"), d.path().join("s.raw"));
    let (sec, addr) = secondary(&s_path, "127.0.0.1:0", Epoch(1)).await;
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0u8; 64][..],
        &[0x4D, 0x44, 0x52, 0x52, 1, 3, 0, 0][..],
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        drop(s);
    }
    // Still serving a real primary.
    let g = primary(&p_path, &addr, Mode::Sync, Arc::new(NeverDegrade));
    streaming(&g).await;
    g.backend(0).write(0, block(1, 1), false).await.unwrap();
    g.stop();
    sec.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_meeting_another_primary_of_its_epoch_fences_itself() {
    let d = tempfile::tempdir().unwrap();
    let (p_path, s_path) = (d.path().join("p.raw"), d.path().join("s.raw"));
    // The replica endpoint holds files that are primary at epoch 1 too.
    let (sec, addr) = replica_endpoint(&s_path, "127.0.0.1:0", Role::Primary, Epoch(1)).await;
    let g = primary(&p_path, &addr, Mode::Sync, Arc::new(AlwaysDegrade));
    let mut st = g.status();
    wait("the primary to be fenced", Duration::from_secs(10), || {
        st.borrow_and_update().fenced
    })
    .await;
    assert_eq!(
        sec.group.status().borrow().last_error,
        "this replica is itself primary at epoch 1; two primaries in one epoch are refused"
    );
    assert_eq!(sec.group.meta().role, Role::Primary, "nothing was demoted");
    g.stop();
    sec.kill().await;
}

/// A primary of the previous metrodr version (its hello is bytes that version wrote)
/// is refused at the hello with the reason, in a frame of this version, and the
/// connection closes; the secondary's status says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_of_the_previous_frame_format_is_refused_at_the_hello() {
    use futures_util::StreamExt;
    use replication::frame::{Frame, FrameCodec, Refusal};
    use tokio::io::AsyncWriteExt;
    let d = tempfile::tempdir().unwrap();
    let (sec, addr) = secondary(&d.path().join("s.raw"), "127.0.0.1:0", Epoch(1)).await;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(include_bytes!("fixtures/frame-v1-hello.bin"))
        .await
        .unwrap();
    let mut frames = tokio_util::codec::FramedRead::new(s, FrameCodec);
    let answer = tokio::time::timeout(Duration::from_secs(10), frames.next())
        .await
        .expect("an answer to the hello")
        .expect("a frame, not a closed connection")
        .expect("a frame of this version");
    assert_eq!(
        answer.frame,
        Frame::Refused(Refusal::Version { theirs: 1, ours: 2 })
    );
    let end = tokio::time::timeout(Duration::from_secs(10), frames.next())
        .await
        .expect("the connection to close");
    assert!(end.is_none(), "a frame after the refusal: {end:?}");
    let mut st = sec.group.status();
    wait("the refusal in the status", Duration::from_secs(10), || {
        !st.borrow_and_update().last_error.is_empty()
    })
    .await;
    assert_eq!(
        sec.group.status().borrow().last_error,
        "the primary speaks replication frame format 1, this replica speaks 2: run the same metrodr version on both sites"
    );
    sec.kill().await;
}

/// A secondary of the previous version answers in its own frames (here its free-text
/// "stale epoch" refusal, bytes that version wrote): this primary does not understand
/// them, says why, keeps retrying, and is not fenced by text it cannot trust.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_in_the_previous_frame_format_leaves_the_primary_down_not_fenced() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = tempfile::tempdir().unwrap();
    let old = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = old.local_addr().unwrap().to_string();
    let old_secondary = tokio::spawn(async move {
        loop {
            let (mut s, _) = old.accept().await.unwrap();
            let mut hello = [0u8; 32];
            let _ = s.read_exact(&mut hello).await;
            let _ = s
                .write_all(include_bytes!("fixtures/frame-v1-error.bin"))
                .await;
        }
    });
    let g = primary(
        &d.path().join("p.raw"),
        &addr,
        Mode::Sync,
        Arc::new(NeverDegrade),
    );
    let mut st = g.status();
    let want = LinkState::Down {
        why: "bad frame from the peer: the peer speaks replication frame format 1, this side speaks 2: run the same metrodr version on both sites".into(),
    };
    wait(
        "the link to say why it is down",
        Duration::from_secs(10),
        || st.borrow_and_update().link == want,
    )
    .await;
    assert!(!g.status().borrow().fenced, "fenced by an old text refusal");
    g.stop();
    old_secondary.abort();
}
