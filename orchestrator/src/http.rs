//! HTTP beside gRPC: `/metrics` (Prometheus text format) and `/healthz`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::node::Node;
use crate::records::name;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    site: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaderLabels {
    leader: String,
}

/// Metrics registered once; values refreshed from Raft and the state at each scrape.
pub struct Metrics {
    registry: Registry,
    term: Gauge,
    is_leader: Gauge,
    leader: Family<LeaderLabels, Gauge>,
    commit_index: Gauge,
    applied_index: Gauge,
    last_log_index: Gauge,
    quorum_ack_ms: Gauge,
    site_state: Family<SiteLabels, Gauge>,
    app_outage: Family<AppLabels, Gauge>,
    apps_outage: Gauge,
    audit_entries: Gauge,
    topology_version: Gauge,
}

impl Metrics {
    pub fn new(apply_seconds: Histogram) -> Self {
        let mut registry = Registry::with_prefix("metrodr");
        let m = Metrics {
            term: Gauge::default(),
            is_leader: Gauge::default(),
            leader: Family::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            quorum_ack_ms: Gauge::default(),
            site_state: Family::default(),
            app_outage: Family::default(),
            apps_outage: Gauge::default(),
            audit_entries: Gauge::default(),
            topology_version: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("raft_term", "Current Raft term", m.term.clone());
        registry.register(
            "raft_is_leader",
            "1 if this node is the Raft leader",
            m.is_leader.clone(),
        );
        registry.register(
            "raft_leader",
            "1 for the leader this node knows (label: leader name)",
            m.leader.clone(),
        );
        registry.register(
            "raft_commit_index",
            "Highest log index known committed",
            m.commit_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Highest log index applied to the state machine",
            m.applied_index.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Highest log index in this node's log",
            m.last_log_index.clone(),
        );
        registry.register(
            "raft_millis_since_quorum_ack",
            "Leader only: milliseconds since a majority last acknowledged it",
            m.quorum_ack_ms.clone(),
        );
        registry.register(
            "apply_seconds",
            "Time to apply one batch of committed entries",
            apply_seconds,
        );
        registry.register(
            "site_state",
            "1 for the current state of each site",
            m.site_state.clone(),
        );
        registry.register(
            "app_outage_seconds",
            "Per app that should run and has not for longer than its RTO target: seconds since it stopped running (absent: it runs, or is within its RTO)",
            m.app_outage.clone(),
        );
        registry.register(
            "apps_outage",
            "Apps that should run and have not for longer than their RTO target",
            m.apps_outage.clone(),
        );
        registry.register(
            "audit_entries",
            "Entries in the audit log",
            m.audit_entries.clone(),
        );
        registry.register(
            "topology_version",
            "Version of the applied topology",
            m.topology_version.clone(),
        );
        Metrics { registry, ..m }
    }

    fn refresh(&self, node: &Node) {
        let rm = node.raft.metrics().borrow().clone();
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.term.set(as_i64(rm.current_term));
        self.is_leader
            .set(i64::from(rm.current_leader == Some(node.id)));
        self.leader.clear();
        if let Some((_, info)) = node.leader() {
            self.leader
                .get_or_create(&LeaderLabels { leader: info.name })
                .set(1);
        }
        self.commit_index.set(as_i64(node.committed_index()));
        self.applied_index
            .set(as_i64(rm.last_applied.map_or(0, |l| l.index)));
        self.last_log_index
            .set(as_i64(rm.last_log_index.unwrap_or(0)));
        self.quorum_ack_ms
            .set(as_i64(rm.millis_since_quorum_ack.unwrap_or(0)));
        let a = node.state.read();
        self.site_state.clear();
        for s in a.state.sites.values() {
            for st in ["up", "suspect", "down"] {
                let v = i64::from(name(&s.state) == st);
                self.site_state
                    .get_or_create(&SiteLabels {
                        site: s.id.to_string(),
                        state: st.into(),
                    })
                    .set(v);
            }
        }
        self.app_outage.clear();
        let now = crate::clock::now_ms();
        let mut outages = 0;
        for app in a.state.apps.values() {
            if let Some(since) = app.outage_since_ms {
                outages += 1;
                self.app_outage
                    .get_or_create(&AppLabels {
                        app: app.id.to_string(),
                    })
                    .set(as_i64(now.saturating_sub(since) / 1000));
            }
        }
        self.apps_outage.set(outages);
        self.audit_entries.set(as_i64(a.state.audit.len() as u64));
        self.topology_version
            .set(as_i64(a.state.topology().map_or(0, |t| t.version)));
    }
}

#[derive(Clone)]
struct Ctx {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
}

pub fn router(node: Arc<Node>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .with_state(Ctx { node, metrics })
}

async fn metrics_handler(State(c): State<Ctx>) -> impl IntoResponse {
    c.metrics.refresh(&c.node);
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &c.metrics.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics failed: {e}"),
        ),
    }
}

/// 200 with a small JSON body while the Raft core runs; 503 when it has stopped.
async fn healthz(State(c): State<Ctx>) -> impl IntoResponse {
    let m = c.node.raft.metrics().borrow().clone();
    let leader = c.node.leader().map(|(_, i)| i.name).unwrap_or_default();
    let body = serde_json::json!({
        "node": c.node.name,
        "raft_state": name(&crate::wire::RaftRole::from(m.state)),
        "leader": leader,
        "term": m.current_term,
        "ok": m.running_state.is_ok(),
    })
    .to_string();
    let code = if m.running_state.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}
