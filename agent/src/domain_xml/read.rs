//! Reading a domain's XML back (what libvirt returns for a domain): the mark that says
//! this agent manages it, and the guest ports forwarded by user-mode networking.
//!
//! Never: panic or trust anything in the XML (foreign domains are read too), or expand
//! entities (roxmltree refuses DTDs).

use topology::ids::{AppId, OpId, VmId, check_id};
use topology::spec::PortForward;

use super::{METADATA_NS, ManagedBy, QEMU_NS, USER_NETDEV};

/// The guest ports forwarded to the host's loopback in `domain_xml` (the live XML
/// libvirt returns for a domain with [`topology::spec::NetworkSpec::User`]), as (guest, host) ports.
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
