//! The soak's summary: one entry per seed (passed, failed with its violations and
//! the file that replays it, or broken: the run itself could not be carried out),
//! violations counted per invariant, totals and times. Written as JSON after every
//! run ([`SUMMARY_FORMAT`] versions it) and rendered as a short table for people.
//!
//! Pure: no lab, no files. Never: decide anything on the rendered table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use chaos::invariants::{Invariant, Violation};
use chaos::scenario::Generator;
use serde::{Deserialize, Serialize};

/// The version of the summary's JSON; bumped when a field changes meaning or goes.
pub const SUMMARY_FORMAT: u32 = 1;

/// How one seed's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every invariant held.
    Passed,
    /// Some invariant was broken (the run's `violations`).
    Failed,
    /// The run could not be carried out (the lab did not start, a fault could not be
    /// read back): no verdict on the invariants (the run's `error`).
    Broken,
}

/// One seed's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRun {
    pub seed: u64,
    /// The scenario's name (`random-SEED`, `random-overlap-SEED`): its directory under
    /// the soak's.
    pub scenario: String,
    pub outcome: Outcome,
    /// Wall time of the run: the lab's start, the schedule, settling, the checks and
    /// the lab's stop.
    pub time_s: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The schedule exactly as it ran (the runner writes it before the lab starts).
    pub replay: PathBuf,
    /// What replays a run that did not pass (None when it passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_command: Option<String>,
    /// The run's directory: its `runner.log` and (unless it passed and the soak does
    /// not keep passed labs) the lab's logs.
    pub dir: PathBuf,
}

/// Counts over every run so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub runs: u64,
    pub passed: u64,
    pub failed: u64,
    pub broken: u64,
    pub total_s: f64,
    pub mean_s: f64,
}

/// What the soak asked for and what it saw so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoakSummary {
    /// [`SUMMARY_FORMAT`] when written.
    pub format: u32,
    pub generator: Generator,
    pub first_seed: u64,
    /// How many seeds the soak was asked to run.
    pub seeds: u64,
    /// Length of each schedule, seconds.
    pub duration_s: f64,
    /// When the soak began, seconds since the Unix epoch.
    pub started_unix_s: u64,
    /// Whether every seed asked for has run (false while the soak runs, and after an
    /// interrupted one).
    pub complete: bool,
    /// The signal that stopped the soak early, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_by: Option<String>,
    pub totals: Totals,
    /// Violations per invariant over every run, by the invariant's stable name.
    pub violations: BTreeMap<Invariant, u64>,
    pub runs: Vec<SeedRun>,
}

impl SoakSummary {
    pub fn new(
        generator: Generator,
        first_seed: u64,
        seeds: u64,
        duration_s: f64,
        started_unix_s: u64,
    ) -> SoakSummary {
        SoakSummary {
            format: SUMMARY_FORMAT,
            generator,
            first_seed,
            seeds,
            duration_s,
            started_unix_s,
            complete: false,
            interrupted_by: None,
            totals: Totals::default(),
            violations: BTreeMap::new(),
            runs: Vec::new(),
        }
    }

    /// Add one run: its outcome and time to the totals, its violations to the counts.
    pub fn record(&mut self, run: SeedRun) {
        let t = &mut self.totals;
        t.runs += 1;
        match run.outcome {
            Outcome::Passed => t.passed += 1,
            Outcome::Failed => t.failed += 1,
            Outcome::Broken => t.broken += 1,
        }
        t.total_s += run.time_s;
        t.mean_s = t.total_s / t.runs as f64;
        for v in &run.violations {
            *self.violations.entry(v.invariant).or_default() += 1;
        }
        self.complete = self.interrupted_by.is_none() && t.runs >= self.seeds;
        self.runs.push(run);
    }

    /// Whether every run so far passed (an empty soak did not pass: it showed nothing).
    pub fn passed(&self) -> bool {
        self.totals.runs > 0 && self.totals.runs == self.totals.passed
    }

    /// The short table for people: totals, violations per invariant, and every run
    /// that did not pass with what replays it.
    pub fn table(&self) -> String {
        let t = &self.totals;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "soak of {} {} schedules from seed {} ({} s each): {} of {} run{}",
            self.seeds,
            match self.generator {
                Generator::OneAtATime => "one-at-a-time",
                Generator::Overlapping => "overlapping",
            },
            self.first_seed,
            self.duration_s,
            t.runs,
            self.seeds,
            match &self.interrupted_by {
                Some(sig) => format!(", interrupted by {sig}"),
                None => String::new(),
            }
        );
        let _ = writeln!(
            out,
            "  passed {}   failed {}   broken {}   time {:.0} s (mean {:.1} s per run)",
            t.passed, t.failed, t.broken, t.total_s, t.mean_s
        );
        if !self.violations.is_empty() {
            let _ = writeln!(out, "  {:<28} {:>6}", "invariant", "broken");
            for (inv, n) in &self.violations {
                let _ = writeln!(out, "  {:<28} {n:>6}", inv.name());
            }
        }
        let bad: Vec<&SeedRun> = self
            .runs
            .iter()
            .filter(|r| r.outcome != Outcome::Passed)
            .collect();
        if !bad.is_empty() {
            let _ = writeln!(
                out,
                "  {:<8} {:<8} {:>7}  what / replay",
                "seed", "outcome", "time"
            );
        }
        for r in bad {
            let what = match r.outcome {
                Outcome::Broken => r.error.clone().unwrap_or_default(),
                _ => r
                    .violations
                    .iter()
                    .map(|v| v.invariant.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let _ = writeln!(
                out,
                "  {:<8} {:<8} {:>6.1}s  {what}",
                r.seed,
                match r.outcome {
                    Outcome::Passed => "passed",
                    Outcome::Failed => "FAILED",
                    Outcome::Broken => "BROKEN",
                },
                r.time_s
            );
            if let Some(c) = &r.replay_command {
                let _ = writeln!(out, "  {:<8} {:<8} {:>7}  {c}", "", "", "");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, outcome: Outcome, time_s: f64, broke: &[Invariant]) -> SeedRun {
        SeedRun {
            seed,
            scenario: format!("random-overlap-{seed}"),
            outcome,
            time_s,
            violations: broke
                .iter()
                .map(|i| Violation {
                    invariant: *i,
                    detail: format!("seen in seed {seed}"),
                })
                .collect(),
            error: (outcome == Outcome::Broken).then(|| "the lab did not start".to_string()),
            replay: PathBuf::from(format!("/s/random-overlap-{seed}/scenario.toml")),
            replay_command: (outcome != Outcome::Passed)
                .then(|| format!("metrodr chaos run /s/random-overlap-{seed}/scenario.toml")),
            dir: PathBuf::from(format!("/s/random-overlap-{seed}")),
        }
    }

    fn soak() -> SoakSummary {
        let mut s = SoakSummary::new(Generator::Overlapping, 7, 4, 12.0, 1_700_000_000);
        s.record(run(7, Outcome::Passed, 20.0, &[]));
        s.record(run(
            8,
            Outcome::Failed,
            30.0,
            &[Invariant::EveryVmRunsOnce, Invariant::EveryVmRunsOnce],
        ));
        s.record(run(9, Outcome::Failed, 25.0, &[Invariant::ClusterHeals]));
        s
    }

    #[test]
    fn runs_are_counted_per_outcome_and_violations_per_invariant() {
        let mut s = soak();
        assert_eq!(
            s.totals,
            Totals {
                runs: 3,
                passed: 1,
                failed: 2,
                broken: 0,
                total_s: 75.0,
                mean_s: 25.0,
            }
        );
        assert_eq!(
            s.violations,
            BTreeMap::from([
                (Invariant::EveryVmRunsOnce, 2),
                (Invariant::ClusterHeals, 1)
            ])
        );
        assert!(!s.complete, "3 of 4 seeds");
        assert!(!s.passed());
        s.record(run(10, Outcome::Broken, 5.0, &[]));
        assert!(s.complete);
        assert_eq!((s.totals.broken, s.totals.runs), (1, 4));
        assert_eq!(s.totals.mean_s, 20.0);

        let mut ok = SoakSummary::new(Generator::OneAtATime, 1, 1, 20.0, 0);
        assert!(!ok.passed(), "nothing ran");
        ok.record(run(1, Outcome::Passed, 20.0, &[]));
        assert!(ok.passed() && ok.complete);
        let mut stopped = SoakSummary::new(Generator::OneAtATime, 1, 1, 20.0, 0);
        stopped.interrupted_by = Some("SIGINT".into());
        stopped.record(run(1, Outcome::Passed, 20.0, &[]));
        assert!(!stopped.complete, "an interrupted soak is not complete");
    }

    #[test]
    fn the_summary_round_trips_through_json_keyed_by_invariant_names() {
        let s = soak();
        let text = serde_json::to_string_pretty(&s).expect("serializes");
        let back: SoakSummary = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, s);
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["format"], 1, "the current format is pinned");
        assert_eq!(SUMMARY_FORMAT, 1);
        assert_eq!(v["generator"], "overlapping");
        assert_eq!(v["violations"]["every-vm-runs-once"], 2);
        assert_eq!(v["violations"]["cluster-heals"], 1);
        assert_eq!(v["runs"][1]["outcome"], "failed");
        assert_eq!(
            v["runs"][1]["violations"][0]["invariant"],
            "every-vm-runs-once"
        );
        assert!(
            v["runs"][0].get("replay_command").is_none(),
            "a passed run needs no replay command: {}",
            v["runs"][0]
        );
        let mut bad = v.clone();
        bad["colour"] = 1.into();
        assert!(serde_json::from_value::<SoakSummary>(bad).is_err());
    }

    #[test]
    fn the_table_gives_totals_counts_and_how_to_replay_each_failure() {
        let t = soak().table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "soak of 4 overlapping schedules from seed 7 (12 s each): 3 of 4 run"
        );
        assert_eq!(
            lines[1],
            "  passed 1   failed 2   broken 0   time 75 s (mean 25.0 s per run)"
        );
        assert!(t.contains("  every-vm-runs-once                2\n"), "{t}");
        assert!(t.contains("  cluster-heals                     1\n"), "{t}");
        assert!(
            t.contains("  8        FAILED     30.0s  every-vm-runs-once, every-vm-runs-once\n"),
            "{t}"
        );
        assert!(
            t.contains("metrodr chaos run /s/random-overlap-9/scenario.toml"),
            "{t}"
        );
        assert!(
            !t.contains("random-overlap-7/"),
            "a passed run is not listed: {t}"
        );
        let mut ok = SoakSummary::new(Generator::OneAtATime, 1, 1, 20.0, 0);
        ok.record(run(1, Outcome::Passed, 20.0, &[]));
        assert_eq!(ok.table().lines().count(), 2, "{}", ok.table());
    }
}
