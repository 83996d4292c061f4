//! Everything wrong with a scenario, each problem with what to do. Pure.

use super::{DURATION_MAX_S, Fault, Scenario, Sites, clock_rate_problems};

impl Scenario {
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
}
