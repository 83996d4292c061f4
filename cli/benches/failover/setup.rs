//! One size's running system: the lab crate's cluster on loopback — three
//! orchestrators and four agents in a fresh directory under /var/tmp — with every VM
//! started at north; T0, when north dies at once; and, with real guests, whether each
//! found at south every record it acknowledged at north.
//!
//! Dropping it stops the processes (by PID, in the lab), then removes the directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lab::daemons::Binary;
use orchestrator::client::{Client, Dialer};

use crate::record::Row;
use crate::topology::{topology, vm_id};
use crate::{ACTOR, BIN, SETUP_CONCURRENCY, now_ms};

/// The nodes that outlive north.
pub const SURVIVORS: [&str; 2] = ["orch-south", "orch-witness"];

/// The site T0 kills.
const LOST: &str = "north";

pub struct Lab {
    /// Real guests: their domains (destroyed and undefined by name when dropped) and
    /// what each acknowledged at north before T0.
    pub guests: Vec<String>,
    pub acked: BTreeMap<String, u64>,
    /// The running system; None once stopped.
    pub inner: Option<lab::Lab>,
    pub tmp: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for vm in &self.guests {
            chaos::guest::remove_domain(vm);
        }
    }
}

fn fail(e: lab::LabError) -> ! {
    panic!("{}", lab::error::chain(&e))
}

pub fn console_log(dir: &Path, host: &str, vm: &str) -> chaos::guest::ConsoleLog {
    let path = lab::daemons::agent_state_dir(dir, host).join(format!("consoles/{vm}.log"));
    chaos::guest::parse_console(&std::fs::read_to_string(path).unwrap_or_default())
}

impl Lab {
    /// Validate the topology, start the nodes, form the cluster, start the agents and
    /// define + start every VM at north; returns once all of them run.
    pub async fn start(n: usize, guest: Option<&chaos::guest::GuestImage>) -> Lab {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("metrodr-failover-bench-{n}-"))
            .tempdir_in("/var/tmp")
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let what = if guest.is_some() {
            "real QEMU guest(s)"
        } else {
            "app(s)"
        };
        println!("\n== {n} {what}: {}", dir.display());
        let text = topology(n, guest);
        let topo = dir.join("topology.toml");
        std::fs::write(&topo, &text).unwrap();
        let o = Command::new(BIN)
            .args(["topology", "validate"])
            .arg(&topo)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "the generated topology: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );

        let setup = Instant::now();
        let opts = lab::Options {
            namespaces: false,
            tls: false,
            http: true,
            node_log: Some("warn,orchestrator=info".into()),
            agent_log: Some("warn,agent=info".into()),
            user_network: guest.is_some(),
            actor: ACTOR.into(),
        };
        let within = Duration::from_secs(30);
        let inner = lab::Lab::with_agents(&dir, &text, Binary::at(BIN), opts, within)
            .await
            .unwrap_or_else(|e| fail(e));
        if guest.is_some() {
            // The agents serve every group; the initial syncs make south promotable.
            inner
                .wait_replicas(Duration::from_secs(120))
                .await
                .unwrap_or_else(|e| fail(e));
        }
        let cluster_ready = setup.elapsed();
        let c = inner.client().await.unwrap_or_else(|e| fail(e));
        let vms: Vec<String> = (0..n).map(vm_id).collect();
        lab::api::start_vms(&c, &vms, ACTOR, SETUP_CONCURRENCY, 60)
            .await
            .unwrap_or_else(|e| fail(e));
        let commands_done = setup.elapsed();
        let host_site: BTreeMap<String, String> = inner
            .topo
            .hosts
            .iter()
            .map(|h| (h.id.to_string(), h.site.to_string()))
            .collect();
        let at_north = |h: &String| host_site.get(h).is_some_and(|s| s == LOST);
        let within = Duration::from_secs(60 + n as u64 / 10);
        lab::wait(within, "every VM running at north", || async {
            let r = lab::api::running_vms(&c).await.ok()?;
            (r.len() == n && r.values().all(at_north)).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        if guest.is_some() {
            let placed = lab::api::running_vms(&c).await.unwrap_or_default();
            lab::wait(
                Duration::from_secs(120),
                "every guest writing at north",
                || async {
                    placed
                        .iter()
                        .all(|(vm, host)| {
                            let l = console_log(&dir, host, vm);
                            l.ready && l.acks >= 5
                        })
                        .then_some(())
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        }
        println!(
            "setup: cluster + agents {:.1} s; define+start {n} VM(s) {:.1} s; all running at north after {:.1} s",
            cluster_ready.as_secs_f64(),
            (commands_done - cluster_ready).as_secs_f64(),
            setup.elapsed().as_secs_f64()
        );
        Lab {
            guests: if guest.is_some() { vms } else { Vec::new() },
            acked: BTreeMap::new(),
            inner: Some(inner),
            tmp,
        }
    }

    /// The running lab.
    pub fn inner(&self) -> &lab::Lab {
        self.inner.as_ref().expect("the lab runs")
    }

    pub fn survivor_addrs(&self) -> Vec<String> {
        SURVIVORS
            .iter()
            .map(|s| self.inner().member(s).and_then(|m| m.grpc.clone()).unwrap())
            .collect()
    }

    /// T0: north's orchestrator and both its agents die at once (SIGKILL all three,
    /// then reap). Returns T0 in ms since the epoch.
    pub fn kill_north(&mut self) -> u64 {
        // The guests' QEMU processes (all at north) die with their site: SIGKILL by
        // the PIDs libvirt recorded, together with the rest of north. (`virsh destroy`
        // takes ~1.5 s per TCG guest and would still be killing north's guests when
        // their namesakes start at south.)
        let qemus: Vec<i32> = self
            .guests
            .iter()
            .map(|vm| chaos::guest::qemu_pid(vm).unwrap_or_else(|| panic!("no QEMU pid for {vm}")))
            .collect();
        let t0 = now_ms();
        for pid in &qemus {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let north_hosts = self.inner.as_mut().expect("the lab runs").kill_site(LOST);
        for vm in self.guests.clone() {
            let at_north = north_hosts
                .iter()
                .map(|h| console_log(self.tmp.path(), h, &vm).max_ack.unwrap_or(0))
                .max()
                .unwrap_or(0);
            self.acked.insert(vm, at_north);
        }
        t0
    }

    /// Real guests: each booted at south from the promoted disk found every record it
    /// acknowledged at north (the probe guest prints where it resumes).
    pub async fn check_guests(&self, addrs: &[String], row: &mut Row) {
        if self.guests.is_empty() {
            return;
        }
        let c = connect(addrs).await.expect("a surviving node");
        let placed = lab::api::running_vms(&c).await.unwrap_or_default();
        let mut lines = Vec::new();
        for vm in &self.guests {
            let acked = self.acked.get(vm).copied().unwrap_or(0);
            let Some(host) = placed.get(vm) else {
                row.why.push(format!("{vm} is not running anywhere"));
                continue;
            };
            let log = console_log(self.tmp.path(), host, vm);
            let resumed = log.resume_after.last().copied().unwrap_or(0);
            lines.push(format!(
                "{vm}: acknowledged {acked} at north, found {resumed} at {host}"
            ));
            if resumed < acked || acked == 0 {
                row.why.push(format!(
                    "{vm}: acknowledged {acked} records at north but found {resumed} at {host}"
                ));
            }
        }
        println!("  guests: {}", lines.join("; "));
    }
}

/// A client of the first of `addrs` that answers.
pub async fn connect(addrs: &[String]) -> Option<Client> {
    Dialer::default().connect(addrs).await.ok()
}
