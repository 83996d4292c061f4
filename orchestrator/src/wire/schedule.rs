//! Drill schedules on the wire (`DrillSchedule`), both ways.

use topology::AppId;

use super::states::{op_status_from_wire, op_status_to_wire};
use super::{WireError, checked};
use crate::pb;
use crate::schedule::{ScheduleRun, ScheduleStatus};
use crate::state::OpId;

pub fn schedule_to_wire(s: &ScheduleStatus) -> pb::DrillSchedule {
    pb::DrillSchedule {
        id: s.id.clone(),
        apps: s.apps.iter().map(ToString::to_string).collect(),
        every_s: s.every_s,
        last: s.last.map(|r| pb::ScheduleRun {
            op: r.op.0,
            status: op_status_to_wire(r.status).into(),
            began_ms: r.began_ms,
        }),
        next_due_ms: s.next_due_ms,
        running: s.running,
    }
}

pub fn schedule_from_wire(s: pb::DrillSchedule) -> Result<ScheduleStatus, WireError> {
    Ok(ScheduleStatus {
        id: s.id,
        apps: s
            .apps
            .into_iter()
            .map(|a| checked("app", a, AppId::new))
            .collect::<Result<_, _>>()?,
        every_s: s.every_s,
        last: s
            .last
            .map(|r| {
                Ok::<_, WireError>(ScheduleRun {
                    op: OpId(r.op),
                    status: op_status_from_wire(r.status)?,
                    began_ms: r.began_ms,
                })
            })
            .transpose()?,
        next_due_ms: s.next_due_ms,
        running: s.running,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::state::OpStatus;

    #[test]
    fn a_schedule_crosses_the_wire_unchanged_and_a_bad_one_is_refused() {
        let mut s = ScheduleStatus {
            id: "weekly".into(),
            apps: vec![AppId::new("db"), AppId::new("mail")],
            every_s: 604_800,
            last: Some(ScheduleRun {
                op: OpId(7),
                status: OpStatus::Interrupted,
                began_ms: 1_000,
            }),
            next_due_ms: 604_801_000,
            running: true,
        };
        assert_eq!(schedule_from_wire(schedule_to_wire(&s)).unwrap(), s);
        s.last = None;
        assert_eq!(schedule_from_wire(schedule_to_wire(&s)).unwrap(), s);

        let mut w = schedule_to_wire(&s);
        w.apps.push("no spaces allowed".into());
        assert!(matches!(
            schedule_from_wire(w),
            Err(WireError::BadId { what: "app", .. })
        ));
        let mut w = schedule_to_wire(&s);
        w.last = Some(pb::ScheduleRun {
            op: 1,
            status: 0,
            began_ms: 0,
        });
        assert!(matches!(
            schedule_from_wire(w),
            Err(WireError::UnknownEnum { .. })
        ));
    }
}
