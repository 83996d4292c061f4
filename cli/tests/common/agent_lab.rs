//! A lab of real processes for the tests that need served volumes: three orchestrator
//! nodes and four agents on libvirt's test driver (examples/lab.toml or a variant of
//! it, whose volumes the agents serve), every replica up to date and every VM running;
//! and an NBD writer that talks to a primary's socket as QEMU would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use replication::nbd::{ClientConfig, NbdClient};
use serde_json::Value;

use super::*;

pub const NODES: [&str; 3] = ["orch-north", "orch-south", "orch-witness"];
pub const HOSTS: [&str; 4] = ["north-h1", "north-h2", "south-h1", "south-h2"];
pub const VMS: [&str; 6] = ["db-1", "api-1", "api-2", "portal-1", "archive-1", "mail-1"];
pub const BLOCK: usize = 4096;

pub struct Lab {
    pub c: TestCluster,
    pub agents: BTreeMap<String, AgentProc>,
    pub addrs: String,
}

pub fn agent_config(dir: &Path, host: &str, cluster: &str) -> (PathBuf, PathBuf) {
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
    /// examples/lab.toml with every replica up to date and every VM running.
    pub async fn start() -> Lab {
        Lab::start_with(&root().join("examples/lab.toml")).await
    }

    /// A lab from `topology` (examples/lab.toml's sites, hosts and VMs).
    pub async fn start_with(topology: &Path) -> Lab {
        let c = TestCluster::start_named(&NODES);
        let text = std::fs::read_to_string(topology).unwrap();
        assert!(
            text.contains("volumes = \"agents\""),
            "{}",
            topology.display()
        );
        c.init_with(topology);
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
        // The agents report the states a moment later.
        wait_for(Duration::from_secs(15), "every VM reported running", || {
            let a = a0.clone();
            async move {
                for vm in VMS {
                    if vm_state(&a, vm).await.as_deref() != Some("running") {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
        lab
    }

    pub fn start_agent(&mut self, host: &str) {
        let dir = self.c.dir.path();
        let (config, state_dir) = agent_config(dir, host, &self.addrs);
        self.agents.insert(
            host.to_string(),
            spawn_agent(dir, host, &config, &state_dir, None),
        );
    }

    pub fn json(&self, args: &[&str]) -> Value {
        cli_json(&self.addrs, args)
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        cli_run(&self.addrs, args)
    }

    pub fn volume(&self, id: &str) -> Value {
        volume_json(&self.addrs, id)
    }

    /// The socket of `app`'s group on the host serving its replica at `site`.
    pub fn socket(&self, volume: &str, app: &str, site: &str) -> PathBuf {
        let vol = self.volume(volume);
        let host = replica(&vol, site)["host"].as_str().unwrap().to_string();
        self.c
            .dir
            .path()
            .join(format!("agent-{host}/sockets/{app}.sock"))
    }

    pub fn kill_site(&mut self, site: &str) {
        for n in self.c.nodes.iter_mut().filter(|n| n.name.ends_with(site)) {
            n.kill();
        }
        for (_, a) in self.agents.iter_mut().filter(|(h, _)| h.starts_with(site)) {
            a.kill();
        }
    }

    pub fn live(&self) -> String {
        self.c
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .unwrap()
            .grpc
            .clone()
    }

    pub async fn wait_op(&self, op: u64, within: Duration) -> Value {
        wait_op(&self.addrs, op, within).await
    }
}

pub fn record(seq: u64) -> Bytes {
    let mut b = vec![0u8; BLOCK];
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(seq ^ (i as u64) << 40).to_le_bytes());
    }
    Bytes::from(b)
}

pub async fn connect(socket: &Path, export: &str) -> NbdClient {
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
pub async fn write_until_failure(c: NbdClient, stop: Arc<AtomicBool>) -> u64 {
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
