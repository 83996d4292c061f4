//! Readiness on the wire (`AppReadiness`, `ReadinessPenalty`), both ways.

use topology::{SiteId, VolumeId};

use super::skip::{skip_reason_from_wire, skip_reason_to_wire};
use super::states::{data_state_from_wire, data_state_to_wire};
use super::{WireError, checked};
use crate::pb;
use crate::pb::readiness_penalty::Reason as R;
use crate::readiness::{LastDrill, Penalty, Readiness};
use crate::state::OpId;

pub fn penalty_to_wire(p: &Penalty) -> pb::ReadinessPenalty {
    let reason = match p {
        Penalty::ReplicaNotReady { volume, site, data } => R::ReplicaNotReady(pb::ReplicaBehind {
            volume: volume.to_string(),
            site: site.to_string(),
            data: data_state_to_wire(*data).into(),
        }),
        Penalty::NoReplica { volume, site } => R::NoReplica(pb::ReplicaMissing {
            volume: volume.to_string(),
            site: site.to_string(),
        }),
        Penalty::WouldSkip { reason } => R::WouldSkip(skip_reason_to_wire(reason)),
        Penalty::NoPlan { error } => R::NoPlan(error.clone()),
        Penalty::NeverDrilled => R::NeverDrilled(pb::NeverDrilled {}),
        Penalty::DrillTooOld { op, days, max_days } => R::DrillTooOld(pb::DrillTooOld {
            op: op.0,
            days: *days,
            max_days: *max_days,
        }),
    };
    pb::ReadinessPenalty {
        reason: Some(reason),
    }
}

pub fn penalty_from_wire(p: pb::ReadinessPenalty) -> Result<Penalty, WireError> {
    Ok(
        match p.reason.ok_or(WireError::Missing {
            what: "the penalty's reason",
        })? {
            R::ReplicaNotReady(r) => Penalty::ReplicaNotReady {
                volume: checked("volume", r.volume, VolumeId::new)?,
                site: checked("site", r.site, SiteId::new)?,
                data: data_state_from_wire(r.data)?,
            },
            R::NoReplica(r) => Penalty::NoReplica {
                volume: checked("volume", r.volume, VolumeId::new)?,
                site: checked("site", r.site, SiteId::new)?,
            },
            R::WouldSkip(reason) => Penalty::WouldSkip {
                reason: skip_reason_from_wire(reason)?,
            },
            R::NoPlan(error) => Penalty::NoPlan { error },
            R::NeverDrilled(_) => Penalty::NeverDrilled,
            R::DrillTooOld(d) => Penalty::DrillTooOld {
                op: OpId(d.op),
                days: d.days,
                max_days: d.max_days,
            },
        },
    )
}

pub fn readiness_to_wire(r: &Readiness) -> pb::AppReadiness {
    pb::AppReadiness {
        app: r.app.clone(),
        active_site: r.active_site.clone(),
        other_site: r.other_site.clone(),
        score: r.score,
        penalties: r.penalties.iter().map(penalty_to_wire).collect(),
        last_drill: r.last_drill.map(|d| pb::LastDrill {
            op: d.op.0,
            days: d.days,
        }),
    }
}

pub fn readiness_from_wire(r: pb::AppReadiness) -> Result<Readiness, WireError> {
    if r.score > 100 {
        return Err(WireError::OutOfRange {
            what: "the readiness score",
            value: u64::from(r.score),
        });
    }
    Ok(Readiness {
        app: r.app,
        active_site: r.active_site,
        other_site: r.other_site,
        score: r.score,
        penalties: r
            .penalties
            .into_iter()
            .map(penalty_from_wire)
            .collect::<Result<_, _>>()?,
        last_drill: r.last_drill.map(|d| LastDrill {
            op: OpId(d.op),
            days: d.days,
        }),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::state::DataState;

    #[test]
    fn every_penalty_crosses_the_wire_unchanged() {
        let r = Readiness {
            app: "db".into(),
            active_site: "north".into(),
            other_site: "south".into(),
            score: 0,
            penalties: vec![
                Penalty::ReplicaNotReady {
                    volume: VolumeId::new("db-data"),
                    site: SiteId::new("south"),
                    data: DataState::Syncing,
                },
                Penalty::NoReplica {
                    volume: VolumeId::new("db-logs"),
                    site: SiteId::new("south"),
                },
                Penalty::WouldSkip {
                    reason: crate::plan::SkipReason::ReplicaHostDown {
                        host: topology::HostId::new("south-h1"),
                        site: SiteId::new("south"),
                    },
                },
                Penalty::NoPlan {
                    error: "no site south".into(),
                },
                Penalty::NeverDrilled,
                Penalty::DrillTooOld {
                    op: OpId(3),
                    days: 120.5,
                    max_days: 90,
                },
            ],
            last_drill: Some(LastDrill {
                op: OpId(3),
                days: 120.5,
            }),
        };
        assert_eq!(readiness_from_wire(readiness_to_wire(&r)).unwrap(), r);
    }

    #[test]
    fn a_bad_penalty_or_score_is_refused_with_what_is_wrong() {
        let missing = pb::ReadinessPenalty { reason: None };
        assert!(matches!(
            penalty_from_wire(missing),
            Err(WireError::Missing { .. })
        ));
        let bad_data = pb::ReadinessPenalty {
            reason: Some(R::ReplicaNotReady(pb::ReplicaBehind {
                volume: "db-data".into(),
                site: "south".into(),
                data: 0,
            })),
        };
        assert!(matches!(
            penalty_from_wire(bad_data),
            Err(WireError::UnknownEnum { value: 0, .. })
        ));
        let too_high = pb::AppReadiness {
            score: 101,
            ..Default::default()
        };
        assert!(readiness_from_wire(too_high).is_err());
    }
}
