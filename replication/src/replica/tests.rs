//! Unit tests of the decisions, and a model of two replicas (data as one version number
//! per region) driven by random writes, partitions, crashes, degradation, failovers and
//! reconnects through the pure functions above. After every step: no acknowledged
//! write is missing at the committed primary, no two primaries share an epoch, epochs
//! never go down, and a completed resync leaves both copies identical.

use std::collections::{BTreeMap, BTreeSet};

use ids::Generation;
use proptest::prelude::*;

use super::*;
use crate::frame::VolumeInfo;

fn vols() -> Vec<VolumeInfo> {
    vec![VolumeInfo {
        id: "v".into(),
        size: 8 << 20,
    }]
}

fn hello() -> Hello {
    Hello {
        group: "g".into(),
        volumes: vols(),
        generation: Generation::new("x"),
        history: vec![],
        mode: "sync".into(),
        resend_from: GroupSeq(1),
    }
}

#[test]
fn a_secondary_refuses_lower_epochs_and_a_second_primary() {
    let mut m = ReplicaMeta::new("v", 8 << 20, Role::Secondary, Epoch(5));
    assert_eq!(
        accept_hello(&m, &vols(), Epoch(4), &hello()),
        HelloDecision::Reject(Refusal::StaleEpoch {
            epoch: Epoch(4),
            seen: Epoch(5)
        })
    );
    assert_eq!(
        accept_hello(&m, &vols(), Epoch(5), &hello()),
        HelloDecision::Accept {
            epoch: Epoch(5),
            demoted: false
        }
    );
    m.role = Role::Primary;
    assert_eq!(
        accept_hello(&m, &vols(), Epoch(5), &hello()),
        HelloDecision::Reject(Refusal::TwoPrimaries { epoch: Epoch(5) })
    );
    assert_eq!(
        accept_hello(&m, &vols(), Epoch(6), &hello()),
        HelloDecision::Accept {
            epoch: Epoch(6),
            demoted: true
        }
    );
    let mut h = hello();
    h.volumes[0].size += 1;
    assert_eq!(
        accept_hello(&m, &vols(), Epoch(6), &h),
        HelloDecision::Reject(Refusal::VolumesDiffer {
            offered: h.volumes.clone(),
            held: vols()
        })
    );
}

#[test]
fn promotion_needs_a_higher_epoch_and_consistent_data() {
    let m = ReplicaMeta::new("v", 8 << 20, Role::Secondary, Epoch(3));
    assert_eq!(
        promote(&m, Epoch(4)),
        Err(RoleError::Inconsistent),
        "a never-synced secondary"
    );
    let mut m = m;
    m.consistent = true;
    assert!(matches!(
        promote(&m, Epoch(3)),
        Err(RoleError::StaleEpoch { .. })
    ));
    let p = promote(&m, Epoch(4)).unwrap();
    assert_eq!(
        (p.role, p.epoch, p.peer_outdated),
        (Role::Primary, Epoch(4), true)
    );
    assert_eq!(
        p.history.last(),
        Some(&m.generation),
        "a new generation starts"
    );
    assert!(demote(&p, Epoch(3)).is_err());
    assert_eq!(demote(&p, Epoch(4)).unwrap().role, Role::Secondary);
}

#[test]
fn resync_plans_follow_the_generations() {
    let mut m = ReplicaMeta::new("v", 8 << 20, Role::Primary, Epoch(1));
    let changed: BTreeSet<u32> = [2, 5].into();
    let reply = |generation: &Generation, last_seq, consistent| HelloReply {
        epoch: Epoch(1),
        generation: generation.clone(),
        history: vec![],
        last_seq: GroupSeq(last_seq),
        consistent,
        own_regions: vec![],
    };
    let view = |m: &ReplicaMeta, tracked: Option<Generation>, resend_from| {
        let mut m = m.clone();
        m.tracked_since = tracked;
        (m, GroupSeq(resend_from))
    };
    let plan = |v: &(ReplicaMeta, GroupSeq), r: &HelloReply| {
        plan_resync(
            &PrimaryView {
                meta: &v.0,
                changed: &changed,
                resend_from: v.1,
            },
            r,
        )
    };
    let g0 = m.generation.clone();
    // Same generation, buffer reaches back: replay.
    assert_eq!(
        plan(&view(&m, None, 10), &reply(&g0, 9, true)),
        ResyncPlan::Replay { from: GroupSeq(10) }
    );
    // Same generation and the buffer reaches back, but this primary still holds the
    // peer outdated (the end of a resync the peer finished was never confirmed here):
    // the dirty regions are compared, so the resync's end clears the bitmap.
    let mut outdated = m.clone();
    outdated.peer_outdated = true;
    assert_eq!(
        plan(&view(&outdated, None, 10), &reply(&g0, 9, true)),
        ResyncPlan::Regions(changed.clone())
    );
    // Same generation, buffer does not reach back: the changed regions.
    assert_eq!(
        plan(&view(&m, None, 10), &reply(&g0, 3, true)),
        ResyncPlan::Regions(changed.clone())
    );
    // An incomplete secondary: everything.
    assert_eq!(
        plan(&view(&m, None, 1), &reply(&g0, 9, false)),
        ResyncPlan::Full
    );
    // The primary went on alone (new generation) and tracked since: the bitmap covers it.
    m.bump_generation();
    let tracked = Some(m.generation.clone());
    assert_eq!(
        plan(&view(&m, tracked.clone(), 1), &reply(&g0, 9, true)),
        ResyncPlan::Regions(changed.clone())
    );
    // Two generations later with tracking from the newest only: the gap is not covered.
    m.bump_generation();
    assert_eq!(
        plan(
            &view(&m, Some(m.generation.clone()), 1),
            &reply(&g0, 9, true)
        ),
        ResyncPlan::Full
    );
    // But tracking since the middle one covers it.
    assert_eq!(
        plan(&view(&m, tracked, 1), &reply(&g0, 9, true)),
        ResyncPlan::Regions(changed.clone())
    );
    // A generation the primary never had: diverged.
    assert_eq!(
        plan(
            &view(&m, None, 1),
            &reply(&Generation::new("alien"), 9, true)
        ),
        ResyncPlan::Full
    );
    // The secondary's own in-flight regions (an old primary) are added.
    let mut r = reply(&m.generation, 9, true);
    r.own_regions = vec![(0, vec![7])];
    assert_eq!(
        plan(&view(&m, None, 1), &r),
        ResyncPlan::Regions([2, 5, 7].into())
    );
}

#[test]
fn sync_writes_wait_for_the_peer_unless_it_was_outdated() {
    let s = GroupSeq;
    assert!(!may_ack(Mode::Sync, true, s(4), s(5), false));
    assert!(may_ack(Mode::Sync, true, s(5), s(5), false));
    assert!(may_ack(Mode::Sync, true, s(0), s(5), true));
    assert!(
        !may_ack(Mode::Sync, false, s(9), s(5), true),
        "never before the local write"
    );
    assert!(may_ack(Mode::Async, true, s(0), s(5), false));
}

// ---- the model -------------------------------------------------------------------

const REGIONS: u32 = 4;
/// Regions the model's activity log holds (the engine's holds many more).
const AL_CAPACITY: usize = 2;

#[derive(Debug, Clone)]
struct Node {
    meta: ReplicaMeta,
    data: Vec<u64>,
    /// The activity log: most recent last, bounded like the engine's (a region with a
    /// pending write is never evicted).
    al: Vec<u32>,
    bitmap: BTreeSet<u32>,
    up: bool,
    /// A primary's last sequence number in its current run (runs restart from the
    /// persisted `last_seq`, as the engine's do).
    seq: GroupSeq,
    /// Writes applied locally but not acknowledged (waiting for the peer).
    pending: Vec<(u32, u64)>,
}

impl Node {
    /// A write to `r` is about to be issued (it is busy from now until acknowledged).
    fn touch(&mut self, r: u32) {
        self.al.retain(|x| *x != r);
        self.al.push(r);
        if self.al.len() > AL_CAPACITY
            && let Some(i) = self
                .al
                .iter()
                .position(|x| *x != r && !self.pending.iter().any(|(p, _)| p == x))
        {
            self.al.remove(i);
        }
    }
}

#[derive(Debug, Clone)]
struct World {
    nodes: [Node; 2],
    partitioned: bool,
    connected: bool,
    /// The orchestrator's view: which node is primary at which epoch.
    committed_primary: usize,
    committed_epoch: Epoch,
    /// Latest acknowledged value per region (what RPO = 0 must preserve).
    acked: BTreeMap<u32, u64>,
    next_value: u64,
}

#[derive(Debug, Clone)]
enum Ev {
    Write(u32),
    Partition,
    Heal,
    Crash(usize),
    Restart(usize),
    Degrade,
    Failover,
    Connect,
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        6 => (0..REGIONS).prop_map(Ev::Write),
        1 => Just(Ev::Partition),
        2 => Just(Ev::Heal),
        1 => (0usize..2).prop_map(Ev::Crash),
        2 => (0usize..2).prop_map(Ev::Restart),
        1 => Just(Ev::Degrade),
        1 => Just(Ev::Failover),
        3 => Just(Ev::Connect),
    ]
}

impl World {
    fn new() -> World {
        let mut p = ReplicaMeta::new("v", 8 << 20, Role::Primary, Epoch(1));
        p.region_size = 2 << 20;
        let mut s = p.clone();
        s.role = Role::Secondary;
        let node = |meta| Node {
            meta,
            data: vec![0; REGIONS as usize],
            al: Vec::new(),
            bitmap: BTreeSet::new(),
            up: true,
            seq: GroupSeq(0),
            pending: Vec::new(),
        };
        World {
            nodes: [node(p), node(s)],
            partitioned: false,
            connected: true,
            committed_primary: 0,
            committed_epoch: Epoch(1),
            acked: BTreeMap::new(),
            next_value: 1,
        }
    }

    fn step(&mut self, e: &Ev) {
        match *e {
            Ev::Write(r) => {
                // Any node that believes it is primary accepts writes (a stale one too).
                for i in 0..2 {
                    let n = &self.nodes[i];
                    if !(n.up && n.meta.role == Role::Primary) {
                        continue;
                    }
                    let v = self.next_value;
                    self.next_value += 1;
                    let n = &mut self.nodes[i];
                    n.seq = n.seq.next();
                    let seq = n.seq;
                    n.touch(r);
                    if n.meta.peer_outdated {
                        n.bitmap.insert(r);
                    }
                    n.data[r as usize] = v;
                    let peer_has_it = self.connected && i == self.committed_primary;
                    if peer_has_it {
                        self.nodes[1 - i].data[r as usize] = v;
                        self.nodes[1 - i].meta.last_seq = seq;
                    }
                    let n = &mut self.nodes[i];
                    if may_ack(
                        Mode::Sync,
                        true,
                        if peer_has_it { seq } else { GroupSeq(0) },
                        seq,
                        n.meta.peer_outdated,
                    ) {
                        self.acked.insert(r, v);
                    } else {
                        n.pending.push((r, v));
                    }
                    break;
                }
            }
            Ev::Partition => {
                self.partitioned = true;
                self.connected = false;
            }
            Ev::Heal => self.partitioned = false,
            Ev::Crash(i) => {
                self.nodes[i].up = false;
                self.nodes[i].pending.clear(); // never acknowledged
                self.connected = false;
            }
            Ev::Restart(i) => {
                if !self.nodes[i].up {
                    self.start(i);
                }
            }
            Ev::Degrade => {
                // Only the committed primary gets permission, only when disconnected.
                let i = self.committed_primary;
                if self.connected
                    || !self.nodes[i].up
                    || self.nodes[i].meta.role != Role::Primary
                    || self.nodes[i].meta.peer_outdated
                {
                    return;
                }
                let n = &mut self.nodes[i];
                n.meta = degrade(&n.meta);
                for (r, v) in std::mem::take(&mut n.pending) {
                    n.bitmap.insert(r);
                    self.acked.insert(r, v);
                }
            }
            Ev::Failover => {
                // The orchestrator promotes the other node when the primary is gone,
                // and only if that node was not committed outdated.
                let old = self.committed_primary;
                let new = 1 - old;
                let unreachable = !self.nodes[old].up || self.partitioned;
                if !unreachable || !self.nodes[new].up || self.nodes[old].meta.peer_outdated {
                    return;
                }
                let epoch = self.committed_epoch.next();
                let Ok(m) = promote(&self.nodes[new].meta, epoch) else {
                    return;
                };
                let n = &mut self.nodes[new];
                n.meta = m;
                n.bitmap.clear();
                // The promoted replica is restarted as a primary (a new run).
                self.start(new);
                self.committed_primary = new;
                self.committed_epoch = epoch;
                self.connected = false;
            }
            Ev::Connect => self.connect(),
        }
    }

    /// A node's process starts: a primary folds its activity log into the bitmap and
    /// starts a run; its sequence numbers restart from what its metadata recorded.
    fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.up = true;
        n.seq = n.meta.last_seq;
        if n.meta.role == Role::Primary {
            let al = n.al.clone();
            n.bitmap.extend(al);
            n.meta = start_run(&n.meta);
        }
    }

    fn connect(&mut self) {
        let p = self.committed_primary;
        let s = 1 - p;
        if self.connected
            || self.partitioned
            || !self.nodes[p].up
            || !self.nodes[s].up
            || self.nodes[p].meta.role != Role::Primary
        {
            return;
        }
        let hello = Hello {
            group: "g".into(),
            volumes: vols(),
            generation: self.nodes[p].meta.generation.clone(),
            history: self.nodes[p].meta.history.clone(),
            mode: "sync".into(),
            resend_from: self.nodes[p].seq.next(),
        };
        match accept_hello(
            &self.nodes[s].meta,
            &vols(),
            self.nodes[p].meta.epoch,
            &hello,
        ) {
            HelloDecision::Reject(_) => return,
            HelloDecision::Accept { epoch, demoted } => {
                let sec = &mut self.nodes[s];
                sec.meta.epoch = epoch;
                if demoted {
                    sec.meta = demote(&sec.meta, epoch).unwrap();
                    // Its held writes were never acknowledged; they die with its role.
                    sec.pending.clear();
                }
            }
        }
        let sec = &self.nodes[s];
        let reply = HelloReply {
            epoch: sec.meta.epoch,
            generation: sec.meta.generation.clone(),
            history: sec.meta.history.clone(),
            last_seq: sec.meta.last_seq,
            consistent: sec.meta.consistent,
            own_regions: vec![(0, sec.al.to_vec())],
        };
        let pr = &self.nodes[p];
        let changed: BTreeSet<u32> = pr.al.iter().chain(&pr.bitmap).copied().collect();
        let plan = plan_resync(
            &PrimaryView {
                meta: &pr.meta,
                changed: &changed,
                resend_from: pr.seq.next(),
            },
            &reply,
        );
        let regions: Vec<u32> = match plan {
            ResyncPlan::Replay { .. } => Vec::new(),
            ResyncPlan::Regions(r) => r.into_iter().collect(),
            ResyncPlan::Full => (0..REGIONS).collect(),
        };
        for r in regions {
            self.nodes[s].data[r as usize] = self.nodes[p].data[r as usize];
        }
        // Held writes now reach the peer and are acknowledged.
        for (r, v) in std::mem::take(&mut self.nodes[p].pending) {
            self.acked.insert(r, v);
        }
        let (gen_, hist) = (
            self.nodes[p].meta.generation.clone(),
            self.nodes[p].meta.history.clone(),
        );
        // The resync's closing marker (or the replayed stream) leaves the secondary at
        // the primary's latest sequence number.
        self.nodes[p].seq = self.nodes[p].seq.next();
        let last = self.nodes[p].seq;
        let sec = &mut self.nodes[s];
        sec.meta.last_seq = last;
        sec.meta.generation = gen_;
        sec.meta.history = hist;
        sec.meta.consistent = true;
        sec.al.clear();
        let pr = &mut self.nodes[p];
        pr.bitmap.clear();
        pr.al.clear();
        pr.meta = resynced(&pr.meta);
        self.connected = true;
    }

    fn check(&self, before: &World) -> Result<(), String> {
        for i in 0..2 {
            if self.nodes[i].meta.epoch < before.nodes[i].meta.epoch {
                return Err(format!("node {i}: epoch went down"));
            }
        }
        let (a, b) = (&self.nodes[0].meta, &self.nodes[1].meta);
        if a.role == Role::Primary && b.role == Role::Primary && a.epoch == b.epoch {
            return Err(format!("two primaries at epoch {}", a.epoch));
        }
        let p = &self.nodes[self.committed_primary];
        for (r, v) in &self.acked {
            if p.data[*r as usize] < *v {
                return Err(format!(
                    "acknowledged write {v} to region {r} missing at the committed primary (has {})",
                    p.data[*r as usize]
                ));
            }
        }
        if self.connected && self.nodes[0].data != self.nodes[1].data {
            return Err(format!(
                "connected but different: {:?} vs {:?}",
                self.nodes[0].data, self.nodes[1].data
            ));
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn two_replicas_never_lose_an_acknowledged_write(events in proptest::collection::vec(ev(), 1..80)) {
        let mut w = World::new();
        for e in &events {
            let before = w.clone();
            w.step(e);
            if let Err(why) = w.check(&before) {
                return Err(TestCaseError::fail(format!("after {e:?}: {why}\nevents: {events:?}")));
            }
        }
    }
}
