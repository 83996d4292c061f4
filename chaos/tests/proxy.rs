//! The link proxy with real sockets on loopback: echo and sink servers behind a
//! `LinkProxy`, clients on blocking std sockets, every port chosen by the kernel.
//! Waits poll a condition with a deadline; timing assertions use generous bands and
//! print what they measured.

// clippy.toml allows unwrap in #[test] functions only; the helpers below are test code
// too, and a panic there is the test failure we want.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use chaos::proxy::{CutMode, DirProps, LinkProps, LinkProxy, ProxyError};
use sha2::{Digest, Sha256};

/// Deadline for anything that should happen "at once" (a reset arriving, a heal
/// taking effect, a counter catching up): generous for a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(5);

/// The tests measure latency and throughput, so they take turns: two of them running
/// at once on two cores would measure each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A server on an OS-chosen loopback port running `serve` on a thread per connection.
fn server(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            stream.set_nodelay(true).unwrap();
            let serve = Arc::clone(&serve);
            thread::spawn(move || serve(stream));
        }
    });
    addr
}

/// Echoes every byte back as soon as it arrives, until the client closes.
fn echo_server() -> SocketAddr {
    server(|mut stream| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    stream
}

fn start(target: SocketAddr, props: LinkProps) -> LinkProxy {
    LinkProxy::start(localhost(), target, props).unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Polls `cond` until it holds or `SOON` passes; returns whether it held.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + SOON;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// Round trips of one byte each.
fn ping_pong(stream: &mut TcpStream, rounds: usize) -> Vec<Duration> {
    let mut byte = [0u8; 1];
    (0..rounds)
        .map(|i| {
            let sent = Instant::now();
            stream.write_all(&[i as u8]).unwrap();
            stream.read_exact(&mut byte).unwrap();
            assert_eq!(byte[0], i as u8);
            sent.elapsed()
        })
        .collect()
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Seeded pseudo-random bytes (xorshift64*), reproducible by seed.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Writes `data` in pseudo-random write sizes, then half-closes.
fn send_all(mut stream: TcpStream, data: &[u8], seed: u64) {
    let sizes = random_bytes(seed, data.len() / 100 + 1);
    let mut at = 0;
    for &s in sizes.iter().cycle() {
        if at == data.len() {
            break;
        }
        let n = (usize::from(s) * 257 + 1).min(data.len() - at);
        stream.write_all(&data[at..at + n]).unwrap();
        at += n;
    }
    stream.shutdown(Shutdown::Write).unwrap();
}

/// Reads to end of stream; returns (bytes, sha256).
fn hash_to_eof(stream: &mut TcpStream) -> (usize, Vec<u8>) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            return (total, hasher.finalize().to_vec());
        }
        hasher.update(&buf[..n]);
        total += n;
    }
}

#[test]
fn zero_delay_adds_well_under_a_millisecond() {
    let _serial = serial();
    let echo = echo_server();
    let proxy = start(echo, LinkProps::default());
    let mut direct = connect(echo);
    let mut proxied = connect(proxy.local_addr());
    ping_pong(&mut proxied, 200); // warm up
    let base = ping_pong(&mut direct, 2000);
    let rtts = ping_pong(&mut proxied, 2000);
    let mean = rtts.iter().sum::<Duration>() / rtts.len() as u32;
    println!(
        "delay 0: direct p50 {:.3} ms; proxied mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms",
        ms(percentile(&base, 0.5)),
        ms(mean),
        ms(percentile(&rtts, 0.5)),
        ms(percentile(&rtts, 0.99)),
    );
    assert!(mean < Duration::from_millis(1), "mean RTT {mean:?}");
    block_on(proxy.stop());
}

#[test]
fn sub_millisecond_delay_is_accurate() {
    let _serial = serial();
    let echo = echo_server();
    let proxy = start(echo, LinkProps::with_delay(Duration::from_micros(600)));
    let mut stream = connect(proxy.local_addr());
    ping_pong(&mut stream, 50);
    let rtts = ping_pong(&mut stream, 1000);
    let (p50, p99) = (percentile(&rtts, 0.5), percentile(&rtts, 0.99));
    println!(
        "delay 0.6 ms: RTT p50 {:.3} ms, p99 {:.3} ms (ideal 1.2 ms)",
        ms(p50),
        ms(p99)
    );
    assert!(
        (Duration::from_micros(1100)..Duration::from_millis(3)).contains(&p50),
        "median RTT {p50:?}, expected ≈ 1.2 ms"
    );
    block_on(proxy.stop());
}

#[test]
fn ten_mib_each_way_concurrently_keeps_order_and_content() {
    let _serial = serial();
    const LEN: usize = 10 << 20;
    let up = Arc::new(random_bytes(1, LEN));
    let down = Arc::new(random_bytes(2, LEN));
    let (up_hash, down_hash) = (
        Sha256::digest(&*up).to_vec(),
        Sha256::digest(&*down).to_vec(),
    );
    // The server sends `down` while it hashes what it receives.
    let (got_tx, got_rx) = mpsc::channel();
    let got_tx = Mutex::new(got_tx);
    let down_for_server = Arc::clone(&down);
    let target = server(move |mut stream| {
        let writer = stream.try_clone().unwrap();
        let data = Arc::clone(&down_for_server);
        let sending = thread::spawn(move || send_all(writer, &data, 22));
        let got = hash_to_eof(&mut stream);
        sending.join().unwrap();
        got_tx.lock().unwrap().send(got).unwrap();
    });
    // Jitter larger than the gaps between chunks: a reordering proxy would show here.
    let dir = DirProps {
        delay_us: 1000,
        jitter_us: 800,
        ..DirProps::default()
    };
    let proxy = start(
        target,
        LinkProps {
            seed: 0x5eed,
            ..LinkProps::symmetric(dir)
        },
    );
    let started = Instant::now();
    let mut stream = connect(proxy.local_addr());
    let writer = stream.try_clone().unwrap();
    let sending = thread::spawn(move || send_all(writer, &up, 11));
    let (down_len, down_got) = hash_to_eof(&mut stream);
    sending.join().unwrap();
    let (up_len, up_got) = got_rx.recv_timeout(SOON).unwrap();
    let took = started.elapsed();
    println!(
        "10 MiB each way with 1 ms ± 0.8 ms delay: {:.0} ms, {:.1} MiB/s per direction",
        ms(took),
        10.0 / took.as_secs_f64()
    );
    assert_eq!((up_len, down_len), (LEN, LEN));
    assert!(
        up_got == up_hash,
        "client → target stream corrupted or reordered"
    );
    assert!(
        down_got == down_hash,
        "target → client stream corrupted or reordered"
    );
    let stats = proxy.stats();
    assert_eq!(stats.to_target.bytes, LEN as u64);
    assert_eq!(stats.to_client.bytes, LEN as u64);
    println!(
        "chunks: to_target {}, to_client {}",
        stats.to_target.chunks, stats.to_client.chunks
    );
    block_on(proxy.stop());
}

#[test]
fn pipelined_messages_are_not_batched_per_delay() {
    let _serial = serial();
    const MSG: usize = 4096;
    const COUNT: usize = 2000;
    let gap = Duration::from_micros(250); // offered: 4000 msg/s
    let delay = Duration::from_millis(10);
    let echo = echo_server();
    let proxy = start(echo, LinkProps::with_delay(delay));
    let mut stream = connect(proxy.local_addr());
    let sent_at = Arc::new(Mutex::new(vec![None; COUNT]));

    let mut writer = stream.try_clone().unwrap();
    let sent = Arc::clone(&sent_at);
    let sending = thread::spawn(move || {
        let start = Instant::now();
        for seq in 0..COUNT {
            let due = start + gap * seq as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let mut msg = vec![(seq % 251) as u8; MSG];
            msg[..8].copy_from_slice(&(seq as u64).to_le_bytes());
            sent.lock().unwrap()[seq] = Some(Instant::now());
            writer.write_all(&msg).unwrap();
        }
    });
    let mut rtts = Vec::with_capacity(COUNT);
    let mut msg = vec![0u8; MSG];
    for seq in 0..COUNT {
        stream.read_exact(&mut msg).unwrap();
        let now = Instant::now();
        assert_eq!(u64::from_le_bytes(msg[..8].try_into().unwrap()), seq as u64);
        assert!(msg[8..].iter().all(|&b| b == (seq % 251) as u8));
        rtts.push(now - sent_at.lock().unwrap()[seq].unwrap());
    }
    sending.join().unwrap();
    let first_sent = sent_at.lock().unwrap()[0].unwrap();
    let per_s = COUNT as f64 / first_sent.elapsed().as_secs_f64();
    let (p10, p50, p99) = (
        percentile(&rtts, 0.1),
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99),
    );
    let rtt_ideal = 2 * delay;
    println!(
        "pipelined 4 KiB messages, delay {delay:?}: {per_s:.0} msg/s ({:.0} in flight), \
         RTT p10 {:.2} ms, p50 {:.2} ms, p99 {:.2} ms (ideal {:.0} ms)",
        per_s * rtt_ideal.as_secs_f64(),
        ms(p10),
        ms(p50),
        ms(p99),
        ms(rtt_ideal),
    );
    // One message per round trip would be 1 / (2 × delay); demand ten times that.
    assert!(per_s > 10.0 / rtt_ideal.as_secs_f64(), "{per_s:.0} msg/s");
    assert!(p10 >= rtt_ideal, "RTT p10 {p10:?} below 2 × delay");
    // Batching (read, sleep a delay, write) makes each message wait for the batch
    // in progress too: uniform 0..delay per direction, so p10 ≈ 2.45 and p50 ≈ 3
    // delays. Load on the machine only adds to the tail.
    assert!(p10 < rtt_ideal + delay / 4, "RTT p10 {p10:?}: batched?");
    assert!(p50 < rtt_ideal + delay * 3 / 4, "RTT p50 {p50:?}: batched?");
    block_on(proxy.stop());
}

#[test]
fn bandwidth_limit_is_respected_per_direction() {
    let _serial = serial();
    const RATE: u64 = 20_000_000;
    const MEASURED: usize = 20_000_000;
    // The sink times the arrival of the first `MEASURED` bytes after the first one.
    let (took_tx, took_rx) = mpsc::channel();
    let took_tx = Mutex::new(took_tx);
    let sink = server(move |mut stream| {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        let mut first = None;
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let first = *first.get_or_insert_with(Instant::now);
            let before = total;
            total += n;
            if before < MEASURED && total >= MEASURED {
                took_tx.lock().unwrap().send(first.elapsed()).unwrap();
            }
        }
    });
    let props = LinkProps {
        to_target: DirProps {
            bandwidth_bytes_per_s: RATE,
            ..DirProps::default()
        },
        ..LinkProps::default()
    };
    let proxy = start(sink, props);
    let stream = connect(proxy.local_addr());
    // More than measured, so the link stays busy until the measurement ends.
    let data = vec![7u8; MEASURED + (4 << 20)];
    let sending = thread::spawn(move || send_all(stream, &data, 3));
    let took = took_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let rate = MEASURED as f64 / took.as_secs_f64();
    println!(
        "bandwidth limit {:.0} MB/s: measured {:.2} MB/s over {:.0} ms",
        RATE as f64 / 1e6,
        rate / 1e6,
        ms(took)
    );
    assert!(
        (0.8 * RATE as f64..1.2 * RATE as f64).contains(&rate),
        "measured {rate:.0} B/s"
    );
    sending.join().unwrap();
    block_on(proxy.stop());
}

#[test]
fn blackhole_holds_traffic_without_closing_and_heal_delivers_it() {
    let _serial = serial();
    let echo = echo_server();
    let proxy = start(echo, LinkProps::default());
    let mut stream = connect(proxy.local_addr());
    ping_pong(&mut stream, 3);
    assert!(eventually(|| proxy.stats().to_client.bytes == 3));
    let before = proxy.stats();

    proxy.cut(CutMode::Blackhole);
    stream.write_all(b"x").unwrap();
    // A connection opened during the partition completes its handshake (the proxy's
    // socket is local) but gets no answer either.
    let mut late = connect(proxy.local_addr());
    late.write_all(b"y").unwrap();
    for s in [&mut stream, &mut late] {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let err = s.read(&mut [0u8; 1]).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "expected a read timeout, got {err}"
        );
    }
    let during = proxy.stats();
    assert_eq!(during.to_target.bytes, before.to_target.bytes);
    assert_eq!(during.to_client.bytes, before.to_client.bytes);
    assert_eq!(
        during.connections_active, 2,
        "blackholed connections stay open"
    );

    proxy.heal();
    for (s, want) in [(&mut stream, b'x'), (&mut late, b'y')] {
        s.set_read_timeout(Some(SOON)).unwrap();
        let mut got = [0u8; 1];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got[0], want, "held byte delivered after heal");
    }
    ping_pong(&mut stream, 3);
    println!("blackhole: stats after heal {:?}", proxy.stats());
    block_on(proxy.stop());
}

#[test]
fn queue_bound_pushes_back_on_the_sender_and_loses_nothing() {
    let _serial = serial();
    const QUEUE: usize = 128 * 1024;
    let (total_tx, total_rx) = mpsc::channel();
    let total_tx = Mutex::new(total_tx);
    let sink = server(move |mut stream| {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            total += n;
        }
        total_tx.lock().unwrap().send(total).unwrap();
    });
    let props = LinkProps {
        queue_bytes_max: QUEUE,
        ..LinkProps::default()
    };
    let proxy = start(sink, props);
    let mut stream = connect(proxy.local_addr());
    stream.write_all(b"!").unwrap();
    assert!(eventually(|| proxy.stats().to_target.bytes == 1));

    // Nothing leaves while blackholed: the proxy reads up to its bound, then stops, and
    // the kernel buffers fill until the sender's writes would block.
    proxy.cut(CutMode::Blackhole);
    stream.set_nonblocking(true).unwrap();
    let chunk = vec![5u8; 16 * 1024];
    let mut sent = 1usize;
    let mut stuck_since = Instant::now();
    while stuck_since.elapsed() < Duration::from_millis(300) {
        match stream.write(&chunk) {
            Ok(n) => {
                sent += n;
                stuck_since = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("write failed: {e}"),
        }
        assert!(sent < 64 << 20, "the sender was never pushed back");
    }
    let queued = proxy.stats().to_target.queued_bytes;
    println!(
        "blackholed: sender blocked after {sent} bytes, proxy queue {queued} bytes (bound {QUEUE})"
    );
    assert!(queued > 0 && queued <= QUEUE as u64, "{queued}");

    proxy.heal();
    stream.set_nonblocking(false).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let received = total_rx.recv_timeout(SOON).unwrap();
    assert_eq!(received, sent, "every byte arrives after heal");
    block_on(proxy.stop());
}

#[test]
fn reset_closes_connections_refuses_new_ones_and_heal_listens_again() {
    let _serial = serial();
    let echo = echo_server();
    let proxy = start(echo, LinkProps::default());
    let addr = proxy.local_addr();
    let mut stream = connect(addr);
    ping_pong(&mut stream, 3);

    proxy.cut(CutMode::Reset);
    block_on(proxy.applied());
    match stream.read(&mut [0u8; 1]) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected ECONNRESET on the open connection, got {other:?}"),
    }
    let refused = TcpStream::connect(addr).map(|_| ()).map_err(|e| e.kind());
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused));
    let stats = proxy.stats();
    assert!(!stats.listening);
    assert_eq!(stats.connections_reset, 1);
    assert_eq!(stats.connections_active, 0);

    proxy.heal();
    block_on(proxy.applied());
    assert!(proxy.stats().listening);
    let mut again = connect(addr);
    ping_pong(&mut again, 3);
    block_on(proxy.stop());
}

#[test]
fn reset_healed_at_once_still_resets_open_connections() {
    let _serial = serial();
    let echo = echo_server();
    let proxy = start(echo, LinkProps::default());
    let mut stream = connect(proxy.local_addr());
    ping_pong(&mut stream, 3);
    // The connection's task may never see the reset as the current state.
    proxy.cut(CutMode::Reset);
    proxy.heal();
    block_on(proxy.applied());
    let got = stream.read(&mut [0u8; 1]);
    assert!(
        matches!(&got, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{got:?}"
    );
    let mut again = connect(proxy.local_addr());
    ping_pong(&mut again, 3);
    assert_eq!(proxy.stats().connections_reset, 1);
    block_on(proxy.stop());
}

#[test]
fn set_changes_delay_of_live_connections() {
    let _serial = serial();
    let echo = echo_server();
    let proxy = start(echo, LinkProps::default());
    let mut stream = connect(proxy.local_addr());
    let fast = percentile(&ping_pong(&mut stream, 50), 0.5);
    proxy
        .set(LinkProps::with_delay(Duration::from_millis(20)))
        .unwrap();
    let slow = percentile(&ping_pong(&mut stream, 10), 0.5);
    proxy.set(LinkProps::default()).unwrap();
    let fast_again = percentile(&ping_pong(&mut stream, 50), 0.5);
    println!(
        "live set: RTT p50 {:.3} ms → (20 ms delay) {:.3} ms → {:.3} ms",
        ms(fast),
        ms(slow),
        ms(fast_again)
    );
    assert!(slow >= Duration::from_millis(40), "{slow:?}");
    assert!(slow < Duration::from_millis(80), "{slow:?}");
    assert!(fast_again < Duration::from_millis(5), "{fast_again:?}");
    block_on(proxy.stop());
}

#[test]
fn asymmetric_delay_applies_per_direction() {
    let _serial = serial();
    let echo = echo_server();
    let props = LinkProps {
        to_target: DirProps::with_delay(Duration::from_millis(15)),
        ..LinkProps::default()
    };
    let proxy = start(echo, props);
    let mut stream = connect(proxy.local_addr());
    let p50 = percentile(&ping_pong(&mut stream, 10), 0.5);
    println!("15 ms one way, 0 back: RTT p50 {:.3} ms", ms(p50));
    assert!((Duration::from_millis(15)..Duration::from_millis(30)).contains(&p50));
    block_on(proxy.stop());
}

#[test]
fn loss_stalls_each_hit_chunk_and_is_counted() {
    let _serial = serial();
    let echo = echo_server();
    let lossy = DirProps {
        loss_probability: 1.0,
        loss_stall_ms: 50,
        ..DirProps::default()
    };
    let proxy = start(echo, LinkProps::symmetric(lossy));
    let mut stream = connect(proxy.local_addr());
    let rtts = ping_pong(&mut stream, 3);
    println!("loss p = 1, stall 50 ms: RTTs {rtts:?}");
    assert!(rtts.iter().all(|&r| r >= Duration::from_millis(100)));
    let stats = proxy.stats();
    assert_eq!(stats.to_target.loss_stalls, 3);
    assert_eq!(stats.to_client.loss_stalls, 3);
    proxy.set(LinkProps::default()).unwrap();
    let p50 = percentile(&ping_pong(&mut stream, 20), 0.5);
    assert!(p50 < Duration::from_millis(5), "{p50:?}");
    block_on(proxy.stop());
}

#[test]
fn stats_count_bytes_and_connections() {
    let _serial = serial();
    let echo = echo_server();
    let proxy = start(echo, LinkProps::default());
    {
        let mut a = connect(proxy.local_addr());
        let mut b = connect(proxy.local_addr());
        ping_pong(&mut a, 1000);
        b.write_all(&[1u8; 5000]).unwrap();
        b.read_exact(&mut [0u8; 5000]).unwrap();
        // A counter moves just after its write(2) returns, so the peer can read the
        // bytes a moment before they are counted.
        assert!(eventually(|| {
            let s = proxy.stats();
            (s.to_target.bytes, s.to_client.bytes) == (6000, 6000)
        }));
        let stats = proxy.stats();
        assert_eq!(stats.connections_accepted, 2);
        assert_eq!(stats.connections_active, 2);
    }
    assert!(eventually(|| proxy.stats().connections_active == 0));
    let stats = proxy.stats();
    println!("stats: {stats:?}");
    assert_eq!(stats.to_target.queued_bytes, 0);
    assert_eq!(stats.connections_failed, 0, "clean closes are not failures");
    block_on(proxy.stop());
}

#[test]
fn unreachable_target_resets_the_client_and_is_counted() {
    let _serial = serial();
    // A port that was just free: nothing listens there.
    let dead = TcpListener::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = start(dead, LinkProps::default());
    let mut stream = connect(proxy.local_addr());
    let got = stream.read(&mut [0u8; 1]);
    assert!(
        matches!(&got, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{got:?}"
    );
    assert_eq!(proxy.stats().connect_failures, 1);
    block_on(proxy.stop());
}

#[test]
fn connections_beyond_the_bound_are_rejected() {
    let _serial = serial();
    let echo = echo_server();
    let props = LinkProps {
        connections_max: 1,
        ..LinkProps::default()
    };
    let proxy = start(echo, props);
    let mut first = connect(proxy.local_addr());
    ping_pong(&mut first, 1);
    let mut second = connect(proxy.local_addr());
    let got = second.read(&mut [0u8; 1]);
    assert!(
        matches!(&got, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{got:?}"
    );
    assert_eq!(proxy.stats().connections_rejected, 1);
    ping_pong(&mut first, 1);
    block_on(proxy.stop());
}

#[test]
fn stop_and_drop_close_everything() {
    let _serial = serial();
    let echo = echo_server();
    let proxy = start(echo, LinkProps::default());
    let addr = proxy.local_addr();
    let mut stream = connect(addr);
    ping_pong(&mut stream, 1);
    block_on(proxy.stop());
    assert_eq!(
        stream.read(&mut [0u8; 1]).unwrap(),
        0,
        "stop closes with FIN"
    );
    let refused = TcpStream::connect(addr).map(|_| ()).map_err(|e| e.kind());
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused));

    // Dropping from sync code closes just as completely before returning.
    let proxy = start(echo, LinkProps::default());
    let addr = proxy.local_addr();
    let mut stream = connect(addr);
    ping_pong(&mut stream, 1);
    drop(proxy);
    let got = stream.read(&mut [0u8; 1]);
    assert!(matches!(got, Ok(0)), "{got:?}");
    let refused = TcpStream::connect(addr).map(|_| ()).map_err(|e| e.kind());
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused));
}

#[test]
fn bad_props_and_addresses_are_clear_errors() {
    let _serial = serial();
    let echo = echo_server();
    let mut props = LinkProps::default();
    props.to_target.loss_probability = 2.0;
    let err = LinkProxy::start(localhost(), echo, props).unwrap_err();
    assert!(matches!(err, ProxyError::BadProps { .. }), "{err}");
    println!("{err}");
    let proxy = start(echo, LinkProps::default());
    let err = proxy.set(props).unwrap_err();
    assert!(
        err.to_string().contains("to_target.loss_probability"),
        "{err}"
    );
    // The proxy's own port is taken: a bind error naming the address.
    let err = LinkProxy::start(proxy.local_addr(), echo, LinkProps::default()).unwrap_err();
    assert!(matches!(err, ProxyError::Bind { .. }), "{err}");
    println!("{err}: {:?}", std::error::Error::source(&err));
    block_on(proxy.stop());
}

#[test]
fn usable_from_inside_an_async_runtime() {
    let _serial = serial();
    let echo = echo_server();
    block_on(async {
        let proxy = start(echo, LinkProps::with_delay(Duration::from_millis(1)));
        let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // Dropping inside an async context must not panic (no blocking shutdown).
        drop(proxy);
        let n = tokio::time::timeout(SOON, stream.read(&mut got))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0)) || n.is_err(), "{n:?}");
    });
}

#[test]
fn run_forever_serves_and_reports_its_address() {
    let _serial = serial();
    let echo = echo_server();
    let (addr_tx, addr_rx) = mpsc::channel();
    // The thread (and its proxy) lives until the test process exits, as in a CLI.
    thread::spawn(move || {
        let ready = move |addr| addr_tx.send(addr).unwrap();
        let failed = chaos::proxy::run_forever(localhost(), echo, LinkProps::default(), ready);
        panic!("run_forever returned: {failed:?}");
    });
    let addr = addr_rx.recv_timeout(SOON).unwrap();
    ping_pong(&mut connect(addr), 3);
}

#[test]
fn handle_can_move_between_threads() {
    fn is<T: Send + Sync>() {}
    is::<LinkProxy>();
}
