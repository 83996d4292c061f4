//! Who is calling, and may they (DESIGN §10). With TLS on, a caller's identity is the
//! role and name its certificate carries (never a field of the request), every call
//! is checked against [`security::policy`], and every refusal lands in the audit log:
//! calls refused by the policy or by the state machine, and connections refused
//! during the TLS handshake (batched, so a flood of probes cannot flood the log).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use security::{Access, Principal, Refusal};
use tokio::sync::watch;
use tonic::{Request, Status};

use crate::clock::now_ms;
use crate::node::Node;
use crate::state::{self, Command, MAX_REASON_LEN};

/// How often refused handshakes are written to the audit log at most (the first one
/// after a quiet period goes in within a second).
const REFUSALS_EVERY: Duration = Duration::from_secs(10);
/// Addresses named per reason in one audit entry.
const ADDRS_PER_ENTRY: usize = 5;

/// The verified caller of a request: None when this node runs without TLS.
pub fn caller<T>(node: &Node, req: &Request<T>) -> Result<Option<Principal>, Status> {
    if node.tls.is_none() {
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

/// Connections refused at the handshake and not yet audited, by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    pending: BTreeMap<String, (u64, BTreeSet<IpAddr>)>,
    last_flush: Option<Instant>,
}

impl Refusals {
    pub fn record(&mut self, r: Refusal) {
        let (count, addrs) = self.pending.entry(r.reason).or_default();
        *count += 1;
        if addrs.len() < ADDRS_PER_ENTRY {
            addrs.insert(r.peer.ip());
        }
    }

    /// The audit entries due now: (reason, how many, from where).
    fn due(&mut self, now: Instant) -> Vec<(String, u64, String)> {
        if self.pending.is_empty()
            || self
                .last_flush
                .is_some_and(|t| now.duration_since(t) < REFUSALS_EVERY)
        {
            return Vec::new();
        }
        self.last_flush = Some(now);
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(reason, (count, addrs))| {
                let addrs: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                (reason, count, addrs.join(", "))
            })
            .collect()
    }
}

/// Write refused handshakes to the audit log until `stop`.
pub async fn run_refusal_audit(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let due = node
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .due(Instant::now());
        for (reason, count, from) in due {
            let what = format!("connect ({count} connection(s) from {from})");
            audit_refusal(&node, "unauthenticated", &what, &reason).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(ip: &str, reason: &str) -> Refusal {
        Refusal {
            peer: format!("{ip}:1000").parse().unwrap(),
            reason: reason.into(),
        }
    }

    #[test]
    fn refusals_are_batched_by_reason_and_rate_limited() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert!(r.due(t0).is_empty());
        for i in 0..20 {
            r.record(refusal(&format!("10.0.0.{i}"), "no certificate"));
        }
        r.record(refusal("10.0.1.1", "another CA"));
        let due = r.due(t0);
        assert_eq!(due.len(), 2);
        let (reason, count, from) = &due[1];
        assert_eq!((reason.as_str(), *count), ("no certificate", 20));
        assert_eq!(from.split(", ").count(), ADDRS_PER_ENTRY);
        // More within the interval wait for the next one, and are all counted then.
        r.record(refusal("10.0.0.1", "no certificate"));
        assert!(r.due(t0 + Duration::from_secs(5)).is_empty());
        r.record(refusal("10.0.0.1", "no certificate"));
        let due = r.due(t0 + REFUSALS_EVERY);
        assert_eq!(due, vec![("no certificate".into(), 2, "10.0.0.1".into())]);
    }
}
