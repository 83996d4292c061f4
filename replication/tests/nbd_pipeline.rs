//! Pipelining through the real server and the Rust client: many requests in flight
//! on one connection, completed by the backend in reverse order, each reply matched
//! to its request; the per-connection in-flight bound; shutdown with requests in
//! flight.
#![allow(clippy::unwrap_used)]

mod nbd_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nbd_support::*;
use replication::backend::{BackendError, BlockBackend};
use replication::nbd::proto::Errno;
use replication::nbd::{ClientConfig, ClientError, Export, ExportSet, NbdClient, ServerConfig};
use tokio::sync::oneshot;

const SIZE: u64 = 1 << 20;
const DEPTH: usize = 16;

struct Arrival {
    offset: u64,
    go: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
}

/// A backend that holds each batch of `DEPTH` reads (or writes) until the batch is
/// complete, then completes them in reverse order of arrival, one after another.
/// Odd 4 KiB blocks fail with ENOSPC so that a misrouted reply shows.
#[derive(Default)]
struct Reverse {
    reads: Mutex<Vec<Arrival>>,
    writes: Mutex<Vec<Arrival>>,
    arrived: Mutex<Vec<(&'static str, u64)>>,
    completed: Mutex<Vec<(&'static str, u64)>>,
    store: Mutex<HashMap<u64, Bytes>>,
}

impl Reverse {
    async fn gate(&self, kind: &'static str, offset: u64) {
        let (go_tx, go_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let list = if kind == "read" {
            &self.reads
        } else {
            &self.writes
        };
        let batch = {
            let mut l = list.lock().unwrap();
            self.arrived.lock().unwrap().push((kind, offset));
            l.push(Arrival {
                offset,
                go: go_tx,
                done: done_rx,
            });
            (l.len() == DEPTH).then(|| std::mem::take(&mut *l))
        };
        if let Some(batch) = batch {
            tokio::spawn(async move {
                for a in batch.into_iter().rev() {
                    let _ = a.offset;
                    a.go.send(()).unwrap();
                    a.done.await.unwrap();
                }
            });
        }
        go_rx.await.unwrap();
        self.completed.lock().unwrap().push((kind, offset));
        done_tx.send(()).unwrap();
    }
}

fn verdict(offset: u64) -> Result<(), BackendError> {
    if (offset / 4096) % 2 == 1 {
        Err(BackendError::NoSpace)
    } else {
        Ok(())
    }
}

impl BlockBackend for Reverse {
    fn size(&self) -> u64 {
        SIZE
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, BackendError> {
        self.gate("read", offset).await;
        verdict(offset)?;
        Ok(Bytes::from(pseudo_random(offset + 1, len as usize)))
    }
    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> Result<(), BackendError> {
        self.gate("write", offset).await;
        self.store.lock().unwrap().insert(offset, data);
        verdict(offset)
    }
    async fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }
    async fn trim(&self, _offset: u64, _len: u64) -> Result<(), BackendError> {
        Ok(())
    }
    async fn write_zeroes(&self, _o: u64, _l: u64, _f: bool, _m: bool) -> Result<(), BackendError> {
        Ok(())
    }
}

fn check_reversed(backend: &Reverse, kind: &str) {
    let arrived: Vec<u64> = backend
        .arrived
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, o)| *o)
        .collect();
    let mut completed: Vec<u64> = backend
        .completed
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, o)| *o)
        .collect();
    assert_eq!(arrived.len(), DEPTH);
    completed.reverse();
    assert_eq!(
        completed, arrived,
        "{kind}s did not complete in reverse order of arrival"
    );
}

#[test]
fn sixteen_requests_in_flight_completing_in_reverse_each_get_their_own_reply() {
    for structured in [false, true] {
        let backend = Arc::new(Reverse::default());
        let b2 = backend.clone();
        let srv = TestServer::start(move |_| {
            ExportSet::single(Export {
                name: "r".into(),
                description: String::new(),
                backend: b2,
                multi_conn: false,
            })
            .unwrap()
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cfg = ClientConfig {
                export: String::new(),
                structured_replies: structured,
            };
            let c = NbdClient::connect_unix(&srv.sock, &cfg).await.unwrap();
            let work = async {
                let writes: Vec<_> = (0..DEPTH as u64)
                    .map(|i| {
                        let c = c.clone();
                        tokio::spawn(async move {
                            let data = Bytes::from(pseudo_random(1000 + i, 4096));
                            (i, c.write(i * 4096, data, false).await)
                        })
                    })
                    .collect();
                for w in writes {
                    let (i, r) = w.await.unwrap();
                    match (i % 2, r) {
                        (0, Ok(())) => {}
                        (
                            1,
                            Err(ClientError::Server {
                                errno: Errno::NoSpc,
                                ..
                            }),
                        ) => {}
                        (_, r) => panic!("write {i} got {r:?}"),
                    }
                }
                let reads: Vec<_> = (0..DEPTH as u64)
                    .map(|i| {
                        let c = c.clone();
                        tokio::spawn(async move { (i, c.read(i * 4096, 512 + i as u32).await) })
                    })
                    .collect();
                for r in reads {
                    let (i, r) = r.await.unwrap();
                    match (i % 2, r) {
                        (0, Ok(d)) => assert_eq!(
                            d[..],
                            pseudo_random(i * 4096 + 1, 512 + i as usize)[..],
                            "read {i}"
                        ),
                        (1, Err(e)) => assert_eq!(e.errno(), Some(Errno::NoSpc)),
                        (_, r) => panic!("read {i} got {r:?}"),
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(30), work)
                .await
                .expect("pipelined requests hung");
            c.disconnect().await.unwrap();
        });
        check_reversed(&backend, "write");
        check_reversed(&backend, "read");
        let store = backend.store.lock().unwrap();
        for i in 0..DEPTH as u64 {
            assert_eq!(
                store[&(i * 4096)][..],
                pseudo_random(1000 + i, 4096)[..],
                "payload of write {i}"
            );
        }
        drop(store);
        srv.stop();
    }
}

/// Writes wait until the gate opens; counts how many are inside at once.
#[derive(Default)]
struct Gated {
    open: tokio::sync::Notify,
    is_open: std::sync::atomic::AtomicBool,
    inside: AtomicUsize,
    max_inside: AtomicUsize,
}

impl Gated {
    fn open(&self) {
        self.is_open.store(true, Ordering::SeqCst);
        self.open.notify_waiters();
    }
}

impl BlockBackend for Gated {
    fn size(&self) -> u64 {
        SIZE
    }
    async fn read(&self, _offset: u64, len: u32) -> Result<Bytes, BackendError> {
        Ok(Bytes::from(vec![0; len as usize]))
    }
    async fn write(&self, _offset: u64, _data: Bytes, _fua: bool) -> Result<(), BackendError> {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_inside.fetch_max(now, Ordering::SeqCst);
        loop {
            let notified = self.open.notified();
            if self.is_open.load(Ordering::SeqCst) {
                break;
            }
            notified.await;
        }
        self.inside.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
    async fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }
    async fn trim(&self, _offset: u64, _len: u64) -> Result<(), BackendError> {
        Ok(())
    }
    async fn write_zeroes(&self, _o: u64, _l: u64, _f: bool, _m: bool) -> Result<(), BackendError> {
        Ok(())
    }
}

fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn gated_server(config: ServerConfig) -> (Arc<Gated>, TestServer) {
    let gated = Arc::new(Gated::default());
    let g2 = gated.clone();
    let srv = TestServer::start_with(config, move |_| {
        ExportSet::single(Export {
            name: "g".into(),
            description: String::new(),
            backend: g2,
            multi_conn: false,
        })
        .unwrap()
    });
    (gated, srv)
}

#[test]
fn in_flight_requests_are_bounded_per_connection() {
    let (gated, srv) = gated_server(ServerConfig {
        max_in_flight: 4,
        ..ServerConfig::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt
        .block_on(NbdClient::connect_unix(&srv.sock, &ClientConfig::default()))
        .unwrap();
    let tasks: Vec<_> = (0..16u64)
        .map(|i| {
            let c = c.clone();
            rt.spawn(async move { c.write(i * 4096, Bytes::from(vec![1; 4096]), false).await })
        })
        .collect();
    wait_for("4 writes in the backend", Duration::from_secs(10), || {
        gated.inside.load(Ordering::SeqCst) == 4
    });
    // The other 12 stay unread in the socket while the 4 are held (a short negative
    // check: nothing should change however long we wait).
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(gated.max_inside.load(Ordering::SeqCst), 4);
    gated.open();
    for t in tasks {
        rt.block_on(t).unwrap().unwrap();
    }
    assert_eq!(gated.max_inside.load(Ordering::SeqCst), 4);
    srv.stop();
}

#[test]
fn shutdown_answers_requests_in_flight_then_closes() {
    let (gated, srv) = gated_server(ServerConfig::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt
        .block_on(NbdClient::connect_unix(&srv.sock, &ClientConfig::default()))
        .unwrap();
    let tasks: Vec<_> = (0..2u64)
        .map(|i| {
            let c = c.clone();
            rt.spawn(async move { c.write(i * 4096, Bytes::from(vec![1; 4096]), false).await })
        })
        .collect();
    wait_for("2 writes in the backend", Duration::from_secs(10), || {
        gated.inside.load(Ordering::SeqCst) == 2
    });
    srv.begin_shutdown();
    gated.open();
    for t in tasks {
        rt.block_on(t).unwrap().unwrap();
    }
    srv.stop();
    // The server is gone: new requests fail instead of hanging.
    let r = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), c.flush()).await });
    assert!(matches!(r, Ok(Err(ClientError::Disconnected(_)))), "{r:?}");
}

#[test]
fn shutdown_gives_up_on_a_stuck_backend_after_the_grace_period() {
    let config = ServerConfig {
        shutdown_grace: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let (gated, srv) = gated_server(config);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt
        .block_on(NbdClient::connect_unix(&srv.sock, &ClientConfig::default()))
        .unwrap();
    let c2 = c.clone();
    let stuck = rt.spawn(async move { c2.write(0, Bytes::from(vec![1; 512]), false).await });
    wait_for("the write in the backend", Duration::from_secs(10), || {
        gated.inside.load(Ordering::SeqCst) == 1
    });
    let t0 = Instant::now();
    srv.stop();
    assert!(t0.elapsed() < Duration::from_secs(10));
    let r = rt.block_on(stuck).unwrap();
    assert!(matches!(r, Err(ClientError::Disconnected(_))), "{r:?}");
    gated.open();
}

#[test]
fn dropping_every_client_handle_closes_the_connection() {
    let srv = TestServer::file(SIZE);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt
        .block_on(NbdClient::connect_unix(&srv.sock, &ClientConfig::default()))
        .unwrap();
    let c2 = c.clone();
    rt.block_on(c2.write(0, Bytes::from_static(b"x"), false))
        .unwrap();
    wait_for("one connection", Duration::from_secs(10), || {
        srv.stats.active() == 1
    });
    drop(c);
    drop(c2);
    wait_for("the connection to close", Duration::from_secs(10), || {
        srv.stats.active() == 0
    });
    srv.stop();
}
