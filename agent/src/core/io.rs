//! What goes into the agent's core ([`Input`]: what happened) and what comes out
//! ([`Effect`]: what the shell must do). Plain data: the shell turns effects into
//! libvirt, gRPC and disk calls and their results into inputs.
//!
//! Never: carry a decision in a string. Text in here is for people (logs, the cluster's
//! audit); the core decides on the variants.

use std::collections::BTreeMap;

use ids::CommandId;
use proto::agent::{AgentAction, AgentEvent, Executed, FenceReport, VmState};
use topology::VmId;

use crate::domain_xml::DomainType;
use crate::hypervisor::DomainInfo;
use crate::lease::Mono;

/// The number of an observation of the host's domains (a watch poll or a
/// registration's list), in the order the core asked for them. The cluster's view of
/// a VM must only ever move to a later observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ObsSeq(pub u64);

/// What the lab's clock-fault file said at an observation.
#[derive(Debug, Clone, PartialEq)]
pub enum ClockFile {
    /// No file: the lease clock runs at real time.
    Absent,
    /// The file asks for this rate (already checked to be within bounds).
    Rate(f64),
    /// The file is unreadable or out of bounds: why, for the log (the rate stays).
    Bad(String),
}

/// A command as the poll delivered it: decoded, or why this agent cannot read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivered {
    Command {
        id: CommandId,
        action: Box<AgentAction>,
    },
    Unreadable {
        id: CommandId,
        why: String,
    },
}

impl Delivered {
    pub fn id(&self) -> CommandId {
        match self {
            Delivered::Command { id, .. } | Delivered::Unreadable { id, .. } => *id,
        }
    }
}

/// The leader's answer to a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewAnswer {
    Granted {
        lease_ms: u64,
        /// Where the leader is (empty: not said).
        leader: String,
    },
    /// Not granted (a follower, or a leader not confirmed): where to go instead.
    Refused { leader: String, reason: String },
}

/// Why a registration attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterFailure {
    /// libvirt could not tell the capacity or list the domains: retried, same node.
    Libvirt(String),
    /// The node did not take it (unreachable, timed out, refused): the next address.
    Cluster(String),
}

/// What happened: the shell's timers, and the results of the effects it ran.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A timer fired (the core looks at the time it is given).
    Tick,
    Registered {
        obs: ObsSeq,
        /// What the registration told the cluster about every production VM.
        states: BTreeMap<VmId, VmState>,
        domain_type: DomainType,
        renew_ms: u64,
        leader: String,
        /// Managed domains found (for the log).
        adopted: usize,
    },
    RegisterFailed {
        obs: ObsSeq,
        why: RegisterFailure,
    },
    Renewed {
        seq: u64,
        answer: RenewAnswer,
    },
    RenewFailed {
        seq: u64,
        error: String,
    },
    Polled {
        commands: Vec<Delivered>,
    },
    PollFailed {
        error: String,
    },
    /// A command task ended. `executed` is None when it did not run (its `begin`
    /// could not be journaled); `marks` are console marks it set (Some: the console
    /// log's length at a start) or dropped (None).
    CommandFinished {
        id: CommandId,
        executed: Option<Executed>,
        marks: Vec<(String, Option<u64>)>,
    },
    Observed {
        obs: ObsSeq,
        clock: ClockFile,
        /// This host's domains (run through `only_ours`), or why libvirt could not list them.
        domains: Result<Vec<DomainInfo>, String>,
        /// The lab's disk faults that changed on the volumes served here.
        disk: Vec<AgentEvent>,
    },
    FenceDone {
        report: FenceReport,
    },
    StragglersStopped {
        /// What was done, for the log.
        report: String,
    },
    ReportSent,
    ReportFailed {
        error: String,
    },
    /// The lease expiry was written to disk (or could not be: `ok` false, logged).
    LeaseWritten {
        until: Mono,
        ok: bool,
    },
}

/// What the core asks the shell to do. Each is started at once and never waited on
/// in the loop: its result comes back as an [`Input`].
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// List capacity and domains (observation `obs`), register with the node at
    /// `addr` → [`Input::Registered`] / [`Input::RegisterFailed`].
    Register {
        addr: String,
        obs: ObsSeq,
        fenced: bool,
    },
    /// → [`Input::Renewed`] / [`Input::RenewFailed`] (after `timeout_ms` at most).
    Renew {
        addr: String,
        seq: u64,
        timeout_ms: u64,
    },
    /// Long-poll the host's command queue → [`Input::Polled`] / [`Input::PollFailed`].
    Poll {
        addr: String,
        after: CommandId,
        wait_ms: u32,
        timeout_ms: u64,
    },
    /// Journal `begin`, execute, journal `finished` → [`Input::CommandFinished`].
    Run {
        id: CommandId,
        action: AgentAction,
        ctx: RunCtx,
    },
    /// Read the clock-fault file, list the domains, apply the disk faults →
    /// [`Input::Observed`].
    Observe { obs: ObsSeq },
    /// Stop guest I/O, stop every managed VM, stop serving → [`Input::FenceDone`].
    Fence,
    /// Stop what a command started while the lease was gone, after (or during) the
    /// fence: these domains, and every served group when `groups` →
    /// [`Input::StragglersStopped`].
    StopStragglers { domains: Vec<String>, groups: bool },
    /// Send results, VM states and events → [`Input::ReportSent`] / [`Input::ReportFailed`].
    Report { addr: String, batch: Batch },
    /// Journal an event the agent produced (fsynced, in order with the others).
    RecordEvent { seq: u64, event: AgentEvent },
    /// Journal that the cluster has these events.
    EventsReported { seqs: Vec<u64> },
    /// Persist the lease expiry → [`Input::LeaseWritten`].
    PersistLease { until: Mono },
}

/// What a command needs from the core's state when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunCtx {
    /// The domain type found at registration (for `define` and drill starts).
    pub domain_type: DomainType,
    /// For a console probe: where the VM's console log stood when this agent last
    /// started it (0: the whole log).
    pub console_mark: u64,
}

/// One report: results, VM state changes (each with the observation it comes from)
/// and events.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    pub results: Vec<(CommandId, Executed)>,
    pub domains: BTreeMap<VmId, (VmState, ObsSeq)>,
    pub events: Vec<(u64, AgentEvent)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.results.is_empty() && self.domains.is_empty() && self.events.is_empty()
    }
}
