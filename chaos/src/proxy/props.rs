//! Link properties: what the proxy does to the bytes of each direction, and how a link
//! is cut. Plain data with a `validate()` that names the bad field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ProxyError;

/// Largest read the proxy makes at once, and so the largest chunk in a direction's
/// queue. [`LinkProps::queue_bytes_max`] must hold at least one chunk.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;

/// The segment size the loss model counts in: a 1500-byte MTU minus IPv4/TCP headers
/// with timestamps. See [`DirProps::loss_probability`].
pub const LOSS_SEGMENT_BYTES: usize = 1448;

/// Upper bound of every configurable time (one-way delay, jitter, loss stall). A minute
/// is far beyond any WAN; a larger value is a typo (seconds given as milliseconds).
const TIME_MAX_US: u64 = 60_000_000;

/// Upper bound of [`LinkProps::queue_bytes_max`]: 1 GiB per direction per connection
/// already lets a few connections eat the machine's memory.
const QUEUE_BYTES_LIMIT: usize = 1 << 30;

/// Upper bound of [`LinkProps::connections_max`].
const CONNECTIONS_LIMIT: usize = 65_536;

/// What happens to the bytes travelling one direction of the link.
///
/// The default is a perfect link: no delay, no jitter, no limit, no loss.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirProps {
    /// One-way latency added to every byte: a byte the proxy reads at `t` is written
    /// at `t + delay` while the bytes behind it keep flowing (a pipe, not a batch).
    pub delay_us: u64,
    /// Uniform jitter: each chunk's delay is `delay ± jitter` (never below zero). It
    /// never reorders bytes: a chunk is never written before the one ahead of it, so a
    /// short draw behind a long one is held until the long one has gone.
    pub jitter_us: u64,
    /// Bandwidth of this direction in bytes per second, shared by all connections of
    /// the proxy (a token bucket with about 5 ms of burst). 0 = unlimited.
    pub bandwidth_bytes_per_s: u64,
    /// Probability that a segment of [`LOSS_SEGMENT_BYTES`] is lost on the wire. TCP
    /// cannot lose bytes, so a loss is modelled as what the sender's TCP makes of it: a
    /// chunk of `n` bytes is hit with probability `1 - (1 - p)^ceil(n / 1448)`, and a hit
    /// chunk (and every byte behind it: head-of-line blocking) is held
    /// [`DirProps::loss_stall_ms`] longer, like a retransmission. Not modelled: the
    /// congestion window shrinking after a loss, and loss of the SYN/FIN.
    pub loss_probability: f64,
    /// The retransmission pause of one loss. Default 200 ms: Linux's minimum RTO, what
    /// a lost segment costs when fast retransmit does not kick in (a lost tail, or
    /// request/response traffic with few segments in flight).
    pub loss_stall_ms: u64,
}

impl Default for DirProps {
    fn default() -> Self {
        DirProps {
            delay_us: 0,
            jitter_us: 0,
            bandwidth_bytes_per_s: 0,
            loss_probability: 0.0,
            loss_stall_ms: 200,
        }
    }
}

impl DirProps {
    /// A perfect link except for `delay` of one-way latency.
    pub fn with_delay(delay: Duration) -> Self {
        DirProps {
            delay_us: duration_us(delay),
            ..DirProps::default()
        }
    }

    /// The one-way delay as a [`Duration`].
    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us)
    }

    /// The jitter as a [`Duration`].
    pub fn jitter(&self) -> Duration {
        Duration::from_micros(self.jitter_us)
    }

    /// The pause of one loss as a [`Duration`].
    pub fn loss_stall(&self) -> Duration {
        Duration::from_millis(self.loss_stall_ms)
    }

    fn validate(&self, dir: &str) -> Result<(), ProxyError> {
        let bad = |name: &str, value: String, reason| ProxyError::BadProps {
            field: format!("{dir}.{name}"),
            value,
            reason,
        };
        if self.delay_us > TIME_MAX_US {
            return Err(bad(
                "delay_us",
                self.delay_us.to_string(),
                "more than 60 s of one-way delay; the unit is microseconds",
            ));
        }
        if self.jitter_us > TIME_MAX_US {
            return Err(bad(
                "jitter_us",
                self.jitter_us.to_string(),
                "more than 60 s of jitter; the unit is microseconds",
            ));
        }
        if !(0.0..=1.0).contains(&self.loss_probability) {
            return Err(bad(
                "loss_probability",
                self.loss_probability.to_string(),
                "a probability must be within 0.0..=1.0 (0.01 is 1 %)",
            ));
        }
        if self.loss_stall_ms.saturating_mul(1000) > TIME_MAX_US {
            return Err(bad(
                "loss_stall_ms",
                self.loss_stall_ms.to_string(),
                "more than 60 s per loss; the unit is milliseconds",
            ));
        }
        Ok(())
    }
}

/// Everything the proxy does to a link. Change it while running with
/// [`super::LinkProxy::set`]; the shaping fields apply to the next chunk read on every
/// live connection.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkProps {
    /// Bytes from the connecting client to the target ("upstream").
    pub to_target: DirProps,
    /// Bytes from the target back to the client ("downstream").
    pub to_client: DirProps,
    /// Bound of each direction's queue of delayed bytes, per connection, read when a
    /// connection opens. At the bound the proxy stops reading that direction, so the
    /// sender's socket buffers fill and TCP backpressure slows it down; nothing is
    /// dropped. It also caps throughput at `queue_bytes_max / delay` (4 MiB at 50 ms:
    /// 80 MiB/s). Default 4 MiB; at least [`CHUNK_BYTES_MAX`].
    pub queue_bytes_max: usize,
    /// Connections open at once; further ones are accepted and reset at once (and
    /// counted as rejected), which bounds memory at about `2 × queue_bytes_max` per
    /// connection. Default 1024.
    pub connections_max: usize,
    /// Seed of the jitter and loss draws. Each connection and direction draws from its
    /// own stream derived from this seed and the connection's number; which chunk a draw
    /// lands on still depends on how the kernel splits the stream into reads.
    pub seed: u64,
}

impl Default for LinkProps {
    fn default() -> Self {
        LinkProps {
            to_target: DirProps::default(),
            to_client: DirProps::default(),
            queue_bytes_max: 4 << 20,
            connections_max: 1024,
            seed: 0,
        }
    }
}

impl LinkProps {
    /// The same properties in both directions.
    pub fn symmetric(dir: DirProps) -> Self {
        LinkProps {
            to_target: dir,
            to_client: dir,
            ..LinkProps::default()
        }
    }

    /// A perfect link except for `delay` of one-way latency in both directions (so a
    /// request/response round trip takes `2 × delay` longer).
    pub fn with_delay(delay: Duration) -> Self {
        LinkProps::symmetric(DirProps::with_delay(delay))
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ProxyError> {
        self.to_target.validate("to_target")?;
        self.to_client.validate("to_client")?;
        if !(CHUNK_BYTES_MAX..=QUEUE_BYTES_LIMIT).contains(&self.queue_bytes_max) {
            return Err(ProxyError::BadProps {
                field: "queue_bytes_max".into(),
                value: self.queue_bytes_max.to_string(),
                reason: "must be within 65536 (one read) ..= 1 GiB",
            });
        }
        if !(1..=CONNECTIONS_LIMIT).contains(&self.connections_max) {
            return Err(ProxyError::BadProps {
                field: "connections_max".into(),
                value: self.connections_max.to_string(),
                reason: "must be within 1..=65536",
            });
        }
        Ok(())
    }
}

/// How [`super::LinkProxy::cut`] cuts the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutMode {
    /// A partition that drops packets silently: connections stay open but no byte
    /// flows either way, like a WAN that loses everything without sending RSTs. Bytes
    /// keep being read until the queue bound (then TCP backpressure) and are delivered
    /// after [`super::LinkProxy::heal`], as TCP would retransmit them — unless the
    /// application gave up first. New connections still complete their handshake
    /// (the proxy's listening socket is local) but are not forwarded until healed.
    Blackhole,
    /// A dead peer: every connection is reset (RST both ways) and the listening socket
    /// is closed, so new connections are refused (ECONNREFUSED). Heal listens again on
    /// the same address.
    Reset,
}

/// A [`Duration`] in whole microseconds, saturating.
pub(crate) fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        LinkProps::default().validate().unwrap();
        let mut p = LinkProps::with_delay(Duration::from_micros(600));
        p.to_client.loss_probability = 1.5;
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("to_client.loss_probability = 1.5"), "{e}");
        p.to_client.loss_probability = f64::NAN;
        assert!(p.validate().is_err());
        let p = LinkProps {
            queue_bytes_max: 10,
            ..LinkProps::default()
        };
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("queue_bytes_max")
        );
    }

    #[test]
    fn toml_like_json_round_trip_and_unknown_fields_refused() {
        let p: LinkProps =
            serde_json::from_str(r#"{"to_target": {"delay_us": 600}, "seed": 7}"#).unwrap();
        assert_eq!(p.to_target.delay_us, 600);
        assert_eq!(p.to_target.loss_stall_ms, 200);
        assert_eq!(p.to_client, DirProps::default());
        assert!(serde_json::from_str::<LinkProps>(r#"{"delay": 1}"#).is_err());
    }
}
