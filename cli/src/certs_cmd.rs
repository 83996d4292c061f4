//! `metrodr certs`: the cluster CA and the certificates of its nodes, agents and
//! operators (DESIGN §10; layout in [`security::pki`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use security::{CertDir, Principal, Role, Validity};
use serde::Serialize;

use crate::output::{Output, print_json};

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Create a cluster CA in an empty directory and issue a certificate for every
    /// orchestrator node and host of the topology, and for the operators named.
    Init(InitArgs),
    /// Issue (or renew) one certificate with the directory's CA.
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The directory to create (it must not hold a CA yet).
    #[arg(long)]
    pub dir: PathBuf,
    /// The topology whose [[orchestrator]] nodes and [[host]]s get certificates.
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// An operator certificate to issue, NAME:ROLE with ROLE admin, operator or
    /// auditor (repeatable; default: admin:admin).
    #[arg(long = "operator", value_name = "NAME:ROLE")]
    pub operators: Vec<String>,
    /// How long the certificates are valid, in days (the CA: ten times as long).
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The certificate directory (holding ca.crt and ca.key).
    #[arg(long)]
    pub dir: PathBuf,
    /// node, agent, admin, operator or auditor.
    #[arg(long)]
    pub role: String,
    /// The node's name, the agent's host id, or the operator's name.
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

#[derive(Serialize)]
pub struct Issued {
    role: Role,
    name: String,
    cert: PathBuf,
    key: PathBuf,
}

fn operator(spec: &str) -> anyhow::Result<Principal> {
    let Some((name, role)) = spec.split_once(':') else {
        bail!("--operator {spec:?}: expected NAME:ROLE, e.g. alice:operator");
    };
    let role = Role::parse(role).map_err(anyhow::Error::msg)?;
    if !Role::PEOPLE.contains(&role) {
        bail!("--operator {spec:?}: an operator's role is admin, operator or auditor");
    }
    Principal::new(role, name).map_err(|e| anyhow::anyhow!("--operator {spec:?}: {e}"))
}

/// A new CA in `dir` and a certificate for each of `who` (the demo's storage act uses
/// this too; the lab's clusters have theirs from `lab::certs`).
pub fn create(dir: &Path, who: &[Principal], days: u32) -> anyhow::Result<(CertDir, Vec<Issued>)> {
    let d = CertDir::new(dir);
    d.init(Validity::days(days.saturating_mul(10)))?;
    let issued = issue_all(&d, who, days)?;
    Ok((d, issued))
}

fn issue_all(dir: &CertDir, who: &[Principal], days: u32) -> anyhow::Result<Vec<Issued>> {
    let mut issued = Vec::new();
    for p in who {
        let files = dir
            .issue(p, Validity::days(days))
            .with_context(|| format!("issuing the certificate of {p}"))?;
        issued.push(Issued {
            role: p.role,
            name: p.name.clone(),
            cert: files.cert,
            key: files.key,
        });
    }
    Ok(issued)
}

pub fn run(cmd: CertsCmd, out: Output) -> anyhow::Result<ExitCode> {
    let (dir, issued) = match cmd {
        CertsCmd::Init(a) => {
            let topo = match &a.topology {
                Some(path) => {
                    let loaded = crate::topology_cmd::load(path);
                    let Some(t) = loaded.report.topology.clone() else {
                        crate::topology_cmd::print_report(&loaded, out)?;
                        bail!("{} is not a valid topology", path.display());
                    };
                    Some(t)
                }
                None => None,
            };
            let ops = if a.operators.is_empty() {
                vec!["admin:admin".to_string()]
            } else {
                a.operators.clone()
            };
            let ops = ops
                .iter()
                .map(|o| operator(o))
                .collect::<anyhow::Result<Vec<_>>>()?;
            create(
                &a.dir,
                &lab::certs::principals(topo.as_ref(), &ops)?,
                a.days,
            )?
        }
        CertsCmd::Issue(a) => {
            let role = Role::parse(&a.role).map_err(anyhow::Error::msg)?;
            let p = Principal::new(role, &a.name).map_err(anyhow::Error::msg)?;
            let d = CertDir::new(&a.dir);
            let issued = issue_all(&d, &[p], a.days)?;
            (d, issued)
        }
    };
    match out {
        Output::Json => print_json(&serde_json::json!({
            "ca": dir.ca_cert(), "issued": issued,
        }))?,
        Output::Table => {
            outln!(
                "CA: {} (key {}: keep it offline)",
                dir.ca_cert().display(),
                dir.ca_key().display()
            );
            for i in &issued {
                outln!("{:8} {:20} {}", i.role.as_str(), i.name, i.cert.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
