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
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use orchestrator::client::Client;
use orchestrator::pb;
use orchestrator::state::{OpStatus, Operation};
use security::CertDir;
use serde::Serialize;
use topology::Topology;

use super::storage::{Writers, connect, missing};
use crate::lab::{all_hosts_up, all_up_to_date, start_every_vm, volumes, wait};
use crate::op_cmd::{OpRecord, record};

/// The lab topology, built in.
pub const LAB: &str = include_str!("../../../examples/lab.toml");
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

/// Children started here, killed by PID when dropped.
#[derive(Default)]
struct Kids(Vec<(String, Child)>);

impl Kids {
    fn kill(&mut self, name: &str) {
        for (n, c) in &mut self.0 {
            if n == name {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn spawn_agent(
    dir: &Path,
    host: &str,
    cluster: &str,
    uri: &str,
    certs: &CertDir,
) -> anyhow::Result<Child> {
    let state = dir.join(format!("agent-{host}"));
    let cfg = dir.join(format!("agent-{host}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "host = \"{host}\"\ncluster = \"{cluster}\"\nlibvirt_uri = \"{uri}\"\nstate_dir = \"{}\"\n\
             disk_backend = \"nbd\"\ndomain_type = \"qemu\"\n{}{}",
            state.display(),
            // Real guests get QEMU's user-mode network: their tcp probes connect
            // through a loopback forward.
            if uri.starts_with("qemu") {
                "guest_network = \"user\"\n"
            } else {
                ""
            },
            super::tls_section(certs, security::Role::Agent, host)
        ),
    )?;
    let exe = std::env::current_exe().context("locating the metrodr binary")?;
    let log = std::fs::File::create(dir.join(format!("agent-{host}.log")))?;
    let mut cmd = Command::new(exe);
    cmd.args(["agent", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = crate::lab::owned::spawn_owned(cmd).context("starting an agent")?;
    let mut out = std::io::BufReader::new(child.stdout.take().context("no stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    if !line.contains("\"started\"") {
        bail!(
            "agent {host} did not start; see {}",
            dir.join(format!("agent-{host}.log")).display()
        );
    }
    std::thread::spawn(move || for _ in std::io::BufRead::lines(out) {});
    Ok(child)
}

async fn operation(c: &Client, op: u64) -> Option<Operation> {
    let r =
        c.op.clone()
            .get_operation(pb::GetOperationRequest { op })
            .await
            .ok()?;
    serde_json::from_str(&r.into_inner().operation_json).ok()
}

/// VMs reported running, with the host that reported each.
async fn running(c: &Client) -> Option<BTreeMap<String, String>> {
    let r = c.op.clone().list_vms(pb::ListVmsRequest {}).await.ok()?;
    Some(
        r.into_inner()
            .vms
            .into_iter()
            .filter(|v| v.state == "running")
            .map(|v| (v.vm, v.reported_host))
            .collect(),
    )
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
    let mut kids = Kids::default();
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
    // Control plane.
    let mut addrs = Vec::new();
    let (certs, dialer) = super::demo_certs(dir, &topo)?;
    for o in &topo.orchestrators {
        let (child, addr) = super::spawn_node(dir, o.id.as_str(), &certs)?;
        kids.0.push((o.id.to_string(), child));
        addrs.push((o, addr));
    }
    let all: Vec<String> = addrs.iter().map(|(_, a)| a.clone()).collect();
    let cluster = all.join(",");
    let client = dialer.connect(&all).await?;
    client
        .op
        .clone()
        .init_cluster(pb::InitClusterRequest {
            nodes: addrs
                .iter()
                .map(|(o, a)| pb::InitNode {
                    name: o.id.to_string(),
                    site: o.site.to_string(),
                    addr: a.clone(),
                })
                .collect(),
        })
        .await?;
    wait(Duration::from_secs(15), "a leader", || async {
        let s = client.op.clone().status(pb::StatusRequest {}).await.ok()?;
        (!s.into_inner().leader.is_empty()).then_some(())
    })
    .await?;
    crate::cluster_cmd::apply(&client, &text, "demo").await?;
    // Agents, then every VM where the topology placed it.
    for h in &topo.hosts {
        kids.0.push((
            h.id.to_string(),
            spawn_agent(dir, h.id.as_str(), &cluster, &h.libvirt_uri, &certs)?,
        ));
    }
    wait(Duration::from_secs(20), "every agent registered", || {
        all_hosts_up(&client)
    })
    .await?;
    // The agents serve every group: secondaries first, then the primaries towards
    // them; the initial syncs make the other site's replicas promotable.
    wait(
        Duration::from_secs(60),
        "every replica up to date",
        || async { all_up_to_date(&volumes(&client).await?) },
    )
    .await?;
    let groups = topo.apps.iter().filter(|a| !a.volumes.is_empty()).count();
    start_every_vm(&client, &topo, "demo").await?;
    if table {
        outln!(
            "  3 orchestrator nodes, {} agents up; {groups} consistency groups served by the agents, every replica up to date; {} VMs running where planned",
            topo.hosts.len(),
            topo.vm_count()
        );
    }
    // The writer workload on the tier-1 app's first volume.
    let db = topo
        .apps
        .iter()
        .filter(|a| a.preferred_site.as_str() == LOST && !a.volumes.is_empty())
        .min_by_key(|a| a.tier)
        .context("no app with volumes at north")?;
    let db_vol = db.volumes[0].id.to_string();
    let served_at = |vs: &[pb::VolumeStatus], site: &str| -> anyhow::Result<PathBuf> {
        let host = vs
            .iter()
            .find(|v| v.id == db_vol)
            .and_then(|v| v.replicas.iter().find(|r| r.site == site))
            .map(|r| r.host.clone())
            .filter(|h| !h.is_empty())
            .with_context(|| format!("no host serves {db_vol} at {site}"))?;
        Ok(dir.join(format!("agent-{host}/sockets/{}.sock", db.id)))
    };
    // The workload: the guests themselves, or NBD writers on db's socket.
    let placed = running(&client).await.unwrap_or_default();
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
            let sock = served_at(&volumes(&client).await.context("volume list")?, LOST)?;
            let blocks = (64u64 << 20) / 4096;
            let writers = Writers::start(connect(&sock, &db_vol).await?, blocks).await?;
            // Mid-stream: once a quarter of the volume is acknowledged.
            wait(
                Duration::from_secs(30),
                "the writers to get going",
                || async { (writers.count() >= blocks / 4).then_some(()) },
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
    let north: Vec<String> = kids
        .0
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| n.ends_with(LOST) || n.starts_with(&format!("{LOST}-")))
        .collect();
    for n in &north {
        kids.kill(n);
    }
    let acked = match writers {
        Some(w) => w.finish().await,
        None => Vec::new(),
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
                acked.len(),
                db.id,
                north.join(", ")
            ),
        }
    }
    let survivors: Vec<String> = addrs
        .iter()
        .filter(|(o, _)| o.site.as_str() != LOST)
        .map(|(_, a)| a.clone())
        .collect();
    let sc = dialer.connect(&survivors).await?;
    let op = wait(
        Duration::from_secs(30),
        "the automatic failover",
        || async {
            let r = sc
                .op
                .clone()
                .list_operations(pb::ListOperationsRequest { limit: 10 })
                .await
                .ok()?;
            r.into_inner().operations_json.iter().find_map(|j| {
                let o: Operation = serde_json::from_str(j).ok()?;
                (o.note == format!("site {LOST} lost")).then_some(o.id.0)
            })
        },
    )
    .await?;
    let declared_s = killed.elapsed().as_secs_f64();
    let mut other_operations = Vec::new();
    for id in drill.op + 1..op {
        let Some(o) = operation(&sc, id).await else {
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
        let Some(o) = operation(&sc, op).await else {
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
    let vs = volumes(&sc).await.context("volume list")?;
    let promoted = served_at(&vs, SURVIVOR)?;
    // Per app: acknowledged writes (or guest records) missing after the failover.
    let mut missing_of: BTreeMap<String, u64> = BTreeMap::new();
    let (acknowledged, missing) = match &guests {
        Some(g) => {
            let after = running(&sc).await.unwrap_or_default();
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
            let cb = connect(&promoted, &db_vol).await?;
            let missing = missing(&cb, &acked).await?;
            missing_of.insert(db.id.to_string(), missing);
            if table {
                outln!(
                    "  {SURVIVOR}'s agents serve the promoted replicas ({})",
                    promoted.display()
                );
                outln!(
                    "  {}: {} of {} acknowledged writes on the promoted replica ({missing} missing)",
                    db.id,
                    acked.len() as u64 - missing,
                    acked.len()
                );
            }
            (acked.len() as u64, missing)
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
