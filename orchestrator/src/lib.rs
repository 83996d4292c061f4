//! # orchestrator — the Raft-replicated brain of metrodr
//!
//! One Raft node (openraft + RocksDB) per site; the replicated state machine records the
//! topology, where every app runs, every volume replica's role and epoch, site and host
//! state, operations (the saga log) and the hash-chained audit log (DESIGN §3).
//!
//! - [`state`]: the state machine itself — pure, deterministic, exhaustively tested.
//! - [`planner`]: failover, switchover and failback plans — pure, exhaustively tested.
//! - [`executor`]: runs plans on the leader as sagas recorded step by step in Raft.
//! - [`controller`]: keeps every app's volume group served by the agents (pure).
//! - [`store`]: RocksDB storage of the Raft log, vote and state machine.
//! - [`raft_types`]: openraft's type configuration and node naming.
//! - [`network`], [`service`], [`node`], [`server`]: gRPC between nodes and for
//!   operators, the write path (forwarding to the leader), startup.
//! - [`http`]: `/metrics` and `/healthz`.
//! - [`client`]: the operator client the CLI uses.
//!
//! Never: let I/O decide anything (decisions are in [`state`]), or report a log write
//! as durable before it is flushed.

pub mod client;
pub mod clock;
pub mod config;
pub mod controller;
pub mod detector;
pub mod executor;
pub mod http;
pub mod leases;
pub mod network;
pub mod node;
pub mod plan;
pub mod planner;
pub mod raft_types;
pub mod readiness;
pub mod reconciler;
pub mod records;
pub mod report;
pub mod schedule;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
#[cfg(test)]
mod test_support;
pub mod wire;

/// Generated gRPC code for `proto/metrodr.proto` (the `proto` crate).
pub use proto::pb;
