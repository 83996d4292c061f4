//! Where a failover's time went: CPU and state-machine apply time of the survivors, the
//! operation followed as it runs, its per-wave breakdown, its failed steps and what
//! its record costs to copy and serialize.
//!
//! Never: change the cluster (it only reads).

use super::*;

pub(crate) type ApplyBefore = (&'static str, String, Option<(f64, f64)>);

/// What the survivors have spent: CPU per process, state-machine apply time per node.
pub(crate) struct Meter {
    pub(crate) cpu: Vec<(String, u32, f64)>,
    /// (node, its /metrics address, apply seconds (sum, count) before).
    pub(crate) apply: Vec<ApplyBefore>,
}

impl Meter {
    pub(crate) fn start(lab: &Lab) -> Meter {
        let mut procs: Vec<(String, u32)> = SURVIVORS
            .iter()
            .map(|s| (s.to_string(), lab.nodes[s].proc_.pid().unwrap()))
            .collect();
        procs.extend(
            ["south-h1", "south-h2"]
                .iter()
                .map(|h| (format!("agent {h}"), lab.agents[h].pid().unwrap())),
        );
        Meter {
            cpu: procs
                .into_iter()
                .map(|(name, pid)| (name, pid, cpu_secs(pid)))
                .collect(),
            apply: SURVIVORS
                .iter()
                .map(|s| {
                    let http = lab.nodes[s].http.clone();
                    let a = apply_seconds(&http);
                    (*s, http, a)
                })
                .collect(),
        }
    }

    pub(crate) fn report(&self, wall: Duration) {
        let cpu: Vec<String> = self
            .cpu
            .iter()
            .map(|(name, pid, before)| format!("{name} {:.2} s", cpu_secs(*pid) - before))
            .collect();
        println!(
            "  CPU used from T0 until the bench saw the end ({:.1} s wall, 2 cores): {}",
            wall.as_secs_f64(),
            cpu.join(", ")
        );
        for (name, http, before) in &self.apply {
            if let (Some(a), Some(b)) = (apply_seconds(http), before) {
                println!(
                    "  {name}: applying committed entries took {:.2} s in {:.0} batches",
                    a.0 - b.0,
                    a.1 - b.1
                );
            }
        }
    }
}

/// The automatic failover as the bench followed it.
pub(crate) struct Followed {
    pub(crate) record: Option<Operation>,
    /// When the bench first saw the operation and saw it ended (ms after T0).
    pub(crate) seen_ms: i64,
    pub(crate) seen_done_ms: i64,
    /// The bench's reads of the running operation: each serializes all of it on the
    /// answering node under the state's read lock, holding off applying entries.
    pub(crate) reads: u32,
    pub(crate) read_time: Duration,
}

/// Follow the automatic failover of north until it ends (or `deadline` after T0).
pub(crate) async fn follow(addrs: &[String], n: usize, t0: u64, deadline: Duration) -> Followed {
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
            let Ok(r) = op
                .list_operations(pb::ListOperationsRequest { limit: 5 })
                .await
            else {
                continue;
            };
            let found = r
                .into_inner()
                .operations_json
                .iter()
                .filter_map(|j| serde_json::from_str::<Operation>(j).ok())
                .find(|o| o.note == "site north lost");
            if let Some(o) = found {
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
        let o: Operation = serde_json::from_str(&r.into_inner().operation_json).unwrap();
        if o.status != OpStatus::Running {
            f.seen_done_ms = since_t0();
            f.record = Some(o);
            break;
        }
    }
    f
}

/// Fill `row` from the record and print where the time went.
pub(crate) fn breakdown(
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
        .find(|s| s.id == "north" && s.state == "down")
        .map_or(NONE, |s| rel(s.since_ms));
    let hosts_down: Vec<String> = after
        .hosts
        .iter()
        .filter(|h| h.site == "north" && h.state == "down")
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
pub(crate) fn failed_steps(op: &Operation) {
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
pub(crate) fn record_cost(op: &Operation) {
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
