//! Volumes served by the agents (`volumes = "agents"` in the topology): the cluster
//! places each app's group (primary at its site, secondary at the other), the agents
//! serve them in process, and a failover promotes the secondary on the host where the
//! app's VMs restart. Real processes: three orchestrator nodes and four agents on
//! libvirt's test driver (examples/lab.toml, whose volumes the agents serve); a writer talks
//! NBD to the primary's socket on its host, as QEMU would.

// Each test holds the `serial()` guard for its whole run, on purpose (see cluster.rs).
#![allow(clippy::await_holding_lock, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use replication::nbd::{ClientConfig, NbdClient};
use serde_json::Value;

const NODES: [&str; 3] = ["orch-north", "orch-south", "orch-witness"];
const HOSTS: [&str; 4] = ["north-h1", "north-h2", "south-h1", "south-h2"];
const VMS: [&str; 6] = ["db-1", "api-1", "api-2", "portal-1", "archive-1", "mail-1"];
const BLOCK: usize = 4096;

struct Lab {
    c: TestCluster,
    agents: BTreeMap<String, AgentProc>,
    addrs: String,
}

fn agent_config(dir: &Path, host: &str, cluster: &str) -> (PathBuf, PathBuf) {
    let state_dir = dir.join(format!("agent-{host}"));
    let config = dir.join(format!("agent-{host}.toml"));
    std::fs::write(
        &config,
        format!(
            "host = \"{host}\"\ncluster = \"{cluster}\"\nlibvirt_uri = \"test:///private\"\n\
             state_dir = \"{}\"\ndisk_backend = \"nbd\"\n",
            state_dir.display()
        ),
    )
    .unwrap();
    (config, state_dir)
}

impl Lab {
    async fn start() -> Lab {
        let c = TestCluster::start_named(&NODES);
        let text = std::fs::read_to_string(root().join("examples/lab.toml")).unwrap();
        assert!(text.contains("volumes = \"agents\""), "examples/lab.toml");
        c.init_with(&root().join("examples/lab.toml"));
        let addrs = c.addrs();
        let mut lab = Lab {
            c,
            agents: BTreeMap::new(),
            addrs,
        };
        for h in HOSTS {
            lab.start_agent(h);
        }
        let a0 = lab.c.nodes[0].grpc.clone();
        for h in HOSTS {
            let a = a0.clone();
            wait_for(Duration::from_secs(15), &format!("{h} up"), move || {
                let a = a.clone();
                async move { (host_state(&a, h).await? == "up").then_some(()) }
            })
            .await;
        }
        // The controller serves every secondary, then every primary towards it; the
        // primaries' initial sync makes the other site's replicas up to date.
        wait_for(Duration::from_secs(40), "every replica up to date", || {
            let l = &lab;
            async move {
                let v = l.json(&["volume", "list"]);
                v.as_array()?
                    .iter()
                    .all(|vol| {
                        vol["replicas"]
                            .as_array()
                            .is_some_and(|rs| rs.iter().all(|r| r["data"] == "up-to-date"))
                    })
                    .then_some(())
            }
        })
        .await;
        for vm in VMS {
            for action in ["define", "start"] {
                let r = vm_do(&a0, action, vm).await;
                assert_eq!(r.status, "succeeded", "{action} {vm}: {}", r.message);
            }
        }
        lab
    }

    fn start_agent(&mut self, host: &str) {
        let dir = self.c.dir.path();
        let (config, state_dir) = agent_config(dir, host, &self.addrs);
        self.agents.insert(
            host.to_string(),
            spawn_agent(dir, host, &config, &state_dir, None),
        );
    }

    fn json(&self, args: &[&str]) -> Value {
        cli_json(&self.addrs, args)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        cli_run(&self.addrs, args)
    }

    fn volume(&self, id: &str) -> Value {
        volume_json(&self.addrs, id)
    }

    /// The socket of `app`'s group on the host serving its replica at `site`.
    fn socket(&self, volume: &str, app: &str, site: &str) -> PathBuf {
        let vol = self.volume(volume);
        let host = replica(&vol, site)["host"].as_str().unwrap().to_string();
        self.c
            .dir
            .path()
            .join(format!("agent-{host}/sockets/{app}.sock"))
    }

    fn kill_site(&mut self, site: &str) {
        for n in self.c.nodes.iter_mut().filter(|n| n.name.ends_with(site)) {
            n.kill();
        }
        for (_, a) in self.agents.iter_mut().filter(|(h, _)| h.starts_with(site)) {
            a.kill();
        }
    }

    fn live(&self) -> String {
        self.c
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .unwrap()
            .grpc
            .clone()
    }

    async fn wait_op(&self, op: u64, within: Duration) -> Value {
        wait_op(&self.addrs, op, within).await
    }
}

fn record(seq: u64) -> Bytes {
    let mut b = vec![0u8; BLOCK];
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(seq ^ (i as u64) << 40).to_le_bytes());
    }
    Bytes::from(b)
}

async fn connect(socket: &Path, export: &str) -> NbdClient {
    let cfg = ClientConfig {
        export: export.into(),
        ..ClientConfig::default()
    };
    NbdClient::connect_unix(socket, &cfg)
        .await
        .unwrap_or_else(|e| panic!("NBD {}: {e}", socket.display()))
}

/// Write records 0, 1, 2, … (one 4 KiB block each, wrapping over the volume) until
/// a write fails or `stop`; returns the last acknowledged sequence number + 1.
async fn write_until_failure(c: NbdClient, stop: Arc<AtomicBool>) -> u64 {
    let blocks = c.size() / BLOCK as u64;
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let off = (seq % blocks) * BLOCK as u64;
        match tokio::time::timeout(Duration::from_secs(2), c.write(off, record(seq), true)).await {
            Ok(Ok(())) => seq += 1,
            _ => break,
        }
    }
    seq
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_serve_every_group_and_a_site_loss_promotes_it_where_the_apps_restart() {
    let _g = serial();
    let mut lab = Lab::start().await;
    let vol = lab.volume("db-data");
    let north_host = replica(&vol, "north")["host"].as_str().unwrap().to_string();
    let south_host = replica(&vol, "south")["host"].as_str().unwrap().to_string();
    assert!(north_host.starts_with("north-") && south_host.starts_with("south-"));
    // The app's VM runs on the host that serves its primary.
    let apps = lab.json(&["app", "list"]);
    let db = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "db")
        .unwrap();
    assert_eq!(db["placement"]["db-1"], north_host.as_str(), "{db}");

    // A writer on the primary's socket, as the VM's QEMU would be.
    let c = connect(&lab.socket("db-data", "db", "north"), "db-data").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until_failure(c, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Instant::now();
    lab.kill_site("north");
    let acked = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the writer stops when north dies")
        .unwrap();
    assert!(
        acked > 50,
        "the writer wrote through replication ({acked} records)"
    );

    let live = lab.live();
    let op = wait_for(Duration::from_secs(30), "the automatic failover", || {
        let l = &lab;
        async move {
            let ops = l.run(&["op", "list"]);
            let v: Value = serde_json::from_slice(&ops.stdout).ok()?;
            v.as_array()?
                .iter()
                .find(|o| o["note"] == "site north lost")
                .and_then(|o| o["op"].as_u64())
        }
    })
    .await;
    // archive waits for approval.
    let o = lab.run(&["op", "approve", &op.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let rec = lab.wait_op(op, Duration::from_secs(60)).await;
    assert_eq!(rec["status"], "succeeded", "{rec}");
    eprintln!(
        "site loss → op-{op} done {:.2} s after the kill; {acked} records acknowledged",
        killed.elapsed().as_secs_f64()
    );
    let steps = rec["steps"].as_array().unwrap();
    let serve = steps
        .iter()
        .find(|s| s["app"] == "db" && s["name"].as_str().unwrap().starts_with("serve volumes at"))
        .unwrap_or_else(|| panic!("no serve step: {rec}"));
    assert!(
        serve["result"]
            .as_str()
            .unwrap()
            .contains("as primary at epoch 2 (promoted)"),
        "{serve}"
    );
    let vol = lab.volume("db-data");
    assert_eq!(vol["epoch"], 2);
    assert_eq!(replica(&vol, "south")["role"], "primary");
    assert_eq!(replica(&vol, "north")["data"], "outdated");
    assert_eq!(vm_state(&live, "db-1").await.as_deref(), Some("running"));

    // Every acknowledged record is on the promoted replica, served at the south host.
    let c = connect(&lab.socket("db-data", "db", "south"), "db-data").await;
    let blocks = c.size() / BLOCK as u64;
    let first = acked.saturating_sub(blocks);
    let mut missing = 0;
    for seq in first..acked {
        let got = c
            .read((seq % blocks) * BLOCK as u64, BLOCK as u32)
            .await
            .unwrap();
        if got != record(seq) && got != record(seq + blocks) {
            missing += 1;
        }
    }
    assert_eq!(
        missing, 0,
        "acknowledged records missing after failover (of {acked})"
    );
    // The promoted primary takes writes (it runs alone: north is outdated).
    c.write(0, record(u64::MAX), true).await.unwrap();

    // North returns: its agents register, the controller serves its replicas as
    // secondaries on their old endpoints, the promoted primaries find them and resync
    // the difference; then db may go home.
    for n in lab.c.nodes.iter_mut().filter(|n| n.name.ends_with("north")) {
        restart(lab.c.dir.path(), n, None);
    }
    for h in ["north-h1", "north-h2"] {
        lab.start_agent(h);
    }
    let t = Instant::now();
    loop {
        let o = lab.run(&["site", "recover", "north"]);
        if o.status.success() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(40), "{}", text(&o));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_for(Duration::from_secs(40), "north's db replica resynced", || {
        let l = &lab;
        async move { (replica(&l.volume("db-data"), "north")["data"] == "up-to-date").then_some(()) }
    })
    .await;
    // Only the difference went back: the regions written at either side around the
    // loss, not the 64 MiB volume.
    let report = audit(&lab.live())
        .await
        .into_iter()
        .rev()
        .find(|e| {
            e.action == "replica.link"
                && e.detail.contains("app db: primary at south")
                && e.detail.contains("InSync")
        })
        .expect("the south primary reported north in sync");
    let copied: u64 = report
        .detail
        .split("last resync copied ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resync figure in {:?}", report.detail));
    eprintln!("north's db replica resynced: {}", report.detail);
    assert!(
        copied < 16 << 20,
        "a delta resync, not a full copy of 64 MiB: {}",
        report.detail
    );
    let rec = lab.json(&["app", "failback", "db"]);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let vol = lab.volume("db-data");
    assert_eq!(vol["epoch"], 3);
    assert_eq!(replica(&vol, "north")["role"], "primary");
    // The record written at south after the failover came home.
    let c = connect(&lab.socket("db-data", "db", "north"), "db-data").await;
    assert_eq!(c.read(0, BLOCK as u32).await.unwrap(), record(u64::MAX));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_group_switches_over_drained_and_replication_reverses() {
    let _g = serial();
    let lab = Lab::start().await;
    // The archive replicates asynchronously: write, then switch it over at once.
    let c = connect(
        &lab.socket("archive-data", "archive", "north"),
        "archive-data",
    )
    .await;
    let n = 400u64;
    for seq in 0..n {
        c.write(seq * BLOCK as u64, record(seq), false)
            .await
            .unwrap();
    }
    drop(c);
    let rec = lab.json(&["app", "switchover", "archive", "--to", "south"]);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let steps = rec["steps"].as_array().unwrap();
    let drained = steps
        .iter()
        .find(|s| s["name"] == "stop volumes at north")
        .unwrap_or_else(|| panic!("{rec}"));
    assert!(
        drained["result"]
            .as_str()
            .unwrap()
            .contains("the peer confirmed every write"),
        "the switchover drained the lag first: {drained}"
    );
    let vol = lab.volume("archive-data");
    assert_eq!(vol["epoch"], 2);
    assert_eq!(replica(&vol, "south")["role"], "primary");
    // The new primary takes writes alone until north reconnects: north's replica is
    // committed outdated by the promotion itself, not promotable. (By now the reversed
    // link may already have resynced it: outdated, or up to date again — never a
    // replica that was promotable throughout.)
    let promoted = steps
        .iter()
        .find(|s| s["name"] == "promote and move to south")
        .unwrap_or_else(|| panic!("{rec}"));
    assert!(
        promoted["result"]
            .as_str()
            .unwrap()
            .contains("old primary Outdated"),
        "{promoted}"
    );
    assert!(
        ["outdated", "syncing", "up-to-date"]
            .contains(&replica(&vol, "north")["data"].as_str().unwrap()),
        "{vol}"
    );
    // Nothing written at north is missing at south.
    let c = connect(
        &lab.socket("archive-data", "archive", "south"),
        "archive-data",
    )
    .await;
    for seq in 0..n {
        assert_eq!(
            c.read(seq * BLOCK as u64, BLOCK as u32).await.unwrap(),
            record(seq),
            "record {seq}"
        );
    }
    // Replication runs the other way: north's replica resyncs and only the south
    // primary's report of an in-sync link can make it up to date again.
    c.write(0, record(u64::MAX), true).await.unwrap();
    wait_for(
        Duration::from_secs(20),
        "north's replica in sync again",
        || {
            let l = &lab;
            async move {
                let v = l.volume("archive-data");
                (replica(&v, "north")["role"] == "secondary"
                    && replica(&v, "north")["data"] == "up-to-date")
                    .then_some(())
            }
        },
    )
    .await;
}
