//! `volume serve` (a primary: NBD exports for QEMU, replicated to the peer) and
//! `volume replica` (a secondary: the endpoint the primary streams to). Both run until
//! SIGTERM/SIGINT and print one JSON object per line on stdout: `ready` once serving,
//! `status` when something changed (at most once per `--status-interval-ms`), and
//! `stopped` after a clean stop.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use replication::primary::{AlwaysDegrade, DegradePermission, NeverDegrade};
use replication::replica::Mode;
use replication::service::{GroupFiles, PrimaryOptions, ServedPrimary, ServedSecondary};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use topology::ids::ByteSize;

/// One volume of the group: `ID=PATH` (the data file; its metadata lives beside it).
#[derive(Debug, Clone)]
pub struct VolumeArg {
    pub id: String,
    pub path: PathBuf,
}

fn parse_volume(s: &str) -> Result<VolumeArg, String> {
    let (id, path) = s.split_once('=').ok_or_else(|| {
        format!("{s:?}: write a volume as ID=PATH, e.g. db-data=/var/lib/metrodr/db-data.raw")
    })?;
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "{id:?}: a volume id is letters, digits, '-', '_' or '.'"
        ));
    }
    if path.is_empty() {
        return Err(format!("{s:?}: the data file path is empty"));
    }
    Ok(VolumeArg {
        id: id.to_string(),
        path: PathBuf::from(path),
    })
}

/// The volume id `--data FILE` stands for (and its NBD export name).
pub const DATA_ID: &str = "disk";

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("vols").required(true).args(["volumes", "data"])))]
pub struct GroupArgs {
    /// The consistency group: its volumes share one ordered stream (so a failover
    /// finds them consistent with each other).
    #[arg(long, default_value = "g")]
    pub group: String,
    /// A volume of the group, ID=PATH (repeat for more). The same ids, in the same
    /// order, on both sides.
    #[arg(long = "volume", value_parser = parse_volume)]
    pub volumes: Vec<VolumeArg>,
    /// One volume: its data file (short for --volume disk=FILE; the export is "disk").
    #[arg(long, conflicts_with = "volumes")]
    pub data: Option<PathBuf>,
    /// Create missing data files with this size (e.g. 10GiB). Existing files keep
    /// theirs.
    #[arg(long)]
    pub size: Option<ByteSize>,
    /// The epoch a new replica starts at (existing metadata keeps its own).
    #[arg(long, default_value_t = 1)]
    pub epoch: u64,
    /// Milliseconds between two status lines (printed only when something changed).
    #[arg(long, default_value_t = 1000)]
    pub status_interval_ms: u64,
    /// The async runtime of the data path. `current`: one thread drives the network,
    /// file I/O runs on the blocking pool (measured ~15% less CPU per I/O and higher
    /// QD16 IOPS than `multi` on a 2-core host; see docs/replication.md). `multi`: one
    /// worker thread per core, for hosts with many cores and many volumes per process.
    #[arg(long, value_enum, default_value = "current")]
    pub runtime: RuntimeArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    /// One thread for the network; file I/O on the blocking pool.
    Current,
    /// One worker thread per core.
    Multi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// A write completes when it is on the local file and the peer received it (RPO 0).
    Sync,
    /// A write completes locally; the peer follows in order within the lag bounds.
    Async,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DegradeArg {
    /// With the peer unreachable, hold sync writes until it is back (no orchestrator
    /// to commit it outdated). Never loses RPO 0.
    Never,
    /// Continue alone after the hold time without asking anyone. Labs and benchmarks
    /// only: a second failure can lose acknowledged writes.
    Always,
}

/// How a primary replicates (shared by `serve` and `import`).
#[derive(Debug, Clone, Args)]
pub struct PrimaryOpts {
    /// The peer's replica endpoint (host:port). Without it the volumes are served
    /// unreplicated.
    #[arg(long)]
    pub peer: Option<String>,
    #[arg(long, value_enum, default_value_t = ModeArg::Sync)]
    pub mode: ModeArg,
    /// Become primary at `--epoch` although the metadata says secondary (a failover:
    /// the epoch must be above the replica's and committed by the orchestrator).
    #[arg(long)]
    pub promote: bool,
    #[arg(long, value_enum, default_value_t = DegradeArg::Never)]
    pub degrade: DegradeArg,
    /// Sync: milliseconds writes are held for an unreachable peer before asking for
    /// permission to continue alone.
    #[arg(long, default_value_t = 1000)]
    pub hold_ms: u64,
    /// No frame from the peer for this many milliseconds: the link is down.
    #[arg(long, default_value_t = 3000)]
    pub peer_timeout_ms: u64,
    /// Async: the most the peer may lag, in bytes, before writers are throttled.
    #[arg(long, default_value = "256MiB")]
    pub lag_max: ByteSize,
    /// Async: the most seconds the peer may lag.
    #[arg(long, default_value_t = 10)]
    pub lag_max_secs: u64,
    /// On SIGTERM, seconds to wait for the peer to confirm the last writes.
    #[arg(long, default_value_t = 10)]
    pub stop_grace_secs: u64,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub g: GroupArgs,
    #[command(flatten)]
    pub p: PrimaryOpts,
    /// The unix socket QEMU connects to; each volume is an export named by its id.
    #[arg(long)]
    pub socket: PathBuf,
    /// Permission bits of the socket (octal).
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// Report the replication link to these orchestrator nodes (host:port,…) so the
    /// cluster knows when the other site's replica may be promoted. The group name is
    /// the app's id. Needs --site.
    #[arg(long, requires = "site")]
    pub report_to: Option<String>,
    /// The site this primary runs at (for --report-to).
    #[arg(long, requires = "report_to")]
    pub site: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The disk image to bring in (any format qemu-img reads: qcow2, raw, vmdk, vdi …).
    #[arg(long)]
    pub image: PathBuf,
    /// The volume of the group to copy it into (default: the group's only volume).
    #[arg(long)]
    pub into: Option<String>,
    #[command(flatten)]
    pub g: GroupArgs,
    #[command(flatten)]
    pub p: PrimaryOpts,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal permission like 600 or 660"))
}

#[derive(Debug, Args)]
pub struct ReplicaArgs {
    #[command(flatten)]
    pub g: GroupArgs,
    /// Where to accept the primary's stream (host:port; port 0 picks one, printed in
    /// the ready line).
    #[arg(long)]
    pub listen: String,
}

impl GroupArgs {
    fn volume_list(&self) -> Vec<VolumeArg> {
        match &self.data {
            Some(p) => vec![VolumeArg {
                id: DATA_ID.into(),
                path: p.clone(),
            }],
            None => self.volumes.clone(),
        }
    }
}

fn line<T: Serialize>(event: &str, body: &T) {
    let mut v = serde_json::to_value(body).unwrap_or(serde_json::Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("event".into(), event.into());
    }
    outln!("{v}");
}

/// Print `status` lines when the watched value changes, at most once per interval.
fn spawn_status_lines<T>(
    mut rx: watch::Receiver<T>,
    refresh: impl Fn() + Send + 'static,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    T: Serialize + Clone + PartialEq + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut last: Option<T> = None;
        loop {
            refresh();
            let now = rx.borrow_and_update().clone();
            if last.as_ref() != Some(&now) {
                line("status", &now);
                last = Some(now);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    })
}

async fn terminated() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

impl GroupArgs {
    fn files(&self) -> GroupFiles {
        GroupFiles {
            name: self.group.clone(),
            volumes: self
                .volume_list()
                .into_iter()
                .map(|v| (v.id, v.path, None))
                .collect(),
            size: self.size.map(|s| s.bytes()),
            epoch: ids::Epoch(self.epoch),
        }
    }
}

impl PrimaryOpts {
    fn options(&self, tls: Tls) -> PrimaryOptions {
        let permission: Arc<dyn DegradePermission> = match self.degrade {
            DegradeArg::Never => Arc::new(NeverDegrade),
            DegradeArg::Always => {
                tracing::warn!(
                    "--degrade always: continuing without the peer needs nobody's permission; a lab setting, not RPO 0"
                );
                Arc::new(AlwaysDegrade)
            }
        };
        PrimaryOptions {
            peer: self.peer.clone(),
            mode: match self.mode {
                ModeArg::Sync => Mode::Sync,
                ModeArg::Async => Mode::Async,
            },
            promote: self.promote,
            permission,
            hold_before_asking: Duration::from_millis(self.hold_ms),
            peer_timeout: Duration::from_millis(self.peer_timeout_ms),
            lag_max_bytes: self.lag_max.bytes(),
            lag_max: Duration::from_secs(self.lag_max_secs),
            stop_grace: Duration::from_secs(self.stop_grace_secs),
            tls,
        }
    }
}

/// A primary group served by this command, with its status lines.
struct Primary {
    served: ServedPrimary,
    status_stop: CancellationToken,
    status: Option<tokio::task::JoinHandle<()>>,
}

impl Primary {
    fn start(
        g: &GroupArgs,
        p: &PrimaryOpts,
        socket: &Path,
        socket_mode: u32,
        tls: Tls,
    ) -> anyhow::Result<Primary> {
        if p.peer.is_none() && p.mode == ModeArg::Async {
            bail!("--mode async needs --peer (without a peer the volumes are not replicated)");
        }
        let served = ServedPrimary::start(&g.files(), &p.options(tls.clone()), socket, socket_mode)
            .map_err(anyhow::Error::msg)?;
        Ok(Primary {
            served,
            status_stop: CancellationToken::new(),
            status: None,
        })
    }

    /// Print `status` lines from now on (after the `ready` line).
    fn print_status(&mut self, every_ms: u64) {
        let g = self.served.group.clone();
        self.status = Some(spawn_status_lines(
            self.served.group.status(),
            move || g.refresh(),
            Duration::from_millis(every_ms.max(10)),
            self.status_stop.clone(),
        ));
    }

    /// Stop serving (see [`ServedPrimary::stop`]); whether the peer confirmed all.
    async fn stop(self) -> anyhow::Result<bool> {
        let confirmed = self.served.stop().await.map_err(anyhow::Error::msg)?;
        self.status_stop.cancel();
        if let Some(s) = self.status {
            let _ = s.await;
        }
        Ok(confirmed)
    }
}

/// A host's credentials for replication links and reports (`--certs DIR --as HOST`).
pub type Tls = Option<Arc<security::Tls>>;

pub async fn serve(a: ServeArgs, tls: Tls) -> anyhow::Result<ExitCode> {
    let mut p = Primary::start(&a.g, &a.p, &a.socket, a.socket_mode, tls.clone())?;
    let m = p.served.group.meta();
    line(
        "ready",
        &serde_json::json!({
            "role": "primary", "group": a.g.group, "socket": a.socket, "pid": std::process::id(),
            "exports": p.served.vols.iter().map(|v| serde_json::json!({"name": v.id, "size": v.size, "path": v.path})).collect::<Vec<_>>(),
            "peer": a.p.peer, "mode": format!("{:?}", a.p.mode).to_lowercase(), "epoch": m.epoch, "generation": m.generation,
        }),
    );
    p.print_status(a.g.status_interval_ms);
    let reporter = match (&a.report_to, &a.site) {
        (Some(to), Some(site)) => Some(
            agent::replica_report::Reporter {
                addrs: orchestrator::client::parse_addrs(to),
                tls: tls.clone(),
                app: a.g.group.clone(),
                site: site.clone(),
            }
            .spawn(p.served.group.status(), p.status_stop.clone()),
        ),
        _ => None,
    };
    tokio::select! {
        r = terminated() => r?,
        _ = &mut p.served.link => {
            // The link ends by itself when there is no peer (then it is not watched
            // here) or when this primary was fenced by a newer epoch.
            if p.served.group.is_fenced() {
                tracing::error!("this primary is fenced (a newer primary exists): it acknowledges no write; stop it");
            }
            terminated().await?;
        }
    }
    tracing::info!(group = %a.g.group, "stopping: no new NBD requests; waiting for the ones in flight");
    let group = p.served.group.clone();
    let confirmed = p.stop().await?;
    if let Some(r) = reporter {
        r.abort();
    }
    let st = group.status().borrow().clone();
    line(
        "stopped",
        &serde_json::json!({"role": "primary", "group": a.g.group, "peer_confirmed_all": confirmed, "status": st}),
    );
    Ok(ExitCode::SUCCESS)
}

/// What `qemu-img info` says about an image.
#[derive(Debug, serde::Deserialize)]
struct ImageInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
}

fn image_info(path: &Path) -> anyhow::Result<ImageInfo> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run qemu-img ({e}): install qemu-utils (scripts/install-deps.sh)"
            )
        })?;
    if !out.status.success() {
        bail!(
            "{}: qemu-img cannot read it: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: unexpected qemu-img info output", path.display()))
}

/// Parse qemu-img's `-p` progress ("    (42.17/100%)") from the text so far.
fn last_percent(text: &str) -> Option<f64> {
    text.rsplit(['\r', '\n'])
        .filter_map(|l| {
            l.trim()
                .strip_prefix('(')?
                .strip_suffix("/100%)")?
                .parse()
                .ok()
        })
        .next()
}

pub async fn import(a: ImportArgs, tls: Tls) -> anyhow::Result<ExitCode> {
    let info = image_info(&a.image)?;
    let list = a.g.volume_list();
    let target = match &a.into {
        Some(id) => list
            .iter()
            .find(|v| &v.id == id)
            .with_context(|| format!("--into {id}: the group has no such volume"))?
            .clone(),
        None if list.len() == 1 => list[0].clone(),
        None => bail!(
            "the group has {} volumes: say which one receives the image with --into ID",
            list.len()
        ),
    };
    let mut g = a.g.clone();
    if !target.path.exists() && g.size.is_none() {
        g.size = Some(ByteSize(info.virtual_size));
    }
    let dir = std::env::temp_dir().join(format!("metrodr-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let socket = dir.join("nbd.sock");
    let p = Primary::start(&g, &a.p, &socket, 0o600, tls)?;
    let vol = p
        .served
        .vols
        .iter()
        .find(|v| v.id == target.id)
        .context("the volume vanished")?
        .clone();
    if vol.size < info.virtual_size {
        let _ = p.stop().await;
        bail!(
            "{}: the volume has {} bytes, the image {}; grow the volume (or create it anew with --size)",
            target.path.display(),
            vol.size,
            info.virtual_size
        );
    }
    line(
        "ready",
        &serde_json::json!({"image": a.image, "format": info.format, "bytes": info.virtual_size, "volume": target.id,
            "path": target.path, "peer": a.p.peer, "mode": format!("{:?}", a.p.mode).to_lowercase()}),
    );
    let started = std::time::Instant::now();
    let uri = format!("nbd+unix:///{}?socket={}", target.id, socket.display());
    let mut child = tokio::process::Command::new("qemu-img")
        .args(["convert", "-p", "-n", "-f", &info.format, "-O", "raw"])
        .arg(&a.image)
        .arg(&uri)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run qemu-img convert")?;
    let mut out = child.stdout.take().context("qemu-img stdout")?;
    let mut err = child.stderr.take().context("qemu-img stderr")?;
    let errors = tokio::spawn(async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut err, &mut s).await;
        s
    });
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let mut last_line = std::time::Instant::now();
    loop {
        let n = tokio::select! {
            n = tokio::io::AsyncReadExt::read(&mut out, &mut buf) => n.unwrap_or(0),
            r = terminated() => {
                r?;
                let _ = child.kill().await;
                let _ = p.stop().await;
                bail!("interrupted: the volume holds part of the image; run the import again");
            }
        };
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        if last_line.elapsed() >= Duration::from_millis(500) {
            last_line = std::time::Instant::now();
            let st = p.served.group.status().borrow().clone();
            line(
                "progress",
                &serde_json::json!({"phase": "copy", "percent": last_percent(&text), "link": st.link, "lag_bytes": st.lag_bytes}),
            );
        }
        if text.len() > 1 << 16 {
            text.drain(..text.len() - 256);
        }
    }
    let status = child.wait().await.context("waiting for qemu-img")?;
    let errors = errors.await.unwrap_or_default();
    if !status.success() {
        let _ = p.stop().await;
        bail!("qemu-img convert failed ({status}): {}", errors.trim());
    }
    let copied_in = started.elapsed();
    // The copy is local; now the peer must hold it too.
    if a.p.peer.is_some() {
        let mut rx = p.served.group.status();
        loop {
            p.served.group.refresh();
            let st = rx.borrow_and_update().clone();
            if st.link == replication::link::LinkState::Streaming
                && !st.degraded
                && st.lag_bytes == 0
            {
                break;
            }
            line(
                "progress",
                &serde_json::json!({"phase": "sync", "link": st.link, "lag_bytes": st.lag_bytes,
                "resync_done": st.resync_done, "resync_total": st.resync_total, "degraded": st.degraded}),
            );
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                r = terminated() => {
                    r?;
                    let _ = p.stop().await;
                    bail!("interrupted: the image is in the volume but the peer is not in sync yet; serving the volume will finish it");
                }
            }
        }
    }
    let confirmed = p.stop().await?;
    let _ = std::fs::remove_dir(&dir);
    line(
        "imported",
        &serde_json::json!({"volume": target.id, "bytes": info.virtual_size, "copy_secs": copied_in.as_secs_f64(),
            "total_secs": started.elapsed().as_secs_f64(), "peer_in_sync": a.p.peer.is_some() && confirmed}),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn replica(a: ReplicaArgs, tls: Tls) -> anyhow::Result<ExitCode> {
    let served = ServedSecondary::start(&a.g.files(), &a.listen, tls)
        .await
        .map_err(anyhow::Error::msg)?;
    let group = served.group.clone();
    let m = group.meta();
    line(
        "ready",
        &serde_json::json!({
            "role": format!("{:?}", m.role).to_lowercase(), "group": a.g.group, "listen": served.addr.to_string(), "pid": std::process::id(),
            "volumes": served.vols.iter().map(|v| serde_json::json!({"name": v.id, "size": v.size, "path": v.path})).collect::<Vec<_>>(),
            "epoch": m.epoch, "generation": m.generation, "consistent": m.consistent,
        }),
    );
    let status_stop = CancellationToken::new();
    let status = spawn_status_lines(
        group.status(),
        || {},
        Duration::from_millis(a.g.status_interval_ms.max(10)),
        status_stop.clone(),
    );
    terminated().await?;
    served.stop().await;
    status_stop.cancel();
    let _ = status.await;
    let st = group.status().borrow().clone();
    line(
        "stopped",
        &serde_json::json!({"role": "secondary", "group": a.g.group, "status": st}),
    );
    Ok(ExitCode::SUCCESS)
}
