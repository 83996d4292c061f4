//! Property tests of the agent's core: weighted random steps in a simulated world
//! ([`super::sim`]) — time passing and jumping, calls answered in any order, failed or
//! answered after the cluster applied them, commands issued and delivered again, the
//! agent crashing and starting over from its journal, the lab's clock fault and
//! libvirt going away. The world checks after every step that no command starts
//! without a lease or runs twice, that each loss of the lease gets one fence and no
//! VM runs without a lease once it is done, that registrations say `fenced` exactly
//! when a fence is unsaid, and that the cluster never gets a VM state older than one
//! it has,
//! and, once everything heals, that the cluster knows every VM as it is.

use proptest::prelude::*;

use super::sim::{Outcome, Step, World};

/// One step; `chaos` adds crashes and partitions (without them, the cluster's view of
/// the VMs is what is under test, with more failed calls).
fn step(chaos: bool) -> impl Strategy<Value = Step> {
    let (failed, lost) = if chaos { (2, 1) } else { (4, 3) };
    let (crash, partition) = if chaos { (2, 4) } else { (0, 0) };
    let outcome = prop_oneof![
        12 => Just(Outcome::Ok),
        failed => Just(Outcome::Failed),
        lost => Just(Outcome::ReplyLost),
    ];
    prop_oneof![
        30 => (1u64..300).prop_map(Step::Wait),
        // A clock jump: the process was stopped, the machine stalled.
        2 => (1000u64..8000).prop_map(Step::Wait),
        40 => (any::<usize>(), outcome).prop_map(|(n, o)| Step::Complete(n, o)),
        8 => (any::<u8>(), any::<u8>()).prop_map(|(kind, vm)| Step::Issue { kind, vm }),
        crash => Just(Step::Crash),
        partition => any::<bool>().prop_map(Step::Grants),
        1 => prop_oneof![Just(0u16), 100u16..3000].prop_map(Step::ClockRate),
        2 => Just(Step::Redeliver),
        1 => any::<bool>().prop_map(Step::Libvirt),
        3 => any::<u8>().prop_map(Step::GuestStops),
    ]
}

/// Proptest prints the smallest list of steps that fails (and keeps its seed in
/// `proptest-regressions/`).
fn run(steps: &[Step]) {
    let mut w = World::new();
    for s in steps {
        w.step(s.clone());
    }
    w.settle();
    w.assert_converged();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_agent_keeps_its_promises_through_crashes_and_lost_replies(
        steps in prop::collection::vec(step(true), 1..400)
    ) {
        run(&steps);
    }

    #[test]
    fn the_cluster_learns_every_vm_state_through_failed_and_lost_reports(
        steps in prop::collection::vec(step(false), 1..300)
    ) {
        run(&steps);
    }
}
