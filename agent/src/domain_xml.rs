//! libvirt domain XML for one VM, generated from its [`VmSpec`] and this host's paths.
//!
//! The orchestrator sends a `VmSpec`; the agent knows where volumes, NBD sockets and
//! console logs live on its own host ([`HostPaths`]). This module turns the two into
//! the XML handed to libvirt's `define`, and reads back the one thing the agent needs
//! from a domain's XML: the `<metadata>` mark that says *we* manage it
//! ([`managed_by`]), so an agent that restarts can adopt its domains again and leave
//! everyone else's alone.
//!
//! Pure functions only: no I/O, no libvirt calls, no clocks. This module must never
//! emit a string it has not escaped, and never panic on any input (including the
//! foreign XML that [`managed_by`] parses).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use topology::ids::{AppId, OpId, VmId, VolumeId, check_id};
use topology::model::Boot;
use topology::spec::{NetworkSpec, PortForward, VmSpec};

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
const USER_NETDEV: &str = "mdrnet0";

/// The NIC's PCI slot: QEMU creates command-line devices before libvirt's own, so an
/// unplaced NIC would take slot 2, which libvirt gives the first disk. libvirt fills
/// slots from 2 upwards; 0x1e stays clear of them.
const USER_NIC_SLOT: &str = "0x1e";

/// The guest ports forwarded to the host's loopback in `domain_xml` (the live XML
/// libvirt returns for a domain with [`NetworkSpec::User`]), as (guest, host) ports.
/// Empty for any other domain and for garbage.
pub fn user_forwards(domain_xml: &str) -> Vec<PortForward> {
    let Ok(doc) = roxmltree::Document::parse(domain_xml) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for arg in doc
        .descendants()
        .filter(|n| n.has_tag_name((QEMU_NS, "arg")))
    {
        let Some(v) = arg.attribute("value") else {
            continue;
        };
        if !v.starts_with("user,") || !v.contains(&format!("id={USER_NETDEV}")) {
            continue;
        }
        for part in v.split(',') {
            let Some(rule) = part.strip_prefix("hostfwd=tcp:127.0.0.1:") else {
                continue;
            };
            if let Some((host, guest)) = rule.split_once("-:")
                && let (Ok(host), Ok(guest)) = (host.parse(), guest.parse())
            {
                out.push(PortForward { guest, host });
            }
        }
    }
    out
}

/// Who manages the domain described by `domain_xml`: `Some` only for a well-formed
/// `<domain>` whose `<metadata>` holds our [`METADATA_NS`] `vm` element with valid
/// `app` and `vm` ids. Foreign domains, other metadata versions and garbage give `None`.
///
/// The caller decides what a mark whose `vm` differs from the domain name means
/// (a renamed domain); this function only reads the mark.
pub fn managed_by(domain_xml: &str) -> Option<ManagedBy> {
    // roxmltree refuses DTDs by default, so entity expansion cannot blow up here.
    let doc = roxmltree::Document::parse(domain_xml).ok()?;
    let root = doc.root_element();
    if !root.has_tag_name("domain") {
        return None;
    }
    let mark = root
        .children()
        .filter(|n| n.has_tag_name("metadata"))
        .flat_map(|m| m.children())
        .find(|n| n.has_tag_name((METADATA_NS, "vm")))?;
    let app = mark.attribute("app")?;
    let vm = mark.attribute("vm")?;
    check_id(app).ok()?;
    check_id(vm).ok()?;
    let host = mark.attribute("host").filter(|h| check_id(h).is_ok());
    let drill = match mark.attribute("drill") {
        Some(d) => Some(OpId(d.parse::<u64>().ok()?)),
        None => None,
    };
    Some(ManagedBy {
        app: AppId::new(app),
        vm: VmId::new(vm),
        host: host.map(str::to_string),
        drill,
    })
}

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
mod tests {
    use super::*;
    use topology::ids::ByteSize;
    use topology::spec::DiskSpec;

    fn paths() -> HostPaths {
        HostPaths {
            host: "north-h1".into(),
            volumes_dir: "/srv/metrodr/volumes".into(),
            sockets_dir: "/run/metrodr/nbd".into(),
            consoles_dir: "/var/log/metrodr/consoles".into(),
        }
    }

    fn spec(boot: Boot, disks: &[&str], network: NetworkSpec) -> VmSpec {
        VmSpec {
            drill: None,
            vm: VmId::new("web-1"),
            app: AppId::new("shop"),
            vcpus: 2,
            memory: ByteSize::mib(512),
            boot,
            disks: disks
                .iter()
                .map(|v| DiskSpec {
                    volume: VolumeId::new(*v),
                    size: ByteSize::gib(1),
                })
                .collect(),
            network,
            probe_ports: Vec::new(),
        }
    }

    fn kernel_boot() -> Boot {
        Boot::Kernel {
            kernel: "/boot/vmlinuz".into(),
            initrd: Some("/boot/initrd.img".into()),
            cmdline: Some("console=ttyS0".into()),
        }
    }

    fn parse(xml: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("not well-formed: {e}\n{xml}"))
    }

    fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> roxmltree::Node<'a, 'i> {
        n.children()
            .find(|c| c.has_tag_name(name))
            .unwrap_or_else(|| panic!("<{}> has no <{name}>", n.tag_name().name()))
    }

    fn children<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Vec<roxmltree::Node<'a, 'i>> {
        n.children().filter(|c| c.has_tag_name(name)).collect()
    }

    #[test]
    fn kernel_boot_with_two_file_disks_has_every_element() {
        let xml = domain_xml(
            &spec(kernel_boot(), &["web-os", "web-data"], NetworkSpec::None),
            DomainType::Qemu,
            &paths(),
            DiskBackend::File,
        );
        let doc = parse(&xml);
        let d = doc.root_element();
        assert!(d.has_tag_name("domain"));
        assert_eq!(d.attribute("type"), Some("qemu"));
        assert_eq!(child(d, "name").text(), Some("web-1"));
        let mem = child(d, "memory");
        assert_eq!(mem.attribute("unit"), Some("KiB"));
        assert_eq!(mem.text(), Some("524288"));
        assert_eq!(child(d, "vcpu").text(), Some("2"));

        let os = child(d, "os");
        let ty = child(os, "type");
        assert_eq!(ty.text(), Some("hvm"));
        assert_eq!(ty.attribute("arch"), Some("x86_64"));
        assert_eq!(ty.attribute("machine"), Some("pc"));
        assert_eq!(child(os, "kernel").text(), Some("/boot/vmlinuz"));
        assert_eq!(child(os, "initrd").text(), Some("/boot/initrd.img"));
        assert_eq!(child(os, "cmdline").text(), Some("console=ttyS0"));
        assert!(children(os, "boot").is_empty());

        assert_eq!(child(d, "on_poweroff").text(), Some("destroy"));
        assert_eq!(child(d, "on_reboot").text(), Some("restart"));
        assert_eq!(child(d, "on_crash").text(), Some("destroy"));

        let devices = child(d, "devices");
        let disks = children(devices, "disk");
        assert_eq!(disks.len(), 2);
        let expect = [
            ("vda", "/srv/metrodr/volumes/web-os.raw"),
            ("vdb", "/srv/metrodr/volumes/web-data.raw"),
        ];
        for (disk, (dev, file)) in disks.iter().zip(expect) {
            assert_eq!(disk.attribute("type"), Some("file"));
            assert_eq!(disk.attribute("device"), Some("disk"));
            let drv = child(*disk, "driver");
            assert_eq!(drv.attribute("name"), Some("qemu"));
            assert_eq!(drv.attribute("type"), Some("raw"));
            assert_eq!(drv.attribute("cache"), Some("none"));
            assert_eq!(child(*disk, "source").attribute("file"), Some(file));
            let target = child(*disk, "target");
            assert_eq!(target.attribute("dev"), Some(dev));
            assert_eq!(target.attribute("bus"), Some("virtio"));
        }
        assert!(children(devices, "interface").is_empty());

        let console_log = "/var/log/metrodr/consoles/web-1.log";
        let serial = child(devices, "serial");
        assert_eq!(serial.attribute("type"), Some("file"));
        assert_eq!(child(serial, "source").attribute("path"), Some(console_log));
        assert_eq!(child(serial, "target").attribute("port"), Some("0"));
        let console = child(devices, "console");
        assert_eq!(console.attribute("type"), Some("file"));
        assert_eq!(
            child(console, "source").attribute("path"),
            Some(console_log)
        );
        assert_eq!(child(console, "target").attribute("type"), Some("serial"));

        let mark = child(child(d, "metadata"), "vm");
        assert_eq!(mark.tag_name().namespace(), Some(METADATA_NS));
        assert_eq!(
            managed_by(&xml),
            Some(ManagedBy {
                app: AppId::new("shop"),
                vm: VmId::new("web-1"),
                host: Some("north-h1".into()),
                drill: None,
            })
        );
    }

    #[test]
    fn nbd_disks_are_exports_of_the_app_socket() {
        let xml = domain_xml(
            &spec(Boot::Disk, &["a", "b", "c"], NetworkSpec::None),
            DomainType::Kvm,
            &paths(),
            DiskBackend::Nbd,
        );
        let doc = parse(&xml);
        let d = doc.root_element();
        assert_eq!(d.attribute("type"), Some("kvm"));
        let disks = children(child(d, "devices"), "disk");
        let got: Vec<(&str, &str, &str)> = disks
            .iter()
            .map(|disk| {
                assert_eq!(disk.attribute("type"), Some("network"));
                assert_eq!(child(*disk, "driver").attribute("cache"), Some("none"));
                let src = child(*disk, "source");
                assert_eq!(src.attribute("protocol"), Some("nbd"));
                let host = child(src, "host");
                assert_eq!(host.attribute("transport"), Some("unix"));
                (
                    child(*disk, "target").attribute("dev").unwrap(),
                    src.attribute("name").unwrap(),
                    host.attribute("socket").unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("vda", "a", "/run/metrodr/nbd/shop.sock"),
                ("vdb", "b", "/run/metrodr/nbd/shop.sock"),
                ("vdc", "c", "/run/metrodr/nbd/shop.sock"),
            ]
        );
    }

    #[test]
    fn disk_boot_boots_from_the_first_disk_and_has_no_kernel() {
        let xml = domain_xml(
            &spec(Boot::Disk, &["a"], NetworkSpec::None),
            DomainType::Qemu,
            &paths(),
            DiskBackend::File,
        );
        let doc = parse(&xml);
        let os = child(doc.root_element(), "os");
        assert_eq!(child(os, "boot").attribute("dev"), Some("hd"));
        assert!(children(os, "kernel").is_empty());
        assert!(children(os, "initrd").is_empty());
        assert!(children(os, "cmdline").is_empty());
    }

    #[test]
    fn kernel_boot_without_initrd_or_cmdline_leaves_them_out() {
        let boot = Boot::Kernel {
            kernel: "/k".into(),
            initrd: None,
            cmdline: None,
        };
        let xml = domain_xml(
            &spec(boot, &[], NetworkSpec::None),
            DomainType::Qemu,
            &paths(),
            DiskBackend::File,
        );
        let doc = parse(&xml);
        let os = child(doc.root_element(), "os");
        assert_eq!(child(os, "kernel").text(), Some("/k"));
        assert!(children(os, "initrd").is_empty());
        assert!(children(os, "cmdline").is_empty());
        assert!(children(child(doc.root_element(), "devices"), "disk").is_empty());
    }

    #[test]
    fn user_networking_forwards_each_probed_port_to_loopback_and_reads_back() {
        let forwards = vec![
            PortForward {
                guest: 80,
                host: 41001,
            },
            PortForward {
                guest: 5432,
                host: 41002,
            },
        ];
        let xml = domain_xml(
            &spec(
                kernel_boot(),
                &["a"],
                NetworkSpec::User {
                    forwards: forwards.clone(),
                },
            ),
            DomainType::Qemu,
            &paths(),
            DiskBackend::Nbd,
        );
        let doc = parse(&xml);
        // No libvirt interface: the NIC is QEMU's, restricted, on the command line.
        assert!(children(child(doc.root_element(), "devices"), "interface").is_empty());
        let args: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name((QEMU_NS, "arg")))
            .filter_map(|n| n.attribute("value"))
            .collect();
        assert_eq!(
            args,
            [
                "-netdev",
                "user,id=mdrnet0,restrict=on,hostfwd=tcp:127.0.0.1:41001-:80,hostfwd=tcp:127.0.0.1:41002-:5432",
                "-device",
                "virtio-net-pci,netdev=mdrnet0,bus=pci.0,addr=0x1e"
            ]
        );
        assert_eq!(user_forwards(&xml), forwards);
        // Other domains, foreign command lines and garbage forward nothing.
        let plain = domain_xml(
            &spec(kernel_boot(), &["a"], NetworkSpec::None),
            DomainType::Qemu,
            &paths(),
            DiskBackend::Nbd,
        );
        assert!(!plain.contains("qemu:"), "{plain}");
        assert!(user_forwards(&plain).is_empty());
        let foreign = format!(
            "<domain xmlns:qemu='{QEMU_NS}'><qemu:commandline><qemu:arg value='user,id=other,hostfwd=tcp:127.0.0.1:1-:2'/></qemu:commandline></domain>"
        );
        assert!(user_forwards(&foreign).is_empty());
        assert!(user_forwards("<domain><qemu:arg").is_empty());
    }

    #[test]
    fn networks_become_one_virtio_interface() {
        for net in [
            NetworkSpec::Network {
                name: "prod".into(),
            },
            NetworkSpec::Isolated {
                name: "prod".into(),
            },
        ] {
            let xml = domain_xml(
                &spec(Boot::Disk, &["a"], net),
                DomainType::Qemu,
                &paths(),
                DiskBackend::File,
            );
            let doc = parse(&xml);
            let ifaces = children(child(doc.root_element(), "devices"), "interface");
            assert_eq!(ifaces.len(), 1);
            assert_eq!(ifaces[0].attribute("type"), Some("network"));
            assert_eq!(
                child(ifaces[0], "source").attribute("network"),
                Some("prod")
            );
            assert_eq!(child(ifaces[0], "model").attribute("type"), Some("virtio"));
        }
    }

    #[test]
    fn every_interpolated_string_is_escaped() {
        let nasty = "a&b<c>d'e\"f";
        let boot = Boot::Kernel {
            kernel: format!("/k/{nasty}"),
            initrd: Some(format!("/i/{nasty}")),
            cmdline: Some(format!("console=ttyS0 x={nasty}\ttab\nnl bell\u{7}")),
        };
        let p = HostPaths {
            host: "north-h1".into(),
            volumes_dir: format!("/v/{nasty}").into(),
            sockets_dir: format!("/s/{nasty}").into(),
            consoles_dir: format!("/c/{nasty}").into(),
        };
        let s = spec(boot, &["a"], NetworkSpec::Network { name: nasty.into() });
        for backend in [DiskBackend::File, DiskBackend::Nbd] {
            let xml = domain_xml(&s, DomainType::Qemu, &p, backend);
            let doc = parse(&xml);
            let d = doc.root_element();
            let os = child(d, "os");
            assert_eq!(child(os, "kernel").text(), Some("/k/a&b<c>d'e\"f"));
            assert_eq!(child(os, "initrd").text(), Some("/i/a&b<c>d'e\"f"));
            assert_eq!(
                child(os, "cmdline").text(),
                Some("console=ttyS0 x=a&b<c>d'e\"f\ttab\nnl bell\u{FFFD}")
            );
            let dev = child(d, "devices");
            let disk = child(dev, "disk");
            let src = child(disk, "source");
            let disk_path = match backend {
                DiskBackend::File => src.attribute("file"),
                DiskBackend::Nbd => child(src, "host").attribute("socket"),
            };
            let want = match backend {
                DiskBackend::File => "/v/a&b<c>d'e\"f/a.raw",
                DiskBackend::Nbd => "/s/a&b<c>d'e\"f/shop.sock",
            };
            assert_eq!(disk_path, Some(want));
            let net = child(child(dev, "interface"), "source");
            assert_eq!(net.attribute("network"), Some(nasty));
            let log = "/c/a&b<c>d'e\"f/web-1.log";
            assert_eq!(
                child(child(dev, "serial"), "source").attribute("path"),
                Some(log)
            );
            assert_eq!(
                child(child(dev, "console"), "source").attribute("path"),
                Some(log)
            );
        }
    }

    #[test]
    fn memory_is_rounded_up_to_whole_kib() {
        let mut s = spec(Boot::Disk, &[], NetworkSpec::None);
        s.memory = ByteSize(1025);
        let xml = domain_xml(&s, DomainType::Qemu, &paths(), DiskBackend::File);
        let doc = parse(&xml);
        assert_eq!(child(doc.root_element(), "memory").text(), Some("2"));
    }

    #[test]
    fn device_names_follow_libvirt_order() {
        let names: Vec<String> = [0, 1, 25, 26, 27, 51, 52, 701, 702]
            .into_iter()
            .map(disk_dev)
            .collect();
        assert_eq!(
            names,
            [
                "vda", "vdb", "vdz", "vdaa", "vdab", "vdaz", "vdba", "vdzz", "vdaaa"
            ]
        );
    }

    #[test]
    fn paths_are_per_volume_and_per_vm() {
        let p = paths();
        assert_eq!(
            volume_path(&p, &VolumeId::new("v1")),
            PathBuf::from("/srv/metrodr/volumes/v1.raw")
        );
        assert_eq!(
            socket_path(&p, &AppId::new("shop")),
            PathBuf::from("/run/metrodr/nbd/shop.sock")
        );
        assert_eq!(
            console_path(&p, &VmId::new("web-1")),
            PathBuf::from("/var/log/metrodr/consoles/web-1.log")
        );
    }

    #[test]
    fn managed_by_reads_our_mark_as_libvirt_returns_it() {
        // The shape `virsh dumpxml` gives back: other elements around, our element
        // re-serialised with its own prefix declaration.
        let xml = r#"<domain type='qemu' id='3'>
  <name>web-1</name>
  <uuid>dd42987f-7702-43ef-a24a-425a644e3250</uuid>
  <metadata>
    <other:thing xmlns:other="urn:example:other" app="nope" vm="nope"/>
    <metrodr:vm xmlns:metrodr="urn:metrodr:vm:1" app="shop" vm="web-1"/>
  </metadata>
  <memory unit='KiB'>65536</memory>
</domain>"#;
        assert_eq!(
            managed_by(xml),
            Some(ManagedBy {
                app: AppId::new("shop"),
                vm: VmId::new("web-1"),
                host: None,
                drill: None,
            })
        );
        // The prefix does not matter, the namespace does.
        let xml = r#"<domain><metadata><m:vm xmlns:m="urn:metrodr:vm:1" app="a" vm="b"/></metadata></domain>"#;
        assert_eq!(managed_by(xml).map(|m| m.vm), Some(VmId::new("b")));
    }

    #[test]
    fn managed_by_ignores_foreign_domains_and_garbage() {
        let foreign = "<domain type='kvm'><name>db</name><memory>1024</memory></domain>";
        assert_eq!(managed_by(foreign), None);
        let foreign_metadata = r#"<domain><name>db</name><metadata><x:vm xmlns:x="urn:someone:else" app="a" vm="b"/></metadata></domain>"#;
        assert_eq!(managed_by(foreign_metadata), None);
        let future_version = r#"<domain><metadata><m:vm xmlns:m="urn:metrodr:vm:2" app="a" vm="b"/></metadata></domain>"#;
        assert_eq!(managed_by(future_version), None);
        let no_namespace = r#"<domain><metadata><vm app="a" vm="b"/></metadata></domain>"#;
        assert_eq!(managed_by(no_namespace), None);
        let missing_attr =
            r#"<domain><metadata><m:vm xmlns:m="urn:metrodr:vm:1" app="a"/></metadata></domain>"#;
        assert_eq!(managed_by(missing_attr), None);
        let bad_id = r#"<domain><metadata><m:vm xmlns:m="urn:metrodr:vm:1" app="A B" vm="b"/></metadata></domain>"#;
        assert_eq!(managed_by(bad_id), None);
        let not_a_domain = r#"<network><metadata><m:vm xmlns:m="urn:metrodr:vm:1" app="a" vm="b"/></metadata></network>"#;
        assert_eq!(managed_by(not_a_domain), None);
        let dtd = r#"<!DOCTYPE domain [<!ENTITY a "aaaa">]><domain><name>&a;</name></domain>"#;
        assert_eq!(managed_by(dtd), None);
        for garbage in ["", "not xml", "<domain>", "<domain></dom>", "\u{0}\u{1}"] {
            assert_eq!(managed_by(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn test_host_file_is_a_node_with_the_capacity() {
        let xml = test_host_xml(4, 8 << 30);
        let doc = parse(&xml);
        let node = doc.root_element();
        assert!(node.has_tag_name("node"));
        let cpu = child(node, "cpu");
        assert_eq!(child(cpu, "active").text(), Some("4"));
        assert_eq!(child(cpu, "cores").text(), Some("4"));
        assert_eq!(child(node, "memory").text(), Some("8388608"));
        assert!(children(node, "domain").is_empty());
    }

    #[test]
    fn domain_type_names_match_libvirt() {
        assert_eq!(DomainType::Qemu.to_string(), "qemu");
        assert_eq!(DomainType::Kvm.as_str(), "kvm");
        assert_eq!(serde_json::to_string(&DomainType::Kvm).unwrap(), "\"kvm\"");
        assert_eq!(serde_json::to_string(&DiskBackend::Nbd).unwrap(), "\"nbd\"");
    }
}
