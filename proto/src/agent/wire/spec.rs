//! VM and volume-group specs on the wire (`spec.proto`).

use ids::{ByteSize, Epoch, OpId, SiteId, VolumeId};
use topology::ReplicationMode;
use topology::model::Boot;
use topology::spec::{DiskSpec, GroupRole, GroupSpec, NetworkSpec, PortForward, VmSpec};

use super::{WireError, app_id, checked, missing, port, vm_id};
use crate::pb;

fn disk_to_wire(d: &DiskSpec) -> pb::DiskSpec {
    pb::DiskSpec {
        volume: d.volume.to_string(),
        size_bytes: d.size.bytes(),
    }
}

fn disk_from_wire(d: pb::DiskSpec) -> Result<DiskSpec, WireError> {
    Ok(DiskSpec {
        volume: checked("volume", d.volume, VolumeId::new)?,
        size: ByteSize(d.size_bytes),
    })
}

pub fn vm_spec_to_wire(s: &VmSpec) -> pb::VmSpec {
    let boot = match &s.boot {
        Boot::Disk => pb::boot::Kind::Disk(pb::DiskBoot {}),
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => pb::boot::Kind::Kernel(pb::KernelBoot {
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            cmdline: cmdline.clone(),
        }),
    };
    let network = match &s.network {
        NetworkSpec::None => pb::network_spec::Kind::None(pb::NoNetwork {}),
        NetworkSpec::User { forwards } => pb::network_spec::Kind::User(pb::UserNetwork {
            forwards: forwards
                .iter()
                .map(|f| pb::PortForward {
                    guest: u32::from(f.guest),
                    host: u32::from(f.host),
                })
                .collect(),
        }),
        NetworkSpec::Network { name } => {
            pb::network_spec::Kind::Network(pb::NamedNetwork { name: name.clone() })
        }
        NetworkSpec::Isolated { name } => {
            pb::network_spec::Kind::Isolated(pb::NamedNetwork { name: name.clone() })
        }
    };
    pb::VmSpec {
        vm: s.vm.to_string(),
        app: s.app.to_string(),
        vcpus: s.vcpus,
        memory_bytes: s.memory.bytes(),
        boot: Some(pb::Boot { kind: Some(boot) }),
        disks: s.disks.iter().map(disk_to_wire).collect(),
        network: Some(pb::NetworkSpec {
            kind: Some(network),
        }),
        probe_ports: s.probe_ports.iter().map(|p| u32::from(*p)).collect(),
        drill: s.drill.map(|op| op.0),
    }
}

pub fn vm_spec_from_wire(s: pb::VmSpec) -> Result<VmSpec, WireError> {
    let boot = match s
        .boot
        .and_then(|b| b.kind)
        .ok_or_else(|| missing("the VM's boot"))?
    {
        pb::boot::Kind::Disk(_) => Boot::Disk,
        pb::boot::Kind::Kernel(k) => Boot::Kernel {
            kernel: k.kernel,
            initrd: k.initrd,
            cmdline: k.cmdline,
        },
    };
    let network = match s
        .network
        .and_then(|n| n.kind)
        .ok_or_else(|| missing("the VM's network"))?
    {
        pb::network_spec::Kind::None(_) => NetworkSpec::None,
        pb::network_spec::Kind::User(u) => NetworkSpec::User {
            forwards: u
                .forwards
                .into_iter()
                .map(|f| {
                    Ok(PortForward {
                        guest: port("a forward's guest port", f.guest)?,
                        host: port("a forward's host port", f.host)?,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        },
        pb::network_spec::Kind::Network(n) => NetworkSpec::Network { name: n.name },
        pb::network_spec::Kind::Isolated(n) => NetworkSpec::Isolated { name: n.name },
    };
    Ok(VmSpec {
        vm: vm_id(s.vm)?,
        app: app_id(s.app)?,
        vcpus: s.vcpus,
        memory: ByteSize(s.memory_bytes),
        boot,
        disks: s
            .disks
            .into_iter()
            .map(disk_from_wire)
            .collect::<Result<_, _>>()?,
        network,
        probe_ports: s
            .probe_ports
            .into_iter()
            .map(|p| port("a probe port", p))
            .collect::<Result<_, _>>()?,
        drill: s.drill.map(OpId),
    })
}

pub fn mode_to_wire(m: ReplicationMode) -> pb::ReplicationMode {
    match m {
        ReplicationMode::Sync => pb::ReplicationMode::Sync,
        ReplicationMode::Async => pb::ReplicationMode::Async,
    }
}

pub fn mode_from_wire(v: i32) -> Result<ReplicationMode, WireError> {
    let bad = WireError::UnknownEnum {
        what: "the replication mode",
        value: v,
    };
    match pb::ReplicationMode::try_from(v).map_err(|_| bad.clone())? {
        pb::ReplicationMode::Sync => Ok(ReplicationMode::Sync),
        pb::ReplicationMode::Async => Ok(ReplicationMode::Async),
        pb::ReplicationMode::Unspecified => Err(bad),
    }
}

pub(crate) fn role_to_wire(r: GroupRole) -> pb::GroupRole {
    match r {
        GroupRole::Primary => pb::GroupRole::Primary,
        GroupRole::Secondary => pb::GroupRole::Secondary,
    }
}

pub(crate) fn role_from_wire(v: i32) -> Result<GroupRole, WireError> {
    let bad = WireError::UnknownEnum {
        what: "the group role",
        value: v,
    };
    match pb::GroupRole::try_from(v).map_err(|_| bad.clone())? {
        pb::GroupRole::Primary => Ok(GroupRole::Primary),
        pb::GroupRole::Secondary => Ok(GroupRole::Secondary),
        pb::GroupRole::Unspecified => Err(bad),
    }
}

pub fn group_to_wire(g: &GroupSpec) -> pb::GroupSpec {
    pb::GroupSpec {
        app: g.app.to_string(),
        site: g.site.to_string(),
        role: role_to_wire(g.role).into(),
        epoch: g.epoch.0,
        promote: g.promote,
        mode: mode_to_wire(g.mode).into(),
        peer: g.peer.clone(),
        volumes: g.volumes.iter().map(disk_to_wire).collect(),
        lag_max_s: g.lag_max_s,
        lag_max_bytes: g.lag_max_bytes,
    }
}

pub fn group_from_wire(g: pb::GroupSpec) -> Result<GroupSpec, WireError> {
    let mode = mode_from_wire(g.mode)?;
    Ok(GroupSpec {
        app: app_id(g.app)?,
        site: checked("site", g.site, SiteId::new)?,
        role: role_from_wire(g.role)?,
        epoch: Epoch(g.epoch),
        promote: g.promote,
        mode,
        peer: g.peer,
        volumes: g
            .volumes
            .into_iter()
            .map(disk_from_wire)
            .collect::<Result<_, _>>()?,
        lag_max_s: g.lag_max_s,
        lag_max_bytes: g.lag_max_bytes,
    })
}
