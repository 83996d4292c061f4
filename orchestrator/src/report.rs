//! The report of an operation (DESIGN §7), built from what the cluster committed: the
//! operation's saga log, its plan and the audit-log slice it spans (pure).
//!
//! Every claim and check comes from typed records: the steps' kinds and outcomes (the
//! snapshot's sequence number, the isolation the agents verified, production as each
//! drill check saw it, the epochs promoted), and the audit entries the operation
//! recorded as its start and finish (typed audit events). Every node builds the same
//! report from the same committed state, and Ed25519 signatures are deterministic, so
//! any node holding the cluster key signs the same bytes. Rendering and signing live in
//! the `drills` crate.
//!
//! Never: search a step's name or a message's text for a claim.

use drills::{AppResult, AuditSlice, Check, CheckKind, ReplicationSample, Report, StepTiming};
use topology::AppId;

use crate::planner::{DrillKind, Plan, PlannedStep};
use crate::state::{
    AgentDid, AuditEvent, ClusterState, OpKind, OpStatus, Operation, Production, Step, StepKind,
    StepOutcome, StepResult,
};

/// The report's name for the kind of `o`.
pub fn kind(o: &Operation) -> &'static str {
    match (o.kind, o.plan.as_deref().and_then(|p| p.drill)) {
        (_, Some(DrillKind::Test)) | (OpKind::Drill, None) => "test-drill",
        (_, Some(DrillKind::Switchover)) => "switchover-drill",
        (_, Some(DrillKind::SiteLoss)) => "site-loss-drill",
        (OpKind::Failover, None) => "failover",
        (OpKind::Switchover, None) => "switchover",
        (OpKind::Failback, None) => "failback",
    }
}

pub fn status(s: OpStatus) -> &'static str {
    match s {
        OpStatus::Running => "running",
        OpStatus::Succeeded => "succeeded",
        OpStatus::Failed => "failed",
        OpStatus::Aborted => "aborted",
        OpStatus::Interrupted => "interrupted",
    }
}

/// The audit entries from the operation's start to its end (or to the newest entry
/// while it runs); the digest is the chain's digest at the slice's last entry, which
/// covers it and everything before it. The slice is found by the typed events that
/// started and finished the operation (`OpStarted`, `OpFinished`).
pub fn audit_slice(state: &ClusterState, o: &Operation) -> AuditSlice {
    let from = state
        .audit
        .values()
        .find(|e| matches!(e.event, AuditEvent::OpStarted { op, .. } if op == o.id))
        .map(|e| e.seq);
    let to = state
        .audit
        .values()
        .rev()
        .find(|e| matches!(e.event, AuditEvent::OpFinished { op, .. } if op == o.id))
        .map(|e| e.seq)
        .or_else(|| state.audit.last().map(|(k, _)| *k));
    match (from, to) {
        (Some(from), Some(to)) if to >= from => AuditSlice {
            from_seq: from,
            to_seq: to,
            entries: to - from + 1,
            digest: state
                .audit
                .get(&to)
                .map(|e| e.digest.clone())
                .unwrap_or_default(),
        },
        _ => AuditSlice {
            from_seq: 0,
            to_seq: 0,
            entries: 0,
            digest: String::new(),
        },
    }
}

fn timing(o: &Operation, s: &Step) -> StepTiming {
    StepTiming {
        name: o.step_name(s),
        kind: Some(s.kind),
        started_ms: s.started_ms,
        ended_ms: s.ended_ms,
        ok: s.result.as_ref().map(StepResult::is_done),
        detail: s
            .result
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

fn failed(o: &Operation, s: &Step) -> Option<String> {
    s.failure().map(|f| format!("{}: {f}", o.step_name(s)))
}

/// Production as a drill's check step saw it, passed or failed.
fn production(s: &Step) -> Option<&Production> {
    match &s.result {
        Some(StepResult::Done {
            outcome:
                StepOutcome::Baseline { production } | StepOutcome::ProductionUnchanged { production },
        }) => Some(production),
        Some(StepResult::Failed { failure }) => failure.reason.production(),
        _ => None,
    }
}

/// The report of operation `o` in `state`.
pub fn build(state: &ClusterState, o: &Operation) -> Report {
    let cluster = state
        .topology()
        .map(|t| t.model.cluster.name.clone())
        .unwrap_or_default();
    let plan: Option<&Plan> = o.plan.as_deref();
    let origin = o.lost_ms.unwrap_or(o.started_ms);
    let drill = o.kind == OpKind::Drill;
    let mut apps = Vec::new();
    let mut replication = Vec::new();
    for m in plan
        .map(|p| p.apps().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let steps: Vec<&Step> = o.steps.iter().filter(|s| s.app() == Some(&m.app)).collect();
        let healthy = steps
            .iter()
            .find(|s| s.kind == StepKind::HealthGate && s.outcome().is_some())
            .and_then(|s| s.ended_ms);
        let rto = healthy.map(|h| h.saturating_sub(origin) as f64 / 1000.0);
        let target = f64::from(m.rto_target_s);
        let failure = steps.iter().find_map(|s| failed(o, s));
        let reason = match (&failure, rto) {
            (Some(f), _) => f.clone(),
            (None, None) if o.status == OpStatus::Running => "in progress".into(),
            (None, None) => "never passed its health gate".into(),
            (None, Some(r)) if r > target => {
                format!("healthy after {r:.2} s, over its RTO target of {target} s")
            }
            _ => String::new(),
        };
        let rpo = if drill {
            let snapshot = steps.iter().find_map(|s| match s.outcome() {
                Some(taken @ StepOutcome::Snapshot { .. }) => Some(taken),
                _ => None,
            });
            let planned_snapshot = m
                .steps
                .iter()
                .any(|s| matches!(s, PlannedStep::Snapshot { .. }));
            match (snapshot, planned_snapshot) {
                (Some(taken), _) => format!("snapshot of the replicas at {}: {taken}", m.to),
                (None, true) => format!("no snapshot of the replicas at {} was taken", m.to),
                (None, false) => "no volumes (nothing to snapshot)".into(),
            }
        } else {
            steps
                .iter()
                .find_map(|s| match s.outcome() {
                    Some(moved @ StepOutcome::Moved(_)) => Some(moved.to_string()),
                    _ => None,
                })
                .unwrap_or_default()
        };
        if drill {
            let bound = lag_bound(state, &m.app);
            for (phase, kind) in [
                ("before", StepKind::Baseline),
                ("during", StepKind::ProductionCheck),
                ("after", StepKind::ProductionAfter),
            ] {
                let s = steps.iter().copied().find(|s| s.kind == kind);
                replication.push(sample(&m.app, phase, s, &bound));
            }
        }
        apps.push(AppResult {
            app: m.app.to_string(),
            tier: m.tier,
            site_before: m.from.to_string(),
            site_after: m.to.to_string(),
            rto_target_s: target,
            rto_achieved_s: rto,
            rpo,
            passed: reason.is_empty(),
            reason,
            steps: steps.iter().map(|s| timing(o, s)).collect(),
        });
    }
    if let Some(p) = plan {
        for s in &p.skipped {
            apps.push(AppResult {
                app: s.app.to_string(),
                tier: 0,
                site_before: String::new(),
                site_after: String::new(),
                rto_target_s: 0.0,
                rto_achieved_s: None,
                rpo: String::new(),
                passed: false,
                reason: format!("not part of the operation: {}", s.reason),
                steps: Vec::new(),
            });
        }
    }
    let mut checks = Vec::new();
    if drill {
        let of = |kinds: &[StepKind]| -> Vec<&Step> {
            o.steps.iter().filter(|s| kinds.contains(&s.kind)).collect()
        };
        checks.push(check_of(
            o,
            CheckKind::ProductionUntouched,
            "production untouched (same hosts, same states, replicas up to date, during and after)",
            &of(&[StepKind::ProductionCheck, StepKind::ProductionAfter]),
        ));
        let started = of(&[StepKind::StartDrillVms]);
        let isolated = !started.is_empty()
            && started.iter().all(|s| {
                matches!(s.outcome(), Some(StepOutcome::DrillVmsStarted { copies })
                    if !copies.is_empty() && copies.iter().all(AgentDid::on_isolated_network))
            });
        checks.push(Check {
            name: "drill VMs on an isolated network".into(),
            kind: Some(CheckKind::DrillIsolated),
            passed: isolated,
            detail: started
                .iter()
                .map(|s| {
                    s.result
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join(" | "),
        });
        checks.push(check_of(
            o,
            CheckKind::DrillRemoved,
            "drill removed from every host (VMs, snapshots, network)",
            &of(&[StepKind::Cleanup]),
        ));
    }
    if o.status != OpStatus::Running {
        let met = apps.iter().filter(|a| a.passed).count();
        checks.push(Check {
            name: "every app healthy within its RTO target".into(),
            kind: Some(CheckKind::RtoMet),
            passed: met == apps.len() && !apps.is_empty(),
            detail: format!("{met} of {} app(s)", apps.len()),
        });
    }
    let target_site = plan
        .and_then(|p| p.apps().next())
        .map(|m| m.to.to_string())
        .unwrap_or_default();
    Report {
        format_version: drills::FORMAT_VERSION,
        id: o.id.to_string(),
        cluster,
        metrodr_version: env!("CARGO_PKG_VERSION").to_string(),
        kind: kind(o).into(),
        status: status(o.status).into(),
        started_by: o.started_by.clone(),
        started_ms: o.started_ms,
        ended_ms: o.ended_ms,
        note: o.note.clone(),
        target_site,
        apps,
        replication,
        checks,
        audit: audit_slice(state, o),
    }
}

fn check_of(o: &Operation, kind: CheckKind, name: &str, steps: &[&Step]) -> Check {
    let bad: Vec<String> = steps.iter().filter_map(|s| failed(o, s)).collect();
    let unfinished = steps.iter().filter(|s| s.result.is_none()).count();
    Check {
        name: name.into(),
        kind: Some(kind),
        passed: !steps.is_empty() && bad.is_empty() && unfinished == 0,
        detail: if steps.is_empty() {
            "not reached".into()
        } else if !bad.is_empty() {
            bad.join("; ")
        } else if unfinished > 0 {
            format!("{unfinished} step(s) unfinished")
        } else {
            steps
                .iter()
                .filter_map(|s| s.outcome().map(ToString::to_string))
                .collect::<Vec<_>>()
                .join(" | ")
        },
    }
}

/// What "within bound" means for the app's group: sync volumes lag nothing that was
/// acknowledged; async ones at most their configured lag.
fn lag_bound(state: &ClusterState, app: &AppId) -> String {
    let Some(model) = state.topology().and_then(|t| t.model.app(app).cloned()) else {
        return "within bound".into();
    };
    let mut parts = Vec::new();
    for v in &model.volumes {
        parts.push(match &v.replication {
            topology::Replication::Sync => format!("{}: 0 (sync)", v.id),
            topology::Replication::Async {
                lag_max_s,
                lag_max_size,
            } => format!("{}: at most {lag_max_s} s / {lag_max_size} (async)", v.id),
        });
    }
    if parts.is_empty() {
        "no volumes".into()
    } else {
        parts.join(", ")
    }
}

/// The replication link of `app` at `phase`, from the production the step sampled.
fn sample(app: &AppId, phase: &str, s: Option<&Step>, bound: &str) -> ReplicationSample {
    let Some(s) = s else {
        return ReplicationSample {
            app: app.to_string(),
            phase: phase.into(),
            link: "unknown".into(),
            lag: "not measured (the step did not run)".into(),
            within_bound: false,
            detail: String::new(),
        };
    };
    let text = s
        .result
        .as_ref()
        .map_or_else(|| "unfinished".to_string(), ToString::to_string);
    let in_sync = production(s).is_some_and(Production::in_sync);
    let ok = s.result.as_ref().is_some_and(StepResult::is_done);
    ReplicationSample {
        app: app.to_string(),
        phase: phase.into(),
        link: if in_sync { "in-sync" } else { "not in sync" }.into(),
        lag: if in_sync {
            bound.to_string()
        } else {
            "over its bound, or unknown".into()
        },
        within_bound: ok && in_sync,
        detail: text,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::planner::{self, Trigger};
    use crate::state::{
        AgentDid, Command, CommandOutcome, FailureReason, Outcome, ProductionChange, StepAt,
        StepFailure, VmState,
    };
    use crate::test_support::{apply, lab};
    use ids::GroupSeq;
    use topology::{HostId, SiteId, VmId};

    /// How the drill's production check ends.
    enum Check {
        Unchanged,
        Moved,
        NotIsolated,
    }

    /// A test drill of db whose production check ends as `last` says.
    fn drill(last: Check) -> (ClusterState, Operation) {
        let mut s = lab();
        let plan = planner::plan(
            &s,
            &Trigger::TestDrill {
                apps: vec![AppId::new("db")],
                to: None,
            },
        )
        .unwrap();
        assert_eq!(plan.apps().count(), 1, "{plan:?}");
        let Outcome::Operation(op) = apply(
            &mut s,
            1000,
            Command::BeginPlan {
                plan: Box::new(plan.clone()),
                lost_ms: None,
            },
        ) else {
            panic!()
        };
        let db = AppId::new("db");
        let south = SiteId::new("south");
        let snap_host = match plan.step(&StepAt::App {
            app: db.clone(),
            index: 1,
        }) {
            Some(PlannedStep::Snapshot { host }) => host.clone(),
            other => panic!("db's second step is its snapshot: {other:?}"),
        };
        let production = s.production(&db).unwrap();
        let done = |outcome| StepResult::Done { outcome };
        let unchanged = done(StepOutcome::ProductionUnchanged {
            production: production.clone(),
        });
        let check = match last {
            Check::Unchanged | Check::NotIsolated => unchanged.clone(),
            Check::Moved => StepResult::Failed {
                failure: StepFailure::new(
                    FailureReason::ProductionChanged {
                        changes: vec![ProductionChange::Moved {
                            vm: VmId::new("db-1"),
                            from: HostId::new("north-h1"),
                            to: HostId::new("north-h2"),
                        }],
                        production: production.clone(),
                    },
                    "production changed: db-1 moved from north-h1 to north-h2",
                ),
            },
        };
        let app = |index| StepAt::App {
            app: db.clone(),
            index,
        };
        let steps: Vec<(StepAt, u64, StepResult)> = vec![
            (
                app(0),
                1000,
                done(StepOutcome::Baseline {
                    production: production.clone(),
                }),
            ),
            (
                app(1),
                1010,
                done(StepOutcome::Snapshot {
                    host: snap_host.clone(),
                    app: db.clone(),
                    seq: GroupSeq(812),
                    volumes: 1,
                    already: false,
                }),
            ),
            (
                app(2),
                1200,
                done(StepOutcome::DrillVmsStarted {
                    copies: vec![AgentDid {
                        host: snap_host.clone(),
                        outcome: CommandOutcome::DrillStarted {
                            domain: format!("drill-{}-db-1", op.0),
                            state: VmState::Running,
                            domain_type: "qemu".into(),
                            disks: 1,
                            network: Some(format!("mdr-drill-{}", op.0)),
                            isolated: !matches!(last, Check::NotIsolated),
                        },
                    }],
                }),
            ),
            (
                app(3),
                1400,
                done(StepOutcome::DrillHealthy {
                    copies: 1,
                    site: south.clone(),
                    probes: Vec::new(),
                    unchecked: Vec::new(),
                }),
            ),
            (app(4), 4200, check),
            (
                StepAt::Closing { index: 0 },
                4300,
                done(StepOutcome::Cleaned {
                    hosts: vec![AgentDid {
                        host: snap_host.clone(),
                        outcome: CommandOutcome::DrillCleaned {
                            removed: vec![format!("drill-{}-db-1 removed", op.0)],
                        },
                    }],
                }),
            ),
            (StepAt::Closing { index: 1 }, 4500, unchanged),
        ];
        let ok = steps.iter().all(|(_, _, r)| r.is_done());
        for (at, t, result) in steps {
            let Outcome::Step(index) = apply(&mut s, t, Command::StartStep { op, at }) else {
                panic!()
            };
            apply(&mut s, t + 100, Command::FinishStep { op, index, result });
        }
        let status = if ok {
            OpStatus::Succeeded
        } else {
            OpStatus::Failed
        };
        apply(&mut s, 5000, Command::FinishOperation { op, status });
        let o = s.operation_view(op.0).unwrap();
        (s, o)
    }

    fn snapshot_host(o: &Operation) -> HostId {
        let at = StepAt::App {
            app: AppId::new("db"),
            index: 1,
        };
        match o.plan.as_ref().and_then(|p| p.step(&at)) {
            Some(PlannedStep::Snapshot { host }) => host.clone(),
            other => panic!("db's second step is its snapshot: {other:?}"),
        }
    }

    #[test]
    fn a_clean_drill_reports_every_app_check_and_the_audit_slice() {
        let (s, o) = drill(Check::Unchanged);
        let r = build(&s, &o);
        assert_eq!(
            (r.kind.as_str(), r.status.as_str()),
            ("test-drill", "succeeded")
        );
        assert_eq!(r.cluster, "lab");
        assert_eq!(r.target_site, "south");
        let db = &r.apps[0];
        assert_eq!(
            (db.site_before.as_str(), db.site_after.as_str()),
            ("north", "south")
        );
        // Healthy at 1500 (health gate end), the drill began at 1000.
        assert_eq!(db.rto_achieved_s, Some(0.5));
        assert!(db.passed, "{db:?}");
        assert!(db.rpo.contains("at sequence 812"), "{}", db.rpo);
        let names: Vec<&str> = db.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names[..],
            [
                "baseline",
                &*format!("snapshot at {}", snapshot_host(&o)),
                "start drill VMs",
                "health gate",
                "production check",
                "production after"
            ]
        );
        let phases: Vec<(&str, &str, bool)> = r
            .replication
            .iter()
            .map(|x| (x.phase.as_str(), x.link.as_str(), x.within_bound))
            .collect();
        assert_eq!(
            phases,
            [
                ("before", "in-sync", true),
                ("during", "in-sync", true),
                ("after", "in-sync", true)
            ]
        );
        assert!(r.checks.iter().all(|c| c.passed), "{:?}", r.checks);
        let checks: Vec<Option<CheckKind>> = r.checks.iter().map(|c| c.kind).collect();
        assert_eq!(
            checks,
            [
                Some(CheckKind::ProductionUntouched),
                Some(CheckKind::DrillIsolated),
                Some(CheckKind::DrillRemoved),
                Some(CheckKind::RtoMet)
            ]
        );
        let kinds: Vec<Option<StepKind>> = db.steps.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                StepKind::Baseline,
                StepKind::Snapshot,
                StepKind::StartDrillVms,
                StepKind::HealthGate,
                StepKind::ProductionCheck,
                StepKind::ProductionAfter
            ]
            .map(Some)
        );
        assert_eq!(r.format_version, drills::FORMAT_VERSION);
        assert!(r.passed());
        // The slice runs from the op.start entry to the op.finish entry; its digest is
        // the chain's at the end.
        let start = s.audit.values().find(|e| e.action == "op.start").unwrap();
        let end = s.audit.values().find(|e| e.action == "op.finish").unwrap();
        assert_eq!((r.audit.from_seq, r.audit.to_seq), (start.seq, end.seq));
        assert_eq!(r.audit.entries, end.seq - start.seq + 1);
        assert_eq!(r.audit.digest, end.digest);
    }

    #[test]
    fn a_changed_production_fails_its_check_and_the_app() {
        let (s, o) = drill(Check::Moved);
        let r = build(&s, &o);
        assert_eq!(r.status, "failed");
        let db = &r.apps[0];
        assert!(!db.passed);
        assert!(db.reason.contains("db-1 moved"), "{}", db.reason);
        let during = r.replication.iter().find(|x| x.phase == "during").unwrap();
        // Replication itself was in sync; the check failed for the VM that moved.
        assert_eq!(
            (during.link.as_str(), during.within_bound),
            ("in-sync", false)
        );
        let untouched = &r.checks[0];
        assert_eq!(untouched.kind, Some(CheckKind::ProductionUntouched));
        assert!(!untouched.passed && untouched.detail.contains("db-1 moved"));
        assert!(!r.passed());
    }

    #[test]
    fn a_copy_its_agent_did_not_verify_isolated_fails_the_isolation_check() {
        // Its rendering says "NOT verified isolated": the check decides on the flag.
        let (s, o) = drill(Check::NotIsolated);
        let r = build(&s, &o);
        let isolated = &r.checks[1];
        assert_eq!(isolated.kind, Some(CheckKind::DrillIsolated));
        assert!(!isolated.passed, "{isolated:?}");
        assert!(
            isolated.detail.contains("NOT verified isolated"),
            "{isolated:?}"
        );
        assert!(!r.passed());
    }
}
