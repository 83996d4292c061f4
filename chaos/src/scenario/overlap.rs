//! Random schedules whose faults overlap: a second fault may begin before the first
//! is undone (a partition while a site is paused, a site killed while the WAN is
//! shaped, the leader killed during a site loss). Pure; a seed replays the same
//! schedule on any machine ([`SplitMix64`]).
//!
//! Each fault is a window (from its start to the step that undoes it) of one class:
//! a site out (killed, paused or isolated), a link cut (partition, one way or both),
//! the leader killed, the WAN shaped, a site's clocks skewed. The rules that keep an
//! automatic check meaningful:
//! - at most one window of each class at a time, and at most one cut or isolation
//!   (the lab keeps one killed leader and one shape; `heal` removes every cut and
//!   isolation at once, so two could not be undone apart);
//! - at every moment a production site is up and reaches another site that is up
//!   (a majority of the three orchestrator nodes with a production site in it):
//!   never both production sites out, never a site out while the two others are cut
//!   from each other. A leader killed on top is allowed: it only delays decisions
//!   until it is back, which is what the run then tests;
//! - every window closes before 90 % of the schedule, so every fault is undone before
//!   the end. A cut closes with `heal`, which also resets the WAN's shape: a shape
//!   still open then is applied again at the same second.
//!
//! Never: change the draws of an existing generator (seeds are replay commands).

use topology::generate::SplitMix64;

use super::random::{draw, round_tenth};
use super::{
    DURATION_MAX_S, Expect, Fault, LinkShape, Scenario, Sites, Step, Workload, default_settle_s,
};

/// Which generator a random schedule comes from (each seed means a different schedule
/// in each; the scenario's name says which, so a replay command can be rebuilt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generator {
    /// One fault at a time, each undone before the next ([`Scenario::random`]).
    OneAtATime,
    /// Faults that may overlap ([`Scenario::random_overlapping`]).
    Overlapping,
}

impl Generator {
    /// The schedule of `seed` from this generator.
    pub fn schedule(self, seed: u64, sites: &Sites, duration_s: f64) -> Scenario {
        match self {
            Generator::OneAtATime => Scenario::random(seed, sites, duration_s),
            Generator::Overlapping => Scenario::random_overlapping(seed, sites, duration_s),
        }
    }

    /// The `metrodr chaos run` arguments that build the schedule of `seed` again.
    pub fn replay_args(self, seed: u64, duration_s: f64) -> String {
        let overlap = match self {
            Generator::OneAtATime => "",
            Generator::Overlapping => " --overlap",
        };
        format!("--random{overlap} --seed {seed} --duration {duration_s}")
    }
}

/// What a fault window does to the sites, for the rules above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// The site at this index of [`Sites::all`] is out (killed, paused, isolated).
    SiteOut(usize),
    /// The link between two sites (indices of [`Sites::all`]) is cut.
    Cut(usize, usize),
    LeaderKilled,
    Shaped,
    ClockSkewed,
}

impl Class {
    fn same_kind(self, other: Class) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }

    /// Whether a window of this class takes something away (a site, a link, the
    /// leader) rather than degrading it (a slow WAN, a skewed clock within the margin).
    fn disrupts(self) -> bool {
        matches!(
            self,
            Class::SiteOut(_) | Class::Cut(..) | Class::LeaderKilled
        )
    }
}

#[derive(Debug, Clone)]
struct Window {
    from_s: f64,
    to_s: f64,
    class: Class,
    start: Fault,
    undo: Fault,
}

impl Window {
    fn open_at(&self, t: f64) -> bool {
        self.from_s <= t && t < self.to_s
    }

    fn overlaps(&self, other: &Window) -> bool {
        self.from_s < other.to_s && other.from_s < self.to_s
    }
}

/// How many windows a schedule tries to place, and how often one is drawn to start
/// inside a window already placed (in percent).
const WINDOWS_MIN: u64 = 2;
const WINDOWS_MAX: u64 = 4;
const NESTED_PERCENT: u64 = 75;
/// Draws per window before it is left out (a draw breaking a rule is drawn again).
const TRIES: u32 = 8;

impl Scenario {
    /// A random schedule from `seed` whose faults may overlap: two to four faults of
    /// the kinds [`Scenario::random`] draws, most starting while another is still in
    /// force, under the rules in this module's header. `duration_s` is the schedule's
    /// length. Named `random-overlap-SEED`.
    pub fn random_overlapping(seed: u64, sites: &Sites, duration_s: f64) -> Scenario {
        let mut rng = SplitMix64::new(seed);
        let duration_s = round_tenth(duration_s.clamp(4.0, DURATION_MAX_S));
        let pct = |rng: &mut SplitMix64, lo: u64, hi: u64| rng.range(lo, hi) as f64 / 100.0;
        let mut windows: Vec<Window> = Vec::new();
        let wanted = rng.range(WINDOWS_MIN, WINDOWS_MAX);
        for _ in 0..wanted {
            for _ in 0..TRIES {
                let from_s = if !windows.is_empty() && rng.range(1, 100) <= NESTED_PERCENT {
                    let base = &windows[rng.range(0, windows.len() as u64 - 1) as usize];
                    base.from_s + (base.to_s - base.from_s) * pct(&mut rng, 10, 80)
                } else {
                    duration_s * pct(&mut rng, 5, 60)
                };
                let from_s = round_tenth(from_s);
                let to_s = round_tenth(
                    (from_s + duration_s * pct(&mut rng, 15, 45)).min(duration_s * 0.9),
                );
                let (start, undo) = draw(&mut rng, sites);
                let w = window(sites, from_s, to_s, start, undo);
                if w.to_s > w.from_s && fits(&windows, &w, sites) {
                    windows.push(w);
                    break;
                }
            }
        }
        let overlapping = windows.iter().enumerate().any(|(i, a)| {
            windows[i + 1..]
                .iter()
                .any(|b| a.overlaps(b) && a.class.disrupts() && b.class.disrupts())
        });
        let mut description = format!(
            "random overlapping schedule from seed {seed} (replay: metrodr chaos run {})",
            Generator::Overlapping.replay_args(seed, duration_s)
        );
        if overlapping {
            description.push_str(
                "; two faults that take a site, a link or the leader away overlap, beyond what the RTO targets are set for, so the RTO is reported, not required",
            );
        }
        Scenario {
            name: format!("random-overlap-{seed}"),
            description,
            seed: Some(seed),
            duration_s,
            settle_s: default_settle_s(),
            workload: Workload::default(),
            faults: steps(&windows),
            expect: Expect {
                rto: !overlapping,
                ..Expect::default()
            },
        }
    }
}

fn window(sites: &Sites, from_s: f64, to_s: f64, start: Fault, undo: Fault) -> Window {
    let index = |s: &str| sites.all().iter().position(|x| *x == s).unwrap_or(0);
    let class = match &start {
        Fault::KillSite { site } | Fault::PauseSite { site } | Fault::Isolate { site } => {
            Class::SiteOut(index(site))
        }
        Fault::Partition { a, b } => Class::Cut(index(a), index(b)),
        Fault::PartitionOneWay { from, to } => Class::Cut(index(from), index(to)),
        Fault::KillLeader => Class::LeaderKilled,
        Fault::ClockSkew { .. } => Class::ClockSkewed,
        // `draw` starts nothing else: the rest are undos, and the disk faults it
        // never draws (they name a volume).
        Fault::Shape { .. }
        | Fault::Heal
        | Fault::ResumeSite { .. }
        | Fault::RestartSite { .. }
        | Fault::RestartLeader
        | Fault::DiskFail { .. }
        | Fault::DiskRepair { .. } => Class::Shaped,
    };
    // A shape is undone by a full-speed shape, which leaves the cuts alone.
    let undo = match &start {
        Fault::Shape { a, b, .. } => Fault::Shape {
            a: a.clone(),
            b: b.clone(),
            shape: LinkShape::default(),
        },
        _ => undo,
    };
    Window {
        from_s,
        to_s,
        class,
        start,
        undo,
    }
}

/// Whether `w` can join `placed` under the rules in the module's header. The rules
/// only change when a window opens, so they are checked at every opening.
fn fits(placed: &[Window], w: &Window, sites: &Sites) -> bool {
    // `heal` undoes every cut at once, an isolation included.
    let healed = |x: &Window| x.undo == Fault::Heal;
    if placed
        .iter()
        .any(|p| p.overlaps(w) && (p.class.same_kind(w.class) || healed(p) && healed(w)))
    {
        return false;
    }
    let all: Vec<&Window> = placed.iter().chain(std::iter::once(w)).collect();
    all.iter().all(|opening| {
        let open: Vec<Class> = all
            .iter()
            .filter(|x| x.open_at(opening.from_s))
            .map(|x| x.class)
            .collect();
        leaves_a_majority(&open, sites)
    })
}

/// Whether, with the classes `open` in force, a production site is up and reaches
/// another site that is up.
pub(super) fn leaves_a_majority(open: &[Class], sites: &Sites) -> bool {
    let n = sites.all().len();
    let out = |i: usize| open.contains(&Class::SiteOut(i));
    let cut =
        |i: usize, j: usize| open.contains(&Class::Cut(i, j)) || open.contains(&Class::Cut(j, i));
    (0..sites.production.len()).any(|p| !out(p) && (0..n).any(|q| q != p && !out(q) && !cut(p, q)))
}

/// The windows as steps in time order: at one second, what closes first (so a window
/// may open where another of its class closed), a shape cleared by a `heal` applied
/// again, then what opens.
fn steps(windows: &[Window]) -> Vec<Step> {
    let mut timed: Vec<(f64, u8, Fault)> = Vec::new();
    for w in windows {
        timed.push((w.from_s, 2, w.start.clone()));
        timed.push((w.to_s, 0, w.undo.clone()));
        if w.undo == Fault::Heal {
            for shape in windows
                .iter()
                .filter(|s| s.class == Class::Shaped && s.open_at(w.to_s))
            {
                timed.push((w.to_s, 1, shape.start.clone()));
            }
        }
    }
    timed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    timed
        .into_iter()
        .map(|(at_s, _, fault)| Step { at_s, fault })
        .collect()
}
