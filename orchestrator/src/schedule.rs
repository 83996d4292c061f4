//! Drill schedules (the topology's `[[drill]]`): which scheduled test drills are due
//! (pure). The leader's executor begins each due drill as the actor
//! `schedule:<id>`; that actor's operations are the schedule's runs.
//!
//! A schedule first runs one interval after it appeared in the applied topology (the
//! oldest applied version from which every version has it), then one interval after
//! its previous run began. A run still going holds the next one back.

use serde::{Serialize, Serializer};
use topology::{AppId, DrillSchedule};

use crate::state::{ClusterState, OpId, OpStatus};

/// The actor a schedule's drills run as.
pub fn actor(id: &str) -> String {
    format!("schedule:{id}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleStatus {
    pub id: String,
    pub apps: Vec<AppId>,
    pub every_s: u64,
    /// The latest run.
    pub last: Option<ScheduleRun>,
    /// When the next run is due (ms since the epoch).
    pub next_due_ms: u64,
    pub running: bool,
}

/// One run of a schedule: its operation, how it stands, when it began. Its JSON
/// (`drill schedules -o json`) is `["op-N", "status", began_ms]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleRun {
    pub op: OpId,
    pub status: OpStatus,
    pub began_ms: u64,
}

impl Serialize for ScheduleRun {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (
            self.op.to_string(),
            crate::report::status(self.status),
            self.began_ms,
        )
            .serialize(s)
    }
}

/// When `schedule` appeared: the applied time of the oldest topology version from
/// which every later version has it.
fn since_ms(state: &ClusterState, id: &str) -> Option<u64> {
    let mut since = None;
    for t in state.topologies.values().rev() {
        if t.model.drills.iter().any(|d| d.id == id) {
            since = Some(t.applied_ms);
        } else {
            break;
        }
    }
    since
}

/// Every schedule of the applied topology and where it stands at `now_ms` (pure).
pub fn status(state: &ClusterState) -> Vec<ScheduleStatus> {
    let Some(topo) = state.topology() else {
        return Vec::new();
    };
    topo.model
        .drills
        .iter()
        .map(|d| one(state, &topo.model, d))
        .collect()
}

fn one(state: &ClusterState, model: &topology::Topology, d: &DrillSchedule) -> ScheduleStatus {
    let who = actor(&d.id);
    let runs: Vec<_> = state
        .operations
        .values()
        .filter(|o| o.started_by == who)
        .collect();
    let last = runs.last().map(|o| ScheduleRun {
        op: o.id,
        status: o.status,
        began_ms: o.started_ms,
    });
    let running = runs.iter().any(|o| o.status == OpStatus::Running);
    let from = last
        .as_ref()
        .map(|r| r.began_ms)
        .or_else(|| since_ms(state, &d.id))
        .unwrap_or(0);
    ScheduleStatus {
        id: d.id.clone(),
        apps: d.apps_in(model),
        every_s: d.every_s,
        last,
        next_due_ms: from.saturating_add(d.every_s.saturating_mul(1000)),
        running,
    }
}

/// The schedules due at `now_ms` (not running, interval elapsed), with their apps (pure).
pub fn due(state: &ClusterState, now_ms: u64) -> Vec<ScheduleStatus> {
    status(state)
        .into_iter()
        .filter(|s| !s.running && now_ms >= s.next_due_ms)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// `drill schedules -o json` reads as it did when the API carried it as JSON.
    #[test]
    fn the_json_shows_the_last_run_as_operation_status_and_start() {
        let s = ScheduleStatus {
            id: "weekly".into(),
            apps: vec![AppId::new("db")],
            every_s: 60,
            last: Some(ScheduleRun {
                op: OpId(3),
                status: OpStatus::Succeeded,
                began_ms: 1_000,
            }),
            next_due_ms: 61_000,
            running: false,
        };
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({
                "id": "weekly", "apps": ["db"], "every_s": 60,
                "last": ["op-3", "succeeded", 1000],
                "next_due_ms": 61000, "running": false,
            })
        );
    }
}
