//! The lab the failover tests run: the lab crate's cluster on loopback (three
//! orchestrator nodes, an agent per host on libvirt's test driver) of
//! examples/lab.toml or a variant of it, without TLS so the tests drive it with the
//! plain CLI; and the lab crate's acknowledged-writes workload on a primary's socket,
//! as QEMU would write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::*;

pub const NODES: [&str; 3] = ["orch-north", "orch-south", "orch-witness"];
pub const HOSTS: [&str; 4] = ["north-h1", "north-h2", "south-h1", "south-h2"];
pub const VMS: [&str; 6] = ["db-1", "api-1", "api-2", "portal-1", "archive-1", "mail-1"];

pub struct Lab {
    pub inner: lab::Lab,
    /// Every node's address, `a,b,c` (for `--cluster`).
    pub addrs: String,
    /// Declared last: the processes stop before the directory goes.
    tmp: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        keep_logs_if_panicking(self.tmp.path());
    }
}

/// The lab's options in the tests: plain gRPC, `/metrics`, the tests' log filters.
fn options() -> lab::Options {
    lab::Options {
        namespaces: false,
        tls: false,
        http: true,
        node_log: Some("warn,orchestrator=info".into()),
        agent_log: Some("warn,agent=info".into()),
        user_network: false,
        actor: "tester@ci".into(),
    }
}

impl Lab {
    /// examples/lab.toml with every replica up to date and every VM running.
    pub async fn start() -> Lab {
        Lab::start_with(&root().join("examples/lab.toml")).await
    }

    /// A lab from `topology` (examples/lab.toml's sites, hosts and VMs, its volumes
    /// served by the agents).
    pub async fn start_with(topology: &Path) -> Lab {
        let text = std::fs::read_to_string(topology).unwrap();
        let lab = Lab::nodes_and_agents(&text).await;
        // The controller serves every secondary, then every primary towards it; the
        // primaries' initial sync makes the other site's replicas up to date.
        lab.inner
            .wait_replicas(Duration::from_secs(40))
            .await
            .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)));
        lab.start_every_vm().await;
        lab
    }

    /// The nodes formed into a cluster of `text` and every agent registered; no VM
    /// started yet.
    pub async fn nodes_and_agents(text: &str) -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let within = Duration::from_secs(15);
        let inner = lab::Lab::with_agents(tmp.path(), text, bin(), options(), within)
            .await
            .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)));
        let addrs = inner.addrs().join(",");
        Lab { inner, addrs, tmp }
    }

    /// Define and start every VM where the cluster places it; wait until each is
    /// reported running.
    pub async fn start_every_vm(&self) {
        self.inner
            .start_every_vm()
            .await
            .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)));
    }

    /// The lab's directory (configs, data, logs).
    pub fn dir(&self) -> &Path {
        self.tmp.path()
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

    /// The address of node `name`.
    pub fn addr(&self, name: &str) -> String {
        self.inner
            .member(name)
            .and_then(|m| m.grpc.clone())
            .unwrap_or_else(|| panic!("no node {name} in the lab"))
    }

    /// The socket of `app`'s group on the host serving its replica at `site`.
    pub fn socket(&self, volume: &str, app: &str, site: &str) -> PathBuf {
        let vol = self.volume(volume);
        let host = replica(&vol, site)["host"].as_str().unwrap().to_string();
        self.inner.socket(&host, app)
    }

    /// SIGKILL every process of `site` at once.
    pub fn kill_site(&mut self, site: &str) {
        self.inner.kill_site(site);
    }

    /// Start `site`'s killed processes again on their data directories.
    pub fn restart_site(&mut self, site: &str) {
        self.inner
            .restart_site(site)
            .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)));
    }

    fn member(&mut self, name: &str) -> &mut lab::cluster::Member {
        self.inner
            .member_mut(name)
            .unwrap_or_else(|| panic!("no {name} in the lab"))
    }

    /// SIGKILL the process `name` (a node or an agent).
    pub fn kill(&mut self, name: &str) {
        self.member(name).kill();
    }

    /// SIGSTOP the process `name`: it hangs where it is.
    pub fn pause(&mut self, name: &str) {
        let paused = self.member(name).pause();
        paused.unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)));
    }

    /// SIGCONT what [`Lab::pause`] stopped.
    pub fn resume(&mut self, name: &str) {
        let resumed = self.member(name).resume();
        resumed.unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)));
    }

    /// The address of a node still running.
    pub fn live(&self) -> String {
        self.inner
            .nodes()
            .find(|m| m.is_running())
            .and_then(|m| m.grpc.clone())
            .unwrap()
    }

    /// The first node's address (running or not).
    pub fn first(&self) -> String {
        self.addr(NODES[0])
    }

    /// The PIDs of the orchestrator nodes still running.
    pub fn node_pids(&self) -> Vec<i32> {
        self.inner.nodes().filter_map(|m| m.pid()).collect()
    }

    pub async fn wait_op(&self, op: u64, within: Duration) -> Value {
        wait_op(&self.addrs, op, within).await
    }

    /// The last lines of every agent's log, for a failure message.
    pub fn agent_logs(&self) -> String {
        let mut out = String::new();
        for m in self
            .inner
            .members
            .iter()
            .filter(|m| m.kind == lab::cluster::Kind::Agent)
        {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!(
                "--- agent {} ({})\n{}\n",
                m.name,
                m.log.display(),
                tail.join("\n")
            ));
        }
        out
    }

    /// The automatic failover of `site`, once a node still running lists it.
    pub async fn site_lost_op(&self, site: &str, within: Duration) -> u64 {
        let live = self.live();
        wait_for(within, &format!("the automatic failover of {site}"), || {
            let a = live.clone();
            async move {
                let c = client(&a).await?;
                Some(lab::api::site_lost_failover(&c, site).await?.id.0)
            }
        })
        .await
    }
}

/// The acknowledged-writes workload: one writer with forced unit access on `socket`,
/// round and round the volume until stopped or until a write fails.
pub async fn writer(socket: &Path, export: &str) -> lab::workload::Writers {
    let c = lab::workload::connect(socket, export)
        .await
        .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)));
    let blocks = c.size() / lab::workload::BLOCK;
    lab::workload::Writers::start(
        c,
        lab::workload::Spec {
            writers: 1,
            blocks,
            once: false,
            fua: true,
        },
    )
}

/// How many acknowledged writes are not found through `socket`.
pub async fn missing(socket: &Path, export: &str, acked: &lab::workload::Acked) -> u64 {
    let c = lab::workload::connect(socket, export)
        .await
        .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)));
    lab::workload::missing(&c, acked)
        .await
        .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)))
}
