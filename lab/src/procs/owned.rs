//! Processes that die with their owner.
//!
//! The lab, the demo, the chaos runner, the tests and the benchmarks start
//! orchestrator nodes, agents and volume processes. If the owner dies without stopping them (killed, aborted, a signal it did
//! not expect) they must not live on as orphans that hold ports, sockets and namespaces
//! and poison every later run on the machine. Each child asks the kernel to SIGKILL it
//! when its parent dies (`PR_SET_PDEATHSIG`).
//!
//! The kernel ties that signal to the *thread* that forked the child, not the process:
//! a child started from a thread that ends (a tokio blocking thread ends after 10 s
//! idle) would be killed with it. So every owned child is forked by one thread that
//! lives as long as the process.
//!
//! Never: start an owned child from any other thread, or let a child outlive its owner.

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Job = (Command, mpsc::Sender<io::Result<Child>>);

/// The one spawning thread, started on first use; it never ends.
fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("owned-children".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_here(&mut cmd));
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the thread that owns child processes: {e}"));
        Mutex::new(tx)
    })
}

/// Start `cmd` as a child that the kernel kills (SIGKILL) when this process dies.
pub fn spawn_owned(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the thread that owns child processes is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the thread that owns child processes did not answer"))?
}

#[allow(unsafe_code)]
fn spawn_here(cmd: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let owner = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec and only makes two
    // system calls (prctl, getppid), both async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(io::Error::from)?;
            // The owner may have died between fork and prctl: then nobody would ever
            // send the signal.
            if nix::unistd::getppid() != owner {
                return Err(io::Error::other("the owner died while this child started"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::{Duration, Instant};

    /// A child of an owner that is SIGKILLed dies too (the case of a chaos runner
    /// killed mid-run): the owner here is a shell started by the test, and its owned
    /// `sleep` must be gone soon after the shell is killed.
    #[test]
    fn an_owned_child_dies_with_its_owner() {
        // The test binary plays the owner's role in a child process of its own, so
        // that killing the owner does not kill the test: re-run this test binary's
        // helper below.
        let exe = std::env::current_exe().unwrap();
        let mut owner = Command::new(exe)
            .args([
                "--exact",
                "procs::owned::tests::owner_helper",
                "--ignored",
                "--nocapture",
            ])
            .env("METRODR_OWNED_HELPER", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The helper prints its owned child's pid.
        let mut out = std::io::BufReader::new(owner.stdout.take().unwrap());
        let pid = loop {
            let mut line = String::new();
            let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
            assert!(n > 0, "the owner helper ended without naming its child");
            if let Some(p) = line.trim().strip_prefix("owned child ") {
                break p.parse::<i32>().unwrap();
            }
        };
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                // A zombie (state Z) is dead; it waits for its reaper (init).
                .is_ok_and(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| !r.trim_start().starts_with('Z'))
                })
        };
        assert!(
            alive(pid),
            "the owned child {pid} should run while its owner does"
        );
        owner.kill().unwrap();
        owner.wait().unwrap();
        let t = Instant::now();
        while alive(pid) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the owned child {pid} outlived its owner by 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Not a test on its own: the owner process of the test above.
    #[test]
    #[ignore = "run by an_owned_child_dies_with_its_owner as its owner process"]
    fn owner_helper() {
        if std::env::var_os("METRODR_OWNED_HELPER").is_none() {
            return;
        }
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let mut child = spawn_owned(cmd).unwrap();
        println!("owned child {}", child.id());
        // Killed by the test long before the child ends.
        let _ = child.wait();
    }
}
