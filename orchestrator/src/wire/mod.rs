//! Between the orchestrator's typed records and the protobuf messages of the operator
//! API: record states as enums, typed audit events. Server and clients (the CLI, the
//! lab) both use these conversions, so nobody parses the other side's prose. Decoding
//! checks every id and enum value and says what is wrong; it never panics.

mod app;
mod audit;
mod states;

pub use app::{
    app_health_from_wire, app_health_to_wire, app_reason_from_wire, app_reason_to_wire,
    app_status_from_wire,
};
pub use audit::{audit_event_from_wire, audit_event_to_wire};
pub use proto::agent::wire::WireError;
pub use states::*;
