//! NBD write benchmark: the Rust client against (a) metrodr's server with a
//! FileBackend and (b) `qemu-nbd -f raw -t -k SOCKET FILE`, each in its own process on
//! a fresh 1 GiB sparse file in /tmp, over a unix socket.
//!
//! Cases: 4 KiB random writes at queue depth 1 and 16 (IOPS, p50, p99) and 1 MiB
//! sequential writes at queue depth 4 (MB/s). Run with
//! `cargo bench -p replication --bench nbd`; `NBD_BENCH_SECS` sets the seconds per
//! case (default 5, after 1 s of warm-up).
//!
//! The server under test (a) is this same binary re-executed with
//! `METRODR_NBD_BENCH_SERVE=SOCKET:FILE`, so that both servers run in a process of
//! their own and compete with the client for the same two cores.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use replication::nbd::options::put_option;
use replication::nbd::proto::OPT_ABORT;
use replication::nbd::{
    ClientConfig, DEFAULT_SOCKET_MODE, Export, ExportSet, FileBackend, NbdClient, ServerConfig,
    UnixServer,
};
use tokio_util::sync::CancellationToken;

const FILE_SIZE: u64 = 1 << 30;
const SERVE_ENV: &str = "METRODR_NBD_BENCH_SERVE";

fn main() {
    if let Ok(spec) = std::env::var(SERVE_ENV) {
        let (sock, file) = spec.split_once(':').expect("SOCKET:FILE");
        serve_child(Path::new(sock), Path::new(file));
        return;
    }
    let secs: u64 = std::env::var("NBD_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rounds: usize = std::env::var("NBD_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let dir = tempfile::Builder::new()
        .prefix("metrodr-nbd-bench")
        .tempdir_in("/tmp")
        .unwrap();
    // Both servers run for the whole benchmark, each on its own file; the cases
    // alternate between them round by round so that background noise (page-cache
    // writeback, other processes) falls on both alike. Each number is the median of
    // the rounds.
    let servers = [Server::Metrodr, Server::QemuNbd];
    let mut children = Vec::new();
    let mut socks = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let file = dir.path().join(format!("bench{i}.raw"));
        std::fs::File::create(&file)
            .unwrap()
            .set_len(FILE_SIZE)
            .unwrap();
        let sock = dir.path().join(format!("bench{i}.sock"));
        children.push(server.start(&sock, &file));
        socks.push(sock);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut results: Vec<Vec<Vec<CaseResult>>> = vec![Vec::new(), Vec::new()];
    for round in 0..rounds {
        for k in 0..servers.len() {
            let i = if round % 2 == 0 {
                k
            } else {
                servers.len() - 1 - k
            };
            let r = rt.block_on(run_cases(&socks[i], Duration::from_secs(secs)));
            results[i].push(r);
        }
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let rows: Vec<(Server, Vec<CaseResult>)> = servers
        .iter()
        .copied()
        .zip(results.into_iter().map(median))
        .collect();
    print_table(&rows);
}

/// Per case, the round with the median throughput.
fn median(mut rounds: Vec<Vec<CaseResult>>) -> Vec<CaseResult> {
    let cases = rounds[0].len();
    let mut out = Vec::new();
    for c in (0..cases).rev() {
        let mut of_case: Vec<CaseResult> = rounds.iter_mut().map(|r| r.remove(c)).collect();
        of_case.sort_by(|a, b| a.iops().total_cmp(&b.iops()));
        out.push(of_case.swap_remove(of_case.len() / 2));
    }
    out.reverse();
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Server {
    Metrodr,
    QemuNbd,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Metrodr => "metrodr NBD (FileBackend, unreplicated)",
            Server::QemuNbd => "qemu-nbd -f raw -t",
        }
    }

    fn start(self, sock: &Path, file: &Path) -> Child {
        let child = match self {
            Server::Metrodr => Command::new(std::env::current_exe().unwrap())
                .env(SERVE_ENV, format!("{}:{}", sock.display(), file.display()))
                .spawn()
                .unwrap(),
            Server::QemuNbd => Command::new("qemu-nbd")
                .args(["-f", "raw", "-t", "-k"])
                .arg(sock)
                .arg(file)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("\n#### qemu-nbd cannot be started ({e}): install the Debian package qemu-utils ####\n")
                }),
        };
        // Wait until it accepts, with a polite handshake that ends in NBD_OPT_ABORT
        // (a bare connect-and-close makes qemu-nbd log errors).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) {
                use std::io::{Read, Write};
                let mut greeting = [0u8; 18];
                s.read_exact(&mut greeting).unwrap();
                let mut out = 3u32.to_be_bytes().to_vec();
                put_option(&mut out, OPT_ABORT, &[]);
                s.write_all(&out).unwrap();
                let mut reply = [0u8; 20];
                s.read_exact(&mut reply).unwrap();
                break;
            }
            assert!(Instant::now() < deadline, "{} did not start", self.name());
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    }
}

fn serve_child(sock: &Path, file: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let backend = FileBackend::open(file, false).unwrap();
        let exports = ExportSet::single(Export {
            name: "bench".into(),
            description: String::new(),
            backend: Arc::new(backend),
            multi_conn: true,
        })
        .unwrap();
        let server = UnixServer::bind(
            sock,
            DEFAULT_SOCKET_MODE,
            Arc::new(exports),
            ServerConfig::default(),
        )
        .unwrap();
        server.run(CancellationToken::new()).await.unwrap();
    });
}

struct CaseResult {
    name: &'static str,
    ops: u64,
    bytes: u64,
    elapsed: Duration,
    p50_us: f64,
    p99_us: f64,
}

impl CaseResult {
    fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

async fn run_cases(sock: &Path, secs: Duration) -> Vec<CaseResult> {
    let c = NbdClient::connect_unix(sock, &ClientConfig::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    for (name, depth, block, sequential) in [
        ("4 KiB random write, QD1", 1, 4096u32, false),
        ("4 KiB random write, QD16", 16, 4096, false),
        ("1 MiB sequential write, QD4", 4, 1 << 20, true),
    ] {
        // Warm-up, then the measured run.
        run_case(&c, name, depth, block, sequential, Duration::from_secs(1)).await;
        out.push(run_case(&c, name, depth, block, sequential, secs).await);
    }
    c.flush().await.unwrap();
    c.disconnect().await.unwrap();
    out
}

async fn run_case(
    c: &NbdClient,
    name: &'static str,
    depth: usize,
    block: u32,
    sequential: bool,
    duration: Duration,
) -> CaseResult {
    let data = Bytes::from(vec![0x5au8; block as usize]);
    let next_seq = Arc::new(AtomicU64::new(0));
    let blocks = FILE_SIZE / u64::from(block);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for worker in 0..depth as u64 {
        let (c, data, next_seq) = (c.clone(), data.clone(), next_seq.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng =
                0x9e37_79b9_7f4a_7c15u64 ^ (worker + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
            let mut lat = Vec::with_capacity(1 << 16);
            while Instant::now() < deadline {
                let index = if sequential {
                    next_seq.fetch_add(1, Ordering::Relaxed) % blocks
                } else {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % blocks
                };
                let t = Instant::now();
                c.write(index * u64::from(block), data.clone(), false)
                    .await
                    .unwrap();
                lat.push(t.elapsed().as_nanos() as u64);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    CaseResult {
        name,
        ops: lat.len() as u64,
        bytes: lat.len() as u64 * u64::from(block),
        elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn print_table(rows: &[(Server, Vec<CaseResult>)]) {
    println!();
    println!("| case | server | IOPS | MB/s | p50 µs | p99 µs |");
    println!("|---|---|---:|---:|---:|---:|");
    for (server, cases) in rows {
        for r in cases {
            println!(
                "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} |",
                r.name,
                server.name(),
                r.iops(),
                r.mb_s(),
                r.p50_us,
                r.p99_us
            );
        }
    }
    if let [(_, ours), (_, theirs)] = rows {
        println!();
        println!("| case | metrodr / qemu-nbd (throughput) |");
        println!("|---|---:|");
        for (a, b) in ours.iter().zip(theirs) {
            println!("| {} | {:.2}x |", a.name, a.iops() / b.iops());
        }
    }
}
