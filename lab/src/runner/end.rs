//! What the runner observes besides the faults: the volumes sampled during the run
//! against the epoch invariants (from every node), the operator's part (it approves
//! what waits for approval), whether the cluster has healed, and the end state the
//! invariants are checked on.
//!
//! Never: decide on a state string of the API here; [`crate::states`] reads them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chaos::invariants::{Checker, EndState, ReplicaObs, VmReport, VolumeObs, running_ledger};
use orchestrator::client::{Client, Dialer};
use orchestrator::pb;
use orchestrator::state::{AuditEvent, OpStatus};

use super::{SAMPLE_EVERY, Summarize};
use crate::api;
use crate::cluster::Lab;
use crate::error::LabError;
use crate::states;

/// The cluster as the run found it, before the workload and the faults.
pub(super) struct Before {
    sites: BTreeMap<String, String>,
    ops: BTreeSet<u64>,
}

impl Before {
    pub(super) async fn read(lab: &Lab) -> Result<Before, LabError> {
        let c = lab.client().await?;
        Ok(Before {
            sites: api::app_sites(&c).await,
            ops: api::operations(&c).await.iter().map(|o| o.id.0).collect(),
        })
    }
}

/// What the workload did.
pub(super) struct Workload {
    pub app: String,
    pub volume: String,
    pub sync: bool,
    pub writes: u64,
    pub missing: u64,
    pub max_write_stall_ms: u64,
}

fn obs(v: &[pb::VolumeStatus]) -> Vec<VolumeObs> {
    v.iter()
        .map(|v| VolumeObs {
            id: v.id.clone(),
            epoch: v.epoch,
            replicas: v
                .replicas
                .iter()
                .map(|r| ReplicaObs {
                    site: r.site.clone(),
                    primary: states::is_primary(r),
                    epoch: r.epoch,
                    up_to_date: states::is_up_to_date(r),
                })
                .collect(),
        })
        .collect()
}

/// Every node's view of the volumes, every [`SAMPLE_EVERY`], into `checker` (a stale
/// node must not show two primaries either), until `stop` changes.
pub(super) async fn sample(
    addrs: Vec<String>,
    dialer: Dialer,
    checker: Arc<Mutex<Checker>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        for a in &addrs {
            if let Ok(c) = dialer.connect_to(a).await
                && let Ok(r) = tokio::time::timeout(
                    Duration::from_secs(1),
                    c.op.clone()
                        .list_volumes(pb::ListVolumesRequest { app: String::new() }),
                )
                .await
                && let Ok(r) = r
            {
                let o = obs(&r.into_inner().volumes);
                checker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .observe(a, &o);
            }
        }
        approve_waiting(&dialer, &addrs).await;
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The runner plays the operator of apps whose policy is `manual-approval`: it
/// approves what an operation waits for, as soon as it waits (recorded with this
/// actor in the audit log; the app's RTO includes the wait).
async fn approve_waiting(dialer: &Dialer, addrs: &[String]) {
    let Ok(c) = dialer.connect(addrs).await else {
        return;
    };
    for o in api::operations(&c).await {
        let waiting = o.status == OpStatus::Running
            && o.plan.as_ref().is_some_and(|p| {
                p.apps()
                    .any(|m| m.needs_approval && !o.approved.contains(&m.app))
            });
        if waiting {
            let _ =
                c.op.clone()
                    .approve_operation(pb::ApproveOperationRequest {
                        actor: "chaos-runner (as the operator)".into(),
                        op: o.id.0,
                        apps: Vec::new(),
                    })
                    .await;
        }
    }
}

/// What is not healed yet (empty: the cluster converged): a leader, every host up,
/// every replica up to date, no operation running, every VM running.
pub(super) async fn healing(lab: &Lab) -> Vec<String> {
    let mut out = Vec::new();
    // One client of the leader for every question below.
    let Ok(c) = lab.client().await else {
        return vec!["no leader".into()];
    };
    match api::hosts(&c).await {
        Some(hosts) => {
            for h in hosts.iter().filter(|h| !states::host_up(h)) {
                out.push(format!("host {} is {}", h.id, h.state));
            }
        }
        None => out.push("hosts: no answer".into()),
    }
    match api::volumes(&c).await {
        Some(vs) => {
            for v in vs {
                for r in v.replicas.iter().filter(|r| !states::is_up_to_date(r)) {
                    out.push(format!("{} at {} is {}", v.id, r.site, r.data));
                }
            }
        }
        None => out.push("volumes: no answer".into()),
    }
    for o in api::operations(&c).await {
        if o.status == OpStatus::Running {
            out.push(format!("{} still running", o.id));
        }
    }
    // Every VM of the topology runs again.
    match api::running_vms(&c).await {
        Ok(running) => {
            for vm in lab.vm_ids() {
                if !running.contains_key(&vm) {
                    out.push(format!("VM {vm} is not running"));
                }
            }
        }
        Err(e) => out.push(format!("VMs: {}", e.message())),
    }
    out
}

/// The audit log's VM reports, from their typed events. An entry without a typed event,
/// or one that does not decode, is an error: the checker must not skip what it cannot
/// read.
fn vm_reports(log: &[pb::AuditEntry]) -> Result<Vec<VmReport>, LabError> {
    let mut out = Vec::new();
    for e in log {
        let event = e.event.clone().ok_or_else(|| {
            LabError::refused(format!(
                "audit entry {} carries no typed event (a node of another metrodr version?)",
                e.seq
            ))
        })?;
        let event = orchestrator::wire::audit_event_from_wire(event).map_err(|err| {
            LabError::refused(format!("audit entry {} does not decode: {err}", e.seq))
        })?;
        if let AuditEvent::VmStates { host, changes, .. } = event {
            out.push(VmReport {
                seq: e.seq,
                host: host.to_string(),
                vms: changes
                    .into_iter()
                    .map(|c| (c.vm.to_string(), c.state.is_active()))
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// The end state the invariants are checked on, and a line per operation the cluster
/// ran during the run.
pub(super) async fn gather(
    lab: &Lab,
    before: &Before,
    workload: &Workload,
    resets: &[(u64, String)],
    checker: &Mutex<Checker>,
    not_healed: Vec<String>,
    summarize: Summarize,
) -> Result<(EndState, Vec<String>), LabError> {
    let c: Client = lab.client().await?;
    let log = api::audit(&c).await?;
    let running = {
        let mut l = running_ledger(vm_reports(&log)?, resets);
        for vm in lab.vm_ids() {
            l.entry(vm).or_default();
        }
        l
    };
    let site_after = api::app_sites(&c).await;
    let vm_site: BTreeMap<String, String> = lab
        .topo
        .apps
        .iter()
        .flat_map(|a| {
            let site = site_after.get(a.id.as_str()).cloned().unwrap_or_default();
            a.vms.iter().map(move |v| (v.id.to_string(), site.clone()))
        })
        .collect();
    let host_site = lab
        .topo
        .hosts
        .iter()
        .map(|h| (h.id.to_string(), h.site.to_string()))
        .collect();
    let mut automatic_ops = Vec::new();
    let mut rto_missed = Vec::new();
    let mut ops_unfinished = Vec::new();
    let mut lines = Vec::new();
    let ops = api::operations(&c).await;
    for o in ops.iter().filter(|o| !before.ops.contains(&o.id.0)) {
        let s = summarize(o);
        lines.push(format!("{} {} ({}): {}", o.id, s.kind, o.note, s.status));
        // Automatic moves to another site (a fenced host's restart in place is not one).
        let moves = s.apps.iter().any(|a| a.moved);
        if o.started_by == orchestrator::detector::SYSTEM_ACTOR && moves {
            automatic_ops.push(format!("{} {}", o.id, o.note));
        }
        if o.status == OpStatus::Running {
            ops_unfinished.push(format!("{} {}", o.id, o.note));
        }
        for a in s.apps.iter().filter(|a| a.rto_met == Some(false)) {
            rto_missed.push(format!(
                "{}: {} healthy after {:.1} s, target {} s",
                o.id,
                a.app,
                a.rto_s.unwrap_or(0.0),
                a.rto_target_s
            ));
        }
    }
    let workload_fell_behind = checker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .behind_seen
        .contains(workload.volume.as_str());
    let end = EndState {
        writes_acknowledged: workload.writes,
        writes_missing: workload.missing,
        sync: workload.sync,
        workload_volume: workload.volume.clone(),
        workload_moved: before.sites.get(&workload.app) != site_after.get(&workload.app),
        workload_fell_behind,
        max_write_stall_ms: workload.max_write_stall_ms,
        running,
        vm_site,
        host_site,
        site_before: before.sites.clone(),
        site_after,
        automatic_ops,
        rto_missed,
        ops_unfinished,
        not_healed,
    };
    Ok((end, lines))
}
