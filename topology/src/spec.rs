//! What an agent needs to run one VM: the VM's size, boot method, disks (its app's
//! volumes, in device order) and network, taken from the topology. The orchestrator
//! sends a [`VmSpec`] with every `define` command; the agent turns it into libvirt
//! domain XML with its own host's paths.

use serde::{Deserialize, Serialize};

use crate::ids::{AppId, ByteSize, Epoch, OpId, SiteId, VmId, VolumeId};
use crate::model::{App, Boot, Probe, Replication, ReplicationMode, Vm};

/// One disk of a VM: the replicated volume behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub volume: VolumeId,
    pub size: ByteSize,
}

/// How a VM is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum NetworkSpec {
    /// No network interface from the cluster: the agent's own `guest_network`
    /// setting decides (none, user-mode networking, or one of its libvirt networks).
    #[default]
    None,
    /// QEMU user-mode networking, restricted (the guest reaches nothing outside), with
    /// guest TCP ports forwarded to the host's loopback: for labs and one-machine
    /// demos. The agent sets it, choosing free host ports.
    User { forwards: Vec<PortForward> },
    /// A NIC on the named libvirt network.
    Network { name: String },
    /// A NIC on a network with no route to production (drills).
    Isolated { name: String },
}

/// A guest TCP port reachable at a port of the host's loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    pub guest: u16,
    pub host: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub vm: VmId,
    pub app: AppId,
    pub vcpus: u32,
    pub memory: ByteSize,
    pub boot: Boot,
    /// In device order: the first is `vda`.
    pub disks: Vec<DiskSpec>,
    pub network: NetworkSpec,
    /// The guest TCP ports the app's probes check on this VM's own address (probes
    /// without an `address`): an agent whose guests have user-mode networking forwards
    /// them to its loopback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probe_ports: Vec<u16>,
    /// Set for the copy of the VM a test drill starts (the drill's operation id): the
    /// agent names the domain apart from production (`drill-<op>-<vm>`), gives it the
    /// drill's snapshot of the disks, and never reports it as the production VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<OpId>,
}

impl VmSpec {
    /// The libvirt domain name: the VM id, or `drill-<op>-<vm>` for a drill copy.
    pub fn domain_name(&self) -> String {
        match self.drill {
            Some(op) => drill_domain_name(op, &self.vm),
            None => self.vm.to_string(),
        }
    }
}

/// The domain name of drill `op`'s copy of `vm`.
pub fn drill_domain_name(op: OpId, vm: &VmId) -> String {
    format!("drill-{}-{vm}", op.0)
}

/// The isolated libvirt network of drill `op` (no forward mode, no host address: the
/// copies reach nothing but each other).
pub fn drill_network_name(op: OpId) -> String {
    format!("mdr-drill-{}", op.0)
}

impl VmSpec {
    /// The spec of `vm`, one of `app`'s VMs. Disks whose volume the app does not have
    /// cannot occur in a validated topology and are left out.
    pub fn from_model(app: &App, vm: &Vm, network: NetworkSpec) -> VmSpec {
        VmSpec {
            vm: vm.id.clone(),
            app: app.id.clone(),
            vcpus: vm.vcpus,
            memory: vm.memory,
            boot: vm.boot.clone(),
            disks: vm
                .disks
                .iter()
                .filter_map(|d| {
                    app.volume(d).map(|v| DiskSpec {
                        volume: v.id.clone(),
                        size: v.size,
                    })
                })
                .collect(),
            network,
            probe_ports: probe_ports(app, &vm.id),
            drill: None,
        }
    }
}

/// The ports of `vm` that `app`'s tcp probes check on the VM's own address, sorted,
/// each once.
pub fn probe_ports(app: &App, vm: &VmId) -> Vec<u16> {
    let mut ports: Vec<u16> = app
        .probes
        .iter()
        .filter_map(|p| match p {
            Probe::Tcp {
                vm: v,
                port,
                address: None,
                ..
            } if v == vm => Some(*port),
            _ => None,
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Which side of its replication a served group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupRole {
    /// Serves the volumes to the app's VMs (NBD on a unix socket) and streams every
    /// write to the peer.
    Primary,
    /// Receives the primary's stream on a TCP endpoint.
    Secondary,
}

/// What an agent needs to serve one app's consistency group (all its volumes): the
/// orchestrator sends it with every `serve` command; the agent keeps the data files in
/// its own volumes directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub app: AppId,
    /// The site this replica belongs to (the primary reports its link with it).
    pub site: SiteId,
    pub role: GroupRole,
    /// The epoch the orchestrator committed for the group.
    pub epoch: Epoch,
    /// Primary only: this replica was a secondary and becomes primary at `epoch` (a
    /// failover or switchover the orchestrator committed).
    pub promote: bool,
    pub mode: ReplicationMode,
    /// Primary only: the secondary's endpoint (`host:port`); None: served alone (the
    /// other site is lost).
    pub peer: Option<String>,
    /// In the app's order (the same on both sides).
    pub volumes: Vec<DiskSpec>,
    /// Async: the most seconds and bytes the peer may lag.
    pub lag_max_s: u32,
    pub lag_max_bytes: u64,
}

impl GroupSpec {
    /// The group of `app` as served at `site` (role, epoch and peer set by the caller).
    pub fn from_model(app: &App, site: &SiteId, role: GroupRole, epoch: Epoch) -> GroupSpec {
        let (mut lag_s, mut lag_b) = (0, 0);
        for v in &app.volumes {
            if let Replication::Async {
                lag_max_s,
                lag_max_size,
            } = v.replication
            {
                lag_s = lag_s.max(lag_max_s);
                lag_b = lag_b.max(lag_max_size.bytes());
            }
        }
        let mode = if app
            .volumes
            .iter()
            .any(|v| v.replication.mode() == ReplicationMode::Sync)
        {
            ReplicationMode::Sync
        } else {
            ReplicationMode::Async
        };
        GroupSpec {
            app: app.id.clone(),
            site: site.clone(),
            role,
            epoch,
            promote: false,
            mode,
            peer: None,
            volumes: app
                .volumes
                .iter()
                .map(|v| DiskSpec {
                    volume: v.id.clone(),
                    size: v.size,
                })
                .collect(),
            lag_max_s: lag_s,
            lag_max_bytes: lag_b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_carries_the_vm_and_its_volumes_in_disk_order() {
        let t = crate::check_str(include_str!("../../examples/city-egov.toml"))
            .topology
            .expect("valid");
        let app = t.app(&AppId::new("identity-db")).expect("app");
        let spec = VmSpec::from_model(app, &app.vms[0], NetworkSpec::None);
        assert_eq!(spec.vcpus, 16);
        let vols: Vec<&str> = spec.disks.iter().map(|d| d.volume.as_str()).collect();
        assert_eq!(vols, ["identity-db-os", "identity-db-data"]);
        assert_eq!(spec.disks[1].size, ByteSize::gib(800));
        assert_eq!(
            spec.probe_ports,
            [5432],
            "its one VM answers the app's tcp probe"
        );
        let json = serde_json::to_string(&spec).expect("json");
        assert_eq!(serde_json::from_str::<VmSpec>(&json).expect("parse"), spec);
    }

    #[test]
    fn probe_ports_are_the_vm_own_tcp_probes_without_an_address() {
        let t = crate::check_str(include_str!("../../examples/city-egov.toml"))
            .topology
            .expect("valid");
        let idp = t.app(&AppId::new("identity-svc")).expect("app");
        let spec = VmSpec::from_model(idp, &idp.vms[0], NetworkSpec::None);
        assert_eq!(spec.probe_ports, [8443]);
        // The portal's probe names a service address: nothing to forward.
        let portal = t.app(&AppId::new("portal")).expect("app");
        let spec = VmSpec::from_model(portal, &portal.vms[0], NetworkSpec::None);
        assert!(spec.probe_ports.is_empty(), "{:?}", spec.probe_ports);
    }
}
