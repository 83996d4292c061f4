//! CSV history: one row per app per report, for spreadsheets. Not signed.

use crate::Report;
use crate::report::iso_utc;

const HEADER: [&str; 12] = [
    "id",
    "kind",
    "status",
    "started_utc",
    "app",
    "tier",
    "site_before",
    "site_after",
    "rto_target_s",
    "rto_achieved_s",
    "passed",
    "reason",
];

/// A spreadsheet runs a cell that starts with `=`, `+`, `-`, `@`, tab or CR as a
/// formula: such text (an app name, a reason) gets a leading `'` so it stays text.
fn text_cell(s: &str) -> std::borrow::Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}").into()
    } else {
        s.into()
    }
}

pub(crate) fn render(reports: &[Report]) -> String {
    // RFC 4180: CRLF line ends, fields with a comma, quote or line break are quoted and
    // their quotes doubled; the csv crate's defaults except the terminator.
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(Vec::new());
    // Writing into a Vec cannot fail.
    w.write_record(HEADER).expect("write to memory");
    for r in reports {
        let started = iso_utc(r.started_ms);
        for a in &r.apps {
            let tier = a.tier.to_string();
            let target = a.rto_target_s.to_string();
            let achieved = a.rto_achieved_s.map(|v| v.to_string()).unwrap_or_default();
            w.write_record([
                r.id.as_str(),
                &r.kind,
                &r.status,
                &started,
                &text_cell(&a.app),
                &tier,
                &a.site_before,
                &a.site_after,
                &target,
                &achieved,
                if a.passed { "true" } else { "false" },
                &text_cell(&a.reason),
            ])
            .expect("write to memory");
        }
    }
    let bytes = w.into_inner().expect("flush to memory");
    // Every field came from a &str, so the bytes are UTF-8.
    String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8")
}

#[cfg(test)]
mod formula_tests {
    use super::text_cell;

    #[test]
    fn text_a_spreadsheet_would_run_stays_text() {
        assert_eq!(text_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(text_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(text_cell("-2+3"), "'-2+3");
        assert_eq!(text_cell("db"), "db");
    }
}
