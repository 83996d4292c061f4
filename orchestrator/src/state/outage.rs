//! An app that should run and has not, for longer than its RTO target: the leader's
//! reconciler says so (and says when it runs again); the record carries it until then,
//! and the audit log has both ends.

use topology::AppId;

use super::command::{Applied, not_found, reject};
use super::*;

impl ClusterState {
    pub(super) fn set_app_outage(
        &mut self,
        req: &Request,
        app: &AppId,
        since_ms: Option<u64>,
    ) -> Applied {
        let rto_target_s = self
            .topology()
            .and_then(|t| t.model.app(app))
            .map_or(0, |a| a.rto_target_s);
        let rec = self
            .apps
            .get_mut(app)
            .ok_or_else(|| not_found("app", app.as_str()))?;
        let event = match (rec.outage_since_ms, since_ms) {
            (None, Some(since)) => AuditEvent::AppOutage {
                app: app.clone(),
                since_ms: since,
                rto_target_s,
                ended_ms: None,
            },
            (Some(since), None) => AuditEvent::AppOutage {
                app: app.clone(),
                since_ms: since,
                rto_target_s,
                ended_ms: Some(req.at_ms),
            },
            _ => return reject(RejectKind::Unchanged, format!("app {app}: no change")),
        };
        rec.outage_since_ms = since_ms;
        Ok((event, Outcome::Done))
    }
}
