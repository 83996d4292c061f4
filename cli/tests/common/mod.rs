//! Test harness: real `metrodr orchestrator`, `agent` and `volume` processes on
//! loopback (port 0, addresses from each process's first stdout line) or inside
//! network namespaces, started and held by PID through the `lab` crate (they die with
//! the test binary), driven through the real CLI and the operator gRPC client
//! ([`cli`]). The lab cluster of the failover tests is [`agent_lab`].
//!
//! Never: a bare sleep for a condition (use [`wait_for`]), or a process this harness
//! does not hold.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod agent_lab;
pub mod cli;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

pub use cli::*;
use lab::daemons::{AgentSpec, Binary, NodeSpec, Place, write_config};
use lab::procs::{Proc, Rest};

pub const BIN: &str = env!("CARGO_BIN_EXE_metrodr");

/// The metrodr binary under test.
pub fn bin() -> Binary {
    Binary::at(BIN)
}

/// Cluster tests start several processes each; run them one at a time so that
/// elections are not slowed by the machine being busy with other clusters.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn minimal_topology() -> PathBuf {
    root().join("examples/minimal.toml")
}

/// The lab's one polling wait, failing the test (with what it waited for) at the
/// deadline.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    lab::wait(within, what, f)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One orchestrator process.
pub struct NodeProc {
    pub name: String,
    pub proc: Option<Proc>,
    pub grpc: String,
    pub http: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// The lab node (network namespace) it runs in, if any.
    pub netns: Option<String>,
}

impl NodeProc {
    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// Not stopped by the test.
    pub fn running(&self) -> bool {
        self.proc.is_some()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// SIGSTOP: it hangs where it is.
    pub fn pause(&mut self) {
        if let Some(p) = &mut self.proc {
            p.pause()
                .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)));
        }
    }

    /// SIGCONT what [`NodeProc::pause`] stopped.
    pub fn resume(&mut self) {
        if let Some(p) = &mut self.proc {
            p.resume()
                .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)));
        }
    }

    /// SIGTERM, then wait for a clean exit (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(10));
        }
    }
}

/// Write a node config and start the process; wait for its "listening" line.
pub fn start_node(
    dir: &Path,
    name: &str,
    listen: &str,
    netns: Option<(&str, &chaos::netns::NetLab)>,
) -> NodeProc {
    start_node_with(dir, name, listen, netns, None)
}

/// [`start_node`] with mutual TLS (its `[tls]` files).
pub fn start_node_with(
    dir: &Path,
    name: &str,
    listen: &str,
    netns: Option<(&str, &chaos::netns::NetLab)>,
    tls: Option<security::TlsFiles>,
) -> NodeProc {
    let data_dir = dir.join(name);
    let config = dir.join(format!("{name}.toml"));
    // One cluster signing key for every node of the test cluster (reports).
    let key = dir.join("cluster.key");
    if !key.exists() {
        drills::generate_key_file(&key).unwrap();
    }
    let host = listen.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
    let spec = NodeSpec {
        name: name.to_string(),
        data_dir: data_dir.clone(),
        listen: listen.to_string(),
        http_listen: Some(format!("{host}:0")),
        signing_key: Some(key),
        tls,
    };
    write_config(&config, &spec).unwrap();
    let place = match netns {
        Some((node, lab)) => Place::Site(lab, node),
        None => Place::Here,
    };
    let log = dir.join(format!("{name}.log"));
    let (proc, at) = bin()
        .node(name, &config, &log, place, Some("warn,orchestrator=info"))
        .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)));
    NodeProc {
        name: name.to_string(),
        proc: Some(proc),
        grpc: at.grpc,
        http: at.http.unwrap_or_default(),
        config,
        data_dir,
        netns: netns.map(|(n, _)| n.to_string()),
    }
}

/// Restart a stopped node on the same address and data directory.
pub fn restart(dir: &Path, old: &mut NodeProc, lab: Option<&chaos::netns::NetLab>) {
    let name = old.name.clone();
    let grpc = old.grpc.clone();
    old.kill();
    let netns = old.netns.clone();
    let place = lab.zip(netns.as_deref()).map(|(l, n)| (n, l));
    *old = start_node(dir, &name, &grpc, place);
}

/// A three-node cluster (orch-a, orch-b, orch-w) formed from examples/minimal.toml.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
}

/// When a test fails, its processes' logs are the evidence: keep a copy of the
/// directory's `*.log` files before the temporary directory goes.
pub fn keep_logs_if_panicking(dir: &Path) {
    if !std::thread::panicking() {
        return;
    }
    let keep = std::env::temp_dir().join(format!(
        "metrodr-failed-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    ));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let _ = std::fs::create_dir_all(&keep);
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") {
            let _ = std::fs::copy(&p, keep.join(e.file_name()));
        }
    }
    eprintln!("the failed test's logs are kept in {}", keep.display());
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        keep_logs_if_panicking(self.dir.path());
    }
}

impl TestCluster {
    pub fn start() -> TestCluster {
        Self::start_named(&["orch-a", "orch-b", "orch-w"])
    }

    /// Nodes with these names (as the topology's `[[orchestrator]]` ids).
    pub fn start_named(names: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes = names
            .iter()
            .map(|n| start_node(dir.path(), n, "127.0.0.1:0", None))
            .collect();
        TestCluster { dir, nodes }
    }

    pub fn init(&self) {
        self.init_with(&minimal_topology());
    }

    pub fn init_with(&self, topology: &Path) {
        let topo = topology.display().to_string();
        let mut args = vec![
            "cluster".to_string(),
            "init".into(),
            "--topology".into(),
            topo,
        ];
        for n in &self.nodes {
            args.push("--addr".into());
            args.push(format!("{}={}", n.name, n.grpc));
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = metrodr(&a);
        assert!(o.status.success(), "cluster init failed: {}", text(&o));
    }

    pub fn addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.grpc.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&self, name: &str) -> &NodeProc {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    pub fn node_mut(&mut self, name: &str) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }
}

/// One agent process.
pub struct AgentProc {
    pub host: String,
    pub proc: Option<Proc>,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

impl AgentProc {
    /// SIGKILL and reap (its VMs on the test driver die with it).
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// SIGTERM and wait (the VMs keep running).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(30));
        }
    }

    pub fn journal(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("journal.jsonl")).unwrap_or_default()
    }
}

/// Write an agent config and start `metrodr agent`.
pub fn start_agent(
    dir: &Path,
    host: &str,
    cluster: &str,
    libvirt_uri: &str,
    netns: Option<(&str, &chaos::netns::NetLab)>,
) -> AgentProc {
    let spec = AgentSpec::new(dir, host, cluster, libvirt_uri);
    let config = dir.join(format!("agent-{host}.toml"));
    write_config(&config, &spec).unwrap();
    spawn_agent(dir, host, &config, &spec.state_dir, netns)
}

/// Start `metrodr agent` on an existing config.
pub fn spawn_agent(
    dir: &Path,
    host: &str,
    config: &Path,
    state_dir: &Path,
    netns: Option<(&str, &chaos::netns::NetLab)>,
) -> AgentProc {
    let place = match netns {
        Some((node, lab)) => Place::Site(lab, node),
        None => Place::Here,
    };
    let log = dir.join(format!("agent-{host}.log"));
    let proc = bin()
        .agent(host, config, &log, place, Some("warn,agent=info"))
        .unwrap_or_else(|e| {
            panic!(
                "{}\n{}",
                lab::error::chain(&e),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    AgentProc {
        host: host.to_string(),
        proc: Some(proc),
        config: config.to_path_buf(),
        state_dir: state_dir.to_path_buf(),
        log,
    }
}

/// One `metrodr volume serve|replica` process: its JSON lines are kept (the lab
/// reads them so the pipe never fills); stderr goes to `<dir>/<name>.log`.
pub struct VolProc {
    pub name: String,
    pub proc: Option<Proc>,
    pub ready: serde_json::Value,
    pub log: PathBuf,
}

impl VolProc {
    pub fn pid(&self) -> i32 {
        self.proc.as_ref().and_then(Proc::pid).unwrap_or(0)
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        self.proc.as_ref().map(Proc::lines).unwrap_or_default()
    }

    /// The latest `status` line.
    pub fn status(&self) -> serde_json::Value {
        self.lines()
            .into_iter()
            .rev()
            .find(|l| l["event"] == "status")
            .unwrap_or_default()
    }

    /// Wait until a status line satisfies `f`; panics with the log after `within`.
    pub fn wait_status(
        &self,
        within: Duration,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        lab::wait_blocking(within, what, || Some(self.status()).filter(|s| f(s))).unwrap_or_else(
            |e| {
                panic!(
                    "{}: {e}; last status {}\nlog:\n{}",
                    self.name,
                    self.status(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            },
        )
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// SIGTERM, wait for the exit, and return the `stopped` line.
    pub fn stop(&mut self) -> serde_json::Value {
        let Some(mut p) = self.proc.take() else {
            return serde_json::Value::Null;
        };
        let status = p.terminate(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "{} exited with {status:?}\nlog:\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        // The reader thread may take a moment to see the last line.
        lab::wait_blocking(Duration::from_secs(2), "the stopped line", || {
            p.lines().into_iter().find(|l| l["event"] == "stopped")
        })
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}\nlog:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }
}

/// Start `metrodr volume <args>` and wait for its `ready` line.
pub fn start_volume(dir: &Path, name: &str, args: &[&str]) -> VolProc {
    let log = dir.join(format!("{name}.log"));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (proc, mut ready) = bin()
        .volume(
            name,
            &args,
            &log,
            Some("warn,replication=info,metrodr=info"),
            Rest::Keep,
        )
        .unwrap_or_else(|e| {
            panic!(
                "{}\nlog:\n{}",
                lab::error::chain(&e),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    ready.insert("event".into(), "ready".into());
    VolProc {
        name: name.to_string(),
        proc: Some(proc),
        ready: serde_json::Value::Object(ready),
        log,
    }
}

/// Fail a test that needs something the machine lacks, loudly.
pub fn banner(what: &str) -> ! {
    panic!(
        "\n\n####################################################################\n\
         #### {what}\n\
         ####################################################################\n\n"
    )
}

#[allow(unused_imports)]
pub use chaos::guest::virsh;

/// Destroys and undefines a test's domain on the machine's libvirtd however the test
/// ends.
pub struct DomainGuard(pub String);

impl Drop for DomainGuard {
    fn drop(&mut self) {
        chaos::guest::remove_domain(&self.0);
    }
}

/// Wait until the probe guest's console log at `path` satisfies `f`.
pub async fn wait_console(
    path: &Path,
    what: &str,
    within: Duration,
    f: impl Fn(&chaos::guest::ConsoleLog) -> bool,
) -> chaos::guest::ConsoleLog {
    let p = path.to_path_buf();
    let f = &f;
    wait_for(within, what, || {
        let p = p.clone();
        async move {
            let log = chaos::guest::parse_console(&std::fs::read_to_string(&p).unwrap_or_default());
            f(&log).then_some(log)
        }
    })
    .await
}
