//! The volume groups this agent serves (topologies with `volumes = "agents"`): one
//! consistency group per app, as primary (NBD exports on `<sockets>/<app>.sock` for the
//! app's VMs, replicated to the peer) or as secondary (the endpoint the other site's
//! primary streams to). The data path runs inside the agent: when the agent dies, so
//! does what it served, as when the host dies.
//!
//! Every group keeps one replication port for life (`<volumes>/<app>.port`): the
//! secondary listens on it, and a primary promoted at the other site after a loss
//! points at it, so the returning site's replica is found again without restarting
//! the primary (reprotect resyncs the delta).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::agent::{AgentEvent, CommandOutcome, PeerConfirmation, StoppedGroup};
use replication::meta::{ReplicaMeta, Role};
use replication::primary::PrimaryGroup;
use replication::replica::Mode;
use replication::service::{
    GroupFiles, PrimaryOptions, ServedPrimary, ServedSecondary, ServedSnapshot,
};
use tokio_util::sync::CancellationToken;
use topology::ReplicationMode;
use topology::ids::{AppId, OpId, VolumeId};
use topology::spec::{GroupRole, GroupSpec};

use crate::replica_report::{ClusterPermission, Reporter};

/// How long a primary being replaced or stopped waits for its peer to confirm.
const STOP_GRACE: Duration = Duration::from_secs(5);

enum Served {
    Primary {
        served: ServedPrimary,
        spec: GroupSpec,
        reporter_stop: CancellationToken,
    },
    Secondary {
        served: ServedSecondary,
        spec: GroupSpec,
    },
}

impl Served {
    fn spec(&self) -> &GroupSpec {
        match self {
            Served::Primary { spec, .. } | Served::Secondary { spec, .. } => spec,
        }
    }

    /// Stop it (a primary waits up to `grace` for its peer); what it had when it
    /// stopped, with the sequence numbers that prove it.
    async fn stop(self, grace: Duration) -> StoppedGroup {
        match self {
            Served::Primary {
                mut served,
                reporter_stop,
                ..
            } => {
                reporter_stop.cancel();
                served.set_stop_grace(grace);
                let fenced = served.group.is_fenced();
                let st = served.group.status().borrow().clone();
                let confirmation = match served.stop().await {
                    Ok(true) => PeerConfirmation::Confirmed {
                        up_to: st.next_seq.prev(),
                    },
                    Ok(false) if fenced => PeerConfirmation::Fenced,
                    Ok(false) => PeerConfirmation::NotConfirmed {
                        link: st.link.to_string(),
                    },
                    Err(e) => PeerConfirmation::StopFailed {
                        error: e.to_string(),
                    },
                };
                StoppedGroup::Primary {
                    epoch: st.epoch,
                    confirmation,
                }
            }
            Served::Secondary { served, .. } => {
                let group = served.group.clone();
                served.stop().await;
                let st = group.status().borrow().clone();
                StoppedGroup::Secondary {
                    epoch: st.epoch,
                    last_applied: st.last_seq,
                }
            }
        }
    }
}

/// The groups served on this host.
pub struct Volumes {
    volumes_dir: PathBuf,
    sockets_dir: PathBuf,
    /// Where secondaries listen (the address the other site's primaries reach).
    ip: String,
    cluster: Vec<String>,
    /// Mutual TLS for the replication links and the replica reports.
    tls: Option<Arc<security::Tls>>,
    groups: tokio::sync::Mutex<BTreeMap<AppId, Served>>,
    /// The primaries, reachable without awaiting (fencing runs from a lease check).
    primaries: Mutex<BTreeMap<AppId, Arc<PrimaryGroup>>>,
    /// Test drills' snapshots of the secondaries served here, per (drill, app).
    drills: tokio::sync::Mutex<BTreeMap<(OpId, AppId), ServedSnapshot>>,
}

/// The lab fails the disk under volume V served by an agent by creating the file
/// `faults/disk-V` in the agent's state directory, and repairs it by removing it (this
/// machine's kernel has no device-mapper for a real `dm-error` target). The agent
/// looks every half second.
pub const DISK_FAULT_PREFIX: &str = "disk-";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Volumes {
    pub fn new(
        volumes_dir: PathBuf,
        sockets_dir: PathBuf,
        ip: String,
        cluster: Vec<String>,
        tls: Option<Arc<security::Tls>>,
    ) -> Volumes {
        Volumes {
            volumes_dir,
            sockets_dir,
            ip,
            cluster,
            tls,
            groups: tokio::sync::Mutex::new(BTreeMap::new()),
            primaries: Mutex::new(BTreeMap::new()),
            drills: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Drill `op`: snapshot the secondary of `app` served here at one sequence point
    /// and export it on `socket` (one export per volume, private writable overlay).
    /// Taking it again returns the snapshot already taken.
    pub async fn drill_snapshot(
        &self,
        op: OpId,
        app: &AppId,
        socket: PathBuf,
    ) -> Result<CommandOutcome, String> {
        // Lock order: groups before drills (as `serve` does).
        let group = match self.groups.lock().await.get(app) {
            Some(Served::Secondary { served, .. }) => served.group.clone(),
            Some(Served::Primary { .. }) => {
                return Err(format!(
                    "this host serves the primary of {app}: a test drill snapshots the other site's replica"
                ));
            }
            None => return Err(format!("this host serves no replica of {app}")),
        };
        let volumes = u32::try_from(group.volumes.len()).unwrap_or(u32::MAX);
        let mut drills = self.drills.lock().await;
        let key = (op, app.clone());
        if let Some(s) = drills.get(&key) {
            return Ok(CommandOutcome::DrillSnapshotTaken {
                app: app.clone(),
                seq: s.seq(),
                volumes,
                already: true,
            });
        }
        let dir = self
            .volumes_dir
            .join("drills")
            .join(format!("{}-{app}", op.0));
        let snap = ServedSnapshot::start(&group, &dir, &socket).await?;
        let outcome = CommandOutcome::DrillSnapshotTaken {
            app: app.clone(),
            seq: snap.seq(),
            volumes,
            already: false,
        };
        drills.insert(key, snap);
        Ok(outcome)
    }

    /// Drop drill `op`'s snapshots here (their overlays are deleted); what was done,
    /// with how far replication went on meanwhile.
    pub async fn drill_cleanup(&self, op: OpId) -> Vec<String> {
        let mine: Vec<(OpId, AppId)> = self
            .drills
            .lock()
            .await
            .keys()
            .filter(|(o, _)| *o == op)
            .cloned()
            .collect();
        let mut out = Vec::new();
        for key in mine {
            let Some(snap) = self.drills.lock().await.remove(&key) else {
                continue;
            };
            let taken = snap.seq();
            snap.stop().await;
            let now = match self.groups.lock().await.get(&key.1) {
                Some(Served::Secondary { served, .. }) => {
                    format!(
                        "; the replica is now at sequence {}",
                        served.group.status().borrow().last_seq
                    )
                }
                _ => String::new(),
            };
            out.push(format!(
                "snapshot of {} (sequence {taken}) dropped{now}",
                key.1
            ));
        }
        out
    }

    /// Drop every drill snapshot of `app` (its group is replaced or stopped: a
    /// snapshot only lives on the secondary it was taken of).
    async fn drop_snapshots_of(&self, app: &AppId) -> Vec<String> {
        let keys: Vec<(OpId, AppId)> = self
            .drills
            .lock()
            .await
            .keys()
            .filter(|(_, a)| a == app)
            .cloned()
            .collect();
        let mut out = Vec::new();
        for k in keys {
            if let Some(s) = self.drills.lock().await.remove(&k) {
                s.stop().await;
                out.push(format!("drill {}'s snapshot of {app} dropped", k.0.0));
            }
        }
        out
    }

    fn files(&self, spec: &GroupSpec) -> GroupFiles {
        GroupFiles {
            name: spec.app.to_string(),
            volumes: spec
                .volumes
                .iter()
                .map(|d| {
                    (
                        d.volume.to_string(),
                        self.volumes_dir.join(format!("{}.raw", d.volume)),
                        Some(d.size.bytes()),
                    )
                })
                .collect(),
            size: None,
            epoch: spec.epoch,
        }
    }

    /// The group's replication endpoint, chosen once (a free port) and kept.
    fn endpoint(&self, app: &AppId) -> Result<String, String> {
        let path = self.volumes_dir.join(format!("{app}.port"));
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(port) = text.trim().parse::<u16>()
        {
            return Ok(format!("{}:{port}", self.ip));
        }
        let probe = std::net::TcpListener::bind(format!("{}:0", self.ip))
            .map_err(|e| format!("cannot find a free port on {}: {e}", self.ip))?;
        let port = probe.local_addr().map_err(|e| e.to_string())?.port();
        drop(probe);
        let tmp = path.with_extension("port.tmp");
        std::fs::write(&tmp, format!("{port}\n"))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot record the port in {}: {e}", path.display()))?;
        Ok(format!("{}:{port}", self.ip))
    }

    /// The socket the app's VMs reach their disks through.
    pub fn socket(&self, app: &AppId) -> PathBuf {
        self.sockets_dir.join(format!("{app}.sock"))
    }

    /// Serve `spec`, replacing what this host served of the group. Serving the same
    /// role at the same epoch again changes nothing.
    pub async fn serve(&self, spec: GroupSpec) -> Result<proto::agent::Served, String> {
        if spec.volumes.is_empty() {
            return Err(format!("app {} has no volumes to serve", spec.app));
        }
        let endpoint = self.endpoint(&spec.app)?;
        let mut groups = self.groups.lock().await;
        if let Some(cur) = groups.get(&spec.app) {
            let c = cur.spec();
            if c.role == spec.role && c.epoch == spec.epoch && c.peer == spec.peer {
                return Ok(proto::agent::Served {
                    app: spec.app.clone(),
                    role: spec.role,
                    epoch: spec.epoch,
                    endpoint,
                    already: true,
                    promoted: false,
                    peer: spec.peer.clone(),
                    replaced: None,
                });
            }
        }
        for d in self.drop_snapshots_of(&spec.app).await {
            tracing::info!(app = %spec.app, "{d}");
        }
        let mut replaced = None;
        if let Some(old) = groups.remove(&spec.app) {
            lock(&self.primaries).remove(&spec.app);
            replaced = Some(old.stop(STOP_GRACE).await);
        }
        let files = self.files(&spec);
        let (served, outcome) = match spec.role {
            GroupRole::Secondary => {
                let served = ServedSecondary::start(&files, &endpoint, self.tls.clone()).await?;
                let m = served.group.meta();
                let outcome = proto::agent::Served {
                    app: spec.app.clone(),
                    role: spec.role,
                    epoch: m.epoch,
                    endpoint,
                    already: false,
                    promoted: false,
                    peer: None,
                    replaced,
                };
                (Served::Secondary { served, spec }, outcome)
            }
            GroupRole::Primary => {
                let first = files.volumes.first().map(|v| v.1.clone());
                let meta = first.and_then(|p| ReplicaMeta::load(&p).ok().flatten());
                // Promote only what is not primary at this epoch yet (a command
                // retried after a restart finds it promoted).
                let promote = spec.promote
                    && meta
                        .as_ref()
                        .is_some_and(|m| m.role == Role::Secondary || m.epoch < spec.epoch);
                let reporter = || Reporter {
                    addrs: self.cluster.clone(),
                    tls: self.tls.clone(),
                    app: spec.app.to_string(),
                    site: spec.site.to_string(),
                };
                let opts = PrimaryOptions {
                    peer: spec.peer.clone(),
                    mode: match spec.mode {
                        ReplicationMode::Sync => Mode::Sync,
                        ReplicationMode::Async => Mode::Async,
                    },
                    promote,
                    permission: Arc::new(ClusterPermission {
                        reporter: reporter(),
                    }),
                    hold_before_asking: Duration::from_secs(1),
                    peer_timeout: Duration::from_secs(3),
                    lag_max_bytes: spec.lag_max_bytes.max(1 << 20),
                    lag_max: Duration::from_secs(u64::from(spec.lag_max_s.max(1))),
                    stop_grace: STOP_GRACE,
                    tls: self.tls.clone(),
                };
                let socket = self.socket(&spec.app);
                // Owner only: the agent runs as the hypervisor user (DESIGN §10).
                let served = ServedPrimary::start(
                    &files,
                    &opts,
                    &socket,
                    replication::nbd::DEFAULT_SOCKET_MODE,
                )?;
                let reporter_stop = CancellationToken::new();
                reporter().spawn(served.group.status(), reporter_stop.clone());
                lock(&self.primaries).insert(spec.app.clone(), served.group.clone());
                let m = served.group.meta();
                let outcome = proto::agent::Served {
                    app: spec.app.clone(),
                    role: spec.role,
                    epoch: m.epoch,
                    endpoint,
                    already: false,
                    promoted: promote,
                    peer: spec.peer.clone(),
                    replaced,
                };
                (
                    Served::Primary {
                        served,
                        spec,
                        reporter_stop,
                    },
                    outcome,
                )
            }
        };
        groups.insert(served.spec().app.clone(), served);
        Ok(outcome)
    }

    /// Stop serving the app's group; a primary waits up to `grace_s` (0: 5 s) for its
    /// peer to confirm every write.
    pub async fn unserve(&self, app: &AppId, grace_s: u32) -> Option<StoppedGroup> {
        self.drop_snapshots_of(app).await;
        lock(&self.primaries).remove(app);
        let old = self.groups.lock().await.remove(app);
        let grace = if grace_s == 0 {
            STOP_GRACE
        } else {
            Duration::from_secs(u64::from(grace_s))
        };
        match old {
            Some(s) => Some(s.stop(grace).await),
            None => None,
        }
    }

    /// Stop acknowledging guest writes on every primary (the lease ran out).
    pub fn fence_io(&self) -> Result<String, String> {
        let primaries = lock(&self.primaries);
        if primaries.is_empty() {
            return Ok("no primary volume groups served".into());
        }
        let mut names = Vec::new();
        for (app, g) in primaries.iter() {
            g.fence("this host's lease ran out");
            names.push(app.to_string());
        }
        Ok(format!("fenced primaries [{}]", names.join(", ")))
    }

    /// Fail or repair the disks under the volumes served here so that exactly those in
    /// `failed` are failed (the lab's disk fault: see [`DISK_FAULT_PREFIX`]). Skipped
    /// while a serve or stop holds the groups (the next check applies it). Returns
    /// what changed.
    pub fn apply_disk_faults(
        &self,
        failed: &std::collections::BTreeSet<String>,
    ) -> Vec<AgentEvent> {
        let Ok(groups) = self.groups.try_lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for s in groups.values() {
            let vols = match s {
                Served::Primary { served, .. } => &served.vols,
                Served::Secondary { served, .. } => &served.vols,
            };
            for v in vols {
                let want = failed.contains(&v.id);
                if v.is_failed() != want {
                    v.set_failed(want);
                    out.push(AgentEvent::DiskFault {
                        volume: VolumeId::new(v.id.as_str()),
                        failed: want,
                        detail: if want {
                            "every I/O to it fails (lab disk fault)".into()
                        } else {
                            "I/O works again".into()
                        },
                    });
                }
            }
        }
        out
    }

    /// Stop everything (the agent stops, or it fenced and starts over). `fenced`: the
    /// primaries acknowledge nothing any more, so nothing waits for a peer's
    /// confirmation (a peer cut off would hold the teardown for the whole grace).
    pub async fn stop_all(&self, fenced: bool) -> Vec<String> {
        let snaps: Vec<ServedSnapshot> = std::mem::take(&mut *self.drills.lock().await)
            .into_values()
            .collect();
        for s in snaps {
            s.stop().await;
        }
        lock(&self.primaries).clear();
        let all: Vec<Served> = std::mem::take(&mut *self.groups.lock().await)
            .into_values()
            .collect();
        let mut out = Vec::new();
        let grace = if fenced { Duration::ZERO } else { STOP_GRACE };
        for s in all {
            out.push(s.stop(grace).await.to_string());
        }
        out
    }
}
