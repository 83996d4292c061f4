//! The lab (DESIGN §8): the topology's three sites as network namespaces on this
//! machine, with the orchestrator nodes and the agents started inside their site's
//! namespace, every app's volumes served and replicated by the agents across sites,
//! and faults injected into it — cut links (iptables in the site namespaces),
//! asymmetric cuts, kill or pause every process of a site (SIGKILL / SIGSTOP by PID),
//! kill the leader, restart, shape the WAN (delay, loss, bandwidth through link
//! proxies: [`links`]), skew the agents' clocks, fail a replica's disk.
//!
//! `metrodr lab up|status|down` keeps one lab running in the background ([`cmd`]);
//! `metrodr chaos run` builds one per scenario ([`run`]).
//!
//! The sites' namespaces hang off one bridge in a WAN namespace (the operator's CLI
//! reaches every node through one more veth pair from the root namespace); a site
//! "cut" is iptables rules inside the sites' namespaces. Every process the lab starts,
//! it stops by PID; the namespaces go with the lab (and a crashed lab's are removed by `lab down` or by the
//! next lab, from their records in /run/metrodr-lab).

pub mod cmd;
pub mod journal;
pub mod links;
pub mod owned;
pub mod run;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chaos::netns::NetLab;
use chaos::scenario::{Fault, LinkShape};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use orchestrator::client::Client;
use orchestrator::pb;
use serde::Serialize;
use topology::Topology;

/// The lab topology built into the binary (the demo's).
pub const LAB_TOPOLOGY: &str = include_str!("../../../examples/lab.toml");

/// Port every orchestrator node listens on, at its site's address.
const NODE_PORT: u16 = 7400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Orchestrator,
    Agent,
}

/// One process of the lab.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub site: String,
    pub kind: Kind,
    config: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Proc {
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            kill(Pid::from_raw(pid), sig).with_context(|| format!("{sig} to {}", self.name))?;
        }
        Ok(())
    }

    fn stop(&mut self) {
        if self.paused {
            let _ = self.signal(Signal::SIGCONT);
            self.paused = false;
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What `lab status` shows and `lab.json` records.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LabRecord {
    pub dir: PathBuf,
    pub tag: String,
    pub supervisor_pid: u32,
    pub orchestrators: Vec<String>,
    pub sites: BTreeMap<String, String>,
    pub processes: Vec<ProcRecord>,
    /// The WAN links between production sites and their shape.
    #[serde(default)]
    pub links: Vec<links::LinkRecord>,
    /// The lab's certificate directory (use it with `--certs`; the CLI acts as admin).
    #[serde(default)]
    pub certs: PathBuf,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ProcRecord {
    pub name: String,
    pub site: String,
    pub pid: Option<i32>,
    pub state: String,
}

pub struct Lab {
    pub dir: PathBuf,
    pub topo: Topology,
    /// The link proxies between production sites; declared before `net`, so they are
    /// dropped (their threads leave the site namespaces) before the namespaces go.
    pub links: Vec<links::SiteLink>,
    pub net: NetLab,
    pub procs: Vec<Proc>,
    /// Orchestrator gRPC addresses, as `host:port`.
    pub addrs: Vec<String>,
    /// The lab's certificates (`DIR/certs`): every process runs with mutual TLS.
    pub certs: security::CertDir,
    /// How the lab's own calls reach the cluster (as its admin).
    pub dialer: orchestrator::client::Dialer,
    exe: PathBuf,
    /// The node the last `kill-leader` killed.
    killed_leader: Option<usize>,
}

impl Lab {
    /// Build the namespaces, start every process, form the cluster, apply the
    /// topology, wait for every agent and every replica, start every VM.
    pub async fn start(dir: &Path, text: &str) -> anyhow::Result<Lab> {
        let topo = topology::check_str(text)
            .topology
            .context("the lab topology is invalid (check it with `metrodr topology validate`)")?;
        if topo.cluster.volumes != topology::VolumeService::Agents {
            bail!(
                "the lab runs topologies whose volumes the agents serve: set `volumes = \"agents\"` in [cluster]"
            );
        }
        chaos::netns::preflight().map_err(|e| {
            anyhow::anyhow!("the lab needs network namespaces: {e} (run as root; `scripts/install-deps.sh` installs iproute2 and iptables)")
        })?;
        let _ = chaos::netns::cleanup_stale(chaos::netns::TAG_PREFIX);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let sites: Vec<&str> = topo.sites.iter().map(|s| s.id.as_str()).collect();
        let net = NetLab::create(&sites).context("creating the lab's network namespaces")?;
        let mut production: Vec<&str> = topo.hosts.iter().map(|h| h.site.as_str()).collect();
        production.sort_unstable();
        production.dedup();
        let mut site_links = Vec::new();
        for (i, a) in production.iter().enumerate() {
            for b in &production[i + 1..] {
                site_links.push(
                    links::SiteLink::start(&net, a, b, NODE_PORT)
                        .with_context(|| format!("putting link proxies between {a} and {b}"))?,
                );
            }
        }
        let exe = std::env::current_exe().context("locating the metrodr binary")?;
        let key = dir.join("cluster.key");
        if !key.exists() {
            drills::generate_key_file(&key).context("creating the cluster signing key")?;
        }
        let (certs, dialer) = crate::demo::demo_certs(dir, &topo)?;
        let mut lab = Lab {
            certs,
            dialer,
            dir: dir.to_path_buf(),
            topo: topo.clone(),
            net,
            links: site_links,
            procs: Vec::new(),
            addrs: Vec::new(),
            exe,
            killed_leader: None,
        };
        for o in &topo.orchestrators {
            let addr = format!("{}:{NODE_PORT}", lab.net.addr(o.site.as_str()));
            let config = dir.join(format!("{}.toml", o.id));
            std::fs::write(
                &config,
                format!(
                    "name = \"{}\"\ndata_dir = \"{}\"\nlisten = \"{addr}\"\nsigning_key = \"{}\"\n{}",
                    o.id,
                    dir.join(o.id.as_str()).display(),
                    key.display(),
                    crate::demo::tls_section(&lab.certs, security::Role::Node, o.id.as_str())
                ),
            )?;
            lab.procs.push(Proc {
                name: o.id.to_string(),
                site: o.site.to_string(),
                kind: Kind::Orchestrator,
                config,
                child: None,
                paused: false,
            });
            lab.addrs.push(addr);
        }
        let cluster = lab.addrs.join(",");
        for h in &topo.hosts {
            let config = dir.join(format!("agent-{}.toml", h.id));
            std::fs::write(
                &config,
                format!(
                    "host = \"{}\"\ncluster = \"{cluster}\"\nlibvirt_uri = \"{}\"\nstate_dir = \"{}\"\n\
                     disk_backend = \"nbd\"\ndomain_type = \"qemu\"\nreplication_ip = \"{}\"\n{}",
                    h.id,
                    h.libvirt_uri,
                    dir.join(format!("agent-{}", h.id)).display(),
                    lab.net.addr(h.site.as_str()),
                    crate::demo::tls_section(&lab.certs, security::Role::Agent, h.id.as_str())
                ),
            )?;
            lab.procs.push(Proc {
                name: h.id.to_string(),
                site: h.site.to_string(),
                kind: Kind::Agent,
                config,
                child: None,
                paused: false,
            });
        }
        for i in 0..lab.procs.len() {
            if lab.procs[i].kind == Kind::Orchestrator {
                lab.spawn(i)?;
            }
        }
        // No leader yet: any node takes the init.
        let client = lab.dialer.connect(&lab.addrs).await?;
        client
            .op
            .clone()
            .init_cluster(pb::InitClusterRequest {
                nodes: topo
                    .orchestrators
                    .iter()
                    .zip(&lab.addrs)
                    .map(|(o, a)| pb::InitNode {
                        name: o.id.to_string(),
                        site: o.site.to_string(),
                        addr: a.clone(),
                    })
                    .collect(),
            })
            .await
            .context("forming the cluster")?;
        wait(Duration::from_secs(20), "a leader", || async {
            lab.leader().await
        })
        .await?;
        crate::cluster_cmd::apply(&lab.client().await?, text, "lab").await?;
        for i in 0..lab.procs.len() {
            if lab.procs[i].kind == Kind::Agent {
                lab.spawn(i)?;
            }
        }
        wait(
            Duration::from_secs(30),
            "every agent registered",
            || async { all_hosts_up(&lab.client().await.ok()?).await },
        )
        .await?;
        wait(
            Duration::from_secs(90),
            "every replica up to date",
            || async { all_up_to_date(&lab.volumes().await?) },
        )
        .await?;
        start_every_vm(&lab.client().await?, &topo, "lab").await?;
        Ok(lab)
    }

    /// Start process `i` (inside its site's namespace) and wait for its first line.
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let p = &self.procs[i];
        let log_path = self.dir.join(format!("{}.log", p.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let sub = match p.kind {
            Kind::Orchestrator => "orchestrator",
            Kind::Agent => "agent",
        };
        let mut cmd = self.net.command(&p.site, &self.exe);
        cmd.args([sub, "--config"])
            .arg(&p.config)
            .stdout(Stdio::piped())
            .stderr(log);
        // It dies with the lab's owner: a runner or supervisor that dies leaves no
        // orphans behind.
        let mut child = owned::spawn_owned(cmd)
            .with_context(|| format!("starting {} in the namespace of {}", p.name, p.site))?;
        let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim().is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not start; see {}", p.name, log_path.display());
        }
        // Keep reading so the pipe never fills.
        std::thread::spawn(move || for _ in out.lines() {});
        let p = &mut self.procs[i];
        p.child = Some(child);
        p.paused = false;
        Ok(())
    }

    /// A client of the leader: reads there see every committed decision (a node that
    /// was just restarted answers from a state that is still catching up).
    pub async fn client(&self) -> anyhow::Result<Client> {
        let (_, addr) = self
            .leader_at()
            .await
            .context("no orchestrator node knows a leader")?;
        Ok(self.dialer.connect_to(&addr).await?)
    }

    /// The leader's name and address, as the leader itself confirms.
    pub async fn leader_at(&self) -> Option<(String, String)> {
        for a in &self.addrs {
            let Ok(c) = self.dialer.connect_to(a).await else {
                continue;
            };
            let s = tokio::time::timeout(
                Duration::from_secs(1),
                c.op.clone().status(pb::StatusRequest {}),
            )
            .await;
            if let Ok(Ok(s)) = s {
                let s = s.into_inner();
                if s.raft_state == "leader" && s.leader == s.node {
                    return Some((s.node, a.clone()));
                }
            }
        }
        None
    }

    /// The leader's name.
    pub async fn leader(&self) -> Option<String> {
        self.leader_at().await.map(|(n, _)| n)
    }

    /// Every volume, as the leader has it.
    pub async fn volumes(&self) -> Option<Vec<pb::VolumeStatus>> {
        volumes(&self.client().await.ok()?).await
    }

    /// Inject one fault; returns the agents it killed (their VMs die with them).
    pub async fn apply(&mut self, fault: &Fault) -> anyhow::Result<Vec<String>> {
        let mut killed = Vec::new();
        match fault {
            Fault::KillSite { site } => {
                for p in self.procs.iter_mut().filter(|p| &p.site == site) {
                    if p.child.is_some() && p.kind == Kind::Agent {
                        killed.push(p.name.clone());
                    }
                    p.stop();
                }
            }
            Fault::PauseSite { site } => {
                for p in self.procs.iter_mut().filter(|p| &p.site == site) {
                    if p.child.is_some() && !p.paused {
                        p.signal(Signal::SIGSTOP)?;
                        p.paused = true;
                    }
                }
            }
            Fault::ResumeSite { site } => {
                for p in self.procs.iter_mut().filter(|p| &p.site == site) {
                    if p.paused {
                        p.signal(Signal::SIGCONT)?;
                        p.paused = false;
                    }
                }
            }
            Fault::RestartSite { site } => {
                let dead: Vec<usize> = (0..self.procs.len())
                    .filter(|i| &self.procs[*i].site == site && self.procs[*i].child.is_none())
                    .collect();
                // Orchestrator first: the agents register with the cluster.
                for i in dead {
                    self.spawn(i)?;
                }
            }
            Fault::KillLeader => {
                let leader = self.leader().await.context("no leader to kill")?;
                let i = self
                    .procs
                    .iter()
                    .position(|p| p.name == leader && p.kind == Kind::Orchestrator)
                    .with_context(|| format!("the leader {leader} is not a lab process"))?;
                self.procs[i].stop();
                self.killed_leader = Some(i);
            }
            Fault::RestartLeader => {
                let i = self
                    .killed_leader
                    .take()
                    .context("no node was killed as leader")?;
                if self.procs[i].child.is_none() {
                    self.spawn(i)?;
                }
            }
            Fault::Partition { a, b } => self.net.partition(a, b)?,
            Fault::PartitionOneWay { from, to } => self.net.partition_one_way(from, to)?,
            Fault::Isolate { site } => self.net.isolate(site)?,
            Fault::Heal => {
                self.net.heal_all()?;
                for l in &mut self.links {
                    l.shape(LinkShape::default())?;
                }
            }
            Fault::Shape { a, b, shape } => {
                let link = self
                    .links
                    .iter_mut()
                    .find(|l| l.joins(a, b))
                    .with_context(|| {
                        format!("no link proxies between {a} and {b}: only links between sites with hosts are shaped")
                    })?;
                link.shape(*shape)?;
            }
            Fault::ClockSkew { site, rate } => {
                let agents: Vec<&Proc> = self
                    .procs
                    .iter()
                    .filter(|p| p.kind == Kind::Agent && &p.site == site)
                    .collect();
                if agents.is_empty() {
                    bail!("no agents run at {site}: only sites with hosts have clocks to skew");
                }
                for p in agents {
                    let dir = self.dir.join(format!("agent-{}/faults", p.name));
                    std::fs::create_dir_all(&dir)?;
                    std::fs::write(dir.join(agent::clock::RATE_FILE), format!("{rate}\n"))?;
                }
            }
            Fault::DiskFail { site, volume } => {
                let host = self.replica_host(site, volume).await?;
                let dir = self.dir.join(format!("agent-{host}/faults"));
                std::fs::create_dir_all(&dir)?;
                std::fs::write(
                    dir.join(format!("{}{volume}", agent::volumes::DISK_FAULT_PREFIX)),
                    "failed by the lab\n",
                )?;
            }
            Fault::DiskRepair { site, volume } => {
                let host = self.replica_host(site, volume).await?;
                let f = self.dir.join(format!(
                    "agent-{host}/faults/{}{volume}",
                    agent::volumes::DISK_FAULT_PREFIX
                ));
                if f.exists() {
                    std::fs::remove_file(&f)?;
                }
            }
        }
        Ok(killed)
    }

    /// The host serving `volume`'s replica at `site`.
    async fn replica_host(&self, site: &str, volume: &str) -> anyhow::Result<String> {
        let vs = self.volumes().await.context("listing the volumes")?;
        let v = vs.iter().find(|v| v.id == volume).with_context(|| {
            format!(
                "no volume {volume:?} in the lab (volumes: {})",
                vs.iter()
                    .map(|v| v.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        v.replicas
            .iter()
            .find(|r| r.site == site && !r.host.is_empty())
            .map(|r| r.host.clone())
            .with_context(|| format!("no host serves {volume} at {site}"))
    }

    /// Undo every fault: heal the network, resume what is paused, restart what was
    /// killed. Returns what it restarted.
    pub fn heal_everything(&mut self) -> anyhow::Result<Vec<String>> {
        self.net.heal_all()?;
        for l in &mut self.links {
            l.shape(LinkShape::default())?;
        }
        // Failed disks are replaced, skewed clocks run true.
        for p in self.procs.iter().filter(|p| p.kind == Kind::Agent) {
            let faults = self.dir.join(format!("agent-{}/faults", p.name));
            if faults.exists() {
                std::fs::remove_dir_all(&faults)
                    .with_context(|| format!("removing {}", faults.display()))?;
            }
        }
        for p in self.procs.iter_mut().filter(|p| p.paused) {
            p.signal(Signal::SIGCONT)?;
            p.paused = false;
        }
        let mut restarted = Vec::new();
        // Orchestrator nodes first (they come first in `procs`).
        for i in 0..self.procs.len() {
            if self.procs[i].child.is_none() {
                self.spawn(i)?;
                restarted.push(self.procs[i].name.clone());
            }
        }
        Ok(restarted)
    }

    pub fn record(&self, supervisor_pid: u32) -> LabRecord {
        LabRecord {
            dir: self.dir.clone(),
            tag: self.net.tag().to_string(),
            supervisor_pid,
            orchestrators: self.addrs.clone(),
            sites: self
                .topo
                .sites
                .iter()
                .map(|s| (s.id.to_string(), self.net.addr(s.id.as_str()).to_string()))
                .collect(),
            processes: self
                .procs
                .iter()
                .map(|p| ProcRecord {
                    name: p.name.clone(),
                    site: p.site.clone(),
                    pid: p.pid(),
                    state: match (&p.child, p.paused) {
                        (None, _) => "killed",
                        (Some(_), true) => "paused",
                        (Some(_), false) => "running",
                    }
                    .into(),
                })
                .collect(),
            links: self.links.iter().map(links::SiteLink::record).collect(),
            certs: self.certs.root.clone(),
        }
    }

    /// Stop every process (by PID) and remove the namespaces.
    pub fn stop(mut self) -> anyhow::Result<()> {
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
        // The link proxies' threads leave the site namespaces before those go.
        drop(std::mem::take(&mut self.links));
        let net = self.net;
        net.destroy().context("removing the lab's namespaces")?;
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every volume, as the node `c` talks to has it.
pub async fn volumes(c: &Client) -> Option<Vec<pb::VolumeStatus>> {
    let r =
        c.op.clone()
            .list_volumes(pb::ListVolumesRequest { app: String::new() })
            .await
            .ok()?;
    Some(r.into_inner().volumes)
}

/// Define and start every VM of `topo` where the cluster places it, waiting for each.
pub async fn start_every_vm(c: &Client, topo: &Topology, actor: &str) -> anyhow::Result<()> {
    for app in &topo.apps {
        for vm in &app.vms {
            for action in ["define", "start"] {
                let r =
                    c.op.clone()
                        .vm_action(pb::VmActionRequest {
                            vm: vm.id.to_string(),
                            action: action.into(),
                            timeout_s: 30,
                            wait: true,
                            actor: actor.into(),
                        })
                        .await?
                        .into_inner();
                if r.status != "succeeded" {
                    bail!("{action} {} on {}: {}", vm.id, r.host, r.message);
                }
            }
        }
    }
    // A start succeeds when the agent's libvirt has started the domain; the cluster
    // records it running only once the agent's next state report is committed (up to
    // half a second later). Whatever comes next (a drill's baseline, the ledger of a
    // chaos run) reads the committed state, so wait for it.
    let all: BTreeSet<String> = topo
        .apps
        .iter()
        .flat_map(|a| a.vms.iter().map(|v| v.id.to_string()))
        .collect();
    wait(
        Duration::from_secs(30),
        "every VM reported running",
        || async { all.is_subset(&running_vms(c).await.ok()?).then_some(()) },
    )
    .await
}

/// The VMs the node `c` talks to records running.
pub async fn running_vms(c: &Client) -> Result<BTreeSet<String>, tonic::Status> {
    let r = c.op.clone().list_vms(pb::ListVmsRequest {}).await?;
    Ok(r.into_inner()
        .vms
        .into_iter()
        .filter(|v| v.state == "running")
        .map(|v| v.vm)
        .collect())
}

/// Some(()) when the cluster sees every host up.
pub async fn all_hosts_up(c: &Client) -> Option<()> {
    let h =
        c.op.clone()
            .list_hosts(pb::ListHostsRequest {})
            .await
            .ok()?;
    h.into_inner()
        .hosts
        .iter()
        .all(|h| h.state == "up")
        .then_some(())
}

/// Some(()) when every replica of every volume is up to date.
pub fn all_up_to_date(v: &[pb::VolumeStatus]) -> Option<()> {
    v.iter()
        .all(|v| v.replicas.iter().all(|r| r.data == "up-to-date"))
        .then_some(())
}

/// Poll `f` every 50 ms until it gives a value, or fail after `within`.
pub async fn wait<T, F, Fut>(within: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {} s waiting for {what}", within.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
