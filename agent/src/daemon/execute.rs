//! Running one command: journaled `begin` before it runs and `finished` after (so it
//! runs at most once, even across a crash), executed against libvirt or the volume
//! groups, its result typed. One task per command; the core decided it may run.
//!
//! Never: run a command whose `begin` could not be journaled, or decide whether a
//! command may run (the lease and the order are the core's).

use std::sync::Arc;
use std::time::Duration;

use ids::CommandId;
use proto::agent::{AgentAction, CommandOutcome, Executed, FailureKind};

use super::{Marks, Resources, drill, hv, probe};
use crate::config::{DiskBackendSetting, GuestNetwork};
use crate::core::{Input, RunCtx};
use crate::domain_xml::{self, DiskBackend};
use crate::hypervisor::{DomainState, HvError};
use crate::journal::Line;
use crate::lease::mono_now;

/// Journal `begin`, execute, journal `finished`; the result for the core.
pub(super) async fn run(
    res: Arc<Resources>,
    id: CommandId,
    action: AgentAction,
    ctx: RunCtx,
) -> Input {
    let r = res.clone();
    let begun = tokio::task::spawn_blocking(move || r.journal.record(Line::Begin { id }))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = begun {
        tracing::error!(host = %res.cfg.host, %id, "cannot journal a command, not running it: {e}");
        return Input::CommandFinished {
            id,
            executed: None,
            marks: Vec::new(),
        };
    }
    let (executed, marks) = execute(&res, &action, ctx).await;
    let r = res.clone();
    let line = Line::Finished {
        id,
        executed: executed.clone(),
    };
    let finished = tokio::task::spawn_blocking(move || r.journal.record(line))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = finished {
        tracing::error!(host = %res.cfg.host, %id, "cannot journal a result: {e}");
    }
    Input::CommandFinished {
        id,
        executed: Some(executed),
        marks,
    }
}

/// A production VM's network from this host's `guest_network` (the cluster sends
/// none): a libvirt network, or user-mode networking with each probed guest port
/// forwarded to a free loopback port (the ports it had when it is defined again).
async fn connect_to_guest_network(
    res: &Resources,
    mut spec: topology::spec::VmSpec,
) -> Result<topology::spec::VmSpec, String> {
    use topology::spec::{NetworkSpec, PortForward};
    if spec.drill.is_some() || spec.network != NetworkSpec::None {
        return Ok(spec);
    }
    match &res.cfg.guest_network {
        GuestNetwork::None => {}
        GuestNetwork::Network(name) => spec.network = NetworkSpec::Network { name: name.clone() },
        GuestNetwork::User => {
            let name = spec.domain_name();
            let had = hv(res, move |h| h.xml(&name))
                .await
                .map(|x| domain_xml::user_forwards(&x))
                .unwrap_or_default();
            let mut forwards = Vec::new();
            for &guest in &spec.probe_ports {
                let host = match had.iter().find(|f| f.guest == guest) {
                    Some(f) => f.host,
                    None => std::net::TcpListener::bind("127.0.0.1:0")
                        .and_then(|l| l.local_addr())
                        .map(|a| a.port())
                        .map_err(|e| {
                            format!("cannot find a free loopback port to forward guest port {guest}: {e}")
                        })?,
                };
                forwards.push(PortForward { guest, host });
            }
            spec.network = NetworkSpec::User { forwards };
        }
    }
    Ok(spec)
}

/// A command's result from a hypervisor call and what it made of the call's value.
fn result<T>(r: Result<T, HvError>, outcome: impl FnOnce(T) -> CommandOutcome) -> Executed {
    match r {
        Ok(v) => Executed::done(outcome(v)),
        Err(e) => Executed::failed(FailureKind::Failed, e.to_string()),
    }
}

fn failed(message: impl Into<String>) -> Executed {
    Executed::failed(FailureKind::Failed, message)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

async fn execute(res: &Resources, action: &AgentAction, ctx: RunCtx) -> (Executed, Marks) {
    let mut marks = Marks::new();
    let executed = execute_action(res, action, ctx, &mut marks).await;
    (executed, marks)
}

async fn execute_action(
    res: &Resources,
    action: &AgentAction,
    ctx: RunCtx,
    marks: &mut Marks,
) -> Executed {
    match action.clone() {
        AgentAction::Define { spec } => {
            let spec = match connect_to_guest_network(res, spec).await {
                Ok(spec) => spec,
                Err(e) => return failed(e),
            };
            let backend = match res.cfg.disk_backend {
                DiskBackendSetting::File => DiskBackend::File,
                DiskBackendSetting::Nbd => DiskBackend::Nbd,
            };
            if backend == DiskBackend::File {
                // A local raw file per volume, sparse; never truncated if it exists.
                for d in &spec.disks {
                    let path = domain_xml::volume_path(&res.paths, &d.volume);
                    let made = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                        .and_then(|f| {
                            if f.metadata()?.len() < d.size.bytes() {
                                f.set_len(d.size.bytes())?;
                            }
                            Ok(())
                        });
                    if let Err(e) = made {
                        return failed(format!("cannot create the disk {}: {e}", path.display()));
                    }
                }
            }
            let ty = ctx.domain_type;
            let xml = domain_xml::domain_xml(&spec, ty, &res.paths, backend);
            let domain = spec.domain_name();
            let disks = count(spec.disks.len());
            result(hv(res, move |h| h.define(&xml)).await, |()| {
                CommandOutcome::Defined {
                    domain,
                    domain_type: ty.to_string(),
                    disks,
                }
            })
        }
        AgentAction::Start { vm } => {
            // Probes look at what the console shows from this start on (the log is
            // appended across boots).
            let console = domain_xml::console_path(&res.paths, &vm);
            let mark = std::fs::metadata(&console).map_or(0, |m| m.len());
            marks.push((vm.to_string(), Some(mark)));
            let name = vm.to_string();
            result(
                hv(res, move |h| {
                    h.start(&name)?;
                    h.state(&name)
                })
                .await,
                |state| CommandOutcome::Started {
                    domain: vm.to_string(),
                    state: state.reported(),
                },
            )
        }
        AgentAction::Probe {
            vm,
            marker,
            timeout_s,
        } => probe::console(res, vm.as_str(), ctx.console_mark, &marker, timeout_s).await,
        AgentAction::TcpProbe {
            vm,
            port,
            address,
            timeout_s,
        } => probe::tcp(res, &vm, port, address.as_deref(), timeout_s).await,
        AgentAction::DrillSnapshot { op, app } => {
            let socket = domain_xml::drill_socket_path(&res.paths, op, &app);
            match res.volumes.drill_snapshot(op, &app, socket).await {
                Ok(o) => Executed::done(o),
                Err(e) => failed(e),
            }
        }
        AgentAction::DrillStart { op, spec } => drill::start(res, op, spec, ctx, marks).await,
        AgentAction::DrillProbe {
            op,
            vm,
            marker,
            timeout_s,
        } => {
            let name = topology::spec::drill_domain_name(op, &vm);
            probe::console(res, &name, ctx.console_mark, &marker, timeout_s).await
        }
        AgentAction::DrillCleanup { op } => drill::cleanup(res, op, marks).await,
        AgentAction::Destroy { vm } => {
            let name = vm.to_string();
            result(hv(res, move |h| h.destroy(&name)).await, |()| {
                CommandOutcome::Destroyed { vm }
            })
        }
        AgentAction::Undefine { vm } => {
            let name = vm.to_string();
            result(hv(res, move |h| h.undefine(&name)).await, |()| {
                CommandOutcome::Undefined { vm }
            })
        }
        AgentAction::Suspend { vm } => {
            let name = vm.to_string();
            result(hv(res, move |h| h.suspend(&name)).await, |()| {
                CommandOutcome::Suspended { vm }
            })
        }
        AgentAction::Resume { vm } => {
            let name = vm.to_string();
            result(hv(res, move |h| h.resume(&name)).await, |()| {
                CommandOutcome::Resumed { vm }
            })
        }
        AgentAction::Serve { group } => match res.volumes.serve(group).await {
            Ok(served) => Executed::done(CommandOutcome::Served(served)),
            Err(e) => failed(e),
        },
        AgentAction::Unserve { app, grace_s } => {
            let stopped = res.volumes.unserve(&app, grace_s).await;
            Executed::done(CommandOutcome::Unserved { app, stopped })
        }
        AgentAction::Shutdown { vm, timeout_s } => {
            let name = vm.to_string();
            if let Err(e) = hv(res, move |h| h.shutdown(&name)).await {
                return failed(e.to_string());
            }
            let deadline = mono_now().plus_ms(u64::from(timeout_s) * 1000);
            loop {
                let name = vm.to_string();
                match hv(res, move |h| h.state(&name)).await {
                    Ok(DomainState::ShutOff) => {
                        return Executed::done(CommandOutcome::ShutDown {
                            vm,
                            destroyed_after_s: None,
                        });
                    }
                    Ok(_) if mono_now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Ok(_) => {
                        let name = vm.to_string();
                        return match hv(res, move |h| h.destroy(&name)).await {
                            Ok(()) => Executed::done(CommandOutcome::ShutDown {
                                vm,
                                destroyed_after_s: Some(timeout_s),
                            }),
                            Err(e) => failed(format!(
                                "{vm} did not stop within {timeout_s} s and could not be destroyed: {e}"
                            )),
                        };
                    }
                    Err(e) => return failed(e.to_string()),
                }
            }
        }
    }
}
