//! The scenario runner (`metrodr chaos run`): a fresh lab, the writer workload on the
//! tier-1 app, the scenario's faults at their seconds, the volumes sampled every
//! 200 ms against the epoch invariants; then everything healed, time to settle, and
//! the end state checked (chaos::invariants). The result is one JSON object; a
//! failure names the scenario file (and seed) that replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chaos::invariants::{
    Checker, EndState, ReplicaObs, Violation, VmReport, VolumeObs, check_end, running_ledger,
};
use chaos::scenario::Scenario;
use orchestrator::client::Client;
use orchestrator::pb;
use orchestrator::state::{AuditEvent, OpStatus, Operation};
use serde::Serialize;

use super::Lab;
use super::journal::{RunnerLog, StopSignals};
use super::workload::Writers;

/// How often the runner samples the volumes during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Serialize)]
pub struct StepResult {
    pub at_s: f64,
    pub fault: String,
    /// When it was done, seconds after the workload started.
    pub done_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RunResult {
    pub scenario: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub passed: bool,
    pub violations: Vec<Violation>,
    pub steps: Vec<StepResult>,
    pub writes_acknowledged: u64,
    pub writes_missing: u64,
    pub max_write_stall_ms: u64,
    pub samples: u64,
    /// Operations the cluster ran during the run (one line each).
    pub operations: Vec<String>,
    /// Seconds from the end of the schedule until the cluster had healed.
    pub heal_s: Option<f64>,
    /// The schedule exactly as it ran: `metrodr chaos run FILE` replays it.
    pub replay: PathBuf,
    pub dir: PathBuf,
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
                    primary: r.role == "primary",
                    epoch: r.epoch,
                    up_to_date: r.data == "up-to-date",
                })
                .collect(),
        })
        .collect()
}

/// The whole audit log, in pages small enough for one gRPC message.
async fn audit(c: &Client) -> anyhow::Result<Vec<pb::AuditEntry>> {
    const PAGE: u32 = 1000;
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let batch =
            c.op.clone()
                .audit_list(pb::AuditListRequest {
                    from_seq: from,
                    limit: PAGE,
                })
                .await
                .map_err(|e| anyhow::anyhow!("reading the audit log: {}", e.message()))?
                .into_inner()
                .entries;
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(out);
        };
        let full = batch.len() == PAGE as usize;
        out.extend(batch);
        if !full {
            return Ok(out);
        }
        from = last + 1;
    }
}

/// The audit log's VM reports, from their typed events. An entry without a typed event,
/// or one that does not decode, is an error: the checker must not skip what it cannot
/// read.
fn vm_reports(log: &[pb::AuditEntry]) -> anyhow::Result<Vec<VmReport>> {
    let mut out = Vec::new();
    for e in log {
        let event = e.event.clone().with_context(|| {
            format!(
                "audit entry {} carries no typed event (a node of another metrodr version?)",
                e.seq
            )
        })?;
        let event = orchestrator::wire::audit_event_from_wire(event)
            .with_context(|| format!("audit entry {} does not decode", e.seq))?;
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

async fn operations(c: &Client) -> Vec<Operation> {
    let Ok(r) =
        c.op.clone()
            .list_operations(pb::ListOperationsRequest { limit: 1000 })
            .await
    else {
        return Vec::new();
    };
    r.into_inner()
        .operations_json
        .iter()
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect()
}

async fn app_sites(c: &Client) -> BTreeMap<String, String> {
    let Ok(r) = c.op.clone().list_apps(pb::ListAppsRequest {}).await else {
        return BTreeMap::new();
    };
    r.into_inner()
        .apps
        .into_iter()
        .map(|a| (a.id, a.active_site))
        .collect()
}

/// Run `scenario` in a fresh lab under `dir` (kept for its logs).
pub async fn run(
    scenario: &Scenario,
    dir: &Path,
    topology_text: &str,
    progress: bool,
) -> anyhow::Result<RunResult> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let replay = dir.join("scenario.toml");
    std::fs::write(&replay, scenario.to_toml())?;
    let log = RunnerLog::create(dir, &scenario.name, progress)
        .with_context(|| format!("creating the runner's log in {}", dir.display()))?;
    let mut signals = StopSignals::new().context("listening for SIGTERM, SIGINT and SIGHUP")?;
    let interrupted = |sig: &str, log: &RunnerLog| {
        let why = format!("interrupted by {sig} while {:?}", log.phase());
        log.say(why.clone());
        anyhow::anyhow!("{why}; see {}", log.path().display())
    };
    log.say("starting the lab");
    let t_setup = Instant::now();
    // Dropping an unfinished start stops what it started (processes by PID,
    // namespaces).
    let lab_dir = dir.join("lab");
    let mut lab = tokio::select! {
        lab = Lab::start(&lab_dir, topology_text) => lab.map_err(|e| {
            log.say(format!("the lab did not start: {e:#}"));
            e
        })?,
        sig = signals.recv() => return Err(interrupted(sig, &log)),
    };
    log.say(format!(
        "lab up in {:.1} s: {} processes in {} namespaces",
        t_setup.elapsed().as_secs_f64(),
        lab.procs.len(),
        lab.topo.sites.len()
    ));
    let say = |m: String| log.say(m);
    let result = tokio::select! {
        r = drive(scenario, &mut lab, dir, &replay, &say) => r,
        sig = signals.recv() => Err(interrupted(sig, &log)),
    };
    if let Err(e) = &result {
        log.say(format!("the run failed: {e:#}"));
    }
    log.say("stopping the lab");
    let stopped = lab.stop();
    let r = result?;
    stopped?;
    log.say("done");
    Ok(r)
}

async fn drive(
    scenario: &Scenario,
    lab: &mut Lab,
    dir: &Path,
    replay: &Path,
    say: &dyn Fn(String),
) -> anyhow::Result<RunResult> {
    say("starting the workload".into());
    let c = lab.client().await?;
    let site_before = app_sites(&c).await;
    let ops_before: BTreeSet<u64> = operations(&c).await.iter().map(|o| o.id.0).collect();
    // The workload: the chosen (default: the tier-1) app's first volume, at its primary.
    let with_volumes = || lab.topo.apps.iter().filter(|a| !a.volumes.is_empty());
    let app = match &scenario.workload.app {
        Some(id) => with_volumes().find(|a| a.id.as_str() == id).with_context(|| {
            format!(
                "workload.app = {id:?}: no app with volumes of that id in the lab topology (apps with volumes: {})",
                with_volumes().map(|a| a.id.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?,
        None => with_volumes()
            .min_by_key(|a| (a.tier, a.id.clone()))
            .context("no app with volumes in the lab topology")?,
    }
    .clone();
    let vol = app.volumes[0].clone();
    let sync = matches!(vol.replication, topology::Replication::Sync);
    let agents_dir = lab.dir.clone();
    let socket_of = |vs: &[pb::VolumeStatus], primary: bool| -> Option<PathBuf> {
        let host = vs
            .iter()
            .find(|v| v.id == vol.id.as_str())?
            .replicas
            .iter()
            .find(|r| (r.role == "primary") == primary && !r.host.is_empty())?
            .host
            .clone();
        Some(agents_dir.join(format!("agent-{host}/sockets/{}.sock", app.id)))
    };
    let vs = lab.volumes().await.context("listing the volumes")?;
    let sock = socket_of(&vs, true).context("no host serves the workload's primary")?;
    let blocks = (vol.size.bytes().min(64 << 20)) / 4096;
    let client = crate::demo::storage::connect(&sock, vol.id.as_str()).await?;
    let writers = Writers::start(client, scenario.workload.writers, blocks);

    // The sampler: every volume, every 200 ms, against the epoch invariants.
    let checker = Arc::new(Mutex::new(Checker::default()));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let sampler = {
        let (addrs, checker, dialer) = (lab.addrs.clone(), checker.clone(), lab.dialer.clone());
        tokio::spawn(async move {
            loop {
                // Every node's view: a stale node must not show two primaries either.
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
                    _ = stop_rx.changed() => return,
                }
            }
        })
    };

    let t0 = Instant::now();
    let mut steps = Vec::new();
    let mut resets: Vec<(u64, String)> = Vec::new();
    for step in &scenario.faults {
        let at = Duration::from_secs_f64(step.at_s);
        if let Some(wait) = at.checked_sub(t0.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        // Where the audit log is before the fault (its entries are numbered from 1
        // without gaps): a killed agent's VMs end here.
        let head = match lab.client().await {
            Ok(c) => {
                c.op.clone()
                    .status(pb::StatusRequest {})
                    .await
                    .map_or(0, |s| s.into_inner().audit_entries)
            }
            Err(_) => 0,
        };
        say(format!(
            "{:>5.1} s  applying: {}",
            t0.elapsed().as_secs_f64(),
            step.fault.describe()
        ));
        let r = lab.apply(&step.fault).await;
        say(format!(
            "{:>5.1} s  {}{}",
            t0.elapsed().as_secs_f64(),
            step.fault.describe(),
            r.as_ref()
                .err()
                .map(|e| format!(": FAILED {e:#}"))
                .unwrap_or_default()
        ));
        if let Ok(killed) = &r {
            resets.extend(killed.iter().map(|h| (head, h.clone())));
        }
        steps.push(StepResult {
            at_s: step.at_s,
            fault: step.fault.describe(),
            done_s: t0.elapsed().as_secs_f64(),
            error: r.err().map(|e| format!("{e:#}")),
        });
    }
    if let Some(wait) = Duration::from_secs_f64(scenario.duration_s).checked_sub(t0.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    let max_write_stall_ms = writers.max_wait_ms();
    let write_errors = writers
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (writes, acked) = writers.stop();
    say(format!(
        "{:>5.1} s  schedule over: {writes} writes acknowledged over {} blocks (longest wait {max_write_stall_ms} ms){}; healing everything",
        t0.elapsed().as_secs_f64(),
        acked.len(),
        write_errors
            .first()
            .map(|e| format!(", writers ended: {e}"))
            .unwrap_or_default()
    ));
    let restarted = lab.heal_everything()?;
    if !restarted.is_empty() {
        say(format!("restarted {}", restarted.join(", ")));
    }

    // Settle: a leader, every host up, every replica up to date, no operation running.
    say("settling: waiting for a leader, every host up, every replica up to date".into());
    let healed_at = Instant::now();
    let settle = Duration::from_secs_f64(scenario.settle_s);
    let mut heal_s = None;
    let mut not_healed = loop {
        let not_healed = healing(lab).await;
        if not_healed.is_empty() {
            heal_s = Some(healed_at.elapsed().as_secs_f64());
            break not_healed;
        }
        if healed_at.elapsed() > settle {
            break not_healed;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = stop_tx.send(true);
    let _ = sampler.await;
    say(match heal_s {
        Some(s) => format!("healed {s:.1} s after the schedule"),
        None => format!(
            "not healed after {} s: {}",
            settle.as_secs(),
            not_healed.join("; ")
        ),
    });

    // The end state.
    say("checking the end state (the workload's writes, the audit log, operations)".into());
    let c = lab.client().await?;
    let vs = lab.volumes().await.unwrap_or_default();
    let writes_missing = match socket_of(&vs, true) {
        Some(sock) => match crate::demo::storage::connect(&sock, vol.id.as_str()).await {
            Ok(r) => crate::demo::storage::missing(&r, &acked).await?,
            Err(e) => {
                not_healed.push(format!(
                    "cannot read the workload back from its primary: {e:#}"
                ));
                0
            }
        },
        None => {
            not_healed.push(format!("no host serves {}'s primary at the end", vol.id));
            0
        }
    };
    let log = audit(&c).await?;
    let running = {
        let mut l = running_ledger(vm_reports(&log)?, &resets);
        for a in &lab.topo.apps {
            for vm in &a.vms {
                l.entry(vm.id.to_string()).or_default();
            }
        }
        l
    };
    let site_after = app_sites(&c).await;
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
    let ops: Vec<Operation> = operations(&c)
        .await
        .into_iter()
        .filter(|o| !ops_before.contains(&o.id.0))
        .collect();
    let mut automatic_ops = Vec::new();
    let mut rto_missed = Vec::new();
    let mut ops_unfinished = Vec::new();
    let mut lines = Vec::new();
    for o in &ops {
        let rec = crate::op_cmd::record(o);
        lines.push(format!(
            "{} {} ({}): {}",
            o.id, rec.kind, rec.note, rec.status
        ));
        // Automatic moves to another site (a fenced host's restart in place is not one).
        let moves = rec.apps.iter().any(|a| a.from != a.to);
        if o.started_by == orchestrator::detector::SYSTEM_ACTOR && moves {
            automatic_ops.push(format!("{} {}", o.id, rec.note));
        }
        if o.status == OpStatus::Running {
            ops_unfinished.push(format!("{} {}", o.id, rec.note));
        }
        for a in &rec.apps {
            if a.rto_met == Some(false) {
                rto_missed.push(format!(
                    "{}: {} healthy after {:.1} s, target {} s",
                    o.id,
                    a.app,
                    a.rto_s.unwrap_or(0.0),
                    a.rto_target_s
                ));
            }
        }
    }
    let workload_fell_behind = checker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .behind_seen
        .contains(vol.id.as_str());
    let end = EndState {
        writes_acknowledged: writes,
        writes_missing,
        sync,
        workload_volume: vol.id.to_string(),
        workload_moved: site_before.get(app.id.as_str()) != site_after.get(app.id.as_str()),
        workload_fell_behind,
        max_write_stall_ms,
        running,
        vm_site,
        host_site,
        site_before,
        site_after,
        automatic_ops,
        rto_missed,
        ops_unfinished,
        not_healed,
    };
    let (mut violations, samples) = {
        let c = checker.lock().unwrap_or_else(|e| e.into_inner());
        (c.violations.clone(), c.samples)
    };
    violations.extend(check_end(&end, &scenario.expect));
    Ok(RunResult {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        passed: violations.is_empty(),
        violations,
        steps,
        writes_acknowledged: end.writes_acknowledged,
        writes_missing,
        max_write_stall_ms,
        samples,
        operations: lines,
        heal_s,
        replay: replay.to_path_buf(),
        dir: dir.to_path_buf(),
    })
}

/// The runner plays the operator of apps whose policy is `manual-approval`: it
/// approves what an operation waits for, as soon as it waits (recorded with this
/// actor in the audit log; the app's RTO includes the wait).
async fn approve_waiting(dialer: &orchestrator::client::Dialer, addrs: &[String]) {
    let Ok(c) = dialer.connect(addrs).await else {
        return;
    };
    for o in operations(&c).await {
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

/// What is not healed yet (empty: the cluster converged).
async fn healing(lab: &Lab) -> Vec<String> {
    let mut out = Vec::new();
    // One client of the leader for every question below.
    let Ok(c) = lab.client().await else {
        return vec!["no leader".into()];
    };
    match c.op.clone().list_hosts(pb::ListHostsRequest {}).await {
        Ok(h) => {
            for h in h.into_inner().hosts {
                if h.state != "up" {
                    out.push(format!("host {} is {}", h.id, h.state));
                }
            }
        }
        Err(e) => out.push(format!("hosts: {}", e.message())),
    }
    match super::volumes(&c).await {
        Some(vs) => {
            for v in vs {
                for r in v.replicas {
                    if r.data != "up-to-date" {
                        out.push(format!("{} at {} is {}", v.id, r.site, r.data));
                    }
                }
            }
        }
        None => out.push("volumes: no answer".into()),
    }
    for o in operations(&c).await {
        if o.status == OpStatus::Running {
            out.push(format!("{} still running", o.id));
        }
    }
    // Every VM of the topology runs again.
    match super::running_vms(&c).await {
        Ok(running) => {
            for a in &lab.topo.apps {
                for vm in &a.vms {
                    if !running.contains(vm.id.as_str()) {
                        out.push(format!("VM {} is not running", vm.id));
                    }
                }
            }
        }
        Err(e) => out.push(format!("VMs: {}", e.message())),
    }
    out
}
