//! # core — the agent's decisions, pure
//!
//! One state and one function: [`Core::apply`] takes what happened ([`Input`]: a timer,
//! the result of a libvirt, gRPC or disk call) and the time, and returns what to do
//! next ([`Effect`]). The shell ([`crate::daemon`]) waits, does the I/O and feeds the
//! results back, one at a time, in one loop: nothing here is shared with a task, so
//! the orderings below hold by construction. [`Core::invariants`] says what must
//! always hold; the property tests drive the core through crashes, restarts, clock
//! jumps, lost replies and duplicate deliveries and check it after every step.
//!
//! ```text
//!  lease (crate::lease::AgentLease)
//!    None ──grant──► Held ──runs out──► Lost
//!                     ▲                  │
//!                     └──────grant───────┘  regained: a LeaseRegained event,
//!                                           registration Wanted, nothing restarted
//!  fence (one per loss)
//!    Idle ──the lease is lost──► Running ──FenceDone──► Idle
//!          Effect::Fence;                 lost again while it ran and lost still:
//!          a fence to say                 Running once more
//!  registration
//!    Wanted ──no fence, no report in flight──► InFlight ──ok──► Done
//!      ▲   (at start; after a regained lease)     │     (says fenced when a fence
//!      └──────────── failed: 500 ms later ────────┘      is still to say)
//!    Done ──lease regained──► Wanted
//! ```
//!
//! What holds, and where:
//! - a command runs only while the lease is valid, no fence runs, and some lease of
//!   this boot is on disk (a restart then fences rather than trusts nothing; until
//!   then commands wait in their queues, pending in the cluster); it is
//!   journaled `begin` before it runs and `finished` after (the shell's command task),
//!   and never runs twice ([`commands`]: the journal's answer, or the one in hand);
//! - one fence per loss of the lease; commands that started something and ended
//!   during or after the fence, still without a lease, have it stopped
//!   ([`Effect::StopStragglers`]);
//! - registration waits for a fence in progress and says `fenced` once per fence;
//! - a report and a registration are never in flight together, so the cluster gets
//!   them in the order the agent observed what they say; observations asked for before
//!   a registration completed are not reported after it; a failed report's VM states
//!   are observed again, not resent.
//!
//! Never: I/O of any kind (logging aside), a clock of its own, or a wait.

pub mod commands;
pub mod conn;
pub mod io;
pub mod outbox;
pub mod vm_states;

mod drive;
#[cfg(test)]
mod props;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use proto::agent::{AgentAction, AgentEvent};
use topology::spec::drill_domain_name;

pub use io::{
    Batch, ClockFile, Delivered, Effect, Input, ObsSeq, RegisterFailure, RenewAnswer, RunCtx,
};

use crate::clock::LeaseClock;
use crate::domain_xml::DomainType;
use crate::journal::Restored;
use crate::lease::{AgentLease, LeaseEvent, LeaseState, Mono};
use commands::Commands;
use conn::Conn;
use outbox::Outbox;
use vm_states::Told;

/// How often the lease is checked at the latest (the fence starts within this of the
/// lease running out, or sooner: the core also wakes at the expiry itself).
pub const FENCE_CHECK_MS: u64 = 100;
/// How often libvirt is listed for VM state changes (and the lab's faults read).
pub const WATCH_MS: u64 = 500;
/// Before a failed registration is tried again.
pub const REGISTER_RETRY_MS: u64 = 500;
/// Before a failed report is tried again.
pub const REPORT_RETRY_MS: u64 = 300;
/// Before a failed poll is tried again.
pub const POLL_RETRY_MS: u64 = 200;
/// How often a host without a lease looks again whether it may poll.
pub const NO_LEASE_POLL_MS: u64 = 100;
/// How long the cluster may hold a command poll open waiting for commands.
pub const POLL_WAIT_MS: u32 = 2000;
/// The renewal period until the cluster says another (at registration).
pub const DEFAULT_RENEW_MS: u64 = 500;
/// After a renewal refused or failed (the leader changed, or the node asked is
/// unreachable) the next goes out this soon (or at the renewal period, if shorter): a
/// leader change costs a host a few of these, not a renewal period per node asked,
/// so an election shorter than the lease never fences a host.
pub const RENEW_RETRY_MS: u64 = 100;

/// What the core must know about its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    pub host: String,
    /// The orchestrator nodes (any; the leader is found from their hints).
    pub cluster: Vec<String>,
    /// libvirt's URI, for the events that name it.
    pub libvirt_uri: String,
}

/// Where registration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RegPhase {
    Done,
    /// To be sent at `at` or later, once no fence runs and no report is in flight.
    Wanted {
        at: Mono,
        warned: bool,
    },
    InFlight {
        obs: ObsSeq,
        addr: String,
        /// It says the agent fenced.
        fenced: bool,
        /// Fences started when it was sent.
        fences: u64,
        warned: bool,
        /// The lease was regained while it was in flight: register once more after it.
        again: bool,
    },
}

/// The fence, with what commands started while it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FencePhase {
    Idle,
    Running {
        /// The loss of the lease it is for (the count of losses when it started).
        loss: u64,
        /// Domains that commands started while it ran (it may have listed before).
        domains: BTreeSet<String>,
        /// A command served a group while it ran.
        groups: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum ReportPhase {
    Idle,
    InFlight(Batch),
    Backoff { until: Mono },
}

/// A call that is answered, or to be made at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Due { at: Mono },
    InFlight,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Renewal {
    seq: u64,
    /// The renewal in flight: its number, when it was sent (lease time), and where.
    in_flight: Option<(u64, Mono, String)>,
    next_at: Mono,
    renew_ms: u64,
}

/// The agent's state. See the module documentation.
#[derive(Debug, Clone)]
pub struct Core {
    cfg: CoreConfig,
    clock: LeaseClock,
    clock_complaint: Option<String>,
    lease: AgentLease,
    /// Losses of the lease in this process (a persisted lease that ran out counts).
    losses: u64,
    /// Some lease expiry of this boot is on disk: a restart fences rather than finds none.
    lease_on_disk: bool,
    conn: Conn,
    /// Registered at least once in this process: renewals, polls, the watch and reports
    /// run from then on (the fence runs from the start).
    registered_once: bool,
    reg: RegPhase,
    fence: FencePhase,
    fences: u64,
    /// A fence ran and no registration has said so yet.
    fenced_unreported: bool,
    renew: Renewal,
    poll: Call,
    watch: Call,
    report: ReportPhase,
    cmds: Commands,
    outbox: Outbox,
    told: Told,
    next_obs: ObsSeq,
    /// Observations numbered below this were asked for before the latest registration
    /// completed: what they saw may be older than what it said.
    obs_floor: ObsSeq,
    libvirt_down: bool,
    domain_type: DomainType,
    /// Per domain: the console log's length when this agent last started it.
    console_marks: BTreeMap<String, u64>,
    next_event_seq: u64,
}

impl Core {
    /// The core of an agent (re)starting: with the lease expiry it persisted (this
    /// boot's, if any) and what its journal says, at real time `now`.
    pub fn new(
        cfg: CoreConfig,
        persisted_lease: Option<Mono>,
        journal: Restored,
        now: Mono,
    ) -> Core {
        let clock = LeaseClock::default();
        let lease = AgentLease::resume(persisted_lease, clock.at(now));
        let losses = u64::from(matches!(lease.state, LeaseState::Lost { .. }));
        let mut outbox = Outbox::default();
        for (seq, event) in journal.unreported {
            outbox.event(seq, event);
        }
        Core {
            conn: Conn::new(cfg.cluster.clone()),
            cfg,
            clock,
            clock_complaint: None,
            lease,
            losses,
            lease_on_disk: persisted_lease.is_some(),
            registered_once: false,
            reg: RegPhase::Wanted {
                at: now,
                warned: false,
            },
            fence: FencePhase::Idle,
            fences: 0,
            fenced_unreported: false,
            renew: Renewal {
                seq: 0,
                in_flight: None,
                next_at: now,
                renew_ms: DEFAULT_RENEW_MS,
            },
            poll: Call::Due { at: now },
            watch: Call::Due { at: now },
            report: ReportPhase::Idle,
            cmds: Commands::from_journal(journal.commands),
            outbox,
            told: Told::default(),
            next_obs: ObsSeq(1),
            obs_floor: ObsSeq(0),
            libvirt_down: false,
            domain_type: DomainType::Qemu,
            console_marks: BTreeMap::new(),
            next_event_seq: journal.last_event_seq + 1,
        }
    }

    /// Lease time at real time `now`.
    pub fn lease_now(&self, now: Mono) -> Mono {
        self.clock.at(now)
    }

    /// Whether the lease is valid at real time `now`.
    pub fn lease_valid(&self, now: Mono) -> bool {
        self.lease.valid(self.lease_now(now))
    }

    pub fn lease_state(&self) -> LeaseState {
        self.lease.state
    }

    /// Fences started in this process.
    pub fn fences(&self) -> u64 {
        self.fences
    }

    /// Losses of the lease in this process (a persisted lease found run out counts).
    pub fn losses(&self) -> u64 {
        self.losses
    }

    /// Take in what happened at real time `now`; say what to do.
    pub fn apply(&mut self, now: Mono, input: Input) -> Vec<Effect> {
        let mut fx = Vec::new();
        self.check_lease(now, &mut fx);
        self.handle(now, input, &mut fx);
        self.check_lease(now, &mut fx);
        self.drive(now, &mut fx);
        fx
    }

    /// The real time by which the core must be given a [`Input::Tick`] at the latest;
    /// after an [`Core::apply`] at `now`, always later than `now` (the loop never spins).
    pub fn next_wake(&self, now: Mono) -> Mono {
        let mut wake = now.plus_ms(FENCE_CHECK_MS);
        if let LeaseState::Held { until } = self.lease.state {
            wake = wake.min(self.clock.real_at(until));
        }
        // A registration held back by the fence or a report waits for their end (an
        // input), not for a time: waking for it would spin.
        if let RegPhase::Wanted { at, .. } = self.reg
            && self.fence == FencePhase::Idle
            && !matches!(self.report, ReportPhase::InFlight(_))
        {
            wake = wake.min(at);
        }
        if self.registered_once {
            if self.renew.in_flight.is_none() {
                wake = wake.min(self.renew.next_at);
            }
            for call in [self.poll, self.watch] {
                if let Call::Due { at } = call {
                    wake = wake.min(at);
                }
            }
            if let ReportPhase::Backoff { until } = self.report {
                wake = wake.min(until);
            }
        }
        wake.max(now)
    }

    /// The lease ran out (or a persisted one had): fence, once per loss.
    fn check_lease(&mut self, now: Mono, fx: &mut Vec<Effect>) {
        let before = self.lease.state;
        let event = self.lease.check(self.lease_now(now));
        if matches!(self.lease.state, LeaseState::Lost { .. })
            && !matches!(before, LeaseState::Lost { .. })
        {
            self.losses += 1;
        }
        if event == LeaseEvent::Fence && self.fence == FencePhase::Idle {
            self.start_fence(fx);
        }
    }

    fn start_fence(&mut self, fx: &mut Vec<Effect>) {
        tracing::error!(host = %self.cfg.host, loss = self.losses, "the lease ran out: fencing");
        self.fence = FencePhase::Running {
            loss: self.losses,
            domains: BTreeSet::new(),
            groups: false,
        };
        self.fences += 1;
        self.fenced_unreported = true;
        fx.push(Effect::Fence);
    }

    /// Journal an event and queue it for the cluster.
    fn event(&mut self, event: AgentEvent, fx: &mut Vec<Effect>) {
        let seq = self.next_event_seq;
        self.next_event_seq += 1;
        self.outbox.event(seq, event.clone());
        fx.push(Effect::RecordEvent { seq, event });
    }

    fn want_registration(&mut self, now: Mono) {
        match &mut self.reg {
            RegPhase::Done => {
                self.reg = RegPhase::Wanted {
                    at: now,
                    warned: false,
                }
            }
            RegPhase::InFlight { again, .. } => *again = true,
            RegPhase::Wanted { .. } => {}
        }
    }

    /// What a command needs from the core to run.
    fn run_ctx(&self, action: &AgentAction) -> RunCtx {
        let domain = match action {
            AgentAction::Probe { vm, .. } => Some(vm.to_string()),
            AgentAction::DrillProbe { op, vm, .. } => Some(drill_domain_name(*op, vm)),
            _ => None,
        };
        RunCtx {
            domain_type: self.domain_type,
            console_mark: domain
                .and_then(|d| self.console_marks.get(&d).copied())
                .unwrap_or(0),
        }
    }

    /// A command that ended started a domain or served a group while the lease was
    /// gone (or the fence ran, which may have listed before): stop it.
    fn straggler(&mut self, now: Mono, action: &AgentAction, fx: &mut Vec<Effect>) {
        let (domain, group) = match action {
            AgentAction::Start { vm } | AgentAction::Resume { vm } => (Some(vm.to_string()), false),
            AgentAction::DrillStart { spec, .. } => (Some(spec.domain_name()), false),
            AgentAction::Serve { .. } | AgentAction::DrillSnapshot { .. } => (None, true),
            _ => return,
        };
        if let FencePhase::Running {
            domains, groups, ..
        } = &mut self.fence
        {
            domains.extend(domain);
            *groups |= group;
        } else if !self.lease_valid(now) {
            tracing::warn!(host = %self.cfg.host, action = action.name(), target = %action.target(), "a command ended after the fence, without a lease: stopping what it started");
            fx.push(Effect::StopStragglers {
                domains: domain.into_iter().collect(),
                groups: group,
            });
        }
    }

    /// What must always hold. Tests call it after every step.
    pub fn invariants(&self) -> Result<(), String> {
        self.cmds.check()?;
        if matches!(self.report, ReportPhase::InFlight(_))
            && matches!(self.reg, RegPhase::InFlight { .. })
        {
            return Err("a report and a registration are in flight together".into());
        }
        match (self.lease.state, &self.fence) {
            (LeaseState::Lost { fenced: false, .. }, FencePhase::Idle) => {
                return Err("the lease is lost and no fence runs".into());
            }
            (LeaseState::Lost { fenced: true, .. }, FencePhase::Running { .. }) => {
                return Err("the lease is marked fenced while the fence runs".into());
            }
            _ => {}
        }
        if self.fence != FencePhase::Idle && !self.fenced_unreported {
            return Err("a fence runs and the next registration would not say so".into());
        }
        if let RegPhase::InFlight { obs, .. } = self.reg
            && obs >= self.next_obs
        {
            return Err(format!("registration {obs:?} was never asked for"));
        }
        if let Some(o) = self.outbox.domain_obs().find(|o| *o < self.obs_floor) {
            return Err(format!(
                "a VM state of observation {o:?} is queued after a registration that listed later"
            ));
        }
        if !self.registered_once
            && (self.renew.in_flight.is_some()
                || self.poll == Call::InFlight
                || self.watch == Call::InFlight
                || self.report != ReportPhase::Idle
                || !self.cmds.is_idle())
        {
            return Err("renewals, polls, the watch or reports run before any registration".into());
        }
        if let RegPhase::InFlight { fenced: true, .. } = self.reg
            && !self.fenced_unreported
        {
            return Err("a registration says fenced but nothing is left to say".into());
        }
        Ok(())
    }
}
