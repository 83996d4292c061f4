//! # clock — the clock the agent times its lease with, which the lab can skew
//!
//! The lease ([`crate::lease`]) is timed on CLOCK_MONOTONIC. A host whose clock runs
//! slow (a bad TSC, a VM paused by its own hypervisor, NTP slewing a broken clock)
//! thinks its lease lasts longer than it does; the leader's margin (DESIGN §4) is what
//! absorbs that. To attack that margin, the lab asks an agent to read its lease clock
//! at `rate` times real time: the file `faults/clock-rate` in the agent's state
//! directory holds the rate (`0.5`: half speed; absent or `1`: real time), polled
//! every half second and recorded in the audit log when it changes.
//!
//! A rate change rebases the clock at that instant, so lease time stays continuous
//! and monotonic whatever the rates. Pure: callers pass the real time in.
//!
//! Not modelled: a restarted agent process starts on real time again (the rate file
//! then applies from its first poll), so the lease expiry it persisted under a fast
//! clock lies later than real time and a slow clock's earlier.

use crate::lease::Mono;

/// The fault file in `<state_dir>/faults/` that sets the rate.
pub const RATE_FILE: &str = "clock-rate";

/// Bounds of a rate (the lab's scenario checks refuse others before they get here).
pub const RATE_MIN: f64 = 0.1;
pub const RATE_MAX: f64 = 10.0;

/// Lease time as a function of real time: `lease = base_lease + (real - base_real) × rate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseClock {
    base_real: Mono,
    base_lease: Mono,
    rate: f64,
}

impl Default for LeaseClock {
    fn default() -> Self {
        LeaseClock {
            base_real: Mono(0),
            base_lease: Mono(0),
            rate: 1.0,
        }
    }
}

impl LeaseClock {
    /// Lease time at real time `real`.
    pub fn at(&self, real: Mono) -> Mono {
        if self.rate == 1.0 {
            return Mono(
                self.base_lease
                    .0
                    .saturating_add(real.0.saturating_sub(self.base_real.0)),
            );
        }
        let since = real.0.saturating_sub(self.base_real.0) as f64;
        Mono(self.base_lease.0.saturating_add((since * self.rate) as u64))
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The real time at which lease time reaches `lease` at the current rate (the
    /// earliest real time it may, when `lease` is already behind).
    pub fn real_at(&self, lease: Mono) -> Mono {
        let ahead = lease.0.saturating_sub(self.base_lease.0);
        let real = if self.rate == 1.0 {
            ahead
        } else {
            (ahead as f64 / self.rate).ceil() as u64
        };
        Mono(self.base_real.0.saturating_add(real))
    }

    /// Runs at `rate` from real time `real` on; returns whether the rate changed.
    pub fn set_rate(&mut self, rate: f64, real: Mono) -> bool {
        let rate = rate.clamp(RATE_MIN, RATE_MAX);
        if rate == self.rate {
            return false;
        }
        let now = self.at(real);
        *self = LeaseClock {
            base_real: real,
            base_lease: now,
            rate,
        };
        true
    }
}

/// The rate a fault file's text asks for; an error says what is wrong with it.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    match t.parse::<f64>() {
        Ok(r) if r.is_finite() && (RATE_MIN..=RATE_MAX).contains(&r) => Ok(r),
        _ => Err(format!(
            "{RATE_FILE} holds {t:?}: a clock rate is a number from {RATE_MIN} to {RATE_MAX} (1 is real time); the clock keeps its rate"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn real_time_until_a_rate_is_set() {
        let c = LeaseClock::default();
        assert_eq!(c.at(Mono(5 * S)), Mono(5 * S));
        assert_eq!(c.rate(), 1.0);
    }

    #[test]
    fn a_rate_applies_from_its_instant_and_time_stays_continuous() {
        let mut c = LeaseClock::default();
        assert!(c.set_rate(0.5, Mono(10 * S)));
        assert_eq!(c.at(Mono(10 * S)), Mono(10 * S), "no jump at the change");
        assert_eq!(
            c.at(Mono(14 * S)),
            Mono(12 * S),
            "4 s real are 2 s of lease"
        );
        assert!(!c.set_rate(0.5, Mono(14 * S)), "same rate: nothing changes");
        assert!(c.set_rate(2.0, Mono(14 * S)));
        assert_eq!(c.at(Mono(15 * S)), Mono(14 * S));
        assert!(c.set_rate(1.0, Mono(16 * S)));
        assert_eq!(c.at(Mono(17 * S)), Mono(17 * S));
    }

    #[test]
    fn real_at_is_when_lease_time_gets_there() {
        let mut c = LeaseClock::default();
        assert_eq!(c.real_at(Mono(3 * S)), Mono(3 * S));
        c.set_rate(0.5, Mono(10 * S));
        let real = c.real_at(Mono(12 * S));
        assert_eq!(
            real,
            Mono(14 * S),
            "2 s of lease take 4 s real at half speed"
        );
        assert!(c.at(real) >= Mono(12 * S));
        c.set_rate(3.0, Mono(14 * S));
        let real = c.real_at(Mono(13 * S));
        assert!(
            c.at(real) >= Mono(13 * S),
            "1 s of lease at three times the speed"
        );
        assert!(real < Mono(15 * S));
        assert_eq!(
            c.real_at(Mono(11 * S)),
            Mono(14 * S),
            "reached already: now"
        );
    }

    #[test]
    fn lease_time_never_goes_back_whatever_the_rates() {
        let rates = [0.1, 0.5, 0.9, 1.0, 1.5, 3.0, 10.0, 0.2];
        let mut c = LeaseClock::default();
        let mut last = Mono(0);
        let mut real = 0u64;
        for step in 0..400u64 {
            real += (step * 7919) % (S / 3) + 1;
            if step % 13 == 0 {
                c.set_rate(rates[(step / 13) as usize % rates.len()], Mono(real));
            }
            let now = c.at(Mono(real));
            assert!(now >= last, "step {step}: {now:?} < {last:?}");
            last = now;
        }
    }

    #[test]
    fn bad_rate_files_say_what_is_wrong() {
        assert_eq!(parse_rate("0.5\n"), Ok(0.5));
        for bad in ["", "fast", "0", "-1", "NaN", "inf", "11"] {
            let e = parse_rate(bad).expect_err(bad);
            assert!(e.contains("from 0.1 to 10"), "{e}");
        }
    }
}
