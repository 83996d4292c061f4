//! What the operator API's states mean, read in one place.
//!
//! The operator gRPC API carries states as strings (a replica's `role` and `data`, a
//! host's, a site's, an app's and a VM's `state`, the Raft role, a VM action's
//! status). Everything the lab, its tests and its benchmarks decide on such a field
//! goes through the typed accessors here, which decode the wire value into the
//! orchestrator's own enums. When the proto carries enums, this module is the one
//! place that changes.
//!
//! Never: compare one of those fields with a string literal anywhere else.

use orchestrator::pb;
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use orchestrator::state::{AppHealth, DataState, HostState, Role, SiteState, VmState};

/// A wire value (a kebab-case name) as the enum it renders.
fn decode<T: DeserializeOwned>(wire: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(wire.to_owned())).ok()
}

/// A replica's role; None for a value this lab does not know.
pub fn replica_role(r: &pb::ReplicaStatus) -> Option<Role> {
    decode(&r.role)
}

pub fn is_primary(r: &pb::ReplicaStatus) -> bool {
    replica_role(r) == Some(Role::Primary)
}

/// How good a replica's data is.
pub fn replica_data(r: &pb::ReplicaStatus) -> Option<DataState> {
    decode(&r.data)
}

/// Whether the replica holds every acknowledged write (it may be promoted).
pub fn is_up_to_date(r: &pb::ReplicaStatus) -> bool {
    replica_data(r) == Some(DataState::UpToDate)
}

/// Whether every replica of every volume in `volumes` is up to date.
pub fn all_up_to_date(volumes: &[pb::VolumeStatus]) -> bool {
    volumes.iter().all(|v| v.replicas.iter().all(is_up_to_date))
}

pub fn host_state(h: &pb::HostInfo) -> Option<HostState> {
    decode(&h.state)
}

pub fn host_up(h: &pb::HostInfo) -> bool {
    host_state(h) == Some(HostState::Up)
}

/// A host as `status` lists it.
pub fn host_status_state(h: &pb::HostStatus) -> Option<HostState> {
    decode(&h.state)
}

pub fn site_state(s: &pb::SiteStatus) -> Option<SiteState> {
    decode(&s.state)
}

/// What an app is now (its health, typed in the API); None for a value this lab does
/// not know.
pub fn app_health(a: &pb::AppStatus) -> Option<AppHealth> {
    orchestrator::wire::app_health_from_wire(a.health).ok()
}

/// A VM as the cluster reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmSeen {
    /// Its agent has not reported it yet.
    #[serde(rename = "")]
    NotReported,
    /// Its host is down: the last report from there says nothing about now.
    #[serde(rename = "unknown")]
    HostDown,
    /// What its agent last reported.
    #[serde(untagged)]
    Reported(VmState),
}

/// A VM's state; None for a value this lab does not know.
pub fn vm_seen(v: &pb::VmInfo) -> Option<VmSeen> {
    decode(&v.state)
}

pub fn vm_running(v: &pb::VmInfo) -> bool {
    vm_seen(v) == Some(VmSeen::Reported(VmState::Running))
}

/// A node's Raft role (`status`'s `raft_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

pub fn raft_role(s: &pb::StatusReply) -> Option<RaftRole> {
    decode(&s.raft_state)
}

/// Whether the answering node leads, by its own account (its Raft role is leader and
/// it names itself).
pub fn leads(s: &pb::StatusReply) -> bool {
    raft_role(s) == Some(RaftRole::Leader) && s.leader == s.node
}

/// Where a VM action (an agent command) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandOutcome {
    Pending,
    Succeeded,
    Failed,
}

pub fn command_outcome(r: &pb::VmActionReply) -> Option<CommandOutcome> {
    decode(&r.status)
}

pub fn succeeded(r: &pb::VmActionReply) -> bool {
    command_outcome(r) == Some(CommandOutcome::Succeeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values the operator service writes today, each decoded to its meaning.
    #[test]
    fn wire_values_decode_to_their_meaning() {
        let replica = |role: &str, data: &str| pb::ReplicaStatus {
            role: role.into(),
            data: data.into(),
            ..Default::default()
        };
        assert!(is_primary(&replica("primary", "up-to-date")));
        assert!(is_up_to_date(&replica("primary", "up-to-date")));
        assert!(!is_primary(&replica("secondary", "outdated")));
        assert_eq!(
            replica_data(&replica("secondary", "syncing")),
            Some(DataState::Syncing)
        );
        assert_eq!(replica_data(&replica("x", "UpToDate")), None);

        let vm = |state: &str| pb::VmInfo {
            state: state.into(),
            ..Default::default()
        };
        assert!(vm_running(&vm("running")));
        assert_eq!(
            vm_seen(&vm("shut-off")),
            Some(VmSeen::Reported(VmState::ShutOff))
        );
        assert_eq!(vm_seen(&vm("unknown")), Some(VmSeen::HostDown));
        assert_eq!(vm_seen(&vm("")), Some(VmSeen::NotReported));
        assert_eq!(vm_seen(&vm("exploded")), None);

        let host = |state: &str| pb::HostInfo {
            state: state.into(),
            ..Default::default()
        };
        assert!(host_up(&host("up")));
        assert_eq!(host_state(&host("unknown")), Some(HostState::Unknown));
        assert_eq!(host_state(&host("down")), Some(HostState::Down));

        let status = |raft: &str, leader: &str| pb::StatusReply {
            node: "a".into(),
            raft_state: raft.into(),
            leader: leader.into(),
            ..Default::default()
        };
        assert!(leads(&status("leader", "a")));
        assert!(
            !leads(&status("leader", "b")),
            "a stale leader names another"
        );
        assert!(!leads(&status("follower", "a")));

        let reply = |s: &str| pb::VmActionReply {
            status: s.into(),
            ..Default::default()
        };
        assert!(succeeded(&reply("succeeded")));
        assert_eq!(
            command_outcome(&reply("failed")),
            Some(CommandOutcome::Failed)
        );
        assert_eq!(
            site_state(&pb::SiteStatus {
                state: "suspect".into(),
                ..Default::default()
            }),
            Some(SiteState::Suspect)
        );
        assert_eq!(
            app_health(&pb::AppStatus {
                health: pb::AppHealth::Moving.into(),
                ..Default::default()
            }),
            Some(AppHealth::Moving)
        );
        assert_eq!(app_health(&pb::AppStatus::default()), None);
    }
}
