//! From [`RawTopology`] to a [`Topology`], collecting every problem.
//!
//! Entity checks (ids, references, ranges, per-VM and per-volume rules) run on every
//! element that deserialized. Whole-topology checks follow: dependency cycles and tier
//! order ([`deps`]), the RTO budget ([`budget`]) and the failover capacity of each
//! production site ([`crate::plan`]). The last two only run when everything before was
//! clean, because on a broken model their verdicts would mislead.

mod budget;
mod deps;
mod entities;

use std::collections::HashMap;
use std::ops::Range;

use crate::diag::{Code, Diagnostic};
use crate::ids::{AppId, HostId, SiteId, VmId};
use crate::model::Topology;
use crate::plan::Plan;
use crate::raw::RawTopology;

pub use budget::{RtoEstimate, rto_estimates};
pub use deps::{DependencyOrder, dependency_order};

/// Where things are in the source, for whole-topology checks that run on the model.
#[derive(Debug, Default)]
pub(crate) struct Spans {
    pub site: HashMap<SiteId, Range<usize>>,
    pub host: HashMap<HostId, Range<usize>>,
    pub app: HashMap<AppId, AppSpans>,
    pub vm: HashMap<VmId, Range<usize>>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct AppSpans {
    pub rto: Range<usize>,
    /// Span of each `depends_on` entry, by target id.
    pub deps: HashMap<AppId, Range<usize>>,
}

/// Validate a parsed topology. Returns the model, with the placement plan computed for
/// the capacity check, only when there is no error (warnings are allowed); every
/// problem is appended to `diags`.
pub fn validate(raw: RawTopology, diags: &mut Vec<Diagnostic>) -> Option<(Topology, Plan)> {
    let complete = raw.complete;
    let errors_before = diags.iter().filter(|d| d.is_error()).count();
    let (topo, spans) = entities::build(raw, diags);

    let order = deps::check(&topo, &spans, diags);
    let clean = complete && diags.iter().filter(|d| d.is_error()).count() == errors_before;
    let mut plan = None;
    if clean {
        if let Some(order) = &order {
            budget::check(&topo, order, &spans, diags);
        }
        let p = crate::plan::plan(&topo);
        capacity_diagnostics(&p, &spans, diags);
        plan = Some(p);
    } else {
        diags.push(
            Diagnostic::warning(
                Code::Suspicious,
                None,
                "the RTO budget and failover capacity were not checked because of the errors above",
            )
            .with_hint("fix the errors and validate again"),
        );
    }
    let ok = diags.iter().filter(|d| d.is_error()).count() == 0;
    match (ok, plan) {
        (true, Some(plan)) => Some((topo, plan)),
        _ => None,
    }
}

fn capacity_diagnostics(plan: &Plan, spans: &Spans, diags: &mut Vec<Diagnostic>) {
    for u in &plan.unplaced {
        diags.push(
            Diagnostic::error(
                Code::Capacity,
                spans.vm.get(&u.vm).cloned(),
                format!(
                    "VM `{}` of app `{}` fits on no host of either production site in the initial placement",
                    u.vm, u.app
                ),
            )
            .with_hint("add host capacity or make the VM smaller; `metrodr topology plan` shows the load per host"),
        );
    }
    for f in &plan.failover {
        for row in f.tiers.iter().filter(|r| r.unplaced_vms > 0) {
            let names = row
                .unplaced
                .iter()
                .take(5)
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let more = if row.unplaced.len() > 5 {
                format!(" and {} more", row.unplaced.len() - 5)
            } else {
                String::new()
            };
            diags.push(
                Diagnostic::error(
                    Code::Capacity,
                    spans.site.get(&f.survivor).cloned(),
                    format!(
                        "if site `{}` is lost, site `{}` cannot run tier {}: {} VM(s) do not fit ({names}{more}); short by {} vCPUs and {}",
                        f.lost,
                        f.survivor,
                        row.tier,
                        row.unplaced_vms,
                        row.short_vcpus,
                        crate::ids::human_size(row.short_memory)
                    ),
                )
                .with_hint(format!(
                    "add hosts at `{}` or shrink VMs; `metrodr topology plan` prints the failover capacity table",
                    f.survivor
                )),
            );
        }
    }
}
