//! Record states as protobuf enums, both ways. An unspecified or unknown value (a
//! newer or older peer) decodes to an error that names it, never a panic.

pub use proto::agent::wire::{
    mode_from_wire as replication_mode_from_wire, mode_to_wire as replication_mode_to_wire,
};
use topology::SiteRole;

use crate::records::{
    AppState, CommandProgress, DataState, Desired, HostState, OpKind, OpStatus, Role, SiteState,
};

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
both_ways!(
    site_role_to_wire,
    site_role_from_wire,
    "the site role",
    SiteRole,
    SiteRole,
    [Production, Witness]
);
both_ways!(
    desired_to_wire,
    desired_from_wire,
    "the desired app state",
    Desired,
    Desired,
    [Running, Stopped]
);
both_ways!(
    replica_role_to_wire,
    replica_role_from_wire,
    "the replica role",
    Role,
    GroupRole,
    [Primary, Secondary]
);
both_ways!(
    command_progress_to_wire,
    command_progress_from_wire,
    "the command state",
    CommandProgress,
    CommandState,
    [Pending, Succeeded, Failed]
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::wire::WireError;
    use topology::ReplicationMode;

    /// Every value of `all` crosses the wire unchanged; 0 (unspecified) and a value
    /// from a newer peer are refused with an error naming what they were.
    fn round_trip<T: Copy + PartialEq + std::fmt::Debug, P: Into<i32>>(
        all: &[T],
        to: fn(T) -> P,
        from: fn(i32) -> Result<T, WireError>,
    ) {
        for v in all {
            assert_eq!(from(to(*v).into()).unwrap(), *v);
        }
        for unknown in [0, 99, -1] {
            let e = from(unknown).unwrap_err();
            assert!(
                matches!(e, WireError::UnknownEnum { value, .. } if value == unknown),
                "{e}"
            );
        }
    }

    #[test]
    fn every_state_crosses_the_wire_and_an_unknown_one_is_refused() {
        use SiteState as S;
        round_trip(
            &[S::Up, S::Suspect, S::Down],
            site_state_to_wire,
            site_state_from_wire,
        );
        use HostState as H;
        round_trip(
            &[H::Unknown, H::Up, H::Down],
            host_state_to_wire,
            host_state_from_wire,
        );
        use AppState as A;
        round_trip(
            &[
                A::Running,
                A::Degraded,
                A::FailingOver,
                A::Migrating,
                A::Stopped,
                A::Failed,
            ],
            app_state_to_wire,
            app_state_from_wire,
        );
        use DataState as D;
        round_trip(
            &[D::UpToDate, D::Outdated, D::Inconsistent, D::Syncing],
            data_state_to_wire,
            data_state_from_wire,
        );
        use OpKind as K;
        round_trip(
            &[K::Failover, K::Switchover, K::Failback, K::Drill],
            op_kind_to_wire,
            op_kind_from_wire,
        );
        use OpStatus as O;
        round_trip(
            &[
                O::Running,
                O::Succeeded,
                O::Failed,
                O::Aborted,
                O::Interrupted,
            ],
            op_status_to_wire,
            op_status_from_wire,
        );
        round_trip(
            &[SiteRole::Production, SiteRole::Witness],
            site_role_to_wire,
            site_role_from_wire,
        );
        round_trip(
            &[Desired::Running, Desired::Stopped],
            desired_to_wire,
            desired_from_wire,
        );
        round_trip(
            &[Role::Primary, Role::Secondary],
            replica_role_to_wire,
            replica_role_from_wire,
        );
        use CommandProgress as C;
        round_trip(
            &[C::Pending, C::Succeeded, C::Failed],
            command_progress_to_wire,
            command_progress_from_wire,
        );
        round_trip(
            &[ReplicationMode::Sync, ReplicationMode::Async],
            replication_mode_to_wire,
            replication_mode_from_wire,
        );
    }
}
