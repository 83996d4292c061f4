//! Carrying a plan out through the state machine as the executor would (begin,
//! approve, move every app wave by wave, finish), checking every step and trying the
//! wrong moves too.

use super::*;

/// The MoveApp an executor sends for `m`: the next epoch of every volume of the app
/// that is not primary at the target yet.
pub(super) fn move_cmd(s: &ClusterState, op: OpId, m: &AppMove, demoted: DataState) -> Command {
    let group = &topo(s).app(&m.app).expect("app").volumes;
    let epochs = group
        .iter()
        .filter_map(|v| s.volumes.get(&v.id))
        .filter(|v| v.primary().is_none_or(|p| p.site != m.to))
        .map(|v| (v.id.clone(), v.epoch.next()))
        .collect();
    Command::MoveApp {
        op,
        app: m.app.clone(),
        to: m.to.clone(),
        epochs,
        demoted,
        placement: m.placement.clone(),
    }
}

/// Plan `t` and carry the plan out; the plan.
pub(super) fn run(s: &mut ClusterState, t: &Trigger, demoted: DataState) -> Plan {
    let p = plan_ok(s, t);
    execute(s, &p, demoted);
    p
}

pub(super) fn begin(s: &mut ClusterState, p: &Plan) -> OpId {
    match ok(
        s,
        Command::BeginPlan {
            plan: Box::new(p.clone()),
            lost_ms: Some(500),
        },
    ) {
        Outcome::Operation(op) => op,
        o => panic!("BeginPlan gave {o:?}"),
    }
}

/// Carry `p` out as the executor would — begin, approve what waits for approval, move
/// every app wave by wave, finish — checking every step and trying the wrong moves too.
#[track_caller]
pub(super) fn execute(s: &mut ClusterState, p: &Plan, demoted: DataState) {
    let begin_cmd = Command::BeginPlan {
        plan: Box::new(p.clone()),
        lost_ms: Some(500),
    };
    if p.is_empty() {
        refused(s, begin_cmd, RejectKind::Invalid);
        return;
    }
    let op = begin(s, p);
    let rec = s.operations.get(&op.0).expect("the operation").clone();
    assert_eq!((rec.kind, rec.status), (p.kind, OpStatus::Running));
    assert_eq!(rec.apps, planned(p));
    assert_eq!(rec.plan.as_deref(), Some(p));
    assert_eq!(rec.lost_ms, Some(500));
    assert!(rec.approved.is_empty());
    // The same apps cannot be owned twice.
    refused(s, begin_cmd, RejectKind::Conflict);

    let waiting: BTreeSet<AppId> = p
        .apps()
        .filter(|m| m.needs_approval)
        .map(|m| m.app.clone())
        .collect();
    let approve = |apps: Vec<AppId>| Command::ApproveOperation { op, apps };
    if let Some(m) = p.apps().find(|m| m.needs_approval) {
        let cmd = move_cmd(s, op, m, demoted);
        refused(s, cmd, RejectKind::Conflict);
    }
    if let Some(m) = p.apps().find(|m| !m.needs_approval) {
        refused(s, approve(vec![m.app.clone()]), RejectKind::Conflict);
    }
    if !waiting.is_empty() {
        ok(s, approve(Vec::new()));
        let approved = &s.operations.get(&op.0).expect("op").approved;
        assert_eq!(approved.iter().cloned().collect::<BTreeSet<_>>(), waiting);
        assert_eq!(approved.len(), waiting.len());
    }
    refused(s, approve(Vec::new()), RejectKind::Conflict);

    for m in p.apps() {
        move_one(s, op, m, demoted);
    }
    let outsider = s.apps.values().find(|a| !rec.apps.contains(&a.id)).cloned();
    if let Some(other) = outsider {
        let cmd = Command::MoveApp {
            op,
            app: other.id.clone(),
            to: other.active_site.clone(),
            epochs: Vec::new(),
            demoted,
            placement: other
                .placement
                .iter()
                .map(|(v, h)| (v.clone(), h.clone()))
                .collect(),
        };
        refused(s, cmd, RejectKind::Conflict);
    }
    ok(
        s,
        Command::FinishOperation {
            op,
            status: OpStatus::Succeeded,
        },
    );
    let m = p.apps().next().expect("a move");
    let late = move_cmd(s, op, m, demoted);
    refused(s, late, RejectKind::Conflict);
}

#[track_caller]
pub(super) fn move_one(s: &mut ClusterState, op: OpId, m: &AppMove, demoted: DataState) {
    let cmd = move_cmd(s, op, m, demoted);
    let Command::MoveApp { epochs, .. } = &cmd else {
        unreachable!()
    };
    let epochs = epochs.clone();
    // A reused or a skipped epoch is refused, and nothing of the group moves.
    if let Some((_, e)) = epochs.last() {
        for bad in [Epoch(e.0 - 1), Epoch(e.0 + 1)] {
            let mut wrong = cmd.clone();
            if let Command::MoveApp { epochs, .. } = &mut wrong
                && let Some(last) = epochs.last_mut()
            {
                last.1 = bad;
            }
            refused(s, wrong, RejectKind::Conflict);
        }
    }
    let before = s.clone();
    ok(s, cmd.clone());
    let rec = s.apps.get(&m.app).expect("app");
    assert_eq!(rec.active_site, m.to);
    assert_eq!(
        rec.placement
            .iter()
            .map(|(v, h)| (v.clone(), h.clone()))
            .collect::<Vec<_>>(),
        m.placement
    );
    for v in &topo(s).app(&m.app).expect("app").volumes {
        let (old, new) = (
            before.volumes.get(&v.id).expect("volume"),
            s.volumes.get(&v.id).expect("volume"),
        );
        assert_eq!(new.primary().map(|p| &p.site), Some(&m.to), "{}", v.id);
        if epochs.iter().any(|(id, _)| id == &v.id) {
            assert_eq!(new.epoch, old.epoch.next(), "{}: one epoch up", v.id);
            if let Some(was) = old.primary() {
                let now = new.replica(&was.site).expect("old primary");
                assert_eq!(
                    (now.role, now.data, now.epoch),
                    (Role::Secondary, demoted, new.epoch)
                );
            }
        } else {
            assert_eq!(new, old, "{} changed though it was primary already", v.id);
        }
    }
    for (id, a) in before.apps.iter().filter(|(id, _)| **id != m.app) {
        assert_eq!(s.apps.get(id), Some(a), "moving {} changed {id}", m.app);
    }
    for (id, v) in before.volumes.iter().filter(|(_, v)| v.app != m.app) {
        assert_eq!(s.volumes.get(id), Some(v), "moving {} changed {id}", m.app);
    }
    // Replayed (a retry after a lost reply): refused, nothing promoted twice.
    if !epochs.is_empty() {
        refused(s, cmd, RejectKind::Conflict);
    }
}
