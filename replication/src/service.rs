//! A consistency group being served: the glue between the data files, the replica
//! metadata, the NBD server (primary) or the stream endpoint (secondary). Used by the
//! `metrodr volume serve|replica|import` commands and by the agent, which serves the
//! groups the orchestrator places on its host.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ids::{Epoch, GroupSeq};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::meta::{ReplicaMeta, Role};
use crate::nbd::{Export, ExportSet, ServerConfig, UnixServer};
use crate::primary::{DegradePermission, GroupConfig, PrimaryGroup};
use crate::replica::{Mode, promote};
use crate::secondary::ReplicaGroup;
use crate::volume::{VolumeFile, open_replica};

/// The files of a group: its volumes (id and data file, in the same order on both
/// sides), the size to create missing files with, and the epoch a new replica starts at.
#[derive(Debug, Clone)]
pub struct GroupFiles {
    pub name: String,
    /// Id, data file, and the size to create it with when missing (else `size`).
    pub volumes: Vec<(String, PathBuf, Option<u64>)>,
    /// Create missing data files with this many bytes (existing files keep theirs).
    pub size: Option<u64>,
    pub epoch: Epoch,
}

/// Open every volume of the group and check their metadata agree.
pub fn open_group(
    g: &GroupFiles,
    role: Role,
) -> Result<(Vec<Arc<VolumeFile>>, ReplicaMeta), String> {
    let mut vols = Vec::new();
    let mut first: Option<ReplicaMeta> = None;
    let mut all_fresh = true;
    for (id, path, own_size) in &g.volumes {
        let size = own_size.or(g.size);
        if size.is_none() && !path.exists() {
            return Err(format!(
                "{}: no such data file; pass --size to create it (e.g. --size 10GiB)",
                path.display()
            ));
        }
        let fresh = !crate::meta::meta_path(path).exists();
        let (file, mut meta) = open_replica(id, path, size, role, g.epoch)
            .map_err(|e| format!("opening volume {id} ({}): {e}", path.display()))?;
        // Volumes created together form one group: one generation for all of them.
        // (A new volume next to existing ones keeps its own: it holds none of their
        // history, and the mismatch below says so.)
        if let (true, true, Some(m)) = (fresh, all_fresh, &first)
            && meta.generation != m.generation
        {
            meta.generation.clone_from(&m.generation);
            meta.save(path)
                .map_err(|e| format!("saving the metadata of volume {id}: {e}"))?;
        }
        all_fresh &= fresh;
        if &meta.volume != id {
            return Err(format!(
                "{}: this data file belongs to volume {:?}, not {id:?}",
                path.display(),
                meta.volume,
            ));
        }
        match &first {
            None => first = Some(meta),
            Some(m) => {
                if (m.role, m.epoch, &m.generation, m.consistent)
                    != (meta.role, meta.epoch, &meta.generation, meta.consistent)
                {
                    return Err(format!(
                        "the group's volumes disagree ({}: {:?} epoch {} generation {}; {id}: {:?} epoch {} generation {}): \
                         they were not replicated as one group; serve them as separate groups or restore them together",
                        g.volumes[0].0,
                        m.role,
                        m.epoch,
                        m.generation,
                        meta.role,
                        meta.epoch,
                        meta.generation
                    ));
                }
            }
        }
        vols.push(file);
    }
    let meta = first.ok_or("a group needs at least one volume")?;
    Ok((vols, meta))
}

/// How a primary replicates.
#[derive(Clone)]
pub struct PrimaryOptions {
    /// The peer's replica endpoint (host:port); None: served unreplicated.
    pub peer: Option<String>,
    pub mode: Mode,
    /// Become primary at the group's epoch although the metadata says secondary (a
    /// failover: the epoch must be above the replica's, committed by the orchestrator).
    pub promote: bool,
    pub permission: Arc<dyn DegradePermission>,
    pub hold_before_asking: Duration,
    pub peer_timeout: Duration,
    pub lag_max_bytes: u64,
    pub lag_max: Duration,
    /// On stop, how long to wait for the peer to confirm the last writes.
    pub stop_grace: Duration,
    /// Mutual TLS on the replication link; None: plain TCP.
    pub tls: Option<Arc<security::Tls>>,
}

/// A primary group being served: its NBD server on a unix socket and its link.
pub struct ServedPrimary {
    pub group: Arc<PrimaryGroup>,
    pub vols: Vec<Arc<VolumeFile>>,
    /// The replication link task: it ends by itself when there is no peer or when
    /// this primary was fenced by a newer epoch.
    pub link: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    stop_grace: Duration,
}

impl ServedPrimary {
    /// Open the group as primary and serve each volume as an NBD export (named by
    /// its id) on `socket`. Must run inside a tokio runtime.
    pub fn start(
        g: &GroupFiles,
        o: &PrimaryOptions,
        socket: &Path,
        socket_mode: u32,
    ) -> Result<ServedPrimary, String> {
        if o.peer.is_none() && o.mode == Mode::Async {
            return Err(
                "async replication needs a peer (without a peer the volumes are not replicated)"
                    .into(),
            );
        }
        let (vols, mut meta) = open_group(g, Role::Primary)?;
        if o.promote {
            meta = promote(&meta, g.epoch)
                .map_err(|e| format!("promoting group {} to primary: {e}", g.name))?;
        } else if meta.role == Role::Secondary {
            return Err(format!(
                "group {}: these files are a secondary replica (epoch {}); serving them would fork the data. \
                 For a failover pass --promote --epoch N with N above {} (the epoch the orchestrator committed)",
                g.name, meta.epoch, meta.epoch
            ));
        }
        let mut cfg = GroupConfig::new(&g.name, o.mode, o.peer.clone());
        cfg.hold_before_asking = o.hold_before_asking;
        cfg.peer_timeout = o.peer_timeout.max(Duration::from_millis(100));
        cfg.lag_max_bytes = o.lag_max_bytes;
        cfg.lag_max = o.lag_max.max(Duration::from_secs(1));
        cfg.tls.clone_from(&o.tls);
        let group = PrimaryGroup::open(cfg, vols.clone(), meta, o.permission.clone())?;
        let link = tokio::spawn(crate::link::run(group.clone()));
        let exports = vols
            .iter()
            .enumerate()
            .map(|(i, v)| Export {
                name: v.id.clone(),
                description: format!("metrodr group {} volume {}", g.name, v.id),
                backend: Arc::new(group.backend(i)),
                multi_conn: true,
            })
            .collect();
        let exports = Arc::new(ExportSet::new(exports).map_err(|e| e.to_string())?);
        let server = UnixServer::bind(socket, socket_mode, exports, ServerConfig::default())
            .map_err(|e| format!("listening on {}: {e}", socket.display()))?;
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(server.run(shutdown.clone()));
        Ok(ServedPrimary {
            group,
            vols,
            link,
            shutdown,
            serving,
            stop_grace: o.stop_grace,
        })
    }

    /// How long [`ServedPrimary::stop`] waits for the peer.
    pub fn set_stop_grace(&mut self, grace: Duration) {
        self.stop_grace = grace;
    }

    /// Stop taking NBD requests, let the ones in flight finish, wait (bounded) for the
    /// peer to confirm everything, stop the link. Returns whether the peer confirmed all.
    pub async fn stop(mut self) -> Result<bool, String> {
        self.shutdown.cancel();
        // A fenced group never completes the writes in flight: do not give them the
        // server's grace (it would hold the fence's teardown for it), drop them.
        let served = if self.group.is_fenced() {
            match tokio::time::timeout(Duration::from_millis(200), &mut self.serving).await {
                Ok(r) => Some(r),
                Err(_) => {
                    self.serving.abort();
                    tracing::warn!(
                        "fenced: the NBD requests in flight were dropped (none would ever be acknowledged)"
                    );
                    None
                }
            }
        } else {
            Some((&mut self.serving).await)
        };
        match served {
            Some(Ok(Ok(()))) | None => {}
            Some(Ok(Err(e))) => tracing::warn!("NBD server: {e}"),
            Some(Err(e)) => tracing::warn!("NBD server task: {e}"),
        }
        let confirmed = self.group.close(self.stop_grace).await?;
        // (The caller may have awaited the link already, when it ended by itself.)
        if !self.link.is_finished() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.link).await;
        }
        Ok(confirmed)
    }
}

/// A secondary group being served: the endpoint its primary streams to.
pub struct ServedSecondary {
    pub group: Arc<ReplicaGroup>,
    pub vols: Vec<Arc<VolumeFile>>,
    /// Where it accepts the primary's stream.
    pub addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
}

impl ServedSecondary {
    /// Open the group as secondary and accept its primary's stream on `listen`
    /// (host:port; port 0 picks one, see [`ServedSecondary::addr`]); with `tls`, only
    /// from a primary holding an agent certificate of the same CA.
    pub async fn start(
        g: &GroupFiles,
        listen: &str,
        tls: Option<Arc<security::Tls>>,
    ) -> Result<ServedSecondary, String> {
        let (vols, meta) = open_group(g, Role::Secondary)?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("listening on {listen} for the primary's stream: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let group = ReplicaGroup::new(&g.name, vols.clone(), meta);
        let (stop, stop_rx) = watch::channel(false);
        let serving = tokio::spawn(crate::secondary::serve(
            group.clone(),
            listener,
            stop_rx,
            tls,
        ));
        Ok(ServedSecondary {
            group,
            vols,
            addr,
            stop,
            serving,
        })
    }

    /// Stop accepting, end the connections, make everything durable.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.serving.await;
    }
}

/// A drill's snapshot of a secondary group, served: one NBD export per volume (named
/// by the volume id) on a unix socket, each with a private writable overlay.
pub struct ServedSnapshot {
    pub snapshot: Arc<crate::snapshot::GroupSnapshot>,
    pub socket: PathBuf,
    shutdown: CancellationToken,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServedSnapshot {
    /// Snapshot `group` at its last applied frame (files in `dir`) and serve it on
    /// `socket` (owner only, mode 0600). Must run inside a tokio runtime.
    pub async fn start(
        group: &Arc<ReplicaGroup>,
        dir: &Path,
        socket: &Path,
    ) -> Result<ServedSnapshot, String> {
        let snapshot = Arc::new(group.snapshot(dir).await?);
        let exports = snapshot
            .volumes
            .iter()
            .map(|v| Export {
                name: v.id.clone(),
                description: format!(
                    "metrodr drill snapshot of group {} volume {} at sequence {}",
                    group.name, v.id, snapshot.seq
                ),
                backend: v.clone(),
                multi_conn: false,
            })
            .collect();
        let served = ExportSet::new(exports)
            .map_err(|e| e.to_string())
            .and_then(|exports| {
                UnixServer::bind(
                    socket,
                    crate::nbd::DEFAULT_SOCKET_MODE,
                    Arc::new(exports),
                    ServerConfig::default(),
                )
                .map_err(|e| format!("listening on {}: {e}", socket.display()))
            });
        let server = match served {
            Ok(s) => s,
            Err(e) => {
                snapshot.drop_files();
                return Err(e);
            }
        };
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(server.run(shutdown.clone()));
        Ok(ServedSnapshot {
            snapshot,
            socket: socket.to_path_buf(),
            shutdown,
            serving,
        })
    }

    /// The last sequence number of the primary's stream the snapshot holds.
    pub fn seq(&self) -> GroupSeq {
        self.snapshot.seq
    }

    /// Stop serving, detach from the replica (replication copies nothing more) and
    /// delete the snapshot's files and socket.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match self.serving.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("drill snapshot NBD server: {e}"),
            Err(e) => tracing::warn!("drill snapshot NBD server task: {e}"),
        }
        self.snapshot.drop_files();
        let _ = std::fs::remove_file(&self.socket);
    }
}
