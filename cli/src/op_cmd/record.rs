//! An operation for people: its plan before it runs, and its record after (per app:
//! from, to, achieved RTO against the target, each step with its typed outcome or
//! failure), as a table or JSON. Reads typed values only.
//!
//! Never: decide anything from the text it prints.

use orchestrator::planner::Plan;
use orchestrator::state::{Operation, Step, StepKind, StepOutcome, StepResult};
use serde::Serialize;

use crate::output::table;

pub(super) fn result_text(s: &Step) -> String {
    match &s.result {
        None => "running".into(),
        Some(StepResult::Done { outcome }) => format!("ok: {outcome}"),
        Some(StepResult::Failed { failure }) => format!("FAILED: {failure}"),
    }
}

pub(super) fn print_plan(p: &Plan) {
    outln!(
        "{}: {} app(s) in {} wave(s)",
        p.trigger.describe(),
        p.apps().count(),
        p.waves.len()
    );
    let mut t = table(&[
        "wave", "app", "tier", "from", "to", "promote", "start on", "approval",
    ]);
    for (i, w) in p.waves.iter().enumerate() {
        for m in &w.apps {
            t.add_row(vec![
                (i + 1).to_string(),
                m.app.to_string(),
                m.tier.to_string(),
                m.from.to_string(),
                m.to.to_string(),
                m.volumes.len().to_string(),
                m.starts
                    .iter()
                    .map(|(v, h)| format!("{v}@{h}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                if m.needs_approval { "needed" } else { "" }.into(),
            ]);
        }
    }
    outln!("{t}");
    for s in &p.skipped {
        outln!("skipped {}: {}", s.app, s.reason);
    }
}

/// One app's line in a failover record.
#[derive(Debug, Serialize)]
pub struct AppRecordLine {
    pub app: String,
    pub from: String,
    pub to: String,
    pub result: String,
    /// When the app passed its health gate (ms since the epoch).
    pub healthy_ms: Option<u64>,
    /// From the loss (or the start of a planned operation) to the health gate.
    pub rto_s: Option<f64>,
    pub rto_target_s: u32,
    pub rto_met: Option<bool>,
    /// The promotion step's evidence (epochs before and after).
    pub promotion: String,
}

#[derive(Debug, Serialize)]
pub struct StepLine {
    pub app: Option<String>,
    /// For people (`serve volumes at south-h2`); `kind` is what to decide on.
    pub name: String,
    pub kind: StepKind,
    pub start_s: f64,
    pub end_s: Option<f64>,
    /// For people: `ok: …`, `FAILED: …` or `running`.
    pub result: String,
    /// The typed outcome (with its evidence) or failure (with its reason).
    pub outcome: Option<StepResult>,
}

/// The failover record of an operation.
#[derive(Debug, Serialize)]
pub struct OpRecord {
    pub op: u64,
    pub kind: String,
    pub status: String,
    pub note: String,
    pub started_by: String,
    pub started_ms: u64,
    pub lost_ms: Option<u64>,
    pub duration_s: Option<f64>,
    pub apps: Vec<AppRecordLine>,
    pub skipped: Vec<(String, String)>,
    pub steps: Vec<StepLine>,
}

pub fn record(o: &Operation) -> OpRecord {
    let origin = o.lost_ms.unwrap_or(o.started_ms);
    let secs = |ms: u64| ms.saturating_sub(origin) as f64 / 1000.0;
    let plan = o.plan.as_deref();
    let apps = plan
        .map(|p| {
            p.apps()
                .map(|m| {
                    let steps: Vec<_> =
                        o.steps.iter().filter(|s| s.app() == Some(&m.app)).collect();
                    let failed = steps.iter().find_map(|s| {
                        s.failure()
                            .map(|e| format!("failed at {}: {e}", o.step_name(s)))
                    });
                    let healthy = steps
                        .iter()
                        .find(|s| s.kind == StepKind::HealthGate && s.outcome().is_some())
                        .and_then(|s| s.ended_ms);
                    let result = failed.unwrap_or_else(|| match healthy {
                        Some(_) => "healthy".into(),
                        None => "in progress".into(),
                    });
                    let rto_s = healthy.map(secs);
                    AppRecordLine {
                        app: m.app.to_string(),
                        from: m.from.to_string(),
                        to: m.to.to_string(),
                        result,
                        healthy_ms: healthy,
                        rto_s,
                        rto_target_s: m.rto_target_s,
                        rto_met: rto_s.map(|r| r <= f64::from(m.rto_target_s)),
                        promotion: steps
                            .iter()
                            .find_map(|s| match s.outcome() {
                                Some(moved @ StepOutcome::Moved(_)) => Some(moved.to_string()),
                                _ => None,
                            })
                            .unwrap_or_default(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    OpRecord {
        op: o.id.0,
        kind: format!("{:?}", o.kind).to_lowercase(),
        status: format!("{:?}", o.status).to_lowercase(),
        note: o.note.clone(),
        started_by: o.started_by.clone(),
        started_ms: o.started_ms,
        lost_ms: o.lost_ms,
        duration_s: o.ended_ms.map(secs),
        apps,
        skipped: plan
            .map(|p| {
                p.skipped
                    .iter()
                    .map(|s| (s.app.to_string(), s.reason.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        steps: o
            .steps
            .iter()
            .map(|s| StepLine {
                app: s.app().map(ToString::to_string),
                name: o.step_name(s),
                kind: s.kind,
                start_s: secs(s.started_ms),
                end_s: s.ended_ms.map(secs),
                result: result_text(s),
                outcome: s.result.clone(),
            })
            .collect(),
    }
}

pub(super) fn print_record(o: &Operation) {
    let r = record(o);
    let origin = if r.lost_ms.is_some() {
        "since the loss began"
    } else {
        "since the operation began"
    };
    outln!(
        "{} {} ({}) by {}: {}{}",
        o.id,
        r.kind,
        r.note,
        r.started_by,
        r.status,
        r.duration_s
            .map(|d| format!(" after {d:.2} s {origin}"))
            .unwrap_or_default()
    );
    let mut t = table(&["app", "from", "to", "result", "RTO", "target", "promotion"]);
    for a in &r.apps {
        t.add_row(vec![
            a.app.clone(),
            a.from.clone(),
            a.to.clone(),
            a.result.clone(),
            a.rto_s
                .map(|s| format!("{s:.2} s"))
                .unwrap_or_else(|| "-".into()),
            format!(
                "{} s{}",
                a.rto_target_s,
                match a.rto_met {
                    Some(true) => " met",
                    Some(false) => " MISSED",
                    None => "",
                }
            ),
            a.promotion.clone(),
        ]);
    }
    outln!("{t}");
    for (app, why) in &r.skipped {
        outln!("skipped {app}: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::progress;
    use super::*;
    use orchestrator::planner::{Trigger, plan};
    use orchestrator::state::{
        ClusterState, Command, FailureReason, HostState, OpId, OpKind, OpStatus, Request, Response,
        StepAt, StepFailure,
    };

    fn apply(s: &mut ClusterState, command: Command) {
        let r = s.apply(&Request {
            actor: "t".into(),
            at_ms: 1,
            command,
        });
        assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    }

    /// The lab's failover of north as an operation, with `steps` (app, kind, done or
    /// failed; None: running) recorded.
    fn op(steps: &[(&str, StepKind, Option<bool>)]) -> Operation {
        let text = include_str!("../../../examples/lab.toml");
        let mut s = ClusterState::from_topology(text).expect("the lab applies");
        let model = s.topology().expect("applied").model.clone();
        for h in &model.hosts {
            apply(
                &mut s,
                Command::SetHostState {
                    host: h.id.clone(),
                    state: HostState::Up,
                    reason: "t".into(),
                    last_seen_ms: None,
                },
            );
        }
        for v in model.apps.iter().flat_map(|a| &a.volumes) {
            apply(
                &mut s,
                Command::SetReplicaData {
                    volume: v.id.clone(),
                    site: topology::SiteId::new("south"),
                    data: orchestrator::state::DataState::UpToDate,
                },
            );
        }
        let p = plan(
            &s,
            &Trigger::Failover {
                apps: ["db", "api", "portal"].map(topology::AppId::new).to_vec(),
                to: topology::SiteId::new("south"),
            },
        )
        .expect("a plan");
        Operation {
            id: OpId(1),
            kind: OpKind::Failover,
            apps: Vec::new(),
            started_by: "t".into(),
            started_ms: 0,
            ended_ms: None,
            status: OpStatus::Running,
            note: String::new(),
            steps: steps
                .iter()
                .map(|(app, kind, result)| {
                    let app = topology::AppId::new(*app);
                    let m = p.apps().find(|m| m.app == app).expect("planned");
                    let index = m.steps.iter().position(|s| s.kind() == *kind);
                    Step {
                        app: Some(app.clone()),
                        at: StepAt::App {
                            app,
                            index: u32::try_from(index.expect("a planned step")).expect("few"),
                        },
                        kind: *kind,
                        started_ms: 0,
                        ended_ms: result.map(|_| 1),
                        result: result.map(|ok| {
                            if ok {
                                StepResult::Done {
                                    outcome: StepOutcome::VmsStarted { vms: Vec::new() },
                                }
                            } else {
                                StepResult::Failed {
                                    failure: StepFailure::new(
                                        FailureReason::TimedOut { after_ms: 1 },
                                        "no",
                                    ),
                                }
                            }
                        }),
                    }
                })
                .collect(),
            plan: Some(Box::new(p.clone())),
            lost_ms: None,
            approved: Vec::new(),
        }
    }

    #[test]
    fn progress_counts_apps_healthy_or_failed_and_names_the_first_unfinished_wave() {
        assert_eq!(progress(&op(&[])), (0, 3, "wave 1/3 (tier 1)".into()));
        let o = op(&[
            ("db", StepKind::PromoteAndMove, Some(true)),
            ("db", StepKind::HealthGate, None),
        ]);
        assert_eq!(progress(&o), (0, 3, "wave 1/3 (tier 1)".into()));
        let o = op(&[
            ("db", StepKind::HealthGate, Some(true)),
            ("api", StepKind::StartVms, Some(false)),
        ]);
        assert_eq!(progress(&o), (2, 3, "wave 3/3 (tier 3)".into()));
        let o = op(&[
            ("db", StepKind::HealthGate, Some(true)),
            ("api", StepKind::HealthGate, Some(true)),
            ("portal", StepKind::HealthGate, Some(true)),
        ]);
        assert_eq!(progress(&o), (3, 3, String::new()));
        // The record names each step from the plan and keeps its typed result.
        let r = record(&o);
        assert_eq!(r.steps[0].name, "health gate");
        assert_eq!(r.steps[0].kind, StepKind::HealthGate);
        assert!(matches!(r.steps[0].outcome, Some(StepResult::Done { .. })));
    }
}
