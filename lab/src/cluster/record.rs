//! What `metrodr lab status` shows and `lab.json` records of a running lab: its
//! sites, its processes (running, paused, killed, by PID) and its WAN links.
//!
//! A persisted format: `lab down` reads a crashed supervisor's `lab.json` to stop its
//! processes by PID. Fields are only ever added (with defaults); never renamed or
//! removed, or a supervisor's record could no longer be read by `lab down`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Lab, links};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabRecord {
    pub dir: PathBuf,
    pub tag: String,
    pub supervisor_pid: u32,
    pub orchestrators: Vec<String>,
    pub sites: BTreeMap<String, String>,
    pub processes: Vec<ProcRecord>,
    /// The WAN links between production sites and their shape.
    #[serde(default)]
    pub links: Vec<links::LinkRecord>,
    /// The lab's certificate directory (use it with `--certs`; the CLI acts as admin).
    #[serde(default)]
    pub certs: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcRecord {
    pub name: String,
    pub site: String,
    pub pid: Option<i32>,
    pub state: String,
}

impl Lab {
    /// The lab as `lab status` shows it; `supervisor_pid` is the process that holds it.
    pub fn record(&self, supervisor_pid: u32) -> LabRecord {
        LabRecord {
            dir: self.dir.clone(),
            tag: self
                .net
                .as_ref()
                .map(|n| n.tag().to_string())
                .unwrap_or_default(),
            supervisor_pid,
            orchestrators: self.addrs(),
            sites: self
                .topo
                .sites
                .iter()
                .map(|s| {
                    let addr = self
                        .net
                        .as_ref()
                        .map(|n| n.addr(s.id.as_str()).to_string())
                        .unwrap_or_else(|| "127.0.0.1".into());
                    (s.id.to_string(), addr)
                })
                .collect(),
            processes: self
                .members
                .iter()
                .map(|m| ProcRecord {
                    name: m.name.clone(),
                    site: m.site.clone(),
                    pid: m.pid(),
                    state: match (m.is_running(), m.is_paused()) {
                        (false, _) => "killed",
                        (true, true) => "paused",
                        (true, false) => "running",
                    }
                    .into(),
                })
                .collect(),
            links: self.links.iter().map(links::SiteLink::record).collect(),
            certs: self
                .certs
                .as_ref()
                .map(|c| c.root.clone())
                .unwrap_or_default(),
        }
    }
}
