//! Per-entity checks and model construction: ids, duplicates, references, ranges, and
//! the rules of sites, orchestrator nodes, hosts ([`infra`]), apps, VMs, volumes and
//! probes ([`apps`]).

mod apps;
mod infra;

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::{AppSpans, Spans};
use crate::diag::{Code, Diagnostic};
use crate::ids::{ByteSize, SiteId, check_id};
use crate::model::{Host, SiteRole, Topology};
use crate::parse::closest;
use crate::raw::{RawTopology, S};

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
}
