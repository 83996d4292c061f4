//! Test drills on the leader (DESIGN §7): start a copy of each app at the DR site and
//! touch nothing of production.
//!
//! Per app, in the plan's waves (tiers and `depends_on`, as a failover would), the
//! steps its plan lists: `baseline` (production and replication as they are),
//! `snapshot at HOST` (the agent serving the app's secondary takes a copy-on-write
//! snapshot of the whole group at one sequence point and exports it; replication goes
//! on), `start drill VMs` (copies named `drill-<op>-<vm>` on the snapshot, on an
//! isolated network), `health gate` (the app's serial probes, on the copies) and
//! `production check` (production VMs on the same hosts in the same state since the
//! same time, replicas still up to date). Then, whatever happened, the plan's closing
//! steps: `cleanup` on every host the drill may have touched, and a last `production
//! after` check of every app.
//!
//! A drill is not resumed by a new leader — its measurements would be wrong: a drill
//! whose saga log already has steps when this leader picks it up was interrupted; it
//! runs the plan's interruption steps (the cleanup) and ends `Interrupted`.
//!
//! Never: touch production, or choose a host or a spec the plan did not name.

use std::collections::BTreeMap;
use std::time::Duration;

use topology::{AppId, HostId, SiteId, VmId};

use super::saga::{Saga, StepRun, no_outcome};
use crate::plan::{AppMove, Plan, PlannedProbe, PlannedStep, drill_copy, longest_probe_s};
use crate::records::join;
use crate::state::{
    AgentAction, AgentDid, CommandOutcome, FailureReason, OpStatus, Production, StepAt,
    StepFailure, StepOutcome,
};

/// How long the agents get to remove a drill.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the drill's probe commands get past the longest probe timeout.
const PROBE_SLACK: Duration = Duration::from_secs(10);

pub(super) async fn drive(saga: &Saga, plan: &Plan) {
    let op = saga.op;
    let resumed = saga.node.state.read().state.steps_of(op).next().is_some();
    if resumed {
        tracing::warn!(node = %saga.node.name, %op, "a drill interrupted by a leader change: cleaning up");
        let none = BTreeMap::new();
        for (index, step) in (0u32..).zip(&plan.interrupted) {
            let at = StepAt::Interrupted { index };
            let _ = saga.step(at, || closing(saga, step, &none)).await;
        }
        super::finish(saga, OpStatus::Interrupted).await;
        return;
    }
    let baselines: BTreeMap<AppId, Production> = {
        let a = saga.node.state.read();
        plan.apps()
            .filter_map(|m| a.state.production(&m.app).map(|p| (m.app.clone(), p)))
            .collect()
    };
    let failed = super::run_waves(saga, plan, |m, dep| {
        let base = baselines.get(&m.app);
        async move {
            match dep {
                Some(d) => super::dependency_failed(saga, m, &d).await,
                None => drill_app(saga, m, base).await,
            }
        }
    })
    .await;
    let Some(failed) = failed else { return };
    // Whatever happened: the cleanup, then production after the drill is gone, against
    // the same baseline.
    let mut closed = true;
    for (index, step) in (0u32..).zip(&plan.closing) {
        let at = StepAt::Closing { index };
        closed &= saga
            .step(at, || closing(saga, step, &baselines))
            .await
            .is_ok();
    }
    let status = if failed.is_empty() && closed {
        OpStatus::Succeeded
    } else {
        OpStatus::Failed
    };
    super::finish(saga, status).await;
}

fn gone(app: &AppId) -> StepFailure {
    StepFailure::new(
        FailureReason::Gone,
        format!("{app} is not in the cluster state"),
    )
}

/// Production of `app` now against `base`: unchanged, or what changed.
fn check(saga: &Saga, app: &AppId, base: &Production) -> StepRun {
    let now = {
        let a = saga.node.state.read();
        a.state.production(app).ok_or_else(|| gone(app))?
    };
    let changes = base.changes(&now);
    if changes.is_empty() {
        Ok(StepOutcome::ProductionUnchanged { production: now })
    } else {
        let message = format!("production changed: {}", join(&changes, "; "));
        Err(StepFailure::new(
            FailureReason::ProductionChanged {
                changes,
                production: now,
            },
            message,
        ))
    }
}

async fn drill_app(saga: &Saga, m: &AppMove, base: Option<&Production>) -> Result<(), StepFailure> {
    let timeout = Duration::from_millis(m.health_timeout_ms.max(1000));
    for (index, step) in (0u32..).zip(&m.steps) {
        let at = StepAt::App {
            app: m.app.clone(),
            index,
        };
        saga.step(at, || app_step(saga, &m.app, step, base, timeout))
            .await?;
    }
    Ok(())
}

async fn app_step(
    saga: &Saga,
    app: &AppId,
    step: &PlannedStep,
    base: Option<&Production>,
    timeout: Duration,
) -> StepRun {
    let op = saga.op;
    match (step, base) {
        (_, None) => Err(gone(app)),
        (PlannedStep::Baseline, Some(base)) => {
            let lag = base.lagging();
            if lag.is_empty() {
                return Ok(StepOutcome::Baseline {
                    production: base.clone(),
                });
            }
            Err(StepFailure::new(
                FailureReason::Lagging {
                    production: base.clone(),
                },
                format!(
                    "{}: a drill on a lagging replica tests stale data",
                    join(&lag, ", ")
                ),
            ))
        }
        (PlannedStep::Snapshot { host }, _) => {
            let action = AgentAction::DrillSnapshot {
                op,
                app: app.clone(),
            };
            let ids = saga.issue_once(vec![(host.clone(), action)]).await?;
            saga.await_commands(&ids, timeout).await?;
            match saga.outcomes(&ids).pop() {
                Some((
                    _,
                    CommandOutcome::DrillSnapshotTaken {
                        app,
                        seq,
                        volumes,
                        already,
                    },
                )) => Ok(StepOutcome::Snapshot {
                    host: host.clone(),
                    app,
                    seq,
                    volumes,
                    already,
                }),
                _ => Err(no_outcome(host, "snapshot")),
            }
        }
        (PlannedStep::StartDrillVms { copies, .. }, _) => start_copies(saga, copies, timeout).await,
        (
            PlannedStep::DrillHealthGate {
                site,
                copies,
                probes,
                unchecked,
            },
            _,
        ) => drill_gate(saga, site, *copies, probes, unchecked).await,
        (PlannedStep::ProductionCheck, Some(base)) => check(saga, app, base),
        (other, _) => Err(StepFailure::new(
            FailureReason::Unsupported,
            format!(
                "a {} step cannot run in a test drill's app",
                other.kind().label()
            ),
        )),
    }
}

/// Start the drill's copy of each VM where the plan says, on the drill's snapshot and
/// isolated network.
async fn start_copies(
    saga: &Saga,
    copies: &[(HostId, topology::spec::VmSpec)],
    timeout: Duration,
) -> StepRun {
    let op = saga.op;
    let batch = copies
        .iter()
        .map(|(h, spec)| {
            let spec = drill_copy(spec, op);
            (h.clone(), AgentAction::DrillStart { op, spec })
        })
        .collect();
    let ids = saga.issue_once(batch).await?;
    saga.await_commands(&ids, timeout).await?;
    let mut started = Vec::new();
    for (host, outcome) in saga.outcomes(&ids) {
        if !matches!(outcome, CommandOutcome::DrillStarted { .. }) {
            return Err(no_outcome(&host, "drill start"));
        }
        started.push(AgentDid { host, outcome });
    }
    Ok(StepOutcome::DrillVmsStarted { copies: started })
}

/// The copies' serial probes; the tcp probes are named only (no host reaches the
/// isolated network).
async fn drill_gate(
    saga: &Saga,
    site: &SiteId,
    copies: u32,
    probes: &[PlannedProbe],
    unchecked: &[(VmId, u16)],
) -> StepRun {
    let batch: Vec<(HostId, AgentAction)> = probes
        .iter()
        .filter_map(|p| p.drill_action(saga.op).map(|a| (p.host.clone(), a)))
        .collect();
    let mut passed = Vec::new();
    if !batch.is_empty() {
        let ids = saga.issue_once(batch).await?;
        let wait = Duration::from_secs(longest_probe_s(probes)) + PROBE_SLACK;
        saga.await_commands(&ids, wait).await?;
        passed = saga
            .outcomes(&ids)
            .into_iter()
            .map(|(host, outcome)| AgentDid { host, outcome })
            .collect();
    }
    Ok(StepOutcome::DrillHealthy {
        copies,
        site: site.clone(),
        probes: passed,
        unchecked: unchecked.to_vec(),
    })
}

/// A closing (or interruption) step of the drill.
async fn closing(
    saga: &Saga,
    step: &PlannedStep,
    baselines: &BTreeMap<AppId, Production>,
) -> StepRun {
    match step {
        PlannedStep::Cleanup { hosts } => cleanup(saga, hosts).await,
        PlannedStep::ProductionAfter { app } => match baselines.get(app) {
            Some(base) => check(saga, app, base),
            None => Err(gone(app)),
        },
        other => Err(StepFailure::new(
            FailureReason::Unsupported,
            format!("a {} step cannot close a test drill", other.kind().label()),
        )),
    }
}

/// Remove everything of the drill on every host it may have touched.
async fn cleanup(saga: &Saga, hosts: &[HostId]) -> StepRun {
    if hosts.is_empty() {
        return Ok(StepOutcome::Cleaned { hosts: Vec::new() });
    }
    let batch = hosts
        .iter()
        .map(|h| (h.clone(), AgentAction::DrillCleanup { op: saga.op }))
        .collect();
    let ids = saga.issue_once(batch).await?;
    saga.await_commands(&ids, CLEANUP_TIMEOUT).await?;
    let hosts = saga
        .outcomes(&ids)
        .into_iter()
        .map(|(host, outcome)| AgentDid { host, outcome })
        .collect();
    Ok(StepOutcome::Cleaned { hosts })
}
