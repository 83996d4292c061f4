//! The agent's own files besides the command journal's `begin`/`finished` lines: the
//! persisted lease expiry (`state_dir/lease`, with the boot id) and the journal's event
//! lines, written in order by one blocking thread so that the loop never waits on a
//! disk.
//!
//! Never: write the lease or an event from the loop itself, or reorder two writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proto::agent::AgentEvent;
use tokio::sync::mpsc;

use super::Resources;
use crate::core::Input;
use crate::journal::Line;
use crate::lease::Mono;

fn lease_file(state_dir: &Path) -> PathBuf {
    state_dir.join("lease")
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The persisted lease expiry, if it belongs to this boot.
pub(super) fn read_lease(state_dir: &Path) -> Option<Mono> {
    let text = std::fs::read_to_string(lease_file(state_dir)).ok()?;
    let (ns, boot) = text.trim().split_once(' ')?;
    (boot == boot_id()).then(|| ns.parse().ok().map(Mono))?
}

fn write_lease(state_dir: &Path, until: Mono) -> Result<(), String> {
    let path = lease_file(state_dir);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{} {}\n", until.0, boot_id()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("cannot persist the lease in {}: {e}", path.display()))
}

/// One write for the writer thread.
pub(super) enum Write {
    Event { seq: u64, event: AgentEvent },
    Reported(Vec<u64>),
    Lease(Mono),
}

/// The writer thread: writes in the order given; a lease write is answered with
/// [`Input::LeaseWritten`].
pub(super) struct Writer {
    tx: mpsc::UnboundedSender<Write>,
    thread: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub(super) fn start(res: Arc<Resources>, back: mpsc::UnboundedSender<Input>) -> Writer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Write>();
        let thread = tokio::task::spawn_blocking(move || {
            let host = &res.cfg.host;
            while let Some(w) = rx.blocking_recv() {
                match w {
                    Write::Event { seq, event } => {
                        if let Err(e) = res.journal.record(Line::AgentEvent { seq, event }) {
                            tracing::error!(host = %host, seq, "cannot journal an event: {e}");
                        }
                    }
                    Write::Reported(seqs) => {
                        for seq in seqs {
                            if let Err(e) = res.journal.record(Line::EventReported { seq }) {
                                tracing::warn!(host = %host, seq, "cannot journal that an event was reported: {e}");
                            }
                        }
                    }
                    Write::Lease(until) => {
                        let ok = match write_lease(&res.cfg.state_dir, until) {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::warn!(host = %host, "{e}");
                                false
                            }
                        };
                        // The loop is gone when stopping: nothing to tell.
                        let _ = back.send(Input::LeaseWritten { until, ok });
                    }
                }
            }
        });
        Writer { tx, thread }
    }

    pub(super) fn write(&self, w: Write) {
        // The thread ends only when this sender is dropped.
        let _ = self.tx.send(w);
    }

    /// Finish the writes given so far.
    pub(super) async fn close(self) {
        drop(self.tx);
        let _ = self.thread.await;
    }
}
