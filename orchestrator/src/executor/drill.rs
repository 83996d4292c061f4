//! Test drills on the leader (DESIGN §7): start a copy of each app at the DR site and
//! touch nothing of production.
//!
//! Per app, in the plan's waves (tiers and `depends_on`, as a failover would):
//! `baseline` (production and replication as they are), `snapshot at HOST` (the agent
//! serving the app's secondary takes a copy-on-write snapshot of the whole group at one
//! sequence point and exports it; replication goes on), `start drill VMs` (copies named
//! `drill-<op>-<vm>` on the snapshot, on an isolated network), `health gate` (the app's
//! serial probes, on the copies) and `production check` (production VMs on the same
//! hosts in the same state since the same time, replicas still up to date). Then,
//! whatever happened, `cleanup` on every host the drill used, and a last
//! `production check` of every app after it.
//!
//! A drill is not resumed by a new leader — its measurements would be wrong: a drill
//! whose saga log already has steps when this leader picks it up was interrupted; it is
//! cleaned up and ends `Interrupted`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use topology::{AppId, HostId, SiteId, VmId};

use super::{Saga, await_commands, failed_dependency, issue_once};
use crate::planner::{AppMove, Plan};
use crate::state::{
    AgentAction, ClusterState, Command, CommandId, DataState, OpId, OpStatus, VmState,
};

/// How long the agents get to remove a drill.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The isolated libvirt network of drill `op`.
pub fn drill_network(op: OpId) -> String {
    topology::spec::drill_network_name(op)
}

/// Production as one app's drill must leave it (pure data, compared before and after).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Production {
    pub active_site: SiteId,
    /// Per VM: host, state and since when (a restart changes `since`).
    pub vms: BTreeMap<VmId, (HostId, VmState, u64)>,
    /// Per volume replica: "volume@site" → data state.
    pub replicas: BTreeMap<String, DataState>,
}

/// What production of `app` looks like in `state` (pure).
pub fn production(state: &ClusterState, app: &AppId) -> Option<Production> {
    let rec = state.apps.get(app)?;
    let vms = state
        .vms
        .values()
        .filter(|v| &v.app == app)
        .map(|v| (v.vm.clone(), (v.host.clone(), v.state, v.since_ms)))
        .collect();
    let replicas = state
        .volumes
        .values()
        .filter(|v| &v.app == app)
        .flat_map(|v| {
            v.replicas
                .iter()
                .map(move |r| (format!("{}@{}", v.id, r.site), r.data))
        })
        .collect();
    Some(Production {
        active_site: rec.active_site.clone(),
        vms,
        replicas,
    })
}

/// What changed in production between `before` and `now`, in words (pure). Empty:
/// nothing did.
pub fn changes(before: &Production, now: &Production) -> Vec<String> {
    let mut out = Vec::new();
    if before.active_site != now.active_site {
        out.push(format!(
            "active site changed from {} to {}",
            before.active_site, now.active_site
        ));
    }
    for (vm, (host, state, since)) in &before.vms {
        match now.vms.get(vm) {
            None => out.push(format!("{vm} is no longer reported")),
            Some((h, s, t)) => {
                if h != host {
                    out.push(format!("{vm} moved from {host} to {h}"));
                }
                if s != state {
                    out.push(format!("{vm} went from {state:?} to {s:?}"));
                } else if t != since {
                    out.push(format!("{vm} changed state and back ({s:?} again)"));
                }
            }
        }
    }
    for vm in now.vms.keys().filter(|v| !before.vms.contains_key(*v)) {
        out.push(format!("{vm} appeared"));
    }
    out.extend(lagging(now));
    out
}

/// Replicas that are not up to date: replication is not within its bound (pure).
pub fn lagging(p: &Production) -> Vec<String> {
    p.replicas
        .iter()
        .filter(|(_, d)| **d != DataState::UpToDate)
        .map(|(r, d)| format!("replica {r} is {d:?}"))
        .collect()
}

/// One line for a step's detail: `replication in-sync …` or `replication NOT in
/// sync …`, then production. Reports read the first words.
pub fn describe(p: &Production) -> String {
    let lag = lagging(p);
    let repl = if lag.is_empty() {
        format!(
            "replication in-sync (within bound): {} replica(s) up to date",
            p.replicas.len()
        )
    } else {
        format!("replication NOT in sync: {}", lag.join(", "))
    };
    let vms = p
        .vms
        .iter()
        .map(|(vm, (h, s, _))| format!("{vm}@{h} {s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{repl}; production at {}: {}",
        p.active_site,
        if vms.is_empty() { "no VMs" } else { &vms }
    )
}

/// Every host drill `plan` may have touched: the hosts of its copies and the hosts
/// serving the snapshotted replicas (pure).
pub fn drill_hosts(state: &ClusterState, plan: &Plan) -> BTreeSet<HostId> {
    let mut hosts = BTreeSet::new();
    for m in plan.apps() {
        hosts.extend(m.starts.iter().map(|(_, h)| h.clone()));
        if let Some(h) = snapshot_host(state, m) {
            hosts.insert(h);
        }
    }
    hosts
}

/// The host serving `m.app`'s replicas at the drill site (None: the app has no volumes).
fn snapshot_host(state: &ClusterState, m: &AppMove) -> Option<HostId> {
    let model = state.topology()?.model.app(&m.app)?.clone();
    if model.volumes.is_empty() {
        return None;
    }
    state.replica_host(&model, &m.to)
}

pub(super) async fn drive(saga: &Saga, plan: &Plan) {
    let op = saga.op;
    let resumed = saga.node.state.read().state.steps_of(op).next().is_some();
    if resumed {
        tracing::warn!(node = %saga.node.name, %op, "a drill interrupted by a leader change: cleaning up");
        let _ = saga
            .step_in(None, "cleanup after interruption", || cleanup(saga, plan))
            .await;
        finish(saga, OpStatus::Interrupted).await;
        return;
    }
    let deps: BTreeMap<AppId, Vec<AppId>> = {
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
    };
    let baselines: BTreeMap<AppId, Production> = {
        let a = saga.node.state.read();
        plan.apps()
            .filter_map(|m| production(&a.state, &m.app).map(|p| (m.app.clone(), p)))
            .collect()
    };
    let mut failed: Vec<AppId> = Vec::new();
    for wave in &plan.waves {
        let results = futures_util::future::join_all(wave.apps.iter().map(|m| {
            let dep = failed_dependency(&deps, &failed, &m.app);
            let base = baselines.get(&m.app).cloned();
            async move {
                match (dep, base) {
                    (Some(d), _) => {
                        saga.step(&m.app, "dependencies healthy", || async {
                            Err(format!("{d}, which it depends on, failed in this drill"))
                        })
                        .await
                    }
                    (None, None) => {
                        saga.step(&m.app, "baseline", || async {
                            Err("the app is not in the cluster state".to_string())
                        })
                        .await
                    }
                    (None, Some(base)) => drill_app(saga, m, &base).await,
                }
            }
        }))
        .await;
        for (m, r) in wave.apps.iter().zip(results) {
            if let Err(e) = r {
                tracing::warn!(node = %saga.node.name, %op, app = %m.app, "drill failed: {e}");
                failed.push(m.app.clone());
            }
        }
        if !saga.node.is_confirmed_leader() {
            return;
        }
    }
    let cleaned = saga.step_in(None, "cleanup", || cleanup(saga, plan)).await;
    // Production after the drill is gone, against the same baseline.
    let mut after_ok = true;
    for m in plan.apps() {
        let Some(base) = baselines.get(&m.app) else {
            continue;
        };
        let r = saga
            .step(&m.app, "production after", || async {
                check(saga, &m.app, base)
            })
            .await;
        after_ok &= r.is_ok();
    }
    let status = if failed.is_empty() && cleaned.is_ok() && after_ok {
        OpStatus::Succeeded
    } else {
        OpStatus::Failed
    };
    finish(saga, status).await;
}

async fn finish(saga: &Saga, status: OpStatus) {
    let op = saga.op;
    if let Err(e) = saga.commit(Command::FinishOperation { op, status }).await {
        tracing::warn!(node = %saga.node.name, %op, "could not finish the drill: {e}");
    }
}

/// Production of `app` now against `base`: Ok with the description, or what changed.
fn check(saga: &Saga, app: &AppId, base: &Production) -> Result<String, String> {
    let a = saga.node.state.read();
    let now = production(&a.state, app).ok_or("the app is gone from the cluster state")?;
    let changed = changes(base, &now);
    if changed.is_empty() {
        Ok(format!("{}; unchanged since the baseline", describe(&now)))
    } else {
        Err(format!("production changed: {}", changed.join("; ")))
    }
}

async fn drill_app(saga: &Saga, m: &AppMove, base: &Production) -> Result<(), String> {
    let app = &m.app;
    let op = saga.op;
    let timeout = Duration::from_millis(m.health_timeout_ms.max(1000));
    saga.step(app, "baseline", || async {
        let lag = lagging(base);
        if lag.is_empty() {
            Ok(describe(base))
        } else {
            Err(format!(
                "{}: a drill on a lagging replica tests stale data",
                lag.join(", ")
            ))
        }
    })
    .await?;
    let (model, snap_host) = {
        let a = saga.node.state.read();
        let model = a
            .state
            .topology()
            .and_then(|t| t.model.app(app).cloned())
            .ok_or("the app is gone from the topology")?;
        (model, snapshot_host(&a.state, m))
    };
    if let Some(h) = &snap_host {
        saga.step(app, &format!("snapshot at {h}"), || async {
            let ids = issue_once(
                saga,
                vec![(
                    h.clone(),
                    AgentAction::DrillSnapshot {
                        op,
                        app: app.clone(),
                    },
                )],
            )
            .await?;
            await_commands(saga, &ids, timeout).await?;
            Ok(messages(saga, &ids).join("; "))
        })
        .await?;
    } else if !model.volumes.is_empty() {
        saga.step(app, "snapshot", || async {
            Err(format!("no host serves the replicas of {app} at {}", m.to))
        })
        .await?;
    }
    saga.step(app, "start drill VMs", || async {
        let mut batch = Vec::new();
        for (vm, host) in &m.starts {
            let v = model
                .vms
                .iter()
                .find(|v| &v.id == vm)
                .ok_or_else(|| format!("VM {vm} is gone from the topology"))?;
            let mut spec = topology::spec::VmSpec::from_model(
                &model,
                v,
                topology::spec::NetworkSpec::Isolated {
                    name: drill_network(op),
                },
            );
            spec.drill = Some(op);
            batch.push((host.clone(), AgentAction::DrillStart { op, spec }));
        }
        let ids = issue_once(saga, batch).await?;
        await_commands(saga, &ids, timeout).await?;
        Ok(messages(saga, &ids).join("; "))
    })
    .await?;
    saga.step(app, "health gate", || async {
        let mut batch = Vec::new();
        let mut unchecked = Vec::new();
        for p in &model.probes {
            match p {
                topology::Probe::Serial {
                    vm,
                    marker,
                    timeout_s,
                } => {
                    if let Some((_, host)) = m.starts.iter().find(|(v, _)| v == vm) {
                        batch.push((
                            host.clone(),
                            AgentAction::DrillProbe {
                                op,
                                vm: vm.clone(),
                                marker: marker.clone(),
                                timeout_s: (*timeout_s).clamp(1, 3600),
                            },
                        ));
                    }
                }
                // The copies' isolated network has no route from the host: no agent
                // can reach a copy's port, so a drill cannot check it.
                topology::Probe::Tcp { vm, port, .. } => {
                    unchecked.push(format!(
                        "tcp {vm}:{port} not checked (the drill network is isolated from the hosts)"
                    ));
                }
            }
        }
        let mut out = format!(
            "{} drill VM(s) running at {} (libvirt)",
            m.starts.len(),
            m.to
        );
        if !batch.is_empty() {
            let wait = batch
                .iter()
                .map(|(_, a)| match a {
                    AgentAction::DrillProbe { timeout_s, .. } => u64::from(*timeout_s),
                    _ => 0,
                })
                .max()
                .unwrap_or(0);
            let ids = issue_once(saga, batch).await?;
            await_commands(saga, &ids, Duration::from_secs(wait + 10)).await?;
            out.push_str(&format!("; probes: {}", messages(saga, &ids).join("; ")));
        }
        if !unchecked.is_empty() {
            out.push_str(&format!("; {}", unchecked.join(", ")));
        }
        Ok(out)
    })
    .await?;
    saga.step(app, "production check", || async { check(saga, app, base) })
        .await
}

/// Remove everything of the drill on every host it may have touched.
async fn cleanup(saga: &Saga, plan: &Plan) -> Result<String, String> {
    let hosts = {
        let a = saga.node.state.read();
        drill_hosts(&a.state, plan)
    };
    if hosts.is_empty() {
        return Ok("nothing to clean up".into());
    }
    let batch = hosts
        .iter()
        .map(|h| (h.clone(), AgentAction::DrillCleanup { op: saga.op }))
        .collect();
    let ids = issue_once(saga, batch).await?;
    await_commands(saga, &ids, CLEANUP_TIMEOUT).await?;
    Ok(messages(saga, &ids).join("; "))
}

/// The agents' messages of finished commands, in order.
fn messages(saga: &Saga, ids: &[CommandId]) -> Vec<String> {
    let a = saga.node.state.read();
    ids.iter()
        .filter_map(|id| {
            let c = a.state.commands.get(&id.0)?;
            c.status.outcome().map(|o| format!("{}: {o}", c.host))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prod() -> Production {
        Production {
            active_site: SiteId::new("north"),
            vms: [
                (
                    VmId::new("db-1"),
                    (HostId::new("north-h1"), VmState::Running, 100),
                ),
                (
                    VmId::new("db-2"),
                    (HostId::new("north-h2"), VmState::Running, 120),
                ),
            ]
            .into_iter()
            .collect(),
            replicas: [
                ("db-data@north".to_string(), DataState::UpToDate),
                ("db-data@south".to_string(), DataState::UpToDate),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn an_untouched_production_has_no_changes() {
        assert!(changes(&prod(), &prod()).is_empty());
        assert!(describe(&prod()).starts_with("replication in-sync"));
    }

    #[test]
    fn every_kind_of_production_change_is_named() {
        let base = prod();
        type Change = Box<dyn Fn(&mut Production)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|p| p.active_site = SiteId::new("south")),
                "active site changed",
            ),
            (
                Box::new(|p| {
                    p.vms.insert(
                        VmId::new("db-1"),
                        (HostId::new("north-h3"), VmState::Running, 100),
                    );
                }),
                "db-1 moved from north-h1 to north-h3",
            ),
            (
                Box::new(|p| {
                    p.vms.insert(
                        VmId::new("db-1"),
                        (HostId::new("north-h1"), VmState::Paused, 200),
                    );
                }),
                "db-1 went from Running to Paused",
            ),
            (
                Box::new(|p| {
                    p.vms.insert(
                        VmId::new("db-1"),
                        (HostId::new("north-h1"), VmState::Running, 300),
                    );
                }),
                "db-1 changed state and back",
            ),
            (
                Box::new(|p| {
                    p.vms.remove(&VmId::new("db-2"));
                }),
                "db-2 is no longer reported",
            ),
            (
                Box::new(|p| {
                    p.vms.insert(
                        VmId::new("db-1.drill"),
                        (HostId::new("south-h1"), VmState::Running, 300),
                    );
                }),
                "db-1.drill appeared",
            ),
            (
                Box::new(|p| {
                    p.replicas
                        .insert("db-data@south".into(), DataState::Outdated);
                }),
                "replica db-data@south is Outdated",
            ),
        ];
        for (change, expect) in cases {
            let mut now = base.clone();
            change(&mut now);
            let c = changes(&base, &now);
            assert_eq!(c.len(), 1, "{expect}: {c:?}");
            assert!(c[0].contains(expect), "{expect}: {c:?}");
        }
    }

    #[test]
    fn a_lagging_replica_is_described_as_not_in_sync() {
        let mut p = prod();
        p.replicas
            .insert("db-data@south".into(), DataState::Syncing);
        assert!(describe(&p).starts_with("replication NOT in sync"));
        assert_eq!(lagging(&p).len(), 1);
    }
}
