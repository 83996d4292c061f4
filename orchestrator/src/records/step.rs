//! The saga log: one record per step of an operation — where the step is in its plan
//! ([`StepAt`], its identity), what kind of step it is, when it ran, and its result: a
//! typed outcome with the evidence, or a typed failure with its text.
//!
//! Never: identify a step by its name, or decide on a result's text (`Display` is for
//! people; decisions `match` on the variants).

use std::fmt;

use ids::CommandId;
use serde::{Deserialize, Serialize};
use topology::{AppId, HostId};

pub use drills::StepKind;
use proto::agent::{FailureKind, StoppedGroup};

use super::{Production, ProductionChange, RejectKind, StepOutcome};

/// Where a step is in its plan: its identity. A new leader finds a step it must resume
/// by this, and the state machine refuses a step the plan does not have.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "part", rename_all = "kebab-case")]
pub enum StepAt {
    /// Step `index` of `app`'s move (`AppMove::steps`).
    App { app: AppId, index: u32 },
    /// Step `index` of what the operation does after every wave (`Plan::closing`).
    Closing { index: u32 },
    /// Step `index` of what a new leader does with a drill it finds interrupted
    /// (`Plan::interrupted`).
    Interrupted { index: u32 },
}

impl StepAt {
    /// The app the step belongs to (None: the whole operation's).
    pub fn app(&self) -> Option<&AppId> {
        match self {
            StepAt::App { app, .. } => Some(app),
            StepAt::Closing { .. } | StepAt::Interrupted { .. } => None,
        }
    }
}

impl fmt::Display for StepAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepAt::App { app, index } => write!(f, "{app} step {index}"),
            StepAt::Closing { index } => write!(f, "closing step {index}"),
            StepAt::Interrupted { index } => write!(f, "interruption step {index}"),
        }
    }
}

/// One step of an operation's saga log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub at: StepAt,
    /// The app the step is about (None: the whole operation): the app of `at`, or the
    /// app a closing step checks (filled in by the state machine from the plan).
    pub app: Option<AppId>,
    /// The kind of the planned step at `at` (filled in by the state machine).
    pub kind: StepKind,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub result: Option<StepResult>,
}

impl Step {
    pub fn app(&self) -> Option<&AppId> {
        self.app.as_ref()
    }

    /// What it did, when it succeeded.
    pub fn outcome(&self) -> Option<&StepOutcome> {
        match &self.result {
            Some(StepResult::Done { outcome }) => Some(outcome),
            _ => None,
        }
    }

    /// Why it failed, when it did.
    pub fn failure(&self) -> Option<&StepFailure> {
        match &self.result {
            Some(StepResult::Failed { failure }) => Some(failure),
            _ => None,
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum StepResult {
    Done { outcome: StepOutcome },
    Failed { failure: StepFailure },
}

impl StepResult {
    pub fn is_done(&self) -> bool {
        matches!(self, StepResult::Done { .. })
    }
}

impl fmt::Display for StepResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepResult::Done { outcome } => write!(f, "{outcome}"),
            StepResult::Failed { failure } => write!(f, "{failure}"),
        }
    }
}

/// Why a step failed: a reason to decide on, and the text for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFailure {
    pub reason: FailureReason,
    /// What went wrong and what to do, for people (at most
    /// [`StepFailure::MAX_MESSAGE_LEN`] bytes).
    pub message: String,
}

impl StepFailure {
    /// Longest message kept (the rest is cut, marked with `…`): a failure is one row of
    /// the replicated state.
    pub const MAX_MESSAGE_LEN: usize = 4000;

    pub fn new(reason: FailureReason, message: impl Into<String>) -> StepFailure {
        StepFailure {
            reason,
            message: cut(message.into(), Self::MAX_MESSAGE_LEN),
        }
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), the cut marked with `…`.
pub(crate) fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push('…');
    }
    text
}

impl fmt::Display for StepFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why a step failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum FailureReason {
    /// It did not run: `app`, which its app depends on, failed in this operation.
    DependencyFailed { app: AppId },
    /// It waited for an operator, and the operation ended first.
    OperationEnded,
    /// What it waited for did not happen within `after_ms`.
    TimedOut { after_ms: u64 },
    /// An agent command it issued failed.
    CommandFailed {
        host: HostId,
        /// The command's action (`define`, `serve`, …).
        action: String,
        kind: FailureKind,
    },
    /// A command it issued is no longer in the cluster state.
    CommandVanished { id: CommandId },
    /// The agent of `host` answered without the outcome the step needs.
    NoOutcome { host: HostId },
    /// A graceful move: the primary stopped without its peer confirming every write,
    /// so nothing is promoted (a switchover loses nothing).
    PeerNotConfirmed { host: HostId, stopped: StoppedGroup },
    /// The cluster refused what the step committed (`rejected`), or could not commit it.
    NotCommitted { rejected: Option<RejectKind> },
    /// The app is no longer in the cluster state.
    Gone,
    /// This executor cannot run such a step in such an operation (a plan written by
    /// another metrodr version?).
    Unsupported,
    /// A drill's baseline: replication is not within its bound (the drill would test
    /// stale data).
    Lagging { production: Production },
    /// A drill changed production (or production changed during the drill).
    ProductionChanged {
        changes: Vec<ProductionChange>,
        production: Production,
    },
}

impl FailureReason {
    /// The reason's name, as serialized (`timed-out`, `command-failed`, …).
    pub fn name(&self) -> &'static str {
        match self {
            FailureReason::DependencyFailed { .. } => "dependency-failed",
            FailureReason::OperationEnded => "operation-ended",
            FailureReason::TimedOut { .. } => "timed-out",
            FailureReason::CommandFailed { .. } => "command-failed",
            FailureReason::CommandVanished { .. } => "command-vanished",
            FailureReason::NoOutcome { .. } => "no-outcome",
            FailureReason::PeerNotConfirmed { .. } => "peer-not-confirmed",
            FailureReason::NotCommitted { .. } => "not-committed",
            FailureReason::Gone => "gone",
            FailureReason::Unsupported => "unsupported",
            FailureReason::Lagging { .. } => "lagging",
            FailureReason::ProductionChanged { .. } => "production-changed",
        }
    }

    /// Production as the failed step saw it (drill checks), if it sampled it.
    pub fn production(&self) -> Option<&Production> {
        match self {
            FailureReason::Lagging { production }
            | FailureReason::ProductionChanged { production, .. } => Some(production),
            _ => None,
        }
    }
}
