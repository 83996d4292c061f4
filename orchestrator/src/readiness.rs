//! How ready each app is to run at the other site (DESIGN §7), from the committed
//! state alone (pure): its replicas there, room for its VMs there, the hosts that would
//! serve it, and how long ago a drill last proved it. A score out of 100 with the
//! reasons for every point lost. One problem hides the next when the planner names
//! only the first reason it cannot move an app.

use serde::{Deserialize, Serialize};
use topology::AppId;

use crate::planner::{self, Trigger};
use crate::state::{ClusterState, DataState, OpKind, OpStatus};

/// A drill older than this no longer counts as proof.
pub const DRILL_MAX_AGE_DAYS: u64 = 90;
const DAY_MS: u64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    pub app: String,
    pub active_site: String,
    /// Where it would run after a failover.
    pub other_site: String,
    /// 0..=100; 100 = nothing found missing.
    pub score: u32,
    /// Why points were lost (empty at 100).
    pub reasons: Vec<String>,
    /// The last successful test drill of the app: operation and age in days.
    pub last_drill: Option<(String, f64)>,
}

/// The readiness of `apps` (every app when empty) at `now_ms`.
pub fn assess(state: &ClusterState, apps: &[AppId], now_ms: u64) -> Vec<Readiness> {
    let Some(topo) = state.topology().map(|t| &t.model) else {
        return Vec::new();
    };
    let wanted: Vec<&AppId> = if apps.is_empty() {
        state.apps.keys().collect()
    } else {
        apps.iter().collect()
    };
    let mut out = Vec::new();
    for id in wanted {
        let (Some(rec), Some(model)) = (state.apps.get(id), topo.app(id)) else {
            continue;
        };
        let Some(other) = topo.peer_site(&rec.active_site).map(|s| s.id.clone()) else {
            continue;
        };
        let mut score: i64 = 100;
        let mut reasons = Vec::new();
        // Replicas at the other site.
        for v in &model.volumes {
            let data = state
                .volumes
                .get(&v.id)
                .and_then(|vol| vol.replica(&other))
                .map(|r| r.data);
            match data {
                Some(DataState::UpToDate) => {}
                Some(d) => {
                    score -= 40;
                    reasons.push(format!(
                        "-40: the replica of {} at {other} is {d:?} (a failover would refuse it until it resyncs)",
                        v.id
                    ));
                }
                None => {
                    score -= 40;
                    reasons.push(format!("-40: volume {} has no replica at {other}", v.id));
                }
            }
        }
        // Room for its VMs there: what the planner would do now.
        let t = Trigger::Failover {
            apps: vec![id.clone()],
            to: other.clone(),
        };
        match planner::plan(state, &t) {
            Ok(p) => {
                // A replica that may not be promoted cost its -40 above already.
                for s in p
                    .skipped
                    .iter()
                    .filter(|s| &s.app == id && !s.reason.is_replica_state())
                {
                    score -= 30;
                    reasons.push(format!("-30: a failover now would skip it: {}", s.reason));
                }
            }
            Err(e) => {
                score -= 30;
                reasons.push(format!("-30: no failover plan: {e}"));
            }
        }
        // The last successful test drill.
        let last = state
            .operations
            .values()
            .rev()
            .find(|o| {
                o.kind == OpKind::Drill && o.status == OpStatus::Succeeded && o.apps.contains(id)
            })
            .map(|o| {
                let at = o.ended_ms.unwrap_or(o.started_ms);
                (
                    o.id.to_string(),
                    now_ms.saturating_sub(at) as f64 / DAY_MS as f64,
                )
            });
        match &last {
            None => {
                score -= 20;
                reasons.push(
                    "-20: never drilled (run `metrodr drill run --kind test --apps APP`)".into(),
                );
            }
            Some((op, days)) if *days > DRILL_MAX_AGE_DAYS as f64 => {
                score -= 10;
                reasons.push(format!(
                    "-10: its last successful drill ({op}) is {days:.0} days old (more than {DRILL_MAX_AGE_DAYS})"
                ));
            }
            Some(_) => {}
        }
        out.push(Readiness {
            app: id.to_string(),
            active_site: rec.active_site.to_string(),
            other_site: other.to_string(),
            score: score.clamp(0, 100) as u32,
            reasons,
            last_drill: last,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::state::{Command, Outcome};
    use crate::test_support::{apply, lab};
    use topology::{HostId, SiteId, VolumeId};

    fn db(s: &ClusterState, now: u64) -> Readiness {
        assess(s, &[AppId::new("db")], now).remove(0)
    }

    /// The replica of db's volume at south is `data` from `at_ms` on.
    fn south_is(s: &mut ClusterState, at_ms: u64, data: DataState) {
        apply(
            s,
            at_ms,
            Command::SetReplicaData {
                volume: VolumeId::new("db-data"),
                site: SiteId::new("south"),
                data,
            },
        );
    }

    #[test]
    fn an_app_never_drilled_loses_twenty_points_and_says_why() {
        let s = lab();
        let r = db(&s, 10_000);
        assert_eq!(
            (r.active_site.as_str(), r.other_site.as_str()),
            ("north", "south")
        );
        assert_eq!(r.score, 80, "{r:?}");
        assert_eq!(r.reasons.len(), 1);
        assert!(r.reasons[0].contains("never drilled"), "{r:?}");
        assert_eq!(assess(&s, &[], 0).len(), 5, "every app when none is named");
    }

    #[test]
    fn a_recent_successful_drill_counts_and_an_old_one_expires() {
        let mut s = lab();
        let Outcome::Operation(op) = apply(
            &mut s,
            1_000,
            Command::StartOperation {
                kind: OpKind::Drill,
                apps: vec![AppId::new("db")],
                note: "drill".into(),
            },
        ) else {
            panic!()
        };
        apply(
            &mut s,
            2_000,
            Command::FinishOperation {
                op,
                status: OpStatus::Succeeded,
            },
        );
        let r = db(&s, 2_000 + DAY_MS);
        assert_eq!(r.score, 100, "{r:?}");
        assert_eq!(r.last_drill, Some((op.to_string(), 1.0)));
        let r = db(&s, 2_000 + 91 * DAY_MS);
        assert_eq!(r.score, 90, "{r:?}");
        assert!(r.reasons[0].contains("91 days old"), "{r:?}");
    }

    #[test]
    fn a_replica_that_may_not_be_promoted_costs_forty_points_whatever_its_state() {
        // docs/drills.md: -40 per volume whose replica at the other site is not up to
        // date; the failover it blocks is that same problem, not another -30.
        for data in [
            DataState::Syncing,
            DataState::Outdated,
            DataState::Inconsistent,
        ] {
            let mut s = lab();
            south_is(&mut s, 3, data);
            let r = db(&s, 10);
            assert_eq!(r.score, 100 - 40 - 20, "{data:?}: {r:?}");
            assert_eq!(r.reasons.len(), 2, "{data:?}: {r:?}");
            assert!(
                r.reasons[0]
                    .starts_with(&format!("-40: the replica of db-data at south is {data:?}")),
                "{data:?}: {r:?}"
            );
            assert!(r.reasons[1].contains("never drilled"), "{data:?}: {r:?}");
        }
    }

    #[test]
    fn a_stale_replica_and_a_down_replica_host_cost_points() {
        let mut s = lab();
        south_is(&mut s, 3, DataState::Outdated);
        let r = db(&s, 10);
        assert_eq!(r.score, 40, "{r:?}");
        assert!(
            r.reasons
                .iter()
                .any(|x| x.contains("db-data at south is Outdated"))
        );
        let host = s
            .volumes
            .get(&VolumeId::new("db-data"))
            .and_then(|v| v.replica(&SiteId::new("south")))
            .and_then(|r| r.host.clone())
            .unwrap();
        apply(
            &mut s,
            4,
            Command::SetHostState {
                host: HostId::new(host.as_str()),
                state: crate::state::HostState::Down,
                reason: "test".into(),
                last_seen_ms: None,
            },
        );
        south_is(&mut s, 5, DataState::UpToDate);
        let r = db(&s, 10);
        assert_eq!(r.score, 50, "{r:?}");
        assert!(
            r.reasons
                .iter()
                .any(|x| x.starts_with("-30") && x.contains("is not up")),
            "{r:?}"
        );
    }
}
