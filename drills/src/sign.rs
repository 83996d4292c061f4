//! Ed25519 signatures that make a rendered report tamper-evident, and their offline
//! verification.
//!
//! A signed document (JSON, HTML or text) contains exactly one token
//! `mdrsig1.ed25519.<64 hex public key>.<128 hex signature>`. To sign, the report is
//! rendered with the signature part all `0`s, those exact bytes are signed, and the zeros
//! are replaced by the signature. To verify, the token is found (it must occur exactly
//! once), the zeros are put back and the bytes are checked. So every byte of the file
//! outside the signature is covered, whitespace included, and the public key too.
//!
//! Hex is lowercase and parsed strictly, and signatures are checked with
//! `verify_strict` (canonical encodings only), so no edit of the signature part itself
//! can keep a file valid either. Signing refuses a report whose content already contains
//! the token prefix (an operator-chosen name could otherwise plant a second token).
//!
//! Never does I/O: callers read and write the files.

use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::keys::public_key_hex;
use crate::render::{Seal, html, json, text};
use crate::report::Report;

/// Every signature token starts with this.
pub const TOKEN_PREFIX: &str = "mdrsig1.ed25519.";
const KEY_HEX_LEN: usize = 64;
const SIG_HEX_LEN: usize = 128;

/// A signable document format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Html,
    Text,
}

impl Format {
    /// The usual file extension, without the dot.
    pub fn file_extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Html => "html",
            Format::Text => "txt",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "JSON",
            Format::Html => "HTML",
            Format::Text => "text",
        })
    }
}

/// Why a report could not be signed.
#[derive(Debug, Error)]
pub enum SignError {
    #[error(
        "refusing to sign report {report_id}: its content contains the signature marker \
         `{TOKEN_PREFIX}` {extra} more time(s) (in an operator-chosen name, note or reason), \
         which would make verification ambiguous; rename what contains it and render again"
    )]
    MarkerInContent { report_id: String, extra: usize },
    #[error(
        "refusing to sign report {report_id}: {field} is not a finite number, which JSON \
         cannot carry; this is a bug in whatever built the report"
    )]
    NonFiniteNumber { report_id: String, field: String },
}

/// Why a document did not verify. Each message says what is wrong and what to do.
#[derive(Debug, Error)]
pub enum VerifyError {
    #[error(
        "not a signed metrodr report (no signature token `{TOKEN_PREFIX}` found); only reports \
         rendered with the cluster key can be verified, ask for the signed file"
    )]
    NoSignature,
    #[error(
        "more than one signature token ({count}) in the document; a signed report has exactly \
         one, so this file was assembled or edited by hand: get the original from the cluster"
    )]
    MoreThanOneSignature { count: usize },
    #[error(
        "the signature token is damaged ({problem}); the file was changed after the cluster \
         signed it: get the original from the cluster"
    )]
    MalformedToken { problem: &'static str },
    #[error(
        "the public key in the signature token is not a valid Ed25519 key; the file was \
         changed after the cluster signed it: get the original from the cluster"
    )]
    InvalidPublicKey,
    #[error(
        "the signature does not match the content: the file was changed after the cluster \
         signed it (claimed signing key {public_key_hex}); get the original from the cluster"
    )]
    SignatureMismatch { public_key_hex: String },
    #[error(
        "signed by key {signed_by} but you pinned {pinned}: this report was not signed by the \
         cluster key you expect; check which cluster produced it and which key you pinned"
    )]
    PinnedKeyMismatch { signed_by: String, pinned: String },
    #[error(
        "the signature is valid but the {format} document is not laid out as this metrodr \
         version expects ({problem}); verify it with the metrodr version that wrote it"
    )]
    UnknownLayout {
        format: Format,
        problem: &'static str,
    },
    #[error(
        "the signature is valid but the report data in the {format} document does not parse; \
         verify it with the metrodr version that wrote it"
    )]
    ReportData {
        format: Format,
        #[source]
        source: serde_json::Error,
    },
}

/// What a successful verification established.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    pub format: Format,
    /// The key that signed the document, 64 lowercase hex characters.
    pub public_key_hex: String,
    pub report_id: String,
    pub status: String,
    /// The report's verdict ([`Report::passed`]).
    pub passed: bool,
    /// The whole report, for JSON and HTML (the text format carries no machine copy).
    pub report: Option<Report>,
}

/// Renders `report` unsigned (JSON `"signature": null`, no HTML meta tag, text
/// `signature: none`).
pub fn render(report: &Report, format: Format) -> String {
    render_with(report, format, None)
}

fn render_with(report: &Report, format: Format, seal: Option<Seal<'_>>) -> String {
    match format {
        Format::Json => json::render(report, seal),
        Format::Html => html::render(report, seal),
        Format::Text => text::render(report, seal),
    }
}

/// Renders `report` in `format` and signs it with the cluster key.
pub fn render_signed(
    report: &Report,
    format: Format,
    key: &SigningKey,
) -> Result<String, SignError> {
    if let Some(field) = report.non_finite_number() {
        return Err(SignError::NonFiniteNumber {
            report_id: report.id.clone(),
            field,
        });
    }
    let key_hex = public_key_hex(&key.verifying_key());
    let placeholder = format!("{TOKEN_PREFIX}{key_hex}.{}", "0".repeat(SIG_HEX_LEN));
    let mut doc = render_with(
        report,
        format,
        Some(Seal {
            token: &placeholder,
            public_key_hex: &key_hex,
        }),
    );
    let occurrences = doc.matches(TOKEN_PREFIX).count();
    if occurrences != 1 {
        return Err(SignError::MarkerInContent {
            report_id: report.id.clone(),
            extra: occurrences.saturating_sub(1),
        });
    }
    let signature = key.sign(doc.as_bytes());
    // The one occurrence of the prefix is the placeholder we rendered.
    let token_at = doc
        .find(TOKEN_PREFIX)
        .expect("counted exactly one token above");
    let sig_at = token_at + TOKEN_PREFIX.len() + KEY_HEX_LEN + 1;
    doc.replace_range(
        sig_at..sig_at + SIG_HEX_LEN,
        &hex::encode(signature.to_bytes()),
    );
    Ok(doc)
}

/// Checks a signed document offline and reads back which report it is.
///
/// With `pinned`, the document must also be signed by exactly that key.
pub fn verify(document: &[u8], pinned: Option<&VerifyingKey>) -> Result<Verified, VerifyError> {
    let prefix = TOKEN_PREFIX.as_bytes();
    let positions: Vec<usize> = document
        .windows(prefix.len())
        .enumerate()
        .filter_map(|(i, w)| (w == prefix).then_some(i))
        .collect();
    let token_at = match positions.as_slice() {
        [] => return Err(VerifyError::NoSignature),
        [one] => *one,
        many => return Err(VerifyError::MoreThanOneSignature { count: many.len() }),
    };
    let key_at = token_at + prefix.len();
    let sig_at = key_at + KEY_HEX_LEN + 1;
    let Some(token_rest) = document.get(key_at..sig_at + SIG_HEX_LEN) else {
        return Err(VerifyError::MalformedToken {
            problem: "it is cut short",
        });
    };
    let key_bytes: [u8; 32] =
        strict_hex(&token_rest[..KEY_HEX_LEN]).ok_or(VerifyError::MalformedToken {
            problem: "the public key is not 64 lowercase hex digits",
        })?;
    if token_rest[KEY_HEX_LEN] != b'.' {
        return Err(VerifyError::MalformedToken {
            problem: "no `.` after the public key",
        });
    }
    let sig_bytes: [u8; 64] =
        strict_hex(&token_rest[KEY_HEX_LEN + 1..]).ok_or(VerifyError::MalformedToken {
            problem: "the signature is not 128 lowercase hex digits",
        })?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| VerifyError::InvalidPublicKey)?;
    let key_hex = public_key_hex(&key);

    let mut signed = document.to_vec();
    signed[sig_at..sig_at + SIG_HEX_LEN].fill(b'0');
    key.verify_strict(&signed, &Signature::from_bytes(&sig_bytes))
        .map_err(|_| VerifyError::SignatureMismatch {
            public_key_hex: key_hex.clone(),
        })?;
    if let Some(pinned) = pinned
        && pinned != &key
    {
        return Err(VerifyError::PinnedKeyMismatch {
            signed_by: key_hex,
            pinned: public_key_hex(pinned),
        });
    }
    read_back(document, key_hex)
}

/// Exactly `2 * N` lowercase hex digits → N bytes. Uppercase is refused: it would decode
/// to the same bytes, so accepting it would let a one-byte edit of the signature pass.
fn strict_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N
        || !digits
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

/// Reads the report's identity back out of a document whose signature checked out.
fn read_back(document: &[u8], public_key_hex: String) -> Result<Verified, VerifyError> {
    let sniff = String::from_utf8_lossy(&document[..document.len().min(64)]);
    let format = if sniff.starts_with('{') {
        Format::Json
    } else if sniff.starts_with("<!DOCTYPE html>") {
        Format::Html
    } else if sniff.starts_with(text::FIRST_LINE_PREFIX) {
        Format::Text
    } else {
        return Err(VerifyError::UnknownLayout {
            format: Format::Text,
            problem: "it starts neither like JSON, nor HTML, nor a text report",
        });
    };
    let layout = |problem| VerifyError::UnknownLayout { format, problem };
    let doc = std::str::from_utf8(document).map_err(|_| layout("it is not UTF-8"))?;
    let parse = |json: &str| {
        serde_json::from_str::<Report>(json)
            .map_err(|source| VerifyError::ReportData { format, source })
    };
    let report = match format {
        Format::Json => {
            let mut value: serde_json::Value = serde_json::from_str(doc)
                .map_err(|source| VerifyError::ReportData { format, source })?;
            if let Some(map) = value.as_object_mut() {
                map.remove(json::SIGNATURE_FIELD);
            }
            serde_json::from_value::<Report>(value)
                .map_err(|source| VerifyError::ReportData { format, source })?
        }
        Format::Html => {
            let start = doc
                .find(html::REPORT_SCRIPT_OPEN)
                .ok_or(layout("no embedded report data"))?
                + html::REPORT_SCRIPT_OPEN.len();
            let len = doc[start..]
                .find("</script>")
                .ok_or(layout("the embedded report data is not closed"))?;
            parse(&doc[start..start + len])?
        }
        Format::Text => {
            let mut lines = doc.lines().skip(1);
            let mut field = |name: &str| {
                lines
                    .next()
                    .and_then(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
                    .ok_or(layout("the id and status lines are not where expected"))
            };
            let id = field("id:")?;
            let status_line = field("status:")?;
            let (status, verdict) = status_line
                .rsplit_once(" (")
                .ok_or(layout("the status line has no (PASS) or (FAIL)"))?;
            return Ok(Verified {
                format,
                public_key_hex,
                report_id: id,
                status: status.to_owned(),
                passed: verdict == "PASS)",
                report: None,
            });
        }
    };
    Ok(Verified {
        format,
        public_key_hex,
        report_id: report.id.clone(),
        status: report.status.clone(),
        passed: report.passed(),
        report: Some(report),
    })
}
