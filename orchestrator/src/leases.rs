//! Host leases and site states, as decided on the leader (DESIGN §4). Pure: callers
//! pass the clock in, so every rule is tested without waiting.
//!
//! - A host's agent renews its lease every `lease_renew_ms`; the leader records when it
//!   *granted* each renewal, on its own monotonic clock. The agent counts its lease from
//!   when it *sent* the request, so the agent's lease always ends first.
//! - A host is lost when no renewal was granted for `lease_ms + lease_margin_ms`.
//! - A newly elected leader knows no grant: it counts every host's last grant as its own
//!   election time, which makes it wait at least one full lease before declaring a host
//!   lost (the agent may have renewed with the old leader just before it died).
//! - A site is `Down` when every orchestrator node there is unreachable and none of its
//!   hosts is up; `Suspect` when something there is unreachable; `Up` otherwise.
//!
//! This table lives only in the leader's memory (chatty data stays out of Raft); the
//! transitions it decides are committed to Raft and audited by the detector.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use topology::{HostId, SiteId, SiteRole};

use crate::state::{ClusterState, HostState, SiteState};

#[derive(Debug, Clone)]
pub struct LeaseTable {
    pub lease: Duration,
    pub margin: Duration,
    /// When this node became leader; None while it is not leader.
    leader_since: Option<Instant>,
    grants: HashMap<HostId, Instant>,
    /// When this node last heard from the previous leader before it became leader:
    /// hosts may have renewed there until about then.
    previous_leader_seen: Option<Instant>,
    /// When the detector last looked (see [`Self::tick`]).
    last_tick: Option<Instant>,
    /// When this leader resumed watching after not running for longer than half a
    /// lease: no lease counts as run out before a full lease plus margin from here.
    resumed: Option<Instant>,
}

impl LeaseTable {
    pub fn new(lease: Duration, margin: Duration) -> Self {
        LeaseTable {
            lease,
            margin,
            leader_since: None,
            grants: HashMap::new(),
            previous_leader_seen: None,
            last_tick: None,
            resumed: None,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader_since.is_some()
    }

    /// This node just became leader: forget any earlier grants (they may be stale).
    pub fn became_leader(&mut self, now: Instant) {
        self.leader_since = Some(now);
        self.grants.clear();
        self.previous_leader_seen = None;
        self.resumed = None;
    }

    /// When this node last heard from the previous leader (for [`Self::last_alive`]).
    pub fn note_previous_leader(&mut self, seen: Option<Instant>) {
        self.previous_leader_seen = seen;
    }

    /// The latest moment `host` is known to have held a lease: its last renewal by this
    /// leader or, if it never renewed here, the last time this node heard from the
    /// previous leader (where it may have renewed). Used for the failover record only;
    /// it is never later than the truth, so an RTO measured from it is not understated.
    pub fn last_alive(&self, host: &HostId) -> Option<Instant> {
        let since = self.leader_since?;
        Some(
            self.grants
                .get(host)
                .copied()
                .or(self.previous_leader_seen)
                .unwrap_or(since),
        )
    }

    pub fn lost_leadership(&mut self) {
        self.leader_since = None;
        self.grants.clear();
        self.resumed = None;
    }

    /// The detector looks at `now`. When it had not looked for more than half a lease
    /// while this node leads (its process was stopped or starved of CPU), hosts could
    /// not renew here meanwhile: their renewals waited on a leader that did not run.
    /// Their silence then counts from `now`, so none is declared lost before it had a
    /// full lease plus margin to renew with a leader that runs; returns the gap. (It
    /// only delays a loss: an agent fences on its own lease clock either way.)
    pub fn tick(&mut self, now: Instant) -> Option<Duration> {
        let gap = self.last_tick.map(|t| now.saturating_duration_since(t));
        self.last_tick = Some(now);
        let gap = gap.filter(|g| self.leader_since.is_some() && *g > self.lease / 2)?;
        self.resumed = Some(now);
        Some(gap)
    }

    /// Record a renewal granted now. Refused (false) when this node is not leader.
    pub fn grant(&mut self, host: &HostId, now: Instant) -> bool {
        if self.leader_since.is_none() {
            return false;
        }
        self.grants.insert(host.clone(), now);
        true
    }

    /// Time since the host's lease was last renewed by this leader (or since this node
    /// became leader, if never, or resumed watching after a stall, if later).
    pub fn silence(&self, host: &HostId, now: Instant) -> Option<Duration> {
        let since = self.leader_since?;
        let last = self.grants.get(host).copied().unwrap_or(since).max(since);
        let last = self.resumed.map_or(last, |r| last.max(r));
        Some(now.saturating_duration_since(last))
    }

    /// When a host's lease is considered gone for good.
    pub fn deadline(&self) -> Duration {
        self.lease + self.margin
    }

    /// The hosts among `up` whose lease ended (with margin) without renewal.
    pub fn expired<'a>(
        &self,
        now: Instant,
        up: impl IntoIterator<Item = &'a HostId>,
    ) -> Vec<HostId> {
        up.into_iter()
            .filter(|h| self.silence(h, now).is_some_and(|s| s > self.deadline()))
            .cloned()
            .collect()
    }

    /// Whether `now` is at least one full lease after this node became leader (before
    /// that, an old leader's grants may still be running).
    pub fn settled(&self, now: Instant) -> bool {
        self.leader_since
            .is_some_and(|s| now.saturating_duration_since(s) >= self.lease)
    }
}

/// The state every site should have now, with a reason, given whether the
/// orchestrator node(s) of each site are reachable (`None`: the site has none).
pub fn site_states(
    state: &ClusterState,
    node_reachable: impl Fn(&SiteId) -> Option<bool>,
) -> Vec<(SiteId, SiteState, String)> {
    let mut out = Vec::new();
    for site in state.sites.values() {
        let reachable = node_reachable(&site.id);
        let orch_lost = reachable == Some(false);
        let hosts: Vec<HostState> = state
            .hosts
            .values()
            .filter(|h| h.site == site.id)
            .map(|h| h.state)
            .collect();
        let up = hosts.iter().filter(|s| **s == HostState::Up).count();
        let down = hosts.iter().filter(|s| **s == HostState::Down).count();
        let (st, why) = match site.role {
            SiteRole::Witness if orch_lost => (
                SiteState::Down,
                "its orchestrator node is unreachable".to_string(),
            ),
            SiteRole::Witness => (
                SiteState::Up,
                "its orchestrator node is reachable".to_string(),
            ),
            SiteRole::Production if orch_lost && up == 0 => (
                SiteState::Down,
                format!(
                    "its orchestrator node is unreachable and none of its {} hosts is up",
                    hosts.len()
                ),
            ),
            SiteRole::Production if orch_lost => (
                SiteState::Suspect,
                format!(
                    "its orchestrator node is unreachable ({up} of {} hosts up)",
                    hosts.len()
                ),
            ),
            SiteRole::Production if down > 0 => (
                SiteState::Suspect,
                format!("{down} of {} hosts lost their lease", hosts.len()),
            ),
            SiteRole::Production => (SiteState::Up, "reachable".to_string()),
        };
        out.push((site.id.clone(), st, why));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(3000);
    const MARGIN: Duration = Duration::from_millis(500);

    fn h(s: &str) -> HostId {
        HostId::new(s)
    }

    #[test]
    fn a_leader_that_did_not_run_for_half_a_lease_gives_every_host_a_full_lease_again() {
        let mut t = LeaseTable::new(LEASE, MARGIN);
        let t0 = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        assert_eq!(t.tick(t0), None, "the first look");
        assert_eq!(
            t.tick(t0 + ms(5000)),
            None,
            "a follower's gap does not matter"
        );
        t.became_leader(t0 + ms(5000));
        t.grant(&h("a"), t0 + ms(5000));
        // Normal ticks: nothing changes; a silent host runs out after lease + margin.
        let mut now = t0 + ms(5000);
        while now < t0 + ms(8600) {
            now += ms(100);
            assert_eq!(t.tick(now), None);
        }
        assert_eq!(t.expired(now, [&h("a")]), vec![h("a")]);
        // A stall of 4.5 s (SIGSTOP): on resuming, nobody is lost yet...
        t.grant(&h("a"), now);
        t.grant(&h("b"), now);
        let resumed = now + ms(4500);
        assert_eq!(t.tick(resumed), Some(ms(4500)));
        assert!(t.expired(resumed, [&h("a"), &h("b")]).is_empty());
        // ...the last grant is still what the record counts from...
        assert_eq!(t.last_alive(&h("a")), Some(now));
        // ...one that renews stays, one that stays silent is lost a lease + margin on.
        t.grant(&h("a"), resumed + ms(1000));
        let mut later = resumed;
        while later < resumed + ms(3600) {
            later += ms(100);
            assert_eq!(t.tick(later), None);
        }
        assert_eq!(t.expired(later, [&h("a"), &h("b")]), vec![h("b")]);
        // Half a lease is not a stall; just over it is.
        assert_eq!(t.tick(later + ms(1500)), None);
        assert_eq!(t.tick(later + ms(3001)), Some(ms(1501)));
    }

    #[test]
    fn a_host_was_last_alive_at_its_grant_or_when_the_old_leader_was_last_heard() {
        let mut t = LeaseTable::new(LEASE, MARGIN);
        let t0 = Instant::now();
        let old = t0 - Duration::from_millis(1200);
        assert_eq!(t.last_alive(&h("a")), None, "a follower knows nothing");
        t.became_leader(t0);
        assert_eq!(
            t.last_alive(&h("a")),
            Some(t0),
            "nothing heard before: since leading"
        );
        t.note_previous_leader(Some(old));
        assert_eq!(
            t.last_alive(&h("a")),
            Some(old),
            "it may have renewed at the old leader"
        );
        t.grant(&h("b"), t0 + Duration::from_millis(500));
        assert_eq!(t.last_alive(&h("b")), Some(t0 + Duration::from_millis(500)));
        t.became_leader(t0 + Duration::from_secs(10));
        assert_eq!(
            t.last_alive(&h("b")),
            Some(t0 + Duration::from_secs(10)),
            "a new term forgets"
        );
    }

    #[test]
    fn a_follower_grants_nothing_and_declares_nothing() {
        let mut t = LeaseTable::new(LEASE, MARGIN);
        let now = Instant::now();
        assert!(!t.grant(&h("a"), now));
        assert!(
            t.expired(now + Duration::from_secs(100), [&h("a")])
                .is_empty()
        );
    }

    #[test]
    fn a_host_is_lost_only_after_lease_plus_margin_without_renewal() {
        let mut t = LeaseTable::new(LEASE, MARGIN);
        let t0 = Instant::now();
        t.became_leader(t0);
        t.grant(&h("a"), t0);
        let a = h("a");
        for ms in [0, 1000, 3000, 3499, 3500] {
            assert!(
                t.expired(t0 + Duration::from_millis(ms), [&a]).is_empty(),
                "{ms} ms"
            );
        }
        assert_eq!(
            t.expired(t0 + Duration::from_millis(3501), [&a]),
            vec![a.clone()]
        );
        // A renewal resets the clock.
        t.grant(&a, t0 + Duration::from_millis(3000));
        assert!(t.expired(t0 + Duration::from_millis(6000), [&a]).is_empty());
    }

    #[test]
    fn a_new_leader_waits_a_full_lease_before_declaring_anyone_lost() {
        let mut t = LeaseTable::new(LEASE, MARGIN);
        let t0 = Instant::now();
        t.became_leader(t0);
        let never_seen = h("b");
        assert!(!t.settled(t0 + Duration::from_millis(2999)));
        assert!(t.settled(t0 + LEASE));
        // Never granted by this leader: counted from the election.
        assert!(
            t.expired(t0 + Duration::from_millis(3500), [&never_seen])
                .is_empty()
        );
        assert_eq!(
            t.expired(t0 + Duration::from_millis(3501), [&never_seen])
                .len(),
            1
        );
        // Losing and regaining leadership starts over.
        t.lost_leadership();
        let t1 = t0 + Duration::from_secs(10);
        t.became_leader(t1);
        assert!(
            t.expired(t1 + Duration::from_millis(3000), [&never_seen])
                .is_empty()
        );
    }

    #[test]
    fn grants_from_before_an_election_do_not_count() {
        let mut t = LeaseTable::new(LEASE, MARGIN);
        let t0 = Instant::now();
        t.became_leader(t0);
        t.grant(&h("a"), t0);
        t.lost_leadership();
        assert_eq!(t.silence(&h("a"), t0), None);
    }
}
