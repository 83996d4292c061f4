//! A simulated host and cluster around the real [`Core`], for the property tests: the
//! shell's tasks are pending entries completed (or failed, or answered after the
//! cluster applied them: a lost reply) in whatever order the test picks; the journal,
//! the lease file and the VMs survive a crash of the agent, nothing else does. Every
//! step is checked against what the agent promises (see [`World::check`]).
//!
//! Never: reach into the core's state to decide what happened; the world only sees
//! effects, like the real shell.

use std::collections::{BTreeMap, BTreeSet};

use ids::{AppId, CommandId, OpId, VmId};
use proto::agent::{
    AgentAction, CommandOutcome, CommandTarget, Executed, FailureKind, FenceReport, VmState,
};

use super::{
    Batch, ClockFile, Core, CoreConfig, Delivered, Effect, Input, ObsSeq, RegisterFailure,
    RenewAnswer,
};
use crate::domain_xml::{DomainType, ManagedBy};
use crate::hypervisor::{DomainInfo, DomainState};
use crate::journal::{Line, Restored};
use crate::lease::{LeaseState, Mono};

pub const HOST: &str = "h1";
pub const LEASE_MS: u64 = 3000;
pub const VMS: [&str; 2] = ["vm-a", "vm-b"];

/// How a pending task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// It failed before anything happened.
    Failed,
    /// The cluster applied it, and the agent got an error (a reply lost or too late).
    ReplyLost,
}

/// One step the test takes.
#[derive(Debug, Clone)]
pub enum Step {
    /// Time passes (ms of real time).
    Wait(u64),
    /// Pending task number `n` (modulo how many there are) ends so.
    Complete(usize, Outcome),
    /// The cluster queues a command: `kind` picks the action, `vm` the VM.
    Issue { kind: u8, vm: u8 },
    /// The agent process dies and starts again.
    Crash,
    /// The cluster grants renewals (or refuses them: a partition, no leader).
    Grants(bool),
    /// The lab's clock fault file now says this rate (per mille), or nothing (0).
    ClockRate(u16),
    /// The next poll also delivers commands delivered before (a new leader's redelivery).
    Redeliver,
    /// libvirt answers, or not.
    Libvirt(bool),
    /// The guest of VM number `n` powers itself off (nothing the agent did).
    GuestStops(u8),
}

#[derive(Debug, Clone)]
enum Task {
    Register {
        obs: ObsSeq,
        fenced: bool,
        fence_done_seen: u64,
        snapshot: BTreeMap<VmId, VmState>,
        at: u64,
    },
    Renew {
        seq: u64,
    },
    Poll {
        after: CommandId,
    },
    Report {
        batch: Batch,
    },
    Run {
        id: CommandId,
        action: AgentAction,
        /// Its `begin` reached the journal.
        begun: bool,
    },
    Observe {
        obs: ObsSeq,
        snapshot: Result<Vec<DomainInfo>, String>,
        at: u64,
    },
    Fence {
        kill: Vec<String>,
    },
    Stragglers {
        domains: Vec<String>,
        groups: bool,
    },
    Lease {
        until: Mono,
    },
}

/// What one agent process has done (checks that hold per process).
#[derive(Debug, Default)]
struct Incarnation {
    fences_emitted: u64,
    losses_at_last_fence: u64,
    /// Per target: the last command started.
    started: BTreeMap<CommandTarget, (CommandId, bool)>,
    fences_done: u64,
    /// Fences done that an acknowledged registration said.
    fences_said: u64,
    /// Commands delivered again by a redelivery: one dropped for want of a lease may
    /// then run after a later one of its target.
    redelivered: BTreeSet<CommandId>,
    /// Per domain: the console mark of its latest start.
    marks: BTreeMap<String, u64>,
}

pub struct World {
    pub now: Mono,
    core: Core,
    journal: Vec<Line>,
    lease_file: Option<Mono>,
    vms: BTreeMap<String, DomainState>,
    groups_served: bool,
    libvirt_up: bool,
    clock_file: ClockFile,
    executions: BTreeMap<CommandId, u32>,
    // The cluster.
    pending: BTreeMap<CommandId, AgentAction>,
    issued: BTreeMap<CommandId, AgentAction>,
    /// Issued commands this agent cannot read.
    unreadable: BTreeSet<CommandId>,
    next_id: u64,
    grants: bool,
    redeliver: bool,
    /// Per VM: the state the cluster holds and when it was seen (logical time).
    told: BTreeMap<VmId, (VmState, u64)>,
    /// Logical time of snapshots, per observation.
    obs_at: BTreeMap<ObsSeq, u64>,
    tick: u64,
    tasks: Vec<Task>,
    inc: Incarnation,
}

fn cfg() -> CoreConfig {
    CoreConfig {
        host: HOST.into(),
        cluster: vec!["n1:1".into(), "n2:1".into()],
        libvirt_uri: "test:///sim".into(),
    }
}

fn domain(name: &str, state: DomainState) -> DomainInfo {
    DomainInfo {
        name: name.into(),
        state,
        managed: Some(ManagedBy {
            app: AppId::new("shop"),
            vm: VmId::new(name),
            host: Some(HOST.into()),
            drill: None,
        }),
    }
}

impl World {
    pub fn new() -> World {
        let now = Mono(1_000_000_000);
        let mut w = World {
            now,
            core: Core::new(cfg(), None, Restored::default(), now),
            journal: Vec::new(),
            lease_file: None,
            vms: VMS
                .iter()
                .map(|v| (v.to_string(), DomainState::ShutOff))
                .collect(),
            groups_served: false,
            libvirt_up: true,
            clock_file: ClockFile::Absent,
            executions: BTreeMap::new(),
            pending: BTreeMap::new(),
            issued: BTreeMap::new(),
            unreadable: BTreeSet::new(),
            next_id: 1,
            grants: true,
            redeliver: false,
            told: BTreeMap::new(),
            obs_at: BTreeMap::new(),
            tick: 0,
            tasks: Vec::new(),
            inc: Incarnation::default(),
        };
        w.apply(Input::Tick);
        w
    }

    pub fn step(&mut self, step: Step) {
        match step {
            Step::Wait(ms) => {
                self.now = self.now.plus_ms(ms);
                self.apply(Input::Tick);
            }
            Step::Complete(n, outcome) => {
                if self.tasks.is_empty() {
                    return;
                }
                let task = self.tasks.remove(n % self.tasks.len());
                let input = self.complete(task, outcome);
                self.apply(input);
            }
            Step::Issue { kind, vm } => {
                let vm = VmId::new(VMS[usize::from(vm) % VMS.len()]);
                let id = CommandId(self.next_id);
                if kind % 7 == 6 {
                    // A command this agent cannot read (a newer cluster's).
                    self.unreadable.insert(id);
                }
                let action = match kind % 7 {
                    0 => AgentAction::Start { vm },
                    1 => AgentAction::Destroy { vm },
                    2 => AgentAction::Suspend { vm },
                    3 => AgentAction::Resume { vm },
                    4 => AgentAction::Probe {
                        vm,
                        marker: "ready".into(),
                        timeout_s: 5,
                    },
                    _ => AgentAction::DrillSnapshot {
                        op: OpId(7),
                        app: AppId::new("shop"),
                    },
                };
                self.next_id += 1;
                self.pending.insert(id, action.clone());
                self.issued.insert(id, action);
            }
            Step::Crash => self.crash(),
            Step::Grants(g) => self.grants = g,
            Step::ClockRate(permille) => {
                self.clock_file = if permille == 0 {
                    ClockFile::Absent
                } else {
                    ClockFile::Rate((f64::from(permille) / 1000.0).clamp(0.1, 10.0))
                }
            }
            Step::Redeliver => self.redeliver = true,
            Step::Libvirt(up) => self.libvirt_up = up,
            Step::GuestStops(n) => {
                let vm = VMS[usize::from(n) % VMS.len()];
                self.vms.insert(vm.to_string(), DomainState::ShutOff);
            }
        }
    }

    /// The agent dies: its tasks with it (a command under way may or may not have
    /// acted), and a new process starts from the journal and the lease file.
    fn crash(&mut self) {
        for task in std::mem::take(&mut self.tasks) {
            if let Task::Run {
                id,
                action,
                begun: true,
            } = task
                && id.0 % 2 == 0
            {
                self.act(id, &action);
            }
        }
        self.core = Core::new(
            cfg(),
            self.lease_file,
            Restored::from_lines(self.journal.clone()),
            self.now,
        );
        self.inc = Incarnation::default();
        self.apply(Input::Tick);
    }

    fn snapshot(&self) -> Vec<DomainInfo> {
        self.vms.iter().map(|(n, s)| domain(n, s.clone())).collect()
    }

    fn stamp(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// A command's effect on the world.
    fn act(&mut self, id: CommandId, action: &AgentAction) -> Executed {
        *self.executions.entry(id).or_default() += 1;
        let count = self.executions[&id];
        assert!(count <= 1, "command {id} executed {count} times");
        let mut set = |vm: &VmId, from: Option<DomainState>, to: DomainState| {
            let s = self
                .vms
                .entry(vm.to_string())
                .or_insert(DomainState::ShutOff);
            if from.as_ref().is_none_or(|f| f == s) {
                *s = to;
                true
            } else {
                false
            }
        };
        let done = |o| Executed::done(o);
        let failed = || Executed::failed(FailureKind::Failed, "not in that state");
        match action {
            AgentAction::Start { vm } => {
                set(vm, None, DomainState::Running);
                done(CommandOutcome::Started {
                    domain: vm.to_string(),
                    state: VmState::Running,
                })
            }
            AgentAction::Destroy { vm } => {
                set(vm, None, DomainState::ShutOff);
                done(CommandOutcome::Destroyed { vm: vm.clone() })
            }
            AgentAction::Suspend { vm } => {
                if set(vm, Some(DomainState::Running), DomainState::Paused) {
                    done(CommandOutcome::Suspended { vm: vm.clone() })
                } else {
                    failed()
                }
            }
            AgentAction::Resume { vm } => {
                if set(vm, Some(DomainState::Paused), DomainState::Running) {
                    done(CommandOutcome::Resumed { vm: vm.clone() })
                } else {
                    failed()
                }
            }
            AgentAction::DrillSnapshot { .. } => {
                self.groups_served = true;
                failed()
            }
            _ => done(CommandOutcome::Probed {
                domain: "x".into(),
                marker: "ready".into(),
                after_ms: 1,
            }),
        }
    }

    /// The cluster takes in VM states seen at logical time `at`: never older ones
    /// after newer ones.
    fn cluster_told(&mut self, states: impl IntoIterator<Item = (VmId, VmState, u64)>) {
        for (vm, state, at) in states {
            if let Some((_, before)) = self.told.get(&vm) {
                assert!(
                    at >= *before,
                    "the cluster was told {vm} {state} as seen at {at} after a state seen at {before}"
                );
            }
            self.told.insert(vm, (state, at));
        }
    }

    fn complete(&mut self, task: Task, outcome: Outcome) -> Input {
        let lands = outcome != Outcome::Failed;
        let ok = outcome == Outcome::Ok;
        match task {
            Task::Register {
                obs,
                fenced,
                fence_done_seen,
                snapshot,
                at,
            } => {
                if lands {
                    self.cluster_told(snapshot.iter().map(|(v, s)| (v.clone(), *s, at)));
                }
                if !ok {
                    return Input::RegisterFailed {
                        obs,
                        why: RegisterFailure::Cluster("lost".into()),
                    };
                }
                if fenced {
                    self.inc.fences_said = self.inc.fences_said.max(fence_done_seen);
                }
                Input::Registered {
                    obs,
                    states: snapshot,
                    domain_type: DomainType::Qemu,
                    renew_ms: 500,
                    leader: String::new(),
                    adopted: 0,
                }
            }
            Task::Renew { seq } => match (ok, self.grants) {
                (true, true) => Input::Renewed {
                    seq,
                    answer: RenewAnswer::Granted {
                        lease_ms: LEASE_MS,
                        leader: "n1:1".into(),
                    },
                },
                (true, false) => Input::Renewed {
                    seq,
                    answer: RenewAnswer::Refused {
                        leader: String::new(),
                        reason: "no leader".into(),
                    },
                },
                _ => Input::RenewFailed {
                    seq,
                    error: "timed out".into(),
                },
            },
            Task::Poll { after } => {
                if !ok {
                    return Input::PollFailed {
                        error: "timed out".into(),
                    };
                }
                // A redelivery (a new leader, a restarted poll) sends every command
                // again, finished ones included; else the pending ones after `after`.
                let again = std::mem::take(&mut self.redeliver);
                let commands: Vec<Delivered> = self
                    .issued
                    .iter()
                    .filter(|(id, _)| again || (**id > after && self.pending.contains_key(id)))
                    .map(|(id, a)| {
                        if self.unreadable.contains(id) {
                            Delivered::Unreadable {
                                id: *id,
                                why: "an action this agent does not know".into(),
                            }
                        } else {
                            Delivered::Command {
                                id: *id,
                                action: Box::new(a.clone()),
                            }
                        }
                    })
                    .collect();
                if again {
                    self.inc
                        .redelivered
                        .extend(commands.iter().map(Delivered::id));
                }
                Input::Polled { commands }
            }
            Task::Report { batch } => {
                if lands {
                    for (id, _) in &batch.results {
                        self.pending.remove(id);
                    }
                    let states: Vec<(VmId, VmState, u64)> = batch
                        .domains
                        .iter()
                        .map(|(vm, (s, obs))| (vm.clone(), *s, self.obs_at[obs]))
                        .collect();
                    self.cluster_told(states);
                }
                if ok {
                    Input::ReportSent
                } else {
                    Input::ReportFailed {
                        error: "lost".into(),
                    }
                }
            }
            Task::Run { id, action, begun } => {
                if !begun {
                    return Input::CommandFinished {
                        id,
                        executed: None,
                        marks: Vec::new(),
                    };
                }
                let executed = self.act(id, &action);
                self.journal.push(Line::Finished {
                    id,
                    executed: executed.clone(),
                });
                let marks = match &action {
                    AgentAction::Start { vm } => {
                        self.inc.marks.insert(vm.to_string(), id.0);
                        vec![(vm.to_string(), Some(id.0))]
                    }
                    _ => Vec::new(),
                };
                Input::CommandFinished {
                    id,
                    executed: Some(executed),
                    marks,
                }
            }
            Task::Observe { obs, snapshot, at } => {
                self.obs_at.insert(obs, at);
                Input::Observed {
                    obs,
                    clock: self.clock_file.clone(),
                    domains: snapshot,
                    disk: Vec::new(),
                }
            }
            Task::Fence { kill } => {
                for name in kill {
                    self.vms.insert(name, DomainState::ShutOff);
                }
                self.groups_served = false;
                self.inc.fences_done += 1;
                Input::FenceDone {
                    report: FenceReport {
                        took_ms: 1,
                        paused: false,
                        stopped: Vec::new(),
                        not_stopped: Vec::new(),
                        io: String::new(),
                        io_failed: false,
                        error: None,
                    },
                }
            }
            Task::Stragglers { domains, groups } => {
                for name in domains {
                    self.vms.insert(name, DomainState::ShutOff);
                }
                if groups {
                    self.groups_served = false;
                }
                Input::StragglersStopped {
                    report: String::new(),
                }
            }
            Task::Lease { until } => {
                if lands {
                    self.lease_file = Some(until);
                }
                Input::LeaseWritten { until, ok: lands }
            }
        }
    }

    fn apply(&mut self, input: Input) {
        let effects = self.core.apply(self.now, input);
        for e in effects {
            self.start(e);
        }
        self.check();
        assert!(
            self.core.next_wake(self.now) > self.now,
            "the core asks to be woken at once again: the loop would spin"
        );
    }

    fn start(&mut self, effect: Effect) {
        match effect {
            Effect::Register { obs, fenced, .. } => {
                assert!(
                    !self.tasks.iter().any(|t| matches!(t, Task::Fence { .. })),
                    "registration sent while the fence runs"
                );
                let owed = self.inc.fences_said < self.inc.fences_done;
                assert_eq!(
                    fenced, owed,
                    "registration says fenced={fenced}, fences done {} and said {}",
                    self.inc.fences_done, self.inc.fences_said
                );
                let at = self.stamp();
                let snapshot = super::vm_states::reportable(&self.snapshot());
                self.tasks.push(Task::Register {
                    obs,
                    fenced,
                    fence_done_seen: self.inc.fences_done,
                    snapshot,
                    at,
                });
            }
            Effect::Renew { seq, .. } => self.tasks.push(Task::Renew { seq }),
            Effect::Poll { after, .. } => self.tasks.push(Task::Poll { after }),
            Effect::Report { batch, .. } => self.tasks.push(Task::Report { batch }),
            Effect::Run { id, action, ctx } => {
                assert!(
                    self.core.lease_valid(self.now),
                    "command {id} started without a valid lease"
                );
                assert!(
                    !self.tasks.iter().any(|t| matches!(t, Task::Fence { .. })),
                    "command {id} started while the fence runs"
                );
                assert!(
                    self.lease_file.is_some(),
                    "command {id} started before any lease was on disk (a restart would not fence)"
                );
                let target = action.target();
                assert!(
                    !self
                        .tasks
                        .iter()
                        .any(|t| matches!(t, Task::Run { action: a, .. } if a.target() == target)),
                    "two commands of {target} run at once"
                );
                // Now and then the journal cannot take the `begin`: the command does
                // not run (and may be delivered and started again).
                let begun = id.0 % 13 != 0;
                if let Some((last, last_begun)) =
                    self.inc.started.insert(target.clone(), (id, begun))
                {
                    assert!(
                        last < id
                            || (last == id && !last_begun)
                            || self.inc.redelivered.contains(&id),
                        "{target}: command {id} started after {last}"
                    );
                }
                if let AgentAction::Probe { vm, .. } = &action {
                    assert!(
                        !self.tasks.iter().any(|t| matches!(t, Task::Run { action: AgentAction::Start { vm: v }, .. } if v == vm)),
                        "a probe of {vm} started while its start runs"
                    );
                    let mark = self.inc.marks.get(vm.as_str()).copied().unwrap_or(0);
                    assert_eq!(
                        ctx.console_mark, mark,
                        "{vm}'s probe reads from another start"
                    );
                }
                if begun {
                    self.journal.push(Line::Begin { id });
                }
                self.tasks.push(Task::Run { id, action, begun });
            }
            Effect::Observe { obs } => {
                let at = self.stamp();
                let snapshot = if self.libvirt_up {
                    Ok(self.snapshot())
                } else {
                    Err("libvirt is down".into())
                };
                self.tasks.push(Task::Observe { obs, snapshot, at });
            }
            Effect::Fence => {
                assert!(
                    !self.tasks.iter().any(|t| matches!(t, Task::Fence { .. })),
                    "two fences at once"
                );
                assert!(
                    self.core.losses() > self.inc.losses_at_last_fence,
                    "a second fence for one loss of the lease"
                );
                self.inc.losses_at_last_fence = self.core.losses();
                self.inc.fences_emitted += 1;
                let kill = self
                    .vms
                    .iter()
                    .filter(|(_, s)| s.is_active())
                    .map(|(n, _)| n.clone())
                    .collect();
                self.tasks.push(Task::Fence { kill });
            }
            Effect::StopStragglers { domains, groups } => {
                self.tasks.push(Task::Stragglers { domains, groups })
            }
            Effect::RecordEvent { seq, event } => {
                self.journal.push(Line::AgentEvent { seq, event })
            }
            Effect::EventsReported { seqs } => {
                for seq in seqs {
                    self.journal.push(Line::EventReported { seq });
                }
            }
            Effect::PersistLease { until } => self.tasks.push(Task::Lease { until }),
        }
    }

    /// Heal everything (the cluster grants, libvirt answers, every call succeeds)
    /// and let the agent work until nothing is left to do.
    pub fn settle(&mut self) {
        self.grants = true;
        self.libvirt_up = true;
        let mut held = 0;
        for _ in 0..400 {
            // A poll with nothing to deliver is held open (a long poll) for 2 s, then
            // answered empty.
            let next = self.tasks.iter().position(|t| match t {
                Task::Poll { after } => held >= 20 || self.pending.keys().any(|id| id > after),
                _ => true,
            });
            match next {
                Some(n) => {
                    if matches!(self.tasks[n], Task::Poll { .. }) {
                        held = 0;
                    }
                    self.step(Step::Complete(n, Outcome::Ok))
                }
                None => {
                    held += 1;
                    self.step(Step::Wait(100))
                }
            }
        }
        while let Some(n) = self
            .tasks
            .iter()
            .position(|t| !matches!(t, Task::Poll { .. }))
        {
            self.step(Step::Complete(n, Outcome::Ok));
        }
    }

    /// After [`Self::settle`]: the cluster knows every VM as it is.
    pub fn assert_converged(&self) {
        for (name, state) in &self.vms {
            let told = self.told.get(&VmId::new(name.as_str())).map(|t| t.0);
            assert_eq!(
                told,
                Some(state.reported()),
                "after healing, the cluster thinks {name} is {told:?}; it is {state}"
            );
        }
        assert!(self.core.lease_valid(self.now), "no lease after healing");
        // Every command that began has its result in the cluster (one that never
        // began, dropped without a lease, stays pending there).
        let begun: BTreeSet<CommandId> = self
            .journal
            .iter()
            .filter_map(|l| match l {
                Line::Begin { id } => Some(*id),
                _ => None,
            })
            .collect();
        if let Some(id) = self.pending.keys().find(|id| begun.contains(id)) {
            panic!("after healing, command {id} began and the cluster has no result");
        }
        // And every command issued ran, but those whose `begin` the journal refused.
        if let Some(id) = self.pending.keys().find(|id| !id.0.is_multiple_of(13)) {
            panic!("after healing, command {id} is still pending: never run");
        }
    }

    /// What must hold after every step.
    fn check(&self) {
        if let Err(e) = self.core.invariants() {
            panic!("core invariant: {e}");
        }
        let fencing = self.tasks.iter().any(|t| matches!(t, Task::Fence { .. }));
        if let LeaseState::Lost { fenced, .. } = self.core.lease_state() {
            assert!(
                fenced || fencing,
                "the lease is lost and no fence is under way"
            );
            assert!(
                fencing || self.inc.losses_at_last_fence == self.core.losses(),
                "the lease was lost {} times and the last fence was for loss {}",
                self.core.losses(),
                self.inc.losses_at_last_fence
            );
        }
        // Never a VM running without a lease, once what is under way has ended.
        let busy = self.tasks.iter().any(|t| {
            matches!(
                t,
                Task::Fence { .. } | Task::Stragglers { .. } | Task::Run { .. }
            )
        });
        if matches!(self.core.lease_state(), LeaseState::Lost { .. }) && !busy {
            let running: BTreeSet<&String> = self
                .vms
                .iter()
                .filter(|(_, s)| **s == DomainState::Running)
                .map(|(n, _)| n)
                .collect();
            assert!(
                running.is_empty(),
                "without a lease, after the fence, VMs run: {running:?}"
            );
            assert!(
                !self.groups_served,
                "without a lease, after the fence, a group is served"
            );
        }
    }
}
