//! Starting and stopping one orchestrator node: open the store, start Raft, bind the
//! gRPC and HTTP listeners, serve until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::config::NodeConfig;
use crate::http::{Metrics, router};
use crate::network::{MAX_MESSAGE_BYTES, Network};
use crate::node::{Node, NodeParts};
use crate::pb::agent_server::AgentServer;
use crate::pb::cluster_server::ClusterServer;
use crate::pb::operator_server::OperatorServer;
use crate::raft_types::{Raft, node_id_of};
use crate::service::agent::AgentService;
use crate::service::cluster::ClusterService;
use crate::service::operator::OperatorService;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::OpenError),
    #[error("invalid Raft settings: {0}")]
    Raft(String),
    #[error("cannot load the cluster signing key {path}: {message}")]
    SigningKey {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr} ({what}): is another process using it?")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A node that is serving.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub grpc_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Load the node's credentials; the certificate must be a node certificate of this
/// node's name (a copied agent or operator certificate would be refused by every peer
/// anyway; saying so at startup is kinder).
fn load_tls(files: &security::TlsFiles, name: &str) -> Result<security::Tls, StartError> {
    let tls = security::Tls::load(files).map_err(|e| StartError::Tls(e.to_string()))?;
    let p = &tls.principal;
    if p.role != security::Role::Node || p.name != name {
        return Err(StartError::Tls(format!(
            "{} is the certificate of {p}, not of node {name}: point [tls] cert and key at nodes/{name}.crt and .key",
            files.cert.display()
        )));
    }
    tracing::info!(node = %name, "mutual TLS on; certificate valid until {}", tls.not_after);
    Ok(tls)
}

/// Bind with SO_REUSEADDR so that a restarted node gets its old port back at once.
fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { addr, what, source };
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    sock.set_reuseaddr(true).map_err(err)?;
    sock.bind(addr).map_err(err)?;
    sock.listen(1024).map_err(err)
}

pub async fn start(config: &NodeConfig) -> Result<RunningNode, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let signing_key = match &config.signing_key {
        Some(path) => Some(
            drills::load_signing_key(path).map_err(|e| StartError::SigningKey {
                path: path.clone(),
                message: e.to_string(),
            })?,
        ),
        None => None,
    };
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(load_tls(files, &config.name)?)),
        None => {
            tracing::warn!(
                node = %config.name,
                "TLS is off: anyone who can reach {} can command this cluster. Configure [tls] (see `metrodr certs init`)",
                config.listen
            );
            None
        }
    };
    let (log, sm) = crate::store::open(&config.data_dir)?;
    let state = sm.shared();
    let committed = log.committed_index();
    let apply_seconds = sm.apply_histogram();

    // A broken audit chain in our own store is reported, loudly and in status, but
    // does not stop the node: the cluster's copies are intact and the operator must
    // be able to inspect this one.
    let store_warning = {
        let v = state.read().state.verify_audit();
        match v.broken {
            Some((seq, why)) => {
                let w = format!(
                    "the audit log in {} is broken at entry {seq}: {why}",
                    config.data_dir.display()
                );
                tracing::error!(node = %config.name, seq, "{w}");
                w
            }
            None => String::new(),
        }
    };

    let forced = log
        .forced()
        .map_err(|e| StartError::Raft(format!("reading the forced-membership record: {e}")))?;
    let log_handle = log.clone();
    let raft_config = Arc::new(config.raft_config().map_err(StartError::Raft)?);
    let id = node_id_of(&config.name);
    let network = Network {
        tls: tls.clone(),
        ..Network::default()
    };
    let health = network.health.clone();
    let raft = Raft::new(id, raft_config, network, log, sm)
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let node = Arc::new(Node::new(NodeParts {
        name: config.name.clone(),
        raft,
        state,
        committed,
        write_timeout: Duration::from_millis(config.write_timeout_ms),
        store_warning,
        health,
        timing: config.timing.clone(),
        signing_key,
        tls: tls.clone(),
        forced: forced.clone(),
        log: log_handle,
        clock: Arc::new(crate::clock::SystemClock),
    }));
    if let Some(f) = forced.filter(|f| !f.audited) {
        tokio::spawn(audit_forced(node.clone(), f));
    }

    let listener = bind(config.listen, "gRPC")?;
    let grpc_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        what: "gRPC",
        source,
    })?;
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let cluster = ClusterServer::new(ClusterService { node: node.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let operator = OperatorServer::new(OperatorService { node: node.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let agent = AgentServer::new(AgentService { node: node.clone() });
    let mut rx = stop_rx.clone();
    let name = config.name.clone();
    let grpc = Server::builder()
        .add_service(cluster)
        .add_service(operator)
        .add_service(agent);
    let shutdown = async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let stopped = move |res: Result<(), tonic::transport::Error>| {
        if let Err(e) = res {
            tracing::error!(node = %name, "gRPC server stopped: {e}");
        }
    };
    let serving = match &tls {
        Some(tls) => {
            let n = node.clone();
            let refused = Arc::new(move |r| n.security.refusals().record(r));
            let (incoming, accepting) = security::grpc::incoming(listener, tls.clone(), refused);
            // Awaited on shutdown: it holds the listener (a forced restart binds again).
            tasks.push(accepting);
            tokio::spawn(async move {
                stopped(grpc.serve_with_incoming_shutdown(incoming, shutdown).await)
            })
        }
        None => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(async move {
                stopped(grpc.serve_with_incoming_shutdown(incoming, shutdown).await)
            })
        }
    };
    tasks.push(serving);
    tasks.push(tokio::spawn(crate::service::auth::run_refusal_audit(
        node.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::detector::run(
        node.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::executor::run(
        node.clone(),
        stop_rx.clone(),
    )));

    let http_addr = match config.http_listen {
        Some(addr) => {
            let l = bind(addr, "HTTP")?;
            let local = l.local_addr().map_err(|source| StartError::Bind {
                addr,
                what: "HTTP",
                source,
            })?;
            let app = router(node.clone(), Arc::new(Metrics::new(apply_seconds)));
            let mut rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
            }));
            Some(local)
        }
        None => None,
    };
    Ok(RunningNode {
        node,
        grpc_addr,
        http_addr,
        stop,
        tasks,
    })
}

/// Once this node leads (alone) after a forced membership change, record the change in
/// the audit log, then mark the record audited.
async fn audit_forced(node: Arc<Node>, mut f: crate::store::force::Forced) {
    let names: Vec<&str> = f.removed.iter().map(|n| n.name.as_str()).collect();
    let change = format!(
        "forced: site {} declared lost without a quorum; {} removed; {} is the only voter (log {})",
        f.site,
        names.join(", "),
        node.name,
        f.log_id.map_or_else(String::new, |l| l.to_string())
    );
    for _ in 0..600 {
        if node.is_confirmed_leader() {
            let req = crate::state::Request {
                actor: f.actor.clone(),
                at_ms: f.at_ms,
                command: crate::state::Command::Membership {
                    change: change.clone(),
                },
            };
            match node.write(req).await {
                Ok(_) => {
                    f.audited = true;
                    if let Err(e) = node.membership.log.set_forced(&f) {
                        tracing::error!(node = %node.name, "cannot mark the forced change audited: {e}");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(node = %node.name, "auditing the forced change: {}", e.message())
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::error!(node = %node.name, "the forced membership change is not in the audit log yet: this node did not lead within 60 s; it retries at its next start");
}

impl RunningNode {
    /// Resolves when an operator forced the membership (`ForceMembership`): the caller
    /// stops this node, applies [`crate::store::force::force_single_voter`] and starts
    /// it again ([`restart_forced`]).
    pub async fn forced(&self) -> crate::store::force::Forced {
        let mut rx = self.node.membership.force.subscribe();
        loop {
            if let Some(f) = rx.borrow_and_update().clone() {
                return f;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stop serving and shut Raft down (the store is closed when the last handle drops).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::warn!(node = %self.node.name, "raft shutdown: {e}");
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Stop `running`, make this node the only voter in its stored log (see
/// [`crate::store::force`]), and start it again on the addresses it had.
pub async fn restart_forced(
    running: RunningNode,
    config: &NodeConfig,
    forced: crate::store::force::Forced,
) -> Result<RunningNode, String> {
    let me = running.node.id;
    let info = running
        .node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&me)
        .cloned()
        .ok_or("this node is not in its own membership")?;
    let mut config = config.clone();
    config.listen = running.grpc_addr;
    config.http_listen = running.http_addr;
    running.shutdown().await;
    let log_id = crate::store::force::force_single_voter(&config.data_dir, me, &info, forced)
        .await
        .map_err(|e| {
            format!(
                "forcing the membership in {}: {e}",
                config.data_dir.display()
            )
        })?;
    tracing::warn!(node = %config.name, "membership forced at log {log_id}: this node is the only voter; starting again");
    start(&config).await.map_err(|e| e.to_string())
}
