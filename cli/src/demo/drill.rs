//! The demo's drill and reports: before the site is lost, a test drill starts a copy of
//! the apps at the other site on snapshots of their replicas while production keeps
//! writing; every operation's report is exported signed by the cluster key (HTML for
//! people, JSON for machines) and checked offline, as an auditor would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use orchestrator::client::Client;
use orchestrator::pb;
use orchestrator::state::{OpStatus, Operation};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct DrillApp {
    pub app: String,
    /// Where the drill copy ran.
    pub site: String,
    pub rto_s: Option<f64>,
    pub rto_target_s: f64,
    pub passed: bool,
}

#[derive(Debug, Serialize)]
pub struct DrillOutcome {
    pub op: u64,
    pub status: String,
    /// The drill succeeded (what `status` says, as a value to decide on).
    #[serde(skip)]
    pub succeeded: bool,
    pub apps: Vec<DrillApp>,
    /// The drill's safety checks: production untouched (hosts, states, replicas within
    /// their bound, during and after), the copies isolated, everything removed.
    pub safe: bool,
    /// Every copy healthy within its app's RTO target (reported; a loaded machine
    /// running TCG guests may miss it without anything being unsafe).
    pub rto_met: bool,
    pub report_html: PathBuf,
    pub report_json: PathBuf,
    pub verified: bool,
}

/// A signed report, exported and verified offline against the cluster's key.
#[derive(Debug, Serialize)]
pub struct SignedReport {
    pub html: PathBuf,
    pub json: PathBuf,
    pub public_key: String,
    pub verified: bool,
    pub passed: bool,
}

/// Export op's report as HTML and JSON into `dir` and verify both offline.
pub async fn export(c: &Client, op: u64, dir: &Path, name: &str) -> anyhow::Result<SignedReport> {
    std::fs::create_dir_all(dir)?;
    let mut verified = true;
    let mut passed = false;
    let mut key = String::new();
    let mut paths = Vec::new();
    for (format, wire) in [
        ("html", pb::ReportFormat::Html),
        ("json", pb::ReportFormat::Json),
    ] {
        let r =
            c.op.clone()
                .get_report(pb::GetReportRequest {
                    op,
                    format: wire.into(),
                })
                .await
                .with_context(|| format!("the report of op-{op}"))?
                .into_inner();
        let path = dir.join(format!("{name}.{format}"));
        std::fs::write(&path, &r.document)
            .with_context(|| format!("writing {}", path.display()))?;
        let pinned = drills::parse_public_key(&r.public_key)?;
        let bytes = std::fs::read(&path)?;
        match drills::verify(&bytes, Some(&pinned)) {
            Ok(v) => passed = v.passed,
            Err(e) => {
                eprintln!("demo: {} does not verify: {e}", path.display());
                verified = false;
            }
        }
        key = r.public_key;
        paths.push(path);
    }
    Ok(SignedReport {
        html: paths[0].clone(),
        json: paths[1].clone(),
        public_key: key,
        verified,
        passed,
    })
}

/// Run a test drill of `apps` and follow it to its signed report.
pub async fn test_drill(
    c: &Client,
    apps: Vec<String>,
    reports: &Path,
    table: bool,
) -> anyhow::Result<DrillOutcome> {
    let r =
        c.op.clone()
            .start_operation(pb::StartOperationRequest {
                actor: "demo-operator".into(),
                verb: pb::OperationVerb::TestDrill.into(),
                apps,
                site: String::new(),
                dry_run: false,
            })
            .await
            .context("starting the test drill")?
            .into_inner();
    let op = r.op;
    if table {
        outln!(
            "\nTest drill (op-{op}): a copy of every app at its other site, on copy-on-write snapshots of its replicas and an isolated network, while production keeps writing"
        );
    }
    let done: Operation = lab::wait(
        Duration::from_secs(180),
        &format!("the test drill op-{op} to end"),
        || async {
            lab::api::operation(c, op)
                .await
                .filter(|o| o.status != OpStatus::Running)
        },
    )
    .await?;
    let signed = export(c, op, reports, &format!("drill-op-{op}")).await?;
    let report: drills::Report = {
        let text = std::fs::read(&signed.json)?;
        drills::verify(&text, None)
            .ok()
            .and_then(|v| v.report)
            .context("the drill's report")?
    };
    let apps: Vec<DrillApp> = report
        .apps
        .iter()
        .map(|a| DrillApp {
            app: a.app.clone(),
            site: a.site_after.clone(),
            rto_s: a.rto_achieved_s,
            rto_target_s: a.rto_target_s,
            passed: a.passed,
        })
        .collect();
    if table {
        for a in &apps {
            outln!(
                "  {:<8} copy at {:<6} healthy after {:>6}  (target {} s)  {}",
                a.app,
                a.site,
                a.rto_s.map_or("-".into(), |s| format!("{s:.2} s")),
                a.rto_target_s,
                if a.passed { "pass" } else { "FAIL" }
            );
        }
        for ch in &report.checks {
            outln!(
                "  [{}] {}",
                if ch.passed { "ok" } else { "FAILED" },
                ch.name
            );
        }
        outln!(
            "  report (signed, verified offline: {}): {}",
            if signed.verified { "yes" } else { "NO" },
            signed.html.display()
        );
    }
    Ok(DrillOutcome {
        op,
        status: orchestrator::report::status(done.status).to_string(),
        succeeded: done.status == OpStatus::Succeeded,
        apps,
        safe: report
            .checks
            .iter()
            .filter(|c| !c.name.contains("RTO"))
            .all(|c| c.passed),
        rto_met: report.apps.iter().all(|a| a.passed),
        report_html: signed.html,
        report_json: signed.json,
        verified: signed.verified,
    })
}
