//! Why a plan leaves an app alone, on the wire (`SkipReason`), both ways: one message
//! per variant, every field kept, so that readiness, the CLI and reports on the other
//! side decide on the same typed reason.
//!
//! Never: send or read the reason as its rendered text.

use topology::ByteSize;

use super::WireError;
use super::audit::{app, host, s, site, vm, volume};
use super::plan::missing;
use super::states::{data_state_from_wire, data_state_to_wire};
use crate::pb;
use crate::pb::skip_reason::Reason as R;
use crate::plan::{Skip, SkipReason};

/// An app a plan leaves alone, and why.
pub fn skip_to_wire(k: &Skip) -> pb::Skip {
    pb::Skip {
        app: s(&k.app),
        reason: Some(skip_reason_to_wire(&k.reason)),
    }
}

pub fn skip_from_wire(k: pb::Skip) -> Result<Skip, WireError> {
    Ok(Skip {
        app: app(k.app)?,
        reason: skip_reason_from_wire(k.reason.ok_or_else(|| missing("a skipped app's reason"))?)?,
    })
}

pub fn skip_reason_to_wire(r: &SkipReason) -> pb::SkipReason {
    let x = match r {
        SkipReason::NotInState => R::NotInState(pb::SkipNotInState {}),
        SkipReason::Busy => R::Busy(pb::SkipBusy {}),
        SkipReason::DependencySkipped { dep } => {
            R::DependencySkipped(pb::SkipDependencySkipped { dep: s(dep) })
        }
        SkipReason::DrillAtActiveSite { site } => {
            R::DrillAtActiveSite(pb::SkipDrillAtActiveSite { site: s(site) })
        }
        SkipReason::AlreadyActive { site } => {
            R::AlreadyActive(pb::SkipAlreadyActive { site: s(site) })
        }
        SkipReason::TargetDown { site } => R::TargetDown(pb::SkipTargetDown { site: s(site) }),
        SkipReason::SourceDown { site, app, to } => R::SourceDown(pb::SkipSourceDown {
            site: s(site),
            app: s(app),
            to: s(to),
        }),
        SkipReason::VolumeMissing { volume } => {
            R::VolumeMissing(pb::SkipVolumeMissing { volume: s(volume) })
        }
        SkipReason::NoReplica { volume, site } => R::NoReplica(pb::SkipNoReplica {
            volume: s(volume),
            site: s(site),
        }),
        SkipReason::ReplicaNotUpToDate { volume, site, data } => {
            R::ReplicaNotUpToDate(pb::SkipReplicaNotUpToDate {
                volume: s(volume),
                site: s(site),
                data: data_state_to_wire(*data).into(),
            })
        }
        SkipReason::AsyncServedOutside { volume } => {
            R::AsyncServedOutside(pb::SkipAsyncServedOutside { volume: s(volume) })
        }
        SkipReason::DrillServedOutside => R::DrillServedOutside(pb::SkipDrillServedOutside {}),
        SkipReason::ReplicaHostLost { app, site, host } => {
            R::ReplicaHostLost(pb::SkipReplicaHostLost {
                app: s(app),
                site: s(site),
                host: s(host),
            })
        }
        SkipReason::ReplicaHostDown { host, site } => R::ReplicaHostDown(pb::SkipReplicaHostDown {
            host: s(host),
            site: s(site),
        }),
        SkipReason::FencedHostDown { host } => {
            R::FencedHostDown(pb::SkipFencedHostDown { host: s(host) })
        }
        SkipReason::NotServedAgain { host } => {
            R::NotServedAgain(pb::SkipNotServedAgain { host: s(host) })
        }
        SkipReason::NoRoomOnReplicaHost {
            host,
            site,
            vm,
            vcpus,
            memory,
        } => R::NoRoomOnReplicaHost(pb::SkipNoRoomOnReplicaHost {
            host: s(host),
            site: s(site),
            vm: s(vm),
            vcpus: *vcpus,
            memory_bytes: memory.0,
        }),
        SkipReason::NoRoom {
            site,
            vm,
            vcpus,
            memory,
        } => R::NoRoom(pb::SkipNoRoom {
            site: s(site),
            vm: s(vm),
            vcpus: *vcpus,
            memory_bytes: memory.0,
        }),
    };
    pb::SkipReason { reason: Some(x) }
}

pub fn skip_reason_from_wire(r: pb::SkipReason) -> Result<SkipReason, WireError> {
    Ok(
        match r.reason.ok_or_else(|| missing("a skipped app's reason"))? {
            R::NotInState(_) => SkipReason::NotInState,
            R::Busy(_) => SkipReason::Busy,
            R::DependencySkipped(x) => SkipReason::DependencySkipped { dep: app(x.dep)? },
            R::DrillAtActiveSite(x) => SkipReason::DrillAtActiveSite {
                site: site(x.site)?,
            },
            R::AlreadyActive(x) => SkipReason::AlreadyActive {
                site: site(x.site)?,
            },
            R::TargetDown(x) => SkipReason::TargetDown {
                site: site(x.site)?,
            },
            R::SourceDown(x) => SkipReason::SourceDown {
                site: site(x.site)?,
                app: app(x.app)?,
                to: site(x.to)?,
            },
            R::VolumeMissing(x) => SkipReason::VolumeMissing {
                volume: volume(x.volume)?,
            },
            R::NoReplica(x) => SkipReason::NoReplica {
                volume: volume(x.volume)?,
                site: site(x.site)?,
            },
            R::ReplicaNotUpToDate(x) => SkipReason::ReplicaNotUpToDate {
                volume: volume(x.volume)?,
                site: site(x.site)?,
                data: data_state_from_wire(x.data)?,
            },
            R::AsyncServedOutside(x) => SkipReason::AsyncServedOutside {
                volume: volume(x.volume)?,
            },
            R::DrillServedOutside(_) => SkipReason::DrillServedOutside,
            R::ReplicaHostLost(x) => SkipReason::ReplicaHostLost {
                app: app(x.app)?,
                site: site(x.site)?,
                host: host(x.host)?,
            },
            R::ReplicaHostDown(x) => SkipReason::ReplicaHostDown {
                host: host(x.host)?,
                site: site(x.site)?,
            },
            R::FencedHostDown(x) => SkipReason::FencedHostDown {
                host: host(x.host)?,
            },
            R::NotServedAgain(x) => SkipReason::NotServedAgain {
                host: host(x.host)?,
            },
            R::NoRoomOnReplicaHost(x) => SkipReason::NoRoomOnReplicaHost {
                host: host(x.host)?,
                site: site(x.site)?,
                vm: vm(x.vm)?,
                vcpus: x.vcpus,
                memory: ByteSize(x.memory_bytes),
            },
            R::NoRoom(x) => SkipReason::NoRoom {
                site: site(x.site)?,
                vm: vm(x.vm)?,
                vcpus: x.vcpus,
                memory: ByteSize(x.memory_bytes),
            },
        },
    )
}
