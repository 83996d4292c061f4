//! Volumes served by the agents (`volumes = "agents"` in the topology): the cluster
//! places each app's group (primary at its site, secondary at the other), the agents
//! serve them in process, and a failover promotes the secondary on the host where the
//! app's VMs restart. Real processes: three orchestrator nodes and four agents on
//! libvirt's test driver (examples/lab.toml, whose volumes the agents serve); a writer talks
//! NBD to the primary's socket on its host, as QEMU would.

// Each test holds the `serial()` guard for its whole run, on purpose (see cluster.rs).
#![allow(clippy::await_holding_lock, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::agent_lab::*;
use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_serve_every_group_and_a_site_loss_promotes_it_where_the_apps_restart() {
    let _g = serial();
    let mut lab = Lab::start().await;
    let vol = lab.volume("db-data");
    let north_host = replica(&vol, "north")["host"].as_str().unwrap().to_string();
    let south_host = replica(&vol, "south")["host"].as_str().unwrap().to_string();
    assert!(north_host.starts_with("north-") && south_host.starts_with("south-"));
    // The app's VM runs on the host that serves its primary.
    let apps = lab.json(&["app", "list"]);
    let db = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "db")
        .unwrap();
    assert_eq!(db["placement"]["db-1"], north_host.as_str(), "{db}");

    // A writer on the primary's socket, as the VM's QEMU would be.
    let c = connect(&lab.socket("db-data", "db", "north"), "db-data").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until_failure(c, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Instant::now();
    lab.kill_site("north");
    let acked = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the writer stops when north dies")
        .unwrap();
    assert!(
        acked > 50,
        "the writer wrote through replication ({acked} records)"
    );

    let live = lab.live();
    let op = wait_for(Duration::from_secs(30), "the automatic failover", || {
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
    // archive waits for approval.
    let o = lab.run(&["op", "approve", &op.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let rec = lab.wait_op(op, Duration::from_secs(60)).await;
    assert_eq!(rec["status"], "succeeded", "{rec}");
    eprintln!(
        "site loss → op-{op} done {:.2} s after the kill; {acked} records acknowledged",
        killed.elapsed().as_secs_f64()
    );
    let steps = rec["steps"].as_array().unwrap();
    let serve = steps
        .iter()
        .find(|s| s["app"] == "db" && s["kind"] == "serve-volumes")
        .unwrap_or_else(|| panic!("no serve step: {rec}"));
    let served = &serve["outcome"]["outcome"]["served"];
    assert_eq!(
        (&served["role"], &served["epoch"], &served["promoted"]),
        (&json!("primary"), &json!(2), &json!(true)),
        "{serve}"
    );
    let vol = lab.volume("db-data");
    assert_eq!(vol["epoch"], 2);
    assert_eq!(replica(&vol, "south")["role"], "primary");
    assert_eq!(replica(&vol, "north")["data"], "outdated");
    assert_eq!(vm_state(&live, "db-1").await.as_deref(), Some("running"));

    // Every acknowledged record is on the promoted replica, served at the south host.
    let c = connect(&lab.socket("db-data", "db", "south"), "db-data").await;
    let blocks = c.size() / BLOCK as u64;
    let first = acked.saturating_sub(blocks);
    let mut missing = 0;
    for seq in first..acked {
        let got = c
            .read((seq % blocks) * BLOCK as u64, BLOCK as u32)
            .await
            .unwrap();
        if got != record(seq) && got != record(seq + blocks) {
            missing += 1;
        }
    }
    assert_eq!(
        missing, 0,
        "acknowledged records missing after failover (of {acked})"
    );
    // The promoted primary takes writes (it runs alone: north is outdated).
    c.write(0, record(u64::MAX), true).await.unwrap();

    // North returns: its agents register, the controller serves its replicas as
    // secondaries on their old endpoints, the promoted primaries find them and resync
    // the difference; then db may go home.
    for n in lab.c.nodes.iter_mut().filter(|n| n.name.ends_with("north")) {
        restart(lab.c.dir.path(), n, None);
    }
    for h in ["north-h1", "north-h2"] {
        lab.start_agent(h);
    }
    let t = Instant::now();
    loop {
        let o = lab.run(&["site", "recover", "north"]);
        if o.status.success() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(40), "{}", text(&o));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_for(Duration::from_secs(40), "north's db replica resynced", || {
        let l = &lab;
        async move { (replica(&l.volume("db-data"), "north")["data"] == "up-to-date").then_some(()) }
    })
    .await;
    // Only the difference went back: the regions written at either side around the
    // loss, not the 64 MiB volume.
    let report = audit(&lab.live())
        .await
        .into_iter()
        .rev()
        .find(|e| {
            e.action == "replica.link"
                && e.detail.contains("app db: primary at south")
                && e.detail.contains("InSync")
        })
        .expect("the south primary reported north in sync");
    let copied: u64 = report
        .detail
        .split("last resync copied ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resync figure in {:?}", report.detail));
    eprintln!("north's db replica resynced: {}", report.detail);
    assert!(
        copied < 16 << 20,
        "a delta resync, not a full copy of 64 MiB: {}",
        report.detail
    );
    let rec = lab.json(&["app", "failback", "db"]);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let vol = lab.volume("db-data");
    assert_eq!(vol["epoch"], 3);
    assert_eq!(replica(&vol, "north")["role"], "primary");
    // The record written at south after the failover came home.
    let c = connect(&lab.socket("db-data", "db", "north"), "db-data").await;
    assert_eq!(c.read(0, BLOCK as u32).await.unwrap(), record(u64::MAX));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_group_switches_over_drained_and_replication_reverses() {
    let _g = serial();
    let lab = Lab::start().await;
    // The archive replicates asynchronously: write, then switch it over at once.
    let c = connect(
        &lab.socket("archive-data", "archive", "north"),
        "archive-data",
    )
    .await;
    let n = 400u64;
    for seq in 0..n {
        c.write(seq * BLOCK as u64, record(seq), false)
            .await
            .unwrap();
    }
    drop(c);
    let rec = lab.json(&["app", "switchover", "archive", "--to", "south"]);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let steps = rec["steps"].as_array().unwrap();
    let drained = steps
        .iter()
        .find(|s| s["kind"] == "stop-volumes")
        .unwrap_or_else(|| panic!("{rec}"));
    assert_eq!(drained["name"], "stop volumes at north");
    assert_eq!(
        drained["outcome"]["outcome"]["stopped"]["confirmation"]["peer"], "confirmed",
        "the switchover drained the lag first: {drained}"
    );
    let vol = lab.volume("archive-data");
    assert_eq!(vol["epoch"], 2);
    assert_eq!(replica(&vol, "south")["role"], "primary");
    // The new primary takes writes alone until north reconnects: north's replica is
    // committed outdated by the promotion itself, not promotable. (By now the reversed
    // link may already have resynced it: outdated, or up to date again — never a
    // replica that was promotable throughout.)
    let promoted = steps
        .iter()
        .find(|s| s["kind"] == "promote-and-move")
        .unwrap_or_else(|| panic!("{rec}"));
    let moved = &promoted["outcome"]["outcome"];
    assert_eq!(
        (&moved["to"], &moved["demoted"]),
        (&json!("south"), &json!("outdated")),
        "{promoted}"
    );
    assert!(
        ["outdated", "syncing", "up-to-date"]
            .contains(&replica(&vol, "north")["data"].as_str().unwrap()),
        "{vol}"
    );
    // Nothing written at north is missing at south.
    let c = connect(
        &lab.socket("archive-data", "archive", "south"),
        "archive-data",
    )
    .await;
    for seq in 0..n {
        assert_eq!(
            c.read(seq * BLOCK as u64, BLOCK as u32).await.unwrap(),
            record(seq),
            "record {seq}"
        );
    }
    // Replication runs the other way: north's replica resyncs and only the south
    // primary's report of an in-sync link can make it up to date again.
    c.write(0, record(u64::MAX), true).await.unwrap();
    wait_for(
        Duration::from_secs(20),
        "north's replica in sync again",
        || {
            let l = &lab;
            async move {
                let v = l.volume("archive-data");
                (replica(&v, "north")["role"] == "secondary"
                    && replica(&v, "north")["data"] == "up-to-date")
                    .then_some(())
            }
        },
    )
    .await;
}
