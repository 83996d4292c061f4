//! Plain text for terminals: aligned columns, no colour codes, and every operator-chosen
//! string made printable (control characters and bidi overrides are shown escaped, so a
//! name cannot move the cursor, recolour the terminal or fake a line of the report).
//!
//! The first three lines are fixed (`metrodr report (format N)`, `id:`, `status:`);
//! [`crate::sign::verify`] reads the id and status back from them.

use std::fmt::Write as _;

use super::Seal;
use crate::Report;
use crate::report::{StepTiming, fmt_ms_as_s, fmt_s, iso_utc};

/// The first line of every text report starts with this.
pub(crate) const FIRST_LINE_PREFIX: &str = "metrodr report (format ";
/// The line that carries the signature token, always the last one.
pub(crate) const SIGNATURE_LINE_PREFIX: &str = "signature: ";

pub(crate) fn render(r: &Report, seal: Option<Seal<'_>>) -> String {
    let mut out = String::new();
    let ended = r.ended_ms.map_or_else(|| "not ended".to_owned(), iso_utc);
    let duration = r.ended_ms.map_or_else(
        || "-".to_owned(),
        |e| fmt_ms_as_s(e.saturating_sub(r.started_ms)),
    );
    let facts = [
        ("id", clean(&r.id)),
        ("status", format!("{} ({})", clean(&r.status), r.verdict())),
        ("kind", clean(&r.kind)),
        ("cluster", clean(&r.cluster)),
        ("target site", clean(&r.target_site)),
        ("started by", clean(&r.started_by)),
        ("started (UTC)", iso_utc(r.started_ms)),
        ("ended (UTC)", ended),
        ("duration", duration),
        ("metrodr version", clean(&r.metrodr_version)),
        ("note", clean(&r.note)),
    ];
    let _ = writeln!(out, "{FIRST_LINE_PREFIX}{})", r.format_version);
    for (k, v) in facts {
        let _ = writeln!(out, "{:<17}{v}", format!("{k}:"));
    }

    section(&mut out, "APPLICATIONS");
    let rows = r.apps.iter().map(|a| {
        vec![
            clean(&a.app),
            a.tier.to_string(),
            format!("{} -> {}", clean(&a.site_before), clean(&a.site_after)),
            match a.rto_achieved_s {
                Some(v) if v > a.rto_target_s => format!("{} OVER", fmt_s(v)),
                Some(v) => fmt_s(v),
                None => "-".to_owned(),
            },
            fmt_s(a.rto_target_s),
            (if a.passed { "pass" } else { "FAIL" }).to_owned(),
            clean(&a.rpo),
            clean(&a.reason),
        ]
    });
    table(
        &mut out,
        "",
        &[
            "APP",
            "TIER",
            "SITES",
            "RTO",
            "TARGET",
            "RESULT",
            "RPO EVIDENCE",
            "REASON",
        ],
        rows.collect(),
    );

    section(
        &mut out,
        "STEPS (start is the time since the operation started)",
    );
    for a in &r.apps {
        let _ = writeln!(out, "{} (tier {})", clean(&a.app), a.tier);
        if a.steps.is_empty() {
            out.push_str("  no steps recorded\n");
            continue;
        }
        let rows = a.steps.iter().map(|s| {
            vec![
                format!(
                    "+{}",
                    fmt_ms_as_s(s.started_ms.saturating_sub(r.started_ms))
                ),
                s.ended_ms.map_or_else(
                    || "-".to_owned(),
                    |e| fmt_ms_as_s(e.saturating_sub(s.started_ms)),
                ),
                step_result(s).to_owned(),
                clean(&s.name),
                clean(&s.detail),
            ]
        });
        table(
            &mut out,
            "  ",
            &["START", "DURATION", "RESULT", "STEP", "DETAIL"],
            rows.collect(),
        );
    }

    section(&mut out, "REPLICATION");
    let rows = r.replication.iter().map(|s| {
        vec![
            clean(&s.app),
            clean(&s.phase),
            clean(&s.link),
            clean(&s.lag),
            (if s.within_bound { "yes" } else { "NO" }).to_owned(),
            clean(&s.detail),
        ]
    });
    table(
        &mut out,
        "",
        &["APP", "PHASE", "LINK", "LAG", "IN BOUND", "DETAIL"],
        rows.collect(),
    );

    section(&mut out, "CHECKS");
    let rows = r.checks.iter().map(|c| {
        vec![
            (if c.passed { "pass" } else { "FAIL" }).to_owned(),
            clean(&c.name),
            clean(&c.detail),
        ]
    });
    table(&mut out, "", &["RESULT", "CHECK", "DETAIL"], rows.collect());

    section(&mut out, "AUDIT LOG SLICE");
    let _ = writeln!(
        out,
        "sequence: {}..={} ({} entries)\ndigest:   sha256 {}",
        r.audit.from_seq,
        r.audit.to_seq,
        r.audit.entries,
        clean(&r.audit.digest)
    );

    out.push('\n');
    match seal {
        Some(seal) => {
            let _ = writeln!(
                out,
                "Verify offline with: metrodr report verify FILE\n\
                 (any change to this file, even whitespace, fails verification)\n\
                 signing public key: {}",
                seal.public_key_hex
            );
            let _ = writeln!(out, "{SIGNATURE_LINE_PREFIX}{}", seal.token);
        }
        None => {
            out.push_str("This copy is not signed and cannot be verified.\n");
            let _ = writeln!(out, "{SIGNATURE_LINE_PREFIX}none");
        }
    }
    out
}

pub(crate) fn step_result(s: &StepTiming) -> &'static str {
    match (s.ok, s.ended_ms) {
        (Some(true), _) => "ok",
        (Some(false), _) => "FAILED",
        (None, None) => "running",
        (None, Some(_)) => "no result",
    }
}

fn section(out: &mut String, title: &str) {
    let _ = writeln!(out, "\n{title}");
}

/// Left-aligned columns two spaces apart; the last column is not padded, so no line
/// ends in spaces.
fn table(out: &mut String, indent: &str, header: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        let _ = writeln!(out, "{indent}none");
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = indent.to_owned();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = w - cell.chars().count() + 2;
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// Makes an operator-chosen string safe to print on one terminal line.
pub(crate) fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push(' '),
            // Bidi embeddings, overrides and isolates can make text display in an order
            // other than the bytes' ("trojan source").
            c if c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c) =>
            {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}
