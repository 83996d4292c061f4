//! `metrodr` — the one binary: daemons and the operator CLI.
//!
//! This crate only parses arguments, wires crates together and prints; every decision
//! lives in the library crates (DESIGN §2).

mod demo;
mod output;
mod topology_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use output::Output;

/// Dual-active disaster recovery for KVM data centers: two production sites and a
/// witness, Raft-replicated orchestration, block replication with RPO = 0, failover in
/// seconds, drills with signed reports.
#[derive(Debug, Parser)]
#[command(
    name = "metrodr",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// Output format: human tables, or one JSON document for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check, plan and generate topology files (sites, hosts, apps, volumes).
    #[command(subcommand)]
    Topology(topology_cmd::TopologyCmd),

    /// Run the quickstart: a whole two-site system on this machine.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Topology(cmd) => topology_cmd::run(cmd, cli.output),
        Command::Demo(args) => demo::run(args, cli.output),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("metrodr: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
