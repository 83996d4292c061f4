//! Applying a new topology version: sites, hosts, apps, their placement and volumes
//! follow the new model; what runs keeps running where it is.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use topology::{AppId, HostId, SiteId, SiteRole, Topology, VmId, VolumeId};

use super::*;

impl ClusterState {
    pub(super) fn apply_topology(
        &mut self,
        req: &Request,
        text: &str,
        model: &Topology,
        placements: &[(VmId, HostId)],
    ) -> Applied {
        if text.len() > MAX_TOPOLOGY_BYTES {
            return reject(
                RejectKind::Invalid,
                "the topology text is larger than 64 MiB",
            );
        }
        // Sites are the frame everything else hangs on: once applied they stay.
        if let Some(cur) = self.topology() {
            let ids = |t: &Topology| {
                t.sites
                    .iter()
                    .map(|s| (s.id.clone(), s.role))
                    .collect::<BTreeSet<_>>()
            };
            if ids(&cur.model) != ids(model) {
                return reject(
                    RejectKind::Conflict,
                    "the sites (ids and roles) differ from the applied topology; sites cannot change once applied",
                );
            }
        }
        let production: Vec<&SiteId> = model
            .sites
            .iter()
            .filter(|s| s.role == SiteRole::Production)
            .map(|s| &s.id)
            .collect();
        if production.len() != 2 || model.sites.len() != 3 {
            return reject(
                RejectKind::Invalid,
                "a topology needs exactly two production sites and one witness",
            );
        }
        let host_site: BTreeMap<&HostId, &SiteId> =
            model.hosts.iter().map(|h| (&h.id, &h.site)).collect();
        let placed: BTreeMap<&VmId, &HostId> = placements.iter().map(|(v, h)| (v, h)).collect();
        let version = self.topologies.last().map_or(1, |(v, _)| v + 1);

        // Hosts: removed hosts must run nothing.
        let new_hosts: BTreeSet<&HostId> = model.hosts.iter().map(|h| &h.id).collect();
        let gone: Vec<HostId> = self
            .hosts
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|h| !new_hosts.contains(h))
            .collect();
        for h in &gone {
            let users: Vec<&AppId> = self
                .apps
                .values()
                .filter(|a| model.app(&a.id).is_some() && a.placement.values().any(|p| p == h))
                .map(|a| &a.id)
                .collect();
            if let Some(a) = users.first() {
                return reject(
                    RejectKind::Conflict,
                    format!(
                        "host {h} is removed but app {a} has VMs placed on it; move them first"
                    ),
                );
            }
            self.hosts.remove(h);
        }
        for s in &model.sites {
            if !self.sites.contains(&s.id) {
                self.sites.insert(
                    s.id.clone(),
                    SiteRecord {
                        id: s.id.clone(),
                        role: s.role,
                        state: SiteState::Up,
                        since_ms: req.at_ms,
                        reason: "site added by topology".into(),
                        downs_ms: Vec::new(),
                    },
                );
            }
        }
        for h in &model.hosts {
            match self.hosts.get(&h.id) {
                Some(rec) if rec.site == h.site => {}
                Some(_) => {
                    return reject(
                        RejectKind::Conflict,
                        format!(
                            "host {} moved to another site; remove it and add it under a new id",
                            h.id
                        ),
                    );
                }
                None => self.hosts.insert(
                    h.id.clone(),
                    HostRecord {
                        id: h.id.clone(),
                        site: h.site.clone(),
                        state: HostState::Unknown,
                        since_ms: req.at_ms,
                        reason: "host added by topology; no agent has registered yet".into(),
                        inventory: None,
                        last_seen_ms: None,
                        fenced_ms: None,
                    },
                ),
            }
        }

        // Apps and their volumes.
        let new_apps: BTreeSet<&AppId> = model.apps.iter().map(|a| &a.id).collect();
        let removed_apps: Vec<AppId> = self
            .apps
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|a| !new_apps.contains(a))
            .collect();
        for a in &removed_apps {
            self.apps.remove(a);
        }
        let new_vols: BTreeSet<&VolumeId> = model
            .apps
            .iter()
            .flat_map(|a| a.volumes.iter().map(|v| &v.id))
            .collect();
        let removed_vols: Vec<VolumeId> = self
            .volumes
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|v| !new_vols.contains(v))
            .collect();
        for v in &removed_vols {
            self.volumes.remove(v);
        }
        for app in &model.apps {
            let mut rec = self
                .apps
                .get(&app.id)
                .cloned()
                .unwrap_or_else(|| AppRecord {
                    id: app.id.clone(),
                    active_site: app.preferred_site.clone(),
                    desired: Desired::Running,
                    state: AppState::Stopped,
                    placement: BTreeMap::new(),
                    held: Default::default(),
                    outage_since_ms: None,
                });
            if !production.contains(&&rec.active_site) {
                return reject(
                    RejectKind::Invalid,
                    format!(
                        "app {} is active at {}, which is not a production site",
                        app.id, rec.active_site
                    ),
                );
            }
            let vm_ids: BTreeSet<&VmId> = app.vms.iter().map(|v| &v.id).collect();
            rec.placement.retain(|vm, _| vm_ids.contains(vm));
            let mut newly: BTreeSet<&VmId> = BTreeSet::new();
            for vm in &app.vms {
                if rec.placement.contains_key(&vm.id) {
                    continue;
                }
                let Some(host) = placed.get(&vm.id) else {
                    return reject(
                        RejectKind::Invalid,
                        format!("VM {} of app {} has no placement", vm.id, app.id),
                    );
                };
                if host_site.get(*host) != Some(&&rec.active_site) {
                    return reject(
                        RejectKind::Invalid,
                        format!(
                            "VM {} is placed on {host}, which is not a host of site {}",
                            vm.id, rec.active_site
                        ),
                    );
                }
                rec.placement.insert(vm.id.clone(), (*host).clone());
                newly.insert(&vm.id);
            }
            // Volumes served by agents: an app's VMs with disks share the host that
            // serves its group (their NBD socket is local to it).
            if model.cluster.volumes == topology::VolumeService::Agents {
                let disk_vms: Vec<&VmId> = app
                    .vms
                    .iter()
                    .filter(|v| !v.disks.is_empty())
                    .map(|v| &v.id)
                    .collect();
                if let Some(home) = disk_vms
                    .first()
                    .and_then(|v| rec.placement.get(*v))
                    .cloned()
                {
                    for v in disk_vms.into_iter().filter(|v| newly.contains(v)) {
                        rec.placement.insert(v.clone(), home.clone());
                    }
                }
            }
            for vol in &app.volumes {
                match self.volumes.get_mut(&vol.id) {
                    Some(existing) if existing.app == app.id => {
                        existing.mode = vol.replication.mode()
                    }
                    Some(existing) => {
                        return reject(
                            RejectKind::Conflict,
                            format!(
                                "volume {} belongs to app {}; it cannot move to app {}",
                                vol.id, existing.app, app.id
                            ),
                        );
                    }
                    None => {
                        let replicas = production
                            .iter()
                            .map(|s| Replica {
                                site: (*s).clone(),
                                host: None,
                                role: if *s == &rec.active_site {
                                    Role::Primary
                                } else {
                                    Role::Secondary
                                },
                                epoch: Epoch(1),
                                // The secondary holds nothing until the initial sync.
                                data: if *s == &rec.active_site {
                                    DataState::UpToDate
                                } else {
                                    DataState::Inconsistent
                                },
                            })
                            .collect();
                        self.volumes.insert(
                            vol.id.clone(),
                            VolumeRecord {
                                id: vol.id.clone(),
                                app: app.id.clone(),
                                mode: vol.replication.mode(),
                                epoch: Epoch(1),
                                replicas,
                            },
                        );
                    }
                }
            }
            self.apps.insert(app.id.clone(), rec);
        }
        if model.cluster.volumes == topology::VolumeService::Agents {
            self.assign_replica_hosts(model);
        }
        let digest = hex::encode(Sha256::digest(text.as_bytes()));
        self.topologies.insert(
            version,
            TopologyRecord {
                version,
                text: text.to_string(),
                digest: digest.clone(),
                applied_by: req.actor.clone(),
                applied_ms: req.at_ms,
                model: model.clone(),
            },
        );
        let n = |k: usize| u32::try_from(k).unwrap_or(u32::MAX);
        Ok((
            AuditEvent::TopologyApplied {
                version,
                digest,
                hosts: n(model.hosts.len()),
                apps: n(model.apps.len()),
                volumes: n(new_vols.len()),
                removed_apps: n(removed_apps.len()),
                removed_hosts: n(gone.len()),
            },
            Outcome::TopologyVersion(version),
        ))
    }

    /// Give every replica without one a host (volumes served by agents): at the app's
    /// active site the host of its VMs with disks; at the other site the host with the
    /// most vCPUs left after what runs there and what it already stands by for, so a
    /// failover finds room. All volumes of an app at a site share one host (one group).
    fn assign_replica_hosts(&mut self, model: &Topology) {
        let mut load: BTreeMap<HostId, u64> = BTreeMap::new();
        let vcpus_of = |app: &topology::App| app.vcpus();
        for app in &model.apps {
            let Some(rec) = self.apps.get(&app.id) else {
                continue;
            };
            for vm in &app.vms {
                if let Some(h) = rec.placement.get(&vm.id) {
                    *load.entry(h.clone()).or_default() += u64::from(vm.vcpus);
                }
            }
        }
        // What each host already stands by for (once per app: its first volume).
        for app in &model.apps {
            let (Some(rec), Some(first)) = (
                self.apps.get(&app.id),
                app.volumes.first().and_then(|v| self.volumes.get(&v.id)),
            ) else {
                continue;
            };
            for r in &first.replicas {
                if let Some(h) = &r.host
                    && r.site != rec.active_site
                {
                    *load.entry(h.clone()).or_default() += vcpus_of(app);
                }
            }
        }
        for app in &model.apps {
            let Some(rec) = self.apps.get(&app.id).cloned() else {
                continue;
            };
            let sites: BTreeSet<SiteId> = app
                .volumes
                .iter()
                .filter_map(|v| self.volumes.get(&v.id))
                .flat_map(|v| v.replicas.iter().map(|r| r.site.clone()))
                .collect();
            for site in sites {
                let existing = app.volumes.iter().find_map(|v| {
                    self.volumes
                        .get(&v.id)
                        .and_then(|r| r.replica(&site))
                        .and_then(|r| r.host.clone())
                });
                let chosen = existing.or_else(|| {
                    if site == rec.active_site {
                        let with_disks = app.vms.iter().find(|vm| !vm.disks.is_empty());
                        with_disks
                            .or(app.vms.first())
                            .and_then(|vm| rec.placement.get(&vm.id).cloned())
                    } else {
                        let best = model
                            .hosts
                            .iter()
                            .filter(|h| h.site == site)
                            .map(|h| {
                                let used = load.get(&h.id).copied().unwrap_or(0);
                                (u64::from(h.vcpus).saturating_sub(used), h.id.clone())
                            })
                            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
                        let host = best.map(|(_, h)| h)?;
                        *load.entry(host.clone()).or_default() += vcpus_of(app);
                        Some(host)
                    }
                });
                let Some(host) = chosen else {
                    continue;
                };
                for v in &app.volumes {
                    if let Some(mut vol) = self.volumes.get(&v.id).cloned() {
                        let mut changed = false;
                        for r in vol.replicas.iter_mut().filter(|r| r.site == site) {
                            if r.host.is_none() {
                                r.host = Some(host.clone());
                                changed = true;
                            }
                        }
                        if changed {
                            self.volumes.insert(v.id.clone(), vol);
                        }
                    }
                }
            }
        }
    }
}
