//! libvirt domain XML for one VM, generated from its [`VmSpec`] and this host's paths.
//!
//! The orchestrator sends a `VmSpec`; the agent knows where volumes, NBD sockets and
//! console logs live on its own host ([`HostPaths`]). This module turns the two into
//! the XML handed to libvirt's `define`, and reads back the one thing the agent needs
//! from a domain's XML: the `<metadata>` mark that says *we* manage it
//! ([`managed_by`]), so an agent that restarts can adopt its domains again and leave
//! everyone else's alone.
//!
//! [`read`] holds the reading half ([`managed_by`], [`user_forwards`]); the tests are in
//! `tests.rs`.
//!
//! Pure functions only: no I/O, no libvirt calls, no clocks. This module must never
//! emit a string it has not escaped, and never panic on any input (including the
//! foreign XML that [`managed_by`] parses).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod read;
pub use read::{managed_by, user_forwards};
use topology::ids::{AppId, OpId, VmId, VolumeId};
use topology::model::Boot;
use topology::spec::{NetworkSpec, VmSpec};

/// XML namespace of our `<metadata>` element. The `1` is the format version: a future
/// incompatible mark gets a new namespace, and [`managed_by`] of this version ignores it.
pub const METADATA_NS: &str = "urn:metrodr:vm:1";

/// Where this host keeps the files a domain refers to. Paths are written into the
/// domain XML as given (lossily, if they are not UTF-8).
///
/// `sockets_dir` must be short: a unix socket path is limited to 107 bytes, and a
/// volume id may be 63 characters, so keep `sockets_dir` under ~38 bytes
/// (e.g. `/run/metrodr/nbd`). QEMU fails at start, not at define, when it is too long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPaths {
    /// This host's id: domains are marked with it, so that agents sharing one libvirt
    /// (a lab) leave each other's domains alone.
    pub host: String,
    /// One raw file per volume: `<volumes_dir>/<volume>.raw`.
    pub volumes_dir: PathBuf,
    /// One NBD unix socket per app (its group): `<sockets_dir>/<app>.sock`.
    pub sockets_dir: PathBuf,
    /// One serial console log per VM: `<consoles_dir>/<vm>.log`.
    pub consoles_dir: PathBuf,
}

/// How QEMU reaches a VM's disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskBackend {
    /// The volume's raw file, opened by QEMU directly (no replication: labs, drills).
    File,
    /// The agent's NBD export of the volume on a unix socket (replicated; DESIGN §5).
    Nbd,
}

/// libvirt's domain type: how QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DomainType {
    /// TCG emulation (`<domain type='qemu'>`): slow, works everywhere.
    Qemu,
    /// Hardware virtualisation (`<domain type='kvm'>`): needs a working `/dev/kvm`.
    Kvm,
}

impl DomainType {
    /// The value of `<domain type='…'>` (also the name in libvirt's capabilities).
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Qemu => "qemu",
            DomainType::Kvm => "kvm",
        }
    }
}

impl std::fmt::Display for DomainType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a domain belongs to, as recorded in its `<metadata>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ManagedBy {
    pub app: AppId,
    pub vm: VmId,
    /// The host whose agent defined it (None in marks written before hosts were
    /// recorded: taken as this host's).
    pub host: Option<String>,
    /// Set on the copy a test drill started (the drill's operation id): never the
    /// production VM, never reported as it.
    pub drill: Option<OpId>,
}

impl ManagedBy {
    /// Is the domain this host's to manage?
    pub fn is_for(&self, host: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == host)
    }
}

/// `<volumes_dir>/<volume>.raw`
pub fn volume_path(paths: &HostPaths, volume: &VolumeId) -> PathBuf {
    paths.volumes_dir.join(format!("{volume}.raw"))
}

/// `<sockets_dir>/<app>.sock`: the app's consistency group, one NBD export per
/// volume (named by the volume id).
pub fn socket_path(paths: &HostPaths, app: &AppId) -> PathBuf {
    paths.sockets_dir.join(format!("{app}.sock"))
}

/// `<consoles_dir>/<vm>.log`
pub fn console_path(paths: &HostPaths, vm: &VmId) -> PathBuf {
    paths.consoles_dir.join(format!("{vm}.log"))
}

/// `<consoles_dir>/<domain name>.log`: [`console_path`] of a production VM, and
/// `drill-<op>-<vm>.log` for a drill copy.
pub fn console_of(paths: &HostPaths, spec: &VmSpec) -> PathBuf {
    paths
        .consoles_dir
        .join(format!("{}.log", spec.domain_name()))
}

/// `<sockets_dir>/d<op>-<app>.sock`: the NBD exports of drill `op`'s snapshot of the
/// app's group (one export per volume, with a private writable overlay).
pub fn drill_socket_path(paths: &HostPaths, op: OpId, app: &AppId) -> PathBuf {
    paths.sockets_dir.join(format!("d{}-{app}.sock", op.0))
}

/// The libvirt XML of drill `op`'s isolated network `name`: a bridge with no
/// `<forward>` and no host address, so the drill copies reach nothing but each other.
pub fn isolated_network_xml(name: &str, op: u64) -> String {
    format!(
        "<network>\n  <name>{}</name>\n  <bridge name='mdrd{}' stp='off'/>\n</network>\n",
        esc(name),
        op % 100_000_000
    )
}

/// The guest device name of the disk at `index` in device order, as libvirt and Linux
/// name them: `vda` … `vdz`, `vdaa`, `vdab`, … (bijective base 26).
pub fn disk_dev(index: usize) -> String {
    let mut letters = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    format!("vd{}", String::from_utf8_lossy(&letters))
}

/// The complete libvirt domain XML of `spec` on this host.
///
/// The domain name is the VM id. Memory is written in KiB (rounded up). There is
/// always a serial console logged to [`console_path`], and a metadata mark that
/// [`managed_by`] recognises. `on_crash` is `destroy`: a crashed guest must show up as
/// shut off to the agent, not sit in a state nothing acts on.
pub fn domain_xml(
    spec: &VmSpec,
    ty: DomainType,
    paths: &HostPaths,
    backend: DiskBackend,
) -> String {
    let mut x = String::with_capacity(2048);
    let console = esc_path(&console_of(paths, spec));
    // `write!` into a String cannot fail; the results are ignored for that reason.
    // User-mode networking with forwards is QEMU command line (libvirt 9's slirp
    // interface cannot forward ports), which needs libvirt's qemu namespace.
    let qemu_ns = if matches!(spec.network, NetworkSpec::User { .. }) {
        format!(" xmlns:qemu='{QEMU_NS}'")
    } else {
        String::new()
    };
    let _ = writeln!(x, "<domain type='{}'{qemu_ns}>", ty.as_str());
    let _ = writeln!(x, "  <name>{}</name>", esc(&spec.domain_name()));
    let drill = spec
        .drill
        .map(|op| format!(" drill=\"{}\"", op.0))
        .unwrap_or_default();
    let _ = writeln!(
        x,
        "  <metadata><metrodr:vm xmlns:metrodr=\"{METADATA_NS}\" app=\"{}\" vm=\"{}\" host=\"{}\"{drill}/></metadata>",
        esc(spec.app.as_str()),
        esc(spec.vm.as_str()),
        esc(&paths.host)
    );
    // A drill copy always reads its drill's snapshot, never the replica itself.
    let backend = if spec.drill.is_some() {
        DiskBackend::Nbd
    } else {
        backend
    };
    let socket = match spec.drill {
        Some(op) => drill_socket_path(paths, op, &spec.app),
        None => socket_path(paths, &spec.app),
    };
    let _ = writeln!(
        x,
        "  <memory unit='KiB'>{}</memory>",
        spec.memory.bytes().div_ceil(1024)
    );
    let _ = writeln!(x, "  <vcpu>{}</vcpu>", spec.vcpus);
    x.push_str("  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n");
    match &spec.boot {
        Boot::Disk => x.push_str("    <boot dev='hd'/>\n"),
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            let _ = writeln!(x, "    <kernel>{}</kernel>", esc(kernel));
            if let Some(initrd) = initrd {
                let _ = writeln!(x, "    <initrd>{}</initrd>", esc(initrd));
            }
            if let Some(cmdline) = cmdline {
                let _ = writeln!(x, "    <cmdline>{}</cmdline>", esc(cmdline));
            }
        }
    }
    x.push_str("  </os>\n");
    x.push_str("  <on_poweroff>destroy</on_poweroff>\n");
    x.push_str("  <on_reboot>restart</on_reboot>\n");
    x.push_str("  <on_crash>destroy</on_crash>\n");
    x.push_str("  <devices>\n");
    for (i, disk) in spec.disks.iter().enumerate() {
        let dev = disk_dev(i);
        match backend {
            DiskBackend::File => {
                let _ = writeln!(
                    x,
                    "    <disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>\
                     <source file='{}'/><target dev='{dev}' bus='virtio'/></disk>",
                    esc_path(&volume_path(paths, &disk.volume))
                );
            }
            DiskBackend::Nbd => {
                let _ = writeln!(
                    x,
                    "    <disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/>\
                     <source protocol='nbd' name='{}'><host transport='unix' socket='{}'/></source>\
                     <target dev='{dev}' bus='virtio'/></disk>",
                    esc(disk.volume.as_str()),
                    esc_path(&socket)
                );
            }
        }
    }
    match &spec.network {
        NetworkSpec::None | NetworkSpec::User { .. } => {}
        NetworkSpec::Network { name } | NetworkSpec::Isolated { name } => {
            let _ = writeln!(
                x,
                "    <interface type='network'><source network='{}'/><model type='virtio'/></interface>",
                esc(name)
            );
        }
    }
    let _ = writeln!(
        x,
        "    <serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>"
    );
    let _ = writeln!(
        x,
        "    <console type='file'><source path='{console}' append='on'/><target type='serial' port='0'/></console>"
    );
    x.push_str("  </devices>\n");
    if let NetworkSpec::User { forwards } = &spec.network {
        let mut netdev = format!("user,id={USER_NETDEV},restrict=on");
        for f in forwards {
            let _ = write!(netdev, ",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest);
        }
        let _ = writeln!(
            x,
            "  <qemu:commandline><qemu:arg value='-netdev'/><qemu:arg value='{}'/>\
             <qemu:arg value='-device'/><qemu:arg value='virtio-net-pci,netdev={USER_NETDEV},bus=pci.0,addr={USER_NIC_SLOT}'/></qemu:commandline>",
            esc(&netdev)
        );
    }
    x.push_str("</domain>\n");
    x
}

/// libvirt's namespace for QEMU command-line passthrough.
pub const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// The id of the user-mode network device in the QEMU command line.
pub(crate) const USER_NETDEV: &str = "mdrnet0";

/// The NIC's PCI slot: QEMU creates command-line devices before libvirt's own, so an
/// unplaced NIC would take slot 2, which libvirt gives the first disk. libvirt fills
/// slots from 2 upwards; 0x1e stays clear of them.
const USER_NIC_SLOT: &str = "0x1e";

/// A libvirt test-driver host file (`test:///<path>`) describing a private fake host
/// with `vcpus` CPUs and `memory_bytes` of RAM (rounded down to KiB), and no domains.
/// Each connection opened on such a file gets its own in-memory hypervisor, which
/// lives as long as that connection: a fake agent's whole host.
pub fn test_host_xml(vcpus: u32, memory_bytes: u64) -> String {
    format!(
        "<node>\n  <cpu>\n    <mhz>2000</mhz>\n    <model>metrodr-fake</model>\n    \
         <active>{vcpus}</active>\n    <nodes>1</nodes>\n    <sockets>1</sockets>\n    \
         <cores>{vcpus}</cores>\n    <threads>1</threads>\n  </cpu>\n  \
         <memory>{}</memory>\n</node>\n",
        memory_bytes / 1024
    )
}

/// Escape `s` for XML text and for attribute values in either quote style.
///
/// Characters XML 1.0 cannot carry at all (NUL and the other C0 controls except tab,
/// newline and carriage return) become U+FFFD: the document stays well-formed and
/// the odd path or cmdline shows up as visibly wrong instead of a parse error.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            // Tab, LF and CR are legal but attribute normalisation would turn them
            // into spaces; character references keep them exact.
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn esc_path(p: &Path) -> String {
    esc(&p.to_string_lossy())
}

#[cfg(test)]
mod tests;
