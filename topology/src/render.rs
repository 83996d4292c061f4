//! Writing a [`Topology`] back as a topology file. The output parses to an equal model
//! (tested), which makes it the canonical form for generated topologies and for
//! property tests that mutate a model and check what validation says.

use std::fmt::Write;

use crate::model::{Boot, FailoverPolicy, Probe, Replication, SiteRole, Topology};
use crate::timing::Timing;

/// A TOML string literal (quoted and escaped).
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.map(|s| q(&s)).collect::<Vec<_>>().join(", "))
}

/// Render a topology as TOML text.
pub fn to_toml(t: &Topology) -> String {
    // Writing to a String cannot fail; the results are ignored for brevity.
    let mut o = String::with_capacity(512 * (t.apps.len() + t.hosts.len()) + 1024);
    let _ = writeln!(o, "[cluster]\nname = {}", q(&t.cluster.name));
    if let Some(d) = &t.cluster.description {
        let _ = writeln!(o, "description = {}", q(d));
    }
    if t.cluster.volumes == crate::model::VolumeService::Agents {
        let _ = writeln!(o, "volumes = \"agents\"");
    }
    if t.timing != Timing::default() {
        let _ = writeln!(o, "\n[timing]");
        for (k, v) in t.timing.fields() {
            let _ = writeln!(o, "{k} = {v}");
        }
    }
    for s in &t.sites {
        let role = match s.role {
            SiteRole::Production => "production",
            SiteRole::Witness => "witness",
        };
        let _ = writeln!(
            o,
            "\n[[site]]\nid = {}\nname = {}\nrole = {}",
            q(s.id.as_str()),
            q(&s.name),
            q(role)
        );
        if let Some(l) = &s.location {
            let _ = writeln!(o, "location = {}", q(l));
        }
        if let Some(n) = &s.notes {
            let _ = writeln!(o, "notes = {}", q(n));
        }
    }
    for n in &t.orchestrators {
        let _ = writeln!(
            o,
            "\n[[orchestrator]]\nid = {}\nsite = {}\naddr = {}",
            q(n.id.as_str()),
            q(n.site.as_str()),
            q(&n.addr)
        );
    }
    for h in &t.hosts {
        let _ = writeln!(
            o,
            "\n[[host]]\nid = {}\nsite = {}\nlibvirt_uri = {}\nagent_addr = {}\nvcpus = {}\nmemory = {}",
            q(h.id.as_str()),
            q(h.site.as_str()),
            q(&h.libvirt_uri),
            q(&h.agent_addr),
            h.vcpus,
            q(&h.memory.to_string())
        );
    }
    for a in &t.apps {
        let policy = match a.failover {
            FailoverPolicy::Auto => "auto",
            FailoverPolicy::ManualApproval => "manual-approval",
        };
        let _ = writeln!(
            o,
            "\n[[app]]\nid = {}\nname = {}\ntier = {}\ndepends_on = {}\npreferred_site = {}\nfailover = {}\nrto_target_s = {}\nrpo_target_s = {}",
            q(a.id.as_str()),
            q(&a.name),
            a.tier,
            list(a.depends_on.iter().map(|d| d.to_string())),
            q(a.preferred_site.as_str()),
            q(policy),
            a.rto_target_s,
            a.rpo_target_s
        );
        for v in &a.volumes {
            let _ = writeln!(
                o,
                "\n  [[app.volume]]\n  id = {}\n  size = {}",
                q(v.id.as_str()),
                q(&v.size.to_string())
            );
            match v.replication {
                Replication::Sync => {
                    let _ = writeln!(o, "  replication = \"sync\"");
                }
                Replication::Async {
                    lag_max_s,
                    lag_max_size,
                } => {
                    let _ = writeln!(
                        o,
                        "  replication = \"async\"\n  lag_max_s = {lag_max_s}\n  lag_max_size = {}",
                        q(&lag_max_size.to_string())
                    );
                }
            }
        }
        for vm in &a.vms {
            let _ = writeln!(
                o,
                "\n  [[app.vm]]\n  id = {}\n  vcpus = {}\n  memory = {}\n  disks = {}",
                q(vm.id.as_str()),
                vm.vcpus,
                q(&vm.memory.to_string()),
                list(vm.disks.iter().map(|d| d.to_string()))
            );
            match &vm.boot {
                Boot::Disk => {
                    let _ = writeln!(o, "  boot = \"disk\"");
                }
                Boot::Kernel {
                    kernel,
                    initrd,
                    cmdline,
                } => {
                    let _ = writeln!(o, "  boot = \"kernel\"\n  kernel = {}", q(kernel));
                    if let Some(i) = initrd {
                        let _ = writeln!(o, "  initrd = {}", q(i));
                    }
                    if let Some(c) = cmdline {
                        let _ = writeln!(o, "  cmdline = {}", q(c));
                    }
                }
            }
            if let Some(b) = vm.boot_estimate_s {
                let _ = writeln!(o, "  boot_estimate_s = {b}");
            }
        }
        for p in &a.probes {
            match p {
                Probe::Tcp {
                    vm,
                    port,
                    timeout_s,
                    address,
                } => {
                    let _ = writeln!(
                        o,
                        "\n  [[app.probe]]\n  kind = \"tcp\"\n  vm = {}\n  port = {port}\n  timeout_s = {timeout_s}",
                        q(vm.as_str())
                    );
                    if let Some(a) = address {
                        let _ = writeln!(o, "  address = {}", q(a));
                    }
                }
                Probe::Serial {
                    vm,
                    marker,
                    timeout_s,
                } => {
                    let _ = writeln!(
                        o,
                        "\n  [[app.probe]]\n  kind = \"serial\"\n  vm = {}\n  marker = {}\n  timeout_s = {timeout_s}",
                        q(vm.as_str()),
                        q(marker)
                    );
                }
            }
        }
    }
    for d in &t.drills {
        let apps: Vec<String> = d.apps.iter().map(|a| q(a.as_str())).collect();
        let _ = writeln!(
            o,
            "\n[[drill]]\nid = {}\nkind = \"test\"\napps = [{}]\nevery = \"{}s\"",
            q(&d.id),
            apps.join(", "),
            d.every_s
        );
    }
    o
}
