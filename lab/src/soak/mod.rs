//! The soak (`metrodr chaos soak`): N random schedules, each in a fresh lab through
//! the scenario runner ([`crate::runner::run`]), one after another; a failed or broken
//! run is recorded and the next seed runs. The summary ([`summary`]) is written after
//! every run (aside, then renamed over), so a soak that is stopped or dies leaves the
//! summary of every run it finished.
//!
//! SIGTERM, SIGINT or SIGHUP stop it: the runner tears the current lab down and says
//! so; between runs the soak's own listener sees the signal before the next lab
//! starts. Never: start a run after a stop signal, or leave a summary half-written.

pub mod summary;

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use chaos::scenario::{Generator, Sites};

use crate::error::{Context, LabError, chain};
use crate::runner::{self, Summarize, journal::StopSignals};
use summary::{Outcome, SeedRun, SoakSummary};

/// What a soak runs.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    pub generator: Generator,
    pub first_seed: u64,
    pub seeds: u64,
    /// Length of each schedule, seconds.
    pub duration_s: f64,
    /// Each run's directory is `dir/SCENARIO-NAME`.
    pub dir: PathBuf,
    /// Where the summary is written after every run.
    pub summary: PathBuf,
    /// Keep the lab directory (logs, data) of runs that passed; without it only their
    /// `runner.log` and `scenario.toml` stay (a few hundred runs' labs fill a disk).
    pub keep_passed: bool,
    /// The topology file the labs run, if not the built-in one (for replay commands).
    pub topology_file: Option<PathBuf>,
}

/// Run the soak; `on_run` hears of each run as it ends (to print a line). Errors only
/// if the summary cannot be written; a run that fails or breaks is in the summary.
pub async fn soak(
    plan: &SoakPlan,
    sites: &Sites,
    topology_text: &str,
    progress: bool,
    summarize: Summarize,
    mut on_run: impl FnMut(&SeedRun),
) -> Result<SoakSummary, LabError> {
    std::fs::create_dir_all(&plan.dir).with_ctx(|| format!("creating {}", plan.dir.display()))?;
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut summary = SoakSummary::new(
        plan.generator,
        plan.first_seed,
        plan.seeds,
        plan.duration_s,
        started_unix_s,
    );
    write_summary(&plan.summary, &summary)?;
    let mut signals = StopSignals::new().ctx("listening for SIGTERM, SIGINT and SIGHUP")?;
    for i in 0..plan.seeds {
        // A signal that came between two runs (the runner's own listener only hears
        // those during a run).
        let pending = tokio::select! {
            biased;
            sig = signals.recv() => Some(sig),
            _ = std::future::ready(()) => None,
        };
        if let Some(sig) = pending {
            summary.interrupted_by = Some(sig.to_string());
            break;
        }
        let seed = plan.first_seed.wrapping_add(i);
        let scenario = plan.generator.schedule(seed, sites, plan.duration_s);
        let dir = plan.dir.join(&scenario.name);
        let t = Instant::now();
        let result = runner::run(&scenario, &dir, topology_text, progress, summarize).await;
        let time_s = t.elapsed().as_secs_f64();
        let replay = dir.join("scenario.toml");
        let replay_command = Some(replay_command(plan, &replay));
        let run = match result {
            Ok(r) if r.passed => {
                if !plan.keep_passed {
                    // Only the lab's data and logs go; runner.log and the schedule stay.
                    let _ = std::fs::remove_dir_all(dir.join("lab"));
                }
                SeedRun {
                    seed,
                    scenario: scenario.name.clone(),
                    outcome: Outcome::Passed,
                    time_s,
                    violations: Vec::new(),
                    error: None,
                    replay,
                    replay_command: None,
                    dir,
                }
            }
            Ok(r) => SeedRun {
                seed,
                scenario: scenario.name.clone(),
                outcome: Outcome::Failed,
                time_s,
                violations: r.violations,
                error: None,
                replay,
                replay_command,
                dir,
            },
            Err(LabError::Interrupted { signal, .. }) => {
                // The runner stopped the lab; this seed has no verdict.
                summary.interrupted_by = Some(signal.to_string());
                break;
            }
            Err(e) => SeedRun {
                seed,
                scenario: scenario.name.clone(),
                outcome: Outcome::Broken,
                time_s,
                violations: Vec::new(),
                error: Some(chain(&e)),
                replay,
                replay_command,
                dir,
            },
        };
        on_run(&run);
        summary.record(run);
        write_summary(&plan.summary, &summary)?;
    }
    write_summary(&plan.summary, &summary)?;
    Ok(summary)
}

/// `metrodr chaos run FILE [--topology T]`: the exact schedule, on the same topology.
fn replay_command(plan: &SoakPlan, replay: &Path) -> String {
    let topology = plan
        .topology_file
        .as_ref()
        .map(|t| format!(" --topology {}", t.display()))
        .unwrap_or_default();
    format!("metrodr chaos run {}{topology}", replay.display())
}

/// Write the summary aside and rename it over the last one: a reader (or a soak killed
/// mid-write) never sees half a file.
pub fn write_summary(path: &Path, summary: &SoakSummary) -> Result<(), LabError> {
    let text = serde_json::to_string_pretty(summary).ctx("rendering the soak summary")?;
    let aside = path.with_extension("json.tmp");
    std::fs::write(&aside, text + "\n").with_ctx(|| format!("writing {}", aside.display()))?;
    std::fs::rename(&aside, path).with_ctx(|| format!("replacing {}", path.display()))
}
