//! A site lost: every app fails over in dependency order and waits for approval
//! where its policy says so; without a quorum an operator forces it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::harness::*;
use lab::states::VmSeen;

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
    let op = lab.site_lost_op("north", Duration::from_secs(20)).await;
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
        vm_state(&live, "archive-1").await,
        Some(VmSeen::HostDown),
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
        assert_eq!(vm_state(&live, vm).await, Some(RUNNING), "{vm}");
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
    lab.restart_site("north");
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
    let mut said = String::new();
    let every = Duration::from_millis(500);
    let r = lab::wait::wait_every(every, Duration::from_secs(30), "site recover", || {
        let o = lab.run(&["site", "recover", "north"]);
        said = text(&o);
        let r = o
            .status
            .success()
            .then(|| serde_json::from_slice::<Value>(&o.stdout).unwrap());
        async move { r }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {said}"));
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
async fn without_a_quorum_a_forced_site_fail_leaves_the_survivor_alone_and_fails_over() {
    let _g = serial();
    let mut lab = Lab::start().await;
    // North is lost, and the witness with it: south alone has no quorum, so nothing
    // fails over by itself.
    lab.kill_site("north");
    lab.kill("orch-witness");
    let south = lab.addr("orch-south");

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
    lab.inner
        .restart("orch-witness")
        .unwrap_or_else(|e| panic!("{}", lab::error::chain(&e)));
    let witness = lab.addr("orch-witness");
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
