//! Seeded generator of valid topologies of any size, for benchmarks, property tests and
//! `metrodr topology generate`. The same spec and seed always give the same topology.
//!
//! Uses its own SplitMix64 rather than `rand` so that a seed printed by a failing test
//! replays the same topology with any version of any dependency.

use crate::ids::{AppId, ByteSize, GIB, HostId, NodeId, SiteId, VmId, VolumeId};
use crate::model::{
    App, Boot, Cluster, FailoverPolicy, Host, OrchestratorNode, Probe, Replication, Site, SiteRole,
    Topology, Vm, Volume,
};
use crate::timing::Timing;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenSpec {
    /// Production hosts in total (split evenly over the two sites; at least 2).
    pub hosts: usize,
    pub apps: usize,
    /// Number of tiers (apps are spread over tiers 1..=tiers).
    pub tiers: u32,
    pub seed: u64,
}

impl Default for GenSpec {
    fn default() -> Self {
        GenSpec {
            hosts: 4,
            apps: 12,
            tiers: 4,
            seed: 1,
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and stable forever.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi` (slightly biased for huge ranges; fine for test data).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// Longest boot estimate the generator uses; RTO targets are derived from it.
const BOOT_MAX_S: u64 = 30;

/// Generate a valid topology: two production sites and a witness, one orchestrator per
/// site, hosts sized so that either site alone can run every app, apps spread over
/// tiers with dependencies only on lower tiers, and RTO targets the budget allows.
pub fn generate(spec: GenSpec) -> Topology {
    let mut rng = SplitMix64::new(spec.seed);
    let tiers = spec.tiers.max(1);
    let sites = vec![
        site("site-a", "Site A", SiteRole::Production),
        site("site-b", "Site B", SiteRole::Production),
        site("witness", "Witness", SiteRole::Witness),
    ];
    let orchestrators = sites
        .iter()
        .enumerate()
        .map(|(i, s)| OrchestratorNode {
            id: NodeId::new(format!("orch-{}", s.id)),
            site: s.id.clone(),
            addr: format!("10.0.{i}.10:7400"),
        })
        .collect();

    let timing = Timing::default();
    let mut apps: Vec<App> = Vec::with_capacity(spec.apps);
    let mut by_tier: Vec<Vec<usize>> = vec![Vec::new(); tiers as usize + 1];
    for i in 0..spec.apps {
        // Tier t gets roughly twice as many apps as tier t-1's predecessor would: lower
        // tiers (databases) are fewer than upper ones (front ends).
        let tier = 1 + (rng.range(0, u64::from(tiers) * u64::from(tiers) - 1) as f64).sqrt() as u32;
        let tier = tier.min(tiers);
        let id = format!("app-{i:05}");
        let preferred = sites[i % 2].id.clone();
        let mut depends_on = Vec::new();
        if tier > 1 {
            for _ in 0..rng.range(0, 2) {
                let lower = rng.range(1, u64::from(tier) - 1) as usize;
                if let Some(&d) = pick(&mut rng, &by_tier[lower]) {
                    let dep: &App = &apps[d];
                    if !depends_on.contains(&dep.id) {
                        depends_on.push(dep.id.clone());
                    }
                }
            }
        }
        let n_vms = rng.range(1, 3) as usize;
        let sync = rng.chance(70);
        let mut volumes = Vec::new();
        let mut vms = Vec::new();
        for v in 0..n_vms {
            let vol = VolumeId::new(format!("{id}-vol{v}"));
            volumes.push(Volume {
                id: vol.clone(),
                size: ByteSize::gib(rng.range(1, 512)),
                replication: if sync {
                    Replication::Sync
                } else {
                    Replication::Async {
                        lag_max_s: rng.range(1, 30) as u32,
                        lag_max_size: ByteSize::gib(1),
                    }
                },
            });
            vms.push(Vm {
                id: VmId::new(format!("{id}-vm{v}")),
                vcpus: 1 << rng.range(0, 3),
                memory: ByteSize::gib(1 << rng.range(0, 5)),
                boot: Boot::Disk,
                disks: vec![vol],
                boot_estimate_s: Some(rng.range(2, BOOT_MAX_S) as u32),
            });
        }
        let probes = if rng.chance(50) {
            vec![Probe::Tcp {
                vm: vms[0].id.clone(),
                port: 8000 + (i % 1000) as u16,
                timeout_s: 60,
                address: None,
            }]
        } else {
            Vec::new()
        };
        // Each tier is one stage (dependencies only point to lower tiers), so the
        // earliest RTO of tier t is detection plus t stages of at most BOOT_MAX_S each.
        let stage_s =
            (timing.promote_budget_ms + timing.vm_start_budget_ms).div_ceil(1000) + BOOT_MAX_S;
        let rto = timing.detect_ms().div_ceil(1000) + u64::from(tier) * stage_s + 30;
        apps.push(App {
            id: AppId::new(id),
            name: format!("Application {i}"),
            tier,
            depends_on,
            preferred_site: preferred,
            failover: if rng.chance(80) {
                FailoverPolicy::Auto
            } else {
                FailoverPolicy::ManualApproval
            },
            rto_target_s: rto as u32,
            rpo_target_s: if sync { 0 } else { 60 },
            vms,
            volumes,
            probes,
        });
        by_tier[tier as usize].push(i);
    }

    // Hosts: either site alone must run everything, with headroom for bin-packing waste.
    let per_site = (spec.hosts / 2).max(1);
    let total_cpu: u64 = apps.iter().map(App::vcpus).sum();
    let total_mem: u64 = apps.iter().map(App::memory).sum();
    let host_cpu = (total_cpu * 13 / 10 / per_site as u64 + 8).max(16);
    let host_mem_gib = (total_mem * 13 / 10 / per_site as u64 / GIB + 32).max(64);
    let mut hosts = Vec::new();
    for (s, site) in sites.iter().take(2).enumerate() {
        for h in 0..per_site {
            hosts.push(Host {
                id: HostId::new(format!("{}-h{h:04}", site.id)),
                site: site.id.clone(),
                libvirt_uri: "test:///default".into(),
                agent_addr: format!("10.{}.{}.{}:7500", s + 1, h / 250, h % 250 + 1),
                vcpus: host_cpu.min(u64::from(u32::MAX)) as u32,
                memory: ByteSize::gib(host_mem_gib),
            });
        }
    }
    Topology {
        cluster: Cluster {
            name: format!("generated-{}", spec.seed),
            description: Some(format!(
                "{} hosts, {} apps, seed {}",
                spec.hosts, spec.apps, spec.seed
            )),
            volumes: crate::model::VolumeService::default(),
        },
        timing,
        sites,
        orchestrators,
        hosts,
        apps,
        drills: Vec::new(),
    }
}

fn site(id: &str, name: &str, role: SiteRole) -> Site {
    Site {
        id: SiteId::new(id),
        name: name.into(),
        role,
        location: None,
        notes: None,
    }
}

fn pick<'a, T>(rng: &mut SplitMix64, v: &'a [T]) -> Option<&'a T> {
    if v.is_empty() {
        None
    } else {
        v.get(rng.range(0, v.len() as u64 - 1) as usize)
    }
}
