//! Volumes served by the agents (`volumes = "agents"` in the topology): the cluster
//! places each app's group (primary at its site, secondary at the other), the agents
//! serve them in process, and a failover promotes the secondary on the host where the
//! app's VMs restart. Real processes: three orchestrator nodes and four agents on
//! libvirt's test driver (examples/lab.toml, whose volumes the agents serve); a writer talks
//! NBD to the primary's socket on its host, as QEMU would.

// Each test holds the `serial()` guard for its whole run, on purpose (see cluster.rs).
#![allow(clippy::await_holding_lock, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::agent_lab::*;
use common::*;
use lab::workload::{BLOCK, record};
use serde_json::json;

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
    let w = writer(&lab.socket("db-data", "db", "north"), "db-data").await;
    wait_for(Duration::from_secs(20), "50 records written", || {
        let n = w.acknowledged();
        async move { (n > 50).then_some(()) }
    })
    .await;
    let killed = Instant::now();
    lab.kill_site("north");
    // The writer stops when north dies: its next write fails.
    wait_for(Duration::from_secs(10), "the writer to stop", || {
        let stopped = !w.errors().is_empty();
        async move { stopped.then_some(()) }
    })
    .await;
    let acked = w.stop();
    assert!(
        acked.writes > 50,
        "the writer wrote through replication ({} records)",
        acked.writes
    );

    let live = lab.live();
    let op = lab.site_lost_op("north", Duration::from_secs(30)).await;
    // archive waits for approval.
    let o = lab.run(&["op", "approve", &op.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let rec = lab.wait_op(op, Duration::from_secs(60)).await;
    assert_eq!(rec["status"], "succeeded", "{rec}");
    eprintln!(
        "site loss → op-{op} done {:.2} s after the kill; {} records acknowledged",
        killed.elapsed().as_secs_f64(),
        acked.writes
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
    assert!(vm_running(&live, "db-1").await);

    // Every acknowledged record is on the promoted replica, served at the south host.
    let south = lab.socket("db-data", "db", "south");
    assert_eq!(
        missing(&south, "db-data", &acked).await,
        0,
        "acknowledged records missing after failover (of {})",
        acked.writes
    );
    // The promoted primary takes writes (it runs alone: north is outdated).
    let c = lab::workload::connect(&south, "db-data").await.unwrap();
    let written_at_south = record(0, u64::MAX);
    c.write(0, written_at_south.clone(), true).await.unwrap();
    drop(c);

    // North returns: its agents register, the controller serves its replicas as
    // secondaries on their old endpoints, the promoted primaries find them and resync
    // the difference; then db may go home.
    lab.restart_site("north");
    // The leader sees the returning node as reachable only once Raft replicates to it
    // again: retry like an operator would.
    let mut said = String::new();
    let every = Duration::from_millis(500);
    let recovered = lab::wait::wait_every(every, Duration::from_secs(40), "site recover", || {
        let o = lab.run(&["site", "recover", "north"]);
        said = text(&o);
        let ok = o.status.success();
        async move { ok.then_some(()) }
    })
    .await;
    assert!(recovered.is_ok(), "{recovered:?}: {said}");
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
            let event = e
                .event
                .clone()
                .map(orchestrator::wire::audit_event_from_wire);
            matches!(
                event,
                Some(Ok(orchestrator::state::AuditEvent::ReplicaLink { app, site, link, .. }))
                    if app.as_str() == "db"
                        && site.as_str() == "south"
                        && link == orchestrator::state::LinkReport::InSync
            )
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
    let c = lab::workload::connect(&lab.socket("db-data", "db", "north"), "db-data")
        .await
        .unwrap();
    assert_eq!(c.read(0, BLOCK as u32).await.unwrap(), written_at_south);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_group_switches_over_drained_and_replication_reverses() {
    let _g = serial();
    let lab = Lab::start().await;
    // The archive replicates asynchronously: write, then switch it over at once.
    let c = lab::workload::connect(
        &lab.socket("archive-data", "archive", "north"),
        "archive-data",
    )
    .await
    .unwrap();
    let n = 400u64;
    for seq in 0..n {
        c.write(seq * BLOCK, record(seq, seq + 1), false)
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
    let c = lab::workload::connect(
        &lab.socket("archive-data", "archive", "south"),
        "archive-data",
    )
    .await
    .unwrap();
    for seq in 0..n {
        assert_eq!(
            c.read(seq * BLOCK, BLOCK as u32).await.unwrap(),
            record(seq, seq + 1),
            "record {seq}"
        );
    }
    // Replication runs the other way: north's replica resyncs and only the south
    // primary's report of an in-sync link can make it up to date again.
    c.write(0, record(0, u64::MAX), true).await.unwrap();
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
