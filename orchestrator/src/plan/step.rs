//! The steps of a plan, each with every parameter it needs, decided when the plan was
//! made: the hosts, the peer endpoint, the epochs, the data state the old primary gets,
//! the drain's grace, the VM specs, the probes and where they run. The executor only
//! carries them out (and reacts where a step allows it: a host that went down since,
//! a VM a fence stopped after the plan); a step's identity is its place in the plan
//! ([`StepAt`]).
//!
//! Never: leave a choice to execution time, or identify a step by its name.

use std::fmt;

use ids::OpId;
use serde::{Deserialize, Serialize};
use topology::spec::{GroupSpec, NetworkSpec, VmSpec, drill_network_name};
use topology::{AppId, HostId, Probe, SiteId, VmId};

use super::Plan;
use crate::records::{AgentAction, DataState, Promotion, StepAt, StepKind};

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum PlannedStep {
    /// Wait for `metrodr op approve` (policy `manual-approval`, after a loss).
    Approval,
    /// Stop the app's VMs at `site`: shut down (`graceful`, destroyed after
    /// `shutdown_timeout_s`) or destroyed (a fence). A VM whose host is down by then
    /// was fenced by its lease.
    StopVms {
        site: SiteId,
        graceful: bool,
        vms: Vec<(VmId, HostId)>,
        shutdown_timeout_s: u32,
    },
    /// `host` stops serving the group at `site`. With `confirm` (a graceful move) its
    /// primary first drains for up to `grace_s`, and nothing is promoted unless its peer
    /// confirmed every write.
    UnserveSource {
        site: SiteId,
        host: HostId,
        grace_s: u32,
        confirm: bool,
    },
    /// One `MoveApp`: every volume of the group promoted at `to` at exactly its epoch
    /// here, the old primary given `demoted`, the app active at `to` on `placement`.
    PromoteAndMove {
        to: SiteId,
        promote: Vec<Promotion>,
        demoted: DataState,
        placement: Vec<(VmId, HostId)>,
    },
    /// `host`'s agent serves the promoted group (`group`: primary at the committed
    /// epoch, promoting, its peer the source's endpoint).
    ServeVolumes { host: HostId, group: GroupSpec },
    /// Define and start these VMs.
    StartVms { vms: Vec<(HostId, VmSpec)> },
    /// Every VM of `placement` running, then `probes`. `restart`: every VM of
    /// `placement` with its spec, which the gate starts again where placed if its agent
    /// reports it stopped there and the operation has not started it since that agent
    /// last registered (a fence after the plan was made, or after the move started it).
    HealthGate {
        site: SiteId,
        placement: Vec<(VmId, HostId)>,
        restart: Vec<(HostId, VmSpec)>,
        probes: Vec<PlannedProbe>,
    },
    /// A drill's record of production before it starts.
    Baseline,
    /// A drill's snapshot of the app's replicas, by the agent serving them at `host`.
    Snapshot { host: HostId },
    /// A drill's copies of these VMs (the specs of production: the executor makes
    /// each the drill's copy with [`drill_copy`]).
    StartDrillVms {
        site: SiteId,
        copies: Vec<(HostId, VmSpec)>,
    },
    /// A drill's serial probes on its copies; `unchecked`: the tcp probes, which no
    /// host can run on the isolated network.
    DrillHealthGate {
        site: SiteId,
        copies: u32,
        probes: Vec<PlannedProbe>,
        unchecked: Vec<(VmId, u16)>,
    },
    /// A drill's check of production against its baseline.
    ProductionCheck,
    /// Remove whatever the drill made on these hosts.
    Cleanup { hosts: Vec<HostId> },
    /// A drill's check of `app`'s production once the drill is gone.
    ProductionAfter { app: AppId },
}

/// A probe of the health gate and the host whose agent runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedProbe {
    pub host: HostId,
    /// The app's probe, its timeout within 1 s..=1 h.
    pub probe: Probe,
}

impl PlannedProbe {
    pub fn timeout_s(&self) -> u32 {
        match &self.probe {
            Probe::Serial { timeout_s, .. } | Probe::Tcp { timeout_s, .. } => *timeout_s,
        }
    }

    /// The agent command that runs it on a production VM.
    pub fn action(&self) -> AgentAction {
        match &self.probe {
            Probe::Serial {
                vm,
                marker,
                timeout_s,
            } => AgentAction::Probe {
                vm: vm.clone(),
                marker: marker.clone(),
                timeout_s: *timeout_s,
            },
            Probe::Tcp {
                vm,
                port,
                timeout_s,
                address,
            } => AgentAction::TcpProbe {
                vm: vm.clone(),
                port: *port,
                address: address.clone(),
                timeout_s: *timeout_s,
            },
        }
    }

    /// The agent command that runs it on drill `op`'s copy of the VM (serial probes
    /// only: no host reaches a copy's ports).
    pub fn drill_action(&self, op: OpId) -> Option<AgentAction> {
        match &self.probe {
            Probe::Serial {
                vm,
                marker,
                timeout_s,
            } => Some(AgentAction::DrillProbe {
                op,
                vm: vm.clone(),
                marker: marker.clone(),
                timeout_s: *timeout_s,
            }),
            Probe::Tcp { .. } => None,
        }
    }
}

/// Longest probe timeout, in seconds, of `probes` (0: none).
pub fn longest_probe_s(probes: &[PlannedProbe]) -> u64 {
    probes
        .iter()
        .map(|p| u64::from(p.timeout_s()))
        .max()
        .unwrap_or(0)
}

/// The copy drill `op` starts of a production VM's `spec`: its own domain name, the
/// drill's snapshot of the disks, the drill's isolated network (named after the
/// operation, which a plan does not know until it is begun).
pub fn drill_copy(spec: &VmSpec, op: OpId) -> VmSpec {
    let mut copy = spec.clone();
    copy.network = NetworkSpec::Isolated {
        name: drill_network_name(op),
    };
    copy.drill = Some(op);
    copy
}

impl PlannedStep {
    pub fn kind(&self) -> StepKind {
        match self {
            PlannedStep::Approval => StepKind::Approval,
            PlannedStep::StopVms { graceful: true, .. } => StepKind::Stop,
            PlannedStep::StopVms {
                graceful: false, ..
            } => StepKind::Fence,
            PlannedStep::UnserveSource { .. } => StepKind::StopVolumes,
            PlannedStep::PromoteAndMove { .. } => StepKind::PromoteAndMove,
            PlannedStep::ServeVolumes { .. } => StepKind::ServeVolumes,
            PlannedStep::StartVms { .. } => StepKind::StartVms,
            PlannedStep::HealthGate { .. } | PlannedStep::DrillHealthGate { .. } => {
                StepKind::HealthGate
            }
            PlannedStep::Baseline => StepKind::Baseline,
            PlannedStep::Snapshot { .. } => StepKind::Snapshot,
            PlannedStep::StartDrillVms { .. } => StepKind::StartDrillVms,
            PlannedStep::ProductionCheck => StepKind::ProductionCheck,
            PlannedStep::Cleanup { .. } => StepKind::Cleanup,
            PlannedStep::ProductionAfter { .. } => StepKind::ProductionAfter,
        }
    }

    /// The app a step of the whole operation is about (a drill's check of one app).
    pub fn app(&self) -> Option<&AppId> {
        match self {
            PlannedStep::ProductionAfter { app } => Some(app),
            _ => None,
        }
    }

    /// Every host the step names (the state machine checks they exist).
    pub fn hosts(&self) -> Vec<&HostId> {
        match self {
            PlannedStep::StopVms { vms, .. } => vms.iter().map(|(_, h)| h).collect(),
            PlannedStep::UnserveSource { host, .. }
            | PlannedStep::ServeVolumes { host, .. }
            | PlannedStep::Snapshot { host } => vec![host],
            PlannedStep::PromoteAndMove { placement, .. } => {
                placement.iter().map(|(_, h)| h).collect()
            }
            PlannedStep::StartVms { vms } => vms.iter().map(|(h, _)| h).collect(),
            PlannedStep::HealthGate {
                placement, probes, ..
            } => placement
                .iter()
                .map(|(_, h)| h)
                .chain(probes.iter().map(|p| &p.host))
                .collect(),
            PlannedStep::StartDrillVms { copies, .. } => copies.iter().map(|(h, _)| h).collect(),
            PlannedStep::DrillHealthGate { probes, .. } => probes.iter().map(|p| &p.host).collect(),
            PlannedStep::Cleanup { hosts } => hosts.iter().collect(),
            PlannedStep::Approval
            | PlannedStep::Baseline
            | PlannedStep::ProductionCheck
            | PlannedStep::ProductionAfter { .. } => Vec::new(),
        }
    }
}

/// The step's name for people: `stop at north`, `serve volumes at south-h2`, ….
impl fmt::Display for PlannedStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlannedStep::StopVms {
                site,
                graceful: true,
                ..
            } => write!(f, "stop at {site}"),
            PlannedStep::StopVms {
                site,
                graceful: false,
                ..
            } => write!(f, "fence at {site}"),
            PlannedStep::UnserveSource { site, .. } => write!(f, "stop volumes at {site}"),
            PlannedStep::PromoteAndMove { to, .. } => write!(f, "promote and move to {to}"),
            PlannedStep::ServeVolumes { host, .. } => write!(f, "serve volumes at {host}"),
            PlannedStep::Snapshot { host } => write!(f, "snapshot at {host}"),
            other => f.write_str(other.kind().label()),
        }
    }
}

impl Plan {
    /// The planned step at `at`.
    pub fn step(&self, at: &StepAt) -> Option<&PlannedStep> {
        let index = |i: &u32| usize::try_from(*i).ok();
        match at {
            StepAt::App { app, index: i } => {
                self.apps().find(|m| &m.app == app)?.steps.get(index(i)?)
            }
            StepAt::Closing { index: i } => self.closing.get(index(i)?),
            StepAt::Interrupted { index: i } => self.interrupted.get(index(i)?),
        }
    }

    /// The name of the step at `at` for people (`cleanup after interruption` for a
    /// drill's interruption cleanup); its kind's label if the plan has no such step.
    pub fn step_name(&self, at: &StepAt, kind: StepKind) -> String {
        match (at, self.step(at)) {
            (StepAt::Interrupted { .. }, Some(s)) => format!("{s} after interruption"),
            (_, Some(s)) => s.to_string(),
            (_, None) => kind.label().to_string(),
        }
    }
}
