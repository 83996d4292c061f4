//! Rendering and signing tests: what an auditor or operator would check.

use ed25519_dalek::SigningKey;

use crate::report::tests::sample;
use crate::*;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

const ALL: [Format; 3] = [Format::Json, Format::Html, Format::Text];

#[test]
fn rendering_is_deterministic() {
    let r = sample();
    assert_eq!(to_json(&r), to_json(&r.clone()));
    assert_eq!(to_html(&r), to_html(&r.clone()));
    assert_eq!(to_text(&r), to_text(&r.clone()));
    let two = [r.clone(), sample()];
    assert_eq!(history_csv(&two), history_csv(&[sample(), sample()]));
    for f in ALL {
        let a = render_signed(&r, f, &key(1)).expect("sign");
        let b = render_signed(&r.clone(), f, &key(1)).expect("sign");
        assert_eq!(a, b, "{f} signed twice differs");
    }
}

#[test]
fn unsigned_documents_say_so_and_do_not_verify() {
    let r = sample();
    assert!(to_json(&r).contains("\"signature\": null"));
    assert!(to_text(&r).ends_with("signature: none\n"));
    assert!(!to_html(&r).contains("metrodr-signature"));
    for f in ALL {
        let err = verify(render(&r, f).as_bytes(), None).expect_err("unsigned must not verify");
        assert!(matches!(err, VerifyError::NoSignature), "{f}: {err}");
        assert!(err.to_string().contains("not a signed metrodr report"));
    }
}

#[test]
fn html_has_the_parts_an_auditor_reads() {
    let r = sample();
    let html = render_signed(&r, Format::Html, &key(1)).expect("sign");
    let svg = &html[html.find("<svg id=\"timeline\"").expect("timeline svg")..];
    let svg = &svg[..svg.find("</svg>").expect("svg closed")];
    let steps: usize = r.apps.iter().map(|a| a.steps.len()).sum();
    assert_eq!(
        svg.matches("<rect class=\"bar ").count(),
        steps,
        "one bar per step"
    );
    assert_eq!(svg.matches("<rect class=\"bar failed\"").count(), 1);
    assert_eq!(svg.matches("<rect class=\"bar running\"").count(), 1);
    assert!(
        svg.contains("<title>health-gate: FAILED"),
        "step names in tooltips"
    );
    assert!(
        svg.contains(">30 s</text>"),
        "time axis labelled in seconds:\n{svg}"
    );
    let apps = &html[html.find("<table id=\"apps\">").expect("apps table")..];
    let apps = &apps[..apps.find("</table>").expect("closed")];
    assert_eq!(apps.matches("<tr><td>").count(), 3, "a row per app");
    for id in ["replication", "checks"] {
        assert!(html.contains(&format!("<table id=\"{id}\">")), "{id} table");
    }
    assert!(html.contains(">FAIL</div>"), "big verdict");
    assert!(html.contains("2023-11-14T22:13:20.000Z"), "UTC start");
    assert!(html.contains("<code>metrodr report verify FILE</code>"));
    assert!(html.contains(&public_key_hex(&key(1).verifying_key())));
    assert!(html.contains(&"ab".repeat(32)), "audit digest");
    for external in ["http:", "https:", "src=", "<link", "@import", "url("] {
        assert!(!html.contains(external), "self-contained: found {external}");
    }
}

#[test]
fn html_escapes_hostile_strings() {
    let mut r = sample();
    r.apps[0].app = "<script>alert(1)</script>".into();
    r.apps[0].steps[0].name = "</title><script>x()</script>".into();
    r.note = "\"><img src=x onerror=alert(1)> & </script><!--".into();
    r.checks[0].detail = "'quoted'".into();
    let html = render_signed(&r, Format::Html, &key(1)).expect("sign");
    assert_eq!(
        html.matches("<script").count(),
        1,
        "only the JSON data block"
    );
    assert!(!html.contains("<img"));
    assert!(!html.contains("<!--"));
    assert_eq!(html.matches("</script>").count(), 1);
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt; &amp;"));
    assert!(html.contains("&#39;quoted&#39;"));
    // And the embedded machine copy still carries the exact strings.
    let v = verify(html.as_bytes(), None).expect("verifies");
    assert_eq!(v.report.as_ref(), Some(&r));
}

#[test]
fn text_is_aligned_and_printable() {
    let mut r = sample();
    r.apps[1].reason = "line one\nstatus: succeeded (PASS)\x1b[2J".into();
    let text = render_signed(&r, Format::Text, &key(1)).expect("sign");
    assert!(text.starts_with(
        "metrodr report (format 2)\nid:              op-7\nstatus:          succeeded (FAIL)\n"
    ));
    assert!(!text.contains('\x1b'), "no terminal escapes");
    assert!(text.contains("line one\\nstatus: succeeded (PASS)\\u{1b}[2J"));
    assert!(
        text.lines().all(|l| l == l.trim_end()),
        "no trailing spaces"
    );
    assert!(
        text.contains("web (tier 2)\n  START    DURATION  RESULT  STEP         DETAIL\n"),
        "{text}"
    );
    assert!(
        text.contains("  +40.0 s  35.0 s    FAILED  health-gate  health-gate detail\n"),
        "{text}"
    );
    let last = text.lines().last().expect("lines");
    assert!(last.starts_with("signature: mdrsig1.ed25519."));
    let v = verify(text.as_bytes(), None).expect("verifies");
    assert_eq!(
        (v.report_id.as_str(), v.status.as_str(), v.passed),
        ("op-7", "succeeded", false)
    );
}

#[test]
fn sign_then_verify_every_format() {
    let k = key(7);
    for passing in [false, true] {
        let mut r = sample();
        if passing {
            r.apps.iter_mut().for_each(|a| a.passed = true);
        }
        for f in ALL {
            let doc = render_signed(&r, f, &k).expect("sign");
            assert_eq!(doc.matches(TOKEN_PREFIX).count(), 1);
            assert!(!doc.contains(&"0".repeat(128)), "{f}: placeholder replaced");
            let v = verify(doc.as_bytes(), Some(&k.verifying_key())).expect("verifies");
            assert_eq!(v.format, f);
            assert_eq!(v.public_key_hex, public_key_hex(&k.verifying_key()));
            assert_eq!(v.report_id, "op-7");
            assert_eq!(v.status, "succeeded");
            assert_eq!(v.passed, passing, "{f}");
            if f != Format::Text {
                assert_eq!(
                    v.report.as_ref(),
                    Some(&r),
                    "{f}: the machine copy reads back"
                );
            }
        }
    }
}

/// A one-app, two-step report: small enough to try an edit at every byte in a debug
/// build (one Ed25519 verification costs ~12 ms there).
fn small() -> Report {
    let mut r = sample();
    r.apps.truncate(1);
    r.apps[0].steps.truncate(2);
    r.replication.truncate(1);
    r
}

/// The byte range of the signature token in `doc`.
fn token_range(doc: &str) -> std::ops::Range<usize> {
    let at = doc.find(TOKEN_PREFIX).expect("token");
    at..at + TOKEN_PREFIX.len() + 64 + 1 + 128
}

/// Flips the low bit of the byte at each position (a digit becomes another digit, a
/// space a `!`, a newline a `\v`), and inside the token also the case bit (hex `a` → `A`
/// decodes to the same byte, so a lax parser would accept it); every edit must fail.
fn assert_edits_fail(doc: &str, positions: impl Iterator<Item = usize>, f: Format) -> usize {
    let token = token_range(doc);
    let mut tried = 0;
    for i in positions {
        let bits: &[u8] = if token.contains(&i) {
            &[0x01, 0x20]
        } else {
            &[0x01]
        };
        for &bit in bits {
            let mut bytes = doc.as_bytes().to_vec();
            bytes[i] ^= bit;
            assert!(
                verify(&bytes, None).is_err(),
                "{f}: flipping bit {bit:#x} of byte {i} ({:?}) still verifies",
                doc.as_bytes()[i] as char
            );
            tried += 1;
        }
    }
    tried
}

#[test]
fn any_one_byte_edit_of_a_text_report_fails() {
    let doc = render_signed(&small(), Format::Text, &key(3)).expect("sign");
    verify(doc.as_bytes(), None).expect("the unedited document verifies");
    let tried = assert_edits_fail(&doc, 0..doc.len(), Format::Text);
    assert_eq!(tried, doc.len() + token_range(&doc).len());
}

#[test]
fn sampled_byte_edits_of_json_and_html_fail() {
    for f in [Format::Json, Format::Html] {
        let doc = render_signed(&sample(), f, &key(3)).expect("sign");
        let whitespace: Vec<usize> = (0..doc.len())
            .filter(|&i| doc.as_bytes()[i].is_ascii_whitespace())
            .collect();
        let spread = whitespace.len() / 40;
        // Every byte of the token, 40 whitespace bytes spread over the file, every 97th byte.
        let mut positions: Vec<usize> = token_range(&doc)
            .chain(whitespace.into_iter().step_by(spread.max(1)))
            .chain((0..doc.len()).step_by(97))
            .collect();
        positions.sort_unstable();
        positions.dedup();
        let tried = assert_edits_fail(&doc, positions.into_iter(), f);
        assert!(tried > 400, "{f}: only {tried} edits tried");
    }
}

#[test]
fn insertions_deletions_and_truncation_fail() {
    for f in ALL {
        let doc = render_signed(&sample(), f, &key(3)).expect("sign");
        let mut appended = doc.clone();
        appended.push('\n');
        assert!(
            verify(appended.as_bytes(), None).is_err(),
            "{f}: newline appended"
        );
        let trimmed = doc.trim_end();
        assert!(
            verify(trimmed.as_bytes(), None).is_err(),
            "{f}: trailing newline removed"
        );
        let mut inserted = doc.clone();
        inserted.insert(1, ' ');
        assert!(
            verify(inserted.as_bytes(), None).is_err(),
            "{f}: space inserted"
        );
    }
}

#[test]
fn content_edit_says_the_file_was_changed() {
    let doc = render_signed(&sample(), Format::Json, &key(3)).expect("sign");
    let edited = doc.replace("\"status\": \"succeeded\"", "\"status\": \"succeedee\"");
    let err = verify(edited.as_bytes(), None).expect_err("edited");
    assert!(
        matches!(err, VerifyError::SignatureMismatch { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("the file was changed after the cluster signed it")
    );
}

#[test]
fn a_wrong_pinned_key_fails() {
    let doc = render_signed(&sample(), Format::Html, &key(3)).expect("sign");
    let err = verify(doc.as_bytes(), Some(&key(4).verifying_key())).expect_err("wrong pin");
    let (signer, pinned) = (
        public_key_hex(&key(3).verifying_key()),
        public_key_hex(&key(4).verifying_key()),
    );
    assert!(
        matches!(err, VerifyError::PinnedKeyMismatch { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("signed by key {signer} but you pinned {pinned}"))
    );
    verify(doc.as_bytes(), Some(&key(3).verifying_key())).expect("right pin");
}

#[test]
fn re_signing_with_another_key_is_detected_only_by_pinning() {
    // Swapping in another key's token needs that key's signature over the new bytes; a
    // forger with their own key can produce a valid file, which is why pinning exists.
    let r = sample();
    let forged = render_signed(&r, Format::Text, &key(9)).expect("sign");
    assert!(verify(forged.as_bytes(), None).is_ok());
    assert!(verify(forged.as_bytes(), Some(&key(3).verifying_key())).is_err());
}

#[test]
fn two_tokens_fail() {
    let a = render_signed(&sample(), Format::Text, &key(3)).expect("sign");
    let both = format!("{a}{a}");
    let err = verify(both.as_bytes(), None).expect_err("two tokens");
    assert!(
        matches!(err, VerifyError::MoreThanOneSignature { count: 2 }),
        "{err}"
    );
    assert!(err.to_string().contains("more than one signature"));
}

#[test]
fn a_name_containing_the_token_prefix_cannot_be_signed() {
    for f in ALL {
        let mut r = sample();
        r.apps[2].steps[0].name = format!("x{TOKEN_PREFIX}{}", "1".repeat(64));
        let err = render_signed(&r, f, &key(3)).expect_err("refused");
        assert!(
            matches!(err, SignError::MarkerInContent { extra: 1.., .. }),
            "{f}: {err}"
        );
        assert!(err.to_string().contains("refusing to sign report op-7"));
    }
}

#[test]
fn a_non_finite_number_cannot_be_signed() {
    let mut r = sample();
    r.apps[1].rto_achieved_s = Some(f64::NAN);
    let err = render_signed(&r, Format::Json, &key(3)).expect_err("refused");
    assert!(
        err.to_string().contains("app \"web\": rto_achieved_s"),
        "{err}"
    );
}

#[test]
fn csv_history_quotes_per_rfc_4180() {
    let mut r = sample();
    r.apps[1].reason = "gate \"http\" failed, then\nretried".into();
    let mut r2 = sample();
    r2.id = "op-8".into();
    r2.apps.truncate(1);
    let csv = history_csv(&[r, r2]);
    let lines: Vec<&str> = csv.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "id,kind,status,started_utc,app,tier,site_before,site_after,rto_target_s,rto_achieved_s,passed,reason"
    );
    assert_eq!(
        lines[1],
        "op-7,test-drill,succeeded,2023-11-14T22:13:20.000Z,billing-db,1,site-a,site-b,120,42.5,true,"
    );
    assert_eq!(
        lines[2],
        "op-7,test-drill,succeeded,2023-11-14T22:13:20.000Z,web,2,site-a,site-b,120,,false,\"gate \"\"http\"\" failed, then\nretried\""
    );
    assert!(lines[4].starts_with("op-8,"));
    assert_eq!(
        lines.len(),
        6,
        "header, 3 + 1 rows, and the empty tail after the last CRLF"
    );
    assert_eq!(lines[5], "");
}
