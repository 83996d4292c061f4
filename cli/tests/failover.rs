//! Failover, switchover and failback with real processes: three orchestrator nodes and
//! an agent per host on libvirt's test driver, the lab topology (examples/lab.toml:
//! db ← api ← portal in tiers 1–3 at north, archive waiting for approval, mail at south).
//!
//! Every consistency group really replicates, here by processes outside the cluster
//! (`volume serve --report-to` primaries and `volume replica` secondaries, the lab
//! topology without `volumes = "agents"`): the primaries report their link, and only
//! that makes the other site's replicas `UpToDate` and promotable. These tests check
//! the control plane's decisions; `agent_volumes.rs` runs the same lab with the
//! agents serving and promoting the volumes.

// Each test holds the `serial()` guard for its whole run, on purpose (see cluster.rs).
#![allow(clippy::await_holding_lock, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const NODES: [&str; 3] = ["orch-north", "orch-south", "orch-witness"];
const HOSTS: [&str; 4] = ["north-h1", "north-h2", "south-h1", "south-h2"];
const VMS: [&str; 6] = ["db-1", "api-1", "api-2", "portal-1", "archive-1", "mail-1"];

struct Lab {
    c: TestCluster,
    agents: BTreeMap<String, AgentProc>,
    addrs: String,
    /// (primary, replica) per app.
    volumes: BTreeMap<String, (VolProc, VolProc)>,
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
    async fn start() -> Lab {
        Lab::start_with(|t| t).await
    }

    /// The lab with its topology text changed by `edit` first.
    async fn start_with(edit: impl FnOnce(String) -> String) -> Lab {
        let c = TestCluster::start_named(&NODES);
        // The lab with its volumes served by processes outside the cluster (`volume
        // serve --report-to`), the other supported way.
        let text = std::fs::read_to_string(root().join("examples/lab.toml")).unwrap();
        let external = c.dir.path().join("lab-external.toml");
        std::fs::write(&external, edit(text.replace("volumes = \"agents\"\n", ""))).unwrap();
        c.init_with(&external);
        let addrs = c.addrs();
        let mut agents = BTreeMap::new();
        for h in HOSTS {
            agents.insert(
                h.to_string(),
                start_agent(c.dir.path(), h, &addrs, "test:///private", None),
            );
        }
        let a0 = c.nodes[0].grpc.clone();
        for h in HOSTS {
            let a = a0.clone();
            wait_for(Duration::from_secs(15), &format!("{h} up"), move || {
                let a = a.clone();
                async move { (host_state(&a, h).await? == "up").then_some(()) }
            })
            .await;
        }
        for vm in VMS {
            for action in ["define", "start"] {
                let r = vm_do(&a0, action, vm).await;
                assert_eq!(r.status, "succeeded", "{action} {vm}: {}", r.message);
            }
        }
        let mut volumes = BTreeMap::new();
        for (app, home, vols) in GROUPS {
            let dir = c.dir.path();
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
        let lab = Lab {
            c,
            agents,
            addrs,
            volumes,
        };
        // The primaries' reports make every other-site replica promotable.
        wait_for(Duration::from_secs(20), "every replica up to date", || {
            let l = &lab;
            async move {
                let v = l.json(&["volume", "list"]);
                v.as_array()?
                    .iter()
                    .all(|vol| {
                        vol["replicas"]
                            .as_array()
                            .is_some_and(|rs| rs.iter().all(|r| r["data"] == "up-to-date"))
                    })
                    .then_some(())
            }
        })
        .await;
        lab
    }

    /// `metrodr -o json ARGS` against the cluster; must succeed.
    fn json(&self, args: &[&str]) -> Value {
        cli_json(&self.addrs, args)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        cli_run(&self.addrs, args)
    }

    /// (app, active site) of every app.
    fn sites_of_apps(&self) -> Vec<(String, String)> {
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

    fn app(&self, id: &str) -> Value {
        self.json(&["app", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .cloned()
            .unwrap()
    }

    fn volume(&self, id: &str) -> Value {
        volume_json(&self.addrs, id)
    }

    /// Poll `op show` until the operation ends (a leader change may make reads fail
    /// for a moment).
    async fn wait_op(&self, op: u64, within: Duration) -> Value {
        wait_op(&self.addrs, op, within).await
    }

    fn kill_site(&mut self, site: &str) {
        for n in self.c.nodes.iter_mut().filter(|n| n.name.ends_with(site)) {
            n.kill();
        }
        for (_, a) in self.agents.iter_mut().filter(|(h, _)| h.starts_with(site)) {
            a.kill();
        }
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

    /// The last lines of every agent's log, for a failure message.
    fn agent_logs(&self) -> String {
        let mut out = String::new();
        for a in self.agents.values() {
            let text = std::fs::read_to_string(&a.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!(
                "--- agent {} ({})\n{}\n",
                a.host,
                a.log.display(),
                tail.join("\n")
            ));
        }
        out
    }

    /// The address of a node still running.
    fn live(&self) -> String {
        self.c
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .unwrap()
            .grpc
            .clone()
    }
}

fn app_line<'v>(rec: &'v Value, app: &str) -> &'v Value {
    rec["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == app)
        .unwrap_or_else(|| panic!("no {app} in {rec}"))
}

/// (start, end) of an app's step, seconds since the operation's origin.
fn step(rec: &Value, app: &str, name: &str) -> (f64, f64) {
    let s = rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["app"] == app && s["name"].as_str().unwrap().starts_with(name))
        .unwrap_or_else(|| panic!("no step {name} of {app} in {rec}"));
    (s["start_s"].as_f64().unwrap(), s["end_s"].as_f64().unwrap())
}

/// How often the audit log shows agent command `action` for `vm`.
async fn commands_for(addr: &str, action: &str, vm: &str) -> usize {
    commands_by(addr, None, action, vm).await
}

/// Commands `actor` (any: None) issued with `action` for `vm`, from the audit log.
async fn commands_by(addr: &str, actor: Option<&str>, action: &str, vm: &str) -> usize {
    let needle = format!(" {action} {vm} on ");
    audit(addr)
        .await
        .iter()
        .filter(|e| e.action == "agent.command" && actor.is_none_or(|a| e.actor == a))
        .map(|e| e.detail.matches(&needle).count())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_a_site_fails_every_app_over_in_dependency_order() {
    let _g = serial();
    let mut lab = Lab::start().await;
    let lost_at = Instant::now();
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    lab.kill_site("north");
    let live = lab.live();

    // The leader at south or the witness declares north lost and begins a failover.
    let op = wait_for(Duration::from_secs(20), "an automatic failover", || {
        let l = &lab;
        async move {
            let ops = l.run(&["op", "list"]);
            let v: Value = serde_json::from_slice(&ops.stdout).ok()?;
            v.as_array()?
                .iter()
                .find(|o| o["note"] == "site north lost")
                .and_then(|o| o["op"].as_u64())
        }
    })
    .await;
    // Tiers 1-3 come up; archive waits for an operator.
    wait_for(
        Duration::from_secs(30),
        "db, api, portal running at south",
        || {
            let l = &lab;
            async move {
                ["db", "api", "portal"]
                    .iter()
                    .all(|a| {
                        let v = l.app(a);
                        v["active_site"] == "south" && v["state"] == "running"
                    })
                    .then_some(())
            }
        },
    )
    .await;
    let all_up = lost_at.elapsed();
    let waiting = lab.json(&["op", "show", &op.to_string()]);
    assert_eq!(waiting["status"], "running", "{waiting}");
    assert_eq!(app_line(&waiting, "archive")["result"], "in progress");
    assert_eq!(
        lab.app("archive")["active_site"],
        "north",
        "not moved before approval"
    );
    assert_eq!(
        vm_state(&live, "archive-1").await.as_deref(),
        Some("unknown"),
        "a VM on a down host is not shown as running"
    );
    assert_eq!(
        commands_for(&live, "start", "archive-1").await,
        1,
        "archive-1 was started once (initially), not at south yet"
    );

    let o = lab.run(&["op", "approve", &op.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let rec = lab.wait_op(op, Duration::from_secs(20)).await;
    assert_eq!(rec["status"], "succeeded", "{rec}");
    // RTO counts from the loss: the leader's estimate is never (much) later than the
    // real kill, so the record does not understate the RTO (one heartbeat of slack).
    let lost_ms = rec["lost_ms"].as_u64().expect("lost_ms");
    assert!(
        lost_ms <= killed_ms + 300 && lost_ms + 2000 >= killed_ms,
        "loss estimated at {lost_ms}, killed at {killed_ms}"
    );

    // Dependency order: each tier's health gate passed before the next tier started.
    let db = step(&rec, "db", "health gate");
    let api_start = step(&rec, "api", "start VMs");
    let api = step(&rec, "api", "health gate");
    let portal_start = step(&rec, "portal", "start VMs");
    assert!(
        db.1 <= api_start.0,
        "api started before db was healthy: {rec}"
    );
    assert!(
        api.1 <= portal_start.0,
        "portal started before api was healthy: {rec}"
    );
    for (app, target) in [("db", 15.0), ("api", 20.0), ("portal", 30.0)] {
        let l = app_line(&rec, app);
        let rto = l["rto_s"].as_f64().unwrap();
        assert!(
            rto > 0.0 && rto <= target,
            "{app}: RTO {rto} s over {target}: {rec}"
        );
        assert_eq!(l["rto_met"], true);
        assert!(
            l["promotion"].as_str().unwrap().contains("epoch 1 -> 2"),
            "{l}"
        );
    }
    eprintln!(
        "site loss -> db, api, portal running at south: {:.2} s (test clock); record: {}",
        all_up.as_secs_f64(),
        ["db", "api", "portal"]
            .iter()
            .map(|a| format!("{a} {:.2} s", app_line(&rec, a)["rto_s"].as_f64().unwrap()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Every north volume is primary at south at epoch 2; north's copy is outdated.
    for v in [
        "db-data",
        "api-1-os",
        "api-2-os",
        "portal-os",
        "archive-data",
    ] {
        let vol = lab.volume(v);
        assert_eq!(vol["epoch"], 2, "{vol}");
        assert_eq!(replica(&vol, "south")["role"], "primary", "{vol}");
        assert_eq!(replica(&vol, "north")["role"], "secondary", "{vol}");
        assert_eq!(replica(&vol, "north")["data"], "outdated", "{vol}");
    }
    assert_eq!(
        lab.volume("mail-data")["epoch"],
        1,
        "south's own app untouched"
    );
    for vm in ["db-1", "api-1", "api-2", "portal-1", "archive-1"] {
        assert_eq!(
            vm_state(&live, vm).await.as_deref(),
            Some("running"),
            "{vm}"
        );
        assert_eq!(
            commands_for(&live, "start", vm).await,
            2,
            "{vm}: once at north, once at south"
        );
    }

    // An outdated replica is never promoted: going back is refused with the reason.
    let o = lab.run(&["app", "failover", "db", "--to", "north"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("Outdated") || t.contains("down"), "{t}");
    let o = lab.run(&["app", "failback", "db"]);
    assert!(!o.status.success(), "{}", text(&o));

    // North comes back. Recovering it is refused until it is up, then lists what
    // must resync before anything may move home.
    let o = lab.run(&["site", "recover", "north"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("must be back first"), "{}", text(&o));
    let dir = lab.c.dir.path().to_path_buf();
    restart(&dir, lab.c.node_mut("orch-north"), None);
    for h in ["north-h1", "north-h2"] {
        let addrs = lab.addrs.clone();
        lab.agents.insert(
            h.into(),
            start_agent(&dir, h, &addrs, "test:///private", None),
        );
    }
    wait_for(Duration::from_secs(20), "site north up again", || {
        let l = &lab;
        async move {
            let v = l.json(&["site", "list"]);
            v.as_array()?
                .iter()
                .any(|s| {
                    s["id"] == "north"
                        && s["state"] == "up"
                        && s["hosts"]
                            .as_array()
                            .is_some_and(|h| h.iter().all(|h| h["state"] == "up"))
                })
                .then_some(())
        }
    })
    .await;
    // The leader sees the returning node as reachable only once Raft replicates to it
    // again: retry like an operator would.
    let t = Instant::now();
    let r = loop {
        let o = lab.run(&["site", "recover", "north"]);
        if o.status.success() {
            break serde_json::from_slice::<Value>(&o.stdout).unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{}", text(&o));
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "site recover accepted {:.1} s after north was seen up",
        t.elapsed().as_secs_f64()
    );
    let behind: Vec<&str> = r["not_up_to_date"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(behind.contains(&"db-data (Outdated)"), "{r}");
    assert!(!behind.iter().any(|v| v.starts_with("mail-data")), "{r}");
    // Still refused: the returning replicas must resync first.
    let o = lab.run(&["app", "failback", "db"]);
    assert!(!o.status.success(), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_mid_failover_finishes_it_exactly_once() {
    let _g = serial();
    let mut lab = Lab::start().await;
    let o = lab.run(&[
        "app",
        "failover",
        "db",
        "api",
        "portal",
        "--to",
        "south",
        "--no-wait",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let begun: Value = serde_json::from_slice(&o.stdout).unwrap();
    let op = begun["op"].as_u64().unwrap();
    // Kill the leader as soon as the first app has been promoted.
    let any = lab.c.nodes[0].grpc.clone();
    wait_for(Duration::from_secs(10), "db promoted", || {
        let l = &lab;
        async move { (l.volume("db-data")["epoch"] == 2).then_some(()) }
    })
    .await;
    let leader = leader_seen_by(&any, Duration::from_secs(5)).await;
    lab.c.node_mut(&leader).kill();
    let rec = lab.wait_op(op, Duration::from_secs(40)).await;
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let live = lab.live();
    for v in ["db-data", "api-1-os", "api-2-os", "portal-os"] {
        let vol = lab.volume(v);
        assert_eq!(vol["epoch"], 2, "no epoch skipped or reused: {vol}");
        assert_eq!(replica(&vol, "south")["role"], "primary");
    }
    let moves = audit(&live)
        .await
        .iter()
        .filter(|e| e.action == "app.move" && e.actor == format!("metrodr op-{op}"))
        .count();
    assert_eq!(moves, 3, "each app moved exactly once");
    let actor = format!("metrodr op-{op}");
    for vm in ["db-1", "api-1", "api-2", "portal-1"] {
        assert_eq!(
            commands_by(&live, Some(&actor), "start", vm).await,
            1,
            "{vm}: op-{op} started it exactly once at south"
        );
        assert_eq!(
            commands_for(&live, "destroy", vm).await,
            1,
            "{vm} fenced once at north"
        );
        // Every VM ends running. On a loaded machine the leader change can outlast a
        // south agent's lease: that agent then fences its VMs, and once the operation
        // is over the cluster restarts them there (a `HostFenced` operation).
        let t = Instant::now();
        loop {
            let st = vm_state(&live, vm).await;
            if st.as_deref() == Some("running") {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                let history = audit_lines(&live, |e| e.detail.contains(vm)).await;
                panic!(
                    "{vm} is {st:?} at {live}, not running; the VM list: {}\n{vm} in the audit log:\n{history}",
                    text(&lab.run(&["vm", "list"])),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if t.elapsed() > Duration::from_millis(100) {
            eprintln!("{vm}: {live} showed it running after {:?}", t.elapsed());
        }
    }
    for e in audit(&live).await.iter().filter(|e| {
        (e.action == "op.start" && e.detail.contains("fenced its VMs"))
            || (e.action == "agent.event" && e.detail.contains("lease expired"))
    }) {
        eprintln!(
            "the leader change fenced a host, and the cluster recovered: {}",
            e.detail
        );
    }
    eprintln!("killed leader {leader} mid-failover; op-{op} finished once: {rec}");
}

/// The audit entries `keep` selects, a line each, for a failure message.
async fn audit_lines(addr: &str, keep: impl Fn(&orchestrator::pb::AuditEntry) -> bool) -> String {
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

/// The whole control plane stalls (SIGSTOP) for longer than a lease: every agent
/// fences its VMs, as it must when it cannot know whether the cluster moved them. When
/// the cluster is back, each agent says so as it registers again, and the leader
/// restarts what each fence stopped where it was placed: nothing moves site, nothing
/// is promoted, every VM runs again.
#[tokio::test(flavor = "multi_thread")]
async fn a_control_plane_stalled_past_the_lease_fences_every_host_then_restarts_its_vms() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let _g = serial();
    let lab = Lab::start().await;
    let live = lab.live();
    let sites_before = lab.sites_of_apps();
    let pids: Vec<i32> = lab.c.nodes.iter().filter_map(|n| n.pid()).collect();
    let stalled_ms = orchestrator::clock::now_ms();
    for p in &pids {
        kill(Pid::from_raw(*p), Signal::SIGSTOP).unwrap();
    }
    // Lease 3 s: every agent's runs out within this.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    for p in &pids {
        kill(Pid::from_raw(*p), Signal::SIGCONT).unwrap();
    }
    let t = Instant::now();
    // The agents' fence reports arrive as the cluster comes back.
    wait_for(
        Duration::from_secs(20),
        "every host's fence reported",
        || {
            let l = &live;
            async move {
                let n = audit(l)
                    .await
                    .iter()
                    .filter(|e| {
                        e.action == "agent.event" && e.detail.contains("lease expired: fenced")
                    })
                    .count();
                (n >= HOSTS.len()).then_some(())
            }
        },
    )
    .await;
    loop {
        let mut all = true;
        for vm in VMS {
            all &= vm_state(&live, vm).await.as_deref() == Some("running");
        }
        if all {
            break;
        }
        if t.elapsed() > Duration::from_secs(40) {
            let history = audit_lines(&live, |e| e.at_ms + 10_000 >= stalled_ms).await;
            panic!(
                "not every VM runs again: {}\n{}\nthe audit log since the stall (at {stalled_ms}):\n{history}\n{}",
                text(&lab.run(&["vm", "list"])),
                text(&lab.run(&["op", "list"])),
                lab.agent_logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "every VM ran again {:.1} s after the control plane resumed",
        t.elapsed().as_secs_f64()
    );
    let log = audit(&live).await;
    let fenced: Vec<&str> = log
        .iter()
        .filter(|e| e.action == "agent.event" && e.detail.contains("lease expired: fenced"))
        .map(|e| e.detail.as_str())
        .collect();
    assert_eq!(
        fenced.len(),
        HOSTS.len(),
        "every host fenced once: {fenced:#?}"
    );
    let restarts: Vec<&str> = log
        .iter()
        .filter(|e| e.action == "op.start" && e.detail.contains("fenced its VMs and is back"))
        .map(|e| e.detail.as_str())
        .collect();
    // One restart per host whose fence stopped VMs (south-h2 runs none).
    let stopped_some = fenced
        .iter()
        .filter(|d| !d.contains("destroyed []"))
        .count();
    assert_eq!(stopped_some, 3, "{fenced:#?}");
    assert_eq!(
        restarts.len(),
        stopped_some,
        "one restart per fenced host: {restarts:#?}"
    );
    // Nothing moved, nothing was promoted.
    let sites_after = lab.sites_of_apps();
    assert_eq!(sites_after, sites_before);
    for e in log.iter().filter(|e| e.action == "app.move") {
        assert!(
            e.detail.contains("promoted []"),
            "a restart promotes nothing: {}",
            e.detail
        );
    }
    for v in ["db-data", "api-1-os", "mail-data"] {
        assert_eq!(lab.volume(v)["epoch"], 1, "{v}");
    }
    // Each VM started once more, by one restart operation.
    for vm in VMS {
        assert_eq!(
            commands_for(&live, "start", vm).await,
            2,
            "{vm}: started at setup and once after its fence"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn switchover_moves_an_app_gracefully_and_failback_brings_it_home() {
    let _g = serial();
    let lab = Lab::start().await;
    let rec = lab.json(&["app", "switchover", "db", "--to", "south"]);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let vol = lab.volume("db-data");
    assert_eq!(vol["epoch"], 2);
    assert_eq!(replica(&vol, "south")["role"], "primary");
    assert_eq!(
        replica(&vol, "north")["data"],
        "up-to-date",
        "a graceful switchover keeps the old primary promotable: {vol}"
    );
    let live = lab.live();
    assert_eq!(
        commands_for(&live, "shutdown", "db-1").await,
        1,
        "stopped gracefully"
    );
    assert_eq!(lab.app("db")["active_site"], "south");
    assert_eq!(vm_state(&live, "db-1").await.as_deref(), Some("running"));

    let rec = lab.json(&["app", "failback", "db"]);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let vol = lab.volume("db-data");
    assert_eq!(vol["epoch"], 3);
    assert_eq!(replica(&vol, "north")["role"], "primary");
    assert_eq!(lab.app("db")["active_site"], "north");

    // Async volumes need a drain first, which is not built: refused, said why.
    let o = lab.run(&["app", "switchover", "archive", "--to", "south"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("asynchronously"), "{}", text(&o));
    // Dry run changes nothing.
    let plan = lab.json(&["app", "failover", "mail", "--to", "north", "--dry-run"]);
    assert_eq!(plan["waves"][0]["apps"][0]["app"], "mail", "{plan}");
    assert_eq!(lab.app("mail")["active_site"], "south");

    // Bad requests: a clear reason, exit 1, nothing changes but the audit log.
    let audit_before = audit(&live).await.len();
    for (args, says) in [
        (
            &["app", "failover", "nope", "--to", "south"][..],
            "no app \"nope\"",
        ),
        (
            &["app", "failover", "mail", "--to", "witness"][..],
            "witness",
        ),
        (
            &["app", "failover", "mail", "--to", "mars"][..],
            "no site \"mars\"",
        ),
        (&["site", "fail", "witness"][..], "witness"),
        (&["site", "recover", "mars"][..], "no site \"mars\""),
        (&["op", "show", "999"][..], "no operation op-999"),
        (&["op", "approve", "1"][..], "already finished"),
    ] {
        let o = lab.run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains(says),
            "{args:?} should say {says:?}: {}",
            text(&o)
        );
    }
    // Each refused change is in the audit log (who tried what, and why), and nothing
    // else is: `op show` is a read.
    let new: Vec<_> = audit(&live).await.into_iter().skip(audit_before).collect();
    assert_eq!(new.len(), 6, "one entry per refused change: {new:?}");
    assert!(
        new.iter().all(|e| e.action == "call.refused"),
        "refused requests change nothing else: {new:?}"
    );
    assert!(new[0].detail.contains("no app \"nope\""), "{:?}", new[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_probes_hold_the_health_gate_until_the_service_answers() {
    let _g = serial();
    // db's service answers (a listener this test holds); mail's port is closed.
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let probe = |port: u16, timeout: u32| {
        format!(
            "\n  [[app.probe]]\n  kind = \"tcp\"\n  port = {port}\n  address = \"127.0.0.1\"\n  timeout_s = {timeout}\n\n"
        )
    };
    let lab = Lab::start_with(|t| {
        let t = t.replacen(
            "[[app]]\nid = \"api\"",
            &format!("{}[[app]]\nid = \"api\"", probe(open_port, 10)),
            1,
        );
        format!("{t}{}", probe(closed_port, 2))
    })
    .await;

    let rec = lab.json(&["app", "switchover", "db", "--to", "south"]);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let gate = rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["app"] == "db" && s["name"] == "health gate")
        .cloned()
        .unwrap_or_else(|| panic!("no health gate step: {rec}"));
    let said = gate["result"].as_str().unwrap_or_default();
    assert!(
        said.contains(&format!("tcp 127.0.0.1:{open_port} accepted a connection")),
        "{gate}"
    );

    // Nothing answers mail's port: the gate waits its 2 s, then fails the operation
    // and says what it tried.
    let started = Instant::now();
    let o = lab.run(&["app", "switchover", "mail", "--to", "north"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "tcp port {closed_port} did not accept a connection within 2 s"
        )),
        "{out}"
    );
    assert!(out.contains("refused"), "{out}");
    assert!(started.elapsed() >= Duration::from_secs(2), "{out}");
    drop(open);
}

/// The voters `status` lists.
fn voters(status: &Value) -> Vec<String> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["voter"] == true)
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_quorum_a_forced_site_fail_leaves_the_survivor_alone_and_fails_over() {
    let _g = serial();
    let mut lab = Lab::start().await;
    // North is lost, and the witness with it: south alone has no quorum, so nothing
    // fails over by itself.
    lab.kill_site("north");
    let dir = lab.c.dir.path().to_path_buf();
    lab.c.node_mut("orch-witness").kill();
    let south = lab.c.node("orch-south").grpc.clone();

    // Without a majority south cannot commit; an operator forces it. (Right after the
    // kill south may still believe in the old leader for an election timeout: it then
    // says so, and the operator tries again.)
    let forced = wait_for(Duration::from_secs(15), "the forced site fail", || {
        let s = south.clone();
        async move {
            let o = cli_run(&s, &["site", "fail", "north", "--force", "--no-wait"]);
            if o.status.success() {
                return Some(text(&o));
            }
            assert!(
                text(&o).contains("quorum"),
                "a forced site fail refused for another reason: {}",
                text(&o)
            );
            None
        }
    })
    .await;
    assert!(forced.contains("orch-south is the only voter"), "{forced}");

    // South leads alone; the change is audited with who forced it.
    let st = cli_json(&south, &["status"]);
    assert_eq!(st["leader"], "orch-south", "{st}");
    assert_eq!(voters(&st), ["orch-south"], "{st}");
    let audit = wait_for(Duration::from_secs(10), "the forced change audited", || {
        let s = south.clone();
        async move {
            let v = cli_json(&s, &["audit", "list", "--limit", "10000"]);
            v["entries"]
                .as_array()?
                .iter()
                .find(|e| {
                    e["action"] == "cluster.membership"
                        && e["detail"]
                            .as_str()
                            .unwrap_or_default()
                            .starts_with("forced")
                })
                .cloned()
        }
    })
    .await;
    let detail = audit["detail"].as_str().unwrap();
    assert!(
        detail.contains("site north declared lost without a quorum")
            && detail.contains("orch-north")
            && detail.contains("orch-witness"),
        "{audit}"
    );

    // The declared loss fails the apps over as usual (archive waits for approval).
    let op = wait_for(Duration::from_secs(20), "the site-fail operation", || {
        let s = south.clone();
        async move {
            let v = cli_json(&s, &["op", "list"]);
            v.as_array()?
                .iter()
                .find(|o| o["note"].as_str().unwrap_or_default().contains("north"))
                .and_then(|o| o["op"].as_u64())
        }
    })
    .await;
    wait_for(
        Duration::from_secs(40),
        "db, api, portal running at south",
        || {
            let s = south.clone();
            async move {
                ["db", "api", "portal"]
                    .iter()
                    .all(|a| {
                        let v = cli_json(&s, &["app", "list"]);
                        v.as_array().is_some_and(|apps| {
                            apps.iter().any(|x| {
                                x["id"] == *a
                                    && x["active_site"] == "south"
                                    && x["state"] == "running"
                            })
                        })
                    })
                    .then_some(())
            }
        },
    )
    .await;
    let o = cli_run(&south, &["op", "approve", &op.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let rec = wait_op(&south, op, Duration::from_secs(30)).await;
    assert_eq!(rec["status"], "succeeded", "{rec}");

    // The witness comes back with its old state (it still counts north, south and
    // itself as voters): when it reaches south it is refused as removed and halts,
    // so the old majority cannot come back as a second cluster.
    restart(&dir, lab.c.node_mut("orch-witness"), None);
    let witness = lab.c.node("orch-witness").grpc.clone();
    let why = wait_for(
        Duration::from_secs(20),
        "the returning witness to halt",
        || {
            let w = witness.clone();
            async move {
                let s = status(&w).await?;
                s.store_warning
                    .contains("halted")
                    .then_some(s.store_warning)
            }
        },
    )
    .await;
    assert!(
        why.contains("forced membership change") && why.contains("cluster add-node"),
        "{why}"
    );
    let st = cli_json(&south, &["status"]);
    assert_eq!(st["leader"], "orch-south", "{st}");
    assert_eq!(voters(&st), ["orch-south"], "{st}");
}
