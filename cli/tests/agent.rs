//! Agents as real processes against a real cluster, on libvirt's test driver (a
//! private fake host per agent, or a private libvirtd that the test stops and starts):
//! registration and capacity, commands and results, at-most-once across a leader kill,
//! libvirt going away, and fencing when an agent is cut off (network namespaces).

// Each test holds the `serial()` guard for its whole run, on purpose (see cluster.rs).
#![allow(clippy::await_holding_lock, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use lab::states::{CommandProgress, HostState, VmReport, VmState};
use orchestrator::pb;

async fn wait_host(addr: &str, host: &str, state: HostState, within: Duration) {
    let (a, h) = (addr.to_string(), host.to_string());
    wait_for(within, &format!("host {host} to be {state:?}"), move || {
        let (a, h) = (a.clone(), h.clone());
        async move { (host_state(&a, &h).await? == state).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_register_with_their_capacity_and_run_vm_commands() {
    let _g = serial();
    let c = TestCluster::start();
    c.init();
    let addrs = c.addrs();
    let _a = start_agent(c.dir.path(), "a-h1", &addrs, "test:///private", None);
    let _b = start_agent(c.dir.path(), "b-h1", &addrs, "test:///private", None);
    let a0 = c.nodes[0].grpc.clone();
    wait_host(&a0, "a-h1", HostState::Up, Duration::from_secs(10)).await;
    wait_host(&a0, "b-h1", HostState::Up, Duration::from_secs(10)).await;
    let h = hosts(&a0).await;
    let a = h.iter().find(|h| h.id == "a-h1").unwrap();
    assert_eq!(
        (a.vcpus, a.memory_bytes),
        (8, 16 << 30),
        "capacity comes from libvirt"
    );
    assert_eq!(a.domain_type, "qemu");
    assert_eq!(a.vms, ["web-1"]);

    for (action, state) in [
        (pb::VmAction::Define, VmState::ShutOff),
        (pb::VmAction::Start, VmState::Running),
        (pb::VmAction::Suspend, VmState::Paused),
        (pb::VmAction::Resume, VmState::Running),
        (pb::VmAction::Shutdown, VmState::ShutOff),
    ] {
        let state = VmReport::Reported(state);
        let r = vm_do(&a0, action, "web-1").await;
        assert_eq!(
            outcome(&r),
            Some(CommandProgress::Succeeded),
            "{action:?}: {}",
            r.message
        );
        assert_eq!(r.host, "a-h1");
        let a0c = a0.clone();
        wait_for(
            Duration::from_secs(5),
            &format!("web-1 {state:?} after {action:?}"),
            move || {
                let a = a0c.clone();
                async move { (vm_state(&a, "web-1").await? == state).then_some(()) }
            },
        )
        .await;
    }
    let r = vm_do(&a0, pb::VmAction::Undefine, "web-1").await;
    assert_eq!(
        outcome(&r),
        Some(CommandProgress::Succeeded),
        "{}",
        r.message
    );
    // Starting an undefined domain is a clear failure, not a crash.
    let r = vm_do(&a0, pb::VmAction::Start, "web-1").await;
    assert_eq!(outcome(&r), Some(CommandProgress::Failed));
    assert!(r.message.contains("web-1"), "{}", r.message);
    let o = metrodr(&["--cluster", &addrs, "vm", "do", "start", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no VM \"nope\""), "{}", text(&o));
    let o = metrodr(&["--cluster", &addrs, "host", "list"]);
    assert!(text(&o).contains("8 vCPUs, 16 GiB"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_survive_a_leader_kill_and_run_at_most_once() {
    let _g = serial();
    let mut c = TestCluster::start();
    c.init();
    let addrs = c.addrs();
    let agent = start_agent(c.dir.path(), "a-h1", &addrs, "test:///private", None);
    let any = c.nodes[0].grpc.clone();
    wait_host(&any, "a-h1", HostState::Up, Duration::from_secs(10)).await;
    vm_do_ok(&any, pb::VmAction::Define, "web-1").await;

    // Queue 30 commands without waiting, killing the leader halfway.
    let leader = leader_seen_by(&any, Duration::from_secs(5)).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        if i == 15 {
            c.node_mut(&leader).kill();
        }
        let action = if i % 2 == 0 {
            pb::VmAction::Start
        } else {
            pb::VmAction::Destroy
        };
        let survivors: Vec<String> = c
            .nodes
            .iter()
            .filter(|n| n.running())
            .map(|n| n.grpc.clone())
            .collect();
        let id = wait_for(Duration::from_secs(10), "the command to be queued", || {
            let s = survivors.clone();
            async move {
                for a in &s {
                    let cl = orchestrator::client::Client::connect_to(a).await.ok()?;
                    let mut op = cl.op.clone();
                    if let Ok(r) = op
                        .vm_action(orchestrator::pb::VmActionRequest {
                            vm: "web-1".into(),
                            action: action.into(),
                            timeout_s: 10,
                            wait: false,
                            actor: "tester@ci".into(),
                        })
                        .await
                    {
                        return Some(r.into_inner().command_id);
                    }
                }
                None
            }
        })
        .await;
        ids.push(id);
    }
    // Every command gets exactly one result.
    let alive = c.nodes.iter().find(|n| n.running()).unwrap().grpc.clone();
    let expected = ids.clone();
    wait_for(
        Duration::from_secs(20),
        "every command's result",
        move || {
            let a = alive.clone();
            let expected = expected.clone();
            async move {
                let log = audit(&a).await;
                let done = expected
                    .iter()
                    .filter(|id| {
                        log.iter().any(|e| {
                            e.action == "agent.result" && e.detail.contains(&format!("#{id} "))
                        })
                    })
                    .count();
                (done == expected.len()).then_some(())
            }
        },
    )
    .await;
    // The agent's journal shows each id started once and finished once.
    let journal = agent.journal();
    let mut begins: BTreeMap<u64, usize> = BTreeMap::new();
    let mut dones: BTreeMap<u64, usize> = BTreeMap::new();
    for line in journal.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["id"].as_u64().unwrap_or(0);
        match v["kind"].as_str() {
            Some("begin") => *begins.entry(id).or_default() += 1,
            Some("finished") => *dones.entry(id).or_default() += 1,
            _ => {}
        }
    }
    for id in &ids {
        assert_eq!(
            begins.get(id),
            Some(&1),
            "command {id} started {:?} times",
            begins.get(id)
        );
        assert_eq!(
            dones.get(id),
            Some(&1),
            "command {id} finished {:?} times",
            dones.get(id)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn libvirt_going_away_gives_clear_results_and_the_agent_reconnects() {
    let _g = serial();
    let c = TestCluster::start();
    c.init();
    let short = tempfile::Builder::new()
        .prefix("mdr-lv")
        .tempdir_in("/tmp")
        .unwrap();
    let mut libvirtd = chaos::libvirtd::PrivateLibvirtd::start_in(short.path())
        .unwrap_or_else(|e| panic!("\n####\n#### this test needs a private libvirtd: {e}\n####\n"));
    let _a = start_agent(c.dir.path(), "a-h1", &c.addrs(), &libvirtd.uri(), None);
    let any = c.nodes[0].grpc.clone();
    wait_host(&any, "a-h1", HostState::Up, Duration::from_secs(10)).await;
    vm_do_ok(&any, pb::VmAction::Define, "web-1").await;
    vm_do_ok(&any, pb::VmAction::Start, "web-1").await;

    libvirtd.stop();
    let r = vm_do(&any, pb::VmAction::Destroy, "web-1").await;
    assert_eq!(outcome(&r), Some(CommandProgress::Failed), "{}", r.message);
    assert!(
        r.message.contains("is not reachable") && r.message.contains("is libvirtd running?"),
        "{}",
        r.message
    );
    let a2 = any.clone();
    wait_for(
        Duration::from_secs(10),
        "the agent to report libvirt unreachable",
        move || {
            let a = a2.clone();
            async move {
                audit(&a)
                    .await
                    .iter()
                    .any(|e| e.action == "agent.event" && e.detail.contains("libvirt unreachable"))
                    .then_some(())
            }
        },
    )
    .await;

    // Back: the agent reconnects by itself. (The test driver's domains lived in the old
    // daemon, so web-1 is defined again.)
    libvirtd.start().unwrap();
    let a3 = any.clone();
    wait_for(
        Duration::from_secs(10),
        "the agent to see libvirt again",
        move || {
            let a = a3.clone();
            async move {
                audit(&a)
                    .await
                    .iter()
                    .any(|e| e.detail.contains("is reachable again"))
                    .then_some(())
            }
        },
    )
    .await;
    vm_do_ok(&any, pb::VmAction::Define, "web-1").await;
    let r = vm_do(&any, pb::VmAction::Start, "web-1").await;
    assert_eq!(
        outcome(&r),
        Some(CommandProgress::Succeeded),
        "{}",
        r.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_agent_fences_and_its_host_goes_down_only_after_lease_plus_margin() {
    let _g = serial();
    if let Err(e) = chaos::netns::preflight() {
        panic!("\n####\n#### this test needs network namespaces: {e}\n####\n");
    }
    let lab = chaos::netns::NetLab::create(&["orch-a", "orch-b", "orch-w", "agent-a"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeProc> = ["orch-a", "orch-b", "orch-w"]
        .iter()
        .map(|n| {
            start_node(
                dir.path(),
                n,
                &format!("{}:7400", lab.addr(n)),
                Some((n, &lab)),
            )
        })
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| n.grpc.clone()).collect();
    let mut args = vec![
        "cluster".to_string(),
        "init".into(),
        "--topology".into(),
        minimal_topology().display().to_string(),
    ];
    for n in &nodes {
        args.push("--addr".into());
        args.push(format!("{}={}", n.name, n.grpc));
    }
    let o = metrodr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let _agent = start_agent(
        dir.path(),
        "a-h1",
        &addrs.join(","),
        "test:///private",
        Some(("agent-a", &lab)),
    );
    let any = addrs[0].clone();
    wait_host(&any, "a-h1", HostState::Up, Duration::from_secs(10)).await;
    vm_do_ok(&any, pb::VmAction::Define, "web-1").await;
    vm_do_ok(&any, pb::VmAction::Start, "web-1").await;

    let cut = Instant::now();
    lab.isolate("agent-a").unwrap();
    wait_host(&any, "a-h1", HostState::Down, Duration::from_secs(10)).await;
    let down_after = cut.elapsed();
    eprintln!("host a-h1 marked down {down_after:?} after the cut");
    // The leader's last grant was at most one renewal (0.5 s) before the cut.
    assert!(
        down_after >= Duration::from_millis(3000),
        "marked down after {down_after:?}: sooner than lease + margin"
    );
    let log = audit(&any).await;
    let entry = log
        .iter()
        .find(|e| {
            e.action == "host.state" && e.detail.contains("a-h1") && e.detail.contains("Down")
        })
        .unwrap();
    let silent: u64 = entry
        .detail
        .split("no lease renewal for ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        silent > 3500,
        "declared down after {silent} ms of silence; lease + margin is 3500"
    );

    // Heal: the agent tells what it did while cut off, and restarts nothing.
    lab.heal_all().unwrap();
    let a2 = any.clone();
    let fenced = wait_for(
        Duration::from_secs(10),
        "the agent's fence report",
        move || {
            let a = a2.clone();
            async move {
                audit(&a)
                    .await
                    .into_iter()
                    .find(|e| e.action == "agent.event" && e.detail.contains("fenced"))
            }
        },
    )
    .await;
    assert!(
        fenced.detail.contains("destroyed [web-1 ("),
        "{}",
        fenced.detail
    );
    wait_host(&any, "a-h1", HostState::Up, Duration::from_secs(10)).await;
    // The agent restarts nothing by itself ("the orchestrator decides"). The leader
    // may then restart what was fenced, as an operation of its own (a fenced host's
    // restart), and only that way: a VM running again must come from that operation.
    // The state is read first, so an operation that started it is in the log after.
    let state = vm_state(&any, "web-1").await;
    let a3 = any.clone();
    wait_for(
        Duration::from_secs(10),
        "the agent saying it restarted nothing",
        move || {
            let a = a3.clone();
            async move {
                audit(&a).await.into_iter().find(|e| {
                    e.action == "agent.event"
                        && e.detail
                            .contains("lease regained; nothing restarted by the agent")
                })
            }
        },
    )
    .await;
    let log = audit(&any).await;
    match state {
        Some(VmReport::Reported(VmState::ShutOff)) => {}
        Some(RUNNING) => assert!(
            log.iter()
                .any(|e| e.action == "op.start"
                    && e.detail.contains("a-h1 fenced its VMs and is back")),
            "web-1 runs again, but no fenced-host restart by the leader started it"
        ),
        other => panic!("web-1 is {other:?} after the heal"),
    }
    drop(nodes);
    lab.destroy().unwrap();
}
