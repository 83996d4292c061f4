//! What the operator API's states mean, read in one place.
//!
//! The operator gRPC API carries every state as a protobuf enum (a replica's role and
//! data, a volume's mode, a host's, a site's, an app's and a VM's state, the Raft
//! role, a VM action's command state). Everything the lab, the CLI, the tests and the
//! benchmarks decide on or show of such a field goes through the typed accessors here,
//! which decode the wire value into the orchestrator's own enums: `None` is a value
//! this client does not know (UNSPECIFIED, or from a newer server), never a panic.
//! [`shown`] renders a state as the CLI's tables and JSON show it.
//!
//! Never: compare one of those fields with a number or a string anywhere else.

use orchestrator::pb;
use orchestrator::wire;
use serde::Serialize;

pub use orchestrator::state::{
    AppHealth, CommandProgress, DataState, Desired, HostState, Role, SiteState, VmState,
};
pub use orchestrator::wire::{RaftRole, VmReport};
pub use topology::{ReplicationMode, SiteRole};

/// How a client shows a state it could not decode (a newer or older server's).
pub const UNRECOGNIZED: &str = "unrecognized";

/// A state as the CLI shows it: its kebab-case name (`up-to-date`), or
/// [`UNRECOGNIZED`].
pub fn shown<T: Serialize>(v: Option<T>) -> String {
    v.map_or_else(
        || UNRECOGNIZED.to_owned(),
        |v| orchestrator::records::name(&v),
    )
}

/// A replica's role; None for a value this client does not know.
pub fn replica_role(r: &pb::ReplicaStatus) -> Option<Role> {
    wire::replica_role_from_wire(r.role).ok()
}

pub fn is_primary(r: &pb::ReplicaStatus) -> bool {
    replica_role(r) == Some(Role::Primary)
}

/// How good a replica's data is.
pub fn replica_data(r: &pb::ReplicaStatus) -> Option<DataState> {
    wire::data_state_from_wire(r.data).ok()
}

/// Whether the replica holds every acknowledged write (it may be promoted).
pub fn is_up_to_date(r: &pb::ReplicaStatus) -> bool {
    replica_data(r) == Some(DataState::UpToDate)
}

/// A replica a site recovery found behind, as `site recover` shows it:
/// `volume (Outdated)`.
pub fn replica_behind_shown(b: &pb::ReplicaBehind) -> String {
    match wire::data_state_from_wire(b.data) {
        Ok(data) => format!("{} ({data:?})", b.volume),
        Err(_) => format!("{} ({UNRECOGNIZED})", b.volume),
    }
}

/// Whether every replica of every volume in `volumes` is up to date.
pub fn all_up_to_date(volumes: &[pb::VolumeStatus]) -> bool {
    volumes.iter().all(|v| v.replicas.iter().all(is_up_to_date))
}

/// How a volume is replicated.
pub fn volume_mode(v: &pb::VolumeStatus) -> Option<ReplicationMode> {
    wire::replication_mode_from_wire(v.mode).ok()
}

pub fn host_state(h: &pb::HostInfo) -> Option<HostState> {
    wire::host_state_from_wire(h.state).ok()
}

pub fn host_up(h: &pb::HostInfo) -> bool {
    host_state(h) == Some(HostState::Up)
}

/// A host as `status` lists it.
pub fn host_status_state(h: &pb::HostStatus) -> Option<HostState> {
    wire::host_state_from_wire(h.state).ok()
}

pub fn site_state(s: &pb::SiteStatus) -> Option<SiteState> {
    wire::site_state_from_wire(s.state).ok()
}

pub fn site_role(s: &pb::SiteStatus) -> Option<SiteRole> {
    wire::site_role_from_wire(s.role).ok()
}

/// What an app is now (its health); None for a value this client does not know.
pub fn app_health(a: &pb::AppStatus) -> Option<AppHealth> {
    wire::app_health_from_wire(a.health).ok()
}

/// What the operator wants the app to be.
pub fn app_desired(a: &pb::AppStatus) -> Option<Desired> {
    wire::desired_from_wire(a.desired).ok()
}

/// A VM as the cluster reports it; None for a value this client does not know.
pub fn vm_report(v: &pb::VmInfo) -> Option<VmReport> {
    wire::vm_report_from_wire(v.seen).ok()
}

pub fn vm_running(v: &pb::VmInfo) -> bool {
    vm_report(v).is_some_and(VmReport::is_running)
}

/// A VM's state as `vm list` shows it: empty when never reported, `unknown` when its
/// host is down, else the state's name.
pub fn vm_shown(v: &pb::VmInfo) -> String {
    vm_report(v).map_or_else(|| UNRECOGNIZED.to_owned(), |r| r.to_string())
}

/// A node's Raft role (`status`'s `raft_state`).
pub fn raft_role(s: &pb::StatusReply) -> Option<RaftRole> {
    wire::raft_role_from_wire(s.raft_state).ok()
}

/// Whether the answering node leads, by its own account (its Raft role is leader and
/// it names itself).
pub fn leads(s: &pb::StatusReply) -> bool {
    raft_role(s) == Some(RaftRole::Leader) && s.leader == s.node
}

/// Where a VM action (an agent command) stands.
pub fn command_progress(r: &pb::VmActionReply) -> Option<CommandProgress> {
    wire::command_progress_from_wire(r.status).ok()
}

pub fn succeeded(r: &pb::VmActionReply) -> bool {
    command_progress(r) == Some(CommandProgress::Succeeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values the operator service writes, each decoded to its meaning and shown
    /// as the CLI showed it when the API carried strings; unknown values are None.
    #[test]
    fn wire_values_decode_to_their_meaning() {
        let replica = |role: pb::GroupRole, data: pb::DataState| pb::ReplicaStatus {
            role: role.into(),
            data: data.into(),
            ..Default::default()
        };
        let p = replica(pb::GroupRole::Primary, pb::DataState::UpToDate);
        assert!(is_primary(&p) && is_up_to_date(&p));
        assert_eq!(shown(replica_role(&p)), "primary");
        assert_eq!(shown(replica_data(&p)), "up-to-date");
        let s = replica(pb::GroupRole::Secondary, pb::DataState::Syncing);
        assert!(!is_primary(&s));
        assert_eq!(replica_data(&s), Some(DataState::Syncing));
        let newer = pb::ReplicaStatus {
            role: 7,
            data: 0,
            ..Default::default()
        };
        assert_eq!(replica_role(&newer), None);
        assert_eq!(replica_data(&newer), None);
        assert!(!is_up_to_date(&newer));
        assert_eq!(shown(replica_data(&newer)), UNRECOGNIZED);

        let behind = pb::ReplicaBehind {
            volume: "db-data".into(),
            site: "north".into(),
            data: pb::DataState::Outdated.into(),
        };
        assert_eq!(replica_behind_shown(&behind), "db-data (Outdated)");

        let volume = pb::VolumeStatus {
            mode: pb::ReplicationMode::Async.into(),
            ..Default::default()
        };
        assert_eq!(shown(volume_mode(&volume)), "async");

        let vm = |seen| pb::VmInfo {
            seen,
            ..Default::default()
        };
        use pb::vm_info::Seen;
        let running = vm(Some(Seen::State(pb::DomainState::Running.into())));
        assert!(vm_running(&running));
        assert_eq!(vm_shown(&running), "running");
        let off = vm(Some(Seen::State(pb::DomainState::ShutOff.into())));
        assert_eq!(vm_report(&off), Some(VmReport::Reported(VmState::ShutOff)));
        assert_eq!(vm_shown(&off), "shut-off");
        let host_down = vm(Some(Seen::HostDown(pb::DomainState::Running.into())));
        assert!(
            !vm_running(&host_down),
            "a VM on a down host is not known to run"
        );
        assert_eq!(vm_shown(&host_down), "unknown");
        assert_eq!(vm_report(&vm(None)), Some(VmReport::NotReported));
        assert_eq!(vm_shown(&vm(None)), "");
        assert_eq!(vm_report(&vm(Some(Seen::State(42)))), None);

        let host = |state: pb::HostState| pb::HostInfo {
            state: state.into(),
            ..Default::default()
        };
        assert!(host_up(&host(pb::HostState::Up)));
        assert_eq!(
            host_state(&host(pb::HostState::Unknown)),
            Some(HostState::Unknown)
        );
        assert_eq!(shown(host_state(&host(pb::HostState::Down))), "down");
        assert_eq!(host_state(&host(pb::HostState::Unspecified)), None);

        let status = |raft: pb::RaftState, leader: &str| pb::StatusReply {
            node: "a".into(),
            raft_state: raft.into(),
            leader: leader.into(),
            ..Default::default()
        };
        assert!(leads(&status(pb::RaftState::Leader, "a")));
        assert!(
            !leads(&status(pb::RaftState::Leader, "b")),
            "a stale leader names another"
        );
        assert!(!leads(&status(pb::RaftState::Follower, "a")));
        assert!(!leads(&status(pb::RaftState::Unspecified, "a")));
        assert_eq!(
            shown(raft_role(&status(pb::RaftState::Candidate, "a"))),
            "candidate"
        );

        let reply = |s: pb::CommandState| pb::VmActionReply {
            status: s.into(),
            ..Default::default()
        };
        assert!(succeeded(&reply(pb::CommandState::Succeeded)));
        assert_eq!(
            command_progress(&reply(pb::CommandState::Failed)),
            Some(CommandProgress::Failed)
        );
        assert_eq!(
            shown(command_progress(&reply(pb::CommandState::Pending))),
            "pending"
        );
        assert_eq!(
            command_progress(&reply(pb::CommandState::Unspecified)),
            None
        );

        let site = pb::SiteStatus {
            state: pb::SiteState::Suspect.into(),
            role: pb::SiteRole::Witness.into(),
            ..Default::default()
        };
        assert_eq!(site_state(&site), Some(SiteState::Suspect));
        assert_eq!(shown(site_role(&site)), "witness");
        assert_eq!(
            app_health(&pb::AppStatus {
                health: pb::AppHealth::Moving.into(),
                ..Default::default()
            }),
            Some(AppHealth::Moving)
        );
        assert_eq!(app_health(&pb::AppStatus::default()), None);
        let app = pb::AppStatus {
            desired: pb::Desired::Stopped.into(),
            ..Default::default()
        };
        assert_eq!(shown(app_desired(&app)), "stopped");
    }
}
