//! What the chaos runner is doing, written down as it goes: `runner.log` in the run's
//! directory, one timestamped line per phase (lab up, each fault, healing, settling,
//! checking), flushed at once. A runner that dies — killed by a signal, a panic, an
//! abort — leaves its last phase there; a signal it can catch (SIGTERM, SIGINT,
//! SIGHUP) and a panic are written there too, with the phase they interrupted.
//!
//! Never: buffer a line (a runner killed a moment later would lose it), or block a
//! panic on the log's lock.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::Instant;

/// The log of the run going on in this process, for the panic hook.
static CURRENT: Mutex<Option<(PathBuf, String)>> = Mutex::new(None);

pub struct RunnerLog {
    path: PathBuf,
    name: String,
    progress: bool,
    t0: Instant,
}

impl RunnerLog {
    /// Start `dir/runner.log` for scenario `name` (progress: also on stderr).
    pub fn create(dir: &Path, name: &str, progress: bool) -> std::io::Result<RunnerLog> {
        let path = dir.join("runner.log");
        std::fs::write(&path, "")?;
        install_panic_hook();
        let log = RunnerLog {
            path,
            name: name.to_string(),
            progress,
            t0: Instant::now(),
        };
        *lock() = Some((log.path.clone(), String::new()));
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record `what` as the current phase.
    pub fn say(&self, what: impl Into<String>) {
        let what = what.into();
        if self.progress {
            eprintln!("[{}] {what}", self.name);
        }
        append(
            &self.path,
            &format!("{:>7.1} s  {what}", self.t0.elapsed().as_secs_f64()),
        );
        if let Some((_, phase)) = lock().as_mut() {
            phase.clone_from(&what);
        }
    }

    /// The phase last recorded.
    pub fn phase(&self) -> String {
        lock().as_ref().map(|(_, p)| p.clone()).unwrap_or_default()
    }
}

impl Drop for RunnerLog {
    fn drop(&mut self) {
        let mut cur = lock();
        if cur.as_ref().is_some_and(|(p, _)| *p == self.path) {
            *cur = None;
        }
    }
}

fn lock() -> std::sync::MutexGuard<'static, Option<(PathBuf, String)>> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner())
}

fn append(path: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = writeln!(f, "{line}");
        let _ = f.flush();
    }
}

/// A panic anywhere in the runner process is written to the current run's log, with
/// the phase it interrupted, after the default report on stderr.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            // try_lock: a panic while the log's lock is held must not deadlock.
            if let Ok(cur) = CURRENT.try_lock()
                && let Some((path, phase)) = cur.as_ref()
            {
                append(path, &format!("PANICKED while {phase:?}: {info}"));
            }
        }));
    });
}

/// Waits for a signal that asks the runner to stop: SIGTERM, SIGINT or SIGHUP.
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn new() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The name of the next stop signal that arrives.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
