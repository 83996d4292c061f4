//! Renderers: a [`Report`](crate::Report) → JSON, HTML, text or CSV.
//!
//! Every renderer is a pure function of the report: no clock, no randomness, no hash-map
//! iteration order, so the same report always gives the same bytes (signing depends on
//! it). Each signable renderer takes an optional [`Seal`]: the signature token to embed,
//! which [`crate::sign`] fills in. Without one the document is plainly unsigned.

pub(crate) mod csv;
pub(crate) mod html;
pub(crate) mod json;
pub(crate) mod text;

/// The signature token to embed in a document and the key it names.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seal<'a> {
    /// The whole `mdrsig1.ed25519.<key>.<signature>` token.
    pub token: &'a str,
    /// The 64-hex public key part of the token, shown to readers.
    pub public_key_hex: &'a str,
}
