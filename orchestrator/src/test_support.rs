//! Shared fixtures of the crate's unit tests.
#![allow(clippy::unwrap_used)]

use topology::{HostId, SiteId};

use crate::state::{ClusterState, Command, HostState, Outcome, Request, Response, Role};

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
