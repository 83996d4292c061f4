//! Commit latency and throughput of a 3-node cluster on loopback: three orchestrator
//! nodes (gRPC between them, RocksDB with synced log writes in temporary directories),
//! clients writing audit notes through the operator API of the leader and of a
//! follower (which forwards to the leader), at 1 and 64 concurrent clients.
//!
//!     cargo bench -p orchestrator --bench commit [-- SECONDS]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use orchestrator::client::Client;
use orchestrator::config::NodeConfig;
use orchestrator::pb;

async fn start(dir: &std::path::Path, name: &str) -> orchestrator::server::RunningNode {
    let cfg = NodeConfig {
        name: name.into(),
        data_dir: dir.join(name),
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: None,
        write_timeout_ms: 10_000,
        timing: Default::default(),
        signing_key: None,
        tls: None,
    };
    orchestrator::server::start(&cfg).await.expect("start node")
}

struct Run {
    label: String,
    clients: usize,
    ops: usize,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

async fn run(addr: &str, label: &str, clients: usize, dur: Duration) -> Run {
    let mut tasks = Vec::new();
    let started = Instant::now();
    for c in 0..clients {
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let cl = Client::connect_to(&addr).await.unwrap();
            let mut op = cl.op.clone();
            let mut lat = Vec::new();
            let mut i = 0u64;
            while started.elapsed() < dur {
                let t = Instant::now();
                op.note(pb::NoteRequest {
                    text: format!("bench {c}/{i}"),
                    actor: "bench".into(),
                })
                .await
                .unwrap();
                lat.push(t.elapsed().as_micros() as u64);
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Run {
        label: label.into(),
        clients,
        ops: all.len(),
        secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: *all.last().unwrap(),
    }
}

fn main() {
    let secs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(8);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for n in ["orch-a", "orch-b", "orch-w"] {
            nodes.push(start(dir.path(), n).await);
        }
        let init = pb::InitClusterRequest {
            nodes: nodes
                .iter()
                .zip(["a", "b", "w"])
                .map(|(n, site)| pb::InitNode {
                    name: n.node.name.clone(),
                    site: site.into(),
                    addr: n.grpc_addr.to_string(),
                })
                .collect(),
        };
        let mut op = Client::connect_to(&nodes[0].grpc_addr.to_string())
            .await
            .unwrap()
            .op;
        op.init_cluster(init).await.unwrap();
        let leader = loop {
            if let Some((_, info)) = nodes[0].node.leader() {
                break info.addr;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let follower = nodes
            .iter()
            .map(|n| n.grpc_addr.to_string())
            .find(|a| *a != leader)
            .unwrap();
        // Warm up connections and RocksDB.
        run(&leader, "warmup", 4, Duration::from_secs(1)).await;
        let dur = Duration::from_secs(secs);
        let mut results = Vec::new();
        for clients in [1, 64] {
            results.push(run(&leader, "via leader", clients, dur).await);
            results.push(run(&follower, "via follower", clients, dur).await);
        }
        println!("3-node cluster on loopback, synced RocksDB log, {secs} s per run");
        println!(
            "{:<14} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10}",
            "path", "clients", "ops", "ops/s", "p50 ms", "p99 ms", "max ms"
        );
        for r in &results {
            println!(
                "{:<14} {:>8} {:>8} {:>10.0} {:>10.2} {:>10.2} {:>10.2}",
                r.label,
                r.clients,
                r.ops,
                r.ops as f64 / r.secs,
                r.p50_us as f64 / 1000.0,
                r.p99_us as f64 / 1000.0,
                r.max_us as f64 / 1000.0
            );
        }
        for n in nodes {
            n.shutdown().await;
        }
    });
}
