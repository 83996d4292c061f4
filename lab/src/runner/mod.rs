//! The scenario runner (`metrodr chaos run`): a fresh lab, the acknowledged-writes
//! workload on the tier-1 app, the scenario's faults at their seconds, the volumes
//! sampled every 200 ms against the epoch invariants; then everything healed, time to
//! settle, and the end state checked (`chaos::invariants`, [`end`]). The result is one
//! JSON object; a failure names the scenario file (and seed) that replays it.
//!
//! Never: die silently. Every phase is written to `runner.log` ([`journal`]) as it
//! begins; a stop signal or a panic is written there with the phase it interrupted,
//! and the lab is stopped.

mod end;
pub mod journal;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos::invariants::{Checker, Violation};
use chaos::scenario::{Fault, Scenario};
use orchestrator::pb;
use orchestrator::state::Operation;
use serde::Serialize;

use crate::cluster::Lab;
use crate::error::{Context, LabError, chain};
use crate::workload::{self, Writers};
use journal::{RunnerLog, StopSignals};

/// How often the runner samples the volumes during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// An operation as the operator's failover record (`metrodr op show`) has it: the
/// CLI gives the runner its reading ([`Summarize`]), so a run's result and `op show`
/// say the same of the same operation.
#[derive(Debug, Clone, PartialEq)]
pub struct OpSummary {
    pub kind: String,
    pub status: String,
    pub apps: Vec<AppOutcome>,
}

/// One app of an operation's plan.
#[derive(Debug, Clone, PartialEq)]
pub struct AppOutcome {
    pub app: String,
    /// Moved to another site (a fenced host's restart in place is not a move).
    pub moved: bool,
    pub rto_s: Option<f64>,
    pub rto_target_s: u32,
    /// Whether it was healthy within its RTO target (None: not healthy yet).
    pub rto_met: Option<bool>,
}

/// How the runner reads an operation.
pub type Summarize = fn(&Operation) -> OpSummary;

#[derive(Debug, Serialize)]
pub struct StepResult {
    pub at_s: f64,
    pub fault: String,
    /// When it was done, seconds after the workload started.
    pub done_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RunResult {
    pub scenario: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub passed: bool,
    pub violations: Vec<Violation>,
    pub steps: Vec<StepResult>,
    pub writes_acknowledged: u64,
    pub writes_missing: u64,
    pub max_write_stall_ms: u64,
    pub samples: u64,
    /// Operations the cluster ran during the run (one line each).
    pub operations: Vec<String>,
    /// Seconds from the end of the schedule until the cluster had healed.
    pub heal_s: Option<f64>,
    /// The schedule exactly as it ran: `metrodr chaos run FILE` replays it.
    pub replay: PathBuf,
    pub dir: PathBuf,
}

/// The production sites and the witness of a topology, as scenarios name them.
pub fn sites(topo: &topology::Topology) -> Result<chaos::scenario::Sites, LabError> {
    let mut prod = topo.production_sites().map(|s| s.id.to_string());
    let (Some(x), Some(y)) = (prod.next(), prod.next()) else {
        return Err(LabError::refused(
            "the topology has no two production sites: scenarios need two and a witness",
        ));
    };
    let witness = topo.witness().map(|s| s.id.to_string()).ok_or_else(|| {
        LabError::refused(
            "the topology has no witness site: scenarios need two production sites and a witness",
        )
    })?;
    Ok(chaos::scenario::Sites {
        production: [x, y],
        witness,
    })
}

/// Run `scenario` in a fresh lab under `dir` (kept for its logs); `progress`: also
/// say each phase on stderr.
pub async fn run(
    scenario: &Scenario,
    dir: &Path,
    topology_text: &str,
    progress: bool,
    summarize: Summarize,
) -> Result<RunResult, LabError> {
    std::fs::create_dir_all(dir).with_ctx(|| format!("creating {}", dir.display()))?;
    let replay = dir.join("scenario.toml");
    std::fs::write(&replay, scenario.to_toml())
        .with_ctx(|| format!("writing {}", replay.display()))?;
    let log = RunnerLog::create(dir, &scenario.name, progress)
        .with_ctx(|| format!("creating the runner's log in {}", dir.display()))?;
    let mut signals = StopSignals::new().ctx("listening for SIGTERM, SIGINT and SIGHUP")?;
    let interrupted = |signal: &'static str, log: &RunnerLog| {
        let phase = log.phase();
        log.say(format!("interrupted by {signal} while {phase:?}"));
        LabError::Interrupted {
            signal,
            phase,
            log: log.path().to_path_buf(),
        }
    };
    log.say("starting the lab");
    let t_setup = Instant::now();
    // Dropping an unfinished start stops what it started (processes by PID,
    // namespaces).
    let lab_dir = dir.join("lab");
    let mut lab = tokio::select! {
        lab = Lab::start(&lab_dir, topology_text) => lab.inspect_err(|e| {
            log.say(format!("the lab did not start: {}", chain(e)));
        })?,
        sig = signals.recv() => return Err(interrupted(sig, &log)),
    };
    log.say(format!(
        "lab up in {:.1} s: {} processes in {} namespaces",
        t_setup.elapsed().as_secs_f64(),
        lab.members.len(),
        lab.topo.sites.len()
    ));
    let say = |m: String| log.say(m);
    let result = tokio::select! {
        r = drive(scenario, &mut lab, dir, &replay, &say, summarize) => r,
        sig = signals.recv() => Err(interrupted(sig, &log)),
    };
    if let Err(e) = &result {
        log.say(format!("the run failed: {}", chain(e)));
    }
    log.say("stopping the lab");
    let stopped = lab.stop();
    let r = result?;
    stopped?;
    log.say("done");
    Ok(r)
}

async fn drive(
    scenario: &Scenario,
    lab: &mut Lab,
    dir: &Path,
    replay: &Path,
    say: &dyn Fn(String),
    summarize: Summarize,
) -> Result<RunResult, LabError> {
    say("starting the workload".into());
    let before = end::Before::read(lab).await?;
    // The workload: the chosen (default: the tier-1) app's first volume, at its primary.
    let with_volumes = || lab.topo.apps.iter().filter(|a| !a.volumes.is_empty());
    let app = match &scenario.workload.app {
        Some(id) => with_volumes()
            .find(|a| a.id.as_str() == id)
            .ok_or_else(|| {
                LabError::refused(format!(
                    "workload.app = {id:?}: no app with volumes of that id in the lab topology (apps with volumes: {})",
                    with_volumes().map(|a| a.id.as_str()).collect::<Vec<_>>().join(", ")
                ))
            })?,
        None => with_volumes()
            .min_by_key(|a| (a.tier, a.id.clone()))
            .ok_or_else(|| LabError::refused("no app with volumes in the lab topology"))?,
    }
    .clone();
    let vol = app.volumes[0].clone();
    let host = lab
        .serving_host(vol.id.as_str(), true)
        .await
        .ok_or_else(|| LabError::refused("no host serves the workload's primary"))?;
    let sock = lab.socket(&host, app.id.as_str());
    let blocks = (vol.size.bytes().min(64 << 20)) / workload::BLOCK;
    let client = workload::connect(&sock, vol.id.as_str()).await?;
    let writers = Writers::start(
        client,
        workload::Spec {
            writers: scenario.workload.writers,
            blocks,
            once: false,
            fua: false,
        },
    );

    // The sampler: every volume, every 200 ms, against the epoch invariants.
    let checker = Arc::new(Mutex::new(Checker::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(end::sample(
        lab.addrs(),
        lab.dialer.clone(),
        checker.clone(),
        stop_rx,
    ));

    let t0 = Instant::now();
    let mut steps = Vec::new();
    let mut resets: Vec<(u64, String)> = Vec::new();
    for step in &scenario.faults {
        let at = Duration::from_secs_f64(step.at_s);
        if let Some(wait) = at.checked_sub(t0.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        // Where the audit log is before a site's kill (its entries are numbered from
        // 1 without gaps): a killed agent's VMs end here. Only a kill needs it: asking
        // takes seconds while a node hangs (a paused site), and would push every later
        // fault of an overlapping schedule that much past its second.
        let head = match &step.fault {
            Fault::KillSite { .. } => match lab.client().await {
                Ok(c) => {
                    c.op.clone()
                        .status(pb::StatusRequest {})
                        .await
                        .map_or(0, |s| s.into_inner().audit_entries)
                }
                Err(_) => 0,
            },
            _ => 0,
        };
        say(format!(
            "{:>5.1} s  applying: {}",
            t0.elapsed().as_secs_f64(),
            step.fault.describe()
        ));
        let r = lab.apply(&step.fault).await;
        say(format!(
            "{:>5.1} s  {}{}",
            t0.elapsed().as_secs_f64(),
            step.fault.describe(),
            r.as_ref()
                .err()
                .map(|e| format!(": FAILED {}", chain(e)))
                .unwrap_or_default()
        ));
        if let Ok(killed) = &r {
            resets.extend(killed.iter().map(|h| (head, h.clone())));
        }
        steps.push(StepResult {
            at_s: step.at_s,
            fault: step.fault.describe(),
            done_s: t0.elapsed().as_secs_f64(),
            error: r.err().map(|e| chain(&e)),
        });
    }
    if let Some(wait) = Duration::from_secs_f64(scenario.duration_s).checked_sub(t0.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    let max_write_stall_ms = writers.max_wait_ms();
    let write_errors = writers.errors();
    let acked = writers.stop();
    say(format!(
        "{:>5.1} s  schedule over: {} writes acknowledged over {} blocks (longest wait {max_write_stall_ms} ms){}; healing everything",
        t0.elapsed().as_secs_f64(),
        acked.writes,
        acked.blocks(),
        write_errors
            .first()
            .map(|e| format!(", writers ended: {e}"))
            .unwrap_or_default()
    ));
    let restarted = lab.heal_everything()?;
    if !restarted.is_empty() {
        say(format!("restarted {}", restarted.join(", ")));
    }

    // Settle: a leader, every host up, every replica up to date, no operation running.
    say("settling: waiting for a leader, every host up, every replica up to date".into());
    let healed_at = Instant::now();
    let settle = Duration::from_secs_f64(scenario.settle_s);
    let mut heal_s = None;
    let mut not_healed = loop {
        let not_healed = end::healing(lab).await;
        if not_healed.is_empty() {
            heal_s = Some(healed_at.elapsed().as_secs_f64());
            break not_healed;
        }
        if healed_at.elapsed() > settle {
            break not_healed;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = stop_tx.send(true);
    let _ = sampler.await;
    say(match heal_s {
        Some(s) => format!("healed {s:.1} s after the schedule"),
        None => format!(
            "not healed after {} s: {}",
            settle.as_secs(),
            not_healed.join("; ")
        ),
    });

    // The end state.
    say("checking the end state (the workload's writes, the audit log, operations)".into());
    // The primary can move or fence while it is read (a host whose lease ran out in an
    // election just after the heal): read again from whichever host serves it then,
    // each failure in the journal, until the settle budget is spent.
    let read_until = Instant::now() + settle;
    let writes_missing = loop {
        let attempt = match lab.serving_host(vol.id.as_str(), true).await {
            Some(host) => {
                match workload::connect(&lab.socket(&host, app.id.as_str()), vol.id.as_str()).await
                {
                    Ok(r) => workload::missing(&r, &acked)
                        .await
                        .map_err(|e| format!("reading the workload back at {host}: {}", chain(&e))),
                    Err(e) => Err(format!(
                        "cannot read the workload back from its primary at {host}: {}",
                        chain(&e)
                    )),
                }
            }
            None => Err(format!("no host serves {}'s primary at the end", vol.id)),
        };
        match attempt {
            Ok(n) => break n,
            Err(why) if Instant::now() < read_until => {
                say(format!("{why}; reading again"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(why) => {
                not_healed.push(why);
                break 0;
            }
        }
    };
    let workload = end::Workload {
        app: app.id.to_string(),
        volume: vol.id.to_string(),
        sync: matches!(vol.replication, topology::Replication::Sync),
        writes: acked.writes,
        missing: writes_missing,
        max_write_stall_ms,
    };
    let (end, lines) = end::gather(
        lab, &before, &workload, &resets, &checker, not_healed, summarize,
    )
    .await?;
    let (mut violations, samples) = {
        let c = checker.lock().unwrap_or_else(|e| e.into_inner());
        (c.violations.clone(), c.samples)
    };
    violations.extend(chaos::invariants::check_end(&end, &scenario.expect));
    Ok(RunResult {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        passed: violations.is_empty(),
        violations,
        steps,
        writes_acknowledged: end.writes_acknowledged,
        writes_missing,
        max_write_stall_ms,
        samples,
        operations: lines,
        heal_s,
        replay: replay.to_path_buf(),
        dir: dir.to_path_buf(),
    })
}
