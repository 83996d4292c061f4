//! The validated topology: sites, orchestrator nodes, hosts, applications with their
//! VMs, volumes and probes. A [`Topology`] value only exists after validation passed
//! (see [`crate::check_str`]); code that holds one may rely on every reference
//! resolving, every id being unique and every number being in range.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ids::{AppId, ByteSize, HostId, NodeId, SiteId, VmId, VolumeId};
use crate::timing::Timing;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    pub description: Option<String>,
    /// Who serves the replicated volumes.
    #[serde(default)]
    pub volumes: VolumeService,
}

/// Who serves each app's replicated volumes (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeService {
    /// `metrodr volume serve|replica` processes started by the operator (they report
    /// their link with `--report-to`); agents only run VMs.
    #[default]
    External,
    /// The agents: the cluster places each group's primary on the host of the app's
    /// VMs and its secondary on a host of the other site, and promotes it there on
    /// failover. VMs with disks run on the host that holds their replica.
    Agents,
}

/// What a site is for. Exactly two production sites and one witness are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteRole {
    /// Runs applications; may take over the other production site's applications.
    Production,
    /// Holds only a Raft voter that breaks ties; runs no VMs.
    Witness,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub id: SiteId,
    pub name: String,
    pub role: SiteRole,
    pub location: Option<String>,
    pub notes: Option<String>,
}

/// One orchestrator (Raft voter) and where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchestratorNode {
    pub id: NodeId,
    pub site: SiteId,
    /// gRPC address peers, agents and operators use (`host:port`).
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub id: HostId,
    pub site: SiteId,
    /// libvirt connection URI, e.g. `qemu:///system` or `test:///default`.
    pub libvirt_uri: String,
    /// Address of the agent's endpoint (`host:port`).
    pub agent_addr: String,
    pub vcpus: u32,
    pub memory: ByteSize,
}

/// What happens to an app when its site is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverPolicy {
    /// Fail over without asking.
    #[default]
    Auto,
    /// Plan the failover, then wait for `metrodr op approve`.
    ManualApproval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMode {
    Sync,
    Async,
}

/// How a volume is replicated to the other production site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Replication {
    /// Every acknowledged write is at both sites (RPO = 0).
    Sync,
    /// Writes are acknowledged locally and shipped in order; the peer may lag by at most
    /// `lag_max_s` seconds and `lag_max_size` bytes before the primary throttles.
    Async {
        lag_max_s: u32,
        lag_max_size: ByteSize,
    },
}

impl Replication {
    pub fn mode(&self) -> ReplicationMode {
        match self {
            Replication::Sync => ReplicationMode::Sync,
            Replication::Async { .. } => ReplicationMode::Async,
        }
    }
}

/// Default bound on the bytes an async replica may lag, when only `lag_max_s` is given.
pub const DEFAULT_LAG_MAX_SIZE: ByteSize = ByteSize::mib(256);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: VolumeId,
    pub size: ByteSize,
    pub replication: Replication,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BootKind {
    /// Boot from the first disk.
    #[default]
    Disk,
    /// libvirt direct kernel boot.
    Kernel,
}

/// How a VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Boot {
    Disk,
    Kernel {
        kernel: String,
        initrd: Option<String>,
        cmdline: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub id: VmId,
    pub vcpus: u32,
    pub memory: ByteSize,
    pub boot: Boot,
    /// The app's volumes this VM uses, in device order (vda, vdb, …).
    pub disks: Vec<VolumeId>,
    /// Time from start to health gate, when the VM states it (else `timing.guest_boot_ms`).
    pub boot_estimate_s: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    Tcp,
    Serial,
}

/// A health check that must pass before an app counts as running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Probe {
    /// A TCP connection to `port` on the VM succeeds, made by the agent of the VM's
    /// host. `address` is where the service answers (a host name or IP address that
    /// host can reach: a stretched-VLAN address, a VIP); without it the agent finds
    /// the VM's own address (its `guest_network` setting).
    Tcp {
        vm: VmId,
        port: u16,
        timeout_s: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    /// `marker` appears on the VM's serial console.
    Serial {
        vm: VmId,
        marker: String,
        timeout_s: u32,
    },
}

/// Why `a` cannot be a tcp probe's `address` (None: it can): an IP address, or a
/// host name of dot-separated labels of letters, digits and `-`.
pub fn probe_address_problem(a: &str) -> Option<String> {
    if a.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    if a.is_empty() {
        return Some("probe address is empty".into());
    }
    if a.len() > 253 {
        return Some(format!(
            "probe address is {} bytes long; a host name has at most 253",
            a.len()
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if a.split('.').all(label_ok) {
        None
    } else if a.contains(':') {
        Some(format!(
            "probe address {a:?} is neither an IP address nor a host name (a port goes in `port`)"
        ))
    } else {
        Some(format!(
            "probe address {a:?} is neither an IP address nor a host name"
        ))
    }
}

/// Default time a probe may take before it counts as failed.
pub const DEFAULT_PROBE_TIMEOUT_S: u32 = 60;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub id: AppId,
    pub name: String,
    /// Failover order: tier 1 apps are brought up first.
    pub tier: u32,
    pub depends_on: Vec<AppId>,
    pub preferred_site: SiteId,
    pub failover: FailoverPolicy,
    pub rto_target_s: u32,
    pub rpo_target_s: u32,
    pub vms: Vec<Vm>,
    /// All volumes of an app form one consistency group.
    pub volumes: Vec<Volume>,
    pub probes: Vec<Probe>,
}

impl App {
    pub fn vcpus(&self) -> u64 {
        self.vms.iter().map(|v| u64::from(v.vcpus)).sum()
    }
    pub fn memory(&self) -> u64 {
        self.vms.iter().map(|v| v.memory.bytes()).sum()
    }
    pub fn volume(&self, id: &VolumeId) -> Option<&Volume> {
        self.volumes.iter().find(|v| &v.id == id)
    }
}

/// A whole validated topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub cluster: Cluster,
    pub timing: Timing,
    pub sites: Vec<Site>,
    pub orchestrators: Vec<OrchestratorNode>,
    pub hosts: Vec<Host>,
    pub apps: Vec<App>,
    /// Test drills the leader runs on a schedule (`[[drill]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drills: Vec<DrillSchedule>,
}

/// A scheduled test drill (`[[drill]]`): only test drills are scheduled (the others
/// disrupt production and are run by hand).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillSchedule {
    pub id: String,
    /// The apps to drill; empty: every app.
    pub apps: Vec<AppId>,
    /// Seconds between runs.
    pub every_s: u64,
}

impl DrillSchedule {
    /// The apps it drills in `topo`.
    pub fn apps_in(&self, topo: &Topology) -> Vec<AppId> {
        if self.apps.is_empty() {
            topo.apps.iter().map(|a| a.id.clone()).collect()
        } else {
            self.apps.clone()
        }
    }
}

/// Parse a schedule interval: an integer and a unit (s, m, h, d, w), 1 s to 365 days.
pub fn parse_every(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "" => return Err(format!("{s:?} has no unit")),
        other => return Err(format!("unknown unit {other:?}")),
    };
    let secs = n.saturating_mul(mult);
    if secs == 0 || secs > 365 * 86_400 {
        return Err(format!("{s} is outside 1s..=365d"));
    }
    Ok(secs)
}

impl Topology {
    pub fn site(&self, id: &SiteId) -> Option<&Site> {
        self.sites.iter().find(|s| &s.id == id)
    }

    /// The two production sites, in file order.
    pub fn production_sites(&self) -> impl Iterator<Item = &Site> {
        self.sites.iter().filter(|s| s.role == SiteRole::Production)
    }

    pub fn witness(&self) -> Option<&Site> {
        self.sites.iter().find(|s| s.role == SiteRole::Witness)
    }

    /// The other production site (None for the witness or an unknown id).
    pub fn peer_site(&self, id: &SiteId) -> Option<&Site> {
        if self.site(id)?.role != SiteRole::Production {
            return None;
        }
        self.production_sites().find(|s| &s.id != id)
    }

    pub fn hosts_at<'a>(&'a self, site: &'a SiteId) -> impl Iterator<Item = &'a Host> + 'a {
        self.hosts.iter().filter(move |h| &h.site == site)
    }

    pub fn host(&self, id: &HostId) -> Option<&Host> {
        self.hosts.iter().find(|h| &h.id == id)
    }

    pub fn app(&self, id: &AppId) -> Option<&App> {
        self.apps.iter().find(|a| &a.id == id)
    }

    /// Index of apps by id, for callers that look up many.
    pub fn app_index(&self) -> HashMap<&AppId, &App> {
        self.apps.iter().map(|a| (&a.id, a)).collect()
    }

    pub fn vm_count(&self) -> usize {
        self.apps.iter().map(|a| a.vms.len()).sum()
    }

    pub fn volume_count(&self) -> usize {
        self.apps.iter().map(|a| a.volumes.len()).sum()
    }
}

#[cfg(test)]
mod drill_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn intervals_have_a_number_and_a_unit_within_a_year() {
        assert_eq!(parse_every("90s"), Ok(90));
        assert_eq!(parse_every("15m"), Ok(900));
        assert_eq!(parse_every("12h"), Ok(43_200));
        assert_eq!(parse_every("7d"), Ok(604_800));
        assert_eq!(parse_every("2w"), Ok(1_209_600));
        assert_eq!(parse_every("365d"), Ok(365 * 86_400));
        for bad in [
            "0s",
            "7",
            "7x",
            "d",
            "",
            "-1d",
            "366d",
            "1.5h",
            "99999999999999999999w",
        ] {
            assert!(parse_every(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_drill_schedule_parses_to_the_model_and_round_trips() {
        let text = format!(
            "{}\n[[drill]]\nid = \"weekly\"\nkind = \"test\"\nevery = \"7d\"\n\n[[drill]]\nid = \"web-daily\"\nkind = \"test\"\napps = [\"web\"]\nevery = \"1d\"\n",
            include_str!("../../examples/minimal.toml")
        );
        let t = crate::check_str(&text).topology.unwrap();
        assert_eq!(
            t.drills,
            vec![
                DrillSchedule {
                    id: "weekly".into(),
                    apps: vec![],
                    every_s: 604_800
                },
                DrillSchedule {
                    id: "web-daily".into(),
                    apps: vec![AppId::new("web")],
                    every_s: 86_400
                },
            ]
        );
        assert_eq!(t.drills[0].apps_in(&t), vec![AppId::new("web")]);
        let again = crate::check_str(&crate::render::to_toml(&t))
            .topology
            .unwrap();
        assert_eq!(again.drills, t.drills);
    }
}
