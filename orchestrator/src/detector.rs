//! The failure detector: a task on every node that acts only while the node leads.
//! Every 100 ms it applies the lease rules of [`crate::leases`] and commits the
//! transitions they decide — hosts `Down` after `lease + margin` without renewal, sites
//! `Up`/`Suspect`/`Down` — as automatic decisions (actor `metrodr`) in the audit log.
//! It decides nothing itself: the rules are pure and tested in `leases`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use topology::{HostId, SiteId};

use crate::leases::site_states;
use crate::node::Node;
use crate::state::{Command, HostState, Request};

/// How often the detector looks.
pub const TICK: Duration = Duration::from_millis(100);

/// Actor recorded for automatic decisions.
pub const SYSTEM_ACTOR: &str = "metrodr";

pub async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if node.membership.halted().is_none()
            && let Some(why) = node.leader.health.removed()
        {
            halt(&node, why).await;
        }
        let now = node.clock.now();
        let leading = node.is_confirmed_leader();
        let stalled = {
            let mut t = node.leader.leases();
            match (leading, t.is_leader()) {
                (true, false) => {
                    t.became_leader(now);
                    t.note_previous_leader(node.previous_leader_contact());
                }
                (false, true) => t.lost_leadership(),
                _ => {}
            }
            t.tick(now)
        };
        if let Some(gap) = stalled {
            tracing::warn!(
                node = %node.name,
                gap_ms = gap.as_millis() as u64,
                "the failure detector did not run for {} ms (this process was stopped or starved of CPU): every host gets a full lease from now before it can be declared lost",
                gap.as_millis()
            );
        }
        if leading {
            check(&node, now).await;
        }
    }
}

/// Another node refused this one as removed by a forced membership change: stop
/// taking part in Raft (the rest of an old majority must not go on as a cluster).
async fn halt(node: &Node, why: String) {
    let msg = format!(
        "{} halted: it was removed from the cluster by a forced membership change ({why}). \
         Wipe its data directory and add it again with `metrodr cluster add-node`",
        node.name
    );
    tracing::error!(node = %node.name, "{msg}");
    node.membership.halt(msg);
    if let Err(e) = node.raft.shutdown().await {
        tracing::warn!(node = %node.name, "raft shutdown: {e}");
    }
}

async fn commit(node: &Node, command: Command) {
    let req = Request {
        actor: SYSTEM_ACTOR.into(),
        at_ms: node.clock.now_ms(),
        command,
    };
    if let Err(e) = node.write(req).await {
        tracing::warn!(node = %node.name, "detector could not commit a transition: {}", e.message());
    }
}

async fn check(node: &Node, now: Instant) {
    // Hosts that lost their lease.
    let (lost, deadline): (Vec<(HostId, u64, Option<u64>)>, u64) = {
        let a = node.state.read();
        let t = node.leader.leases();
        let up: Vec<&HostId> = a
            .state
            .hosts
            .values()
            .filter(|h| h.state == HostState::Up)
            .map(|h| &h.id)
            .collect();
        let lost = t
            .expired(now, up)
            .into_iter()
            .map(|h| {
                let ms = t.silence(&h, now).map_or(0, |d| d.as_millis() as u64);
                let seen = t.last_alive(&h).map(|at| {
                    node.clock
                        .now_ms()
                        .saturating_sub(now.saturating_duration_since(at).as_millis() as u64)
                });
                (h, ms, seen)
            })
            .collect();
        (lost, t.deadline().as_millis() as u64)
    };
    for (host, silent_ms, last_seen_ms) in lost {
        tracing::warn!(node = %node.name, host = %host, silent_ms, "host lost its lease");
        commit(
            node,
            Command::SetHostState {
                host,
                state: HostState::Down,
                reason: format!(
                    "no lease renewal for {silent_ms} ms (lease + margin = {deadline} ms)"
                ),
                last_seen_ms,
            },
        )
        .await;
    }

    // Site states, once this leader has led for a full lease (before that, nodes it
    // has not heard from yet may simply not have been asked).
    if !node.leader.leases().settled(now) {
        return;
    }
    let changes: Vec<(SiteId, crate::state::SiteState, String)> = {
        let a = node.state.read();
        let membership = a.membership.membership().clone();
        let limit = node.leader.leases().deadline();
        let reachable = |site: &SiteId| -> Option<bool> {
            let here: Vec<_> = membership
                .nodes()
                .filter(|(_, info)| info.site == site.as_str())
                .map(|(id, _)| *id)
                .collect();
            if here.is_empty() {
                return None;
            }
            Some(here.iter().any(|id| {
                *id == node.id
                    || node
                        .leader
                        .health
                        .silence(*id, now)
                        .is_some_and(|s| s <= limit)
            }))
        };
        site_states(&a.state, reachable)
            .into_iter()
            .filter(|(site, st, _)| a.state.sites.get(site).is_some_and(|r| r.state != *st))
            .collect()
    };
    for (site, state, reason) in changes {
        tracing::warn!(node = %node.name, site = %site, ?state, "site state changes: {reason}");
        commit(
            node,
            Command::SetSiteState {
                site,
                state,
                reason,
            },
        )
        .await;
    }
}
