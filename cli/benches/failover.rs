//! The failover benchmark: **site loss → last app healthy** with real processes, for
//! 1, 10, 100 and 1,000 apps, and where the time goes.
//!
//! Per size, in a fresh directory under /var/tmp with fresh processes: three
//! `metrodr orchestrator` nodes (north, south, witness), an agent per host on libvirt's
//! test driver (`test:///private`: each agent its own fake hypervisor, living inside the
//! agent process), a generated topology (2 hosts per production site; N apps preferred
//! at north over 3 tiers with a `depends_on` chain per 10 apps, one 1-vCPU VM each,
//! `failover = "auto"`). Every VM is defined and started at north through the VmAction
//! API, then the north orchestrator and both north agents are SIGKILLed at T0 (their
//! test-driver VMs die with them). The bench follows the automatic failover the leader
//! begins and reads its record: when north was declared down, when the plan began, how
//! long promotions, VM starts and health gates took, and when the last app was healthy
//! (its health gate ended), all against T0 on the same wall clock. Where the time went:
//! per wave, when its promotions, VM starts and health gates began and ended; the Raft
//! entries the failover committed; the time the surviving nodes spent applying them
//! (their `metrodr_apply_seconds`); the CPU each surviving process used; and what the
//! final operation record costs to copy and serialize (the state machine does both as
//! the operation grows).
//!
//! The apps have no volumes: their VMs boot a kernel directly (`boot = "kernel"`; the
//! test driver never reads the file), so nothing needs replication processes and the
//! numbers are the control plane's: detection, Raft commits, planning, agent commands.
//! `boot_estimate_s = 1` because a test-driver domain is "running" as soon as it starts.
//!
//! **Real guests** (`BENCH_QEMU_GUESTS`, default 2,4): the same story with QEMU (TCG)
//! probe guests on this machine's libvirtd (`qemu:///system`; all four agents share
//! it, each domain marked with its host): the topology says `volumes = "agents"`, so
//! each app's 16 MiB disk is served by the agent of its VM's host and replicated
//! synchronously to a south agent; each guest boots a kernel and writes acknowledged
//! records. T0 also SIGKILLs the guests' QEMU processes (they die with their site). A
//! guest is healthy when its health gate passed at south: its serial console says
//! `metrodr-probe: ready` and its web service (port 80, through the agent's user-mode
//! forward) completed a TCP handshake; and the bench checks that it found every record it had
//! acknowledged at north on the promoted disk. The guests are independent tier-1 apps
//! (1 vCPU, 256 MiB each). Needs libvirtd
//! (`scripts/start-libvirtd.sh`) and the probe guest image (built at first use);
//! without them those rows FAIL loudly. `BENCH_QEMU_GUESTS=` skips them.
//!
//! Run with `cargo bench -p metrodr --bench failover`; `BENCH_SIZES=1,10` selects the
//! sizes (default 1,10,100,1000). Targets: the first app healthy within 10 s of the
//! loss, every app within 15 s. Exits non-zero when a failover fails or misses a target.
//! Every process it starts is stopped by PID when its size is done.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orchestrator::client::Client;
use orchestrator::pb;
use orchestrator::state::{OpStatus, Operation, Step, StepKind};

const BIN: &str = env!("CARGO_BIN_EXE_metrodr");
const NODES: [&str; 3] = ["orch-north", "orch-south", "orch-witness"];
const HOSTS: [&str; 4] = ["north-h1", "north-h2", "south-h1", "south-h2"];
const ACTOR: &str = "bench@failover";
/// VmAction requests in flight while the VMs are set up at north.
const SETUP_CONCURRENCY: usize = 64;
/// How often the bench reads the operation while it runs. Each read serializes the
/// whole operation on the answering node (685 KiB of JSON at 1,000 apps) under the
/// state's read lock, so large runs read less often; the timings come from the record,
/// only "bench saw it ended" depends on this.
fn poll_interval(apps: usize) -> Duration {
    if apps > 100 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(200)
    }
}
const FIRST_TARGET_MS: u64 = 10_000;
const LAST_TARGET_MS: u64 = 15_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A process stopped by PID when dropped (SIGTERM, then SIGKILL after 15 s).
struct Proc {
    child: Option<Child>,
    name: String,
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL without reaping (the caller reaps with [`Proc::reap`]).
    fn sigkill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
    }

    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Start `metrodr ARGS` with stderr to `<dir>/<name>.log` and return it with its first
/// stdout line (a JSON "ready" line); a thread drains the rest.
fn spawn(dir: &Path, name: &str, args: &[&str], log_filter: &str) -> (Proc, String) {
    let log = dir.join(format!("{name}.log"));
    let mut child = Command::new(BIN)
        .args(args)
        .env("METRODR_LOG", log_filter)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next().and_then(Result::ok).unwrap_or_default());
        for _ in lines {}
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let p = Proc {
        child: Some(child),
        name: name.to_string(),
    };
    if line.is_empty() {
        drop(p);
        panic!(
            "{name} did not start; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    (p, line)
}

struct NodeProc {
    proc_: Proc,
    grpc: String,
    http: String,
}

fn start_node(dir: &Path, name: &str) -> NodeProc {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "name = \"{name}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n",
            dir.join(name).display()
        ),
    )
    .unwrap();
    let (p, line) = spawn(
        dir,
        name,
        &["orchestrator", "--config", &config.display().to_string()],
        "warn,orchestrator=info",
    );
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{name}: {e}: {line:?}"));
    NodeProc {
        proc_: p,
        grpc: v["grpc"].as_str().unwrap().to_string(),
        http: v["http"].as_str().unwrap_or_default().to_string(),
    }
}

fn start_agent(dir: &Path, host: &str, cluster: &str, qemu: bool) -> Proc {
    let config = dir.join(format!("agent-{host}.toml"));
    let hv = if qemu {
        "libvirt_uri = \"qemu:///system\"\ndisk_backend = \"nbd\"\ndomain_type = \"qemu\"\n\
         guest_network = \"user\"\n"
    } else {
        "libvirt_uri = \"test:///private\"\n"
    };
    std::fs::write(
        &config,
        format!(
            "host = \"{host}\"\ncluster = \"{cluster}\"\n{hv}state_dir = \"{}\"\n",
            dir.join(format!("agent-{host}")).display()
        ),
    )
    .unwrap();
    let (p, line) = spawn(
        dir,
        &format!("agent-{host}"),
        &["agent", "--config", &config.display().to_string()],
        "warn,agent=info",
    );
    assert!(line.contains("\"started\""), "agent {host}: {line:?}");
    p
}

/// The topology for `n` apps (see the module header); with `guest`, real probe guests
/// on disks the agents serve.
fn topology(n: usize, guest: Option<&chaos::guest::GuestImage>) -> String {
    let mut t = String::from(
        "# Generated by cli/benches/failover.rs. Orchestrator addresses are placeholders:\n\
         # `cluster init --addr` gives the real ones.\n\n[cluster]\nname = \"failover-bench\"\n",
    );
    if guest.is_some() {
        t.push_str("volumes = \"agents\"\n");
    }
    t.push('\n');
    let uri = if guest.is_some() {
        "qemu:///system"
    } else {
        "test:///private"
    };
    for (id, role) in [
        ("north", "production"),
        ("south", "production"),
        ("witness", "witness"),
    ] {
        writeln!(t, "[[site]]\nid = \"{id}\"\nrole = \"{role}\"\n").unwrap();
    }
    for (i, site) in ["north", "south", "witness"].iter().enumerate() {
        writeln!(
            t,
            "[[orchestrator]]\nid = \"orch-{site}\"\nsite = \"{site}\"\naddr = \"127.0.0.1:{}\"\n",
            7411 + i
        )
        .unwrap();
    }
    for (i, host) in HOSTS.iter().enumerate() {
        let site = host.split('-').next().unwrap();
        writeln!(
            t,
            "[[host]]\nid = \"{host}\"\nsite = \"{site}\"\nlibvirt_uri = \"{uri}\"\n\
             agent_addr = \"127.0.0.1:{}\"\nvcpus = 2048\nmemory = \"8TiB\"\n",
            7511 + i
        )
        .unwrap();
    }
    for i in 0..n {
        // A chain per 10 apps: app 10k+2 (tier 3) <- 10k+1 (tier 2) <- 10k (tier 1);
        // the others round-robin over the tiers.
        let tier = match i % 10 {
            0..=2 => 1 + i % 10,
            _ => 1 + i % 3,
        };
        let deps = if matches!(i % 10, 1 | 2) {
            format!("depends_on = [\"{}\"]\n", app_id(i - 1))
        } else {
            String::new()
        };
        let Some(img) = guest else {
            writeln!(
                t,
                "[[app]]\nid = \"{}\"\ntier = {tier}\n{deps}preferred_site = \"north\"\n\
                 failover = \"auto\"\nrto_target_s = 15\nrpo_target_s = 0\n\n  [[app.vm]]\n  \
                 id = \"{}\"\n  vcpus = 1\n  memory = \"64MiB\"\n  boot = \"kernel\"\n  \
                 kernel = \"/nonexistent/vmlinuz\"\n  boot_estimate_s = 1\n",
                app_id(i),
                vm_id(i)
            )
            .unwrap();
            continue;
        };
        // Real guests are independent tier-1 apps: each restarts as soon as its disk
        // is promoted (a chain would add a guest boot per link).
        writeln!(
            t,
            "[[app]]\nid = \"{}\"\ntier = 1\npreferred_site = \"north\"\n\
             failover = \"auto\"\nrto_target_s = 15\nrpo_target_s = 0\n\n  [[app.volume]]\n  \
             id = \"{}-disk\"\n  size = \"16MiB\"\n  replication = \"sync\"\n\n  [[app.vm]]\n  \
             id = \"{}\"\n  vcpus = 1\n  memory = \"256MiB\"\n  boot = \"kernel\"\n  \
             kernel = \"{}\"\n  initrd = \"{}\"\n  cmdline = \"{}\"\n  disks = [\"{}-disk\"]\n  \
             boot_estimate_s = 5\n\n  [[app.probe]]\n  kind = \"serial\"\n  marker = \"metrodr-probe: ready\"\n  \
             timeout_s = 60\n\n  [[app.probe]]\n  kind = \"tcp\"\n  port = {}\n  timeout_s = 60\n",
            app_id(i),
            vm_id(i),
            vm_id(i),
            img.kernel.display(),
            img.initrd.display(),
            img.cmdline,
            vm_id(i),
            chaos::guest::SERVICE_PORT
        )
        .unwrap();
    }
    t
}

fn app_id(i: usize) -> String {
    format!("app-{i:04}")
}

fn vm_id(i: usize) -> String {
    format!("vm-{i:04}")
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .env("METRODR_ACTOR", ACTOR)
        .output()
        .expect("run metrodr")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// `metrodr_apply_seconds` (sum, count) from a node's /metrics.
fn apply_seconds(http: &str) -> Option<(f64, f64)> {
    let mut s = std::net::TcpStream::connect(http).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {http}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let get = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((
        get("metrodr_apply_seconds_sum")?,
        get("metrodr_apply_seconds_count")?,
    ))
}

async fn connect(addrs: &[String]) -> Option<Client> {
    for a in addrs {
        if let Ok(c) = Client::connect_to(a).await {
            return Some(c);
        }
    }
    None
}

async fn status(addr: &str) -> Option<pb::StatusReply> {
    let c = Client::connect_to(addr).await.ok()?;
    let mut op = c.op.clone();
    tokio::time::timeout(Duration::from_secs(5), op.status(pb::StatusRequest {}))
        .await
        .ok()?
        .ok()
        .map(|r| r.into_inner())
}

/// Poll `f` until it gives Some, or panic after `within`.
async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Define and start every VM at north, `SETUP_CONCURRENCY` at a time.
async fn start_vms(addr: &str, n: usize) {
    let client = Client::connect_to(addr).await.unwrap();
    let sem = Arc::new(tokio::sync::Semaphore::new(SETUP_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut op = client.op.clone();
        let permit = sem.clone().acquire_owned().await.unwrap();
        set.spawn(async move {
            let _permit = permit;
            for action in ["define", "start"] {
                let r = op
                    .vm_action(pb::VmActionRequest {
                        vm: vm_id(i),
                        action: action.into(),
                        timeout_s: 60,
                        wait: true,
                        actor: ACTOR.into(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{action} {}: {e}", vm_id(i)))
                    .into_inner();
                assert_eq!(
                    r.status,
                    "succeeded",
                    "{action} {}: {}",
                    vm_id(i),
                    r.message
                );
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// VMs whose agent reports them running, with the host that reported them.
async fn running_vms(c: &Client) -> Option<BTreeMap<String, String>> {
    let r =
        c.op.clone()
            .list_vms(pb::ListVmsRequest {})
            .await
            .ok()?
            .into_inner();
    Some(
        r.vms
            .into_iter()
            .filter(|v| v.state == "running")
            .map(|v| (v.vm, v.reported_host))
            .collect(),
    )
}

/// (start, end) in ms since the epoch of every finished step of `kind`.
fn spans(op: &Operation, kind: StepKind) -> Vec<(u64, u64)> {
    op.steps
        .iter()
        .filter(|s| s.kind == kind)
        .filter_map(|s: &Step| s.ended_ms.map(|e| (s.started_ms, e)))
        .collect()
}

/// One size's measurements; times are ms after T0 unless named a duration.
#[derive(Debug, Default)]
struct Row {
    apps: usize,
    /// Real QEMU guests rather than test-driver domains.
    guests: bool,
    serve_span_ms: u64,
    leader_killed: bool,
    site_down_ms: i64,
    plan_begun_ms: i64,
    first_step_ms: i64,
    promote_sum_ms: u64,
    promote_max_ms: u64,
    start_span_ms: u64,
    health_span_ms: u64,
    health_max_ms: u64,
    first_healthy_ms: i64,
    last_healthy_ms: i64,
    ok: bool,
    why: Vec<String>,
}

impl Row {
    fn target_met(&self) -> bool {
        self.ok
            && self.first_healthy_ms != NONE
            && self.first_healthy_ms as u64 <= FIRST_TARGET_MS
            && self.last_healthy_ms != NONE
            && self.last_healthy_ms as u64 <= LAST_TARGET_MS
    }
}

/// "Did not happen" for a time after T0 (a time may be negative: a loss estimate).
const NONE: i64 = i64::MIN;

fn s(ms: i64) -> String {
    if ms == NONE {
        return "-".into();
    }
    format!("{:.2} s", ms as f64 / 1000.0)
}

fn su(ms: u64) -> String {
    s(ms as i64)
}

/// One size's running system: three orchestrators and four agents in a fresh directory.
/// Dropping it stops the processes (agents first), then removes the directory.
struct Lab {
    agents: BTreeMap<&'static str, Proc>,
    nodes: BTreeMap<&'static str, NodeProc>,
    tmp: tempfile::TempDir,
    /// Real guests: their domains (destroyed and undefined by name when dropped) and
    /// what each acknowledged at north before T0.
    guests: Vec<String>,
    acked: BTreeMap<String, u64>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for vm in &self.guests {
            chaos::guest::remove_domain(vm);
        }
    }
}

fn console_log(dir: &Path, host: &str, vm: &str) -> chaos::guest::ConsoleLog {
    let path = dir.join(format!("agent-{host}/consoles/{vm}.log"));
    chaos::guest::parse_console(&std::fs::read_to_string(path).unwrap_or_default())
}

const SURVIVORS: [&str; 2] = ["orch-south", "orch-witness"];

impl Lab {
    /// Validate the topology, start the nodes, form the cluster, start the agents and
    /// define + start every VM at north; returns once all of them run.
    async fn start(n: usize, guest: Option<&chaos::guest::GuestImage>) -> Lab {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("metrodr-failover-bench-{n}-"))
            .tempdir_in("/var/tmp")
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let what = if guest.is_some() {
            "real QEMU guest(s)"
        } else {
            "app(s)"
        };
        println!("\n== {n} {what}: {}", dir.display());
        let topo = dir.join("topology.toml").display().to_string();
        std::fs::write(&topo, topology(n, guest)).unwrap();
        let o = cli(&["topology", "validate", &topo]);
        assert!(o.status.success(), "the generated topology: {}", text(&o));

        let setup = Instant::now();
        let nodes: BTreeMap<&str, NodeProc> =
            NODES.iter().map(|n| (*n, start_node(&dir, n))).collect();
        let mut init = vec![
            "cluster".to_string(),
            "init".into(),
            "--topology".into(),
            topo,
        ];
        for (name, node) in &nodes {
            init.push("--addr".into());
            init.push(format!("{name}={}", node.grpc));
        }
        let o = cli(&init.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "cluster init: {}", text(&o));
        let cluster: Vec<String> = nodes.values().map(|n| n.grpc.clone()).collect();
        let agents: BTreeMap<&str, Proc> = HOSTS
            .iter()
            .map(|h| {
                (
                    *h,
                    start_agent(&dir, h, &cluster.join(","), guest.is_some()),
                )
            })
            .collect();
        let lab = Lab {
            agents,
            nodes,
            tmp,
            guests: if guest.is_some() {
                (0..n).map(vm_id).collect()
            } else {
                Vec::new()
            },
            acked: BTreeMap::new(),
        };
        let c = Client::connect_to(&lab.nodes["orch-south"].grpc)
            .await
            .unwrap();
        wait_for(Duration::from_secs(30), "every host up", || async {
            let mut op = c.op.clone();
            let h = op.list_hosts(pb::ListHostsRequest {}).await.ok()?;
            let h = h.into_inner().hosts;
            (h.len() == HOSTS.len() && h.iter().all(|h| h.state == "up")).then_some(())
        })
        .await;
        if guest.is_some() {
            // The agents serve every group; the initial syncs make south promotable.
            wait_for(
                Duration::from_secs(120),
                "every replica up to date",
                || async {
                    let mut op = c.op.clone();
                    let v = op
                        .list_volumes(pb::ListVolumesRequest { app: String::new() })
                        .await
                        .ok()?
                        .into_inner()
                        .volumes;
                    (v.len() == n
                        && v.iter()
                            .all(|v| v.replicas.iter().all(|r| r.data == "up-to-date")))
                    .then_some(())
                },
            )
            .await;
        }
        let cluster_ready = setup.elapsed();
        start_vms(&c.addr, n).await;
        let commands_done = setup.elapsed();
        let within = Duration::from_secs(60 + n as u64 / 10);
        wait_for(within, "every VM running at north", || async {
            let r = running_vms(&c).await?;
            (r.len() == n && r.values().all(|h| h.starts_with("north-"))).then_some(())
        })
        .await;
        if guest.is_some() {
            let placed = running_vms(&c).await.unwrap_or_default();
            let dir = lab.tmp.path().to_path_buf();
            wait_for(
                Duration::from_secs(120),
                "every guest writing at north",
                || {
                    let (placed, dir) = (&placed, &dir);
                    async move {
                        placed
                            .iter()
                            .all(|(vm, host)| {
                                let l = console_log(dir, host, vm);
                                l.ready && l.acks >= 5
                            })
                            .then_some(())
                    }
                },
            )
            .await;
        }
        println!(
            "setup: cluster + agents {:.1} s; define+start {n} VM(s) {:.1} s; all running after {:.1} s",
            cluster_ready.as_secs_f64(),
            (commands_done - cluster_ready).as_secs_f64(),
            setup.elapsed().as_secs_f64()
        );
        lab
    }

    fn survivor_addrs(&self) -> Vec<String> {
        SURVIVORS
            .iter()
            .map(|s| self.nodes[s].grpc.clone())
            .collect()
    }

    /// T0: north's orchestrator and both its agents die at once (SIGKILL all three,
    /// then reap). Returns T0 in ms since the epoch.
    fn kill_north(&mut self) -> u64 {
        // The guests' QEMU processes (all at north) die with their site: SIGKILL by
        // the PIDs libvirt recorded, together with the rest of north. (`virsh destroy`
        // takes ~1.5 s per TCG guest and would still be killing north's guests when
        // their namesakes start at south.)
        let qemus: Vec<i32> = self
            .guests
            .iter()
            .map(|vm| chaos::guest::qemu_pid(vm).unwrap_or_else(|| panic!("no QEMU pid for {vm}")))
            .collect();
        let t0 = now_ms();
        for pid in &qemus {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let north = self.nodes.get_mut("orch-north").unwrap();
        north.proc_.sigkill();
        for h in ["north-h1", "north-h2"] {
            self.agents.get_mut(h).unwrap().sigkill();
        }
        north.proc_.reap();
        for h in ["north-h1", "north-h2"] {
            self.agents.get_mut(h).unwrap().reap();
        }
        for vm in self.guests.clone() {
            let at_north = ["north-h1", "north-h2"]
                .iter()
                .map(|h| console_log(self.tmp.path(), h, &vm).max_ack.unwrap_or(0))
                .max()
                .unwrap_or(0);
            self.acked.insert(vm, at_north);
        }
        t0
    }

    /// Real guests: each booted at south from the promoted disk found every record it
    /// acknowledged at north (the probe guest prints where it resumes).
    async fn check_guests(&self, addrs: &[String], row: &mut Row) {
        if self.guests.is_empty() {
            return;
        }
        let c = connect(addrs).await.expect("a surviving node");
        let placed = running_vms(&c).await.unwrap_or_default();
        let mut lines = Vec::new();
        for vm in &self.guests {
            let acked = self.acked.get(vm).copied().unwrap_or(0);
            let Some(host) = placed.get(vm) else {
                row.why.push(format!("{vm} is not running anywhere"));
                continue;
            };
            let log = console_log(self.tmp.path(), host, vm);
            let resumed = log.resume_after.last().copied().unwrap_or(0);
            lines.push(format!(
                "{vm}: acknowledged {acked} at north, found {resumed} at {host}"
            ));
            if resumed < acked || acked == 0 {
                row.why.push(format!(
                    "{vm}: acknowledged {acked} records at north but found {resumed} at {host}"
                ));
            }
        }
        println!("  guests: {}", lines.join("; "));
    }
}

type ApplyBefore = (&'static str, String, Option<(f64, f64)>);

/// What the survivors have spent: CPU per process, state-machine apply time per node.
struct Meter {
    cpu: Vec<(String, u32, f64)>,
    /// (node, its /metrics address, apply seconds (sum, count) before).
    apply: Vec<ApplyBefore>,
}

impl Meter {
    fn start(lab: &Lab) -> Meter {
        let mut procs: Vec<(String, u32)> = SURVIVORS
            .iter()
            .map(|s| (s.to_string(), lab.nodes[s].proc_.pid().unwrap()))
            .collect();
        procs.extend(
            ["south-h1", "south-h2"]
                .iter()
                .map(|h| (format!("agent {h}"), lab.agents[h].pid().unwrap())),
        );
        Meter {
            cpu: procs
                .into_iter()
                .map(|(name, pid)| (name, pid, cpu_secs(pid)))
                .collect(),
            apply: SURVIVORS
                .iter()
                .map(|s| {
                    let http = lab.nodes[s].http.clone();
                    let a = apply_seconds(&http);
                    (*s, http, a)
                })
                .collect(),
        }
    }

    fn report(&self, wall: Duration) {
        let cpu: Vec<String> = self
            .cpu
            .iter()
            .map(|(name, pid, before)| format!("{name} {:.2} s", cpu_secs(*pid) - before))
            .collect();
        println!(
            "  CPU used from T0 until the bench saw the end ({:.1} s wall, 2 cores): {}",
            wall.as_secs_f64(),
            cpu.join(", ")
        );
        for (name, http, before) in &self.apply {
            if let (Some(a), Some(b)) = (apply_seconds(http), before) {
                println!(
                    "  {name}: applying committed entries took {:.2} s in {:.0} batches",
                    a.0 - b.0,
                    a.1 - b.1
                );
            }
        }
    }
}

/// The automatic failover as the bench followed it.
struct Followed {
    record: Option<Operation>,
    /// When the bench first saw the operation and saw it ended (ms after T0).
    seen_ms: i64,
    seen_done_ms: i64,
    /// The bench's reads of the running operation: each serializes all of it on the
    /// answering node under the state's read lock, holding off applying entries.
    reads: u32,
    read_time: Duration,
}

/// Follow the automatic failover of north until it ends (or `deadline` after T0).
async fn follow(addrs: &[String], n: usize, t0: u64, deadline: Duration) -> Followed {
    let t0_i = Instant::now();
    let since_t0 = || now_ms() as i64 - t0 as i64;
    let mut f = Followed {
        record: None,
        seen_ms: NONE,
        seen_done_ms: NONE,
        reads: 0,
        read_time: Duration::ZERO,
    };
    let mut op_id = None;
    while t0_i.elapsed() < deadline {
        tokio::time::sleep(poll_interval(n)).await;
        let Some(c) = connect(addrs).await else {
            continue;
        };
        let mut op = c.op.clone();
        let Some(id) = op_id else {
            let Ok(r) = op
                .list_operations(pb::ListOperationsRequest { limit: 5 })
                .await
            else {
                continue;
            };
            let found = r
                .into_inner()
                .operations_json
                .iter()
                .filter_map(|j| serde_json::from_str::<Operation>(j).ok())
                .find(|o| o.note == "site north lost");
            if let Some(o) = found {
                op_id = Some(o.id.0);
                f.seen_ms = since_t0();
            }
            continue;
        };
        let t = Instant::now();
        let Ok(r) = op.get_operation(pb::GetOperationRequest { op: id }).await else {
            continue;
        };
        f.reads += 1;
        f.read_time += t.elapsed();
        let o: Operation = serde_json::from_str(&r.into_inner().operation_json).unwrap();
        if o.status != OpStatus::Running {
            f.seen_done_ms = since_t0();
            f.record = Some(o);
            break;
        }
    }
    f
}

/// Fill `row` from the record and print where the time went.
fn breakdown(
    row: &mut Row,
    op: &Operation,
    f: &Followed,
    before: &pb::StatusReply,
    after: &pb::StatusReply,
    t0: u64,
) {
    let n = row.apps;
    let rel = |ms: u64| ms as i64 - t0 as i64;
    if op.status != OpStatus::Succeeded {
        row.why
            .push(format!("op-{} ended {:?}", op.id.0, op.status));
    }
    row.site_down_ms = after
        .sites
        .iter()
        .find(|s| s.id == "north" && s.state == "down")
        .map_or(NONE, |s| rel(s.since_ms));
    let hosts_down: Vec<String> = after
        .hosts
        .iter()
        .filter(|h| h.site == "north" && h.state == "down")
        .map(|h| s(rel(h.since_ms)))
        .collect();
    row.plan_begun_ms = rel(op.started_ms);
    row.first_step_ms = op
        .steps
        .iter()
        .map(|s| rel(s.started_ms))
        .min()
        .unwrap_or(NONE);
    let promote = spans(op, StepKind::PromoteAndMove);
    row.promote_sum_ms = promote.iter().map(|(a, b)| b - a).sum();
    row.promote_max_ms = promote.iter().map(|(a, b)| b - a).max().unwrap_or(0);
    let span_of = |v: &[(u64, u64)]| {
        let lo = v.iter().map(|x| x.0).min().unwrap_or(0);
        let hi = v.iter().map(|x| x.1).max().unwrap_or(0);
        hi.saturating_sub(lo)
    };
    row.start_span_ms = span_of(&spans(op, StepKind::StartVms));
    row.serve_span_ms = span_of(&spans(op, StepKind::ServeVolumes));
    let health = spans(op, StepKind::HealthGate);
    row.health_span_ms = span_of(&health);
    row.health_max_ms = health.iter().map(|(a, b)| b - a).max().unwrap_or(0);
    row.first_healthy_ms = health.iter().map(|x| rel(x.1)).min().unwrap_or(NONE);
    row.last_healthy_ms = health.iter().map(|x| rel(x.1)).max().unwrap_or(NONE);
    if health.len() != n {
        row.why
            .push(format!("{} of {n} health gates passed", health.len()));
    }

    let plan = op.plan.as_deref();
    println!(
        "op-{} {:?}: trigger \"{}\", {} step(s), {} wave(s), {} skipped{}",
        op.id.0,
        op.status,
        op.note,
        op.steps.len(),
        plan.map_or(0, |p| p.waves.len()),
        plan.map_or(0, |p| p.skipped.len()),
        plan.and_then(|p| p.skipped.first())
            .map_or(String::new(), |s| format!(
                " (first: {}: {})",
                s.app, s.reason
            ))
    );
    println!(
        "  north hosts down at {}; site north down at {}; loss estimated by the leader at {} (lost_ms; T0 is the real kill)",
        hosts_down.join(", "),
        s(row.site_down_ms),
        op.lost_ms.map_or("-".into(), |l| s(rel(l)))
    );
    println!(
        "  plan begun (BeginPlan committed) at {}; bench saw the op at {}; first step at {}; op ended at {}; bench saw it ended at {}",
        s(row.plan_begun_ms),
        s(f.seen_ms),
        s(row.first_step_ms),
        op.ended_ms.map_or("-".into(), |e| s(rel(e))),
        s(f.seen_done_ms)
    );
    // Per wave: when each kind of step began and was done, and the longest one.
    for (k, w) in plan.map_or(&[][..], |p| &p.waves).iter().enumerate() {
        let apps: BTreeSet<&str> = w.apps.iter().map(|m| m.app.as_str()).collect();
        let of = |kind: StepKind| -> String {
            let v: Vec<(u64, u64)> = op
                .steps
                .iter()
                .filter(|st| st.kind == kind && st.app().is_some_and(|a| apps.contains(a.as_str())))
                .filter_map(|st| st.ended_ms.map(|e| (st.started_ms, e)))
                .collect();
            let first = v.iter().map(|x| rel(x.0)).min().unwrap_or(NONE);
            let last = v.iter().map(|x| rel(x.1)).max().unwrap_or(NONE);
            let longest = v.iter().map(|(a, b)| b - a).max().unwrap_or_default();
            format!("{} → {} (longest {})", s(first), s(last), su(longest))
        };
        println!(
            "  wave {} (tier {}, {} apps): promote {}; serve volumes {}; start VMs {}; health gates {}",
            k + 1,
            w.apps.first().map_or(0, |m| m.tier),
            w.apps.len(),
            of(StepKind::PromoteAndMove),
            of(StepKind::ServeVolumes),
            of(StepKind::StartVms),
            of(StepKind::HealthGate),
        );
    }
    failed_steps(op);
    let entries = after.commit_index.saturating_sub(before.commit_index);
    let ran_ms = op
        .ended_ms
        .unwrap_or(op.started_ms)
        .saturating_sub(op.started_ms);
    println!(
        "  Raft: {entries} entries committed from T0 until the op ended ({:.1} per app; {:.0}/s while the op ran); leader now {}",
        entries as f64 / n as f64,
        entries as f64 * 1000.0 / ran_ms.max(1) as f64,
        after.leader
    );
    record_cost(op);
    if f.reads > 0 {
        println!(
            "  the bench read the op {} times, {:.1} ms per read on average",
            f.reads,
            f.read_time.as_secs_f64() * 1000.0 / f64::from(f.reads)
        );
    }
}

/// Failed steps, grouped by their kind and the reason they failed.
fn failed_steps(op: &Operation) {
    let mut failures: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for st in &op.steps {
        if let Some(e) = st.failure() {
            let f = failures
                .entry(format!("{}: {}", st.kind.label(), e.reason.name()))
                .or_default();
            f.0 += 1;
            if f.1.is_empty() {
                f.1 = format!("{}: {e}", st.app().map_or(String::new(), |a| a.to_string()));
            }
        }
    }
    for (what, (count, first)) in &failures {
        println!("  failed steps: {count} x {what} (first: {first})");
    }
}

/// What the final record costs: the state machine copies the operation row before
/// each command that changes it (the undo of a rejected command) and re-serializes
/// it once per applied batch (its persisted row).
fn record_cost(op: &Operation) {
    let per_clone_ms = |o: &Operation| {
        let t = Instant::now();
        for _ in 0..20 {
            std::hint::black_box(o.clone());
        }
        t.elapsed().as_secs_f64() * 1000.0 / 20.0
    };
    let mut plan_only = op.clone();
    plan_only.steps.clear();
    let t = Instant::now();
    let json = serde_json::to_vec(op).unwrap();
    let ser_ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "  op record at its end: {} KiB as JSON, {} steps; one clone {:.2} ms ({:.2} ms without its steps), one serialization {ser_ms:.2} ms (in this process)",
        json.len() / 1024,
        op.steps.len(),
        per_clone_ms(op),
        per_clone_ms(&plan_only)
    );
}

/// What a user would check: every app active and running at south, every VM running
/// there. Problems go to `row.why`.
async fn check_south(addrs: &[String], row: &mut Row) {
    let n = row.apps;
    let c = connect(addrs).await.expect("a surviving node");
    let apps = c.op.clone().list_apps(pb::ListAppsRequest {}).await;
    let apps = apps.unwrap().into_inner().apps;
    let wrong: Vec<String> = apps
        .iter()
        .filter(|a| a.active_site != "south" || a.health != i32::from(pb::AppHealth::Running))
        .map(|a| format!("{} {} at {}", a.id, a.summary, a.active_site))
        .collect();
    if apps.len() != n || !wrong.is_empty() {
        row.why.push(format!(
            "{} of {n} apps not running at south (first: {})",
            wrong.len() + n.saturating_sub(apps.len()),
            wrong.first().cloned().unwrap_or_default()
        ));
    }
    let running = running_vms(&c).await.unwrap_or_default();
    let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
    for h in running.values() {
        *per_host.entry(h.as_str()).or_default() += 1;
    }
    let per_host: Vec<String> = per_host.iter().map(|(h, k)| format!("{h} {k}")).collect();
    println!(
        "  VMs reported running per host afterwards (the cluster's view: a dead host's last report stays): {}",
        per_host.join(", ")
    );
    let at_south = running.values().filter(|h| h.starts_with("south-")).count();
    if at_south != n {
        row.why
            .push(format!("{at_south} of {n} VMs reported running at south"));
    }
}

async fn run_size(n: usize, guest: Option<&chaos::guest::GuestImage>) -> Row {
    let mut row = Row {
        apps: n,
        site_down_ms: NONE,
        plan_begun_ms: NONE,
        first_step_ms: NONE,
        first_healthy_ms: NONE,
        last_healthy_ms: NONE,
        ..Row::default()
    };
    row.guests = guest.is_some();
    let mut lab = Lab::start(n, guest).await;
    let addrs = lab.survivor_addrs();
    let before = status(&addrs[0]).await.expect("status before the loss");
    row.leader_killed = before.leader == "orch-north";
    let meter = Meter::start(&lab);

    let t0 = lab.kill_north();
    let t0_i = Instant::now();
    println!(
        "T0 = {t0} ms since the epoch: killed orch-north (leader before: {}) and north's agents",
        before.leader
    );
    let deadline = Duration::from_secs(120 + n as u64 / 2);
    let followed = follow(&addrs, n, t0, deadline).await;
    let wall = t0_i.elapsed();
    match (&followed.record, status(&addrs[0]).await) {
        (Some(op), Some(after)) => {
            breakdown(&mut row, op, &followed, &before, &after, t0);
            meter.report(wall);
            check_south(&addrs, &mut row).await;
            lab.check_guests(&addrs, &mut row).await;
        }
        (None, _) => {
            meter.report(wall);
            row.why
                .push(format!("the failover did not end within {deadline:?}"));
        }
        (Some(_), None) => row.why.push("no status from orch-south afterwards".into()),
    }
    row.ok = row.why.is_empty();
    if !row.ok {
        println!("  FAIL: {}", row.why.join("; "));
        println!("  logs kept in {}", lab.tmp.path().display());
        // Stop everything first; then keep the directory for the logs.
        for vm in &lab.guests {
            chaos::guest::remove_domain(vm);
        }
        drop(std::mem::take(&mut lab.agents));
        drop(std::mem::take(&mut lab.nodes));
        lab.guests.clear();
        let keep = tempfile::Builder::new().tempdir().unwrap();
        let tmp = std::mem::replace(&mut lab.tmp, keep);
        let _ = tmp.keep();
        return row;
    }
    // Stop everything of this size (by PID, in the Drop impls) before the next.
    drop(lab);
    row
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1,10,100,1000".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("BENCH_SIZES: {s:?} is not a number"))
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "site loss → last app healthy: 3 orchestrators + 4 agents on libvirt's test driver, \
         north's orchestrator and agents SIGKILLed at T0; times are after T0 on the wall clock"
    );
    let mut rows: Vec<Row> = sizes
        .iter()
        .map(|n| rt.block_on(run_size(*n, None)))
        .collect();
    let guests: Vec<usize> = std::env::var("BENCH_QEMU_GUESTS")
        .unwrap_or_else(|_| "2,4".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("BENCH_QEMU_GUESTS: {s:?} is not a number"))
        })
        .collect();
    if !guests.is_empty() {
        let image = if chaos::guest::virsh(&["version"]).0 {
            chaos::guest::build(&chaos::guest::BuildOptions::new(
                std::env::temp_dir().join("metrodr-guest"),
            ))
            .map_err(|e| format!("cannot build the probe guest image: {e}"))
        } else {
            Err(
                "libvirtd (qemu:///system) is not running: run `bash scripts/start-libvirtd.sh`"
                    .into(),
            )
        };
        for n in guests {
            match &image {
                Ok(img) => rows.push(rt.block_on(run_size(n, Some(img)))),
                Err(e) => {
                    println!(
                        "\n####################################################################\n\
                         #### {n} real guest(s) NOT RUN: {e}\n\
                         ####################################################################"
                    );
                    rows.push(Row {
                        apps: n,
                        guests: true,
                        site_down_ms: NONE,
                        plan_begun_ms: NONE,
                        first_step_ms: NONE,
                        first_healthy_ms: NONE,
                        last_healthy_ms: NONE,
                        why: vec![format!("not run: {e}")],
                        ..Row::default()
                    });
                }
            }
        }
    }

    println!(
        "\n{:>11} | {:>6} | {:>14} | {:>10} | {:>17} | {:>9} | {:>9} | {:>16} | {:>13} | {:>13} | target (first ≤ 10 s, last ≤ 15 s)",
        "apps",
        "leader",
        "site down det.",
        "plan begun",
        "promote Σ (max)",
        "serve vols",
        "start VMs",
        "health (max)",
        "first healthy",
        "last healthy",
    );
    let mut failed = false;
    for r in &rows {
        let verdict = if r.target_met() { "PASS" } else { "FAIL" };
        failed |= !r.target_met();
        println!(
            "{:>11} | {:>6} | {:>14} | {:>10} | {:>17} | {:>9} | {:>9} | {:>16} | {:>13} | {:>13} | {verdict}{}",
            if r.guests {
                format!("{} QEMU", r.apps)
            } else {
                r.apps.to_string()
            },
            if r.leader_killed { "killed" } else { "kept" },
            s(r.site_down_ms),
            s(r.plan_begun_ms),
            format!("{} ({})", su(r.promote_sum_ms), su(r.promote_max_ms)),
            if r.guests {
                su(r.serve_span_ms)
            } else {
                "-".into()
            },
            su(r.start_span_ms),
            format!("{} ({})", su(r.health_span_ms), su(r.health_max_ms)),
            s(r.first_healthy_ms),
            s(r.last_healthy_ms),
            if r.ok {
                String::new()
            } else {
                format!(" ({})", r.why.join("; "))
            }
        );
    }
    println!(
        "\nleader: whether the Raft leader was north's node (killed: detection includes an \
         election and the new leader's full lease before it may declare a site down). \
         start VMs / health: from the first such step's start to the last one's end, over \
         all waves; promote Σ: the promote-and-move steps' durations summed; serve vols (real \
         guests): the agents serving the promoted replicas, first start to last end; a real \
         guest's health gate ends when its console says ready at south."
    );
    if failed {
        std::process::exit(1);
    }
}
