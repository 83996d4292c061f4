//! Random schedules from a seed alone, through [`SplitMix64`] (a fixed algorithm, so
//! a seed replays the same schedule on any machine). Pure.

use topology::generate::SplitMix64;

use super::{
    DURATION_MAX_S, Expect, Fault, LinkShape, Scenario, Sites, Step, Workload, default_settle_s,
};

impl Scenario {
    /// A random schedule from `seed`: one to three faults of the kinds the lab knows,
    /// each undone before the end (a paused site resumes, a killed one restarts, a cut
    /// heals) so that the run tests recovery as well as the failure. `duration_s` is
    /// the schedule's length.
    pub fn random(seed: u64, sites: &Sites, duration_s: f64) -> Scenario {
        let mut rng = SplitMix64::new(seed);
        let duration_s = duration_s.clamp(4.0, DURATION_MAX_S);
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
            let (fault, fix) = draw(&mut rng, sites);
            steps.push(Step { at_s: at, fault });
            steps.push(Step {
                at_s: undo,
                fault: fix,
            });
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

/// One fault of the kinds random schedules draw, and the fault that undoes it. The
/// order of the draws is part of every seed's schedule: change nothing here without
/// a new generator (the digest test pins it).
pub(super) fn draw(rng: &mut SplitMix64, sites: &Sites) -> (Fault, Fault) {
    let prod = |rng: &mut SplitMix64| sites.production[rng.range(0, 1) as usize].clone();
    let any = |rng: &mut SplitMix64| sites.all()[rng.range(0, 2) as usize].to_string();
    match rng.range(0, 8) {
        0 => {
            let site = prod(rng);
            (
                Fault::KillSite { site: site.clone() },
                Fault::RestartSite { site },
            )
        }
        1 => {
            let site = any(rng);
            (
                Fault::PauseSite { site: site.clone() },
                Fault::ResumeSite { site },
            )
        }
        2 => (Fault::KillLeader, Fault::RestartLeader),
        3 => {
            let a = any(rng);
            let others: Vec<&str> = sites.all().into_iter().filter(|s| *s != a).collect();
            let b = others[rng.range(0, 1) as usize].to_string();
            (Fault::Partition { a, b }, Fault::Heal)
        }
        4 => {
            let from = any(rng);
            let others: Vec<&str> = sites.all().into_iter().filter(|s| *s != from).collect();
            let to = others[rng.range(0, 1) as usize].to_string();
            (Fault::PartitionOneWay { from, to }, Fault::Heal)
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
            Fault::Heal,
        ),
        7 => {
            // Within what the lease margin absorbs (3 s lease, 0.5 s margin:
            // rates from 0.9 up are safe; faster clocks only fence sooner).
            let site = prod(rng);
            (
                Fault::ClockSkew {
                    site: site.clone(),
                    rate: rng.range(90, 150) as f64 / 100.0,
                },
                Fault::ClockSkew { site, rate: 1.0 },
            )
        }
        _ => (Fault::Isolate { site: any(rng) }, Fault::Heal),
    }
}

pub(super) fn round_tenth(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
