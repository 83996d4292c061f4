//! The operator API calls every user of the lab makes: who leads, the volumes, hosts
//! and VMs as the cluster sees them, starting VMs, applying a topology, reading the
//! audit log and the operations.
//!
//! Decisions on the states these calls return go through [`crate::states`]. Never:
//! hold a connection across a leader change (each call dials what it is given).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use orchestrator::client::{Client, ClientError, Dialer};
use orchestrator::pb;
use orchestrator::state::Operation;
use orchestrator::wire::{WireError, operation_from_wire};

use crate::error::{Context, LabError};
use crate::states;
use crate::wait::wait;

/// How long one status call may take before a node counts as not answering (a node
/// that is paused or cut off never answers; a live one answers in milliseconds).
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// The status of the node `c` talks to; None if it does not answer in time.
pub async fn status(c: &Client) -> Option<pb::StatusReply> {
    let s = tokio::time::timeout(STATUS_TIMEOUT, c.op.clone().status(pb::StatusRequest {}))
        .await
        .ok()?
        .ok()?;
    Some(s.into_inner())
}

/// The leader's name and address, as the leader itself confirms (a node that was
/// cut off may still believe it leads; the one that names itself and is leader does).
pub async fn leader_at(dialer: &Dialer, addrs: &[String]) -> Option<(String, String)> {
    for a in addrs {
        let Ok(c) = dialer.connect_to(a).await else {
            continue;
        };
        if let Some(s) = status(&c).await
            && states::leads(&s)
        {
            return Some((s.node, a.clone()));
        }
    }
    None
}

/// The leader the node `c` talks to knows of, if any.
pub async fn leader_seen(c: &Client) -> Option<String> {
    status(c).await.map(|s| s.leader).filter(|l| !l.is_empty())
}

/// Form a cluster of `nodes` through the node `c` talks to (any: no leader yet).
pub async fn init_cluster(c: &Client, nodes: Vec<pb::InitNode>) -> Result<(), LabError> {
    c.op.clone()
        .init_cluster(pb::InitClusterRequest { nodes })
        .await
        .map_err(|s| ClientError::from_status(&c.addr, s))
        .ctx("forming the cluster")?;
    Ok(())
}

/// Apply a topology's text as `actor`.
pub async fn apply_topology(
    c: &Client,
    text: &str,
    actor: &str,
) -> Result<pb::ApplyTopologyReply, LabError> {
    let r =
        c.op.clone()
            .apply_topology(pb::ApplyTopologyRequest {
                text: text.to_string(),
                actor: actor.to_string(),
            })
            .await
            .map_err(|s| ClientError::from_status(&c.addr, s))
            .ctx("applying the topology")?;
    Ok(r.into_inner())
}

/// Every volume, as the node `c` talks to has it.
pub async fn volumes(c: &Client) -> Option<Vec<pb::VolumeStatus>> {
    let r =
        c.op.clone()
            .list_volumes(pb::ListVolumesRequest { app: String::new() })
            .await
            .ok()?;
    Some(r.into_inner().volumes)
}

/// Every host, as the node `c` talks to has it.
pub async fn hosts(c: &Client) -> Option<Vec<pb::HostInfo>> {
    let r =
        c.op.clone()
            .list_hosts(pb::ListHostsRequest {})
            .await
            .ok()?;
    Some(r.into_inner().hosts)
}

/// Some(()) when the cluster sees every host up.
pub async fn all_hosts_up(c: &Client) -> Option<()> {
    hosts(c).await?.iter().all(states::host_up).then_some(())
}

/// Some(()) when every replica of every volume is up to date.
pub async fn all_replicas_up_to_date(c: &Client) -> Option<()> {
    states::all_up_to_date(&volumes(c).await?).then_some(())
}

/// Every VM of the topology, as the node `c` talks to reports it.
pub async fn vms(c: &Client) -> Result<Vec<pb::VmInfo>, tonic::Status> {
    Ok(c.op
        .clone()
        .list_vms(pb::ListVmsRequest {})
        .await?
        .into_inner()
        .vms)
}

/// The VMs reported running, each with the host that reported it.
pub async fn running_vms(c: &Client) -> Result<BTreeMap<String, String>, tonic::Status> {
    Ok(vms(c)
        .await?
        .into_iter()
        .filter(states::vm_running)
        .map(|v| (v.vm, v.reported_host))
        .collect())
}

/// The name of a VM action for people (`start`).
pub fn action_name(action: pb::VmAction) -> &'static str {
    orchestrator::wire::vm_action_name(action.into()).unwrap_or("unspecified action")
}

/// Run VM `action` (define, start, …) and wait for the agent's result, at most
/// `timeout_s`.
pub async fn vm_action(
    c: &Client,
    vm: &str,
    action: pb::VmAction,
    timeout_s: u32,
    actor: &str,
) -> Result<pb::VmActionReply, LabError> {
    let r =
        c.op.clone()
            .vm_action(pb::VmActionRequest {
                vm: vm.into(),
                action: action.into(),
                timeout_s,
                wait: true,
                actor: actor.into(),
            })
            .await
            .map_err(|s| ClientError::from_status(&c.addr, s))
            .with_ctx(|| format!("{} {vm}", action_name(action)))?;
    Ok(r.into_inner())
}

/// Define and start each of `vms` where the cluster places it, `concurrency` VMs at a
/// time, each command waiting up to `timeout_s`; then wait until the cluster records
/// every one running.
pub async fn start_vms(
    c: &Client,
    vms: &[String],
    actor: &str,
    concurrency: usize,
    timeout_s: u32,
) -> Result<(), LabError> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for vm in vms {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .ctx("waiting for a turn to start a VM")?;
        let (c, vm, actor) = (c.clone(), vm.clone(), actor.to_string());
        set.spawn(async move {
            let _permit = permit;
            for action in [pb::VmAction::Define, pb::VmAction::Start] {
                let r = vm_action(&c, &vm, action, timeout_s, &actor).await?;
                if !states::succeeded(&r) {
                    return Err(LabError::refused(format!(
                        "{} {vm} on {}: {}",
                        action_name(action),
                        r.host,
                        r.message
                    )));
                }
            }
            Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.ctx("a task starting a VM")??;
    }
    // A start succeeds when the agent's libvirt has started the domain; the cluster
    // records it running only once the agent's next state report is committed (up to
    // half a second later). Whatever comes next (a drill's baseline, the ledger of a
    // chaos run) reads the committed state, so wait for it.
    let all: BTreeSet<&str> = vms.iter().map(String::as_str).collect();
    let within = Duration::from_secs(30 + vms.len() as u64 / 10);
    wait(within, "every VM reported running", || async {
        let running = running_vms(c).await.ok()?;
        all.iter().all(|vm| running.contains_key(*vm)).then_some(())
    })
    .await?;
    Ok(())
}

/// The whole audit log, in pages small enough for one gRPC message.
pub async fn audit(c: &Client) -> Result<Vec<pb::AuditEntry>, LabError> {
    const PAGE: u32 = 1000;
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let batch =
            c.op.clone()
                .audit_list(pb::AuditListRequest {
                    from_seq: from,
                    limit: PAGE,
                })
                .await
                .map_err(|s| ClientError::from_status(&c.addr, s))
                .ctx("reading the audit log")?
                .into_inner()
                .entries;
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(out);
        };
        let full = batch.len() == PAGE as usize;
        out.extend(batch);
        if !full {
            return Ok(out);
        }
        from = last + 1;
    }
}

/// The latest operations (at most 1000); none if the node does not answer.
pub async fn operations(c: &Client) -> Vec<Operation> {
    operations_limit(c, 1000).await
}

/// The latest `limit` operations.
pub async fn operations_limit(c: &Client, limit: u32) -> Vec<Operation> {
    let Ok(r) =
        c.op.clone()
            .list_operations(pb::ListOperationsRequest { limit })
            .await
    else {
        return Vec::new();
    };
    r.into_inner()
        .operations
        .into_iter()
        .filter_map(|o| decoded(operation_from_wire(o)))
        .collect()
}

/// One operation, if the node knows it.
pub async fn operation(c: &Client, op: u64) -> Option<Operation> {
    let r =
        c.op.clone()
            .get_operation(pb::GetOperationRequest { op })
            .await
            .ok()?;
    let o = r.into_inner().operation.ok_or(WireError::Missing {
        what: "the reply's operation",
    });
    decoded(o.and_then(operation_from_wire))
}

/// An operation a node sent, or None (said on stderr: a node that sends one this lab
/// cannot read runs another metrodr version, and every wait on it would time out).
fn decoded(o: Result<Operation, WireError>) -> Option<Operation> {
    o.inspect_err(|e| eprintln!("lab: an operation from the cluster cannot be read: {e}"))
        .ok()
}

/// Where each app is active now.
pub async fn app_sites(c: &Client) -> BTreeMap<String, String> {
    let Ok(r) = c.op.clone().list_apps(pb::ListAppsRequest {}).await else {
        return BTreeMap::new();
    };
    r.into_inner()
        .apps
        .into_iter()
        .map(|a| (a.id, a.active_site))
        .collect()
}

/// Whether `o` is the failover the cluster began by itself because `site` was lost
/// (its plan's trigger says so).
pub fn is_site_lost(o: &Operation, site: &str) -> bool {
    matches!(
        o.plan.as_deref().map(|p| &p.trigger),
        Some(orchestrator::planner::Trigger::SiteLost { site: s }) if s.as_str() == site
    )
}

/// The failover the cluster began because `site` was lost, once the node `c` talks
/// to lists it (among the latest 10 operations).
pub async fn site_lost_failover(c: &Client, site: &str) -> Option<Operation> {
    operations_limit(c, 10)
        .await
        .into_iter()
        .find(|o| is_site_lost(o, site))
}
