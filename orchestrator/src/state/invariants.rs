//! Safety invariants of the replicated state (DESIGN §4), checked by `apply` on every
//! row a command touched, and over the whole state by tests after every step.
//!
//! - an epoch never goes down (volume and replica);
//! - a volume has at most one primary, at the volume's epoch, and it is up to date;
//! - a replica that was not up to date never becomes primary;
//! - every placement names a known host at the app's active site;
//! - the audit log is an unbroken hash chain.

use std::fmt;

use super::{ClusterState, DataState, Role, VolumeRecord};
use topology::VolumeId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant violated: {}", self.0)
    }
}

fn fail<T>(msg: String) -> Result<T, Violation> {
    Err(Violation(msg))
}

/// The rules a single volume must obey, given its previous value (if any).
fn check_volume(
    id: &VolumeId,
    now: &VolumeRecord,
    before: Option<&VolumeRecord>,
) -> Result<(), Violation> {
    let primaries: Vec<_> = now
        .replicas
        .iter()
        .filter(|r| r.role == Role::Primary)
        .collect();
    if primaries.len() > 1 {
        return fail(format!("volume {id} has {} primaries", primaries.len()));
    }
    if let Some(p) = primaries.first() {
        if p.epoch != now.epoch {
            return fail(format!(
                "volume {id}: primary at {} has epoch {} but the volume is at {}",
                p.site, p.epoch, now.epoch
            ));
        }
        if p.data != DataState::UpToDate {
            return fail(format!(
                "volume {id}: primary at {} is {:?}",
                p.site, p.data
            ));
        }
    }
    for r in &now.replicas {
        if r.epoch > now.epoch {
            return fail(format!(
                "volume {id}: replica at {} is ahead of the volume's epoch",
                r.site
            ));
        }
    }
    let Some(before) = before else {
        return Ok(());
    };
    if now.epoch < before.epoch {
        return fail(format!(
            "volume {id}: epoch went down from {} to {}",
            before.epoch, now.epoch
        ));
    }
    for r in &now.replicas {
        let Some(old) = before.replica(&r.site) else {
            continue;
        };
        if r.epoch < old.epoch {
            return fail(format!(
                "volume {id}: epoch of the replica at {} went down",
                r.site
            ));
        }
        if r.role == Role::Primary && old.role != Role::Primary && old.data != DataState::UpToDate {
            return fail(format!(
                "volume {id}: the {:?} replica at {} became primary",
                old.data, r.site
            ));
        }
        if r.role == Role::Primary && old.role != Role::Primary && now.epoch == before.epoch {
            return fail(format!(
                "volume {id}: a new primary at {} without an epoch bump",
                r.site
            ));
        }
    }
    Ok(())
}

impl ClusterState {
    /// Check the invariants on what the current (uncommitted) command touched.
    pub(crate) fn check_touched(&self) -> Result<(), Violation> {
        for id in self.volumes.touched() {
            if let Some(now) = self.volumes.get(id) {
                check_volume(id, now, self.volumes.before(id))?;
            }
        }
        for id in self.apps.touched() {
            if let Some(app) = self.apps.get(id) {
                self.check_placement(app)?;
                self.check_primaries(app).map_err(Violation)?;
            }
        }
        Ok(())
    }

    fn check_placement(&self, app: &super::AppRecord) -> Result<(), Violation> {
        for (vm, host) in &app.placement {
            match self.hosts.get(host) {
                None => {
                    return fail(format!(
                        "VM {vm} of {} is placed on unknown host {host}",
                        app.id
                    ));
                }
                Some(h) if h.site != app.active_site => {
                    return fail(format!(
                        "VM {vm} of {} is on {host} at {}, but the app is active at {}",
                        app.id, h.site, app.active_site
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Check every invariant over the whole state (for tests and `audit verify`).
    pub fn invariants(&self) -> Result<(), Violation> {
        for (id, v) in self.volumes.iter() {
            check_volume(id, v, None)?;
        }
        for app in self.apps.values() {
            self.check_placement(app)?;
        }
        let v = self.verify_audit();
        if let Some((seq, why)) = v.broken {
            return fail(format!("audit entry {seq}: {why}"));
        }
        Ok(())
    }

    /// Check the transition from `before` to `self` (for tests that keep both).
    pub fn invariants_since(&self, before: &ClusterState) -> Result<(), Violation> {
        self.invariants()?;
        for (id, v) in self.volumes.iter() {
            check_volume(id, v, before.volumes.get(id))?;
        }
        if self.audit.len() < before.audit.len() {
            return fail("the audit log shrank".into());
        }
        for (seq, e) in before.audit.iter() {
            if self.audit.get(seq) != Some(e) {
                return fail(format!("audit entry {seq} changed"));
            }
        }
        Ok(())
    }
}
