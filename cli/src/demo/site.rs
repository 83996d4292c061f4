//! The demo's main act: a whole two-site system on this machine (the lab topology,
//! `examples/lab.toml`) loses a site while a writer runs, and the cluster fails every
//! app over by itself.
//!
//! Three orchestrator processes, one agent per host (libvirt's test driver: each agent
//! its own private fake host), every app's consistency group served by the agents
//! (primary on the host of the app's VMs, replicated synchronously or asynchronously to
//! a secondary on a host of the other site), 16 NBD writers on the tier-1 database's
//! socket, as its VM's QEMU would write. Then `kill -9` of everything at north
//! (orchestrator node and agents, with the data path inside them): the leader declares
//! north lost after lease plus margin, plans, and runs the failover in dependency
//! order — the south agents promote their replicas at the committed epochs and the VMs
//! start on those hosts; the demo approves the app whose policy asks for an operator.
//! Every acknowledged write is read back from the promoted replica.
//!
//! With `--hypervisor qemu` ([`super::guests`]) the VMs are real probe guests on this
//! machine's libvirtd, which are their own workload: each must resume at south at or
//! after the last record it acknowledged at north.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use lab::daemons::Binary;
use lab::workload::{self, Writers};
use lab::{Lab, api, wait};
use orchestrator::pb;
use orchestrator::state::OpStatus;
use serde::Serialize;
use topology::Topology;

use crate::op_cmd::{OpRecord, record};

/// The lab topology, built in.
pub const LAB: &str = lab::LAB_TOPOLOGY;
const LOST: &str = "north";
const SURVIVOR: &str = "south";

#[derive(Debug, Serialize)]
pub struct AppOutcome {
    pub app: String,
    pub site_before: String,
    pub site_after: String,
    /// Achieved RTO from the op record (origin: when the lost hosts were last known alive).
    pub rto_s: Option<f64>,
    pub rto_target_s: u32,
    /// Wall clock from the kill to this app's health gate.
    pub kill_to_healthy_s: Option<f64>,
    /// Acknowledged writes not found after failover (apps the demo writes to).
    pub acknowledged_writes_missing: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct SiteFailover {
    pub topology: &'static str,
    pub lost_site: &'static str,
    pub op: u64,
    pub status: String,
    /// The operation succeeded (what `status` says, as a value to decide on).
    #[serde(skip)]
    pub succeeded: bool,
    pub apps: Vec<AppOutcome>,
    pub writes_acknowledged: u64,
    pub writes_missing: u64,
    pub kill_to_last_healthy_s: f64,
    pub report: PathBuf,
    /// The failover's report as the cluster signed it (HTML, JSON), verified offline.
    pub signed_report: super::drill::SignedReport,
    /// The test drill run before the loss.
    pub drill: super::drill::DrillOutcome,
    /// Operations the cluster began on its own between the drill and the site loss
    /// (e.g. restarting what an agent fenced when a loaded machine made it miss its
    /// lease); empty on a quiet run.
    pub other_operations: Vec<OtherOperation>,
    pub record: OpRecord,
}

#[derive(Debug, Serialize)]
pub struct OtherOperation {
    pub op: u64,
    pub note: String,
    pub status: OpStatus,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub async fn site_failover(
    dir: &Path,
    reports: &Path,
    table: bool,
    qemu: bool,
) -> anyhow::Result<SiteFailover> {
    let (text, topo): (String, Topology) = if qemu {
        let cache = std::env::temp_dir().join("metrodr-guest");
        if table {
            outln!(
                "\nBuilding the probe guest image in {} (Debian packages, once)…",
                cache.display()
            );
        }
        super::guests::lab(LAB, &cache)?
    } else {
        let t = topology::check_str(LAB)
            .topology
            .context("the built-in lab topology is invalid")?;
        (LAB.to_string(), t)
    };
    let mut guests = qemu.then(|| super::guests::Guests::new(dir, &topo));
    if table {
        outln!(
            "\nSite failover: examples/lab.toml — {} apps, {} VMs, {} hosts on {}, every group replicated {LOST} -> {SURVIVOR}",
            topo.apps.len(),
            topo.vm_count(),
            topo.hosts.len(),
            if qemu {
                "this machine's libvirtd with real QEMU (TCG) probe guests"
            } else {
                "libvirt's test driver"
            }
        );
    }
    // The lab on loopback: three orchestrator nodes, an agent per host, mutual TLS;
    // real guests get QEMU's user-mode network (their tcp probes connect through a
    // loopback forward).
    let mut opts = lab::Options::loopback("demo");
    opts.user_network = qemu;
    // The nodes, the cluster formed, the agents registered; then every VM where the
    // topology placed it.
    let within = Duration::from_secs(20);
    let mut lab = Lab::with_agents(dir, &text, Binary::this()?, opts, within).await?;
    // The agents serve every group: secondaries first, then the primaries towards
    // them; the initial syncs make the other site's replicas promotable.
    lab.wait_replicas(Duration::from_secs(60)).await?;
    let groups = topo.apps.iter().filter(|a| !a.volumes.is_empty()).count();
    lab.start_every_vm().await?;
    if table {
        outln!(
            "  3 orchestrator nodes, {} agents up; {groups} consistency groups served by the agents, every replica up to date; {} VMs running where planned",
            topo.hosts.len(),
            topo.vm_count()
        );
    }
    let client = lab.client().await?;
    // The writer workload on the tier-1 app's first volume.
    let db = topo
        .apps
        .iter()
        .filter(|a| a.preferred_site.as_str() == LOST && !a.volumes.is_empty())
        .min_by_key(|a| a.tier)
        .context("no app with volumes at north")?;
    let db_vol = db.volumes[0].id.to_string();
    // The socket of db's group on the host serving its replica at `site`.
    let served_at = async |lab: &Lab, site: &str| -> anyhow::Result<PathBuf> {
        let host = lab.replica_host(site, &db_vol).await?;
        Ok(lab.socket(&host, db.id.as_str()))
    };
    // The workload: the guests themselves, or NBD writers on db's socket.
    let placed = api::running_vms(&client).await.unwrap_or_default();
    let writers = match &guests {
        Some(g) => {
            wait(
                Duration::from_secs(180),
                "every guest writing records",
                || async { g.all_writing(&placed).then_some(()) },
            )
            .await?;
            if table {
                outln!("  every guest booted and is writing acknowledged records to its disk");
            }
            None
        }
        None => {
            let sock = served_at(&lab, LOST).await?;
            // 16 pipelined writers, each block of the first 64 MiB written once.
            let blocks = (64u64 << 20) / workload::BLOCK;
            let writers = Writers::start(
                workload::connect(&sock, &db_vol).await?,
                workload::Spec {
                    writers: 16,
                    blocks,
                    once: true,
                    fua: false,
                },
            );
            // Mid-stream: once a quarter of the volume is acknowledged.
            wait(
                Duration::from_secs(30),
                "the writers to get going",
                || async { (writers.acknowledged() >= blocks / 4).then_some(()) },
            )
            .await?;
            Some(writers)
        }
    };

    // A test drill first, while production writes: in test mode every app, with real
    // guests the tier-1 app (each copy is one more TCG guest on this machine).
    let drilled: Vec<String> = if qemu {
        vec![db.id.to_string()]
    } else {
        topo.apps.iter().map(|a| a.id.to_string()).collect()
    };
    let drill = super::drill::test_drill(&client, drilled, reports, table).await?;

    // Lose north: every process there, at once (the guests' QEMU processes too).
    let north_hosts: Vec<String> = topo
        .hosts
        .iter()
        .filter(|h| h.site.as_str() == LOST)
        .map(|h| h.id.to_string())
        .collect();
    let qemus = super::guests::Guests::pids(&placed, &north_hosts);
    let killed_ms = now_ms();
    let killed = Instant::now();
    if let Some(g) = guests.as_mut() {
        g.kill(&qemus, &placed);
    }
    let north: Vec<String> = lab
        .members
        .iter()
        .filter(|m| m.site == LOST)
        .map(|m| m.name.clone())
        .collect();
    lab.kill_site(LOST);
    let acked = match writers {
        Some(w) => w.finish(Duration::from_secs(10)).await,
        None => workload::Acked::default(),
    };
    if table {
        match &guests {
            Some(g) => outln!(
                "  kill -9 of every process at {LOST}: {}, and the QEMU processes of {} (records acknowledged: {})",
                north.join(", "),
                qemus.len(),
                g.acked
                    .iter()
                    .map(|(vm, n)| format!("{vm} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => outln!(
                "  {} writes acknowledged on {}; kill -9 of every process at {LOST}: {}",
                acked.writes,
                db.id,
                north.join(", ")
            ),
        }
    }
    let sc = lab.any_client().await?;
    let op = wait(
        Duration::from_secs(30),
        "the automatic failover",
        || async { Some(api::site_lost_failover(&sc, LOST).await?.id.0) },
    )
    .await?;
    let declared_s = killed.elapsed().as_secs_f64();
    let mut other_operations = Vec::new();
    for id in drill.op + 1..op {
        let Some(o) = api::operation(&sc, id).await else {
            bail!(
                "op-{id} (between the drill op-{} and the failover op-{op}) cannot be read from the cluster",
                drill.op
            );
        };
        other_operations.push(OtherOperation {
            op: id,
            note: o.note,
            status: o.status,
        });
    }
    if table {
        for o in &other_operations {
            outln!(
                "  meanwhile the cluster ran op-{} on its own ({:?}): {}",
                o.op,
                o.status,
                o.note
            );
        }
        outln!("  {declared_s:.2} s: the leader declared {LOST} lost and began op-{op}");
    }
    // Follow it; approve what waits for an operator.
    let mut approved = false;
    let mut shown = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        if Instant::now() > deadline {
            bail!("op-{op} did not finish within 90 s");
        }
        let Some(o) = api::operation(&sc, op).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if table {
            for (i, s) in o.steps.iter().enumerate() {
                if s.result.is_none() || !shown.insert(i) {
                    continue;
                }
                let at = s.ended_ms.unwrap_or(0).saturating_sub(killed_ms);
                let app = s.app().map_or("", |a| a.as_str());
                let result = s.result.as_ref().map(ToString::to_string);
                outln!(
                    "    +{:>5.2} s  {app:<8} {:<26} {}",
                    at as f64 / 1000.0,
                    o.step_name(s),
                    result.unwrap_or_default()
                );
            }
        }
        if o.status != OpStatus::Running {
            break o;
        }
        let healthy = |app: &topology::AppId| {
            o.steps.iter().any(|s| {
                s.app() == Some(app)
                    && s.kind == orchestrator::state::StepKind::HealthGate
                    && s.result.is_some()
            })
        };
        let (waiting, others_done) = o.plan.as_ref().map_or((false, false), |p| {
            (
                p.apps()
                    .any(|m| m.needs_approval && !o.approved.contains(&m.app)),
                p.apps()
                    .filter(|m| !m.needs_approval)
                    .all(|m| healthy(&m.app)),
            )
        });
        if waiting && others_done && !approved {
            if table {
                outln!("  operator (the demo): metrodr op approve {op}");
            }
            sc.op
                .clone()
                .approve_operation(pb::ApproveOperationRequest {
                    actor: "demo-operator".into(),
                    op,
                    apps: Vec::new(),
                })
                .await
                .context("approving")?;
            approved = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rec = record(&done);
    // The data path: south's agents serve the promoted replicas (the op's "serve
    // volumes" steps); read every acknowledged write back from there.
    let promoted = served_at(&lab, SURVIVOR).await?;
    // Per app: acknowledged writes (or guest records) missing after the failover.
    let mut missing_of: BTreeMap<String, u64> = BTreeMap::new();
    let (acknowledged, missing) = match &guests {
        Some(g) => {
            let after = api::running_vms(&sc).await.unwrap_or_default();
            let found = g.missing(&after);
            for app in &topo.apps {
                let m: u64 = app
                    .vms
                    .iter()
                    .filter_map(|v| found.get(v.id.as_str()).map(|x| x.1))
                    .sum();
                if app.vms.iter().any(|v| found.contains_key(v.id.as_str())) {
                    missing_of.insert(app.id.to_string(), m);
                }
            }
            if table {
                for (vm, (resumed, lost)) in &found {
                    outln!(
                        "  {vm}: acknowledged {} record(s) at {LOST}; booted at {SURVIVOR} from the promoted disk, it resumes after record {resumed} ({lost} missing)",
                        g.acked.get(vm).copied().unwrap_or(0)
                    );
                }
            }
            (
                g.acked.values().sum::<u64>(),
                found.values().map(|x| x.1).sum::<u64>(),
            )
        }
        None => {
            let cb = workload::connect(&promoted, &db_vol).await?;
            let missing = workload::missing(&cb, &acked).await?;
            missing_of.insert(db.id.to_string(), missing);
            if table {
                outln!(
                    "  {SURVIVOR}'s agents serve the promoted replicas ({})",
                    promoted.display()
                );
                outln!(
                    "  {}: {} of {} acknowledged writes on the promoted replica ({missing} missing)",
                    db.id,
                    acked.writes - missing,
                    acked.writes
                );
            }
            (acked.writes, missing)
        }
    };
    let apps: Vec<AppOutcome> = rec
        .apps
        .iter()
        .map(|a| AppOutcome {
            app: a.app.clone(),
            site_before: a.from.clone(),
            site_after: a.to.clone(),
            rto_s: a.rto_s,
            rto_target_s: a.rto_target_s,
            kill_to_healthy_s: a
                .healthy_ms
                .map(|m| m.saturating_sub(killed_ms) as f64 / 1000.0),
            acknowledged_writes_missing: missing_of.get(&a.app).copied(),
        })
        .collect();
    let last = apps
        .iter()
        .filter_map(|a| a.kill_to_healthy_s)
        .fold(0.0, f64::max);
    std::fs::create_dir_all(reports)?;
    let path = reports.join(format!("failover-op-{op}-{}.json", killed_ms / 1000));
    let signed_report =
        super::drill::export(&sc, op, reports, &format!("failover-op-{op}")).await?;
    let out = SiteFailover {
        topology: if qemu {
            "examples/lab.toml (built in), real QEMU probe guests"
        } else {
            "examples/lab.toml (built in)"
        },
        lost_site: LOST,
        op,
        status: rec.status.clone(),
        succeeded: done.status == OpStatus::Succeeded,
        apps,
        writes_acknowledged: acknowledged,
        writes_missing: missing,
        kill_to_last_healthy_s: last,
        report: path.clone(),
        signed_report,
        drill,
        other_operations,
        record: rec,
    };
    std::fs::write(&path, serde_json::to_vec_pretty(&out)?)
        .with_context(|| format!("writing {}", path.display()))?;
    if table {
        outln!("\n  Failover record (op-{op}, {}):", out.status);
        outln!(
            "  app      from   -> to     kill->healthy  RTO (record)  target   (record: from when the lost hosts were last known alive)"
        );
        for a in &out.apps {
            outln!(
                "  {:<8} {:<6} -> {:<6} {:>10}  {:>12}  {:>4} s",
                a.app,
                a.site_before,
                a.site_after,
                a.kill_to_healthy_s
                    .map_or("-".into(), |s| format!("{s:.2} s")),
                a.rto_s.map_or("-".into(), |s| format!("{s:.2} s")),
                a.rto_target_s
            );
        }
        outln!("  record: {}", path.display());
        outln!(
            "  signed report (verified offline: {}): {}",
            if out.signed_report.verified {
                "yes"
            } else {
                "NO"
            },
            out.signed_report.html.display()
        );
        outln!(
            "  check it yourself: metrodr report verify {} --public-key {}",
            out.signed_report.html.display(),
            out.signed_report.public_key
        );
    }
    Ok(out)
}
