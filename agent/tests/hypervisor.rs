//! The libvirt `Hypervisor` against real libvirt: the in-process test driver on a
//! private fake host per test (fast, no daemon), and the QEMU driver of the machine's
//! libvirtd (`qemu:///system`) for "does QEMU accept the XML we generate".
//!
//! Test domains are named with the pid and removed by drop guards.

// Test helpers may unwrap like the tests themselves (clippy.toml allows it only inside
// #[test] functions): a panic here is a test failure, which is what we want.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::domain_xml::{
    DiskBackend, DomainType, HostPaths, ManagedBy, domain_xml, managed_by, test_host_xml,
};
use agent::hypervisor::{DomainState, HvErrorKind, Hypervisor, Libvirt, detect_domain_type};
use tempfile::TempDir;
use topology::ids::{AppId, ByteSize, VmId, VolumeId};
use topology::model::Boot;
use topology::spec::{DiskSpec, NetworkSpec, VmSpec};

/// A private fake host: a test-driver host file in a temp dir and a `Libvirt` on it.
struct FakeHost {
    hv: Libvirt,
    _dir: TempDir,
}

fn fake_host() -> FakeHost {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("host.xml");
    std::fs::write(&file, test_host_xml(4, 8 << 30)).unwrap();
    FakeHost {
        hv: Libvirt::new(&format!("test://{}", file.display())),
        _dir: dir,
    }
}

fn name(suffix: &str) -> String {
    format!("metrodr-test-{}-{suffix}", std::process::id())
}

fn spec(vm: &str) -> VmSpec {
    VmSpec {
        drill: None,
        vm: VmId::new(vm),
        app: AppId::new("shop"),
        vcpus: 1,
        memory: ByteSize::mib(64),
        boot: Boot::Kernel {
            kernel: "/nonexistent/metrodr/vmlinuz".into(),
            initrd: Some("/nonexistent/metrodr/initrd.gz".into()),
            cmdline: Some("console=ttyS0 quiet".into()),
        },
        disks: vec![
            DiskSpec {
                volume: VolumeId::new(format!("{vm}-os")),
                size: ByteSize::gib(1),
            },
            DiskSpec {
                volume: VolumeId::new(format!("{vm}-data")),
                size: ByteSize::gib(2),
            },
        ],
        network: NetworkSpec::None,
        probe_ports: Vec::new(),
    }
}

fn paths(root: &Path) -> HostPaths {
    HostPaths {
        host: "h1".into(),
        volumes_dir: root.join("volumes"),
        sockets_dir: root.join("nbd"),
        consoles_dir: root.join("consoles"),
    }
}

fn xml_for(vm: &str, backend: DiskBackend) -> String {
    domain_xml(
        &spec(vm),
        DomainType::Qemu,
        &paths(Path::new("/nonexistent/metrodr")),
        backend,
    )
}

/// Destroys and undefines a domain when the test ends, however it ends.
struct Cleanup<'a> {
    hv: &'a dyn Hypervisor,
    name: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.hv.destroy(&self.name);
        let _ = self.hv.undefine(&self.name);
    }
}

fn wait_for_state(hv: &dyn Hypervisor, name: &str, want: DomainState) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = hv.state(name).unwrap();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} still {now} after 30 s, wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn capacity_reports_the_fake_host() {
    let host = fake_host();
    let cap = host.hv.capacity().unwrap();
    assert_eq!(cap.vcpus, 4);
    assert_eq!(cap.memory_bytes, 8 << 30);
    assert_eq!(cap.driver, "TEST");
    assert_eq!(cap.domain_types, ["test"]);
    assert_eq!(detect_domain_type(&cap, None), DomainType::Qemu);
    assert!(host.hv.uri().starts_with("test:///"));
    assert!(
        host.hv.list().unwrap().is_empty(),
        "a private host starts empty"
    );
}

#[test]
fn a_managed_domain_goes_through_its_whole_life() {
    let host = fake_host();
    let hv = &host.hv;
    let vm = name("life");
    let _cleanup = Cleanup {
        hv,
        name: vm.clone(),
    };

    hv.define(&xml_for(&vm, DiskBackend::Nbd)).unwrap();
    let listed = hv.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, vm);
    assert_eq!(listed[0].state, DomainState::ShutOff);
    assert_eq!(
        listed[0].managed,
        Some(ManagedBy {
            app: AppId::new("shop"),
            vm: VmId::new(&vm),
            host: Some("h1".into()),
            drill: None,
        })
    );
    // Redefining is fine and changes nothing visible.
    hv.define(&xml_for(&vm, DiskBackend::Nbd)).unwrap();
    assert_eq!(hv.list().unwrap(), listed);

    // Idempotent in the direction we want.
    hv.destroy(&vm).unwrap();
    hv.shutdown(&vm).unwrap();
    assert_eq!(hv.state(&vm).unwrap(), DomainState::ShutOff);
    for (op, res) in [("suspend", hv.suspend(&vm)), ("resume", hv.resume(&vm))] {
        let e = res.unwrap_err();
        assert_eq!(e.kind, HvErrorKind::Rejected, "{op}: {e}");
        assert!(e.to_string().contains("shut off"), "{e}");
    }

    hv.start(&vm).unwrap();
    assert_eq!(hv.state(&vm).unwrap(), DomainState::Running);
    hv.start(&vm).unwrap();
    hv.resume(&vm).unwrap();
    assert_eq!(hv.state(&vm).unwrap(), DomainState::Running);

    hv.suspend(&vm).unwrap();
    assert_eq!(hv.state(&vm).unwrap(), DomainState::Paused);
    hv.suspend(&vm).unwrap();
    let e = hv.start(&vm).unwrap_err();
    assert_eq!(e.kind, HvErrorKind::Rejected, "{e}");
    assert!(e.to_string().contains("resume"), "{e}");
    assert_eq!(hv.state(&vm).unwrap(), DomainState::Paused);
    hv.resume(&vm).unwrap();
    assert_eq!(hv.state(&vm).unwrap(), DomainState::Running);

    hv.shutdown(&vm).unwrap();
    wait_for_state(hv, &vm, DomainState::ShutOff);
    hv.shutdown(&vm).unwrap();

    hv.start(&vm).unwrap();
    hv.define(&xml_for(&vm, DiskBackend::Nbd)).unwrap();
    assert_eq!(
        hv.state(&vm).unwrap(),
        DomainState::Running,
        "redefine leaves it running"
    );
    let e = hv.undefine(&vm).unwrap_err();
    assert_eq!(e.kind, HvErrorKind::Rejected, "{e}");
    assert!(e.to_string().contains("destroy it first"), "{e}");
    assert_eq!(
        hv.state(&vm).unwrap(),
        DomainState::Running,
        "undefine must not stop it"
    );
    assert!(hv.list().unwrap()[0].managed.is_some());

    hv.destroy(&vm).unwrap();
    assert_eq!(hv.state(&vm).unwrap(), DomainState::ShutOff);
    hv.destroy(&vm).unwrap();

    hv.undefine(&vm).unwrap();
    assert!(hv.list().unwrap().is_empty());
    assert_eq!(hv.state(&vm).unwrap_err().kind, HvErrorKind::NotFound);
    assert_eq!(hv.undefine(&vm).unwrap_err().kind, HvErrorKind::NotFound);
}

#[test]
fn a_running_guest_on_a_network_has_the_address_libvirt_knows() {
    let host = fake_host();
    let hv = &host.hv;
    let vm = name("addr");
    let _cleanup = Cleanup {
        hv,
        name: vm.clone(),
    };
    hv.ensure_network(
        "prod",
        "<network><name>prod</name><ip address='192.168.122.1' netmask='255.255.255.0'>\
         <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip></network>",
    )
    .unwrap();
    let mut s = spec(&vm);
    s.network = NetworkSpec::Network {
        name: "prod".into(),
    };
    hv.define(&domain_xml(
        &s,
        DomainType::Qemu,
        &paths(Path::new("/nonexistent/metrodr")),
        DiskBackend::Nbd,
    ))
    .unwrap();
    hv.start(&vm).unwrap();
    // The test driver hands out addresses on 192.168.122.0/24, as libvirt's default
    // network would by DHCP.
    let ips = hv.addresses(&vm).unwrap();
    assert_eq!(ips.len(), 1, "{ips:?}");
    assert!(ips[0].to_string().starts_with("192.168.122."), "{ips:?}");
    assert!(hv.xml(&vm).unwrap().contains("<interface type='network'>"));
    // QEMU's monitor is QEMU's: the test driver has none, and says so.
    let e = hv.usernet(&vm).unwrap_err();
    assert_eq!(e.op, "usernet", "{e}");
}

#[test]
fn unknown_domains_are_not_found_for_every_operation() {
    let host = fake_host();
    let hv = &host.hv;
    let vm = name("ghost");
    let results = [
        ("state", hv.state(&vm).map(|_| ())),
        ("start", hv.start(&vm)),
        ("shutdown", hv.shutdown(&vm)),
        ("destroy", hv.destroy(&vm)),
        ("undefine", hv.undefine(&vm)),
        ("suspend", hv.suspend(&vm)),
        ("resume", hv.resume(&vm)),
        ("xml", hv.xml(&vm).map(|_| ())),
        ("addresses", hv.addresses(&vm).map(|_| ())),
        ("usernet", hv.usernet(&vm).map(|_| ())),
    ];
    for (op, res) in results {
        let e = res.unwrap_err();
        assert_eq!(e.kind, HvErrorKind::NotFound, "{op}: {e}");
        assert_eq!(e.op, op);
        assert_eq!(e.domain.as_deref(), Some(vm.as_str()));
        let text = e.to_string();
        assert!(text.starts_with(&format!("{op} {vm}: ")), "{text}");
        assert!(text.contains(&vm), "libvirt's message names it: {text}");
    }
}

#[test]
fn malformed_xml_is_rejected_with_libvirts_message() {
    let host = fake_host();
    let hv = &host.hv;
    let vm = name("bad");
    let cases = [
        // Not well-formed.
        format!("<domain type='qemu'><name>{vm}</name><memory>65536</memory>"),
        // Well-formed, but not a domain libvirt can define (no memory, no os).
        format!("<domain type='qemu'><name>{vm}</name></domain>"),
        // Not a domain at all.
        "<network><name>n</name></network>".to_owned(),
        // A NUL byte cannot even reach libvirt.
        format!("<domain type='qemu'><name>{vm}\0</name></domain>"),
    ];
    for xml in &cases {
        let e = hv.define(xml).unwrap_err();
        assert_eq!(e.kind, HvErrorKind::Rejected, "{xml}: {e:?}");
        assert_eq!(e.op, "define");
        assert!(!e.message.trim().is_empty(), "{xml}: {e:?}");
        eprintln!("define refused as expected: {e}");
    }
    // The well-formed-but-invalid case names the domain it was about.
    assert_eq!(
        hv.define(&cases[1]).unwrap_err().domain.as_deref(),
        Some(vm.as_str())
    );
    assert!(hv.list().unwrap().is_empty());
}

#[test]
fn foreign_domains_are_listed_as_unmanaged() {
    let host = fake_host();
    let hv = &host.hv;
    let ours = name("ours");
    let foreign = name("foreign");
    hv.define(&xml_for(&ours, DiskBackend::File)).unwrap();
    hv.define(&format!(
        "<domain type='test'><name>{foreign}</name><memory unit='MiB'>32</memory>\
         <os><type>hvm</type></os></domain>"
    ))
    .unwrap();
    hv.start(&foreign).unwrap();

    let listed = hv.list().unwrap();
    let names: Vec<&str> = listed.iter().map(|d| d.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "list is sorted by name");
    let f = listed.iter().find(|d| d.name == foreign).unwrap();
    assert_eq!(f.managed, None);
    assert_eq!(f.state, DomainState::Running);
    let o = listed.iter().find(|d| d.name == ours).unwrap();
    assert_eq!(
        o.managed.as_ref().map(|m| m.vm.as_str()),
        Some(ours.as_str())
    );
}

#[test]
fn each_fake_host_is_private_and_shareable_between_threads() {
    let a = fake_host();
    let b = fake_host();
    let vm = name("private");
    a.hv.define(&xml_for(&vm, DiskBackend::File)).unwrap();
    assert_eq!(a.hv.list().unwrap().len(), 1);
    assert!(b.hv.list().unwrap().is_empty());

    let hv = Arc::new(a.hv);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let hv = hv.clone();
            let vm = vm.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    hv.start(&vm).unwrap();
                    assert!(hv.state(&vm).unwrap().is_active());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(hv.state(&vm).unwrap(), DomainState::Running);
}

#[test]
fn an_unopenable_uri_is_unavailable_with_a_clear_message() {
    let hv = Libvirt::new("test:///nonexistent/metrodr/host.xml");
    let e = hv.list().unwrap_err();
    assert_eq!(e.kind, HvErrorKind::Unavailable, "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with(
            "list: libvirt at test:///nonexistent/metrodr/host.xml is not reachable: "
        ),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------
// The real QEMU driver.

const SYSTEM: &str = "qemu:///system";

fn system_libvirt() -> Libvirt {
    let hv = Libvirt::new(SYSTEM);
    if let Err(e) = hv.capacity() {
        panic!(
            "\n\n####################################################################\n\
             #### libvirtd is not running (or {SYSTEM} does not answer):\n\
             ####   {e}\n\
             #### Start it with:  bash scripts/start-libvirtd.sh\n\
             #### (or: mkdir -p /var/log/libvirt && virtlogd -d && libvirtd -d)\n\
             ####################################################################\n\n"
        );
    }
    hv
}

#[test]
fn qemu_accepts_the_generated_xml() {
    let hv = system_libvirt();
    let cap = hv.capacity().unwrap();
    assert_eq!(cap.driver, "QEMU");
    assert!(
        cap.domain_types.iter().any(|t| t == "qemu"),
        "capabilities list {:?}",
        cap.domain_types
    );
    assert!(cap.vcpus >= 1 && cap.memory_bytes > 0, "{cap:?}");
    let ty = detect_domain_type(&cap, None);
    assert_eq!(ty, DomainType::Qemu);

    for backend in [DiskBackend::File, DiskBackend::Nbd] {
        let vm = name(match backend {
            DiskBackend::File => "qemu-file",
            DiskBackend::Nbd => "qemu-nbd",
        });
        let _cleanup = Cleanup {
            hv: &hv,
            name: vm.clone(),
        };
        let xml = domain_xml(
            &spec(&vm),
            ty,
            &paths(Path::new("/nonexistent/metrodr")),
            backend,
        );
        hv.define(&xml)
            .unwrap_or_else(|e| panic!("QEMU refused our XML: {e}\n{xml}"));
        // Our XML has no <uuid>: redefining must reuse the domain's, not clash with it.
        hv.define(&xml)
            .unwrap_or_else(|e| panic!("QEMU refused to redefine: {e}"));
        assert_eq!(hv.state(&vm).unwrap(), DomainState::ShutOff);
        let listed = hv.list().unwrap();
        let d = listed.iter().find(|d| d.name == vm).unwrap();
        assert_eq!(d.managed.as_ref().map(|m| m.vm.as_str()), Some(vm.as_str()));
        assert_eq!(managed_by(&xml), d.managed);
        hv.undefine(&vm).unwrap();
        assert_eq!(hv.state(&vm).unwrap_err().kind, HvErrorKind::NotFound);
    }
}

#[test]
fn qemu_rejects_invalid_xml_and_unknown_domains() {
    let hv = system_libvirt();
    let vm = name("qemu-bad");
    let e = hv
        .define(&format!("<domain type='qemu'><name>{vm}</name></domain>"))
        .unwrap_err();
    assert_eq!(e.kind, HvErrorKind::Rejected, "{e}");
    eprintln!("QEMU refused as expected: {e}");
    let e = hv.start(&vm).unwrap_err();
    assert_eq!(e.kind, HvErrorKind::NotFound, "{e}");
}
