//! Between the orchestrator's typed records and the protobuf messages of the operator
//! API: record states as enums, typed audit events, plans (with their steps and skip
//! reasons), operations (with their steps' typed outcomes and failures), readiness,
//! drill schedules, the timing table. Server and clients (the CLI, the lab) both use these conversions, so
//! nobody parses the other side's prose. Decoding checks every id and enum value and
//! says what is wrong; it never panics.

/// A protobuf enum value that is unknown or unspecified.
pub(crate) fn bad(what: &'static str, value: i32) -> WireError {
    WireError::UnknownEnum { what, value }
}

/// Both directions of one record enum: `$to(v) -> pb`, `$from(i32) -> Result`.
macro_rules! both_ways {
    ($to:ident, $from:ident, $what:literal, $rec:ident, $pb:ident, [$($v:ident),+]) => {
        both_ways!($to, $from, $what, $rec, $pb, [$($v => $v),+]);
    };
    ($to:ident, $from:ident, $what:literal, $rec:ident, $pb:ident, [$($v:ident => $w:ident),+]) => {
        pub fn $to(v: $rec) -> $crate::pb::$pb {
            match v {
                $($rec::$v => $crate::pb::$pb::$w,)+
            }
        }

        pub fn $from(v: i32) -> Result<$rec, $crate::wire::WireError> {
            use $crate::wire::bad;
            match $crate::pb::$pb::try_from(v).map_err(|_| bad($what, v))? {
                $($crate::pb::$pb::$w => Ok($rec::$v),)+
                $crate::pb::$pb::Unspecified => Err(bad($what, v)),
            }
        }
    };
}

mod app;
mod audit;
mod cluster;
mod operation;
mod outcome;
mod plan;
mod readiness;
mod schedule;
mod skip;
mod states;
mod step;
#[cfg(test)]
mod tests;
mod timing;
mod vm;

pub use app::{
    app_health_from_wire, app_health_to_wire, app_reason_from_wire, app_reason_to_wire,
    app_status_from_wire,
};
pub use audit::{audit_event_from_wire, audit_event_to_wire};
pub use cluster::{RaftRole, raft_role_from_wire, raft_role_to_wire};
pub use operation::{
    failure_reason_from_wire, failure_reason_to_wire, operation_from_wire, operation_to_wire,
    reject_kind_from_wire, reject_kind_to_wire, step_from_wire, step_kind_from_wire,
    step_kind_to_wire, step_result_from_wire, step_result_to_wire, step_to_wire,
};
pub use outcome::{
    production_change_from_wire, production_change_to_wire, production_from_wire,
    production_to_wire, step_outcome_from_wire, step_outcome_to_wire, vm_stop_from_wire,
    vm_stop_to_wire,
};
pub use plan::{
    drill_kind_from_wire, drill_kind_to_wire, plan_from_wire, plan_to_wire, trigger_from_wire,
    trigger_to_wire,
};
pub use proto::agent::wire::WireError;
pub use readiness::{penalty_from_wire, penalty_to_wire, readiness_from_wire, readiness_to_wire};
pub use schedule::{schedule_from_wire, schedule_to_wire};
pub use skip::{skip_reason_from_wire, skip_reason_to_wire};
pub use states::*;
pub use step::{
    planned_probe_from_wire, planned_probe_to_wire, planned_step_from_wire, planned_step_to_wire,
};
pub use timing::{timing_from_wire, timing_to_wire};
pub use vm::{VmReport, vm_action_name, vm_report_from_wire, vm_report_to_wire};

/// A checked id from the wire.
pub(crate) fn checked<T>(
    what: &'static str,
    v: String,
    make: fn(String) -> T,
) -> Result<T, WireError> {
    match topology::ids::check_id(&v) {
        Ok(()) => Ok(make(v)),
        Err(why) => Err(WireError::BadId {
            what,
            value: v.chars().take(80).collect(),
            why,
        }),
    }
}
