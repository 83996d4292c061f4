//! A node's Raft role on the wire (`StatusReply.raft_state`), both ways. Never: tell a
//! client's code what the role means by its name; clients decide on [`RaftRole`].

use openraft::ServerState;
use serde::Serialize;

use super::WireError;
use crate::pb;

/// A node's Raft role, by its own account. Its name (`leader`, …) is what the CLI
/// shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl From<ServerState> for RaftRole {
    fn from(s: ServerState) -> RaftRole {
        match s {
            ServerState::Leader => RaftRole::Leader,
            ServerState::Follower => RaftRole::Follower,
            ServerState::Candidate => RaftRole::Candidate,
            ServerState::Learner => RaftRole::Learner,
            ServerState::Shutdown => RaftRole::Shutdown,
        }
    }
}

pub fn raft_role_to_wire(r: RaftRole) -> pb::RaftState {
    match r {
        RaftRole::Leader => pb::RaftState::Leader,
        RaftRole::Follower => pb::RaftState::Follower,
        RaftRole::Candidate => pb::RaftState::Candidate,
        RaftRole::Learner => pb::RaftState::Learner,
        RaftRole::Shutdown => pb::RaftState::Shutdown,
    }
}

pub fn raft_role_from_wire(v: i32) -> Result<RaftRole, WireError> {
    let bad = WireError::UnknownEnum {
        what: "the Raft state",
        value: v,
    };
    Ok(match pb::RaftState::try_from(v).map_err(|_| bad.clone())? {
        pb::RaftState::Unspecified => return Err(bad),
        pb::RaftState::Leader => RaftRole::Leader,
        pb::RaftState::Follower => RaftRole::Follower,
        pb::RaftState::Candidate => RaftRole::Candidate,
        pb::RaftState::Learner => RaftRole::Learner,
        pb::RaftState::Shutdown => RaftRole::Shutdown,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_raft_role_crosses_the_wire_and_shows_its_old_name() {
        let all = [
            (ServerState::Leader, "leader"),
            (ServerState::Follower, "follower"),
            (ServerState::Candidate, "candidate"),
            (ServerState::Learner, "learner"),
            (ServerState::Shutdown, "shutdown"),
        ];
        for (s, shown) in all {
            let r = RaftRole::from(s);
            assert_eq!(raft_role_from_wire(raft_role_to_wire(r).into()).unwrap(), r);
            // The name the API carried as a string before.
            assert_eq!(format!("{s:?}").to_lowercase(), shown);
            assert_eq!(crate::records::name(&r), shown);
        }
        for unknown in [0, 6, -3] {
            assert!(matches!(
                raft_role_from_wire(unknown),
                Err(WireError::UnknownEnum { value, .. }) if value == unknown
            ));
        }
    }
}
