//! [`Hypervisor`] over libvirt, through the `virt` bindings: `qemu:///system` in
//! production, `test:///<host.xml>` (the in-process test driver) for fast tests and
//! the demo.
//!
//! The connection is opened lazily and kept. libvirtd may be restarted under a running
//! agent, so a call that fails because the *connection* died (an RPC-level error, or
//! the connection no longer alive) drops it and is retried once on a fresh connection;
//! if that fails too the caller gets [`HvErrorKind::Unavailable`]. Every operation is
//! safe to run twice, which is what makes that retry sound (see `Libvirt::call`).
//!
//! This module must never panic on a libvirt error, never stop a VM as a side effect
//! (undefine of an active domain is refused, not turned into destroy + undefine), and
//! never hide libvirt's own message from the operator.
//!
//! Limits: calls block. Without a libvirt event loop (the `virt` 0.5 bindings cannot
//! run one without `unsafe`) there are no keep-alives, so a daemon that *hangs* (rather
//! than dies) blocks the calling thread until it answers; callers bound waits with
//! their own timeouts.

use std::sync::{Arc, Mutex, MutexGuard, Once};

use virt::connect::Connect;
use virt::domain::{Domain, DomainState as VirtState, DomainStateEnum};
use virt::enumutil::Enum;
use virt::error::{ErrorDomain, ErrorDomainEnum, ErrorNumber, ErrorNumberEnum};

use super::{Capacity, DomainInfo, DomainState, HvError, HvErrorKind, Hypervisor};
use crate::domain_xml::managed_by;

/// A libvirt hypervisor at one URI. Cheap to create: nothing connects until the first
/// call. Share it (`Arc<Libvirt>`) between threads; calls run concurrently on one
/// connection, libvirt connections being thread-safe.
///
/// A `test:///<file>` URI gets a private in-memory hypervisor *per connection*: its
/// domains live exactly as long as the connection this value holds.
pub struct Libvirt {
    uri: String,
    slot: Mutex<Slot>,
}

struct Slot {
    conn: Option<Arc<Connect>>,
    /// Bumped on every (re)connect, so a thread that saw an old connection fail does
    /// not throw away the fresh one another thread has just opened.
    generation: u64,
}

/// Why one attempt failed: libvirt said no, or we refused before asking it.
enum Fail {
    Virt(virt::error::Error),
    Refuse(HvErrorKind, String),
}

impl From<virt::error::Error> for Fail {
    fn from(e: virt::error::Error) -> Fail {
        Fail::Virt(e)
    }
}

// Flags for undefine: also drop a managed-save image and snapshot metadata, which
// would otherwise make libvirt refuse. NVRAM is left alone (our domains have none, and
// deleting someone's firmware variables is not ours to do).
const UNDEFINE_FLAGS: virt::sys::virDomainUndefineFlagsValues =
    virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;

static SILENCE_LIBVIRT: Once = Once::new();

impl Libvirt {
    /// A hypervisor at `uri` (`qemu:///system`, `test:///path/host.xml`, …). Does not
    /// connect yet.
    pub fn new(uri: &str) -> Libvirt {
        // libvirt's default error handler prints every error to stderr, including the
        // ones we turn into `Ok` (already running, …). Errors are returned instead.
        // Process-global and idempotent.
        SILENCE_LIBVIRT.call_once(virt::error::clear_error_callback);
        Libvirt {
            uri: uri.to_owned(),
            slot: Mutex::new(Slot {
                conn: None,
                generation: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        // A panic while holding this lock cannot leave the slot half-updated (it only
        // holds an Option and a counter), so a poisoned lock is safe to use.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current connection, opening one if there is none.
    fn connection(&self) -> Result<(u64, Arc<Connect>), virt::error::Error> {
        let mut slot = self.lock();
        if let Some(c) = &slot.conn {
            return Ok((slot.generation, c.clone()));
        }
        let c = Arc::new(Connect::open(Some(&self.uri))?);
        slot.generation += 1;
        slot.conn = Some(c.clone());
        Ok((slot.generation, c))
    }

    /// Drop the connection of `generation` if it is still the current one.
    fn forget(&self, generation: u64) {
        let mut slot = self.lock();
        if slot.generation == generation {
            slot.conn = None;
        }
    }

    fn unavailable(&self, op: &'static str, domain: Option<&str>, why: &str) -> HvError {
        let hint = if self.uri.starts_with("test:") {
            "is the test-driver host file there and valid?"
        } else {
            "is libvirtd running?"
        };
        HvError::new(
            HvErrorKind::Unavailable,
            op,
            domain,
            format!("libvirt at {} is not reachable: {why}; {hint}", self.uri),
        )
    }

    /// Run `f` on the connection; if it fails because the connection is dead, run it
    /// once more on a fresh one. `f` gets `true` on that second attempt.
    ///
    /// The retry is sound because every operation here converges: define redefines,
    /// start/shutdown/destroy/suspend/resume check the state and accept "already
    /// there", and undefine accepts `NotFound` on the retry (the first attempt may have
    /// done it before the reply was lost). At most one retry: a daemon that is down
    /// stays down for longer than a reconnect, and the caller has its own schedule.
    fn call<T>(
        &self,
        op: &'static str,
        domain: Option<&str>,
        f: impl Fn(&Connect, bool) -> Result<T, Fail>,
    ) -> Result<T, HvError> {
        let mut retry = false;
        loop {
            let (generation, conn) = self
                .connection()
                .map_err(|e| self.unavailable(op, domain, e.message()))?;
            let e = match f(&conn, retry) {
                Ok(v) => return Ok(v),
                Err(Fail::Refuse(kind, message)) => {
                    return Err(HvError::new(kind, op, domain, message));
                }
                Err(Fail::Virt(e)) => e,
            };
            let kind = classify(e.code(), e.domain());
            // `is_alive` is local (no RPC); the test driver is always alive.
            let dead = kind == HvErrorKind::Unavailable || !conn.is_alive().unwrap_or(false);
            if !dead {
                return Err(HvError::new(kind, op, domain, e.message()));
            }
            drop(conn);
            self.forget(generation);
            if retry {
                return Err(self.unavailable(op, domain, e.message()));
            }
            retry = true;
        }
    }
}

/// The kind of a libvirt error, from its code and origin. `Unavailable` means the
/// connection itself is broken (the caller reconnects).
///
/// | libvirt | kind |
/// |---|---|
/// | any error from the RPC layer (`VIR_FROM_RPC`: socket closed, EOF, cannot connect) | Unavailable |
/// | `NO_CONNECT`, `INVALID_CONN`, `RPC`; `SYSTEM_ERROR` from the remote driver | Unavailable |
/// | `NO_DOMAIN` | NotFound |
/// | `XML_ERROR`, `XML_DETAIL`, `XML_INVALID_SCHEMA`, `CONFIG_UNSUPPORTED`, `OPERATION_INVALID`, `OPERATION_UNSUPPORTED`, `OPERATION_DENIED`, `NO_SUPPORT`, `INVALID_ARG`, `ARGUMENT_UNSUPPORTED`, `DOM_EXIST`, `NO_NAME`, `NO_OS`, `OS_TYPE`, `NO_SOURCE`, `NO_TARGET`, `NO_KERNEL`, `INVALID_MAC`, `CPU_INCOMPATIBLE`, `ACCESS_DENIED` | Rejected |
/// | everything else (`INTERNAL_ERROR`, `OPERATION_FAILED`, unknown codes, …) | Failed |
pub fn classify(code: ErrorNumberEnum, domain: ErrorDomainEnum) -> HvErrorKind {
    use ErrorNumber as N;
    if domain == Enum::Known(ErrorDomain::Rpc) {
        return HvErrorKind::Unavailable;
    }
    let Enum::Known(code) = code else {
        return HvErrorKind::Failed;
    };
    match code {
        N::NoConnect | N::InvalidConn | N::Rpc => HvErrorKind::Unavailable,
        N::SystemError if domain == Enum::Known(ErrorDomain::Remote) => HvErrorKind::Unavailable,
        N::NoDomain => HvErrorKind::NotFound,
        N::XmlError
        | N::XmlDetail
        | N::XmlInvalidSchema
        | N::ConfigUnsupported
        | N::OperationInvalid
        | N::OperationUnsupported
        | N::OperationDenied
        | N::NoSupport
        | N::InvalidArg
        | N::ArgumentUnsupported
        | N::DomExist
        | N::NoName
        | N::NoOs
        | N::OsType
        | N::NoSource
        | N::NoTarget
        | N::NoKernel
        | N::InvalidMac
        | N::CpuIncompatible
        | N::AccessDenied => HvErrorKind::Rejected,
        _ => HvErrorKind::Failed,
    }
}

/// Our view of libvirt's domain state.
fn map_state(s: DomainStateEnum) -> DomainState {
    match s {
        Enum::Known(VirtState::Running | VirtState::Blocked) => DomainState::Running,
        Enum::Known(VirtState::Paused) => DomainState::Paused,
        Enum::Known(VirtState::Shutdown) => DomainState::ShuttingDown,
        Enum::Known(VirtState::Shutoff) => DomainState::ShutOff,
        Enum::Known(VirtState::Crashed) => DomainState::Crashed,
        Enum::Known(VirtState::NoState) => DomainState::Other("no-state".into()),
        Enum::Known(VirtState::PMSuspended) => DomainState::Other("pm-suspended".into()),
        Enum::Unknown(n) => DomainState::Other(format!("unknown-{n}")),
    }
}

// `Domain::state()` in virt 0.5 ignores libvirt's error and reports state -1 as if it
// were a state, so the state comes from `info()`, which does return the error.
fn state_of(d: &Domain) -> Result<DomainState, Fail> {
    Ok(map_state(d.info()?.state))
}

fn lookup(c: &Connect, name: &str) -> Result<Domain, Fail> {
    Ok(c.lookup_domain_by_name(name)?)
}

fn is_no_domain(e: &virt::error::Error) -> bool {
    e.code() == Enum::Known(ErrorNumber::NoDomain)
}

/// Perform `act` unless the domain is already `done`; if `act` fails, look again and
/// accept the failure when the domain got there anyway (a race with the guest or
/// another client, or a driver that reports "already in that state" as an error).
fn converge(
    d: &Domain,
    done: impl Fn(&DomainState) -> bool,
    refuse: impl Fn(&DomainState) -> Option<String>,
    act: impl Fn(&Domain) -> Result<(), virt::error::Error>,
) -> Result<(), Fail> {
    let now = state_of(d)?;
    if done(&now) {
        return Ok(());
    }
    if let Some(why) = refuse(&now) {
        return Err(Fail::Refuse(HvErrorKind::Rejected, why));
    }
    match act(d) {
        Ok(()) => Ok(()),
        Err(e) => match state_of(d) {
            Ok(after) if done(&after) => Ok(()),
            _ => Err(Fail::Virt(e)),
        },
    }
}

fn shut_off(s: &DomainState) -> bool {
    *s == DomainState::ShutOff
}

/// Domain types in the capabilities XML (`/capabilities/guest/arch/domain/@type`),
/// each once, in document order.
fn domain_types(caps: &str) -> Result<Vec<String>, String> {
    let doc = roxmltree::Document::parse(caps).map_err(|e| e.to_string())?;
    let mut out: Vec<String> = Vec::new();
    for d in doc.descendants().filter(|n| n.has_tag_name("domain")) {
        let in_guest_arch = d
            .parent()
            .filter(|a| a.has_tag_name("arch"))
            .and_then(|a| a.parent())
            .is_some_and(|g| g.has_tag_name("guest"));
        let Some(t) = d.attribute("type").filter(|_| in_guest_arch) else {
            continue;
        };
        if !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    Ok(out)
}

/// What `define` needs to know about a domain XML before handing it to libvirt.
#[derive(Debug, PartialEq, Eq)]
struct XmlIdentity {
    /// The `<name>`, trimmed (also used in error messages).
    name: String,
    /// Whether the XML names its own `<uuid>`.
    has_uuid: bool,
    /// Byte offset just past the `<name>` element, where a `<uuid>` can go.
    after_name: usize,
}

/// `None` when the XML is not a well-formed `<domain>` with a non-empty `<name>`;
/// libvirt then refuses it with its own message.
fn xml_identity(xml: &str) -> Option<XmlIdentity> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let root = doc.root_element();
    if !root.has_tag_name("domain") {
        return None;
    }
    let name = root.children().find(|n| n.has_tag_name("name"))?;
    let text = name.text()?.trim();
    (!text.is_empty()).then(|| XmlIdentity {
        name: text.to_owned(),
        has_uuid: root.children().any(|n| n.has_tag_name("uuid")),
        after_name: name.range().end,
    })
}

/// `xml` with `<uuid>` inserted right after `<name>`.
fn with_uuid(xml: &str, id: &XmlIdentity, uuid: &str) -> String {
    let (head, tail) = xml.split_at(id.after_name);
    format!("{head}<uuid>{uuid}</uuid>{tail}")
}

impl Hypervisor for Libvirt {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn capacity(&self) -> Result<Capacity, HvError> {
        self.call("capacity", None, |c, _| {
            let node = c.node_info()?;
            let driver = c.driver_type()?;
            let domain_types = domain_types(&c.capabilities()?).map_err(|e| {
                Fail::Refuse(
                    HvErrorKind::Failed,
                    format!("libvirt returned capabilities that are not XML: {e}"),
                )
            })?;
            Ok(Capacity {
                vcpus: node.cpus,
                memory_bytes: node.memory.saturating_mul(1024),
                driver,
                domain_types,
            })
        })
    }

    fn list(&self) -> Result<Vec<DomainInfo>, HvError> {
        self.call("list", None, |c, _| {
            let mut out = Vec::new();
            for d in c.list_all_domains(0)? {
                // A domain undefined between the listing and these calls is skipped:
                // the list is a snapshot, and it was gone by the time we looked.
                let described = d
                    .name()
                    .and_then(|name| Ok((name, d.info()?, d.xml_desc(0)?)));
                match described {
                    Ok((name, info, xml)) => out.push(DomainInfo {
                        name,
                        state: map_state(info.state),
                        managed: managed_by(&xml),
                    }),
                    Err(e) if is_no_domain(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn state(&self, name: &str) -> Result<DomainState, HvError> {
        self.call("state", Some(name), |c, _| state_of(&lookup(c, name)?))
    }

    fn define(&self, xml: &str) -> Result<(), HvError> {
        let id = xml_identity(xml);
        self.call("define", id.as_ref().map(|i| i.name.as_str()), |c, _| {
            // libvirt gives an XML without `<uuid>` a random one, then refuses it
            // because a domain of that name "already exists with uuid …". Redefining
            // is the normal case for us (the generator never writes a UUID), so a
            // redefinition keeps the existing domain's UUID.
            let mut redefined = None;
            if let Some(id) = id.as_ref().filter(|i| !i.has_uuid) {
                match c.lookup_domain_by_name(&id.name) {
                    Ok(d) => redefined = Some(with_uuid(xml, id, &d.uuid_string()?)),
                    Err(e) if is_no_domain(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            c.define_domain_xml(redefined.as_deref().unwrap_or(xml))?;
            Ok(())
        })
    }

    fn start(&self, name: &str) -> Result<(), HvError> {
        self.call("start", Some(name), |c, _| {
            converge(
                &lookup(c, name)?,
                |s| *s == DomainState::Running,
                |s| {
                    (*s == DomainState::Paused).then(|| {
                        "the domain is paused; resume it instead (start never un-pauses a VM)"
                            .to_owned()
                    })
                },
                Domain::create,
            )
        })
    }

    fn shutdown(&self, name: &str) -> Result<(), HvError> {
        self.call("shutdown", Some(name), |c, _| {
            converge(&lookup(c, name)?, shut_off, |_| None, Domain::shutdown)
        })
    }

    fn destroy(&self, name: &str) -> Result<(), HvError> {
        self.call("destroy", Some(name), |c, _| {
            converge(&lookup(c, name)?, shut_off, |_| None, Domain::destroy)
        })
    }

    fn undefine(&self, name: &str) -> Result<(), HvError> {
        self.call("undefine", Some(name), |c, retry| {
            let d = match c.lookup_domain_by_name(name) {
                Ok(d) => d,
                // Our first attempt may have undefined it before the connection died.
                Err(e) if retry && is_no_domain(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let now = state_of(&d)?;
            if now.is_active() {
                // libvirt would make a running domain transient and keep it running;
                // the agent would then lose track of a live VM. Stopping is the
                // caller's explicit decision.
                return Err(Fail::Refuse(
                    HvErrorKind::Rejected,
                    format!("the domain is {now}; destroy it first (undefine never stops a VM)"),
                ));
            }
            d.undefine_flags(UNDEFINE_FLAGS)?;
            Ok(())
        })
    }

    fn xml(&self, name: &str) -> Result<String, HvError> {
        self.call("xml", Some(name), |c, _| Ok(lookup(c, name)?.xml_desc(0)?))
    }

    fn addresses(&self, name: &str) -> Result<Vec<std::net::IpAddr>, HvError> {
        self.call("addresses", Some(name), |c, _| {
            let d = lookup(c, name)?;
            let mut out = Vec::new();
            for source in [
                virt::sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
                virt::sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
            ] {
                // A source libvirt cannot use for this domain (no libvirt network
                // with DHCP, say) is skipped: the other one may know.
                let Ok(ifaces) = d.interface_addresses(source, 0) else {
                    continue;
                };
                for a in ifaces.iter().flat_map(|i| i.addrs.iter()) {
                    if let Ok(ip) = a.addr.parse::<std::net::IpAddr>()
                        && !out.contains(&ip)
                    {
                        out.push(ip);
                    }
                }
                if !out.is_empty() {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn usernet(&self, name: &str) -> Result<String, HvError> {
        self.call("usernet", Some(name), |c, _| {
            Ok(lookup(c, name)?.qemu_monitor_command(
                "info usernet",
                virt::sys::VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
            )?)
        })
    }

    fn ensure_network(&self, name: &str, xml: &str) -> Result<String, HvError> {
        self.call("network-define", None, |c, _| {
            let net = match c.lookup_network_by_name(name) {
                Ok(n) => n,
                Err(e) if e.code() == Enum::Known(ErrorNumber::NoNetwork) => {
                    c.define_network_xml(xml)?
                }
                Err(e) => return Err(e.into()),
            };
            if !net.is_active()? {
                net.create()?;
            }
            Ok(net.xml_desc(0)?)
        })
    }

    fn remove_network(&self, name: &str) -> Result<(), HvError> {
        self.call("network-remove", None, |c, _| {
            let net = match c.lookup_network_by_name(name) {
                Ok(n) => n,
                Err(e) if e.code() == Enum::Known(ErrorNumber::NoNetwork) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if net.is_active()? {
                net.destroy()?;
            }
            if net.is_persistent()? {
                net.undefine()?;
            }
            Ok(())
        })
    }

    /// libvirt's destroy sends QEMU SIGTERM and waits for it to exit, which took
    /// 1.3-2 s for a TCG guest here: too slow for fencing. So: SIGKILL the QEMU process
    /// when the QEMU driver's pidfile names one whose command line is this domain's,
    /// then let libvirt notice (it only cleans up by then); destroy when no such process
    /// was found.
    ///
    /// No pause first: a pause drains the guest's in-flight I/O, and a fenced primary
    /// holds its in-flight writes for good (it acknowledges nothing). QEMU's `stop`
    /// then never returned, and holding the domain's job it made every libvirt call
    /// touching the domain wait 30 s, those of the other agents on this libvirtd too
    /// (seen in CI after a load stall cost every host its lease). SIGKILL needs neither
    /// the monitor nor the job.
    fn fence(&self, name: &str) -> Result<String, HvError> {
        let t = std::time::Instant::now();
        let ms = |t: std::time::Instant| t.elapsed().as_millis();
        let mut did = Vec::new();
        if kill_qemu(name) {
            did.push(format!("QEMU killed {} ms", ms(t)));
            // libvirt notices the dead QEMU by itself (monitor EOF); calling destroy now
            // would only wait in its SIGTERM loop. Give it a moment, then insist.
            let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
            while std::time::Instant::now() < until {
                if matches!(self.state(name), Ok(DomainState::ShutOff) | Err(_)) {
                    did.push(format!("shut off {} ms", ms(t)));
                    return Ok(did.join(", "));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        self.destroy(name)?;
        did.push(format!("destroyed {} ms", ms(t)));
        Ok(did.join(", "))
    }

    fn suspend(&self, name: &str) -> Result<(), HvError> {
        self.call("suspend", Some(name), |c, _| {
            converge(
                &lookup(c, name)?,
                |s| *s == DomainState::Paused,
                |s| {
                    shut_off(s).then(|| {
                        "the domain is shut off; only a running domain can be paused".to_owned()
                    })
                },
                Domain::suspend,
            )
        })
    }

    fn resume(&self, name: &str) -> Result<(), HvError> {
        self.call("resume", Some(name), |c, _| {
            converge(
                &lookup(c, name)?,
                |s| *s == DomainState::Running,
                |s| shut_off(s).then(|| "the domain is shut off; start it instead".to_owned()),
                Domain::resume,
            )
        })
    }
}

/// SIGKILL the QEMU process of `name` (system QEMU driver), if its pidfile points at a
/// process whose command line names this guest. True when a process was killed.
fn kill_qemu(name: &str) -> bool {
    let pidfile = std::path::Path::new("/run/libvirt/qemu").join(format!("{name}.pid"));
    let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    else {
        return false;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    // libvirt starts QEMU with `-name guest=<name>,...`.
    let ours = cmdline.split('\0').any(|arg| {
        arg.strip_prefix("guest=")
            .is_some_and(|rest| rest.split(',').next() == Some(name))
    });
    ours && nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(code: ErrorNumber, domain: ErrorDomain) -> HvErrorKind {
        classify(Enum::Known(code), Enum::Known(domain))
    }

    #[test]
    fn dead_connections_are_unavailable() {
        // What libvirt 9.0 reports when libvirtd is down or went away mid-call.
        use ErrorDomain as D;
        use ErrorNumber as N;
        for (code, domain) in [
            (N::SystemError, D::Rpc),   // Failed to connect socket / Cannot recv data
            (N::InternalError, D::Rpc), // client socket is closed
            (N::Rpc, D::Remote),
            (N::SystemError, D::Remote),
            (N::NoConnect, D::None),
            (N::InvalidConn, D::None),
            (N::OperationInvalid, D::Rpc),
        ] {
            assert_eq!(
                kind(code, domain),
                HvErrorKind::Unavailable,
                "{code:?}/{domain:?}"
            );
        }
    }

    #[test]
    fn unknown_domains_are_not_found() {
        for domain in [ErrorDomain::Qemu, ErrorDomain::Test, ErrorDomain::Domain] {
            assert_eq!(kind(ErrorNumber::NoDomain, domain), HvErrorKind::NotFound);
        }
    }

    #[test]
    fn bad_xml_and_invalid_operations_are_rejected() {
        use ErrorNumber as N;
        for code in [
            N::XmlError,
            N::XmlDetail,
            N::ConfigUnsupported,
            N::OperationInvalid,
            N::OperationUnsupported,
            N::InvalidArg,
            N::DomExist,
        ] {
            assert_eq!(
                kind(code, ErrorDomain::Domain),
                HvErrorKind::Rejected,
                "{code:?}"
            );
        }
    }

    #[test]
    fn everything_else_failed() {
        use ErrorNumber as N;
        for code in [
            N::InternalError,
            N::OperationFailed,
            N::SystemError,
            N::NoMemory,
        ] {
            assert_eq!(
                kind(code, ErrorDomain::Qemu),
                HvErrorKind::Failed,
                "{code:?}"
            );
        }
        assert_eq!(
            classify(Enum::Unknown(9999), Enum::Known(ErrorDomain::Qemu)),
            HvErrorKind::Failed
        );
        assert_eq!(
            classify(Enum::Unknown(9999), Enum::Known(ErrorDomain::Rpc)),
            HvErrorKind::Unavailable
        );
    }

    #[test]
    fn states_map_to_ours() {
        assert_eq!(
            map_state(Enum::Known(VirtState::Blocked)),
            DomainState::Running
        );
        assert_eq!(
            map_state(Enum::Known(VirtState::Shutdown)),
            DomainState::ShuttingDown
        );
        assert_eq!(
            map_state(Enum::Known(VirtState::Shutoff)),
            DomainState::ShutOff
        );
        assert_eq!(
            map_state(Enum::Known(VirtState::PMSuspended)),
            DomainState::Other("pm-suspended".into())
        );
        assert_eq!(
            map_state(Enum::Unknown(42)),
            DomainState::Other("unknown-42".into())
        );
    }

    #[test]
    fn domain_types_come_from_guest_arches() {
        let caps = r#"<capabilities><host><cpu><arch>x86_64</arch></cpu></host>
          <guest><os_type>hvm</os_type><arch name='i686'><domain type='qemu'/><domain type='kvm'/></arch></guest>
          <guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest>
        </capabilities>"#;
        assert_eq!(domain_types(caps).unwrap(), ["qemu", "kvm"]);
        assert!(domain_types("<capabilities>").is_err());
    }

    #[test]
    fn identity_is_read_from_domain_xml() {
        let xml = "<domain type='qemu'><name> vm-1 </name><memory>1</memory></domain>";
        let id = xml_identity(xml).unwrap();
        assert_eq!(id.name, "vm-1");
        assert!(!id.has_uuid);
        let with = with_uuid(xml, &id, "0b8f7c3e-5d3a-4a57-9d0e-2f6b1c2d3e4f");
        assert_eq!(
            with,
            "<domain type='qemu'><name> vm-1 </name><uuid>0b8f7c3e-5d3a-4a57-9d0e-2f6b1c2d3e4f</uuid><memory>1</memory></domain>"
        );
        assert!(xml_identity(&with).unwrap().has_uuid);
        assert_eq!(xml_identity("<domain><name/></domain>"), None);
        assert_eq!(xml_identity("<network><name>n</name></network>"), None);
        assert_eq!(xml_identity("<domain"), None);
    }
}
