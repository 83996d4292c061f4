//! # invariants — what must hold in every chaos run, checked from observations
//!
//! DESIGN §8's invariants, as pure checks over what the scenario runner observes:
//! - never two primaries of one volume in the same epoch, never a primary that moves
//!   without an epoch bump, never an epoch that goes back ([`Checker::observe`], on
//!   every sample of the cluster's volumes during the run);
//! - no acknowledged write missing after a synchronous failover (RPO = 0);
//! - every VM ends running exactly once, on a host of its app's active site;
//! - every operation the cluster ran met its apps' RTO targets;
//! - the cluster heals when the faults stop (a leader, every host up, every replica up
//!   to date);
//! - and what the scenario itself promises ([`crate::scenario::Expect`]).
//!
//! The runner turns gRPC answers and the audit log into these plain types, so each rule
//! is tested here without a cluster.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::scenario::Expect;

/// The invariants a chaos run checks, each by its stable name (kebab-case, as the
/// runner's JSON and the soak summary key them; pinned by a test).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    OnePrimaryPerEpoch,
    EpochsOnlyGrow,
    NoAcknowledgedWriteLost,
    EveryVmRunsOnce,
    RtoWithinTarget,
    ClusterHeals,
    ExpectedFailover,
    ExpectedNoFailover,
    WriteStallBound,
    ExpectedLagOverBound,
    ExpectedReplicaKeepsUp,
}

impl Invariant {
    pub const ALL: [Invariant; 11] = [
        Invariant::OnePrimaryPerEpoch,
        Invariant::EpochsOnlyGrow,
        Invariant::NoAcknowledgedWriteLost,
        Invariant::EveryVmRunsOnce,
        Invariant::RtoWithinTarget,
        Invariant::ClusterHeals,
        Invariant::ExpectedFailover,
        Invariant::ExpectedNoFailover,
        Invariant::WriteStallBound,
        Invariant::ExpectedLagOverBound,
        Invariant::ExpectedReplicaKeepsUp,
    ];

    /// The stable name (what serde writes too).
    pub fn name(self) -> &'static str {
        match self {
            Invariant::OnePrimaryPerEpoch => "one-primary-per-epoch",
            Invariant::EpochsOnlyGrow => "epochs-only-grow",
            Invariant::NoAcknowledgedWriteLost => "no-acknowledged-write-lost",
            Invariant::EveryVmRunsOnce => "every-vm-runs-once",
            Invariant::RtoWithinTarget => "rto-within-target",
            Invariant::ClusterHeals => "cluster-heals",
            Invariant::ExpectedFailover => "expected-failover",
            Invariant::ExpectedNoFailover => "expected-no-failover",
            Invariant::WriteStallBound => "write-stall-bound",
            Invariant::ExpectedLagOverBound => "expected-lag-over-bound",
            Invariant::ExpectedReplicaKeepsUp => "expected-replica-keeps-up",
        }
    }
}

impl std::fmt::Display for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One broken invariant: which, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

fn violation(invariant: Invariant, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// One replica of a volume as the cluster reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaObs {
    pub site: String,
    pub primary: bool,
    pub epoch: u64,
    /// Whether the replica holds every write (`up-to-date` in the cluster's words).
    pub up_to_date: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeObs {
    pub id: String,
    pub epoch: u64,
    pub replicas: Vec<ReplicaObs>,
}

/// Watches the volumes across samples, as each orchestrator node reports them: every
/// node's view must only move forward, and all nodes must agree on the primary of
/// each epoch (they apply one log).
#[derive(Debug, Default)]
pub struct Checker {
    /// Per (node, volume): its epoch at that node's last sample.
    last: BTreeMap<(String, String), u64>,
    /// Per (volume, epoch): the site that was primary at that epoch.
    primary_at: BTreeMap<(String, u64), String>,
    /// Volumes a replica of which was seen behind (not up to date) in some sample.
    pub behind_seen: BTreeSet<String>,
    pub violations: Vec<Violation>,
    pub samples: u64,
}

impl Checker {
    pub fn observe(&mut self, node: &str, volumes: &[VolumeObs]) {
        self.samples += 1;
        for v in volumes {
            if v.replicas.iter().any(|r| !r.up_to_date) {
                self.behind_seen.insert(v.id.clone());
            }
            let primaries: Vec<&ReplicaObs> = v.replicas.iter().filter(|r| r.primary).collect();
            if primaries.len() > 1 {
                self.push(violation(
                    Invariant::OnePrimaryPerEpoch,
                    format!(
                        "volume {} has {} primaries: {}",
                        v.id,
                        primaries.len(),
                        primaries
                            .iter()
                            .map(|r| format!("{}@{}", r.site, r.epoch))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            let primary = primaries.first().map(|r| r.site.clone());
            if let Some(p) = &primary {
                let key = (v.id.clone(), v.epoch);
                match self.primary_at.get(&key) {
                    Some(before) if before != p => {
                        let d = format!(
                            "volume {} epoch {}: primary at {before}, later at {p} with no epoch bump",
                            v.id, v.epoch
                        );
                        self.push(violation(Invariant::OnePrimaryPerEpoch, d));
                    }
                    Some(_) => {}
                    None => {
                        self.primary_at.insert(key, p.clone());
                    }
                }
            }
            let key = (node.to_string(), v.id.clone());
            if let Some(epoch) = self.last.get(&key)
                && v.epoch < *epoch
            {
                let d = format!(
                    "volume {} at {node}: epoch went back from {epoch} to {}",
                    v.id, v.epoch
                );
                self.push(violation(Invariant::EpochsOnlyGrow, d));
            }
            self.last.insert(key, v.epoch);
        }
    }

    /// Keep one violation of each kind and detail (a sampled fault repeats).
    fn push(&mut self, v: Violation) {
        if !self.violations.contains(&v) {
            self.violations.push(v);
        }
    }
}

/// One host's report of its VMs' states, as the audit log records it (its typed
/// `vm.state` event): per VM, whether it is active there (running or paused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmReport {
    /// The audit entry's sequence number.
    pub seq: u64,
    pub host: String,
    pub vms: Vec<(String, bool)>,
}

/// Which hosts last reported each VM running, from the audit log's VM reports in order.
/// A host whose agent was killed loses its VMs with it (the test driver's VMs live in
/// the agent): `resets` lists (audit sequence, host) for each kill — every entry after
/// that sequence comes after the kill.
pub fn running_ledger(
    reports: impl IntoIterator<Item = VmReport>,
    resets: &[(u64, String)],
) -> BTreeMap<String, BTreeSet<String>> {
    let mut running: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut resets: Vec<&(u64, String)> = resets.iter().collect();
    resets.sort();
    let mut next = 0;
    for r in reports {
        while next < resets.len() && resets[next].0 < r.seq {
            let host = &resets[next].1;
            for hosts in running.values_mut() {
                hosts.remove(host);
            }
            next += 1;
        }
        for (vm, active) in r.vms {
            let hosts = running.entry(vm).or_default();
            if active {
                hosts.insert(r.host.clone());
            } else {
                hosts.remove(&r.host);
            }
        }
    }
    running
}

/// What the runner saw at the end, after healing and settling.
#[derive(Debug, Clone, Default)]
pub struct EndState {
    /// Acknowledged writes of the workload and how many of them the promoted (or
    /// current) primary does not hold.
    pub writes_acknowledged: u64,
    pub writes_missing: u64,
    /// Whether the workload's volume replicates synchronously (RPO = 0 promised).
    pub sync: bool,
    /// The workload's volume, whether its primary moved to another site during the
    /// run (an async failover may lose up to its lag bound; a primary that never moved
    /// loses nothing, sync or async), and whether a replica of it was seen behind.
    pub workload_volume: String,
    pub workload_moved: bool,
    pub workload_fell_behind: bool,
    /// Longest a write waited, ms.
    pub max_write_stall_ms: u64,
    /// Per VM: the hosts that run it ([`running_ledger`]); every VM of the topology
    /// is a key.
    pub running: BTreeMap<String, BTreeSet<String>>,
    /// Per VM: its app's active site.
    pub vm_site: BTreeMap<String, String>,
    /// Per host: its site.
    pub host_site: BTreeMap<String, String>,
    /// Per app: site at the start and at the end.
    pub site_before: BTreeMap<String, String>,
    pub site_after: BTreeMap<String, String>,
    /// Operations the cluster started by itself during the run (actor `metrodr`) that
    /// move apps to another site, and per operation the apps that missed their RTO.
    pub automatic_ops: Vec<String>,
    pub rto_missed: Vec<String>,
    /// Operations still running at the end.
    pub ops_unfinished: Vec<String>,
    /// Convergence after the faults: what is not healed (empty: healed).
    pub not_healed: Vec<String>,
}

/// Every end-of-run invariant and expectation that does not hold.
pub fn check_end(end: &EndState, expect: &Expect) -> Vec<Violation> {
    let mut out = Vec::new();
    if (end.sync || !end.workload_moved) && end.writes_missing > 0 {
        out.push(violation(
            Invariant::NoAcknowledgedWriteLost,
            format!(
                "{} of {} acknowledged writes are missing on the primary after the run{}",
                end.writes_missing,
                end.writes_acknowledged,
                if end.sync {
                    ""
                } else {
                    " (async, but the primary never moved)"
                }
            ),
        ));
    }
    match expect.lag_over_bound {
        Some(true) if !end.workload_fell_behind => out.push(violation(
            Invariant::ExpectedLagOverBound,
            format!(
                "the scenario expects {}'s replica to fall behind (its primary to stop waiting for it), and every sample saw it up to date",
                end.workload_volume
            ),
        )),
        Some(false) if end.workload_fell_behind => out.push(violation(
            Invariant::ExpectedReplicaKeepsUp,
            format!(
                "the scenario expects {}'s replica to keep up, and a sample saw it behind",
                end.workload_volume
            ),
        )),
        _ => {}
    }
    for (vm, hosts) in &end.running {
        let site = end.vm_site.get(vm);
        match hosts.len() {
            0 => out.push(violation(
                Invariant::EveryVmRunsOnce,
                format!("{vm} runs nowhere at the end"),
            )),
            1 => {}
            n => out.push(violation(
                Invariant::EveryVmRunsOnce,
                format!(
                    "{vm} runs {n} times, on {}",
                    hosts.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
        for h in hosts {
            let at = end.host_site.get(h);
            if site.is_some() && at != site {
                out.push(violation(
                    Invariant::EveryVmRunsOnce,
                    format!(
                        "{vm} runs on {h} at {}, but its app is active at {}",
                        at.map_or("?", String::as_str),
                        site.map_or("?", String::as_str)
                    ),
                ));
            }
        }
    }
    if expect.rto {
        for m in &end.rto_missed {
            out.push(violation(Invariant::RtoWithinTarget, m.clone()));
        }
    }
    for o in &end.ops_unfinished {
        out.push(violation(
            Invariant::ClusterHeals,
            format!("operation still running at the end: {o}"),
        ));
    }
    for n in &end.not_healed {
        out.push(violation(Invariant::ClusterHeals, n.clone()));
    }
    let moved: Vec<String> = end
        .site_after
        .iter()
        .filter(|(app, site)| end.site_before.get(*app) != Some(site))
        .map(|(app, site)| {
            format!(
                "{app} {} -> {site}",
                end.site_before.get(app).map_or("?", String::as_str)
            )
        })
        .collect();
    match expect.failover {
        Some(true) if moved.is_empty() => out.push(violation(
            Invariant::ExpectedFailover,
            "the scenario expects a failover, and no app moved".into(),
        )),
        Some(false) if !moved.is_empty() || !end.automatic_ops.is_empty() => out.push(violation(
            Invariant::ExpectedNoFailover,
            format!(
                "the scenario expects nothing to move; moved: [{}]; started by the cluster: [{}]",
                moved.join(", "),
                end.automatic_ops.join("; ")
            ),
        )),
        _ => {}
    }
    if let Some(max) = expect.max_write_stall_ms
        && end.max_write_stall_ms > max
    {
        out.push(violation(
            Invariant::WriteStallBound,
            format!(
                "a write waited {} ms; the scenario allows {max} ms",
                end.max_write_stall_ms
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(epoch: u64, reps: &[(&str, bool, u64)]) -> VolumeObs {
        VolumeObs {
            id: "db-data".into(),
            epoch,
            replicas: reps
                .iter()
                .map(|(s, p, e)| ReplicaObs {
                    site: s.to_string(),
                    primary: *p,
                    epoch: *e,
                    up_to_date: true,
                })
                .collect(),
        }
    }

    #[test]
    fn a_clean_failover_breaks_nothing() {
        let mut c = Checker::default();
        c.observe("n1", &[vol(1, &[("north", true, 1), ("south", false, 1)])]);
        c.observe("n1", &[vol(2, &[("north", false, 2), ("south", true, 2)])]);
        c.observe("n1", &[vol(3, &[("north", true, 3), ("south", false, 3)])]);
        assert_eq!(c.violations, vec![]);
        assert_eq!(c.samples, 3);
        assert!(c.behind_seen.is_empty());
        let mut behind = vol(3, &[("north", true, 3), ("south", false, 3)]);
        behind.replicas[1].up_to_date = false;
        c.observe("n2", &[behind]);
        assert_eq!(c.behind_seen, BTreeSet::from(["db-data".to_string()]));
    }

    #[test]
    fn two_primaries_a_move_without_a_bump_and_a_falling_epoch_are_caught() {
        let mut c = Checker::default();
        c.observe("n1", &[vol(1, &[("north", true, 1), ("south", true, 1)])]);
        assert_eq!(c.violations.len(), 1);
        assert!(
            c.violations[0].detail.contains("2 primaries"),
            "{:?}",
            c.violations
        );
        // Seen twice: reported once.
        c.observe("n1", &[vol(1, &[("north", true, 1), ("south", true, 1)])]);
        assert_eq!(c.violations.len(), 1);

        let mut c = Checker::default();
        c.observe("n1", &[vol(1, &[("north", true, 1), ("south", false, 1)])]);
        c.observe("n1", &[vol(1, &[("north", false, 1), ("south", true, 1)])]);
        assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
        assert_eq!(c.violations[0].invariant.name(), "one-primary-per-epoch");
        assert!(c.violations[0].detail.contains("no epoch bump"));

        let mut c = Checker::default();
        c.observe("n1", &[vol(2, &[("south", true, 2)])]);
        // Another node lagging behind is not a regression...
        c.observe("n2", &[vol(1, &[("north", true, 1)])]);
        assert_eq!(c.violations, vec![]);
        // ... but disagreeing about an epoch's primary is, and so is going back.
        c.observe("n2", &[vol(2, &[("north", true, 2)])]);
        assert_eq!(c.violations[0].invariant.name(), "one-primary-per-epoch");
        c.observe("n1", &[vol(1, &[("north", true, 1)])]);
        assert_eq!(c.violations[1].invariant.name(), "epochs-only-grow");
    }

    #[test]
    fn the_ledger_follows_reports_in_order() {
        let report = |seq, host: &str, vms: &[(&str, bool)]| VmReport {
            seq,
            host: host.into(),
            vms: vms.iter().map(|(v, a)| (v.to_string(), *a)).collect(),
        };
        let reports = [
            report(1, "north-h1", &[("db-1", true), ("api-1", true)]),
            report(3, "south-h1", &[("db-1", true)]),
            // The old host confirms the VM is off there (it is placed elsewhere now).
            report(4, "north-h1", &[("db-1", false)]),
            report(5, "north-h1", &[("api-1", false)]),
        ];
        let l = running_ledger(reports.clone(), &[]);
        assert_eq!(l["db-1"], BTreeSet::from(["south-h1".to_string()]));
        assert!(l["api-1"].is_empty());
        // A killed agent's VMs died with it.
        let l = running_ledger(reports[..2].iter().cloned(), &[(1, "north-h1".into())]);
        assert_eq!(l["db-1"], BTreeSet::from(["south-h1".to_string()]));
        assert!(l["api-1"].is_empty());
        // Without the kill, north still runs both.
        let l = running_ledger(reports[..2].iter().cloned(), &[]);
        assert_eq!(l["api-1"], BTreeSet::from(["north-h1".to_string()]));
    }

    fn end() -> EndState {
        let mut e = EndState {
            writes_acknowledged: 100,
            sync: true,
            workload_volume: "db-data".into(),
            workload_moved: true,
            ..EndState::default()
        };
        e.running
            .insert("db-1".into(), BTreeSet::from(["south-h1".into()]));
        e.vm_site.insert("db-1".into(), "south".into());
        e.host_site.insert("south-h1".into(), "south".into());
        e.host_site.insert("north-h1".into(), "north".into());
        e.site_before.insert("db".into(), "north".into());
        e.site_after.insert("db".into(), "south".into());
        e
    }

    #[test]
    fn the_end_state_is_checked_against_every_rule() {
        let yes = Expect {
            failover: Some(true),
            max_write_stall_ms: Some(1000),
            rto: true,
            lag_over_bound: None,
        };
        assert_eq!(check_end(&end(), &yes), vec![]);

        let names = |e: &EndState, x: &Expect| -> Vec<&'static str> {
            check_end(e, x).iter().map(|v| v.invariant.name()).collect()
        };
        let mut e = end();
        e.writes_missing = 3;
        assert_eq!(names(&e, &yes), ["no-acknowledged-write-lost"]);
        e.sync = false;
        assert_eq!(
            names(&e, &yes),
            Vec::<&str>::new(),
            "async: bounded, not zero"
        );
        e.workload_moved = false;
        assert_eq!(
            names(&e, &yes),
            ["no-acknowledged-write-lost"],
            "async, but the primary stayed: nothing may be lost"
        );

        let lag = Expect {
            lag_over_bound: Some(true),
            ..yes.clone()
        };
        assert_eq!(names(&end(), &lag), ["expected-lag-over-bound"]);
        let mut e = end();
        e.workload_fell_behind = true;
        assert_eq!(names(&e, &lag), Vec::<&str>::new());
        let keep_up = Expect {
            lag_over_bound: Some(false),
            ..yes.clone()
        };
        assert_eq!(names(&e, &keep_up), ["expected-replica-keeps-up"]);

        let mut e = end();
        e.running.get_mut("db-1").unwrap().insert("north-h1".into());
        assert_eq!(
            names(&e, &yes),
            ["every-vm-runs-once", "every-vm-runs-once"]
        );
        e.running.get_mut("db-1").unwrap().clear();
        assert_eq!(names(&e, &yes), ["every-vm-runs-once"]);

        let mut e = end();
        e.rto_missed
            .push("op-2: db healthy after 31 s (target 15 s)".into());
        e.ops_unfinished.push("op-3".into());
        e.not_healed.push("host north-h1 is down".into());
        e.max_write_stall_ms = 1500;
        assert_eq!(
            names(&e, &yes),
            [
                "rto-within-target",
                "cluster-heals",
                "cluster-heals",
                "write-stall-bound"
            ]
        );

        let no = Expect {
            failover: Some(false),
            max_write_stall_ms: None,
            rto: true,
            lag_over_bound: None,
        };
        let mut e = end();
        e.rto_missed.push("op-2: db".into());
        let lenient = Expect {
            rto: false,
            ..yes.clone()
        };
        assert_eq!(names(&e, &lenient), Vec::<&str>::new());
        assert_eq!(names(&end(), &no), ["expected-no-failover"]);
        let mut e = end();
        e.site_after.insert("db".into(), "north".into());
        e.vm_site.insert("db-1".into(), "north".into());
        e.running
            .insert("db-1".into(), BTreeSet::from(["north-h1".into()]));
        assert_eq!(names(&e, &no), Vec::<&str>::new());
        assert_eq!(names(&e, &yes), ["expected-failover"]);
        e.automatic_ops.push("op-1 host north-h1 fenced".into());
        assert_eq!(names(&e, &no), ["expected-no-failover"]);
    }

    #[test]
    fn invariant_names_are_stable_and_what_serde_writes() {
        // The names key the runner's JSON and the soak summary: renaming one breaks
        // every summary written before.
        let names: Vec<&str> = Invariant::ALL.iter().map(|i| i.name()).collect();
        assert_eq!(
            names,
            [
                "one-primary-per-epoch",
                "epochs-only-grow",
                "no-acknowledged-write-lost",
                "every-vm-runs-once",
                "rto-within-target",
                "cluster-heals",
                "expected-failover",
                "expected-no-failover",
                "write-stall-bound",
                "expected-lag-over-bound",
                "expected-replica-keeps-up",
            ]
        );
        for i in Invariant::ALL {
            assert_eq!(serde_json::to_value(i).unwrap(), i.name());
            assert_eq!(i.to_string(), i.name());
            let back: Invariant = serde_json::from_value(i.name().into()).unwrap();
            assert_eq!(back, i);
        }
    }
}
