//! The orchestrator cluster with three real processes on loopback: forming, losing the
//! leader to kill -9, full restarts, membership changes, bad input, tampering, metrics.

// Each test holds the `serial()` guard for its whole run, on purpose: the tests run
// one at a time, each on its own runtime, so no other task waits for this lock.
#![allow(clippy::await_holding_lock, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use orchestrator::client::Client;
use orchestrator::pb;

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_forms_and_elects_a_new_leader_within_2s_of_a_kill_9_losing_nothing() {
    let _g = serial();
    let mut c = TestCluster::start();
    c.init();
    let any = c.nodes[0].grpc.clone();
    let leader = leader_seen_by(&any, Duration::from_secs(10)).await;

    // Committed entries before the kill, written through every node (followers forward).
    let mut committed = Vec::new();
    for i in 0..30 {
        let via = &c.nodes[i % 3].grpc;
        let w = note(via, &format!("before-{i}")).await.expect("write");
        committed.push((w.audit_seq, format!("before-{i}")));
    }

    let victim = c.node_mut(&leader);
    let killed_at = Instant::now();
    victim.kill();
    let survivors: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.name != leader)
        .map(|n| n.grpc.clone())
        .collect();
    let old = leader.clone();
    let s = survivors.clone();
    let new_leader = wait_for(Duration::from_secs(10), "a new leader", move || {
        let s = s.clone();
        let old = old.clone();
        async move {
            for a in &s {
                if let Some(st) = status(a).await
                    && !st.leader.is_empty()
                    && st.leader != old
                {
                    return Some(st.leader);
                }
            }
            None
        }
    })
    .await;
    let elected_after = killed_at.elapsed();
    eprintln!("leader {leader} killed; {new_leader} elected after {elected_after:?}");
    assert!(
        elected_after < Duration::from_secs(2),
        "new leader after {elected_after:?}, target < 2 s"
    );

    // Writes go on, and every acknowledged entry before the kill is still there, in order.
    for i in 0..5 {
        note(&survivors[i % 2], &format!("after-{i}"))
            .await
            .expect("write after failover");
    }
    for a in &survivors {
        let entries = audit(a).await;
        for (seq, text) in &committed {
            let e = entries
                .iter()
                .find(|e| e.seq == *seq)
                .unwrap_or_else(|| panic!("{a}: entry {seq} lost"));
            assert_eq!(&e.detail, text);
        }
        assert!(entries.iter().any(|e| e.detail == "after-4"));
    }
    let o = metrodr(&["--cluster", &survivors.join(","), "audit", "verify"]);
    // The killed node is unreachable; the two survivors must verify and agree.
    assert!(
        text(&o).contains("not checked (unreachable)"),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restarting_all_three_nodes_keeps_the_state_intact() {
    let _g = serial();
    let mut c = TestCluster::start();
    c.init();
    let a = c.nodes[0].grpc.clone();
    leader_seen_by(&a, Duration::from_secs(10)).await;
    for i in 0..20 {
        note(&a, &format!("entry {i}")).await.expect("write");
    }
    let before = status(&a).await.expect("status");
    let entries_before = audit(&a).await;

    for n in &mut c.nodes {
        n.kill();
    }
    let dir = c.dir.path().to_path_buf();
    for n in &mut c.nodes {
        restart(&dir, n, None);
    }
    leader_seen_by(&a, Duration::from_secs(15)).await;
    let a2 = a.clone();
    let after = wait_for(
        Duration::from_secs(10),
        "state applied after restart",
        move || {
            let a = a2.clone();
            async move {
                status(&a)
                    .await
                    .filter(|s| s.audit_entries >= before.audit_entries)
            }
        },
    )
    .await;
    assert_eq!(after.topology_version, before.topology_version);
    assert_eq!(after.audit_head, before.audit_head);
    assert_eq!(audit(&a).await, entries_before);
    for n in &c.nodes {
        let s = status(&n.grpc).await.expect("status");
        assert_eq!(s.nodes.len(), 3, "{} lost membership", n.name);
    }
    note(&c.nodes[2].grpc, "after restart")
        .await
        .expect("writes work after a full restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_can_be_added_and_removed() {
    let _g = serial();
    let c = TestCluster::start();
    c.init();
    let a = c.nodes[0].grpc.clone();
    leader_seen_by(&a, Duration::from_secs(10)).await;
    let extra = start_node(c.dir.path(), "orch-extra", "127.0.0.1:0", None);
    let addrs = c.addrs();
    let o = metrodr(&[
        "--cluster",
        &addrs,
        "-o",
        "json",
        "cluster",
        "add-node",
        "--name",
        "orch-extra",
        "--site",
        "w",
        "--addr",
        &extra.grpc,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["voters"].as_array().map(Vec::len), Some(4), "{v}");
    // The new node catches up with the log.
    note(&a, "seen by the new node").await.unwrap();
    let e = extra.grpc.clone();
    wait_for(
        Duration::from_secs(10),
        "the new node to catch up",
        move || {
            let e = e.clone();
            async move {
                status(&e)
                    .await
                    .filter(|s| s.audit_entries >= 2)
                    .map(|_| ())
            }
        },
    )
    .await;
    let o = metrodr(&[
        "--cluster",
        &addrs,
        "-o",
        "json",
        "cluster",
        "remove-node",
        "orch-extra",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["voters"].as_array().map(Vec::len), Some(3), "{v}");
    let o = metrodr(&["--cluster", &addrs, "cluster", "remove-node", "orch-nobody"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no node \"orch-nobody\""), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let _g = serial();
    let c = TestCluster::start();

    // Before init: status says so, writes are refused with the reason.
    let a = c.nodes[0].grpc.clone();
    let o = metrodr(&["--cluster", &a, "status"]);
    assert!(
        text(&o).contains("not part of a cluster yet"),
        "{}",
        text(&o)
    );
    let e = note(&a, "too early").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("cluster init"), "{}", e.message());

    c.init();
    leader_seen_by(&a, Duration::from_secs(10)).await;
    let before = status(&a).await.unwrap();
    let client = Client::connect_to(&c.nodes[1].grpc).await.unwrap();
    let mut op = client.op.clone();

    // A topology that fails validation, sent straight to the API (the CLI checks first).
    let e = op
        .apply_topology(pb::ApplyTopologyRequest {
            text: "[cluster]\nname = \"x\"\n[[site]]\nid = 3\n".into(),
            actor: "t".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("the topology is invalid") && e.message().contains("line"),
        "{}",
        e.message()
    );
    let o = metrodr(&[
        "--cluster",
        &c.addrs(),
        "topology",
        "apply",
        &root()
            .join("topology/tests/corpus/cycle.toml")
            .display()
            .to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("dependency-cycle") && text(&o).contains("nothing was applied"),
        "{}",
        text(&o)
    );

    // Malformed requests.
    let e = op
        .note(pb::NoteRequest {
            text: "x".into(),
            actor: " ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = op
        .note(pb::NoteRequest {
            text: "   ".into(),
            actor: "t".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    let e = op
        .audit_list(pb::AuditListRequest {
            from_seq: 0,
            limit: 1_000_000,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // Enum values this node does not know (a newer client, or none set): refused, and
    // told which values there are (the request is checked before the VM is looked up).
    for action in [0, 99] {
        let e = op
            .vm_action(pb::VmActionRequest {
                vm: "no-such-vm".into(),
                action,
                actor: "t".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains("use define, start"), "{}", e.message());
    }
    for format in [0, 99] {
        let e = op
            .get_report(pb::GetReportRequest { op: 1, format })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().contains("use json, html, text or csv"),
            "{}",
            e.message()
        );
    }

    // Unknown ids.
    let e = op
        .list_volumes(pb::ListVolumesRequest { app: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = op
        .get_topology(pb::GetTopologyRequest { version: 99 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(
        e.message().contains("versions 1..=1 exist"),
        "{}",
        e.message()
    );

    // A second init, and agents that do not exist.
    let e = op
        .init_cluster(pb::InitClusterRequest {
            nodes: vec![pb::InitNode {
                name: "orch-b".into(),
                site: "b".into(),
                addr: c.nodes[1].grpc.clone(),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    let ch = orchestrator::network::channel(&c.nodes[1].grpc, None).unwrap();
    // Agents of hosts the topology does not have, or with malformed names, are refused.
    let mut agent = orchestrator::pb::agent_client::AgentClient::new(ch.clone());
    let e = agent
        .register(pb::AgentRegisterRequest {
            host: "z-h9".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(
        e.message().contains("not in the applied topology"),
        "{}",
        e.message()
    );
    let e = agent
        .renew(pb::RenewRequest {
            host: "Bad Host".into(),
            seq: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = agent
        .report(pb::ReportRequest {
            host: "a-h1".into(),
            results: vec![pb::CommandOutcome {
                id: 999,
                result: Some(pb::command_outcome::Result::Destroyed(pb::VmTarget {
                    vm: "web-1".into(),
                })),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
    // A result that says nothing is malformed, not a success.
    let e = agent
        .report(pb::ReportRequest {
            host: "a-h1".into(),
            results: vec![pb::CommandOutcome {
                id: 999,
                result: None,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("result is missing"), "{}", e.message());
    // An agent of another protocol version is refused at registration, and told which
    // version each side speaks.
    let e = agent
        .register(pb::AgentRegisterRequest {
            host: "a-h1".into(),
            protocol_version: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    assert!(
        e.message().contains("agent protocol 1")
            && e.message().contains(&format!(
                "this node speaks {}",
                proto::agent::PROTOCOL_VERSION
            )),
        "{}",
        e.message()
    );

    // Garbage on the node-to-node service: refused, and the node keeps serving.
    let mut cl = orchestrator::network::cluster_client(ch);
    for msg in [
        pb::RaftMessage {
            format: orchestrator::network::WIRE_FORMAT,
            payload: b"{not json".to_vec(),
        },
        pb::RaftMessage {
            format: 99,
            payload: b"{}".to_vec(),
        },
        pb::RaftMessage {
            format: orchestrator::network::WIRE_FORMAT,
            payload: vec![0xff; 1000],
        },
    ] {
        assert_eq!(
            cl.append_entries(msg.clone()).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            cl.vote(msg.clone()).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            cl.propose(msg).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
    // A well-formed but impossible command forwarded as if by a peer: rejected by the
    // state machine with its reason.
    let bad = orchestrator::state::Request {
        actor: "peer".into(),
        at_ms: 1,
        command: orchestrator::state::Command::PromoteReplica {
            volume: topology::VolumeId::new("web-disk"),
            site: topology::SiteId::new("b"),
            epoch: orchestrator::state::Epoch(2),
            demoted: orchestrator::state::DataState::Outdated,
        },
    };
    let leader_addr = status(&a).await.unwrap().leader_addr;
    let mut to_leader = orchestrator::network::cluster_client(
        orchestrator::network::channel(&leader_addr, None).unwrap(),
    );
    let e = to_leader
        .propose(orchestrator::network::encode(&bad).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message()
            .contains("only an up-to-date replica may be promoted"),
        "{}",
        e.message()
    );

    // None of it changed the state; the refused operator changes are audited (the
    // agent calls are not: an agent's retries would flood the log).
    let after = status(&a).await.unwrap();
    assert_eq!(after.topology_version, before.topology_version);
    // (The record of `cluster init` itself may land in between: it is written once a
    // leader is elected.)
    let new: Vec<_> = audit(&a)
        .await
        .into_iter()
        .skip(before.audit_entries as usize)
        .filter(|e| e.action != "cluster.membership")
        .collect();
    assert!(
        !new.is_empty() && new.iter().all(|e| e.action == "call.refused"),
        "{new:?}"
    );
    assert!(
        status(&c.nodes[1].grpc).await.is_some(),
        "the node survived the garbage"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn topology_apply_get_and_queries() {
    let _g = serial();
    let c = TestCluster::start();
    c.init();
    let addrs = c.addrs();
    leader_seen_by(&c.nodes[0].grpc, Duration::from_secs(10)).await;
    // Apply a new version through a follower; it is recorded with who applied it.
    let mut topo = std::fs::read_to_string(minimal_topology()).unwrap();
    topo = topo.replace("rto_target_s = 15", "rto_target_s = 20");
    let file = c.dir.path().join("v2.toml");
    std::fs::write(&file, &topo).unwrap();
    let o = metrodr(&[
        "--cluster",
        &c.nodes[2].grpc,
        "-o",
        "json",
        "topology",
        "apply",
        &file.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], 2);
    let o = metrodr(&["--cluster", &addrs, "-o", "json", "topology", "get"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["text"].as_str(), Some(topo.as_str()));
    assert_eq!(v["applied_by"], "tester@ci");
    let o = metrodr(&["--cluster", &addrs, "-o", "json", "topology", "get", "1"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["text"].as_str().unwrap().contains("rto_target_s = 15"));

    let o = metrodr(&["--cluster", &addrs, "-o", "json", "app", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["id"], "web");
    assert_eq!(v[0]["active_site"], "a");
    assert_eq!(v[0]["placement"]["web-1"], "a-h1");
    let o = metrodr(&["--cluster", &addrs, "-o", "json", "volume", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["epoch"], 1);
    let roles: BTreeSet<(String, String)> = v[0]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["site"].as_str().unwrap().to_string(),
                r["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        BTreeSet::from([
            ("a".into(), "primary".into()),
            ("b".into(), "secondary".into())
        ])
    );
    let o = metrodr(&["--cluster", &addrs, "-o", "json", "site", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(3));
    let o = metrodr(&["--cluster", &addrs, "-o", "json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(3));
    assert!(v["commit_index"].as_u64().unwrap() >= 3);
    let o = metrodr(&["--cluster", &addrs, "audit", "list"]);
    assert!(text(&o).contains("topology.apply"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_detects_a_tampered_store() {
    let _g = serial();
    let mut c = TestCluster::start();
    c.init();
    let a = c.nodes[0].grpc.clone();
    leader_seen_by(&a, Duration::from_secs(10)).await;
    for i in 0..5 {
        note(&a, &format!("note {i}")).await.unwrap();
    }
    let o = metrodr(&["--cluster", &c.addrs(), "audit", "verify"]);
    assert!(o.status.success(), "{}", text(&o));

    // Wait until orch-b has applied everything, stop it, and edit entry 3 on its disk.
    let b = c.node("orch-b").grpc.clone();
    wait_for(Duration::from_secs(10), "orch-b to apply", || {
        let b = b.clone();
        async move {
            status(&b)
                .await
                .filter(|s| s.audit_entries >= 6)
                .map(|_| ())
        }
    })
    .await;
    let node_b = c.node_mut("orch-b");
    node_b.stop();
    {
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            &node_b.data_dir,
            ["logs", "meta", "sm"],
        )
        .unwrap();
        let sm = db.cf_handle("sm").unwrap();
        let key = format!("t/audit/{:020}", 3);
        let mut e: serde_json::Value =
            serde_json::from_slice(&db.get_cf(sm, &key).unwrap().unwrap()).unwrap();
        e["detail"] = serde_json::Value::String("note 1 (edited)".into());
        db.put_cf(sm, &key, serde_json::to_vec(&e).unwrap())
            .unwrap();
    }
    let dir = c.dir.path().to_path_buf();
    restart(&dir, c.node_mut("orch-b"), None);

    let o = metrodr(&["--cluster", &c.addrs(), "audit", "verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("orch-b: CHAIN BROKEN at entry 3"), "{out}");
    assert!(out.contains("orch-a: chain intact"), "{out}");
    assert!(out.contains("verification FAILED"), "{out}");
    let s = status(&c.node("orch-b").grpc).await.unwrap();
    assert!(
        s.store_warning.contains("broken at entry 3"),
        "{}",
        s.store_warning
    );
}

/// Minimal HTTP/1.1 GET (the project has no HTTP client dependency, and needs none).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, buf)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_healthz_describe_the_node() {
    let _g = serial();
    let c = TestCluster::start();
    c.init();
    let leader = leader_seen_by(&c.nodes[0].grpc, Duration::from_secs(10)).await;
    note(&c.nodes[0].grpc, "hello").await.unwrap();
    let n = c.node(&leader);
    let (code, body) = http_get(&n.http, "/metrics");
    assert_eq!(code, 200, "{body}");
    for needle in [
        "metrodr_raft_term ",
        "metrodr_raft_is_leader 1",
        &format!("metrodr_raft_leader{{leader=\"{leader}\"}} 1"),
        "metrodr_raft_commit_index ",
        "metrodr_apply_seconds_count ",
        "metrodr_site_state{site=\"a\",state=\"up\"} 1",
        "metrodr_site_state{site=\"a\",state=\"down\"} 0",
        // The initial membership, the topology `cluster init` applied, the note.
        "metrodr_audit_entries 3",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in\n{body}");
    }
    let (code, body) = http_get(&n.http, "/healthz");
    assert_eq!(code, 200);
    assert!(body.contains("\"raft_state\":\"leader\""), "{body}");
}
