//! The faults a lab injects ([`chaos::scenario::Fault`]) and how it heals: kill,
//! pause, resume or restart every process of a site (SIGKILL / SIGSTOP / SIGCONT by
//! PID), kill and restart the leader, cut links (iptables in the site namespaces),
//! shape the WAN (the link proxies), skew the agents' clocks and fail a replica's disk
//! (files in the agent's `faults/` directory it reads).
//!
//! Never: touch a process or a file that is not the lab's.

use chaos::scenario::{Fault, LinkShape};

use crate::cluster::{Kind, Lab};
use crate::daemons::agent_state_dir;
use crate::error::{Context, LabError};
use crate::states;

impl Lab {
    /// Inject one fault; returns the agents it killed (their VMs die with them).
    pub async fn apply(&mut self, fault: &Fault) -> Result<Vec<String>, LabError> {
        let mut killed = Vec::new();
        match fault {
            Fault::KillSite { site } => killed = self.kill_site(site),
            Fault::PauseSite { site } => {
                for m in self.members.iter_mut().filter(|m| &m.site == site) {
                    if let Some(p) = &mut m.proc {
                        p.pause()?;
                    }
                }
            }
            Fault::ResumeSite { site } => {
                for m in self.members.iter_mut().filter(|m| &m.site == site) {
                    if let Some(p) = &mut m.proc {
                        p.resume()?;
                    }
                }
            }
            Fault::RestartSite { site } => self.restart_site(site)?,
            Fault::KillLeader => {
                let leader = self
                    .leader()
                    .await
                    .ok_or_else(|| LabError::refused("no leader to kill"))?;
                let i = self
                    .members
                    .iter()
                    .position(|m| m.name == leader && m.kind == Kind::Orchestrator)
                    .ok_or_else(|| {
                        LabError::refused(format!("the leader {leader} is not a lab process"))
                    })?;
                self.members[i].kill();
                self.killed_leader = Some(i);
            }
            Fault::RestartLeader => {
                let i = self
                    .killed_leader
                    .take()
                    .ok_or_else(|| LabError::refused("no node was killed as leader"))?;
                if !self.members[i].is_running() {
                    self.spawn(i)?;
                }
            }
            Fault::Partition { a, b } => self.netlab()?.partition(a, b).ctx("partitioning")?,
            Fault::PartitionOneWay { from, to } => self
                .netlab()?
                .partition_one_way(from, to)
                .ctx("partitioning one way")?,
            Fault::Isolate { site } => self.netlab()?.isolate(site).ctx("isolating")?,
            Fault::Heal => self.heal_network()?,
            Fault::Shape { a, b, shape } => {
                let link = self.links.iter_mut().find(|l| l.joins(a, b)).ok_or_else(|| {
                    LabError::refused(format!(
                        "no link proxies between {a} and {b}: only links between sites with hosts are shaped"
                    ))
                })?;
                link.shape(*shape)?;
            }
            Fault::ClockSkew { site, rate } => {
                let agents: Vec<String> = self
                    .members
                    .iter()
                    .filter(|m| m.kind == Kind::Agent && &m.site == site)
                    .map(|m| m.name.clone())
                    .collect();
                if agents.is_empty() {
                    return Err(LabError::refused(format!(
                        "no agents run at {site}: only sites with hosts have clocks to skew"
                    )));
                }
                for host in agents {
                    let dir = self.faults_dir(&host);
                    std::fs::create_dir_all(&dir)
                        .with_ctx(|| format!("creating {}", dir.display()))?;
                    let file = dir.join(agent::clock::RATE_FILE);
                    std::fs::write(&file, format!("{rate}\n"))
                        .with_ctx(|| format!("writing {}", file.display()))?;
                }
            }
            Fault::DiskFail { site, volume } => {
                let host = self.replica_host(site, volume).await?;
                let dir = self.faults_dir(&host);
                std::fs::create_dir_all(&dir).with_ctx(|| format!("creating {}", dir.display()))?;
                let file = dir.join(format!("{}{volume}", agent::volumes::DISK_FAULT_PREFIX));
                std::fs::write(&file, "failed by the lab\n")
                    .with_ctx(|| format!("writing {}", file.display()))?;
            }
            Fault::DiskRepair { site, volume } => {
                let host = self.replica_host(site, volume).await?;
                let file = self
                    .faults_dir(&host)
                    .join(format!("{}{volume}", agent::volumes::DISK_FAULT_PREFIX));
                if file.exists() {
                    std::fs::remove_file(&file)
                        .with_ctx(|| format!("removing {}", file.display()))?;
                }
            }
        }
        Ok(killed)
    }

    /// SIGKILL every process of `site` at once (the site is lost in one instant), then
    /// reap them. Returns the agents killed.
    pub fn kill_site(&mut self, site: &str) -> Vec<String> {
        let mut killed = Vec::new();
        for m in self.members.iter_mut().filter(|m| m.site == site) {
            if let Some(p) = m.proc.as_mut().filter(|p| p.is_running()) {
                if m.kind == Kind::Agent {
                    killed.push(m.name.clone());
                }
                p.signal_kill();
            }
        }
        for m in self.members.iter_mut().filter(|m| m.site == site) {
            m.kill();
        }
        killed
    }

    /// Start `site`'s killed processes again on their data directories (the
    /// orchestrator node first: the agents register with the cluster).
    pub fn restart_site(&mut self, site: &str) -> Result<(), LabError> {
        for i in 0..self.members.len() {
            if self.members[i].site == site && !self.members[i].is_running() {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    fn netlab(&self) -> Result<&chaos::netns::NetLab, LabError> {
        self.net.as_ref().ok_or_else(|| {
            LabError::refused("network faults need a lab whose sites are network namespaces")
        })
    }

    /// Remove every network fault and put every link back to full speed.
    fn heal_network(&mut self) -> Result<(), LabError> {
        if let Some(net) = &self.net {
            net.heal_all().ctx("healing the network")?;
        }
        for l in &mut self.links {
            l.shape(LinkShape::default())?;
        }
        Ok(())
    }

    fn faults_dir(&self, host: &str) -> std::path::PathBuf {
        agent_state_dir(&self.dir, host).join("faults")
    }

    /// The host serving `volume`'s replica at `site`.
    pub async fn replica_host(&self, site: &str, volume: &str) -> Result<String, LabError> {
        let vs = self
            .volumes()
            .await
            .ok_or_else(|| LabError::refused("the cluster does not list its volumes"))?;
        let v = vs.iter().find(|v| v.id == volume).ok_or_else(|| {
            LabError::refused(format!(
                "no volume {volume:?} in the lab (volumes: {})",
                vs.iter()
                    .map(|v| v.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        v.replicas
            .iter()
            .find(|r| r.site == site && !r.host.is_empty())
            .map(|r| r.host.clone())
            .ok_or_else(|| LabError::refused(format!("no host serves {volume} at {site}")))
    }

    /// The host serving `volume`'s primary (or, `primary` false, a secondary), as the
    /// leader has it.
    pub async fn serving_host(&self, volume: &str, primary: bool) -> Option<String> {
        let vs = self.volumes().await?;
        vs.iter()
            .find(|v| v.id == volume)?
            .replicas
            .iter()
            .find(|r| states::is_primary(r) == primary && !r.host.is_empty())
            .map(|r| r.host.clone())
    }

    /// Undo every fault: heal the network, replace failed disks, set clocks true,
    /// resume what is paused, restart what was killed. Returns what it restarted.
    pub fn heal_everything(&mut self) -> Result<Vec<String>, LabError> {
        self.heal_network()?;
        for m in self.members.iter().filter(|m| m.kind == Kind::Agent) {
            let faults = self.faults_dir(&m.name);
            if faults.exists() {
                std::fs::remove_dir_all(&faults)
                    .with_ctx(|| format!("removing {}", faults.display()))?;
            }
        }
        for m in &mut self.members {
            if let Some(p) = &mut m.proc {
                p.resume()?;
            }
        }
        let mut restarted = Vec::new();
        // Orchestrator nodes first (they come first in `members`).
        for i in 0..self.members.len() {
            if !self.members[i].is_running() {
                self.spawn(i)?;
                restarted.push(self.members[i].name.clone());
            }
        }
        Ok(restarted)
    }
}
