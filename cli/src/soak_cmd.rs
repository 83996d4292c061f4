//! `metrodr chaos soak`: what an operator runs before trusting a new version — N
//! random schedules in fresh labs, one after another, and their summary.
//!
//! Argument parsing and printing only: the soak loop and its summary are the `lab`
//! crate's (`lab::soak`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chaos::scenario::Generator;
use clap::Args;
use lab::soak::summary::{Outcome, SeedRun};
use lab::soak::{SoakPlan, soak as run_soak};

use crate::lab_cmd::{summarize, topology_text};
use crate::output::{Output, print_json};

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// How many random schedules (seeds FIRST, FIRST+1, …).
    #[arg(long)]
    pub seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Length of each schedule, seconds (each run also takes the lab's start, up to
    /// 30 s to settle, the checks and the lab's stop).
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Schedules whose faults overlap (the default).
    #[arg(long, overrides_with = "no_overlap")]
    pub overlap: bool,
    /// One fault at a time, each undone before the next (the schedules of
    /// `chaos run --random`).
    #[arg(long, overrides_with = "overlap")]
    pub no_overlap: bool,
    /// Where the runs keep their schedules and logs (default: a new directory under
    /// the system's temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where the JSON summary is written, after every run (default: DIR/soak.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the lab directory (logs, data) of runs that passed too.
    #[arg(long)]
    pub keep_passed: bool,
    /// Topology (default: the built-in lab topology).
    #[arg(long)]
    pub topology: Option<PathBuf>,
}

pub async fn soak(a: SoakArgs, out: Output) -> anyhow::Result<ExitCode> {
    if a.seeds == 0 {
        anyhow::bail!("--seeds 0: give how many random schedules to run (at least 1)");
    }
    if !(a.duration.is_finite() && a.duration > 0.0) {
        anyhow::bail!(
            "--duration {}: give each schedule's length in seconds (more than 0)",
            a.duration
        );
    }
    let text = topology_text(a.topology.as_deref())?;
    let topo = topology::check_str(&text)
        .topology
        .context("the topology is invalid (check it with `metrodr topology validate`)")?;
    let sites = lab::runner::sites(&topo)?;
    chaos::netns::preflight().map_err(|e| {
        anyhow::anyhow!("the soak's labs need network namespaces: {e} (run as root)")
    })?;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("metrodr-soak-{}", std::process::id())),
    };
    let topology_file = match &a.topology {
        Some(t) => Some(
            t.canonicalize()
                .with_context(|| format!("finding {}", t.display()))?,
        ),
        None => None,
    };
    let plan = SoakPlan {
        generator: if a.no_overlap {
            Generator::OneAtATime
        } else {
            Generator::Overlapping
        },
        first_seed: a.seed,
        seeds: a.seeds,
        duration_s: a.duration,
        summary: a.json.clone().unwrap_or_else(|| dir.join("soak.json")),
        dir,
        keep_passed: a.keep_passed,
        topology_file,
    };
    let table = out == Output::Table;
    if table {
        outln!(
            "soak: {} schedules from seed {} in {} (summary: {})",
            plan.seeds,
            plan.first_seed,
            plan.dir.display(),
            plan.summary.display()
        );
    }
    let summary = run_soak(&plan, &sites, &text, false, summarize, |r| {
        if table {
            print_run(r);
        }
    })
    .await?;
    match out {
        Output::Json => print_json(&summary)?,
        Output::Table => {
            outln!();
            outln!("{}", summary.table().trim_end());
            outln!("summary: {}", plan.summary.display());
        }
    }
    Ok(if summary.passed() && summary.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One line per run as it ends.
fn print_run(r: &SeedRun) {
    let verdict = match r.outcome {
        Outcome::Passed => "passed".to_string(),
        Outcome::Failed => format!(
            "FAILED: {}",
            r.violations
                .iter()
                .map(|v| format!("{}: {}", v.invariant, v.detail))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Outcome::Broken => format!("BROKEN: {}", r.error.as_deref().unwrap_or("")),
    };
    outln!("{:<22} {:>6.1} s  {verdict}", r.scenario, r.time_s);
}
