//! gRPC services served by every orchestrator node (see `proto/metrodr.proto`).

pub mod agent;
pub mod auth;
pub mod cluster;
pub mod operations;
pub mod operator;
pub mod reports;

/// The refusal of a request enum this node cannot act on: value 0 (nothing set: a
/// client older than this field?) or a value it does not know (a newer client?),
/// naming the values there are.
pub(crate) fn unknown_request_enum(what: &str, value: i32, values: &str) -> tonic::Status {
    tonic::Status::invalid_argument(if value == 0 {
        format!("the request sets no {what} (is the client older than the cluster?): use {values}")
    } else {
        format!(
            "{what} {value} is unknown to this node (is the client newer than the cluster?): use {values}"
        )
    })
}
