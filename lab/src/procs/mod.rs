//! Processes the lab starts, each held by its PID ([`Proc`]): started as children
//! that die with their owner ([`owned`]), told apart by the first line they print
//! ([`Announce`]), stopped, killed, paused and resumed only through their own PID.
//!
//! Never: signal a process by name or pattern, or let one outlive the [`Proc`] that
//! holds it (dropping a `Proc` stops its process).

pub mod owned;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;

use crate::error::{Context, LabError};

/// How long a daemon may take to print its first line. Starting opens RocksDB or
/// libvirt; on a loaded 2-core machine that can take seconds, never this long.
pub const ANNOUNCE_WITHIN: Duration = Duration::from_secs(30);

/// The first line every metrodr daemon prints on stdout: one JSON object whose
/// `event` says what started.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Announce {
    /// `metrodr orchestrator`: where it serves gRPC (and HTTP, if configured).
    Listening {
        grpc: String,
        #[serde(default)]
        http: Option<String>,
    },
    /// `metrodr agent`.
    Started { host: String },
    /// `metrodr volume`: its fields depend on the mode (`listen`, `socket`, `epoch`, …).
    Ready(serde_json::Map<String, serde_json::Value>),
}

/// What happens to the process when its [`Proc`] is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrop {
    /// SIGKILL at once (a lab's processes: nothing of theirs is kept).
    Kill,
    /// SIGTERM, then SIGKILL if it has not ended within this long (a process whose
    /// clean stop matters, e.g. one a benchmark measured).
    Terminate(Duration),
}

/// One child process, held by PID.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    paused: bool,
    lines: Option<Arc<Mutex<Vec<serde_json::Value>>>>,
    on_drop: OnDrop,
}

/// How [`Proc::start`] treats what the process prints after its first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rest {
    /// Read and dropped, so the pipe never fills.
    Drain,
    /// Kept as JSON values ([`Proc::lines`]): a volume's status lines.
    Keep,
}

impl Proc {
    /// Start `cmd` as a child owned by this process (it dies with it); its stdio as
    /// the caller set it. For processes that announce nothing (qemu-nbd, fio).
    pub fn spawn(name: &str, cmd: Command) -> Result<Proc, LabError> {
        let child = owned::spawn_owned(cmd).with_ctx(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            paused: false,
            lines: None,
            on_drop: OnDrop::Kill,
        })
    }

    /// Start the daemon `cmd` (a child owned by this process) with its stderr appended
    /// to `log`, and wait up to [`ANNOUNCE_WITHIN`] for its first stdout line. A process
    /// that prints no [`Announce`] in time is killed and reported, with its log.
    pub fn start(
        name: &str,
        mut cmd: Command,
        log: &Path,
        rest: Rest,
    ) -> Result<(Proc, Announce), LabError> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_ctx(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut proc = Proc::spawn(name, cmd)?;
        let stdout = proc
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .ok_or_else(|| LabError::refused(format!("{name} has no stdout to read")))?;
        let kept = (rest == Rest::Keep).then(|| Arc::new(Mutex::new(Vec::new())));
        let (tx, rx) = std::sync::mpsc::channel();
        let keep = kept.clone();
        std::thread::Builder::new()
            .name(format!("stdout of {name}"))
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let _ = tx.send(lines.next().and_then(Result::ok).unwrap_or_default());
                for line in lines {
                    let Ok(line) = line else { break };
                    if let Some(keep) = &keep {
                        let v =
                            serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                        keep.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                    }
                }
            })
            .with_ctx(|| format!("starting the thread that reads {name}'s output"))?;
        let line = rx.recv_timeout(ANNOUNCE_WITHIN).unwrap_or_default();
        let Ok(announce) = serde_json::from_str::<Announce>(&line) else {
            proc.kill();
            return Err(LabError::NotStarted {
                name: name.to_string(),
                line,
                log: log.to_path_buf(),
            });
        };
        proc.lines = kept;
        Ok((proc, announce))
    }

    /// Stop it this way when dropped (default: [`OnDrop::Kill`]).
    pub fn on_drop(mut self, how: OnDrop) -> Proc {
        self.on_drop = how;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its PID, while the lab has not stopped it.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// Whether the lab has not stopped it (it may still have died on its own).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Whether it has exited (on its own, or by a signal from outside the lab).
    pub fn has_exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Every line it printed after the first, as JSON ([`Rest::Keep`]; else none).
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.lines
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    fn signal(&self, sig: Signal) -> Result<(), LabError> {
        if let Some(pid) = self.pid() {
            kill(Pid::from_raw(pid), sig).with_ctx(|| format!("{sig} to {}", self.name))?;
        }
        Ok(())
    }

    /// SIGSTOP: it hangs where it is.
    pub fn pause(&mut self) -> Result<(), LabError> {
        if self.child.is_some() && !self.paused {
            self.signal(Signal::SIGSTOP)?;
            self.paused = true;
        }
        Ok(())
    }

    /// SIGCONT what [`Proc::pause`] stopped.
    pub fn resume(&mut self) -> Result<(), LabError> {
        if self.paused {
            self.signal(Signal::SIGCONT)?;
            self.paused = false;
        }
        Ok(())
    }

    /// SIGKILL without reaping, so that several processes die at the same instant
    /// (a site lost at once); [`Proc::kill`] or dropping reaps it.
    pub fn signal_kill(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
        }
    }

    /// SIGKILL (a paused process is resumed first, so it dies at once) and reap.
    pub fn kill(&mut self) {
        let _ = self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not ended `within`; its exit status if it ended
    /// by itself.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let _ = self.resume();
        let mut c = self.child.take()?;
        if let Ok(pid) = i32::try_from(c.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                eprintln!(
                    "{} did not stop within {within:?} of SIGTERM; killing it",
                    self.name
                );
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// CPU seconds (user + system) process `pid` has used so far (0 when it is gone).
pub fn cpu_seconds(pid: i32) -> f64 {
    cpu_from_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// utime + stime of a `/proc/PID/stat` line, in seconds (USER_HZ is 100 on Linux).
/// Fields are counted after the command name, which may contain spaces and ')'.
fn cpu_from_stat(stat: &str) -> f64 {
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based) of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

impl Drop for Proc {
    fn drop(&mut self) {
        match self.on_drop {
            OnDrop::Kill => self.kill(),
            OnDrop::Terminate(within) => {
                self.terminate(within);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_first_line_says_what_started() {
        let node: Announce = serde_json::from_str(
            r#"{"event":"listening","node":"n","grpc":"127.0.0.1:1","http":null,"data_dir":"/x"}"#,
        )
        .unwrap();
        assert_eq!(
            node,
            Announce::Listening {
                grpc: "127.0.0.1:1".into(),
                http: None
            }
        );
        let agent: Announce =
            serde_json::from_str(r#"{"event":"started","host":"h1","state_dir":"/s"}"#).unwrap();
        assert_eq!(agent, Announce::Started { host: "h1".into() });
        let Announce::Ready(v) =
            serde_json::from_str(r#"{"event":"ready","listen":"127.0.0.1:9"}"#).unwrap()
        else {
            panic!("a volume's ready line");
        };
        assert_eq!(v["listen"], "127.0.0.1:9");
        assert!(serde_json::from_str::<Announce>(r#"{"event":"crashed"}"#).is_err());
        assert!(serde_json::from_str::<Announce>("Error: no config").is_err());
    }

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 1 0 98";
        assert_eq!(cpu_from_stat(stat), 4.0);
        assert_eq!(cpu_from_stat(""), 0.0);
        assert!(cpu_seconds(i32::try_from(std::process::id()).unwrap()) >= 0.0);
    }

    #[test]
    fn a_process_that_announces_nothing_is_killed_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'not started' >&2; echo oops"]);
        let e = Proc::start("x", cmd, &log, Rest::Drain).unwrap_err();
        let LabError::NotStarted { name, line, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!((name.as_str(), line.as_str()), ("x", "oops"));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "not started\n");
    }

    #[test]
    fn a_started_process_is_paused_resumed_and_killed_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            r#"echo '{"event":"started","host":"h"}'; echo '{"n":1}'; exec sleep 600"#,
        ]);
        let (mut p, a) =
            Proc::start("sleeper", cmd, &dir.path().join("s.log"), Rest::Keep).unwrap();
        assert_eq!(a, Announce::Started { host: "h".into() });
        let pid = p.pid().unwrap();
        crate::wait::wait_blocking(Duration::from_secs(5), "the kept line", || {
            (p.lines() == vec![serde_json::json!({"n": 1})]).then_some(())
        })
        .unwrap();
        p.pause().unwrap();
        assert!(p.is_paused());
        p.resume().unwrap();
        assert!(!p.has_exited());
        p.kill();
        assert!(!p.is_running());
        assert!(p.pid().is_none());
        // Reaped: no such process any more.
        assert!(kill(Pid::from_raw(pid), None).is_err());
    }
}
