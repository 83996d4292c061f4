//! Why a plan leaves an app alone: a closed enum the planner writes and readiness, the
//! CLI and reports decide on (`match`), rendered for people by `Display` — the texts
//! operators always read.
//!
//! Never: decide anything on the rendered text.

use std::fmt;

use serde::{Deserialize, Serialize};
use topology::{AppId, ByteSize, HostId, SiteId, VmId, VolumeId};

use crate::records::DataState;

/// Why the plan cannot move an app (see [`super::Skip`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum SkipReason {
    /// The topology has the app but the cluster state does not (yet).
    NotInState,
    /// A running operation owns the app (or a running drill has a copy of it).
    Busy,
    /// The app depends on `dep`, which this plan cannot move and which is not active at
    /// the target.
    DependencySkipped { dep: AppId },
    /// A test drill of an app active at the drill site (its copy must run at the other).
    DrillAtActiveSite { site: SiteId },
    /// The app is active at the target already.
    AlreadyActive { site: SiteId },
    /// The target site is down.
    TargetDown { site: SiteId },
    /// A graceful move whose source site is down.
    SourceDown {
        site: SiteId,
        app: AppId,
        to: SiteId,
    },
    /// A volume of the app's group is not in the cluster state.
    VolumeMissing { volume: VolumeId },
    /// A volume of the group has no replica at the target.
    NoReplica { volume: VolumeId, site: SiteId },
    /// The replica at the target is not up to date: it may not be promoted.
    ReplicaNotUpToDate {
        volume: VolumeId,
        site: SiteId,
        data: DataState,
    },
    /// A switchover of an async volume served outside the cluster (its lag cannot be
    /// drained by the cluster).
    AsyncServedOutside { volume: VolumeId },
    /// A drill of volumes served outside the cluster (nothing can snapshot them).
    DrillServedOutside,
    /// A host loss of the host that served the app's replicas in its site.
    ReplicaHostLost {
        app: AppId,
        site: SiteId,
        host: HostId,
    },
    /// The host that serves the app's replicas at the target is not up.
    ReplicaHostDown { host: HostId, site: SiteId },
    /// A host where a fence stopped the app's VMs is not up.
    FencedHostDown { host: HostId },
    /// The fenced host does not serve the app's group again yet.
    NotServedAgain { host: HostId },
    /// The host serving the replicas at the target has no room for a VM with disks.
    NoRoomOnReplicaHost {
        host: HostId,
        site: SiteId,
        vm: VmId,
        vcpus: u32,
        memory: ByteSize,
    },
    /// No up host at the target has room for a VM.
    NoRoom {
        site: SiteId,
        vm: VmId,
        vcpus: u32,
        memory: ByteSize,
    },
}

impl SkipReason {
    /// The app's replicas at the target cannot be promoted: a missing volume or replica,
    /// or a replica that is not up to date. Readiness counts these per volume already.
    pub fn is_replica_state(&self) -> bool {
        matches!(
            self,
            SkipReason::VolumeMissing { .. }
                | SkipReason::NoReplica { .. }
                | SkipReason::ReplicaNotUpToDate { .. }
        )
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NotInState => {
                f.write_str("not in the cluster state (apply the topology first)")
            }
            SkipReason::Busy => f.write_str(
                "another operation is moving it or drilling it (wait for it or see `metrodr op list`)",
            ),
            SkipReason::DependencySkipped { dep } => write!(
                f,
                "it depends on {dep}, which this plan cannot move (see that app's reason)"
            ),
            SkipReason::DrillAtActiveSite { site } => write!(
                f,
                "it is active at {site}: a test drill starts its copy at the other site"
            ),
            SkipReason::AlreadyActive { site } => write!(f, "already active at {site}"),
            SkipReason::TargetDown { site } => write!(
                f,
                "site {site} is down (recover it first: `metrodr site recover {site}`)"
            ),
            SkipReason::SourceDown { site, app, to } => write!(
                f,
                "site {site} is down: a switchover needs the source up (use `metrodr app failover {app} --to {to}`)"
            ),
            SkipReason::VolumeMissing { volume } => {
                write!(f, "volume {volume} is not in the cluster state")
            }
            SkipReason::NoReplica { volume, site } => {
                write!(f, "volume {volume} has no replica at {site}")
            }
            SkipReason::ReplicaNotUpToDate { volume, site, data } => write!(
                f,
                "the replica of volume {volume} at {site} is {data:?}: only an up-to-date replica may be promoted (let it resync, then retry)"
            ),
            SkipReason::AsyncServedOutside { volume } => write!(
                f,
                "volume {volume} replicates asynchronously and is served outside the cluster, which cannot drain its lag (serve the volumes by the agents, or use `metrodr app failover`, whose RPO is bounded by the lag)"
            ),
            SkipReason::DrillServedOutside => f.write_str(
                "its volumes are served outside the cluster, which cannot snapshot them for a drill (serve the volumes by the agents: `volumes = \"agents\"`)",
            ),
            SkipReason::ReplicaHostLost { app, site, host } => write!(
                f,
                "its volumes at {site} were served by the lost host {host}: fail it over to the other site (`metrodr app failover {app} --to SITE`)"
            ),
            SkipReason::ReplicaHostDown { host, site } => {
                write!(f, "host {host}, which holds its replicas at {site}, is not up")
            }
            SkipReason::FencedHostDown { host } => {
                write!(f, "host {host}, where its fence stopped the VMs, is not up")
            }
            SkipReason::NotServedAgain { host } => write!(
                f,
                "host {host} does not serve its volumes again yet (the fence stopped them)"
            ),
            SkipReason::NoRoomOnReplicaHost {
                host,
                site,
                vm,
                vcpus,
                memory,
            } => write!(
                f,
                "host {host}, which holds its replicas at {site}, has no room for VM {vm} ({vcpus} vCPUs, {memory})"
            ),
            SkipReason::NoRoom {
                site,
                vm,
                vcpus,
                memory,
            } => write!(
                f,
                "no up host at {site} has room for VM {vm} ({vcpus} vCPUs, {memory}) (add capacity or move lower tiers)"
            ),
        }
    }
}
