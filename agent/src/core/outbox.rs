//! What the cluster must still be told: command results, VM state changes and the
//! agent's events, taken out a bounded batch at a time and put back in front when a
//! report fails (VM states excepted: those are observed again, fresh). Pure.

use std::collections::{BTreeMap, VecDeque};

use ids::CommandId;
use proto::agent::{AgentEvent, Executed, VmState};
use topology::VmId;

use super::io::{Batch, ObsSeq};

/// Most results in one report (the cluster takes up to 10,000).
pub const MAX_RESULTS: usize = 1000;
/// Most events in one report (the cluster takes up to 100).
pub const MAX_EVENTS: usize = 100;

#[derive(Debug, Clone, Default)]
pub struct Outbox {
    results: VecDeque<(CommandId, Executed)>,
    domains: BTreeMap<VmId, (VmState, ObsSeq)>,
    events: VecDeque<(u64, AgentEvent)>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.results.is_empty() && self.domains.is_empty() && self.events.is_empty()
    }

    pub fn result(&mut self, id: CommandId, executed: Executed) {
        self.results.push_back((id, executed));
    }

    pub fn event(&mut self, seq: u64, event: AgentEvent) {
        self.events.push_back((seq, event));
    }

    /// VM states observed at `obs` that the cluster was not told yet.
    pub fn domains(&mut self, changed: BTreeMap<VmId, VmState>, obs: ObsSeq) {
        for (vm, state) in changed {
            self.domains.insert(vm, (state, obs));
        }
    }

    /// A registration told the cluster every VM's state: the queued ones are older.
    pub fn registered(&mut self) {
        self.domains.clear();
    }

    /// The next report: the oldest results and events (bounded) and every VM change.
    pub fn take(&mut self) -> Batch {
        let n = self.results.len().min(MAX_RESULTS);
        let e = self.events.len().min(MAX_EVENTS);
        Batch {
            results: self.results.drain(..n).collect(),
            domains: std::mem::take(&mut self.domains),
            events: self.events.drain(..e).collect(),
        }
    }

    /// A report failed: its results and events go back in front of newer ones; its VM
    /// states are not kept (the caller has them observed again).
    pub fn put_back(&mut self, batch: Batch) {
        for r in batch.results.into_iter().rev() {
            self.results.push_front(r);
        }
        for e in batch.events.into_iter().rev() {
            self.events.push_front(e);
        }
    }

    /// For the invariants: the observation of each queued VM state.
    pub fn domain_obs(&self) -> impl Iterator<Item = ObsSeq> + '_ {
        self.domains.values().map(|(_, o)| *o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::agent::FailureKind;

    #[test]
    fn batches_are_bounded_and_a_failed_one_goes_back_in_front() {
        let mut o = Outbox::default();
        for i in 0..(MAX_RESULTS as u64 + 5) {
            o.result(CommandId(i), Executed::failed(FailureKind::Failed, "x"));
        }
        for s in 0..(MAX_EVENTS as u64 + 1) {
            o.event(s, AgentEvent::LeaseRegained);
        }
        o.domains(
            BTreeMap::from([(VmId::new("a"), VmState::Running)]),
            ObsSeq(3),
        );
        let b = o.take();
        assert_eq!(b.results.len(), MAX_RESULTS);
        assert_eq!(b.events.len(), MAX_EVENTS);
        assert_eq!(b.domains.len(), 1);
        let first = b.results[0].0;
        o.put_back(b);
        let again = o.take();
        assert_eq!(again.results[0].0, first, "oldest first again");
        assert!(
            again.domains.is_empty(),
            "VM states are observed again, not resent"
        );
        let rest = o.take();
        assert_eq!(rest.results.len(), 5);
        assert_eq!(rest.events.len(), 1);
        assert!(o.is_empty());
    }
}
