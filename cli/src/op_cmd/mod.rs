//! Moving apps: `app failover|switchover|failback`, `site fail`, and `op list|show|
//! approve|wait`. Long operations print every step as it finishes and end with the
//! failover record: per app, the achieved RTO against its target and the promotion
//! evidence.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use orchestrator::client::Client;
use orchestrator::pb;
use orchestrator::planner::Plan;
use orchestrator::state::{OpStatus, Operation, StepKind};

mod record;

pub use record::{OpRecord, record};
use record::{print_plan, print_record, result_text};

use crate::cluster_cmd::ClusterArgs;
use crate::output::{Output, print_json, table};

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The apps to move.
    #[arg(required = true)]
    pub apps: Vec<String>,
    /// The site to move them to.
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct FailbackArgs {
    /// The apps to bring home (to their preferred site).
    #[arg(required = true)]
    pub apps: Vec<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct SiteFailArgs {
    /// The production site to declare lost: its apps fail over to the other site
    /// (VMs still running there are destroyed first).
    pub site: String,
    /// There is no quorum left (the site and the witness are both lost): make the
    /// node --cluster reaches the only voter, then declare the loss. You assert that
    /// the other orchestrator nodes are gone: when one comes back and reaches the
    /// survivor it halts, and must be wiped and added again (`cluster add-node`).
    /// Admin only; audited.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args, Clone, Copy)]
pub struct RunArgs {
    /// Show the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Return once the operation has begun instead of following it to the end.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up following after this many seconds (the operation goes on).
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
}

#[derive(Debug, Subcommand)]
pub enum OpCmd {
    /// Operations, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One operation: every step, achieved RTO per app, promotion evidence.
    Show { id: u64 },
    /// Follow an operation until it ends.
    Wait {
        id: u64,
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Approve apps of an operation that wait for an operator (policy
    /// `manual-approval`): every waiting app, or only those named.
    Approve {
        id: u64,
        #[arg(long = "app")]
        apps: Vec<String>,
    },
}

pub fn status_err(addr: &str, e: tonic::Status) -> anyhow::Error {
    orchestrator::client::ClientError::from_status(addr, e).into()
}

/// Plan and begin (or dry-run) a verb, then follow it.
pub async fn start(
    verb: pb::OperationVerb,
    apps: Vec<String>,
    site: String,
    run: RunArgs,
    c: &ClusterArgs,
    out: Output,
) -> anyhow::Result<ExitCode> {
    Ok(start_op(verb, apps, site, run, c, out)
        .await?
        .map_or(ExitCode::SUCCESS, |(_, code)| code))
}

/// `site fail SITE [--force]`. With --force (no quorum left): make the node --cluster
/// reaches the only voter, wait until it leads alone, then declare the loss as usual.
pub async fn site_fail(a: SiteFailArgs, c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    if !a.force {
        return start(
            pb::OperationVerb::SiteFail,
            Vec::new(),
            a.site,
            a.run,
            c,
            out,
        )
        .await;
    }
    if a.run.dry_run {
        bail!(
            "--force changes the cluster's membership and has no dry run; `metrodr site fail {} --dry-run` shows the failover plan (it needs a quorum)",
            a.site
        );
    }
    let client = c.connect().await?;
    let r = client
        .op
        .clone()
        .force_membership(pb::ForceMembershipRequest {
            actor: c.actor(),
            site: a.site.clone(),
        })
        .await
        .map_err(|e| status_err(&client.addr, e))?
        .into_inner();
    // On stderr: with --output json, stdout stays one object (the operation's).
    eprintln!(
        "forced: {} is the only voter now ({} removed); it restarts and leads alone",
        r.voter,
        r.removed.join(", ")
    );
    let addr = client.addr.clone();
    let t0 = Instant::now();
    loop {
        if let Ok(cl) = client.dialer().connect_to(&addr).await
            && let Ok(Ok(s)) = tokio::time::timeout(
                Duration::from_secs(1),
                cl.op.clone().status(pb::StatusRequest {}),
            )
            .await
        {
            let s = s.into_inner();
            if lab::states::raft_role(&s) == Some(lab::states::RaftRole::Leader)
                && s.leader == r.voter
            {
                break;
            }
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "{} did not lead within 30 s of the forced change; see its log",
                r.voter
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let at_survivor = ClusterArgs {
        cluster: addr,
        ..c.clone()
    };
    start(
        pb::OperationVerb::SiteFail,
        Vec::new(),
        a.site,
        a.run,
        &at_survivor,
        out,
    )
    .await
}

/// [`start`], returning the operation begun and how following it ended (None for a
/// dry run or `--no-wait`).
pub async fn start_op(
    verb: pb::OperationVerb,
    apps: Vec<String>,
    site: String,
    run: RunArgs,
    c: &ClusterArgs,
    out: Output,
) -> anyhow::Result<Option<(u64, ExitCode)>> {
    let client = c.connect().await?;
    let mut op = client.op.clone();
    let r = op
        .start_operation(pb::StartOperationRequest {
            actor: c.actor(),
            verb: verb.into(),
            apps,
            site,
            dry_run: run.dry_run,
        })
        .await
        .map_err(|e| status_err(&client.addr, e))?
        .into_inner();
    let plan: Plan = orchestrator::wire::plan_from_wire(
        r.plan
            .context("the cluster's reply carries no plan (a node of another metrodr version?)")?,
    )
    .context("the plan from the cluster")?;
    if run.dry_run {
        match out {
            Output::Json => print_json(&plan)?,
            Output::Table => print_plan(&plan),
        }
        return Ok(None);
    }
    if out == Output::Table {
        print_plan(&plan);
        eprintln!("op-{} begun", r.op);
    }
    if run.no_wait {
        if out == Output::Json {
            print_json(&serde_json::json!({"op": r.op, "plan": plan}))?;
        }
        return Ok(None);
    }
    let code = follow(c, r.op, Duration::from_secs(run.timeout_s), out).await?;
    Ok(Some((r.op, code)))
}

/// `site recover SITE`.
pub async fn recover(site: String, c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    let client = c.connect().await?;
    let r = client
        .op
        .clone()
        .recover_site(pb::RecoverSiteRequest {
            actor: c.actor(),
            site: site.clone(),
        })
        .await
        .map_err(|e| status_err(&client.addr, e))?
        .into_inner();
    let behind: Vec<String> = r
        .not_up_to_date
        .iter()
        .map(lab::states::replica_behind_shown)
        .collect();
    match out {
        Output::Json => print_json(&serde_json::json!({
            "site": site, "audit_seq": r.audit_seq, "not_up_to_date": behind,
        }))?,
        Output::Table => {
            outln!(
                "site {site} recovered (audit #{}); a later loss fails over automatically again",
                r.audit_seq
            );
            if behind.is_empty() {
                outln!("every replica at {site} is up to date");
            } else {
                outln!(
                    "replicas at {site} that resync before they may be promoted (they become up to date when their primary reports in sync):"
                );
                for v in &behind {
                    outln!("  {v}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(cmd: OpCmd, c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    match cmd {
        OpCmd::List { limit } => {
            let ops = list_operations(c, limit).await?;
            match out {
                Output::Json => print_json(&ops.iter().map(record).collect::<Vec<_>>())?,
                Output::Table => {
                    let mut t = table(&["op", "kind", "status", "apps", "by", "note"]);
                    for o in &ops {
                        t.add_row(vec![
                            o.id.to_string(),
                            format!("{:?}", o.kind).to_lowercase(),
                            format!("{:?}", o.status).to_lowercase(),
                            o.apps.len().to_string(),
                            o.started_by.clone(),
                            o.note.clone(),
                        ]);
                    }
                    outln!("{t}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        OpCmd::Show { id } => {
            let o = get(&c.connect().await?, id).await?;
            match out {
                Output::Json => print_json(&record(&o))?,
                Output::Table => print_record(&o),
            }
            Ok(exit_of(&o))
        }
        OpCmd::Wait { id, timeout_s } => follow(c, id, Duration::from_secs(timeout_s), out).await,
        OpCmd::Approve { id, apps } => {
            let client = c.connect().await?;
            client
                .op
                .clone()
                .approve_operation(pb::ApproveOperationRequest {
                    actor: c.actor(),
                    op: id,
                    apps,
                })
                .await
                .map_err(|e| status_err(&client.addr, e))?;
            if out == Output::Table {
                outln!("op-{id}: approved");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The newest `limit` operations, newest first.
pub async fn list_operations(c: &ClusterArgs, limit: u32) -> anyhow::Result<Vec<Operation>> {
    let client = c.connect().await?;
    let r = client
        .op
        .clone()
        .list_operations(pb::ListOperationsRequest { limit })
        .await
        .map_err(|e| status_err(&client.addr, e))?
        .into_inner();
    // One operation this client cannot read (written by a newer metrodr) does not hide
    // the others: it is named on stderr and left out.
    Ok(r.operations
        .into_iter()
        .filter_map(|o| {
            let id = o.id;
            orchestrator::wire::operation_from_wire(o)
                .inspect_err(|e| {
                    eprintln!(
                        "metrodr: op-{id} left out: this client cannot read it ({e}); is the \
                         cluster running a newer metrodr than this client?"
                    )
                })
                .ok()
        })
        .collect())
}

pub async fn get_operation(client: &Client, id: u64) -> anyhow::Result<Operation> {
    get(client, id).await
}

async fn get(client: &Client, id: u64) -> anyhow::Result<Operation> {
    let r = client
        .op
        .clone()
        .get_operation(pb::GetOperationRequest { op: id })
        .await
        .map_err(|e| status_err(&client.addr, e))?
        .into_inner();
    orchestrator::wire::operation_from_wire(
        r.operation.context(
            "the cluster's reply carries no operation (a node of another metrodr version?)",
        )?,
    )
    .context("the operation from the cluster")
}

/// How far an operation is: apps done (healthy or failed) of the apps it moves, and
/// the wave the first unfinished app belongs to (pure).
pub fn progress(o: &Operation) -> (u64, u64, String) {
    let Some(plan) = o.plan.as_deref() else {
        return (0, 0, String::new());
    };
    let finished = |app: &topology::AppId| {
        o.steps.iter().any(|s| {
            s.app() == Some(app)
                && (s.failure().is_some() || (s.kind == StepKind::HealthGate && s.result.is_some()))
        })
    };
    let total = plan.apps().count() as u64;
    let done = plan.apps().filter(|m| finished(&m.app)).count() as u64;
    let wave = plan
        .waves
        .iter()
        .enumerate()
        .find(|(_, w)| w.apps.iter().any(|m| !finished(&m.app)))
        .map_or(String::new(), |(i, w)| {
            format!(
                "wave {}/{} (tier {})",
                i + 1,
                plan.waves.len(),
                w.apps.first().map_or(0, |m| m.tier)
            )
        });
    (done, total, wave)
}

/// Print steps as they finish until the operation ends; then the record. On a
/// terminal a progress bar (apps done, the current wave) stays below the step lines.
async fn follow(
    c: &ClusterArgs,
    id: u64,
    timeout: Duration,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    let mut printed = std::collections::BTreeSet::new();
    // Hidden by itself when stderr is not a terminal (scripts, CI, pipes).
    let bar = indicatif::ProgressBar::with_draw_target(
        None,
        if out == Output::Table {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "  [{elapsed_precise}] {bar:30} {pos}/{len} apps  {msg}",
    ) {
        bar.set_style(style);
    }
    // One connection while it works; a new one after a failure (the node may be gone).
    let mut client: Option<Client> = None;
    loop {
        if client.is_none() {
            client = c.connect().await.ok();
        }
        let got = match &client {
            Some(cl) => get(cl, id).await,
            None => Err(anyhow::anyhow!("no orchestrator node answers")),
        };
        // A leader change makes a read fail briefly: retry until the deadline.
        let o = match got {
            Ok(o) => o,
            Err(e) if Instant::now() < deadline => {
                client = None;
                tracing::debug!("retrying: {e:#}");
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if out == Output::Table {
            for (i, s) in o.steps.iter().enumerate() {
                if s.result.is_none() || !printed.insert(i) {
                    continue;
                }
                let at = s.ended_ms.unwrap_or(0).saturating_sub(o.started_ms);
                let app = s.app().map_or("", |a| a.as_str());
                let line = format!(
                    "  +{:>6.2} s  {app:<20} {:<28} {}",
                    at as f64 / 1000.0,
                    o.step_name(s),
                    result_text(s)
                );
                if bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
            }
            let (done, total, wave) = progress(&o);
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(wave);
        }
        if o.status != OpStatus::Running {
            bar.finish_and_clear();
            match out {
                Output::Json => print_json(&record(&o))?,
                Output::Table => print_record(&o),
            }
            return Ok(exit_of(&o));
        }
        if Instant::now() >= deadline {
            bail!(
                "op-{id} is still running after {} s; follow it with `metrodr op wait {id}`",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn exit_of(o: &Operation) -> ExitCode {
    match o.status {
        OpStatus::Succeeded | OpStatus::Running => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
