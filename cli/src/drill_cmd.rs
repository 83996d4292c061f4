//! Drills and reports: `drill run|list|show`, `report list|show|export|verify|keygen`
//! and `app readiness`. Reports are built and signed by the cluster; `report verify`
//! checks a file offline, with nothing but the file (and, to pin it, the cluster's
//! public key).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use orchestrator::pb;
use orchestrator::readiness::Readiness;
use orchestrator::state::{OpKind, Operation};

use crate::cluster_cmd::ClusterArgs;
use crate::op_cmd::{RunArgs, get_operation, list_operations, status_err};
use crate::output::{Output, print_json, table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DrillKindArg {
    /// Non-disruptive: start a copy of each app at the other site, on snapshots of its
    /// replicas and an isolated network; production is not touched.
    Test,
    /// A real planned migration (zero loss), optionally back (`--and-back`).
    Switchover,
    /// Declare a whole site lost and fail it over for real (needs `--yes`).
    SiteLoss,
}

#[derive(Debug, Args)]
pub struct DrillRunArgs {
    #[arg(long, value_enum)]
    pub kind: DrillKindArg,
    /// The apps to drill (test, switchover).
    #[arg(long, num_args = 1.., conflicts_with = "all")]
    pub apps: Vec<String>,
    /// Every app of the cluster (test, switchover).
    #[arg(long)]
    pub all: bool,
    /// Test: the site the copies start at (default: each app's other site).
    /// Switchover: the site to move to. Site loss: the site to declare lost.
    #[arg(long)]
    pub to: Option<String>,
    /// Switchover: move the apps back once they are healthy at the other site.
    #[arg(long)]
    pub and_back: bool,
    /// Site loss: yes, fence that site for real.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum DrillCmd {
    /// Run a drill and follow it to its report.
    Run(DrillRunArgs),
    /// Drills, newest first (test drills, and switchovers and site losses run as drills).
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// A drill's report (text; `-o json` for the signed JSON).
    Show { id: String },
    /// The drills the topology schedules (`[[drill]]`): apps, interval, last run, next
    /// due. The leader runs each when it is due, as `schedule:<id>`.
    Schedule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Json,
    Html,
    Text,
    /// The history of every operation, one row per app (not signed).
    Csv,
}

impl FormatArg {
    fn to_wire(self) -> pb::ReportFormat {
        match self {
            FormatArg::Json => pb::ReportFormat::Json,
            FormatArg::Html => pb::ReportFormat::Html,
            FormatArg::Text => pb::ReportFormat::Text,
            FormatArg::Csv => pb::ReportFormat::Csv,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ReportCmd {
    /// Every operation's report: kind, status, pass/fail.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One report, signed by the cluster, on standard output (text by default).
    Show {
        id: String,
        #[arg(long, value_enum, default_value_t = FormatArg::Text)]
        format: FormatArg,
    },
    /// Write a signed report (html, json, text) or the CSV history to a file.
    Export {
        /// The operation (`op-7` or `7`); not needed for `--format csv`.
        id: Option<String>,
        #[arg(long, value_enum, default_value_t = FormatArg::Html)]
        format: FormatArg,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a report file offline: the cluster's signature over every byte. Exit 0
    /// only when it verifies (and matches the pinned key, if one is given).
    Verify {
        file: PathBuf,
        /// The cluster's public key (hex, from `metrodr report key`) the report must
        /// be signed with.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// The cluster's public report key (give it to auditors).
    Key,
    /// Create a cluster signing key file (give every orchestrator node the same file:
    /// `signing_key = "FILE"` in its config).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

/// `op-7` or `7` → 7.
pub fn parse_op(id: &str) -> anyhow::Result<u64> {
    id.trim()
        .trim_start_matches("op-")
        .parse()
        .with_context(|| format!("{id:?} is not an operation id (op-7 or 7)"))
}

pub async fn drill(cmd: DrillCmd, c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    match cmd {
        DrillCmd::Run(a) => run(a, c, out).await,
        DrillCmd::List { limit } => {
            let ops = list_operations(c, limit).await?;
            let drills: Vec<&Operation> = ops
                .iter()
                .filter(|o| {
                    o.kind == OpKind::Drill || o.plan.as_deref().is_some_and(|p| p.drill.is_some())
                })
                .collect();
            list(&drills, out)
        }
        DrillCmd::Schedule => schedules(c, out).await,
        DrillCmd::Show { id } => {
            let format = if out == Output::Json {
                FormatArg::Json
            } else {
                FormatArg::Text
            };
            show(c, &id, format).await
        }
    }
}

async fn run(a: DrillRunArgs, c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    let apps = if a.all {
        let client = c.connect().await?;
        client
            .op
            .clone()
            .list_apps(pb::ListAppsRequest {})
            .await
            .map_err(|e| status_err(&client.addr, e))?
            .into_inner()
            .apps
            .into_iter()
            .map(|x| x.id)
            .collect()
    } else {
        a.apps.clone()
    };
    let to = a.to.clone().unwrap_or_default();
    let (verb, apps, site) = match a.kind {
        DrillKindArg::Test => {
            if apps.is_empty() {
                bail!("name the apps to drill (--apps A B …) or --all");
            }
            (pb::OperationVerb::TestDrill, apps, to)
        }
        DrillKindArg::Switchover => {
            if apps.is_empty() || to.is_empty() {
                bail!("a switchover drill needs the apps (--apps … or --all) and --to SITE");
            }
            (pb::OperationVerb::SwitchoverDrill, apps, to)
        }
        DrillKindArg::SiteLoss => {
            if to.is_empty() {
                bail!("a site-loss drill needs the site to declare lost: --to SITE");
            }
            if !a.yes && !a.run.dry_run {
                bail!(
                    "a site-loss drill fences site {to} for real: every app there fails over. \
                     Add --yes to go ahead (or --dry-run to see the plan)"
                );
            }
            (pb::OperationVerb::SiteLossDrill, Vec::new(), to)
        }
    };
    let first = crate::op_cmd::start_op(verb, apps.clone(), site, a.run, c, out).await?;
    let Some((op, code)) = first else {
        return Ok(ExitCode::SUCCESS);
    };
    let mut last = op;
    let mut code = code;
    if a.kind == DrillKindArg::Switchover && a.and_back && code == ExitCode::SUCCESS {
        let o = get_operation(&c.connect().await?, op).await?;
        let home = o
            .plan
            .as_deref()
            .and_then(|p| p.apps().next())
            .map(|m| m.from.to_string())
            .context("the switchover's plan names no app")?;
        // The old primaries become up to date again once the reversed replication
        // has caught up; only then may they be promoted.
        if out == Output::Table {
            outln!("\nwaiting for the replicas at {home} to be up to date again…");
        }
        wait_up_to_date(
            c,
            &apps,
            &home,
            std::time::Duration::from_secs(a.run.timeout_s),
        )
        .await?;
        if out == Output::Table {
            outln!("and back to {home}:");
        }
        if let Some((back, c2)) = crate::op_cmd::start_op(
            pb::OperationVerb::SwitchoverDrill,
            apps,
            home,
            a.run,
            c,
            out,
        )
        .await?
        {
            last = back;
            code = c2;
        }
    }
    if out == Output::Table && !a.run.no_wait {
        outln!();
        for id in if last == op { vec![op] } else { vec![op, last] } {
            let r = report(c, id, FormatArg::Text).await?;
            out!("{}", r.document);
            outln!("(export it: metrodr report export op-{id} --format html --out op-{id}.html)");
        }
    }
    Ok(code)
}

async fn schedules(c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    let client = c.connect().await?;
    let r = client
        .op
        .clone()
        .drill_schedules(pb::DrillSchedulesRequest {})
        .await
        .map_err(|e| status_err(&client.addr, e))?
        .into_inner();
    let list = r
        .schedules
        .into_iter()
        .map(orchestrator::wire::schedule_from_wire)
        .collect::<Result<Vec<_>, _>>()
        .context("a drill schedule from the cluster")?;
    match out {
        Output::Json => print_json(&list)?,
        Output::Table => {
            if list.is_empty() {
                outln!("no drill schedules (add `[[drill]]` entries to the topology)");
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = table(&["schedule", "apps", "every", "last run", "next due (UTC)"]);
            for s in &list {
                t.add_row(vec![
                    s.id.clone(),
                    s.apps
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    format!("{} s", s.every_s),
                    s.last
                        .as_ref()
                        .map(|run| {
                            format!(
                                "{} {} ({})",
                                run.op,
                                orchestrator::report::status(run.status),
                                drills::iso_utc(run.began_ms)
                            )
                        })
                        .unwrap_or_else(|| "never".into()),
                    if s.running {
                        "running now".into()
                    } else {
                        drills::iso_utc(s.next_due_ms)
                    },
                ]);
            }
            outln!("{t}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Wait until every replica of `apps`' volumes at `site` is up to date.
async fn wait_up_to_date(
    c: &ClusterArgs,
    apps: &[String],
    site: &str,
    within: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + within;
    let client = c.connect().await?;
    loop {
        let vols = client
            .op
            .clone()
            .list_volumes(pb::ListVolumesRequest { app: String::new() })
            .await
            .map_err(|e| status_err(&client.addr, e))?
            .into_inner()
            .volumes;
        let behind: Vec<String> = vols
            .iter()
            .filter(|v| apps.contains(&v.app))
            .flat_map(|v| v.replicas.iter().map(move |r| (v, r)))
            .filter(|(_, r)| r.site == site && !lab::states::is_up_to_date(r))
            .map(|(v, r)| {
                let data = lab::states::shown(lab::states::replica_data(r));
                format!("{}@{site} {data}", v.id)
            })
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the replicas at {site} are still not up to date ({}); not moving back",
                behind.join(", ")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn list(ops: &[&Operation], out: Output) -> anyhow::Result<ExitCode> {
    match out {
        Output::Json => print_json(
            &ops.iter()
                .map(|o| {
                    serde_json::json!({
                        "id": o.id.to_string(),
                        "kind": orchestrator::report::kind(o),
                        "status": orchestrator::report::status(o.status),
                        "apps": o.apps,
                        "started_by": o.started_by,
                        "started_ms": o.started_ms,
                        "ended_ms": o.ended_ms,
                    })
                })
                .collect::<Vec<_>>(),
        )?,
        Output::Table => {
            let mut t = table(&["id", "kind", "status", "apps", "by", "started (UTC)"]);
            for o in ops {
                t.add_row(vec![
                    o.id.to_string(),
                    orchestrator::report::kind(o).to_string(),
                    orchestrator::report::status(o.status).to_string(),
                    o.apps
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    o.started_by.clone(),
                    drills::iso_utc(o.started_ms),
                ]);
            }
            outln!("{t}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn report(c: &ClusterArgs, op: u64, format: FormatArg) -> anyhow::Result<pb::GetReportReply> {
    let client = c.connect().await?;
    let r = client
        .op
        .clone()
        .get_report(pb::GetReportRequest {
            op,
            format: format.to_wire().into(),
        })
        .await
        .map_err(|e| status_err(&client.addr, e))?
        .into_inner();
    Ok(r)
}

async fn show(c: &ClusterArgs, id: &str, format: FormatArg) -> anyhow::Result<ExitCode> {
    let r = report(c, parse_op(id)?, format).await?;
    out!("{}", r.document);
    Ok(if r.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

pub async fn report_cmd(cmd: ReportCmd, c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    match cmd {
        ReportCmd::List { limit } => {
            let ops = list_operations(c, limit).await?;
            list(&ops.iter().collect::<Vec<_>>(), out)
        }
        ReportCmd::Show { id, format } => show(c, &id, format).await,
        ReportCmd::Export {
            id,
            format,
            out: path,
        } => {
            let op = match (&id, format) {
                (_, FormatArg::Csv) => 0,
                (Some(id), _) => parse_op(id)?,
                (None, _) => bail!("name the operation to export (e.g. op-7), or use --format csv"),
            };
            let r = report(c, op, format).await?;
            std::fs::write(&path, &r.document)
                .with_context(|| format!("cannot write {}", path.display()))?;
            if out == Output::Table {
                outln!(
                    "wrote {} ({} bytes){}",
                    path.display(),
                    r.document.len(),
                    if format == FormatArg::Csv {
                        String::new()
                    } else {
                        format!(
                            "; signed by cluster key {}; check it with `metrodr report verify {}`",
                            r.public_key,
                            path.display()
                        )
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ReportCmd::Verify { file, public_key } => verify(&file, public_key.as_deref(), out),
        ReportCmd::Key => {
            let r = report(c, 0, FormatArg::Csv).await?;
            match out {
                Output::Json => print_json(&serde_json::json!({"public_key": r.public_key}))?,
                Output::Table => outln!("{}", r.public_key),
            }
            Ok(ExitCode::SUCCESS)
        }
        ReportCmd::Keygen { out: path } => {
            let key = drills::generate_key_file(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            outln!(
                "wrote {} (keep it secret; mode 0600); public key {}",
                path.display(),
                drills::public_key_hex(&key)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `report verify`: offline, no cluster needed.
pub fn verify(file: &PathBuf, pinned: Option<&str>, out: Output) -> anyhow::Result<ExitCode> {
    // Reports are kilobytes; a huge file is not one (and is not read into memory).
    const MAX: u64 = 64 << 20;
    let len = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    if len > MAX {
        bail!(
            "{} is {len} bytes: not a metrodr report (they are far smaller than {} MiB)",
            file.display(),
            MAX >> 20
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let pin = match pinned {
        Some(h) => Some(drills::parse_public_key(h).context("--public-key")?),
        None => None,
    };
    match drills::verify(&bytes, pin.as_ref()) {
        Ok(v) => {
            match out {
                Output::Json => print_json(&serde_json::json!({
                    "file": file.display().to_string(), "verified": true,
                    "report": v.report_id, "status": v.status, "passed": v.passed,
                    "public_key": v.public_key_hex, "pinned": pin.is_some(),
                }))?,
                Output::Table => {
                    outln!(
                        "{}: signature OK — report {} ({}, {}), signed by cluster key {}",
                        file.display(),
                        v.report_id,
                        v.status,
                        if v.passed { "passed" } else { "NOT passed" },
                        v.public_key_hex
                    );
                    if pin.is_none() {
                        outln!(
                            "note: the key was not pinned; compare it with the cluster's (`metrodr report key`) or pass --public-key"
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            match out {
                Output::Json => print_json(&serde_json::json!({
                    "file": file.display().to_string(), "verified": false, "error": e.to_string(),
                }))?,
                Output::Table => eprintln!("{}: NOT VERIFIED: {e}", file.display()),
            }
            Ok(ExitCode::from(1))
        }
    }
}

pub async fn readiness(
    apps: Vec<String>,
    c: &ClusterArgs,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let client = c.connect().await?;
    let r = client
        .op
        .clone()
        .readiness(pb::ReadinessRequest { apps })
        .await
        .map_err(|e| status_err(&client.addr, e))?
        .into_inner();
    let list = r
        .apps
        .into_iter()
        .map(orchestrator::wire::readiness_from_wire)
        .collect::<Result<Vec<Readiness>, _>>()
        .context("an app's readiness from the cluster")?;
    match out {
        Output::Json => print_json(&list)?,
        Output::Table => {
            let mut t = table(&["app", "active", "other", "score", "last drill", "reasons"]);
            for x in &list {
                t.add_row(vec![
                    x.app.clone(),
                    x.active_site.clone(),
                    x.other_site.clone(),
                    x.score.to_string(),
                    x.last_drill
                        .as_ref()
                        .map(|d| format!("{}, {:.1} days ago", d.op, d.days))
                        .unwrap_or_else(|| "never".into()),
                    if x.penalties.is_empty() {
                        "ready".into()
                    } else {
                        x.penalties
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")
                    },
                ]);
            }
            outln!("{t}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
