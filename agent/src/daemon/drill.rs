//! The agent's half of a test drill: start a drill copy of a VM (on the drill's
//! snapshot, on the drill's isolated network) and remove everything a drill made on
//! this host. Production domains are never touched: drill copies are named
//! `drill-<op>-<vm>` and carry the drill in their metadata mark.

use ids::OpId;
use proto::agent::{CommandOutcome, Executed, FailureKind};
use topology::spec::{NetworkSpec, VmSpec, drill_network_name};

use super::{Marks, Resources, hv};
use crate::core::RunCtx;
use crate::domain_xml::{self, DiskBackend};
use crate::hypervisor::only_ours;

/// Why libvirt's definition of a drill network is not isolated (pure); None: it is.
pub fn not_isolated(network_xml: &str) -> Option<String> {
    let doc = match roxmltree::Document::parse(network_xml) {
        Ok(d) => d,
        Err(e) => return Some(format!("unreadable network XML: {e}")),
    };
    let root = doc.root_element();
    let mut why = Vec::new();
    for n in root.children().filter(|n| n.is_element()) {
        match n.tag_name().name() {
            "forward" => why.push(format!(
                "it forwards traffic (mode {})",
                n.attribute("mode").unwrap_or("nat")
            )),
            "ip" => why.push(format!(
                "the host has an address on it ({})",
                n.attribute("address").unwrap_or("?")
            )),
            _ => {}
        }
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Define and start the drill copy `spec` (which must belong to drill `op`); the
/// console mark of its start goes to `marks`.
pub(super) async fn start(
    res: &Resources,
    op: OpId,
    spec: VmSpec,
    ctx: RunCtx,
    marks: &mut Marks,
) -> Executed {
    let refuse = |why: String| Executed::failed(FailureKind::Failed, why);
    if spec.drill != Some(op) {
        return refuse(format!(
            "the spec of {} is not drill {}'s copy; refusing",
            spec.vm, op.0
        ));
    }
    let name = spec.domain_name();
    let mut network = None;
    if let NetworkSpec::Network { name: net } = &spec.network {
        return refuse(format!(
            "a drill copy may not join the production network {net}"
        ));
    }
    if let NetworkSpec::User { .. } = &spec.network {
        return refuse(
            "a drill copy gets its drill's isolated network, not user-mode networking".into(),
        );
    }
    if let NetworkSpec::Isolated { name: net } = &spec.network {
        if *net != drill_network_name(op) {
            return refuse(format!(
                "drill {}'s copies join only {}, not {net}",
                op.0,
                drill_network_name(op)
            ));
        }
        let xml = domain_xml::isolated_network_xml(net, op.0);
        let n = net.clone();
        let desc = match hv(res, move |h| h.ensure_network(&n, &xml)).await {
            Ok(d) => d,
            Err(e) => return refuse(format!("cannot set up network {net}: {e}")),
        };
        if let Some(why) = not_isolated(&desc) {
            return refuse(format!(
                "network {net} is not isolated: {why}; not starting {name}"
            ));
        }
        // Verified just now: no forward, no host address.
        network = Some(net.clone());
    }
    let ty = ctx.domain_type;
    let xml = domain_xml::domain_xml(&spec, ty, &res.paths, DiskBackend::Nbd);
    let console = domain_xml::console_of(&res.paths, &spec);
    let mark = std::fs::metadata(&console).map_or(0, |m| m.len());
    marks.push((name.clone(), Some(mark)));
    let n = name.clone();
    let disks = u32::try_from(spec.disks.len()).unwrap_or(u32::MAX);
    let r = hv(res, move |h| {
        h.define(&xml)?;
        h.start(&n)?;
        h.state(&n)
    })
    .await;
    match r {
        Ok(state) => Executed::done(CommandOutcome::DrillStarted {
            domain: name,
            state: state.reported(),
            domain_type: ty.to_string(),
            disks,
            isolated: network.is_some(),
            network,
        }),
        Err(e) => refuse(format!("cannot start {name}: {e}")),
    }
}

/// Remove every domain, snapshot and network of drill `op` on this host (and the
/// console marks of its domains, through `marks`).
pub(super) async fn cleanup(res: &Resources, op: OpId, marks: &mut Marks) -> Executed {
    let host = res.cfg.host.clone();
    let domains = match hv(res, move |h| h.list().map(|d| only_ours(d, &host))).await {
        Ok(d) => d,
        Err(e) => {
            return Executed::failed(FailureKind::Failed, format!("cannot list domains: {e}"));
        }
    };
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for d in domains
        .into_iter()
        .filter(|d| d.managed.as_ref().is_some_and(|m| m.drill == Some(op)))
    {
        let name = d.name.clone();
        let r = hv(res, move |h| {
            h.destroy(&name)?;
            h.undefine(&name)
        })
        .await;
        match r {
            Ok(()) => {
                let _ =
                    std::fs::remove_file(res.paths.consoles_dir.join(format!("{}.log", d.name)));
                marks.push((d.name.clone(), None));
                done.push(format!("{} removed", d.name));
            }
            Err(e) => failed.push(format!("{}: {e}", d.name)),
        }
    }
    done.extend(res.volumes.drill_cleanup(op).await);
    let net = drill_network_name(op);
    let n = net.clone();
    match hv(res, move |h| h.remove_network(&n)).await {
        Ok(()) => done.push(format!("network {net} gone")),
        Err(e) => failed.push(format!("network {net}: {e}")),
    }
    if failed.is_empty() {
        Executed::done(CommandOutcome::DrillCleaned { removed: done })
    } else {
        Executed::failed(
            FailureKind::Failed,
            format!(
                "could not remove: {} (removed: {})",
                failed.join("; "),
                done.join("; ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_network_without_forward_and_address_is_isolated() {
        assert_eq!(
            not_isolated("<network><name>x</name><bridge name='b'/></network>"),
            None
        );
        let nat = "<network><name>default</name><forward mode='nat'/><ip address='192.168.122.1'/></network>";
        let why = not_isolated(nat).unwrap_or_default();
        assert!(why.contains("forwards traffic (mode nat)"), "{why}");
        assert!(why.contains("192.168.122.1"), "{why}");
        assert!(not_isolated("<network").is_some());
        assert!(!domain_xml::isolated_network_xml("mdr-drill-7", 7).contains("<forward"));
        assert_eq!(
            not_isolated(&domain_xml::isolated_network_xml("mdr-drill-7", 7)),
            None
        );
    }
}
