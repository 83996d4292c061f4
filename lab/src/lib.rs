//! # lab — metrodr's lab, shared by the CLI, the tests and the benchmarks
//!
//! One lab, one wait, one workload:
//!
//! - [`procs`]: processes held by their PID, started as children that die with their
//!   owner (`PR_SET_PDEATHSIG`), up once their first line says so;
//! - [`daemons`]: the metrodr daemons (orchestrator nodes, agents, volume processes),
//!   their config files and how each is started, here or in a site's namespace;
//! - [`cluster`]: the lab cluster — a topology's nodes and agents on loopback or with
//!   each site a network namespace (WAN link proxies between production sites),
//!   brought up step by step; its certificates in [`certs`];
//! - [`faults`]: the faults a scenario injects and how the lab heals;
//! - [`workload`]: the acknowledged-writes workload and its oracle;
//! - [`wait`]: the one polling wait, with a deadline;
//! - [`api`] and [`states`]: the operator API calls every harness makes, and the one
//!   place its state strings are read;
//! - [`runner`]: the chaos scenario runner and its journal (`runner.log`);
//! - [`soak`]: many random schedules through the runner, one after another, and
//!   their summary.
//!
//! `metrodr lab|chaos|demo` (argument parsing, printing) stay in the CLI. This crate
//! depends on orchestrator (client, pb), chaos (netns, proxy, scenario, invariants),
//! agent (its fault-file names), drills, security, replication and topology; none of
//! those depends on it.
//!
//! Never: touch a process, namespace or file that is not the lab's own.

pub mod api;
pub mod certs;
pub mod cluster;
pub mod daemons;
pub mod error;
pub mod faults;
pub mod procs;
pub mod runner;
pub mod soak;
pub mod states;
pub mod wait;
pub mod workload;

pub use cluster::{LAB_TOPOLOGY, Lab, LabRecord, Options};
pub use error::LabError;
pub use wait::{TimedOut, wait, wait_blocking};
