//! The leader killed in the middle of a failover, and the whole control plane
//! stalled past the lease: every operation finishes exactly once and every VM runs
//! again.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::agent_lab;
use crate::common::*;
use crate::harness::*;

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
    let any = lab.first();
    wait_for(Duration::from_secs(10), "db promoted", || {
        let l = &lab;
        async move { (l.volume("db-data")["epoch"] == 2).then_some(()) }
    })
    .await;
    let leader = leader_seen_by(&any, Duration::from_secs(5)).await;
    lab.kill(&leader);
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
        let running = lab::wait::wait_every(
            Duration::from_millis(100),
            Duration::from_secs(30),
            &format!("{vm} running"),
            || async { vm_running(&live, vm).await.then_some(()) },
        )
        .await;
        if running.is_err() {
            let st = vm_state(&live, vm).await;
            let history = audit_lines(&live, |e| e.detail.contains(vm)).await;
            panic!(
                "{vm} is {st:?} at {live}, not running; the VM list: {}\n{vm} in the audit log:\n{history}",
                text(&lab.run(&["vm", "list"])),
            );
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

/// The whole control plane stalls (SIGSTOP) for longer than a lease: every agent
/// fences its VMs, as it must when it cannot know whether the cluster moved them. When
/// the cluster is back, each agent says so as it registers again, and the leader
/// restarts what each fence stopped where it was placed: nothing moves site, nothing
/// is promoted, every VM runs again.
#[tokio::test(flavor = "multi_thread")]
async fn a_control_plane_stalled_past_the_lease_fences_every_host_then_restarts_its_vms() {
    let _g = serial();
    let mut lab = Lab::start().await;
    let live = lab.live();
    let sites_before = lab.sites_of_apps();
    let stalled_ms = orchestrator::clock::now_ms();
    for n in agent_lab::NODES {
        lab.pause(n);
    }
    // The fault lasts 4.5 s, longer than the lease (3 s): every agent's runs out.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    for n in agent_lab::NODES {
        lab.resume(n);
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
    let all_running = lab::wait::wait_every(
        Duration::from_millis(100),
        Duration::from_secs(40),
        "every VM running again",
        || async {
            for vm in VMS {
                if !vm_running(&live, vm).await {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    if all_running.is_err() {
        let history = audit_lines(&live, |e| e.at_ms + 10_000 >= stalled_ms).await;
        panic!(
            "not every VM runs again: {}\n{}\nthe audit log since the stall (at {stalled_ms}):\n{history}\n{}",
            text(&lab.run(&["vm", "list"])),
            text(&lab.run(&["op", "list"])),
            lab.agent_logs()
        );
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
