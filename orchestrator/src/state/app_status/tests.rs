#![allow(clippy::unwrap_used)]

use topology::{AppId, HostId, VmId};

use super::*;
use crate::state::{Command, Desired, OpKind, VmState};
use crate::test_support::{apply, lab};

fn db() -> AppId {
    AppId::new("db")
}

/// Every VM of `app` reported `state` on the host it is placed on.
fn report(s: &mut ClusterState, app: &AppId, state: VmState) {
    let placed: Vec<(VmId, HostId)> = s
        .apps
        .get(app)
        .unwrap()
        .placement
        .iter()
        .map(|(v, h)| (v.clone(), h.clone()))
        .collect();
    for (vm, host) in placed {
        apply(
            s,
            10,
            Command::SetVmStates {
                host,
                states: vec![(vm, state)],
                reason: "test".into(),
            },
        );
    }
}

fn status(s: &ClusterState) -> AppStatus {
    s.app_status(&db()).unwrap()
}

/// The lab right after `lab up`: the operator started every VM by hand (no operation
/// ever moved an app), and the apps run — not "stopped", as the recorded state said.
#[test]
fn an_app_whose_vms_run_where_placed_is_running() {
    let mut s = lab();
    assert_eq!(s.apps.get(&db()).unwrap().state, AppState::Stopped);
    report(&mut s, &db(), VmState::Running);
    assert_eq!(
        status(&s),
        AppStatus {
            health: AppHealth::Running,
            reasons: vec![]
        }
    );
}

#[test]
fn an_app_never_started_is_down_with_every_vm_named() {
    let s = lab();
    let st = status(&s);
    assert_eq!(st.health, AppHealth::Down);
    assert!(!st.reasons.is_empty());
    assert!(st.reasons.iter().all(|r| matches!(
        r,
        AppReason::VmNotRunning {
            seen: VmSeen::NotReported,
            ..
        }
    )));
}

/// A running app whose replica at the other site is behind still runs; the replica is
/// named as what reduces its protection.
#[test]
fn a_replica_behind_is_reported_beside_a_running_app() {
    let mut s = lab();
    report(&mut s, &db(), VmState::Running);
    let (volume, site) = {
        let v = s.volumes.values().find(|v| v.app == db()).unwrap();
        let r = v
            .replicas
            .iter()
            .find(|r| r.role == Role::Secondary)
            .unwrap();
        (v.id.clone(), r.site.clone())
    };
    apply(
        &mut s,
        20,
        Command::SetReplicaData {
            volume: volume.clone(),
            site: site.clone(),
            data: DataState::Syncing,
        },
    );
    assert_eq!(
        status(&s),
        AppStatus {
            health: AppHealth::Running,
            reasons: vec![AppReason::ReplicaBehind {
                volume,
                site,
                data: DataState::Syncing
            }]
        }
    );
}

#[test]
fn a_vm_on_a_down_host_is_not_running() {
    let mut s = lab();
    report(&mut s, &db(), VmState::Running);
    let host = s
        .apps
        .get(&db())
        .unwrap()
        .placement
        .values()
        .next()
        .cloned()
        .unwrap();
    apply(
        &mut s,
        30,
        Command::SetHostState {
            host: host.clone(),
            state: HostState::Down,
            reason: "lost".into(),
            last_seen_ms: None,
        },
    );
    let st = status(&s);
    assert_eq!(st.health, AppHealth::Down, "{st:?}");
    assert!(st.reasons.iter().any(|r| matches!(
        r,
        AppReason::VmNotRunning { seen: VmSeen::HostDown { host: h }, .. } if *h == host
    )));
}

#[test]
fn an_operation_moving_it_makes_it_moving_and_a_stop_makes_it_stopped() {
    let mut s = lab();
    report(&mut s, &db(), VmState::Running);
    let crate::state::Outcome::Operation(op) = apply(
        &mut s,
        40,
        Command::StartOperation {
            kind: OpKind::Switchover,
            apps: vec![db()],
            note: "test".into(),
        },
    ) else {
        panic!()
    };
    // Not reached yet (e.g. waiting for approval): what its VMs say.
    assert_eq!(status(&s).health, AppHealth::Running);
    let set = |s: &mut ClusterState, state| {
        apply(
            s,
            40,
            Command::SetAppState {
                app: db(),
                state,
                reason: "test".into(),
            },
        );
    };
    set(&mut s, AppState::Migrating);
    assert_eq!(
        status(&s).reasons,
        vec![AppReason::Moving {
            op,
            kind: OpKind::Switchover
        }]
    );
    // Its move done while the operation goes on with other apps: running again.
    set(&mut s, AppState::Running);
    assert_eq!(status(&s).health, AppHealth::Running);
    set(&mut s, AppState::Migrating);
    apply(
        &mut s,
        41,
        Command::FinishOperation {
            op,
            status: OpStatus::Failed,
        },
    );
    apply(
        &mut s,
        42,
        Command::SetAppState {
            app: db(),
            state: AppState::Failed,
            reason: "test".into(),
        },
    );
    // Its VMs still run: failed or not, it runs.
    assert_eq!(status(&s).health, AppHealth::Running);
    report(&mut s, &db(), VmState::ShutOff);
    let st = status(&s);
    assert_eq!(st.health, AppHealth::Failed);
    assert_eq!(
        st.reasons[0],
        AppReason::LastOperationFailed { op: Some(op) }
    );
    s.apps.get_mut(&db()).unwrap().desired = Desired::Stopped;
    assert_eq!(status(&s).health, AppHealth::Stopped);
}
