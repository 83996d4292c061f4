//! The agent's one loop: `loop { input = select(stop, a task's result, the core's next
//! timer); effects = core.apply(now, input); start(effects) }`.
//!
//! Starting an effect never awaits: it spawns a task (libvirt, gRPC, a command, the
//! fence) whose result comes back on the channel, or hands a write to the disk writer.
//! So the loop is back at its `select` within microseconds of every input, and a
//! renewal or the lease check is never late because something else is slow — the
//! agent's tests check it with a libvirt whose calls take seconds.
//!
//! Never: hold the core across an await, share it with a task, or let a task change
//! anything but its own result.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::disk::{Write, Writer};
use super::rpc::Clients;
use super::{Resources, execute, fence, observe, rpc};
use crate::core::{Core, Effect, Input};
use crate::lease::mono_now;

pub(super) struct Shell {
    core: Core,
    res: Arc<Resources>,
    clients: Clients,
    tx: mpsc::UnboundedSender<Input>,
    rx: mpsc::UnboundedReceiver<Input>,
    /// Every task but the fence: abandoned when the agent stops.
    tasks: JoinSet<()>,
    /// The fence under way: a stopping agent lets it finish.
    fence: Option<JoinHandle<()>>,
    writer: Writer,
}

impl Shell {
    pub(super) fn new(core: Core, res: Arc<Resources>, tls: Option<Arc<security::Tls>>) -> Shell {
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer::start(res.clone(), tx.clone());
        Shell {
            core,
            res,
            clients: Clients::new(tls),
            tx,
            rx,
            tasks: JoinSet::new(),
            fence: None,
            writer,
        }
    }

    /// Run until told to stop (or until the handle that could stop it is gone).
    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.apply(Input::Tick);
        loop {
            let now = mono_now();
            let wait = Duration::from_nanos(self.core.next_wake(now).0.saturating_sub(now.0));
            let input = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                Some(input) = self.rx.recv() => Some(input),
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        tracing::error!(host = %self.res.cfg.host, "an agent task panicked: {e}");
                    }
                    None
                }
                _ = tokio::time::sleep(wait) => Some(Input::Tick),
            };
            if let Some(input) = input {
                self.apply(input);
            }
        }
        self.shutdown().await;
    }

    fn apply(&mut self, input: Input) {
        if matches!(input, Input::FenceDone { .. }) {
            self.fence = None;
        }
        let effects = self.core.apply(mono_now(), input);
        if let Err(e) = self.core.invariants() {
            // A bug: said loudly, and the agent goes on (a dead loop would not fence).
            tracing::error!(host = %self.res.cfg.host, "agent core invariant broken: {e}");
        }
        for effect in effects {
            self.start(effect);
        }
    }

    /// Spawn a task whose result comes back to the loop.
    fn spawn(&mut self, task: impl Future<Output = Input> + Send + 'static) {
        let tx = self.tx.clone();
        self.tasks.spawn(async move {
            // The loop is gone only when stopping: nothing to tell then.
            let _ = tx.send(task.await);
        });
    }

    fn start(&mut self, effect: Effect) {
        let res = self.res.clone();
        let host = res.cfg.host.clone();
        match effect {
            Effect::Register { addr, obs, fenced } => {
                let client = self.clients.get(&addr);
                self.spawn(rpc::register(res, client, obs, fenced));
            }
            Effect::Renew {
                addr,
                seq,
                timeout_ms,
            } => {
                let client = self.clients.get(&addr);
                self.spawn(rpc::renew(host, client, seq, timeout_ms));
            }
            Effect::Poll {
                addr,
                after,
                wait_ms,
                timeout_ms,
            } => {
                let client = self.clients.get(&addr);
                self.spawn(rpc::poll(host, client, after, wait_ms, timeout_ms));
            }
            Effect::Report { addr, batch } => {
                let client = self.clients.get(&addr);
                self.spawn(rpc::report(host, client, batch));
            }
            Effect::Run { id, action, ctx } => self.spawn(execute::run(res, id, action, ctx)),
            Effect::Observe { obs } => {
                self.spawn(async move { observe::observe(&res, obs).await });
            }
            Effect::Fence => {
                let tx = self.tx.clone();
                self.fence = Some(tokio::spawn(async move {
                    let _ = tx.send(fence::fence(&res).await);
                }));
            }
            Effect::StopStragglers { domains, groups } => {
                self.spawn(async move { fence::stragglers(&res, domains, groups).await });
            }
            Effect::RecordEvent { seq, event } => self.writer.write(Write::Event { seq, event }),
            Effect::EventsReported { seqs } => self.writer.write(Write::Reported(seqs)),
            Effect::PersistLease { until } => self.writer.write(Write::Lease(until)),
        }
    }

    /// A fence under way finishes and is journaled; everything else is abandoned (the
    /// journal makes an abandoned command read as interrupted).
    async fn shutdown(mut self) {
        if let Some(f) = self.fence.take() {
            let _ = f.await;
            while let Ok(input) = self.rx.try_recv() {
                if !matches!(input, Input::FenceDone { .. }) {
                    continue;
                }
                for effect in self.core.apply(mono_now(), input) {
                    match effect {
                        Effect::RecordEvent { seq, event } => {
                            self.writer.write(Write::Event { seq, event })
                        }
                        Effect::PersistLease { until } => self.writer.write(Write::Lease(until)),
                        _ => {}
                    }
                }
            }
        }
        self.tasks.shutdown().await;
        self.writer.close().await;
    }
}
