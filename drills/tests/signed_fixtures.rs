//! Reports signed by earlier versions still verify: an auditor's copy of a report
//! keeps its value across upgrades (the fixtures and how they were made:
//! `tests/fixtures/README.md`).

use std::path::Path;

use drills::{Format, VerifyError, parse_public_key, verify};

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn v1_key() -> drills::VerifyingKey {
    let hex = String::from_utf8(fixture("report-v1.pub")).expect("hex");
    parse_public_key(hex.trim()).expect("the fixture's public key")
}

#[test]
fn reports_signed_in_format_1_still_verify_pinned_to_their_key() {
    let key = v1_key();
    for (name, format) in [
        ("report-v1.json", Format::Json),
        ("report-v1.html", Format::Html),
        ("report-v1.txt", Format::Text),
    ] {
        let v = verify(&fixture(name), Some(&key))
            .unwrap_or_else(|e| panic!("{name} no longer verifies: {e}"));
        assert_eq!(v.format, format, "{name}");
        assert_eq!(
            (v.report_id.as_str(), v.status.as_str(), v.passed),
            ("op-1", "succeeded", true),
            "{name}"
        );
        if let Some(r) = &v.report {
            assert_eq!(r.format_version, 1, "{name}");
            assert_eq!(r.kind, "test-drill", "{name}");
            let db = &r.apps[0];
            assert_eq!((db.app.as_str(), db.rto_achieved_s), ("db", Some(0.5)));
            assert_eq!(db.steps.len(), 6, "{name}");
            // Format 1 had no typed kinds: they read as absent.
            assert!(db.steps.iter().all(|s| s.kind.is_none()), "{name}");
            assert_eq!(r.checks.len(), 4, "{name}");
            assert!(
                r.checks.iter().all(|c| c.passed && c.kind.is_none()),
                "{name}"
            );
        } else {
            assert_eq!(
                format,
                Format::Text,
                "{name}: only text carries no report data"
            );
        }
    }
}

#[test]
fn a_changed_byte_in_a_format_1_report_still_fails() {
    let key = v1_key();
    let mut doc = fixture("report-v1.json");
    let at = doc
        .windows(4)
        .position(|w| w == b"0.5,")
        .expect("the achieved RTO");
    doc[at + 2] = b'4';
    let err = verify(&doc, Some(&key)).expect_err("an edited report must not verify");
    assert!(
        matches!(err, VerifyError::SignatureMismatch { .. }),
        "{err}"
    );
}
