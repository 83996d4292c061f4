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
//!
//! It runs on the lab crate's cluster ([`setup`]); the files: [`topology`] (the
//! generated topology), [`setup`] (the lab of one size and T0), [`record`] (following
//! the failover and where its time went), [`meter`] (CPU and apply time spent).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod meter;
mod record;
mod setup;
mod topology;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meter::Meter;
use record::{NONE, Row, breakdown, check_south, follow, s, su};
use setup::Lab;

const BIN: &str = env!("CARGO_BIN_EXE_metrodr");
const ACTOR: &str = "bench@failover";
/// VmAction requests in flight while the VMs are set up at north.
const SETUP_CONCURRENCY: usize = 64;
const FIRST_TARGET_MS: u64 = 10_000;
const LAST_TARGET_MS: u64 = 15_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
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
    let before = record::status(&addrs[0])
        .await
        .expect("status before the loss");
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
    match (&followed.record, record::status(&addrs[0]).await) {
        (Some(op), Some(after)) => {
            breakdown(&mut row, op, &followed, &before, &after, t0);
            meter.report(wall);
            let host_site = lab
                .inner()
                .topo
                .hosts
                .iter()
                .map(|h| (h.id.to_string(), h.site.to_string()))
                .collect();
            check_south(&addrs, &host_site, &mut row).await;
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
        lab.inner = None;
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

/// The numbers in the environment variable `name` (comma-separated; unset: `default`).
fn env_sizes(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {s:?} is not a number"))
        })
        .collect()
}

fn main() {
    let sizes = env_sizes("BENCH_SIZES", "1,10,100,1000");
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
    let guests = env_sizes("BENCH_QEMU_GUESTS", "2,4");
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
