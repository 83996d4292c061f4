//! The failover tests' lab: the lab crate's cluster on loopback (three orchestrator
//! nodes, an agent per host) of examples/lab.toml without `volumes = "agents"`, every
//! consistency group served by `metrodr volume` processes outside the cluster that
//! report their link; and what the tests read of an operation's record and the audit
//! log.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use serde_json::Value;

use crate::common::agent_lab;
use crate::common::*;

pub const VMS: [&str; 6] = agent_lab::VMS;
pub const HOSTS: [&str; 4] = agent_lab::HOSTS;

/// The lab (as `agent_lab::Lab`) and the volume processes outside it.
pub struct Lab {
    /// (primary, replica) per app; declared first, so they stop before the lab.
    volumes: BTreeMap<String, (VolProc, VolProc)>,
    lab: agent_lab::Lab,
}

impl Deref for Lab {
    type Target = agent_lab::Lab;
    fn deref(&self) -> &agent_lab::Lab {
        &self.lab
    }
}

impl DerefMut for Lab {
    fn deref_mut(&mut self) -> &mut agent_lab::Lab {
        &mut self.lab
    }
}

/// (app, home site, volumes)
const GROUPS: [(&str, &str, &[&str]); 5] = [
    ("db", "north", &["db-data"]),
    ("api", "north", &["api-1-os", "api-2-os"]),
    ("portal", "north", &["portal-os"]),
    ("archive", "north", &["archive-data"]),
    ("mail", "south", &["mail-data"]),
];

impl Lab {
    pub async fn start() -> Lab {
        Lab::start_with(|t| t).await
    }

    /// The lab with its topology text changed by `edit` first.
    pub async fn start_with(edit: impl FnOnce(String) -> String) -> Lab {
        // The lab with its volumes served by processes outside the cluster (`volume
        // serve --report-to`), the other supported way.
        let text = std::fs::read_to_string(root().join("examples/lab.toml")).unwrap();
        let lab =
            agent_lab::Lab::nodes_and_agents(&edit(text.replace("volumes = \"agents\"\n", "")))
                .await;
        lab.start_every_vm().await;
        let addrs = lab.addrs.clone();
        let mut volumes = BTreeMap::new();
        for (app, home, vols) in GROUPS {
            let dir = lab.dir();
            let other = if home == "north" { "south" } else { "north" };
            let group_args = |site: &str| {
                let mut v = vec!["--group".to_string(), app.to_string()];
                for vol in vols {
                    v.push("--volume".into());
                    v.push(format!(
                        "{vol}={}",
                        dir.join(format!("{site}-{vol}.img")).display()
                    ));
                }
                v.extend([
                    "--size".into(),
                    "4MiB".into(),
                    "--status-interval-ms".into(),
                    "50".into(),
                ]);
                v
            };
            let mut r = vec!["replica".to_string()];
            r.extend(group_args(other));
            r.extend(["--listen".into(), "127.0.0.1:0".into()]);
            let r: Vec<&str> = r.iter().map(String::as_str).collect();
            let replica = start_volume(dir, &format!("{app}-replica-{other}"), &r);
            let peer = replica.ready["listen"].as_str().unwrap().to_string();
            let mut p = vec!["serve".to_string()];
            p.extend(group_args(home));
            let mode = if app == "archive" { "async" } else { "sync" };
            p.extend([
                "--socket".into(),
                dir.join(format!("{app}.sock")).display().to_string(),
                "--peer".into(),
                peer,
                "--mode".into(),
                mode.into(),
                "--report-to".into(),
                addrs.clone(),
                "--site".into(),
                home.into(),
            ]);
            let p: Vec<&str> = p.iter().map(String::as_str).collect();
            let primary = start_volume(dir, &format!("{app}-primary-{home}"), &p);
            volumes.insert(app.to_string(), (primary, replica));
        }
        // The primaries' reports make every other-site replica promotable.
        lab.inner
            .wait_replicas(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)));
        Lab { volumes, lab }
    }

    /// (app, active site) of every app.
    pub fn sites_of_apps(&self) -> Vec<(String, String)> {
        self.json(&["app", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["id"].as_str().unwrap().to_string(),
                    a["active_site"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    pub fn app(&self, id: &str) -> Value {
        self.json(&["app", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .cloned()
            .unwrap()
    }

    /// SIGKILL every process of `site`: its node, its agents and the volume
    /// processes there.
    pub fn kill_site(&mut self, site: &str) {
        self.lab.kill_site(site);
        for (app, home, _) in GROUPS {
            if let Some((p, r)) = self.volumes.get_mut(app) {
                if home == site {
                    p.kill();
                } else {
                    r.kill();
                }
            }
        }
    }
}

pub fn app_line<'v>(rec: &'v Value, app: &str) -> &'v Value {
    rec["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == app)
        .unwrap_or_else(|| panic!("no {app} in {rec}"))
}

/// (start, end) of an app's step, seconds since the operation's origin.
pub fn step(rec: &Value, app: &str, name: &str) -> (f64, f64) {
    let s = rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["app"] == app && s["name"].as_str().unwrap().starts_with(name))
        .unwrap_or_else(|| panic!("no step {name} of {app} in {rec}"));
    (s["start_s"].as_f64().unwrap(), s["end_s"].as_f64().unwrap())
}

/// How often the audit log shows agent command `action` for `vm`.
pub async fn commands_for(addr: &str, action: &str, vm: &str) -> usize {
    commands_by(addr, None, action, vm).await
}

/// Commands `actor` (any: None) issued with `action` for `vm`, from the audit log.
pub async fn commands_by(addr: &str, actor: Option<&str>, action: &str, vm: &str) -> usize {
    let needle = format!(" {action} {vm} on ");
    audit(addr)
        .await
        .iter()
        .filter(|e| e.action == "agent.command" && actor.is_none_or(|a| e.actor == a))
        .map(|e| e.detail.matches(&needle).count())
        .sum()
}

/// The audit entries `keep` selects, a line each, for a failure message.
pub async fn audit_lines(
    addr: &str,
    keep: impl Fn(&orchestrator::pb::AuditEntry) -> bool,
) -> String {
    audit(addr)
        .await
        .iter()
        .filter(|e| keep(e))
        .map(|e| {
            format!(
                "#{} {} {} {}: {}",
                e.seq, e.at_ms, e.actor, e.action, e.detail
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The voters `status` lists.
pub fn voters(status: &Value) -> Vec<String> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["voter"] == true)
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}
