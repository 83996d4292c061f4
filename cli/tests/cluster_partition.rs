//! Network partitions with real processes, each orchestrator in its own network
//! namespace (the `chaos` lab): the majority keeps committing, the minority refuses
//! writes with a clear error, and after healing every node has the same log.
//! Needs root (network namespaces); without it the test fails loudly.

// Each test holds the `serial()` guard for its whole run, on purpose: the tests run
// one at a time, each on its own runtime, so no other task waits for this lock.
#![allow(clippy::await_holding_lock, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use chaos::netns::{NetLab, preflight};
use common::*;

fn lab() -> NetLab {
    if let Err(e) = preflight() {
        panic!(
            "\n########################################################################\n\
             # this test needs network namespaces: {e}\n\
             ########################################################################\n"
        );
    }
    NetLab::create(&["orch-a", "orch-b", "orch-w"]).expect("create the lab")
}

fn start_in_lab(lab: &NetLab, dir: &std::path::Path) -> Vec<NodeProc> {
    ["orch-a", "orch-b", "orch-w"]
        .iter()
        .map(|n| start_node(dir, n, &format!("{}:7400", lab.addr(n)), Some((n, lab))))
        .collect()
}

async fn entries_everywhere_agree(nodes: &[NodeProc], at_least: usize) {
    let addrs: Vec<String> = nodes.iter().map(|n| n.grpc.clone()).collect();
    wait_for(
        Duration::from_secs(15),
        "every node to hold the same audit log",
        move || {
            let addrs = addrs.clone();
            async move {
                let mut logs = Vec::new();
                for a in &addrs {
                    logs.push(audit(a).await);
                }
                (logs[0].len() >= at_least && logs.iter().all(|l| l == &logs[0])).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_majority_commits_and_the_minority_refuses_during_a_partition() {
    let _g = serial();
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_in_lab(&lab, dir.path());
    let topo = minimal_topology().display().to_string();
    let mut args = vec![
        "cluster".to_string(),
        "init".into(),
        "--topology".into(),
        topo,
    ];
    for n in &nodes {
        args.push("--addr".into());
        args.push(format!("{}={}", n.name, n.grpc));
    }
    let o = metrodr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let addr_of = |name: &str| nodes.iter().find(|n| n.name == name).unwrap().grpc.clone();

    // 1. Cut the leader off.
    let leader = leader_seen_by(&nodes[0].grpc, Duration::from_secs(10)).await;
    note(&addr_of(&leader), "before the partition")
        .await
        .unwrap();
    lab.isolate(&leader).unwrap();
    let majority: Vec<String> = nodes
        .iter()
        .filter(|n| n.name != leader)
        .map(|n| n.grpc.clone())
        .collect();
    let (m, old) = (majority.clone(), leader.clone());
    let new_leader = wait_for(
        Duration::from_secs(10),
        "the majority to elect a leader",
        move || {
            let (m, old) = (m.clone(), old.clone());
            async move {
                let s = status(&m[0]).await?;
                (!s.leader.is_empty() && s.leader != old).then_some(s.leader)
            }
        },
    )
    .await;
    for i in 0..10 {
        note(&majority[i % 2], &format!("majority {i}"))
            .await
            .expect("the majority commits");
    }
    // The cut-off old leader refuses, and says why.
    let minority = addr_of(&leader);
    let e = wait_for(
        Duration::from_secs(5),
        "the minority to refuse a write",
        || {
            let minority = minority.clone();
            async move { note(&minority, "written in the minority").await.err() }
        },
    )
    .await;
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("cut off")
            || e.message().contains("knows no leader")
            || e.message().contains("cannot reach the leader"),
        "unclear error: {}",
        e.message()
    );
    eprintln!("minority {leader} refused: {}", e.message());

    // Heal: the old leader rejoins as a follower and gets everything; the refused write
    // never appears anywhere.
    lab.heal_all().unwrap();
    entries_everywhere_agree(&nodes, 12).await;
    let log = audit(&nodes[0].grpc).await;
    assert!(!log.iter().any(|e| e.detail == "written in the minority"));
    assert_eq!(status(&minority).await.unwrap().leader, new_leader);

    // 2. Cut a follower off: the leader and the other follower keep committing.
    let leader = leader_seen_by(&nodes[0].grpc, Duration::from_secs(10)).await;
    let follower = nodes
        .iter()
        .find(|n| n.name != leader)
        .unwrap()
        .name
        .clone();
    lab.isolate(&follower).unwrap();
    let f = addr_of(&follower);
    let e = wait_for(
        Duration::from_secs(10),
        "the cut-off follower to refuse a write",
        || {
            let f = f.clone();
            async move { note(&f, "written by a cut-off follower").await.err() }
        },
    )
    .await;
    assert!(
        matches!(
            e.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        "{e:?}"
    );
    eprintln!("cut-off follower {follower} refused: {}", e.message());
    for i in 0..5 {
        note(&addr_of(&leader), &format!("two of three {i}"))
            .await
            .expect("two nodes are a majority");
    }
    lab.heal_all().unwrap();
    entries_everywhere_agree(&nodes, 17).await;
    let o = metrodr(&["--cluster", &nodes[0].grpc, "audit", "verify"]);
    assert!(o.status.success(), "{}", text(&o));
    drop(nodes);
    lab.destroy().unwrap();
}
