//! The executor (DESIGN §6): runs plans on the leader as sagas.
//!
//! A task on every node that acts only while the node leads. Every 200 ms it
//! - turns automatic triggers ([`auto_triggers`], pure) into plans: a site `Down`
//!   fails over every app active there, a host `Down` inside a healthy site restarts its
//!   VMs on the site's other hosts, a flapping site is held for an operator;
//! - drives every running operation that has a plan: wave by wave, the apps of a wave
//!   concurrently, each app through its steps (approval, stop or fence at the source,
//!   promote + move, start, health gate).
//!
//! Every step is committed to Raft before it runs (`StartStep`) and after
//! (`FinishStep`, with what it did). Each step checks the state first and does only
//! what is missing (a promotion already committed, agent commands already issued by
//! this operation), so a new leader resumes an operation from the log and finishes it
//! exactly once: no VM started twice, no epoch skipped or reused.

mod drill;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use topology::{AppId, HostId, SiteRole, VmId};

use crate::clock::now_ms;
use crate::detector::SYSTEM_ACTOR;
use crate::node::Node;
use crate::planner::{self, AppMove, Plan, Trigger};
use crate::state::{
    AgentAction, AppState, ClusterState, Command, CommandId, CommandOutcome, CommandStatus,
    DataState, Epoch, HostState, Issuer, OpId, OpKind, OpStatus, Outcome, Request, SiteState,
    StepResult, VmState,
};
use proto::agent::StoppedGroup;

/// How often the executor looks.
pub const TICK: Duration = Duration::from_millis(200);
/// How often a waiting step re-reads the state (it also wakes on every applied entry).
const POLL: Duration = Duration::from_millis(50);
/// A site lost this many times within [`FLAP_WINDOW_MS`] is held for an operator.
pub const FLAP_LIMIT: usize = 3;
pub const FLAP_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Time a guest gets to shut down in a switchover before it is destroyed.
pub const SHUTDOWN_TIMEOUT_S: u32 = 60;

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

/// Plan and begin the automatic operations the state calls for.
async fn start_automatic(node: &Node) {
    let plans: Vec<(Plan, Option<u64>)> = {
        let a = node.state.read();
        auto_triggers(&a.state)
            .into_iter()
            .filter_map(|t| {
                let lost = lost_since(&a.state, &t);
                match planner::plan(&a.state, &t) {
                    Ok(p) if !p.is_empty() => Some((p, lost)),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(node = %node.name, "no plan for {}: {e}", t.describe());
                        None
                    }
                }
            })
            .collect()
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
        _ => None,
    }
}

/// One operation's saga on this leader.
struct Saga {
    node: Arc<Node>,
    op: OpId,
    actor: String,
}

impl Saga {
    /// Commit, retrying while the cluster is briefly unavailable; a rejection is
    /// returned as is.
    async fn commit(&self, command: Command) -> Result<Outcome, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let req = Request {
                actor: self.actor.clone(),
                at_ms: now_ms(),
                command: command.clone(),
            };
            match self.node.write(req).await {
                Ok(w) => return Ok(w.outcome),
                Err(e)
                    if e.code() == tonic::Code::Unavailable
                        && Instant::now() < deadline
                        && self.node.is_confirmed_leader() =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.message().to_string()),
            }
        }
    }

    /// Run one step of `app` exactly once across leaders: a finished step is not run
    /// again (its result stands); an unfinished one (its leader died) is run again
    /// under the same index — the step itself only does what is missing.
    async fn step<F, Fut>(&self, app: &AppId, name: &str, f: F) -> Result<(), String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, String>>,
    {
        self.step_in(Some(app), name, f).await
    }

    /// [`Saga::step`] of the whole operation (`app` None) or of one app.
    async fn step_in<F, Fut>(&self, app: Option<&AppId>, name: &str, f: F) -> Result<(), String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, String>>,
    {
        let existing = {
            let a = self.node.state.read();
            a.state
                .steps_of(self.op)
                .rev()
                .find(|(_, s)| s.app.as_ref() == app && s.name == name)
                .map(|(i, s)| (i, s.result.clone()))
        };
        let index = match existing {
            Some((_, Some(StepResult::Ok))) => return Ok(()),
            Some((_, Some(StepResult::Failed(e)))) => return Err(e),
            Some((i, None)) => i,
            None => match self
                .commit(Command::StartStep {
                    op: self.op,
                    name: name.into(),
                    app: app.cloned(),
                })
                .await?
            {
                Outcome::Step(i) => i,
                other => return Err(format!("unexpected outcome {other:?}")),
            },
        };
        let r = f().await;
        let (result, detail) = match &r {
            Ok(d) => (StepResult::Ok, d.clone()),
            Err(e) => (StepResult::Failed(e.clone()), String::new()),
        };
        self.commit(Command::FinishStep {
            op: self.op,
            index,
            result,
            detail,
        })
        .await?;
        r.map(|_| ())
    }

    /// Wait until `check` on the state gives an answer, or `timeout`.
    async fn wait<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&ClusterState) -> Option<Result<T, String>>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        let mut applied = self.node.state.subscribe();
        loop {
            if let Some(r) = check(&self.node.state.read().state) {
                return r;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out after {} ms waiting for {what}",
                    timeout.as_millis()
                ));
            }
            let _ = tokio::time::timeout(POLL, applied.changed()).await;
        }
    }
}

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
        return;
    }
    let deps: std::collections::BTreeMap<AppId, Vec<AppId>> = {
        let a = node.state.read();
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
    };
    let mut failed: Vec<AppId> = Vec::new();
    for wave in &plan.waves {
        // An app whose dependency failed in this operation does not start: it fails
        // with that reason (recorded as a step), and so do its own dependents.
        let blocked = |m: &AppMove| failed_dependency(&deps, &failed, &m.app);
        let results = futures_util::future::join_all(wave.apps.iter().map(|m| {
            let dep = blocked(m);
            let saga = &saga;
            async move {
                match dep {
                    Some(d) => {
                        let r = saga
                            .step(&m.app, "dependencies healthy", || async {
                                Err(format!(
                                    "{d}, which it depends on, failed in this operation"
                                ))
                            })
                            .await;
                        set_app_state(saga, &m.app, AppState::Failed, "a dependency failed").await;
                        r
                    }
                    None => drive_app(saga, m).await,
                }
            }
        }))
        .await;
        for (m, r) in wave.apps.iter().zip(results) {
            if let Err(e) = r {
                tracing::warn!(node = %node.name, %op, app = %m.app, "app failed: {e}");
                failed.push(m.app.clone());
            }
        }
        if !node.is_confirmed_leader() {
            return;
        }
    }
    let status = if failed.is_empty() {
        OpStatus::Succeeded
    } else {
        OpStatus::Failed
    };
    if let Err(e) = saga.commit(Command::FinishOperation { op, status }).await {
        tracing::warn!(node = %node.name, %op, "could not finish: {e}");
    }
}

/// The first dependency of `app` that failed in this operation, if any (pure).
pub fn failed_dependency(
    deps: &std::collections::BTreeMap<AppId, Vec<AppId>>,
    failed: &[AppId],
    app: &AppId,
) -> Option<AppId> {
    deps.get(app)?.iter().find(|d| failed.contains(d)).cloned()
}

async fn set_app_state(saga: &Saga, app: &AppId, state: AppState, reason: &str) {
    let already = saga
        .node
        .state
        .read()
        .state
        .apps
        .get(app)
        .is_some_and(|a| a.state == state);
    if !already {
        let _ = saga
            .commit(Command::SetAppState {
                app: app.clone(),
                state,
                reason: reason.into(),
            })
            .await;
    }
}

async fn drive_app(saga: &Saga, m: &AppMove) -> Result<(), String> {
    let r = drive_app_steps(saga, m).await;
    let op = saga.op;
    match &r {
        Ok(()) => set_app_state(saga, &m.app, AppState::Running, &format!("{op} done")).await,
        Err(e) => set_app_state(saga, &m.app, AppState::Failed, &format!("{op}: {e}")).await,
    }
    r
}

async fn drive_app_steps(saga: &Saga, m: &AppMove) -> Result<(), String> {
    let app = &m.app;
    let op = saga.op;
    let timeout = Duration::from_millis(m.health_timeout_ms.max(1000));
    if m.needs_approval {
        saga.step(app, "approval", || {
            saga.wait(Duration::from_secs(24 * 3600), "operator approval", |s| {
                let o = s.operations.get(&op.0)?;
                if o.approved.contains(app) {
                    Some(Ok(format!("approved (`metrodr op approve {}`)", op.0)))
                } else if o.status != OpStatus::Running {
                    Some(Err("the operation ended".into()))
                } else {
                    None
                }
            })
        })
        .await?;
    }
    let moving_state = if m.graceful {
        AppState::Migrating
    } else {
        AppState::FailingOver
    };
    set_app_state(saga, app, moving_state, &format!("{op}")).await;
    if !m.stops.is_empty() {
        let name = if m.graceful {
            format!("stop at {}", m.from)
        } else {
            format!("fence at {}", m.from)
        };
        saga.step(app, &name, || stop_vms(saga, m, timeout)).await?;
    }
    let model = {
        let a = saga.node.state.read();
        a.state
            .topology()
            .and_then(|t| t.model.app(app).cloned())
            .ok_or("the app is gone from the topology")?
    };
    let (source, target) = {
        let a = saga.node.state.read();
        (
            a.state
                .replica_host(&model, &m.from)
                .filter(|_| m.from != m.to),
            a.state
                .replica_host(&model, &m.to)
                .filter(|_| m.from != m.to),
        )
    };
    if let Some(h) = &source {
        saga.step(app, &format!("stop volumes at {}", m.from), || {
            unserve_source(saga, m, h, timeout)
        })
        .await?;
    }
    saga.step(app, &format!("promote and move to {}", m.to), || {
        move_app(saga, m)
    })
    .await?;
    if let Some(h) = &target {
        saga.step(app, &format!("serve volumes at {h}"), || {
            serve_promoted(saga, m, &model, h, source.as_ref(), timeout)
        })
        .await?;
    }
    if !m.starts.is_empty() {
        saga.step(app, "start VMs", || start_vms(saga, m, timeout))
            .await?;
    }
    saga.step(app, "health gate", || health_gate(saga, m, timeout))
        .await
}

/// Commands this operation already issued on `host` for the same VM and action (a VM
/// command), or exactly this action (a volume group command).
fn issued_same(s: &ClusterState, op: OpId, host: &HostId, action: &AgentAction) -> Vec<CommandId> {
    let by = Issuer::Operation { op };
    s.commands
        .values()
        .filter(|c| c.issuer == by && &c.host == host)
        .filter(|c| match action.vm() {
            Some(vm) => c.action.vm() == Some(vm) && c.action.name() == action.name(),
            None => &c.action == action,
        })
        .map(|c| c.id)
        .collect()
}

/// Issue `batch` unless this operation issued each already; returns the command ids.
async fn issue_once(
    saga: &Saga,
    batch: Vec<(HostId, AgentAction)>,
) -> Result<Vec<CommandId>, String> {
    let mut ids = Vec::new();
    let mut missing = Vec::new();
    {
        let a = saga.node.state.read();
        for (host, action) in batch {
            let done = issued_same(&a.state, saga.op, &host, &action);
            match done.last() {
                Some(id) => ids.push(*id),
                None => missing.push((host, action)),
            }
        }
    }
    if !missing.is_empty() {
        match saga
            .commit(Command::IssueAgentCommands {
                issuer: Issuer::Operation { op: saga.op },
                commands: missing,
            })
            .await?
        {
            Outcome::Commands(new) => ids.extend(new),
            other => return Err(format!("unexpected outcome {other:?}")),
        }
    }
    Ok(ids)
}

/// Wait for commands to succeed; the first failure fails the step with its message.
async fn await_commands(saga: &Saga, ids: &[CommandId], timeout: Duration) -> Result<(), String> {
    await_results(saga, ids, timeout, false).await
}

/// Wait for commands' results. With `down_stops`, a command whose host went down
/// meanwhile counts as done: the host's lease ran out, so its agent fenced its VMs
/// (DESIGN §4) — what a stop or destroy asked for.
async fn await_results(
    saga: &Saga,
    ids: &[CommandId],
    timeout: Duration,
    down_stops: bool,
) -> Result<(), String> {
    saga.wait(timeout, "the agents' command results", |s| {
        let mut done = true;
        for id in ids {
            match s.commands.get(&id.0).map(|c| (&c.status, c)) {
                Some((CommandStatus::Succeeded { .. }, _)) => {}
                Some((CommandStatus::Pending, c))
                    if down_stops
                        && s.hosts
                            .get(&c.host)
                            .is_some_and(|h| h.state == HostState::Down) => {}
                Some((CommandStatus::Failed { failure, .. }, c)) => {
                    return Some(Err(format!(
                        "{} of {} on {} failed: {failure}",
                        c.action.name(),
                        c.action.target(),
                        c.host
                    )));
                }
                Some((CommandStatus::Pending, _)) => done = false,
                None => return Some(Err(format!("command {id} vanished"))),
            }
        }
        done.then_some(Ok(()))
    })
    .await
}

async fn stop_vms(saga: &Saga, m: &AppMove, timeout: Duration) -> Result<String, String> {
    let mut batch = Vec::new();
    let mut fenced = Vec::new();
    {
        let a = saga.node.state.read();
        for (vm, host) in &m.stops {
            let up = a
                .state
                .hosts
                .get(host)
                .is_some_and(|h| h.state == HostState::Up);
            if !up {
                fenced.push(format!("{vm}@{host} (host down: fenced by its lease)"));
                continue;
            }
            let action = if m.graceful {
                AgentAction::Shutdown {
                    vm: vm.clone(),
                    timeout_s: SHUTDOWN_TIMEOUT_S,
                }
            } else {
                AgentAction::Destroy { vm: vm.clone() }
            };
            batch.push((host.clone(), action));
        }
    }
    let stopped: Vec<String> = batch
        .iter()
        .map(|(h, a)| format!("{} {}@{h}", a.name(), a.target()))
        .collect();
    if !batch.is_empty() {
        let ids = issue_once(saga, batch).await?;
        // A host declared lost just after the plan (a new leader learns only after a
        // lease that a site's hosts are gone) fences itself: no need to wait for it.
        await_results(
            saga,
            &ids,
            timeout + Duration::from_secs(u64::from(SHUTDOWN_TIMEOUT_S)),
            true,
        )
        .await?;
    }
    Ok([stopped, fenced].concat().join(", "))
}

async fn move_app(saga: &Saga, m: &AppMove) -> Result<String, String> {
    let (epochs, done) = {
        let a = saga.node.state.read();
        let s = &a.state;
        let rec = s.apps.get(&m.app).ok_or("the app is gone")?;
        let placed: Vec<(VmId, HostId)> = rec
            .placement
            .iter()
            .map(|(v, h)| (v.clone(), h.clone()))
            .collect();
        let mut epochs: Vec<(topology::VolumeId, Epoch)> = Vec::new();
        for v in &m.volumes {
            let vol = s
                .volumes
                .get(v)
                .ok_or_else(|| format!("volume {v} is gone"))?;
            if vol.primary().is_none_or(|p| p.site != m.to) {
                epochs.push((v.clone(), vol.epoch.next()));
            }
        }
        let done = epochs.is_empty() && rec.active_site == m.to && placed == m.placement;
        (epochs, done)
    };
    let evidence = |epochs: &[(topology::VolumeId, Epoch)]| {
        epochs
            .iter()
            .map(|(v, e)| format!("{v} epoch {} -> {e}", e.0 - 1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if done {
        return Ok(format!(
            "already at {} (committed by an earlier leader)",
            m.to
        ));
    }
    // After a loss the old primary misses what it never received. After a graceful
    // stop it holds every write — but a primary the agents promote acknowledges writes
    // alone until the old one reconnects as its secondary, so that replica is marked
    // outdated at once rather than after the new primary's first report: promoting it
    // in between would lose those writes. The reversed link reports it in sync again.
    let agent_served = {
        let a = saga.node.state.read();
        m.volumes.iter().all(|v| {
            a.state
                .volumes
                .get(v)
                .is_some_and(|r| r.replicas.iter().all(|x| x.host.is_some()))
        }) && !m.volumes.is_empty()
    };
    let demoted = if m.graceful && !agent_served {
        DataState::UpToDate
    } else {
        DataState::Outdated
    };
    saga.commit(Command::MoveApp {
        op: saga.op,
        app: m.app.clone(),
        to: m.to.clone(),
        epochs: epochs.clone(),
        demoted,
        placement: m.placement.clone(),
    })
    .await?;
    let e = evidence(&epochs);
    Ok(if e.is_empty() {
        format!("active at {}; nothing to promote", m.to)
    } else {
        format!("promoted at {}: {e}; old primary {demoted:?}", m.to)
    })
}

/// Stop serving the group at the source (its VMs are stopped): a graceful move needs
/// the peer to have confirmed every write; a failover goes on (the source's replica
/// is committed `Outdated` by the move). A host without a lease has stopped already.
async fn unserve_source(
    saga: &Saga,
    m: &AppMove,
    host: &HostId,
    timeout: Duration,
) -> Result<String, String> {
    let up = {
        let a = saga.node.state.read();
        a.state
            .hosts
            .get(host)
            .is_some_and(|h| h.state == HostState::Up)
    };
    if !up {
        return Ok(format!(
            "{host} is down: its lease ran out, so its agent fenced (or died) and serves nothing"
        ));
    }
    // A graceful move drains: the primary waits for its peer to confirm every write
    // (an async group's lag included, up to its bound and then some).
    let grace_s = if m.graceful {
        let a = saga.node.state.read();
        let lag = a
            .state
            .topology()
            .and_then(|t| t.model.app(&m.app).cloned())
            .map_or(0, |app| {
                topology::spec::GroupSpec::from_model(
                    &app,
                    &m.from,
                    topology::spec::GroupRole::Primary,
                    Epoch(0),
                )
                .lag_max_s
            });
        lag + 10
    } else {
        0
    };
    let ids = issue_once(
        saga,
        vec![(
            host.clone(),
            AgentAction::Unserve {
                app: m.app.clone(),
                grace_s,
            },
        )],
    )
    .await?;
    await_commands(
        saga,
        &ids,
        timeout + Duration::from_secs(u64::from(grace_s)),
    )
    .await?;
    let outcome = {
        let a = saga.node.state.read();
        ids.first()
            .and_then(|id| a.state.commands.get(&id.0))
            .and_then(|c| c.status.outcome().cloned())
    };
    let Some(CommandOutcome::Unserved { stopped, .. }) = outcome else {
        return Err(format!(
            "the agent of {host} reported no unserve outcome ({outcome:?}); not promoting"
        ));
    };
    let text = match &stopped {
        Some(g) => g.to_string(),
        None => "nothing was served there".to_string(),
    };
    if m.graceful
        && !stopped
            .as_ref()
            .is_none_or(StoppedGroup::peer_has_everything)
    {
        return Err(format!(
            "{text}: not promoting (a switchover loses nothing; let the link recover and retry, or fail over)"
        ));
    }
    Ok(text)
}

/// Serve the group as primary on the target's replica host at the committed epoch
/// (promoting the secondary), pointing at the source's endpoint for reprotection.
async fn serve_promoted(
    saga: &Saga,
    m: &AppMove,
    model: &topology::App,
    host: &HostId,
    source: Option<&HostId>,
    timeout: Duration,
) -> Result<String, String> {
    let spec = {
        let a = saga.node.state.read();
        let epoch = a
            .state
            .group_epoch(model)
            .ok_or("the app's volumes are gone")?;
        let mut spec = topology::spec::GroupSpec::from_model(
            model,
            &m.to,
            topology::spec::GroupRole::Primary,
            epoch,
        );
        spec.promote = true;
        spec.peer = source.and_then(|h| a.state.endpoint(&m.app, h));
        spec
    };
    let ids = issue_once(
        saga,
        vec![(host.clone(), AgentAction::Serve { group: spec })],
    )
    .await?;
    await_commands(saga, &ids, timeout).await?;
    let a = saga.node.state.read();
    Ok(
        match ids
            .first()
            .and_then(|id| a.state.commands.get(&id.0))
            .and_then(|c| c.status.outcome())
        {
            Some(o) => o.to_string(),
            None => format!("served at {host}"),
        },
    )
}

async fn start_vms(saga: &Saga, m: &AppMove, timeout: Duration) -> Result<String, String> {
    start_these(saga, m, &m.starts, timeout).await?;
    Ok(m.starts
        .iter()
        .map(|(v, h)| format!("{v}@{h}"))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Define and start `vms` of the move's app where given (once per operation).
async fn start_these(
    saga: &Saga,
    m: &AppMove,
    vms: &[(VmId, HostId)],
    timeout: Duration,
) -> Result<(), String> {
    let specs = {
        let a = saga.node.state.read();
        let model = a
            .state
            .topology()
            .and_then(|t| t.model.app(&m.app).cloned())
            .ok_or("the app is gone from the topology")?;
        vms.iter()
            .map(|(vm, host)| {
                let v = model
                    .vms
                    .iter()
                    .find(|v| &v.id == vm)
                    .ok_or_else(|| format!("VM {vm} is gone from the topology"))?;
                Ok((
                    host.clone(),
                    topology::spec::VmSpec::from_model(
                        &model,
                        v,
                        topology::spec::NetworkSpec::None,
                    ),
                ))
            })
            .collect::<Result<Vec<_>, String>>()?
    };
    let mut batch = Vec::new();
    for (host, spec) in specs {
        let vm = spec.vm.clone();
        batch.push((host.clone(), AgentAction::Define { spec }));
        batch.push((host, AgentAction::Start { vm }));
    }
    let ids = issue_once(saga, batch).await?;
    await_commands(saga, &ids, timeout).await
}

/// The app's health gate: every VM running in libvirt, then its probes, run by the
/// agent of each VM's new host: serial probes watch the console, tcp probes connect
/// (to the probe's `address`, or the VM's own address as that agent knows it).
async fn health_gate(saga: &Saga, m: &AppMove, timeout: Duration) -> Result<String, String> {
    let running = vms_running(saga, m, timeout).await?;
    let probes: Vec<topology::Probe> = {
        let a = saga.node.state.read();
        a.state
            .topology()
            .and_then(|t| t.model.app(&m.app).map(|x| x.probes.clone()))
            .unwrap_or_default()
    };
    let mut batch = Vec::new();
    for p in &probes {
        let (vm, action) = match p {
            topology::Probe::Serial {
                vm,
                marker,
                timeout_s,
            } => (
                vm,
                AgentAction::Probe {
                    vm: vm.clone(),
                    marker: marker.clone(),
                    timeout_s: (*timeout_s).clamp(1, 3600),
                },
            ),
            topology::Probe::Tcp {
                vm,
                port,
                timeout_s,
                address,
            } => (
                vm,
                AgentAction::TcpProbe {
                    vm: vm.clone(),
                    port: *port,
                    address: address.clone(),
                    timeout_s: (*timeout_s).clamp(1, 3600),
                },
            ),
        };
        if let Some(host) = m.placement.iter().find(|(v, _)| v == vm).map(|(_, h)| h) {
            batch.push((host.clone(), action));
        }
    }
    if batch.is_empty() {
        return Ok(running);
    }
    let wait = batch
        .iter()
        .map(|(_, a)| match a {
            AgentAction::Probe { timeout_s, .. } | AgentAction::TcpProbe { timeout_s, .. } => {
                u64::from(*timeout_s)
            }
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    let ids = issue_once(saga, batch).await?;
    await_commands(saga, &ids, Duration::from_secs(wait + 10)).await?;
    let seen: Vec<String> = {
        let a = saga.node.state.read();
        ids.iter()
            .filter_map(|id| a.state.commands.get(&id.0))
            .filter_map(|c| c.status.outcome().map(ToString::to_string))
            .collect()
    };
    Ok(format!("{running}; probes: {}", seen.join("; ")))
}

/// Every VM of the move running where it is placed. A VM the plan leaves where it is
/// but that its host's agent reports stopped (a fence there, reported after the plan
/// was made) is started there once, so the gate does not wait for what nothing starts.
async fn vms_running(saga: &Saga, m: &AppMove, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut restarted: Vec<(VmId, HostId)> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = saga
            .wait(left, "every VM running", |s| {
                let all = m.placement.iter().all(|(vm, host)| {
                    s.vms
                        .get(vm)
                        .is_some_and(|r| &r.host == host && r.state == VmState::Running)
                });
                if all {
                    return Some(Ok(None));
                }
                let stopped: Vec<(VmId, HostId)> = s
                    .stopped_in_place(m)
                    .into_iter()
                    .filter(|x| !restarted.contains(x))
                    .collect();
                (!stopped.is_empty()).then_some(Ok(Some(stopped)))
            })
            .await?;
        let Some(stopped) = next else {
            let again = if restarted.is_empty() {
                String::new()
            } else {
                let names: Vec<String> =
                    restarted.iter().map(|(v, h)| format!("{v}@{h}")).collect();
                format!(
                    " (started again where they were stopped: {})",
                    names.join(", ")
                )
            };
            return Ok(format!(
                "libvirt reports {} VM(s) running at {}{again}",
                m.placement.len(),
                m.to
            ));
        };
        restarted.extend(stopped.iter().cloned());
        let left = deadline.saturating_duration_since(Instant::now());
        start_these(saga, m, &stopped, left).await?;
    }
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
