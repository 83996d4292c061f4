//! Placement planning: where every VM runs at first, and whether each production site
//! alone could run every application if the other site were lost.
//!
//! Initial placement puts each app's VMs at its preferred site, tier by tier, on the
//! least-loaded host, with the VMs of one app on different hosts when possible
//! (anti-affinity: losing one host should not take down every replica of a service).
//! The failover check then keeps the survivor's own VMs where they are (a failover
//! moves nothing that still runs) and packs the lost site's VMs, tier by tier, best-fit
//! into what is left. Pure and deterministic: the same
//! topology always gives the same plan.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::ids::{AppId, HostId, SiteId, VmId};
use crate::model::{App, Host, Topology, Vm};

/// One VM on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub vm: VmId,
    pub app: AppId,
    pub host: HostId,
    pub site: SiteId,
}

/// A VM that could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unplaced {
    pub vm: VmId,
    pub app: AppId,
}

/// Load of one host after initial placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostLoad {
    pub host: HostId,
    pub site: SiteId,
    pub vms: usize,
    pub vcpus_used: u64,
    pub vcpus_total: u64,
    pub memory_used: u64,
    pub memory_total: u64,
}

/// Cumulative demand through one tier when `survivor` runs everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierRow {
    pub tier: u32,
    /// Apps of this tier (both sites).
    pub apps: usize,
    /// vCPUs and memory every app of tiers ≤ this one needs.
    pub vcpus_needed: u64,
    pub memory_needed: u64,
    /// Totals of the survivor's hosts.
    pub vcpus_capacity: u64,
    pub memory_capacity: u64,
    /// VMs of this tier that found no host at the survivor, and what they lack.
    pub unplaced_vms: usize,
    pub unplaced: Vec<VmId>,
    pub short_vcpus: u64,
    pub short_memory: u64,
}

/// What happens if `lost` is lost and `survivor` must run everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteFailover {
    pub survivor: SiteId,
    pub lost: SiteId,
    pub tiers: Vec<TierRow>,
    /// Where each VM of the lost site would restart.
    pub moves: Vec<Placement>,
    /// True when every tier fits.
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub placements: Vec<Placement>,
    /// VMs placed at the other production site because their preferred site was full.
    pub spilled: Vec<VmId>,
    pub unplaced: Vec<Unplaced>,
    pub hosts: Vec<HostLoad>,
    pub failover: Vec<SiteFailover>,
}

#[derive(Debug, Clone)]
struct Bin<'t> {
    host: &'t Host,
    vcpus_free: u64,
    mem_free: u64,
    vms: usize,
}

/// How to choose among hosts that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// Least utilized host first (utilization of the scarcer of memory and vCPUs, so
    /// hosts of different sizes fill evenly): balanced load for the initial placement.
    Spread,
    /// Host with the least free memory that still fits: packs tightly, which is what a
    /// survivor taking over a whole site needs.
    Best,
}

/// The hosts of one site with their free capacity, indexed by the fit's preference so
/// that placing a VM costs O(log hosts) in the usual case instead of a scan of every
/// host (20,000 VMs onto 500 hosts, three times per plan).
#[derive(Debug, Clone)]
struct Bins<'t> {
    bins: Vec<Bin<'t>>,
    fit: Fit,
    /// (preference key, bin index): lower key = preferred.
    index: BTreeSet<(u64, usize)>,
}

impl<'t> Bins<'t> {
    fn new(hosts: impl Iterator<Item = &'t Host>, fit: Fit) -> Self {
        let bins: Vec<Bin<'t>> = hosts
            .map(|host| Bin {
                host,
                vcpus_free: u64::from(host.vcpus),
                mem_free: host.memory.bytes(),
                vms: 0,
            })
            .collect();
        Self::reindexed(bins, fit)
    }

    fn reindexed(bins: Vec<Bin<'t>>, fit: Fit) -> Self {
        let mut b = Bins {
            bins,
            fit,
            index: BTreeSet::new(),
        };
        b.index = (0..b.bins.len()).map(|i| (b.key(i), i)).collect();
        b
    }

    fn key(&self, i: usize) -> u64 {
        let b = &self.bins[i];
        match self.fit {
            Fit::Best => b.mem_free,
            Fit::Spread => {
                let used = |free: u64, total: u64| {
                    (total - free) as u128 * 1_000_000_000 / total.max(1) as u128
                };
                let um = used(b.mem_free, b.host.memory.bytes());
                let uc = used(b.vcpus_free, u64::from(b.host.vcpus));
                um.max(uc) as u64
            }
        }
    }

    /// Place one VM: the preferred host that fits, avoiding hosts already used by this
    /// app (`avoid`) unless no other host fits. Ties go to file order.
    fn place(&mut self, vcpus: u64, mem: u64, avoid: &[usize]) -> Option<usize> {
        let start = match self.fit {
            Fit::Best => (mem, 0),
            Fit::Spread => (0, 0),
        };
        let fits = |b: &Bin<'_>| b.vcpus_free >= vcpus && b.mem_free >= mem;
        let pick = self
            .index
            .range(start..)
            .map(|&(_, i)| i)
            .find(|&i| !avoid.contains(&i) && fits(&self.bins[i]))
            .or_else(|| {
                avoid
                    .iter()
                    .copied()
                    .filter(|&i| fits(&self.bins[i]))
                    .min_by_key(|&i| (self.key(i), i))
            })?;
        self.index.remove(&(self.key(pick), pick));
        let b = &mut self.bins[pick];
        b.vcpus_free -= vcpus;
        b.mem_free -= mem;
        b.vms += 1;
        self.index.insert((self.key(pick), pick));
        Some(pick)
    }

    fn host(&self, i: usize) -> &'t Host {
        self.bins[i].host
    }
}

/// Apps in placement order: by tier, then largest first (first-fit-decreasing packs
/// better), then id for determinism.
fn placement_order<'a>(apps: impl Iterator<Item = &'a App>) -> Vec<&'a App> {
    let mut v: Vec<&App> = apps.collect();
    v.sort_by_cached_key(|a| (a.tier, std::cmp::Reverse(a.memory()), &a.id));
    v
}

/// Place one app's VMs (largest first) into `bins`; returns the placed (vm, bin) pairs
/// and the VMs that did not fit.
fn place_app<'a>(
    vms: impl Iterator<Item = &'a Vm>,
    bins: &mut Bins<'_>,
) -> (Vec<(&'a VmId, usize)>, Vec<&'a VmId>) {
    let mut vms: Vec<&Vm> = vms.collect();
    vms.sort_by(|a, b| b.memory.cmp(&a.memory).then(a.id.cmp(&b.id)));
    let mut used = Vec::new();
    let mut placed = Vec::new();
    let mut failed = Vec::new();
    for vm in vms {
        match bins.place(u64::from(vm.vcpus), vm.memory.bytes(), &used) {
            Some(i) => {
                used.push(i);
                placed.push((&vm.id, i));
            }
            None => failed.push(&vm.id),
        }
    }
    (placed, failed)
}

/// Plan initial placement and the failover capacity of both production sites.
pub fn plan(topo: &Topology) -> Plan {
    let sites: Vec<&SiteId> = topo.production_sites().map(|s| &s.id).collect();
    let mut bins: Vec<Bins<'_>> = sites
        .iter()
        .map(|s| Bins::new(topo.hosts_at(s), Fit::Spread))
        .collect();
    let site_idx = |id: &SiteId| sites.iter().position(|s| *s == id);

    let mut placements = Vec::new();
    let mut spilled = Vec::new();
    let mut unplaced = Vec::new();
    for app in placement_order(topo.apps.iter()) {
        let Some(pref) = site_idx(&app.preferred_site) else {
            continue;
        };
        let (placed, failed) = place_app(app.vms.iter(), &mut bins[pref]);
        for (vm, i) in placed {
            placements.push(Placement {
                vm: vm.clone(),
                app: app.id.clone(),
                host: bins[pref].host(i).id.clone(),
                site: sites[pref].clone(),
            });
        }
        // VMs that do not fit at home try the other production site.
        let other = 1 - pref.min(1);
        for vm_id in failed {
            let Some(vm) = app.vms.iter().find(|v| &v.id == vm_id) else {
                continue;
            };
            let spill = if sites.len() == 2 {
                bins[other].place(u64::from(vm.vcpus), vm.memory.bytes(), &[])
            } else {
                None
            };
            match spill {
                Some(i) => {
                    spilled.push(vm.id.clone());
                    placements.push(Placement {
                        vm: vm.id.clone(),
                        app: app.id.clone(),
                        host: bins[other].host(i).id.clone(),
                        site: sites[other].clone(),
                    });
                }
                None => unplaced.push(Unplaced {
                    vm: vm.id.clone(),
                    app: app.id.clone(),
                }),
            }
        }
    }

    let hosts = bins
        .iter()
        .flat_map(|b| &b.bins)
        .map(|b| HostLoad {
            host: b.host.id.clone(),
            site: b.host.site.clone(),
            vms: b.vms,
            vcpus_used: u64::from(b.host.vcpus) - b.vcpus_free,
            vcpus_total: u64::from(b.host.vcpus),
            memory_used: b.host.memory.bytes() - b.mem_free,
            memory_total: b.host.memory.bytes(),
        })
        .collect();

    let mut failover = Vec::new();
    if sites.len() == 2 {
        for s in 0..2 {
            failover.push(site_failover(
                topo,
                &placements,
                sites[s],
                sites[1 - s],
                Bins::reindexed(bins[s].bins.clone(), Fit::Best),
            ));
        }
    }
    Plan {
        placements,
        spilled,
        unplaced,
        hosts,
        failover,
    }
}

fn site_failover(
    topo: &Topology,
    placements: &[Placement],
    survivor: &SiteId,
    lost: &SiteId,
    mut bins: Bins<'_>,
) -> SiteFailover {
    let vcpus_capacity: u64 = bins.bins.iter().map(|b| u64::from(b.host.vcpus)).sum();
    let memory_capacity: u64 = bins.bins.iter().map(|b| b.host.memory.bytes()).sum();
    // VMs placed at the lost site move; those already at the survivor stay where they are.
    let lost_vms: std::collections::HashSet<&VmId> = placements
        .iter()
        .filter(|p| &p.site == lost)
        .map(|p| &p.vm)
        .collect();

    let mut tiers: Vec<u32> = topo.apps.iter().map(|a| a.tier).collect();
    tiers.sort_unstable();
    tiers.dedup();
    let order = placement_order(topo.apps.iter());
    let mut rows = Vec::new();
    let mut moves = Vec::new();
    let (mut vcpus_needed, mut memory_needed) = (0u64, 0u64);
    for tier in tiers {
        let apps: Vec<&App> = order.iter().copied().filter(|a| a.tier == tier).collect();
        vcpus_needed += apps.iter().map(|a| a.vcpus()).sum::<u64>();
        memory_needed += apps.iter().map(|a| a.memory()).sum::<u64>();
        let mut row = TierRow {
            tier,
            apps: apps.len(),
            vcpus_needed,
            memory_needed,
            vcpus_capacity,
            memory_capacity,
            unplaced_vms: 0,
            unplaced: Vec::new(),
            short_vcpus: 0,
            short_memory: 0,
        };
        for app in apps {
            let mut moving = app
                .vms
                .iter()
                .filter(|v| lost_vms.contains(&v.id))
                .peekable();
            if moving.peek().is_none() {
                continue;
            }
            let (placed, failed) = place_app(moving, &mut bins);
            for (vm, i) in placed {
                moves.push(Placement {
                    vm: vm.clone(),
                    app: app.id.clone(),
                    host: bins.host(i).id.clone(),
                    site: survivor.clone(),
                });
            }
            for vm_id in failed {
                if let Some(vm) = app.vms.iter().find(|v| &v.id == vm_id) {
                    row.unplaced_vms += 1;
                    row.unplaced.push(vm.id.clone());
                    row.short_vcpus += u64::from(vm.vcpus);
                    row.short_memory += vm.memory.bytes();
                }
            }
        }
        rows.push(row);
    }
    let ok = rows.iter().all(|r| r.unplaced_vms == 0);
    SiteFailover {
        survivor: survivor.clone(),
        lost: lost.clone(),
        tiers: rows,
        moves,
        ok,
    }
}
