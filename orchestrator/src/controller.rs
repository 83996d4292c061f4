//! The data-path controller (topologies with `volumes = "agents"`): on the leader,
//! every executor tick, it compares where each app's volume group should be served
//! with what the agents were told, and issues what is missing (pure: [`reconcile`]).
//!
//! - At the app's active site the replica host serves the group as **primary** at the
//!   group's epoch, streaming to the other site's replica endpoint.
//! - At the other site the replica host serves it as **secondary** on its endpoint (a
//!   port the agent keeps for the group's life, reported in the command's result).
//!
//! An agent that registers again (restarted, or fenced and back) has lost what it
//! served: commands issued before its latest registration no longer count. Apps that
//! an operation is moving are left to the operation (its steps promote and hand over).
//! A primary is only started once the other site's endpoint is known, so that every
//! write is tracked for it; a primary promoted at a surviving site points at the lost
//! site's endpoint, which is how replication comes back after `site recover`.

use std::collections::HashMap;

use topology::spec::{GroupRole, GroupSpec};
use topology::{AppId, HostId, VolumeService};

use crate::state::{
    AgentAction, AgentCommandRecord, ClusterState, CommandStatus, HostState, served_endpoint,
};

/// The actor of the controller's commands.
pub const ACTOR: &str = "metrodr controller";
/// A failed serve command is retried after this long.
pub const RETRY_MS: u64 = 10_000;

/// Per (app, host): the latest serve/unserve command, and the endpoint of the latest
/// successful serve (whenever it ran). One pass over the command table.
struct GroupCommands<'a> {
    latest: HashMap<(AppId, HostId), &'a AgentCommandRecord>,
    endpoints: HashMap<(AppId, HostId), String>,
}

fn group_commands(s: &ClusterState) -> GroupCommands<'_> {
    let mut g = GroupCommands {
        latest: HashMap::new(),
        endpoints: HashMap::new(),
    };
    for c in s.commands.values() {
        let app = match &c.action {
            AgentAction::Serve { group } => &group.app,
            AgentAction::Unserve { app, .. } => app,
            _ => continue,
        };
        let key = (app.clone(), c.host.clone());
        // Ids grow: a later command replaces an earlier one.
        if let Some(ep) = served_endpoint(c, app) {
            g.endpoints.insert(key.clone(), ep);
        }
        g.latest.insert(key, c);
    }
    g
}

/// The serve commands the cluster owes its agents now.
pub fn reconcile(s: &ClusterState, now_ms: u64) -> Vec<(HostId, AgentAction)> {
    let Some(topo) = s.topology() else {
        return Vec::new();
    };
    if topo.model.cluster.volumes != VolumeService::Agents {
        return Vec::new();
    }
    let busy = s.busy_apps();
    let cmds = group_commands(s);
    let latest = &cmds.latest;
    let up = |h: &HostId| s.hosts.get(h).filter(|r| r.state == HostState::Up);
    // Is the latest command for (app, host), issued since the agent registered, a
    // serve that `fits`, and not failed (a failure is retried after RETRY_MS)?
    let served = |app: &AppId, host: &HostId, fits: &dyn Fn(&GroupSpec) -> bool| -> bool {
        let Some(rec) = up(host) else { return false };
        let since = rec.inventory.as_ref().map_or(0, |i| i.registered_ms);
        let Some(c) = latest.get(&(app.clone(), host.clone())) else {
            return false;
        };
        if c.issued_ms < since {
            return false;
        }
        let AgentAction::Serve { group } = &c.action else {
            return false;
        };
        if !fits(group) {
            return false;
        }
        match &c.status {
            CommandStatus::Pending | CommandStatus::Succeeded { .. } => true,
            CommandStatus::Failed { at_ms, .. } => now_ms.saturating_sub(*at_ms) < RETRY_MS,
        }
    };
    let mut out = Vec::new();
    for app in &topo.model.apps {
        if app.volumes.is_empty() || busy.contains(&app.id) {
            continue;
        }
        let (Some(rec), Some(epoch)) = (s.apps.get(&app.id), s.group_epoch(app)) else {
            continue;
        };
        let active = &rec.active_site;
        let Some(other) = topo.model.peer_site(active).map(|x| x.id.clone()) else {
            continue;
        };
        let hp = s.replica_host(app, active);
        let hs = s.replica_host(app, &other);
        if let Some(h) = &hs
            && up(h).is_some()
            && !served(&app.id, h, &|g| {
                g.role == GroupRole::Secondary && g.epoch == epoch
            })
        {
            let spec = GroupSpec::from_model(app, &other, GroupRole::Secondary, epoch);
            out.push((h.clone(), AgentAction::Serve { group: spec }));
        }
        if let Some(h) = &hp
            && up(h).is_some()
            && !served(&app.id, h, &|g| {
                g.role == GroupRole::Primary && g.epoch == epoch
            })
            && let Some(peer) = hs
                .as_ref()
                .and_then(|o| cmds.endpoints.get(&(app.id.clone(), o.clone())).cloned())
        {
            let mut spec = GroupSpec::from_model(app, active, GroupRole::Primary, epoch);
            spec.peer = Some(peer);
            out.push((h.clone(), AgentAction::Serve { group: spec }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, CommandResult, Executed, HostInventory, Request, Response};

    fn lab() -> ClusterState {
        // The lab topology's volumes are served by the agents.
        let text = include_str!("../../examples/lab.toml");
        assert!(text.contains("volumes = \"agents\""));
        let mut s = ClusterState::from_topology(text).expect("the lab applies");
        let hosts: Vec<HostId> = s.hosts.iter().map(|(h, _)| h.clone()).collect();
        for h in hosts {
            register(&mut s, &h, 100);
        }
        s
    }

    fn apply(s: &mut ClusterState, at_ms: u64, command: Command) -> crate::state::Outcome {
        match s.apply(&Request {
            actor: ACTOR.into(),
            at_ms,
            command: command.clone(),
        }) {
            Response::Applied { outcome, .. } => outcome,
            r => panic!("{command:?}: {r:?}"),
        }
    }

    fn register(s: &mut ClusterState, h: &HostId, at_ms: u64) {
        apply(
            s,
            at_ms,
            Command::RegisterHost {
                host: h.clone(),
                inventory: HostInventory {
                    vcpus: 8,
                    memory_bytes: 16 << 30,
                    hypervisor: "test".into(),
                    domain_type: "qemu".into(),
                    agent_version: "t".into(),
                    registered_ms: at_ms,
                },
                fenced: false,
            },
        );
    }

    /// Issue the controller's commands and let the agents succeed.
    fn run(s: &mut ClusterState, at_ms: u64) -> Vec<(HostId, AgentAction)> {
        crate::test_support::serve_once(s, at_ms)
    }

    fn serves(cmds: &[(HostId, AgentAction)]) -> Vec<(String, String, GroupRole, Option<String>)> {
        cmds.iter()
            .filter_map(|(h, a)| match a {
                AgentAction::Serve { group } => Some((
                    group.app.to_string(),
                    h.to_string(),
                    group.role,
                    group.peer.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn secondaries_first_then_primaries_towards_their_endpoints_then_nothing() {
        let mut s = lab();
        let first = serves(&run(&mut s, 1_000));
        assert_eq!(first.len(), 5, "one secondary per app: {first:?}");
        assert!(first.iter().all(|(_, _, r, _)| *r == GroupRole::Secondary));
        let db_secondary = first.iter().find(|x| x.0 == "db").unwrap().1.clone();
        assert!(db_secondary.starts_with("south-"), "{first:?}");
        let second = serves(&run(&mut s, 1_200));
        assert_eq!(second.len(), 5, "{second:?}");
        for (app, host, role, peer) in &second {
            assert_eq!(*role, GroupRole::Primary);
            let placed = s
                .apps
                .get(&AppId::new(app.as_str()))
                .unwrap()
                .placement
                .clone();
            assert!(
                placed.values().all(|h| h.as_str() == host),
                "{app}'s VMs on {host}"
            );
            assert!(
                peer.as_deref().is_some_and(|p| p.starts_with("10.0.0.1:")),
                "{peer:?}"
            );
        }
        assert!(run(&mut s, 1_400).is_empty(), "nothing more once served");
    }

    #[test]
    fn a_reregistered_agent_is_served_again_and_a_down_host_is_not() {
        let mut s = lab();
        run(&mut s, 1_000);
        run(&mut s, 1_200);
        let db = s
            .topology()
            .unwrap()
            .model
            .app(&AppId::new("db"))
            .cloned()
            .unwrap();
        let north = s
            .replica_host(&db, &topology::SiteId::new("north"))
            .unwrap();
        register(&mut s, &north, 2_000);
        let again = serves(&run(&mut s, 2_100));
        assert!(
            again.iter().all(|(_, h, _, _)| h == north.as_str()),
            "{again:?}"
        );
        assert!(
            again
                .iter()
                .any(|(a, _, r, _)| a == "db" && *r == GroupRole::Primary),
            "{again:?}"
        );
        // A host that is down gets nothing, even though its agent registered last.
        register(&mut s, &north, 3_000);
        apply(
            &mut s,
            3_100,
            Command::SetHostState {
                host: north.clone(),
                state: HostState::Down,
                reason: "t".into(),
                last_seen_ms: None,
            },
        );
        let after = serves(&reconcile(&s, 3_200));
        assert!(
            after.iter().all(|(_, h, ..)| h != north.as_str()),
            "{after:?}"
        );
    }

    #[test]
    fn a_failed_serve_is_retried_only_after_a_while() {
        let mut s = lab();
        let cmds = reconcile(&s, 1_000);
        let ids = match apply(
            &mut s,
            1_000,
            Command::IssueAgentCommands {
                issuer: crate::state::Issuer::Controller,
                commands: cmds.clone(),
            },
        ) {
            crate::state::Outcome::Commands(ids) => ids,
            o => panic!("{o:?}"),
        };
        let (host, _) = &cmds[0];
        apply(
            &mut s,
            1_100,
            Command::RecordCommandResults {
                host: host.clone(),
                results: vec![CommandResult {
                    id: ids[0],
                    executed: Executed::failed(proto::agent::FailureKind::Failed, "disk full"),
                }],
            },
        );
        let retried = |at| reconcile(&s, at).iter().filter(|(h, _)| h == host).count();
        assert_eq!(retried(1_200), 0);
        assert_eq!(retried(1_100 + RETRY_MS), 1);
    }

    #[test]
    fn without_agent_served_volumes_the_controller_does_nothing() {
        let text = include_str!("../../examples/lab.toml").replace("volumes = \"agents\"\n", "");
        let s = ClusterState::from_topology(&text).expect("the lab applies");
        assert!(
            s.volumes
                .values()
                .all(|v| v.replicas.iter().all(|r| r.host.is_none()))
        );
        assert!(reconcile(&s, 1_000).is_empty());
    }
}
