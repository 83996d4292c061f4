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
//! schedule back, so a failure can be replayed from its file too.
//!
//! Pure: nothing here touches the lab.

use serde::{Deserialize, Serialize};
use topology::generate::SplitMix64;

use crate::proxy::DirProps;

/// Longest run a scenario may ask for (a soak runs many scenarios, not one long one).
pub const DURATION_MAX_S: f64 = 3600.0;

/// One fault. Sites are the topology's site ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// SIGKILL every process of the site (orchestrator node, agents and the VMs and
    /// volumes inside them): the site is lost.
    KillSite { site: String },
    /// SIGSTOP every process of the site: it hangs, then comes back with stale state.
    PauseSite { site: String },
    /// SIGCONT what `pause-site` stopped.
    ResumeSite { site: String },
    /// Start the site's killed processes again on their data directories.
    RestartSite { site: String },
    /// SIGKILL the orchestrator node that leads now (restarted at the end).
    KillLeader,
    /// Start the node the last `kill-leader` killed again.
    RestartLeader,
    /// Drop all traffic between two sites.
    Partition { a: String, b: String },
    /// Drop what `from` sends to `to`, not the reverse.
    PartitionOneWay { from: String, to: String },
    /// Cut a site off from every other site.
    Isolate { site: String },
    /// Remove every network fault.
    Heal,
    /// The disk under `volume`'s replica at `site` fails: every I/O to it errors.
    DiskFail { site: String, volume: String },
    /// That disk is replaced: I/O works again (the replica resyncs).
    DiskRepair { site: String, volume: String },
    /// Make the WAN between two production sites slow, both ways: one-way delay
    /// (± uniform jitter), segment loss (each loss stalls the stream like a TCP
    /// retransmission) and a bandwidth limit (0: none), through the lab's link proxies.
    /// All zero puts the link back to full speed; `heal` does too.
    Shape {
        a: String,
        b: String,
        #[serde(flatten)]
        shape: LinkShape,
    },
    /// The clocks of the site's agents run at `rate` times real time (0.5: half
    /// speed, a lease lasts twice as long as the agent thinks; 1: normal again). The
    /// agents time their leases with it.
    ClockSkew { site: String, rate: f64 },
}

/// Bounds a scenario's link shape and clock rates are checked against.
pub const SHAPE_DELAY_MAX_MS: f64 = 10_000.0;
pub const SHAPE_LOSS_MAX: f64 = 0.5;
pub const SHAPE_BANDWIDTH_MAX_MBIT_S: f64 = 100_000.0;
pub const CLOCK_RATE_MIN: f64 = 0.1;
pub const CLOCK_RATE_MAX: f64 = 10.0;

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// How slow a link is made, both ways: one-way delay ± uniform jitter, the
/// probability that a 1448-byte segment is lost, and a bandwidth limit (0: none). All
/// zero is full speed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkShape {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay_ms: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub jitter_ms: f64,
    /// Probability that a 1448-byte segment is lost (0.01 is 1 %).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub loss: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bandwidth_mbit_s: f64,
}

impl LinkShape {
    /// What the shape does to each direction, in the proxy's terms.
    pub fn props(&self) -> DirProps {
        let us = |ms: f64| (ms * 1000.0).round() as u64;
        DirProps {
            delay_us: us(self.delay_ms),
            jitter_us: us(self.jitter_ms),
            bandwidth_bytes_per_s: (self.bandwidth_mbit_s * 1e6 / 8.0).round() as u64,
            loss_probability: self.loss,
            ..DirProps::default()
        }
    }

    /// Everything wrong with the shape (empty: fine).
    pub fn problems(&self) -> Vec<String> {
        let LinkShape {
            delay_ms,
            jitter_ms,
            loss,
            bandwidth_mbit_s,
        } = *self;
        let mut out = Vec::new();
        let within = |v: f64, max: f64| v.is_finite() && (0.0..=max).contains(&v);
        if !within(delay_ms, SHAPE_DELAY_MAX_MS) {
            out.push(format!(
                "delay_ms = {delay_ms} must be 0 to {SHAPE_DELAY_MAX_MS} ms"
            ));
        }
        if !within(jitter_ms, SHAPE_DELAY_MAX_MS) {
            out.push(format!(
                "jitter_ms = {jitter_ms} must be 0 to {SHAPE_DELAY_MAX_MS} ms"
            ));
        }
        if !within(loss, SHAPE_LOSS_MAX) {
            out.push(format!(
                "loss = {loss} must be a probability from 0 to {SHAPE_LOSS_MAX} (0.01 is 1 %)"
            ));
        }
        if !within(bandwidth_mbit_s, SHAPE_BANDWIDTH_MAX_MBIT_S)
            || (bandwidth_mbit_s > 0.0 && bandwidth_mbit_s < 0.008)
        {
            out.push(format!(
                "bandwidth_mbit_s = {bandwidth_mbit_s} must be 0 (no limit) or 0.008 (1 kB/s) to {SHAPE_BANDWIDTH_MAX_MBIT_S} Mbit/s"
            ));
        }
        out
    }

    /// One line for logs and `lab status`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.delay_ms > 0.0 || self.jitter_ms > 0.0 {
            parts.push(format!(
                "{} ms ± {} ms one way",
                self.delay_ms, self.jitter_ms
            ));
        }
        if self.loss > 0.0 {
            parts.push(format!("{} % segment loss", self.loss * 100.0));
        }
        if self.bandwidth_mbit_s > 0.0 {
            parts.push(format!("{} Mbit/s", self.bandwidth_mbit_s));
        }
        if parts.is_empty() {
            "full speed".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Everything wrong with a clock rate (empty: fine).
pub fn clock_rate_problems(rate: f64) -> Vec<String> {
    if rate.is_finite() && (CLOCK_RATE_MIN..=CLOCK_RATE_MAX).contains(&rate) {
        Vec::new()
    } else {
        vec![format!(
            "rate = {rate} must be {CLOCK_RATE_MIN} to {CLOCK_RATE_MAX} (1 is real time, 0.5 half speed)"
        )]
    }
}

impl Fault {
    /// The sites this fault names.
    pub fn sites(&self) -> Vec<&str> {
        match self {
            Fault::KillSite { site }
            | Fault::PauseSite { site }
            | Fault::ResumeSite { site }
            | Fault::RestartSite { site }
            | Fault::Isolate { site }
            | Fault::DiskFail { site, .. }
            | Fault::DiskRepair { site, .. }
            | Fault::ClockSkew { site, .. } => vec![site],
            Fault::Partition { a, b } | Fault::Shape { a, b, .. } => vec![a, b],
            Fault::PartitionOneWay { from, to } => vec![from, to],
            Fault::KillLeader | Fault::RestartLeader | Fault::Heal => vec![],
        }
    }

    /// One line for logs and results.
    pub fn describe(&self) -> String {
        match self {
            Fault::KillSite { site } => format!("kill every process of {site}"),
            Fault::PauseSite { site } => format!("pause (SIGSTOP) every process of {site}"),
            Fault::ResumeSite { site } => format!("resume (SIGCONT) {site}"),
            Fault::RestartSite { site } => format!("restart the killed processes of {site}"),
            Fault::KillLeader => "kill the leading orchestrator node".into(),
            Fault::RestartLeader => "restart the orchestrator node killed as leader".into(),
            Fault::Partition { a, b } => format!("partition {a} | {b}"),
            Fault::PartitionOneWay { from, to } => format!("drop what {from} sends to {to}"),
            Fault::Isolate { site } => format!("isolate {site}"),
            Fault::Heal => "heal every network fault".into(),
            Fault::DiskFail { site, volume } => {
                format!("fail the disk under {volume}'s replica at {site}")
            }
            Fault::DiskRepair { site, volume } => {
                format!("repair the disk under {volume}'s replica at {site}")
            }
            Fault::Shape { a, b, shape } => {
                format!("shape the link {a} <-> {b}: {}", shape.describe())
            }
            Fault::ClockSkew { site, rate } => {
                format!("run the clocks of {site}'s agents at {rate} x real time")
            }
        }
    }
}

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

    /// Everything wrong with this scenario, each with what to do (empty: runnable).
    pub fn problems(&self, sites: &Sites) -> Vec<String> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push("name is empty: give the scenario a name".to_string());
        }
        let finite = |v: f64| v.is_finite() && v >= 0.0;
        if !finite(self.duration_s) || self.duration_s == 0.0 || self.duration_s > DURATION_MAX_S {
            out.push(format!(
                "duration_s = {} must be more than 0 and at most {DURATION_MAX_S} s",
                self.duration_s
            ));
        }
        if !finite(self.settle_s) || self.settle_s > DURATION_MAX_S {
            out.push(format!(
                "settle_s = {} must be between 0 and {DURATION_MAX_S} s",
                self.settle_s
            ));
        }
        if self.workload.writers == 0 || self.workload.writers > 64 {
            out.push(format!(
                "workload.writers = {} must be 1 to 64",
                self.workload.writers
            ));
        }
        let known = sites.all();
        let mut paused: Vec<&str> = Vec::new();
        let mut killed: Vec<&str> = Vec::new();
        let mut leader_killed = false;
        let mut last = 0.0;
        for (i, step) in self.faults.iter().enumerate() {
            let n = i + 1;
            if !finite(step.at_s) || step.at_s > self.duration_s {
                out.push(format!(
                    "fault {n} ({}): at_s = {} must be within 0..=duration_s ({})",
                    step.fault.describe(),
                    step.at_s,
                    self.duration_s
                ));
            } else if step.at_s < last {
                out.push(format!(
                    "fault {n} ({}): at_s = {} is before the fault above it ({last}): list faults in time order",
                    step.fault.describe(),
                    step.at_s
                ));
            } else {
                last = step.at_s;
            }
            for s in step.fault.sites() {
                if !known.contains(&s) {
                    out.push(format!(
                        "fault {n}: no site {s:?} in the lab (sites: {})",
                        known.join(", ")
                    ));
                }
            }
            match &step.fault {
                Fault::Partition { a, b } if a == b => out.push(format!(
                    "fault {n}: a site cannot be partitioned from itself"
                )),
                Fault::PartitionOneWay { from, to } if from == to => out.push(format!(
                    "fault {n}: a site cannot be partitioned from itself"
                )),
                Fault::Shape { a, b, shape } => {
                    let prod = |s: &String| sites.production.contains(s);
                    if a == b || !prod(a) || !prod(b) {
                        out.push(format!(
                            "fault {n}: shape the link between the two production sites ({} and {}); the witness only carries control-plane traffic, which the lab does not shape",
                            sites.production[0], sites.production[1]
                        ));
                    }
                    for p in shape.problems() {
                        out.push(format!("fault {n}: {p}"));
                    }
                }
                Fault::ClockSkew { site, rate } => {
                    if !sites.production.contains(site) {
                        out.push(format!(
                            "fault {n}: clock-skew {site}: only production sites run agents ({} and {})",
                            sites.production[0], sites.production[1]
                        ));
                    }
                    for p in clock_rate_problems(*rate) {
                        out.push(format!("fault {n}: {p}"));
                    }
                }
                Fault::PauseSite { site } => {
                    if paused.contains(&site.as_str()) {
                        out.push(format!("fault {n}: {site} is paused already"));
                    }
                    paused.push(site);
                }
                Fault::ResumeSite { site } => {
                    if !paused.contains(&site.as_str()) {
                        out.push(format!(
                            "fault {n}: resume {site}, which no fault above paused"
                        ));
                    }
                    paused.retain(|p| p != site);
                }
                Fault::KillSite { site } => killed.push(site),
                Fault::KillLeader => leader_killed = true,
                Fault::RestartLeader => {
                    if !leader_killed {
                        out.push(format!(
                            "fault {n}: restart-leader, but no kill-leader above it"
                        ));
                    }
                    leader_killed = false;
                }
                Fault::RestartSite { site } => {
                    if !killed.contains(&site.as_str()) {
                        out.push(format!(
                            "fault {n}: restart {site}, which no fault above killed"
                        ));
                    }
                    killed.retain(|k| k != site);
                }
                _ => {}
            }
        }
        if let Some(ms) = self.expect.max_write_stall_ms
            && ms == 0
        {
            out.push(
                "expect.max_write_stall_ms = 0: no write is that fast; give a bound in ms".into(),
            );
        }
        out
    }

    /// The scenario as TOML, exactly as it runs (to replay it: `metrodr chaos run FILE`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render the scenario: {e}\n"))
    }

    /// A random schedule from `seed`: one to three faults of the kinds the lab knows,
    /// each undone before the end (a paused site resumes, a killed one restarts, a cut
    /// heals) so that the run tests recovery as well as the failure. `duration_s` is
    /// the schedule's length.
    pub fn random(seed: u64, sites: &Sites, duration_s: f64) -> Scenario {
        let mut rng = SplitMix64::new(seed);
        let duration_s = duration_s.clamp(4.0, DURATION_MAX_S);
        let prod = |rng: &mut SplitMix64| sites.production[rng.range(0, 1) as usize].clone();
        let any = |rng: &mut SplitMix64| sites.all()[rng.range(0, 2) as usize].to_string();
        let mut steps = Vec::new();
        let count = rng.range(1, 3);
        // Faults start in the first half, one at a time, each undone before the next
        // begins: overlapping losses of both production sites are out of scope for an
        // automatic test (nothing could run).
        let slot = duration_s / count as f64;
        for i in 0..count {
            let start = slot * i as f64;
            let at = round_tenth(start + slot * (rng.range(5, 35) as f64 / 100.0));
            let undo = round_tenth(start + slot * (rng.range(60, 90) as f64 / 100.0));
            let (fault, fix) = match rng.range(0, 8) {
                0 => {
                    let site = prod(&mut rng);
                    (
                        Fault::KillSite { site: site.clone() },
                        Some(Fault::RestartSite { site }),
                    )
                }
                1 => {
                    let site = any(&mut rng);
                    (
                        Fault::PauseSite { site: site.clone() },
                        Some(Fault::ResumeSite { site }),
                    )
                }
                2 => (Fault::KillLeader, Some(Fault::RestartLeader)),
                3 => {
                    let a = any(&mut rng);
                    let others: Vec<&str> = sites.all().into_iter().filter(|s| *s != a).collect();
                    let b = others[rng.range(0, 1) as usize].to_string();
                    (Fault::Partition { a, b }, Some(Fault::Heal))
                }
                4 => {
                    let from = any(&mut rng);
                    let others: Vec<&str> =
                        sites.all().into_iter().filter(|s| *s != from).collect();
                    let to = others[rng.range(0, 1) as usize].to_string();
                    (Fault::PartitionOneWay { from, to }, Some(Fault::Heal))
                }
                6 => (
                    // A slow WAN: 1-20 ms one way, up to 2 % loss.
                    Fault::Shape {
                        a: sites.production[0].clone(),
                        b: sites.production[1].clone(),
                        shape: LinkShape {
                            delay_ms: rng.range(1, 20) as f64,
                            jitter_ms: rng.range(0, 5) as f64,
                            loss: rng.range(0, 20) as f64 / 1000.0,
                            bandwidth_mbit_s: 0.0,
                        },
                    },
                    Some(Fault::Heal),
                ),
                7 => {
                    // Within what the lease margin absorbs (3 s lease, 0.5 s margin:
                    // rates from 0.9 up are safe; faster clocks only fence sooner).
                    let site = prod(&mut rng);
                    (
                        Fault::ClockSkew {
                            site: site.clone(),
                            rate: rng.range(90, 150) as f64 / 100.0,
                        },
                        Some(Fault::ClockSkew { site, rate: 1.0 }),
                    )
                }
                _ => (
                    Fault::Isolate {
                        site: any(&mut rng),
                    },
                    Some(Fault::Heal),
                ),
            };
            steps.push(Step { at_s: at, fault });
            if let Some(fix) = fix {
                steps.push(Step {
                    at_s: undo,
                    fault: fix,
                });
            }
        }
        Scenario {
            name: format!("random-{seed}"),
            description: format!("random schedule from seed {seed}"),
            seed: Some(seed),
            duration_s: round_tenth(duration_s),
            settle_s: default_settle_s(),
            workload: Workload::default(),
            faults: steps,
            expect: Expect::default(),
        }
    }
}

fn round_tenth(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sites() -> Sites {
        Sites {
            production: ["north".into(), "south".into()],
            witness: "witness".into(),
        }
    }

    #[test]
    fn a_scenario_file_parses_and_round_trips() {
        let text = r#"
name = "site-loss"
duration_s = 20
[[fault]]
at_s = 3
do = "kill-site"
site = "north"
[[fault]]
at_s = 15
do = "restart-site"
site = "north"
[expect]
failover = true
"#;
        let s = Scenario::parse("f.toml", text, &sites()).expect("valid");
        assert_eq!(s.faults.len(), 2);
        assert_eq!(
            s.faults[0].fault,
            Fault::KillSite {
                site: "north".into()
            }
        );
        assert_eq!(s.settle_s, 30.0);
        assert_eq!(s.workload.writers, 4);
        let again = Scenario::parse("f.toml", &s.to_toml(), &sites()).expect("round trip");
        assert_eq!(again, s);
    }

    #[test]
    fn bad_scenarios_say_what_is_wrong() {
        let cases = [
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"explode\"\n",
                "explode",
            ),
            ("name = \"x\"\n", "duration_s"),
            ("name = \"x\"\nduration_s = 5\ncolour = 1\n", "colour"),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"kill-site\"\nsite = \"mars\"\n",
                "no site \"mars\"",
            ),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 9\ndo = \"heal\"\n",
                "within 0..=duration_s",
            ),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"resume-site\"\nsite = \"north\"\n",
                "no fault above paused",
            ),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"restart-site\"\nsite = \"north\"\n",
                "no fault above killed",
            ),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 3\ndo = \"heal\"\n[[fault]]\nat_s = 1\ndo = \"heal\"\n",
                "time order",
            ),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"partition\"\na = \"north\"\nb = \"north\"\n",
                "from itself",
            ),
            ("name = \"x\"\nduration_s = 0\n", "more than 0"),
            (
                "name = \"x\"\nduration_s = 5\n[workload]\nwriters = 0\n",
                "1 to 64",
            ),
            ("name = \"\"\nduration_s = 5\n", "name is empty"),
            (
                "name = \"x\"\nduration_s = 5\n[expect]\nmax_write_stall_ms = 0\n",
                "no write is that fast",
            ),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"restart-leader\"\n",
                "no kill-leader above it",
            ),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"shape\"\na = \"north\"\nb = \"witness\"\ndelay_ms = 5\n",
                "between the two production sites",
            ),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"shape\"\na = \"north\"\nb = \"south\"\nloss = 0.9\n",
                "loss = 0.9 must be a probability",
            ),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"shape\"\na = \"north\"\nb = \"south\"\ndelay_ms = -1\n",
                "delay_ms = -1 must be 0 to",
            ),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"shape\"\na = \"north\"\nb = \"south\"\nbandwidth_mbit_s = 0.001\n",
                "0 (no limit) or 0.008",
            ),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"shape\"\na = \"north\"\nb = \"south\"\nlatency = 3\n",
                "latency",
            ),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"clock-skew\"\nsite = \"witness\"\nrate = 0.5\n",
                "only production sites run agents",
            ),
            (
                "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"clock-skew\"\nsite = \"north\"\nrate = 0\n",
                "rate = 0 must be 0.1 to 10",
            ),
        ];
        for (text, says) in cases {
            let e = Scenario::parse("bad.toml", text, &sites())
                .expect_err(text)
                .to_string();
            assert!(e.starts_with("bad.toml: "), "{e}");
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn random_schedules_are_valid_replayable_and_varied() {
        let mut kinds = std::collections::HashSet::new();
        for seed in 0..300 {
            let s = Scenario::random(seed, &sites(), 20.0);
            assert_eq!(
                s.problems(&sites()),
                Vec::<String>::new(),
                "{}",
                s.to_toml()
            );
            assert_eq!(
                Scenario::random(seed, &sites(), 20.0),
                s,
                "same seed, same run"
            );
            let again = Scenario::parse("r.toml", &s.to_toml(), &sites()).expect("replay file");
            assert_eq!(again, s);
            // Every fault is undone before the end.
            let mut open = 0i32;
            for st in &s.faults {
                match st.fault {
                    Fault::KillSite { .. } | Fault::PauseSite { .. } => open += 1,
                    Fault::RestartSite { .. } | Fault::ResumeSite { .. } => open -= 1,
                    _ => {}
                }
                kinds.insert(std::mem::discriminant(&st.fault));
            }
            assert_eq!(open, 0, "{}", s.to_toml());
            // A skewed clock is set back to real time.
            if let Some(skew) = s
                .faults
                .iter()
                .rposition(|st| matches!(st.fault, Fault::ClockSkew { .. }))
            {
                assert!(
                    matches!(s.faults[skew].fault, Fault::ClockSkew { rate, .. } if rate == 1.0),
                    "{}",
                    s.to_toml()
                );
            }
            if let Some(last_cut) = s.faults.iter().rposition(|st| {
                matches!(
                    st.fault,
                    Fault::Partition { .. }
                        | Fault::PartitionOneWay { .. }
                        | Fault::Isolate { .. }
                        | Fault::Shape { .. }
                )
            }) {
                assert!(
                    s.faults[last_cut..]
                        .iter()
                        .any(|st| st.fault == Fault::Heal),
                    "{}",
                    s.to_toml()
                );
            }
        }
        assert_eq!(kinds.len(), 12, "every fault kind is drawn");
        assert_ne!(
            Scenario::random(1, &sites(), 20.0),
            Scenario::random(2, &sites(), 20.0)
        );
    }
}
