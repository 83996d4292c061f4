//! # agent — the host daemon
//!
//! One per hypervisor host: drives VMs through libvirt, holds a lease from the
//! orchestrator leader and fences itself when it loses it, and serves the replication
//! endpoints of the volumes placed on its host (DESIGN §1, §4).
//!
//! - [`core`]: the agent's decisions, pure — events in (lease granted or lost, commands
//!   received, VM states observed, the fence done, a tick), effects out; property-tested
//!   with crashes and restarts;
//! - [`daemon`]: the agent process, one loop around the core — it waits, does the I/O
//!   the core asks for (register, renew, fence, run commands at most once with the
//!   [`journal`], report) and feeds the results back;
//! - [`lease`]: the agent's lease, pure (clock passed in);
//! - [`config`]: the agent's TOML configuration;
//! - [`hypervisor`]: the blocking [`hypervisor::Hypervisor`] trait over libvirt domains
//!   and its libvirt implementation (reconnects when libvirtd restarts);
//! - [`domain_xml`]: pure generation of a VM's domain XML from its `VmSpec` and this
//!   host's paths, and recognition of the domains the agent manages;
//! - [`volumes`]: the volume groups the cluster places on this host (primary or
//!   secondary, in process), and [`replica_report`]: how their primaries tell the
//!   cluster about the link and ask permission to run without the peer.

pub mod clock;
pub mod config;
pub mod core;
pub mod daemon;
pub mod domain_xml;
pub mod hypervisor;
pub mod journal;
pub mod lease;
pub mod replica_report;
pub mod volumes;
