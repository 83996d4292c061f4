//! The lab's error: which step failed and why, with the cause as its source.
//!
//! Callers decide on the variant (a wait that timed out, a process that did not
//! start, a request the lab refuses); the text is for people. Never build a decision
//! on the rendered text.

use std::error::Error;
use std::path::PathBuf;

use crate::wait::TimedOut;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A step of the lab failed: `what` says which, the source why.
    #[error("{what}")]
    Step {
        what: String,
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
    /// A process ended, or printed something else, before its first line said it
    /// was up.
    #[error("{name} did not start (its first line: {line:?}); see {}", log.display())]
    NotStarted {
        name: String,
        line: String,
        log: PathBuf,
    },
    /// A condition did not come true in time.
    #[error(transparent)]
    TimedOut(#[from] TimedOut),
    /// A signal asked the runner to stop while it was doing `phase`.
    #[error("interrupted by {signal} while {phase:?}; see {}", log.display())]
    Interrupted {
        signal: &'static str,
        phase: String,
        log: PathBuf,
    },
    /// What was asked cannot be done in this lab (a fault naming what is not there,
    /// a topology the lab cannot run); the text says what to do instead.
    #[error("{0}")]
    Refused(String),
}

impl LabError {
    pub(crate) fn refused(why: impl Into<String>) -> LabError {
        LabError::Refused(why.into())
    }
}

/// Adds what the lab was doing to an error, as [`LabError::Step`].
pub trait Context<T> {
    fn ctx(self, what: impl Into<String>) -> Result<T, LabError>;
    fn with_ctx(self, what: impl FnOnce() -> String) -> Result<T, LabError>;
}

impl<T, E: Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn ctx(self, what: impl Into<String>) -> Result<T, LabError> {
        self.map_err(|e| LabError::Step {
            what: what.into(),
            source: Box::new(e),
        })
    }

    fn with_ctx(self, what: impl FnOnce() -> String) -> Result<T, LabError> {
        self.map_err(|e| LabError::Step {
            what: what(),
            source: Box::new(e),
        })
    }
}

/// An error and its causes on one line, `outer: inner: innermost` (what `{:#}` of
/// anyhow prints), for logs and results.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_every_cause_in_order() {
        let io = std::io::Error::other("disk on fire");
        let e: Result<(), _> = Err(io);
        let e = e.ctx("writing lab.json").unwrap_err();
        assert_eq!(chain(&e), "writing lab.json: disk on fire");
        assert!(matches!(e, LabError::Step { .. }));
    }
}
