//! # proxy — a userspace WAN link: delay, jitter, bandwidth, loss and cuts for TCP
//!
//! The kernel's `netem`/`tbf` qdiscs are not available everywhere (not on our build
//! machines), so the lab puts a [`LinkProxy`] between two sites instead: it listens on
//! one address, forwards every accepted connection to one target, and does to the bytes
//! what a WAN would. Its [`LinkProps`] can be changed while connections are live
//! ([`LinkProxy::set`]), each direction separately, and the link can be cut
//! ([`LinkProxy::cut`]) and healed ([`LinkProxy::heal`]).
//!
//! ```text
//!   client ──► listen ─► [to_target: delay ± jitter, loss stalls, bandwidth] ─► target
//!          ◄──        ◄─ [to_client: delay ± jitter, loss stalls, bandwidth] ◄─
//! ```
//!
//! The model, honestly:
//! - **Delay** is a pipe, not a batch: a byte read at `t` is written at `t + delay`
//!   while the bytes behind it keep flowing (a timestamped queue per direction; the
//!   writer sleeps until each chunk's deadline on a timer thread, not on tokio's
//!   millisecond timer, so sub-millisecond delays are accurate to tens of µs). Order
//!   is always preserved; jitter never reorders. The end of stream (FIN) is delayed
//!   like data. Connection setup is not delayed: the client's connect completes at
//!   loopback speed and the target is dialled at once (a real WAN adds one RTT).
//!   The proxy's own forwarding (waking its threads) comes on top of the configured
//!   delay: 30–100 µs per round trip on the 2-core build VM, more under load
//!   (`cargo bench -p chaos --bench proxy`).
//! - **Queue bound**: each direction of each connection holds at most
//!   [`LinkProps::queue_bytes_max`] bytes in flight; at the bound the proxy stops
//!   reading that side and TCP backpressure slows the sender. Nothing is dropped.
//! - **Bandwidth** is a token bucket per direction shared by all connections.
//! - **Loss**: TCP cannot lose bytes, so the proxy models what a lossy WAN does to a
//!   TCP stream: a hit (per 1448-byte segment, probability `loss_probability`) holds
//!   that chunk and everything behind it `loss_stall_ms` longer (default 200 ms, the
//!   minimum RTO), like a retransmission with head-of-line blocking. It does not model
//!   the congestion window shrinking, nor fast retransmit's shorter pause.
//! - **Cuts**: [`CutMode::Blackhole`] is a silent partition (connections stay open,
//!   nothing flows, bytes are delivered after heal as TCP would retransmit them);
//!   [`CutMode::Reset`] is a dead peer (every connection reset, new ones refused).
//!
//! The proxy runs on its own small tokio runtime ([`WORKER_THREADS`] threads, plus one
//! timer thread), so it works the same from sync code and from any async runtime, and
//! the system under test cannot starve the link (nor the link the system under test).
//! For a separate process, [`run_forever`] starts one and blocks.
//!
//! **Transparent mode** ([`Target::Original`]): the lab cannot point every client at a
//! proxy (replication endpoints get dynamic ports), so an iptables `nat OUTPUT REDIRECT`
//! rule in the client's namespace sends each new TCP connection towards the other site
//! to the proxy, which reads where it was going (`SO_ORIGINAL_DST`) and dials that with
//! a marked socket (`SO_MARK`) that the rule lets through. Connection setup then differs
//! from a raw link in one way: the client's connect always succeeds (it reaches the
//! proxy), and an unreachable destination shows as a reset after the proxy's dial
//! fails or times out.
//!
//! **Must never** bind anything but the address it is given (healing a reset binds the
//! same address again), connect anywhere but its target (for a transparent proxy: where each connection was
//! going), touch interfaces, qdiscs,
//! iptables or sysctls, reorder or alter bytes, lose bytes of a connection that goes
//! on (only a reset, a failure or [`LinkProxy::stop`] discards what is in flight, and
//! then the connection ends), or panic on a network error: a failing connection is
//! reset and counted in [`ProxyStats`].

mod conn;
mod error;
mod props;
mod shape;
mod stats;
mod timer;

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use conn::{Control, Shared};
pub use conn::{Target, Wire, WireSide};
pub use error::ProxyError;
pub use props::{CHUNK_BYTES_MAX, CutMode, DirProps, LOSS_SEGMENT_BYTES, LinkProps};
pub use stats::{DirStats, ProxyStats};
use timer::{TimerThread, Timers};

/// Threads of each proxy's runtime. Two keep both directions of a busy link moving on
/// a 2-core machine; a lab of a few proxies stays at a few threads each.
pub const WORKER_THREADS: usize = 2;

/// Pause after a failed accept(2) (e.g. out of file descriptors) before the next, so
/// the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// First and largest pause between attempts to listen again after a reset was healed
/// and the address was taken.
const REBIND_BACKOFF_MIN: Duration = Duration::from_millis(10);
const REBIND_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Bound on waiting for connections to end after a reset (they end at once: this only
/// guards the accept loop against a bug).
const RESET_DRAIN_MAX: Duration = Duration::from_secs(5);

/// How long dropping a proxy from sync code waits for its threads to finish closing
/// sockets. They only drop sockets, so this is a bound, not an expected time.
const DROP_GRACE: Duration = Duration::from_secs(1);

/// A running link proxy. Dropping it (or [`LinkProxy::stop`]) closes the listening
/// socket and every connection.
pub struct LinkProxy {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    applied: watch::Receiver<u64>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
    runtime: Option<Runtime>,
    /// Dropped after the runtime, so no task outlives the timers it sleeps on.
    timer_thread: Option<TimerThread>,
}

impl std::fmt::Debug for LinkProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkProxy")
            .field("local_addr", &self.local_addr)
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

impl LinkProxy {
    /// Listens on `listen` (port 0: the kernel picks one; see [`LinkProxy::local_addr`])
    /// and forwards each accepted connection to `target` with `props`. Callable from
    /// sync code or from inside any tokio runtime; the proxy brings its own.
    pub fn start(
        listen: SocketAddr,
        target: SocketAddr,
        props: LinkProps,
    ) -> Result<LinkProxy, ProxyError> {
        LinkProxy::start_with(
            listen,
            Target::Fixed(target),
            props,
            Wire::default(),
            WireSide::Near,
        )
    }

    /// Like [`LinkProxy::start`], with any [`Target`] (a transparent proxy behind an
    /// iptables redirect forwards each connection where it was going), drawing on the
    /// bandwidth buckets of `wire` from `side`: two proxies that carry the two sites'
    /// connections of one link share its bandwidth when they share a wire.
    pub fn start_with(
        listen: SocketAddr,
        target: Target,
        props: LinkProps,
        wire: Wire,
        side: WireSide,
    ) -> Result<LinkProxy, ProxyError> {
        props.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("metrodr-link-proxy")
            .enable_all()
            .build()
            .map_err(|source| ProxyError::Runtime { source })?;
        // Bound here, synchronously, so that a bad address is the caller's error.
        let bind_err = |source| ProxyError::Bind {
            addr: listen,
            source,
        };
        let std_listener = StdTcpListener::bind(listen).map_err(bind_err)?;
        let local_addr = std_listener.local_addr().map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = {
            let _in_runtime = runtime.enter();
            TcpListener::from_std(std_listener).map_err(bind_err)?
        };

        let (timers, timer_thread) =
            Timers::start().map_err(|source| ProxyError::Runtime { source })?;
        let shared = Arc::new(Shared::new(target, props, timers, wire, side));
        shared.counters.listening.store(true, Relaxed);
        let (applied_tx, applied) = watch::channel(0);
        let (stop, stop_rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let accept = AcceptLoop {
            shared: Arc::clone(&shared),
            local_addr,
            listener: Some(listener),
            conns: JoinSet::new(),
            conns_spawned: 0,
            applied: applied_tx,
            resets_seen: 0,
            rebind_at: None,
            rebind_backoff: REBIND_BACKOFF_MIN,
        };
        runtime.spawn(accept.run(stop_rx, done_tx));
        Ok(LinkProxy {
            local_addr,
            shared,
            applied,
            stop: Some(stop),
            done: Some(done),
            runtime: Some(runtime),
            timer_thread: Some(timer_thread),
        })
    }

    /// The address the proxy listens on (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> Target {
        self.shared.target
    }

    /// The link's current properties.
    pub fn props(&self) -> LinkProps {
        self.shared.control.borrow().props
    }

    /// Changes the link's properties. Delay, jitter, loss and bandwidth apply to the
    /// next chunk read (or written, for bandwidth) on every live connection; bytes
    /// already on the simulated wire keep the departure time they were given, and a
    /// shorter delay never lets new bytes overtake them. `queue_bytes_max` and `seed`
    /// apply to connections opened afterwards.
    pub fn set(&self, props: LinkProps) -> Result<(), ProxyError> {
        props.validate()?;
        self.update(|c| c.props = props);
        Ok(())
    }

    /// Cuts the link (replacing any cut in force). A blackhole is in force when this
    /// returns (a write already under way finishes); a reset takes a few microseconds
    /// to tear connections down and close the listener: await [`LinkProxy::applied`]
    /// to be sure.
    pub fn cut(&self, mode: CutMode) {
        self.update(|c| {
            c.cut = Some(mode);
            if mode == CutMode::Reset {
                c.resets += 1;
            }
        });
    }

    /// Ends any cut: held bytes flow again, and after a reset the proxy listens on the
    /// same address again (retrying with backoff, counted in
    /// [`ProxyStats::rebind_failures`], if someone else took the port meanwhile).
    pub fn heal(&self) {
        self.update(|c| c.cut = None);
    }

    /// The cut in force, if any.
    pub fn cut_mode(&self) -> Option<CutMode> {
        self.shared.control.borrow().cut
    }

    /// Waits until the last [`LinkProxy::set`], [`LinkProxy::cut`] or
    /// [`LinkProxy::heal`] is in force: after a reset, every connection has been reset
    /// and the listener is closed; after healing one, the proxy listens again.
    pub async fn applied(&self) {
        let wanted = self.shared.control.borrow().generation;
        let mut applied = self.applied.clone();
        // Err only if the accept loop is gone, i.e. the proxy is stopping.
        let _ = applied.wait_for(|&done| done >= wanted).await;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        self.shared.counters.snapshot()
    }

    /// Stops the proxy: closes the listening socket and every connection (with FIN;
    /// bytes still on the simulated wire are dropped) and waits until they are closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        self.timer_thread = None;
    }

    fn update(&self, change: impl FnOnce(&mut Control)) {
        self.shared.control.send_modify(|c| {
            change(c);
            c.generation += 1;
        });
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            // Blocking is not allowed inside an async context; there the sockets close
            // a moment after drop returns. From sync code, wait until they are closed.
            if Handle::try_current().is_ok() {
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(DROP_GRACE);
            }
        }
        self.timer_thread = None;
    }
}

/// Runs a proxy in this process until the process ends: for a separate proxy process
/// (a CLI, a lab node). `ready` gets the bound address once listening (useful with port
/// 0). Returns only if the proxy cannot start.
pub fn run_forever(
    listen: SocketAddr,
    target: SocketAddr,
    props: LinkProps,
    ready: impl FnOnce(SocketAddr),
) -> Result<Infallible, ProxyError> {
    let proxy = LinkProxy::start(listen, target, props)?;
    ready(proxy.local_addr());
    loop {
        // The proxy's own threads do the work; this one only keeps it alive.
        std::thread::park();
    }
}

/// The listening side: accepts, spawns connections, applies resets and heals.
struct AcceptLoop {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// `None` while a reset is in force (or while listening again keeps failing).
    listener: Option<TcpListener>,
    conns: JoinSet<()>,
    conns_spawned: u64,
    /// The last control generation fully in force.
    applied: watch::Sender<u64>,
    /// [`Control::resets`] as last enforced.
    resets_seen: u64,
    /// When to try listening again after a failed attempt.
    rebind_at: Option<Instant>,
    rebind_backoff: Duration,
}

impl AcceptLoop {
    async fn run(mut self, mut stop: oneshot::Receiver<()>, done: oneshot::Sender<()>) {
        let mut control = self.shared.control.subscribe();
        loop {
            let now = *control.borrow_and_update();
            self.enforce(&now).await;
            let rebind_at = self.rebind_at.unwrap_or_else(Instant::now);
            tokio::select! {
                // Sent by stop(), or dropped with the handle.
                _ = &mut stop => break,
                changed = control.changed() => if changed.is_err() { break },
                accepted = accept(self.listener.as_ref()) => match accepted {
                    Ok(stream) => self.spawn(stream),
                    Err(_) => {
                        self.shared.counters.accept_errors.fetch_add(1, Relaxed);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(_) = self.conns.join_next(), if !self.conns.is_empty() => {}
                _ = tokio::time::sleep_until(rebind_at.into()), if self.rebind_at.is_some() => {}
            }
        }
        self.listener = None;
        self.shared.counters.listening.store(false, Relaxed);
        self.conns.shutdown().await;
        let _ = done.send(());
    }

    /// Brings the listener in line with the cut in force and acknowledges the control
    /// generation once it is.
    async fn enforce(&mut self, now: &Control) {
        let counters = &self.shared.counters;
        if now.resets != self.resets_seen {
            self.resets_seen = now.resets;
            // Closing the listening socket makes the kernel refuse new connections
            // (and reset any still waiting in the accept backlog).
            self.listener = None;
            counters.listening.store(false, Relaxed);
            // Every connection accepted before the reset ends itself on seeing it, with
            // RST, at once; all are gone before the reset counts as applied.
            let drained = tokio::time::timeout(RESET_DRAIN_MAX, async {
                while self.conns.join_next().await.is_some() {}
            });
            if drained.await.is_err() {
                // Not expected (every phase of a connection watches for resets); these
                // few then close with FIN rather than RST.
                self.conns.abort_all();
            }
        }
        if now.cut == Some(CutMode::Reset) {
            self.listener = None;
            self.rebind_at = None;
            counters.listening.store(false, Relaxed);
            self.applied.send_replace(now.generation);
            return;
        }
        let due = self.rebind_at.is_none_or(|at| Instant::now() >= at);
        if self.listener.is_none() && due {
            // SO_REUSEADDR (set by tokio) lets us take the port back from our own
            // connections in TIME_WAIT.
            match TcpListener::bind(self.local_addr).await {
                Ok(listener) => {
                    self.listener = Some(listener);
                    self.rebind_at = None;
                    self.rebind_backoff = REBIND_BACKOFF_MIN;
                    counters.listening.store(true, Relaxed);
                }
                Err(_) => {
                    counters.rebind_failures.fetch_add(1, Relaxed);
                    self.rebind_at = Some(Instant::now() + self.rebind_backoff);
                    self.rebind_backoff = (self.rebind_backoff * 2).min(REBIND_BACKOFF_MAX);
                }
            }
        }
        if self.listener.is_some() {
            self.applied.send_replace(now.generation);
        }
    }

    fn spawn(&mut self, client: tokio::net::TcpStream) {
        let counters = &self.shared.counters;
        counters.accepted.fetch_add(1, Relaxed);
        let connections_max = self.shared.control.borrow().props.connections_max;
        // The resets this loop has enforced, not the latest published: a connection
        // taken from the backlog just before a reset is processed belongs to the old
        // listener and must end with it (and the drain in `enforce` waits for it).
        let resets = self.resets_seen;
        if self.conns.len() >= connections_max {
            counters.rejected.fetch_add(1, Relaxed);
            let _ = client.set_zero_linger();
            return;
        }
        let active = stats::ActiveGuard::new(counters);
        let conn_no = self.conns_spawned;
        self.conns_spawned += 1;
        self.conns.spawn(conn::serve(
            client,
            conn_no,
            resets,
            Arc::clone(&self.shared),
            active,
        ));
    }
}

/// Accepts on `listener`, or waits forever without one.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _peer)| stream),
        None => std::future::pending().await,
    }
}
