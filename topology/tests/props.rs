//! Property tests: generated valid topologies validate and round-trip; each kind of
//! mutation makes validation fail with the matching diagnostic; and no input at all
//! (random bytes, random edits of a valid file) makes the parser panic.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use topology::generate::{GenSpec, generate};
use topology::render::to_toml;
use topology::{ByteSize, Code, SiteRole, SourceMap, Topology, VolumeId, check_bytes, check_str};

fn spec() -> impl Strategy<Value = GenSpec> {
    (any::<u64>(), 2usize..24, 0usize..40, 1u32..6).prop_map(|(seed, hosts, apps, tiers)| GenSpec {
        hosts,
        apps,
        tiers,
        seed,
    })
}

/// Every diagnostic must render and serialize without panicking, and every error must
/// point at a line.
fn assert_reportable(text: &str, r: &topology::Report) {
    let map = SourceMap::new(text);
    let _ = topology::diag::render_human(&r.diagnostics, &map, "t.toml", false);
    for d in &r.diagnostics {
        let _ = d.to_json(&map);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn generated_topologies_validate_and_round_trip(spec in spec()) {
        let topo = generate(spec);
        let text = to_toml(&topo);
        let r = check_str(&text);
        prop_assert!(r.is_valid(), "seed {}: {:?}", spec.seed, r.diagnostics);
        prop_assert_eq!(r.warnings(), 0, "{:?}", r.diagnostics);
        prop_assert_eq!(r.topology.as_ref(), Some(&topo));
    }
}

/// One way to break a valid topology, with the diagnostic code it must produce.
#[derive(Debug, Clone, Copy)]
enum Mutation {
    DuplicateVmId,
    DanglingDependency,
    SelfDependency,
    MutualDependency,
    ZeroVolumeSize,
    ZeroVcpus,
    OversizeVm,
    NoWitness,
    OneProductionSite,
    HostAtUnknownSite,
    RtoBelowBudget,
    DiskOfAnotherApp,
    LeaseShorterThanElection,
    CapacityShortfall,
    TypoInKey,
    AsyncWithoutLag,
}

impl Mutation {
    const ALL: [Mutation; 16] = [
        Mutation::DuplicateVmId,
        Mutation::DanglingDependency,
        Mutation::SelfDependency,
        Mutation::MutualDependency,
        Mutation::ZeroVolumeSize,
        Mutation::ZeroVcpus,
        Mutation::OversizeVm,
        Mutation::NoWitness,
        Mutation::OneProductionSite,
        Mutation::HostAtUnknownSite,
        Mutation::RtoBelowBudget,
        Mutation::DiskOfAnotherApp,
        Mutation::LeaseShorterThanElection,
        Mutation::CapacityShortfall,
        Mutation::TypoInKey,
        Mutation::AsyncWithoutLag,
    ];

    fn expected(self) -> Code {
        match self {
            Mutation::DuplicateVmId => Code::DuplicateId,
            Mutation::DanglingDependency
            | Mutation::HostAtUnknownSite
            | Mutation::DiskOfAnotherApp => Code::DanglingRef,
            Mutation::SelfDependency | Mutation::MutualDependency => Code::DependencyCycle,
            Mutation::ZeroVolumeSize | Mutation::ZeroVcpus => Code::OutOfRange,
            Mutation::OversizeVm => Code::OversizeVm,
            Mutation::NoWitness | Mutation::OneProductionSite => Code::SiteCount,
            Mutation::RtoBelowBudget => Code::RtoBudget,
            Mutation::LeaseShorterThanElection => Code::Timing,
            Mutation::CapacityShortfall => Code::Capacity,
            Mutation::TypoInKey => Code::UnknownKey,
            Mutation::AsyncWithoutLag => Code::Replication,
        }
    }

    /// Apply to a model (and/or its text). Returns None when this topology offers
    /// nothing to mutate (e.g. no apps).
    fn apply(self, mut t: Topology, pick: usize) -> Option<String> {
        let n = t.apps.len();
        match self {
            Mutation::DuplicateVmId => {
                let vms: Vec<(usize, usize)> = t
                    .apps
                    .iter()
                    .enumerate()
                    .flat_map(|(a, app)| (0..app.vms.len()).map(move |v| (a, v)))
                    .collect();
                if vms.len() < 2 {
                    return None;
                }
                let (a1, v1) = vms[pick % vms.len()];
                let (a2, v2) = vms[(pick + 1) % vms.len()];
                let id = t.apps[a1].vms[v1].id.clone();
                t.apps[a2].vms[v2].id = id;
            }
            Mutation::DanglingDependency => {
                if n == 0 {
                    return None;
                }
                t.apps[pick % n]
                    .depends_on
                    .push(topology::AppId::new("no-such-app"));
            }
            Mutation::SelfDependency => {
                if n == 0 {
                    return None;
                }
                let id = t.apps[pick % n].id.clone();
                t.apps[pick % n].depends_on.push(id);
            }
            Mutation::MutualDependency => {
                // Two apps of one tier that depend on each other.
                let (i, j) = (0..n)
                    .flat_map(|i| (0..n).map(move |j| (i, j)))
                    .find(|&(i, j)| i < j && t.apps[i].tier == t.apps[j].tier)?;
                let (ai, aj) = (t.apps[i].id.clone(), t.apps[j].id.clone());
                t.apps[i].depends_on.push(aj);
                t.apps[j].depends_on.push(ai);
            }
            Mutation::ZeroVolumeSize => {
                let app = t.apps.get_mut(pick % n.max(1))?;
                app.volumes.first_mut()?.size = ByteSize(0);
            }
            Mutation::ZeroVcpus => {
                let app = t.apps.get_mut(pick % n.max(1))?;
                app.vms.first_mut()?.vcpus = 0;
            }
            Mutation::OversizeVm => {
                let max = t.hosts.iter().map(|h| h.vcpus).max()?;
                let app = t.apps.get_mut(pick % n.max(1))?;
                app.vms.first_mut()?.vcpus = max + 1;
            }
            Mutation::NoWitness => {
                t.sites
                    .iter_mut()
                    .find(|s| s.role == SiteRole::Witness)?
                    .role = SiteRole::Production;
            }
            Mutation::OneProductionSite => {
                t.sites
                    .iter_mut()
                    .find(|s| s.role == SiteRole::Production)?
                    .role = SiteRole::Witness;
            }
            Mutation::HostAtUnknownSite => {
                let h = pick % t.hosts.len();
                t.hosts[h].site = topology::SiteId::new("nowhere");
            }
            Mutation::RtoBelowBudget => {
                let app = t.apps.get_mut(pick % n.max(1))?;
                app.rto_target_s = 1;
            }
            Mutation::DiskOfAnotherApp => {
                if n < 2 {
                    return None;
                }
                let other: VolumeId = t.apps[(pick + 1) % n].volumes.first()?.id.clone();
                t.apps[pick % n].vms.first_mut()?.disks.push(other);
            }
            Mutation::LeaseShorterThanElection => {
                t.timing.lease_ms = t.timing.raft_election_max_ms;
            }
            Mutation::CapacityShortfall => {
                if n == 0 {
                    return None;
                }
                // Site B's hosts keep just enough room for the biggest VM, so site B
                // cannot take over site A's apps.
                let biggest_cpu = t.apps.iter().flat_map(|a| &a.vms).map(|v| v.vcpus).max()?;
                let biggest_mem = t.apps.iter().flat_map(|a| &a.vms).map(|v| v.memory).max()?;
                let site_b = t.production_sites().nth(1)?.id.clone();
                let a_has_vms = t.apps.iter().any(|a| a.preferred_site != site_b);
                let b_hosts = t.hosts.iter().filter(|h| h.site == site_b).count();
                if !a_has_vms || b_hosts > 1 {
                    return None;
                }
                for h in t.hosts.iter_mut().filter(|h| h.site == site_b) {
                    h.vcpus = biggest_cpu;
                    h.memory = biggest_mem;
                }
                // Site B's own apps alone may already fill it; that is a shortfall too.
                let total: u32 = t.apps.iter().flat_map(|a| &a.vms).map(|v| v.vcpus).sum();
                if total <= biggest_cpu {
                    return None;
                }
            }
            Mutation::TypoInKey => {
                let text = to_toml(&t);
                return text.find("\nvcpus = ").map(|at| {
                    let mut s = text.clone();
                    s.replace_range(at..at + 9, "\nvcpu = ");
                    s
                });
            }
            Mutation::AsyncWithoutLag => {
                let text = to_toml(&t);
                let at = text.find("  lag_max_s = ")?;
                let end = at + text[at..].find('\n')? + 1;
                let mut s = text.clone();
                s.replace_range(at..end, "");
                return Some(s);
            }
        }
        Some(to_toml(&t))
    }
}

/// Cases per fuzz property: 256 in CI, `PROPTEST_CASES=N` for a longer run.
fn fuzz_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(256), ..ProptestConfig::default() })]

    #[test]
    fn each_mutation_fails_with_its_diagnostic(spec in spec(), m in 0usize..Mutation::ALL.len(), pick in any::<usize>()) {
        let mutation = Mutation::ALL[m];
        let topo = generate(spec);
        let Some(text) = mutation.apply(topo, pick) else {
            return Ok(()); // nothing to mutate in this topology
        };
        let r = check_str(&text);
        assert_reportable(&text, &r);
        prop_assert!(!r.is_valid(), "{:?} (seed {}) was accepted", mutation, spec.seed);
        prop_assert!(
            r.diagnostics.iter().any(|d| d.is_error() && d.code == mutation.expected()),
            "{:?} (seed {}): expected {}, got {:?}", mutation, spec.seed, mutation.expected(),
            r.diagnostics.iter().map(|d| (d.code, d.message.clone())).collect::<Vec<_>>()
        );
        for d in r.diagnostics.iter().filter(|d| d.is_error()) {
            prop_assert!(d.span.is_some(), "{:?}: error without a line: {}", mutation, d.message);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let r = check_bytes(&bytes);
        assert_reportable(&String::from_utf8_lossy(&bytes), &r);
    }

    #[test]
    fn toml_like_noise_never_panics(src in "[\\[\\]a-z_=\"0-9\n .{},#-]{0,600}") {
        let r = check_str(&src);
        assert_reportable(&src, &r);
    }

    #[test]
    fn random_edits_of_a_valid_file_never_panic(
        edits in proptest::collection::vec((any::<usize>(), 0usize..40, "[ -~\n]{0,12}"), 1..6)
    ) {
        let mut text = include_str!("../../examples/city-egov.toml").to_string();
        for (at, del, ins) in edits {
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) { at -= 1; }
            let mut end = (at + del).min(text.len());
            while !text.is_char_boundary(end) { end -= 1; }
            text.replace_range(at..end, &ins);
        }
        let r = check_str(&text);
        assert_reportable(&text, &r);
        // Whatever survives the edits and is still valid must round-trip.
        if let Some(t) = &r.topology {
            let again = check_str(&to_toml(t)).topology;
            prop_assert_eq!(again.as_ref(), Some(t));
        }
    }
}

#[test]
fn the_examples_are_valid_without_warnings_and_round_trip() {
    for (name, text) in [
        ("city-egov", include_str!("../../examples/city-egov.toml")),
        ("minimal", include_str!("../../examples/minimal.toml")),
    ] {
        let r = check_str(text);
        assert!(r.is_valid(), "{name}: {:?}", r.diagnostics);
        assert_eq!(r.diagnostics, vec![], "{name}");
        let t = r.topology.unwrap();
        assert_eq!(check_str(&to_toml(&t)).topology, Some(t), "{name}");
    }
}

#[test]
fn the_city_example_plans_with_capacity_to_spare_at_both_sites() {
    let t = check_str(include_str!("../../examples/city-egov.toml"))
        .topology
        .unwrap();
    let p = topology::plan::plan(&t);
    assert!(p.unplaced.is_empty() && p.spilled.is_empty());
    assert_eq!(p.placements.len(), t.vm_count());
    assert_eq!(p.failover.len(), 2);
    for f in &p.failover {
        assert!(f.ok, "{} cannot take over {}", f.survivor, f.lost);
        // Every VM of the lost site has somewhere to go, at the survivor.
        let lost = p.placements.iter().filter(|pl| pl.site == f.lost).count();
        assert_eq!(f.moves.len(), lost);
        assert!(f.moves.iter().all(|m| m.site == f.survivor));
    }
    // Anti-affinity: the two VMs of each two-VM app start on different hosts.
    for app in t.apps.iter().filter(|a| a.vms.len() == 2) {
        let hosts: Vec<_> = p
            .placements
            .iter()
            .filter(|pl| pl.app == app.id)
            .map(|pl| &pl.host)
            .collect();
        assert_ne!(hosts[0], hosts[1], "{}", app.id);
    }
}

/// The mutation property above skips topologies a mutation cannot apply to; this makes
/// sure no mutation is skipped every time (which would make its check vacuous).
#[test]
fn every_mutation_applies_to_some_generated_topology() {
    for m in Mutation::ALL {
        let applied = (0..24u64).filter_map(|seed| {
            let spec = GenSpec {
                hosts: 2,
                apps: 20,
                tiers: 3,
                seed,
            };
            m.apply(generate(spec), seed as usize)
        });
        let mut count = 0;
        for text in applied {
            count += 1;
            let r = check_str(&text);
            assert!(
                r.diagnostics
                    .iter()
                    .any(|d| d.is_error() && d.code == m.expected()),
                "{m:?}"
            );
        }
        assert!(count > 0, "{m:?} never applied");
    }
}
