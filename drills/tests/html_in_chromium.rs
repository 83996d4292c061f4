//! Renders a realistic signed HTML report and opens it in a real headless Chromium: the
//! page must parse into the DOM we meant (timeline chart, per-app table), screenshot as a
//! non-trivial image, and operator strings must not turn into markup.
//!
//! Artefacts (kept for a human to look at): `<target>/test-artifacts/report.html` and
//! `report.png`. Needs `/usr/bin/chromium` (`scripts/install-deps.sh` installs it).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drills::{
    AppResult, AuditSlice, Check, CheckKind, FORMAT_VERSION, Format, ReplicationSample, Report,
    SigningKey, StepTiming, render_signed, verify,
};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Generous: a cold start on a loaded 2-core machine takes a few seconds.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(60);

fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir), // an absolute dir replaces the base
        None => workspace.join("target"),
    }
}

fn realistic_report() -> Report {
    let t0 = 1_717_000_000_000;
    let step =
        |name: &str, from_ms: u64, to_ms: Option<u64>, ok: Option<bool>, detail: &str| StepTiming {
            name: name.into(),
            kind: None,
            started_ms: t0 + from_ms,
            ended_ms: to_ms.map(|t| t0 + t),
            ok,
            detail: detail.into(),
        };
    let app =
        |name: &str, tier, rto_target_s, rto_achieved_s, passed: bool, reason: &str, steps| {
            AppResult {
                app: name.into(),
                tier,
                site_before: "site-a".into(),
                site_after: "site-b".into(),
                rto_target_s,
                rto_achieved_s,
                rpo: "sync: snapshot at sequence 88213 (primary at 88213)".into(),
                passed,
                reason: reason.into(),
                steps,
            }
        };
    let sample = |app: &str, phase: &str, link: &str, lag: &str, within_bound| ReplicationSample {
        app: app.into(),
        phase: phase.into(),
        link: link.into(),
        lag: lag.into(),
        within_bound,
        detail: String::new(),
    };
    Report {
        format_version: FORMAT_VERSION,
        id: "op-42".into(),
        cluster: "prod-metro".into(),
        metrodr_version: "0.1.0".into(),
        kind: "test-drill".into(),
        status: "succeeded".into(),
        started_by: "alice@ops".into(),
        started_ms: t0,
        ended_ms: Some(t0 + 184_300),
        note: "Q2 drill <b>not bold</b> & CHG-2291".into(),
        target_site: "site-b".into(),
        apps: vec![
            app(
                "billing-db",
                1,
                120.0,
                Some(48.2),
                true,
                "",
                vec![
                    step(
                        "snapshot",
                        0,
                        Some(3_100),
                        Some(true),
                        "4 volumes at seq 88213",
                    ),
                    step("isolate-network", 3_100, Some(4_000), Some(true), ""),
                    step(
                        "start-vm",
                        4_000,
                        Some(31_500),
                        Some(true),
                        "booted on host b2",
                    ),
                    step(
                        "health-gate",
                        31_500,
                        Some(48_200),
                        Some(true),
                        "tcp/5432 + query",
                    ),
                    step(
                        "cleanup",
                        150_000,
                        Some(162_000),
                        Some(true),
                        "drill copy removed",
                    ),
                ],
            ),
            app(
                "web-frontend",
                2,
                60.0,
                None,
                false,
                "health gate \"http /healthz\" failed, 3 of 3 tries",
                vec![
                    step("snapshot", 500, Some(2_900), Some(true), ""),
                    step("start-vm", 2_900, Some(22_000), Some(true), ""),
                    step(
                        "health-gate",
                        22_000,
                        Some(97_000),
                        Some(false),
                        "HTTP 503 three times",
                    ),
                    step("cleanup", 150_000, Some(158_000), Some(true), ""),
                ],
            ),
            app(
                "<img src=x onerror=alert(1)>",
                3,
                300.0,
                Some(71.0),
                true,
                "",
                vec![
                    step("snapshot", 800, Some(3_500), Some(true), ""),
                    step("start-vm", 3_500, Some(40_000), Some(true), ""),
                    step("warm-cache", 40_000, Some(71_000), Some(true), ""),
                    step(
                        "cleanup",
                        165_000,
                        None,
                        None,
                        "still removing the drill copy",
                    ),
                ],
            ),
        ],
        replication: vec![
            sample("billing-db", "before", "in-sync", "0 B", true),
            sample("billing-db", "during", "in-sync", "0 B", true),
            sample("billing-db", "after", "in-sync", "0 B", true),
            sample("web-frontend", "before", "in-sync", "0 B", true),
            sample("web-frontend", "during", "resyncing", "12 MiB", false),
            sample("web-frontend", "after", "in-sync", "0 B", true),
        ],
        checks: vec![
            Check {
                name: "production kept serving".into(),
                kind: Some(CheckKind::ProductionUntouched),
                passed: true,
                detail: "0 of 184 probes failed".into(),
            },
            Check {
                name: "replication kept running".into(),
                kind: None,
                passed: true,
                detail: String::new(),
            },
        ],
        audit: AuditSlice {
            from_seq: 1200,
            to_seq: 1297,
            entries: 98,
            digest: "3f".repeat(32),
        },
    }
}

/// Runs Chromium headless on `url` with `mode_flag`, stdout to `stdout_path`; fails the
/// test (with Chromium's stderr) on a non-zero exit or after the deadline.
fn run_chromium(mode_flag: &str, url: &str, stdout_path: &Path) {
    let profile = tempfile::tempdir().expect("temp profile dir");
    let stderr_path = profile.path().with_extension("stderr");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            "--window-size=1280,1600",
            mode_flag,
            url,
        ])
        .stdin(Stdio::null())
        .stdout(File::create(stdout_path).expect("stdout file"))
        .stderr(File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn chromium");
    let deadline = Instant::now() + CHROMIUM_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            // Our own child, by its PID.
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium {mode_flag} did not finish within {CHROMIUM_DEADLINE:?}; stderr:\n{}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = fs::remove_file(&stderr_path);
    assert!(
        status.success(),
        "chromium {mode_flag} failed ({status}); stderr:\n{stderr}"
    );
}

/// The part of `dom` from the element that starts with `open` to its `close` tag.
fn element<'a>(dom: &'a str, open: &str, close: &str) -> &'a str {
    let start = dom
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in the DOM"));
    let len = dom[start..]
        .find(close)
        .unwrap_or_else(|| panic!("{open} not closed"));
    &dom[start..start + len]
}

#[test]
fn signed_html_report_renders_in_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run `bash scripts/install-deps.sh` (it installs chromium)"
    );
    let started = Instant::now();
    let report = realistic_report();
    let key = SigningKey::from_bytes(&[42; 32]);
    let html = render_signed(&report, Format::Html, &key).expect("sign");
    verify(html.as_bytes(), Some(&key.verifying_key())).expect("the file we hand out verifies");

    let dir = target_dir().join("test-artifacts");
    fs::create_dir_all(&dir).expect("artifact dir");
    let dir = dir.canonicalize().expect("absolute artifact dir");
    let html_path = dir.join("report.html");
    let png_path = dir.join("report.png");
    fs::write(&html_path, &html).expect("write report.html");
    let _ = fs::remove_file(&png_path);
    let url = format!("file://{}", html_path.display());

    let scratch = tempfile::tempdir().expect("scratch");
    run_chromium(
        &format!("--screenshot={}", png_path.display()),
        &url,
        &scratch.path().join("shot.out"),
    );
    let png = fs::read(&png_path).expect("chromium wrote report.png");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "report.png is not a PNG"
    );
    assert!(
        png.len() > 10_000,
        "report.png is only {} bytes: a blank page?",
        png.len()
    );

    let dom_path = scratch.path().join("dom.html");
    run_chromium("--dump-dom", &url, &dom_path);
    let dom = fs::read_to_string(&dom_path).expect("read dumped DOM");

    let svg = element(&dom, "<svg id=\"timeline\"", "</svg>");
    let steps: usize = report.apps.iter().map(|a| a.steps.len()).sum();
    let bars = svg.matches("<rect class=\"bar ").count();
    assert!(
        bars >= steps,
        "{bars} bars for {steps} steps in the timeline"
    );
    assert_eq!(
        svg.matches("class=\"bar failed\"").count(),
        1,
        "the failed health gate"
    );
    assert_eq!(
        svg.matches("class=\"bar running\"").count(),
        1,
        "the cleanup still running"
    );

    let apps = element(&dom, "<table id=\"apps\">", "</table>");
    let tbody = element(apps, "<tbody>", "</tbody>");
    assert_eq!(
        tbody.matches("<tr>").count(),
        report.apps.len(),
        "a row per app"
    );
    assert!(apps.contains("web-frontend") && apps.contains("FAIL"));
    for id in ["replication", "checks"] {
        assert!(
            dom.contains(&format!("<table id=\"{id}\">")),
            "{id} table in the DOM"
        );
    }

    // The hostile app name and note stayed text: the browser built no element from them.
    assert!(
        !dom.contains("<img"),
        "an operator string became an <img> element"
    );
    assert!(
        !dom.contains("<b>"),
        "an operator string became a <b> element"
    );
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert_eq!(
        dom.matches("<script").count(),
        1,
        "only the embedded report data"
    );
    eprintln!(
        "chromium test took {:?}; artefacts in {}",
        started.elapsed(),
        dir.display()
    );
}
