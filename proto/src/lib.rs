//! # proto — metrodr's gRPC contract
//!
//! Generated code for `metrodr.proto` and the files it imports (`agent.proto`,
//! `spec.proto`, `state.proto`, `audit.proto`, `plan.proto`, `operation.proto`; services
//! Cluster, Operator, Agent), and the typed Rust forms of the agent protocol
//! ([`agent`]) with their conversions. The orchestrator serves the services; agents and
//! the CLI are its clients. The contract is the only thing orchestrator and agents
//! share: neither reads the other's prose.

/// Generated messages, clients and servers (package `metrodr.v1`).
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("metrodr.v1");
}

pub mod agent;
