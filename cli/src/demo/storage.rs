//! The storage step of the demo: one application's volume replicated in sync mode
//! between the two production sites by real `metrodr volume` processes, written by 16
//! pipelined NBD writers, its primary killed with SIGKILL mid-stream, the replica at
//! the other site promoted at a new epoch; every acknowledged write is read back there.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use replication::nbd::{ClientConfig, NbdClient};
use serde::Serialize;
use topology::Topology;
use topology::model::Replication;

/// The demo volume is small whatever the topology says: it is written for a second.
const SIZE: &str = "64MiB";
const BLOCKS: u64 = (64 << 20) / 4096;

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

/// A `metrodr volume` process, killed by PID when dropped.
pub(super) struct Vol(Option<Child>);

impl Drop for Vol {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Vol {
    /// Start `metrodr volume ARGS` as `host` (its agent certificate from `certs`: the
    /// replication link is mutual TLS).
    pub(super) fn start(
        dir: &Path,
        name: &str,
        args: &[&str],
        certs: &Path,
        host: &str,
    ) -> anyhow::Result<(Vol, serde_json::Value)> {
        let exe = std::env::current_exe().context("locating the metrodr binary")?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(exe);
        cmd.arg("volume")
            .args(args)
            .arg("--certs")
            .arg(certs)
            .args(["--as", host])
            .env("METRODR_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child =
            crate::lab::owned::spawn_owned(cmd).context("starting a metrodr volume process")?;
        let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        // Drain the status lines so the pipe never fills.
        std::thread::spawn(move || for _ in out.lines() {});
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| {
            format!(
                "{name} did not start; see {}",
                dir.join(format!("{name}.log")).display()
            )
        })?;
        Ok((Vol(Some(child)), v))
    }

    /// SIGTERM and wait for the clean stop.
    fn stop(mut self) {
        if let Some(mut c) = self.0.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// SIGKILL now (a crash).
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn block(i: u64) -> Bytes {
    let mut b = vec![(i % 251) as u8; 4096];
    b[..8].copy_from_slice(&i.to_be_bytes());
    Bytes::from(b)
}

/// 16 pipelined NBD writers, each block written once (block `i` holds its number), and
/// the blocks whose writes were acknowledged.
pub(super) struct Writers {
    pub acked: Arc<Mutex<Vec<u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// Write block 0 (which also waits for the initial sync), then start the writers
    /// over blocks 1..`blocks`.
    pub(super) async fn start(client: NbdClient, blocks: u64) -> anyhow::Result<Writers> {
        let c = Arc::new(client);
        c.write(0, block(0), false).await.context("first write")?;
        let acked = Arc::new(Mutex::new(vec![0u64]));
        let tasks = (0..16u64)
            .map(|w| {
                let (c, acked) = (c.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut i = 1 + w;
                    while i < blocks {
                        if c.write(i * 4096, block(i), false).await.is_err() {
                            return;
                        }
                        acked.lock().unwrap_or_else(|e| e.into_inner()).push(i);
                        i += 16;
                    }
                })
            })
            .collect();
        Ok(Writers { acked, tasks })
    }

    pub(super) fn count(&self) -> u64 {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    /// Wait for the writers to end (their server gone or the volume written) and
    /// return what was acknowledged.
    pub(super) async fn finish(self) -> Vec<u64> {
        for w in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
        }
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How many acknowledged blocks do not read back as written.
pub(crate) async fn missing(c: &NbdClient, acked: &[u64]) -> anyhow::Result<u64> {
    let mut n = 0u64;
    for i in acked {
        if c.read(i * 4096, 4096).await? != block(*i) {
            n += 1;
        }
    }
    Ok(n)
}

pub(crate) async fn connect(socket: &Path, export: &str) -> anyhow::Result<NbdClient> {
    let cfg = ClientConfig {
        export: export.into(),
        ..ClientConfig::default()
    };
    NbdClient::connect_unix(socket, &cfg)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))
}

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
    let (replica, ready) = Vol::start(
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
    let (mut primary, _) = Vol::start(
        dir,
        "primary",
        &[
            "serve", "--volume", &a_vol, "--size", SIZE, "--socket", &a_sock_s, "--peer", &listen,
        ],
        &certs,
        &host_a,
    )?;
    let writers = Writers::start(connect(&a_sock, &id).await?, BLOCKS).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed_at = Instant::now();
    primary.kill();
    drop(primary);
    let acked = writers.finish().await;
    if table {
        outln!(
            "  {} writes acknowledged by the {site_a} primary, then kill -9 of it mid-stream",
            acked.len()
        );
    }
    // Site B: stop the replica, promote its file at epoch 2, serve it.
    replica.stop();
    let b_sock = dir.join(format!("{site_b}.sock"));
    let b_sock_s = b_sock.display().to_string();
    let (promoted, ready) = Vol::start(
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
    let cb = connect(&b_sock, &id).await?;
    cb.read(0, 4096)
        .await
        .context("reading the promoted replica")?;
    let failover_ms = u64::try_from(killed_at.elapsed().as_millis()).unwrap_or(u64::MAX);
    let lost = missing(&cb, &acked).await?;
    drop(cb);
    promoted.stop();
    let epoch = ids::Epoch(ready["epoch"].as_u64().unwrap_or(0));
    if table {
        outln!(
            "  {site_b} promoted at epoch {epoch}, serving {failover_ms} ms after the kill; {} of {} acknowledged writes there ({lost} lost)",
            acked.len() as u64 - lost,
            acked.len()
        );
    }
    Ok(Storage {
        app: app.id.to_string(),
        volume: id,
        primary_site: site_a,
        secondary_site: site_b,
        writes_acknowledged: acked.len() as u64,
        writes_lost: lost,
        promoted_epoch: epoch,
        failover_ms,
    })
}
