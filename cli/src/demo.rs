//! `metrodr demo` — the one-command quickstart.
//!
//! Today it validates and plans the city e-government example and states plainly what
//! is not built yet; it grows into a whole two-site system with a real site-loss
//! failover as the control plane, agent, replication and failover land.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;
use topology::validate::{dependency_order, rto_estimates};

use crate::output::{Output, print_json};
use crate::topology_cmd::{load, print_plan};

/// The realistic example, built into the binary so the demo runs from any directory.
const EXAMPLE: &str = include_str!("../../examples/city-egov.toml");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Topology to use instead of the built-in city e-government example.
    #[arg(long)]
    pub topology: Option<PathBuf>,
}

/// Parts of the demo that do not exist yet, said out loud rather than faked.
const NOT_BUILT: &[&str] = &[
    "Raft control plane (orchestrator cluster on openraft + RocksDB + gRPC)",
    "agents driving libvirt, leases and self-fencing",
    "block replication (NBD front end, sync/async, epochs, resync)",
    "failover, switchover and failback",
    "drills and signed reports",
    "lab and chaos",
];

#[derive(Serialize)]
struct DemoJson {
    topology: String,
    valid: bool,
    apps: usize,
    vms: usize,
    failover_capacity_ok: bool,
    not_built: &'static [&'static str],
}

pub fn run(args: DemoArgs, out: Output) -> anyhow::Result<ExitCode> {
    let (name, report) = match &args.topology {
        Some(p) => {
            let l = load(p);
            (l.name, l.report)
        }
        None => (
            "examples/city-egov.toml (built in)".to_string(),
            topology::check_str(EXAMPLE),
        ),
    };
    let errors = report.errors();
    let (Some(topo), Some(p)) = (report.topology, report.plan) else {
        anyhow::bail!(
            "{name} is not a valid topology ({} errors); run `metrodr topology validate` on it for details",
            errors
        );
    };
    let ok = p.unplaced.is_empty() && p.failover.iter().all(|f| f.ok);
    match out {
        Output::Json => print_json(&DemoJson {
            topology: name,
            valid: true,
            apps: topo.apps.len(),
            vms: topo.vm_count(),
            failover_capacity_ok: ok,
            not_built: NOT_BUILT,
        })?,
        Output::Table => {
            println!("metrodr demo — {name}");
            println!(
                "cluster `{}`: {} apps, {} VMs, {} volumes\n",
                topo.cluster.name,
                topo.apps.len(),
                topo.vm_count(),
                topo.volume_count()
            );
            let rto = dependency_order(&topo)
                .map(|o| rto_estimates(&topo, &o))
                .unwrap_or_default();
            print_plan(&topo, &p, &rto);
            println!("\nNot built yet (the demo grows as these land):");
            for n in NOT_BUILT {
                println!("  - {n}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
