//! A primary tells the cluster about its replication link: when the link changes
//! (in sync, resyncing, down, running alone) it reports to any orchestrator node,
//! which commits the other replica's data state. This is how the cluster learns that a
//! replica may be promoted. Reports are retried until one node takes them; a stale
//! primary is told so (and logs it loudly).

use std::time::Duration;

use ids::Epoch;
use proto::agent::LinkReport;
use proto::agent::wire::link_to_wire;
use proto::pb;
use proto::pb::agent_client::AgentClient;
use replication::link::LinkState;
use replication::primary::{DegradePermission, GroupStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What to report for a status, if anything (pure).
pub fn link_of(st: &GroupStatus) -> Option<LinkReport> {
    if st.fenced {
        return None;
    }
    if st.degraded {
        return Some(LinkReport::Alone);
    }
    match st.link {
        LinkState::Streaming => Some(LinkReport::InSync),
        LinkState::Resyncing => Some(LinkReport::Resyncing),
        LinkState::Down { .. } | LinkState::HoldingWrites { .. } => Some(LinkReport::Down),
        LinkState::Starting | LinkState::NotReplicated | LinkState::Fenced { .. } => None,
    }
}

/// What the report says besides the link (for the audit log): the link text and, once
/// a resync ran, what it copied — the evidence that a returning replica got the
/// difference only.
pub fn detail_of(st: &GroupStatus) -> String {
    match &st.last_resync {
        Some(r) => format!(
            "{}; last resync copied {} bytes ({} of {} regions compared)",
            st.link, r.bytes_copied, r.regions_copied, r.regions_compared
        ),
        None => st.link.to_string(),
    }
}

pub struct Reporter {
    pub addrs: Vec<String>,
    /// Mutual TLS to the cluster (this host's agent certificate); None: plain.
    pub tls: Option<std::sync::Arc<security::Tls>>,
    pub app: String,
    pub site: String,
}

impl Reporter {
    pub fn spawn(
        self,
        mut rx: watch::Receiver<GroupStatus>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut sent: Option<(LinkReport, Epoch)> = None;
            let mut next = 0usize;
            loop {
                let (link, epoch, detail) = {
                    let st = rx.borrow_and_update();
                    (link_of(&st), st.epoch, detail_of(&st))
                };
                if let Some(link) = link
                    && sent != Some((link, epoch))
                {
                    match self.send(&mut next, link, epoch, &detail).await {
                        Ok(()) => sent = Some((link, epoch)),
                        Err(e) => {
                            tracing::warn!(app = %self.app, "cannot report the replica state ({link}): {e}; retrying");
                            tokio::select! {
                                () = stop.cancelled() => return,
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                            continue;
                        }
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
            }
        })
    }

    pub async fn send(
        &self,
        next: &mut usize,
        link: LinkReport,
        epoch: Epoch,
        detail: &str,
    ) -> Result<(), String> {
        let mut last = String::from("no cluster address");
        for _ in 0..self.addrs.len() {
            let addr = &self.addrs[*next % self.addrs.len()];
            let r = async {
                let ep = security::grpc::endpoint(addr, self.tls.as_deref())?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(10));
                let mut c = AgentClient::new(ep.connect().await.map_err(|e| e.to_string())?);
                let reply = c
                    .report_replica(pb::ReplicaReportRequest {
                        app: self.app.clone(),
                        site: self.site.clone(),
                        epoch: epoch.0,
                        link: link_to_wire(link).into(),
                        detail: detail.into(),
                    })
                    .await
                    .map_err(|s| format!("{addr}: {}", s.message()))?
                    .into_inner();
                match pb::ReplicaReportResult::try_from(reply.result) {
                    Ok(pb::ReplicaReportResult::Changed | pb::ReplicaReportResult::Unchanged) => {
                        Ok(())
                    }
                    // The cluster has moved on from this primary: it gets no permission
                    // (its writes stay held) and says so loudly until it is stopped.
                    Ok(pb::ReplicaReportResult::Stale) => {
                        tracing::error!(app = %self.app, "{}", reply.detail);
                        Err(format!("{addr}: {}", reply.detail))
                    }
                    Ok(pb::ReplicaReportResult::Unspecified) | Err(_) => Err(format!(
                        "{addr}: an answer this agent does not know ({}): is the node of another metrodr release?",
                        reply.result
                    )),
                }
            }
            .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) => {
                    last = e;
                    *next += 1;
                }
            }
        }
        Err(last)
    }
}

/// Permission to run without the peer (DESIGN §4): granted only once the cluster
/// has committed the peer's replica `Outdated` (a report of `alone` that a majority
/// took). Without a quorum there is no permission: sync writes stay held and the
/// agent fences at lease expiry.
pub struct ClusterPermission {
    pub reporter: Reporter,
}

impl DegradePermission for ClusterPermission {
    fn request(
        &self,
        _group: &str,
        epoch: Epoch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let mut next = 0;
            self.reporter
                .send(
                    &mut next,
                    LinkReport::Alone,
                    epoch,
                    "the peer is unreachable: asking to continue without it",
                )
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(link: LinkState, degraded: bool, fenced: bool) -> GroupStatus {
        GroupStatus {
            link,
            degraded,
            fenced,
            ..GroupStatus::default()
        }
    }

    #[test]
    fn the_detail_carries_the_last_resync() {
        let mut s = st(LinkState::Streaming, false, false);
        assert_eq!(detail_of(&s), "streaming");
        s.last_resync = Some(replication::frame::ResyncSummary {
            regions_compared: 64,
            regions_copied: 2,
            bytes_copied: 2 << 20,
        });
        assert_eq!(
            detail_of(&s),
            "streaming; last resync copied 2097152 bytes (2 of 64 regions compared)"
        );
    }

    #[test]
    fn only_a_streaming_link_makes_the_peer_promotable() {
        let down = |why: &str| LinkState::Down { why: why.into() };
        assert_eq!(
            link_of(&st(LinkState::Streaming, false, false)),
            Some(LinkReport::InSync)
        );
        assert_eq!(
            link_of(&st(LinkState::Resyncing, false, false)),
            Some(LinkReport::Resyncing)
        );
        assert_eq!(
            link_of(&st(down("refused"), false, false)),
            Some(LinkReport::Down)
        );
        assert_eq!(
            link_of(&st(
                LinkState::HoldingWrites { why: "x".into() },
                false,
                false
            )),
            Some(LinkReport::Down)
        );
        assert_eq!(
            link_of(&st(LinkState::Streaming, true, false)),
            Some(LinkReport::Alone)
        );
        assert_eq!(link_of(&st(LinkState::Starting, false, false)), None);
        assert_eq!(link_of(&st(LinkState::NotReplicated, false, false)), None);
        // A fenced primary reports nothing: it is stale.
        assert_eq!(link_of(&st(LinkState::Streaming, false, true)), None);
        assert_eq!(
            link_of(&st(
                LinkState::Fenced {
                    why: "lease".into()
                },
                false,
                false
            )),
            None
        );
    }
}
