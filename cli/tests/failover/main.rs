//! Failover, switchover and failback with real processes: three orchestrator nodes and
//! an agent per host on libvirt's test driver, the lab topology (examples/lab.toml:
//! db ← api ← portal in tiers 1–3 at north, archive waiting for approval, mail at south).
//!
//! Every consistency group really replicates, here by processes outside the cluster
//! (`volume serve --report-to` primaries and `volume replica` secondaries, the lab
//! topology without `volumes = "agents"`): the primaries report their link, and only
//! that makes the other site's replicas `UpToDate` and promotable. These tests check
//! the control plane's decisions; `agent_volumes.rs` runs the same lab with the
//! agents serving and promoting the volumes.
//!
//! One test binary in modules: [`harness`] (the lab with external volume processes and
//! what the tests read of a record), [`site_loss`] (a site lost, with or without a
//! quorum), [`leader`] (the leader or the whole control plane failing during
//! operations) and [`planned`] (switchover, failback and health gates).

// Each test holds the `serial()` guard for its whole run, on purpose (see cluster.rs).
#![allow(clippy::await_holding_lock, clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;
mod harness;
mod leader;
mod planned;
mod site_loss;
