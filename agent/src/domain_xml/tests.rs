//! Tests of the domain XML: generation, escaping, and reading marks and forwards back.

use super::*;
use topology::ids::ByteSize;
use topology::spec::{DiskSpec, PortForward};

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
