//! The agent's one loop stays prompt whatever its effects cost: with a libvirt whose
//! every call takes seconds and commands that run for seconds, renewals still go out
//! every `renew_ms` and the fence starts as soon as the lease runs out.
//!
//! A fake orchestrator (the real Agent gRPC service on a port of its own, answering
//! from memory) grants leases and hands out commands; the hypervisor is libvirt's
//! test driver behind a wrapper that sleeps before each call; the fence hook records
//! when the fence began.

// Test helpers may unwrap like the tests themselves (clippy.toml allows it only inside
// #[test] functions): a panic here is a test failure, which is what we want.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::config::AgentConfig;
use agent::daemon::FenceHook;
use agent::hypervisor::{Capacity, DomainInfo, DomainState, HvError, Hypervisor, Libvirt};
use ids::CommandId;
use proto::agent::AgentAction;
use proto::agent::wire::command_to_wire;
use proto::pb;
use proto::pb::agent_server::{Agent, AgentServer};
use tonic::{Request, Response, Status};
use topology::VmId;

const LEASE_MS: u64 = 1500;
const RENEW_MS: u64 = 100;
/// What every slow libvirt call costs.
const SLOW: Duration = Duration::from_secs(2);

/// The orchestrator, as far as one agent can tell.
#[derive(Default)]
struct Cluster {
    grant: AtomicBool,
    registered: AtomicBool,
    renewals: Mutex<Vec<Instant>>,
    commands: Mutex<Vec<pb::AgentCommand>>,
    results: Mutex<Vec<u64>>,
}

#[derive(Clone)]
struct Fake(Arc<Cluster>);

#[tonic::async_trait]
impl Agent for Fake {
    async fn register(
        &self,
        _: Request<pb::AgentRegisterRequest>,
    ) -> Result<Response<pb::AgentRegisterReply>, Status> {
        self.0.registered.store(true, Ordering::SeqCst);
        Ok(Response::new(pb::AgentRegisterReply {
            lease_ms: LEASE_MS,
            renew_ms: RENEW_MS,
            leader_addr: String::new(),
            site: "a".into(),
            protocol_version: proto::agent::PROTOCOL_VERSION,
        }))
    }

    async fn renew(
        &self,
        _: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewReply>, Status> {
        self.0.renewals.lock().unwrap().push(Instant::now());
        let granted = self.0.grant.load(Ordering::SeqCst);
        Ok(Response::new(pb::RenewReply {
            granted,
            lease_ms: LEASE_MS,
            leader_addr: String::new(),
            reason: if granted {
                String::new()
            } else {
                "a partition".into()
            },
        }))
    }

    async fn poll(&self, req: Request<pb::PollRequest>) -> Result<Response<pb::PollReply>, Status> {
        let after = req.get_ref().after_id;
        let commands: Vec<pb::AgentCommand> = self
            .0
            .commands
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.id > after)
            .cloned()
            .collect();
        if commands.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Response::new(pb::PollReply { commands }))
    }

    async fn report(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportReply>, Status> {
        let ids = req.get_ref().results.iter().map(|r| r.id);
        self.0.results.lock().unwrap().extend(ids);
        Ok(Response::new(pb::ReportReply {}))
    }

    async fn report_replica(
        &self,
        _: Request<pb::ReplicaReportRequest>,
    ) -> Result<Response<pb::ReplicaReportReply>, Status> {
        Err(Status::unimplemented("no replicas here"))
    }
}

/// libvirt's test driver, every call `SLOW` late (a loaded host, a busy libvirtd).
struct Slow(Libvirt);

impl Slow {
    fn wait<T>(&self, r: T) -> T {
        std::thread::sleep(SLOW);
        r
    }
}

impl Hypervisor for Slow {
    fn uri(&self) -> &str {
        self.0.uri()
    }
    fn capacity(&self) -> Result<Capacity, HvError> {
        self.0.capacity()
    }
    fn list(&self) -> Result<Vec<DomainInfo>, HvError> {
        self.wait(self.0.list())
    }
    fn state(&self, name: &str) -> Result<DomainState, HvError> {
        self.wait(self.0.state(name))
    }
    fn define(&self, xml: &str) -> Result<(), HvError> {
        self.wait(self.0.define(xml))
    }
    fn start(&self, name: &str) -> Result<(), HvError> {
        self.wait(self.0.start(name))
    }
    fn shutdown(&self, name: &str) -> Result<(), HvError> {
        self.wait(self.0.shutdown(name))
    }
    fn destroy(&self, name: &str) -> Result<(), HvError> {
        self.wait(self.0.destroy(name))
    }
    fn undefine(&self, name: &str) -> Result<(), HvError> {
        self.wait(self.0.undefine(name))
    }
    fn suspend(&self, name: &str) -> Result<(), HvError> {
        self.wait(self.0.suspend(name))
    }
    fn resume(&self, name: &str) -> Result<(), HvError> {
        self.wait(self.0.resume(name))
    }
    fn xml(&self, name: &str) -> Result<String, HvError> {
        self.wait(self.0.xml(name))
    }
    fn addresses(&self, name: &str) -> Result<Vec<std::net::IpAddr>, HvError> {
        self.wait(self.0.addresses(name))
    }
    fn usernet(&self, name: &str) -> Result<String, HvError> {
        self.wait(self.0.usernet(name))
    }
    fn ensure_network(&self, name: &str, xml: &str) -> Result<String, HvError> {
        self.wait(self.0.ensure_network(name, xml))
    }
    fn remove_network(&self, name: &str) -> Result<(), HvError> {
        self.wait(self.0.remove_network(name))
    }
}

/// When the fence began (its first act is to stop guest I/O).
#[derive(Clone, Default)]
struct FenceSeen(Arc<Mutex<Option<Instant>>>);

impl FenceHook for FenceSeen {
    fn fence_io(&self) -> Result<String, String> {
        self.0.lock().unwrap().get_or_insert_with(Instant::now);
        Ok("recorded by the test".into())
    }
}

async fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_and_the_fence_are_on_time_while_libvirt_and_commands_are_slow() {
    let cluster = Arc::new(Cluster::default());
    cluster.grant.store(true, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(Fake(cluster.clone())))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = AgentConfig::parse(
        &format!(
            "host = \"h1\"\ncluster = [\"{addr}\"]\nlibvirt_uri = \"test:///default\"\nstate_dir = \"{}\"\n",
            dir.path().display()
        ),
        std::path::Path::new("agent.toml"),
    )
    .unwrap();
    let fence = FenceSeen::default();
    let agent = agent::daemon::start_with(
        cfg,
        Arc::new(Slow(Libvirt::new("test:///default"))),
        Arc::new(fence.clone()),
    )
    .await
    .unwrap();
    // Registration itself lists the domains (2 s), then renewals start.
    wait_for("the first renewals", Duration::from_secs(10), || {
        cluster.renewals.lock().unwrap().len() >= 3
    })
    .await;

    // Busy: slow libvirt commands on four VMs, and a probe that waits for a port
    // nobody listens on.
    let mut commands: Vec<pb::AgentCommand> = (1..=4)
        .map(|i| {
            command_to_wire(
                CommandId(i),
                &AgentAction::Start {
                    vm: VmId::new(format!("vm-{i}")),
                },
            )
        })
        .collect();
    commands.push(command_to_wire(
        CommandId(5),
        &AgentAction::TcpProbe {
            vm: VmId::new("vm-1"),
            port: 9,
            address: Some("127.0.0.1".into()),
            timeout_s: 4,
        },
    ));
    let busy_from = Instant::now();
    let renewals_before = cluster.renewals.lock().unwrap().len();
    *cluster.commands.lock().unwrap() = commands;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let renewals = cluster.renewals.lock().unwrap().clone();
    let busy: Vec<Instant> = renewals
        .iter()
        .skip(renewals_before.saturating_sub(1))
        .copied()
        .collect();
    let worst = busy
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap();
    eprintln!(
        "{} renewals in the {:?} the agent was busy; the longest gap {worst:?}",
        busy.len(),
        busy_from.elapsed()
    );
    assert!(
        worst < Duration::from_millis(RENEW_MS + 500),
        "a renewal waited {worst:?} (renew_ms {RENEW_MS}) while commands ran"
    );
    assert!(
        fence.0.lock().unwrap().is_none(),
        "fenced though every renewal was granted"
    );
    wait_for("the commands' results", Duration::from_secs(20), || {
        cluster.results.lock().unwrap().len() >= 5
    })
    .await;

    // Stop granting while the agent is busy again: the lease ends at most LEASE_MS
    // after the last granted renewal was sent, and the fence starts right then.
    *cluster.commands.lock().unwrap() = (6..=9)
        .map(|i| {
            command_to_wire(
                CommandId(i),
                &AgentAction::Destroy {
                    vm: VmId::new(format!("vm-{i}")),
                },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.grant.store(false, Ordering::SeqCst);
    let refused_from = Instant::now();
    wait_for("the fence", Duration::from_secs(10), || {
        fence.0.lock().unwrap().is_some()
    })
    .await;
    let fenced_after = fence
        .0
        .lock()
        .unwrap()
        .unwrap()
        .duration_since(refused_from);
    eprintln!("the fence began {fenced_after:?} after renewals stopped being granted");
    assert!(
        fenced_after <= Duration::from_millis(LEASE_MS + 500),
        "the fence began {fenced_after:?} after the last grant (lease {LEASE_MS} ms)"
    );
    assert!(
        fenced_after >= Duration::from_millis(LEASE_MS - 2 * RENEW_MS - 100),
        "the fence began {fenced_after:?} after the last grant: before the lease ran out"
    );
    let stopping = Instant::now();
    agent.stop().await;
    eprintln!("stopped in {:?}", stopping.elapsed());
    server.abort();
}
