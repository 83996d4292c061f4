//! `metrodr demo --hypervisor qemu`: the site-loss act with real guests. The lab
//! topology's hosts become this machine's libvirtd (`qemu:///system`, shared by the
//! four agents; each domain carries its host's mark), every VM the probe guest (QEMU
//! TCG, 1 vCPU, 256 MiB, booting a kernel; it writes numbered records to its disk and
//! prints each one it has acknowledged), and every app gets a serial probe (the guest's
//! ready marker) and a tcp probe (its web service, through the agent's user-mode
//! forward) as its health gate. The guests are the workload: when north is lost
//! their QEMU processes die with it, and each guest, booted again at south from the
//! promoted disk, says where it resumes — which must be at or after the last record it
//! acknowledged at north.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chaos::guest::{remove_domain, virsh};
use topology::model::{Boot, Probe};
use topology::{ByteSize, Topology, VmId};

/// Prefix of the demo's domain names on the shared libvirtd.
const PREFIX: &str = "mdr-demo-";

/// The lab with real guests (see the module header), as TOML and as a model.
pub fn lab(text: &str, cache: &Path) -> anyhow::Result<(String, Topology)> {
    if !virsh(&["version"]).0 {
        bail!(
            "--hypervisor qemu needs libvirtd (qemu:///system): run `bash scripts/start-libvirtd.sh` (as root)"
        );
    }
    let img = chaos::guest::build(&chaos::guest::BuildOptions::new(cache.to_path_buf()))
        .map_err(|e| anyhow::anyhow!("cannot build the probe guest image: {e}"))?;
    let mut t = topology::check_str(text)
        .topology
        .context("the built-in lab topology is invalid")?;
    for h in &mut t.hosts {
        h.libvirt_uri = "qemu:///system".into();
    }
    for app in &mut t.apps {
        app.probes.clear();
        for vm in &mut app.vms {
            vm.id = VmId::new(format!("{PREFIX}{}", vm.id));
            vm.vcpus = 1;
            vm.memory = ByteSize::mib(256);
            vm.boot = Boot::Kernel {
                kernel: img.kernel.display().to_string(),
                initrd: Some(img.initrd.display().to_string()),
                cmdline: Some(img.cmdline.clone()),
            };
            vm.boot_estimate_s = Some(6);
            app.probes.push(Probe::Serial {
                vm: vm.id.clone(),
                marker: "metrodr-probe: ready".into(),
                timeout_s: 90,
            });
            // The guest's service, through the agent's user-mode forward.
            app.probes.push(Probe::Tcp {
                vm: vm.id.clone(),
                port: chaos::guest::SERVICE_PORT,
                timeout_s: 90,
                address: None,
            });
        }
    }
    let text = topology::render::to_toml(&t);
    let report = topology::check_str(&text);
    let model = report.topology.with_context(|| {
        format!(
            "the lab with real guests is not a valid topology ({} problems)",
            report.diagnostics.len()
        )
    })?;
    Ok((text, model))
}

/// The demo's guests: their consoles, what each acknowledged before the loss; their
/// domains are destroyed and undefined when this is dropped.
pub struct Guests {
    dir: PathBuf,
    names: Vec<String>,
    pub acked: BTreeMap<String, u64>,
}

impl Drop for Guests {
    fn drop(&mut self) {
        for vm in &self.names {
            remove_domain(vm);
        }
    }
}

impl Guests {
    pub fn new(dir: &Path, t: &Topology) -> Guests {
        Guests {
            dir: dir.to_path_buf(),
            names: t
                .apps
                .iter()
                .flat_map(|a| a.vms.iter().map(|v| v.id.to_string()))
                .collect(),
            acked: BTreeMap::new(),
        }
    }

    pub fn console(&self, host: &str, vm: &str) -> chaos::guest::ConsoleLog {
        let p = self.dir.join(format!("agent-{host}/consoles/{vm}.log"));
        chaos::guest::parse_console(&std::fs::read_to_string(p).unwrap_or_default())
    }

    /// Is every guest (vm → host) writing?
    pub fn all_writing(&self, placed: &BTreeMap<String, String>) -> bool {
        placed.iter().all(|(vm, host)| {
            let l = self.console(host, vm);
            l.ready && l.acks >= 3
        })
    }

    /// The QEMU processes of the guests on `hosts` (from libvirt's pidfiles).
    pub fn pids(placed: &BTreeMap<String, String>, hosts: &[String]) -> Vec<(String, i32)> {
        placed
            .iter()
            .filter(|(_, h)| hosts.contains(h))
            .filter_map(|(vm, _)| Some((vm.clone(), chaos::guest::qemu_pid(vm)?)))
            .collect()
    }

    /// SIGKILL those QEMU processes (they die with their site); then note what each
    /// guest had acknowledged.
    pub fn kill(&mut self, pids: &[(String, i32)], placed: &BTreeMap<String, String>) {
        for (_, pid) in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for (vm, _) in pids {
            if let Some(host) = placed.get(vm) {
                let acked = self.console(host, vm).max_ack.unwrap_or(0);
                self.acked.insert(vm.clone(), acked);
            }
        }
    }

    /// Per killed guest, where it resumed after the failover (vm → host now) and how
    /// many acknowledged records it did not find (0 when it resumed at or after them).
    pub fn missing(&self, placed: &BTreeMap<String, String>) -> BTreeMap<String, (u64, u64)> {
        self.acked
            .iter()
            .map(|(vm, acked)| {
                let resumed = placed
                    .get(vm)
                    .map(|h| self.console(h, vm))
                    .and_then(|l| l.resume_after.last().copied())
                    .unwrap_or(0);
                (vm.clone(), (resumed, acked.saturating_sub(resumed)))
            })
            .collect()
    }
}
