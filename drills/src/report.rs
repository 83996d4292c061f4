//! The report model: what one drill or failover did, per app and per step.
//!
//! Plain data with serde. The orchestrator fills it from its operation records and the
//! renderers in [`crate::render`] turn it into JSON, HTML, text or CSV. Nothing here reads
//! a clock or does I/O; every time is a unix-millisecond value the orchestrator recorded.
//!
//! The field set is a persisted format: [`FORMAT_VERSION`] says which one, and a test
//! pins it. Fields may be added (readers ignore unknown fields, so a newer report's JSON
//! still parses in an older verifier); renaming or removing one is a new version.

use serde::{Deserialize, Serialize};

/// The version of the report format written into [`Report::format_version`].
///
/// - 1: the first format.
/// - 2: each step carries its [`StepKind`] and each check its [`CheckKind`] (a format-1
///   report reads with both absent, and its signature verifies as before).
pub const FORMAT_VERSION: u32 = 2;

/// One operation (drill, failover, switchover or failback) and its outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`FORMAT_VERSION`] at the time of writing.
    pub format_version: u32,
    /// The operation id, e.g. `op-7`.
    pub id: String,
    pub cluster: String,
    pub metrodr_version: String,
    /// `test-drill`, `switchover-drill`, `site-loss-drill`, `failover`, `switchover` or
    /// `failback`.
    pub kind: String,
    /// `succeeded`, `failed`, `interrupted`, `running` or `aborted`.
    pub status: String,
    pub started_by: String,
    /// Unix time in milliseconds.
    pub started_ms: u64,
    /// Unix time in milliseconds; `None` while the operation runs (or if it was cut off).
    pub ended_ms: Option<u64>,
    pub note: String,
    pub target_site: String,
    pub apps: Vec<AppResult>,
    pub replication: Vec<ReplicationSample>,
    pub checks: Vec<Check>,
    pub audit: AuditSlice,
}

/// What happened to one app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppResult {
    pub app: String,
    pub tier: u32,
    pub site_before: String,
    /// Where the app ran afterwards; for a test drill, the DR site the drill copy ran at.
    pub site_after: String,
    pub rto_target_s: f64,
    /// `None` when the app never came up (or was skipped).
    pub rto_achieved_s: Option<f64>,
    /// RPO evidence, e.g. `sync: snapshot at sequence 1234 (primary at 1234)`.
    pub rpo: String,
    pub passed: bool,
    /// Why the app failed or was skipped; empty when it passed.
    pub reason: String,
    pub steps: Vec<StepTiming>,
}

/// One step of an app's plan and how it went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    /// For people (`serve volumes at south-h2`).
    pub name: String,
    /// What the step does (absent in format 1).
    #[serde(default)]
    pub kind: Option<StepKind>,
    /// Unix time in milliseconds.
    pub started_ms: u64,
    /// `None` while the step runs (or if it never finished).
    pub ended_ms: Option<u64>,
    /// `Some(true)` ok, `Some(false)` failed, `None` no result (yet).
    pub ok: Option<bool>,
    pub detail: String,
}

/// The replication link of one app at one phase of the operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicationSample {
    pub app: String,
    /// `before`, `during` or `after`.
    pub phase: String,
    /// `in-sync`, `resyncing`, `down`, `alone` or `unknown`.
    pub link: String,
    pub lag: String,
    pub within_bound: bool,
    pub detail: String,
}

/// A named yes/no check of the whole operation (e.g. "production kept serving").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// For people.
    pub name: String,
    /// What the check verifies (absent in format 1).
    #[serde(default)]
    pub kind: Option<CheckKind>,
    pub passed: bool,
    pub detail: String,
}

/// The audit-log entries this report covers; the digest binds the report to them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditSlice {
    pub from_seq: u64,
    pub to_seq: u64,
    pub entries: u64,
    /// Hex SHA-256 of the slice, computed by the orchestrator.
    pub digest: String,
}

/// What a step of an operation does. The orchestrator records each step's kind and
/// reports it; a reader decides on the kind, never on the step's name.
///
/// `Unknown` stands for a kind a newer metrodr wrote: an older verifier still reads
/// the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// Wait for an operator's approval (policy `manual-approval`).
    Approval,
    /// Destroy the app's VMs at the source (the source is declared lost).
    Fence,
    /// Shut the app's VMs down at the source (a graceful move).
    Stop,
    /// Stop serving the app's volume group at the source (a graceful move drains it).
    StopVolumes,
    /// Promote the group at the target (epoch + 1) and make the target active.
    PromoteAndMove,
    /// Serve the promoted group at the target.
    ServeVolumes,
    /// Define and start the app's VMs on their new hosts.
    StartVms,
    /// Every VM running, then the app's probes.
    HealthGate,
    /// A drill's record of production before it starts.
    Baseline,
    /// A drill's copy-on-write snapshot of the app's replicas.
    Snapshot,
    /// A drill's copies of the app's VMs, on its isolated network.
    StartDrillVms,
    /// A drill's check that production is as it was.
    ProductionCheck,
    /// A drill's removal of everything it made.
    Cleanup,
    /// A drill's check of production once the drill is gone.
    ProductionAfter,
    #[serde(other)]
    Unknown,
}

impl StepKind {
    /// How people call it.
    pub fn label(self) -> &'static str {
        match self {
            StepKind::Approval => "approval",
            StepKind::Fence => "fence",
            StepKind::Stop => "stop",
            StepKind::StopVolumes => "stop volumes",
            StepKind::PromoteAndMove => "promote and move",
            StepKind::ServeVolumes => "serve volumes",
            StepKind::StartVms => "start VMs",
            StepKind::HealthGate => "health gate",
            StepKind::Baseline => "baseline",
            StepKind::Snapshot => "snapshot",
            StepKind::StartDrillVms => "start drill VMs",
            StepKind::ProductionCheck => "production check",
            StepKind::Cleanup => "cleanup",
            StepKind::ProductionAfter => "production after",
            StepKind::Unknown => "unknown step",
        }
    }
}

/// What a report's check verifies. `Unknown`: a check a newer metrodr wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// A test drill left production as it was (same hosts, states, replicas up to
    /// date), during and after.
    ProductionUntouched,
    /// Every drill copy joined a network its agent verified isolated.
    DrillIsolated,
    /// The drill's VMs, snapshots and network are gone from every host.
    DrillRemoved,
    /// Every app passed its health gate within its RTO target.
    RtoMet,
    #[serde(other)]
    Unknown,
}

impl Report {
    /// The verdict: the operation succeeded, every app passed and every check passed.
    pub fn passed(&self) -> bool {
        self.status == "succeeded"
            && self.apps.iter().all(|a| a.passed)
            && self.checks.iter().all(|c| c.passed)
    }

    /// `"PASS"` or `"FAIL"`, as the renderers print it.
    pub fn verdict(&self) -> &'static str {
        if self.passed() { "PASS" } else { "FAIL" }
    }

    /// The first number JSON cannot carry (NaN or infinite), as `"app X: field"`.
    ///
    /// serde_json writes such a number as `null`, which would not read back; signing
    /// refuses such a report rather than produce a file the verifier cannot parse.
    pub fn non_finite_number(&self) -> Option<String> {
        for a in &self.apps {
            if !a.rto_target_s.is_finite() {
                return Some(format!("app {:?}: rto_target_s", a.app));
            }
            if a.rto_achieved_s.is_some_and(|v| !v.is_finite()) {
                return Some(format!("app {:?}: rto_achieved_s", a.app));
            }
        }
        None
    }
}

/// Formats unix milliseconds as UTC ISO-8601 with milliseconds: `2023-11-14T22:13:20.000Z`.
///
/// Done by hand (proleptic Gregorian calendar, days → civil date) so that no local time
/// zone or clock can ever leak into a report.
pub fn iso_utc(unix_ms: u64) -> String {
    let ms = unix_ms % 1000;
    let secs = unix_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let (year, month, day) = civil_from_days(secs / 86_400);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Count in 400-year eras starting on 0000-03-01 so that the leap day is the last day
    // of each shifted year; 1970-01-01 is day 719_468 of that count.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097; // 0..=146_096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Milliseconds as seconds with one decimal: `12.3 s`.
pub(crate) fn fmt_ms_as_s(ms: u64) -> String {
    format!("{}.{} s", ms / 1000, (ms % 1000) / 100)
}

/// Seconds with one decimal: `12.3 s`.
pub(crate) fn fmt_s(s: f64) -> String {
    format!("{s:.1} s")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn format_version_is_pinned() {
        // Changing the model's persisted shape means a new version and a verifier that
        // still reads the old one.
        assert_eq!(FORMAT_VERSION, 2);
    }

    #[test]
    fn iso_utc_known_dates() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso_utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso_utc(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(iso_utc(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn passed_needs_status_apps_and_checks() {
        let mut r = sample();
        assert!(!r.passed(), "the sample has a failed app");
        r.apps.iter_mut().for_each(|a| a.passed = true);
        assert!(r.passed());
        r.checks[0].passed = false;
        assert!(!r.passed());
        r.checks[0].passed = true;
        r.status = "interrupted".into();
        assert!(!r.passed());
    }

    #[test]
    fn json_roundtrip_of_the_model() {
        let r = sample();
        let json = serde_json::to_string(&r).expect("serialize");
        let back: Report = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, r);
    }

    /// A realistic report: three apps (one failed), sequential steps, a running check.
    pub(crate) fn sample() -> Report {
        let t0 = 1_700_000_000_000;
        let step = |name: &str, from_s: u64, to_s: Option<u64>, ok: Option<bool>| StepTiming {
            name: name.into(),
            kind: Some(match name {
                "snapshot" => StepKind::Snapshot,
                "start-vm" => StepKind::StartDrillVms,
                "health-gate" => StepKind::HealthGate,
                _ => StepKind::Cleanup,
            }),
            started_ms: t0 + from_s * 1000,
            ended_ms: to_s.map(|t| t0 + t * 1000),
            ok,
            detail: format!("{name} detail"),
        };
        let app = |name: &str, tier: u32, passed: bool, steps: Vec<StepTiming>| AppResult {
            app: name.into(),
            tier,
            site_before: "site-a".into(),
            site_after: "site-b".into(),
            rto_target_s: 120.0,
            rto_achieved_s: passed.then_some(42.5),
            rpo: "sync: snapshot at sequence 1234 (primary at 1234)".into(),
            passed,
            reason: if passed {
                String::new()
            } else {
                "health gate \"http\" failed, 3/3 tries".into()
            },
            steps,
        };
        Report {
            format_version: FORMAT_VERSION,
            id: "op-7".into(),
            cluster: "prod-east".into(),
            metrodr_version: "0.1.0".into(),
            kind: "test-drill".into(),
            status: "succeeded".into(),
            started_by: "alice".into(),
            started_ms: t0,
            ended_ms: Some(t0 + 95_000),
            note: "quarterly drill, ticket CHG-1".into(),
            target_site: "site-b".into(),
            apps: vec![
                app(
                    "billing-db",
                    1,
                    true,
                    vec![
                        step("snapshot", 0, Some(4), Some(true)),
                        step("start-vm", 4, Some(30), Some(true)),
                        step("health-gate", 30, Some(42), Some(true)),
                        step("cleanup", 80, Some(90), Some(true)),
                    ],
                ),
                app(
                    "web",
                    2,
                    false,
                    vec![
                        step("snapshot", 1, Some(5), Some(true)),
                        step("start-vm", 5, Some(40), Some(true)),
                        step("health-gate", 40, Some(75), Some(false)),
                    ],
                ),
                app(
                    "reports",
                    3,
                    true,
                    vec![
                        step("snapshot", 2, Some(6), Some(true)),
                        step("start-vm", 6, Some(20), Some(true)),
                        step("cleanup", 85, None, None),
                    ],
                ),
            ],
            replication: vec![
                ReplicationSample {
                    app: "billing-db".into(),
                    phase: "before".into(),
                    link: "in-sync".into(),
                    lag: "0 B".into(),
                    within_bound: true,
                    detail: String::new(),
                },
                ReplicationSample {
                    app: "billing-db".into(),
                    phase: "after".into(),
                    link: "in-sync".into(),
                    lag: "0 B".into(),
                    within_bound: true,
                    detail: "kept replicating".into(),
                },
                ReplicationSample {
                    app: "web".into(),
                    phase: "during".into(),
                    link: "resyncing".into(),
                    lag: "12 MiB".into(),
                    within_bound: false,
                    detail: "bound 8 MiB".into(),
                },
            ],
            checks: vec![Check {
                name: "production kept serving".into(),
                kind: Some(CheckKind::ProductionUntouched),
                passed: true,
                detail: "0 failed probes of 95".into(),
            }],
            audit: AuditSlice {
                from_seq: 100,
                to_seq: 180,
                entries: 81,
                digest: "ab".repeat(32),
            },
        }
    }
}
