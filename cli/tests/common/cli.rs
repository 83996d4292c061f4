//! What a test reads of a cluster: the real CLI (`metrodr -o json …`, as a user
//! would) and the operator gRPC API through the lab crate, whose states are read
//! typed ([`lab::states`]: never compared with strings here).

use std::process::{Command, Output};
use std::time::Duration;

use lab::states::{self, CommandProgress, HostState, VmReport};
use orchestrator::client::Client;
use orchestrator::pb;

use super::BIN;

/// Run the CLI.
pub fn metrodr(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .env("METRODR_ACTOR", "tester@ci")
        .output()
        .expect("run metrodr")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `metrodr --cluster ADDRS -o json ARGS`.
pub fn cli_run(addrs: &str, args: &[&str]) -> Output {
    let mut a = vec!["--cluster", addrs, "-o", "json"];
    a.extend_from_slice(args);
    metrodr(&a)
}

/// [`cli_run`], which must succeed and print JSON.
pub fn cli_json(addrs: &str, args: &[&str]) -> serde_json::Value {
    let o = cli_run(addrs, args);
    assert!(o.status.success(), "metrodr {args:?} failed: {}", text(&o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("metrodr {args:?}: not JSON ({e}): {}", text(&o)))
}

/// One volume of `volume list`.
pub fn volume_json(addrs: &str, id: &str) -> serde_json::Value {
    cli_json(addrs, &["volume", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .cloned()
        .unwrap()
}

/// A volume's replica at `site`.
pub fn replica<'v>(vol: &'v serde_json::Value, site: &str) -> &'v serde_json::Value {
    vol["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["site"] == site)
        .unwrap()
}

/// Poll `op show` until the operation ends (a leader change may make reads fail for a
/// moment).
pub async fn wait_op(addrs: &str, op: u64, within: Duration) -> serde_json::Value {
    let mut last = String::new();
    let every = Duration::from_millis(200);
    let done = lab::wait::wait_every(every, within, &format!("op-{op} to end"), || {
        let o = cli_run(addrs, &["op", "show", &op.to_string()]);
        last = text(&o);
        let v = serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .ok()
            .filter(|v| v["status"] != "running");
        async move { v }
    })
    .await;
    done.unwrap_or_else(|e| panic!("{e}: {last}"))
}

/// A client of the node at `addr` (no TLS).
pub async fn client(addr: &str) -> Option<Client> {
    Client::connect_to(addr).await.ok()
}

pub async fn status(addr: &str) -> Option<pb::StatusReply> {
    lab::api::status(&client(addr).await?).await
}

/// The leader's name as seen by `addr`, once one is known.
pub async fn leader_seen_by(addr: &str, within: Duration) -> String {
    let a = addr.to_string();
    super::wait_for(within, "a leader", move || {
        let a = a.clone();
        async move { lab::api::leader_seen(&client(&a).await?).await }
    })
    .await
}

/// Write an audit note through `addr` (any node).
pub async fn note(addr: &str, text: &str) -> Result<pb::WriteReply, tonic::Status> {
    let c = Client::connect_to(addr)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut op = c.op.clone();
    op.note(pb::NoteRequest {
        text: text.into(),
        actor: "tester@ci".into(),
    })
    .await
    .map(|r| r.into_inner())
}

/// The whole audit log as `addr` has it.
pub async fn audit(addr: &str) -> Vec<pb::AuditEntry> {
    let c = Client::connect_to(addr).await.unwrap();
    lab::api::audit(&c)
        .await
        .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)))
}

pub async fn hosts(addr: &str) -> Vec<pb::HostInfo> {
    match client(addr).await {
        Some(c) => lab::api::hosts(&c).await.unwrap_or_default(),
        None => Vec::new(),
    }
}

/// A host's state as `addr` has it.
pub async fn host_state(addr: &str, host: &str) -> Option<HostState> {
    hosts(addr)
        .await
        .iter()
        .find(|h| h.id == host)
        .and_then(states::host_state)
}

/// A VM's state as `addr` reports it.
pub async fn vm_state(addr: &str, vm: &str) -> Option<VmReport> {
    let vms = lab::api::vms(&client(addr).await?).await.ok()?;
    vms.iter().find(|v| v.vm == vm).and_then(states::vm_report)
}

/// Whether `addr` reports `vm` running.
pub async fn vm_running(addr: &str, vm: &str) -> bool {
    vm_state(addr, vm).await == Some(RUNNING)
}

/// A VM its agent reports running.
pub const RUNNING: VmReport = VmReport::Reported(states::VmState::Running);

/// Run a VM action through the API and wait for its result.
pub async fn vm_do(addr: &str, action: pb::VmAction, vm: &str) -> pb::VmActionReply {
    let c = Client::connect_to(addr).await.unwrap();
    lab::api::vm_action(&c, vm, action, 20, "tester@ci")
        .await
        .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)))
}

/// Run a VM action, which must succeed.
pub async fn vm_do_ok(addr: &str, action: pb::VmAction, vm: &str) {
    let r = vm_do(addr, action, vm).await;
    assert_eq!(
        outcome(&r),
        Some(CommandProgress::Succeeded),
        "{action:?} {vm}: {}",
        r.message
    );
}

/// Where a VM action stands.
pub fn outcome(r: &pb::VmActionReply) -> Option<CommandProgress> {
    states::command_progress(r)
}
