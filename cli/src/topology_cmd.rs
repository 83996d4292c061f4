//! `metrodr topology validate|plan|generate`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use topology::diag::{JsonDiagnostic, render_human};
use topology::generate::{GenSpec, generate};
use topology::plan::Plan;
use topology::validate::{RtoEstimate, dependency_order, rto_estimates};
use topology::{Code, Diagnostic, MAX_FILE_BYTES, Report, SourceMap, Topology};

use crate::cluster_cmd::ClusterArgs;
use crate::output::{Output, color_stdout, print_json, ratio, size_ratio, table};

#[derive(Debug, Subcommand)]
pub enum TopologyCmd {
    /// Check a topology file and report every problem with its line and a hint.
    ///
    /// Exits 0 when the file is valid (warnings allowed), 1 otherwise.
    Validate(FileArg),
    /// Validate, then show where every VM starts and whether each production site
    /// alone can run every application if the other is lost.
    Plan(FileArg),
    /// Write a valid synthetic topology of any size (for scale tests and benchmarks).
    Generate(GenerateArgs),
    /// Validate, then apply to the cluster as a new version (recorded in the audit log
    /// with who applied it).
    Apply(FileArg),
    /// Print an applied topology: the current version, or the version given.
    Get {
        /// Version to print (default: the current one).
        #[arg(value_name = "VERSION")]
        number: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct FileArg {
    /// The topology file (TOML); `-` reads standard input.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Production hosts in total (split over the two sites).
    #[arg(long, default_value_t = 8)]
    pub hosts: usize,
    /// Applications.
    #[arg(long, default_value_t = 24)]
    pub apps: usize,
    /// Priority tiers.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub tiers: u32,
    /// Seed: the same seed always gives the same topology.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(cmd: TopologyCmd, c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    match cmd {
        TopologyCmd::Validate(f) => validate(&f.file, out),
        TopologyCmd::Plan(f) => plan_cmd(&f.file, out),
        TopologyCmd::Generate(g) => generate_cmd(&g),
        TopologyCmd::Apply(f) => crate::block_on(apply_cmd(&f.file, c, out)),
        TopologyCmd::Get { number } => crate::block_on(get_cmd(number, c, out)),
    }
}

async fn apply_cmd(path: &Path, c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    let l = load(path);
    if !l.report.is_valid() {
        print_report(&l, out)?;
        anyhow::bail!("{} is not valid; nothing was applied", l.name);
    }
    let client = c.connect().await?;
    let r = crate::cluster_cmd::apply(&client, &l.text, &c.actor()).await?;
    match out {
        Output::Json => print_json(
            &serde_json::json!({"file": l.name, "version": r.version, "audit_seq": r.audit_seq, "warnings": r.warnings}),
        )?,
        Output::Table => {
            for w in &r.warnings {
                outln!("warning: {w}");
            }
            outln!(
                "{} applied as topology version {} (audit entry {})",
                l.name,
                r.version,
                r.audit_seq
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn get_cmd(version: Option<u64>, c: &ClusterArgs, out: Output) -> anyhow::Result<ExitCode> {
    let client = c.connect().await?;
    let mut op = client.op.clone();
    let r = op
        .get_topology(orchestrator::pb::GetTopologyRequest {
            version: version.unwrap_or(0),
        })
        .await
        .map_err(|s| orchestrator::client::ClientError::from_status(&client.addr, s))?
        .into_inner();
    match out {
        Output::Json => print_json(
            &serde_json::json!({"version": r.version, "latest_version": r.latest_version,
            "digest": r.digest, "applied_by": r.applied_by, "applied_ms": r.applied_ms, "text": r.text}),
        )?,
        Output::Table => {
            outln!(
                "# topology version {} of {} — applied by {}, sha256 {}",
                r.version,
                r.latest_version,
                r.applied_by,
                r.digest
            );
            out!("{}", r.text);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A topology file as read from disk (or stdin), with its check report.
pub struct Loaded {
    pub name: String,
    pub text: String,
    pub report: Report,
}

/// Read and check a topology file. Never fails: an unreadable file becomes a diagnostic.
pub fn load(path: &Path) -> Loaded {
    let name = path.display().to_string();
    let input_error = |msg: String, hint: &str| Loaded {
        name: name.clone(),
        text: String::new(),
        report: Report {
            topology: None,
            plan: None,
            diagnostics: vec![Diagnostic::error(Code::Input, None, msg).with_hint(hint)],
        },
    };
    let bytes = if path == Path::new("-") {
        let mut buf = Vec::new();
        let res = std::io::stdin()
            .take(MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut buf);
        match res {
            Ok(_) => buf,
            Err(e) => {
                return input_error(
                    format!("cannot read standard input: {e}"),
                    "pipe a topology file into metrodr, or pass a path",
                );
            }
        }
    } else {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                return input_error(
                    format!("{name} is a directory"),
                    "pass the path of a topology file (.toml)",
                );
            }
            Ok(m) if m.len() > MAX_FILE_BYTES as u64 => {
                return input_error(
                    format!(
                        "{name} is {} bytes; topology files are limited to {} MiB",
                        m.len(),
                        MAX_FILE_BYTES >> 20
                    ),
                    "is this really a topology file? Large deployments fit in a few MiB",
                );
            }
            Ok(_) => {}
            Err(e) => {
                return input_error(
                    format!("cannot read {name}: {e}"),
                    "check the path; examples/ has sample topologies",
                );
            }
        }
        match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                return input_error(
                    format!("cannot read {name}: {e}"),
                    "check the path and its permissions",
                );
            }
        }
    };
    let report = topology::check_bytes(&bytes);
    Loaded {
        name,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        report,
    }
}

#[derive(Serialize)]
struct Summary {
    sites: usize,
    orchestrators: usize,
    hosts: usize,
    apps: usize,
    vms: usize,
    volumes: usize,
}

#[derive(Serialize)]
struct ValidateJson<'a> {
    file: &'a str,
    valid: bool,
    errors: usize,
    warnings: usize,
    summary: Option<Summary>,
    diagnostics: Vec<JsonDiagnostic>,
}

fn summary(t: &Topology) -> Summary {
    Summary {
        sites: t.sites.len(),
        orchestrators: t.orchestrators.len(),
        hosts: t.hosts.len(),
        apps: t.apps.len(),
        vms: t.vm_count(),
        volumes: t.volume_count(),
    }
}

/// Print the diagnostics of a loaded file (human or JSON) and return its exit code.
pub fn print_report(l: &Loaded, out: Output) -> anyhow::Result<ExitCode> {
    let r = &l.report;
    let map = SourceMap::new(&l.text);
    match out {
        Output::Json => print_json(&ValidateJson {
            file: &l.name,
            valid: r.is_valid(),
            errors: r.errors(),
            warnings: r.warnings(),
            summary: r.topology.as_ref().map(summary),
            diagnostics: r.diagnostics.iter().map(|d| d.to_json(&map)).collect(),
        })?,
        Output::Table => {
            out!(
                "{}",
                render_human(&r.diagnostics, &map, &l.name, color_stdout())
            );
            match &r.topology {
                Some(t) => {
                    let s = summary(t);
                    outln!(
                        "{}: valid — {} sites, {} orchestrator nodes, {} hosts, {} apps, {} VMs, {} volumes{}",
                        l.name,
                        s.sites,
                        s.orchestrators,
                        s.hosts,
                        s.apps,
                        s.vms,
                        s.volumes,
                        match r.warnings() {
                            0 => String::new(),
                            n => format!(" ({n} warning(s))"),
                        }
                    );
                }
                None => outln!(
                    "{}: invalid — {} error(s), {} warning(s)",
                    l.name,
                    r.errors(),
                    r.warnings()
                ),
            }
        }
    }
    Ok(if r.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn validate(path: &Path, out: Output) -> anyhow::Result<ExitCode> {
    print_report(&load(path), out)
}

#[derive(Serialize)]
struct PlanJson<'a> {
    file: &'a str,
    plan: &'a Plan,
    rto: &'a [RtoEstimate],
    ok: bool,
}

fn plan_cmd(path: &Path, out: Output) -> anyhow::Result<ExitCode> {
    let l = load(path);
    let (Some(topo), Some(p)) = (&l.report.topology, &l.report.plan) else {
        return print_report(&l, out);
    };
    let rto = dependency_order(topo)
        .map(|o| rto_estimates(topo, &o))
        .unwrap_or_default();
    let ok = p.unplaced.is_empty() && p.failover.iter().all(|f| f.ok);
    match out {
        Output::Json => print_json(&PlanJson {
            file: &l.name,
            plan: p,
            rto: &rto,
            ok,
        })?,
        Output::Table => print_plan(topo, p, &rto),
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn print_plan(topo: &Topology, p: &Plan, rto: &[RtoEstimate]) {
    let apps = topo.app_index();
    outln!(
        "Initial placement ({} VMs on {} hosts)",
        p.placements.len(),
        topo.hosts.len()
    );
    let mut t = table(&["app", "tier", "vm", "vcpus", "memory", "site", "host"]);
    for pl in &p.placements {
        let app = apps.get(&pl.app);
        let vm = app.and_then(|a| a.vms.iter().find(|v| v.id == pl.vm));
        t.add_row(vec![
            pl.app.to_string(),
            app.map(|a| a.tier.to_string()).unwrap_or_default(),
            pl.vm.to_string(),
            vm.map(|v| v.vcpus.to_string()).unwrap_or_default(),
            vm.map(|v| v.memory.to_string()).unwrap_or_default(),
            pl.site.to_string(),
            pl.host.to_string(),
        ]);
    }
    outln!("{t}");
    if !p.spilled.is_empty() {
        outln!(
            "note: {} VM(s) start away from their preferred site because it is full: {}",
            p.spilled.len(),
            p.spilled
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for u in &p.unplaced {
        outln!("UNPLACED: VM {} of app {} fits on no host", u.vm, u.app);
    }

    outln!("\nHost load");
    let mut t = table(&["host", "site", "vms", "vcpus", "memory"]);
    for h in &p.hosts {
        t.add_row(vec![
            h.host.to_string(),
            h.site.to_string(),
            h.vms.to_string(),
            ratio(h.vcpus_used, h.vcpus_total),
            size_ratio(h.memory_used, h.memory_total),
        ]);
    }
    outln!("{t}");

    for f in &p.failover {
        outln!(
            "\nFailover capacity: if `{}` is lost, `{}` runs everything — {}",
            f.lost,
            f.survivor,
            if f.ok { "OK" } else { "SHORTFALL" }
        );
        let mut t = table(&[
            "tier",
            "apps",
            "vcpus (cumulative / site)",
            "memory (cumulative / site)",
            "unplaced VMs",
            "short by",
        ]);
        for r in &f.tiers {
            t.add_row(vec![
                r.tier.to_string(),
                r.apps.to_string(),
                ratio(r.vcpus_needed, r.vcpus_capacity),
                size_ratio(r.memory_needed, r.memory_capacity),
                r.unplaced_vms.to_string(),
                if r.unplaced_vms == 0 {
                    "-".to_string()
                } else {
                    format!(
                        "{} vCPUs, {}",
                        r.short_vcpus,
                        topology::ids::human_size(r.short_memory)
                    )
                },
            ]);
        }
        outln!("{t}");
    }

    if !rto.is_empty() {
        outln!(
            "\nRTO budget: earliest healthy time after a site loss (worst case: every app restarts)"
        );
        let mut t = table(&["app", "tier", "stage", "earliest", "target", "slack"]);
        for e in rto {
            let tier = apps
                .get(&e.app)
                .map(|a| a.tier.to_string())
                .unwrap_or_default();
            t.add_row(vec![
                e.app.to_string(),
                tier,
                (e.stage + 1).to_string(),
                format!("{:.1} s", e.min_rto_ms as f64 / 1000.0),
                format!("{} s", e.target_ms / 1000),
                format!(
                    "{:.1} s",
                    (e.target_ms as f64 - e.min_rto_ms as f64) / 1000.0
                ),
            ]);
        }
        outln!("{t}");
    }
}

fn generate_cmd(g: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let topo = generate(GenSpec {
        hosts: g.hosts,
        apps: g.apps,
        tiers: g.tiers,
        seed: g.seed,
    });
    let text = topology::render::to_toml(&topo);
    match &g.out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => out!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
