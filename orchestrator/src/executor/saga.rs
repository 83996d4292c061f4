//! One operation's saga on the leader: commit through Raft (retrying while the cluster
//! is briefly unavailable), run a planned step exactly once across leaders, wait on the
//! state, and issue agent commands once per operation and await their results.
//!
//! Never: identify a step by anything but its place in the plan, or a command by
//! anything but its issuer (the operation) and its action.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use topology::HostId;

use crate::clock::now_ms;
use crate::node::{Node, reject_kind};
use crate::state::{
    AgentAction, ClusterState, Command, CommandId, CommandOutcome, CommandStatus, FailureReason,
    HostState, Issuer, OpId, Outcome, RejectKind, Request, StepAt, StepFailure, StepOutcome,
    StepResult,
};

/// How often a waiting step re-reads the state (it also wakes on every applied entry).
const POLL: Duration = Duration::from_millis(50);
/// How long a commit is retried while the cluster is briefly unavailable.
const COMMIT_RETRY: Duration = Duration::from_secs(10);

/// What a step's work gives: its outcome, or why it failed.
pub(super) type StepRun = Result<StepOutcome, StepFailure>;

/// One operation's saga on this leader.
pub(super) struct Saga {
    pub(super) node: Arc<Node>,
    pub(super) op: OpId,
    pub(super) actor: String,
}

/// A commit the cluster refused (`rejected`) or could not make.
#[derive(Debug)]
pub(super) struct CommitError {
    pub(super) rejected: Option<RejectKind>,
    pub(super) message: String,
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<CommitError> for StepFailure {
    fn from(e: CommitError) -> StepFailure {
        StepFailure::new(
            FailureReason::NotCommitted {
                rejected: e.rejected,
            },
            e.message,
        )
    }
}

impl Saga {
    /// Commit, retrying while the cluster is briefly unavailable; a rejection is
    /// returned as is.
    pub(super) async fn commit(&self, command: Command) -> Result<Outcome, CommitError> {
        let deadline = Instant::now() + COMMIT_RETRY;
        loop {
            let req = Request {
                actor: self.actor.clone(),
                at_ms: now_ms(),
                command: command.clone(),
            };
            match self.node.write(req).await {
                Ok(w) => return Ok(w.outcome),
                Err(e)
                    if e.code() == tonic::Code::Unavailable
                        && Instant::now() < deadline
                        && self.node.is_confirmed_leader() =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(CommitError {
                        rejected: reject_kind(&e),
                        message: e.message().to_string(),
                    });
                }
            }
        }
    }

    /// Run the planned step at `at` exactly once across leaders: a finished step is not
    /// run again (its result stands); an unfinished one (its leader died) is run again
    /// under the same index — the step itself only does what is missing.
    pub(super) async fn step<F, Fut>(&self, at: StepAt, f: F) -> StepRun
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StepRun>,
    {
        let existing = {
            let a = self.node.state.read();
            a.state
                .steps_of(self.op)
                .find(|(_, s)| s.at == at)
                .map(|(i, s)| (i, s.result.clone()))
        };
        let index = match existing {
            Some((_, Some(StepResult::Done { outcome }))) => return Ok(outcome),
            Some((_, Some(StepResult::Failed { failure }))) => return Err(failure),
            Some((i, None)) => i,
            None => match self
                .commit(Command::StartStep {
                    op: self.op,
                    at: at.clone(),
                })
                .await?
            {
                Outcome::Step(i) => i,
                other => return Err(unexpected(&other)),
            },
        };
        let r = f().await;
        let result = match &r {
            Ok(outcome) => StepResult::Done {
                outcome: outcome.clone(),
            },
            Err(failure) => StepResult::Failed {
                failure: failure.clone(),
            },
        };
        self.commit(Command::FinishStep {
            op: self.op,
            index,
            result,
        })
        .await?;
        r
    }

    /// Wait until `check` on the state gives an answer, or `timeout`.
    pub(super) async fn wait<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&ClusterState) -> Option<Result<T, StepFailure>>,
    ) -> Result<T, StepFailure> {
        let deadline = Instant::now() + timeout;
        let mut applied = self.node.state.subscribe();
        loop {
            if let Some(r) = check(&self.node.state.read().state) {
                return r;
            }
            if Instant::now() >= deadline {
                let after_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                return Err(StepFailure::new(
                    FailureReason::TimedOut { after_ms },
                    format!("timed out after {after_ms} ms waiting for {what}"),
                ));
            }
            let _ = tokio::time::timeout(POLL, applied.changed()).await;
        }
    }

    /// Issue `batch` unless this operation issued each already; returns the command ids.
    pub(super) async fn issue_once(
        &self,
        batch: Vec<(HostId, AgentAction)>,
    ) -> Result<Vec<CommandId>, StepFailure> {
        self.issue_since(batch, |_, _| 0).await
    }

    /// Issue `batch` unless this operation issued each since its host's agent last
    /// registered (what it issued before, a fence there undid); returns the command ids.
    pub(super) async fn issue_since_registration(
        &self,
        batch: Vec<(HostId, AgentAction)>,
    ) -> Result<Vec<CommandId>, StepFailure> {
        self.issue_since(batch, |s, h| s.registered_ms(h).unwrap_or(0))
            .await
    }

    /// Issue `batch` unless this operation issued each at or after `since` its host.
    async fn issue_since(
        &self,
        batch: Vec<(HostId, AgentAction)>,
        since: impl Fn(&ClusterState, &HostId) -> u64,
    ) -> Result<Vec<CommandId>, StepFailure> {
        let mut ids = Vec::new();
        let mut missing = Vec::new();
        {
            let a = self.node.state.read();
            for (host, action) in batch {
                let from = since(&a.state, &host);
                match issued_same(&a.state, self.op, &host, &action, from).last() {
                    Some(id) => ids.push(*id),
                    None => missing.push((host, action)),
                }
            }
        }
        if !missing.is_empty() {
            match self
                .commit(Command::IssueAgentCommands {
                    issuer: Issuer::Operation { op: self.op },
                    commands: missing,
                })
                .await?
            {
                Outcome::Commands(new) => ids.extend(new),
                other => return Err(unexpected(&other)),
            }
        }
        Ok(ids)
    }

    /// Wait for commands to succeed; the first failure fails the step with its message.
    pub(super) async fn await_commands(
        &self,
        ids: &[CommandId],
        timeout: Duration,
    ) -> Result<(), StepFailure> {
        self.await_results(ids, timeout, false).await
    }

    /// Wait for commands' results. With `down_stops`, a command whose host went down
    /// meanwhile counts as done: the host's lease ran out, so its agent fenced its VMs
    /// (DESIGN §4) — what a stop or destroy asked for.
    pub(super) async fn await_results(
        &self,
        ids: &[CommandId],
        timeout: Duration,
        down_stops: bool,
    ) -> Result<(), StepFailure> {
        self.wait(timeout, "the agents' command results", |s| {
            let mut done = true;
            for id in ids {
                match s.commands.get(&id.0).map(|c| (&c.status, c)) {
                    Some((CommandStatus::Succeeded { .. }, _)) => {}
                    Some((CommandStatus::Pending, c))
                        if down_stops
                            && s.hosts
                                .get(&c.host)
                                .is_some_and(|h| h.state == HostState::Down) => {}
                    Some((CommandStatus::Failed { failure, .. }, c)) => {
                        return Some(Err(StepFailure::new(
                            FailureReason::CommandFailed {
                                host: c.host.clone(),
                                action: c.action.name().to_string(),
                                kind: failure.kind,
                            },
                            format!(
                                "{} of {} on {} failed: {failure}",
                                c.action.name(),
                                c.action.target(),
                                c.host
                            ),
                        )));
                    }
                    Some((CommandStatus::Pending, _)) => done = false,
                    None => {
                        return Some(Err(StepFailure::new(
                            FailureReason::CommandVanished { id: *id },
                            format!("command {id} vanished"),
                        )));
                    }
                }
            }
            done.then_some(Ok(()))
        })
        .await
    }

    /// The outcomes of commands that succeeded, with their hosts, in order (a command
    /// still pending — its host went down — has none).
    pub(super) fn outcomes(&self, ids: &[CommandId]) -> Vec<(HostId, CommandOutcome)> {
        let a = self.node.state.read();
        ids.iter()
            .filter_map(|id| {
                let c = a.state.commands.get(&id.0)?;
                c.status.outcome().map(|o| (c.host.clone(), o.clone()))
            })
            .collect()
    }
}

/// Commands this operation already issued on `host` for the same VM and action (a VM
/// command), or exactly this action (a volume group or drill command).
fn issued_same(
    s: &ClusterState,
    op: OpId,
    host: &HostId,
    action: &AgentAction,
    since_ms: u64,
) -> Vec<CommandId> {
    let by = Issuer::Operation { op };
    s.commands
        .values()
        .filter(|c| c.issuer == by && &c.host == host && c.issued_ms >= since_ms)
        .filter(|c| match action.vm() {
            Some(vm) => c.action.vm() == Some(vm) && c.action.name() == action.name(),
            None => &c.action == action,
        })
        .map(|c| c.id)
        .collect()
}

fn unexpected(o: &Outcome) -> StepFailure {
    StepFailure::new(
        FailureReason::NotCommitted { rejected: None },
        format!("unexpected outcome {o:?}"),
    )
}

/// The step failed because the agent of `host` gave no outcome of the kind it needs.
pub(super) fn no_outcome(host: &HostId, what: &str) -> StepFailure {
    StepFailure::new(
        FailureReason::NoOutcome { host: host.clone() },
        format!("the agent of {host} reported no {what} outcome"),
    )
}
