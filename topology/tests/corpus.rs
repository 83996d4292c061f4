//! The broken-topology corpus: every file in `tests/corpus/` is invalid, and says in its
//! header which problems must be reported on which lines:
//!
//! ```text
//! # expect: dangling-ref line 42
//! ```
//!
//! Plus inputs that are awkward to keep as files: garbage bytes, an empty file, a huge
//! file, deep nesting.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use topology::{Code, SourceMap, check_bytes, check_str};

fn expectations(text: &str) -> Vec<(String, usize)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|rest| {
            let (code, line) = rest.split_once(" line ").expect("expect: CODE line N");
            (
                code.trim().to_string(),
                line.trim().parse().expect("line number"),
            )
        })
        .collect()
}

#[test]
fn every_corpus_file_fails_with_the_expected_diagnostics_on_the_expected_lines() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 25,
        "the corpus shrank: {} files",
        files.len()
    );
    let mut failures = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let expected = expectations(&text);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` lines",
            path.display()
        );
        let report = check_bytes(&bytes);
        let map = SourceMap::new(&text);
        let found: Vec<(String, usize)> = report
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| {
                (
                    d.code.to_string(),
                    d.span.as_ref().map_or(0, |s| map.line_col(s.start).line),
                )
            })
            .collect();
        if report.is_valid() {
            failures.push(format!("{}: accepted as valid", path.display()));
        }
        for e in &expected {
            if !found.contains(e) {
                failures.push(format!(
                    "{}: expected {} on line {}, found {:?}",
                    path.display(),
                    e.0,
                    e.1,
                    found
                ));
            }
        }
        for d in report.diagnostics.iter().filter(|d| d.is_error()) {
            if d.span.is_none() {
                failures.push(format!(
                    "{}: error without a line: {}",
                    path.display(),
                    d.message
                ));
            }
            if d.hint.is_none() {
                failures.push(format!(
                    "{}: error without a hint: {}",
                    path.display(),
                    d.message
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn garbage_bytes_are_rejected_as_not_utf8_with_the_offset() {
    let mut bytes = b"[cluster]\nname = \"x\"\n".to_vec();
    bytes.extend([0xff, 0xfe, 0x00, 0x80]);
    let r = check_bytes(&bytes);
    assert!(!r.is_valid());
    assert_eq!(r.diagnostics.len(), 1);
    assert_eq!(r.diagnostics[0].code, Code::Input);
    assert!(
        r.diagnostics[0].message.contains("offset 21"),
        "{}",
        r.diagnostics[0].message
    );
}

#[test]
fn an_empty_file_is_named_as_empty() {
    for src in ["", "\n\n  \n", "# only a comment\n"] {
        let r = check_str(src);
        assert!(!r.is_valid());
        let first = &r.diagnostics[0];
        assert!(
            first.message.contains("empty") || first.message.contains("missing"),
            "{src:?}: {}",
            first.message
        );
    }
}

#[test]
fn a_file_over_the_size_limit_is_refused_without_parsing() {
    let bytes = vec![b'#'; topology::MAX_FILE_BYTES + 1];
    let r = check_bytes(&bytes);
    assert_eq!(r.diagnostics.len(), 1);
    assert_eq!(r.diagnostics[0].code, Code::Input);
    assert!(r.diagnostics[0].message.contains("limited to 64 MiB"));
}

#[test]
fn a_huge_topology_reports_an_error_at_its_exact_line() {
    // 10,000 apps (~5 MB), with one bad reference near the end.
    let topo = topology::generate::generate(topology::generate::GenSpec {
        hosts: 1000,
        apps: 10_000,
        tiers: 4,
        seed: 7,
    });
    let mut text = topology::render::to_toml(&topo);
    let needle = "id = \"app-09990\"";
    let at = text.find(needle).unwrap();
    let line = text[..at].lines().count() + 1;
    text.replace_range(at..at + needle.len(), "id = \"app-09990\"\nbogus_key = 1");
    let r = check_str(&text);
    let map = SourceMap::new(&text);
    let d = r
        .diagnostics
        .iter()
        .find(|d| d.code == Code::UnknownKey)
        .expect("unknown key reported");
    assert_eq!(map.line_col(d.span.clone().unwrap().start).line, line + 1);
}

#[test]
fn deep_nesting_is_a_syntax_error_not_a_stack_overflow() {
    for src in [
        format!("a = {}{}", "[".repeat(100_000), "]".repeat(100_000)),
        format!("a = {}1{}", "{b=".repeat(50_000), "}".repeat(50_000)),
    ] {
        let r = check_str(&src);
        assert!(!r.is_valid());
        assert!(r.diagnostics.iter().any(|d| d.code == Code::Syntax));
    }
}
