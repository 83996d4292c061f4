//! The agent with real libvirtd and QEMU (TCG): it defines and starts the probe guest,
//! the cluster shows it running, the serial console shows acknowledged records; a
//! restarted agent adopts the running VM without restarting it; an agent cut off from
//! every orchestrator (network namespaces) destroys its VM within lease + 1 s, and the
//! cluster marks the host down only after lease + margin.
//! Needs root, libvirtd (scripts/start-libvirtd.sh) and the probe guest image (built
//! from Debian packages at test time); fails loudly without them.

// Each test holds the `serial()` guard for its whole run, on purpose (see cluster.rs).
#![allow(clippy::await_holding_lock, clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use orchestrator::pb;

fn guest_image() -> chaos::guest::GuestImage {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("metrodr-guest");
    chaos::guest::build(&chaos::guest::BuildOptions::new(dir))
        .unwrap_or_else(|e| banner(&format!("cannot build the probe guest: {e}")))
}

fn probe_topology(img: &chaos::guest::GuestImage, vm: &str) -> String {
    let min = std::fs::read_to_string(minimal_topology()).unwrap();
    let head = &min[..min.find("[[app]]").unwrap()];
    let head = head.replace(
        "libvirt_uri = \"test:///default\"",
        "libvirt_uri = \"qemu:///system\"",
    );
    format!(
        "{head}[[app]]\nid = \"probe\"\ntier = 1\npreferred_site = \"a\"\nrto_target_s = 60\nrpo_target_s = 0\n\n\
         [[app.volume]]\nid = \"{vm}-disk\"\nsize = \"16MiB\"\nreplication = \"sync\"\n\n\
         [[app.vm]]\nid = \"{vm}\"\nvcpus = 1\nmemory = \"256MiB\"\nboot = \"kernel\"\nkernel = \"{}\"\ninitrd = \"{}\"\ncmdline = \"{}\"\ndisks = [\"{vm}-disk\"]\n\n\
         [[app.probe]]\nkind = \"serial\"\nmarker = \"metrodr-probe: ready\"\n",
        img.kernel.display(),
        img.initrd.display(),
        img.cmdline
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_runs_the_probe_guest_adopts_it_and_fences_it_when_cut_off() {
    let _g = serial();
    if let Err(e) = chaos::netns::preflight() {
        banner(&format!("this test needs network namespaces: {e}"));
    }
    if !virsh(&["version"]).0 {
        banner("libvirtd (qemu:///system) is not running: run `bash scripts/start-libvirtd.sh`");
    }
    let img = guest_image();
    let vm = format!("mdr-probe-{}", std::process::id());
    let _guard = DomainGuard(vm.clone());
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("probe.toml");
    std::fs::write(&topo, probe_topology(&img, &vm)).unwrap();

    let lab = chaos::netns::NetLab::create(&["orch-a", "orch-b", "orch-w", "agent-a"]).unwrap();
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
        topo.display().to_string(),
    ];
    for n in &nodes {
        args.push("--addr".into());
        args.push(format!("{}={}", n.name, n.grpc));
    }
    let o = metrodr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let mut agent = start_agent(
        dir.path(),
        "a-h1",
        &addrs.join(","),
        "qemu:///system",
        Some(("agent-a", &lab)),
    );
    let any = addrs[0].clone();
    let a = any.clone();
    wait_for(Duration::from_secs(15), "host a-h1 up", move || {
        let a = a.clone();
        async move { (host_state(&a, "a-h1").await? == lab::states::HostState::Up).then_some(()) }
    })
    .await;

    // Define and start the probe guest; the cluster sees it running; it writes records.
    let r = vm_do(&any, pb::VmAction::Define, &vm).await;
    assert_eq!(
        outcome(&r),
        Some(lab::states::CommandProgress::Succeeded),
        "{}",
        r.message
    );
    let r = vm_do(&any, pb::VmAction::Start, &vm).await;
    assert_eq!(
        outcome(&r),
        Some(lab::states::CommandProgress::Succeeded),
        "{}",
        r.message
    );
    let (a, v) = (any.clone(), vm.clone());
    wait_for(
        Duration::from_secs(10),
        "the cluster to show the VM running",
        move || {
            let (a, v) = (a.clone(), v.clone());
            async move { (vm_state(&a, &v).await? == RUNNING).then_some(()) }
        },
    )
    .await;
    let console = agent.state_dir.join("consoles").join(format!("{vm}.log"));
    let log = wait_console(
        &console,
        "the guest to acknowledge 10 records",
        Duration::from_secs(60),
        |l| l.ready && l.acks >= 10,
    )
    .await;
    eprintln!("guest ready; {} records acknowledged so far", log.acks);

    // Restart the agent: the VM keeps running, is adopted, is not restarted.
    let (_, domid) = virsh(&["domid", &vm]);
    agent.stop();
    let config = agent.config.clone();
    let state_dir = agent.state_dir.clone();
    drop(agent);
    let agent = spawn_agent(
        dir.path(),
        "a-h1",
        &config,
        &state_dir,
        Some(("agent-a", &lab)),
    );
    let before = chaos::guest::parse_console(&std::fs::read_to_string(&console).unwrap())
        .last_ack
        .unwrap_or(0);
    let after = wait_console(
        &console,
        "records to go on after the agent restart",
        Duration::from_secs(20),
        |l| l.last_ack.unwrap_or(0) > before + 5,
    )
    .await;
    assert_eq!(after.boots, 1, "the guest was restarted");
    assert_eq!(virsh(&["domid", &vm]).1, domid, "the domain was restarted");
    let a = any.clone();
    let agent_log = agent.log.clone();
    wait_for(
        Duration::from_secs(10),
        "the restarted agent to register",
        move || {
            let a = a.clone();
            let l = agent_log.clone();
            async move {
                (host_state(&a, "a-h1").await? == lab::states::HostState::Up
                    && std::fs::read_to_string(&l)
                        .ok()?
                        .matches("agent registered")
                        .count()
                        >= 2)
                    .then_some(())
            }
        },
    )
    .await;

    // Cut the agent off from every orchestrator: its VM's QEMU process is dead within
    // lease + 1 s. (libvirt's own state says "shut off" ~2 s later: it notices the dead
    // QEMU on its own schedule; the guest can write nothing from the kill on.)
    let qemu_pid: i32 = std::fs::read_to_string(format!("/run/libvirt/qemu/{vm}.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = move || {
        std::fs::read_to_string(format!("/proc/{qemu_pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .map(|r| !r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    };
    assert!(alive(), "QEMU {qemu_pid} should be running");
    let cut = Instant::now();
    lab.isolate("agent-a").unwrap();
    wait_for(
        Duration::from_secs(10),
        "the VM's QEMU to be killed",
        move || async move { (!alive()).then_some(()) },
    )
    .await;
    let fenced_after = cut.elapsed();
    eprintln!("VM fenced (QEMU dead) {fenced_after:?} after the cut");
    let v = vm.clone();
    wait_for(
        Duration::from_secs(10),
        "libvirt to report the VM shut off",
        move || {
            let v = v.clone();
            async move { (virsh(&["domstate", &v]).1 == "shut off").then_some(()) }
        },
    )
    .await;
    eprintln!(
        "libvirt reports it shut off {:?} after the cut",
        cut.elapsed()
    );
    assert!(
        fenced_after <= Duration::from_millis(4000),
        "fenced after {fenced_after:?}; target lease (3 s) + 1 s"
    );
    let a = any.clone();
    wait_for(Duration::from_secs(10), "host a-h1 down", move || {
        let a = a.clone();
        async move { (host_state(&a, "a-h1").await? == lab::states::HostState::Down).then_some(()) }
    })
    .await;
    let down_after = cut.elapsed();
    eprintln!("host marked down {down_after:?} after the cut");
    assert!(
        down_after > fenced_after,
        "the host was declared down before its VM was fenced"
    );
    let entry = audit(&any)
        .await
        .into_iter()
        .find(|e| e.action == "host.state" && e.detail.contains("a-h1: Up -> Down"))
        .unwrap();
    assert!(
        entry.detail.contains("lease + margin = 3500 ms"),
        "{}",
        entry.detail
    );

    // Every record the guest acknowledged is on its disk.
    let console_log = chaos::guest::parse_console(&std::fs::read_to_string(&console).unwrap());
    let disk = agent
        .state_dir
        .join("volumes")
        .join(format!("{vm}-disk.raw"));
    let records = chaos::guest::disk_records(&disk).unwrap();
    assert!(
        records.contiguous >= console_log.last_ack.unwrap_or(0),
        "disk has {} records, guest acknowledged {:?}",
        records.contiguous,
        console_log.last_ack
    );

    lab.heal_all().unwrap();
    drop(agent);
    drop(nodes);
    lab.destroy().unwrap();
}
