//! The two halves of [`Core::apply`]: taking in one input (`handle`), then comparing
//! what should be under way with what is and starting what is missing (`drive`,
//! level-triggered: it runs after every input, whatever it was).
//!
//! Never: start a second call of a kind already in flight, or anything but the fence
//! before the first registration.

use proto::agent::{AgentEvent, Executed, FailureKind};

use super::io::{ClockFile, Delivered, Effect, Input, ObsSeq, RegisterFailure, RenewAnswer};
use super::vm_states::reportable;
use super::{
    Call, Core, FencePhase, NO_LEASE_POLL_MS, POLL_RETRY_MS, POLL_WAIT_MS, REGISTER_RETRY_MS,
    RENEW_RETRY_MS, REPORT_RETRY_MS, RegPhase, ReportPhase, WATCH_MS,
};
use crate::core::commands::Arrival;
use crate::lease::Mono;

impl Core {
    pub(super) fn handle(&mut self, now: Mono, input: Input, fx: &mut Vec<Effect>) {
        match input {
            Input::Tick => {}
            Input::Registered {
                obs,
                states,
                domain_type,
                renew_ms,
                leader,
                adopted,
            } => {
                let RegPhase::InFlight {
                    obs: sent,
                    addr,
                    fenced,
                    fences,
                    again,
                    ..
                } = &self.reg
                else {
                    return;
                };
                if *sent != obs {
                    return;
                }
                tracing::info!(host = %self.cfg.host, via = %addr, adopted, %domain_type, "agent registered");
                if *fenced && *fences == self.fences && self.fence == FencePhase::Idle {
                    self.fenced_unreported = false;
                }
                self.reg = if *again {
                    RegPhase::Wanted {
                        at: now,
                        warned: false,
                    }
                } else {
                    RegPhase::Done
                };
                // It told the cluster every VM's state: what was queued is older, and
                // so is whatever an observation asked for before now saw.
                self.outbox.registered();
                self.told.registered(states);
                self.obs_floor = self.next_obs;
                self.domain_type = domain_type;
                self.renew.renew_ms = renew_ms.max(50);
                self.conn.follow(&leader);
                self.registered_once = true;
            }
            Input::RegisterFailed { obs, why } => {
                let RegPhase::InFlight {
                    obs: sent,
                    addr,
                    warned,
                    ..
                } = &self.reg
                else {
                    return;
                };
                if *sent != obs {
                    return;
                }
                let mut warned = *warned;
                match why {
                    RegisterFailure::Libvirt(e) => {
                        if !warned {
                            tracing::error!(host = %self.cfg.host, "libvirt is not usable yet, retrying: {e}");
                            warned = true;
                        }
                    }
                    RegisterFailure::Cluster(e) => {
                        tracing::warn!(host = %self.cfg.host, via = %addr, "registration failed: {e}");
                        self.conn.failed();
                        // It may have landed (a lost reply) with later VM states than
                        // those queued or seen so far: observe every VM again.
                        self.outbox.registered();
                        self.told.forget_all();
                        self.obs_floor = self.next_obs;
                    }
                }
                self.reg = RegPhase::Wanted {
                    at: now.plus_ms(REGISTER_RETRY_MS),
                    warned,
                };
            }
            Input::Renewed { seq, answer } => {
                let Some((sent_seq, sent, addr)) = self.renew.in_flight.clone() else {
                    return;
                };
                if sent_seq != seq {
                    return;
                }
                self.renew.in_flight = None;
                self.renew.next_at = now.plus_ms(self.renew.renew_ms);
                match answer {
                    RenewAnswer::Granted { lease_ms, leader } => {
                        let regained = self.lease.granted(sent, lease_ms);
                        if let Some(until) = self.lease.until() {
                            fx.push(Effect::PersistLease { until });
                        }
                        if regained {
                            tracing::warn!(host = %self.cfg.host, "lease regained; restarting nothing (the orchestrator decides)");
                            self.event(AgentEvent::LeaseRegained, fx);
                            // What it served was stopped at the fence: registering
                            // again tells the cluster to place it anew.
                            self.want_registration(now);
                        }
                        self.conn.follow(&leader);
                    }
                    RenewAnswer::Refused { leader, reason } => {
                        tracing::debug!(host = %self.cfg.host, via = %addr, "renewal not granted: {reason}");
                        self.renew.next_at = now.plus_ms(self.renew.renew_ms.min(RENEW_RETRY_MS));
                        if leader.is_empty() || leader == addr {
                            self.conn.failed();
                        } else {
                            self.conn.follow(&leader);
                        }
                    }
                }
            }
            Input::RenewFailed { seq, error } => {
                if self.renew.in_flight.as_ref().is_some_and(|f| f.0 == seq) {
                    tracing::debug!(host = %self.cfg.host, "renewal failed: {error}");
                    self.renew.in_flight = None;
                    self.renew.next_at = now.plus_ms(self.renew.renew_ms.min(RENEW_RETRY_MS));
                    self.conn.failed();
                }
            }
            Input::Polled { commands } => {
                self.poll = Call::Due { at: now };
                for d in commands {
                    self.deliver(d);
                }
            }
            Input::PollFailed { error } => {
                tracing::debug!(host = %self.cfg.host, "poll failed: {error}");
                self.poll = Call::Due {
                    at: now.plus_ms(POLL_RETRY_MS),
                };
            }
            Input::CommandFinished {
                id,
                executed,
                marks,
            } => {
                let Some(picked) = self.cmds.finished(id, executed.as_ref()) else {
                    return;
                };
                for (domain, mark) in marks {
                    match mark {
                        Some(m) => self.console_marks.insert(domain, m),
                        None => self.console_marks.remove(&domain),
                    };
                }
                let action = &picked.action;
                match executed {
                    Some(executed) => {
                        tracing::info!(host = %self.cfg.host, %id, action = action.name(), target = %action.target(), ok = executed.is_ok(), "{executed}");
                        self.outbox.result(id, executed);
                        self.straggler(now, action, fx);
                    }
                    None => {
                        tracing::error!(host = %self.cfg.host, %id, action = action.name(), "not run: its begin could not be journaled");
                    }
                }
            }
            Input::Observed {
                obs,
                clock,
                domains,
                disk,
            } => self.observed(now, obs, clock, domains, disk, fx),
            Input::FenceDone { report } => {
                let FencePhase::Running {
                    loss,
                    domains,
                    groups,
                } = std::mem::replace(&mut self.fence, FencePhase::Idle)
                else {
                    return;
                };
                tracing::error!(host = %self.cfg.host, "FENCED: {report}");
                self.event(AgentEvent::Fenced(report), fx);
                let valid = self.lease_valid(now);
                if !valid && (!domains.is_empty() || groups) {
                    tracing::warn!(host = %self.cfg.host, ?domains, groups, "commands started things while the fence ran: stopping them");
                    fx.push(Effect::StopStragglers {
                        domains: domains.into_iter().collect(),
                        groups,
                    });
                }
                if loss < self.losses && !valid {
                    // Lost, regained and lost again while it ran: this loss gets its own.
                    self.start_fence(fx);
                } else {
                    self.lease.fenced();
                }
            }
            Input::StragglersStopped { report } => {
                tracing::warn!(host = %self.cfg.host, "stopped after the fence: {report}");
            }
            Input::ReportSent => {
                if let ReportPhase::InFlight(batch) =
                    std::mem::replace(&mut self.report, ReportPhase::Idle)
                    && !batch.events.is_empty()
                {
                    fx.push(Effect::EventsReported {
                        seqs: batch.events.iter().map(|(s, _)| *s).collect(),
                    });
                }
            }
            Input::ReportFailed { error } => {
                if let ReportPhase::InFlight(batch) = std::mem::replace(
                    &mut self.report,
                    ReportPhase::Backoff {
                        until: now.plus_ms(REPORT_RETRY_MS),
                    },
                ) {
                    tracing::debug!(host = %self.cfg.host, "report failed, will retry: {error}");
                    // Results and events go back; VM states are observed again
                    // instead (fresh, not the failed report's older ones).
                    self.told.forget(batch.domains.keys());
                    self.outbox.put_back(batch);
                    self.conn.failed();
                }
            }
            Input::LeaseWritten { until, ok } => {
                if ok {
                    self.lease_on_disk = true;
                } else if !self.lease_on_disk {
                    // A restarted agent would find no lease and fence nothing: no
                    // command runs until one is on disk (the next renewal writes again).
                    tracing::warn!(host = %self.cfg.host, ?until, "no lease is on disk yet: commands wait");
                }
            }
        }
    }

    fn observed(
        &mut self,
        now: Mono,
        obs: ObsSeq,
        clock: ClockFile,
        domains: Result<Vec<crate::hypervisor::DomainInfo>, String>,
        disk: Vec<AgentEvent>,
        fx: &mut Vec<Effect>,
    ) {
        if self.watch == Call::InFlight {
            self.watch = Call::Due {
                at: now.plus_ms(WATCH_MS),
            };
        }
        let rate = match clock {
            ClockFile::Absent => Some(1.0),
            ClockFile::Rate(r) => Some(r),
            ClockFile::Bad(why) => {
                if self.clock_complaint.as_ref() != Some(&why) {
                    tracing::warn!(host = %self.cfg.host, "{why}");
                    self.clock_complaint = Some(why);
                }
                None
            }
        };
        if let Some(rate) = rate {
            self.clock_complaint = None;
            if self.clock.set_rate(rate, now) {
                let event = AgentEvent::ClockRate {
                    // The rate is within crate::clock's bounds (0.1 to 10).
                    rate_permille: (rate * 1000.0).round() as u32,
                };
                tracing::warn!(host = %self.cfg.host, "{event}");
                self.event(event, fx);
            }
        }
        match domains {
            Ok(domains) => {
                if self.libvirt_down {
                    tracing::warn!(host = %self.cfg.host, "libvirt is reachable again");
                    self.libvirt_down = false;
                    let uri = self.cfg.libvirt_uri.clone();
                    self.event(AgentEvent::LibvirtReachable { uri }, fx);
                }
                if obs >= self.obs_floor {
                    let changed = self.told.observe(reportable(&domains));
                    self.outbox.domains(changed, obs);
                }
            }
            Err(error) => {
                if !self.libvirt_down {
                    tracing::error!(host = %self.cfg.host, "libvirt is unreachable: {error}");
                    self.libvirt_down = true;
                    self.event(AgentEvent::LibvirtUnreachable { error }, fx);
                }
            }
        }
        for change in disk {
            tracing::warn!(host = %self.cfg.host, "{change}");
            self.event(change, fx);
        }
    }

    fn deliver(&mut self, d: Delivered) {
        match d {
            Delivered::Unreadable { id, why } => {
                let why = format!("this agent cannot read the command: {why}");
                tracing::error!(host = %self.cfg.host, %id, "{why}");
                self.cmds.skip(id);
                self.outbox
                    .result(id, Executed::failed(FailureKind::Unsupported, why));
            }
            Delivered::Command { id, action } => match self.cmds.deliver(id, (*action).clone()) {
                Arrival::Queued => {}
                Arrival::Duplicate => {
                    tracing::debug!(host = %self.cfg.host, %id, "delivered again while in hand");
                }
                Arrival::Known(executed) => {
                    tracing::info!(host = %self.cfg.host, %id, action = action.name(), target = %action.target(), ok = executed.is_ok(), "{executed}");
                    self.outbox.result(id, executed);
                }
                Arrival::Refused(executed) => {
                    tracing::warn!(host = %self.cfg.host, %id, "{executed}");
                    self.outbox.result(id, executed);
                }
            },
        }
    }

    /// Start whatever should be under way and is not.
    pub(super) fn drive(&mut self, now: Mono, fx: &mut Vec<Effect>) {
        let fencing = self.fence != FencePhase::Idle;
        let reporting = matches!(self.report, ReportPhase::InFlight(_));
        // Registration first: never while a fence tears down (the cluster would serve
        // and start what the fence is still stopping), never beside a report.
        if let RegPhase::Wanted { at, warned } = self.reg
            && now >= at
            && !fencing
            && !reporting
            && let Some(addr) = self.conn.target()
        {
            let obs = self.next_observation();
            self.reg = RegPhase::InFlight {
                obs,
                addr: addr.clone(),
                fenced: self.fenced_unreported,
                fences: self.fences,
                warned,
                again: false,
            };
            fx.push(Effect::Register {
                addr,
                obs,
                fenced: self.fenced_unreported,
            });
        }
        if !self.registered_once {
            return;
        }
        let lease_now = self.lease_now(now);
        if self.renew.in_flight.is_none()
            && now >= self.renew.next_at
            && let Some(addr) = self.conn.target()
        {
            self.renew.seq += 1;
            let seq = self.renew.seq;
            self.renew.in_flight = Some((seq, lease_now, addr.clone()));
            fx.push(Effect::Renew {
                addr,
                seq,
                timeout_ms: self.renew.renew_ms.max(200) * 2,
            });
        }
        if let ReportPhase::Backoff { until } = self.report
            && now >= until
        {
            self.report = ReportPhase::Idle;
        }
        if self.report == ReportPhase::Idle
            && !matches!(self.reg, RegPhase::InFlight { .. })
            && !self.outbox.is_empty()
            && let Some(addr) = self.conn.target()
        {
            let batch = self.outbox.take();
            self.report = ReportPhase::InFlight(batch.clone());
            fx.push(Effect::Report { addr, batch });
        }
        self.drive_commands(now, fx);
        if let Call::Due { at } = self.watch
            && now >= at
        {
            let obs = self.next_observation();
            self.watch = Call::InFlight;
            fx.push(Effect::Observe { obs });
        }
    }

    fn next_observation(&mut self) -> ObsSeq {
        let obs = self.next_obs;
        self.next_obs = ObsSeq(obs.0 + 1);
        obs
    }

    /// Start the commands that may run (a valid lease, on disk, no fence under way:
    /// else they wait in their queues), and poll for more while the lease is held.
    fn drive_commands(&mut self, now: Mono, fx: &mut Vec<Effect>) {
        let valid = self.lease_valid(now);
        if valid && self.fence == FencePhase::Idle && self.lease_on_disk {
            for p in self.cmds.pick() {
                let ctx = self.run_ctx(&p.action);
                fx.push(Effect::Run {
                    id: p.id,
                    action: p.action,
                    ctx,
                });
            }
        }
        if let Call::Due { at } = self.poll
            && now >= at
        {
            match self.conn.target() {
                Some(addr) if valid => {
                    self.poll = Call::InFlight;
                    fx.push(Effect::Poll {
                        addr,
                        after: self.cmds.after(),
                        wait_ms: POLL_WAIT_MS,
                        // A node cut off without a reset (a partition, a paused
                        // process) never answers: give up after the wait plus slack,
                        // so the next poll goes where the renewals moved to.
                        timeout_ms: u64::from(POLL_WAIT_MS) + 1000,
                    });
                }
                // No lease, no commands: they stay queued in the cluster.
                _ => {
                    self.poll = Call::Due {
                        at: now.plus_ms(NO_LEASE_POLL_MS),
                    }
                }
            }
        }
    }
}
