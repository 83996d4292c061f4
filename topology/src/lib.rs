//! # topology — the model of a metrodr deployment
//!
//! Operators describe their two production sites, the witness, the orchestrator nodes,
//! the hypervisor hosts and the applications (VMs, volumes, probes, RTO/RPO targets)
//! once, in a TOML file. This crate parses that file, reports **every** problem with
//! its line, column and a hint ([`diag`]), builds the validated [`Topology`], and plans
//! placement and failover capacity ([`plan`]).
//!
//! Everything here is a pure function of its input: no I/O, no clocks, no randomness
//! except the seeded generator in [`generate`]. Reading files is the caller's job.
//! Nothing here may panic on any input; the fuzz and property tests hold it to that.

pub mod diag;
pub mod generate;
/// The names of things and sizes live in the `ids` crate, the one home of identities.
pub use ::ids;
pub mod model;
pub mod parse;
pub mod plan;
pub mod raw;
pub mod render;
pub mod spec;
pub mod timing;
pub mod validate;

pub use diag::{Code, Diagnostic, Severity, SourceMap};
pub use ids::{AppId, ByteSize, HostId, NodeId, SiteId, VmId, VolumeId};
pub use model::*;
pub use timing::Timing;

/// Largest topology file accepted. A file of 10,000 apps is ~5 MiB; anything beyond
/// 64 MiB is a mistake (a disk image passed by accident) and would waste memory.
pub const MAX_FILE_BYTES: usize = 64 << 20;

/// The outcome of checking a topology: the model when valid, and every diagnostic.
#[derive(Debug, Clone)]
pub struct Report {
    pub topology: Option<Topology>,
    /// Placement and failover capacity, computed by the capacity check (Some when valid).
    pub plan: Option<plan::Plan>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }
    pub fn is_valid(&self) -> bool {
        self.topology.is_some()
    }
}

/// Parse and validate topology text.
pub fn check_str(src: &str) -> Report {
    if src.trim().is_empty() {
        return Report {
            topology: None,
            plan: None,
            diagnostics: vec![
                Diagnostic::error(Code::Input, Some(0..0), "the topology file is empty")
                    .with_hint("start from examples/minimal.toml: a [cluster], three [[site]]s, [[orchestrator]]s, [[host]]s and [[app]]s"),
            ],
        };
    }
    let (raw, mut diagnostics) = parse::parse(src);
    if diagnostics.iter().any(|d| d.code == Code::Syntax) {
        return Report {
            topology: None,
            plan: None,
            diagnostics,
        };
    }
    let valid = validate::validate(raw, &mut diagnostics);
    sort_by_position(&mut diagnostics);
    let (topology, plan) = valid.unzip();
    Report {
        topology,
        plan,
        diagnostics,
    }
}

/// Parse and validate raw file contents: checks size and UTF-8 first.
pub fn check_bytes(bytes: &[u8]) -> Report {
    let fail = |d: Diagnostic| Report {
        topology: None,
        plan: None,
        diagnostics: vec![d],
    };
    if bytes.len() > MAX_FILE_BYTES {
        return fail(
            Diagnostic::error(
                Code::Input,
                None,
                format!(
                    "the file is {} bytes; topology files are limited to {} MiB",
                    bytes.len(),
                    MAX_FILE_BYTES >> 20
                ),
            )
            .with_hint("is this really a topology file? Large deployments fit in a few MiB"),
        );
    }
    match std::str::from_utf8(bytes) {
        Ok(src) => check_str(src),
        Err(e) => {
            let at = e.valid_up_to();
            fail(
                Diagnostic::error(
                    Code::Input,
                    Some(at..at),
                    format!("the file is not UTF-8 text (invalid byte 0x{:02x} at offset {at})", bytes[at]),
                )
                .with_hint("topology files are TOML, which must be UTF-8; is this a binary file, or saved in another encoding?"),
            )
        }
    }
}

/// Diagnostics in file order (stable: equal positions keep their discovery order).
fn sort_by_position(d: &mut [Diagnostic]) {
    d.sort_by_key(|d| d.span.as_ref().map_or(usize::MAX, |s| s.start));
}
