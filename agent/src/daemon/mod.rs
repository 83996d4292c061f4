//! The agent process: a thin async shell around the pure [`crate::core`]. One loop
//! (`shell`) waits for a timer, the result of a call or the stop signal, hands it to
//! the core and starts the effects the core asks for; every slow effect (a libvirt
//! call, a gRPC call, a command, the fence, a journal write) runs in a task of its own
//! whose result comes back to the loop as an input. The loop never awaits an effect,
//! so a busy command, a hung libvirt or a slow disk never delays a renewal or the
//! lease check.
//!
//! What the tasks share is what they act on, never the agent's state: libvirt
//! ([`Hypervisor`]), the volume groups served here ([`Volumes`]), the journal file
//! ([`Journal`]); and a channel back to the loop.
//!
//! Never: run a command without a valid lease, restart anything by itself after
//! regaining a lease, or run a command twice (the core decides; this only obeys).

mod disk;
mod drill;
mod execute;
mod fence;
mod observe;
mod probe;
mod rpc;
mod shell;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{AgentConfig, PRIVATE_TEST_URI};
use crate::core::{Core, CoreConfig};
use crate::domain_xml::{self, HostPaths};
use crate::hypervisor::{HvError, HvErrorKind, Hypervisor, Libvirt};
use crate::journal::Journal;
use crate::lease::mono_now;
use crate::volumes::Volumes;

/// What stops guest I/O on the primary volumes this host serves. The replication
/// engine provides the real one; until it runs here, [`NoVolumes`] says so.
pub trait FenceHook: Send + Sync + 'static {
    /// Stop acknowledging guest writes on every primary volume served here.
    fn fence_io(&self) -> Result<String, String>;
}

/// This agent serves no replicated volumes (disks are local files or served by
/// another process): there is no guest I/O to stop besides the VMs themselves.
pub struct NoVolumes;

impl FenceHook for NoVolumes {
    fn fence_io(&self) -> Result<String, String> {
        Ok("no replicated volumes are served by this agent".into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot prepare {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Console marks a command set (Some: the log's length at a start) or dropped (None).
type Marks = Vec<(String, Option<u64>)>;

/// What the tasks act on: read-only configuration and the resources with their own
/// locking (libvirt, the volume groups, the journal file).
struct Resources {
    cfg: AgentConfig,
    hv: Arc<dyn Hypervisor>,
    fence: Arc<dyn FenceHook>,
    journal: Journal,
    paths: HostPaths,
    volumes: Arc<Volumes>,
}

/// A running agent; dropping the handle does not stop it, `stop` does.
pub struct RunningAgent {
    stop: watch::Sender<bool>,
    shell: tokio::task::JoinHandle<()>,
    volumes: Arc<Volumes>,
}

impl RunningAgent {
    /// Stop the loop (a fence under way finishes first; commands under way are
    /// abandoned, as when the process ends), then every volume group served here.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.shell.await;
        for line in self.volumes.stop_all(false).await {
            tracing::info!("{line}");
        }
    }
}

/// Start the agent: prepare directories, open libvirt and the journal, start the loop.
pub async fn start(
    cfg: AgentConfig,
    fence: Arc<dyn FenceHook>,
) -> Result<RunningAgent, AgentError> {
    for d in [
        cfg.state_dir.clone(),
        cfg.volumes_dir(),
        cfg.sockets_dir(),
        cfg.consoles_dir(),
    ] {
        std::fs::create_dir_all(&d).map_err(|source| AgentError::Dir {
            path: d.clone(),
            source,
        })?;
    }
    let uri = if cfg.libvirt_uri == PRIVATE_TEST_URI {
        let path = cfg.state_dir.join("testhost.xml");
        let xml =
            domain_xml::test_host_xml(cfg.private_host_vcpus, cfg.private_host_memory.bytes());
        std::fs::write(&path, xml).map_err(|source| AgentError::Dir {
            path: path.clone(),
            source,
        })?;
        format!("test://{}", path.display())
    } else {
        cfg.libvirt_uri.clone()
    };
    let hv: Arc<dyn Hypervisor> = Arc::new(Libvirt::new(&uri));
    start_with(cfg, hv, fence).await
}

/// Start with a given hypervisor (tests pass their own libvirt connection).
pub async fn start_with(
    cfg: AgentConfig,
    hv: Arc<dyn Hypervisor>,
    fence: Arc<dyn FenceHook>,
) -> Result<RunningAgent, AgentError> {
    let journal = Journal::open(&cfg.state_dir.join("journal.jsonl"))?;
    let paths = HostPaths {
        host: cfg.host.clone(),
        volumes_dir: cfg.volumes_dir(),
        sockets_dir: cfg.sockets_dir(),
        consoles_dir: cfg.consoles_dir(),
    };
    let tls = match &cfg.tls {
        Some(files) => {
            let tls = security::Tls::load(files).map_err(|e| AgentError::Tls(e.to_string()))?;
            let p = &tls.principal;
            if p.role != security::Role::Agent || p.name != cfg.host {
                return Err(AgentError::Tls(format!(
                    "{} is the certificate of {p}, not of the agent of {}: use agents/{}.crt and .key",
                    files.cert.display(),
                    cfg.host,
                    cfg.host
                )));
            }
            Some(Arc::new(tls))
        }
        None => {
            tracing::warn!(host = %cfg.host, "TLS is off: this agent talks to the cluster and to its replication peers in the clear");
            None
        }
    };
    let core = Core::new(
        CoreConfig {
            host: cfg.host.clone(),
            cluster: cfg.cluster.to_vec(),
            libvirt_uri: hv.uri().to_string(),
        },
        disk::read_lease(&cfg.state_dir),
        journal.restored(),
        mono_now(),
    );
    let volumes = Arc::new(Volumes::new(
        cfg.volumes_dir(),
        cfg.sockets_dir(),
        cfg.replication_ip.clone(),
        cfg.cluster.to_vec(),
        tls.clone(),
    ));
    let res = Arc::new(Resources {
        cfg,
        hv,
        fence,
        journal,
        paths,
        volumes: volumes.clone(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let shell = tokio::spawn(shell::Shell::new(core, res, tls).run(stop_rx));
    Ok(RunningAgent {
        stop,
        shell,
        volumes,
    })
}

/// Longest a libvirt call may take: a hung (not dead) libvirtd blocks its caller, and
/// virt 0.5 has no keep-alive to notice it.
const HV_TIMEOUT: Duration = Duration::from_secs(30);

/// Run a blocking hypervisor call off the async threads, with a deadline.
async fn hv<T: Send + 'static>(
    res: &Resources,
    f: impl FnOnce(&dyn Hypervisor) -> Result<T, HvError> + Send + 'static,
) -> Result<T, HvError> {
    let hv = res.hv.clone();
    let uri = hv.uri().to_string();
    match tokio::time::timeout(
        HV_TIMEOUT,
        tokio::task::spawn_blocking(move || f(hv.as_ref())),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(HvError::new(
            HvErrorKind::Failed,
            "call",
            None,
            format!("the libvirt call panicked: {e}"),
        )),
        Err(_) => Err(HvError::new(
            HvErrorKind::Unavailable,
            "call",
            None,
            format!(
                "libvirt at {uri} did not answer within {} s; is libvirtd hung?",
                HV_TIMEOUT.as_secs()
            ),
        )),
    }
}
