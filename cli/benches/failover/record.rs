//! Following the automatic failover of north to its end, and where its time went:
//! per wave, when promotions, VM starts and health gates began and ended; the Raft
//! entries it committed; what the final record costs to copy and serialize; and what
//! a user would check afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lab::states::{self, AppHealth, HostState, SiteState};
use orchestrator::client::Client;
use orchestrator::pb;
use orchestrator::state::{OpStatus, Operation, Step, StepKind};

use crate::{FIRST_TARGET_MS, LAST_TARGET_MS, now_ms};

/// (start, end) in ms since the epoch of every finished step of `kind`.
fn spans(op: &Operation, kind: StepKind) -> Vec<(u64, u64)> {
    op.steps
        .iter()
        .filter(|s| s.kind == kind)
        .filter_map(|s: &Step| s.ended_ms.map(|e| (s.started_ms, e)))
        .collect()
}

/// One size's measurements; times are ms after T0 unless named a duration.
#[derive(Debug, Default)]
pub struct Row {
    pub apps: usize,
    /// Real QEMU guests rather than test-driver domains.
    pub guests: bool,
    pub serve_span_ms: u64,
    pub leader_killed: bool,
    pub site_down_ms: i64,
    pub plan_begun_ms: i64,
    pub first_step_ms: i64,
    pub promote_sum_ms: u64,
    pub promote_max_ms: u64,
    pub start_span_ms: u64,
    pub health_span_ms: u64,
    pub health_max_ms: u64,
    pub first_healthy_ms: i64,
    pub last_healthy_ms: i64,
    pub ok: bool,
    pub why: Vec<String>,
}

impl Row {
    pub fn target_met(&self) -> bool {
        self.ok
            && self.first_healthy_ms != NONE
            && self.first_healthy_ms as u64 <= FIRST_TARGET_MS
            && self.last_healthy_ms != NONE
            && self.last_healthy_ms as u64 <= LAST_TARGET_MS
    }
}

/// "Did not happen" for a time after T0 (a time may be negative: a loss estimate).
pub const NONE: i64 = i64::MIN;

pub fn s(ms: i64) -> String {
    if ms == NONE {
        return "-".into();
    }
    format!("{:.2} s", ms as f64 / 1000.0)
}

pub fn su(ms: u64) -> String {
    s(ms as i64)
}

/// The automatic failover as the bench followed it.
pub struct Followed {
    pub record: Option<Operation>,
    /// When the bench first saw the operation and saw it ended (ms after T0).
    pub seen_ms: i64,
    pub seen_done_ms: i64,
    /// The bench's reads of the running operation: each encodes all of it on the
    /// answering node under the state's read lock, holding off applying entries.
    pub reads: u32,
    pub read_time: Duration,
}

/// Follow the automatic failover of north until it ends (or `deadline` after T0).
pub async fn follow(addrs: &[String], n: usize, t0: u64, deadline: Duration) -> Followed {
    let t0_i = Instant::now();
    let since_t0 = || now_ms() as i64 - t0 as i64;
    let mut f = Followed {
        record: None,
        seen_ms: NONE,
        seen_done_ms: NONE,
        reads: 0,
        read_time: Duration::ZERO,
    };
    let mut op_id = None;
    while t0_i.elapsed() < deadline {
        tokio::time::sleep(poll_interval(n)).await;
        let Some(c) = connect(addrs).await else {
            continue;
        };
        let mut op = c.op.clone();
        let Some(id) = op_id else {
            if let Some(o) = lab::api::site_lost_failover(&c, "north").await {
                op_id = Some(o.id.0);
                f.seen_ms = since_t0();
            }
            continue;
        };
        let t = Instant::now();
        let Ok(r) = op.get_operation(pb::GetOperationRequest { op: id }).await else {
            continue;
        };
        f.reads += 1;
        f.read_time += t.elapsed();
        let o: Operation = r
            .into_inner()
            .operation
            .map(orchestrator::wire::operation_from_wire)
            .expect("the reply carries the operation")
            .expect("the operation from the cluster decodes");
        if o.status != OpStatus::Running {
            f.seen_done_ms = since_t0();
            f.record = Some(o);
            break;
        }
    }
    f
}

/// Fill `row` from the record and print where the time went.
pub fn breakdown(
    row: &mut Row,
    op: &Operation,
    f: &Followed,
    before: &pb::StatusReply,
    after: &pb::StatusReply,
    t0: u64,
) {
    let n = row.apps;
    let rel = |ms: u64| ms as i64 - t0 as i64;
    if op.status != OpStatus::Succeeded {
        row.why
            .push(format!("op-{} ended {:?}", op.id.0, op.status));
    }
    row.site_down_ms = after
        .sites
        .iter()
        .find(|s| s.id == "north" && states::site_state(s) == Some(SiteState::Down))
        .map_or(NONE, |s| rel(s.since_ms));
    let hosts_down: Vec<String> = after
        .hosts
        .iter()
        .filter(|h| h.site == "north" && states::host_status_state(h) == Some(HostState::Down))
        .map(|h| s(rel(h.since_ms)))
        .collect();
    row.plan_begun_ms = rel(op.started_ms);
    row.first_step_ms = op
        .steps
        .iter()
        .map(|s| rel(s.started_ms))
        .min()
        .unwrap_or(NONE);
    let promote = spans(op, StepKind::PromoteAndMove);
    row.promote_sum_ms = promote.iter().map(|(a, b)| b - a).sum();
    row.promote_max_ms = promote.iter().map(|(a, b)| b - a).max().unwrap_or(0);
    let span_of = |v: &[(u64, u64)]| {
        let lo = v.iter().map(|x| x.0).min().unwrap_or(0);
        let hi = v.iter().map(|x| x.1).max().unwrap_or(0);
        hi.saturating_sub(lo)
    };
    row.start_span_ms = span_of(&spans(op, StepKind::StartVms));
    row.serve_span_ms = span_of(&spans(op, StepKind::ServeVolumes));
    let health = spans(op, StepKind::HealthGate);
    row.health_span_ms = span_of(&health);
    row.health_max_ms = health.iter().map(|(a, b)| b - a).max().unwrap_or(0);
    row.first_healthy_ms = health.iter().map(|x| rel(x.1)).min().unwrap_or(NONE);
    row.last_healthy_ms = health.iter().map(|x| rel(x.1)).max().unwrap_or(NONE);
    if health.len() != n {
        row.why
            .push(format!("{} of {n} health gates passed", health.len()));
    }

    let plan = op.plan.as_deref();
    println!(
        "op-{} {:?}: trigger \"{}\", {} step(s), {} wave(s), {} skipped{}",
        op.id.0,
        op.status,
        op.note,
        op.steps.len(),
        plan.map_or(0, |p| p.waves.len()),
        plan.map_or(0, |p| p.skipped.len()),
        plan.and_then(|p| p.skipped.first())
            .map_or(String::new(), |s| format!(
                " (first: {}: {})",
                s.app, s.reason
            ))
    );
    println!(
        "  north hosts down at {}; site north down at {}; loss estimated by the leader at {} (lost_ms; T0 is the real kill)",
        hosts_down.join(", "),
        s(row.site_down_ms),
        op.lost_ms.map_or("-".into(), |l| s(rel(l)))
    );
    println!(
        "  plan begun (BeginPlan committed) at {}; bench saw the op at {}; first step at {}; op ended at {}; bench saw it ended at {}",
        s(row.plan_begun_ms),
        s(f.seen_ms),
        s(row.first_step_ms),
        op.ended_ms.map_or("-".into(), |e| s(rel(e))),
        s(f.seen_done_ms)
    );
    // Per wave: when each kind of step began and was done, and the longest one.
    for (k, w) in plan.map_or(&[][..], |p| &p.waves).iter().enumerate() {
        let apps: BTreeSet<&str> = w.apps.iter().map(|m| m.app.as_str()).collect();
        let of = |kind: StepKind| -> String {
            let v: Vec<(u64, u64)> = op
                .steps
                .iter()
                .filter(|st| st.kind == kind && st.app().is_some_and(|a| apps.contains(a.as_str())))
                .filter_map(|st| st.ended_ms.map(|e| (st.started_ms, e)))
                .collect();
            let first = v.iter().map(|x| rel(x.0)).min().unwrap_or(NONE);
            let last = v.iter().map(|x| rel(x.1)).max().unwrap_or(NONE);
            let longest = v.iter().map(|(a, b)| b - a).max().unwrap_or_default();
            format!("{} → {} (longest {})", s(first), s(last), su(longest))
        };
        println!(
            "  wave {} (tier {}, {} apps): promote {}; serve volumes {}; start VMs {}; health gates {}",
            k + 1,
            w.apps.first().map_or(0, |m| m.tier),
            w.apps.len(),
            of(StepKind::PromoteAndMove),
            of(StepKind::ServeVolumes),
            of(StepKind::StartVms),
            of(StepKind::HealthGate),
        );
    }
    failed_steps(op);
    let entries = after.commit_index.saturating_sub(before.commit_index);
    let ran_ms = op
        .ended_ms
        .unwrap_or(op.started_ms)
        .saturating_sub(op.started_ms);
    println!(
        "  Raft: {entries} entries committed from T0 until the op ended ({:.1} per app; {:.0}/s while the op ran); leader now {}",
        entries as f64 / n as f64,
        entries as f64 * 1000.0 / ran_ms.max(1) as f64,
        after.leader
    );
    record_cost(op);
    if f.reads > 0 {
        println!(
            "  the bench read the op {} times, {:.1} ms per read on average",
            f.reads,
            f.read_time.as_secs_f64() * 1000.0 / f64::from(f.reads)
        );
    }
}

/// Failed steps, grouped by their kind and the reason they failed.
fn failed_steps(op: &Operation) {
    let mut failures: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for st in &op.steps {
        if let Some(e) = st.failure() {
            let f = failures
                .entry(format!("{}: {}", st.kind.label(), e.reason.name()))
                .or_default();
            f.0 += 1;
            if f.1.is_empty() {
                f.1 = format!("{}: {e}", st.app().map_or(String::new(), |a| a.to_string()));
            }
        }
    }
    for (what, (count, first)) in &failures {
        println!("  failed steps: {count} x {what} (first: {first})");
    }
}

/// What the final record costs: the state machine copies the operation row before
/// each command that changes it (the undo of a rejected command) and re-serializes
/// it once per applied batch (its persisted row).
fn record_cost(op: &Operation) {
    let per_clone_ms = |o: &Operation| {
        let t = Instant::now();
        for _ in 0..20 {
            std::hint::black_box(o.clone());
        }
        t.elapsed().as_secs_f64() * 1000.0 / 20.0
    };
    let mut plan_only = op.clone();
    plan_only.steps.clear();
    let t = Instant::now();
    let json = serde_json::to_vec(op).unwrap();
    let ser_ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "  op record at its end: {} KiB as JSON, {} steps; one clone {:.2} ms ({:.2} ms without its steps), one serialization {ser_ms:.2} ms (in this process)",
        json.len() / 1024,
        op.steps.len(),
        per_clone_ms(op),
        per_clone_ms(&plan_only)
    );
}

/// What a user would check: every app active and running at south, every VM running
/// there. Problems go to `row.why`.
pub async fn check_south(addrs: &[String], host_site: &BTreeMap<String, String>, row: &mut Row) {
    let n = row.apps;
    let c = connect(addrs).await.expect("a surviving node");
    let apps = c.op.clone().list_apps(pb::ListAppsRequest {}).await;
    let apps = apps.unwrap().into_inner().apps;
    let wrong: Vec<String> = apps
        .iter()
        .filter(|a| a.active_site != "south" || states::app_health(a) != Some(AppHealth::Running))
        .map(|a| format!("{} {} at {}", a.id, a.summary, a.active_site))
        .collect();
    if apps.len() != n || !wrong.is_empty() {
        row.why.push(format!(
            "{} of {n} apps not running at south (first: {})",
            wrong.len() + n.saturating_sub(apps.len()),
            wrong.first().cloned().unwrap_or_default()
        ));
    }
    let running = lab::api::running_vms(&c).await.unwrap_or_default();
    let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
    for h in running.values() {
        *per_host.entry(h.as_str()).or_default() += 1;
    }
    let per_host: Vec<String> = per_host.iter().map(|(h, k)| format!("{h} {k}")).collect();
    println!(
        "  VMs reported running per host afterwards (the cluster's view: a dead host's last report stays): {}",
        per_host.join(", ")
    );
    let at_south = running
        .values()
        .filter(|h| host_site.get(*h).is_some_and(|s| s == "south"))
        .count();
    if at_south != n {
        row.why
            .push(format!("{at_south} of {n} VMs reported running at south"));
    }
}

/// The status of the node at `addr`.
pub async fn status(addr: &str) -> Option<pb::StatusReply> {
    lab::api::status(&Client::connect_to(addr).await.ok()?).await
}

async fn connect(addrs: &[String]) -> Option<Client> {
    crate::setup::connect(addrs).await
}

/// How often the bench reads the operation while it runs. Each read serializes the
/// whole operation on the answering node (685 KiB of JSON at 1,000 apps) under the
/// state's read lock, so large runs read less often; the timings come from the record,
/// only "bench saw it ended" depends on this.
fn poll_interval(apps: usize) -> Duration {
    if apps > 100 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(200)
    }
}
