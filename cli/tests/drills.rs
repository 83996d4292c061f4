//! Test drills on the lab (three orchestrator nodes, four agents on libvirt's test
//! driver, every volume served by the agents): a drill starts a copy of every app at
//! its other site on snapshots of the replicas, while a writer keeps writing through
//! production's primary; production never moves, replication never falls behind, the
//! drill leaves nothing behind, and its report is signed so that one changed byte is
//! caught. A drill whose leader is killed is cleaned up by the next leader and reported
//! as interrupted.

// Each test holds the `serial()` guard for its whole run, on purpose (see cluster.rs).
#![allow(clippy::await_holding_lock, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::agent_lab::*;
use common::*;
use serde_json::Value;

/// Where every production VM runs, in which state, since when (`vm list`).
fn production(lab: &Lab) -> BTreeMap<String, (String, String, u64)> {
    lab.json(&["vm", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["vm"].as_str().unwrap().to_string(),
                (
                    v["host"].as_str().unwrap_or_default().to_string(),
                    v["state"].as_str().unwrap_or_default().to_string(),
                    v["since_ms"].as_u64().unwrap_or_default(),
                ),
            )
        })
        .collect()
}

/// Replicas that are not up to date right now, as "volume@site state".
fn lagging(lab: &Lab) -> Vec<String> {
    let v = lab.json(&["volume", "list"]);
    let mut out = Vec::new();
    for vol in v.as_array().unwrap() {
        for r in vol["replicas"].as_array().unwrap() {
            if r["data"] != "up-to-date" {
                out.push(format!("{}@{} {}", vol["id"], r["site"], r["data"]));
            }
        }
    }
    out
}

/// Files a drill left in the agents' state directories (snapshots, sockets).
fn drill_leftovers(dir: &Path, op: u64) -> Vec<String> {
    let mut out = Vec::new();
    for h in HOSTS {
        let state = dir.join(format!("agent-{h}"));
        if let Ok(rd) = std::fs::read_dir(state.join("volumes/drills")) {
            out.extend(rd.flatten().map(|e| e.path().display().to_string()));
        }
        if let Ok(rd) = std::fs::read_dir(state.join("sockets")) {
            out.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("d{op}-"))),
            );
        }
    }
    out
}

fn step<'a>(rec: &'a Value, app: &str, prefix: &str) -> &'a Value {
    rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["app"] == app && s["name"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no step {prefix:?} of {app}: {rec}"))
}

fn flip_byte(from: &Path, to: &Path, at: usize) {
    let mut b = std::fs::read(from).unwrap();
    let i = at % b.len();
    b[i] = if b[i] == b'7' { b'8' } else { b'7' };
    std::fs::write(to, b).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_drill_starts_every_app_at_the_other_site_and_touches_nothing() {
    let _g = serial();
    let lab = Lab::start().await;
    let before = production(&lab);
    assert_eq!(before.len(), VMS.len(), "{before:?}");

    // Production keeps writing through the primary of db during the drill.
    let w = writer(&lab.socket("db-data", "db", "north"), "db-data").await;
    wait_for(Duration::from_secs(10), "production writing", || {
        let n = w.acknowledged();
        async move { (n > 0).then_some(()) }
    })
    .await;

    let o = lab.run(&["drill", "run", "--kind", "test", "--all", "--no-wait"]);
    assert!(o.status.success(), "{}", text(&o));
    let begun: Value = serde_json::from_slice(&o.stdout).unwrap();
    let op = begun["op"].as_u64().unwrap();
    // While it runs: every replica stays up to date (replication within its bound).
    let mut samples = 0;
    let mut behind = Vec::new();
    let mut last = String::new();
    let every = Duration::from_millis(100);
    let rec = lab::wait::wait_every(every, Duration::from_secs(120), "the drill to end", || {
        behind.extend(lagging(&lab));
        samples += 1;
        let o = lab.run(&["op", "show", &op.to_string()]);
        last = text(&o);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let done = (v["status"] != "running" && !v.is_null()).then_some(v);
        async move { done }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {last}"));
    let acked = w.stop().writes;
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert!(
        behind.is_empty(),
        "replicas fell behind during the drill: {behind:?}"
    );
    assert!(acked > 20, "production kept writing: {acked} records");
    eprintln!(
        "op-{op}: {samples} samples of the replicas, all up to date; {acked} records written meanwhile"
    );

    // Every app got a copy at its other site, on a snapshot, isolated, and healthy.
    for (app, other) in [
        ("db", "south"),
        ("api", "south"),
        ("portal", "south"),
        ("archive", "south"),
        ("mail", "north"),
    ] {
        let snap = step(&rec, app, &format!("snapshot at {other}-"));
        assert_eq!(snap["kind"], "snapshot", "{snap}");
        assert!(
            snap["outcome"]["outcome"]["seq"].as_u64().is_some(),
            "the snapshot's sequence point: {snap}"
        );
        let start = step(&rec, app, "start drill VMs");
        let copies = start["outcome"]["outcome"]["copies"].as_array().unwrap();
        assert!(!copies.is_empty(), "{start}");
        for c in copies {
            let started = &c["outcome"];
            let domain = started["domain"].as_str().unwrap();
            assert!(domain.starts_with(&format!("drill-{op}-")), "{start}");
            assert_eq!(started["network"], format!("mdr-drill-{op}"), "{start}");
            assert_eq!(started["isolated"], true, "{start}");
            assert!(c["host"].as_str().unwrap().starts_with(other), "{start}");
        }
        for s in ["health gate", "production check", "production after"] {
            let st = step(&rec, app, s);
            assert!(
                !st["result"].as_str().unwrap().starts_with("FAILED"),
                "{st}"
            );
        }
    }
    // Production: same VMs on the same hosts in the same states.
    assert_eq!(production(&lab), before);
    // Nothing of the drill is left on any host.
    let cleanup = rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "cleanup" && s["name"] == "cleanup")
        .unwrap_or_else(|| panic!("no cleanup: {rec}"));
    let r = cleanup["result"].as_str().unwrap();
    assert!(r.contains(&format!("drill-{op}-db-1 removed")), "{r}");
    assert!(r.contains(&format!("network mdr-drill-{op} gone")), "{r}");
    assert!(r.contains("replica is now at sequence"), "{r}");
    let left = drill_leftovers(lab.dir(), op);
    assert!(left.is_empty(), "left behind: {left:?}");

    // The signed report: it verifies, pinned to the cluster's key, and one changed
    // byte anywhere fails it.
    let dir = lab.dir();
    let key = lab.run(&["report", "key"]);
    let key: Value = serde_json::from_slice(&key.stdout).unwrap();
    let key = key["public_key"].as_str().unwrap().to_string();
    for format in ["html", "json", "text"] {
        let file = dir.join(format!("op-{op}.{format}"));
        let o = lab.run(&[
            "report",
            "export",
            &format!("op-{op}"),
            "--format",
            format,
            "--out",
            file.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let o = metrodr(&[
            "report",
            "verify",
            file.to_str().unwrap(),
            "--public-key",
            &key,
            "-o",
            "json",
        ]);
        assert!(o.status.success(), "{format}: {}", text(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["passed"], true, "{v}");
        let len = std::fs::metadata(&file).unwrap().len() as usize;
        for at in [0, len / 3, len / 2, len - 2] {
            let bad = dir.join(format!("bad-{at}.{format}"));
            flip_byte(&file, &bad, at);
            let o = metrodr(&["report", "verify", bad.to_str().unwrap()]);
            assert_eq!(o.status.code(), Some(1), "{format} byte {at}: {}", text(&o));
            assert!(text(&o).contains("NOT VERIFIED"), "{}", text(&o));
        }
    }
    let html = std::fs::read_to_string(dir.join(format!("op-{op}.html"))).unwrap();
    assert!(html.contains("id=\"timeline\"") && html.contains("id=\"apps\""));
    // The drill counts for readiness.
    let ready = lab.json(&["app", "readiness", "db"]);
    assert_eq!(ready[0]["last_drill"][0], format!("op-{op}"), "{ready}");
    let drills = lab.json(&["drill", "list"]);
    assert!(
        drills
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == format!("op-{op}") && d["kind"] == "test-drill"),
        "{drills}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drill_interrupted_by_a_leader_kill_is_cleaned_up_and_reported_interrupted() {
    let _g = serial();
    // db gets a serial probe the test driver never prints: the drill waits in its
    // health gate, where the leader is killed.
    let text0 = std::fs::read_to_string(root().join("examples/lab.toml")).unwrap();
    let probe = "  disks = [\"db-data\"]\n\n  [[app.probe]]\n  kind = \"serial\"\n  vm = \"db-1\"\n  marker = \"never printed by the test driver\"\n  timeout_s = 120\n";
    let topo = text0.replacen("  disks = [\"db-data\"]\n", probe, 1);
    assert_ne!(topo, text0);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("lab-probe.toml");
    std::fs::write(&file, topo).unwrap();
    let mut lab = Lab::start_with(&file).await;
    let before = production(&lab);

    let o = lab.run(&[
        "drill",
        "run",
        "--kind",
        "test",
        "--apps",
        "db",
        "--no-wait",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let op = serde_json::from_slice::<Value>(&o.stdout).unwrap()["op"]
        .as_u64()
        .unwrap();
    let addrs = lab.addrs.clone();
    wait_for(Duration::from_secs(30), "the drill's health gate", || {
        let a = addrs.clone();
        async move {
            let v = cli_json(&a, &["op", "show", &op.to_string()]);
            v["steps"]
                .as_array()?
                .iter()
                .any(|s| s["name"] == "health gate")
                .then_some(())
        }
    })
    .await;
    let leader = leader_seen_by(&lab.first(), Duration::from_secs(5)).await;
    lab.kill(&leader);
    eprintln!("killed the leader {leader} during op-{op}'s health gate");

    let rec = wait_op(&lab.addrs, op, Duration::from_secs(60)).await;
    assert_eq!(rec["status"], "interrupted", "{rec}");
    let cleanup = rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "cleanup" && s["name"] == "cleanup after interruption")
        .unwrap_or_else(|| panic!("no cleanup: {rec}"));
    let r = cleanup["result"].as_str().unwrap();
    assert!(r.contains(&format!("drill-{op}-db-1 removed")), "{r}");
    assert!(r.contains("dropped"), "{r}");
    let left = drill_leftovers(lab.dir(), op);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(production(&lab), before);
    // The report says so, signed.
    let out = lab.dir().join("interrupted.json");
    let o = lab.run(&[
        "report",
        "export",
        &format!("op-{op}"),
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = metrodr(&["report", "verify", out.to_str().unwrap(), "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "interrupted", "{v}");
    assert_eq!(v["passed"], false, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switchover_drill_moves_an_app_and_back_and_both_reports_say_so() {
    let _g = serial();
    let lab = Lab::start().await;
    let o = lab.run(&[
        "drill",
        "run",
        "--kind",
        "switchover",
        "--apps",
        "mail",
        "--to",
        "north",
        "--and-back",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let drills = lab.json(&["drill", "list"]);
    let list = drills.as_array().unwrap();
    assert_eq!(list.len(), 2, "there and back: {drills}");
    for d in list {
        assert_eq!(d["kind"], "switchover-drill", "{d}");
        assert_eq!(d["status"], "succeeded", "{d}");
    }
    // Home again, replication reversed twice, nothing lost on the way (a graceful
    // move drains before promoting).
    let apps = lab.json(&["app", "list"]);
    let mail = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "mail")
        .unwrap();
    assert_eq!(mail["active_site"], "south", "{mail}");
    let vol = lab.volume("mail-data");
    assert_eq!(vol["epoch"], 3, "{vol}");
    assert_eq!(replica(&vol, "south")["role"], "primary");
    let first = list.last().unwrap()["id"].as_str().unwrap().to_string();
    let o = lab.run(&["report", "show", &first, "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "switchover-drill", "{v}");
    assert_eq!(v["apps"][0]["site_after"], "north", "{v}");
    assert!(
        v["apps"][0]["rto_achieved_s"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_runs_a_scheduled_drill_when_it_is_due() {
    let _g = serial();
    let text0 = std::fs::read_to_string(root().join("examples/lab.toml")).unwrap();
    let topo = format!(
        "{text0}\n[[drill]]\nid = \"often\"\nkind = \"test\"\napps = [\"mail\"]\nevery = \"4s\"\n"
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("lab-schedule.toml");
    std::fs::write(&file, topo).unwrap();
    let lab = Lab::start_with(&file).await;
    let addrs = lab.addrs.clone();
    let op = wait_for(Duration::from_secs(40), "a scheduled drill", || {
        let a = addrs.clone();
        async move {
            let v = cli_json(&a, &["drill", "schedule"]);
            let s = &v.as_array()?.first()?.clone();
            (s["last"][1] == "succeeded").then(|| s["last"][0].as_str().map(String::from))?
        }
    })
    .await;
    let ops = lab.json(&["op", "list"]);
    let rec = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|o| format!("op-{}", o["op"]) == op)
        .unwrap_or_else(|| panic!("{op} not in {ops}"));
    assert_eq!(rec["started_by"], "schedule:often", "{rec}");
    assert_eq!(rec["kind"], "drill", "{rec}");
    let sched = lab.json(&["drill", "schedule"]);
    let s = &sched[0];
    assert_eq!(s["apps"], serde_json::json!(["mail"]), "{s}");
    assert!(
        s["next_due_ms"].as_u64().unwrap() >= s["last"][2].as_u64().unwrap() + 4000,
        "{s}"
    );
}
