//! The metrodr daemons a lab starts — orchestrator nodes, agents and `metrodr volume`
//! processes: their config files (written with serde, so a value can never break the
//! TOML) and how each is started, here or in a site's network namespace, and known
//! to be up (its [`Announce`] line).
//!
//! Never: guess a daemon is up from a delay; it is up when it says so on stdout.

use std::path::{Path, PathBuf};
use std::process::Command;

use chaos::netns::NetLab;
use security::TlsFiles;
use serde::Serialize;

use crate::error::{Context, LabError};
use crate::procs::{Announce, Proc, Rest};

/// The `metrodr` binary the lab starts its processes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    pub exe: PathBuf,
}

/// Where a process runs: on this machine (loopback addresses), or inside a lab
/// site's network namespace.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    Here,
    Site(&'a NetLab, &'a str),
}

/// Where an orchestrator node says it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub grpc: String,
    pub http: Option<String>,
}

impl Binary {
    /// The binary of this process (the `metrodr` CLI runs its own lab).
    pub fn this() -> Result<Binary, LabError> {
        Ok(Binary {
            exe: std::env::current_exe().ctx("locating the metrodr binary")?,
        })
    }

    /// A binary at `exe` (tests and benchmarks: `env!("CARGO_BIN_EXE_metrodr")`).
    pub fn at(exe: impl Into<PathBuf>) -> Binary {
        Binary { exe: exe.into() }
    }

    /// A command running this binary at `place`.
    pub fn command(&self, place: Place<'_>) -> Command {
        match place {
            Place::Here => Command::new(&self.exe),
            Place::Site(net, site) => net.command(site, &self.exe),
        }
    }

    fn with_log(mut cmd: Command, filter: Option<&str>) -> Command {
        if let Some(f) = filter {
            cmd.env("METRODR_LOG", f);
        }
        cmd
    }

    /// `metrodr orchestrator --config CONFIG`, up once it says where it listens.
    pub fn node(
        &self,
        name: &str,
        config: &Path,
        log: &Path,
        place: Place<'_>,
        log_filter: Option<&str>,
    ) -> Result<(Proc, Listening), LabError> {
        let mut cmd = Self::with_log(self.command(place), log_filter);
        cmd.args(["orchestrator", "--config"]).arg(config);
        let (proc, announce) = Proc::start(name, cmd, log, Rest::Drain)?;
        match announce {
            Announce::Listening { grpc, http } => Ok((proc, Listening { grpc, http })),
            other => Err(not_what(name, &other, log)),
        }
    }

    /// `metrodr agent --config CONFIG`, up once it says it started.
    pub fn agent(
        &self,
        host: &str,
        config: &Path,
        log: &Path,
        place: Place<'_>,
        log_filter: Option<&str>,
    ) -> Result<Proc, LabError> {
        let mut cmd = Self::with_log(self.command(place), log_filter);
        cmd.args(["agent", "--config"]).arg(config);
        let (proc, announce) = Proc::start(host, cmd, log, Rest::Drain)?;
        match announce {
            Announce::Started { .. } => Ok(proc),
            other => Err(not_what(host, &other, log)),
        }
    }

    /// `metrodr volume ARGS`, up once it says it is ready; its ready line's fields
    /// (`listen`, `epoch`, …) are returned. `rest`: keep its status lines or not.
    pub fn volume(
        &self,
        name: &str,
        args: &[String],
        log: &Path,
        log_filter: Option<&str>,
        rest: Rest,
    ) -> Result<(Proc, serde_json::Map<String, serde_json::Value>), LabError> {
        let mut cmd = Self::with_log(self.command(Place::Here), log_filter);
        cmd.arg("volume").args(args);
        let (proc, announce) = Proc::start(name, cmd, log, rest)?;
        match announce {
            Announce::Ready(fields) => Ok((proc, fields)),
            other => Err(not_what(name, &other, log)),
        }
    }
}

fn not_what(name: &str, got: &Announce, log: &Path) -> LabError {
    LabError::NotStarted {
        name: name.to_string(),
        line: format!("{got:?}"),
        log: log.to_path_buf(),
    }
}

/// An orchestrator node's config file (`orchestrator::config::NodeConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSpec {
    pub name: String,
    pub data_dir: PathBuf,
    /// `host:port`; port 0 picks one (the node announces it).
    pub listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
    /// The cluster key that signs reports (the same file for every node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

/// An agent's config file (`agent::config::AgentConfig`); unset settings keep the
/// agent's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentSpec {
    pub host: String,
    /// The orchestrator nodes, `host:port,host:port,…`.
    pub cluster: String,
    pub libvirt_uri: String,
    pub state_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_backend: Option<DiskBackend>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_type: Option<DomainType>,
    /// Where this host's replica endpoints listen (its site's address in a lab).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_network: Option<GuestNetwork>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

/// The agent's `disk_backend` values the lab uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskBackend {
    /// The replication engine's NBD sockets (volumes the agents serve).
    Nbd,
}

/// The agent's `domain_type` values the lab uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DomainType {
    /// TCG: works everywhere.
    Qemu,
}

/// The agent's `guest_network` values the lab uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestNetwork {
    /// QEMU user-mode networking: the probes reach guests through loopback forwards.
    User,
}

impl AgentSpec {
    /// A plain agent of `host` on `libvirt_uri`, its state in `dir/agent-HOST`.
    pub fn new(dir: &Path, host: &str, cluster: &str, libvirt_uri: &str) -> AgentSpec {
        AgentSpec {
            host: host.to_string(),
            cluster: cluster.to_string(),
            libvirt_uri: libvirt_uri.to_string(),
            state_dir: agent_state_dir(dir, host),
            disk_backend: None,
            domain_type: None,
            replication_ip: None,
            guest_network: None,
            tls: None,
        }
    }
}

/// Where the agent of `host` keeps its state in a lab directory (its journal, its
/// volumes' sockets `sockets/APP.sock`, its consoles, its `faults/`).
pub fn agent_state_dir(dir: &Path, host: &str) -> PathBuf {
    dir.join(format!("agent-{host}"))
}

/// Write `spec` as TOML to `path`.
pub fn write_config(path: &Path, spec: &impl Serialize) -> Result<(), LabError> {
    let text = toml::to_string(spec).with_ctx(|| format!("rendering {}", path.display()))?;
    std::fs::write(path, text).with_ctx(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The files the lab writes are the files the daemons read: loaded with their own
    /// loaders, every setting arrives.
    #[test]
    fn configs_load_with_the_daemons_own_loaders() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsFiles {
            ca: "/c/ca.crt".into(),
            cert: "/c/n.crt".into(),
            key: "/c/n.key".into(),
        };
        let node = NodeSpec {
            name: "orch-north".into(),
            data_dir: dir.path().join("orch-north"),
            listen: "10.200.0.2:7400".into(),
            http_listen: Some("127.0.0.1:0".into()),
            signing_key: Some(dir.path().join("cluster.key")),
            tls: Some(tls.clone()),
        };
        let path = dir.path().join("n.toml");
        write_config(&path, &node).unwrap();
        let loaded = orchestrator::config::NodeConfig::load(&path).unwrap();
        assert_eq!(loaded.name, "orch-north");
        assert_eq!(loaded.listen.to_string(), "10.200.0.2:7400");
        assert_eq!(loaded.http_listen.unwrap().to_string(), "127.0.0.1:0");
        assert_eq!(loaded.signing_key, node.signing_key);
        assert_eq!(loaded.tls, Some(tls.clone()));

        let mut agent = AgentSpec::new(dir.path(), "north-h1", "a:1,b:2", "test:///private");
        agent.disk_backend = Some(DiskBackend::Nbd);
        agent.domain_type = Some(DomainType::Qemu);
        agent.replication_ip = Some("10.200.0.2".into());
        agent.guest_network = Some(GuestNetwork::User);
        agent.tls = Some(tls.clone());
        let path = dir.path().join("a.toml");
        write_config(&path, &agent).unwrap();
        let loaded = agent::config::AgentConfig::load(&path).unwrap();
        assert_eq!(loaded.host, "north-h1");
        assert_eq!(loaded.cluster.to_vec(), ["a:1", "b:2"]);
        assert_eq!(loaded.state_dir, dir.path().join("agent-north-h1"));
        assert_eq!(loaded.disk_backend, agent::config::DiskBackendSetting::Nbd);
        assert_eq!(loaded.domain_type, agent::config::DomainTypeSetting::Qemu);
        assert_eq!(loaded.replication_ip, "10.200.0.2");
        assert_eq!(loaded.guest_network, agent::config::GuestNetwork::User);
        assert_eq!(loaded.tls, Some(tls));
    }
}
