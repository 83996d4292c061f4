//! The lab cluster (DESIGN §8): a topology's orchestrator nodes and an agent per host,
//! real `metrodr` processes, on this machine's loopback or — the lab proper — with
//! each site a network namespace (the sites hang off one bridge in a WAN namespace;
//! the production sites' WAN goes through link proxies, [`links`]). Every process is
//! held by its PID ([`crate::procs`]) and dies with the lab's owner; faults are in
//! [`crate::faults`].
//!
//! Bringing a lab up is a sequence of steps the caller may interleave with its own:
//! [`Lab::new`] (namespaces, certificates, configs), [`Lab::start_nodes`],
//! [`Lab::form`] (init, a leader, the topology applied), [`Lab::start_agents`],
//! [`Lab::wait_agents`], [`Lab::wait_replicas`], [`Lab::start_every_vm`].
//! [`Lab::start`] runs them all for `metrodr lab up` and `metrodr chaos run`.
//!
//! Never: signal a process the lab did not start, or leave one behind — stopping the
//! lab (or dropping it) stops every process by PID, then removes the namespaces (a
//! crashed lab's are removed by `lab down` or by the next lab, from their records in
//! /run/metrodr-lab).

pub mod links;
mod record;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chaos::netns::NetLab;
use orchestrator::client::{Client, Dialer};
use orchestrator::pb;
use security::CertDir;
use topology::Topology;

pub use record::{LabRecord, ProcRecord};

use crate::api;
use crate::daemons::{
    AgentSpec, Binary, DiskBackend, DomainType, GuestNetwork, NodeSpec, Place, agent_state_dir,
    write_config,
};
use crate::error::{Context, LabError};
use crate::procs::Proc;
use crate::wait::wait;

/// The lab topology built into the binary (the demo's).
pub const LAB_TOPOLOGY: &str = include_str!("../../../examples/lab.toml");

/// Port every orchestrator node listens on in a namespace lab, at its site's address.
pub const NODE_PORT: u16 = 7400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Orchestrator,
    Agent,
}

/// One process of the lab: an orchestrator node or a host's agent.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub site: String,
    pub kind: Kind,
    pub config: PathBuf,
    pub log: PathBuf,
    pub(crate) proc: Option<Proc>,
    /// An orchestrator node's gRPC address.
    pub grpc: Option<String>,
    /// An orchestrator node's HTTP address (`/metrics`), when the lab serves one.
    pub http: Option<String>,
}

impl Member {
    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// Started and not killed by the lab (a paused process is running).
    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(Proc::is_running)
    }

    pub fn is_paused(&self) -> bool {
        self.proc.as_ref().is_some_and(Proc::is_paused)
    }

    /// SIGSTOP: it hangs where it is (a stalled process).
    pub fn pause(&mut self) -> Result<(), LabError> {
        match &mut self.proc {
            Some(p) => p.pause(),
            None => Ok(()),
        }
    }

    /// SIGCONT what [`Member::pause`] stopped.
    pub fn resume(&mut self) -> Result<(), LabError> {
        match &mut self.proc {
            Some(p) => p.resume(),
            None => Ok(()),
        }
    }

    /// SIGKILL it now and reap it.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// SIGTERM; SIGKILL if it has not ended within 10 s (an agent stopped this way
    /// leaves its VMs running).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(10));
        }
    }
}

/// How a lab is built.
#[derive(Debug, Clone)]
pub struct Options {
    /// Each site a network namespace, with link proxies between production sites
    /// (needs root), or every process on this machine's loopback.
    pub namespaces: bool,
    /// Mutual TLS everywhere (a CA and certificates in `DIR/certs`); the lab calls its
    /// cluster as admin.
    pub tls: bool,
    /// Orchestrator nodes serve `/metrics` on an HTTP port of their own.
    pub http: bool,
    /// `METRODR_LOG` of the nodes and of the agents (None: the default filter).
    pub node_log: Option<String>,
    pub agent_log: Option<String>,
    /// The agents connect their guests with QEMU's user-mode network (real guests on
    /// this machine's libvirtd, whose tcp probes go through loopback forwards).
    pub user_network: bool,
    /// Who the lab's own calls are recorded as in the audit log.
    pub actor: String,
}

impl Options {
    /// The lab of `metrodr lab up` and `metrodr chaos run`: namespaces, TLS.
    pub fn namespaces() -> Options {
        Options {
            namespaces: true,
            tls: true,
            http: false,
            node_log: None,
            agent_log: None,
            user_network: false,
            actor: "lab".into(),
        }
    }

    /// Every process on loopback (no root needed), with TLS.
    pub fn loopback(actor: &str) -> Options {
        Options {
            namespaces: false,
            actor: actor.into(),
            ..Options::namespaces()
        }
    }
}

/// How long [`Lab::client`] waits for a leader.
pub const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// A lab: its processes, its network and how to reach its cluster.
pub struct Lab {
    // Fields drop in this order: the processes before the link proxies, the proxies
    // (their threads are in the site namespaces) before the namespaces.
    pub members: Vec<Member>,
    pub links: Vec<links::SiteLink>,
    pub net: Option<NetLab>,
    pub dir: PathBuf,
    pub topo: Topology,
    pub text: String,
    /// The lab's certificates (`DIR/certs`), when it runs with TLS.
    pub certs: Option<CertDir>,
    /// How the lab's own calls reach the cluster (as its admin, with TLS).
    pub dialer: Dialer,
    pub bin: Binary,
    pub opts: Options,
    /// The node the last `kill-leader` killed.
    pub(crate) killed_leader: Option<usize>,
}

/// What [`Lab::form`] found: the leader and the topology as applied.
#[derive(Debug, Clone)]
pub struct Formed {
    pub leader: String,
    pub applied: pb::ApplyTopologyReply,
    /// From the cluster init to the topology applied.
    pub took: Duration,
}

impl Lab {
    /// The lab of `metrodr lab up` and `metrodr chaos run`: `text`'s sites as network
    /// namespaces, every process started, the cluster formed, every agent registered,
    /// every replica up to date and every VM running.
    pub async fn start(dir: &Path, text: &str) -> Result<Lab, LabError> {
        let agents_serve = topology::check_str(text)
            .topology
            .is_some_and(|t| t.cluster.volumes == topology::VolumeService::Agents);
        if !agents_serve {
            return Err(LabError::refused(
                "the lab runs valid topologies whose volumes the agents serve: set `volumes = \"agents\"` in [cluster] (check it with `metrodr topology validate`)",
            ));
        }
        let bin = Binary::this()?;
        let opts = Options::namespaces();
        let lab = Lab::with_agents(dir, text, bin, opts, Duration::from_secs(30)).await?;
        lab.wait_replicas(Duration::from_secs(90)).await?;
        lab.start_every_vm().await?;
        Ok(lab)
    }

    /// [`Lab::new`], then every node started, the cluster formed and every agent
    /// registered within `within` (no VM started yet).
    pub async fn with_agents(
        dir: &Path,
        text: &str,
        bin: Binary,
        opts: Options,
        within: Duration,
    ) -> Result<Lab, LabError> {
        let mut lab = Lab::new(dir, text, bin, opts)?;
        lab.start_nodes()?;
        lab.form().await?;
        lab.start_agents()?;
        lab.wait_agents(within).await?;
        Ok(lab)
    }

    /// Check the topology; with namespaces, build them and the link proxies; create
    /// the certificates and the signing key. No process runs yet.
    pub fn new(dir: &Path, text: &str, bin: Binary, opts: Options) -> Result<Lab, LabError> {
        let report = topology::check_str(text);
        let topo = report.topology.ok_or_else(|| {
            LabError::refused(format!(
                "the lab topology is invalid ({} problems; check it with `metrodr topology validate`)",
                report.diagnostics.len()
            ))
        })?;
        std::fs::create_dir_all(dir).with_ctx(|| format!("creating {}", dir.display()))?;
        let (net, links) = if opts.namespaces {
            chaos::netns::preflight().ctx(
                "the lab needs network namespaces (run as root; `scripts/install-deps.sh` installs iproute2 and iptables)",
            )?;
            // Leftovers of labs whose owner died; a lab of a live process is left alone.
            let _ = chaos::netns::cleanup_stale(chaos::netns::TAG_PREFIX);
            let sites: Vec<&str> = topo.sites.iter().map(|s| s.id.as_str()).collect();
            let net = NetLab::create(&sites).ctx("creating the lab's network namespaces")?;
            let mut production: Vec<&str> = topo.hosts.iter().map(|h| h.site.as_str()).collect();
            production.sort_unstable();
            production.dedup();
            let mut site_links = Vec::new();
            for (i, a) in production.iter().enumerate() {
                for b in &production[i + 1..] {
                    site_links.push(links::SiteLink::start(&net, a, b, NODE_PORT)?);
                }
            }
            (Some(net), site_links)
        } else {
            (None, Vec::new())
        };
        let key = dir.join("cluster.key");
        if !key.exists() {
            drills::generate_key_file(&key).ctx("creating the cluster signing key")?;
        }
        let (certs, dialer) = if opts.tls {
            let (c, d) = crate::certs::cluster_certs(dir, &topo)?;
            (Some(c), d)
        } else {
            (None, Dialer::default())
        };
        let mut lab = Lab {
            members: Vec::new(),
            links,
            net,
            dir: dir.to_path_buf(),
            topo: topo.clone(),
            text: text.to_string(),
            certs,
            dialer,
            bin,
            opts,
            killed_leader: None,
        };
        for o in &topo.orchestrators {
            let (name, site) = (o.id.to_string(), o.site.to_string());
            let host = match &lab.net {
                Some(net) => net.addr(&site).to_string(),
                None => "127.0.0.1".to_string(),
            };
            let port = if lab.net.is_some() { NODE_PORT } else { 0 };
            let (listen, http_listen) = (format!("{host}:{port}"), format!("{host}:0"));
            let spec = NodeSpec {
                name: name.clone(),
                data_dir: dir.join(&name),
                listen,
                http_listen: lab.opts.http.then_some(http_listen),
                signing_key: Some(key.clone()),
                tls: lab.tls_files(security::Role::Node, &name),
            };
            let config = dir.join(format!("{name}.toml"));
            write_config(&config, &spec)?;
            lab.members.push(Member {
                log: dir.join(format!("{name}.log")),
                name,
                site,
                kind: Kind::Orchestrator,
                config,
                proc: None,
                grpc: None,
                http: None,
            });
        }
        for h in &topo.hosts {
            let name = h.id.to_string();
            lab.members.push(Member {
                log: dir.join(format!("agent-{name}.log")),
                config: dir.join(format!("agent-{name}.toml")),
                name,
                site: h.site.to_string(),
                kind: Kind::Agent,
                proc: None,
                grpc: None,
                http: None,
            });
        }
        Ok(lab)
    }

    fn tls_files(&self, role: security::Role, name: &str) -> Option<security::TlsFiles> {
        self.certs.as_ref().map(|c| c.files(role, name))
    }

    /// Where member `i` runs.
    fn place(&self, i: usize) -> Place<'_> {
        match &self.net {
            Some(net) => Place::Site(net, &self.members[i].site),
            None => Place::Here,
        }
    }

    /// Start member `i` (a node, or an agent whose config [`Lab::start_agents`]
    /// wrote) and wait until it says it is up.
    pub(crate) fn spawn(&mut self, i: usize) -> Result<(), LabError> {
        let m = &self.members[i];
        let place = self.place(i);
        match m.kind {
            Kind::Orchestrator => {
                let (proc, at) = self.bin.node(
                    &m.name,
                    &m.config,
                    &m.log,
                    place,
                    self.opts.node_log.as_deref(),
                )?;
                let first = m.grpc.is_none();
                let m = &mut self.members[i];
                m.proc = Some(proc);
                m.grpc = Some(at.grpc.clone());
                m.http = at.http.clone();
                if first {
                    // A node given port 0 keeps the port it got: a restart comes back on
                    // the address its peers and the agents know.
                    self.pin_address(i, &at.grpc, at.http.as_deref())?;
                }
            }
            Kind::Agent => {
                let proc = self.bin.agent(
                    &m.name,
                    &m.config,
                    &m.log,
                    place,
                    self.opts.agent_log.as_deref(),
                )?;
                self.members[i].proc = Some(proc);
            }
        }
        Ok(())
    }

    fn pin_address(&self, i: usize, grpc: &str, http: Option<&str>) -> Result<(), LabError> {
        let m = &self.members[i];
        let spec = NodeSpec {
            name: m.name.clone(),
            data_dir: self.dir.join(&m.name),
            listen: grpc.to_string(),
            http_listen: http.map(str::to_string),
            signing_key: Some(self.dir.join("cluster.key")),
            tls: self.tls_files(security::Role::Node, &m.name),
        };
        write_config(&m.config, &spec)
    }

    /// Start every orchestrator node.
    pub fn start_nodes(&mut self) -> Result<(), LabError> {
        for i in 0..self.members.len() {
            if self.members[i].kind == Kind::Orchestrator {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    /// Start the process `name` again (on its data directory and address) if the lab
    /// has stopped it.
    pub fn restart(&mut self, name: &str) -> Result<(), LabError> {
        let i = self
            .members
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| LabError::refused(format!("no process {name:?} in the lab")))?;
        if !self.members[i].is_running() {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Every node's gRPC address, in the topology's order (known once started).
    pub fn addrs(&self) -> Vec<String> {
        self.nodes().filter_map(|m| m.grpc.clone()).collect()
    }

    /// The orchestrator nodes.
    pub fn nodes(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.kind == Kind::Orchestrator)
    }

    /// The member called `name`.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    pub fn member_mut(&mut self, name: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.name == name)
    }

    /// Form the cluster (no leader yet: any node takes the init), wait for a leader
    /// and apply the topology.
    pub async fn form(&self) -> Result<Formed, LabError> {
        let t = Instant::now();
        let addrs = self.addrs();
        let client = self
            .dialer
            .connect(&addrs)
            .await
            .ctx("reaching the lab's nodes")?;
        let nodes = self
            .nodes()
            .filter_map(|m| {
                Some(pb::InitNode {
                    name: m.name.clone(),
                    site: m.site.clone(),
                    addr: m.grpc.clone()?,
                })
            })
            .collect();
        api::init_cluster(&client, nodes).await?;
        let leader = wait(Duration::from_secs(20), "a leader", || async {
            self.leader().await
        })
        .await?;
        let applied =
            api::apply_topology(&self.client().await?, &self.text, &self.opts.actor).await?;
        Ok(Formed {
            leader,
            applied,
            took: t.elapsed(),
        })
    }

    /// Write every agent's config (the cluster's addresses are known now) and start
    /// the agents.
    pub fn start_agents(&mut self) -> Result<(), LabError> {
        let cluster = self.addrs().join(",");
        let nbd = self.topo.cluster.volumes == topology::VolumeService::Agents;
        for i in 0..self.members.len() {
            let m = &self.members[i];
            if m.kind != Kind::Agent {
                continue;
            }
            let uri = self
                .topo
                .hosts
                .iter()
                .find(|h| h.id.as_str() == m.name)
                .map(|h| h.libvirt_uri.clone())
                .unwrap_or_default();
            let spec = AgentSpec {
                disk_backend: nbd.then_some(DiskBackend::Nbd),
                domain_type: Some(DomainType::Qemu),
                replication_ip: self.net.as_ref().map(|n| n.addr(&m.site).to_string()),
                guest_network: self.opts.user_network.then_some(GuestNetwork::User),
                tls: self.tls_files(security::Role::Agent, &m.name),
                ..AgentSpec::new(&self.dir, &m.name, &cluster, &uri)
            };
            write_config(&m.config, &spec)?;
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Wait until the cluster sees every host up (every agent registered).
    pub async fn wait_agents(&self, within: Duration) -> Result<(), LabError> {
        wait(within, "every agent registered", || async {
            api::all_hosts_up(&self.client().await.ok()?).await
        })
        .await?;
        Ok(())
    }

    /// Wait until every replica of every volume is up to date (the agents serve every
    /// group: secondaries first, then the primaries towards them; the initial syncs
    /// make the other site's replicas promotable).
    pub async fn wait_replicas(&self, within: Duration) -> Result<(), LabError> {
        wait(within, "every replica up to date", || async {
            api::all_replicas_up_to_date(&self.client().await.ok()?).await
        })
        .await?;
        Ok(())
    }

    /// Define and start every VM of the topology where the cluster places it, and wait
    /// until the cluster records each running.
    pub async fn start_every_vm(&self) -> Result<(), LabError> {
        let vms = self.vm_ids();
        api::start_vms(&self.client().await?, &vms, &self.opts.actor, 1, 30).await
    }

    /// Every VM of the topology.
    pub fn vm_ids(&self) -> Vec<String> {
        self.topo
            .apps
            .iter()
            .flat_map(|a| a.vms.iter().map(|v| v.id.to_string()))
            .collect()
    }

    /// A client of the leader: reads there see every committed decision (a node that
    /// was just restarted answers from a state that is still catching up).
    /// Waits up to [`LEADER_WAIT`] for one: a node back from isolation with a higher
    /// term makes the leader step down, and the election takes about a second.
    pub async fn client(&self) -> Result<Client, LabError> {
        let (_, addr) = crate::wait::wait(LEADER_WAIT, "a leader", || self.leader_at())
            .await
            .map_err(|_| {
                LabError::refused(format!(
                    "no orchestrator node knows a leader (waited {} s)",
                    LEADER_WAIT.as_secs()
                ))
            })?;
        self.dialer
            .connect_to(&addr)
            .await
            .with_ctx(|| format!("reaching the leader at {addr}"))
    }

    /// A client of any node still running.
    pub async fn any_client(&self) -> Result<Client, LabError> {
        let live: Vec<String> = self
            .nodes()
            .filter(|m| m.is_running())
            .filter_map(|m| m.grpc.clone())
            .collect();
        self.dialer
            .connect(&live)
            .await
            .ctx("reaching a running node")
    }

    /// The leader's name and address, as the leader itself confirms.
    pub async fn leader_at(&self) -> Option<(String, String)> {
        api::leader_at(&self.dialer, &self.addrs()).await
    }

    /// The leader's name.
    pub async fn leader(&self) -> Option<String> {
        self.leader_at().await.map(|(n, _)| n)
    }

    /// Every volume, as the leader has it.
    pub async fn volumes(&self) -> Option<Vec<pb::VolumeStatus>> {
        api::volumes(&self.client().await.ok()?).await
    }

    /// The socket of `app`'s group on the agent of `host` (volumes the agents serve).
    pub fn socket(&self, host: &str, app: &str) -> PathBuf {
        agent_state_dir(&self.dir, host).join(format!("sockets/{app}.sock"))
    }

    /// Stop every process (by PID; agents first) and remove the namespaces.
    pub fn stop(mut self) -> Result<(), LabError> {
        self.stop_processes();
        // The link proxies' threads leave the site namespaces before those go.
        drop(std::mem::take(&mut self.links));
        if let Some(net) = self.net.take() {
            net.destroy().ctx("removing the lab's namespaces")?;
        }
        Ok(())
    }

    fn stop_processes(&mut self) {
        for m in self.members.iter_mut().rev() {
            m.kill();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_processes();
    }
}
