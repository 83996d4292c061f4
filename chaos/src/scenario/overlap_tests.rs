//! The overlapping random schedules, replayed into a model of the lab's faults (pure:
//! no lab): the rules hold at every second, every fault is undone, a seed is one
//! schedule, and faults do overlap.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn sites() -> Sites {
    Sites {
        production: ["north".into(), "south".into()],
        witness: "witness".into(),
    }
}

/// What is in force in the lab after some steps, as `lab::faults` applies them.
#[derive(Debug, Default, PartialEq)]
struct Model {
    /// Killed or paused sites.
    down: BTreeSet<String>,
    isolated: BTreeSet<String>,
    /// Cut links, each pair sorted (a one-way cut counts: replies do not get through).
    cuts: BTreeSet<(String, String)>,
    shaped: bool,
    clock_rates: BTreeMap<String, f64>,
    leader_killed: bool,
}

impl Model {
    fn apply(&mut self, f: &Fault) {
        let pair = |a: &str, b: &str| (a.min(b).to_string(), a.max(b).to_string());
        match f {
            Fault::KillSite { site } | Fault::PauseSite { site } => {
                assert!(self.down.insert(site.clone()), "{site} is down already");
            }
            Fault::RestartSite { site } | Fault::ResumeSite { site } => {
                assert!(self.down.remove(site), "{site} was not down");
            }
            Fault::Isolate { site } => {
                self.isolated.insert(site.clone());
            }
            Fault::Partition { a, b } => {
                self.cuts.insert(pair(a, b));
            }
            Fault::PartitionOneWay { from, to } => {
                self.cuts.insert(pair(from, to));
            }
            Fault::Heal => {
                // `heal` removes every cut: if two were in force, one would end before
                // its own undo, and the schedule would not be what it says.
                assert!(
                    self.isolated.len() + self.cuts.len() <= 1,
                    "heal removes more than the cut it undoes: {self:?}"
                );
                self.isolated.clear();
                self.cuts.clear();
                self.shaped = false;
            }
            Fault::Shape { shape, .. } => self.shaped = *shape != LinkShape::default(),
            Fault::ClockSkew { site, rate } => {
                if *rate == 1.0 {
                    self.clock_rates.remove(site);
                } else {
                    self.clock_rates.insert(site.clone(), *rate);
                }
            }
            Fault::KillLeader => {
                assert!(!self.leader_killed, "a leader is killed already");
                self.leader_killed = true;
            }
            Fault::RestartLeader => self.leader_killed = false,
            Fault::DiskFail { .. } | Fault::DiskRepair { .. } => {
                panic!("random schedules draw no disk faults")
            }
        }
    }

    fn out(&self, s: &str) -> bool {
        self.down.contains(s) || self.isolated.contains(s)
    }

    /// A production site up that reaches another site that is up: a majority of the
    /// three nodes with somewhere to run the apps.
    fn something_can_run(&self, sites: &Sites) -> bool {
        let cut = |a: &str, b: &str| {
            self.cuts
                .contains(&(a.min(b).to_string(), a.max(b).to_string()))
        };
        sites.production.iter().any(|p| {
            !self.out(p)
                && sites
                    .all()
                    .iter()
                    .any(|q| *q != p.as_str() && !self.out(q) && !cut(p, q))
        })
    }

    /// How many faults are in force.
    fn in_force(&self) -> usize {
        self.down.len()
            + self.isolated.len()
            + self.cuts.len()
            + usize::from(self.shaped)
            + self.clock_rates.len()
            + usize::from(self.leader_killed)
    }
}

/// Play `s` into the model: check the rules after each second's steps; the most
/// faults in force at once, and every combination of kinds seen in force together.
fn play(s: &Scenario) -> (Model, usize, BTreeSet<(&'static str, &'static str)>) {
    let sites = sites();
    let mut m = Model::default();
    let mut most = 0;
    let mut combos = BTreeSet::new();
    let mut i = 0;
    while i < s.faults.len() {
        let at = s.faults[i].at_s;
        while i < s.faults.len() && s.faults[i].at_s == at {
            m.apply(&s.faults[i].fault);
            i += 1;
        }
        assert!(
            m.something_can_run(&sites),
            "at {at} s nothing could run: {m:?}\n{}",
            s.to_toml()
        );
        most = most.max(m.in_force());
        let mut kinds = Vec::new();
        if !m.down.is_empty() || !m.isolated.is_empty() {
            kinds.push("site-out");
        }
        if !m.cuts.is_empty() {
            kinds.push("cut");
        }
        if m.shaped {
            kinds.push("shaped");
        }
        if !m.clock_rates.is_empty() {
            kinds.push("clock");
        }
        if m.leader_killed {
            kinds.push("leader");
        }
        for a in &kinds {
            for b in &kinds {
                if a < b {
                    combos.insert((*a, *b));
                }
            }
        }
    }
    (m, most, combos)
}

#[test]
fn overlapping_schedules_keep_a_site_running_undo_everything_and_replay() {
    let sites = sites();
    let mut overlapping = 0;
    let mut combos = BTreeSet::new();
    let mut kinds = std::collections::HashSet::new();
    let seeds = 0..500u64;
    for seed in seeds.clone() {
        let s = Scenario::random_overlapping(seed, &sites, 20.0);
        assert_eq!(s.problems(&sites), Vec::<String>::new(), "{}", s.to_toml());
        assert_eq!(s.name, format!("random-overlap-{seed}"));
        assert_eq!(s.seed, Some(seed));
        assert!(s.description.contains("--overlap"), "{}", s.description);
        assert_eq!(
            Scenario::random_overlapping(seed, &sites, 20.0),
            s,
            "same seed, same run"
        );
        assert_eq!(Generator::Overlapping.schedule(seed, &sites, 20.0), s);
        let again = Scenario::parse("r.toml", &s.to_toml(), &sites).expect("replay file");
        assert_eq!(again, s);
        assert!(s.faults.len() >= 2, "{}", s.to_toml());
        assert!(
            s.faults.iter().all(|st| st.at_s <= s.duration_s * 0.9),
            "every fault undone before the end: {}",
            s.to_toml()
        );
        let (end, most, seen) = play(&s);
        assert_eq!(end, Model::default(), "left in force:\n{}", s.to_toml());
        if most >= 2 {
            overlapping += 1;
        }
        combos.extend(seen);
        for st in &s.faults {
            kinds.insert(std::mem::discriminant(&st.fault));
        }
    }
    let share = overlapping as f64 / seeds.count() as f64;
    assert!(
        share >= 0.5,
        "only {:.0} % of the schedules overlap faults",
        share * 100.0
    );
    assert_eq!(kinds.len(), 12, "every fault kind random schedules draw");
    for combo in [
        ("cut", "site-out"),
        ("shaped", "site-out"),
        ("leader", "site-out"),
        ("clock", "cut"),
    ] {
        assert!(
            combos.contains(&combo),
            "never {combo:?} at once: {combos:?}"
        );
    }
}

#[test]
fn the_generators_differ_and_the_one_at_a_time_one_never_overlaps() {
    let sites = sites();
    for seed in 0..200 {
        assert_ne!(
            Scenario::random_overlapping(seed, &sites, 20.0).faults,
            Scenario::random(seed, &sites, 20.0).faults
        );
        assert_eq!(
            Generator::OneAtATime.schedule(seed, &sites, 20.0),
            Scenario::random(seed, &sites, 20.0)
        );
        let (_, most, _) = play(&Scenario::random(seed, &sites, 20.0));
        assert!(most <= 1, "seed {seed}");
    }
    assert_eq!(
        Generator::Overlapping.replay_args(7, 12.0),
        "--random --overlap --seed 7 --duration 12"
    );
    assert_eq!(
        Generator::OneAtATime.replay_args(7, 20.0),
        "--random --seed 7 --duration 20"
    );
}

#[test]
fn a_site_out_with_the_other_two_cut_apart_leaves_no_majority() {
    use super::overlap::{Class, leaves_a_majority};
    let sites = sites();
    assert!(leaves_a_majority(&[], &sites));
    assert!(leaves_a_majority(&[Class::SiteOut(0)], &sites));
    assert!(!leaves_a_majority(
        &[Class::SiteOut(0), Class::SiteOut(1)],
        &sites
    ));
    assert!(!leaves_a_majority(
        &[Class::SiteOut(0), Class::SiteOut(2)],
        &sites
    ));
    assert!(!leaves_a_majority(
        &[Class::SiteOut(0), Class::Cut(2, 1)],
        &sites
    ));
    assert!(leaves_a_majority(
        &[Class::SiteOut(0), Class::Cut(0, 1)],
        &sites
    ));
    assert!(leaves_a_majority(&[Class::Cut(0, 1)], &sites));
}
