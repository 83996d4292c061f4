//! The file format as written: serde structs with `deny_unknown_fields`, keeping the
//! source span of every value the validator may need to point at. Nothing here is
//! checked beyond TOML types; [`crate::validate`] turns these into the model.

use serde::Deserialize;
use toml::Spanned;

use crate::ids::ByteSize;
use crate::model::{BootKind, FailoverPolicy, ProbeKind, ReplicationMode, SiteRole};

pub type S<T> = Spanned<T>;

/// `[cluster]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: S<String>,
    pub description: Option<String>,
    pub volumes: Option<crate::model::VolumeService>,
}

/// `[[drill]]`: a test drill the leader runs on a schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrill {
    pub id: S<String>,
    pub kind: S<String>,
    #[serde(default)]
    pub apps: Vec<S<String>>,
    pub every: S<String>,
}

/// `[[site]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub id: S<String>,
    pub name: Option<String>,
    pub role: S<SiteRole>,
    pub location: Option<String>,
    pub notes: Option<String>,
}

/// `[[orchestrator]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub id: S<String>,
    pub site: S<String>,
    pub addr: S<String>,
}

/// `[[host]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub id: S<String>,
    pub site: S<String>,
    pub libvirt_uri: S<String>,
    pub agent_addr: S<String>,
    pub vcpus: S<u32>,
    pub memory: S<ByteSize>,
    pub notes: Option<String>,
}

/// `[[app]]` without its `vm`, `volume` and `probe` arrays, which are read one element
/// at a time so that one bad VM does not hide the problems of the next.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub id: S<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub tier: S<u32>,
    #[serde(default)]
    pub depends_on: Vec<S<String>>,
    pub preferred_site: S<String>,
    #[serde(default)]
    pub failover: FailoverPolicy,
    pub rto_target_s: S<u32>,
    pub rpo_target_s: S<u32>,
}

/// `[[app.volume]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolume {
    pub id: S<String>,
    pub size: S<ByteSize>,
    pub replication: S<ReplicationMode>,
    pub lag_max_s: Option<S<u32>>,
    pub lag_max_size: Option<S<ByteSize>>,
}

/// `[[app.vm]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVm {
    pub id: S<String>,
    pub vcpus: S<u32>,
    pub memory: S<ByteSize>,
    pub boot: Option<S<BootKind>>,
    pub kernel: Option<S<String>>,
    pub initrd: Option<S<String>>,
    pub cmdline: Option<S<String>>,
    #[serde(default)]
    pub disks: Vec<S<String>>,
    pub boot_estimate_s: Option<S<u32>>,
}

/// `[[app.probe]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbe {
    pub kind: S<ProbeKind>,
    pub vm: Option<S<String>>,
    pub port: Option<S<u16>>,
    pub address: Option<S<String>>,
    pub marker: Option<S<String>>,
    pub timeout_s: Option<S<u32>>,
}

/// An `[[app]]` with its parts, each part with the span of its table.
#[derive(Debug, Clone)]
pub struct RawAppFull {
    pub span: std::ops::Range<usize>,
    pub app: RawApp,
    pub vms: Vec<(std::ops::Range<usize>, RawVm)>,
    pub volumes: Vec<(std::ops::Range<usize>, RawVolume)>,
    pub probes: Vec<(std::ops::Range<usize>, RawProbe)>,
}

/// Everything that deserialized, plus the ids of elements that did not (so that
/// references to them are not reported a second time as dangling).
#[derive(Debug, Clone, Default)]
pub struct RawTopology {
    pub cluster: Option<(std::ops::Range<usize>, RawCluster)>,
    pub timing: Option<(std::ops::Range<usize>, crate::timing::Timing)>,
    pub sites: Vec<(std::ops::Range<usize>, RawSite)>,
    pub nodes: Vec<(std::ops::Range<usize>, RawNode)>,
    pub hosts: Vec<(std::ops::Range<usize>, RawHost)>,
    pub apps: Vec<RawAppFull>,
    pub drills: Vec<(std::ops::Range<usize>, RawDrill)>,
    /// Ids (of any kind) found in elements that failed to deserialize.
    pub broken_ids: std::collections::HashSet<String>,
    /// Sections (`"[[host]]"`, …) with at least one element that failed to deserialize.
    pub broken_sections: std::collections::HashSet<&'static str>,
    /// Whether every element deserialized (cross-entity checks such as capacity only
    /// run on complete input, or their verdict would be misleading).
    pub complete: bool,
}
