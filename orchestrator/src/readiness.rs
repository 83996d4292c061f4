//! How ready each app is to run at the other site (DESIGN §7), from the committed
//! state alone (pure): its replicas there, room for its VMs there, the hosts that would
//! serve it, and how long ago a drill last proved it. A score out of 100 with a typed
//! penalty for every point lost (rendered for people by `Display`). One problem hides
//! the next when the planner names only the first reason it cannot move an app.
//! Never: decide anything from a penalty's rendering.

use serde::{Serialize, Serializer};
use topology::{AppId, SiteId, VolumeId};

use crate::plan::SkipReason;
use crate::planner::{self, Trigger};
use crate::state::{ClusterState, DataState, OpId, OpKind, OpStatus};

/// A drill older than this no longer counts as proof.
pub const DRILL_MAX_AGE_DAYS: u64 = 90;
const DAY_MS: u64 = 24 * 3600 * 1000;

/// How ready one app is. Its JSON (`app readiness -o json`) shows each penalty and
/// the last drill as people read them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Readiness {
    pub app: String,
    pub active_site: String,
    /// Where it would run after a failover.
    pub other_site: String,
    /// 0..=100; 100 = nothing found missing.
    pub score: u32,
    /// Why points were lost (empty at 100).
    #[serde(serialize_with = "rendered", rename = "reasons")]
    pub penalties: Vec<Penalty>,
    /// The last successful test drill of the app.
    pub last_drill: Option<LastDrill>,
}

/// The last successful test drill of an app: its operation and how many days ago it
/// ended. Its JSON is `["op-N", days]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastDrill {
    pub op: OpId,
    pub days: f64,
}

impl Serialize for LastDrill {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.op.to_string(), self.days).serialize(s)
    }
}

/// Points an app lost, and why. Each kind costs a fixed number of points.
#[derive(Debug, Clone, PartialEq)]
pub enum Penalty {
    /// Its replica of `volume` at `site` may not be promoted (a failover would refuse
    /// it until it resyncs).
    ReplicaNotReady {
        volume: VolumeId,
        site: SiteId,
        data: DataState,
    },
    /// `volume` has no replica at `site`.
    NoReplica { volume: VolumeId, site: SiteId },
    /// A failover now would skip it, for the planner's reason.
    WouldSkip { reason: SkipReason },
    /// No failover plan can be made (the planner's error).
    NoPlan { error: String },
    /// No successful test drill ever.
    NeverDrilled,
    /// Its last successful drill is older than [`DRILL_MAX_AGE_DAYS`].
    DrillTooOld { op: OpId, days: f64, max_days: u64 },
}

impl Penalty {
    /// The points it costs.
    pub fn points(&self) -> u32 {
        match self {
            Penalty::ReplicaNotReady { .. } | Penalty::NoReplica { .. } => 40,
            Penalty::WouldSkip { .. } | Penalty::NoPlan { .. } => 30,
            Penalty::NeverDrilled => 20,
            Penalty::DrillTooOld { .. } => 10,
        }
    }
}

impl std::fmt::Display for Penalty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "-{}: ", self.points())?;
        match self {
            Penalty::ReplicaNotReady { volume, site, data } => write!(
                f,
                "the replica of {volume} at {site} is {data:?} (a failover would refuse it until it resyncs)"
            ),
            Penalty::NoReplica { volume, site } => {
                write!(f, "volume {volume} has no replica at {site}")
            }
            Penalty::WouldSkip { reason } => write!(f, "a failover now would skip it: {reason}"),
            Penalty::NoPlan { error } => write!(f, "no failover plan: {error}"),
            Penalty::NeverDrilled => {
                f.write_str("never drilled (run `metrodr drill run --kind test --apps APP`)")
            }
            Penalty::DrillTooOld { op, days, max_days } => write!(
                f,
                "its last successful drill ({op}) is {days:.0} days old (more than {max_days})"
            ),
        }
    }
}

/// Penalties as their renderings (the JSON people and scripts read).
fn rendered<S: Serializer>(p: &[Penalty], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(p.iter().map(ToString::to_string))
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
        let mut penalties = Vec::new();
        // Replicas at the other site.
        for v in &model.volumes {
            let data = state
                .volumes
                .get(&v.id)
                .and_then(|vol| vol.replica(&other))
                .map(|r| r.data);
            match data {
                Some(DataState::UpToDate) => {}
                Some(data) => penalties.push(Penalty::ReplicaNotReady {
                    volume: v.id.clone(),
                    site: other.clone(),
                    data,
                }),
                None => penalties.push(Penalty::NoReplica {
                    volume: v.id.clone(),
                    site: other.clone(),
                }),
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
                    penalties.push(Penalty::WouldSkip {
                        reason: s.reason.clone(),
                    });
                }
            }
            Err(e) => penalties.push(Penalty::NoPlan {
                error: e.to_string(),
            }),
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
                LastDrill {
                    op: o.id,
                    days: now_ms.saturating_sub(at) as f64 / DAY_MS as f64,
                }
            });
        match last {
            None => penalties.push(Penalty::NeverDrilled),
            Some(LastDrill { op, days }) if days > DRILL_MAX_AGE_DAYS as f64 => {
                penalties.push(Penalty::DrillTooOld {
                    op,
                    days,
                    max_days: DRILL_MAX_AGE_DAYS,
                });
            }
            Some(_) => {}
        }
        let lost: u32 = penalties.iter().map(Penalty::points).sum();
        out.push(Readiness {
            app: id.to_string(),
            active_site: rec.active_site.to_string(),
            other_site: other.to_string(),
            score: 100u32.saturating_sub(lost),
            penalties,
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
        assert_eq!(r.penalties, vec![Penalty::NeverDrilled]);
        assert!(r.penalties[0].to_string().contains("never drilled"));
        assert_eq!(assess(&s, &[], 0).len(), 5, "every app when none is named");
    }

    #[test]
    fn the_json_shows_each_penalty_and_the_last_drill_as_people_read_them() {
        let r = Readiness {
            app: "db".into(),
            active_site: "north".into(),
            other_site: "south".into(),
            score: 50,
            penalties: vec![
                Penalty::NoReplica {
                    volume: VolumeId::new("db-data"),
                    site: SiteId::new("south"),
                },
                Penalty::DrillTooOld {
                    op: OpId(4),
                    days: 91.2,
                    max_days: 90,
                },
            ],
            last_drill: Some(LastDrill {
                op: OpId(4),
                days: 91.5,
            }),
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({
                "app": "db", "active_site": "north", "other_site": "south", "score": 50,
                "reasons": [
                    "-40: volume db-data has no replica at south",
                    "-10: its last successful drill (op-4) is 91 days old (more than 90)",
                ],
                "last_drill": ["op-4", 91.5],
            })
        );
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
        assert_eq!(r.last_drill, Some(LastDrill { op, days: 1.0 }));
        let r = db(&s, 2_000 + 91 * DAY_MS);
        assert_eq!(r.score, 90, "{r:?}");
        assert_eq!(
            r.penalties,
            vec![Penalty::DrillTooOld {
                op,
                days: 91.0,
                max_days: DRILL_MAX_AGE_DAYS
            }]
        );
        assert!(r.penalties[0].to_string().contains("91 days old"), "{r:?}");
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
            assert_eq!(
                r.penalties,
                vec![
                    Penalty::ReplicaNotReady {
                        volume: VolumeId::new("db-data"),
                        site: SiteId::new("south"),
                        data,
                    },
                    Penalty::NeverDrilled,
                ],
                "{data:?}: {r:?}"
            );
        }
    }

    #[test]
    fn a_stale_replica_and_a_down_replica_host_cost_points() {
        let mut s = lab();
        south_is(&mut s, 3, DataState::Outdated);
        let r = db(&s, 10);
        assert_eq!(r.score, 40, "{r:?}");
        assert!(r.penalties.contains(&Penalty::ReplicaNotReady {
            volume: VolumeId::new("db-data"),
            site: SiteId::new("south"),
            data: DataState::Outdated
        }));
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
        let skipped = SkipReason::ReplicaHostDown {
            host: HostId::new(host.as_str()),
            site: SiteId::new("south"),
        };
        assert!(
            r.penalties
                .contains(&Penalty::WouldSkip { reason: skipped }),
            "{r:?}"
        );
    }
}
