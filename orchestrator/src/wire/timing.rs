//! A topology's timing table on the wire (`Timing`), both ways.

use topology::Timing;

use crate::pb;

/// The same ten fields, copied from one form into the other.
macro_rules! copied {
    ($t:expr, $($into:ident)::+) => {
        $($into)::+ {
            raft_heartbeat_ms: $t.raft_heartbeat_ms,
            raft_election_min_ms: $t.raft_election_min_ms,
            raft_election_max_ms: $t.raft_election_max_ms,
            lease_renew_ms: $t.lease_renew_ms,
            lease_ms: $t.lease_ms,
            lease_margin_ms: $t.lease_margin_ms,
            promote_budget_ms: $t.promote_budget_ms,
            vm_start_budget_ms: $t.vm_start_budget_ms,
            guest_boot_ms: $t.guest_boot_ms,
            health_gate_timeout_ms: $t.health_gate_timeout_ms,
        }
    };
}

pub fn timing_to_wire(t: &Timing) -> pb::Timing {
    copied!(t, pb::Timing)
}

/// Every value is a plain count of milliseconds: nothing to refuse.
pub fn timing_from_wire(t: &pb::Timing) -> Timing {
    copied!(t, Timing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timing_table_crosses_the_wire_unchanged() {
        // Every field different, so a swapped pair would show.
        let t = Timing {
            raft_heartbeat_ms: 1,
            raft_election_min_ms: 2,
            raft_election_max_ms: 3,
            lease_renew_ms: 4,
            lease_ms: 5,
            lease_margin_ms: 6,
            promote_budget_ms: 7,
            vm_start_budget_ms: 8,
            guest_boot_ms: 9,
            health_gate_timeout_ms: 10,
        };
        assert_eq!(timing_from_wire(&timing_to_wire(&t)), t);
        assert_eq!(
            timing_from_wire(&timing_to_wire(&Timing::default())),
            Timing::default()
        );
    }
}
