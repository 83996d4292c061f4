//! Failovers, switchovers and failbacks on the leader: wave by wave, the apps of a
//! wave concurrently, each app through the steps its plan lists (approval, stop or
//! fence at the source, stop its volumes there, promote and move, serve the promoted
//! group, start the VMs, the health gate), each run exactly once across leaders.
//!
//! Every parameter comes from the plan. What a step decides at run time is only how
//! to react to what happened since the plan was made: a host that went down fenced
//! its VMs by its lease (nothing to stop, nothing to unserve), a VM a fence stopped
//! after the plan is started where it is by the health gate.
//!
//! Never: choose a host, a peer, an epoch or a spec.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use topology::spec::{GroupSpec, VmSpec};
use topology::{AppId, HostId, SiteId, VmId};

use super::saga::{Saga, StepRun, no_outcome};
use crate::plan::{AppMove, Plan, PlannedProbe, PlannedStep, longest_probe_s};
use crate::state::{
    AgentAction, AgentDid, AppState, Command, CommandOutcome, DataState, FailureReason, Healthy,
    HostState, Moved, OpStatus, Promotion, StepAt, StepFailure, StepOutcome, VmState, VmStop,
    VmStopped,
};

/// How long the health gate's probe commands get past the longest probe timeout.
const PROBE_SLACK: Duration = Duration::from_secs(10);
/// How long an app waits for its operator's approval.
const APPROVAL_WAIT: Duration = Duration::from_secs(24 * 3600);

pub(super) async fn drive(saga: &Saga, plan: &Plan) {
    // An app whose dependency failed in this operation does not start: its first step
    // fails with that reason, and so do its own dependents.
    let failed = super::run_waves(saga, plan, |m, dep| async move {
        match dep {
            Some(d) => {
                let r = super::dependency_failed(saga, m, &d).await;
                set_app_state(saga, &m.app, AppState::Failed, "a dependency failed").await;
                r
            }
            None => drive_app(saga, m).await,
        }
    })
    .await;
    match failed {
        Some(f) if f.is_empty() => super::finish(saga, OpStatus::Succeeded).await,
        Some(_) => super::finish(saga, OpStatus::Failed).await,
        None => {}
    }
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

async fn drive_app(saga: &Saga, m: &AppMove) -> Result<(), StepFailure> {
    let r = drive_app_steps(saga, m).await;
    let op = saga.op;
    match &r {
        Ok(()) => set_app_state(saga, &m.app, AppState::Running, &format!("{op} done")).await,
        Err(e) => set_app_state(saga, &m.app, AppState::Failed, &format!("{op}: {e}")).await,
    }
    r
}

async fn drive_app_steps(saga: &Saga, m: &AppMove) -> Result<(), StepFailure> {
    let timeout = Duration::from_millis(m.health_timeout_ms.max(1000));
    let mut moving = false;
    for (index, step) in (0u32..).zip(&m.steps) {
        // The app shows as moving once nothing waits for an operator any more.
        if !moving && !matches!(step, PlannedStep::Approval) {
            let state = if m.graceful {
                AppState::Migrating
            } else {
                AppState::FailingOver
            };
            set_app_state(saga, &m.app, state, &saga.op.to_string()).await;
            moving = true;
        }
        let at = StepAt::App {
            app: m.app.clone(),
            index,
        };
        saga.step(at, || run(saga, m, step, timeout)).await?;
    }
    Ok(())
}

async fn run(saga: &Saga, m: &AppMove, step: &PlannedStep, timeout: Duration) -> StepRun {
    match step {
        PlannedStep::Approval => approval(saga, &m.app).await,
        PlannedStep::StopVms {
            graceful,
            vms,
            shutdown_timeout_s,
            ..
        } => stop_vms(saga, *graceful, vms, *shutdown_timeout_s, timeout).await,
        PlannedStep::UnserveSource {
            host,
            grace_s,
            confirm,
            ..
        } => unserve_source(saga, &m.app, host, *grace_s, *confirm, timeout).await,
        PlannedStep::PromoteAndMove {
            to,
            promote,
            demoted,
            placement,
        } => move_app(saga, &m.app, to, promote, *demoted, placement).await,
        PlannedStep::ServeVolumes { host, group } => serve(saga, host, group, timeout).await,
        PlannedStep::StartVms { vms } => {
            start(saga, vms, timeout).await?;
            Ok(StepOutcome::VmsStarted {
                vms: vms
                    .iter()
                    .map(|(h, spec)| (spec.vm.clone(), h.clone()))
                    .collect(),
            })
        }
        PlannedStep::HealthGate {
            site,
            placement,
            restart,
            probes,
        } => health_gate(saga, m, site, placement, restart, probes, timeout).await,
        other => Err(StepFailure::new(
            FailureReason::Unsupported,
            format!(
                "a {} step cannot run in a failover, switchover or failback",
                other.kind().label()
            ),
        )),
    }
}

async fn approval(saga: &Saga, app: &AppId) -> StepRun {
    let op = saga.op;
    saga.wait(APPROVAL_WAIT, "operator approval", |s| {
        let o = s.operations.get(&op.0)?;
        if o.approved.contains(app) {
            Some(Ok(StepOutcome::Approved { op }))
        } else if o.status != OpStatus::Running {
            Some(Err(StepFailure::new(
                FailureReason::OperationEnded,
                "the operation ended",
            )))
        } else {
            None
        }
    })
    .await
}

fn host_up(saga: &Saga, host: &HostId) -> bool {
    saga.node
        .state
        .read()
        .state
        .hosts
        .get(host)
        .is_some_and(|h| h.state == HostState::Up)
}

/// Shut down (graceful) or destroy the VMs at the source. A VM whose host is down —
/// now, or before its agent answers — was fenced by the host's lease.
async fn stop_vms(
    saga: &Saga,
    graceful: bool,
    vms: &[(VmId, HostId)],
    shutdown_timeout_s: u32,
    timeout: Duration,
) -> StepRun {
    let mut stopped = Vec::new();
    let mut batch = Vec::new();
    for (vm, host) in vms {
        if !host_up(saga, host) {
            stopped.push(VmStopped {
                vm: vm.clone(),
                host: host.clone(),
                how: VmStop::FencedByLease,
            });
            continue;
        }
        let action = if graceful {
            AgentAction::Shutdown {
                vm: vm.clone(),
                timeout_s: shutdown_timeout_s,
            }
        } else {
            AgentAction::Destroy { vm: vm.clone() }
        };
        batch.push((host.clone(), action));
    }
    if !batch.is_empty() {
        let asked: Vec<(VmId, HostId)> = batch
            .iter()
            .filter_map(|(h, a)| a.vm().map(|vm| (vm.clone(), h.clone())))
            .collect();
        let ids = saga.issue_once(batch).await?;
        // A host declared lost just after the plan (a new leader learns only after a
        // lease that a site's hosts are gone) fences itself: no need to wait for it.
        let wait = timeout + Duration::from_secs(u64::from(shutdown_timeout_s));
        saga.await_results(&ids, wait, true).await?;
        let done: BTreeMap<HostId, Vec<CommandOutcome>> =
            saga.outcomes(&ids)
                .into_iter()
                .fold(BTreeMap::new(), |mut by, (h, o)| {
                    by.entry(h).or_default().push(o);
                    by
                });
        for (vm, host) in asked {
            let how = done
                .get(&host)
                .into_iter()
                .flatten()
                .find_map(|o| match o {
                    CommandOutcome::ShutDown {
                        vm: v,
                        destroyed_after_s,
                    } if *v == vm => Some(VmStop::ShutDown {
                        destroyed_after_s: *destroyed_after_s,
                    }),
                    CommandOutcome::Destroyed { vm: v } if *v == vm => Some(VmStop::Destroyed),
                    _ => None,
                })
                // Still pending: its host went down (await_results let it through).
                .unwrap_or(VmStop::FencedByLease);
            stopped.push(VmStopped { vm, host, how });
        }
    }
    Ok(StepOutcome::VmsStopped { vms: stopped })
}

/// Stop serving the group at the source (its VMs are stopped): a graceful move needs
/// the peer to have confirmed every write; a failover goes on (the source's replica
/// is committed `Outdated` by the move). A host without a lease has stopped already.
async fn unserve_source(
    saga: &Saga,
    app: &AppId,
    host: &HostId,
    grace_s: u32,
    confirm: bool,
    timeout: Duration,
) -> StepRun {
    if !host_up(saga, host) {
        return Ok(StepOutcome::SourceDown { host: host.clone() });
    }
    let action = AgentAction::Unserve {
        app: app.clone(),
        grace_s,
    };
    let ids = saga.issue_once(vec![(host.clone(), action)]).await?;
    let wait = timeout + Duration::from_secs(u64::from(grace_s));
    saga.await_commands(&ids, wait).await?;
    let Some((_, CommandOutcome::Unserved { stopped, .. })) = saga.outcomes(&ids).pop() else {
        return Err(no_outcome(host, "unserve"));
    };
    if confirm && let Some(g) = stopped.as_ref().filter(|g| !g.peer_has_everything()) {
        return Err(StepFailure::new(
            FailureReason::PeerNotConfirmed {
                host: host.clone(),
                stopped: g.clone(),
            },
            format!(
                "{g}: not promoting (a switchover loses nothing; let the link recover and retry, or fail over)"
            ),
        ));
    }
    Ok(StepOutcome::SourceUnserved {
        host: host.clone(),
        stopped,
    })
}

/// Commit the planned move: promote what is not primary at `to` yet at the planned
/// epochs, and the placement. Done already (an earlier leader committed it): nothing.
async fn move_app(
    saga: &Saga,
    app: &AppId,
    to: &SiteId,
    promote: &[Promotion],
    demoted: DataState,
    placement: &[(VmId, HostId)],
) -> StepRun {
    let gone = || StepFailure::new(FailureReason::Gone, format!("app {app} is gone"));
    let (pending, done) = {
        let a = saga.node.state.read();
        let s = &a.state;
        let rec = s.apps.get(app).ok_or_else(gone)?;
        let mut pending = Vec::new();
        for p in promote {
            let vol = s.volumes.get(&p.volume).ok_or_else(gone)?;
            if vol.primary().is_none_or(|r| &r.site != to) {
                pending.push(p.clone());
            }
        }
        let placed: Vec<(VmId, HostId)> = rec
            .placement
            .iter()
            .map(|(v, h)| (v.clone(), h.clone()))
            .collect();
        let done = pending.is_empty() && &rec.active_site == to && placed == placement;
        (pending, done)
    };
    if done {
        return Ok(StepOutcome::Moved(Moved {
            to: to.clone(),
            promoted: promote.to_vec(),
            demoted,
            already: true,
        }));
    }
    saga.commit(Command::MoveApp {
        op: saga.op,
        app: app.clone(),
        to: to.clone(),
        epochs: pending.iter().map(|p| (p.volume.clone(), p.to)).collect(),
        demoted,
        placement: placement.to_vec(),
    })
    .await?;
    Ok(StepOutcome::Moved(Moved {
        to: to.clone(),
        promoted: pending,
        demoted,
        already: false,
    }))
}

/// Serve the group as primary on the target's replica host at the committed epoch
/// (promoting the secondary), pointing at the source's endpoint for reprotection.
async fn serve(saga: &Saga, host: &HostId, group: &GroupSpec, timeout: Duration) -> StepRun {
    let action = AgentAction::Serve {
        group: group.clone(),
    };
    let ids = saga.issue_once(vec![(host.clone(), action)]).await?;
    saga.await_commands(&ids, timeout).await?;
    match saga.outcomes(&ids).pop() {
        Some((_, CommandOutcome::Served(served))) => Ok(StepOutcome::Served {
            host: host.clone(),
            served,
        }),
        _ => Err(no_outcome(host, "serve")),
    }
}

/// Define and start `vms` where given (once per operation).
async fn start(
    saga: &Saga,
    vms: &[(HostId, VmSpec)],
    timeout: Duration,
) -> Result<(), StepFailure> {
    let mut batch = Vec::new();
    for (host, spec) in vms {
        batch.push((host.clone(), AgentAction::Define { spec: spec.clone() }));
        batch.push((
            host.clone(),
            AgentAction::Start {
                vm: spec.vm.clone(),
            },
        ));
    }
    let ids = saga.issue_once(batch).await?;
    saga.await_commands(&ids, timeout).await
}

/// The app's health gate: every VM running in libvirt, then its probes, run by the
/// agent of each VM's new host: serial probes watch the console, tcp probes connect
/// (to the probe's `address`, or the VM's own address as that agent knows it).
async fn health_gate(
    saga: &Saga,
    m: &AppMove,
    site: &SiteId,
    placement: &[(VmId, HostId)],
    restart: &[(HostId, VmSpec)],
    probes: &[PlannedProbe],
    timeout: Duration,
) -> StepRun {
    let again = vms_running(saga, m, placement, restart, timeout).await?;
    let mut healthy = Healthy {
        site: site.clone(),
        running: u32::try_from(placement.len()).unwrap_or(u32::MAX),
        restarted: again.restarted,
        served_again: again.served,
        probes: Vec::new(),
    };
    if probes.is_empty() {
        return Ok(StepOutcome::Healthy(healthy));
    }
    let batch = probes
        .iter()
        .map(|p| (p.host.clone(), p.action()))
        .collect();
    let ids = saga.issue_once(batch).await?;
    let wait = Duration::from_secs(longest_probe_s(probes)) + PROBE_SLACK;
    saga.await_commands(&ids, wait).await?;
    healthy.probes = saga
        .outcomes(&ids)
        .into_iter()
        .map(|(host, outcome)| AgentDid { host, outcome })
        .collect();
    Ok(StepOutcome::Healthy(healthy))
}

/// What the health gate started again after a fence.
#[derive(Default)]
struct Again {
    restarted: Vec<(VmId, HostId)>,
    /// The host that served the app's group again (a fence there stopped serving it).
    served: Option<HostId>,
}

/// Wait until every VM runs where placed. A VM its host's agent reports stopped there
/// that this operation has not started since that agent last registered (a fence
/// there, after the plan or after the move started it: the agent registers again once
/// its fence is done) is started again where placed, with its planned spec — after
/// the group is served again at its planned host, if the fence stopped that too
/// (the controller leaves a moving app to its operation). Nothing else is started, so
/// the gate does not wait for what nothing starts.
async fn vms_running(
    saga: &Saga,
    m: &AppMove,
    placement: &[(VmId, HostId)],
    restart: &[(HostId, VmSpec)],
    timeout: Duration,
) -> Result<Again, StepFailure> {
    let deadline = Instant::now() + timeout;
    let op = saga.op;
    let mut again = Again::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = saga
            .wait(left, "every VM running", |s| {
                let all = placement.iter().all(|(vm, host)| {
                    s.vms
                        .get(vm)
                        .is_some_and(|r| &r.host == host && r.state == VmState::Running)
                });
                if all {
                    return Some(Ok(None));
                }
                let owed: Vec<(HostId, VmSpec)> =
                    s.owed_restarts(op, restart).into_iter().cloned().collect();
                (!owed.is_empty()).then_some(Ok(Some(owed)))
            })
            .await?;
        let Some(owed) = next else {
            return Ok(again);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(host) = serve_again(saga, m, left).await? {
            again.served = Some(host);
        }
        again
            .restarted
            .extend(owed.iter().map(|(h, spec)| (spec.vm.clone(), h.clone())));
        let mut batch = Vec::new();
        for (host, spec) in owed {
            batch.push((host.clone(), AgentAction::Define { spec: spec.clone() }));
            batch.push((host, AgentAction::Start { vm: spec.vm }));
        }
        let ids = saga.issue_since_registration(batch).await?;
        saga.await_commands(&ids, left).await?;
    }
}

/// Serve the app's group again as its move's serve step planned it, when its agent
/// registered again since (a fence there stopped serving it). The host, if served.
async fn serve_again(
    saga: &Saga,
    m: &AppMove,
    timeout: Duration,
) -> Result<Option<HostId>, StepFailure> {
    let Some((host, group)) = m.steps.iter().find_map(|s| match s {
        PlannedStep::ServeVolumes { host, group } => Some((host, group)),
        _ => None,
    }) else {
        return Ok(None);
    };
    if saga
        .node
        .state
        .read()
        .state
        .serves_since_registration(&m.app, host)
    {
        return Ok(None);
    }
    let action = AgentAction::Serve {
        group: group.clone(),
    };
    let ids = saga
        .issue_since_registration(vec![(host.clone(), action)])
        .await?;
    saga.await_commands(&ids, timeout).await?;
    Ok(Some(host.clone()))
}
