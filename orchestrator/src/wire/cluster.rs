//! A node's Raft role on the wire (`StatusReply.raft_state`), both ways. Never: tell a
//! client's code what the role means by its name; clients decide on [`RaftRole`].

use openraft::ServerState;
use serde::Serialize;

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

both_ways!(
    raft_role_to_wire,
    raft_role_from_wire,
    "the Raft state",
    RaftRole,
    RaftState,
    [Leader, Follower, Candidate, Learner, Shutdown]
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::wire::WireError;

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
