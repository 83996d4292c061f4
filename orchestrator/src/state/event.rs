//! What each audit entry records, typed: one variant per kind of decision or action the
//! state machine applies, with the ids and values it acted on. Its `Display` is the
//! entry's `detail` (for people) and [`AuditEvent::action`] its stable dotted name.
//! Readers that decide something from the log (the chaos invariants, reports) match on
//! these variants, never on the text.
//!
//! Never: carry anything large (a topology's text, a whole plan): an entry stays small.

use std::fmt;

use serde::{Deserialize, Serialize};
use topology::{AppId, HostId, SiteId, VmId, VolumeId};

use super::{AgentEvent, CommandId, DataState, Epoch, HostState, Issuer, LinkReport, OpId};
use super::{AppState, OpKind, OpStatus, SiteState, StepAt, StepKind, VmState};
use crate::plan::Skip;

/// Most commands or results an event lists one by one (the rest are counted).
pub const MAX_LISTED: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AuditEvent {
    TopologyApplied {
        version: u64,
        /// SHA-256 of the file, hex.
        digest: String,
        hosts: u32,
        apps: u32,
        volumes: u32,
        removed_apps: u32,
        removed_hosts: u32,
    },
    SiteState {
        site: SiteId,
        from: SiteState,
        to: SiteState,
        reason: String,
    },
    HostState {
        host: HostId,
        from: HostState,
        to: HostState,
        reason: String,
    },
    AppState {
        app: AppId,
        from: AppState,
        to: AppState,
        reason: String,
    },
    VmPlaced {
        app: AppId,
        vm: VmId,
        host: HostId,
    },
    ReplicaPromoted {
        volume: VolumeId,
        site: SiteId,
        epoch: Epoch,
        /// The sites whose primaries became secondaries, and the data state they got.
        demoted_sites: Vec<SiteId>,
        demoted: DataState,
    },
    ReplicaData {
        volume: VolumeId,
        site: SiteId,
        from: DataState,
        to: DataState,
    },
    OpStarted {
        op: OpId,
        kind: OpKind,
        apps: Vec<AppId>,
        note: String,
        /// Waves of the plan it executes (0: an operation recorded by hand).
        waves: u32,
        /// Apps the plan leaves alone, with why.
        skipped: Vec<Skip>,
    },
    /// Step `index` of the operation's saga log began: the planned step at `at`, of
    /// `kind`. `again`: a new leader resumes it (its earlier run never finished).
    StepStarted {
        op: OpId,
        index: u32,
        at: StepAt,
        kind: StepKind,
        again: bool,
    },
    StepFinished {
        op: OpId,
        index: u32,
        at: StepAt,
        kind: StepKind,
        ok: bool,
        /// What it did, or why it failed (the typed result's rendering; the result
        /// itself is the step's record).
        detail: String,
    },
    OpFinished {
        op: OpId,
        status: OpStatus,
    },
    OpApproved {
        op: OpId,
        apps: Vec<AppId>,
    },
    AppMoved {
        op: OpId,
        app: AppId,
        from: SiteId,
        to: SiteId,
        /// Each volume promoted, with the epoch it got.
        promoted: Vec<(VolumeId, Epoch)>,
        demoted: DataState,
        placement: Vec<(VmId, HostId)>,
    },
    ReplicaLink {
        app: AppId,
        site: SiteId,
        epoch: Epoch,
        link: LinkReport,
        detail: String,
        /// Each secondary replica whose data state changed: (volume, site, from, to).
        changes: Vec<(VolumeId, SiteId, DataState, DataState)>,
    },
    SiteRecovered {
        site: SiteId,
        losses_forgotten: u32,
        /// Its replicas that still need a resync, with their data state.
        behind: Vec<(VolumeId, DataState)>,
    },
    Note {
        text: String,
    },
    Membership {
        change: String,
    },
    Refused {
        call: String,
        reason: String,
        /// Refused for who the caller is (else for what it asked).
        security: bool,
    },
    HostRegistered {
        host: HostId,
        agent_version: String,
        vcpus: u32,
        memory_mib: u64,
        hypervisor: String,
        domain_type: String,
        from: HostState,
        /// It fenced its VMs (its lease ran out) since it last registered.
        fenced: bool,
    },
    CommandsIssued {
        issuer: Issuer,
        /// The first [`MAX_LISTED`] commands: (id, host, action, target).
        listed: Vec<(CommandId, HostId, String, String)>,
        total: u32,
    },
    CommandResults {
        host: HostId,
        /// (id, action, target, ok) of each result recorded now; empty: every result
        /// was recorded before (an agent reported twice).
        recorded: Vec<(CommandId, String, String, bool)>,
    },
    VmStates {
        host: HostId,
        /// Each VM whose state changed, as its host reported it.
        changes: Vec<VmStateChange>,
        reason: String,
    },
    Agent {
        host: HostId,
        event: AgentEvent,
    },
    /// An app that should run has not run for longer than its RTO target since
    /// `since_ms` (`ended_ms` None), or runs again (`ended_ms`: when that was seen).
    AppOutage {
        app: AppId,
        since_ms: u64,
        rto_target_s: u32,
        ended_ms: Option<u64>,
    },
}

/// One VM's reported state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStateChange {
    pub vm: VmId,
    pub state: VmState,
    /// False when the VM is placed on another host (this host confirms it is off here);
    /// the VM's record stays at its own host.
    pub placed_here: bool,
}

impl AuditEvent {
    /// The entry's stable dotted name.
    pub fn action(&self) -> &'static str {
        match self {
            AuditEvent::TopologyApplied { .. } => "topology.apply",
            AuditEvent::SiteState { .. } => "site.state",
            AuditEvent::HostState { .. } => "host.state",
            AuditEvent::AppState { .. } => "app.state",
            AuditEvent::VmPlaced { .. } => "vm.place",
            AuditEvent::ReplicaPromoted { .. } => "replica.promote",
            AuditEvent::ReplicaData { .. } => "replica.data",
            AuditEvent::OpStarted { .. } => "op.start",
            AuditEvent::StepStarted { .. } | AuditEvent::StepFinished { .. } => "op.step",
            AuditEvent::OpFinished { .. } => "op.finish",
            AuditEvent::OpApproved { .. } => "op.approve",
            AuditEvent::AppMoved { .. } => "app.move",
            AuditEvent::ReplicaLink { .. } => "replica.link",
            AuditEvent::SiteRecovered { .. } => "site.recover",
            AuditEvent::Note { .. } => "note",
            AuditEvent::Membership { .. } => "cluster.membership",
            AuditEvent::Refused { security: true, .. } => "security.refused",
            AuditEvent::Refused {
                security: false, ..
            } => "call.refused",
            AuditEvent::HostRegistered { .. } => "host.register",
            AuditEvent::CommandsIssued { .. } => "agent.command",
            AuditEvent::CommandResults { .. } => "agent.result",
            AuditEvent::VmStates { .. } => "vm.state",
            AuditEvent::Agent { .. } => "agent.event",
            AuditEvent::AppOutage { .. } => "app.outage",
        }
    }

    /// The operation the entry is about, if any.
    pub fn op(&self) -> Option<OpId> {
        match self {
            AuditEvent::OpStarted { op, .. }
            | AuditEvent::StepStarted { op, .. }
            | AuditEvent::StepFinished { op, .. }
            | AuditEvent::OpFinished { op, .. }
            | AuditEvent::OpApproved { op, .. }
            | AuditEvent::AppMoved { op, .. } => Some(*op),
            AuditEvent::CommandsIssued {
                issuer: Issuer::Operation { op },
                ..
            } => Some(*op),
            _ => None,
        }
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditEvent::TopologyApplied {
                version,
                digest,
                hosts,
                apps,
                volumes,
                removed_apps,
                removed_hosts,
            } => write!(
                f,
                "version {version} (sha256 {}…): {hosts} hosts, {apps} apps, {volumes} volumes; removed {removed_apps} apps, {removed_hosts} hosts",
                digest.get(..12).unwrap_or(digest)
            ),
            AuditEvent::SiteState {
                site,
                from,
                to,
                reason,
            } => write!(f, "site {site}: {from:?} -> {to:?} ({reason})"),
            AuditEvent::HostState {
                host,
                from,
                to,
                reason,
            } => write!(f, "host {host}: {from:?} -> {to:?} ({reason})"),
            AuditEvent::AppState {
                app,
                from,
                to,
                reason,
            } => write!(f, "app {app}: {from:?} -> {to:?} ({reason})"),
            AuditEvent::VmPlaced { app, vm, host } => write!(f, "VM {vm} of {app} on host {host}"),
            AuditEvent::ReplicaPromoted {
                volume,
                site,
                epoch,
                demoted_sites,
                demoted,
            } => {
                write!(f, "volume {volume}: {site} primary at epoch {epoch}")?;
                if !demoted_sites.is_empty() {
                    write!(
                        f,
                        " (previous primary {} now secondary, {demoted:?})",
                        list(demoted_sites)
                    )?;
                }
                Ok(())
            }
            AuditEvent::ReplicaData {
                volume,
                site,
                from,
                to,
            } => write!(f, "volume {volume} at {site}: {from:?} -> {to:?}"),
            AuditEvent::OpStarted {
                op,
                kind,
                apps,
                note,
                waves,
                skipped,
            } => {
                if *waves == 0 {
                    write!(f, "{op} {kind:?} of [{}]: {note}", list(apps))
                } else {
                    write!(
                        f,
                        "{op} {kind:?} ({note}) of [{}] in {waves} wave(s)",
                        list(apps)
                    )?;
                    for Skip { app, reason } in skipped {
                        write!(f, "; {app} skipped: {reason}")?;
                    }
                    Ok(())
                }
            }
            AuditEvent::StepStarted {
                op,
                index,
                at,
                kind,
                again,
            } => {
                let again = if *again { " again" } else { "" };
                write!(
                    f,
                    "{op} step {index} started{again}: {at}, {}",
                    kind.label()
                )
            }
            AuditEvent::StepFinished {
                op,
                index,
                at,
                kind,
                ok,
                detail,
            } => {
                let how = if *ok { "done" } else { "failed" };
                write!(
                    f,
                    "{op} step {index} ({at}, {}) {how}: {detail}",
                    kind.label()
                )
            }
            AuditEvent::OpFinished { op, status } => write!(f, "{op} finished: {status:?}"),
            AuditEvent::OpApproved { op, apps } => write!(f, "{op}: approved [{}]", list(apps)),
            AuditEvent::AppMoved {
                op,
                app,
                from,
                to,
                promoted,
                demoted,
                placement,
            } => write!(
                f,
                "{op}: app {app} {from} -> {to}; promoted [{}] (old primary {demoted:?}); VMs [{}]",
                promoted
                    .iter()
                    .map(|(v, e)| format!("{v}@{e}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                placement
                    .iter()
                    .map(|(v, h)| format!("{v}@{h}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            AuditEvent::ReplicaLink {
                app,
                site,
                epoch,
                link,
                detail,
                changes,
            } => write!(
                f,
                "app {app}: primary at {site} epoch {epoch} reports {link:?} ({detail}): {}",
                changes
                    .iter()
                    .map(|(v, s, from, to)| format!("{v} at {s}: {from:?} -> {to:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            AuditEvent::SiteRecovered {
                site,
                losses_forgotten,
                behind,
            } => write!(
                f,
                "site {site} recovered: {losses_forgotten} past loss(es) forgotten; replicas still to resync: [{}]",
                behind
                    .iter()
                    .map(|(v, d)| format!("{v} ({d:?})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            AuditEvent::Note { text } => f.write_str(text),
            AuditEvent::Membership { change } => f.write_str(change),
            AuditEvent::Refused { call, reason, .. } => write!(f, "{call}: {reason}"),
            AuditEvent::HostRegistered {
                host,
                agent_version,
                vcpus,
                memory_mib,
                hypervisor,
                domain_type,
                from,
                fenced,
            } => write!(
                f,
                "host {host}: agent {agent_version} registered ({vcpus} vCPUs, {memory_mib} MiB, {hypervisor} {domain_type}); {from:?} -> Up{}",
                if *fenced {
                    "; it fenced its VMs when its lease ran out"
                } else {
                    ""
                }
            ),
            AuditEvent::CommandsIssued {
                issuer,
                listed,
                total,
            } => write!(
                f,
                "{total} command(s) by {issuer}: {}{}",
                listed
                    .iter()
                    .map(|(id, h, a, t)| format!("{id} {a} {t} on {h}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if *total as usize > listed.len() {
                    ", …"
                } else {
                    ""
                }
            ),
            AuditEvent::CommandResults { host, recorded } if recorded.is_empty() => {
                write!(f, "host {host}: results already recorded")
            }
            AuditEvent::CommandResults { host, recorded } => write!(
                f,
                "host {host}: {}",
                recorded
                    .iter()
                    .map(|(id, a, t, ok)| format!(
                        "{id} {a} {t}: {}",
                        if *ok { "ok" } else { "FAILED" }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            AuditEvent::VmStates {
                host,
                changes,
                reason,
            } => write!(
                f,
                "host {host}: {} ({reason})",
                changes
                    .iter()
                    .map(|c| format!(
                        "{} {:?}{}",
                        c.vm,
                        c.state,
                        if c.placed_here {
                            ""
                        } else {
                            " (not placed here)"
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            AuditEvent::Agent { host, event } => write!(f, "host {host}: {event}"),
            AuditEvent::AppOutage {
                app,
                since_ms,
                rto_target_s,
                ended_ms: None,
            } => write!(
                f,
                "app {app} should run and has not since {since_ms} (ms), longer than its RTO target of {rto_target_s} s"
            ),
            AuditEvent::AppOutage {
                app,
                since_ms,
                ended_ms: Some(end),
                ..
            } => write!(
                f,
                "app {app} runs again after {} s not running",
                end.saturating_sub(*since_ms) / 1000
            ),
        }
    }
}
