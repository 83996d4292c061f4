//! # drills — drill and failover reports auditors can verify offline
//!
//! The report half of DESIGN §7. The orchestrator builds a [`Report`] from its
//! operation records; this crate renders it as JSON (machines), one self-contained HTML
//! page with a timeline chart (auditors), plain text (terminals) or a CSV history
//! (spreadsheets), and signs JSON, HTML and text with the cluster's Ed25519 key so that
//! `metrodr report verify FILE` can check any copy offline ([`verify`]).
//!
//! - [`report`]: the model (plain serde data, versioned by [`FORMAT_VERSION`]).
//! - `render`: pure renderers; same report → same bytes, no clock, no randomness.
//! - [`sign`]: the signature token, [`render_signed`] and [`verify`].
//! - [`keys`]: the key file (the only I/O in this crate).
//!
//! Must never: read a clock or the local time zone, talk to the network, depend on
//! another workspace crate, or put anything in a signed document that a verifier does
//! not check byte for byte.

pub mod keys;
mod render;
pub mod report;
pub mod sign;

pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use keys::{KeyError, generate_key_file, load_signing_key, parse_public_key, public_key_hex};
pub use report::{
    AppResult, AuditSlice, Check, CheckKind, FORMAT_VERSION, ReplicationSample, Report, StepKind,
    StepTiming, iso_utc,
};
pub use sign::{
    Format, SignError, TOKEN_PREFIX, Verified, VerifyError, render, render_signed, verify,
};

/// Pretty JSON of the report with `"signature": null` (use [`render_signed`] to sign).
pub fn to_json(report: &Report) -> String {
    render::json::render(report, None)
}

/// The self-contained HTML page, unsigned (use [`render_signed`] to sign).
pub fn to_html(report: &Report) -> String {
    render::html::render(report, None)
}

/// Plain text for terminals, unsigned (use [`render_signed`] to sign).
pub fn to_text(report: &Report) -> String {
    render::text::render(report, None)
}

/// CSV history, one row per app per report (RFC 4180, CRLF line ends). Not signed.
pub fn history_csv(reports: &[Report]) -> String {
    render::csv::render(reports)
}

#[cfg(test)]
mod tests;
