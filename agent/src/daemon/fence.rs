//! The fence, as a task: the lease ran out, so this host's VMs must stop writing
//! before the other site takes over. First guest I/O stops on every primary served
//! here (they acknowledge nothing from then on), then every managed VM's QEMU is
//! killed (or, with `fence_action = "pause"`, after the groups stopped serving, the VM
//! is paused), then every group stops serving.
//!
//! Never: pause before killing (a pause drains in-flight I/O that a fenced primary
//! never answers, and QEMU's stop then holds the domain's libvirt job: see d53d409),
//! or wait for a peer's confirmation (the primaries are fenced already).

use proto::agent::FenceReport;

use super::{Resources, hv};
use crate::config::FenceAction;
use crate::core::Input;
use crate::hypervisor::only_ours;
use crate::lease::mono_now;

/// Stop guest I/O, then destroy (or pause) every managed VM. Errors are recorded; a VM
/// that could not be stopped is named in the report.
pub(super) async fn fence(res: &Resources) -> Input {
    let started = mono_now();
    let io = match (res.volumes.fence_io(), res.fence.fence_io()) {
        (Ok(a), Ok(b)) => Ok(format!("{a}; {b}")),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let action = res.cfg.fence_action;
    // A pause drains the guest's in-flight I/O, and the fenced primaries hold theirs for
    // good: stop serving first, so that I/O fails (none of it was acknowledged) and the
    // pause finishes. A kill needs no drain and goes first.
    let mut groups = Vec::new();
    if action == FenceAction::Pause {
        groups = res.volumes.stop_all(true).await;
    }
    let host = res.cfg.host.clone();
    let outcome = hv(res, move |h| {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for d in only_ours(h.list()?, &host) {
            if d.managed.is_none() || !d.state.is_active() {
                continue;
            }
            let r = match action {
                FenceAction::Destroy => h.fence(&d.name).map(|how| format!("{} ({how})", d.name)),
                FenceAction::Pause => h.suspend(&d.name).map(|()| d.name.clone()),
            };
            match r {
                Ok(what) => done.push(what),
                Err(e) => failed.push(format!("{}: {e}", d.name)),
            }
        }
        Ok((done, failed))
    })
    .await;
    // The fenced primaries acknowledge nothing any more: stop serving every group
    // (the cluster serves them again once this host registers after a new lease).
    if action == FenceAction::Destroy {
        groups = res.volumes.stop_all(true).await;
    }
    if !groups.is_empty() {
        tracing::warn!(host = %res.cfg.host, "fence: {}", groups.join("; "));
    }
    let took_ms = mono_now().ms_since(started);
    let (io_failed, io) = match io {
        Ok(t) => (false, t),
        Err(e) => (true, e),
    };
    let paused = action == FenceAction::Pause;
    let report = match outcome {
        Ok((stopped, not_stopped)) => FenceReport {
            took_ms,
            paused,
            stopped,
            not_stopped,
            io,
            io_failed,
            error: None,
        },
        Err(e) => FenceReport {
            took_ms,
            paused,
            stopped: Vec::new(),
            not_stopped: Vec::new(),
            io,
            io_failed,
            error: Some(e.to_string()),
        },
    };
    Input::FenceDone { report }
}

/// Stop what commands started without a lease once the fence had run (or while it
/// ran): these domains the way the fence stops them, and every group when `groups`.
pub(super) async fn stragglers(res: &Resources, domains: Vec<String>, groups: bool) -> Input {
    let mut done = Vec::new();
    if groups {
        match res.volumes.fence_io() {
            Ok(t) => done.push(t),
            Err(e) => done.push(format!("guest I/O not stopped: {e}")),
        }
        done.extend(res.volumes.stop_all(true).await);
    }
    let action = res.cfg.fence_action;
    for name in domains {
        let n = name.clone();
        let r = hv(res, move |h| match action {
            FenceAction::Destroy => h.fence(&n),
            FenceAction::Pause => h.suspend(&n).map(|()| "paused".to_string()),
        })
        .await;
        done.push(match r {
            Ok(how) => format!("{name} ({how})"),
            Err(e) => format!("{name} not stopped: {e}"),
        });
    }
    Input::StragglersStopped {
        report: done.join("; "),
    }
}
