//! Record states as protobuf enums, both ways.

use proto::agent::wire::WireError;

use crate::pb;
use crate::records::{AppState, DataState, HostState, OpKind, OpStatus, SiteState};

/// A protobuf enum value that is unknown or unspecified.
fn bad(what: &'static str, value: i32) -> WireError {
    WireError::UnknownEnum { what, value }
}

/// Both directions of one record enum: `$to(v) -> pb`, `$from(i32) -> Result`.
macro_rules! both_ways {
    ($to:ident, $from:ident, $what:literal, $rec:ident, $pb:ident, [$($v:ident),+]) => {
        pub fn $to(v: $rec) -> pb::$pb {
            match v {
                $($rec::$v => pb::$pb::$v,)+
            }
        }

        pub fn $from(v: i32) -> Result<$rec, WireError> {
            match pb::$pb::try_from(v).map_err(|_| bad($what, v))? {
                $(pb::$pb::$v => Ok($rec::$v),)+
                pb::$pb::Unspecified => Err(bad($what, v)),
            }
        }
    };
}

both_ways!(
    site_state_to_wire,
    site_state_from_wire,
    "the site state",
    SiteState,
    SiteState,
    [Up, Suspect, Down]
);
both_ways!(
    host_state_to_wire,
    host_state_from_wire,
    "the host state",
    HostState,
    HostState,
    [Unknown, Up, Down]
);
both_ways!(
    app_state_to_wire,
    app_state_from_wire,
    "the app state",
    AppState,
    AppState,
    [Running, Degraded, FailingOver, Migrating, Stopped, Failed]
);
both_ways!(
    data_state_to_wire,
    data_state_from_wire,
    "the data state",
    DataState,
    DataState,
    [UpToDate, Outdated, Inconsistent, Syncing]
);
both_ways!(
    op_kind_to_wire,
    op_kind_from_wire,
    "the operation kind",
    OpKind,
    OpKind,
    [Failover, Switchover, Failback, Drill]
);
both_ways!(
    op_status_to_wire,
    op_status_from_wire,
    "the operation status",
    OpStatus,
    OpStatus,
    [Running, Succeeded, Failed, Aborted, Interrupted]
);
