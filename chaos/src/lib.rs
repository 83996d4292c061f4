//! # chaos — the lab and fault injection
//!
//! Sites as network namespaces, a userspace link proxy for delay/loss/bandwidth, fault
//! schedules from a seed, and invariant checkers (DESIGN §8).
//!
//! Status: the network-namespace lab primitive exists ([`netns`]: nodes as namespaces
//! on a bridge, isolate/partition/heal with iptables, cleanup of crashed labs), and so
//! does the probe guest builder ([`guest`]: a Debian cloud kernel + busybox initramfs
//! that writes numbered records to its disk and prints what it acknowledged, with
//! parsers for its console and disk — the end-to-end RPO probe), and so does the
//! userspace link proxy ([`proxy`]: a TCP forwarder adding delay, jitter, bandwidth
//! limits and loss stalls per direction, with blackhole and reset cuts, changeable
//! while connections are live). Seeded fault schedules and invariant checkers are not
//! built yet (issue "Lab and chaos").

pub mod guest;
pub mod libvirtd;
pub mod netns;
pub mod proxy;
