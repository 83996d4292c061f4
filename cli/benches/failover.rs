//! The failover benchmark: **site loss → last app healthy** with real processes, for
//! 1, 10, 100 and 1,000 apps, and where the time goes.
//!
//! Per size, in a fresh directory under /var/tmp with fresh processes: three
//! `metrodr orchestrator` nodes (north, south, witness), an agent per host on libvirt's
//! test driver (`test:///private`: each agent its own fake hypervisor, living inside the
//! agent process), a generated topology (2 hosts per production site; N apps preferred
//! at north over 3 tiers with a `depends_on` chain per 10 apps, one 1-vCPU VM each,
//! `failover = "auto"`). Every VM is defined and started at north through the VmAction
//! API, then the north orchestrator and both north agents are SIGKILLed at T0 (their
//! test-driver VMs die with them). The bench follows the automatic failover the leader
//! begins and reads its record: when north was declared down, when the plan began, how
//! long promotions, VM starts and health gates took, and when the last app was healthy
//! (its health gate ended), all against T0 on the same wall clock. Where the time went:
//! per wave, when its promotions, VM starts and health gates began and ended; the Raft
//! entries the failover committed; the time the surviving nodes spent applying them
//! (their `metrodr_apply_seconds`); the CPU each surviving process used; and what the
//! final operation record costs to copy and serialize (the state machine does both as
//! the operation grows).
//!
//! The apps have no volumes: their VMs boot a kernel directly (`boot = "kernel"`; the
//! test driver never reads the file), so nothing needs replication processes and the
//! numbers are the control plane's: detection, Raft commits, planning, agent commands.
//! `boot_estimate_s = 1` because a test-driver domain is "running" as soon as it starts.
//!
//! **Real guests** (`BENCH_QEMU_GUESTS`, default 2,4): the same story with QEMU (TCG)
//! probe guests on this machine's libvirtd (`qemu:///system`; all four agents share
//! it, each domain marked with its host): the topology says `volumes = "agents"`, so
//! each app's 16 MiB disk is served by the agent of its VM's host and replicated
//! synchronously to a south agent; each guest boots a kernel and writes acknowledged
//! records. T0 also SIGKILLs the guests' QEMU processes (they die with their site). A
//! guest is healthy when its health gate passed at south: its serial console says
//! `metrodr-probe: ready` and its web service (port 80, through the agent's user-mode
//! forward) completed a TCP handshake; and the bench checks that it found every record it had
//! acknowledged at north on the promoted disk. The guests are independent tier-1 apps
//! (1 vCPU, 256 MiB each). Needs libvirtd
//! (`scripts/start-libvirtd.sh`) and the probe guest image (built at first use);
//! without them those rows FAIL loudly. `BENCH_QEMU_GUESTS=` skips them.
//!
//! Run with `cargo bench -p metrodr --bench failover`; `BENCH_SIZES=1,10` selects the
//! sizes (default 1,10,100,1000). Targets: the first app healthy within 10 s of the
//! loss, every app within 15 s. Exits non-zero when a failover fails or misses a target.
//! Every process it starts is stopped by PID when its size is done.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orchestrator::client::Client;
use orchestrator::pb;
use orchestrator::state::{OpStatus, Operation, Step, StepKind};

#[path = "failover/measure.rs"]
mod measure;
#[path = "failover/procs.rs"]
mod procs;

use measure::*;
use procs::*;

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
struct Row {
    apps: usize,
    /// Real QEMU guests rather than test-driver domains.
    guests: bool,
    serve_span_ms: u64,
    leader_killed: bool,
    site_down_ms: i64,
    plan_begun_ms: i64,
    first_step_ms: i64,
    promote_sum_ms: u64,
    promote_max_ms: u64,
    start_span_ms: u64,
    health_span_ms: u64,
    health_max_ms: u64,
    first_healthy_ms: i64,
    last_healthy_ms: i64,
    ok: bool,
    why: Vec<String>,
}

impl Row {
    fn target_met(&self) -> bool {
        self.ok
            && self.first_healthy_ms != NONE
            && self.first_healthy_ms as u64 <= FIRST_TARGET_MS
            && self.last_healthy_ms != NONE
            && self.last_healthy_ms as u64 <= LAST_TARGET_MS
    }
}

/// "Did not happen" for a time after T0 (a time may be negative: a loss estimate).
const NONE: i64 = i64::MIN;

fn s(ms: i64) -> String {
    if ms == NONE {
        return "-".into();
    }
    format!("{:.2} s", ms as f64 / 1000.0)
}

fn su(ms: u64) -> String {
    s(ms as i64)
}

/// One size's running system: three orchestrators and four agents in a fresh directory.
/// Dropping it stops the processes (agents first), then removes the directory.
struct Lab {
    agents: BTreeMap<&'static str, Proc>,
    nodes: BTreeMap<&'static str, NodeProc>,
    tmp: tempfile::TempDir,
    /// Real guests: their domains (destroyed and undefined by name when dropped) and
    /// what each acknowledged at north before T0.
    guests: Vec<String>,
    acked: BTreeMap<String, u64>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for vm in &self.guests {
            chaos::guest::remove_domain(vm);
        }
    }
}

fn console_log(dir: &Path, host: &str, vm: &str) -> chaos::guest::ConsoleLog {
    let path = dir.join(format!("agent-{host}/consoles/{vm}.log"));
    chaos::guest::parse_console(&std::fs::read_to_string(path).unwrap_or_default())
}

const SURVIVORS: [&str; 2] = ["orch-south", "orch-witness"];

impl Lab {
    /// Validate the topology, start the nodes, form the cluster, start the agents and
    /// define + start every VM at north; returns once all of them run.
    async fn start(n: usize, guest: Option<&chaos::guest::GuestImage>) -> Lab {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("metrodr-failover-bench-{n}-"))
            .tempdir_in("/var/tmp")
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let what = if guest.is_some() {
            "real QEMU guest(s)"
        } else {
            "app(s)"
        };
        println!("\n== {n} {what}: {}", dir.display());
        let topo = dir.join("topology.toml").display().to_string();
        std::fs::write(&topo, topology(n, guest)).unwrap();
        let o = cli(&["topology", "validate", &topo]);
        assert!(o.status.success(), "the generated topology: {}", text(&o));

        let setup = Instant::now();
        let nodes: BTreeMap<&str, NodeProc> =
            NODES.iter().map(|n| (*n, start_node(&dir, n))).collect();
        let mut init = vec![
            "cluster".to_string(),
            "init".into(),
            "--topology".into(),
            topo,
        ];
        for (name, node) in &nodes {
            init.push("--addr".into());
            init.push(format!("{name}={}", node.grpc));
        }
        let o = cli(&init.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "cluster init: {}", text(&o));
        let cluster: Vec<String> = nodes.values().map(|n| n.grpc.clone()).collect();
        let agents: BTreeMap<&str, Proc> = HOSTS
            .iter()
            .map(|h| {
                (
                    *h,
                    start_agent(&dir, h, &cluster.join(","), guest.is_some()),
                )
            })
            .collect();
        let lab = Lab {
            agents,
            nodes,
            tmp,
            guests: if guest.is_some() {
                (0..n).map(vm_id).collect()
            } else {
                Vec::new()
            },
            acked: BTreeMap::new(),
        };
        let c = Client::connect_to(&lab.nodes["orch-south"].grpc)
            .await
            .unwrap();
        wait_for(Duration::from_secs(30), "every host up", || async {
            let mut op = c.op.clone();
            let h = op.list_hosts(pb::ListHostsRequest {}).await.ok()?;
            let h = h.into_inner().hosts;
            (h.len() == HOSTS.len() && h.iter().all(|h| h.state == "up")).then_some(())
        })
        .await;
        if guest.is_some() {
            // The agents serve every group; the initial syncs make south promotable.
            wait_for(
                Duration::from_secs(120),
                "every replica up to date",
                || async {
                    let mut op = c.op.clone();
                    let v = op
                        .list_volumes(pb::ListVolumesRequest { app: String::new() })
                        .await
                        .ok()?
                        .into_inner()
                        .volumes;
                    (v.len() == n
                        && v.iter()
                            .all(|v| v.replicas.iter().all(|r| r.data == "up-to-date")))
                    .then_some(())
                },
            )
            .await;
        }
        let cluster_ready = setup.elapsed();
        start_vms(&c.addr, n).await;
        let commands_done = setup.elapsed();
        let within = Duration::from_secs(60 + n as u64 / 10);
        wait_for(within, "every VM running at north", || async {
            let r = running_vms(&c).await?;
            (r.len() == n && r.values().all(|h| h.starts_with("north-"))).then_some(())
        })
        .await;
        if guest.is_some() {
            let placed = running_vms(&c).await.unwrap_or_default();
            let dir = lab.tmp.path().to_path_buf();
            wait_for(
                Duration::from_secs(120),
                "every guest writing at north",
                || {
                    let (placed, dir) = (&placed, &dir);
                    async move {
                        placed
                            .iter()
                            .all(|(vm, host)| {
                                let l = console_log(dir, host, vm);
                                l.ready && l.acks >= 5
                            })
                            .then_some(())
                    }
                },
            )
            .await;
        }
        println!(
            "setup: cluster + agents {:.1} s; define+start {n} VM(s) {:.1} s; all running after {:.1} s",
            cluster_ready.as_secs_f64(),
            (commands_done - cluster_ready).as_secs_f64(),
            setup.elapsed().as_secs_f64()
        );
        lab
    }

    fn survivor_addrs(&self) -> Vec<String> {
        SURVIVORS
            .iter()
            .map(|s| self.nodes[s].grpc.clone())
            .collect()
    }

    /// T0: north's orchestrator and both its agents die at once (SIGKILL all three,
    /// then reap). Returns T0 in ms since the epoch.
    fn kill_north(&mut self) -> u64 {
        // The guests' QEMU processes (all at north) die with their site: SIGKILL by
        // the PIDs libvirt recorded, together with the rest of north. (`virsh destroy`
        // takes ~1.5 s per TCG guest and would still be killing north's guests when
        // their namesakes start at south.)
        let qemus: Vec<i32> = self
            .guests
            .iter()
            .map(|vm| chaos::guest::qemu_pid(vm).unwrap_or_else(|| panic!("no QEMU pid for {vm}")))
            .collect();
        let t0 = now_ms();
        for pid in &qemus {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let north = self.nodes.get_mut("orch-north").unwrap();
        north.proc_.sigkill();
        for h in ["north-h1", "north-h2"] {
            self.agents.get_mut(h).unwrap().sigkill();
        }
        north.proc_.reap();
        for h in ["north-h1", "north-h2"] {
            self.agents.get_mut(h).unwrap().reap();
        }
        for vm in self.guests.clone() {
            let at_north = ["north-h1", "north-h2"]
                .iter()
                .map(|h| console_log(self.tmp.path(), h, &vm).max_ack.unwrap_or(0))
                .max()
                .unwrap_or(0);
            self.acked.insert(vm, at_north);
        }
        t0
    }

    /// Real guests: each booted at south from the promoted disk found every record it
    /// acknowledged at north (the probe guest prints where it resumes).
    async fn check_guests(&self, addrs: &[String], row: &mut Row) {
        if self.guests.is_empty() {
            return;
        }
        let c = connect(addrs).await.expect("a surviving node");
        let placed = running_vms(&c).await.unwrap_or_default();
        let mut lines = Vec::new();
        for vm in &self.guests {
            let acked = self.acked.get(vm).copied().unwrap_or(0);
            let Some(host) = placed.get(vm) else {
                row.why.push(format!("{vm} is not running anywhere"));
                continue;
            };
            let log = console_log(self.tmp.path(), host, vm);
            let resumed = log.resume_after.last().copied().unwrap_or(0);
            lines.push(format!(
                "{vm}: acknowledged {acked} at north, found {resumed} at {host}"
            ));
            if resumed < acked || acked == 0 {
                row.why.push(format!(
                    "{vm}: acknowledged {acked} records at north but found {resumed} at {host}"
                ));
            }
        }
        println!("  guests: {}", lines.join("; "));
    }
}

/// What a user would check: every app active and running at south, every VM running
/// there. Problems go to `row.why`.
async fn check_south(addrs: &[String], row: &mut Row) {
    let n = row.apps;
    let c = connect(addrs).await.expect("a surviving node");
    let apps = c.op.clone().list_apps(pb::ListAppsRequest {}).await;
    let apps = apps.unwrap().into_inner().apps;
    let wrong: Vec<String> = apps
        .iter()
        .filter(|a| a.active_site != "south" || a.health != i32::from(pb::AppHealth::Running))
        .map(|a| format!("{} {} at {}", a.id, a.summary, a.active_site))
        .collect();
    if apps.len() != n || !wrong.is_empty() {
        row.why.push(format!(
            "{} of {n} apps not running at south (first: {})",
            wrong.len() + n.saturating_sub(apps.len()),
            wrong.first().cloned().unwrap_or_default()
        ));
    }
    let running = running_vms(&c).await.unwrap_or_default();
    let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
    for h in running.values() {
        *per_host.entry(h.as_str()).or_default() += 1;
    }
    let per_host: Vec<String> = per_host.iter().map(|(h, k)| format!("{h} {k}")).collect();
    println!(
        "  VMs reported running per host afterwards (the cluster's view: a dead host's last report stays): {}",
        per_host.join(", ")
    );
    let at_south = running.values().filter(|h| h.starts_with("south-")).count();
    if at_south != n {
        row.why
            .push(format!("{at_south} of {n} VMs reported running at south"));
    }
}

async fn run_size(n: usize, guest: Option<&chaos::guest::GuestImage>) -> Row {
    let mut row = Row {
        apps: n,
        site_down_ms: NONE,
        plan_begun_ms: NONE,
        first_step_ms: NONE,
        first_healthy_ms: NONE,
        last_healthy_ms: NONE,
        ..Row::default()
    };
    row.guests = guest.is_some();
    let mut lab = Lab::start(n, guest).await;
    let addrs = lab.survivor_addrs();
    let before = status(&addrs[0]).await.expect("status before the loss");
    row.leader_killed = before.leader == "orch-north";
    let meter = Meter::start(&lab);

    let t0 = lab.kill_north();
    let t0_i = Instant::now();
    println!(
        "T0 = {t0} ms since the epoch: killed orch-north (leader before: {}) and north's agents",
        before.leader
    );
    let deadline = Duration::from_secs(120 + n as u64 / 2);
    let followed = follow(&addrs, n, t0, deadline).await;
    let wall = t0_i.elapsed();
    match (&followed.record, status(&addrs[0]).await) {
        (Some(op), Some(after)) => {
            breakdown(&mut row, op, &followed, &before, &after, t0);
            meter.report(wall);
            check_south(&addrs, &mut row).await;
            lab.check_guests(&addrs, &mut row).await;
        }
        (None, _) => {
            meter.report(wall);
            row.why
                .push(format!("the failover did not end within {deadline:?}"));
        }
        (Some(_), None) => row.why.push("no status from orch-south afterwards".into()),
    }
    row.ok = row.why.is_empty();
    if !row.ok {
        println!("  FAIL: {}", row.why.join("; "));
        println!("  logs kept in {}", lab.tmp.path().display());
        // Stop everything first; then keep the directory for the logs.
        for vm in &lab.guests {
            chaos::guest::remove_domain(vm);
        }
        drop(std::mem::take(&mut lab.agents));
        drop(std::mem::take(&mut lab.nodes));
        lab.guests.clear();
        let keep = tempfile::Builder::new().tempdir().unwrap();
        let tmp = std::mem::replace(&mut lab.tmp, keep);
        let _ = tmp.keep();
        return row;
    }
    // Stop everything of this size (by PID, in the Drop impls) before the next.
    drop(lab);
    row
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1,10,100,1000".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("BENCH_SIZES: {s:?} is not a number"))
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "site loss → last app healthy: 3 orchestrators + 4 agents on libvirt's test driver, \
         north's orchestrator and agents SIGKILLed at T0; times are after T0 on the wall clock"
    );
    let mut rows: Vec<Row> = sizes
        .iter()
        .map(|n| rt.block_on(run_size(*n, None)))
        .collect();
    let guests: Vec<usize> = std::env::var("BENCH_QEMU_GUESTS")
        .unwrap_or_else(|_| "2,4".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("BENCH_QEMU_GUESTS: {s:?} is not a number"))
        })
        .collect();
    if !guests.is_empty() {
        let image = if chaos::guest::virsh(&["version"]).0 {
            chaos::guest::build(&chaos::guest::BuildOptions::new(
                std::env::temp_dir().join("metrodr-guest"),
            ))
            .map_err(|e| format!("cannot build the probe guest image: {e}"))
        } else {
            Err(
                "libvirtd (qemu:///system) is not running: run `bash scripts/start-libvirtd.sh`"
                    .into(),
            )
        };
        for n in guests {
            match &image {
                Ok(img) => rows.push(rt.block_on(run_size(n, Some(img)))),
                Err(e) => {
                    println!(
                        "\n####################################################################\n\
                         #### {n} real guest(s) NOT RUN: {e}\n\
                         ####################################################################"
                    );
                    rows.push(Row {
                        apps: n,
                        guests: true,
                        site_down_ms: NONE,
                        plan_begun_ms: NONE,
                        first_step_ms: NONE,
                        first_healthy_ms: NONE,
                        last_healthy_ms: NONE,
                        why: vec![format!("not run: {e}")],
                        ..Row::default()
                    });
                }
            }
        }
    }

    println!(
        "\n{:>11} | {:>6} | {:>14} | {:>10} | {:>17} | {:>9} | {:>9} | {:>16} | {:>13} | {:>13} | target (first ≤ 10 s, last ≤ 15 s)",
        "apps",
        "leader",
        "site down det.",
        "plan begun",
        "promote Σ (max)",
        "serve vols",
        "start VMs",
        "health (max)",
        "first healthy",
        "last healthy",
    );
    let mut failed = false;
    for r in &rows {
        let verdict = if r.target_met() { "PASS" } else { "FAIL" };
        failed |= !r.target_met();
        println!(
            "{:>11} | {:>6} | {:>14} | {:>10} | {:>17} | {:>9} | {:>9} | {:>16} | {:>13} | {:>13} | {verdict}{}",
            if r.guests {
                format!("{} QEMU", r.apps)
            } else {
                r.apps.to_string()
            },
            if r.leader_killed { "killed" } else { "kept" },
            s(r.site_down_ms),
            s(r.plan_begun_ms),
            format!("{} ({})", su(r.promote_sum_ms), su(r.promote_max_ms)),
            if r.guests {
                su(r.serve_span_ms)
            } else {
                "-".into()
            },
            su(r.start_span_ms),
            format!("{} ({})", su(r.health_span_ms), su(r.health_max_ms)),
            s(r.first_healthy_ms),
            s(r.last_healthy_ms),
            if r.ok {
                String::new()
            } else {
                format!(" ({})", r.why.join("; "))
            }
        );
    }
    println!(
        "\nleader: whether the Raft leader was north's node (killed: detection includes an \
         election and the new leader's full lease before it may declare a site down). \
         start VMs / health: from the first such step's start to the last one's end, over \
         all waves; promote Σ: the promote-and-move steps' durations summed; serve vols (real \
         guests): the agents serving the promoted replicas, first start to last end; a real \
         guest's health gate ends when its console says ready at south."
    );
    if failed {
        std::process::exit(1);
    }
}
