//! Shared fixtures of the crate's unit tests.
#![allow(clippy::unwrap_used)]

use topology::{HostId, SiteId};

use proto::agent::Served;

use crate::state::{
    AgentAction, ClusterState, Command, CommandOutcome, CommandResult, Executed, HostState,
    Outcome, Request, Response, Role,
};

const LAB: &str = include_str!("../../examples/lab.toml");

pub fn apply(s: &mut ClusterState, at_ms: u64, command: Command) -> Outcome {
    match s.apply(&Request {
        actor: "op-1".into(),
        at_ms,
        command: command.clone(),
    }) {
        Response::Applied { outcome, .. } => outcome,
        r => panic!("{command:?}: {r:?}"),
    }
}

/// The lab with every host up and every replica up to date.
pub fn lab() -> ClusterState {
    let mut s = ClusterState::from_topology(LAB).unwrap();
    let hosts: Vec<HostId> = s.hosts.keys().cloned().collect();
    for host in hosts {
        apply(
            &mut s,
            1,
            Command::SetHostState {
                host,
                state: HostState::Up,
                reason: "test".into(),
                last_seen_ms: None,
            },
        );
    }
    let stale: Vec<(topology::VolumeId, SiteId)> = s
        .volumes
        .values()
        .flat_map(|v| {
            v.replicas
                .iter()
                .filter(|r| r.role == Role::Secondary)
                .map(|r| (v.id.clone(), r.site.clone()))
        })
        .collect();
    for (volume, site) in stale {
        apply(
            &mut s,
            2,
            Command::SetReplicaData {
                volume,
                site,
                data: crate::state::DataState::UpToDate,
            },
        );
    }
    s
}

/// Issue the controller's commands and let the agents succeed, each secondary
/// reporting endpoint 10.0.0.N:7000+id.
pub fn serve_once(s: &mut ClusterState, at_ms: u64) -> Vec<(HostId, AgentAction)> {
    let cmds = crate::controller::reconcile(s, at_ms);
    if cmds.is_empty() {
        return cmds;
    }
    let ids = match apply(
        s,
        at_ms,
        Command::IssueAgentCommands {
            issuer: crate::state::Issuer::Controller,
            commands: cmds.clone(),
        },
    ) {
        crate::state::Outcome::Commands(ids) => ids,
        o => panic!("{o:?}"),
    };
    for ((host, action), id) in cmds.iter().zip(ids) {
        let AgentAction::Serve { group } = action else {
            panic!("the controller only serves: {action:?}")
        };
        apply(
            s,
            at_ms,
            Command::RecordCommandResults {
                host: host.clone(),
                results: vec![CommandResult {
                    id,
                    executed: Executed::done(CommandOutcome::Served(Served {
                        app: group.app.clone(),
                        role: group.role,
                        epoch: group.epoch,
                        endpoint: format!("10.0.0.1:{}", 7000 + id.0),
                        already: false,
                        promoted: false,
                        peer: group.peer.clone(),
                        replaced: None,
                    })),
                }],
            },
        );
    }
    cmds
}
