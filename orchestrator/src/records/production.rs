//! Production as a test drill samples it (the app's active site, its VMs, its
//! replicas), and what changed between two samples: a drill's evidence that it touched
//! nothing. Pure data and comparisons.
//!
//! Never: read the cluster state (the state machine takes the samples) or decide on
//! the rendered text.

use std::fmt;

use serde::{Deserialize, Serialize};
use topology::{HostId, SiteId, VmId, VolumeId};

use super::{DataState, VmState};

/// Production of one app at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Production {
    pub active_site: SiteId,
    /// Every VM of the app an agent reported, by id.
    pub vms: Vec<VmSample>,
    /// Every replica of the app's volumes, by volume then site.
    pub replicas: Vec<ReplicaSample>,
}

/// A VM where it runs, in which state, since when (a restart changes `since_ms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSample {
    pub vm: VmId,
    pub host: HostId,
    pub state: VmState,
    pub since_ms: u64,
}

/// One replica's data state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSample {
    pub volume: VolumeId,
    pub site: SiteId,
    pub data: DataState,
}

/// One difference between two samples of production.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum ProductionChange {
    ActiveSite {
        from: SiteId,
        to: SiteId,
    },
    Moved {
        vm: VmId,
        from: HostId,
        to: HostId,
    },
    State {
        vm: VmId,
        from: VmState,
        to: VmState,
    },
    /// Same state, but since another moment: it changed state and back.
    Restarted {
        vm: VmId,
        state: VmState,
    },
    Gone {
        vm: VmId,
    },
    Appeared {
        vm: VmId,
    },
    /// A replica is not up to date: replication is not within its bound.
    ReplicaBehind {
        volume: VolumeId,
        site: SiteId,
        data: DataState,
    },
}

impl Production {
    /// The replicas that are not up to date.
    pub fn lagging(&self) -> Vec<ProductionChange> {
        self.replicas
            .iter()
            .filter(|r| r.data != DataState::UpToDate)
            .map(|r| ProductionChange::ReplicaBehind {
                volume: r.volume.clone(),
                site: r.site.clone(),
                data: r.data,
            })
            .collect()
    }

    /// Every replica is up to date (replication within its bound).
    pub fn in_sync(&self) -> bool {
        self.replicas.iter().all(|r| r.data == DataState::UpToDate)
    }

    /// What changed from `self` (before) to `now`; empty: nothing did, and every
    /// replica is up to date.
    pub fn changes(&self, now: &Production) -> Vec<ProductionChange> {
        let mut out = Vec::new();
        if self.active_site != now.active_site {
            out.push(ProductionChange::ActiveSite {
                from: self.active_site.clone(),
                to: now.active_site.clone(),
            });
        }
        for b in &self.vms {
            let vm = b.vm.clone();
            match now.vms.iter().find(|n| n.vm == b.vm) {
                None => out.push(ProductionChange::Gone { vm }),
                Some(n) => {
                    if n.host != b.host {
                        out.push(ProductionChange::Moved {
                            vm: vm.clone(),
                            from: b.host.clone(),
                            to: n.host.clone(),
                        });
                    }
                    if n.state != b.state {
                        out.push(ProductionChange::State {
                            vm,
                            from: b.state,
                            to: n.state,
                        });
                    } else if n.since_ms != b.since_ms {
                        out.push(ProductionChange::Restarted { vm, state: n.state });
                    }
                }
            }
        }
        for n in now
            .vms
            .iter()
            .filter(|n| !self.vms.iter().any(|b| b.vm == n.vm))
        {
            out.push(ProductionChange::Appeared { vm: n.vm.clone() });
        }
        out.extend(now.lagging());
        out
    }
}

impl fmt::Display for ProductionChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProductionChange::ActiveSite { from, to } => {
                write!(f, "active site changed from {from} to {to}")
            }
            ProductionChange::Moved { vm, from, to } => write!(f, "{vm} moved from {from} to {to}"),
            ProductionChange::State { vm, from, to } => {
                write!(f, "{vm} went from {from:?} to {to:?}")
            }
            ProductionChange::Restarted { vm, state } => {
                write!(f, "{vm} changed state and back ({state:?} again)")
            }
            ProductionChange::Gone { vm } => write!(f, "{vm} is no longer reported"),
            ProductionChange::Appeared { vm } => write!(f, "{vm} appeared"),
            ProductionChange::ReplicaBehind { volume, site, data } => {
                write!(f, "replica {volume}@{site} is {data:?}")
            }
        }
    }
}

/// `replication in-sync …` or `replication NOT in sync …`, then production.
impl fmt::Display for Production {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lag = self.lagging();
        if lag.is_empty() {
            write!(
                f,
                "replication in-sync (within bound): {} replica(s) up to date",
                self.replicas.len()
            )?;
        } else {
            write!(f, "replication NOT in sync: {}", join(&lag, ", "))?;
        }
        write!(f, "; production at {}: ", self.active_site)?;
        if self.vms.is_empty() {
            return f.write_str("no VMs");
        }
        let vms: Vec<String> = self
            .vms
            .iter()
            .map(|v| format!("{}@{} {:?}", v.vm, v.host, v.state))
            .collect();
        f.write_str(&vms.join(", "))
    }
}

/// `items` rendered and joined with `sep`.
pub(crate) fn join<T: fmt::Display>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prod() -> Production {
        let vm = |vm: &str, host: &str, since_ms| VmSample {
            vm: VmId::new(vm),
            host: HostId::new(host),
            state: VmState::Running,
            since_ms,
        };
        let replica = |site: &str| ReplicaSample {
            volume: VolumeId::new("db-data"),
            site: SiteId::new(site),
            data: DataState::UpToDate,
        };
        Production {
            active_site: SiteId::new("north"),
            vms: vec![vm("db-1", "north-h1", 100), vm("db-2", "north-h2", 120)],
            replicas: vec![replica("north"), replica("south")],
        }
    }

    #[test]
    fn an_untouched_production_has_no_changes() {
        assert!(prod().changes(&prod()).is_empty());
        assert!(prod().in_sync());
        assert_eq!(
            prod().to_string(),
            "replication in-sync (within bound): 2 replica(s) up to date; production at north: db-1@north-h1 Running, db-2@north-h2 Running"
        );
    }

    #[test]
    fn every_kind_of_production_change_is_named() {
        let base = prod();
        type Change = Box<dyn Fn(&mut Production)>;
        let db1 = VmId::new("db-1");
        let cases: Vec<(Change, ProductionChange, &str)> = vec![
            (
                Box::new(|p| p.active_site = SiteId::new("south")),
                ProductionChange::ActiveSite {
                    from: SiteId::new("north"),
                    to: SiteId::new("south"),
                },
                "active site changed from north to south",
            ),
            (
                Box::new(|p| p.vms[0].host = HostId::new("north-h3")),
                ProductionChange::Moved {
                    vm: db1.clone(),
                    from: HostId::new("north-h1"),
                    to: HostId::new("north-h3"),
                },
                "db-1 moved from north-h1 to north-h3",
            ),
            (
                Box::new(|p| {
                    p.vms[0].state = VmState::Paused;
                    p.vms[0].since_ms = 200;
                }),
                ProductionChange::State {
                    vm: db1.clone(),
                    from: VmState::Running,
                    to: VmState::Paused,
                },
                "db-1 went from Running to Paused",
            ),
            (
                Box::new(|p| p.vms[0].since_ms = 300),
                ProductionChange::Restarted {
                    vm: db1.clone(),
                    state: VmState::Running,
                },
                "db-1 changed state and back (Running again)",
            ),
            (
                Box::new(|p| {
                    p.vms.remove(1);
                }),
                ProductionChange::Gone {
                    vm: VmId::new("db-2"),
                },
                "db-2 is no longer reported",
            ),
            (
                Box::new(|p| {
                    let mut copy = p.vms[0].clone();
                    copy.vm = VmId::new("db-1.drill");
                    p.vms.push(copy);
                }),
                ProductionChange::Appeared {
                    vm: VmId::new("db-1.drill"),
                },
                "db-1.drill appeared",
            ),
            (
                Box::new(|p| p.replicas[1].data = DataState::Outdated),
                ProductionChange::ReplicaBehind {
                    volume: VolumeId::new("db-data"),
                    site: SiteId::new("south"),
                    data: DataState::Outdated,
                },
                "replica db-data@south is Outdated",
            ),
        ];
        for (change, expect, text) in cases {
            let mut now = base.clone();
            change(&mut now);
            assert_eq!(base.changes(&now), vec![expect.clone()], "{text}");
            assert_eq!(expect.to_string(), text);
        }
    }

    #[test]
    fn a_lagging_replica_is_described_as_not_in_sync() {
        let mut p = prod();
        p.replicas[1].data = DataState::Syncing;
        assert!(!p.in_sync());
        assert_eq!(p.lagging().len(), 1);
        assert!(
            p.to_string()
                .starts_with("replication NOT in sync: replica db-data@south is Syncing"),
            "{p}"
        );
    }
}
