//! The storage step of the demo: one application's volume replicated in sync mode
//! between the two production sites by real `metrodr volume` processes, written by 16
//! pipelined NBD writers, its primary killed with SIGKILL mid-stream, the replica at
//! the other site promoted at a new epoch; every acknowledged write is read back there.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lab::daemons::Binary;
use lab::procs::{Proc, Rest};
use lab::workload::{self, Writers};
use serde::Serialize;
use topology::Topology;
use topology::model::Replication;

/// The demo volume is small whatever the topology says: it is written in seconds.
const SIZE: &str = "64MiB";
const BLOCKS: u64 = (64 << 20) / workload::BLOCK;

#[derive(Debug, Serialize)]
pub struct Storage {
    pub app: String,
    pub volume: String,
    pub primary_site: String,
    pub secondary_site: String,
    pub writes_acknowledged: u64,
    pub writes_lost: u64,
    pub promoted_epoch: ids::Epoch,
    /// From the SIGKILL of the primary to the promoted replica answering reads.
    pub failover_ms: u64,
}

/// Start `metrodr volume ARGS` as `host` (its agent certificate from `certs`: the
/// replication link is mutual TLS); it is killed by PID when dropped.
fn volume(
    dir: &Path,
    name: &str,
    args: &[&str],
    certs: &Path,
    host: &str,
) -> anyhow::Result<(Proc, serde_json::Map<String, serde_json::Value>)> {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend([
        "--certs".into(),
        certs.display().to_string(),
        "--as".into(),
        host.into(),
    ]);
    let log = dir.join(format!("{name}.log"));
    Ok(Binary::this()?.volume(name, &args, &log, Some("warn"), Rest::Drain)?)
}

/// How long a volume process may take to stop cleanly after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(30);

pub async fn storage_failover(topo: &Topology, dir: &Path, table: bool) -> anyhow::Result<Storage> {
    let mut sites = topo.production_sites();
    let (Some(a), Some(b)) = (sites.next(), sites.next()) else {
        bail!("the topology has no two production sites");
    };
    let (app, vol) = topo
        .apps
        .iter()
        .flat_map(|app| app.volumes.iter().map(move |v| (app, v)))
        .filter(|(_, v)| v.replication == Replication::Sync)
        .min_by_key(|(app, _)| app.tier)
        .context("no application has a sync volume")?;
    let (site_a, site_b) = (a.id.to_string(), b.id.to_string());
    let id = vol.id.to_string();
    if table {
        outln!(
            "\nStorage: app {} volume {id} ({SIZE} for the demo), sync replication {site_a} -> {site_b}",
            app.id
        );
    }
    // One host per site, each with its agent certificate.
    let (host_a, host_b) = (format!("{site_a}-storage"), format!("{site_b}-storage"));
    let hosts = [&host_a, &host_b]
        .map(|h| security::Principal::new(security::Role::Agent, h).map_err(anyhow::Error::msg))
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (certs, _) = crate::certs_cmd::create(&dir.join("certs"), &hosts, 30)?;
    let certs = certs.root;
    let a_raw = dir.join(format!("{site_a}-{id}.raw"));
    let b_raw = dir.join(format!("{site_b}-{id}.raw"));
    let a_vol = format!("{id}={}", a_raw.display());
    let b_vol = format!("{id}={}", b_raw.display());
    let (mut replica, ready) = volume(
        dir,
        "replica",
        &[
            "replica",
            "--volume",
            &b_vol,
            "--size",
            SIZE,
            "--listen",
            "127.0.0.1:0",
        ],
        &certs,
        &host_b,
    )?;
    let listen = ready["listen"]
        .as_str()
        .context("replica address")?
        .to_string();
    let a_sock = dir.join(format!("{site_a}.sock"));
    let a_sock_s = a_sock.display().to_string();
    let (mut primary, _) = volume(
        dir,
        "primary",
        &[
            "serve", "--volume", &a_vol, "--size", SIZE, "--socket", &a_sock_s, "--peer", &listen,
        ],
        &certs,
        &host_a,
    )?;
    // 16 pipelined writers, each block written once; the first writes also wait for
    // the initial sync.
    let writers = Writers::start(
        workload::connect(&a_sock, &id).await?,
        workload::Spec {
            writers: 16,
            blocks: BLOCKS,
            once: true,
            fua: false,
        },
    );
    // Mid-stream: once a quarter of the volume is acknowledged.
    lab::wait(
        Duration::from_secs(30),
        "the writers to get going",
        || async { (writers.acknowledged() >= BLOCKS / 4).then_some(()) },
    )
    .await?;
    let killed_at = Instant::now();
    primary.kill();
    let acked = writers.finish(Duration::from_secs(10)).await;
    if table {
        outln!(
            "  {} writes acknowledged by the {site_a} primary, then kill -9 of it mid-stream",
            acked.writes
        );
    }
    // Site B: stop the replica, promote its file at epoch 2, serve it.
    replica.terminate(STOP_WITHIN);
    let b_sock = dir.join(format!("{site_b}.sock"));
    let b_sock_s = b_sock.display().to_string();
    let (mut promoted, ready) = volume(
        dir,
        "promoted",
        &[
            "serve",
            "--volume",
            &b_vol,
            "--socket",
            &b_sock_s,
            "--promote",
            "--epoch",
            "2",
        ],
        &certs,
        &host_b,
    )?;
    let cb = workload::connect(&b_sock, &id).await?;
    cb.read(0, 4096)
        .await
        .context("reading the promoted replica")?;
    let failover_ms = u64::try_from(killed_at.elapsed().as_millis()).unwrap_or(u64::MAX);
    let lost = workload::missing(&cb, &acked).await?;
    drop(cb);
    promoted.terminate(STOP_WITHIN);
    let epoch = ids::Epoch(ready["epoch"].as_u64().unwrap_or(0));
    if table {
        outln!(
            "  {site_b} promoted at epoch {epoch}, serving {failover_ms} ms after the kill; {} of {} acknowledged writes there ({lost} lost)",
            acked.writes - lost,
            acked.writes
        );
    }
    Ok(Storage {
        app: app.id.to_string(),
        volume: id,
        primary_site: site_a,
        secondary_site: site_b,
        writes_acknowledged: acked.writes,
        writes_lost: lost,
        promoted_epoch: epoch,
        failover_ms,
    })
}
