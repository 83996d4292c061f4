//! One forwarded connection: dial the target, then pump both directions through
//! their timestamped queues until both ends close, a side fails, or a reset cut.
//!
//! ```text
//!   client ─read─► Shaper ─(deadline, chunk)─► queue ─► writer: sleep to deadline,
//!                  (delay, jitter, loss)        ≤ queue_bytes_max   blackhole gate,
//!                                                                   bucket ─write─► target
//!   client ◄─write─ … the same, mirrored … ◄─read─ target
//! ```
//!
//! The reader stamps each chunk as soon as it is read and goes straight back to
//! reading, so bytes behind a delayed chunk keep flowing: the queue is the wire.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use super::props::{CHUNK_BYTES_MAX, CutMode, DirProps, LinkProps};
use super::shape::{Bucket, Shaper, stream_seed};
use super::stats::{ActiveGuard, Counters};
use super::timer::Timers;

/// How long the proxy waits for the target to accept a connection before resetting
/// the client (counted in `connect_failures`). Generous for loopback and lab
/// namespaces; a target that does not answer in 10 s is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The link's current settings, published to every task through a watch channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Control {
    pub props: LinkProps,
    pub cut: Option<CutMode>,
    /// How many times the link was cut with [`CutMode::Reset`]. Connections end when
    /// it changes, so a reset healed at once (before they saw the cut) still ends
    /// every connection it should.
    pub resets: u64,
    /// Bumped by every change, so callers can wait until a change is in force.
    pub generation: u64,
}

/// Where a proxy forwards its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every connection to this one address.
    Fixed(SocketAddr),
    /// Each connection to the address it was meant for before an iptables `REDIRECT`
    /// in the client's namespace sent it to the proxy (`SO_ORIGINAL_DST`). The proxy's
    /// own connections carry `mark` (`SO_MARK`), so a redirect rule that excludes the
    /// mark lets them through to the real destination. A connection that was not
    /// redirected (its original destination is the proxy itself) is reset.
    Original { mark: u32 },
}

/// Bandwidth buckets, one per direction of a link, that one proxy or two proxies
/// (one in each site, for the connections each side opens) draw on together.
#[derive(Clone, Default)]
pub struct Wire(Arc<[Mutex<Bucket>; 2]>);

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wire")
    }
}

/// Which bucket of a [`Wire`] a proxy's directions draw on: a proxy that carries the
/// connections opened from the other end of the link sends its `ToTarget` bytes the
/// way the first proxy sends its `ToClient` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireSide {
    /// `ToTarget` draws on bucket 0.
    Near,
    /// `ToTarget` draws on bucket 1.
    Far,
}

/// State shared by the proxy handle, its accept loop and every connection.
pub(crate) struct Shared {
    pub target: Target,
    pub control: watch::Sender<Control>,
    pub counters: Arc<Counters>,
    /// Sub-millisecond sleeps for the writers (tokio's timer ticks in milliseconds).
    pub timers: Timers,
    /// One bandwidth bucket per direction, shared by all connections (and maybe with
    /// the proxy at the link's other end).
    wire: Wire,
    side: WireSide,
}

impl Shared {
    pub(crate) fn new(
        target: Target,
        props: LinkProps,
        timers: Timers,
        wire: Wire,
        side: WireSide,
    ) -> Self {
        let control = Control {
            props,
            cut: None,
            resets: 0,
            generation: 0,
        };
        Shared {
            target,
            control: watch::Sender::new(control),
            counters: Arc::default(),
            timers,
            wire,
            side,
        }
    }

    fn bucket(&self, dir: Dir) -> &Mutex<Bucket> {
        let i = match self.side {
            WireSide::Near => dir.index(),
            WireSide::Far => 1 - dir.index(),
        };
        &self.wire.0[i]
    }
}

/// One direction of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    ToTarget,
    ToClient,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::ToTarget => 0,
            Dir::ToClient => 1,
        }
    }

    fn props(self, props: &LinkProps) -> DirProps {
        match self {
            Dir::ToTarget => props.to_target,
            Dir::ToClient => props.to_client,
        }
    }
}

/// How a connection ended.
enum Outcome {
    /// Both directions reached end of stream and were flushed: close normally.
    Done,
    /// A side failed (reset, write error): reset the other side too.
    Failed,
    /// `cut(CutMode::Reset)`.
    Reset,
}

/// Serves one accepted connection to its end. Never panics on network errors: every
/// failure ends this connection (with RST to both sides) and is counted. `resets` is
/// [`Control::resets`] when the connection was accepted: any later reset ends it.
pub(crate) async fn serve(
    mut client: TcpStream,
    conn_no: u64,
    resets: u64,
    shared: Arc<Shared>,
    _active: ActiveGuard,
) {
    let counters = &shared.counters;
    // Small writes would otherwise wait for ACKs (Nagle + delayed ACK: tens of ms).
    let _ = client.set_nodelay(true);
    let mut control = shared.control.subscribe();
    let reset_since_accept = move |c: &Control| c.resets != resets || c.cut == Some(CutMode::Reset);
    let reset = |client: &TcpStream| {
        counters.reset.fetch_add(1, Relaxed);
        let _ = client.set_zero_linger();
    };
    // A blackholed link forwards nothing, not even the connection: dial after heal.
    let ready = control
        .wait_for(|c| reset_since_accept(c) || c.cut != Some(CutMode::Blackhole))
        .await
        .is_ok_and(|c| !reset_since_accept(&c));
    if !ready {
        return reset(&client);
    }
    let dial = tokio::time::timeout(CONNECT_TIMEOUT, dial(&client, shared.target));
    let mut upstream = tokio::select! {
        dialled = dial => match dialled {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) | Err(_) => {
                counters.connect_failures.fetch_add(1, Relaxed);
                let _ = client.set_zero_linger();
                return;
            }
        },
        _ = control.wait_for(reset_since_accept) => return reset(&client),
    };
    let _ = upstream.set_nodelay(true);
    let queue_bytes_max = control.borrow().props.queue_bytes_max;

    let outcome = {
        let (client_rx, client_tx) = client.split();
        let (upstream_rx, upstream_tx) = upstream.split();
        let seed = |dir: Dir| {
            let link_seed = control.borrow().props.seed;
            stream_seed(link_seed, conn_no, dir.index() as u64)
        };
        let up = Pump {
            dir: Dir::ToTarget,
            shared: &shared,
            seed: seed(Dir::ToTarget),
            queue_bytes_max,
        };
        let down = Pump {
            dir: Dir::ToClient,
            seed: seed(Dir::ToClient),
            ..up
        };
        let pumps = async {
            tokio::try_join!(
                up.run(client_rx, upstream_tx),
                down.run(upstream_rx, client_tx)
            )
        };
        tokio::select! {
            ended = pumps => if ended.is_ok() { Outcome::Done } else { Outcome::Failed },
            _ = control.wait_for(reset_since_accept) => Outcome::Reset,
        }
    };
    match outcome {
        Outcome::Done => {}
        Outcome::Failed | Outcome::Reset => {
            let counter = match outcome {
                Outcome::Reset => &counters.reset,
                _ => &counters.failed,
            };
            counter.fetch_add(1, Relaxed);
            // Dropping a socket with SO_LINGER = 0 sends RST instead of FIN.
            let _ = client.set_zero_linger();
            let _ = upstream.set_zero_linger();
        }
    }
}

/// Connects to where `client` should go.
async fn dial(client: &TcpStream, target: Target) -> io::Result<TcpStream> {
    match target {
        Target::Fixed(addr) => TcpStream::connect(addr).await,
        Target::Original { mark } => {
            let to = original_dst(client)?;
            if client.local_addr().is_ok_and(|here| here == to) {
                // Not redirected: dialling it would connect the proxy to itself.
                return Err(io::Error::other("connection was not redirected"));
            }
            let socket = match to {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            setsockopt(&socket, sockopt::Mark, &mark).map_err(io::Error::from)?;
            socket.connect(to).await
        }
    }
}

/// The destination a redirected connection had before iptables' `REDIRECT`.
fn original_dst(client: &TcpStream) -> io::Result<SocketAddr> {
    let sin = getsockopt(client, sockopt::OriginalDst).map_err(io::Error::from)?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    Ok(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
}

/// One direction of one connection.
#[derive(Clone, Copy)]
struct Pump<'a> {
    dir: Dir,
    shared: &'a Shared,
    seed: u64,
    queue_bytes_max: usize,
}

/// A chunk on the simulated wire; empty data is the end of stream (FIN).
struct Chunk {
    deadline: Instant,
    data: Vec<u8>,
}

impl Pump<'_> {
    /// Forwards `from` to `to` until end of stream (then shuts `to`'s write side down)
    /// or an error.
    async fn run(self, from: ReadHalf<'_>, to: WriteHalf<'_>) -> io::Result<()> {
        // The queue bound, in bytes: the reader takes permits, the writer gives them
        // back once the bytes are written.
        let room = Semaphore::new(self.queue_bytes_max);
        let _in_flight = InFlight {
            room: &room,
            queue_bytes_max: self.queue_bytes_max,
            gauge: &self.shared.counters.dir(self.dir).queued_bytes,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::try_join!(
            self.read_side(from, tx, &room),
            self.write_side(to, rx, &room)
        )?;
        Ok(())
    }

    async fn read_side(
        self,
        mut from: ReadHalf<'_>,
        tx: mpsc::UnboundedSender<Chunk>,
        room: &Semaphore,
    ) -> io::Result<()> {
        let control = self.shared.control.subscribe();
        let counters = self.shared.counters.dir(self.dir);
        let mut shaper = Shaper::new(self.seed);
        let mut buf = vec![0u8; CHUNK_BYTES_MAX];
        loop {
            // Whatever has arrived, up to one buffer: never wait to fill it.
            let n = from.read(&mut buf).await?;
            let read_at = Instant::now();
            if n > 0 {
                // At the bound, wait here: the kernel's buffers fill up behind us and
                // the sender's TCP slows down. Nothing is ever dropped.
                let permits = u32::try_from(n).unwrap_or(u32::MAX);
                room.acquire_many(permits)
                    .await
                    .map_err(|_| io::Error::other("queue closed"))?
                    .forget();
            }
            let props = self.dir.props(&control.borrow().props);
            let stamp = shaper.stamp(read_at, n, &props);
            if stamp.stalled {
                counters.loss_stalls.fetch_add(1, Relaxed);
            }
            counters.queued_bytes.fetch_add(n as u64, Relaxed);
            let chunk = Chunk {
                deadline: stamp.deadline,
                data: buf[..n].to_vec(),
            };
            // The writer only goes away after an error, which try_join reports.
            if tx.send(chunk).is_err() || n == 0 {
                return Ok(());
            }
        }
    }

    async fn write_side(
        self,
        mut to: WriteHalf<'_>,
        mut rx: mpsc::UnboundedReceiver<Chunk>,
        room: &Semaphore,
    ) -> io::Result<()> {
        let mut control = self.shared.control.subscribe();
        let counters = self.shared.counters.dir(self.dir);
        let timers = &self.shared.timers;
        while let Some(chunk) = rx.recv().await {
            timers.sleep_until(chunk.deadline).await;
            if chunk.data.is_empty() {
                wait_link_up(&mut control).await;
                to.shutdown().await?;
                return Ok(());
            }
            let rate = self
                .dir
                .props(&control.borrow().props)
                .bandwidth_bytes_per_s;
            let piece_bytes = if rate == 0 {
                chunk.data.len()
            } else {
                Bucket::piece_bytes(rate)
            };
            for piece in chunk.data.chunks(piece_bytes) {
                if rate > 0 {
                    let at = self
                        .shared
                        .bucket(self.dir)
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .reserve(Instant::now(), piece.len(), rate);
                    timers.sleep_until(at).await;
                }
                wait_link_up(&mut control).await;
                to.write_all(piece).await?;
                counters.bytes.fetch_add(piece.len() as u64, Relaxed);
            }
            let n = chunk.data.len();
            counters.chunks.fetch_add(1, Relaxed);
            counters.queued_bytes.fetch_sub(n as u64, Relaxed);
            room.add_permits(n);
        }
        Ok(())
    }
}

/// Takes the bytes still queued when a pump ends abnormally (reset, error, stop) off
/// the `queued_bytes` gauge: they are the permits the writer never gave back.
struct InFlight<'a> {
    room: &'a Semaphore,
    queue_bytes_max: usize,
    gauge: &'a AtomicU64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let left = self
            .queue_bytes_max
            .saturating_sub(self.room.available_permits());
        self.gauge.fetch_sub(left as u64, Relaxed);
    }
}

/// Returns at once unless the link is cut; during a blackhole it waits for the heal
/// (during a reset the connection is being torn down and this never returns).
async fn wait_link_up(control: &mut watch::Receiver<Control>) {
    let up = { control.borrow().cut.is_none() };
    if !up {
        // Err only if the sender is gone, which means the proxy is stopping.
        let _ = control.wait_for(|c| c.cut.is_none()).await;
    }
}
