//! # scenario — a fault schedule against the lab, from a TOML file or from a seed
//!
//! A scenario names faults and the second (after the workload started) at which each
//! happens, how long the run lasts, and what must be true at the end besides the
//! invariants every run checks ([`crate::invariants`]). After the last second every
//! fault is healed, every stopped process restarted, and the cluster gets `settle_s`
//! to converge.
//!
//! ```toml
//! name = "site-loss"
//! duration_s = 25
//! [[fault]]
//! at_s = 3
//! do = "kill-site"
//! site = "north"
//! [expect]
//! failover = true
//! ```
//!
//! Random scenarios ([`Scenario::random`]) come from a seed alone, through
//! [`SplitMix64`] (a fixed algorithm, so a seed replays the same schedule on any
//! machine and any version of the dependencies); [`Scenario::to_toml`] writes the exact
//! schedule back, so a failure can be replayed from its file too. Their faults come
//! one at a time; [`Scenario::random_overlapping`] (`random-overlap-SEED`) lets them
//! overlap, under the rules in `overlap`; [`Generator`] names the two.
//!
//! Pure: nothing here touches the lab.

//!
//! The files: this one (the scenario file's model, parsing and writing it back),
//! [`fault`] (the faults and link shapes), `check` (everything wrong with a scenario),
//! `random` (schedules from a seed, one fault at a time) and `overlap` (schedules whose
//! faults overlap).

mod check;
mod fault;
mod overlap;
#[cfg(test)]
mod overlap_tests;
mod random;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use overlap::Generator;

pub use fault::{
    CLOCK_RATE_MAX, CLOCK_RATE_MIN, Fault, LinkShape, SHAPE_BANDWIDTH_MAX_MBIT_S,
    SHAPE_DELAY_MAX_MS, SHAPE_LOSS_MAX, clock_rate_problems,
};

/// Longest run a scenario may ask for (a soak runs many scenarios, not one long one).
pub const DURATION_MAX_S: f64 = 3600.0;

/// A fault at a moment of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Seconds after the workload started.
    pub at_s: f64,
    #[serde(flatten)]
    pub fault: Fault,
}

/// The writers that stand for the guests: pipelined NBD writes of numbered blocks to
/// the tier-1 app's primary, each acknowledged write checked after the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    #[serde(default = "default_writers")]
    pub writers: u32,
    /// The app whose first volume the writers write (default: the tier-1 app with
    /// volumes, the first by id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            writers: default_writers(),
            app: None,
        }
    }
}

fn default_writers() -> u32 {
    4
}

fn default_settle_s() -> f64 {
    30.0
}

/// What this scenario promises on top of the invariants every run checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// true: some app must end at another site than it started; false: none may move
    /// and the cluster must start no operation by itself. Unset: either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<bool>,
    /// Longest the workload may wait for one write, in ms (a witness loss must not
    /// stall the data path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_write_stall_ms: Option<u64>,
    /// Whether every app the cluster moves must meet its RTO target (default true;
    /// a scenario of two failures at once, beyond what the targets are set for, may
    /// say false and explain why).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub rto: bool,
    /// true: the workload volume's replica must be seen behind during the run (an
    /// async primary over its lag bound stops waiting and tracks what the peer lacks;
    /// it must be up to date again at the end, like every replica); false: it must
    /// keep up in every sample. Unset: either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_over_bound: Option<bool>,
}

impl Default for Expect {
    fn default() -> Self {
        Expect {
            failover: None,
            max_write_stall_ms: None,
            rto: true,
            lag_over_bound: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(v: &bool) -> bool {
    *v
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The seed a random scenario came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Seconds the schedule runs (faults happen within it).
    pub duration_s: f64,
    /// Seconds the cluster gets, after everything is healed, to converge.
    #[serde(default = "default_settle_s")]
    pub settle_s: f64,
    #[serde(default)]
    pub workload: Workload,
    #[serde(default, rename = "fault")]
    pub faults: Vec<Step>,
    #[serde(default)]
    pub expect: Expect,
}

/// The sites of the lab a scenario runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sites {
    /// The two production sites.
    pub production: [String; 2],
    pub witness: String,
}

impl Sites {
    fn all(&self) -> [&str; 3] {
        [&self.production[0], &self.production[1], &self.witness]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: not a valid scenario: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {}", problems.join("; "))]
    Invalid { file: String, problems: Vec<String> },
}

impl Scenario {
    /// Parse and check a scenario file's text against the lab's sites.
    pub fn parse(file: &str, text: &str, sites: &Sites) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            file: file.to_string(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let problems = s.problems(sites);
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(ScenarioError::Invalid {
                file: file.to_string(),
                problems,
            })
        }
    }

    /// The scenario as TOML, exactly as it runs (to replay it: `metrodr chaos run FILE`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render the scenario: {e}\n"))
    }
}
