//! Plans (DESIGN §6): what a failover, switchover, failback or drill will do, as an
//! immutable value the planner makes and the executor carries out.
//!
//! Plain data, below the state machine: a plan is committed through Raft inside
//! `Command::BeginPlan` and recorded with its operation, so that a new
//! leader finishes it without re-deciding anything. Each app's move is a list of
//! [`PlannedStep`]s with every parameter decided ([`step`]); an app left alone carries
//! a [`SkipReason`] ([`skip`]).
//!
//! Never: depend on the state machine or on anything that does I/O.

mod skip;
mod step;

use serde::{Deserialize, Serialize};
use topology::{AppId, HostId, SiteId, VmId, VolumeId};

use proto::agent::VmState;

use crate::records::OpKind;
pub use skip::SkipReason;
pub use step::{PlannedProbe, PlannedStep, drill_copy, longest_probe_s};

/// Time a guest gets to shut down in a switchover before it is destroyed.
pub const SHUTDOWN_TIMEOUT_S: u32 = 60;

/// What asks for a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Trigger {
    /// A production site is lost (declared `Down` by the leader, or by an operator with
    /// `site fail`): every app active there fails over to the other site.
    SiteLost { site: SiteId },
    /// One host is lost: its VMs restart on other hosts of the same site (the site's
    /// replicas are intact, so nothing is promoted).
    HostLost { host: HostId },
    /// A host's agent fenced its VMs (its lease ran out, e.g. during a long leader
    /// change) and is back: the VMs it stopped restart where they were placed.
    HostFenced { host: HostId },
    /// The reconciler found VMs that should run and do not, on up hosts at their
    /// app's active site, with no operation moving them and no event-triggered plan
    /// covering them (a site back within the lease window, a second loss, a lost
    /// report): each restarts where it is placed.
    Restore { vms: Vec<StoppedVm> },
    /// An operator moves apps to `to` now, as after a loss (no graceful stop).
    Failover { apps: Vec<AppId>, to: SiteId },
    /// A planned move with zero loss: stop at the source, drain, promote, start.
    Switchover { apps: Vec<AppId>, to: SiteId },
    /// A switchover of apps back to their preferred site.
    Failback { apps: Vec<AppId> },
    /// A non-disruptive test drill: start a copy of each app at `to` (default: the
    /// other production site) on copy-on-write snapshots of its replicas, on an
    /// isolated network; production is not touched.
    TestDrill {
        apps: Vec<AppId>,
        to: Option<SiteId>,
    },
}

impl Trigger {
    pub fn kind(&self) -> OpKind {
        match self {
            Trigger::SiteLost { .. }
            | Trigger::HostLost { .. }
            | Trigger::HostFenced { .. }
            | Trigger::Restore { .. }
            | Trigger::Failover { .. } => OpKind::Failover,
            Trigger::Switchover { .. } => OpKind::Switchover,
            Trigger::Failback { .. } => OpKind::Failback,
            Trigger::TestDrill { .. } => OpKind::Drill,
        }
    }

    /// One line for the operation's note and the audit log.
    pub fn describe(&self) -> String {
        let list = |apps: &[AppId]| {
            apps.iter()
                .map(AppId::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Trigger::SiteLost { site } => format!("site {site} lost"),
            Trigger::HostLost { host } => format!("host {host} lost"),
            Trigger::HostFenced { host } => {
                format!("host {host} fenced its VMs and is back: restart them there")
            }
            Trigger::Restore { vms } => format!(
                "restore: {} not running where placed ({}): restart there",
                if vms.len() == 1 { "1 VM" } else { "VMs" },
                vms.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Trigger::Failover { apps, to } => format!("failover of [{}] to {to}", list(apps)),
            Trigger::Switchover { apps, to } => {
                format!("switchover of [{}] to {to}", list(apps))
            }
            Trigger::Failback { apps } => format!("failback of [{}]", list(apps)),
            Trigger::TestDrill { apps, to } => match to {
                Some(to) => format!("test drill of [{}] at {to}", list(apps)),
                None => format!("test drill of [{}]", list(apps)),
            },
        }
    }
}

/// A VM the reconciler restarts where it is placed, and how it was last seen there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppedVm {
    pub app: AppId,
    pub vm: VmId,
    pub host: HostId,
    /// What the host's agent reports since it last registered (None: nothing).
    pub state: Option<VmState>,
    /// Since when it has not run there (ms since the epoch).
    pub since_ms: u64,
}

impl std::fmt::Display for StoppedVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} on {}: ", self.vm, self.app, self.host)?;
        match self.state {
            Some(st) => write!(f, "{st}"),
            None => f.write_str("not reported"),
        }
    }
}

/// How one app moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppMove {
    pub app: AppId,
    pub tier: u32,
    pub from: SiteId,
    pub to: SiteId,
    /// Policy `manual-approval`: wait for `metrodr op approve` before touching anything.
    pub needs_approval: bool,
    /// Stop the VMs at the source and drain replication before promoting (switchover,
    /// failback); false when the source is lost.
    pub graceful: bool,
    /// The consistency group to promote at `to` (empty when `from == to`: a host loss
    /// inside a site promotes nothing).
    pub volumes: Vec<VolumeId>,
    /// Where the app's VMs run afterwards (every VM, including those that stay).
    pub placement: Vec<(VmId, HostId)>,
    /// The VMs that (re)start, with their new host.
    pub starts: Vec<(VmId, HostId)>,
    /// The VMs stopped first: (vm, host at the source): shut down for a graceful move,
    /// destroyed (fenced) when the source is declared lost but its host is still up.
    pub stops: Vec<(VmId, HostId)>,
    pub rto_target_s: u32,
    /// How long to wait for the health gate before the app is marked failed (and for
    /// the agents' results of each of its other steps).
    pub health_timeout_ms: u64,
    /// What the executor does, in order, with every parameter (the fields above
    /// summarize them). A step's index here is its identity.
    pub steps: Vec<PlannedStep>,
}

/// Apps that start together: each depends only on apps of earlier waves or on apps
/// that do not move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub apps: Vec<AppMove>,
}

/// An app the plan leaves alone, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    pub app: AppId,
    pub reason: SkipReason,
}

/// What kind of drill an operation is, if it is one: a test drill (kind `Drill`), or
/// a real switchover or declared site loss run as a drill (its report says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrillKind {
    Test,
    Switchover,
    SiteLoss,
}

/// The immutable plan an operation executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub kind: OpKind,
    pub trigger: Trigger,
    pub waves: Vec<Wave>,
    pub skipped: Vec<Skip>,
    /// Set when the operation runs as a drill (`metrodr drill run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillKind>,
    /// What the operation does after every wave, in order (a test drill's cleanup and
    /// its last production checks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub closing: Vec<PlannedStep>,
    /// What a new leader does with a test drill it finds interrupted (it is never
    /// resumed: its measurements would be wrong).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interrupted: Vec<PlannedStep>,
}

impl Plan {
    pub fn apps(&self) -> impl Iterator<Item = &AppMove> {
        self.waves.iter().flat_map(|w| w.apps.iter())
    }
    pub fn is_empty(&self) -> bool {
        self.waves.is_empty()
    }
}

/// Why no plan can be made at all (per-app problems are [`Skip`]s instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no topology has been applied yet (run `metrodr topology apply FILE`)")]
    NoTopology,
    #[error("no site \"{0}\" in the topology")]
    UnknownSite(SiteId),
    #[error("site {0} is the witness; it runs no applications (name a production site)")]
    WitnessSite(SiteId),
    #[error("no host \"{0}\" in the cluster")]
    UnknownHost(HostId),
    #[error("no app \"{0}\" in the topology")]
    UnknownApp(AppId),
    #[error("no apps named (give at least one app)")]
    NoApps,
}
