//! JSON: the machine format. The report's fields at the top level plus `"signature"`
//! (the token, or `null` when unsigned).

use serde::Serialize;

use super::Seal;
use crate::Report;

/// The top-level key that holds the signature token.
pub(crate) const SIGNATURE_FIELD: &str = "signature";

#[derive(Serialize)]
struct Document<'a> {
    #[serde(flatten)]
    report: &'a Report,
    signature: Option<&'a str>,
}

pub(crate) fn render(report: &Report, seal: Option<Seal<'_>>) -> String {
    let doc = Document {
        report,
        signature: seal.map(|s| s.token),
    };
    // Infallible for these types: every map key is a string and no Serialize impl fails.
    let mut out = serde_json::to_string_pretty(&doc).expect("a Report always serializes");
    out.push('\n');
    out
}

/// Compact JSON of the report alone, for embedding in the HTML page.
pub(crate) fn compact(report: &Report) -> String {
    serde_json::to_string(report).expect("a Report always serializes")
}
