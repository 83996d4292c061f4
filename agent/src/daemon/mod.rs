//! The agent process: thin async shell around the pure lease ([`crate::lease`]), the
//! journal ([`crate::journal`]), libvirt ([`crate::hypervisor`]) and the orchestrator's
//! Agent API. Tasks:
//!
//! - **renew** every `renew_ms` with the leader (following its address hints);
//! - **fence** checks the lease every 100 ms and, when it runs out, stops guest I/O on
//!   served volumes (the [`FenceHook`]) and destroys or pauses every managed VM;
//! - **commands** long-polls the host's queue and executes each command at most once,
//!   only while the lease is held;
//! - **watch** reports VM state changes (libvirt polling, 500 ms);
//! - **report** sends results, states and events, retrying until the cluster has them.
//!
//! Never: run a command without a valid lease, restart anything by itself after
//! regaining a lease, or run a command twice.

mod drill;
mod probe;
mod vm_states;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ids::CommandId;
use proto::agent::wire::{command_from_wire, event_to_wire, outcome_to_wire, vm_state_to_wire};
use proto::agent::{
    AgentAction, AgentEvent, CommandOutcome, CommandTarget, Executed, FailureKind, FenceReport,
    VmState,
};
use proto::pb;
use proto::pb::agent_client::AgentClient;
use tokio::sync::{Notify, watch};
use tonic::transport::Channel;
use topology::VmId;

use crate::clock::LeaseClock;
use crate::config::{
    AgentConfig, DiskBackendSetting, DomainTypeSetting, FenceAction, GuestNetwork, PRIVATE_TEST_URI,
};
use crate::domain_xml::{self, DiskBackend, DomainType, HostPaths};
use crate::hypervisor::{
    DomainState, HvError, HvErrorKind, Hypervisor, Libvirt, detect_domain_type, only_ours,
};
use crate::journal::{Journal, Line, Seen};
use crate::lease::{AgentLease, LeaseEvent, Mono, mono_now};
use crate::volumes::Volumes;

/// What stops guest I/O on the primary volumes this host serves. The replication
/// engine provides the real one; until it runs here, [`NoVolumes`] says so.
pub trait FenceHook: Send + Sync + 'static {
    /// Stop acknowledging guest writes on every primary volume served here.
    fn fence_io(&self) -> Result<String, String>;
}

/// This agent serves no replicated volumes (disks are local files or served by
/// another process): there is no guest I/O to stop besides the VMs themselves.
pub struct NoVolumes;

impl FenceHook for NoVolumes {
    fn fence_io(&self) -> Result<String, String> {
        Ok("no replicated volumes are served by this agent".into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot prepare {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the agent talks to the cluster (the leader, once known).
struct Conn {
    addrs: Vec<String>,
    current: usize,
    hint: Option<String>,
    client: Option<(String, AgentClient<Channel>)>,
    tls: Option<Arc<security::Tls>>,
}

impl Conn {
    fn new(addrs: Vec<String>, tls: Option<Arc<security::Tls>>) -> Self {
        Conn {
            addrs,
            tls,
            current: 0,
            hint: None,
            client: None,
        }
    }

    /// The client for the leader hint, else the current address.
    fn client(&mut self) -> Option<(String, AgentClient<Channel>)> {
        let want = self
            .hint
            .clone()
            .or_else(|| self.addrs.get(self.current).cloned())?;
        if let Some((a, c)) = &self.client
            && *a == want
        {
            return Some((a.clone(), c.clone()));
        }
        let ep = security::grpc::endpoint(&want, self.tls.as_deref())
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        let c = AgentClient::new(ep.connect_lazy());
        self.client = Some((want.clone(), c.clone()));
        Some((want, c))
    }

    /// The last call failed: forget the hint and move on to the next address.
    fn failed(&mut self) {
        self.hint = None;
        self.client = None;
        if !self.addrs.is_empty() {
            self.current = (self.current + 1) % self.addrs.len();
        }
    }

    fn follow(&mut self, leader: &str) {
        if !leader.is_empty() {
            self.hint = Some(leader.to_string());
        }
    }
}

#[derive(Default)]
struct Outbox {
    results: Vec<(CommandId, Executed)>,
    domains: BTreeMap<VmId, VmState>,
    events: Vec<(u64, AgentEvent)>,
}

struct Shared {
    cfg: AgentConfig,
    hv: Arc<dyn Hypervisor>,
    fence: Arc<dyn FenceHook>,
    journal: Journal,
    lease: Mutex<AgentLease>,
    /// What the lease is timed with: real time unless the lab skews it.
    clock: Mutex<LeaseClock>,
    conn: tokio::sync::Mutex<Conn>,
    outbox: Mutex<Outbox>,
    wake_reporter: Notify,
    paths: HostPaths,
    domain_type: Mutex<DomainType>,
    lease_ms: Mutex<u64>,
    renew_ms: Mutex<u64>,
    /// One queue per VM with a worker draining it: commands of one VM run one at a
    /// time in the order the cluster issued them (define before start); different VMs
    /// run concurrently.
    vm_queues: Mutex<HashMap<CommandTarget, tokio::sync::mpsc::UnboundedSender<Queued>>>,
    /// The volume groups served here.
    volumes: Arc<Volumes>,
    /// Per domain name: the console log's length when this agent last started it.
    console_marks: Mutex<HashMap<String, u64>>,
    /// This agent fenced its VMs and has not registered since: the next registration
    /// says so, and the cluster restarts what the fence stopped.
    fenced_unreported: std::sync::atomic::AtomicBool,
    /// A fence is under way: registering waits until it is done.
    fencing: std::sync::atomic::AtomicBool,
    /// What the cluster was last told about each VM, by registration or the watch.
    /// Locked after `outbox` when both are (a change and its queueing are one step).
    told: Mutex<vm_states::Told>,
    /// Held across a report and across a registration, so the cluster receives them
    /// in the order the agent observed what they say: a report taken before a
    /// registration never lands after it with older VM states.
    report_gate: tokio::sync::Mutex<()>,
}

/// A command waiting in its target's queue.
type Queued = (CommandId, AgentAction);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running agent; dropping the handle does not stop it, `stop` does.
pub struct RunningAgent {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    volumes: Arc<Volumes>,
}

impl RunningAgent {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        for line in self.volumes.stop_all(false).await {
            tracing::info!("{line}");
        }
    }
}

fn lease_file(cfg: &AgentConfig) -> PathBuf {
    cfg.state_dir.join("lease")
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The persisted lease expiry, if it belongs to this boot.
fn read_lease(cfg: &AgentConfig) -> Option<Mono> {
    let text = std::fs::read_to_string(lease_file(cfg)).ok()?;
    let (ns, boot) = text.trim().split_once(' ')?;
    (boot == boot_id()).then(|| ns.parse().ok().map(Mono))?
}

fn write_lease(cfg: &AgentConfig, until: Mono) {
    let path = lease_file(cfg);
    let tmp = path.with_extension("tmp");
    let ok = std::fs::write(&tmp, format!("{} {}\n", until.0, boot_id()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = ok {
        tracing::warn!(path = %path.display(), "cannot persist the lease: {e}");
    }
}

/// Start the agent: prepare directories, open libvirt and the journal, start the tasks.
pub async fn start(
    cfg: AgentConfig,
    fence: Arc<dyn FenceHook>,
) -> Result<RunningAgent, AgentError> {
    for d in [
        cfg.state_dir.clone(),
        cfg.volumes_dir(),
        cfg.sockets_dir(),
        cfg.consoles_dir(),
    ] {
        std::fs::create_dir_all(&d).map_err(|source| AgentError::Dir {
            path: d.clone(),
            source,
        })?;
    }
    let uri = if cfg.libvirt_uri == PRIVATE_TEST_URI {
        let path = cfg.state_dir.join("testhost.xml");
        let xml =
            domain_xml::test_host_xml(cfg.private_host_vcpus, cfg.private_host_memory.bytes());
        std::fs::write(&path, xml).map_err(|source| AgentError::Dir {
            path: path.clone(),
            source,
        })?;
        format!("test://{}", path.display())
    } else {
        cfg.libvirt_uri.clone()
    };
    let hv: Arc<dyn Hypervisor> = Arc::new(Libvirt::new(&uri));
    start_with(cfg, hv, fence).await
}

/// Start with a given hypervisor (tests pass their own libvirt connection).
pub async fn start_with(
    cfg: AgentConfig,
    hv: Arc<dyn Hypervisor>,
    fence: Arc<dyn FenceHook>,
) -> Result<RunningAgent, AgentError> {
    let journal = Journal::open(&cfg.state_dir.join("journal.jsonl"))?;
    let lease = AgentLease::resume(read_lease(&cfg), mono_now());
    let paths = HostPaths {
        host: cfg.host.clone(),
        volumes_dir: cfg.volumes_dir(),
        sockets_dir: cfg.sockets_dir(),
        consoles_dir: cfg.consoles_dir(),
    };
    let tls = match &cfg.tls {
        Some(files) => {
            let tls = security::Tls::load(files).map_err(|e| AgentError::Tls(e.to_string()))?;
            let p = &tls.principal;
            if p.role != security::Role::Agent || p.name != cfg.host {
                return Err(AgentError::Tls(format!(
                    "{} is the certificate of {p}, not of the agent of {}: use agents/{}.crt and .key",
                    files.cert.display(),
                    cfg.host,
                    cfg.host
                )));
            }
            Some(Arc::new(tls))
        }
        None => {
            tracing::warn!(host = %cfg.host, "TLS is off: this agent talks to the cluster and to its replication peers in the clear");
            None
        }
    };
    let shared = Arc::new(Shared {
        conn: tokio::sync::Mutex::new(Conn::new(cfg.cluster.to_vec(), tls.clone())),
        domain_type: Mutex::new(DomainType::Qemu),
        hv,
        fence,
        journal,
        lease: Mutex::new(lease),
        clock: Mutex::new(LeaseClock::default()),
        outbox: Mutex::new(Outbox::default()),
        wake_reporter: Notify::new(),
        paths,
        lease_ms: Mutex::new(3000),
        renew_ms: Mutex::new(500),
        vm_queues: Mutex::new(HashMap::new()),
        console_marks: Mutex::new(HashMap::new()),
        fenced_unreported: std::sync::atomic::AtomicBool::new(false),
        fencing: std::sync::atomic::AtomicBool::new(false),
        told: Mutex::new(vm_states::Told::default()),
        report_gate: tokio::sync::Mutex::new(()),
        volumes: Arc::new(Volumes::new(
            cfg.volumes_dir(),
            cfg.sockets_dir(),
            cfg.replication_ip.clone(),
            cfg.cluster.to_vec(),
            tls,
        )),
        cfg,
    });
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // Fencing runs from the first moment: a restarted agent whose lease ran out while
    // it was down fences before anything else.
    tasks.push(tokio::spawn(fence_loop(shared.clone(), stop_rx.clone())));
    let s = shared.clone();
    let rx = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        if !register(&s, rx.clone()).await {
            return;
        }
        let mut inner = vec![
            tokio::spawn(renew_loop(s.clone(), rx.clone())),
            tokio::spawn(command_loop(s.clone(), rx.clone())),
            tokio::spawn(watch_loop(s.clone(), rx.clone())),
            tokio::spawn(report_loop(s.clone(), rx.clone())),
        ];
        for t in inner.drain(..) {
            let _ = t.await;
        }
    }));
    Ok(RunningAgent {
        stop,
        tasks,
        volumes: shared.volumes.clone(),
    })
}

/// Sleep `d`, or less when told to stop; true when stopping.
async fn stopped(rx: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *rx.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        // Stop requested, or the handle is gone (nobody can stop us any more: stop too).
        _ = rx.wait_for(|s| *s) => true,
    }
}

/// Longest a libvirt call may take: a hung (not dead) libvirtd blocks its caller, and
/// virt 0.5 has no keep-alive to notice it.
const HV_TIMEOUT: Duration = Duration::from_secs(30);

/// Run a blocking hypervisor call off the async threads, with a deadline.
async fn hv<T: Send + 'static>(
    s: &Arc<Shared>,
    f: impl FnOnce(&dyn Hypervisor) -> Result<T, HvError> + Send + 'static,
) -> Result<T, HvError> {
    let hv = s.hv.clone();
    let uri = hv.uri().to_string();
    match tokio::time::timeout(
        HV_TIMEOUT,
        tokio::task::spawn_blocking(move || f(hv.as_ref())),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(HvError::new(
            HvErrorKind::Failed,
            "call",
            None,
            format!("the libvirt call panicked: {e}"),
        )),
        Err(_) => Err(HvError::new(
            HvErrorKind::Unavailable,
            "call",
            None,
            format!(
                "libvirt at {uri} did not answer within {} s; is libvirtd hung?",
                HV_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Register until it works (retrying every address); false when stopped first.
async fn register(s: &Arc<Shared>, mut rx: watch::Receiver<bool>) -> bool {
    let mut warned = false;
    loop {
        // Never while a fence tears down: the cluster would serve and start what the
        // fence is still stopping.
        while s.fencing.load(Ordering::SeqCst) {
            if stopped(&mut rx, Duration::from_millis(50)).await {
                return false;
            }
        }
        let host = s.cfg.host.clone();
        {
            // Held for this attempt only, not across the wait before the next one.
            let gate = s.report_gate.lock().await;
            match hv(s, move |h| Ok((h.capacity()?, only_ours(h.list()?, &host)))).await {
                Ok((cap, domains)) => {
                    let ty = match s.cfg.domain_type {
                        DomainTypeSetting::Qemu => DomainType::Qemu,
                        DomainTypeSetting::Kvm => DomainType::Kvm,
                        DomainTypeSetting::Auto => detect_domain_type(&cap, None),
                    };
                    *lock(&s.domain_type) = ty;
                    let states = vm_states::reportable(&domains);
                    let req = pb::AgentRegisterRequest {
                        host: s.cfg.host.clone(),
                        agent_version: env!("CARGO_PKG_VERSION").into(),
                        vcpus: cap.vcpus,
                        memory_bytes: cap.memory_bytes,
                        hypervisor: format!("{} ({})", s.hv.uri(), cap.driver),
                        domain_type: ty.as_str().into(),
                        domains: states
                            .iter()
                            .map(|(vm, state)| pb::DomainReport {
                                vm: vm.to_string(),
                                state: vm_state_to_wire(*state).into(),
                            })
                            .collect(),
                        fenced: s.fenced_unreported.load(Ordering::SeqCst),
                        protocol_version: proto::agent::PROTOCOL_VERSION,
                    };
                    let fenced = req.fenced;
                    let client = s.conn.lock().await.client();
                    if let Some((addr, mut c)) = client {
                        let call = tokio::time::timeout(RPC_TIMEOUT, c.register(req));
                        match call.await.unwrap_or_else(|_| Err(rpc_timed_out())) {
                            Ok(r) => {
                                if fenced {
                                    s.fenced_unreported.store(false, Ordering::SeqCst);
                                }
                                // It supersedes queued VM states; the watch loop's next
                                // poll compares with what it said.
                                {
                                    let mut o = lock(&s.outbox);
                                    o.domains.clear();
                                    lock(&s.told).registered(states);
                                }
                                let r = r.into_inner();
                                *lock(&s.lease_ms) = r.lease_ms;
                                *lock(&s.renew_ms) = r.renew_ms.max(50);
                                s.conn.lock().await.follow(&r.leader_addr);
                                let adopted =
                                    domains.iter().filter(|d| d.managed.is_some()).count();
                                tracing::info!(host = %s.cfg.host, via = %addr, adopted, domain_type = %ty, "agent registered");
                                return true;
                            }
                            Err(e) => {
                                tracing::warn!(host = %s.cfg.host, via = %addr, "registration failed: {}", e.message());
                                s.conn.lock().await.failed();
                            }
                        }
                    }
                }
                Err(e) => {
                    if !warned {
                        tracing::error!(host = %s.cfg.host, "libvirt is not usable yet, retrying: {e}");
                        warned = true;
                    }
                }
            }
            drop(gate);
        }
        if stopped(&mut rx, Duration::from_millis(500)).await {
            return false;
        }
    }
}

/// Now on the lease's clock.
fn lease_now(s: &Shared) -> Mono {
    lock(&s.clock).at(mono_now())
}

/// Applies the lab's clock fault (`faults/clock-rate`), saying so when it changes.
fn poll_clock_fault(s: &Arc<Shared>, complained: &mut Option<String>) {
    let file = s.cfg.state_dir.join("faults").join(crate::clock::RATE_FILE);
    let rate = match std::fs::read_to_string(&file) {
        Ok(text) => match crate::clock::parse_rate(&text) {
            Ok(r) => r,
            Err(e) => {
                if complained.as_ref() != Some(&e) {
                    tracing::warn!(host = %s.cfg.host, "{e}");
                    *complained = Some(e);
                }
                return;
            }
        },
        Err(_) => 1.0,
    };
    *complained = None;
    if lock(&s.clock).set_rate(rate, mono_now()) {
        let event = AgentEvent::ClockRate {
            // The rate is within crate::clock's bounds (0.1 to 10).
            rate_permille: (rate * 1000.0).round() as u32,
        };
        tracing::warn!(host = %s.cfg.host, "{event}");
        queue_event(s, event);
    }
}

async fn renew_loop(s: Arc<Shared>, mut rx: watch::Receiver<bool>) {
    let mut seq = 0u64;
    loop {
        let renew_ms = *lock(&s.renew_ms);
        seq += 1;
        let sent = lease_now(&s);
        let client = s.conn.lock().await.client();
        if let Some((addr, mut c)) = client {
            let call = c.renew(pb::RenewRequest {
                host: s.cfg.host.clone(),
                seq,
            });
            match tokio::time::timeout(Duration::from_millis(renew_ms.max(200) * 2), call).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    if r.granted {
                        let regained = {
                            let mut l = lock(&s.lease);
                            let regained = l.granted(sent, r.lease_ms);
                            if let Some(until) = l.until() {
                                write_lease(&s.cfg, until);
                            }
                            regained
                        };
                        if regained {
                            tracing::warn!(host = %s.cfg.host, "lease regained; restarting nothing (the orchestrator decides)");
                            queue_event(&s, AgentEvent::LeaseRegained);
                            // What it served was stopped at the fence: registering
                            // again tells the cluster to place it anew.
                            if !register(&s, rx.clone()).await {
                                return;
                            }
                        }
                        s.conn.lock().await.follow(&r.leader_addr);
                    } else {
                        tracing::debug!(host = %s.cfg.host, via = %addr, "renewal not granted: {}", r.reason);
                        let mut conn = s.conn.lock().await;
                        if r.leader_addr.is_empty() || r.leader_addr == addr {
                            conn.failed();
                        } else {
                            conn.follow(&r.leader_addr);
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(host = %s.cfg.host, via = %addr, "renewal failed: {}", e.message());
                    s.conn.lock().await.failed();
                }
                Err(_) => {
                    tracing::debug!(host = %s.cfg.host, via = %addr, "renewal timed out");
                    s.conn.lock().await.failed();
                }
            }
        }
        if stopped(&mut rx, Duration::from_millis(renew_ms)).await {
            return;
        }
    }
}

fn queue_event(s: &Arc<Shared>, event: AgentEvent) {
    match s.journal.event(event.clone()) {
        Ok(seq) => lock(&s.outbox).events.push((seq, event)),
        Err(e) => tracing::error!(host = %s.cfg.host, "cannot journal an event ({event}): {e}"),
    }
    s.wake_reporter.notify_one();
}

async fn fence_loop(s: Arc<Shared>, mut rx: watch::Receiver<bool>) {
    // Events from an earlier run that never reached the cluster.
    for (seq, event) in s.journal.unreported_events() {
        lock(&s.outbox).events.push((seq, event));
    }
    loop {
        let event = lock(&s.lease).check(lease_now(&s));
        if event == LeaseEvent::Fence {
            // Said before the first await: a lease regained while the fence still
            // tears down must register as fenced, and only once the fence is done.
            s.fenced_unreported.store(true, Ordering::SeqCst);
            s.fencing.store(true, Ordering::SeqCst);
            fence(&s).await;
            lock(&s.lease).fenced();
            s.fencing.store(false, Ordering::SeqCst);
        }
        if stopped(&mut rx, Duration::from_millis(100)).await {
            return;
        }
    }
}

/// Stop guest I/O, then destroy (or pause) every managed VM. Errors are logged and
/// recorded; a VM that could not be stopped is named in the event.
async fn fence(s: &Arc<Shared>) {
    let started = mono_now();
    let io = match (s.volumes.fence_io(), s.fence.fence_io()) {
        (Ok(a), Ok(b)) => Ok(format!("{a}; {b}")),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let action = s.cfg.fence_action;
    // A pause drains the guest's in-flight I/O, and the fenced primaries hold theirs for
    // good: stop serving first, so that I/O fails (none of it was acknowledged) and the
    // pause finishes. A kill needs no drain and goes first.
    let mut groups = Vec::new();
    if action == FenceAction::Pause {
        groups = s.volumes.stop_all(true).await;
    }
    let host = s.cfg.host.clone();
    let outcome = hv(s, move |h| {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for d in only_ours(h.list()?, &host) {
            if d.managed.is_none() || !d.state.is_active() {
                continue;
            }
            let r = match action {
                FenceAction::Destroy => h.fence(&d.name).map(|how| format!("{} ({how})", d.name)),
                FenceAction::Pause => h.suspend(&d.name).map(|()| d.name.clone()),
            };
            match r {
                Ok(what) => done.push(what),
                Err(e) => failed.push(format!("{}: {e}", d.name)),
            }
        }
        Ok((done, failed))
    })
    .await;
    // The fenced primaries acknowledge nothing any more: stop serving every group
    // (the cluster serves them again once this host registers after a new lease).
    if action == FenceAction::Destroy {
        groups = s.volumes.stop_all(true).await;
    }
    if !groups.is_empty() {
        tracing::warn!(host = %s.cfg.host, "fence: {}", groups.join("; "));
    }
    let took_ms = mono_now().ms_since(started);
    let (io_failed, io) = match io {
        Ok(t) => (false, t),
        Err(e) => (true, e),
    };
    let report = match outcome {
        Ok((stopped, not_stopped)) => FenceReport {
            took_ms,
            paused: action == FenceAction::Pause,
            stopped,
            not_stopped,
            io,
            io_failed,
            error: None,
        },
        Err(e) => FenceReport {
            took_ms,
            paused: action == FenceAction::Pause,
            stopped: Vec::new(),
            not_stopped: Vec::new(),
            io,
            io_failed,
            error: Some(e.to_string()),
        },
    };
    tracing::error!(host = %s.cfg.host, "FENCED: {report}");
    queue_event(s, AgentEvent::Fenced(report));
}

/// Queue a command behind the earlier commands of its target, starting the target's
/// worker if idle. A command this agent cannot decode fails at once, with why.
fn dispatch(s: &Arc<Shared>, cmd: pb::AgentCommand) {
    let id = CommandId(cmd.id);
    let (id, action) = match command_from_wire(cmd) {
        Ok(c) => c,
        Err(e) => {
            let why = format!("this agent cannot read the command: {e}");
            tracing::error!(host = %s.cfg.host, %id, "{why}");
            finish(s, id, Executed::failed(FailureKind::Unsupported, why));
            return;
        }
    };
    let target = action.target();
    let mut queues = lock(&s.vm_queues);
    // A worker removes its queue only under this lock, after finding it empty: a
    // sender found here is still drained.
    let cmd = match queues.get(&target) {
        Some(tx) => match tx.send((id, action)) {
            Ok(()) => return,
            Err(e) => e.0,
        },
        None => (id, action),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let _ = tx.send(cmd);
    queues.insert(target.clone(), tx);
    tokio::spawn(vm_worker(s.clone(), target, rx));
}

async fn vm_worker(
    s: Arc<Shared>,
    target: CommandTarget,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Queued>,
) {
    loop {
        let next = match rx.try_recv() {
            Ok(c) => Some(c),
            Err(_) => {
                let mut queues = lock(&s.vm_queues);
                match rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(_) => {
                        queues.remove(&target);
                        None
                    }
                }
            }
        };
        match next {
            Some((id, action)) => run_command(s.clone(), id, action).await,
            None => return,
        }
    }
}

/// How long the cluster may hold a command poll open waiting for commands.
const POLL_WAIT_MS: u32 = 2000;

async fn command_loop(s: Arc<Shared>, mut rx: watch::Receiver<bool>) {
    let mut after = 0u64;
    loop {
        // No lease, no commands: they stay queued and come again.
        if !lock(&s.lease).valid(lease_now(&s)) {
            if stopped(&mut rx, Duration::from_millis(100)).await {
                return;
            }
            continue;
        }
        let client = s.conn.lock().await.client();
        let Some((_, mut c)) = client else {
            if stopped(&mut rx, Duration::from_millis(200)).await {
                return;
            }
            continue;
        };
        let poll = c.poll(pb::PollRequest {
            host: s.cfg.host.clone(),
            after_id: after,
            wait_ms: POLL_WAIT_MS,
        });
        // A node cut off without a reset (a partition, a paused process) never answers:
        // give up after the long poll's wait plus slack, so the next poll goes to the
        // node the renewals moved to instead of waiting for the cut to heal.
        let poll =
            tokio::time::timeout(Duration::from_millis(u64::from(POLL_WAIT_MS) + 1000), poll);
        let reply = tokio::select! {
            r = poll => r.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("the node did not answer the poll"))),
            _ = rx.wait_for(|v| *v) => return,
        };
        match reply {
            Ok(r) => {
                for cmd in r.into_inner().commands {
                    after = after.max(cmd.id);
                    dispatch(&s, cmd);
                }
            }
            Err(e) => {
                tracing::debug!(host = %s.cfg.host, "poll failed: {}", e.message());
                if stopped(&mut rx, Duration::from_millis(200)).await {
                    return;
                }
            }
        }
    }
}

async fn run_command(s: Arc<Shared>, id: CommandId, action: AgentAction) {
    let executed = match s.journal.seen(id) {
        Seen::Done(executed) => executed,
        Seen::Interrupted => Executed::failed(
            FailureKind::Interrupted,
            "the agent stopped while running this command; its outcome is unknown and it is not run again (see the VM's state)",
        ),
        Seen::New => {
            if !lock(&s.lease).valid(lease_now(&s)) {
                return; // comes again once the lease is back
            }
            if let Err(e) = s.journal.record(Line::Begin { id }) {
                tracing::error!(host = %s.cfg.host, %id, "cannot journal a command, not running it: {e}");
                return;
            }
            let executed = execute(&s, &action).await;
            if let Err(e) = s.journal.record(Line::Finished {
                id,
                executed: executed.clone(),
            }) {
                tracing::error!(host = %s.cfg.host, %id, "cannot journal a result: {e}");
            }
            executed
        }
    };
    tracing::info!(host = %s.cfg.host, %id, action = action.name(), target = %action.target(), ok = executed.is_ok(), "{executed}");
    finish(&s, id, executed);
}

/// Queue a command's result for the cluster.
fn finish(s: &Arc<Shared>, id: CommandId, executed: Executed) {
    lock(&s.outbox).results.push((id, executed));
    s.wake_reporter.notify_one();
}

/// A production VM's network from this host's `guest_network` (the cluster sends
/// none): a libvirt network, or user-mode networking with each probed guest port
/// forwarded to a free loopback port (the ports it had when it is defined again).
async fn connect_to_guest_network(
    s: &Arc<Shared>,
    mut spec: topology::spec::VmSpec,
) -> Result<topology::spec::VmSpec, String> {
    use topology::spec::{NetworkSpec, PortForward};
    if spec.drill.is_some() || spec.network != NetworkSpec::None {
        return Ok(spec);
    }
    match &s.cfg.guest_network {
        GuestNetwork::None => {}
        GuestNetwork::Network(name) => spec.network = NetworkSpec::Network { name: name.clone() },
        GuestNetwork::User => {
            let name = spec.domain_name();
            let had = hv(s, move |h| h.xml(&name))
                .await
                .map(|x| domain_xml::user_forwards(&x))
                .unwrap_or_default();
            let mut forwards = Vec::new();
            for &guest in &spec.probe_ports {
                let host = match had.iter().find(|f| f.guest == guest) {
                    Some(f) => f.host,
                    None => std::net::TcpListener::bind("127.0.0.1:0")
                        .and_then(|l| l.local_addr())
                        .map(|a| a.port())
                        .map_err(|e| {
                            format!("cannot find a free loopback port to forward guest port {guest}: {e}")
                        })?,
                };
                forwards.push(PortForward { guest, host });
            }
            spec.network = NetworkSpec::User { forwards };
        }
    }
    Ok(spec)
}

/// A command's result from a hypervisor call and what it made of the call's value.
fn result<T>(r: Result<T, HvError>, outcome: impl FnOnce(T) -> CommandOutcome) -> Executed {
    match r {
        Ok(v) => Executed::done(outcome(v)),
        Err(e) => Executed::failed(FailureKind::Failed, e.to_string()),
    }
}

fn failed(message: impl Into<String>) -> Executed {
    Executed::failed(FailureKind::Failed, message)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

async fn execute(s: &Arc<Shared>, action: &AgentAction) -> Executed {
    match action.clone() {
        AgentAction::Define { spec } => {
            let spec = match connect_to_guest_network(s, spec).await {
                Ok(spec) => spec,
                Err(e) => return failed(e),
            };
            let backend = match s.cfg.disk_backend {
                DiskBackendSetting::File => DiskBackend::File,
                DiskBackendSetting::Nbd => DiskBackend::Nbd,
            };
            if backend == DiskBackend::File {
                // A local raw file per volume, sparse; never truncated if it exists.
                for d in &spec.disks {
                    let path = domain_xml::volume_path(&s.paths, &d.volume);
                    let made = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                        .and_then(|f| {
                            if f.metadata()?.len() < d.size.bytes() {
                                f.set_len(d.size.bytes())?;
                            }
                            Ok(())
                        });
                    if let Err(e) = made {
                        return failed(format!("cannot create the disk {}: {e}", path.display()));
                    }
                }
            }
            let ty = *lock(&s.domain_type);
            let xml = domain_xml::domain_xml(&spec, ty, &s.paths, backend);
            let domain = spec.domain_name();
            let disks = count(spec.disks.len());
            result(hv(s, move |h| h.define(&xml)).await, |()| {
                CommandOutcome::Defined {
                    domain,
                    domain_type: ty.to_string(),
                    disks,
                }
            })
        }
        AgentAction::Start { vm } => {
            // Probes look at what the console shows from this start on (the log is
            // appended across boots).
            let console = domain_xml::console_path(&s.paths, &vm);
            let mark = std::fs::metadata(&console).map_or(0, |m| m.len());
            lock(&s.console_marks).insert(vm.to_string(), mark);
            let name = vm.to_string();
            result(
                hv(s, move |h| {
                    h.start(&name)?;
                    h.state(&name)
                })
                .await,
                |state| CommandOutcome::Started {
                    domain: vm.to_string(),
                    state: state.reported(),
                },
            )
        }
        AgentAction::Probe {
            vm,
            marker,
            timeout_s,
        } => probe::console(s, vm.as_str(), &marker, timeout_s).await,
        AgentAction::TcpProbe {
            vm,
            port,
            address,
            timeout_s,
        } => probe::tcp(s, &vm, port, address.as_deref(), timeout_s).await,
        AgentAction::DrillSnapshot { op, app } => {
            let socket = domain_xml::drill_socket_path(&s.paths, op, &app);
            match s.volumes.drill_snapshot(op, &app, socket).await {
                Ok(o) => Executed::done(o),
                Err(e) => failed(e),
            }
        }
        AgentAction::DrillStart { op, spec } => drill::start(s, op, spec).await,
        AgentAction::DrillProbe {
            op,
            vm,
            marker,
            timeout_s,
        } => {
            let name = topology::spec::drill_domain_name(op, &vm);
            probe::console(s, &name, &marker, timeout_s).await
        }
        AgentAction::DrillCleanup { op } => drill::cleanup(s, op).await,
        AgentAction::Destroy { vm } => {
            let name = vm.to_string();
            result(hv(s, move |h| h.destroy(&name)).await, |()| {
                CommandOutcome::Destroyed { vm }
            })
        }
        AgentAction::Undefine { vm } => {
            let name = vm.to_string();
            result(hv(s, move |h| h.undefine(&name)).await, |()| {
                CommandOutcome::Undefined { vm }
            })
        }
        AgentAction::Suspend { vm } => {
            let name = vm.to_string();
            result(hv(s, move |h| h.suspend(&name)).await, |()| {
                CommandOutcome::Suspended { vm }
            })
        }
        AgentAction::Resume { vm } => {
            let name = vm.to_string();
            result(hv(s, move |h| h.resume(&name)).await, |()| {
                CommandOutcome::Resumed { vm }
            })
        }
        AgentAction::Serve { group } => match s.volumes.serve(group).await {
            Ok(served) => Executed::done(CommandOutcome::Served(served)),
            Err(e) => failed(e),
        },
        AgentAction::Unserve { app, grace_s } => {
            let stopped = s.volumes.unserve(&app, grace_s).await;
            Executed::done(CommandOutcome::Unserved { app, stopped })
        }
        AgentAction::Shutdown { vm, timeout_s } => {
            let name = vm.to_string();
            if let Err(e) = hv(s, move |h| h.shutdown(&name)).await {
                return failed(e.to_string());
            }
            let deadline = mono_now().plus_ms(u64::from(timeout_s) * 1000);
            loop {
                let name = vm.to_string();
                match hv(s, move |h| h.state(&name)).await {
                    Ok(DomainState::ShutOff) => {
                        return Executed::done(CommandOutcome::ShutDown {
                            vm,
                            destroyed_after_s: None,
                        });
                    }
                    Ok(_) if mono_now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Ok(_) => {
                        let name = vm.to_string();
                        return match hv(s, move |h| h.destroy(&name)).await {
                            Ok(()) => Executed::done(CommandOutcome::ShutDown {
                                vm,
                                destroyed_after_s: Some(timeout_s),
                            }),
                            Err(e) => failed(format!(
                                "{vm} did not stop within {timeout_s} s and could not be destroyed: {e}"
                            )),
                        };
                    }
                    Err(e) => return failed(e.to_string()),
                }
            }
        }
    }
}

/// Report VM state changes: libvirt is polled every 500 ms (events would need a
/// libvirt event loop thread; polling is simple and bounded).
async fn watch_loop(s: Arc<Shared>, mut rx: watch::Receiver<bool>) {
    let mut libvirt_down = false;
    let mut clock_complaint = None;
    loop {
        poll_clock_fault(&s, &mut clock_complaint);
        let host = s.cfg.host.clone();
        match hv(&s, move |h| h.list().map(|d| only_ours(d, &host))).await {
            Ok(domains) => {
                if libvirt_down {
                    tracing::warn!(host = %s.cfg.host, "libvirt is reachable again");
                    queue_event(
                        &s,
                        AgentEvent::LibvirtReachable {
                            uri: s.hv.uri().to_string(),
                        },
                    );
                    libvirt_down = false;
                }
                let changed = {
                    let mut o = lock(&s.outbox);
                    let changed = lock(&s.told).observe(vm_states::reportable(&domains));
                    let any = !changed.is_empty();
                    o.domains.extend(changed);
                    any
                };
                if changed {
                    s.wake_reporter.notify_one();
                }
                // The lab's disk faults (files in `faults/`).
                let failed: std::collections::BTreeSet<String> =
                    std::fs::read_dir(s.cfg.state_dir.join("faults"))
                        .map(|d| {
                            d.flatten()
                                .filter_map(|e| {
                                    e.file_name()
                                        .to_str()
                                        .and_then(|n| {
                                            n.strip_prefix(crate::volumes::DISK_FAULT_PREFIX)
                                        })
                                        .map(str::to_string)
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                for change in s.volumes.apply_disk_faults(&failed) {
                    tracing::warn!(host = %s.cfg.host, "{change}");
                    queue_event(&s, change);
                }
            }
            Err(e) => {
                if !libvirt_down {
                    tracing::error!(host = %s.cfg.host, "libvirt is unreachable: {e}");
                    queue_event(
                        &s,
                        AgentEvent::LibvirtUnreachable {
                            error: e.to_string(),
                        },
                    );
                    libvirt_down = true;
                }
            }
        }
        if stopped(&mut rx, Duration::from_millis(500)).await {
            return;
        }
    }
}

async fn report_loop(s: Arc<Shared>, mut rx: watch::Receiver<bool>) {
    loop {
        let gate = s.report_gate.lock().await;
        let batch = {
            let mut o = lock(&s.outbox);
            std::mem::take(&mut *o)
        };
        if !batch.results.is_empty() || !batch.domains.is_empty() || !batch.events.is_empty() {
            let req = pb::ReportRequest {
                host: s.cfg.host.clone(),
                results: batch
                    .results
                    .iter()
                    .map(|(id, e)| outcome_to_wire(*id, e))
                    .collect(),
                domains: batch
                    .domains
                    .iter()
                    .map(|(vm, state)| pb::DomainReport {
                        vm: vm.to_string(),
                        state: vm_state_to_wire(*state).into(),
                    })
                    .collect(),
                events: batch
                    .events
                    .iter()
                    .map(|(seq, e)| event_to_wire(*seq, e))
                    .collect(),
            };
            let client = s.conn.lock().await.client();
            let sent = match client {
                Some((_, mut c)) => tokio::time::timeout(RPC_TIMEOUT, c.report(req))
                    .await
                    .unwrap_or_else(|_| Err(rpc_timed_out()))
                    .map_err(|e| e.message().to_string()),
                None => Err("no orchestrator address".into()),
            };
            match sent {
                Ok(_) => {
                    for (seq, _) in &batch.events {
                        let _ = s.journal.record(Line::EventReported { seq: *seq });
                    }
                }
                Err(e) => {
                    tracing::debug!(host = %s.cfg.host, "report failed, will retry: {e}");
                    // Put results and events back; VM states are observed again
                    // instead (fresh, not the failed report's older ones).
                    {
                        let mut o = lock(&s.outbox);
                        let mut results = batch.results;
                        results.append(&mut o.results);
                        o.results = results;
                        lock(&s.told).forget(batch.domains.keys());
                        let mut events = batch.events;
                        events.append(&mut o.events);
                        o.events = events;
                    }
                    drop(gate);
                    s.conn.lock().await.failed();
                    if stopped(&mut rx, Duration::from_millis(300)).await {
                        return;
                    }
                    continue;
                }
            }
        }
        drop(gate);
        tokio::select! {
            _ = s.wake_reporter.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = rx.wait_for(|v| *v) => return,
        }
    }
}

/// How long a report or a registration may take: a node cut off by a partition
/// must not hold the agent's reports (and, behind the gate, its registration).
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

fn rpc_timed_out() -> tonic::Status {
    tonic::Status::deadline_exceeded(format!(
        "the orchestrator did not answer within {} s",
        RPC_TIMEOUT.as_secs()
    ))
}
