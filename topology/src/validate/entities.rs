//! Per-entity checks and model construction: ids, duplicates, references, ranges, and
//! the rules of sites, orchestrator nodes, hosts, apps, VMs, volumes and probes.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::{AppSpans, Spans};
use crate::diag::{Code, Diagnostic};
use crate::ids::{AppId, ByteSize, HostId, NodeId, SiteId, VmId, VolumeId, check_id, human_size};
use crate::model::{
    App, Boot, BootKind, Cluster, DEFAULT_LAG_MAX_SIZE, DEFAULT_PROBE_TIMEOUT_S, DrillSchedule,
    Host, OrchestratorNode, Probe, ProbeKind, Replication, ReplicationMode, Site, SiteRole,
    Topology, Vm, Volume,
};
use crate::parse::closest;
use crate::raw::{RawAppFull, RawTopology, S};
use crate::timing::Timing;

/// Build the model from every element that deserialized, reporting entity problems.
/// The returned model may be partial when there were errors.
pub(crate) fn build(raw: RawTopology, diags: &mut Vec<Diagnostic>) -> (Topology, Spans) {
    let mut cx = Cx {
        diags,
        broken: raw.broken_ids,
        broken_sections: raw.broken_sections,
        spans: Spans::default(),
    };
    let cluster = cx.cluster(raw.cluster);
    let timing = cx.timing(raw.timing);
    let sites = cx.sites(raw.sites);
    let site_roles: HashMap<SiteId, SiteRole> =
        sites.iter().map(|s| (s.id.clone(), s.role)).collect();
    let orchestrators = cx.nodes(raw.nodes, &site_roles);
    let hosts = cx.hosts(raw.hosts, &site_roles);
    let apps = cx.apps(raw.apps, &site_roles, &HostEnvelope::new(&hosts));
    let drills = cx.drills(raw.drills, &apps);
    let topo = Topology {
        cluster,
        timing,
        sites,
        orchestrators,
        hosts,
        apps,
        drills,
    };
    cx.hosts_per_site(&topo);
    (topo, cx.spans)
}

/// Answers "does a VM of c vCPUs and m bytes fit on some host?" in O(log hosts):
/// hosts sorted by vCPUs (descending) with the running maximum of their memory.
struct HostEnvelope {
    /// (vcpus, largest memory among hosts with at least that many vCPUs), vcpus descending.
    steps: Vec<(u32, u64)>,
}

impl HostEnvelope {
    fn new(hosts: &[Host]) -> Self {
        let mut v: Vec<(u32, u64)> = hosts.iter().map(|h| (h.vcpus, h.memory.bytes())).collect();
        v.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
        let mut max_mem = 0;
        let steps = v
            .into_iter()
            .map(|(c, m)| {
                max_mem = max_mem.max(m);
                (c, max_mem)
            })
            .collect();
        HostEnvelope { steps }
    }

    fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    fn fits(&self, vcpus: u32, mem: u64) -> bool {
        // Number of hosts with at least `vcpus` vCPUs (a prefix, as vcpus descend).
        let n = self.steps.partition_point(|&(c, _)| c >= vcpus);
        n > 0 && self.steps[n - 1].1 >= mem
    }

    /// Most vCPUs of any host, most memory of any host.
    fn largest(&self) -> (u32, u64) {
        (
            self.steps.first().map_or(0, |s| s.0),
            self.steps.last().map_or(0, |s| s.1),
        )
    }
}

struct Cx<'d> {
    diags: &'d mut Vec<Diagnostic>,
    broken: HashSet<String>,
    broken_sections: HashSet<&'static str>,
    spans: Spans,
}

/// Tracks ids of one kind to report duplicates with the place of the first one.
struct Seen<'a> {
    kind: &'a str,
    first: HashMap<String, Range<usize>>,
}

impl<'a> Seen<'a> {
    fn new(kind: &'a str) -> Self {
        Seen {
            kind,
            first: HashMap::new(),
        }
    }

    /// True if the id is new; reports a duplicate otherwise.
    fn insert(&mut self, id: &S<String>, diags: &mut Vec<Diagnostic>) -> bool {
        if let Some(first) = self.first.get(id.get_ref()) {
            diags.push(
                Diagnostic::error(
                    Code::DuplicateId,
                    Some(id.span()),
                    format!("{} id `{}` is used twice", self.kind, id.get_ref()),
                )
                .with_related(first.clone(), "first defined here")
                .with_hint(format!(
                    "every {} needs its own id; rename one of them",
                    self.kind
                )),
            );
            false
        } else {
            self.first.insert(id.get_ref().clone(), id.span());
            true
        }
    }
}

impl Cx<'_> {
    fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// Check an id's form; returns false (and reports) when it is malformed.
    fn id_ok(&mut self, id: &S<String>, kind: &str) -> bool {
        match check_id(id.get_ref()) {
            Ok(()) => true,
            Err(why) => {
                self.push(
                    Diagnostic::error(
                        Code::BadId,
                        Some(id.span()),
                        format!("bad {kind} id {:?}: {why}", id.get_ref()),
                    )
                    .with_hint("ids become libvirt domain and file names: use e.g. \"east-db-1\""),
                );
                false
            }
        }
    }

    /// Report a reference to an unknown entity, unless the entity exists but had its own
    /// errors (then it was already reported).
    fn dangling<'k>(
        &mut self,
        r: &S<String>,
        what: &str,
        kind: &str,
        known: impl Iterator<Item = &'k str>,
    ) {
        if self.broken.contains(r.get_ref()) {
            return;
        }
        let known: Vec<&str> = known.collect();
        let mut d = Diagnostic::error(
            Code::DanglingRef,
            Some(r.span()),
            format!("{what} refers to unknown {kind} `{}`", r.get_ref()),
        );
        d = match closest(r.get_ref(), known.iter().copied()) {
            Some(best) => d.with_hint(format!("did you mean `{best}`?")),
            None if known.is_empty() => {
                d.with_hint(format!("no {kind} is defined; define it first"))
            }
            None if known.len() <= 8 => {
                d.with_hint(format!("known {kind}s: `{}`", known.join("`, `")))
            }
            None => d.with_hint(format!("define a {kind} with this id, or fix the spelling")),
        };
        self.push(d);
    }

    /// An entity left out of the model because of its own errors: checks that count
    /// entities of its kind (hosts per site, voters per site) would mislead, and
    /// references to it were already explained.
    fn reject(&mut self, id: &S<String>, section: &'static str) {
        self.broken.insert(id.get_ref().clone());
        self.broken_sections.insert(section);
    }

    fn positive(&mut self, v: &S<u32>, what: &str) -> bool {
        if *v.get_ref() == 0 {
            self.push(
                Diagnostic::error(Code::OutOfRange, Some(v.span()), format!("{what} is 0"))
                    .with_hint(format!("{what} must be at least 1")),
            );
            false
        } else {
            true
        }
    }

    fn nonzero_size(&mut self, v: &S<ByteSize>, what: &str) -> bool {
        if v.get_ref().bytes() == 0 {
            self.push(
                Diagnostic::error(Code::OutOfRange, Some(v.span()), format!("{what} is zero"))
                    .with_hint(format!("{what} must be larger than zero, e.g. \"1GiB\"")),
            );
            false
        } else {
            true
        }
    }

    fn cluster(&mut self, c: Option<(Range<usize>, crate::raw::RawCluster)>) -> Cluster {
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

    fn timing(&mut self, t: Option<(Range<usize>, Timing)>) -> Timing {
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

    fn sites(&mut self, raw: Vec<(Range<usize>, crate::raw::RawSite)>) -> Vec<Site> {
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

    fn site_counts(&mut self, sites: &[Site], spans: &[(Range<usize>, SiteRole)]) {
        let prod: Vec<&Site> = sites
            .iter()
            .filter(|s| s.role == SiteRole::Production)
            .collect();
        let wit: Vec<&Site> = sites
            .iter()
            .filter(|s| s.role == SiteRole::Witness)
            .collect();
        let list = |v: &[&Site]| {
            v.iter()
                .map(|s| format!("`{}`", s.id))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if prod.len() != 2 {
            let span = spans
                .iter()
                .filter(|(_, r)| *r == SiteRole::Production)
                .nth(2)
                .or_else(|| spans.first())
                .map(|(s, _)| s.clone());
            self.push(
                Diagnostic::error(
                    Code::SiteCount,
                    span.or(Some(0..0)),
                    format!(
                        "found {} production site(s){}; metrodr needs exactly two",
                        prod.len(),
                        if prod.is_empty() { String::new() } else { format!(" ({})", list(&prod)) }
                    ),
                )
                .with_hint("describe both data centers as `[[site]]` with `role = \"production\"` (two places, three centers)"),
            );
        }
        if wit.len() != 1 {
            let span = spans
                .iter()
                .filter(|(_, r)| *r == SiteRole::Witness)
                .nth(1)
                .or_else(|| spans.first())
                .map(|(s, _)| s.clone());
            self.push(
                Diagnostic::error(
                    Code::SiteCount,
                    span.or(Some(0..0)),
                    format!(
                        "found {} witness site(s){}; metrodr needs exactly one",
                        wit.len(),
                        if wit.is_empty() { String::new() } else { format!(" ({})", list(&wit)) }
                    ),
                )
                .with_hint("add a small third site with `role = \"witness\"`: its Raft voter breaks ties when the two production sites cannot see each other"),
            );
        }
    }

    fn site_ref(
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

    fn nodes(
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
    fn quorum(
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

    fn addr_ok(&mut self, a: &S<String>, what: &str) -> bool {
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

    fn hosts(
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

    fn uri_ok(&mut self, u: &S<String>) -> bool {
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
    fn drills(
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

    fn hosts_per_site(&mut self, topo: &Topology) {
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

    fn apps(
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

    fn error_count(&self) -> usize {
        self.diags.iter().filter(|d| d.is_error()).count()
    }

    fn volumes(&mut self, full: &RawAppFull, seen: &mut Seen<'_>) -> Vec<Volume> {
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
    fn app_replication(&mut self, full: &RawAppFull, volumes: &[Volume]) {
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

    fn vms(
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

    fn boot(&mut self, v: &crate::raw::RawVm) -> Option<Boot> {
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

    fn fits_some_host(&mut self, v: &crate::raw::RawVm, hosts: &HostEnvelope) {
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
    fn other_kinds_key(&mut self, span: std::ops::Range<usize>, key: &str, kind: &str, this: &str) {
        self.push(
            Diagnostic::error(
                Code::BadValue,
                Some(span),
                format!("`{key}` is for {kind} probes; this one is {this}"),
            )
            .with_hint(format!("remove `{key}`, or set `kind = \"{kind}\"`")),
        );
    }

    fn probes(&mut self, full: &RawAppFull, vms: &[Vm]) -> Vec<Probe> {
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
