//! The agent's side of the lease (DESIGN §4): pure state, clock passed in.
//!
//! ```text
//!            grant                       now >= until
//!   None ──────────► Held{until} ────────────────────► Lost{fenced: false}
//!    │  (startup: the persisted lease       ▲  │                │ fence done
//!    │   if it has not run out)        grant │  │ grant          ▼
//!    └─────────────── now >= 0 ─────────────┼──┴──────── Lost{fenced: true}
//!                                            └──────────────────┘ (regained: restart nothing)
//! ```
//!
//! A lease runs from the moment the agent *sent* the renewal that was granted, on the
//! host's CLOCK_MONOTONIC, so it always ends before the leader's view of it (which
//! starts when the leader granted it, and adds a margin). The expiry is persisted so a
//! restarted agent process neither fences VMs that are still covered nor lets VMs run
//! past a lease it no longer holds.

use serde::{Deserialize, Serialize};

/// Nanoseconds on CLOCK_MONOTONIC: comparable across processes on one boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mono(pub u64);

impl Mono {
    pub fn plus_ms(self, ms: u64) -> Mono {
        Mono(self.0.saturating_add(ms.saturating_mul(1_000_000)))
    }
    pub fn ms_since(self, earlier: Mono) -> u64 {
        self.0.saturating_sub(earlier.0) / 1_000_000
    }
}

/// CLOCK_MONOTONIC now.
pub fn mono_now() -> Mono {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => Mono(
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0),
        ),
        // CLOCK_MONOTONIC cannot fail on Linux; if it ever did, "time zero" makes any
        // held lease look expired, which fences: the safe side.
        Err(_) => Mono(u64::MAX),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseState {
    /// Never granted in this boot, and no persisted lease covers now.
    None,
    Held {
        until: Mono,
    },
    Lost {
        since: Mono,
        fenced: bool,
    },
}

/// What the agent must do after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    Nothing,
    /// The lease just ran out: fence now.
    Fence,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLease {
    pub state: LeaseState,
}

impl AgentLease {
    /// Start from the expiry persisted by an earlier process (if any, on this boot).
    pub fn resume(persisted_until: Option<Mono>, now: Mono) -> AgentLease {
        let state = match persisted_until {
            Some(until) if now < until => LeaseState::Held { until },
            // Expired while no agent ran: the VMs must be fenced at once.
            Some(until) => LeaseState::Lost {
                since: until,
                fenced: false,
            },
            None => LeaseState::None,
        };
        AgentLease { state }
    }

    /// A renewal sent at `sent` was granted for `lease_ms`. Returns true when this
    /// regains a lost lease (worth an audit event; nothing is restarted).
    pub fn granted(&mut self, sent: Mono, lease_ms: u64) -> bool {
        let until = sent.plus_ms(lease_ms);
        let regained = matches!(self.state, LeaseState::Lost { .. });
        self.state = match self.state {
            // A late reply to an old request must not shorten the lease.
            LeaseState::Held { until: cur } => LeaseState::Held {
                until: cur.max(until),
            },
            _ => LeaseState::Held { until },
        };
        regained
    }

    pub fn valid(&self, now: Mono) -> bool {
        matches!(self.state, LeaseState::Held { until } if now < until)
    }

    /// Advance time; says when to fence. Once fenced, stays fenced until a grant.
    pub fn check(&mut self, now: Mono) -> LeaseEvent {
        match self.state {
            LeaseState::Held { until } if now >= until => {
                self.state = LeaseState::Lost {
                    since: until,
                    fenced: false,
                };
                LeaseEvent::Fence
            }
            LeaseState::Lost { fenced: false, .. } => LeaseEvent::Fence,
            _ => LeaseEvent::Nothing,
        }
    }

    /// The fence ran (successfully or not: it is retried only by a new loss).
    pub fn fenced(&mut self) {
        if let LeaseState::Lost { since, .. } = self.state {
            self.state = LeaseState::Lost {
                since,
                fenced: true,
            };
        }
    }

    /// The expiry to persist (None when no lease is held).
    pub fn until(&self) -> Option<Mono> {
        match self.state {
            LeaseState::Held { until } => Some(until),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Mono {
        Mono(0).plus_ms(v)
    }

    #[test]
    fn the_lease_runs_from_the_send_time_and_fences_once() {
        let mut l = AgentLease::resume(None, ms(0));
        assert!(!l.valid(ms(0)));
        assert_eq!(
            l.check(ms(0)),
            LeaseEvent::Nothing,
            "never granted: nothing to fence yet"
        );
        // Sent at 100, granted at 900: the lease still ends at 3100.
        assert!(!l.granted(ms(100), 3000));
        assert!(l.valid(ms(3099)));
        assert_eq!(l.check(ms(3099)), LeaseEvent::Nothing);
        assert_eq!(l.check(ms(3100)), LeaseEvent::Fence);
        assert!(!l.valid(ms(3100)));
        assert_eq!(
            l.check(ms(3150)),
            LeaseEvent::Fence,
            "until the fence is done"
        );
        l.fenced();
        assert_eq!(l.check(ms(5000)), LeaseEvent::Nothing);
        assert!(l.granted(ms(6000), 3000), "regained");
        assert!(l.valid(ms(6001)));
    }

    #[test]
    fn a_late_reply_never_shortens_the_lease() {
        let mut l = AgentLease::resume(None, ms(0));
        l.granted(ms(1000), 3000);
        l.granted(ms(500), 3000);
        assert_eq!(l.until(), Some(ms(4000)));
    }

    #[test]
    fn a_restarted_agent_keeps_a_running_lease_and_fences_an_expired_one() {
        let l = AgentLease::resume(Some(ms(4000)), ms(1000));
        assert!(l.valid(ms(3999)));
        let mut l = AgentLease::resume(Some(ms(4000)), ms(9000));
        assert!(!l.valid(ms(9000)));
        assert_eq!(l.check(ms(9000)), LeaseEvent::Fence);
    }
}
