//! `metrodr lab up|status|down` and `metrodr chaos …`.
//!
//! `lab up` starts a supervisor (`metrodr lab serve`, its own session, logging to
//! `DIR/supervisor.log`) that builds the lab and keeps it: it owns the namespaces and
//! the processes, records them in `DIR/lab.json`, and takes requests — a fault, its
//! status, `down` — as JSON lines on the unix socket `DIR/lab.sock` (mode 0600).
//! `lab down` asks it to stop everything; if the supervisor is gone (crashed, killed),
//! `lab down` stops the processes `lab.json` lists, by PID, and removes the
//! namespaces of labs whose creator died.
//!
//! Argument parsing and printing only: the lab, its faults and the runner are the
//! `lab` crate's. Never signal a recorded PID that no longer runs one of this lab's
//! metrodr daemons (a PID may have been reused).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chaos::scenario::{Fault, Generator, Scenario};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use lab::runner::{AppOutcome, OpSummary, RunResult};
use lab::{LAB_TOPOLOGY, Lab, LabRecord};
use orchestrator::state::Operation;

use crate::output::{Output, print_json};

#[derive(Debug, Subcommand)]
pub enum LabCmd {
    /// Build the three sites as network namespaces, start the orchestrator nodes and
    /// agents inside them, serve and replicate every app's volumes, start every VM;
    /// then leave it running (faults: `metrodr chaos …`; stop: `metrodr lab down`).
    Up(LabArgs),
    /// The lab's processes (running, paused, killed) and its cluster.
    Status {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop every process of the lab (by PID) and remove its namespaces; also cleans
    /// up after a crashed lab.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// The supervisor `lab up` starts (internal).
    #[command(hide = true)]
    Serve(LabArgs),
    /// Build the tiny probe guest (Debian cloud kernel + busybox initramfs whose /init
    /// writes numbered records to its disk with O_DIRECT + fsync and prints each
    /// acknowledged number on the serial console).
    GuestImage {
        /// Where to put vmlinuz, initrd.gz and manifest.json.
        #[arg(long)]
        out: PathBuf,
        /// Milliseconds between two records.
        #[arg(long, default_value_t = 100)]
        interval_ms: u32,
    },
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Topology (volumes served by the agents); default: the built-in lab topology
    /// (examples/lab.toml).
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Where the lab keeps its configs, data and logs.
    #[arg(long)]
    pub dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ChaosCmd {
    /// Run a scenario (a fault schedule plus a workload, invariants checked
    /// throughout and at the end) in a fresh lab, or `--random` schedules from seeds.
    /// Exits 1 if any invariant failed, naming the file that replays it.
    Run(RunArgs),
    /// What an operator runs before trusting a new version: N random schedules
    /// (faults that overlap, by default), each in a fresh lab, one after another,
    /// going on after failures; a summary (per seed, per invariant, times, the file
    /// that replays each failure) written as JSON after every run and printed as a
    /// table. Exits 1 if any run failed. See docs/chaos.md, "Soak".
    Soak(crate::soak_cmd::SoakArgs),
    /// Drop all traffic between two sites (`--one-way`: only what A sends to B).
    Partition {
        #[arg(long)]
        dir: PathBuf,
        a: String,
        b: String,
        #[arg(long)]
        one_way: bool,
    },
    /// Cut a site off from every other site.
    Isolate {
        #[arg(long)]
        dir: PathBuf,
        site: String,
    },
    /// Remove every network fault.
    Heal {
        #[arg(long)]
        dir: PathBuf,
    },
    /// SIGKILL every process of a site.
    Kill {
        #[arg(long)]
        dir: PathBuf,
        site: String,
    },
    /// SIGSTOP every process of a site.
    Pause {
        #[arg(long)]
        dir: PathBuf,
        site: String,
    },
    /// SIGCONT a paused site.
    Resume {
        #[arg(long)]
        dir: PathBuf,
        site: String,
    },
    /// Start a killed site's processes again.
    Restart {
        #[arg(long)]
        dir: PathBuf,
        site: String,
    },
    /// SIGKILL the leading orchestrator node.
    KillLeader {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Fail the disk under a volume's replica at a site: every I/O to it errors.
    DiskFail {
        #[arg(long)]
        dir: PathBuf,
        site: String,
        volume: String,
    },
    /// Repair that disk (the replica resyncs).
    DiskRepair {
        #[arg(long)]
        dir: PathBuf,
        site: String,
        volume: String,
    },
    /// Make the WAN between the two production sites slow, both ways (all zero, or
    /// `heal`: full speed again). The control plane's port is not shaped.
    Shape {
        #[arg(long)]
        dir: PathBuf,
        a: String,
        b: String,
        /// One-way delay, ms.
        #[arg(long, default_value_t = 0.0)]
        delay_ms: f64,
        /// Uniform jitter around the delay, ms.
        #[arg(long, default_value_t = 0.0)]
        jitter_ms: f64,
        /// Probability that a 1448-byte segment is lost (each loss stalls the stream
        /// 200 ms, like a TCP retransmission).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Bandwidth limit of each direction, Mbit/s (0: none).
        #[arg(long, default_value_t = 0.0)]
        bandwidth_mbit_s: f64,
    },
    /// Run the clocks of a site's agents at RATE times real time (the agents time
    /// their leases with it; 1 sets them true again).
    ClockSkew {
        #[arg(long)]
        dir: PathBuf,
        site: String,
        rate: f64,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario file (TOML; see chaos/scenarios/).
    pub file: Option<PathBuf>,
    /// Random schedules instead of a file.
    #[arg(long, conflicts_with = "file")]
    pub random: bool,
    /// Random schedules whose faults may overlap (`random-overlap-SEED`; a seed is a
    /// different schedule than without it).
    #[arg(long, requires = "random")]
    pub overlap: bool,
    /// First seed of the random schedules (schedule i uses seed + i).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How many random schedules.
    #[arg(long, default_value_t = 1)]
    pub schedules: u64,
    /// Length of each random schedule, seconds.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Where runs keep their labs' logs and the schedules (default: a new directory
    /// under the system's temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Topology (default: the built-in lab topology).
    #[arg(long)]
    pub topology: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Request {
    Fault(Fault),
    Status,
    Down,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    ok: bool,
    message: String,
    #[serde(default)]
    record: Option<LabRecord>,
}

pub(crate) fn topology_text(path: Option<&Path>) -> anyhow::Result<String> {
    match path {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())),
        None => Ok(LAB_TOPOLOGY.to_string()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn lab(cmd: LabCmd, out: Output) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCmd::GuestImage {
            out: o,
            interval_ms,
        } => crate::agent_cmd::guest_image(o, interval_ms, out),
        LabCmd::Up(a) => up(&a, out),
        LabCmd::Serve(a) => runtime()?.block_on(serve(a)),
        LabCmd::Status { dir } => {
            let r = match ask(&dir, &Request::Status) {
                Ok(r) => r,
                Err(e) => {
                    if let Some(rec) = std::fs::read_to_string(dir.join("lab.json"))
                        .ok()
                        .and_then(|t| serde_json::from_str::<LabRecord>(&t).ok())
                    {
                        bail!(
                            "the lab's supervisor (pid {}) is gone, and its processes may still run: `metrodr lab down --dir {}` stops them",
                            rec.supervisor_pid,
                            dir.display()
                        );
                    }
                    return Err(e);
                }
            };
            let rec = r.record.context("the supervisor sent no status")?;
            match out {
                Output::Json => print_json(&rec)?,
                Output::Table => print_record(&rec),
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Down { dir } => down(&dir, out),
    }
}

fn print_record(rec: &LabRecord) {
    outln!(
        "lab {} in {} (supervisor pid {})",
        rec.tag,
        rec.dir.display(),
        rec.supervisor_pid
    );
    for (site, addr) in &rec.sites {
        outln!("  site {site:<10} {addr}");
    }
    outln!("  orchestrators: {}", rec.orchestrators.join(","));
    for p in &rec.processes {
        outln!(
            "  {:<14} {:<8} {:<8} pid {}",
            p.name,
            p.site,
            p.state,
            p.pid.map_or("-".to_string(), |p| p.to_string())
        );
    }
    for l in &rec.links {
        outln!(
            "  link {} <-> {}: {} ({} connections, {} B {}->{}, {} B back)",
            l.a,
            l.b,
            l.shape,
            l.connections,
            l.bytes_a_to_b,
            l.a,
            l.b,
            l.bytes_b_to_a
        );
    }
    outln!(
        "  use it: metrodr --cluster {} --certs {} status",
        rec.orchestrators.join(","),
        rec.certs.display()
    );
}

fn up(a: &LabArgs, out: Output) -> anyhow::Result<ExitCode> {
    // Fail here, not in the background, on what can be checked at once.
    let text = topology_text(a.topology.as_deref())?;
    topology::check_str(&text)
        .topology
        .context("the topology is invalid (check it with `metrodr topology validate`)")?;
    chaos::netns::preflight()
        .map_err(|e| anyhow::anyhow!("the lab needs network namespaces: {e} (run as root)"))?;
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let dir = a.dir.canonicalize()?;
    if dir.join("lab.sock").exists() && ask(&dir, &Request::Status).is_ok() {
        bail!(
            "a lab is already up in {} (stop it with `metrodr lab down --dir {}`)",
            dir.display(),
            dir.display()
        );
    }
    let _ = std::fs::remove_file(dir.join("lab.json"));
    let log_path = dir.join("supervisor.log");
    let log = std::fs::File::create(&log_path)?;
    let exe = std::env::current_exe().context("locating the metrodr binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["lab", "serve", "--dir"]).arg(&dir);
    if let Some(t) = &a.topology {
        cmd.arg("--topology").arg(t.canonicalize()?);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the lab supervisor")?;
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            bail!(
                "the lab did not come up ({status}); the end of {}:\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if dir.join("lab.json").exists()
            && let Ok(r) = ask(&dir, &Request::Status)
            && let Some(rec) = r.record
        {
            match out {
                Output::Json => print_json(&rec)?,
                Output::Table => {
                    outln!("lab up in {:.1} s", t.elapsed().as_secs_f64());
                    print_record(&rec);
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!(
                "the lab is not up after 300 s; see {} (stop it: `metrodr lab down --dir {}`)",
                log_path.display(),
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn serve(a: LabArgs) -> anyhow::Result<ExitCode> {
    let text = topology_text(a.topology.as_deref())?;
    let dir = a.dir;
    let sock_path = dir.join("lab.sock");
    let _ = std::fs::remove_file(&sock_path);
    let listener = tokio::net::UnixListener::bind(&sock_path)
        .with_context(|| format!("listening on {}", sock_path.display()))?;
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600))?;
    let mut lab = match Lab::start(&dir, &text).await {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&sock_path);
            return Err(e.into());
        }
    };
    let pid = std::process::id();
    let write_record = |lab: &Lab| -> anyhow::Result<()> {
        let tmp = dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&lab.record(pid))?)?;
        std::fs::rename(&tmp, dir.join("lab.json"))?;
        Ok(())
    };
    write_record(&lab)?;
    eprintln!("lab {} up", lab.net.as_ref().map_or("", |n| n.tag()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = term.recv() => break,
        };
        let Ok((stream, _)) = conn else { continue };
        let (rd, mut wr) = stream.into_split();
        let mut line = String::new();
        if tokio::io::BufReader::new(rd)
            .read_line(&mut line)
            .await
            .is_err()
        {
            continue;
        }
        let (reply, down) = match serde_json::from_str::<Request>(&line) {
            Err(e) => (
                Reply {
                    ok: false,
                    message: format!("bad request: {e}"),
                    record: None,
                },
                false,
            ),
            Ok(Request::Status) => (
                Reply {
                    ok: true,
                    message: "up".into(),
                    record: Some(lab.record(pid)),
                },
                false,
            ),
            Ok(Request::Down) => (
                Reply {
                    ok: true,
                    message: "stopping".into(),
                    record: None,
                },
                true,
            ),
            Ok(Request::Fault(f)) => {
                let r = lab.apply(&f).await;
                let _ = write_record(&lab);
                eprintln!("fault: {}: {:?}", f.describe(), r.as_ref().map(|_| "done"));
                (
                    Reply {
                        ok: r.is_ok(),
                        message: match r {
                            Ok(_) => format!("done: {}", f.describe()),
                            Err(e) => format!("{}: {}", f.describe(), lab::error::chain(&e)),
                        },
                        record: Some(lab.record(pid)),
                    },
                    false,
                )
            }
        };
        let mut text = serde_json::to_string(&reply)?;
        text.push('\n');
        let _ = wr.write_all(text.as_bytes()).await;
        if down {
            break;
        }
    }
    let r = lab.stop();
    let _ = std::fs::remove_file(&sock_path);
    let _ = std::fs::remove_file(dir.join("lab.json"));
    r?;
    eprintln!("lab down");
    Ok(ExitCode::SUCCESS)
}

/// One request to the supervisor of the lab in `dir`.
fn ask(dir: &Path, req: &Request) -> anyhow::Result<Reply> {
    let path = dir.join("lab.sock");
    let mut s = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "no lab is up in {} (no supervisor answers on {}; start one with `metrodr lab up --dir {}`)",
            dir.display(),
            path.display(),
            dir.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut text = serde_json::to_string(req)?;
    text.push('\n');
    s.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| format!("the supervisor answered {line:?}"))
}

fn down(dir: &Path, out: Output) -> anyhow::Result<ExitCode> {
    let record: Option<LabRecord> = std::fs::read_to_string(dir.join("lab.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut said = Vec::new();
    match ask(dir, &Request::Down) {
        Ok(_) => {
            // Wait for the supervisor to finish stopping everything.
            let t = Instant::now();
            while dir.join("lab.sock").exists() && t.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(100));
            }
            said.push(
                "the supervisor stopped every process and removed the namespaces".to_string(),
            );
        }
        Err(_) => {
            // The supervisor is gone: stop what it recorded, by PID, if it is still ours.
            let Some(rec) = record else {
                said.push(format!("no lab is up in {}", dir.display()));
                let cleaned =
                    chaos::netns::cleanup_stale(chaos::netns::TAG_PREFIX).unwrap_or_default();
                if !cleaned.is_empty() {
                    said.push(format!(
                        "removed namespaces of crashed labs: {}",
                        cleaned.join(", ")
                    ));
                }
                return finish(&said, out);
            };
            let lab_dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
            for p in rec.processes.iter() {
                let Some(pid) = p.pid else { continue };
                if runs_in(pid, &lab_dir) {
                    let pid = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    said.push(format!("killed {} (pid {pid})", p.name));
                }
            }
            let cleaned = chaos::netns::cleanup_stale(chaos::netns::TAG_PREFIX).unwrap_or_default();
            said.push(format!(
                "the supervisor was gone; removed the namespaces of crashed labs: [{}]",
                cleaned.join(", ")
            ));
            let _ = std::fs::remove_file(dir.join("lab.json"));
            let _ = std::fs::remove_file(dir.join("lab.sock"));
        }
    }
    finish(&said, out)
}

/// Whether `pid` runs a metrodr daemon of the lab in `dir` (and not another process
/// that reused the PID): its arguments (/proc/PID/cmdline, NUL-separated) start with
/// a `metrodr` binary and name a config file in `dir`.
fn runs_in(pid: i32, dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&Path> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| Path::new(std::ffi::OsStr::from_bytes(a)))
        .collect();
    let metrodr = args
        .first()
        .and_then(|a| a.file_name())
        .is_some_and(|n| n == "metrodr");
    metrodr && args.iter().skip(1).any(|a| a.parent() == Some(dir))
}

fn finish(said: &[String], out: Output) -> anyhow::Result<ExitCode> {
    match out {
        Output::Json => print_json(&serde_json::json!({ "down": said }))?,
        Output::Table => {
            for s in said {
                outln!("{s}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn chaos(cmd: ChaosCmd, out: Output) -> anyhow::Result<ExitCode> {
    let (dir, fault) = match cmd {
        ChaosCmd::Run(a) => return runtime()?.block_on(run(a, out)),
        ChaosCmd::Soak(a) => return runtime()?.block_on(crate::soak_cmd::soak(a, out)),
        ChaosCmd::Partition { dir, a, b, one_way } => (
            dir,
            if one_way {
                Fault::PartitionOneWay { from: a, to: b }
            } else {
                Fault::Partition { a, b }
            },
        ),
        ChaosCmd::Isolate { dir, site } => (dir, Fault::Isolate { site }),
        ChaosCmd::Heal { dir } => (dir, Fault::Heal),
        ChaosCmd::Kill { dir, site } => (dir, Fault::KillSite { site }),
        ChaosCmd::Pause { dir, site } => (dir, Fault::PauseSite { site }),
        ChaosCmd::Resume { dir, site } => (dir, Fault::ResumeSite { site }),
        ChaosCmd::Restart { dir, site } => (dir, Fault::RestartSite { site }),
        ChaosCmd::KillLeader { dir } => (dir, Fault::KillLeader),
        ChaosCmd::DiskFail { dir, site, volume } => (dir, Fault::DiskFail { site, volume }),
        ChaosCmd::DiskRepair { dir, site, volume } => (dir, Fault::DiskRepair { site, volume }),
        ChaosCmd::Shape {
            dir,
            a,
            b,
            delay_ms,
            jitter_ms,
            loss,
            bandwidth_mbit_s,
        } => {
            let shape = chaos::scenario::LinkShape {
                delay_ms,
                jitter_ms,
                loss,
                bandwidth_mbit_s,
            };
            let problems = shape.problems();
            if !problems.is_empty() {
                bail!("{}", problems.join("; "));
            }
            (dir, Fault::Shape { a, b, shape })
        }
        ChaosCmd::ClockSkew { dir, site, rate } => {
            let problems = chaos::scenario::clock_rate_problems(rate);
            if !problems.is_empty() {
                bail!("{}", problems.join("; "));
            }
            (dir, Fault::ClockSkew { site, rate })
        }
    };
    if let Some(rec) = std::fs::read_to_string(dir.join("lab.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<LabRecord>(&t).ok())
    {
        let known: Vec<&String> = rec.sites.keys().collect();
        for s in fault.sites() {
            if !rec.sites.contains_key(s) {
                bail!(
                    "no site {s:?} in the lab (sites: {})",
                    known
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    let r = ask(&dir, &Request::Fault(fault))?;
    match out {
        Output::Json => print_json(&serde_json::json!({"ok": r.ok, "message": r.message}))?,
        Output::Table => outln!("{}", r.message),
    }
    Ok(if r.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run(a: RunArgs, out: Output) -> anyhow::Result<ExitCode> {
    let text = topology_text(a.topology.as_deref())?;
    let topo = topology::check_str(&text)
        .topology
        .context("the topology is invalid (check it with `metrodr topology validate`)")?;
    let sites = lab::runner::sites(&topo)?;
    let generator = if a.overlap {
        Generator::Overlapping
    } else {
        Generator::OneAtATime
    };
    let scenarios: Vec<Scenario> = match (&a.file, a.random) {
        (Some(f), false) => {
            let t =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            vec![Scenario::parse(&f.display().to_string(), &t, &sites)?]
        }
        (None, true) => (0..a.schedules.max(1))
            .map(|i| generator.schedule(a.seed.wrapping_add(i), &sites, a.duration))
            .collect(),
        _ => bail!("name a scenario file, or use --random [--seed N] [--schedules K]"),
    };
    let base = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("metrodr-chaos-{}", std::process::id())),
    };
    let mut results: Vec<RunResult> = Vec::new();
    for s in &scenarios {
        let dir = base.join(&s.name);
        let r = lab::runner::run(s, &dir, &text, out == Output::Table, summarize).await?;
        if out == Output::Table {
            print_result(&r, a.random.then_some((generator, a.duration)));
        }
        results.push(r);
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    if out == Output::Json {
        print_json(&serde_json::json!({
            "passed": failed == 0,
            "runs": results,
        }))?;
    } else if results.len() > 1 {
        outln!(
            "{} of {} runs passed",
            results.len() - failed,
            results.len()
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How a run reads an operation: as `metrodr op show` does.
pub(crate) fn summarize(o: &Operation) -> OpSummary {
    let rec = crate::op_cmd::record(o);
    OpSummary {
        kind: rec.kind,
        status: rec.status,
        apps: rec
            .apps
            .into_iter()
            .map(|a| AppOutcome {
                moved: a.from != a.to,
                app: a.app,
                rto_s: a.rto_s,
                rto_target_s: a.rto_target_s,
                rto_met: a.rto_met,
            })
            .collect(),
    }
}

/// One run for people; `random`: the generator and length that made its schedule.
fn print_result(r: &RunResult, random: Option<(Generator, f64)>) {
    outln!(
        "{}: {} — {} writes acknowledged, {} missing, longest write {} ms, {} samples, healed {}",
        r.scenario,
        if r.passed { "PASSED" } else { "FAILED" },
        r.writes_acknowledged,
        r.writes_missing,
        r.max_write_stall_ms,
        r.samples,
        r.heal_s
            .map_or("never".to_string(), |s| format!("in {s:.1} s"))
    );
    for o in &r.operations {
        outln!("  {o}");
    }
    for v in &r.violations {
        outln!("  VIOLATED {}: {}", v.invariant, v.detail);
    }
    if !r.passed {
        outln!(
            "  replay: metrodr chaos run {}{}",
            r.replay.display(),
            r.seed
                .zip(random)
                .map(|(s, (g, d))| format!("   (or: metrodr chaos run {})", g.replay_args(s, d)))
                .unwrap_or_default()
        );
        outln!("  logs: {}", r.dir.display());
    }
}
