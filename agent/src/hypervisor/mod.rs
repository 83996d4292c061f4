//! The agent's view of its hypervisor: a small, blocking [`Hypervisor`] trait over
//! libvirt domains, the types it speaks, and the one real implementation
//! ([`libvirt::Libvirt`], which also drives the libvirt test driver).
//!
//! Every operation is idempotent in the direction the agent wants (starting a running
//! domain or destroying a stopped one is `Ok`), so a step retried after a crash or a
//! lost reply converges instead of failing. Errors say what kind of failure happened
//! ([`HvErrorKind`]) so callers can tell "libvirt is down, try later" from "this XML
//! will never work" without parsing messages.
//!
//! This module must never decide *whether* to run a VM (leases, epochs and fencing live
//! elsewhere); it only carries out what it is told. It must never panic on a
//! hypervisor error, and never stop a VM as a side effect of another operation.
//! Calls block: async callers use `spawn_blocking`.

pub mod libvirt;

use serde::{Deserialize, Serialize};

use crate::domain_xml::{DomainType, ManagedBy};

pub use libvirt::Libvirt;

/// The state of a domain, as the agent needs it.
///
/// ```text
///             start               suspend
///  ShutOff ──────────▶ Running ──────────▶ Paused
///     ▲                 │  ▲     resume      │
///     │                 │  └─────────────────┘
///     │       shutdown  ▼
///     ├──────────── ShuttingDown   (the guest powers off)
///     └──── destroy, from any active state; a guest crash (on_crash=destroy)
/// ```
/// `Crashed` only appears for domains not defined by us (ours use `on_crash=destroy`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DomainState {
    /// Running, including libvirt's "blocked on resource" (still a running guest).
    Running,
    Paused,
    /// A shutdown was requested and the guest has not powered off yet.
    ShuttingDown,
    /// Defined but not running.
    ShutOff,
    Crashed,
    /// A state the agent does not act on: libvirt's `no-state`, `pm-suspended`, or a
    /// code newer than the bindings (`unknown-<n>`).
    Other(String),
}

impl DomainState {
    /// Whether the domain has a QEMU process (anything but `ShutOff`).
    pub fn is_active(&self) -> bool {
        !matches!(self, DomainState::ShutOff)
    }
}

impl DomainState {
    /// The state as the agent protocol reports it.
    pub fn reported(&self) -> proto::agent::VmState {
        use proto::agent::VmState;
        match self {
            DomainState::Running => VmState::Running,
            DomainState::Paused => VmState::Paused,
            DomainState::ShuttingDown => VmState::ShuttingDown,
            DomainState::ShutOff => VmState::ShutOff,
            DomainState::Crashed => VmState::Crashed,
            DomainState::Other(_) => VmState::Other,
        }
    }
}

impl std::fmt::Display for DomainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::ShuttingDown => "shutting-down",
            DomainState::ShutOff => "shut-off",
            DomainState::Crashed => "crashed",
            DomainState::Other(s) => s,
        })
    }
}

/// One domain on the host, ours or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    pub name: String,
    pub state: DomainState,
    /// `Some` when the domain carries our metadata mark; `None` for everyone else's
    /// domains, which the agent lists but never touches.
    pub managed: Option<ManagedBy>,
}

/// The domains of `host`: a domain marked by another host's agent (agents sharing
/// one libvirt, as in a lab) is listed as not ours, like any foreign domain.
pub fn only_ours(mut domains: Vec<DomainInfo>, host: &str) -> Vec<DomainInfo> {
    for d in &mut domains {
        if d.managed.as_ref().is_some_and(|m| !m.is_for(host)) {
            d.managed = None;
        }
    }
    domains
}

/// What the host offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Active host CPUs.
    pub vcpus: u32,
    pub memory_bytes: u64,
    /// libvirt's driver name: `QEMU`, `TEST`, …
    pub driver: String,
    /// Domain types the host can run, from its capabilities (`"kvm"`, `"qemu"`; the
    /// test driver says `"test"` but accepts any), each once, in capability order.
    pub domain_types: Vec<String>,
}

/// What kind of failure a [`HvError`] is, which decides what the caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HvErrorKind {
    /// libvirt cannot be reached (daemon down, connection lost and one reconnect
    /// failed). Transient: retry later; the host's VMs may well be running.
    Unavailable,
    /// No domain of that name.
    NotFound,
    /// libvirt refused the XML or the operation in the domain's current state.
    /// Retrying the same request will fail the same way.
    Rejected,
    /// Anything else (QEMU failed to start, an internal libvirt error, …).
    Failed,
}

/// A failed hypervisor operation. `Display` reads `"<op> <domain>: <message>"`, e.g.
/// `start web-1: Domain not found: no domain with matching name 'web-1'`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}{}: {message}", domain.as_deref().map(|d| format!(" {d}")).unwrap_or_default())]
pub struct HvError {
    pub kind: HvErrorKind,
    /// The operation: `capacity`, `list`, `state`, `define`, `start`, …
    pub op: &'static str,
    /// The domain it was about, when there is one.
    pub domain: Option<String>,
    /// libvirt's own message (kept verbatim), or ours when we refused first.
    pub message: String,
}

impl HvError {
    pub fn new(
        kind: HvErrorKind,
        op: &'static str,
        domain: Option<&str>,
        message: impl Into<String>,
    ) -> HvError {
        HvError {
            kind,
            op,
            domain: domain.map(str::to_owned),
            message: message.into(),
        }
    }
}

/// The operations the agent needs from a hypervisor. Implementations are blocking and
/// shareable between threads.
pub trait Hypervisor: Send + Sync + 'static {
    /// The libvirt URI this talks to (for logs and messages).
    fn uri(&self) -> &str;
    fn capacity(&self) -> Result<Capacity, HvError>;
    /// Every domain, defined or running, sorted by name.
    fn list(&self) -> Result<Vec<DomainInfo>, HvError>;
    fn state(&self, name: &str) -> Result<DomainState, HvError>;
    /// Define or redefine a persistent domain. Redefining a running domain changes its
    /// next boot, not the running guest.
    fn define(&self, xml: &str) -> Result<(), HvError>;
    /// Start a defined domain. `Ok` if already running; `Rejected` if paused (resume
    /// it: starting must not silently un-pause a fenced VM).
    fn start(&self, name: &str) -> Result<(), HvError>;
    /// Ask the guest to shut down (ACPI) and return at once; poll [`Self::state`] for
    /// `ShutOff`. `Ok` if already off.
    fn shutdown(&self, name: &str) -> Result<(), HvError>;
    /// Hard stop (pull the plug). `Ok` if already off.
    fn destroy(&self, name: &str) -> Result<(), HvError>;
    /// Remove the persistent definition of a shut-off domain. `NotFound` if unknown;
    /// `Rejected` while it is running or paused: undefine never stops a VM, destroy it
    /// first.
    fn undefine(&self, name: &str) -> Result<(), HvError>;
    /// Pause a running domain. `Ok` if already paused; `Rejected` if shut off.
    fn suspend(&self, name: &str) -> Result<(), HvError>;
    /// Resume a paused domain. `Ok` if already running; `Rejected` if shut off.
    fn resume(&self, name: &str) -> Result<(), HvError>;
    /// The domain's XML as libvirt has it now (of the running guest when it runs).
    fn xml(&self, name: &str) -> Result<String, HvError>;
    /// The guest's IP addresses as the host sees them: libvirt's DHCP leases, else the
    /// host's ARP table. Empty when the guest has none yet.
    fn addresses(&self, name: &str) -> Result<Vec<std::net::IpAddr>, HvError>;
    /// What QEMU's user-mode network stack of a running domain holds (the monitor's
    /// `info usernet`): its forwards and connections with their TCP states.
    fn usernet(&self, name: &str) -> Result<String, HvError>;
    /// Define network `name` from `xml` unless it exists, and start it unless it runs;
    /// returns libvirt's definition of it as it is now (the caller checks it).
    fn ensure_network(&self, name: &str, xml: &str) -> Result<String, HvError>;
    /// Stop and remove network `name`. `Ok` if it does not exist.
    fn remove_network(&self, name: &str) -> Result<(), HvError>;

    /// Stop a VM as fast as possible because the host lost its lease (its guest I/O is
    /// fenced already). Returns what was done. The default destroys; implementations
    /// may be faster. No pause first: a pause waits for the guest's in-flight I/O, which
    /// a fenced primary never answers.
    fn fence(&self, name: &str) -> Result<String, HvError> {
        self.destroy(name)?;
        Ok("destroyed".into())
    }
}

/// The domain type to define VMs with on a host offering `cap`.
///
/// An explicit setting (`wanted`) always wins, even when the capabilities do not list
/// it: the operator asked, and libvirt's refusal at define names the problem.
///
/// Without one the answer is `Qemu` (TCG) whenever the host offers it, even when
/// `kvm` is listed too. KVM being *listed* does not mean it *works*: on the build
/// machine `/dev/kvm` exists, yet Linux guests hang right after the BIOS under KVM
/// while they boot in seconds under TCG (MACHINE.md). A slow guest is a working DR
/// drill; a hung one is not, so KVM is used only when asked for. The one exception is a
/// host that offers `kvm` but not `qemu` (QEMU builds without TCG, as on RHEL): there
/// KVM is the only thing that can work. The test driver lists only `test` and accepts
/// any type, so it gets `Qemu`.
pub fn detect_domain_type(cap: &Capacity, wanted: Option<DomainType>) -> DomainType {
    if let Some(ty) = wanted {
        return ty;
    }
    let offers = |t: DomainType| cap.domain_types.iter().any(|d| d == t.as_str());
    if !offers(DomainType::Qemu) && offers(DomainType::Kvm) {
        DomainType::Kvm
    } else {
        DomainType::Qemu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(types: &[&str]) -> Capacity {
        Capacity {
            vcpus: 2,
            memory_bytes: 1 << 30,
            driver: "QEMU".into(),
            domain_types: types.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn wanted_domain_type_wins() {
        for types in [&["qemu", "kvm"][..], &["qemu"], &["kvm"], &[]] {
            for ty in [DomainType::Qemu, DomainType::Kvm] {
                assert_eq!(detect_domain_type(&cap(types), Some(ty)), ty);
            }
        }
    }

    #[test]
    fn auto_prefers_tcg_and_takes_kvm_only_when_it_is_all_there_is() {
        assert_eq!(
            detect_domain_type(&cap(&["qemu", "kvm"]), None),
            DomainType::Qemu
        );
        assert_eq!(
            detect_domain_type(&cap(&["kvm", "qemu"]), None),
            DomainType::Qemu
        );
        assert_eq!(detect_domain_type(&cap(&["kvm"]), None), DomainType::Kvm);
        assert_eq!(detect_domain_type(&cap(&["test"]), None), DomainType::Qemu);
        assert_eq!(detect_domain_type(&cap(&[]), None), DomainType::Qemu);
    }

    #[test]
    fn error_display_names_the_operation_and_domain() {
        let e = HvError::new(
            HvErrorKind::NotFound,
            "start",
            Some("web-1"),
            "no such domain",
        );
        assert_eq!(e.to_string(), "start web-1: no such domain");
        let e = HvError::new(HvErrorKind::Unavailable, "list", None, "down");
        assert_eq!(e.to_string(), "list: down");
    }

    #[test]
    fn states_serialize_kebab_case_like_their_display() {
        for (s, text) in [
            (DomainState::Running, "running"),
            (DomainState::Paused, "paused"),
            (DomainState::ShuttingDown, "shutting-down"),
            (DomainState::ShutOff, "shut-off"),
            (DomainState::Crashed, "crashed"),
        ] {
            assert_eq!(s.to_string(), text);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{text}\""));
        }
        let other = DomainState::Other("pm-suspended".into());
        assert_eq!(other.to_string(), "pm-suspended");
        assert_eq!(
            serde_json::to_string(&other).unwrap(),
            r#"{"other":"pm-suspended"}"#
        );
        assert_eq!(
            serde_json::to_string(&HvErrorKind::NotFound).unwrap(),
            "\"not-found\""
        );
    }
}

#[cfg(test)]
mod ours_tests {
    use super::*;
    use topology::ids::{AppId, VmId};

    fn domain(name: &str, host: Option<&str>) -> DomainInfo {
        DomainInfo {
            name: name.into(),
            state: DomainState::Running,
            managed: Some(ManagedBy {
                app: AppId::new("shop"),
                vm: VmId::new(name),
                host: host.map(str::to_string),
                drill: None,
            }),
        }
    }

    #[test]
    fn a_domain_marked_by_another_host_is_not_ours() {
        let all = vec![
            domain("a", Some("h1")),
            domain("b", Some("h2")),
            domain("c", None),
        ];
        let mine: Vec<(String, bool)> = only_ours(all, "h1")
            .into_iter()
            .map(|d| (d.name, d.managed.is_some()))
            .collect();
        assert_eq!(
            mine,
            [("a".into(), true), ("b".into(), false), ("c".into(), true)]
        );
    }
}
