//! The report of an operation (DESIGN §7), built from what the cluster committed: the
//! operation's saga log, its plan and the audit-log slice it spans (pure).
//!
//! Every node builds the same report from the same committed state, and Ed25519
//! signatures are deterministic, so any node holding the cluster key signs the same
//! bytes. Rendering and signing live in the `drills` crate.

use drills::{AppResult, AuditSlice, Check, ReplicationSample, Report, StepTiming};
use topology::AppId;

use crate::planner::{DrillKind, Plan};
use crate::state::{AuditEvent, ClusterState, OpKind, OpStatus, Operation, Step, StepResult};

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
/// covers it and everything before it.
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

fn timing(s: &Step) -> StepTiming {
    StepTiming {
        name: s.name.clone(),
        started_ms: s.started_ms,
        ended_ms: s.ended_ms,
        ok: s.result.as_ref().map(|r| *r == StepResult::Ok),
        detail: match &s.result {
            Some(StepResult::Failed(e)) => e.clone(),
            _ => s.detail.clone(),
        },
    }
}

fn failed(s: &Step) -> Option<String> {
    match &s.result {
        Some(StepResult::Failed(e)) => Some(format!("{}: {e}", s.name)),
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
        let steps: Vec<&Step> = o
            .steps
            .iter()
            .filter(|s| s.app.as_ref() == Some(&m.app))
            .collect();
        let healthy = steps
            .iter()
            .find(|s| s.name == "health gate" && s.result == Some(StepResult::Ok))
            .and_then(|s| s.ended_ms);
        let rto = healthy.map(|h| h.saturating_sub(origin) as f64 / 1000.0);
        let target = f64::from(m.rto_target_s);
        let failure = steps.iter().find_map(|s| failed(s));
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
            steps
                .iter()
                .find(|s| s.name.starts_with("snapshot"))
                .map(|s| format!("snapshot of the replicas at {}: {}", m.to, s.detail))
                .unwrap_or_else(|| "no volumes (nothing to snapshot)".into())
        } else {
            steps
                .iter()
                .find(|s| s.name.starts_with("promote"))
                .map(|s| s.detail.clone())
                .unwrap_or_default()
        };
        if drill {
            let bound = lag_bound(state, &m.app);
            for (phase, step) in [
                ("before", "baseline"),
                ("during", "production check"),
                ("after", "production after"),
            ] {
                let s = steps.iter().find(|s| s.name == step);
                replication.push(sample(&m.app, phase, s.copied(), &bound));
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
            steps: steps.iter().map(|s| timing(s)).collect(),
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
    let op_steps: Vec<&Step> = o.steps.iter().filter(|s| s.app.is_none()).collect();
    let mut checks = Vec::new();
    if drill {
        let all = |name: &str| -> Vec<&Step> {
            o.steps
                .iter()
                .filter(|s| s.app.is_some() && s.name == name)
                .collect()
        };
        let untouched = all("production check")
            .into_iter()
            .chain(all("production after"))
            .collect::<Vec<_>>();
        checks.push(check_of(
            "production untouched (same hosts, same states, replicas up to date, during and after)",
            &untouched,
        ));
        let started = all("start drill VMs");
        let isolated = !started.is_empty()
            && started
                .iter()
                .all(|s| s.result == Some(StepResult::Ok) && s.detail.contains("isolated"));
        checks.push(Check {
            name: "drill VMs on an isolated network".into(),
            passed: isolated,
            detail: started
                .iter()
                .map(|s| s.detail.clone())
                .collect::<Vec<_>>()
                .join(" | "),
        });
        let cleanup: Vec<&Step> = op_steps
            .iter()
            .copied()
            .filter(|s| s.name.starts_with("cleanup"))
            .collect();
        checks.push(check_of(
            "drill removed from every host (VMs, snapshots, network)",
            &cleanup,
        ));
    }
    if o.status != OpStatus::Running {
        let met = apps.iter().filter(|a| a.passed).count();
        checks.push(Check {
            name: "every app healthy within its RTO target".into(),
            passed: met == apps.len() && !apps.is_empty(),
            detail: format!("{met} of {} app(s)", apps.len()),
        });
    }
    let target_site = plan
        .and_then(|p| p.apps().next())
        .map(|m| m.to.to_string())
        .unwrap_or_default();
    Report {
        format_version: 1,
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

fn check_of(name: &str, steps: &[&Step]) -> Check {
    let bad: Vec<String> = steps.iter().filter_map(|s| failed(s)).collect();
    let unfinished = steps.iter().filter(|s| s.result.is_none()).count();
    Check {
        name: name.into(),
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
                .map(|s| s.detail.clone())
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
    let (ok, text) = match &s.result {
        Some(StepResult::Ok) => (true, s.detail.clone()),
        Some(StepResult::Failed(e)) => (false, e.clone()),
        None => (false, "unfinished".to_string()),
    };
    let in_sync = text.starts_with("replication in-sync");
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
    use crate::state::{Command, Outcome};
    use crate::test_support::{apply, lab};

    /// A test drill of db whose steps end with `last` (Ok or the failure).
    fn drill(last: StepResult) -> (ClusterState, Operation) {
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
                plan: Box::new(plan),
                lost_ms: None,
            },
        ) else {
            panic!()
        };
        let db = Some(AppId::new("db"));
        let steps: Vec<(Option<AppId>, &str, u64, StepResult, &str)> = vec![
            (
                db.clone(),
                "baseline",
                1000,
                StepResult::Ok,
                "replication in-sync (within bound): 2 replica(s) up to date; production at north: db-1@north-h1 Running",
            ),
            (
                db.clone(),
                "snapshot at south-h1",
                1010,
                StepResult::Ok,
                "south-h1: snapshot of db at sequence 812 (1 volume(s))",
            ),
            (
                db.clone(),
                "start drill VMs",
                1200,
                StepResult::Ok,
                "south-h1: drill-1-db-1 running (isolated network mdr-drill-1 (no forward, no host address))",
            ),
            (
                db.clone(),
                "health gate",
                1400,
                StepResult::Ok,
                "1 drill VM(s) running at south",
            ),
            (
                db.clone(),
                "production check",
                4200,
                last.clone(),
                "replication in-sync (within bound): 2 replica(s) up to date; unchanged",
            ),
            (
                None,
                "cleanup",
                4300,
                StepResult::Ok,
                "south-h1: drill-1-db-1 removed; network mdr-drill-1 gone",
            ),
            (
                db.clone(),
                "production after",
                4500,
                StepResult::Ok,
                "replication in-sync (within bound): unchanged",
            ),
        ];
        for (app, name, at, result, detail) in steps {
            let Outcome::Step(index) = apply(
                &mut s,
                at,
                Command::StartStep {
                    op,
                    name: name.into(),
                    app,
                },
            ) else {
                panic!()
            };
            apply(
                &mut s,
                at + 100,
                Command::FinishStep {
                    op,
                    index,
                    result,
                    detail: detail.into(),
                },
            );
        }
        let status = if last == StepResult::Ok {
            OpStatus::Succeeded
        } else {
            OpStatus::Failed
        };
        apply(&mut s, 5000, Command::FinishOperation { op, status });
        let o = s.operation_view(op.0).unwrap();
        (s, o)
    }

    #[test]
    fn a_clean_drill_reports_every_app_check_and_the_audit_slice() {
        let (s, o) = drill(StepResult::Ok);
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
        assert!(db.rpo.contains("sequence 812"), "{}", db.rpo);
        assert_eq!(db.steps.len(), 6);
        let phases: Vec<(&str, bool)> = r
            .replication
            .iter()
            .map(|x| (x.phase.as_str(), x.within_bound))
            .collect();
        assert_eq!(
            phases,
            [("before", true), ("during", true), ("after", true)]
        );
        assert!(r.checks.iter().all(|c| c.passed), "{:?}", r.checks);
        assert_eq!(r.checks.len(), 4);
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
        let (s, o) = drill(StepResult::Failed(
            "production changed: db-1 moved from north-h1 to north-h2".into(),
        ));
        let r = build(&s, &o);
        assert_eq!(r.status, "failed");
        let db = &r.apps[0];
        assert!(!db.passed);
        assert!(db.reason.contains("db-1 moved"), "{}", db.reason);
        let during = r.replication.iter().find(|x| x.phase == "during").unwrap();
        assert!(!during.within_bound);
        let untouched = &r.checks[0];
        assert!(!untouched.passed && untouched.detail.contains("db-1 moved"));
        assert!(!r.passed());
    }
}
