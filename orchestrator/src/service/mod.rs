//! gRPC services served by every orchestrator node (see `proto/metrodr.proto`).

pub mod agent;
pub mod auth;
pub mod cluster;
pub mod operations;
pub mod operator;
pub mod reports;
