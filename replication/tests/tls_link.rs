//! The replication link over mutual TLS, on loopback with real files: two agents of
//! one CA replicate; a primary with another CA's certificate, with no TLS at all, or
//! with an operator's certificate is refused by the secondary, which says why.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ids::Epoch;
use replication::backend::BlockBackend;
use replication::link::LinkState;
use replication::meta::Role;
use replication::primary::{GroupConfig, NeverDegrade, PrimaryGroup};
use replication::replica::Mode;
use replication::secondary::{ReplicaGroup, serve};
use replication::volume::open_replica;
use security::{CertDir, Principal, Tls, Validity};
use tokio::net::TcpListener;
use tokio::sync::watch;

const SIZE: u64 = 4 << 20;

fn ca(dir: &Path) -> CertDir {
    let d = CertDir::new(dir);
    d.init(Validity::days(1)).unwrap();
    d
}

fn tls(d: &CertDir, role: security::Role, name: &str) -> Arc<Tls> {
    let f = d
        .issue(&Principal::new(role, name).unwrap(), Validity::days(1))
        .unwrap();
    Arc::new(Tls::load(&f).unwrap())
}

async fn secondary(path: &Path, tls: Arc<Tls>) -> (Arc<ReplicaGroup>, String, watch::Sender<bool>) {
    let (vol, meta) = open_replica("v", path, Some(SIZE), Role::Secondary, Epoch(1)).unwrap();
    let group = ReplicaGroup::new("g", vec![vol], meta);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(serve(group.clone(), listener, rx, Some(tls)));
    (group, addr, stop)
}

fn primary(path: &Path, peer: &str, tls: Option<Arc<Tls>>) -> Arc<PrimaryGroup> {
    let (vol, meta) = open_replica("v", path, Some(SIZE), Role::Primary, Epoch(1)).unwrap();
    let mut cfg = GroupConfig::new("g", Mode::Sync, Some(peer.to_string()));
    cfg.peer_timeout = Duration::from_secs(1);
    cfg.tls = tls;
    let g = PrimaryGroup::open(cfg, vec![vol], meta, Arc::new(NeverDegrade)).unwrap();
    tokio::spawn(replication::link::run(g.clone()));
    g
}

/// Our CA in a fresh directory, and south-h1's TLS secondary of `s.raw` there.
async fn south() -> (
    tempfile::TempDir,
    CertDir,
    Arc<ReplicaGroup>,
    String,
    watch::Sender<bool>,
) {
    let d = tempfile::tempdir().unwrap();
    let certs = ca(&d.path().join("certs"));
    let (sec, addr, stop) = secondary(
        &d.path().join("s.raw"),
        tls(&certs, security::Role::Agent, "south-h1"),
    )
    .await;
    (d, certs, sec, addr, stop)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_agents_of_one_ca_replicate_over_tls() {
    let (d, certs, sec, addr, stop) = south().await;
    let g = primary(
        &d.path().join("p.raw"),
        &addr,
        Some(tls(&certs, security::Role::Agent, "north-h1")),
    );
    let mut st = g.status();
    tokio::time::timeout(
        Duration::from_secs(10),
        st.wait_for(|s| s.link == LinkState::Streaming),
    )
    .await
    .expect("the TLS link streams")
    .unwrap();
    let b = g.backend(0);
    for i in 0..32u64 {
        b.write(i * 4096, Bytes::from(vec![i as u8 + 1; 4096]), false)
            .await
            .unwrap();
    }
    b.flush().await.unwrap();
    // Sync: acknowledged means on the secondary's file.
    let s = std::fs::read(d.path().join("s.raw")).unwrap();
    assert!((0..32usize).all(|i| s[i * 4096] == i as u8 + 1));
    assert!(sec.status().borrow().connected);
    g.stop();
    let _ = stop.send(true);
}

/// Start a primary with credentials from `who(our CA dir)` against a TLS secondary;
/// the link never streams and the secondary's status says why it refused.
async fn refused(who: impl FnOnce(&CertDir, &Path) -> Option<Arc<Tls>>, says: &str) {
    let (d, certs, sec, addr, stop) = south().await;
    let g = primary(&d.path().join("p.raw"), &addr, who(&certs, d.path()));
    let mut st = sec.status();
    let why = tokio::time::timeout(
        Duration::from_secs(10),
        st.wait_for(|s| !s.last_error.is_empty()),
    )
    .await
    .expect("the secondary records the refusal")
    .unwrap()
    .last_error
    .clone();
    assert!(why.contains(says), "{why}");
    assert!(!sec.status().borrow().connected);
    assert_ne!(g.status().borrow().link, LinkState::Streaming);
    g.stop();
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_with_another_cas_certificate_is_refused() {
    refused(
        |ours, dir| {
            let theirs = ca(&dir.join("theirs"));
            let mut files = theirs
                .issue(
                    &Principal::new(security::Role::Agent, "north-h1").unwrap(),
                    Validity::days(1),
                )
                .unwrap();
            // It trusts our CA (public), so it gets as far as presenting its own.
            files.ca = ours.ca_cert();
            Some(Arc::new(Tls::load(&files).unwrap()))
        },
        "not signed by this cluster's CA",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_without_tls_is_refused() {
    refused(|_, _| None, "does not speak TLS").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_certificate_may_not_stream_writes() {
    refused(
        |ours, _| Some(tls(ours, security::Role::Admin, "alice")),
        "alice (admin) may not stream writes to a replica",
    )
    .await;
}
