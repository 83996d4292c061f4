//! Targeted cases: one per rule of the planner.

use super::*;

/// `model` with every volume replicated synchronously (a switchover needs that).
pub(super) fn all_sync(mut m: Topology) -> Topology {
    for v in m.apps.iter_mut().flat_map(|a| &mut a.volumes) {
        v.replication = topology::Replication::Sync;
    }
    m
}

/// Five apps, all preferring site A: app 0 and 3 of tier 1, app 1 (tier 2) depends on
/// app 0, app 2 (tier 2) on app 1, app 4 of tier 3 on nothing.
pub(super) fn chain() -> Topology {
    let mut m = all_sync(model(4, 5, 3, 7));
    let shape: [(u32, &[usize]); 5] = [(1, &[]), (2, &[0]), (2, &[1]), (1, &[]), (3, &[])];
    for (a, (tier, deps)) in m.apps.iter_mut().zip(shape) {
        a.tier = tier;
        a.depends_on = deps.iter().map(|&d| app(d)).collect();
        a.preferred_site = site(A);
    }
    m
}

pub(super) fn first_volume(s: &ClusterState, a: &AppId) -> VolumeId {
    topo(s).app(a).expect("app").volumes[0].id.clone()
}

#[test]
pub(super) fn a_lost_site_fails_every_app_active_there_over_to_the_other_site() {
    let s = steady(&model(4, 12, 3, 1));
    let at_a = active_at(&s, A);
    assert!(!at_a.is_empty() && at_a.len() < 12, "both sites run apps");
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    assert_eq!(p.kind, OpKind::Failover);
    assert!(p.skipped.is_empty(), "{:?}", p.skipped);
    assert_eq!(planned(&p).into_iter().collect::<BTreeSet<_>>(), at_a);
    for m in p.apps() {
        assert_eq!((m.from.as_str(), m.to.as_str(), m.graceful), (A, B, false));
        let model = topo(&s).app(&m.app).expect("app");
        assert_eq!(m.volumes.len(), model.volumes.len());
        assert_eq!(m.starts.len(), model.vms.len());
    }
    // The apps of site B are not even mentioned.
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(B) });
    assert_eq!(
        planned(&p).into_iter().collect::<BTreeSet<_>>(),
        active_at(&s, B)
    );
}

#[test]
pub(super) fn a_replica_that_is_not_up_to_date_is_never_promoted() {
    let m = model(4, 8, 1, 2);
    for data in [
        DataState::Outdated,
        DataState::Inconsistent,
        DataState::Syncing,
    ] {
        let mut s = steady(&m);
        let victim = active_at(&s, A).into_iter().next().expect("an app at A");
        let group = &topo(&s).app(&victim).expect("app").volumes;
        let vol = group[group.len() - 1].id.clone();
        set_data(&mut s, &vol, &site(B), data);
        let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
        let reason = skip_reason(&p, &victim).expect("the victim is skipped");
        assert_eq!(
            reason,
            &SkipReason::ReplicaNotUpToDate {
                volume: vol.clone(),
                site: site(B),
                data
            }
        );
        assert_eq!(p.skipped.len(), 1, "only the victim: {:?}", p.skipped);
        assert_eq!(p.apps().count(), active_at(&s, A).len() - 1);
    }
    // Freshly applied, nothing has synced: nothing can fail over.
    let mut s = applied(&m);
    hosts_up(&mut s);
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    assert!(p.is_empty());
    assert!(p.skipped.iter().all(|k| matches!(
        k.reason,
        SkipReason::ReplicaNotUpToDate {
            data: DataState::Inconsistent,
            ..
        }
    )));
}

#[test]
pub(super) fn vms_restart_only_on_up_hosts_of_the_target_site() {
    let m = model(6, 8, 1, 3);
    let mut s = steady(&m);
    let b: Vec<HostId> = topo(&s).hosts_at(&site(B)).map(|h| h.id.clone()).collect();
    set_host(&mut s, &b[0], HostState::Down);
    set_host(&mut s, &b[1], HostState::Unknown);
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    assert!(!p.is_empty());
    assert!(p.apps().flat_map(|m| &m.starts).all(|(_, h)| *h == b[2]));
    // No host up at B: every app is skipped, naming a VM that found no room.
    set_host(&mut s, &b[2], HostState::Down);
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    assert!(p.is_empty());
    assert_eq!(p.skipped.len(), active_at(&s, A).len());
    assert!(
        p.skipped
            .iter()
            .all(|k| matches!(&k.reason, SkipReason::NoRoom { site: at, .. } if *at == site(B)))
    );
}

/// One host per site; site `small`'s host gets `vcpus` vCPUs (memory stays ample).
pub(super) fn two_apps(small: &str, vcpus: impl Fn(&Topology) -> u64) -> Topology {
    let mut m = all_sync(model(2, 2, 1, 3));
    let v = u32::try_from(vcpus(&m)).expect("small");
    for h in m.hosts.iter_mut().filter(|h| h.site.as_str() == small) {
        h.vcpus = v;
    }
    m
}

pub(super) fn vcpus_of(m: &Topology, i: usize) -> u64 {
    m.apps[i].vcpus()
}

#[test]
pub(super) fn an_app_already_at_the_target_keeps_its_room() {
    // app 0 runs at A, app 1 at B; B's host fits both, or one vCPU less.
    let both = |m: &Topology| vcpus_of(m, 0) + vcpus_of(m, 1);
    let failover = Trigger::Failover {
        apps: vec![app(0), app(1)],
        to: site(B),
    };
    let s = steady(&two_apps(B, both));
    let p = plan_ok(&s, &failover);
    assert_eq!(
        skip_reason(&p, &app(1)),
        Some(&SkipReason::AlreadyActive { site: site(B) })
    );
    assert_eq!(planned(&p), vec![app(0)]);

    let s = steady(&two_apps(B, |m| both(m) - 1));
    let p = plan_ok(&s, &failover);
    assert_eq!(
        skip_reason(&p, &app(1)),
        Some(&SkipReason::AlreadyActive { site: site(B) })
    );
    let r = skip_reason(&p, &app(0)).expect("app 0 does not fit");
    assert!(
        matches!(r, SkipReason::NoRoom { site: at, .. } if *at == site(B)),
        "{r}"
    );
}

#[test]
pub(super) fn a_failback_does_not_count_on_room_an_app_that_stays_would_free() {
    // A's host holds app 0 or app 1, never both at once.
    let mut s = steady(&two_apps(A, |m| vcpus_of(m, 0) + vcpus_of(m, 1) - 1));
    // Swap them, one at a time: app 0 to B, then app 1 to A.
    for (a, to) in [(0, B), (1, A)] {
        let t = Trigger::Switchover {
            apps: vec![app(a)],
            to: site(to),
        };
        run(&mut s, &t);
    }
    let back = Trigger::Failback {
        apps: vec![app(0), app(1)],
    };
    // app 1 cannot leave A (its replica at B is resyncing), so app 0 finds no room there.
    let vol = first_volume(&s, &app(1));
    set_data(&mut s, &vol, &site(B), DataState::Syncing);
    let p = plan_ok(&s, &back);
    assert!(matches!(
        skip_reason(&p, &app(1)),
        Some(SkipReason::ReplicaNotUpToDate {
            data: DataState::Syncing,
            ..
        })
    ));
    let r = skip_reason(&p, &app(0)).expect("app 0 does not fit");
    assert!(
        matches!(r, SkipReason::NoRoom { site: at, .. } if *at == site(A)),
        "{r}"
    );
    // Both may move, but in the same wave: app 1 still runs at A while app 0 starts.
    sync_all(&mut s);
    let p = plan_ok(&s, &back);
    assert_eq!(planned(&p), vec![app(1)]);
    execute(&mut s, &p);
    let p = plan_ok(&s, &back);
    assert_eq!(planned(&p), vec![app(0)]);
    assert_eq!(
        skip_reason(&p, &app(1)),
        Some(&SkipReason::AlreadyActive { site: site(B) })
    );
}

#[test]
pub(super) fn waves_follow_tiers_then_dependencies() {
    let s = steady(&chain());
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    let waves: Vec<Vec<AppId>> = p
        .waves
        .iter()
        .map(|w| w.apps.iter().map(|m| m.app.clone()).collect())
        .collect();
    assert_eq!(
        waves,
        vec![
            vec![app(0), app(3)],
            vec![app(1)],
            vec![app(2)],
            vec![app(4)]
        ]
    );
}

#[test]
pub(super) fn an_app_whose_dependency_cannot_move_stays_too() {
    let mut s = steady(&chain());
    let vol = first_volume(&s, &app(0));
    set_data(&mut s, &vol, &site(B), DataState::Outdated);
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    assert!(matches!(
        skip_reason(&p, &app(0)),
        Some(SkipReason::ReplicaNotUpToDate {
            data: DataState::Outdated,
            ..
        })
    ));
    for (a, dep) in [(1, 0), (2, 1)] {
        let r = skip_reason(&p, &app(a)).expect("skipped");
        assert_eq!(r, &SkipReason::DependencySkipped { dep: app(dep) });
    }
    assert_eq!(planned(&p), vec![app(3), app(4)]);

    // A dependency already at the target holds nothing back.
    let mut s = steady(&chain());
    let first = Trigger::Switchover {
        apps: vec![app(0)],
        to: site(B),
    };
    run(&mut s, &first);
    let p = plan_ok(
        &s,
        &Trigger::Switchover {
            apps: vec![app(1), app(0)],
            to: site(B),
        },
    );
    assert_eq!(
        skip_reason(&p, &app(0)),
        Some(&SkipReason::AlreadyActive { site: site(B) })
    );
    assert_eq!(planned(&p), vec![app(1)]);
}

#[test]
pub(super) fn apps_owned_by_a_running_operation_are_left_to_it() {
    let mut s = steady(&model(4, 8, 1, 4));
    let at_a: Vec<AppId> = active_at(&s, A).into_iter().collect();
    let (x, y) = (at_a[0].clone(), at_a[1].clone());
    let lost = Trigger::SiteLost { site: site(A) };
    // A test drill holds nothing back: a real failover of an app under test goes on.
    ok(
        &mut s,
        Command::StartOperation {
            kind: OpKind::Drill,
            apps: vec![x.clone()],
            note: "drill".into(),
        },
    );
    the_move(&plan_ok(&s, &lost), &x);
    let Outcome::Operation(drill) = ok(
        &mut s,
        Command::StartOperation {
            kind: OpKind::Failover,
            apps: vec![x.clone()],
            note: "by hand".into(),
        },
    ) else {
        panic!("no operation")
    };
    let p = plan_ok(&s, &lost);
    assert_eq!(skip_reason(&p, &x), Some(&SkipReason::Busy));
    the_move(&p, &y);
    // The operation of an earlier plan owns its apps too.
    let earlier = plan_ok(
        &s,
        &Trigger::Failover {
            apps: vec![y.clone()],
            to: site(B),
        },
    );
    let op = begin(&mut s, &earlier);
    let p = plan_ok(&s, &lost);
    assert_eq!(skip_reason(&p, &y), Some(&SkipReason::Busy));
    for op in [drill, op] {
        ok(
            &mut s,
            Command::FinishOperation {
                op,
                status: OpStatus::Aborted,
            },
        );
    }
    let p = plan_ok(&s, &lost);
    assert!(p.skipped.is_empty(), "{:?}", p.skipped);
}

#[test]
pub(super) fn a_lost_host_restarts_only_its_vms_at_the_same_site() {
    let m = model(6, 10, 2, 5);
    // Nothing is promoted, so replicas that never synced do not matter.
    let mut s = applied(&m);
    hosts_up(&mut s);
    let on = |s: &ClusterState, h: &HostId| {
        s.apps
            .values()
            .flat_map(|a| a.placement.values())
            .filter(|p| *p == h)
            .count()
    };
    let lost = topo(&s)
        .hosts_at(&site(A))
        .map(|h| h.id.clone())
        .max_by_key(|h| on(&s, h))
        .expect("a host");
    let t = Trigger::HostLost { host: lost.clone() };
    // Declared lost while it still runs (an operator's call): its VMs are stopped first.
    let p = plan_ok(&s, &t);
    assert!(p.skipped.is_empty(), "{:?}", p.skipped);
    assert_eq!(
        p.apps().map(|m| m.starts.len()).sum::<usize>(),
        on(&s, &lost)
    );
    assert!(p.apps().all(|m| m.stops.iter().all(|(_, h)| *h == lost)));
    assert!(p.apps().all(|m| m.stops.len() == m.starts.len()));
    // Down, it has fenced itself: nothing to stop.
    set_host(&mut s, &lost, HostState::Down);
    let p = plan_ok(&s, &t);
    assert!(p.apps().all(|m| m.stops.is_empty() && m.volumes.is_empty()));
    assert!(p.apps().all(|m| m.from.as_str() == A && m.to.as_str() == A));
    let epochs: Vec<Epoch> = s.volumes.values().map(|v| v.epoch).collect();
    execute(&mut s, &p);
    assert_eq!(on(&s, &lost), 0);
    assert_eq!(
        s.volumes.values().map(|v| v.epoch).collect::<Vec<_>>(),
        epochs
    );
    assert!(plan_ok(&s, &t).is_empty());
}

/// A stalled control plane: every agent fenced, and the leader, back, sees one host's
/// lease run out before the others renew. The lost host's VMs move to another host of
/// the site, and the app's VMs that the fence stopped on that other host restart where
/// they are, in the same move: the app's health gate needs every VM (seen in a test run,
/// where the gate waited for a VM nothing would start).
#[test]
pub(super) fn a_lost_host_also_restarts_the_apps_vms_a_fence_stopped_on_its_other_hosts() {
    let (mut s, app_id, lost, other, stopped) = app_on_two_hosts();
    let running_too: Vec<VmId> = s
        .apps
        .get(&app_id)
        .expect("app")
        .placement
        .iter()
        .filter(|(vm, h)| **h == other && **vm != stopped)
        .map(|(vm, _)| vm.clone())
        .collect();
    let mut states = vec![(stopped.clone(), VmState::ShutOff)];
    states.extend(running_too.iter().map(|v| (v.clone(), VmState::Running)));
    ok(
        &mut s,
        Command::SetVmStates {
            host: other.clone(),
            states,
            reason: "test".into(),
        },
    );
    set_host(&mut s, &lost, HostState::Down);
    let p = plan_ok(&s, &Trigger::HostLost { host: lost.clone() });
    let m = the_move(&p, &app_id);
    assert!(
        m.starts.contains(&(stopped.clone(), other.clone())),
        "{stopped} (stopped on {other}) restarts there: {:?}",
        m.starts
    );
    for v in &running_too {
        assert!(
            !m.starts.iter().any(|(x, _)| x == v),
            "{v} runs: {:?}",
            m.starts
        );
    }
    assert!(m.stops.is_empty(), "nothing to stop: {:?}", m.stops);
    // Reported running, it is left alone.
    ok(
        &mut s,
        Command::SetVmStates {
            host: other.clone(),
            states: vec![(stopped.clone(), VmState::Running)],
            reason: "test".into(),
        },
    );
    let p = plan_ok(&s, &Trigger::HostLost { host: lost });
    let m = the_move(&p, &app_id);
    assert!(!m.starts.iter().any(|(v, _)| *v == stopped));
    let Some(PlannedStep::HealthGate { restart, .. }) = m.steps.last() else {
        panic!("a move ends with its health gate: {:?}", m.steps)
    };
    let in_place = |s: &ClusterState| -> Vec<(VmId, HostId)> {
        s.owed_restarts(OpId(1), restart)
            .into_iter()
            .map(|(h, spec)| (spec.vm.clone(), h.clone()))
            .collect()
    };
    assert_eq!(in_place(&s), vec![]);
    // Fenced after the plan was made: the health gate starts it where it is, unless
    // its host is down (then it is that host's loss).
    ok(
        &mut s,
        Command::SetVmStates {
            host: other.clone(),
            states: vec![(stopped.clone(), VmState::ShutOff)],
            reason: "test".into(),
        },
    );
    assert_eq!(in_place(&s), vec![(stopped.clone(), other.clone())]);
    set_host(&mut s, &other, HostState::Down);
    assert_eq!(in_place(&s), vec![]);
}

#[test]
pub(super) fn a_switchover_stops_the_source_first_and_needs_it_up() {
    let mut s = steady(&all_sync(model(4, 8, 1, 6)));
    let at_a: Vec<AppId> = active_at(&s, A).into_iter().collect();
    let at_b = active_at(&s, B).into_iter().next().expect("an app at B");
    let mut apps = at_a.clone();
    apps.push(at_b.clone());
    let t = Trigger::Switchover {
        apps: apps.clone(),
        to: site(B),
    };
    let p = plan_ok(&s, &t);
    assert_eq!(p.kind, OpKind::Switchover);
    assert_eq!(
        skip_reason(&p, &at_b),
        Some(&SkipReason::AlreadyActive { site: site(B) })
    );
    for a in &at_a {
        let m = the_move(&p, a);
        assert!(m.graceful);
        let now: Vec<(VmId, HostId)> = s
            .apps
            .get(a)
            .expect("app")
            .placement
            .clone()
            .into_iter()
            .collect();
        assert_eq!(m.stops, now);
    }
    // An async volume served outside the cluster cannot be drained by it: that app is
    // refused. (Served by the agents it is drained: see the agent-served case below.)
    let mut m = topo(&s).clone();
    m.apps[0].volumes[0].replication = topology::Replication::Async {
        lag_max_s: 5,
        lag_max_size: topology::ByteSize::gib(1),
    };
    let s2 = steady(&m);
    let p = plan_ok(&s2, &t);
    let r = skip_reason(&p, &app(0)).expect("app 0 is refused");
    assert!(matches!(r, SkipReason::AsyncServedOutside { .. }), "{r}");
    // Served by the agents, the same group is switched over: its primary drains it.
    let mut m3 = m.clone();
    m3.cluster.volumes = topology::VolumeService::Agents;
    let s3 = steady(&m3);
    let p = plan_ok(&s3, &t);
    assert_eq!(skip_reason(&p, &app(0)), None, "{:?}", p.skipped);
    let mv = p.apps().find(|x| x.app == app(0)).expect("app 0 planned");
    let pinned = s3
        .volumes
        .get(&m3.apps[0].volumes[0].id)
        .and_then(|v| v.replica(&mv.to))
        .and_then(|r| r.host.clone())
        .expect("a replica host");
    assert!(
        mv.starts.iter().all(|(_, h)| *h == pinned),
        "VMs with disks start where the replica is: {:?} vs {pinned}",
        mv.starts
    );
    // The source is down: no switchover, but a failover still moves the apps.
    set_site(&mut s, A, SiteState::Down);
    let p = plan_ok(&s, &t);
    assert!(p.is_empty());
    for a in &at_a {
        let r = skip_reason(&p, a).expect("skipped");
        assert!(
            matches!(r, SkipReason::SourceDown { site: at, .. } if *at == site(A)),
            "{r}"
        );
    }
    let p = plan_ok(&s, &Trigger::Failover { apps, to: site(B) });
    assert_eq!(p.apps().count(), at_a.len());
    // The target is down: nothing moves.
    set_site(&mut s, B, SiteState::Down);
    let p = plan_ok(&s, &Trigger::SiteLost { site: site(A) });
    assert!(p.is_empty());
    assert!(
        p.skipped
            .iter()
            .all(|k| k.reason == SkipReason::TargetDown { site: site(B) })
    );
}

#[test]
pub(super) fn a_failback_returns_apps_to_their_preferred_site() {
    let mut s = steady(&all_sync(model(4, 8, 2, 8)));
    let home_a = active_at(&s, A);
    run(&mut s, &Trigger::SiteLost { site: site(A) });
    assert!(active_at(&s, A).is_empty());
    let all: Vec<AppId> = s.apps.iter().map(|(a, _)| a.clone()).collect();
    let back = Trigger::Failback { apps: all };
    // The old primaries at A were demoted Outdated: nothing can return yet.
    let p = plan_ok(&s, &back);
    assert!(p.is_empty());
    for k in &p.skipped {
        if home_a.contains(&k.app) {
            assert!(
                matches!(
                    k.reason,
                    SkipReason::ReplicaNotUpToDate {
                        data: DataState::Outdated,
                        ..
                    }
                ),
                "{}",
                k.reason
            );
        } else {
            assert_eq!(k.reason, SkipReason::AlreadyActive { site: site(B) });
        }
    }
    sync_all(&mut s);
    let p = plan_ok(&s, &back);
    assert_eq!(p.kind, OpKind::Failback);
    assert_eq!(planned(&p).into_iter().collect::<BTreeSet<_>>(), home_a);
    assert!(p.apps().all(|m| m.graceful && m.to.as_str() == A));
    execute(&mut s, &p);
    assert_eq!(active_at(&s, A), home_a);
    // Each volume that went there and back is at epoch 3, its old primary in sync.
    for a in &home_a {
        for v in &topo(&s).app(a).expect("app").volumes {
            let rec = s.volumes.get(&v.id).expect("volume");
            assert_eq!(rec.epoch, Epoch(3));
            let b = rec.replica(&site(B)).expect("replica at B");
            assert_eq!((b.role, b.data), (Role::Secondary, DataState::UpToDate));
        }
    }
}

#[test]
pub(super) fn only_a_loss_waits_for_manual_approval() {
    let mut m = all_sync(model(4, 6, 1, 9));
    for a in &mut m.apps {
        a.failover = FailoverPolicy::ManualApproval;
    }
    let mut s = steady(&m);
    let at_a: Vec<AppId> = active_at(&s, A).into_iter().collect();
    let host = s
        .apps
        .get(&at_a[0])
        .expect("app")
        .placement
        .values()
        .next()
        .cloned()
        .expect("host");
    let cases = [
        (Trigger::SiteLost { site: site(A) }, true),
        (Trigger::HostLost { host }, true),
        (
            Trigger::Failover {
                apps: at_a.clone(),
                to: site(B),
            },
            false,
        ),
        (
            Trigger::Switchover {
                apps: at_a.clone(),
                to: site(B),
            },
            false,
        ),
    ];
    for (t, wait) in cases {
        let p = plan_ok(&s, &t);
        assert!(!p.is_empty(), "{t:?}");
        assert!(p.apps().all(|m| m.needs_approval == wait), "{t:?}");
    }
    let away = Trigger::Switchover {
        apps: at_a.clone(),
        to: site(B),
    };
    run(&mut s, &away);
    let p = plan_ok(&s, &Trigger::Failback { apps: at_a });
    assert!(!p.is_empty());
    assert!(p.apps().all(|m| !m.needs_approval));
}

#[test]
pub(super) fn plans_that_cannot_be_made_say_why() {
    assert_eq!(
        plan(
            &ClusterState::default(),
            &Trigger::SiteLost { site: site(A) }
        ),
        Err(PlanError::NoTopology)
    );
    let s = steady(&model(4, 3, 1, 1));
    let ghost = AppId::new("ghost");
    let cases = [
        (
            Trigger::SiteLost {
                site: site("nowhere"),
            },
            PlanError::UnknownSite(site("nowhere")),
        ),
        (
            Trigger::SiteLost {
                site: site(WITNESS),
            },
            PlanError::WitnessSite(site(WITNESS)),
        ),
        (
            Trigger::HostLost {
                host: HostId::new("nope"),
            },
            PlanError::UnknownHost(HostId::new("nope")),
        ),
        (
            Trigger::Failover {
                apps: vec![],
                to: site(B),
            },
            PlanError::NoApps,
        ),
        (
            Trigger::Failover {
                apps: vec![app(0), ghost.clone()],
                to: site(B),
            },
            PlanError::UnknownApp(ghost.clone()),
        ),
        (
            Trigger::Failover {
                apps: vec![app(0)],
                to: site("nowhere"),
            },
            PlanError::UnknownSite(site("nowhere")),
        ),
        (
            Trigger::Failover {
                apps: vec![app(0)],
                to: site(WITNESS),
            },
            PlanError::WitnessSite(site(WITNESS)),
        ),
        (
            Trigger::Switchover {
                apps: vec![],
                to: site(A),
            },
            PlanError::NoApps,
        ),
        (
            Trigger::Switchover {
                apps: vec![app(0)],
                to: site(WITNESS),
            },
            PlanError::WitnessSite(site(WITNESS)),
        ),
        (
            Trigger::Switchover {
                apps: vec![ghost.clone()],
                to: site(A),
            },
            PlanError::UnknownApp(ghost.clone()),
        ),
        (Trigger::Failback { apps: vec![] }, PlanError::NoApps),
        (
            Trigger::Failback {
                apps: vec![ghost.clone()],
            },
            PlanError::UnknownApp(ghost),
        ),
    ];
    for (t, want) in cases {
        let got = plan(&s, &t);
        assert_eq!(got.as_ref().err(), Some(&want), "{t:?}");
        let msg = want.to_string();
        for id in ["nowhere", WITNESS, "nope", "ghost"] {
            if format!("{want:?}").contains(id) {
                assert!(msg.contains(id), "{msg}");
            }
        }
    }
}
