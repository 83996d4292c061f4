//! The infrastructure's rules: the cluster section, timing, sites and their counts,
//! orchestrator nodes and the quorum they make, hosts, drill schedules.

use std::collections::HashMap;
use std::ops::Range;

use super::{Cx, Seen};
use crate::diag::{Code, Diagnostic};
use crate::ids::{AppId, HostId, NodeId, SiteId};
use crate::model::{App, Cluster, DrillSchedule, Host, OrchestratorNode, Site, SiteRole, Topology};
use crate::raw::S;
use crate::timing::Timing;

impl Cx<'_> {
    pub(super) fn cluster(&mut self, c: Option<(Range<usize>, crate::raw::RawCluster)>) -> Cluster {
        match c {
            Some((_, c)) => {
                if c.name.get_ref().trim().is_empty() {
                    self.push(
                        Diagnostic::error(
                            Code::BadValue,
                            Some(c.name.span()),
                            "cluster name is empty",
                        )
                        .with_hint("name the cluster; the name appears in every report"),
                    );
                }
                Cluster {
                    name: c.name.into_inner(),
                    description: c.description,
                    volumes: c.volumes.unwrap_or_default(),
                }
            }
            None => {
                self.push(
                    Diagnostic::error(Code::MissingKey, Some(0..0), "the `[cluster]` table is missing")
                        .with_hint("start the file with `[cluster]` and `name = \"...\"`; the name appears in every report"),
                );
                Cluster {
                    name: String::new(),
                    description: None,
                    volumes: crate::model::VolumeService::default(),
                }
            }
        }
    }

    pub(super) fn timing(&mut self, t: Option<(Range<usize>, Timing)>) -> Timing {
        let Some((span, t)) = t else {
            return Timing::default();
        };
        for p in t.check() {
            self.push(
                Diagnostic::error(
                    Code::Timing,
                    Some(span.clone()),
                    format!("[timing] {}", p.message),
                )
                .with_hint(p.hint),
            );
        }
        t
    }

    pub(super) fn sites(&mut self, raw: Vec<(Range<usize>, crate::raw::RawSite)>) -> Vec<Site> {
        let mut seen = Seen::new("site");
        let mut sites = Vec::new();
        let mut spans = Vec::new();
        for (span, s) in raw {
            if !self.id_ok(&s.id, "site") || !seen.insert(&s.id, self.diags) {
                continue;
            }
            let id = SiteId::new(s.id.get_ref().clone());
            self.spans.site.insert(id.clone(), span.clone());
            spans.push((s.role.span(), *s.role.get_ref()));
            sites.push(Site {
                name: s.name.unwrap_or_else(|| id.to_string()),
                id,
                role: s.role.into_inner(),
                location: s.location,
                notes: s.notes,
            });
        }
        if !self.broken_sections.contains("[[site]]") {
            self.site_counts(&sites, &spans);
        }
        sites
    }

    pub(super) fn site_counts(&mut self, sites: &[Site], spans: &[(Range<usize>, SiteRole)]) {
        let rules = [
            (
                SiteRole::Production,
                2,
                "production site(s)",
                "two",
                "describe both data centers as `[[site]]` with `role = \"production\"` (two places, three centers)",
            ),
            (
                SiteRole::Witness,
                1,
                "witness site(s)",
                "one",
                "add a small third site with `role = \"witness\"`: its Raft voter breaks ties when the two production sites cannot see each other",
            ),
        ];
        for (role, wanted, what, in_words, hint) in rules {
            let found: Vec<String> = sites
                .iter()
                .filter(|s| s.role == role)
                .map(|s| format!("`{}`", s.id))
                .collect();
            if found.len() == wanted {
                continue;
            }
            // The first site too many, else the first site of the file.
            let span = spans
                .iter()
                .filter(|(_, r)| *r == role)
                .nth(wanted)
                .or_else(|| spans.first())
                .map(|(s, _)| s.clone());
            let named = if found.is_empty() {
                String::new()
            } else {
                format!(" ({})", found.join(", "))
            };
            self.push(
                Diagnostic::error(
                    Code::SiteCount,
                    span.or(Some(0..0)),
                    format!(
                        "found {} {what}{named}; metrodr needs exactly {in_words}",
                        found.len()
                    ),
                )
                .with_hint(hint),
            );
        }
    }

    pub(super) fn site_ref(
        &mut self,
        r: &S<String>,
        what: &str,
        roles: &HashMap<SiteId, SiteRole>,
        need_production: bool,
    ) -> Option<SiteId> {
        match roles.get(r.get_ref().as_str()) {
            Some(role) => {
                if need_production && *role != SiteRole::Production {
                    self.push(
                        Diagnostic::error(
                            Code::DanglingRef,
                            Some(r.span()),
                            format!(
                                "{what} is the witness site `{}`, which runs no VMs",
                                r.get_ref()
                            ),
                        )
                        .with_hint("use one of the two production sites"),
                    );
                    None
                } else {
                    Some(SiteId::new(r.get_ref().clone()))
                }
            }
            None => {
                if !self.broken_sections.contains("[[site]]") {
                    self.dangling(r, what, "site", roles.keys().map(SiteId::as_str));
                }
                None
            }
        }
    }

    pub(super) fn nodes(
        &mut self,
        raw: Vec<(Range<usize>, crate::raw::RawNode)>,
        roles: &HashMap<SiteId, SiteRole>,
    ) -> Vec<OrchestratorNode> {
        let mut seen = Seen::new("orchestrator");
        let mut addrs = Seen::new("orchestrator address");
        let mut out = Vec::new();
        let had_any = !raw.is_empty();
        for (_, n) in raw {
            let id_ok = self.id_ok(&n.id, "orchestrator") && seen.insert(&n.id, self.diags);
            let site = self.site_ref(&n.site, "orchestrator site", roles, false);
            let addr_ok =
                self.addr_ok(&n.addr, "orchestrator addr") && addrs.insert(&n.addr, self.diags);
            if !(id_ok && site.is_some() && addr_ok) {
                self.reject(&n.id, "[[orchestrator]]");
            }
            if let (true, Some(site), true) = (id_ok, site, addr_ok) {
                out.push(OrchestratorNode {
                    id: NodeId::new(n.id.into_inner()),
                    site,
                    addr: n.addr.into_inner(),
                });
            }
        }
        if !self.broken_sections.contains("[[orchestrator]]") && roles.len() == 3 {
            self.quorum(&out, roles, had_any);
        }
        out
    }

    /// Every site holds a voter, and no single site holds enough voters that losing it
    /// loses the majority.
    pub(super) fn quorum(
        &mut self,
        nodes: &[OrchestratorNode],
        roles: &HashMap<SiteId, SiteRole>,
        had_any: bool,
    ) {
        if !had_any {
            self.push(
                Diagnostic::error(Code::Quorum, Some(0..0), "no `[[orchestrator]]` nodes are defined")
                    .with_hint("define one orchestrator per site (site A, site B, witness): `[[orchestrator]]` with id, site and addr"),
            );
            return;
        }
        let total = nodes.len();
        let majority = total / 2 + 1;
        let mut sites: Vec<&SiteId> = roles.keys().collect();
        sites.sort();
        for site in sites {
            let here = nodes.iter().filter(|n| &n.site == site).count();
            if here == 0 {
                self.push(
                    Diagnostic::error(
                        Code::Quorum,
                        self.spans.site.get(site).cloned(),
                        format!("site `{site}` has no orchestrator node"),
                    )
                    .with_hint("every site needs a Raft voter, or losing one of the other two loses the quorum"),
                );
            } else if total - here < majority {
                self.push(
                    Diagnostic::error(
                        Code::Quorum,
                        self.spans.site.get(site).cloned(),
                        format!(
                            "site `{site}` holds {here} of {total} orchestrator voters: losing it leaves {} (a majority needs {majority})",
                            total - here
                        ),
                    )
                    .with_hint("spread the voters so that any two sites together hold a majority, e.g. 1 + 1 + 1"),
                );
            }
        }
    }

    pub(super) fn addr_ok(&mut self, a: &S<String>, what: &str) -> bool {
        let s = a.get_ref();
        let port = s.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
        match port {
            Some((h, Ok(p))) if !h.is_empty() && p != 0 => true,
            _ => {
                self.push(
                    Diagnostic::error(Code::BadValue, Some(a.span()), format!("{what} {s:?} is not `host:port`"))
                        .with_hint("write an address with a port from 1 to 65535, e.g. \"10.0.1.5:7400\" or \"[fd00::5]:7400\""),
                );
                false
            }
        }
    }

    pub(super) fn hosts(
        &mut self,
        raw: Vec<(Range<usize>, crate::raw::RawHost)>,
        roles: &HashMap<SiteId, SiteRole>,
    ) -> Vec<Host> {
        let mut seen = Seen::new("host");
        let mut agents = Seen::new("agent address");
        let mut out = Vec::new();
        for (span, h) in raw {
            let id_ok = self.id_ok(&h.id, "host") && seen.insert(&h.id, self.diags);
            let site = self.site_ref(&h.site, "host site", roles, true);
            let addr_ok = self.addr_ok(&h.agent_addr, "agent_addr")
                && agents.insert(&h.agent_addr, self.diags);
            let uri_ok = self.uri_ok(&h.libvirt_uri);
            let cpu_ok = self.positive(&h.vcpus, "host vcpus");
            let mem_ok = self.nonzero_size(&h.memory, "host memory");
            if !(id_ok && site.is_some() && addr_ok && uri_ok && cpu_ok && mem_ok) {
                self.reject(&h.id, "[[host]]");
            }
            if let (true, Some(site), true, true, true, true) =
                (id_ok, site, addr_ok, uri_ok, cpu_ok, mem_ok)
            {
                let id = HostId::new(h.id.into_inner());
                self.spans.host.insert(id.clone(), span);
                out.push(Host {
                    id,
                    site,
                    libvirt_uri: h.libvirt_uri.into_inner(),
                    agent_addr: h.agent_addr.into_inner(),
                    vcpus: h.vcpus.into_inner(),
                    memory: h.memory.into_inner(),
                });
            }
        }
        out
    }

    pub(super) fn uri_ok(&mut self, u: &S<String>) -> bool {
        let s = u.get_ref();
        let scheme = s.split_once("://").map(|(sch, _)| sch);
        let ok = scheme.is_some_and(|sch| {
            let driver = sch.split('+').next().unwrap_or("");
            matches!(driver, "qemu" | "test" | "kvm")
                && sch.chars().all(|c| c.is_ascii_alphanumeric() || c == '+')
        });
        if !ok {
            self.push(
                Diagnostic::error(Code::BadValue, Some(u.span()), format!("libvirt_uri {s:?} is not a libvirt URI metrodr can drive"))
                    .with_hint("use a QEMU or test driver URI such as \"qemu:///system\", \"qemu+tls://host/system\" or \"test:///default\""),
            );
        }
        ok
    }

    /// A production site without hosts can take over nothing.
    /// `[[drill]]`: unique ids, known apps, only test drills, a valid interval.
    pub(super) fn drills(
        &mut self,
        raw: Vec<(Range<usize>, crate::raw::RawDrill)>,
        apps: &[App],
    ) -> Vec<DrillSchedule> {
        let mut seen = Seen::new("drill");
        let mut out = Vec::new();
        for (_, d) in raw {
            let id_ok = self.id_ok(&d.id, "drill") && seen.insert(&d.id, self.diags);
            let kind_ok = match d.kind.get_ref().as_str() {
                "test" => true,
                k @ ("switchover" | "site-loss") => {
                    self.push(
                        Diagnostic::error(
                            Code::BadValue,
                            Some(d.kind.span()),
                            format!("a {k} drill cannot be scheduled: it disrupts production"),
                        )
                        .with_hint(format!(
                            "schedule `kind = \"test\"` drills; run {k} drills by hand with `metrodr drill run --kind {k}`"
                        )),
                    );
                    false
                }
                other => {
                    self.push(
                        Diagnostic::error(
                            Code::BadValue,
                            Some(d.kind.span()),
                            format!("{other:?} is not a drill kind"),
                        )
                        .with_hint("only `kind = \"test\"` drills are scheduled"),
                    );
                    false
                }
            };
            let mut apps_ok = true;
            for a in &d.apps {
                if !apps.iter().any(|x| x.id.as_str() == a.get_ref()) {
                    self.dangling(a, "drill", "app", apps.iter().map(|x| x.id.as_str()));
                    apps_ok = false;
                }
            }
            let every = match crate::model::parse_every(d.every.get_ref()) {
                Ok(s) => Some(s),
                Err(why) => {
                    self.push(
                        Diagnostic::error(
                            Code::BadValue,
                            Some(d.every.span()),
                            format!("drill interval {why}"),
                        )
                        .with_hint("write a number and a unit: \"90s\", \"15m\", \"12h\", \"7d\" or \"2w\" (1 s to 365 days)"),
                    );
                    None
                }
            };
            if let (true, true, true, Some(every_s)) = (id_ok, kind_ok, apps_ok, every) {
                out.push(DrillSchedule {
                    id: d.id.into_inner(),
                    apps: d
                        .apps
                        .into_iter()
                        .map(|a| AppId::new(a.into_inner()))
                        .collect(),
                    every_s,
                });
            }
        }
        out
    }

    pub(super) fn hosts_per_site(&mut self, topo: &Topology) {
        if self.broken_sections.contains("[[host]]") {
            return;
        }
        for site in topo.production_sites() {
            if topo.hosts_at(&site.id).next().is_none() {
                self.push(
                    Diagnostic::error(Code::Capacity, self.spans.site.get(&site.id).cloned(), format!("production site `{}` has no hosts", site.id))
                        .with_hint("add `[[host]]` entries with this site; a site without hosts cannot run or take over anything"),
                );
            }
        }
    }
}
