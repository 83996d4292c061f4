//! The pure part of the link model: when each chunk may leave (delay, jitter, loss)
//! and when the bandwidth allows it. No I/O and no clock reads: callers pass `now`.

use std::time::{Duration, Instant};

use super::props::{DirProps, LOSS_SEGMENT_BYTES};

/// SplitMix64: tiny, seedable, good enough for jitter and loss draws (not crypto).
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The seed of one connection direction's draws: distinct streams per connection and
/// direction, all fixed by the link's seed.
pub(crate) fn stream_seed(link_seed: u64, conn_no: u64, dir_index: u64) -> u64 {
    let mut mix = SplitMix64::new(link_seed ^ conn_no.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    mix.next_u64() ^ dir_index
}

/// When a chunk leaves, and whether the loss model hit it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub deadline: Instant,
    pub stalled: bool,
}

/// Stamps the chunks of one direction of one connection with their departure time.
///
/// Invariant: deadlines never decrease, so a FIFO queue written in deadline order
/// never reorders bytes, whatever jitter, loss or a live change of delay does.
#[derive(Debug)]
pub(crate) struct Shaper {
    rng: SplitMix64,
    last_deadline: Option<Instant>,
}

impl Shaper {
    pub(crate) fn new(seed: u64) -> Self {
        Shaper {
            rng: SplitMix64::new(seed),
            last_deadline: None,
        }
    }

    /// The departure of a chunk of `len` bytes read at `read_at` (`len == 0` is the end
    /// of stream: delayed like data, never lost).
    pub(crate) fn stamp(&mut self, read_at: Instant, len: usize, props: &DirProps) -> Stamp {
        let mut delay_ns = i128::from(props.delay_us) * 1000;
        if props.jitter_us > 0 {
            let offset = (self.rng.next_f64() * 2.0 - 1.0) * props.jitter_us as f64 * 1000.0;
            delay_ns += offset as i128;
        }
        let delay = Duration::from_nanos(u64::try_from(delay_ns.max(0)).unwrap_or(u64::MAX));
        let mut deadline = read_at + delay;
        let stalled = len > 0 && props.loss_probability > 0.0 && {
            let segments = i32::try_from(len.div_ceil(LOSS_SEGMENT_BYTES)).unwrap_or(i32::MAX);
            let hit = 1.0 - (1.0 - props.loss_probability).powi(segments);
            self.rng.next_f64() < hit
        };
        if stalled {
            deadline += props.loss_stall();
        }
        if let Some(last) = self.last_deadline {
            deadline = deadline.max(last);
        }
        self.last_deadline = Some(deadline);
        Stamp { deadline, stalled }
    }
}

/// A token bucket that hands out send times rather than refusing: each reservation
/// takes its bytes now, going into debt if need be, and is told when the debt it
/// joined is paid. Shared by all connections of one direction, so they split the
/// bandwidth in arrival order.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// How many bytes to write at once under a limit of `rate` bytes/s: about 5 ms
    /// worth, so the output is smooth, within 1–16 KiB.
    pub(crate) fn piece_bytes(rate: u64) -> usize {
        usize::try_from(rate / 200)
            .unwrap_or(usize::MAX)
            .clamp(1024, 16 * 1024)
    }

    /// Reserves `n` bytes at `now` under `rate` bytes/s (> 0) and returns when they may
    /// be sent. The bucket holds at most two pieces (about 10 ms) of unused bandwidth.
    pub(crate) fn reserve(&mut self, now: Instant, n: usize, rate: u64) -> Instant {
        let rate_f = rate.max(1) as f64;
        let burst = (2 * Self::piece_bytes(rate)) as f64;
        self.tokens = match self.last {
            None => burst,
            Some(last) => {
                let refill = now.saturating_duration_since(last).as_secs_f64() * rate_f;
                (self.tokens + refill).min(burst)
            }
        };
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-self.tokens / rate_f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_never_reorders_and_stays_in_band() {
        let props = DirProps {
            delay_us: 1000,
            jitter_us: 800,
            ..DirProps::default()
        };
        let t0 = Instant::now();
        let mut shaper = Shaper::new(42);
        let mut last = t0;
        for i in 0..10_000u64 {
            let read_at = t0 + Duration::from_micros(i * 10);
            let s = shaper.stamp(read_at, 100, &props);
            assert!(s.deadline >= last, "deadline went back at chunk {i}");
            assert!(s.deadline >= read_at + Duration::from_micros(200));
            assert!(s.deadline <= read_at + Duration::from_micros(1800));
            last = s.deadline;
        }
    }

    #[test]
    fn live_delay_decrease_does_not_reorder() {
        let t0 = Instant::now();
        let mut shaper = Shaper::new(1);
        let slow = shaper.stamp(t0, 10, &DirProps::with_delay(Duration::from_millis(50)));
        let fast = shaper.stamp(t0 + Duration::from_millis(1), 10, &DirProps::default());
        assert_eq!(fast.deadline, slow.deadline);
    }

    #[test]
    fn loss_stalls_the_chunk_and_everything_behind_it() {
        let lossy = DirProps {
            loss_probability: 1.0,
            loss_stall_ms: 200,
            ..DirProps::default()
        };
        let t0 = Instant::now();
        let mut shaper = Shaper::new(7);
        let hit = shaper.stamp(t0, 1, &lossy);
        assert!(hit.stalled);
        assert_eq!(hit.deadline, t0 + Duration::from_millis(200));
        let behind = shaper.stamp(t0 + Duration::from_millis(1), 1, &DirProps::default());
        assert!(!behind.stalled);
        assert_eq!(behind.deadline, hit.deadline, "head-of-line blocking");
        assert!(
            !shaper.stamp(t0, 0, &lossy).stalled,
            "end of stream is never lost"
        );
    }

    #[test]
    fn loss_rate_counts_segments() {
        // p = 1 % per segment: a 1-segment chunk is hit ~1 %, a 44-segment one ~36 %.
        let props = DirProps {
            loss_probability: 0.01,
            ..DirProps::default()
        };
        let t0 = Instant::now();
        let rate = |len: usize| {
            let mut shaper = Shaper::new(3);
            let hits = (0..20_000)
                .filter(|_| shaper.stamp(t0, len, &props).stalled)
                .count();
            hits as f64 / 20_000.0
        };
        let small = rate(100);
        let big = rate(64 * 1024);
        assert!((0.007..0.013).contains(&small), "{small}");
        assert!((0.33..0.39).contains(&big), "{big}");
    }

    #[test]
    fn bucket_paces_to_the_rate() {
        let rate = 20_000_000;
        let t0 = Instant::now();
        let mut bucket = Bucket::default();
        let piece = Bucket::piece_bytes(rate);
        let mut at = t0;
        let mut sent = 0usize;
        while sent < 20_000_000 {
            at = bucket.reserve(at, piece, rate);
            sent += piece;
        }
        let took = at.duration_since(t0).as_secs_f64();
        assert!((0.99..1.01).contains(&took), "{took}");
    }

    #[test]
    fn seeds_differ_per_connection_and_direction() {
        let a = stream_seed(5, 0, 0);
        assert_ne!(a, stream_seed(5, 0, 1));
        assert_ne!(a, stream_seed(5, 1, 0));
        assert_eq!(a, stream_seed(5, 0, 0));
    }
}
