//! The applications' rules: apps, their volumes and replication, VMs (boot, fit on some
//! host), probes.

use std::collections::{HashMap, HashSet};

use super::{AppSpans, Cx, HostEnvelope, Seen};
use crate::diag::{Code, Diagnostic};
use crate::ids::{AppId, SiteId, VmId, VolumeId, human_size};
use crate::model::{
    App, Boot, BootKind, DEFAULT_LAG_MAX_SIZE, DEFAULT_PROBE_TIMEOUT_S, Probe, ProbeKind,
    Replication, ReplicationMode, SiteRole, Vm, Volume,
};
use crate::raw::RawAppFull;

impl Cx<'_> {
    pub(super) fn apps(
        &mut self,
        raw: Vec<RawAppFull>,
        roles: &HashMap<SiteId, SiteRole>,
        hosts: &HostEnvelope,
    ) -> Vec<App> {
        let mut seen_app = Seen::new("app");
        let mut seen_vm = Seen::new("VM");
        let mut seen_vol = Seen::new("volume");
        let all_app_ids: HashSet<String> = raw.iter().map(|a| a.app.id.get_ref().clone()).collect();
        let mut out = Vec::new();
        for full in raw {
            let errors_before = self.error_count();
            let a = &full.app;
            let id_ok = self.id_ok(&a.id, "app") && seen_app.insert(&a.id, self.diags);
            let site = self.site_ref(&a.preferred_site, "preferred_site", roles, true);
            if *a.tier.get_ref() == 0 {
                self.push(
                    Diagnostic::error(Code::OutOfRange, Some(a.tier.span()), "tier is 0")
                        .with_hint("tiers start at 1 (1 = brought up first)"),
                );
            }
            self.positive(&a.rto_target_s, "rto_target_s");
            let mut deps = Vec::new();
            let mut dep_spans = HashMap::new();
            for d in &a.depends_on {
                if !all_app_ids.contains(d.get_ref()) {
                    self.dangling(
                        d,
                        &format!("app `{}` depends_on", a.id.get_ref()),
                        "app",
                        all_app_ids.iter().map(String::as_str),
                    );
                    continue;
                }
                let dep = AppId::new(d.get_ref().clone());
                if dep_spans.insert(dep.clone(), d.span()).is_some() {
                    self.push(
                        Diagnostic::warning(
                            Code::Suspicious,
                            Some(d.span()),
                            format!("`{}` is listed twice in depends_on", d.get_ref()),
                        )
                        .with_hint("remove the repeated entry"),
                    );
                    continue;
                }
                deps.push(dep);
            }
            let volumes = self.volumes(&full, &mut seen_vol);
            let vms = self.vms(&full, &volumes, &mut seen_vm, hosts);
            let probes = self.probes(&full, &vms);
            self.app_replication(&full, &volumes);
            if full.vms.is_empty() && !self.broken.contains(a.id.get_ref()) {
                self.push(
                    Diagnostic::error(
                        Code::MissingKey,
                        Some(a.id.span()),
                        format!("app `{}` has no VMs", a.id.get_ref()),
                    )
                    .with_hint("add at least one `[[app.vm]]` under this app"),
                );
            }
            let ok = self.error_count() == errors_before;
            if let (true, Some(site), true) = (id_ok, site, ok) {
                let id = AppId::new(a.id.get_ref().clone());
                self.spans.app.insert(
                    id.clone(),
                    AppSpans {
                        rto: a.rto_target_s.span(),
                        deps: dep_spans,
                    },
                );
                let a = full.app;
                out.push(App {
                    name: a.name.unwrap_or_else(|| id.to_string()),
                    id,
                    tier: a.tier.into_inner(),
                    depends_on: deps,
                    preferred_site: site,
                    failover: a.failover,
                    rto_target_s: a.rto_target_s.into_inner(),
                    rpo_target_s: a.rpo_target_s.into_inner(),
                    vms,
                    volumes,
                    probes,
                });
            }
        }
        out
    }

    pub(super) fn error_count(&self) -> usize {
        self.diags.iter().filter(|d| d.is_error()).count()
    }

    pub(super) fn volumes(&mut self, full: &RawAppFull, seen: &mut Seen<'_>) -> Vec<Volume> {
        let mut out = Vec::new();
        for (_, v) in &full.volumes {
            let id_ok = self.id_ok(&v.id, "volume") && seen.insert(&v.id, self.diags);
            let size_ok = self.nonzero_size(&v.size, "volume size");
            let replication = match (*v.replication.get_ref(), &v.lag_max_s, &v.lag_max_size) {
                (ReplicationMode::Sync, None, None) => Some(Replication::Sync),
                (ReplicationMode::Sync, lag_s, lag_size) => {
                    let span = lag_s
                        .as_ref()
                        .map(|s| s.span())
                        .or(lag_size.as_ref().map(|s| s.span()));
                    self.push(
                        Diagnostic::error(Code::Replication, span, format!("sync volume `{}` has a lag bound", v.id.get_ref()))
                            .with_hint("a sync volume never lags (RPO = 0); remove lag_max_s / lag_max_size, or set replication = \"async\""),
                    );
                    None
                }
                (ReplicationMode::Async, None, _) => {
                    self.push(
                        Diagnostic::error(Code::Replication, Some(v.replication.span()), format!("async volume `{}` has no lag bound", v.id.get_ref()))
                            .with_hint("add `lag_max_s = N`: how many seconds of writes the peer may be behind before the primary throttles"),
                    );
                    None
                }
                (ReplicationMode::Async, Some(lag_s), lag_size) => {
                    let s_ok = self.positive(lag_s, "lag_max_s");
                    let size_ok = lag_size
                        .as_ref()
                        .is_none_or(|s| self.nonzero_size(s, "lag_max_size"));
                    (s_ok && size_ok).then(|| Replication::Async {
                        lag_max_s: *lag_s.get_ref(),
                        lag_max_size: lag_size
                            .as_ref()
                            .map_or(DEFAULT_LAG_MAX_SIZE, |s| *s.get_ref()),
                    })
                }
            };
            if let (true, true, Some(replication)) = (id_ok, size_ok, replication) {
                out.push(Volume {
                    id: VolumeId::new(v.id.get_ref().clone()),
                    size: *v.size.get_ref(),
                    replication,
                });
            }
        }
        out
    }

    /// RPO targets against the volumes' replication modes.
    pub(super) fn app_replication(&mut self, full: &RawAppFull, volumes: &[Volume]) {
        let a = &full.app;
        let rpo = *a.rpo_target_s.get_ref();
        for v in volumes {
            if let Replication::Async { lag_max_s, .. } = v.replication {
                if rpo == 0 {
                    self.push(
                        Diagnostic::error(Code::Replication, Some(a.rpo_target_s.span()), format!("app `{}` promises RPO 0 but volume `{}` is async", a.id.get_ref(), v.id))
                            .with_hint("only sync replication gives RPO = 0: make the volume sync, or raise rpo_target_s to its lag bound"),
                    );
                } else if lag_max_s > rpo {
                    self.push(
                        Diagnostic::error(Code::Replication, Some(a.rpo_target_s.span()), format!("volume `{}` may lag {lag_max_s} s, more than the app's rpo_target_s of {rpo} s", v.id))
                            .with_hint("lower the volume's lag_max_s to the RPO target, or raise rpo_target_s"),
                    );
                }
            }
        }
    }

    pub(super) fn vms(
        &mut self,
        full: &RawAppFull,
        volumes: &[Volume],
        seen: &mut Seen<'_>,
        hosts: &HostEnvelope,
    ) -> Vec<Vm> {
        let app_id = full.app.id.get_ref();
        let app_vols: HashSet<&str> = full
            .volumes
            .iter()
            .map(|(_, v)| v.id.get_ref().as_str())
            .collect();
        let mut used_by: HashMap<String, String> = HashMap::new();
        let mut out = Vec::new();
        for (span, v) in &full.vms {
            let errors_before = self.error_count();
            let id_ok = self.id_ok(&v.id, "VM") && seen.insert(&v.id, self.diags);
            let cpu_ok = self.positive(&v.vcpus, "VM vcpus");
            let mem_ok = self.nonzero_size(&v.memory, "VM memory");
            if let Some(b) = &v.boot_estimate_s {
                self.positive(b, "boot_estimate_s");
            }
            let mut disks = Vec::new();
            for d in &v.disks {
                if !app_vols.contains(d.get_ref().as_str()) {
                    self.dangling(
                        d,
                        &format!("VM `{}` disk", v.id.get_ref()),
                        &format!("volume of app `{app_id}`"),
                        app_vols.iter().copied(),
                    );
                    continue;
                }
                if let Some(other) = used_by.insert(d.get_ref().clone(), v.id.get_ref().clone()) {
                    self.push(
                        Diagnostic::error(Code::BadValue, Some(d.span()), format!("volume `{}` is attached to VM `{other}` and to VM `{}`", d.get_ref(), v.id.get_ref()))
                            .with_hint("a replicated volume has exactly one writer; give each VM its own volume"),
                    );
                    continue;
                }
                disks.push(VolumeId::new(d.get_ref().clone()));
            }
            let boot = self.boot(v);
            if cpu_ok && mem_ok {
                self.fits_some_host(v, hosts);
            }
            if let (true, Some(boot)) = (id_ok && self.error_count() == errors_before, boot) {
                let id = VmId::new(v.id.get_ref().clone());
                self.spans.vm.insert(id.clone(), span.clone());
                out.push(Vm {
                    id,
                    vcpus: *v.vcpus.get_ref(),
                    memory: *v.memory.get_ref(),
                    boot,
                    disks,
                    boot_estimate_s: v.boot_estimate_s.as_ref().map(|b| *b.get_ref()),
                });
            }
        }
        for vol in volumes {
            if !used_by.contains_key(vol.id.as_str()) {
                let span = full
                    .volumes
                    .iter()
                    .find(|(_, v)| v.id.get_ref() == vol.id.as_str())
                    .map(|(s, _)| s.clone());
                self.push(
                    Diagnostic::warning(Code::Suspicious, span, format!("volume `{}` is not attached to any VM", vol.id))
                        .with_hint("it will be replicated but no VM uses it; list it in a VM's `disks` or remove it"),
                );
            }
        }
        out
    }

    pub(super) fn boot(&mut self, v: &crate::raw::RawVm) -> Option<Boot> {
        let kind = v.boot.as_ref().map_or(BootKind::Disk, |b| *b.get_ref());
        match kind {
            BootKind::Disk => {
                for (field, s) in [
                    ("kernel", &v.kernel),
                    ("initrd", &v.initrd),
                    ("cmdline", &v.cmdline),
                ] {
                    if let Some(s) = s {
                        self.push(
                            Diagnostic::error(Code::BadValue, Some(s.span()), format!("`{field}` is set but VM `{}` boots from disk", v.id.get_ref()))
                                .with_hint("set `boot = \"kernel\"` for direct kernel boot, or remove this key"),
                        );
                        return None;
                    }
                }
                if v.disks.is_empty() {
                    self.push(
                        Diagnostic::error(Code::MissingKey, Some(v.id.span()), format!("VM `{}` boots from disk but has no disks", v.id.get_ref()))
                            .with_hint("list its boot volume first in `disks`, or use `boot = \"kernel\"` with `kernel = \"/path/vmlinuz\"`"),
                    );
                    return None;
                }
                Some(Boot::Disk)
            }
            BootKind::Kernel => match &v.kernel {
                Some(k) if !k.get_ref().trim().is_empty() => Some(Boot::Kernel {
                    kernel: k.get_ref().clone(),
                    initrd: v.initrd.as_ref().map(|s| s.get_ref().clone()),
                    cmdline: v.cmdline.as_ref().map(|s| s.get_ref().clone()),
                }),
                _ => {
                    let span = v.boot.as_ref().map_or(v.id.span(), |b| b.span());
                    self.push(
                        Diagnostic::error(Code::MissingKey, Some(span), format!("VM `{}` uses kernel boot but names no kernel", v.id.get_ref()))
                            .with_hint("add `kernel = \"/path/to/vmlinuz\"` (and usually `initrd` and `cmdline`)"),
                    );
                    None
                }
            },
        }
    }

    pub(super) fn fits_some_host(&mut self, v: &crate::raw::RawVm, hosts: &HostEnvelope) {
        if hosts.is_empty() || self.broken_sections.contains("[[host]]") {
            return;
        }
        let cpus = *v.vcpus.get_ref();
        let mem = v.memory.get_ref().bytes();
        if hosts.fits(cpus, mem) {
            return;
        }
        let (max_cpu, max_mem) = hosts.largest();
        self.push(
            Diagnostic::error(
                Code::OversizeVm,
                Some(v.id.span()),
                format!(
                    "VM `{}` ({cpus} vCPUs, {}) is larger than every host (largest: {max_cpu} vCPUs, {})",
                    v.id.get_ref(),
                    human_size(mem),
                    human_size(max_mem)
                ),
            )
            .with_hint("a VM must fit on one host: shrink it, or add a larger host at both production sites"),
        );
    }

    /// `key` (a key of `kind` probes) set on a probe of another kind, `this`.
    pub(super) fn other_kinds_key(
        &mut self,
        span: std::ops::Range<usize>,
        key: &str,
        kind: &str,
        this: &str,
    ) {
        self.push(
            Diagnostic::error(
                Code::BadValue,
                Some(span),
                format!("`{key}` is for {kind} probes; this one is {this}"),
            )
            .with_hint(format!("remove `{key}`, or set `kind = \"{kind}\"`")),
        );
    }

    pub(super) fn probes(&mut self, full: &RawAppFull, vms: &[Vm]) -> Vec<Probe> {
        let vm_ids: Vec<&str> = full
            .vms
            .iter()
            .map(|(_, v)| v.id.get_ref().as_str())
            .collect();
        let mut out = Vec::new();
        for (span, p) in &full.probes {
            let vm = match &p.vm {
                Some(r) if vm_ids.contains(&r.get_ref().as_str()) => {
                    Some(VmId::new(r.get_ref().clone()))
                }
                Some(r) => {
                    self.dangling(
                        r,
                        "probe",
                        &format!("VM of app `{}`", full.app.id.get_ref()),
                        vm_ids.iter().copied(),
                    );
                    None
                }
                None if vm_ids.len() == 1 => vms.first().map(|v| v.id.clone()),
                None => {
                    if !vm_ids.is_empty() {
                        self.push(
                            Diagnostic::error(
                                Code::MissingKey,
                                Some(span.clone()),
                                "probe does not say which VM it checks",
                            )
                            .with_hint(format!(
                                "this app has several VMs; add `vm = \"{}\"` (or another)",
                                vm_ids[0]
                            )),
                        );
                    }
                    None
                }
            };
            let timeout_s = match &p.timeout_s {
                Some(t) if self.positive(t, "probe timeout_s") => *t.get_ref(),
                Some(_) => continue,
                None => DEFAULT_PROBE_TIMEOUT_S,
            };
            let probe = match *p.kind.get_ref() {
                ProbeKind::Tcp => {
                    if let Some(m) = &p.marker {
                        self.other_kinds_key(m.span(), "marker", "serial", "tcp");
                        continue;
                    }
                    match &p.port {
                        Some(port) if *port.get_ref() == 0 => {
                            self.push(
                                Diagnostic::error(
                                    Code::OutOfRange,
                                    Some(port.span()),
                                    "port 0 cannot be probed",
                                )
                                .with_hint("use the port the service listens on, 1 to 65535"),
                            );
                            continue;
                        }
                        Some(port) => {
                            let address = match &p.address {
                                Some(a) => match crate::model::probe_address_problem(a.get_ref()) {
                                    None => Some(a.get_ref().clone()),
                                    Some(why) => {
                                        self.push(
                                            Diagnostic::error(Code::BadValue, Some(a.span()), why)
                                                .with_hint("give a host name (svc.city.gov) or an IP address (10.20.0.5, fd00::5), without a port: the port is `port`"),
                                        );
                                        continue;
                                    }
                                },
                                None => None,
                            };
                            vm.map(|vm| Probe::Tcp {
                                vm,
                                port: *port.get_ref(),
                                timeout_s,
                                address,
                            })
                        }
                        None => {
                            self.push(
                                Diagnostic::error(
                                    Code::MissingKey,
                                    Some(span.clone()),
                                    "tcp probe has no `port`",
                                )
                                .with_hint("add `port = N`, the port the service listens on"),
                            );
                            continue;
                        }
                    }
                }
                ProbeKind::Serial => {
                    if let Some(a) = &p.address {
                        self.other_kinds_key(a.span(), "address", "tcp", "serial");
                        continue;
                    }
                    if let Some(port) = &p.port {
                        self.other_kinds_key(port.span(), "port", "tcp", "serial");
                        continue;
                    }
                    match &p.marker {
                        Some(m) if !m.get_ref().is_empty() => vm.map(|vm| Probe::Serial {
                            vm,
                            marker: m.get_ref().clone(),
                            timeout_s,
                        }),
                        _ => {
                            self.push(Diagnostic::error(Code::MissingKey, Some(span.clone()), "serial probe has no `marker`").with_hint("add `marker = \"...\"`, a line the guest prints on its serial console when ready"));
                            continue;
                        }
                    }
                }
            };
            out.extend(probe);
        }
        out
    }
}
