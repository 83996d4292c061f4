//! `metrodr` — the one binary: daemons and the operator CLI.
//!
//! This crate only parses arguments, wires crates together and prints; every decision
//! lives in the library crates (DESIGN §2).

#[macro_use]
mod output;
mod agent_cmd;
mod certs_cmd;
mod cluster_cmd;
mod demo;
mod drill_cmd;
mod lab_cmd;
mod op_cmd;
mod soak_cmd;
mod topology_cmd;
mod volume_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orchestrator::pb::OperationVerb as Verb;

use output::Output;

/// Dual-active disaster recovery for KVM data centers: two production sites and a
/// witness, Raft-replicated orchestration, block replication with RPO = 0, failover in
/// seconds, drills with signed reports.
#[derive(Debug, Parser)]
#[command(
    name = "metrodr",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// Output format: human tables, or one JSON document for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    #[command(flatten)]
    cluster: cluster_cmd::ClusterArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check, plan, generate, apply and fetch topology files (sites, hosts, apps, volumes).
    #[command(subcommand)]
    Topology(topology_cmd::TopologyCmd),

    /// Run one orchestrator node (a Raft voter) until SIGTERM.
    Orchestrator(cluster_cmd::OrchestratorArgs),

    /// Run the agent of one hypervisor host until SIGTERM (its VMs keep running).
    Agent(agent_cmd::AgentArgs),

    /// Hosts: state, lease, capacity reported by their agents, VMs.
    #[command(subcommand)]
    Host(HostCmd),

    /// VMs: where they run and their libvirt state; act on one through its host's agent.
    #[command(subcommand)]
    Vm(agent_cmd::VmCmd),

    /// The lab: three sites in network namespaces on this machine, with their
    /// orchestrator nodes, agents, replicated volumes and VMs (up, status, down); and
    /// the probe guest image.
    #[command(subcommand)]
    Lab(lab_cmd::LabCmd),

    /// Fault injection into a running lab (partition, isolate, kill, pause, …), and
    /// scenario runs with invariant checks (`chaos run FILE`, `chaos run --random`).
    #[command(subcommand)]
    Chaos(lab_cmd::ChaosCmd),

    /// Form the orchestrator cluster and change its membership.
    #[command(subcommand)]
    Cluster(cluster_cmd::ClusterCmd),

    /// Cluster status: nodes, leader, term, commit index, sites, apps.
    Status,

    /// Applications as the cluster sees them.
    #[command(subcommand)]
    App(AppCmd),

    /// Sites and their hosts as the cluster sees them.
    #[command(subcommand)]
    Site(SiteCmd),

    /// Replicated volumes: roles, epochs, data states.
    #[command(subcommand)]
    Volume(VolumeCmd),

    /// Operations (failovers, switchovers, failbacks): list, show, follow, approve.
    #[command(subcommand)]
    Op(op_cmd::OpCmd),

    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(cluster_cmd::AuditCmd),

    /// Drills: non-disruptive test failovers, switchover and site-loss drills, each
    /// ending in a signed report.
    #[command(subcommand)]
    Drill(drill_cmd::DrillCmd),

    /// Signed reports of drills and operations: list, show, export (HTML, JSON, text,
    /// CSV history), verify offline.
    #[command(subcommand)]
    Report(drill_cmd::ReportCmd),

    /// The cluster CA and the certificates for mutual TLS and operator roles.
    #[command(subcommand)]
    Certs(certs_cmd::CertsCmd),

    /// Run the quickstart: a whole two-site system on this machine.
    Demo(demo::DemoArgs),
}

#[derive(Debug, Subcommand)]
enum AppCmd {
    /// Every application: tier, active site, state, where its VMs run.
    List,
    /// Move apps to another site now, as after a loss: promote their volumes there
    /// (epoch + 1) and start them, in dependency order; follow it to the record.
    Failover(op_cmd::MoveArgs),
    /// Planned move with zero loss: stop the VMs gracefully, promote, start at the
    /// other site (sync volumes only until replication drain lands).
    Switchover(op_cmd::MoveArgs),
    /// Switch apps back to their preferred site (refused until the replicas there are
    /// up to date again).
    Failback(op_cmd::FailbackArgs),
    /// How ready each app is to run at its other site: replicas, capacity, hosts, age
    /// of its last successful drill — a score out of 100 with the reasons.
    Readiness {
        /// Only these apps (default: every app).
        apps: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum HostCmd {
    /// Every host with its state, time since its last lease renewal, capacity, VMs.
    List,
}

#[derive(Debug, Subcommand)]
enum SiteCmd {
    /// Every site with its state and hosts.
    List,
    /// Declare a production site lost: fail over every app active there (VMs still
    /// running there are destroyed first). Audited with your name.
    Fail(op_cmd::SiteFailArgs),
    /// Acknowledge that a lost site is back (its node and hosts are up again): clears
    /// its flap hold and lists its replicas that must still resync.
    Recover {
        /// The production site.
        site: String,
    },
}

#[derive(Debug, Subcommand)]
enum VolumeCmd {
    /// Every volume (or one app's) with its replicas.
    List {
        /// Only this app's volumes.
        #[arg(long)]
        app: Option<String>,
    },
    /// Serve a consistency group as primary: NBD exports on a unix socket for QEMU,
    /// every write streamed to the peer's replica (sync or async). Until SIGTERM.
    Serve(volume_cmd::ServeArgs),
    /// Hold a consistency group's secondary replica: accept the primary's stream on
    /// host:port and apply it. Until SIGTERM.
    Replica(volume_cmd::ReplicaArgs),
    /// Copy a disk image (qcow2, raw, …) into a volume as its primary, replicating it
    /// to the peer as it goes, with progress; returns when the peer holds it too.
    Import(volume_cmd::ImportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let daemon = matches!(
        cli.command,
        Command::Orchestrator(_)
            | Command::Agent(_)
            | Command::Lab(lab_cmd::LabCmd::Serve(_))
            | Command::Volume(VolumeCmd::Serve(_) | VolumeCmd::Replica(_))
    );
    if daemon {
        output::set_daemon();
    }
    // SIGPIPE stays ignored (Rust's default) in every command: a peer that closes a
    // socket (an orchestrator node the chaos runner just killed) is an error value, never
    // a silent death. A closed stdout (`metrodr … | head`) ends the command quietly
    // through `outln!`.
    let out = cli.output;
    let c = &cli.cluster;
    let result = match cli.command {
        Command::Topology(cmd) => topology_cmd::run(cmd, c, out),
        Command::Demo(args) => demo::run(args, out),
        Command::Certs(cmd) => certs_cmd::run(cmd, out),
        Command::Orchestrator(a) => block_on(cluster_cmd::orchestrator(a)),
        Command::Cluster(cmd) => block_on(cluster_cmd::cluster(cmd, c, out)),
        Command::Status => block_on(cluster_cmd::status(c, out)),
        Command::App(AppCmd::List) => block_on(cluster_cmd::app_list(c, out)),
        Command::Site(SiteCmd::List) => block_on(cluster_cmd::site_list(c, out)),
        Command::Site(SiteCmd::Recover { site }) => block_on(op_cmd::recover(site, c, out)),
        Command::Site(SiteCmd::Fail(a)) => block_on(op_cmd::site_fail(a, c, out)),
        Command::App(AppCmd::Failover(a)) => {
            block_on(op_cmd::start(Verb::Failover, a.apps, a.to, a.run, c, out))
        }
        Command::App(AppCmd::Switchover(a)) => {
            block_on(op_cmd::start(Verb::Switchover, a.apps, a.to, a.run, c, out))
        }
        Command::App(AppCmd::Failback(a)) => block_on(op_cmd::start(
            Verb::Failback,
            a.apps,
            String::new(),
            a.run,
            c,
            out,
        )),
        Command::Op(cmd) => block_on(op_cmd::run(cmd, c, out)),
        Command::Volume(VolumeCmd::List { app }) => block_on(cluster_cmd::volume_list(app, c, out)),
        Command::Volume(VolumeCmd::Serve(a)) => c
            .tls(security::Role::Agent)
            .and_then(|tls| block_on_data_path(a.g.runtime, volume_cmd::serve(a, tls))),
        Command::Volume(VolumeCmd::Replica(a)) => c
            .tls(security::Role::Agent)
            .and_then(|tls| block_on_data_path(a.g.runtime, volume_cmd::replica(a, tls))),
        Command::Volume(VolumeCmd::Import(a)) => c
            .tls(security::Role::Agent)
            .and_then(|tls| block_on(volume_cmd::import(a, tls))),
        Command::Audit(cmd) => block_on(cluster_cmd::audit(cmd, c, out)),
        Command::Drill(cmd) => block_on(drill_cmd::drill(cmd, c, out)),
        Command::Report(drill_cmd::ReportCmd::Verify { file, public_key }) => {
            drill_cmd::verify(&file, public_key.as_deref(), out)
        }
        Command::Report(drill_cmd::ReportCmd::Keygen { out: path }) => block_on(
            drill_cmd::report_cmd(drill_cmd::ReportCmd::Keygen { out: path }, c, out),
        ),
        Command::Report(cmd) => block_on(drill_cmd::report_cmd(cmd, c, out)),
        Command::App(AppCmd::Readiness { apps }) => block_on(drill_cmd::readiness(apps, c, out)),
        Command::Agent(a) => block_on(agent_cmd::agent(a)),
        Command::Host(HostCmd::List) => block_on(agent_cmd::host_list(c, out)),
        Command::Vm(cmd) => block_on(agent_cmd::vm(cmd, c, out)),
        Command::Lab(cmd) => lab_cmd::lab(cmd, out),
        Command::Chaos(cmd) => lab_cmd::chaos(cmd, out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("metrodr: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Run an async command on a fresh multi-threaded runtime.
pub fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    f: F,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Runtime::new()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?
        .block_on(f)
}

/// The data path (NBD server, replication stream) on the runtime `--runtime` chose.
pub fn block_on_data_path<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    runtime: volume_cmd::RuntimeArg,
    f: F,
) -> anyhow::Result<ExitCode> {
    let rt = match runtime {
        volume_cmd::RuntimeArg::Current => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        volume_cmd::RuntimeArg::Multi => tokio::runtime::Runtime::new(),
    };
    rt.map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?
        .block_on(f)
}

/// Run any async function on a fresh runtime (for commands that are mostly sync).
pub fn block_on_value<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    f: F,
) -> anyhow::Result<T> {
    tokio::runtime::Runtime::new()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?
        .block_on(f)
}

/// Logs go to stderr; `METRODR_LOG` (or `RUST_LOG`) sets the filter (default: info for
/// metrodr's own crates, warn for libraries).
fn init_tracing() {
    let filter = std::env::var("METRODR_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn,orchestrator=info,replication=info,metrodr=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks argument definitions lazily, per subcommand, and panics on a bad one
    /// only when that subcommand runs; this checks all of them at once.
    #[test]
    fn every_subcommand_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
