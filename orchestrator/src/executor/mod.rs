//! The executor (DESIGN §6): runs plans on the leader as sagas.
//!
//! A task on every node that acts only while the node leads. Every 200 ms it
//! - turns automatic triggers ([`auto_triggers`], pure) into plans: a site `Down`
//!   fails over every app active there, a host `Down` inside a healthy site restarts its
//!   VMs on the site's other hosts, a flapping site is held for an operator;
//! - drives every running operation that has a plan: wave by wave, the apps of a wave
//!   concurrently, each app through the steps its plan lists ([`moves`], [`drill`]).
//!
//! Every step is committed to Raft before it runs (`StartStep`, naming its place in
//! the plan) and after (`FinishStep`, with its typed outcome or failure). Each step
//! checks the state first and does only what is missing (a promotion already
//! committed, agent commands already issued by this operation), so a new leader
//! resumes an operation from the log and finishes it exactly once: no VM started
//! twice, no epoch skipped or reused. The plan decided every host, peer, epoch and
//! spec; the executor only carries it out ([`saga`]).
//!
//! Never: choose anything the plan did not, or decide on a message's text.

mod drill;
mod moves;
mod saga;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use topology::{AppId, SiteRole};

use crate::clock::now_ms;
use crate::detector::SYSTEM_ACTOR;
use crate::node::Node;
use crate::planner::{self, AppMove, Plan, Trigger};
use crate::state::{
    ClusterState, Command, FailureReason, HostState, Issuer, OpId, OpKind, OpStatus, Outcome,
    Request, SiteState, StepAt, StepFailure,
};
use saga::Saga;

pub use crate::plan::SHUTDOWN_TIMEOUT_S;

/// How often the executor looks.
pub const TICK: Duration = Duration::from_millis(200);
/// A site lost this many times within [`FLAP_WINDOW_MS`] is held for an operator.
pub const FLAP_LIMIT: usize = 3;
pub const FLAP_WINDOW_MS: u64 = 10 * 60 * 1000;

/// The actor of everything an operation commits (agent commands carry it too, which is
/// how a resumed step finds the commands its earlier run issued).
pub fn op_actor(op: OpId) -> String {
    format!("{SYSTEM_ACTOR} {op}")
}

/// Automatic triggers in `state` at `now_ms` (pure). A trigger whose plan moves
/// nothing is dropped by the caller.
pub fn auto_triggers(state: &ClusterState) -> Vec<Trigger> {
    let Some(topo) = state.topology().map(|t| &t.model) else {
        return Vec::new();
    };
    let busy = state.busy_apps();
    let mut out = Vec::new();
    for site in state.sites.values() {
        if site.role != SiteRole::Production || site.state != SiteState::Down {
            continue;
        }
        if flapping(site.downs_ms.as_slice(), site.since_ms) {
            continue;
        }
        let waiting = state
            .apps
            .values()
            .any(|a| a.active_site == site.id && !busy.contains(&a.id));
        if waiting {
            out.push(Trigger::SiteLost {
                site: site.id.clone(),
            });
        }
    }
    for host in state.hosts.values() {
        if host.state != HostState::Down {
            continue;
        }
        // Inside a site that is fully up only: while a site is suspect, its hosts are
        // probably going down together and the site's failover handles them.
        let site_up = state
            .sites
            .get(&host.site)
            .is_some_and(|s| s.state == SiteState::Up);
        let has_vms = state.apps.values().any(|a| {
            !busy.contains(&a.id)
                && a.active_site == host.site
                && a.placement.values().any(|h| h == &host.id)
        });
        if site_up && has_vms && topo.host(&host.id).is_some() {
            out.push(Trigger::HostLost {
                host: host.id.clone(),
            });
        }
    }
    // A host whose agent fenced its VMs (its lease ran out, e.g. while the cluster
    // elected a leader) and came back: restart what it stopped, once no operation is
    // moving those apps (it may be moving them elsewhere anyway).
    for host in state.hosts.values() {
        if host.state != HostState::Up || host.fenced_ms.is_none() {
            continue;
        }
        let site_up = state
            .sites
            .get(&host.site)
            .is_some_and(|s| s.state == SiteState::Up);
        // (An app whose volumes the host does not serve again yet is skipped by the
        // planner, with the reason; a plan that restarts nothing is not begun.)
        let stopped = state.apps.values().any(|a| {
            !busy.contains(&a.id)
                && a.active_site == host.site
                && !state.fenced_vms(&a.id, &host.id).is_empty()
        });
        if site_up && stopped {
            out.push(Trigger::HostFenced {
                host: host.id.clone(),
            });
        }
    }
    out
}

/// A site lost [`FLAP_LIMIT`] times within the window (ending at its latest loss)
/// flaps: its automatic failover waits for an operator (`metrodr site fail`).
pub fn flapping(downs_ms: &[u64], latest_ms: u64) -> bool {
    downs_ms
        .iter()
        .filter(|t| latest_ms.saturating_sub(**t) <= FLAP_WINDOW_MS)
        .count()
        >= FLAP_LIMIT
}

pub async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drivers: HashMap<u64, JoinHandle<()>> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        drivers.retain(|_, h| !h.is_finished());
        if !node.is_confirmed_leader() {
            for (_, h) in drivers.drain() {
                h.abort();
            }
            continue;
        }
        start_automatic(&node).await;
        report_outages(&node).await;
        start_scheduled(&node).await;
        serve_volumes(&node).await;
        let running: Vec<u64> = {
            let a = node.state.read();
            a.state
                .operations
                .values()
                .filter(|o| o.status == OpStatus::Running && o.plan.is_some())
                .map(|o| o.id.0)
                .collect()
        };
        for id in running {
            drivers.entry(id).or_insert_with(|| {
                let node = node.clone();
                tokio::spawn(async move { drive(node, OpId(id)).await })
            });
        }
    }
    for (_, h) in drivers.drain() {
        h.abort();
    }
}

/// Plan and begin the automatic operations the state calls for: the event-triggered
/// ones first; when none begins, the reconciler's restore of what still does not run.
async fn start_automatic(node: &Node) {
    let plans: Vec<(Plan, Option<u64>)> = {
        let a = node.state.read();
        let planned = |t: Trigger| {
            let lost = lost_since(&a.state, &t);
            match planner::plan(&a.state, &t) {
                Ok(p) if !p.is_empty() => Some((p, lost)),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(node = %node.name, "no plan for {}: {e}", t.describe());
                    None
                }
            }
        };
        let events: Vec<(Plan, Option<u64>)> = auto_triggers(&a.state)
            .into_iter()
            .filter_map(planned)
            .collect();
        if events.is_empty() {
            crate::reconciler::restore(&a.state, now_ms())
                .and_then(planned)
                .into_iter()
                .collect()
        } else {
            events
        }
    };
    for (plan, lost_ms) in plans {
        tracing::warn!(node = %node.name, "automatic {}", plan.trigger.describe());
        let req = Request {
            actor: SYSTEM_ACTOR.into(),
            at_ms: now_ms(),
            command: Command::BeginPlan {
                plan: Box::new(plan),
                lost_ms,
            },
        };
        if let Err(e) = node.write(req).await {
            tracing::warn!(node = %node.name, "could not begin the plan: {}", e.message());
        }
    }
}

/// Commit the reconciler's verdicts on apps that should run and do not.
async fn report_outages(node: &Node) {
    let verdicts = {
        let a = node.state.read();
        crate::reconciler::outages(&a.state, now_ms())
    };
    for (app, since_ms) in verdicts {
        match since_ms {
            Some(_) => {
                tracing::error!(node = %node.name, %app, "app should run and has not for longer than its RTO target")
            }
            None => tracing::warn!(node = %node.name, %app, "app runs again"),
        }
        let req = Request {
            actor: SYSTEM_ACTOR.into(),
            at_ms: now_ms(),
            command: Command::SetAppOutage { app, since_ms },
        };
        if let Err(e) = node.write(req).await {
            tracing::warn!(node = %node.name, "could not record an app outage: {}", e.message());
        }
    }
}

/// Begin the drills the topology's schedules say are due. A drill that can run no app
/// is recorded as a failed run with the reasons (and counts as the run: the schedule
/// does not retry it every tick).
async fn start_scheduled(node: &Node) {
    let due = {
        let a = node.state.read();
        crate::schedule::due(&a.state, now_ms())
            .into_iter()
            .map(|d| {
                let t = Trigger::TestDrill {
                    apps: d.apps.clone(),
                    to: None,
                };
                (d, planner::plan(&a.state, &t))
            })
            .collect::<Vec<_>>()
    };
    for (d, plan) in due {
        let actor = crate::schedule::actor(&d.id);
        tracing::info!(node = %node.name, schedule = %d.id, "scheduled drill due");
        let req = |command| Request {
            actor: actor.clone(),
            at_ms: now_ms(),
            command,
        };
        let why = match plan {
            Ok(p) if !p.is_empty() => {
                match node
                    .write(req(Command::BeginPlan {
                        plan: Box::new(p),
                        lost_ms: None,
                    }))
                    .await
                {
                    Ok(_) => continue,
                    Err(e) => e.message().to_string(),
                }
            }
            Ok(p) => p
                .skipped
                .iter()
                .map(|s| format!("{}: {}", s.app, s.reason))
                .collect::<Vec<_>>()
                .join("; "),
            Err(e) => e.to_string(),
        };
        let started = node
            .write(req(Command::StartOperation {
                kind: OpKind::Drill,
                apps: d.apps.clone(),
                note: format!("scheduled drill {} could not run: {why}", d.id),
            }))
            .await;
        if let Ok(w) = started
            && let Outcome::Operation(op) = w.outcome
        {
            let _ = node
                .write(req(Command::FinishOperation {
                    op,
                    status: OpStatus::Failed,
                }))
                .await;
        }
    }
}

/// Issue the volume-group commands the controller finds missing.
async fn serve_volumes(node: &Node) {
    let commands = {
        let a = node.state.read();
        crate::controller::reconcile(&a.state, now_ms())
    };
    for chunk in commands.chunks(256) {
        let req = Request {
            actor: crate::controller::ACTOR.into(),
            at_ms: now_ms(),
            command: Command::IssueAgentCommands {
                issuer: Issuer::Controller,
                commands: chunk.to_vec(),
            },
        };
        if let Err(e) = node.write(req).await {
            tracing::warn!(node = %node.name, "could not issue volume commands: {}", e.message());
        }
    }
}

/// When the loss behind an automatic trigger began: the last lease renewal the leader
/// could have granted (down time − lease − margin) of the earliest lost host.
pub fn lost_since(state: &ClusterState, t: &Trigger) -> Option<u64> {
    let timing = &state.topology()?.model.timing;
    let back = timing.lease_ms + timing.lease_margin_ms;
    // Per lost host: when it was last known alive (the detector's estimate), else the
    // latest moment it can have held a lease. The loss began at the earliest.
    let alive = |h: &crate::state::HostRecord| {
        h.last_seen_ms
            .unwrap_or_else(|| h.since_ms.saturating_sub(back))
    };
    match t {
        Trigger::SiteLost { site } => state
            .hosts
            .values()
            .filter(|h| &h.site == site && h.state == HostState::Down)
            .map(alive)
            .min()
            .or_else(|| {
                state
                    .sites
                    .get(site)
                    .map(|s| s.since_ms.saturating_sub(back))
            }),
        Trigger::HostLost { host } => state.hosts.get(host).map(alive),
        // The app is down since its first VM stopped.
        Trigger::Restore { vms } => vms.iter().map(|v| v.since_ms).min(),
        _ => None,
    }
}

/// Drive operation `op` on this leader: a test drill (never resumed: see [`drill`]),
/// or a failover, switchover or failback ([`moves`]).
async fn drive(node: Arc<Node>, op: OpId) {
    let plan = {
        let a = node.state.read();
        a.state
            .operations
            .get(&op.0)
            .and_then(|o| o.plan.as_deref().cloned())
    };
    let Some(plan) = plan else { return };
    let saga = Saga {
        node: node.clone(),
        op,
        actor: op_actor(op),
    };
    if plan.kind == OpKind::Drill {
        drill::drive(&saga, &plan).await;
    } else {
        moves::drive(&saga, &plan).await;
    }
}

/// Run `plan`'s waves: the apps of a wave concurrently (`run_app`, given the app's
/// dependency that failed in this operation, if one did), the next wave once every app
/// of this one is done. The apps that failed; None when this node stopped leading (the
/// next leader goes on).
async fn run_waves<'p, F, Fut>(saga: &Saga, plan: &'p Plan, run_app: F) -> Option<Vec<AppId>>
where
    F: Fn(&'p AppMove, Option<AppId>) -> Fut,
    Fut: Future<Output = Result<(), StepFailure>>,
{
    let op = saga.op;
    let deps = dependencies(saga);
    let mut failed: Vec<AppId> = Vec::new();
    for wave in &plan.waves {
        let results = futures_util::future::join_all(
            wave.apps
                .iter()
                .map(|m| run_app(m, failed_dependency(&deps, &failed, &m.app))),
        )
        .await;
        for (m, r) in wave.apps.iter().zip(results) {
            if let Err(e) = r {
                tracing::warn!(node = %saga.node.name, %op, app = %m.app, "app failed: {e}");
                failed.push(m.app.clone());
            }
        }
        if !saga.node.is_confirmed_leader() {
            return None;
        }
    }
    Some(failed)
}

/// End the operation with `status`.
async fn finish(saga: &Saga, status: OpStatus) {
    let op = saga.op;
    if let Err(e) = saga.commit(Command::FinishOperation { op, status }).await {
        tracing::warn!(node = %saga.node.name, %op, "could not finish: {e}");
    }
}

/// What each app depends on, from the topology.
fn dependencies(saga: &Saga) -> BTreeMap<AppId, Vec<AppId>> {
    let a = saga.node.state.read();
    a.state
        .topology()
        .map(|t| {
            t.model
                .apps
                .iter()
                .map(|x| (x.id.clone(), x.depends_on.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The first dependency of `app` that failed in this operation, if any (pure).
pub fn failed_dependency(
    deps: &BTreeMap<AppId, Vec<AppId>>,
    failed: &[AppId],
    app: &AppId,
) -> Option<AppId> {
    deps.get(app)?.iter().find(|d| failed.contains(d)).cloned()
}

/// Record that `m`'s app does not run because `dep`, which it depends on, failed in
/// this operation: its first step fails with that reason (and is never run).
async fn dependency_failed(saga: &Saga, m: &AppMove, dep: &AppId) -> Result<(), StepFailure> {
    let at = StepAt::App {
        app: m.app.clone(),
        index: 0,
    };
    let drill = {
        let a = saga.node.state.read();
        let op = a.state.operations.get(&saga.op.0);
        op.is_some_and(|o| o.kind == OpKind::Drill)
    };
    let what = if drill { "drill" } else { "operation" };
    saga.step(at, || async {
        Err(StepFailure::new(
            FailureReason::DependencyFailed { app: dep.clone() },
            format!("{dep}, which it depends on, failed in this {what}"),
        ))
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_waits_for_nothing_but_its_own_failed_dependencies() {
        let id = AppId::new;
        let deps = std::collections::BTreeMap::from([
            (id("api"), vec![id("db"), id("cache")]),
            (id("portal"), vec![id("api")]),
            (id("mail"), vec![]),
        ]);
        assert_eq!(failed_dependency(&deps, &[], &id("api")), None);
        assert_eq!(
            failed_dependency(&deps, &[id("cache")], &id("api")),
            Some(id("cache"))
        );
        assert_eq!(
            failed_dependency(&deps, &[id("db")], &id("portal")),
            None,
            "only direct ones"
        );
        // A blocked app is itself added to the failed list, so its dependents follow.
        assert_eq!(
            failed_dependency(&deps, &[id("db"), id("api")], &id("portal")),
            Some(id("api"))
        );
        assert_eq!(failed_dependency(&deps, &[id("db")], &id("mail")), None);
        assert_eq!(failed_dependency(&deps, &[id("db")], &id("unknown")), None);
    }

    #[test]
    fn three_losses_within_ten_minutes_flap_two_do_not() {
        let m = 60_000;
        assert!(!flapping(&[0, 5 * m], 5 * m));
        assert!(flapping(&[0, 5 * m, 9 * m], 9 * m));
        // The oldest loss is out of the window.
        assert!(!flapping(&[0, 5 * m, 11 * m], 11 * m));
        assert!(!flapping(&[], 0));
    }
}
