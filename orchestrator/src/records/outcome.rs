//! What a step did: one variant per kind of step, carrying its evidence (the epochs
//! promoted, the endpoint served, the peer's confirmation of the stopped primary, the
//! VMs started, the probes passed, the snapshot's sequence number, the isolation the
//! agent verified, production as a drill saw it). Reports and the CLI read these;
//! `Display` renders them for people.
//!
//! Never: carry a claim only as text.

use std::fmt;

use ids::{Epoch, GroupSeq, OpId};
use serde::{Deserialize, Serialize};
use topology::{AppId, HostId, SiteId, VmId, VolumeId};

use super::production::join;
use super::{CommandOutcome, DataState, Production, StepKind};
use proto::agent::{Served, StoppedGroup};

/// What a step did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum StepOutcome {
    /// An operator approved the app (`metrodr op approve`).
    Approved { op: OpId },
    /// The app's VMs at the source are stopped.
    VmsStopped { vms: Vec<VmStopped> },
    /// The source's agent stopped serving the group: `stopped` is what the primary
    /// knew of its peer (None: nothing was served there).
    SourceUnserved {
        host: HostId,
        stopped: Option<StoppedGroup>,
    },
    /// The source's host is down: its lease ran out, so its agent fenced (or died)
    /// and serves nothing.
    SourceDown { host: HostId },
    /// The promotion and the move, committed.
    Moved(Moved),
    /// The target's agent serves the promoted group.
    Served { host: HostId, served: Served },
    /// The VMs defined and started, where.
    VmsStarted { vms: Vec<(VmId, HostId)> },
    /// Every VM running where placed, then every probe passed.
    Healthy(Healthy),
    /// A drill's baseline: production as it was, replication within its bound.
    Baseline { production: Production },
    /// A drill's snapshot of the app's replicas, taken by the agent of `host`.
    Snapshot {
        host: HostId,
        app: AppId,
        /// The sequence point of the copy (every volume of the group at it).
        seq: GroupSeq,
        volumes: u32,
        /// Taken earlier by the same drill.
        already: bool,
    },
    /// A drill's copies, each as its agent started it (`DrillStarted`: the network it
    /// joined and whether the agent verified that network isolated).
    DrillVmsStarted { copies: Vec<AgentDid> },
    /// A drill's copies running, their serial probes passed; tcp probes cannot reach
    /// the isolated network and are only named.
    DrillHealthy {
        copies: u32,
        site: SiteId,
        probes: Vec<AgentDid>,
        unchecked: Vec<(VmId, u16)>,
    },
    /// A drill's check: production as at the baseline, replication within its bound.
    ProductionUnchanged { production: Production },
    /// A drill removed from every host it may have touched (empty: it touched none).
    Cleaned { hosts: Vec<AgentDid> },
}

impl StepOutcome {
    /// Whether a step of `kind` can have this outcome (the state machine refuses any
    /// other, so a record's outcome always matches its kind).
    pub fn fits(&self, kind: StepKind) -> bool {
        match self {
            StepOutcome::Approved { .. } => kind == StepKind::Approval,
            StepOutcome::VmsStopped { .. } => matches!(kind, StepKind::Fence | StepKind::Stop),
            StepOutcome::SourceUnserved { .. } | StepOutcome::SourceDown { .. } => {
                kind == StepKind::StopVolumes
            }
            StepOutcome::Moved(_) => kind == StepKind::PromoteAndMove,
            StepOutcome::Served { .. } => kind == StepKind::ServeVolumes,
            StepOutcome::VmsStarted { .. } => kind == StepKind::StartVms,
            StepOutcome::Healthy(_) | StepOutcome::DrillHealthy { .. } => {
                kind == StepKind::HealthGate
            }
            StepOutcome::Baseline { .. } => kind == StepKind::Baseline,
            StepOutcome::Snapshot { .. } => kind == StepKind::Snapshot,
            StepOutcome::DrillVmsStarted { .. } => kind == StepKind::StartDrillVms,
            StepOutcome::ProductionUnchanged { .. } => {
                matches!(kind, StepKind::ProductionCheck | StepKind::ProductionAfter)
            }
            StepOutcome::Cleaned { .. } => kind == StepKind::Cleanup,
        }
    }
}

/// How one VM at the source was stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStopped {
    pub vm: VmId,
    pub host: HostId,
    pub how: VmStop,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "kebab-case")]
pub enum VmStop {
    /// Shut down by its guest (or destroyed after `destroyed_after_s`).
    ShutDown {
        destroyed_after_s: Option<u32>,
    },
    Destroyed,
    /// Its host went down: its lease ran out, so its agent fenced it.
    FencedByLease,
}

/// One promotion: `volume` from `from` to epoch `to` (= `from` + 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub volume: VolumeId,
    pub from: Epoch,
    pub to: Epoch,
}

/// What a committed move did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub to: SiteId,
    /// Every volume promoted (empty: nothing to promote, e.g. a host loss).
    pub promoted: Vec<Promotion>,
    /// The data state the old primaries were given.
    pub demoted: DataState,
    /// An earlier leader had committed it already.
    pub already: bool,
}

/// What a health gate saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthy {
    pub site: SiteId,
    /// VMs reported running by libvirt where placed.
    pub running: u32,
    /// VMs the gate started again where they were stopped (a fence after the plan).
    pub restarted: Vec<(VmId, HostId)>,
    /// The host that served the app's group again first (a fence there had stopped
    /// serving it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_again: Option<HostId>,
    /// Every probe's outcome, by the agent that ran it.
    pub probes: Vec<AgentDid>,
}

/// An agent's outcome of a command a step issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDid {
    pub host: HostId,
    pub outcome: CommandOutcome,
}

impl AgentDid {
    /// A drill copy on a network its agent verified isolated (no forward, no host
    /// address).
    pub fn on_isolated_network(&self) -> bool {
        matches!(
            self.outcome,
            CommandOutcome::DrillStarted {
                network: Some(_),
                isolated: true,
                ..
            }
        )
    }
}

impl fmt::Display for AgentDid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.host, self.outcome)
    }
}

impl fmt::Display for VmStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (vm, host) = (&self.vm, &self.host);
        match &self.how {
            VmStop::ShutDown {
                destroyed_after_s: None,
            } => write!(f, "{vm}@{host} shut down"),
            VmStop::ShutDown {
                destroyed_after_s: Some(s),
            } => write!(f, "{vm}@{host} destroyed after {s} s"),
            VmStop::Destroyed => write!(f, "{vm}@{host} destroyed"),
            VmStop::FencedByLease => write!(f, "{vm}@{host} (host down: fenced by its lease)"),
        }
    }
}

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.already {
            return write!(f, "already at {} (committed by an earlier leader)", self.to);
        }
        if self.promoted.is_empty() {
            return write!(f, "active at {}; nothing to promote", self.to);
        }
        let epochs: Vec<String> = self
            .promoted
            .iter()
            .map(|p| format!("{} epoch {} -> {}", p.volume, p.from, p.to))
            .collect();
        write!(
            f,
            "promoted at {}: {}; old primary {:?}",
            self.to,
            epochs.join(", "),
            self.demoted
        )
    }
}

fn vm_list(vms: &[(VmId, HostId)]) -> String {
    vms.iter()
        .map(|(v, h)| format!("{v}@{h}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Healthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "libvirt reports {} VM(s) running at {}",
            self.running, self.site
        )?;
        if !self.restarted.is_empty() {
            write!(
                f,
                " (started again where they were stopped: {})",
                vm_list(&self.restarted)
            )?;
        }
        if let Some(h) = &self.served_again {
            write!(f, "; its group served again at {h} after a fence there")?;
        }
        if !self.probes.is_empty() {
            let probes: Vec<String> = self.probes.iter().map(|p| p.outcome.to_string()).collect();
            write!(f, "; probes: {}", probes.join("; "))?;
        }
        Ok(())
    }
}

impl fmt::Display for StepOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepOutcome::Approved { op } => write!(f, "approved (`metrodr op approve {}`)", op.0),
            StepOutcome::VmsStopped { vms } => f.write_str(&join(vms, ", ")),
            StepOutcome::SourceUnserved {
                stopped: Some(g), ..
            } => write!(f, "{g}"),
            StepOutcome::SourceUnserved { stopped: None, .. } => {
                f.write_str("nothing was served there")
            }
            StepOutcome::SourceDown { host } => write!(
                f,
                "{host} is down: its lease ran out, so its agent fenced (or died) and serves nothing"
            ),
            StepOutcome::Moved(m) => write!(f, "{m}"),
            StepOutcome::Served { served, .. } => write!(f, "{served}"),
            StepOutcome::VmsStarted { vms } => f.write_str(&vm_list(vms)),
            StepOutcome::Healthy(h) => write!(f, "{h}"),
            StepOutcome::Baseline { production } => write!(f, "{production}"),
            StepOutcome::Snapshot {
                host,
                app,
                seq,
                volumes,
                already,
            } => {
                let taken = CommandOutcome::DrillSnapshotTaken {
                    app: app.clone(),
                    seq: *seq,
                    volumes: *volumes,
                    already: *already,
                };
                write!(f, "{host}: {taken}")
            }
            StepOutcome::DrillVmsStarted { copies } => f.write_str(&join(copies, "; ")),
            StepOutcome::DrillHealthy {
                copies,
                site,
                probes,
                unchecked,
            } => {
                write!(f, "{copies} drill VM(s) running at {site} (libvirt)")?;
                if !probes.is_empty() {
                    write!(f, "; probes: {}", join(probes, "; "))?;
                }
                if !unchecked.is_empty() {
                    let names: Vec<String> = unchecked
                        .iter()
                        .map(|(vm, port)| {
                            format!(
                                "tcp {vm}:{port} not checked (the drill network is isolated from the hosts)"
                            )
                        })
                        .collect();
                    write!(f, "; {}", names.join(", "))?;
                }
                Ok(())
            }
            StepOutcome::ProductionUnchanged { production } => {
                write!(f, "{production}; unchanged since the baseline")
            }
            StepOutcome::Cleaned { hosts } if hosts.is_empty() => {
                f.write_str("nothing to clean up")
            }
            StepOutcome::Cleaned { hosts } => f.write_str(&join(hosts, "; ")),
        }
    }
}
