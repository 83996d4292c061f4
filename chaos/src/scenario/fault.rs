//! The faults a scenario schedules, and how a WAN link is shaped.
//!
//! Pure: what each fault is and how it reads; the lab crate applies them.

use serde::{Deserialize, Serialize};

use crate::proxy::DirProps;

/// One fault. Sites are the topology's site ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// SIGKILL every process of the site (orchestrator node, agents and the VMs and
    /// volumes inside them): the site is lost.
    KillSite { site: String },
    /// SIGSTOP every process of the site: it hangs, then comes back with stale state.
    PauseSite { site: String },
    /// SIGCONT what `pause-site` stopped.
    ResumeSite { site: String },
    /// Start the site's killed processes again on their data directories.
    RestartSite { site: String },
    /// SIGKILL the orchestrator node that leads now (restarted at the end).
    KillLeader,
    /// Start the node the last `kill-leader` killed again.
    RestartLeader,
    /// Drop all traffic between two sites.
    Partition { a: String, b: String },
    /// Drop what `from` sends to `to`, not the reverse.
    PartitionOneWay { from: String, to: String },
    /// Cut a site off from every other site.
    Isolate { site: String },
    /// Remove every network fault.
    Heal,
    /// The disk under `volume`'s replica at `site` fails: every I/O to it errors.
    DiskFail { site: String, volume: String },
    /// That disk is replaced: I/O works again (the replica resyncs).
    DiskRepair { site: String, volume: String },
    /// Make the WAN between two production sites slow, both ways: one-way delay
    /// (± uniform jitter), segment loss (each loss stalls the stream like a TCP
    /// retransmission) and a bandwidth limit (0: none), through the lab's link proxies.
    /// All zero puts the link back to full speed; `heal` does too.
    Shape {
        a: String,
        b: String,
        #[serde(flatten)]
        shape: LinkShape,
    },
    /// The clocks of the site's agents run at `rate` times real time (0.5: half
    /// speed, a lease lasts twice as long as the agent thinks; 1: normal again). The
    /// agents time their leases with it.
    ClockSkew { site: String, rate: f64 },
}

/// Bounds a scenario's link shape and clock rates are checked against.
pub const SHAPE_DELAY_MAX_MS: f64 = 10_000.0;
pub const SHAPE_LOSS_MAX: f64 = 0.5;
pub const SHAPE_BANDWIDTH_MAX_MBIT_S: f64 = 100_000.0;
pub const CLOCK_RATE_MIN: f64 = 0.1;
pub const CLOCK_RATE_MAX: f64 = 10.0;

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// How slow a link is made, both ways: one-way delay ± uniform jitter, the
/// probability that a 1448-byte segment is lost, and a bandwidth limit (0: none). All
/// zero is full speed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkShape {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay_ms: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub jitter_ms: f64,
    /// Probability that a 1448-byte segment is lost (0.01 is 1 %).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub loss: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bandwidth_mbit_s: f64,
}

impl LinkShape {
    /// What the shape does to each direction, in the proxy's terms.
    pub fn props(&self) -> DirProps {
        let us = |ms: f64| (ms * 1000.0).round() as u64;
        DirProps {
            delay_us: us(self.delay_ms),
            jitter_us: us(self.jitter_ms),
            bandwidth_bytes_per_s: (self.bandwidth_mbit_s * 1e6 / 8.0).round() as u64,
            loss_probability: self.loss,
            ..DirProps::default()
        }
    }

    /// Everything wrong with the shape (empty: fine).
    pub fn problems(&self) -> Vec<String> {
        let LinkShape {
            delay_ms,
            jitter_ms,
            loss,
            bandwidth_mbit_s,
        } = *self;
        let mut out = Vec::new();
        let within = |v: f64, max: f64| v.is_finite() && (0.0..=max).contains(&v);
        if !within(delay_ms, SHAPE_DELAY_MAX_MS) {
            out.push(format!(
                "delay_ms = {delay_ms} must be 0 to {SHAPE_DELAY_MAX_MS} ms"
            ));
        }
        if !within(jitter_ms, SHAPE_DELAY_MAX_MS) {
            out.push(format!(
                "jitter_ms = {jitter_ms} must be 0 to {SHAPE_DELAY_MAX_MS} ms"
            ));
        }
        if !within(loss, SHAPE_LOSS_MAX) {
            out.push(format!(
                "loss = {loss} must be a probability from 0 to {SHAPE_LOSS_MAX} (0.01 is 1 %)"
            ));
        }
        if !within(bandwidth_mbit_s, SHAPE_BANDWIDTH_MAX_MBIT_S)
            || (bandwidth_mbit_s > 0.0 && bandwidth_mbit_s < 0.008)
        {
            out.push(format!(
                "bandwidth_mbit_s = {bandwidth_mbit_s} must be 0 (no limit) or 0.008 (1 kB/s) to {SHAPE_BANDWIDTH_MAX_MBIT_S} Mbit/s"
            ));
        }
        out
    }

    /// One line for logs and `lab status`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.delay_ms > 0.0 || self.jitter_ms > 0.0 {
            parts.push(format!(
                "{} ms ± {} ms one way",
                self.delay_ms, self.jitter_ms
            ));
        }
        if self.loss > 0.0 {
            parts.push(format!("{} % segment loss", self.loss * 100.0));
        }
        if self.bandwidth_mbit_s > 0.0 {
            parts.push(format!("{} Mbit/s", self.bandwidth_mbit_s));
        }
        if parts.is_empty() {
            "full speed".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Everything wrong with a clock rate (empty: fine).
pub fn clock_rate_problems(rate: f64) -> Vec<String> {
    if rate.is_finite() && (CLOCK_RATE_MIN..=CLOCK_RATE_MAX).contains(&rate) {
        Vec::new()
    } else {
        vec![format!(
            "rate = {rate} must be {CLOCK_RATE_MIN} to {CLOCK_RATE_MAX} (1 is real time, 0.5 half speed)"
        )]
    }
}

impl Fault {
    /// The sites this fault names.
    pub fn sites(&self) -> Vec<&str> {
        match self {
            Fault::KillSite { site }
            | Fault::PauseSite { site }
            | Fault::ResumeSite { site }
            | Fault::RestartSite { site }
            | Fault::Isolate { site }
            | Fault::DiskFail { site, .. }
            | Fault::DiskRepair { site, .. }
            | Fault::ClockSkew { site, .. } => vec![site],
            Fault::Partition { a, b } | Fault::Shape { a, b, .. } => vec![a, b],
            Fault::PartitionOneWay { from, to } => vec![from, to],
            Fault::KillLeader | Fault::RestartLeader | Fault::Heal => vec![],
        }
    }

    /// One line for logs and results.
    pub fn describe(&self) -> String {
        match self {
            Fault::KillSite { site } => format!("kill every process of {site}"),
            Fault::PauseSite { site } => format!("pause (SIGSTOP) every process of {site}"),
            Fault::ResumeSite { site } => format!("resume (SIGCONT) {site}"),
            Fault::RestartSite { site } => format!("restart the killed processes of {site}"),
            Fault::KillLeader => "kill the leading orchestrator node".into(),
            Fault::RestartLeader => "restart the orchestrator node killed as leader".into(),
            Fault::Partition { a, b } => format!("partition {a} | {b}"),
            Fault::PartitionOneWay { from, to } => format!("drop what {from} sends to {to}"),
            Fault::Isolate { site } => format!("isolate {site}"),
            Fault::Heal => "heal every network fault".into(),
            Fault::DiskFail { site, volume } => {
                format!("fail the disk under {volume}'s replica at {site}")
            }
            Fault::DiskRepair { site, volume } => {
                format!("repair the disk under {volume}'s replica at {site}")
            }
            Fault::Shape { a, b, shape } => {
                format!("shape the link {a} <-> {b}: {}", shape.describe())
            }
            Fault::ClockSkew { site, rate } => {
                format!("run the clocks of {site}'s agents at {rate} x real time")
            }
        }
    }
}
