//! Scenario tests of the agent core: each pins one promise with the exact inputs that
//! exercise it (the property tests in `props` look for the sequences nobody wrote).

use std::collections::BTreeMap;

use ids::{CommandId, OpId};
use proto::agent::{AgentAction, AgentEvent, CommandOutcome, Executed, FailureKind, FenceReport};
use topology::VmId;

use super::*;
use crate::hypervisor::{DomainInfo, DomainState};
use crate::journal::Seen;

const LEASE: u64 = 3000;

fn at(ms: u64) -> Mono {
    Mono(1_000_000_000).plus_ms(ms)
}

fn vm(name: &str) -> VmId {
    VmId::new(name)
}

fn dom(name: &str, state: DomainState) -> DomainInfo {
    DomainInfo {
        name: name.into(),
        state,
        managed: Some(crate::domain_xml::ManagedBy {
            app: ids::AppId::new("shop"),
            vm: vm(name),
            host: Some("h1".into()),
            drill: None,
        }),
    }
}

fn report() -> FenceReport {
    FenceReport {
        took_ms: 5,
        paused: false,
        stopped: vec!["web-1 (QEMU killed 1 ms)".into()],
        not_stopped: Vec::new(),
        io: String::new(),
        io_failed: false,
        error: None,
    }
}

/// A core and its clock; every step checks the invariants.
struct T {
    core: Core,
    now: Mono,
}

impl T {
    fn start(lease: Option<Mono>, journal: Restored) -> (T, Vec<Effect>) {
        let now = at(0);
        let core = Core::new(
            CoreConfig {
                host: "h1".into(),
                cluster: vec!["n1:1".into(), "n2:1".into()],
                libvirt_uri: "test:///t".into(),
            },
            lease,
            journal,
            now,
        );
        let mut t = T { core, now };
        let fx = t.apply(Input::Tick);
        (t, fx)
    }

    fn apply(&mut self, input: Input) -> Vec<Effect> {
        let fx = self.core.apply(self.now, input);
        if let Err(e) = self.core.invariants() {
            panic!("invariant broken: {e}");
        }
        fx
    }

    fn wait(&mut self, ms: u64) -> Vec<Effect> {
        self.now = self.now.plus_ms(ms);
        self.apply(Input::Tick)
    }

    fn registered(
        &mut self,
        obs: ObsSeq,
        states: BTreeMap<VmId, proto::agent::VmState>,
    ) -> Vec<Effect> {
        self.apply(Input::Registered {
            obs,
            states,
            domain_type: DomainType::Qemu,
            renew_ms: 500,
            leader: String::new(),
            adopted: 0,
        })
    }

    /// Registered, granted a lease that is on disk: commands may run.
    fn ready() -> T {
        let (mut t, fx) = T::start(None, Restored::default());
        let obs = register_obs(&fx).expect("registers at once");
        let fx = t.registered(obs, BTreeMap::new());
        let seq = renew_seq(&fx).expect("renews once registered");
        let obs =
            observe_obs(&fx).unwrap_or_else(|| panic!("looks at the host once registered: {fx:?}"));
        t.observed(obs, Vec::new());
        let fx = t.granted(seq);
        let Some(Effect::PersistLease { until }) = fx.first().cloned() else {
            panic!("the lease is persisted first: {fx:?}")
        };
        // Commands delivered before the lease is on disk wait (a restart would find
        // no lease, and fence nothing).
        let fx = t.deliver(&[(99, AgentAction::Destroy { vm: vm("z") })]);
        assert!(runs(&fx).is_empty(), "{fx:?}");
        assert!(
            fx.iter().any(|e| matches!(e, Effect::Poll { .. })),
            "polls again at once: {fx:?}"
        );
        let fx = t.apply(Input::LeaseWritten { until, ok: false });
        assert!(
            runs(&fx).is_empty(),
            "a failed write is not a lease on disk"
        );
        let fx = t.apply(Input::LeaseWritten { until, ok: true });
        assert_eq!(runs(&fx), vec![99]);
        t.apply(Input::CommandFinished {
            id: CommandId(99),
            executed: Some(Executed::done(CommandOutcome::Destroyed { vm: vm("z") })),
            marks: Vec::new(),
        });
        t.apply(Input::ReportSent);
        t
    }

    /// A look at the host found these domains (the clock fault file absent).
    fn observed(&mut self, obs: ObsSeq, domains: Vec<DomainInfo>) -> Vec<Effect> {
        self.apply(Input::Observed {
            obs,
            clock: ClockFile::Absent,
            domains: Ok(domains),
            disk: Vec::new(),
        })
    }

    /// Renewal `seq` was granted a full lease by the leader at n1.
    fn granted(&mut self, seq: u64) -> Vec<Effect> {
        self.apply(Input::Renewed {
            seq,
            answer: RenewAnswer::Granted {
                lease_ms: LEASE,
                leader: "n1:1".into(),
            },
        })
    }

    fn deliver(&mut self, cmds: &[(u64, AgentAction)]) -> Vec<Effect> {
        self.apply(Input::Polled {
            commands: cmds
                .iter()
                .map(|(id, action)| Delivered::Command {
                    id: CommandId(*id),
                    action: Box::new(action.clone()),
                })
                .collect(),
        })
    }
}

/// The registration among `fx`: its observation and whether it says it fenced.
fn registration(fx: &[Effect]) -> Option<(ObsSeq, bool)> {
    fx.iter().find_map(|e| match e {
        Effect::Register { obs, fenced, .. } => Some((*obs, *fenced)),
        _ => None,
    })
}

fn register_obs(fx: &[Effect]) -> Option<ObsSeq> {
    registration(fx).map(|(obs, _)| obs)
}

fn observe_obs(fx: &[Effect]) -> Option<ObsSeq> {
    fx.iter().find_map(|e| match e {
        Effect::Observe { obs } => Some(*obs),
        _ => None,
    })
}

fn renew_seq(fx: &[Effect]) -> Option<u64> {
    fx.iter().find_map(|e| match e {
        Effect::Renew { seq, .. } => Some(*seq),
        _ => None,
    })
}

fn runs(fx: &[Effect]) -> Vec<u64> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Run { id, .. } => Some(id.0),
            _ => None,
        })
        .collect()
}

fn report_batch(fx: &[Effect]) -> Option<Batch> {
    fx.iter().find_map(|e| match e {
        Effect::Report { batch, .. } => Some(batch.clone()),
        _ => None,
    })
}

fn start(name: &str) -> AgentAction {
    AgentAction::Start { vm: vm(name) }
}

fn started(name: &str) -> Executed {
    Executed::done(CommandOutcome::Started {
        domain: name.into(),
        state: proto::agent::VmState::Running,
    })
}

#[test]
fn a_new_agent_only_registers_and_then_renews_watches_and_polls_with_a_lease_on_disk() {
    let (mut t, fx) = T::start(None, Restored::default());
    assert!(
        matches!(fx.as_slice(), [Effect::Register { fenced: false, .. }]),
        "{fx:?}"
    );
    assert!(
        t.wait(2000).is_empty(),
        "nothing but registration before it answers"
    );
    let obs = register_obs(&fx).unwrap();
    let fx = t.registered(obs, BTreeMap::new());
    assert!(fx.iter().any(|e| matches!(e, Effect::Renew { .. })));
    assert!(fx.iter().any(|e| matches!(e, Effect::Observe { .. })));
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Poll { .. })),
        "no lease, no commands"
    );
    T::ready();
}

#[test]
fn the_lease_running_out_fences_once_registration_waits_and_then_says_fenced_once() {
    let mut t = T::ready();
    // Renewals go unanswered (a partition): each times out.
    let mut fences = 0;
    for _ in 0..40 {
        let fx = t.wait(100);
        fences += fx.iter().filter(|e| matches!(e, Effect::Fence)).count();
        if let Some(seq) = renew_seq(&fx) {
            t.apply(Input::RenewFailed {
                seq,
                error: "timed out".into(),
            });
        }
    }
    assert_eq!(fences, 1, "one fence for one loss");
    assert!(!t.core.lease_valid(t.now));
    // The partition heals while the fence still runs: the lease is back, the
    // registration waits for the fence.
    let fx = t.wait(500);
    let seq = renew_seq(&fx).expect("renewals go on");
    let fx = t.granted(seq);
    assert!(
        fx.iter().any(|e| matches!(
            e,
            Effect::RecordEvent {
                event: AgentEvent::LeaseRegained,
                ..
            }
        )),
        "{fx:?}"
    );
    assert!(register_obs(&fx).is_none(), "not while the fence runs");
    let fx = t.apply(Input::FenceDone { report: report() });
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::RecordEvent {
            event: AgentEvent::Fenced(_),
            ..
        }
    )));
    // The regained-lease event went out during the fence; the registration follows it.
    assert!(register_obs(&fx).is_none(), "not beside a report in flight");
    let fx = t.apply(Input::ReportSent);
    let (obs, fenced) =
        registration(&fx).unwrap_or_else(|| panic!("registers, saying it fenced: {fx:?}"));
    assert!(fenced, "it says it fenced");
    // A lost reply: it says so again; once it landed, never again.
    let fx = t.apply(Input::RegisterFailed {
        obs,
        why: RegisterFailure::Cluster("deadline".into()),
    });
    assert!(register_obs(&fx).is_none(), "not at once after a failure");
    // Meanwhile the fence's own event goes out.
    let batch = report_batch(&fx).expect("the fence report is sent");
    assert!(matches!(
        batch.events.as_slice(),
        [(_, AgentEvent::Fenced(_))]
    ));
    t.apply(Input::ReportSent);
    let fx = t.wait(500);
    let (obs, fenced) = registration(&fx).unwrap_or_else(|| panic!("{fx:?}"));
    assert!(fenced, "it says it fenced");
    t.registered(obs, BTreeMap::new());
    assert!(!t.core.fenced_unreported);
}

#[test]
fn a_restarted_agent_whose_lease_ran_out_fences_before_it_registers() {
    let (mut t, fx) = T::start(Some(at(0).plus_ms(0)), Restored::default());
    assert_eq!(
        fx,
        vec![Effect::Fence],
        "the fence first, registration after it"
    );
    let fx = t.apply(Input::FenceDone { report: report() });
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Register { fenced: true, .. })),
        "{fx:?}"
    );
    // One whose lease still runs keeps it and fences nothing.
    let (_, fx) = T::start(Some(at(2000)), Restored::default());
    assert!(
        matches!(fx.as_slice(), [Effect::Register { fenced: false, .. }]),
        "{fx:?}"
    );
}

#[test]
fn a_report_and_a_registration_go_out_one_at_a_time() {
    let mut t = T::ready();
    let fx = t.deliver(&[(1, start("a"))]);
    assert_eq!(runs(&fx), vec![1]);
    let fx = t.apply(Input::CommandFinished {
        id: CommandId(1),
        executed: Some(started("a")),
        marks: Vec::new(),
    });
    let batch = report_batch(&fx).expect("the result is reported at once");
    assert_eq!(batch.results.len(), 1);
    // The lease is lost and regained while the report is in flight.
    t.core.lease = crate::lease::AgentLease {
        state: LeaseState::Lost {
            since: t.now,
            fenced: true,
        },
    };
    t.core.want_registration(t.now);
    let fx = t.wait(10);
    assert!(
        register_obs(&fx).is_none(),
        "not beside the report in flight"
    );
    let fx = t.apply(Input::ReportSent);
    let obs = register_obs(&fx).expect("registers once the report is done");
    t.apply(Input::RegisterFailed {
        obs,
        why: RegisterFailure::Libvirt("down".into()),
    });
}

#[test]
fn what_an_observation_saw_before_a_registration_is_not_reported_after_it() {
    let mut t = T::ready();
    let fx = t.wait(600);
    let old = observe_obs(&fx).unwrap_or_else(|| panic!("{fx:?}"));
    t.core.want_registration(t.now);
    let fx = t.wait(1);
    let reg = register_obs(&fx).expect("registers");
    // The registration lists `a` running (it was started meanwhile); the old look,
    // answered after it, saw `a` shut off.
    t.registered(
        reg,
        BTreeMap::from([(vm("a"), proto::agent::VmState::Running)]),
    );
    let fx = t.observed(old, vec![dom("a", DomainState::ShutOff)]);
    assert!(
        report_batch(&fx).is_none(),
        "the older look is not reported: {fx:?}"
    );
    // The next look compares with what the registration said.
    let fx = t.wait(600);
    let obs = observe_obs(&fx).unwrap_or_else(|| panic!("{fx:?}"));
    let fx = t.observed(obs, vec![dom("a", DomainState::Running)]);
    assert!(
        report_batch(&fx).is_none(),
        "nothing changed since the registration"
    );
}

/// One look at the host with these domains (waits for the next look first).
fn look(t: &mut T, domains: Vec<DomainInfo>) -> Vec<Effect> {
    let mut fx = t.wait(WATCH_MS);
    if !fx.iter().any(|e| matches!(e, Effect::Observe { .. })) {
        fx = t.wait(WATCH_MS);
    }
    let obs = observe_obs(&fx).unwrap_or_else(|| panic!("no look at the host: {fx:?}"));
    t.observed(obs, domains)
}

#[test]
fn a_failed_report_sends_results_again_and_vm_states_as_they_are_then() {
    let mut t = T::ready();
    let fx = look(
        &mut t,
        vec![
            dom("a", DomainState::Running),
            dom("b", DomainState::Running),
        ],
    );
    let batch = report_batch(&fx).expect("new VMs are reported");
    assert_eq!(batch.domains.len(), 2);
    t.apply(Input::ReportFailed {
        error: "unavailable".into(),
    });
    // Meanwhile b stopped: the retry says b is shut off, and a is sent again too.
    t.wait(REPORT_RETRY_MS);
    let fx = look(
        &mut t,
        vec![
            dom("a", DomainState::Running),
            dom("b", DomainState::ShutOff),
        ],
    );
    let batch = report_batch(&fx).expect("reported again");
    let states: Vec<_> = batch
        .domains
        .iter()
        .map(|(v, (s, _))| (v.as_str().to_string(), *s))
        .collect();
    assert_eq!(
        states,
        vec![
            ("a".to_string(), proto::agent::VmState::Running),
            ("b".to_string(), proto::agent::VmState::ShutOff)
        ]
    );
}

#[test]
fn after_a_registration_whose_reply_was_lost_every_vm_is_reported_again() {
    let mut t = T::ready();
    let fx = look(&mut t, vec![dom("a", DomainState::Running)]);
    assert!(report_batch(&fx).is_some());
    t.apply(Input::ReportSent);
    t.core.want_registration(t.now);
    let fx = t.wait(1);
    let obs = register_obs(&fx).expect("registers");
    // It may have landed saying `a` is shut off (it was, for a moment).
    t.apply(Input::RegisterFailed {
        obs,
        why: RegisterFailure::Cluster("deadline exceeded".into()),
    });
    // Half a second later: the registration is tried again (libvirt fails it before
    // anything is sent) and the host is looked at.
    let fx = t.wait(REGISTER_RETRY_MS);
    let again = register_obs(&fx).expect("the registration is tried again");
    let obs = observe_obs(&fx).unwrap_or_else(|| panic!("{fx:?}"));
    t.apply(Input::RegisterFailed {
        obs: again,
        why: RegisterFailure::Libvirt("busy".into()),
    });
    let fx = t.observed(obs, vec![dom("a", DomainState::Running)]);
    let batch = report_batch(&fx).expect("a is reported again though it did not change");
    assert!(batch.domains.contains_key(&vm("a")));
}

#[test]
fn commands_of_one_target_run_in_order_and_different_targets_at_once() {
    let mut t = T::ready();
    let probe = AgentAction::TcpProbe {
        vm: vm("a"),
        port: 80,
        address: None,
        timeout_s: 60,
    };
    let fx = t.deliver(&[
        (1, start("a")),
        (2, AgentAction::Destroy { vm: vm("a") }),
        (3, start("b")),
        (4, probe),
    ]);
    assert_eq!(
        runs(&fx),
        vec![1, 3, 4],
        "a's destroy waits for a's start; the long probe has its own queue"
    );
    let fx = t.deliver(&[(2, AgentAction::Destroy { vm: vm("a") })]);
    assert!(
        runs(&fx).is_empty(),
        "delivered twice while queued: one run"
    );
    let fx = t.apply(Input::CommandFinished {
        id: CommandId(1),
        executed: Some(started("a")),
        marks: Vec::new(),
    });
    assert_eq!(runs(&fx), vec![2]);
}

#[test]
fn a_command_the_journal_knows_is_answered_never_run() {
    let journal = Restored {
        commands: BTreeMap::from([
            (CommandId(1), Seen::Done(started("a"))),
            (CommandId(2), Seen::Interrupted),
        ]),
        ..Restored::default()
    };
    let (mut t, fx) = T::start(Some(at(2500)), journal);
    let obs = register_obs(&fx).unwrap();
    let fx = t.registered(obs, BTreeMap::new());
    let seq = renew_seq(&fx).unwrap();
    t.granted(seq);
    let fx = t.deliver(&[(1, start("a")), (2, start("b")), (3, start("c"))]);
    assert_eq!(runs(&fx), vec![3]);
    let batch = report_batch(&fx).expect("the journal's answers are reported");
    let answers: BTreeMap<u64, Executed> =
        batch.results.into_iter().map(|(i, e)| (i.0, e)).collect();
    assert_eq!(answers[&1], started("a"));
    assert!(
        matches!(&answers[&2], Executed::Failed { failure } if failure.kind == FailureKind::Interrupted)
    );
}

#[test]
fn without_a_lease_commands_wait_and_a_start_that_ends_after_the_fence_is_stopped() {
    let mut t = T::ready();
    let fx = t.deliver(&[
        (1, start("a")),
        (2, AgentAction::Destroy { vm: vm("a") }),
        (
            3,
            AgentAction::DrillSnapshot {
                op: OpId(4),
                app: ids::AppId::new("shop"),
            },
        ),
    ]);
    assert_eq!(runs(&fx), vec![1, 3]);
    // The lease runs out while a's start and the snapshot run.
    t.now = t.now.plus_ms(LEASE + 10);
    let fx = t.apply(Input::Tick);
    assert!(fx.contains(&Effect::Fence));
    // The start ends during the fence (which may have listed before); the snapshot
    // after it.
    let fx = t.apply(Input::CommandFinished {
        id: CommandId(1),
        executed: Some(started("a")),
        marks: Vec::new(),
    });
    assert!(runs(&fx).is_empty(), "a's destroy waits: no lease");
    let fx = t.apply(Input::FenceDone { report: report() });
    assert!(
        fx.contains(&Effect::StopStragglers {
            domains: vec!["a".into()],
            groups: false
        }),
        "{fx:?}"
    );
    let fx = t.apply(Input::CommandFinished {
        id: CommandId(3),
        executed: Some(Executed::failed(FailureKind::Failed, "x")),
        marks: Vec::new(),
    });
    assert!(fx.contains(&Effect::StopStragglers {
        domains: Vec::new(),
        groups: true
    }));
    // The destroy waits for the lease (the cluster waits for its result), and runs
    // once the lease is back.
    assert_eq!(t.core.cmds.queued(), 1);
    let seq = t
        .core
        .renew
        .in_flight
        .as_ref()
        .map(|f| f.0)
        .expect("renews");
    let fx = t.granted(seq);
    assert_eq!(runs(&fx), vec![2], "{fx:?}");
}

#[test]
fn a_probe_waits_for_its_vms_start_and_reads_the_console_from_it() {
    let mut t = T::ready();
    let probe = AgentAction::Probe {
        vm: vm("a"),
        marker: "ready".into(),
        timeout_s: 30,
    };
    let fx = t.deliver(&[(1, start("a")), (2, probe)]);
    assert_eq!(runs(&fx), vec![1], "the probe waits for the start");
    let fx = t.apply(Input::CommandFinished {
        id: CommandId(1),
        executed: Some(started("a")),
        marks: vec![("a".into(), Some(4096))],
    });
    let ctx = fx.iter().find_map(|e| match e {
        Effect::Run { ctx, .. } => Some(*ctx),
        _ => None,
    });
    assert_eq!(ctx.map(|c| c.console_mark), Some(4096));
}

#[test]
fn renewals_follow_the_leader_and_move_on_after_a_failure() {
    let mut t = T::ready();
    let fx = t.wait(500);
    let Some(Effect::Renew { addr, seq, .. }) = fx
        .iter()
        .find(|e| matches!(e, Effect::Renew { .. }))
        .cloned()
    else {
        panic!("{fx:?}")
    };
    assert_eq!(addr, "n1:1", "the leader named at the last grant");
    t.apply(Input::Renewed {
        seq,
        answer: RenewAnswer::Refused {
            leader: "n3:1".into(),
            reason: "not the leader".into(),
        },
    });
    // Asked again soon, not a renewal period later: a leader change must not eat the
    // lease.
    let fx = t.wait(RENEW_RETRY_MS);
    let Some(Effect::Renew { addr, seq, .. }) = fx
        .iter()
        .find(|e| matches!(e, Effect::Renew { .. }))
        .cloned()
    else {
        panic!("{fx:?}")
    };
    assert_eq!(addr, "n3:1");
    t.apply(Input::RenewFailed {
        seq,
        error: "unreachable".into(),
    });
    let fx = t.wait(RENEW_RETRY_MS);
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Renew { addr, .. } if addr == "n2:1")),
        "the hint is forgotten, the next address tried: {fx:?}"
    );
}

#[test]
fn the_core_wakes_at_the_lease_expiry_whatever_the_clock_rate() {
    let mut t = T::ready();
    assert!(t.core.next_wake(t.now) <= t.now.plus_ms(FENCE_CHECK_MS));
    // The lab slows the lease clock to half speed: expiry is later in real time, and
    // the core still checks at least every FENCE_CHECK_MS.
    let fx = look(&mut t, Vec::new());
    assert!(fx.is_empty() || report_batch(&fx).is_none());
    let fx = t.wait(WATCH_MS);
    if let Some(Effect::Observe { obs }) = fx
        .iter()
        .find(|e| matches!(e, Effect::Observe { .. }))
        .cloned()
    {
        let fx = t.apply(Input::Observed {
            obs,
            clock: ClockFile::Rate(0.5),
            domains: Ok(Vec::new()),
            disk: Vec::new(),
        });
        assert!(fx.iter().any(|e| matches!(
            e,
            Effect::RecordEvent {
                event: AgentEvent::ClockRate { rate_permille: 500 },
                ..
            }
        )));
    }
    let LeaseState::Held { until } = t.core.lease_state() else {
        panic!("held")
    };
    let real = t.core.clock.real_at(until);
    assert!(t.core.lease_now(real) >= until);
    assert!(
        real > t.now.plus_ms(LEASE),
        "at half speed the lease lasts longer in real time"
    );
    for before_ms in [1, 50, 99, 500, 2000] {
        let now = Mono(real.0.saturating_sub(before_ms * 1_000_000));
        let next = t.core.next_wake(now);
        assert!(
            next <= now.plus_ms(FENCE_CHECK_MS),
            "checks every {FENCE_CHECK_MS} ms at most"
        );
        assert!(next <= real, "wakes at the expiry, not after it");
    }
}
