//! # agent — the host daemon
//!
//! One per hypervisor host: drives VMs through libvirt, holds a lease from the
//! orchestrator leader and fences itself when it loses it, and serves the replication
//! endpoints of the volumes placed on its host (DESIGN §1, §4).
//!
//! Status: not built yet (issue "Agent"). Empty placeholder for the workspace layout.
