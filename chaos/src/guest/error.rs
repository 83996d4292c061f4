//! The guest builder's error type: which command or file failed, and what to do.

use std::io;
use std::path::PathBuf;

use super::LOCK_DEADLINE;

/// Why building (or finding) the probe guest image failed, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A tool could not be started at all (usually: not installed).
    #[error("{what}: could not start `{cmdline}`; {hint}")]
    Spawn {
        what: String,
        cmdline: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    /// A tool ran and failed; `stderr` is its (bounded) error output.
    #[error("{what}: `{cmdline}` failed ({status}): {stderr}; {hint}")]
    Command {
        what: String,
        cmdline: String,
        status: String,
        stderr: String,
        hint: &'static str,
    },
    /// `apt-cache depends linux-image-cloud-amd64` ran but named no kernel package.
    #[error(
        "could not find the current cloud kernel in `apt-cache depends \
         linux-image-cloud-amd64` (output: {output:?}); run `apt-get update` and check \
         that a Debian amd64 mirror is configured in /etc/apt/sources.list(.d)"
    )]
    KernelVersion { output: String },
    /// An extracted package lacks a file the recipe needs.
    #[error("{what} not found under {path}; {hint}")]
    Missing {
        what: String,
        path: PathBuf,
        hint: &'static str,
    },
    /// Reading or writing a file of the image, its cache or its lock failed.
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another process kept the build lock longer than a build ever takes.
    #[error(
        "another process held the guest build lock {path} for more than {LOCK_DEADLINE:?}; \
         if no build is running (`fuser {path}`), it is stuck: kill it and retry"
    )]
    LockTimeout { path: PathBuf },
}

impl GuestError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        GuestError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
