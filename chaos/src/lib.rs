//! # chaos — the lab and fault injection
//!
//! Sites as network namespaces, a userspace link proxy for delay/loss/bandwidth, fault
//! schedules from a seed, and invariant checkers (DESIGN §8).
//!
//! What is here: the network-namespace lab primitive ([`netns`]: nodes as namespaces
//! on a bridge; isolate, partition both ways or one way, heal, with iptables; cleanup
//! of crashed labs), the probe guest builder ([`guest`]: a Debian cloud kernel +
//! busybox initramfs that writes numbered records to its disk and prints what it
//! acknowledged), the userspace link proxy ([`proxy`]: delay, jitter, bandwidth, loss
//! stalls, cuts), scenarios ([`scenario`]: fault schedules from TOML or from a seed)
//! and the invariants every chaos run checks ([`invariants`]). The lab that starts a
//! cluster in the namespaces, its faults and the scenario runner are the `lab` crate:
//! they start metrodr processes. Nothing here depends on it.

pub mod guest;
pub mod invariants;
pub mod libvirtd;
pub mod netns;
pub mod proxy;
pub mod scenario;
