//! Operations that execute a plan: begin, approve, and the atomic move of one app
//! (promote its consistency group at the next epoch and make the other site active).

use topology::{AppId, HostId, SiteId, SiteRole, VmId, VolumeId};

use serde::{Deserialize, Serialize};

use super::{
    Applied, AuditEvent, ClusterState, DataState, Epoch, LinkReport, OpId, OpKind, OpStatus,
    Outcome, RejectKind, Rejection, Request, Role, Step, not_found, reject,
};
use crate::plan::{AppMove, Plan, PlannedStep, Trigger};

/// An operation: its kind, apps, status and plan; its steps are rows of their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: OpId,
    pub kind: OpKind,
    pub apps: Vec<AppId>,
    pub started_by: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub status: OpStatus,
    pub note: String,
    /// The saga log. Stored row by row in [`super::ClusterState::op_steps`] (so that a
    /// step does not copy the whole operation); filled in by
    /// [`super::ClusterState::operation_view`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// The plan the leader executes (failover, switchover, failback); None for
    /// operations recorded by hand.
    #[serde(default)]
    pub plan: Option<Box<Plan>>,
    /// When the loss that caused it began (the first missed lease), for the achieved
    /// RTO; None for planned operations (they count from `started_ms`).
    #[serde(default)]
    pub lost_ms: Option<u64>,
    /// Apps an operator approved (policy `manual-approval`).
    #[serde(default)]
    pub approved: Vec<AppId>,
}

impl Operation {
    /// The name of step `s` for people, from the plan (`serve volumes at south-h2`).
    pub fn step_name(&self, s: &Step) -> String {
        match self.plan.as_deref() {
            Some(p) => p.step_name(&s.at, s.kind),
            None => s.kind.label().to_string(),
        }
    }
}

impl ClusterState {
    pub(super) fn begin_plan(
        &mut self,
        req: &Request,
        plan: &Plan,
        lost_ms: Option<u64>,
    ) -> Applied {
        if plan.is_empty() {
            return reject(RejectKind::Invalid, "the plan moves no app");
        }
        let mut busy = self.busy_apps();
        if plan.kind == OpKind::Drill {
            busy.extend(self.drilled_apps());
        }
        let mut apps: Vec<AppId> = Vec::new();
        for m in plan.apps() {
            if !self.apps.contains(&m.app) {
                return Err(not_found("app", m.app.as_str()));
            }
            if busy.contains(&m.app) || apps.contains(&m.app) {
                return reject(
                    RejectKind::Conflict,
                    format!(
                        "app {} is already being moved by a running operation",
                        m.app
                    ),
                );
            }
            let step_hosts = m.steps.iter().flat_map(|s| s.hosts());
            for h in m
                .placement
                .iter()
                .chain(&m.stops)
                .map(|(_, h)| h)
                .chain(step_hosts)
            {
                if !self.hosts.contains(h) {
                    return Err(not_found("host", h.as_str()));
                }
            }
            self.check_promotions(m)?;
            apps.push(m.app.clone());
        }
        for h in plan
            .closing
            .iter()
            .chain(&plan.interrupted)
            .flat_map(|s| s.hosts())
        {
            if !self.hosts.contains(h) {
                return Err(not_found("host", h.as_str()));
            }
        }
        let id = self.operations.last().map_or(1, |(k, _)| k + 1);
        // The restart of what a fence stopped is under way: the host is no longer owed
        // one, unless the plan had to leave an app for later (another operation owns
        // it, or its volumes are not served again yet): the next plan restarts that.
        if let Trigger::HostFenced { host } = &plan.trigger
            && plan.skipped.is_empty()
            && let Some(h) = self.hosts.get_mut(host)
        {
            h.fenced_ms = None;
        }
        let note = plan.trigger.describe();
        self.operations.insert(
            id,
            Operation {
                id: OpId(id),
                kind: plan.kind,
                apps: apps.clone(),
                started_by: req.actor.clone(),
                started_ms: req.at_ms,
                ended_ms: None,
                status: OpStatus::Running,
                note: note.clone(),
                steps: Vec::new(),
                plan: Some(Box::new(plan.clone())),
                lost_ms,
                approved: Vec::new(),
            },
        );
        Ok((
            AuditEvent::OpStarted {
                op: OpId(id),
                kind: plan.kind,
                apps,
                note,
                waves: u32::try_from(plan.waves.len()).unwrap_or(u32::MAX),
                skipped: plan.skipped.clone(),
            },
            Outcome::Operation(OpId(id)),
        ))
    }

    /// The epochs `m` plans to promote are each volume's next, and none of them is
    /// primary at the target yet: a plan made from an older state is refused whole
    /// (plan again), not found out half-way.
    fn check_promotions(&self, m: &AppMove) -> Result<(), Rejection> {
        for s in &m.steps {
            let PlannedStep::PromoteAndMove { to, promote, .. } = s else {
                continue;
            };
            for p in promote {
                let vol = self
                    .volumes
                    .get(&p.volume)
                    .ok_or_else(|| not_found("volume", p.volume.as_str()))?;
                let stale = vol.epoch != p.from
                    || p.to != p.from.next()
                    || vol.primary().is_some_and(|r| &r.site == to);
                if stale {
                    return reject(
                        RejectKind::Conflict,
                        format!(
                            "the plan promotes {} from epoch {} to {} at {to}, but it is at epoch {} now (plan again)",
                            p.volume, p.from, p.to, vol.epoch
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    pub(super) fn approve(&mut self, op: OpId, apps: &[AppId]) -> Applied {
        let rec = self.running_op(op)?;
        let waiting: Vec<AppId> = rec
            .plan
            .as_ref()
            .map(|p| {
                p.apps()
                    .filter(|m| m.needs_approval && !rec.approved.contains(&m.app))
                    .map(|m| m.app.clone())
                    .collect()
            })
            .unwrap_or_default();
        let chosen: Vec<AppId> = if apps.is_empty() {
            waiting.clone()
        } else {
            if let Some(a) = apps.iter().find(|a| !waiting.contains(a)) {
                return reject(
                    RejectKind::Conflict,
                    format!("{op} is not waiting for an approval of app {a}"),
                );
            }
            apps.to_vec()
        };
        if chosen.is_empty() {
            return reject(RejectKind::Conflict, format!("{op} waits for no approval"));
        }
        // An app named twice in one request is approved once.
        for a in &chosen {
            if !rec.approved.contains(a) {
                rec.approved.push(a.clone());
            }
        }
        Ok((AuditEvent::OpApproved { op, apps: chosen }, Outcome::Done))
    }

    pub(super) fn move_app(
        &mut self,
        op: OpId,
        app: &AppId,
        to: &SiteId,
        epochs: &[(VolumeId, Epoch)],
        demoted: DataState,
        placement: &[(VmId, HostId)],
    ) -> Applied {
        let rec = self.running_op_ref(op)?;
        if rec.kind == OpKind::Drill {
            return reject(
                RejectKind::Conflict,
                format!("{op} is a test drill: it promotes and moves nothing"),
            );
        }
        let Some(planned) = rec
            .plan
            .as_ref()
            .and_then(|p| p.apps().find(|m| &m.app == app))
        else {
            return reject(
                RejectKind::Conflict,
                format!("app {app} is not part of the plan of {op}"),
            );
        };
        // Policy manual-approval: nothing of the app moves before an operator says so.
        if planned.needs_approval && !rec.approved.contains(app) {
            return reject(
                RejectKind::Conflict,
                format!(
                    "app {app} waits for approval (`metrodr op approve {}`)",
                    op.0
                ),
            );
        }
        match self.sites.get(to) {
            None => return Err(not_found("site", to.as_str())),
            Some(s) if s.role != SiteRole::Production => {
                return reject(
                    RejectKind::Invalid,
                    format!("site {to} is not a production site"),
                );
            }
            Some(_) => {}
        }
        let model = self
            .topology()
            .and_then(|t| t.model.app(app))
            .cloned()
            .ok_or_else(|| not_found("app", app.as_str()))?;
        if let Some((vm, _)) = placement
            .iter()
            .find(|(vm, _)| !model.vms.iter().any(|v| &v.id == vm))
        {
            return Err(not_found("VM of that app", vm.as_str()));
        }
        let mut promoted = Vec::new();
        for v in &model.volumes {
            let vol = self
                .volumes
                .get(&v.id)
                .ok_or_else(|| not_found("volume", v.id.as_str()))?;
            let here = vol.primary().is_some_and(|p| &p.site == to);
            let given = epochs.iter().find(|(id, _)| id == &v.id).map(|(_, e)| *e);
            match (here, given) {
                (true, None) => {}
                (true, Some(_)) => {
                    return reject(
                        RejectKind::Conflict,
                        format!("volume {} is already primary at {to}", v.id),
                    );
                }
                (false, None) => {
                    return reject(
                        RejectKind::Invalid,
                        format!(
                            "volume {} of {app} is not primary at {to}: the move must promote it",
                            v.id
                        ),
                    );
                }
                (false, Some(e)) => {
                    self.promote(&v.id, to, e, demoted)?;
                    promoted.push((v.id.clone(), e));
                }
            }
        }
        if let Some((id, _)) = epochs.iter().find(|(id, _)| model.volume(id).is_none()) {
            return Err(not_found("volume of that app", id.as_str()));
        }
        let rec = self
            .apps
            .get_mut(app)
            .ok_or_else(|| not_found("app", app.as_str()))?;
        let from = rec.active_site.clone();
        rec.active_site = to.clone();
        rec.placement = placement.iter().cloned().collect();
        Ok((
            AuditEvent::AppMoved {
                op,
                app: app.clone(),
                from,
                to: to.clone(),
                promoted,
                demoted,
                placement: placement.to_vec(),
            },
            Outcome::Done,
        ))
    }

    pub(super) fn replica_status(
        &mut self,
        app: &AppId,
        site: &SiteId,
        epoch: Epoch,
        link: LinkReport,
        detail: &str,
    ) -> Applied {
        let model = self
            .topology()
            .and_then(|t| t.model.app(app))
            .cloned()
            .ok_or_else(|| not_found("app", app.as_str()))?;
        let target = match link {
            LinkReport::InSync => Some(DataState::UpToDate),
            LinkReport::Resyncing => Some(DataState::Syncing),
            LinkReport::Down => None,
            LinkReport::Alone => Some(DataState::Outdated),
        };
        let mut changes = Vec::new();
        for v in &model.volumes {
            let vol = self
                .volumes
                .get_mut(&v.id)
                .ok_or_else(|| not_found("volume", v.id.as_str()))?;
            let current = vol.primary().is_some_and(|p| &p.site == site) && vol.epoch == epoch;
            if !current {
                let (at, e) = vol
                    .primary()
                    .map_or(("nowhere".to_string(), vol.epoch), |p| {
                        (p.site.to_string(), vol.epoch)
                    });
                return reject(
                    RejectKind::Stale,
                    format!(
                        "stale report: the primary of volume {} is at {at} at epoch {e}, not at {site} at epoch {epoch} (this primary must stop)",
                        v.id
                    ),
                );
            }
            let Some(target) = target else { continue };
            for r in vol
                .replicas
                .iter_mut()
                .filter(|r| r.role == Role::Secondary)
            {
                if r.data != target {
                    changes.push((v.id.clone(), r.site.clone(), r.data, target));
                    r.data = target;
                }
            }
        }
        if changes.is_empty() {
            return reject(RejectKind::Unchanged, "no replica state changed");
        }
        Ok((
            AuditEvent::ReplicaLink {
                app: app.clone(),
                site: site.clone(),
                epoch,
                link,
                detail: detail.to_string(),
                changes,
            },
            Outcome::Done,
        ))
    }

    pub(super) fn recover_site(&mut self, site: &SiteId) -> Applied {
        let rec = self
            .sites
            .get(site)
            .ok_or_else(|| not_found("site", site.as_str()))?;
        if rec.role != SiteRole::Production {
            return reject(
                RejectKind::Invalid,
                format!("site {site} is the witness; it holds no applications"),
            );
        }
        if rec.state != crate::state::SiteState::Up {
            return reject(
                RejectKind::Conflict,
                format!(
                    "site {site} is still {:?} ({}): its orchestrator node and hosts must be back first",
                    rec.state, rec.reason
                ),
            );
        }
        let behind = self.replicas_behind(site);
        let held = rec.downs_ms.len();
        if let Some(r) = self.sites.get_mut(site) {
            r.downs_ms.clear();
        }
        Ok((
            AuditEvent::SiteRecovered {
                site: site.clone(),
                losses_forgotten: u32::try_from(held).unwrap_or(u32::MAX),
                behind,
            },
            Outcome::Done,
        ))
    }

    /// The replicas at `site` that may not be promoted yet: "volume (state)".
    pub fn replicas_behind(&self, site: &SiteId) -> Vec<(VolumeId, DataState)> {
        self.volumes
            .values()
            .filter_map(|v| {
                v.replica(site)
                    .filter(|r| r.data != DataState::UpToDate)
                    .map(|r| (v.id.clone(), r.data))
            })
            .collect()
    }

    /// Every volume of `app` with a primary has it at the app's active site.
    pub(super) fn check_primaries(&self, app: &super::AppRecord) -> Result<(), String> {
        let Some(model) = self.topology().and_then(|t| t.model.app(&app.id)) else {
            return Ok(());
        };
        for v in &model.volumes {
            if let Some(p) = self.volumes.get(&v.id).and_then(|r| r.primary())
                && p.site != app.active_site
                && p.role == Role::Primary
            {
                return Err(format!(
                    "app {} is active at {} but the primary of its volume {} is at {}",
                    app.id, app.active_site, v.id, p.site
                ));
            }
        }
        Ok(())
    }
}
