//! What the cluster has been told about the VMs of this host, and what it must be
//! told next (pure: the watch loop and registration feed it, tests drive it).
//!
//! Two paths tell the cluster a VM's state: registration (every domain, as listed
//! when the agent registers: at start and after a regained lease) and the watch loop
//! (changes only, every poll). The watch loop compares what it sees with what the
//! cluster was last told, whichever path told it: a registration that lists a VM
//! shut off (the fence had just destroyed it) and a VM that the cluster starts again
//! before the next poll must still be reported running, or the cluster waits for it
//! forever.

use std::collections::BTreeMap;

use proto::agent::VmState;
use topology::VmId;

use crate::hypervisor::DomainInfo;

/// The production VMs among `domains`, by VM id, with their libvirt state: drill
/// copies are never reported as their production VM, and domains of other hosts or
/// none are not reported at all (run the list through `only_ours` first).
pub fn reportable(domains: &[DomainInfo]) -> BTreeMap<VmId, VmState> {
    domains
        .iter()
        .filter_map(|d| {
            d.managed
                .as_ref()
                .filter(|m| m.drill.is_none())
                .map(|m| (m.vm.clone(), d.state.reported()))
        })
        .collect()
}

/// Every this many polls the watch loop tells the cluster every VM's state again,
/// changed or not (with [`crate::core::WATCH_MS`] of 500 ms: every 10 s), so that a
/// record the cluster holds wrongly (a lost or refused report) is corrected within
/// seconds, not left until the VM next changes.
pub const RESEND_EVERY: u32 = 20;

/// Per VM, the state the cluster was last told (None: forgotten, so any state differs).
#[derive(Debug, Clone, Default)]
pub struct Told {
    states: BTreeMap<VmId, Option<VmState>>,
    /// Polls since every state was last sent.
    polls: u32,
}

impl Told {
    /// A registration told the cluster exactly `states`: it replaces what the watch
    /// loop reported before.
    pub fn registered(&mut self, states: BTreeMap<VmId, VmState>) {
        self.states = states.into_iter().map(|(vm, s)| (vm, Some(s))).collect();
    }

    /// A report of these VMs failed: the cluster may not know their states, so the
    /// next poll reports them again as they are then (or `undefined` if gone), fresh
    /// rather than the failed report's older states.
    pub fn forget<'a>(&mut self, vms: impl IntoIterator<Item = &'a VmId>) {
        for vm in vms {
            self.states.insert(vm.clone(), None);
        }
    }

    /// A registration may have reached the cluster though it failed here (a lost
    /// reply): every VM is reported again as it is then.
    pub fn forget_all(&mut self) {
        for s in self.states.values_mut() {
            *s = None;
        }
    }

    /// The watch loop sees `now`: returns what the cluster must be told (a changed
    /// state, a new VM, or `undefined` for one that is gone) and takes it as told.
    /// Every [`RESEND_EVERY`] polls it returns every VM, changed or not.
    pub fn observe(&mut self, now: BTreeMap<VmId, VmState>) -> BTreeMap<VmId, VmState> {
        self.polls += 1;
        let all = self.polls >= RESEND_EVERY;
        if all {
            self.polls = 0;
        }
        let mut changed: BTreeMap<VmId, VmState> = now
            .iter()
            .filter(|(vm, st)| all || self.states.get(*vm) != Some(&Some(**st)))
            .map(|(vm, st)| (vm.clone(), *st))
            .collect();
        for vm in self.states.keys().filter(|vm| !now.contains_key(*vm)) {
            changed.insert(vm.clone(), VmState::Undefined);
        }
        self.states = now.into_iter().map(|(vm, s)| (vm, Some(s))).collect();
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNDEFINED: &str = "undefined";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<VmId, VmState> {
        let state = |s: &str| match s {
            "running" => VmState::Running,
            "paused" => VmState::Paused,
            "shutoff" => VmState::ShutOff,
            UNDEFINED => VmState::Undefined,
            other => panic!("no state {other} in these tests"),
        };
        pairs
            .iter()
            .map(|(a, b)| (VmId::new(*a), state(b)))
            .collect()
    }

    #[test]
    fn the_watch_reports_changes_new_vms_and_vanished_ones_once() {
        let mut t = Told::default();
        assert_eq!(
            t.observe(map(&[("a", "running"), ("b", "shutoff")])),
            map(&[("a", "running"), ("b", "shutoff")])
        );
        assert_eq!(
            t.observe(map(&[("a", "running"), ("b", "shutoff")])),
            map(&[])
        );
        assert_eq!(
            t.observe(map(&[("a", "paused")])),
            map(&[("a", "paused"), ("b", UNDEFINED)])
        );
        assert_eq!(t.observe(map(&[("a", "paused")])), map(&[]));
        assert_eq!(t.observe(map(&[])), map(&[("a", UNDEFINED)]));
        assert_eq!(t.observe(map(&[])), map(&[]));
    }

    /// The lost-report race: the watch saw `a` running before the fence; the fence
    /// destroyed it and registration told the cluster "shutoff"; the cluster started
    /// it again before the watch polled. The watch sees "running", as before — and
    /// must report it, because the cluster was last told "shutoff".
    #[test]
    fn a_registration_between_two_polls_is_what_the_next_poll_compares_with() {
        let mut t = Told::default();
        t.observe(map(&[("a", "running"), ("b", "running")]));
        t.registered(map(&[("a", "shutoff"), ("b", "shutoff")]));
        assert_eq!(
            t.observe(map(&[("a", "running"), ("b", "shutoff")])),
            map(&[("a", "running")])
        );
        // A VM registration did not list, seen by the watch, is new to the cluster; one
        // it listed that is gone now is reported gone.
        t.registered(map(&[("a", "running"), ("gone", "shutoff")]));
        assert_eq!(
            t.observe(map(&[("a", "running"), ("new", "running")])),
            map(&[("gone", UNDEFINED), ("new", "running")])
        );
    }

    #[test]
    fn every_state_is_sent_again_periodically_even_unchanged() {
        let mut t = Told::default();
        let now = map(&[("a", "running"), ("b", "shutoff")]);
        assert_eq!(t.observe(now.clone()), now);
        let mut resent = 0;
        for poll in 2..=(3 * RESEND_EVERY) {
            let told = t.observe(now.clone());
            if told.is_empty() {
                continue;
            }
            assert_eq!(told, now, "poll {poll} resends every VM as it is");
            assert_eq!(poll % RESEND_EVERY, 0, "poll {poll}");
            resent += 1;
        }
        assert_eq!(resent, 3);
    }

    #[test]
    fn a_failed_report_is_sent_again_as_the_vms_are_then() {
        let mut t = Told::default();
        t.observe(map(&[("a", "running"), ("b", "running"), ("c", "running")]));
        // The report of a, b and c failed; meanwhile b stopped and c is gone.
        let failed = map(&[("a", "running"), ("b", "running"), ("c", "running")]);
        t.forget(failed.keys());
        assert_eq!(
            t.observe(map(&[("a", "running"), ("b", "shutoff")])),
            map(&[("a", "running"), ("b", "shutoff"), ("c", UNDEFINED)])
        );
        assert_eq!(
            t.observe(map(&[("a", "running"), ("b", "shutoff")])),
            map(&[])
        );
    }
}
