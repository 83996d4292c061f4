//! The RTO budget: the earliest time after a site loss at which each app can be healthy
//! at the other site, given the timing budget and the stage order.
//!
//! Worst case assumed: the lost site ran every app, so every stage must run. One stage
//! costs `promote_budget_ms + vm_start_budget_ms + boot` where `boot` is the slowest
//! VM's boot estimate among the stage's apps (VMs of a stage start in parallel), and the
//! clock starts with detection (`lease_ms + lease_margin_ms`).

use serde::Serialize;

use super::{DependencyOrder, Spans};
use crate::diag::{Code, Diagnostic};
use crate::ids::AppId;
use crate::model::{App, Topology};
use crate::timing::Timing;

/// The earliest achievable RTO of one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RtoEstimate {
    pub app: AppId,
    pub stage: usize,
    pub min_rto_ms: u64,
    pub target_ms: u64,
}

fn app_boot_ms(app: &App, timing: &Timing) -> u64 {
    app.vms
        .iter()
        .map(|v| {
            v.boot_estimate_s
                .map_or(timing.guest_boot_ms, |s| u64::from(s) * 1000)
        })
        .max()
        .unwrap_or(timing.guest_boot_ms)
}

/// Earliest RTO of every app, in stage order.
pub fn rto_estimates(topo: &Topology, order: &DependencyOrder) -> Vec<RtoEstimate> {
    let t = &topo.timing;
    let apps = topo.app_index();
    let mut out = Vec::with_capacity(topo.apps.len());
    let mut elapsed = t.detect_ms();
    for (k, stage) in order.stages.iter().enumerate() {
        let boot = stage
            .iter()
            .filter_map(|id| apps.get(id))
            .map(|a| app_boot_ms(a, t))
            .max()
            .unwrap_or(0);
        elapsed += t.promote_budget_ms + t.vm_start_budget_ms + boot;
        for id in stage {
            if let Some(a) = apps.get(id) {
                out.push(RtoEstimate {
                    app: id.clone(),
                    stage: k,
                    min_rto_ms: elapsed,
                    target_ms: u64::from(a.rto_target_s) * 1000,
                });
            }
        }
    }
    out
}

pub(crate) fn check(
    topo: &Topology,
    order: &DependencyOrder,
    spans: &Spans,
    diags: &mut Vec<Diagnostic>,
) {
    let t = &topo.timing;
    for e in rto_estimates(topo, order) {
        if e.min_rto_ms <= e.target_ms {
            continue;
        }
        let need_s = e.min_rto_ms.div_ceil(1000);
        diags.push(
            Diagnostic::error(
                Code::RtoBudget,
                spans.app.get(&e.app).map(|s| s.rto.clone()),
                format!(
                    "app `{}` cannot meet rto_target_s = {}: after a site loss it can be healthy after {:.1} s at the earliest (detection {:.1} s, then {} start stage(s))",
                    e.app,
                    e.target_ms / 1000,
                    e.min_rto_ms as f64 / 1000.0,
                    t.detect_ms() as f64 / 1000.0,
                    e.stage + 1
                ),
            )
            .with_hint(format!(
                "raise rto_target_s to at least {need_s}, move the app (or its dependencies) to an earlier tier, or lower the boot estimates or [timing] values"
            )),
        );
    }
}
