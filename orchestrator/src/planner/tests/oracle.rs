//! The oracle: every promise a plan makes, and every reason it gives for skipping an
//! app, checked against the state it was made from, worked out independently of the
//! planner.

use super::*;

/// Every promise a plan makes, checked against the state it was made from.
pub(super) fn check_plan(s: &ClusterState, t: &Trigger, p: &Plan) {
    let topo = topo(s);
    assert_eq!(p.kind, t.kind());
    assert_eq!(&p.trigger, t);
    assert!(p.waves.iter().all(|w| !w.apps.is_empty()), "an empty wave");
    assert_eq!(p.is_empty(), p.waves.is_empty());

    let mut seen = BTreeSet::new();
    for a in p
        .apps()
        .map(|m| &m.app)
        .chain(p.skipped.iter().map(|k| &k.app))
    {
        assert!(seen.insert(a.clone()), "{a} appears twice in {p:#?}");
    }
    assert_eq!(
        seen,
        wanted(s, t),
        "planned + skipped != the apps {t:?} is about"
    );

    let drill = matches!(t, Trigger::TestDrill { .. });
    assert_eq!(p.drill, drill.then_some(crate::planner::DrillKind::Test));
    let mut busy = s.busy_apps();
    if drill {
        busy.extend(s.drilled_apps());
    }
    let lost_host = match t {
        Trigger::HostLost { host } => Some(host),
        _ => None,
    };
    let fenced_host = match t {
        Trigger::HostFenced { host } => Some(host),
        _ => None,
    };
    // A restore: the VMs it names, where they are placed.
    let restore: Option<BTreeMap<&VmId, &HostId>> = match t {
        Trigger::Restore { vms } => Some(vms.iter().map(|v| (&v.vm, &v.host)).collect()),
        _ => None,
    };
    let graceful = matches!(t, Trigger::Switchover { .. } | Trigger::Failback { .. });
    let loss = matches!(t, Trigger::SiteLost { .. } | Trigger::HostLost { .. });
    let site_down = |id: &SiteId| s.sites.get(id).is_some_and(|r| r.state == SiteState::Down);
    let skipped: BTreeMap<&AppId, &SkipReason> =
        p.skipped.iter().map(|k| (&k.app, &k.reason)).collect();
    let wave_of: BTreeMap<&AppId, usize> = p
        .waves
        .iter()
        .enumerate()
        .flat_map(|(i, w)| w.apps.iter().map(move |m| (&m.app, i)))
        .collect();

    for m in p.apps() {
        let model = topo.app(&m.app).expect("a planned app is in the topology");
        let rec = s.apps.get(&m.app).expect("a planned app is in the state");
        let to = target(s, t, &m.app);
        let ctx = format!("{} in {t:?}", m.app);
        assert_eq!((&m.from, &m.to), (&rec.active_site, &to), "{ctx}");
        check_steps(s, t, m, model);
        assert_eq!(m.tier, model.tier, "{ctx}");
        assert_eq!(m.graceful, graceful, "{ctx}");
        assert_eq!(
            m.needs_approval,
            loss && model.failover == FailoverPolicy::ManualApproval,
            "{ctx}"
        );
        assert_eq!(m.rto_target_s, model.rto_target_s, "{ctx}");
        assert_eq!(m.health_timeout_ms, topo.timing.health_gate_timeout_ms);
        assert!(
            !busy.contains(&m.app),
            "{ctx}: owned by a running operation"
        );
        assert!(!site_down(&to), "{ctx}: the target is down");
        assert!(
            !(graceful && site_down(&m.from)),
            "{ctx}: graceful from a down site"
        );

        // Promotion: the whole consistency group, every replica at the target up to date.
        let group: Vec<&VolumeId> = model.volumes.iter().map(|v| &v.id).collect();
        if lost_host.is_some() || fenced_host.is_some() || restore.is_some() {
            assert_eq!(m.from, m.to, "{ctx}");
            assert!(m.volumes.is_empty(), "{ctx}: a host loss promotes nothing");
        } else {
            assert_ne!(m.from, m.to, "{ctx}");
            assert_eq!(m.volumes.iter().collect::<Vec<_>>(), group, "{ctx}");
            for v in &m.volumes {
                let r = s.volumes.get(v).and_then(|r| r.replica(&to).cloned());
                assert_eq!(
                    r.map(|r| r.data),
                    Some(DataState::UpToDate),
                    "{ctx}: promotes {v}"
                );
            }
        }

        // Hosts: which VMs start, where, and where every VM runs afterwards.
        let vms: BTreeSet<&VmId> = model.vms.iter().map(|v| &v.id).collect();
        // A fenced host's restart brings back every stopped VM of the app; a host loss
        // brings back, besides the lost host's, the app's VMs reported stopped on its
        // other up hosts (a stall fenced them too), each where it is placed.
        let fenced: BTreeMap<VmId, HostId> = match (lost_host, fenced_host) {
            // A restore: what it names that is still stopped where it is placed.
            (None, None) if restore.is_some() => rec
                .placement
                .iter()
                .filter(|(vm, h)| {
                    restore.as_ref().and_then(|r| r.get(vm)) == Some(h)
                        && stopped_on(s, &m.app, h).contains(*vm)
                })
                .map(|(vm, h)| (vm.clone(), h.clone()))
                .collect(),
            (_, Some(_)) => rec
                .placement
                .iter()
                .filter(|(vm, h)| stopped_on(s, &m.app, h).contains(*vm))
                .map(|(vm, h)| (vm.clone(), h.clone()))
                .collect(),
            (Some(l), None) => rec
                .placement
                .iter()
                .filter(|(vm, h)| {
                    *h != l
                        && s.hosts.get(*h).is_some_and(|r| r.state == HostState::Up)
                        && matches!(
                            s.vms.get(*vm).map(|r| (&r.host, r.state)),
                            Some((rh, st)) if rh == *h && !matches!(st, VmState::Running | VmState::Paused)
                        )
                })
                .map(|(vm, h)| (vm.clone(), h.clone()))
                .collect(),
            (None, None) => BTreeMap::new(),
        };
        let restart: BTreeSet<&VmId> = match (lost_host, fenced_host) {
            (Some(l), _) => rec
                .placement
                .iter()
                .filter(|(_, h)| *h == l)
                .map(|(v, _)| v)
                .chain(fenced.keys())
                .collect(),
            (None, Some(_)) => fenced.keys().collect(),
            (None, None) if restore.is_some() => fenced.keys().collect(),
            (None, None) => vms.clone(),
        };
        let started: BTreeSet<&VmId> = m.starts.iter().map(|(v, _)| v).collect();
        assert_eq!(started, restart, "{ctx}: the VMs that start");
        assert_eq!(started.len(), m.starts.len(), "{ctx}: a VM starts twice");
        for (vm, h) in &m.starts {
            let host = topo.host(h).expect("a start host is in the topology");
            assert_eq!(host.site, to, "{ctx}: {vm} starts on {h}");
            assert_eq!(
                s.hosts.get(h).map(|r| r.state),
                Some(HostState::Up),
                "{ctx}: {vm} starts on {h}"
            );
            assert_ne!(Some(h), lost_host, "{ctx}: {vm} restarts on the lost host");
            if fenced_host.is_some() || restore.is_some() || fenced.contains_key(vm) {
                assert_eq!(
                    Some(h),
                    fenced.get(vm),
                    "{ctx}: {vm} restarts where the fence stopped it"
                );
            }
        }
        let placed: BTreeMap<&VmId, &HostId> = m.placement.iter().map(|(v, h)| (v, h)).collect();
        assert_eq!(placed.len(), m.placement.len(), "{ctx}: a VM placed twice");
        assert_eq!(
            placed.keys().copied().collect::<BTreeSet<_>>(),
            vms,
            "{ctx}"
        );
        for (vm, h) in &placed {
            let expect = m
                .starts
                .iter()
                .find(|(v, _)| v == *vm)
                .map(|(_, h)| h)
                .or_else(|| rec.placement.get(*vm));
            assert_eq!(Some(*h), expect, "{ctx}: {vm} is placed elsewhere");
        }
        // Stops: every VM at the source for a graceful move; otherwise the restarting
        // VMs whose host is still up (it would not fence itself).
        let stops: Vec<(VmId, HostId)> = rec
            .placement
            .iter()
            .filter(|(v, h)| {
                !drill
                    && fenced_host.is_none()
                    && !fenced.contains_key(*v)
                    && (graceful
                        || (restart.contains(v)
                            && s.hosts.get(*h).is_some_and(|r| r.state == HostState::Up)))
            })
            .map(|(v, h)| (v.clone(), h.clone()))
            .collect();
        assert_eq!(m.stops, stops, "{ctx}");
        let agent_served = model.volumes.iter().all(|v| {
            s.volumes
                .get(&v.id)
                .is_some_and(|r| r.replicas.iter().all(|x| x.host.is_some()))
        });
        if drill {
            assert!(
                agent_served,
                "{ctx}: a drill of volumes served outside the cluster (nothing can snapshot them)"
            );
        }
        if graceful {
            let agent_served = model.volumes.iter().all(|v| {
                s.volumes
                    .get(&v.id)
                    .is_some_and(|r| r.replicas.iter().all(|x| x.host.is_some()))
            });
            assert!(
                agent_served
                    || model
                        .volumes
                        .iter()
                        .all(|v| v.replication.mode() == topology::ReplicationMode::Sync),
                "{ctx}: a switchover of an async volume served outside the cluster cannot drain its lag"
            );
        }

        // Order: dependencies first, tiers never backwards; a dependency the plan cannot
        // move must already be active at the target.
        for d in &model.depends_on {
            if let Some(&w) = wave_of.get(d) {
                assert!(
                    w < wave_of[&m.app],
                    "{ctx}: its dependency {d} is not earlier"
                );
            }
            if skipped.contains_key(d) {
                let dep_site = &s.apps.get(d).expect("dependency").active_site;
                assert_eq!(dep_site, &to, "{ctx}: its dependency {d} is skipped");
            }
        }
    }
    for pair in p.waves.windows(2) {
        let max = pair[0].apps.iter().map(|m| m.tier).max();
        let min = pair[1].apps.iter().map(|m| m.tier).min();
        assert!(max <= min, "a higher tier before a lower one: {p:#?}");
    }

    check_closing(s, t, p);
    for k in &p.skipped {
        check_skip(s, t, k, &skipped, &busy);
    }

    // Capacity: what runs on a host now plus what the plan starts there fits the host.
    // Counting every VM that runs now (also those of apps that move) keeps a host within
    // its capacity at every moment of the execution, whatever order the stops happen in.
    let size: BTreeMap<&VmId, (u64, u64)> = topo
        .apps
        .iter()
        .flat_map(|a| &a.vms)
        .map(|v| (&v.id, (u64::from(v.vcpus), v.memory.bytes())))
        .collect();
    let mut load: BTreeMap<&HostId, (u64, u64)> = BTreeMap::new();
    let running = s.apps.values().flat_map(|a| &a.placement);
    let placed_now: BTreeMap<&VmId, &HostId> = s.apps.values().flat_map(|a| &a.placement).collect();
    // A VM restarting where it is placed (after a fence) already holds its room there.
    let starts = p
        .apps()
        .flat_map(|m| m.starts.iter().map(|(v, h)| (v, h)))
        .filter(|(v, h)| placed_now.get(v) != Some(h));
    for (vm, h) in running.chain(starts) {
        let (c, mem) = size[vm];
        let l = load.entry(h).or_default();
        *l = (l.0 + c, l.1 + mem);
    }
    for h in p.apps().flat_map(|m| m.starts.iter().map(|(_, h)| h)) {
        let cap = topo.host(h).expect("host");
        let (c, mem) = load[h];
        assert!(
            c <= u64::from(cap.vcpus) && mem <= cap.memory.bytes(),
            "host {h} overcommitted: {c} vCPUs, {mem} bytes for {} and {}",
            cap.vcpus,
            cap.memory
        );
    }
}

/// The host serving the app's replicas at `site` (volumes served by the agents).
pub(super) fn replica_host_of(
    s: &ClusterState,
    model: &topology::App,
    site: &SiteId,
) -> Option<HostId> {
    let v = model.volumes.first()?;
    s.volumes.get(&v.id)?.replica(site)?.host.clone()
}

/// A skip's reason must be true of the state.
#[track_caller]
pub(super) fn check_skip(
    s: &ClusterState,
    t: &Trigger,
    k: &Skip,
    skipped: &BTreeMap<&AppId, &SkipReason>,
    busy: &BTreeSet<AppId>,
) {
    let ctx = format!("{} skipped in {t:?}: {}", k.app, k.reason);
    let rec = s.apps.get(&k.app).expect("a skipped app is in the state");
    let model = topo(s)
        .app(&k.app)
        .expect("a skipped app is in the topology");
    let to = target(s, t, &k.app);
    let state_of = |id: &SiteId| s.sites.get(id).map(|r| r.state);
    let graceful = matches!(t, Trigger::Switchover { .. } | Trigger::Failback { .. });
    match &k.reason {
        SkipReason::Busy => assert!(busy.contains(&k.app), "{ctx}"),
        SkipReason::DependencySkipped { dep } => {
            assert!(model.depends_on.contains(dep), "{ctx}");
            assert!(skipped.contains_key(dep), "{ctx}");
            assert_ne!(s.apps.get(dep).map(|d| &d.active_site), Some(&to), "{ctx}");
        }
        SkipReason::DrillAtActiveSite { site } => {
            assert!(matches!(t, Trigger::TestDrill { .. }), "{ctx}");
            assert_eq!((&rec.active_site, site), (&to, &to), "{ctx}");
        }
        SkipReason::DrillServedOutside => {
            assert!(matches!(t, Trigger::TestDrill { .. }), "{ctx}");
            assert!(
                model.volumes.iter().any(|v| s
                    .volumes
                    .get(&v.id)
                    .is_some_and(|r| r.replicas.iter().any(|x| x.host.is_none()))),
                "{ctx}"
            );
        }
        SkipReason::FencedHostDown { host } => {
            assert!(
                matches!(t, Trigger::HostFenced { .. } | Trigger::Restore { .. }),
                "{ctx}"
            );
            assert!(!stopped_on(s, &k.app, host).is_empty(), "{ctx}");
            assert_ne!(
                s.hosts.get(host).map(|r| r.state),
                Some(HostState::Up),
                "{ctx}"
            );
        }
        SkipReason::NotServedAgain { host } => {
            assert!(
                matches!(t, Trigger::HostFenced { .. } | Trigger::Restore { .. }),
                "{ctx}"
            );
            assert!(!stopped_on(s, &k.app, host).is_empty(), "{ctx}");
            assert_eq!(replica_host_of(s, model, &to).as_ref(), Some(host), "{ctx}");
            assert!(!s.serves_since_registration(&k.app, host), "{ctx}");
        }
        SkipReason::AlreadyActive { site } => {
            assert_eq!((&rec.active_site, site), (&to, &to), "{ctx}");
            assert!(!matches!(t, Trigger::HostLost { .. }), "{ctx}");
            // A restore skips an app only when nothing it names is stopped any more.
            if let Trigger::Restore { vms } = t {
                for v in vms.iter().filter(|v| v.app == k.app) {
                    assert!(
                        rec.placement.get(&v.vm) != Some(&v.host)
                            || !stopped_on(s, &k.app, &v.host).contains(&v.vm),
                        "{ctx}: {} is still stopped on {}",
                        v.vm,
                        v.host
                    );
                }
            }
        }
        SkipReason::TargetDown { site } => {
            assert_eq!(site, &to, "{ctx}");
            assert_eq!(state_of(&to), Some(SiteState::Down), "{ctx}");
        }
        SkipReason::SourceDown { site, app, to: dst } => {
            assert!(graceful, "{ctx}");
            assert_eq!((site, app, dst), (&rec.active_site, &k.app, &to), "{ctx}");
            assert_eq!(state_of(site), Some(SiteState::Down), "{ctx}");
        }
        SkipReason::ReplicaNotUpToDate { volume, site, data } => {
            assert!(model.volume(volume).is_some(), "{ctx}");
            assert_eq!(site, &to, "{ctx}");
            let now = s
                .volumes
                .get(volume)
                .and_then(|r| r.replica(&to))
                .expect("replica")
                .data;
            assert_ne!(now, DataState::UpToDate, "{ctx}");
            assert_eq!(&now, data, "{ctx}");
        }
        SkipReason::AsyncServedOutside { volume } => {
            assert!(graceful, "{ctx}");
            let mode = model.volume(volume).map(|v| v.replication.mode());
            assert_eq!(mode, Some(topology::ReplicationMode::Async), "{ctx}");
        }
        SkipReason::ReplicaHostLost { app, site, host } => {
            assert_eq!((app, site), (&k.app, &to), "{ctx}");
            assert!(
                matches!(t, Trigger::HostLost { host: h } if h == host),
                "{ctx}"
            );
            assert_eq!(replica_host_of(s, model, &to).as_ref(), Some(host), "{ctx}");
        }
        SkipReason::ReplicaHostDown { host, site } => {
            assert_eq!(site, &to, "{ctx}");
            assert_eq!(replica_host_of(s, model, &to).as_ref(), Some(host), "{ctx}");
            assert_ne!(
                s.hosts.get(host).map(|x| x.state),
                Some(HostState::Up),
                "{ctx}"
            );
        }
        SkipReason::NoRoomOnReplicaHost { host, site, vm, .. } => {
            assert_eq!(site, &to, "{ctx}");
            assert_eq!(replica_host_of(s, model, &to).as_ref(), Some(host), "{ctx}");
            assert!(model.vms.iter().any(|v| &v.id == vm), "{ctx}");
        }
        SkipReason::NoRoom { site, vm, .. } => {
            assert_eq!(site, &to, "{ctx}");
            assert!(model.vms.iter().any(|v| &v.id == vm), "{ctx}");
        }
        SkipReason::NotInState
        | SkipReason::VolumeMissing { .. }
        | SkipReason::NoReplica { .. } => {
            panic!("unexplained skip: {ctx}")
        }
    }
}
