//! The agent's commands as the core sees them: what the journal says ran (so nothing
//! runs twice), one queue per [`CommandTarget`] (commands of one target run one at a
//! time in the order the cluster issued them, different targets concurrently) and
//! what runs now. A command waits in its queue while the lease is gone (the core does
//! not pick then): it stays pending in the cluster, which waits for its result. Pure.
//!
//! Never: start a command whose id the journal knows, start two commands of one
//! target at once, or let a probe read a VM's console while that VM's start runs
//! (it would compare with the previous boot's console).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ids::CommandId;
use proto::agent::{AgentAction, CommandTarget, Executed, FailureKind};

use crate::journal::{COMPACT_AT, KEEP, Seen};

/// Most commands waiting in the queues: beyond it a command is answered "not run"
/// (the cluster sends at most 10,000 per host in one poll, and runs them as results
/// come back).
pub const MAX_QUEUED: usize = 10_000;

/// What a delivered command becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    /// Waits in its target's queue.
    Queued,
    /// Already queued or running: the one in hand answers for both.
    Duplicate,
    /// The journal knows it: this is its answer (never run again).
    Known(Executed),
    /// The queues are full: not run, this is its answer.
    Refused(Executed),
}

/// A command the core decided to start, or to drop.
#[derive(Debug, Clone, PartialEq)]
pub struct Picked {
    pub id: CommandId,
    pub action: AgentAction,
}

#[derive(Debug, Clone, Default)]
pub struct Commands {
    /// The journal's view: finished (with the result) or interrupted.
    memory: BTreeMap<CommandId, Seen>,
    queues: BTreeMap<CommandTarget, VecDeque<Picked>>,
    running: BTreeMap<CommandTarget, Picked>,
    /// Ids queued or running.
    in_hand: BTreeSet<CommandId>,
    /// The highest id delivered (the poll asks for later ones).
    after: CommandId,
}

/// The answer to a command the agent was running when it stopped.
pub fn interrupted() -> Executed {
    Executed::failed(
        FailureKind::Interrupted,
        "the agent stopped while running this command; its outcome is unknown and it is not run again (see the VM's state)",
    )
}

impl Commands {
    /// Start from what the journal remembers.
    pub fn from_journal(memory: BTreeMap<CommandId, Seen>) -> Commands {
        Commands {
            memory,
            ..Commands::default()
        }
    }

    pub fn after(&self) -> CommandId {
        self.after
    }

    /// A command arrived (new, redelivered, or delivered twice).
    pub fn deliver(&mut self, id: CommandId, action: AgentAction) -> Arrival {
        self.after = self.after.max(id);
        if self.in_hand.contains(&id) {
            return Arrival::Duplicate;
        }
        match self.memory.get(&id) {
            Some(Seen::Done(executed)) => return Arrival::Known(executed.clone()),
            Some(Seen::Interrupted) => return Arrival::Known(interrupted()),
            Some(Seen::New) | None => {}
        }
        if self.in_hand.len() >= MAX_QUEUED {
            return Arrival::Refused(Executed::failed(
                FailureKind::Failed,
                format!(
                    "not run: {MAX_QUEUED} commands already wait on this agent; the cluster may issue it again"
                ),
            ));
        }
        self.in_hand.insert(id);
        self.queues
            .entry(action.target())
            .or_default()
            .push_back(Picked { id, action });
        Arrival::Queued
    }

    /// An id delivered but unreadable still moves the poll on.
    pub fn skip(&mut self, id: CommandId) {
        self.after = self.after.max(id);
    }

    /// The commands to start now: the head of each idle target's queue (a probe waits
    /// while its VM's start runs). The caller asks only while they may run.
    pub fn pick(&mut self) -> Vec<Picked> {
        let mut start = Vec::new();
        let idle: Vec<CommandTarget> = self
            .queues
            .keys()
            .filter(|t| !self.running.contains_key(*t))
            .cloned()
            .collect();
        for target in idle {
            let waits = self
                .queues
                .get(&target)
                .and_then(VecDeque::front)
                .is_some_and(|p| self.start_runs_for(&p.action));
            if waits {
                continue;
            }
            let Some(q) = self.queues.get_mut(&target) else {
                continue;
            };
            let Some(p) = q.pop_front() else { continue };
            if q.is_empty() {
                self.queues.remove(&target);
            }
            self.running.insert(target, p.clone());
            start.push(p);
        }
        start
    }

    /// Whether `probe` is a console probe of a domain whose start runs now.
    fn start_runs_for(&self, probe: &AgentAction) -> bool {
        match probe {
            AgentAction::Probe { vm, .. } => matches!(
                self.running.get(&CommandTarget::Vm(vm.clone())),
                Some(Picked { action: AgentAction::Start { vm: v }, .. }) if v == vm
            ),
            AgentAction::DrillProbe { op, vm, .. } => matches!(
                self.running.get(&CommandTarget::Drill(*op)),
                Some(Picked { action: AgentAction::DrillStart { spec, .. }, .. }) if spec.vm == *vm
            ),
            _ => false,
        }
    }

    /// A command task ended; returns the command (None: not one that runs). With
    /// `executed` None it did not run and is forgotten (it was never journaled).
    pub fn finished(&mut self, id: CommandId, executed: Option<&Executed>) -> Option<Picked> {
        let target = self
            .running
            .iter()
            .find(|(_, p)| p.id == id)
            .map(|(t, _)| t.clone())?;
        let picked = self.running.remove(&target)?;
        self.in_hand.remove(&id);
        if let Some(executed) = executed {
            self.memory.insert(id, Seen::Done(executed.clone()));
            if self.memory.len() > COMPACT_AT {
                // As the journal's compaction: the newest commands are remembered. The
                // journal itself never keeps more than this, so nothing it knows is
                // forgotten here first.
                let keep_from = self.memory.keys().rev().nth(KEEP).copied();
                if let Some(k) = keep_from {
                    self.memory.retain(|i, _| *i > k);
                }
            }
        }
        Some(picked)
    }

    /// Runs now: (target, id).
    pub fn running(&self) -> impl Iterator<Item = (&CommandTarget, CommandId)> {
        self.running.iter().map(|(t, p)| (t, p.id))
    }

    pub fn queued(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    pub fn is_idle(&self) -> bool {
        self.in_hand.is_empty()
    }

    /// Broken promises of this structure (for [`super::Core::invariants`]).
    pub fn check(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for (t, p) in &self.running {
            if p.action.target() != *t {
                return Err(format!("command {} runs under target {t}", p.id));
            }
            if !seen.insert(p.id) {
                return Err(format!("command {} is in hand twice", p.id));
            }
        }
        for (t, q) in &self.queues {
            if q.is_empty() {
                return Err(format!("an empty queue is kept for {t}"));
            }
            for p in q {
                if p.action.target() != *t || !seen.insert(p.id) {
                    return Err(format!("command {} is queued twice or under {t}", p.id));
                }
            }
        }
        if seen != self.in_hand {
            return Err("the ids in hand are not those queued and running".into());
        }
        if let Some(id) = seen
            .iter()
            .find(|id| matches!(self.memory.get(id), Some(Seen::Done(_) | Seen::Interrupted)))
        {
            return Err(format!(
                "command {id} is in hand though the journal knows it"
            ));
        }
        if self.in_hand.len() > MAX_QUEUED {
            return Err(format!("{} commands in hand", self.in_hand.len()));
        }
        Ok(())
    }
}
