//! The failover benchmark's processes: orchestrator nodes and agents started and stopped
//! by PID, the generated topology, the CLI and API calls the bench makes, and waiting
//! on a condition with a deadline.
//!
//! Never: stop a process the bench did not start, or wait without a deadline.

use super::*;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_metrodr");
pub(crate) const NODES: [&str; 3] = ["orch-north", "orch-south", "orch-witness"];
pub(crate) const HOSTS: [&str; 4] = ["north-h1", "north-h2", "south-h1", "south-h2"];
pub(crate) const ACTOR: &str = "bench@failover";
/// VmAction requests in flight while the VMs are set up at north.
pub(crate) const SETUP_CONCURRENCY: usize = 64;
/// How often the bench reads the operation while it runs. Each read serializes the
/// whole operation on the answering node (685 KiB of JSON at 1,000 apps) under the
/// state's read lock, so large runs read less often; the timings come from the record,
/// only "bench saw it ended" depends on this.
pub(crate) fn poll_interval(apps: usize) -> Duration {
    if apps > 100 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(200)
    }
}
pub(crate) const FIRST_TARGET_MS: u64 = 10_000;
pub(crate) const LAST_TARGET_MS: u64 = 15_000;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A process stopped by PID when dropped (SIGTERM, then SIGKILL after 15 s).
pub(crate) struct Proc {
    pub(crate) child: Option<Child>,
    pub(crate) name: String,
}

impl Proc {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL without reaping (the caller reaps with [`Proc::reap`]).
    pub(crate) fn sigkill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
    }

    pub(crate) fn reap(&mut self) {
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
pub(crate) fn spawn(dir: &Path, name: &str, args: &[&str], log_filter: &str) -> (Proc, String) {
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

pub(crate) struct NodeProc {
    pub(crate) proc_: Proc,
    pub(crate) grpc: String,
    pub(crate) http: String,
}

pub(crate) fn start_node(dir: &Path, name: &str) -> NodeProc {
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

pub(crate) fn start_agent(dir: &Path, host: &str, cluster: &str, qemu: bool) -> Proc {
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
pub(crate) fn topology(n: usize, guest: Option<&chaos::guest::GuestImage>) -> String {
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

pub(crate) fn app_id(i: usize) -> String {
    format!("app-{i:04}")
}

pub(crate) fn vm_id(i: usize) -> String {
    format!("vm-{i:04}")
}

pub(crate) fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .env("METRODR_ACTOR", ACTOR)
        .output()
        .expect("run metrodr")
}

pub(crate) fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// CPU seconds (user + system) a process has used so far.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// `metrodr_apply_seconds` (sum, count) from a node's /metrics.
pub(crate) fn apply_seconds(http: &str) -> Option<(f64, f64)> {
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

pub(crate) async fn connect(addrs: &[String]) -> Option<Client> {
    for a in addrs {
        if let Ok(c) = Client::connect_to(a).await {
            return Some(c);
        }
    }
    None
}

pub(crate) async fn status(addr: &str) -> Option<pb::StatusReply> {
    let c = Client::connect_to(addr).await.ok()?;
    let mut op = c.op.clone();
    tokio::time::timeout(Duration::from_secs(5), op.status(pb::StatusRequest {}))
        .await
        .ok()?
        .ok()
        .map(|r| r.into_inner())
}

/// Poll `f` until it gives Some, or panic after `within`.
pub(crate) async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
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
pub(crate) async fn start_vms(addr: &str, n: usize) {
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
pub(crate) async fn running_vms(c: &Client) -> Option<BTreeMap<String, String>> {
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
