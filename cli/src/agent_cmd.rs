//! Host-side commands: `agent` (the daemon), `host list`, `vm list`, `vm <action>`,
//! and `lab guest-image`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use lab::states::{self, CommandProgress, shown};
use orchestrator::pb;
use serde::Serialize;

use crate::cluster_cmd::ClusterArgs;
use crate::output::{Output, print_json, table};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Agent configuration file (TOML: host, cluster, libvirt_uri, state_dir, ...).
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VmAction {
    Define,
    Start,
    Shutdown,
    Destroy,
    Undefine,
    Suspend,
    Resume,
}

impl VmAction {
    fn to_wire(self) -> pb::VmAction {
        match self {
            VmAction::Define => pb::VmAction::Define,
            VmAction::Start => pb::VmAction::Start,
            VmAction::Shutdown => pb::VmAction::Shutdown,
            VmAction::Destroy => pb::VmAction::Destroy,
            VmAction::Undefine => pb::VmAction::Undefine,
            VmAction::Suspend => pb::VmAction::Suspend,
            VmAction::Resume => pb::VmAction::Resume,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Every VM: where it is placed and its state as its agent reports it.
    List,
    /// Queue an action for the agent of the VM's host and wait for the result.
    #[command(name = "do")]
    Do {
        /// define, start, shutdown, destroy, undefine, suspend, resume.
        #[arg(value_enum)]
        action: VmAction,
        /// The VM (its id in the topology).
        vm: String,
        /// For shutdown: destroy the VM if it is still running after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u32,
        /// Return as soon as the command is queued.
        #[arg(long)]
        no_wait: bool,
    },
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let cfg = agent::config::AgentConfig::load(&args.config)?;
    let host = cfg.host.clone();
    let running = agent::daemon::start(cfg.clone(), Arc::new(agent::daemon::NoVolumes))
        .await
        .with_context(|| format!("starting the agent of host {host}"))?;
    outln!(
        "{}",
        serde_json::json!({"event": "started", "host": host, "libvirt_uri": cfg.libvirt_uri, "state_dir": cfg.state_dir})
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(host = %host, "agent stopping (VMs keep running)");
    running.stop().await;
    Ok(ExitCode::SUCCESS)
}

fn human_ms(ms: i64) -> String {
    if ms < 0 {
        "-".into()
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

pub async fn host_list(c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    let client = c.connect().await?;
    // Leases live in the leader's memory: ask the leader when possible.
    let r = client
        .at_leader(|mut op| async move {
            let r = op.list_hosts(pb::ListHostsRequest {}).await?;
            if r.get_ref().from_leader {
                return Ok(r);
            }
            let mut s = tonic::Status::failed_precondition("not the leader");
            let st = op.status(pb::StatusRequest {}).await?.into_inner();
            if let Ok(v) = st.leader_addr.parse() {
                s.metadata_mut().insert("x-metrodr-leader", v);
                return Err(s);
            }
            Ok(r)
        })
        .await?;
    match out {
        Output::Json => print_json(
            &r.hosts
                .iter()
                .map(|h| {
                    serde_json::json!({"id": h.id, "site": h.site, "state": shown(states::host_state(h)), "since_ms": h.since_ms, "reason": h.reason,
                        "vcpus": h.vcpus, "memory_bytes": h.memory_bytes, "hypervisor": h.hypervisor, "domain_type": h.domain_type,
                        "agent_version": h.agent_version, "lease_silence_ms": h.lease_silence_ms, "vms": h.vms})
                })
                .collect::<Vec<_>>(),
        )?,
        Output::Table => {
            let mut t = table(&["host", "site", "state", "last renewal", "capacity", "hypervisor", "VMs", "reason"]);
            for h in &r.hosts {
                t.add_row(vec![
                    h.id.clone(),
                    h.site.clone(),
                    shown(states::host_state(h)),
                    human_ms(h.lease_silence_ms),
                    if h.vcpus == 0 {
                        "-".into()
                    } else {
                        format!("{} vCPUs, {}", h.vcpus, topology::ids::human_size(h.memory_bytes))
                    },
                    if h.hypervisor.is_empty() { "-".into() } else { format!("{} ({})", h.hypervisor, h.domain_type) },
                    h.vms.join(" "),
                    h.reason.clone(),
                ]);
            }
            outln!("{t}");
            if !r.from_leader {
                outln!("(lease ages are only known by the leader, which could not be asked)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct VmJson<'a> {
    vm: &'a str,
    app: &'a str,
    host: &'a str,
    state: String,
    reported_host: &'a str,
    since_ms: u64,
    reason: &'a str,
}

pub async fn vm(cmd: VmCmd, c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    let client = c.connect().await?;
    let mut op = client.op.clone();
    match cmd {
        VmCmd::List => {
            let r = op
                .list_vms(pb::ListVmsRequest {})
                .await
                .map_err(|e| orchestrator::client::ClientError::from_status(&client.addr, e))?
                .into_inner();
            match out {
                Output::Json => print_json(
                    &r.vms
                        .iter()
                        .map(|v| VmJson {
                            vm: &v.vm,
                            app: &v.app,
                            host: &v.host,
                            state: states::vm_shown(v),
                            reported_host: &v.reported_host,
                            since_ms: v.since_ms,
                            reason: &v.reason,
                        })
                        .collect::<Vec<_>>(),
                )?,
                Output::Table => {
                    let mut t = table(&[
                        "vm",
                        "app",
                        "host",
                        "state (libvirt)",
                        "reported by",
                        "reason",
                    ]);
                    for v in &r.vms {
                        t.add_row(vec![
                            v.vm.clone(),
                            v.app.clone(),
                            v.host.clone(),
                            match states::vm_report(v) {
                                Some(states::VmReport::NotReported) => "not reported".into(),
                                _ => states::vm_shown(v),
                            },
                            v.reported_host.clone(),
                            v.reason.clone(),
                        ]);
                    }
                    outln!("{t}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Do {
            action,
            vm,
            timeout,
            no_wait,
        } => {
            let r = op
                .vm_action(pb::VmActionRequest {
                    vm: vm.clone(),
                    action: action.to_wire().into(),
                    timeout_s: timeout,
                    wait: !no_wait,
                    actor: c.actor(),
                })
                .await
                .map_err(|e| orchestrator::client::ClientError::from_status(&client.addr, e))?
                .into_inner();
            match out {
                Output::Json => print_json(
                    &serde_json::json!({"command_id": r.command_id, "host": r.host, "status": shown(states::command_progress(&r)), "message": r.message}),
                )?,
                Output::Table => outln!(
                    "command #{} ({} {vm} on {}): {}{}",
                    r.command_id,
                    lab::api::action_name(action.to_wire()),
                    r.host,
                    shown(states::command_progress(&r)),
                    if r.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", r.message)
                    }
                ),
            }
            // A state this CLI does not know (a newer server's) is not a success it can
            // vouch for.
            Ok(match states::command_progress(&r) {
                Some(CommandProgress::Succeeded) => ExitCode::SUCCESS,
                Some(CommandProgress::Pending) if no_wait => ExitCode::SUCCESS,
                Some(CommandProgress::Pending | CommandProgress::Failed) | None => {
                    ExitCode::from(1)
                }
            })
        }
    }
}

/// `metrodr lab guest-image`: build the probe guest.
pub fn guest_image(dir: PathBuf, interval_ms: u32, out: Output) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let mut opts = chaos::guest::BuildOptions::new(dir);
    opts.interval_ms = interval_ms;
    let img = chaos::guest::build(&opts)?;
    match out {
        Output::Json => print_json(
            &serde_json::json!({"kernel": img.kernel, "initrd": img.initrd, "cmdline": img.cmdline,
            "kernel_version": img.kernel_version, "seconds": started.elapsed().as_secs_f64()}),
        )?,
        Output::Table => {
            outln!(
                "probe guest ready in {:.1} s (kernel {})",
                started.elapsed().as_secs_f64(),
                img.kernel_version
            );
            outln!(
                "  kernel:  {}\n  initrd:  {}\n  cmdline: {}",
                img.kernel.display(),
                img.initrd.display(),
                img.cmdline
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
