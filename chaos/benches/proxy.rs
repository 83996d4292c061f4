//! What the link proxy adds to a round trip: 1-byte ping-pong on loopback against an
//! echo server, directly and through a `LinkProxy` at delay 0 (the proxy's own
//! overhead) and at 0.6 ms one way (ideal: +1.2 ms), p50/p99 over many round trips.
//!
//!     cargo bench -p chaos --bench proxy [-- ROUND_TRIPS]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use chaos::proxy::{LinkProps, LinkProxy};

fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            stream.set_nodelay(true).unwrap();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn round_trip(stream: &mut TcpStream) -> Duration {
    let mut byte = [0u8; 1];
    let start = Instant::now();
    stream.write_all(b"p").unwrap();
    stream.read_exact(&mut byte).unwrap();
    start.elapsed()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let echo = echo_server();
    let localhost = "127.0.0.1:0".parse().unwrap();
    let with_delay = |delay_us| LinkProps::with_delay(Duration::from_micros(delay_us));
    let proxy_0 = LinkProxy::start(localhost, echo, with_delay(0)).unwrap();
    let proxy_600 = LinkProxy::start(localhost, echo, with_delay(600)).unwrap();
    let mut paths = [
        ("direct", connect(echo), Vec::with_capacity(rounds)),
        ("proxy, delay 0", connect(proxy_0.local_addr()), Vec::new()),
        (
            "proxy, delay 0.6 ms",
            connect(proxy_600.local_addr()),
            Vec::new(),
        ),
    ];
    // Blocks of round trips taken in turn, so that load from other processes on the
    // machine falls on every path alike and the differences stay meaningful.
    const BLOCK: usize = 250;
    for (_, stream, _) in &mut paths {
        for _ in 0..BLOCK {
            round_trip(stream); // warm up
        }
    }
    for _ in 0..rounds.div_ceil(BLOCK) {
        for (_, stream, rtts) in &mut paths {
            rtts.extend((0..BLOCK).map(|_| round_trip(stream)));
        }
    }
    let pct = |v: &[Duration], p: f64| v[((v.len() - 1) as f64 * p) as usize];
    for (_, _, rtts) in &mut paths {
        rtts.sort_unstable();
    }
    let (d50, d99) = (pct(&paths[0].2, 0.5), pct(&paths[0].2, 0.99));
    println!(
        "1-byte ping-pong on loopback, {} round trips per path (interleaved)",
        paths[0].2.len()
    );
    println!(
        "{:<22} {:>9} {:>9} {:>14} {:>14}",
        "path", "p50 µs", "p99 µs", "added p50 µs", "added p99 µs"
    );
    for (label, _, rtts) in &paths {
        let (p50, p99) = (pct(rtts, 0.5), pct(rtts, 0.99));
        println!(
            "{label:<22} {:>9.1} {:>9.1} {:>14.1} {:>14.1}",
            us(p50),
            us(p99),
            us(p50) - us(d50),
            us(p99) - us(d99)
        );
    }
    println!("(ideal added RTT at delay 0.6 ms: 1200 µs)");
}
