//! Test harness: real `metrodr orchestrator` processes on loopback (port 0, addresses
//! read from each process's first stdout line) or inside network namespaces, driven
//! through the real CLI and the operator gRPC client. Every process is killed by PID
//! when the harness is dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod agent_lab;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use orchestrator::client::Client;
use orchestrator::pb;

pub const BIN: &str = env!("CARGO_BIN_EXE_metrodr");

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

/// One orchestrator process.
pub struct NodeProc {
    pub name: String,
    pub child: Option<Child>,
    pub grpc: String,
    pub http: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// Network namespace it runs in (lab tests), if any.
    pub netns: Option<String>,
}

impl NodeProc {
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Write a node config and start the process; wait for its "listening" line.
pub fn start_node(
    dir: &Path,
    name: &str,
    listen: &str,
    netns: Option<(&str, &chaos::netns::NetLab)>,
) -> NodeProc {
    start_node_with(dir, name, listen, netns, "")
}

/// [`start_node`] with more config lines (e.g. a `[tls]` section).
pub fn start_node_with(
    dir: &Path,
    name: &str,
    listen: &str,
    netns: Option<(&str, &chaos::netns::NetLab)>,
    extra: &str,
) -> NodeProc {
    let data_dir = dir.join(name);
    let config = dir.join(format!("{name}.toml"));
    // One cluster signing key for every node of the test cluster (reports).
    let key = dir.join("cluster.key");
    if !key.exists() {
        drills::generate_key_file(&key).unwrap();
    }
    std::fs::write(
        &config,
        format!(
            "name = \"{name}\"\ndata_dir = \"{}\"\nlisten = \"{listen}\"\nhttp_listen = \"{}:0\"\nsigning_key = \"{}\"\n{extra}",
            data_dir.display(),
            listen.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h),
            key.display()
        ),
    )
    .unwrap();
    let mut cmd = match netns {
        Some((node, lab)) => lab.command(node, BIN),
        None => Command::new(BIN),
    };
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut child = cmd
        .args(["orchestrator", "--config"])
        .arg(&config)
        .env("METRODR_LOG", "warn,orchestrator=info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn metrodr orchestrator");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        panic!("{name} did not start ({e}): stdout {line:?}\nlog:\n{log}")
    });
    NodeProc {
        name: name.to_string(),
        child: Some(child),
        grpc: v["grpc"].as_str().unwrap().to_string(),
        http: v["http"].as_str().unwrap_or_default().to_string(),
        config,
        data_dir,
        netns: netns.map(|(n, lab)| lab.ns_name(n).to_string()),
    }
}

/// Restart a stopped node on the same address and data directory.
pub fn restart(dir: &Path, old: &mut NodeProc, lab: Option<&chaos::netns::NetLab>) {
    let name = old.name.clone();
    let grpc = old.grpc.clone();
    old.kill();
    let netns = lab.map(|l| {
        let node = l
            .nodes()
            .find(|n| l.ns_name(n) == old.netns.as_deref().unwrap_or_default())
            .unwrap()
            .to_string();
        (node, l)
    });
    *old = start_node(
        dir,
        &name,
        &grpc,
        netns.as_ref().map(|(n, l)| (n.as_str(), *l)),
    );
}

/// Run the CLI.
pub fn metrodr(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .env("METRODR_ACTOR", "tester@ci")
        .output()
        .expect("run metrodr")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A three-node cluster (orch-a, orch-b, orch-w) formed from examples/minimal.toml.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
}

/// When a test fails, its processes' logs are the evidence: keep a copy of the
/// cluster's directory (its `*.log` files) before the temporary directory goes.
impl Drop for TestCluster {
    fn drop(&mut self) {
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
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
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

pub async fn status(addr: &str) -> Option<pb::StatusReply> {
    let c = Client::connect_to(addr).await.ok()?;
    let mut op = c.op.clone();
    tokio::time::timeout(Duration::from_secs(2), op.status(pb::StatusRequest {}))
        .await
        .ok()?
        .ok()
        .map(|r| r.into_inner())
}

/// Poll until `f` returns Some, or fail after `within`.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The leader's name as seen by `addr`, once one is known.
pub async fn leader_seen_by(addr: &str, within: Duration) -> String {
    let a = addr.to_string();
    wait_for(within, "a leader", move || {
        let a = a.clone();
        async move { status(&a).await.map(|s| s.leader).filter(|l| !l.is_empty()) }
    })
    .await
}

/// Write an audit note through `addr` (any node).
pub async fn note(addr: &str, text: &str) -> Result<pb::WriteReply, tonic::Status> {
    let c = Client::connect_to(addr)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut op = c.op.clone();
    op.note(pb::NoteRequest {
        text: text.into(),
        actor: "tester@ci".into(),
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn audit(addr: &str) -> Vec<pb::AuditEntry> {
    let c = Client::connect_to(addr).await.unwrap();
    let mut op = c.op.clone();
    op.audit_list(pb::AuditListRequest {
        from_seq: 0,
        limit: 10_000,
    })
    .await
    .unwrap()
    .into_inner()
    .entries
}

/// One agent process.
pub struct AgentProc {
    pub host: String,
    pub child: Option<Child>,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

impl AgentProc {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (the VMs keep running).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    pub fn journal(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("journal.jsonl")).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
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
    let state_dir = dir.join(format!("agent-{host}"));
    let config = dir.join(format!("agent-{host}.toml"));
    std::fs::write(
        &config,
        format!(
            "host = \"{host}\"\ncluster = \"{cluster}\"\nlibvirt_uri = \"{libvirt_uri}\"\nstate_dir = \"{}\"\n",
            state_dir.display()
        ),
    )
    .unwrap();
    spawn_agent(dir, host, &config, &state_dir, netns)
}

pub fn spawn_agent(
    dir: &Path,
    host: &str,
    config: &Path,
    state_dir: &Path,
    netns: Option<(&str, &chaos::netns::NetLab)>,
) -> AgentProc {
    let mut cmd = match netns {
        Some((node, lab)) => lab.command(node, BIN),
        None => Command::new(BIN),
    };
    let log = dir.join(format!("agent-{host}.log"));
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut child = cmd
        .args(["agent", "--config"])
        .arg(config)
        .env("METRODR_LOG", "warn,agent=info")
        .stdout(Stdio::piped())
        .stderr(logf)
        .spawn()
        .expect("spawn metrodr agent");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    assert!(
        line.contains("\"started\""),
        "agent {host} did not start: {line:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    AgentProc {
        host: host.to_string(),
        child: Some(child),
        config: config.to_path_buf(),
        state_dir: state_dir.to_path_buf(),
        log,
    }
}

pub async fn hosts(addr: &str) -> Vec<pb::HostInfo> {
    let c = Client::connect_to(addr).await.unwrap();
    let mut op = c.op.clone();
    op.list_hosts(pb::ListHostsRequest {})
        .await
        .map(|r| r.into_inner().hosts)
        .unwrap_or_default()
}

pub async fn host_state(addr: &str, host: &str) -> Option<String> {
    hosts(addr)
        .await
        .into_iter()
        .find(|h| h.id == host)
        .map(|h| h.state)
}

pub async fn vm_state(addr: &str, vm: &str) -> Option<String> {
    let c = Client::connect_to(addr).await.ok()?;
    let mut op = c.op.clone();
    let r = op.list_vms(pb::ListVmsRequest {}).await.ok()?.into_inner();
    r.vms.into_iter().find(|v| v.vm == vm).map(|v| v.state)
}

/// Run a VM action through the API and wait for its result.
pub async fn vm_do(addr: &str, action: &str, vm: &str) -> pb::VmActionReply {
    let c = Client::connect_to(addr).await.unwrap();
    let mut op = c.op.clone();
    op.vm_action(pb::VmActionRequest {
        vm: vm.into(),
        action: action.into(),
        timeout_s: 20,
        wait: true,
        actor: "tester@ci".into(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// One `metrodr volume serve|replica` process. A thread reads its JSON lines (so the
/// pipe never fills) and keeps them; stderr goes to `<dir>/<name>.log`.
pub struct VolProc {
    pub name: String,
    pub child: Option<Child>,
    pub lines: std::sync::Arc<Mutex<Vec<serde_json::Value>>>,
    pub ready: serde_json::Value,
    pub log: PathBuf,
}

impl VolProc {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// The latest `status` line.
    pub fn status(&self) -> serde_json::Value {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| l["event"] == "status")
            .cloned()
            .unwrap_or_default()
    }

    /// Wait until a status line satisfies `f`; panics with the log after `within`.
    pub fn wait_status(
        &self,
        within: Duration,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let st = self.status();
            if f(&st) {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; last status {st}\nlog:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait for the exit, and return the `stopped` line.
    pub fn stop(&mut self) -> serde_json::Value {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "{} exited with {status}\nlog:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        // The reader thread may take a moment to see the last line.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l["event"] == "stopped")
            {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no stopped line\nlog:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for VolProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Start `metrodr volume <args>` and wait for its `ready` line.
pub fn start_volume(dir: &Path, name: &str, args: &[&str]) -> VolProc {
    let log = dir.join(format!("{name}.log"));
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut child = Command::new(BIN)
        .arg("volume")
        .args(args)
        .env("METRODR_LOG", "warn,replication=info,metrodr=info")
        .stdout(Stdio::piped())
        .stderr(logf)
        .spawn()
        .expect("spawn metrodr volume");
    let stdout = child.stdout.take().unwrap();
    let lines = std::sync::Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let keep = lines.clone();
    std::thread::spawn(move || {
        let mut first = Some(tx);
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            let v: serde_json::Value =
                serde_json::from_str(&l).unwrap_or(serde_json::Value::String(l));
            if let Some(tx) = first.take() {
                let _ = tx.send(v.clone());
            }
            keep.lock().unwrap().push(v);
        }
    });
    let ready = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(v) if v["event"] == "ready" => v,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} did not start: {other:?}\nlog:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        }
    };
    VolProc {
        name: name.to_string(),
        child: Some(child),
        lines,
        ready,
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

/// `metrodr --cluster ADDRS -o json ARGS`.
pub fn cli_run(addrs: &str, args: &[&str]) -> Output {
    let mut a = vec!["--cluster", addrs, "-o", "json"];
    a.extend_from_slice(args);
    metrodr(&a)
}

/// [`cli_run`], which must succeed and print JSON.
pub fn cli_json(addrs: &str, args: &[&str]) -> serde_json::Value {
    let o = cli_run(addrs, args);
    assert!(o.status.success(), "metrodr {args:?} failed: {}", text(&o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("metrodr {args:?}: not JSON ({e}): {}", text(&o)))
}

/// One volume of `volume list`.
pub fn volume_json(addrs: &str, id: &str) -> serde_json::Value {
    cli_json(addrs, &["volume", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .cloned()
        .unwrap()
}

/// A volume's replica at `site`.
pub fn replica<'v>(vol: &'v serde_json::Value, site: &str) -> &'v serde_json::Value {
    vol["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["site"] == site)
        .unwrap()
}

/// Poll `op show` until the operation ends (a leader change may make reads fail for a
/// moment).
pub async fn wait_op(addrs: &str, op: u64, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let o = cli_run(addrs, &["op", "show", &op.to_string()]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout)
            && v["status"] != "running"
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "op-{op} still running after {within:?}: {}",
            text(&o)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
