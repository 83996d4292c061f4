//! How ready each app is to run at the other site (DESIGN §7), from the committed
//! state alone (pure): its replicas there, room for its VMs there, the hosts that would
//! serve it, and how long ago a drill last proved it. A score out of 100 with the
//! reasons for every point lost.

use serde::{Deserialize, Serialize};
use topology::AppId;

use crate::planner::{self, Trigger};
use crate::state::{ClusterState, DataState, HostState, OpKind, OpStatus};

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
        // The host serving its replicas there.
        if !model.volumes.is_empty()
            && let Some(h) = crate::controller::replica_host(state, model, &other)
            && state.hosts.get(&h).is_none_or(|r| r.state != HostState::Up)
        {
            score -= 10;
            reasons.push(format!(
                "-10: host {h}, which serves its replicas at {other}, is not up"
            ));
        }
        // Room for its VMs there: what the planner would do now.
        let t = Trigger::Failover {
            apps: vec![id.clone()],
            to: other.clone(),
        };
        match planner::plan(state, &t) {
            Ok(p) => {
                for s in p.skipped.iter().filter(|s| &s.app == id) {
                    if !s.reason.contains("not UpToDate") && !s.reason.contains("is Outdated") {
                        score -= 30;
                        reasons.push(format!("-30: a failover now would skip it: {}", s.reason));
                    }
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
