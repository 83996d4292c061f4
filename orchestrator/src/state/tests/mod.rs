//! State machine tests: targeted transitions here, and in [`props`] a property test
//! that drives random command sequences (valid and invalid, with store round-trips
//! standing in for crashes and restarts) and checks the invariants after every step.

use std::collections::BTreeMap;

use topology::generate::{GenSpec, generate};
use topology::{SiteRole, Topology};

use super::*;

mod props;
mod reports;

fn req(command: Command) -> Request {
    Request {
        actor: "tester".into(),
        at_ms: 1_000,
        command,
    }
}

/// A small applied topology: 2 hosts per site, `apps` apps.
fn cluster(apps: usize, seed: u64) -> ClusterState {
    let model = generate(GenSpec {
        hosts: 4,
        apps,
        tiers: 2,
        seed,
    });
    let mut s = ClusterState::default();
    let r = s.apply(&apply_topology(&model));
    assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    s.take_changes();
    s
}

fn apply_topology(model: &Topology) -> Request {
    let plan = topology::plan::plan(model);
    req(Command::ApplyTopology {
        text: topology::render::to_toml(model),
        model: Box::new(model.clone()),
        placements: plan
            .placements
            .iter()
            .map(|p| (p.vm.clone(), p.host.clone()))
            .collect(),
    })
}

fn first_volume(s: &ClusterState) -> VolumeRecord {
    s.volumes.values().next().cloned().expect("a volume")
}

fn other_site(v: &VolumeRecord) -> SiteId {
    v.replicas
        .iter()
        .find(|r| r.role == Role::Secondary)
        .map(|r| r.site.clone())
        .expect("a secondary")
}

#[test]
fn applying_a_topology_creates_sites_hosts_apps_and_volumes() {
    let s = cluster(5, 1);
    assert_eq!(s.topology().map(|t| t.version), Some(1));
    assert_eq!(s.sites.len(), 3);
    assert_eq!(s.hosts.len(), 4);
    assert_eq!(s.apps.len(), 5);
    for v in s.volumes.values() {
        let p = v.primary().expect("one primary");
        assert_eq!(p.data, DataState::UpToDate);
        assert_eq!(v.epoch, Epoch(1));
        let app = s.apps.get(&v.app).expect("app");
        assert_eq!(p.site, app.active_site);
        // The secondary must be synced before it can ever be promoted.
        assert!(
            v.replicas
                .iter()
                .any(|r| r.role == Role::Secondary && r.data == DataState::Inconsistent)
        );
    }
    assert!(s.invariants().is_ok());
    assert_eq!(s.audit.len(), 1);
}

#[test]
fn promotion_needs_the_next_epoch_and_an_up_to_date_replica() {
    let mut s = cluster(2, 2);
    let v = first_volume(&s);
    let dr = other_site(&v);
    let promote = |epoch| {
        req(Command::PromoteReplica {
            volume: v.id.clone(),
            site: dr.clone(),
            epoch: Epoch(epoch),
            demoted: DataState::Outdated,
        })
    };
    // The DR replica has not synced yet: refused.
    let r = s.apply(&promote(2));
    assert!(
        matches!(
            r,
            Response::Rejected(Rejection {
                kind: RejectKind::Conflict,
                ..
            })
        ),
        "{r:?}"
    );

    s.apply(&req(Command::SetReplicaData {
        volume: v.id.clone(),
        site: dr.clone(),
        data: DataState::UpToDate,
    }));
    for wrong in [0, 1, 3] {
        let r = s.apply(&promote(wrong));
        assert!(
            matches!(
                r,
                Response::Rejected(Rejection {
                    kind: RejectKind::Conflict,
                    ..
                })
            ),
            "epoch {wrong}: {r:?}"
        );
    }
    let r = s.apply(&promote(2));
    assert!(
        matches!(
            r,
            Response::Applied {
                outcome: Outcome::Epoch(Epoch(2)),
                ..
            }
        ),
        "{r:?}"
    );
    let now = s.volumes.get(&v.id).expect("volume");
    assert_eq!(now.primary().map(|p| &p.site), Some(&dr));
    let old = now
        .replicas
        .iter()
        .find(|r| r.site != dr)
        .cloned()
        .expect("old primary");
    assert_eq!((old.role, old.data), (Role::Secondary, DataState::Outdated));

    // The outdated old primary can never be promoted back, whatever the epoch.
    for e in 3..6 {
        let r = s.apply(&req(Command::PromoteReplica {
            volume: v.id.clone(),
            site: old.site.clone(),
            epoch: Epoch(e),
            demoted: DataState::UpToDate,
        }));
        assert!(matches!(r, Response::Rejected(_)), "{r:?}");
    }
    assert!(s.invariants().is_ok());
}

#[test]
fn a_primary_cannot_be_marked_outdated() {
    let mut s = cluster(1, 3);
    let v = first_volume(&s);
    let p = v.primary().expect("primary").site.clone();
    let r = s.apply(&req(Command::SetReplicaData {
        volume: v.id,
        site: p,
        data: DataState::Outdated,
    }));
    assert!(
        matches!(
            r,
            Response::Rejected(Rejection {
                kind: RejectKind::Conflict,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn reapplying_a_topology_keeps_placement_and_epochs() {
    let mut s = cluster(4, 4);
    let before: BTreeMap<_, _> = s
        .apps
        .iter()
        .map(|(k, v)| (k.clone(), v.placement.clone()))
        .collect();
    let model = s.topology().expect("topology").model.clone();
    let r = s.apply(&apply_topology(&model));
    assert!(
        matches!(
            r,
            Response::Applied {
                outcome: Outcome::TopologyVersion(2),
                ..
            }
        ),
        "{r:?}"
    );
    let after: BTreeMap<_, _> = s
        .apps
        .iter()
        .map(|(k, v)| (k.clone(), v.placement.clone()))
        .collect();
    assert_eq!(before, after);
}

#[test]
fn removing_a_host_that_runs_vms_is_refused() {
    let mut s = cluster(3, 5);
    let mut model = s.topology().expect("topology").model.clone();
    let busy = s
        .apps
        .values()
        .flat_map(|a| a.placement.values())
        .next()
        .cloned()
        .expect("a placed VM");
    model.hosts.retain(|h| h.id != busy);
    let r = s.apply(&apply_topology(&model));
    assert!(
        matches!(
            r,
            Response::Rejected(Rejection {
                kind: RejectKind::Conflict,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn changing_the_sites_is_refused() {
    let mut s = cluster(1, 6);
    let mut model = s.topology().expect("topology").model.clone();
    model.sites[2].id = SiteId::new("elsewhere");
    model.orchestrators[2].site = SiteId::new("elsewhere");
    let r = s.apply(&apply_topology(&model));
    assert!(
        matches!(
            r,
            Response::Rejected(Rejection {
                kind: RejectKind::Conflict,
                ..
            })
        ),
        "{r:?}"
    );
}

/// Begin the plan of `trigger` in `s`; its operation and plan.
fn begin(s: &mut ClusterState, trigger: crate::plan::Trigger) -> (OpId, crate::plan::Plan) {
    let plan = crate::planner::plan(s, &trigger).expect("a plan");
    assert!(!plan.is_empty(), "{plan:?}");
    let r = s.apply(&req(Command::BeginPlan {
        plan: Box::new(plan.clone()),
        lost_ms: None,
    }));
    let Response::Applied {
        outcome: Outcome::Operation(op),
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    (op, plan)
}

#[test]
fn steps_are_the_plans_each_started_and_finished_once() {
    let mut s = crate::test_support::lab();
    let failover = |app: &str| crate::plan::Trigger::Failover {
        apps: vec![AppId::new(app)],
        to: SiteId::new("south"),
    };
    let (op, plan) = begin(&mut s, failover("db"));
    let db = |index| StepAt::App {
        app: AppId::new("db"),
        index,
    };
    let start = |at: StepAt| req(Command::StartStep { op, at });
    let started = |r: Response| match r {
        Response::Applied {
            outcome: Outcome::Step(i),
            ..
        } => i,
        r => panic!("{r:?}"),
    };
    assert_eq!(started(s.apply(&start(db(0)))), 0);
    // A retried commit of the same start: the same step, not a second one.
    assert_eq!(started(s.apply(&start(db(0)))), 0);
    assert_eq!(s.steps_of(op).count(), 1);
    let view = s.operation_view(op.0).expect("view");
    let planned = plan.step(&db(0)).expect("the plan's first step of db");
    assert_eq!(
        (&view.steps[0].at, view.steps[0].kind),
        (&db(0), planned.kind())
    );
    assert_eq!(view.step_name(&view.steps[0]), planned.to_string());
    // Steps the plan does not have are refused.
    let steps = u32::try_from(plan.apps().next().expect("db").steps.len()).expect("few");
    for at in [
        db(steps),
        StepAt::App {
            app: AppId::new("portal"),
            index: 0,
        },
        StepAt::Closing { index: 0 },
    ] {
        assert!(
            matches!(
                s.apply(&start(at.clone())),
                Response::Rejected(Rejection {
                    kind: RejectKind::Conflict,
                    ..
                })
            ),
            "{at}"
        );
    }
    // db runs at north: the failover fences it there first.
    assert_eq!(planned.kind(), StepKind::Fence);
    let finish_with = |outcome: StepOutcome| {
        req(Command::FinishStep {
            op,
            index: 0,
            result: StepResult::Done { outcome },
        })
    };
    assert!(
        matches!(
            s.apply(&finish_with(StepOutcome::Approved { op })),
            Response::Rejected(Rejection {
                kind: RejectKind::Invalid,
                ..
            })
        ),
        "an outcome of another kind of step"
    );
    let outcome = StepOutcome::VmsStopped { vms: Vec::new() };
    let finish = finish_with(outcome.clone());
    assert!(matches!(s.apply(&finish), Response::Applied { .. }));
    assert!(
        matches!(s.apply(&finish), Response::Rejected(_)),
        "a step finishes once"
    );
    assert!(
        matches!(s.apply(&start(db(0))), Response::Rejected(_)),
        "a finished step does not start again"
    );
    let view = s.operation_view(op.0).expect("view");
    assert_eq!(view.steps.len(), 1);
    assert_eq!(view.steps[0].outcome(), Some(&outcome));
    assert!(
        s.operations.get(&op.0).expect("op").steps.is_empty(),
        "steps live in their own table: a step never copies the operation"
    );
    // A second operation's steps are its own, numbered from 0.
    let (op2, _) = begin(&mut s, failover("api"));
    let r = s.apply(&req(Command::StartStep {
        op: op2,
        at: StepAt::App {
            app: AppId::new("api"),
            index: 0,
        },
    }));
    assert_eq!(started(r), 0);
    assert_eq!(s.operation_view(op.0).expect("view").steps.len(), 1);
    assert_eq!(s.operation_view(op2.0).expect("view").steps.len(), 1);
    assert!(matches!(
        s.apply(&req(Command::FinishOperation {
            op,
            status: OpStatus::Succeeded
        })),
        Response::Applied { .. }
    ));
    assert!(matches!(s.apply(&start(db(1))), Response::Rejected(_)));
    // The audit log names the step by its place in the plan and its kind.
    let started: Vec<(u32, StepAt, bool)> = s
        .audit
        .values()
        .filter_map(|e| match &e.event {
            AuditEvent::StepStarted {
                op: o,
                index,
                at,
                again,
                ..
            } if *o == op => Some((*index, at.clone(), *again)),
            _ => None,
        })
        .collect();
    assert_eq!(
        started,
        vec![(0, db(0), false), (0, db(0), true)],
        "started, then its retried commit"
    );
}

#[test]
fn a_plan_made_before_an_epoch_moved_is_refused_whole() {
    let mut s = crate::test_support::lab();
    let t = crate::plan::Trigger::Failover {
        apps: vec![AppId::new("db")],
        to: SiteId::new("south"),
    };
    let plan = crate::planner::plan(&s, &t).expect("a plan");
    // Something promotes db's volume after the plan was made.
    let r = s.apply(&req(Command::PromoteReplica {
        volume: VolumeId::new("db-data"),
        site: SiteId::new("north"),
        epoch: Epoch(2),
        demoted: DataState::Outdated,
    }));
    assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    let r = s.apply(&req(Command::BeginPlan {
        plan: Box::new(plan),
        lost_ms: None,
    }));
    let Response::Rejected(Rejection {
        kind: RejectKind::Conflict,
        reason,
    }) = r
    else {
        panic!("{r:?}")
    };
    assert!(reason.contains("plan again"), "{reason}");
}

#[test]
fn requests_without_an_actor_or_with_huge_fields_are_refused() {
    let mut s = cluster(1, 8);
    let mut r = req(Command::Note { text: "hi".into() });
    r.actor = " ".into();
    assert!(matches!(
        s.apply(&r),
        Response::Rejected(Rejection {
            kind: RejectKind::Invalid,
            ..
        })
    ));
    let r = req(Command::Note {
        text: "x".repeat(MAX_REASON_LEN + 1),
    });
    assert!(matches!(
        s.apply(&r),
        Response::Rejected(Rejection {
            kind: RejectKind::Invalid,
            ..
        })
    ));
}

#[test]
fn the_state_survives_a_round_trip_through_persisted_rows() {
    let mut s = ClusterState::default();
    let model = generate(GenSpec {
        hosts: 4,
        apps: 6,
        tiers: 2,
        seed: 9,
    });
    let mut store: BTreeMap<(&'static str, String), Vec<u8>> = BTreeMap::new();
    s.apply(&apply_topology(&model));
    s.apply(&req(Command::Note {
        text: "hello".into(),
    }));
    for (t, k, v) in s.take_changes() {
        match v {
            Some(v) => store.insert((t, k), v),
            None => store.remove(&(t, k)),
        };
    }
    let loaded = ClusterState::load(
        store
            .iter()
            .map(|((t, k), v)| (*t, k.as_str(), v.as_slice())),
    )
    .expect("load");
    assert_eq!(loaded, s);
    assert!(ClusterState::load([("nope", "k", b"{}".as_slice())]).is_err());
    assert!(
        ClusterState::load([("audit", "00000000000000000001", b"not json".as_slice())]).is_err()
    );
}

#[test]
fn agent_commands_are_queued_per_host_and_take_one_result() {
    let mut s = cluster(2, 11);
    let app = s.apps.values().next().cloned().expect("app");
    let (vm, host) = app
        .placement
        .iter()
        .next()
        .map(|(v, h)| (v.clone(), h.clone()))
        .expect("placed VM");
    let r = s.apply(&req(Command::IssueAgentCommands {
        issuer: Issuer::Controller,
        commands: vec![
            (host.clone(), AgentAction::Start { vm: vm.clone() }),
            (host.clone(), AgentAction::Destroy { vm: vm.clone() }),
        ],
    }));
    let Response::Applied {
        outcome: Outcome::Commands(ids),
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| {
        s.commands
            .get(&id.0)
            .is_some_and(|c| c.status == CommandStatus::Pending)
    }));
    let result = |ok| CommandResult {
        id: ids[0],
        executed: if ok {
            Executed::done(CommandOutcome::Started {
                domain: vm.to_string(),
                state: VmState::Running,
            })
        } else {
            Executed::failed(proto::agent::FailureKind::Failed, "no")
        },
    };
    let r = s.apply(&req(Command::RecordCommandResults {
        host: host.clone(),
        results: vec![result(true)],
    }));
    assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    // A second report (a lost reply, a retry) changes nothing.
    s.apply(&req(Command::RecordCommandResults {
        host: host.clone(),
        results: vec![result(false)],
    }));
    assert!(matches!(
        s.commands.get(&ids[0].0).map(|c| &c.status),
        Some(CommandStatus::Succeeded { .. })
    ));
    // Another host cannot answer for this one.
    let other = s
        .hosts
        .iter()
        .map(|(k, _)| k.clone())
        .find(|h| *h != host)
        .expect("another host");
    let r = s.apply(&req(Command::RecordCommandResults {
        host: other,
        results: vec![CommandResult {
            id: ids[1],
            executed: Executed::done(CommandOutcome::Destroyed { vm: vm.clone() }),
        }],
    }));
    assert!(
        matches!(
            r,
            Response::Rejected(Rejection {
                kind: RejectKind::Conflict,
                ..
            })
        ),
        "{r:?}"
    );
    // Unknown VMs and hosts are refused.
    let r = s.apply(&req(Command::IssueAgentCommands {
        issuer: Issuer::Controller,
        commands: vec![(
            host.clone(),
            AgentAction::Start {
                vm: VmId::new("nope"),
            },
        )],
    }));
    assert!(
        matches!(
            r,
            Response::Rejected(Rejection {
                kind: RejectKind::NotFound,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn vm_states_record_changes_only_and_ignore_foreign_domains() {
    let mut s = cluster(2, 12);
    let app = s.apps.values().next().cloned().expect("app");
    let (vm, host) = app
        .placement
        .iter()
        .next()
        .map(|(v, h)| (v.clone(), h.clone()))
        .expect("placed VM");
    let states = |st| {
        vec![
            (vm.clone(), st),
            (VmId::new("someone-elses-domain"), VmState::Running),
        ]
    };
    let r = s.apply(&req(Command::SetVmStates {
        host: host.clone(),
        states: states(VmState::Running),
        reason: "started".into(),
    }));
    assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    assert_eq!(s.vms.get(&vm).map(|v| v.state), Some(VmState::Running));
    assert_eq!(s.vms.len(), 1, "foreign domains are not tracked");
    let r = s.apply(&req(Command::SetVmStates {
        host: host.clone(),
        states: states(VmState::Running),
        reason: "again".into(),
    }));
    assert!(
        matches!(r, Response::Rejected(_)),
        "no change, no entry: {r:?}"
    );
    let r = s.apply(&req(Command::RegisterHost {
        host: host.clone(),
        inventory: HostInventory {
            vcpus: 8,
            memory_bytes: 16 << 30,
            hypervisor: "test:///default".into(),
            domain_type: "qemu".into(),
            agent_version: "0.1.0".into(),
            registered_ms: 1,
        },
        fenced: true,
    }));
    assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    assert_eq!(s.hosts.get(&host).map(|h| h.state), Some(HostState::Up));
    // An agent that fenced its VMs says so when it registers again: the host is owed
    // a restart of what it placed there.
    let placed = s
        .apps
        .values()
        .any(|a| a.placement.values().any(|h| h == &host));
    assert_eq!(
        s.hosts.get(&host).and_then(|h| h.fenced_ms).is_some(),
        placed
    );
}

#[test]
fn recovering_a_site_needs_it_up_and_forgets_its_losses() {
    let mut s = cluster(2, 11);
    let sites: Vec<(SiteId, SiteRole)> = s.sites.values().map(|r| (r.id.clone(), r.role)).collect();
    let (prod, _) = sites
        .iter()
        .find(|(_, r)| *r == SiteRole::Production)
        .expect("production");
    let (witness, _) = sites
        .iter()
        .find(|(_, r)| *r == SiteRole::Witness)
        .expect("witness");
    let set = |st: SiteState| {
        req(Command::SetSiteState {
            site: prod.clone(),
            state: st,
            reason: "test".into(),
        })
    };
    let recover = |site: &SiteId| req(Command::RecoverSite { site: site.clone() });
    for _ in 0..3 {
        assert!(matches!(
            s.apply(&set(SiteState::Down)),
            Response::Applied { .. }
        ));
        assert!(matches!(
            s.apply(&set(SiteState::Up)),
            Response::Applied { .. }
        ));
    }
    assert_eq!(
        s.sites.get(prod).expect("site").downs_ms.len(),
        3,
        "three losses remembered"
    );
    s.apply(&set(SiteState::Suspect));
    match s.apply(&recover(prod)) {
        Response::Rejected(r) => assert!(r.reason.contains("must be back first"), "{r:?}"),
        r => panic!("a suspect site cannot be recovered: {r:?}"),
    }
    assert!(matches!(s.apply(&recover(witness)), Response::Rejected(_)));
    s.apply(&set(SiteState::Up));
    assert!(matches!(s.apply(&recover(prod)), Response::Applied { .. }));
    assert!(
        s.sites.get(prod).expect("site").downs_ms.is_empty(),
        "the flap hold is cleared"
    );
}
