//! Who is calling, and may they (DESIGN §10). With TLS on, a caller's identity is the
//! role and name its certificate carries (never a field of the request), every call
//! is checked against [`security::policy`], and every refusal lands in the audit log:
//! calls refused by the policy or by the state machine, and connections refused
//! during the TLS handshake (batched, so a flood of probes cannot flood the log).

use std::sync::Arc;
use std::time::Duration;

use security::{Access, Principal};
use tokio::sync::watch;
use tonic::{Request, Status};

use crate::clock::now_ms;
use crate::node::Node;
use crate::state::{self, Command, MAX_REASON_LEN};

/// The verified caller of a request: None when this node runs without TLS.
pub fn caller<T>(node: &Node, req: &Request<T>) -> Result<Option<Principal>, Status> {
    if node.security.tls.is_none() {
        return Ok(None);
    }
    security::grpc::principal(req).map(Some).map_err(|why| {
        Status::unauthenticated(format!("the connection carries no metrodr identity: {why}"))
    })
}

/// Admit a call needing `access` (`what` names it for people: "fail over apps").
/// Returns the actor for the audit log: the certificate's identity, or without TLS
/// the name the request claims. A refused call is audited, then answered with
/// PERMISSION_DENIED.
pub async fn admit<T>(
    node: &Node,
    req: &Request<T>,
    access: Access,
    what: &str,
    claimed: &str,
) -> Result<String, Status> {
    let Some(p) = caller(node, req)? else {
        return Ok(claimed.trim().to_string());
    };
    match security::authorize(&p, access, what) {
        Ok(()) => Ok(p.to_string()),
        Err(denied) => {
            let msg = denied.to_string();
            tracing::warn!(node = %node.name, caller = %p, "refused: {msg}");
            audit_refusal(node, &p.to_string(), what, &denied.why).await;
            Err(Status::permission_denied(msg))
        }
    }
}

/// Record a call refused for who the caller is. Best effort: when the cluster cannot
/// commit (no quorum), the refusal is in this node's log only, and the log says so.
pub async fn audit_refusal(node: &Node, actor: &str, what: &str, why: &str) {
    record_refusal(node, actor, what, why, true).await;
}

async fn record_refusal(node: &Node, actor: &str, what: &str, why: &str, security: bool) {
    let mut reason = why.to_string();
    if reason.len() > MAX_REASON_LEN - 200 {
        let mut cut = MAX_REASON_LEN - 200;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    let req = state::Request {
        actor: actor.chars().take(state::MAX_ACTOR_LEN).collect(),
        at_ms: now_ms(),
        command: Command::Refused {
            call: what.chars().take(200).collect(),
            reason,
            security,
        },
    };
    if let Err(e) = node.write(req).await {
        tracing::error!(node = %node.name, %actor, "cannot audit the refused call {what:?} ({why}): {}", e.message());
    }
}

/// The result of a mutating call: a refusal by the state machine (invalid, not found,
/// conflicting, unsafe) is audited (`call.refused`) before it is returned.
pub async fn audited<R>(
    node: &Node,
    actor: &str,
    what: &str,
    r: Result<R, Status>,
) -> Result<R, Status> {
    use tonic::Code::*;
    if let Err(s) = &r
        && matches!(
            s.code(),
            InvalidArgument | NotFound | FailedPrecondition | AlreadyExists | OutOfRange
        )
        && !s.metadata().contains_key("x-metrodr-leader")
        && !actor.is_empty()
    {
        record_refusal(node, actor, what, s.message(), false).await;
    }
    r
}

/// Write refused handshakes to the audit log until `stop`.
pub async fn run_refusal_audit(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let due = node.security.refusals().due(node.clock.now());
        for (reason, count, from) in due {
            let what = format!("connect ({count} connection(s) from {from})");
            audit_refusal(&node, "unauthenticated", &what, &reason).await;
        }
    }
}
