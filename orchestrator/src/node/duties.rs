//! The duties a node has besides being a Raft member: leading (host leases, peer
//! health), security (credentials, handshake refusals, the report-signing key) and
//! membership (nodes a forced change removed, this node's halt). Each is its own value
//! with its own locks, handed to what needs it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use security::Refusal;
use topology::Timing;

use crate::leases::LeaseTable;
use crate::network::PeerHealth;
use crate::raft_types::NodeId;
use crate::store::force::Forced;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock is still usable: these hold plain data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a node does while it leads: grant host leases and watch which peers answer.
pub struct LeaderDuties {
    leases: Mutex<LeaseTable>,
    /// Which peers answer Raft RPCs.
    pub health: PeerHealth,
}

impl LeaderDuties {
    pub fn new(t: &Timing, health: PeerHealth) -> LeaderDuties {
        LeaderDuties {
            leases: Mutex::new(LeaseTable::new(
                Duration::from_millis(t.lease_ms),
                Duration::from_millis(t.lease_margin_ms),
            )),
            health,
        }
    }

    /// The lease table (meaningful on the leader only).
    pub fn leases(&self) -> MutexGuard<'_, LeaseTable> {
        lock(&self.leases)
    }
}

/// How often refused handshakes are written to the audit log at most (the first one
/// after a quiet period goes in within a second).
pub const REFUSALS_EVERY: Duration = Duration::from_secs(10);
/// Addresses named per reason in one audit entry.
pub const ADDRS_PER_ENTRY: usize = 5;

/// A node's credentials and what they refused.
pub struct NodeSecurity {
    /// This node's credentials: every connection is mutual TLS and every call is
    /// authorized ([`crate::service::auth`]). None: plain gRPC, no authorization.
    pub tls: Option<Arc<security::Tls>>,
    /// The cluster key that signs reports (the same file on every node); None: this
    /// node cannot sign, and says so when asked for a report.
    pub signing_key: Option<drills::SigningKey>,
    /// Connections refused during the TLS handshake, not yet in the audit log.
    refusals: Mutex<Refusals>,
}

impl NodeSecurity {
    pub fn new(tls: Option<Arc<security::Tls>>, signing_key: Option<drills::SigningKey>) -> Self {
        NodeSecurity {
            tls,
            signing_key,
            refusals: Mutex::default(),
        }
    }

    pub fn refusals(&self) -> MutexGuard<'_, Refusals> {
        lock(&self.refusals)
    }
}

/// Connections refused at the handshake and not yet audited, by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    pending: BTreeMap<String, (u64, BTreeSet<IpAddr>)>,
    last_flush: Option<Instant>,
}

impl Refusals {
    pub fn record(&mut self, r: Refusal) {
        let (count, addrs) = self.pending.entry(r.reason).or_default();
        *count += 1;
        if addrs.len() < ADDRS_PER_ENTRY {
            addrs.insert(r.peer.ip());
        }
    }

    /// The audit entries due now: (reason, how many, from where).
    pub fn due(&mut self, now: Instant) -> Vec<(String, u64, String)> {
        if self.pending.is_empty()
            || self
                .last_flush
                .is_some_and(|t| now.duration_since(t) < REFUSALS_EVERY)
        {
            return Vec::new();
        }
        self.last_flush = Some(now);
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(reason, (count, addrs))| {
                let addrs: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                (reason, count, addrs.join(", "))
            })
            .collect()
    }
}

/// Forced membership changes as this node knows them.
pub struct Membership {
    /// Nodes a forced membership change removed: their Raft RPCs are refused.
    removed: Mutex<BTreeSet<NodeId>>,
    /// Set by `ForceMembership`: the process restarts this node as the only voter.
    pub force: tokio::sync::watch::Sender<Option<Forced>>,
    /// Why this node stopped taking part (another node said it was removed).
    halted: Mutex<Option<String>>,
    /// The Raft log store (for the forced-change record).
    pub log: crate::store::LogStore,
}

impl Membership {
    pub fn new(forced: Option<&Forced>, log: crate::store::LogStore) -> Membership {
        Membership {
            removed: Mutex::new(
                forced
                    .iter()
                    .flat_map(|f| {
                        f.removed
                            .iter()
                            .map(|n| crate::raft_types::node_id_of(&n.name))
                    })
                    .collect(),
            ),
            force: tokio::sync::watch::channel(None).0,
            halted: Mutex::new(None),
            log,
        }
    }

    /// Was `id` removed from the cluster by a forced membership change here?
    pub fn is_removed(&self, id: NodeId) -> bool {
        lock(&self.removed).contains(&id)
    }

    /// `name` is added to the cluster again (wiped, fresh): stop refusing it, here and
    /// in the stored record.
    pub fn readmit(&self, name: &str, node: &str) {
        let id = crate::raft_types::node_id_of(name);
        let was = lock(&self.removed).remove(&id);
        if was && let Ok(Some(mut f)) = self.log.forced() {
            f.removed.retain(|n| n.name != name);
            if let Err(e) = self.log.set_forced(&f) {
                tracing::error!(%node, "cannot record that {name} is readmitted: {e}");
            }
        }
    }

    /// Why this node halted, if it did.
    pub fn halted(&self) -> Option<String> {
        lock(&self.halted).clone()
    }

    /// This node halts: another node said it was removed.
    pub fn halt(&self, why: String) {
        *lock(&self.halted) = Some(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(ip: &str, reason: &str) -> Refusal {
        Refusal {
            peer: format!("{ip}:1000").parse().unwrap(),
            reason: reason.into(),
        }
    }

    #[test]
    fn refusals_are_batched_by_reason_and_rate_limited() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert!(r.due(t0).is_empty());
        for i in 0..20 {
            r.record(refusal(&format!("10.0.0.{i}"), "no certificate"));
        }
        r.record(refusal("10.0.1.1", "another CA"));
        let due = r.due(t0);
        assert_eq!(due.len(), 2);
        let (reason, count, from) = &due[1];
        assert_eq!((reason.as_str(), *count), ("no certificate", 20));
        assert_eq!(from.split(", ").count(), ADDRS_PER_ENTRY);
        // More within the interval wait for the next one, and are all counted then.
        r.record(refusal("10.0.0.1", "no certificate"));
        assert!(r.due(t0 + Duration::from_secs(5)).is_empty());
        r.record(refusal("10.0.0.1", "no certificate"));
        let due = r.due(t0 + REFUSALS_EVERY);
        assert_eq!(due, vec![("no certificate".into(), 2, "10.0.0.1".into())]);
    }
}
