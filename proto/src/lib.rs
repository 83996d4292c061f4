//! # proto — metrodr's gRPC contract
//!
//! Generated code for `metrodr.proto` (services Cluster, Operator, Agent). The
//! orchestrator serves it; agents and the CLI are its clients. This crate holds no
//! logic: the contract is the only thing orchestrator and agents share.

/// Generated messages, clients and servers (package `metrodr.v1`).
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("metrodr.v1");
}
