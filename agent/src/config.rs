//! Configuration of one agent (`metrodr agent --config FILE`).
//!
//! ```toml
//! host = "north-h1"                       # this host's [[host]] id in the topology
//! cluster = ["10.10.0.5:7400", "10.20.0.5:7400", "10.30.0.5:7400"]  # orchestrators (any)
//! libvirt_uri = "qemu:///system"          # or "test:///default"; "test:///private" = a
//!                                         # private fake host (libvirt test driver)
//! state_dir = "/var/lib/metrodr/agent"    # journal, lease, volume files, consoles
//! domain_type = "qemu"                    # qemu (TCG) | kvm | auto
//! fence_action = "destroy"                # destroy | pause
//! disk_backend = "file"                   # file | nbd
//! private_host_vcpus = 8                  # capacity of a "test:///private" host
//! private_host_memory = "16GiB"
//! replication_ip = "10.10.0.11"           # where this host's replica endpoints listen
//! guest_network = { network = "prod" }    # the VMs' NIC: "none" | "user" | { network = NAME }
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use topology::ByteSize;

/// What to do with the VMs when the lease is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FenceAction {
    /// Hard-stop every managed VM: nothing it could still write survives.
    #[default]
    Destroy,
    /// Pause every managed VM (its memory survives; it writes nothing while paused).
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DomainTypeSetting {
    /// TCG: works everywhere (Linux guests hang under KVM on the reference machine).
    #[default]
    Qemu,
    Kvm,
    /// KVM when libvirt offers it, else TCG.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DiskBackendSetting {
    /// Local raw files in `state_dir/volumes` (no replication).
    #[default]
    File,
    /// The replication engine's NBD sockets in `state_dir/sockets`.
    Nbd,
}

/// How this host's production VMs are connected (drill copies always get their
/// drill's isolated network). It also says where the agent finds a VM's address for
/// the app's tcp probes that name none.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum GuestNetwork {
    /// No NIC: tcp probes must name an `address`.
    #[default]
    None,
    /// QEMU user-mode networking, restricted (the guest reaches nothing), each probed
    /// guest port forwarded to a free port of this host's loopback, where the probes
    /// connect: a lab or a one-machine demo.
    User,
    /// A NIC on this libvirt network; probes connect to the guest's address from
    /// libvirt's DHCP leases or the host's ARP table.
    Network(String),
}

/// `cluster` may be a list or one comma-separated string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Addrs {
    List(Vec<String>),
    One(String),
}

impl Addrs {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Addrs::List(v) => v.clone(),
            Addrs::One(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub host: String,
    pub cluster: Addrs,
    pub libvirt_uri: String,
    pub state_dir: PathBuf,
    #[serde(default)]
    pub domain_type: DomainTypeSetting,
    #[serde(default)]
    pub fence_action: FenceAction,
    #[serde(default)]
    pub disk_backend: DiskBackendSetting,
    #[serde(default = "default_private_vcpus")]
    pub private_host_vcpus: u32,
    #[serde(default = "default_private_memory")]
    pub private_host_memory: ByteSize,
    /// The address this host's replica endpoints listen on: the other site's
    /// primaries connect to it (volumes served by agents).
    #[serde(default = "default_replication_ip")]
    pub replication_ip: String,
    /// This host's agent certificate (`agents/HOST.crt`), its key and the cluster CA:
    /// the agent's calls to the cluster and its replication links then use mutual TLS.
    /// None: plain (a cluster without TLS).
    #[serde(default)]
    pub tls: Option<security::TlsFiles>,
    #[serde(default)]
    pub guest_network: GuestNetwork,
}

fn default_replication_ip() -> String {
    "127.0.0.1".into()
}

fn default_private_vcpus() -> u32 {
    8
}

fn default_private_memory() -> ByteSize {
    ByteSize::gib(16)
}

/// The URI that asks for a private fake host.
pub const PRIVATE_TEST_URI: &str = "test:///private";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid agent config: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let c: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |field, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        topology::ids::check_id(&c.host).map_err(|e| invalid("host", e))?;
        if c.cluster.to_vec().is_empty() {
            return Err(invalid(
                "cluster",
                "no orchestrator address; list at least one host:port".into(),
            ));
        }
        if !c.libvirt_uri.contains("://") {
            return Err(invalid(
                "libvirt_uri",
                format!(
                    "{:?} is not a libvirt URI (e.g. qemu:///system, test:///private)",
                    c.libvirt_uri
                ),
            ));
        }
        if c.replication_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                "replication_ip",
                format!(
                    "{:?} is not an IP address (e.g. 10.10.0.11, the address the other site reaches this host at)",
                    c.replication_ip
                ),
            ));
        }
        if let GuestNetwork::Network(name) = &c.guest_network
            && (name.is_empty()
                || name.len() > 64
                || name.contains(['/', '\'', '"', '<', '>', '&']))
        {
            return Err(invalid(
                "guest_network",
                format!(
                    "{name:?} is not a libvirt network name (`virsh net-list --all` shows them)"
                ),
            ));
        }
        if c.private_host_vcpus == 0 || c.private_host_memory.bytes() == 0 {
            return Err(invalid(
                "private_host_vcpus",
                "a private test host needs vCPUs and memory".into(),
            ));
        }
        Ok(c)
    }

    pub fn volumes_dir(&self) -> PathBuf {
        self.state_dir.join("volumes")
    }
    pub fn sockets_dir(&self) -> PathBuf {
        self.state_dir.join("sockets")
    }
    pub fn consoles_dir(&self) -> PathBuf {
        self.state_dir.join("consoles")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_names_bad_fields() {
        let c = AgentConfig::parse(
            "host = \"a-h1\"\ncluster = \"127.0.0.1:1, 127.0.0.1:2\"\nlibvirt_uri = \"test:///private\"\nstate_dir = \"/tmp/a\"\n",
            Path::new("a.toml"),
        )
        .unwrap();
        assert_eq!(c.cluster.to_vec(), vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(c.fence_action, FenceAction::Destroy);
        assert_eq!(c.domain_type, DomainTypeSetting::Qemu);
        let e = AgentConfig::parse("host = \"A H\"\ncluster = [\"x:1\"]\nlibvirt_uri = \"test:///default\"\nstate_dir = \"/x\"\n", Path::new("a.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("host"), "{e}");
        let e = AgentConfig::parse(
            "host = \"a\"\ncluster = []\nlibvirt_uri = \"test:///default\"\nstate_dir = \"/x\"\n",
            Path::new("a.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cluster"), "{e}");
        let e = AgentConfig::parse("host = \"a\"\ncluster = [\"x:1\"]\nlibvirt_uri = \"test:///default\"\nstate_dir = \"/x\"\nfence = 1\n", Path::new("a.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn guest_network_is_none_user_or_a_libvirt_network() {
        let base = "host = \"a\"\ncluster = [\"x:1\"]\nlibvirt_uri = \"test:///default\"\nstate_dir = \"/x\"\n";
        let parse =
            |extra: &str| AgentConfig::parse(&format!("{base}{extra}"), Path::new("a.toml"));
        assert_eq!(parse("").unwrap().guest_network, GuestNetwork::None);
        assert_eq!(
            parse("guest_network = \"user\"\n").unwrap().guest_network,
            GuestNetwork::User
        );
        assert_eq!(
            parse("guest_network = { network = \"prod\" }\n")
                .unwrap()
                .guest_network,
            GuestNetwork::Network("prod".into())
        );
        let e = parse("guest_network = \"bridge\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
        let e = parse("guest_network = { network = \"a/b\" }\n").unwrap_err();
        assert!(e.to_string().contains("guest_network"), "{e}");
    }
}
