//! Configuration of one orchestrator node (`metrodr orchestrator --config FILE`).
//!
//! ```toml
//! name = "orch-north"                 # this node's [[orchestrator]] id in the topology
//! data_dir = "/var/lib/metrodr/orch-north"
//! listen = "10.10.0.5:7400"           # gRPC for peers, agents and operators (port 0: any)
//! http_listen = "127.0.0.1:7480"      # /metrics and /healthz (optional)
//! write_timeout_ms = 5000             # optional
//!
//! [timing]                            # optional: Raft timers, same keys as a topology's
//! raft_heartbeat_ms = 100
//!
//! [tls]                               # mutual TLS (`metrodr certs init`); without it
//! ca = "/etc/metrodr/certs/ca.crt"    # the node serves plain gRPC to anyone, and says so
//! cert = "/etc/metrodr/certs/nodes/orch-north.crt"
//! key = "/etc/metrodr/certs/nodes/orch-north.key"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use topology::Timing;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name: an `[[orchestrator]]` id of the topology. Its Raft id is derived
    /// from it, so it must never change for a given data directory.
    pub name: String,
    /// RocksDB directory (created if missing).
    pub data_dir: PathBuf,
    /// gRPC listen address. Port 0 picks a free port, printed at startup.
    pub listen: SocketAddr,
    /// HTTP listen address for `/metrics` and `/healthz`; none: no HTTP server.
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// How long a write may wait to be committed before the caller gets
    /// DEADLINE_EXCEEDED (5 s: several election timeouts, so a leader change during a
    /// write does not fail it).
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    #[serde(default)]
    pub timing: Timing,
    /// The cluster key that signs reports: the same file on every node, created once
    /// with `metrodr report keygen --out FILE`. Without it, the node serves no reports.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// This node's certificate (role node, named like the node), its key and the
    /// cluster CA: every gRPC connection to and from the node then uses mutual TLS and
    /// every call is authorized by the caller's role. None: plain gRPC, no
    /// authorization (a test or a lab on one machine only).
    #[serde(default)]
    pub tls: Option<security::TlsFiles>,
}

fn default_write_timeout_ms() -> u64 {
    5000
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid orchestrator config: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let c: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        c.validate(path)?;
        Ok(c)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        if let Err(why) = topology::ids::check_id(&self.name) {
            return Err(invalid("name", why));
        }
        if self.write_timeout_ms < 100 || self.write_timeout_ms > 600_000 {
            return Err(invalid(
                "write_timeout_ms",
                format!("{} is outside 100..=600000 ms", self.write_timeout_ms),
            ));
        }
        if let Some(p) = self.timing.check().into_iter().next() {
            return Err(invalid("timing", format!("{}: {}", p.message, p.hint)));
        }
        Ok(())
    }

    /// openraft's configuration from the timing budget.
    pub fn raft_config(&self) -> Result<openraft::Config, String> {
        let t = &self.timing;
        openraft::Config {
            cluster_name: "metrodr".into(),
            heartbeat_interval: t.raft_heartbeat_ms,
            election_timeout_min: t.raft_election_min_ms,
            election_timeout_max: t.raft_election_max_ms,
            // A snapshot serializes the whole state (O(state), ~100 ms of CPU for tens of
            // thousands of audit entries) and shows as a commit-latency spike, so take one
            // every 50,000 entries; replaying that many at startup takes about a second.
            // Keep 1,000 more so a briefly lagging follower catches up from the log.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(50_000),
            max_in_snapshot_log_to_keep: 1000,
            snapshot_max_chunk_size: 1 << 20,
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_config_gets_the_design_defaults() {
        let c = NodeConfig::parse(
            "name = \"orch-a\"\ndata_dir = \"/tmp/x\"\nlisten = \"127.0.0.1:0\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.write_timeout_ms, 5000);
        assert_eq!(c.timing, Timing::default());
        let r = c.raft_config().unwrap();
        assert_eq!(
            (
                r.heartbeat_interval,
                r.election_timeout_min,
                r.election_timeout_max
            ),
            (100, 400, 800)
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let base = "data_dir = \"/tmp/x\"\nlisten = \"127.0.0.1:0\"\n";
        let e = NodeConfig::parse(&format!("name = \"Bad Name\"\n{base}"), Path::new("c.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
        let e = NodeConfig::parse(
            &format!("name = \"a\"\n{base}listn = 1\n"),
            Path::new("c.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `listn`"), "{e}");
        let e = NodeConfig::parse(
            &format!("name = \"a\"\n{base}[timing]\nlease_ms = 100\n"),
            Path::new("c.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("timing"), "{e}");
        let e = NodeConfig::parse(
            "name = \"a\"\ndata_dir = \"/x\"\nlisten = \"nowhere\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
    }
}
