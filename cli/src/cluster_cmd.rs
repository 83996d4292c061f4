//! Commands that talk to (or are) an orchestrator cluster: `orchestrator`, `cluster`,
//! `status`, `app`, `site`, `volume`, `audit`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::sync::Arc;

use orchestrator::client::{Client, Dialer};
use orchestrator::pb;
use serde::Serialize;

use crate::output::{Output, print_json, table};

/// Where the cluster is and who is acting; shared by every cluster command.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Orchestrator addresses (any node will do; writes are forwarded to the leader).
    #[arg(
        long,
        global = true,
        env = "METRODR_CLUSTER",
        default_value = "127.0.0.1:7400",
        value_name = "HOST:PORT[,...]"
    )]
    pub cluster: String,
    /// Who is acting, as recorded in the audit log (default: $USER@hostname). With
    /// --certs the cluster records the certificate's identity instead.
    #[arg(long, global = true, env = "METRODR_ACTOR")]
    pub actor: Option<String>,
    /// A certificate directory (`metrodr certs init`): connect with mutual TLS, as the
    /// identity --as names. Without it, plain gRPC (a cluster running without TLS).
    #[arg(long, global = true, env = "METRODR_CERTS", value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Whose certificate from --certs: an operator (operators/NAME.crt; default
    /// admin), or for `volume serve|replica` a host (agents/NAME.crt).
    #[arg(long = "as", global = true, env = "METRODR_AS", value_name = "NAME")]
    pub as_name: Option<String>,
}

impl ClusterArgs {
    pub fn addrs(&self) -> Vec<String> {
        orchestrator::client::parse_addrs(&self.cluster)
    }

    pub fn actor(&self) -> String {
        self.actor.clone().unwrap_or_else(|| {
            let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{user}@{}", host.trim())
        })
    }

    /// The credentials --certs and --as name, for an operator or (`role` Agent) a host.
    pub fn tls(&self, role: security::Role) -> anyhow::Result<Option<Arc<security::Tls>>> {
        let Some(dir) = &self.certs else {
            return Ok(None);
        };
        let name = match (&self.as_name, role) {
            (Some(n), _) => n.clone(),
            (None, security::Role::Agent) => {
                bail!("--certs needs --as HOST: the host whose agent certificate to use")
            }
            (None, _) => "admin".to_string(),
        };
        let files = security::CertDir::new(dir).files(role, &name);
        let tls = security::Tls::load(&files)
            .with_context(|| format!("loading the certificate of {name} from {}", dir.display()))?;
        Ok(Some(Arc::new(tls)))
    }

    pub fn dialer(&self) -> anyhow::Result<Dialer> {
        Ok(Dialer::new(self.tls(security::Role::Operator)?))
    }

    pub async fn connect(&self) -> anyhow::Result<Client> {
        Ok(self.dialer()?.connect(&self.addrs()).await?)
    }
}

#[derive(Debug, Args)]
pub struct OrchestratorArgs {
    /// Node configuration file (TOML: name, data_dir, listen, http_listen, [timing]).
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Form the cluster from the topology's [[orchestrator]] nodes, then apply the
    /// topology as version 1.
    Init(InitArgs),
    /// Add a node (as a voter unless --learner).
    AddNode(AddNodeArgs),
    /// Remove a node from the cluster.
    RemoveNode {
        /// The node's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The topology file: its [[orchestrator]] entries say which node runs where.
    #[arg(long)]
    pub topology: PathBuf,
    /// Override a node's address from the topology (repeatable): NAME=HOST:PORT.
    #[arg(long = "addr", value_name = "NAME=HOST:PORT")]
    pub addrs: Vec<String>,
    /// Only form the cluster; do not apply the topology.
    #[arg(long)]
    pub no_apply: bool,
}

#[derive(Debug, Args)]
pub struct AddNodeArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub site: String,
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: String,
    /// Add as a non-voting learner only.
    #[arg(long)]
    pub learner: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List audit entries.
    List {
        /// First entry to show (1-based).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// How many entries (at most 10000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Check the hash chain on every reachable node and compare the nodes' chains.
    /// Exits 1 if any chain is broken or two nodes disagree.
    Verify,
    /// Add an operator's note to the audit log.
    Note {
        /// The note.
        text: String,
    },
}

pub async fn orchestrator(args: OrchestratorArgs) -> anyhow::Result<ExitCode> {
    let config = orchestrator::config::NodeConfig::load(&args.config)?;
    let running = orchestrator::server::start(&config)
        .await
        .with_context(|| format!("starting orchestrator {}", config.name))?;
    // One JSON line on stdout says where the node listens (tests and scripts read it;
    // with port 0 this is the only way to learn the port).
    outln!(
        "{}",
        serde_json::json!({
            "event": "listening",
            "node": config.name,
            "grpc": running.grpc_addr.to_string(),
            "http": running.http_addr.map(|a| a.to_string()),
            "data_dir": config.data_dir,
        })
    );
    tracing::info!(node = %config.name, grpc = %running.grpc_addr, "orchestrator serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut running = running;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            forced = running.forced() => {
                // `site fail --force`: restart as the only voter, same addresses.
                running = orchestrator::server::restart_forced(running, &config, forced)
                    .await
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("restarting {} as the only voter", config.name))?;
            }
        }
    }
    tracing::info!(node = %config.name, "stopping");
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn cluster(cmd: ClusterCmd, c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterCmd::Init(a) => init(a, c, out).await,
        ClusterCmd::AddNode(a) => {
            let client = c.connect().await?;
            let req = pb::AddNodeRequest {
                node: Some(pb::InitNode {
                    name: a.name,
                    site: a.site,
                    addr: a.addr,
                }),
                voter: !a.learner,
            };
            let r = client
                .at_leader(|mut op| {
                    let req = req.clone();
                    async move { op.add_node(req).await }
                })
                .await?;
            print_membership(&r, out)
        }
        ClusterCmd::RemoveNode { name } => {
            let client = c.connect().await?;
            let req = pb::RemoveNodeRequest { name };
            let r = client
                .at_leader(|mut op| {
                    let req = req.clone();
                    async move { op.remove_node(req).await }
                })
                .await?;
            print_membership(&r, out)
        }
    }
}

fn print_membership(r: &pb::MembershipReply, out: Output) -> anyhow::Result<ExitCode> {
    #[derive(Serialize)]
    struct J<'a> {
        voters: &'a [String],
        learners: &'a [String],
    }
    match out {
        Output::Json => print_json(&J {
            voters: &r.voters,
            learners: &r.learners,
        })?,
        Output::Table => outln!(
            "voters: {}\nlearners: {}",
            r.voters.join(", "),
            r.learners.join(", ")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn init(a: InitArgs, c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    let loaded = crate::topology_cmd::load(&a.topology);
    let Some(topo) = loaded.report.topology.clone() else {
        crate::topology_cmd::print_report(&loaded, out)?;
        bail!(
            "{} is not a valid topology; nothing was initialized",
            loaded.name
        );
    };
    let mut overrides = BTreeMap::new();
    for s in &a.addrs {
        let (n, addr) = s
            .split_once('=')
            .with_context(|| format!("--addr {s:?}: expected NAME=HOST:PORT"))?;
        if !topo.orchestrators.iter().any(|o| o.id.as_str() == n) {
            bail!("--addr {s:?}: the topology has no orchestrator {n:?}");
        }
        overrides.insert(n.to_string(), addr.to_string());
    }
    let nodes: Vec<pb::InitNode> = topo
        .orchestrators
        .iter()
        .map(|o| pb::InitNode {
            name: o.id.to_string(),
            site: o.site.to_string(),
            addr: overrides
                .get(o.id.as_str())
                .cloned()
                .unwrap_or_else(|| o.addr.clone()),
        })
        .collect();
    // Initialize through the first node that answers.
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let client = c.dialer()?.connect(&addrs).await?;
    let mut op = client.op.clone();
    op.init_cluster(pb::InitClusterRequest {
        nodes: nodes.clone(),
    })
    .await
    .map_err(|s| orchestrator::client::ClientError::from_status(&client.addr, s))?;
    let leader = wait_for_leader(&client, Duration::from_secs(15)).await?;
    let mut version = None;
    if !a.no_apply {
        let r = apply(&client, &loaded.text, &c.actor()).await?;
        version = Some(r.version);
    }
    match out {
        Output::Json => print_json(&serde_json::json!({
            "voters": nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
            "leader": leader,
            "topology_version": version,
        }))?,
        Output::Table => {
            outln!("cluster formed: {} voters, leader {leader}", nodes.len());
            if let Some(v) = version {
                outln!("topology {} applied as version {v}", loaded.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_leader(client: &Client, within: Duration) -> anyhow::Result<String> {
    lab::wait::wait_every(
        Duration::from_millis(100),
        within,
        "a leader",
        || async {
            let s = client.op.clone().status(pb::StatusRequest {}).await.ok()?;
            Some(s.into_inner().leader).filter(|l| !l.is_empty())
        },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "no leader was elected within {within:?} ({e}): can the nodes reach each other at the addresses given?"
        )
    })
}

pub async fn apply(
    client: &Client,
    text: &str,
    actor: &str,
) -> anyhow::Result<pb::ApplyTopologyReply> {
    let mut op = client.op.clone();
    let r = op
        .apply_topology(pb::ApplyTopologyRequest {
            text: text.to_string(),
            actor: actor.to_string(),
        })
        .await
        .map_err(|s| orchestrator::client::ClientError::from_status(&client.addr, s))?;
    Ok(r.into_inner())
}

fn ms_to_age(since_ms: u64) -> String {
    let now = orchestrator::clock::now_ms();
    let s = now.saturating_sub(since_ms) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

#[derive(Serialize)]
struct StatusJson<'a> {
    node: &'a str,
    initialized: bool,
    raft_state: &'a str,
    leader: &'a str,
    term: u64,
    commit_index: u64,
    applied_index: u64,
    topology_version: u64,
    audit_entries: u64,
    audit_head: &'a str,
    store_warning: &'a str,
    nodes: Vec<serde_json::Value>,
    sites: Vec<serde_json::Value>,
    apps: Vec<serde_json::Value>,
}

pub async fn status(c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    let client = c.connect().await?;
    let mut op = client.op.clone();
    let s = op
        .status(pb::StatusRequest {})
        .await
        .map_err(|e| orchestrator::client::ClientError::from_status(&client.addr, e))?
        .into_inner();
    match out {
        Output::Json => print_json(&StatusJson {
            node: &s.node,
            initialized: s.initialized,
            raft_state: &s.raft_state,
            leader: &s.leader,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            topology_version: s.topology_version,
            audit_entries: s.audit_entries,
            audit_head: &s.audit_head,
            store_warning: &s.store_warning,
            nodes: s
                .nodes
                .iter()
                .map(|n| serde_json::json!({"name": n.name, "site": n.site, "addr": n.addr, "voter": n.voter, "leader": n.leader, "matched_index": n.matched_index}))
                .collect(),
            sites: s
                .sites
                .iter()
                .map(|x| serde_json::json!({"id": x.id, "role": x.role, "state": x.state, "since_ms": x.since_ms, "reason": x.reason}))
                .collect(),
            apps: s
                .apps
                .iter()
                .map(|a| {
                    let st = app_health(a)?;
                    Ok(serde_json::json!({"id": a.id, "tier": a.tier, "active_site": a.active_site,
                        "state": st.health, "reasons": st.reasons, "why": a.summary}))
                })
                .collect::<anyhow::Result<_>>()?,
        })?,
        Output::Table => {
            if !s.initialized {
                outln!("{} is not part of a cluster yet: run `metrodr cluster init --topology FILE`", s.node);
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "answered by {} ({}); leader: {}; term {}; commit index {}; applied {}; topology v{}; audit entries {}",
                s.node,
                s.raft_state,
                if s.leader.is_empty() { "NONE (no quorum?)" } else { &s.leader },
                s.term,
                s.commit_index,
                s.applied_index,
                s.topology_version,
                s.audit_entries
            );
            if !s.store_warning.is_empty() {
                outln!("WARNING: {}", s.store_warning);
            }
            let mut t = table(&["node", "site", "address", "role", "replicated to"]);
            for n in &s.nodes {
                t.add_row(vec![
                    n.name.clone(),
                    n.site.clone(),
                    n.addr.clone(),
                    match (n.leader, n.voter) {
                        (true, _) => "leader".into(),
                        (false, true) => "voter".into(),
                        (false, false) => "learner".into(),
                    },
                    if n.matched_index < 0 { "-".into() } else { n.matched_index.to_string() },
                ]);
            }
            outln!("{t}");
            let mut t = table(&["site", "role", "state", "for", "reason"]);
            for x in &s.sites {
                t.add_row(vec![x.id.clone(), x.role.clone(), x.state.clone(), ms_to_age(x.since_ms), x.reason.clone()]);
            }
            outln!("{t}");
            print_apps(&s.apps);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An app's health and its reasons, as the cluster sent them.
fn app_health(a: &pb::AppStatus) -> anyhow::Result<orchestrator::state::AppStatus> {
    orchestrator::wire::app_status_from_wire(a)
        .with_context(|| format!("the cluster's status of app {} does not decode", a.id))
}

fn print_apps(apps: &[pb::AppStatus]) {
    let mut t = table(&[
        "app",
        "tier",
        "active site",
        "preferred",
        "state",
        "why",
        "VMs",
    ]);
    for a in apps {
        let health = app_health(a).map_or_else(|e| format!("{e:#}"), |st| st.health.to_string());
        t.add_row(vec![
            a.id.clone(),
            a.tier.to_string(),
            a.active_site.clone(),
            a.preferred_site.clone(),
            health,
            a.summary.clone(),
            a.placement
                .iter()
                .map(|p| format!("{}@{}", p.vm, p.host))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    outln!("{t}");
}

pub async fn app_list(c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    let client = c.connect().await?;
    let mut op = client.op.clone();
    let r = op
        .list_apps(pb::ListAppsRequest {})
        .await
        .map_err(|e| orchestrator::client::ClientError::from_status(&client.addr, e))?
        .into_inner();
    match out {
        Output::Json => print_json(
            &r.apps
                .iter()
                .map(|a| {
                    let st = app_health(a)?;
                    Ok(serde_json::json!({"id": a.id, "name": a.name, "tier": a.tier, "active_site": a.active_site,
                    "preferred_site": a.preferred_site, "state": st.health, "reasons": st.reasons, "why": a.summary,
                    "desired": a.desired,
                    "placement": a.placement.iter().map(|p| (p.vm.clone(), p.host.clone())).collect::<BTreeMap<_, _>>()}))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        )?,
        Output::Table => print_apps(&r.apps),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn site_list(c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    let client = c.connect().await?;
    let mut op = client.op.clone();
    let s = op
        .status(pb::StatusRequest {})
        .await
        .map_err(|e| orchestrator::client::ClientError::from_status(&client.addr, e))?
        .into_inner();
    match out {
        Output::Json => print_json(
            &s.sites
                .iter()
                .map(|x| {
                    let hosts: Vec<_> = s.hosts.iter().filter(|h| h.site == x.id).map(|h| serde_json::json!({"id": h.id, "state": h.state})).collect();
                    serde_json::json!({"id": x.id, "role": x.role, "state": x.state, "since_ms": x.since_ms, "reason": x.reason, "hosts": hosts})
                })
                .collect::<Vec<_>>(),
        )?,
        Output::Table => {
            let mut t = table(&["site", "role", "state", "for", "hosts"]);
            for x in &s.sites {
                let hosts: Vec<String> = s.hosts.iter().filter(|h| h.site == x.id).map(|h| format!("{} ({})", h.id, h.state)).collect();
                t.add_row(vec![x.id.clone(), x.role.clone(), x.state.clone(), ms_to_age(x.since_ms), hosts.join(", ")]);
            }
            outln!("{t}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn volume_list(
    app: Option<String>,
    c: &ClusterArgs,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let client = c.connect().await?;
    let mut op = client.op.clone();
    let r = op
        .list_volumes(pb::ListVolumesRequest {
            app: app.unwrap_or_default(),
        })
        .await
        .map_err(|e| orchestrator::client::ClientError::from_status(&client.addr, e))?
        .into_inner();
    match out {
        Output::Json => print_json(
            &r.volumes
                .iter()
                .map(|v| {
                    serde_json::json!({"id": v.id, "app": v.app, "mode": v.mode, "epoch": v.epoch,
                    "replicas": v.replicas.iter().map(|r| serde_json::json!({"site": r.site, "host": r.host, "role": r.role, "epoch": r.epoch, "data": r.data})).collect::<Vec<_>>()})
                })
                .collect::<Vec<_>>(),
        )?,
        Output::Table => {
            let mut t = table(&["volume", "app", "mode", "epoch", "replicas"]);
            for v in &r.volumes {
                t.add_row(vec![
                    v.id.clone(),
                    v.app.clone(),
                    v.mode.clone(),
                    v.epoch.to_string(),
                    v.replicas.iter().map(|r| if r.host.is_empty() { format!("{}: {} {}", r.site, r.role, r.data) } else { format!("{} ({}): {} {}", r.site, r.host, r.role, r.data) }).collect::<Vec<_>>().join("; "),
                ]);
            }
            outln!("{t}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(cmd: AuditCmd, c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::List { from, limit } => {
            let client = c.connect().await?;
            let mut op = client.op.clone();
            let r = op
                .audit_list(pb::AuditListRequest {
                    from_seq: from,
                    limit,
                })
                .await
                .map_err(|e| orchestrator::client::ClientError::from_status(&client.addr, e))?
                .into_inner();
            match out {
                Output::Json => {
                    let mut entries = Vec::new();
                    for e in &r.entries {
                        // The typed event, as the orchestrator's records serialize it.
                        let event = match e.event.clone() {
                            Some(ev) => serde_json::to_value(
                                orchestrator::wire::audit_event_from_wire(ev).with_context(
                                    || format!("audit entry {} does not decode", e.seq),
                                )?,
                            )?,
                            None => serde_json::Value::Null,
                        };
                        entries.push(serde_json::json!({"seq": e.seq, "at_ms": e.at_ms, "actor": e.actor,
                            "action": e.action, "detail": e.detail, "event": event, "prev": e.prev, "digest": e.digest}));
                    }
                    print_json(&serde_json::json!({ "total": r.total, "entries": entries }))?
                }
                Output::Table => {
                    let mut t = table(&["seq", "age", "actor", "action", "detail", "digest"]);
                    for e in &r.entries {
                        t.add_row(vec![
                            e.seq.to_string(),
                            ms_to_age(e.at_ms),
                            e.actor.clone(),
                            e.action.clone(),
                            e.detail.clone(),
                            e.digest.get(..12).unwrap_or("").to_string(),
                        ]);
                    }
                    outln!("{t}\n{} of {} entries", r.entries.len(), r.total);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify => verify(c, out).await,
        AuditCmd::Note { text } => {
            let client = c.connect().await?;
            let mut op = client.op.clone();
            let r = op
                .note(pb::NoteRequest {
                    text,
                    actor: c.actor(),
                })
                .await
                .map_err(|e| orchestrator::client::ClientError::from_status(&client.addr, e))?
                .into_inner();
            match out {
                Output::Json => print_json(
                    &serde_json::json!({"audit_seq": r.audit_seq, "log_index": r.log_index}),
                )?,
                Output::Table => outln!("recorded as audit entry {}", r.audit_seq),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Verify every reachable node's chain, then that all nodes agree on the entries they
/// have in common (the digest of the shortest chain's last entry).
async fn verify(c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    let client = c.connect().await?;
    let mut op = client.op.clone();
    let s = op
        .status(pb::StatusRequest {})
        .await
        .map_err(|e| orchestrator::client::ClientError::from_status(&client.addr, e))?
        .into_inner();
    let mut addrs: Vec<String> = s.nodes.iter().map(|n| n.addr.clone()).collect();
    if addrs.is_empty() {
        addrs.push(client.addr.clone());
    }
    let mut results = Vec::new();
    let mut unreachable = Vec::new();
    for a in &addrs {
        match client.dialer().connect_to(a).await {
            Ok(cl) => {
                let mut op = cl.op.clone();
                match op.audit_verify(pb::AuditVerifyRequest { at_seq: 0 }).await {
                    Ok(r) => results.push((cl, r.into_inner())),
                    Err(e) => unreachable.push(format!("{a}: {}", e.message())),
                }
            }
            Err(e) => unreachable.push(e.to_string()),
        }
    }
    // Compare the digest of the entry every node has.
    let common = results.iter().map(|(_, r)| r.entries).min().unwrap_or(0);
    let mut digests = BTreeMap::new();
    for (cl, r) in &results {
        let mut op = cl.op.clone();
        if let Ok(d) = op
            .audit_verify(pb::AuditVerifyRequest { at_seq: common })
            .await
        {
            digests.insert(r.node.clone(), d.into_inner().digest_at_seq);
        }
    }
    let agree = digests
        .values()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        <= 1;
    let all_ok = results.iter().all(|(_, r)| r.ok) && agree && !results.is_empty();
    match out {
        Output::Json => print_json(&serde_json::json!({
            "ok": all_ok,
            "nodes_agree": agree,
            "common_entries": common,
            "nodes": results.iter().map(|(_, r)| serde_json::json!({"node": r.node, "ok": r.ok, "entries": r.entries,
                "head": r.head, "broken_seq": r.broken_seq, "broken_reason": r.broken_reason})).collect::<Vec<_>>(),
            "unreachable": unreachable,
        }))?,
        Output::Table => {
            for (_, r) in &results {
                if r.ok {
                    outln!(
                        "{}: chain intact, {} entries, head {}",
                        r.node,
                        r.entries,
                        r.head.get(..16).unwrap_or("")
                    );
                } else {
                    outln!(
                        "{}: CHAIN BROKEN at entry {}: {}",
                        r.node,
                        r.broken_seq,
                        r.broken_reason
                    );
                }
            }
            for u in &unreachable {
                outln!("not checked (unreachable): {u}");
            }
            if !agree {
                outln!("NODES DISAGREE on entry {common}: {digests:?}");
            }
            outln!(
                "{}",
                if all_ok {
                    "audit log verified"
                } else {
                    "audit log verification FAILED"
                }
            );
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
