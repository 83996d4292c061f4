//! # netns — a lab of "machines" made of Linux network namespaces
//!
//! [`NetLab::create`] gives every node its own network namespace with one address on a
//! private /24, all joined by a Linux bridge inside a WAN namespace of the lab's own.
//! Tests (and `metrodr lab up`) run processes in a node with [`NetLab::command`], or run
//! code on a thread inside it with [`NetLab::in_ns`], and cut links with
//! [`NetLab::isolate`] and [`NetLab::partition`] (iptables rules inside the node
//! namespaces, healed with [`NetLab::heal`]). The harness in the root namespace reaches
//! every node through one veth pair into the WAN (it holds the bridge address), even an
//! isolated node.
//!
//! ```text
//!   root ns (harness)      ns <tag>.wan (the WAN)                 node namespaces
//!   10.A.B.1 <tag>h ══ <tag>w ─┐
//!                              <tag>br ─ <tag>v0 ══ <tag>p0 10.A.B.2  ns <tag>-<node0>
//!                              └──────── <tag>v1 ══ <tag>p1 10.A.B.3  ns <tag>-<node1>
//! ```
//!
//! **Must never** touch a namespace, link, address or iptables rule it did not create,
//! nor kill any process (processes are the caller's). Everything it creates carries a
//! per-lab tag that is reserved in [`STATE_DIR`] first; deletion only ever targets names
//! from that lab's own list. It changes nothing in the root namespace's iptables or
//! sysctls.
//!
//! Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN), `ip` (iproute2) and `iptables`;
//! [`preflight`] checks. The machine's state is read as `ip -json` output, never by
//! searching `ip`'s human output or error text.
//! The bridge lives in the WAN namespace, not the root one, so node-to-node traffic never
//! crosses the host's own firewall (a Docker host's FORWARD policy of DROP does not
//! matter); only the harness's veth end is in the root namespace.

mod error;
mod iproute;
mod plan;
mod shell;
mod state;

use std::ffi::OsStr;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

pub use error::LabError;
use plan::{Faults, Record, Subnet};
pub use plan::{MAX_NODES, RECORD_VERSION, TAG_PREFIX};
pub use shell::preflight;
use shell::{
    Tools, ns_exists, remove_files, remove_resources, root_links, run, run_iptables, wait_links_up,
    wait_ns_links_up,
};
pub use state::cleanup_stale;
use state::{process_starttime, replace, reserve_subnet, reserve_tag};

/// Where labs reserve their tag (`<tag>.lab`, the lab's record) and their subnet
/// (`net-10.A.B`), and where `.cleanup.lock` serialises [`cleanup_stale`] runs. /run
/// is a tmpfs, so a reboot, which also removes every namespace and link, forgets the
/// reservations too.
pub const STATE_DIR: &str = "/run/metrodr-lab";

/// The per-namespace iptables chain that holds every fault rule; INPUT and OUTPUT jump
/// to it. Healing only flushes this chain, so rules of anyone else are never touched.
pub const FAULT_CHAIN: &str = "MDR-FAULT";

/// Where `ip netns add` mounts namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// Tags and subnets tried before giving up. Each try is a fresh hash, so running out
/// means the space is genuinely crowded (leftovers: see [`cleanup_stale`]).
pub(crate) const TAG_TRIES: u64 = 32;
pub(crate) const SUBNET_TRIES: u64 = 64;

/// Links usually report `up` within milliseconds; ten seconds allows for a loaded
/// 2-core CI machine and is still short enough to fail a broken setup quickly.
pub(crate) const LINK_UP_DEADLINE: Duration = Duration::from_secs(10);

/// Distinguishes labs created by the same process (parallel tests).
pub(crate) static LAB_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
struct Node {
    name: String,
    ns: String,
    addr: Ipv4Addr,
    host_veth: String,
    ns_veth: String,
}

/// What this lab has created so far, so teardown removes exactly that, even after a
/// creation that failed halfway.
#[derive(Debug, Default)]
struct Created {
    record: Option<PathBuf>,
    reservation: Option<PathBuf>,
    netns: Vec<String>,
    links: Vec<String>,
}

/// A set of network namespaces joined by a bridge. Dropping it deletes everything it
/// created; [`NetLab::destroy`] does the same and reports problems.
#[derive(Debug)]
pub struct NetLab {
    tag: String,
    subnet: Subnet,
    nodes: Vec<Node>,
    tools: Tools,
    /// Serialises fault changes and remembers what is in force.
    faults: Mutex<Faults>,
    created: Created,
}

impl NetLab {
    /// Builds a lab with one namespace per node. On error, everything already created
    /// is removed again before returning.
    pub fn create(nodes: &[&str]) -> Result<NetLab, LabError> {
        let tools = Tools::find()?;
        // Validate names before reserving anything.
        plan::ns_names(TAG_PREFIX, nodes).map_err(|reason| LabError::BadNodes { reason })?;
        fs::create_dir_all(STATE_DIR).map_err(|source| LabError::State {
            what: "creating",
            path: STATE_DIR.into(),
            source,
        })?;
        let pid = std::process::id();
        let mut record = Record {
            pid,
            starttime: process_starttime(pid).unwrap_or(0),
            ..Record::default()
        };
        let (tag, record_file) = reserve_tag(&tools, &record)?;
        let mut lab = NetLab {
            tag,
            subnet: Subnet([0, 0]),
            nodes: Vec::new(),
            tools,
            faults: Mutex::new(Faults::default()),
            created: Created {
                record: Some(record_file.clone()),
                ..Created::default()
            },
        };
        // From here on, `lab` going out of scope on `?` tears down what exists.
        let (subnet, reservation) = reserve_subnet(&lab.tools, &lab.tag)?;
        lab.subnet = subnet;
        lab.created.reservation = Some(reservation);
        let ns_names =
            plan::ns_names(&lab.tag, nodes).map_err(|reason| LabError::BadNodes { reason })?;
        lab.nodes = nodes
            .iter()
            .zip(ns_names)
            .enumerate()
            .map(|(i, (name, ns))| Node {
                name: (*name).to_string(),
                ns,
                addr: subnet.node(i),
                host_veth: plan::host_veth(&lab.tag, i),
                ns_veth: plan::ns_veth(&lab.tag, i),
            })
            .collect();
        // Write the full list of names down before creating any of them, so that a
        // crash at any later point leaves enough for cleanup_stale.
        record.subnet = Some(subnet);
        // The bridge and the nodes' WAN ends go with the WAN namespace; the harness's
        // root end goes with its peer, or by name. (`bridge` is for the records of
        // labs made before the WAN namespace, whose bridge was in the root namespace.)
        record.bridge = None;
        record.netns = std::iter::once(plan::wan_ns(&lab.tag))
            .chain(lab.nodes.iter().map(|n| n.ns.clone()))
            .collect();
        record.links = vec![plan::harness_veth(&lab.tag)];
        replace(&record_file, &record.encode()).map_err(|source| LabError::State {
            what: "writing lab record",
            path: record_file.clone(),
            source,
        })?;
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), LabError> {
        let wan = plan::wan_ns(&self.tag);
        let bridge = plan::bridge_name(&self.tag);
        let harness = plan::harness_veth(&self.tag);
        let harness_wan = plan::harness_wan_veth(&self.tag);
        let ip = &self.tools;
        // The tag was reserved free of leftovers; a name that exists anyway is one
        // (created since by a lab that then crashed): say so rather than fail halfway.
        let namespaces = std::iter::once(&wan).chain(self.nodes.iter().map(|n| &n.ns));
        if let Some(ns) = namespaces.into_iter().find(|ns| ns_exists(ns)) {
            return Err(LabError::Leftover { name: ns.clone() });
        }
        if root_links(ip)?.contains(&harness) {
            return Err(LabError::Leftover { name: harness });
        }
        run(
            "creating the WAN namespace",
            ip.ip().args(["netns", "add", &wan]),
        )?;
        self.created.netns.push(wan.clone());
        run(
            "creating the lab bridge",
            ip.ip()
                .args(["-n", &wan, "link", "add", &bridge, "type", "bridge"]),
        )?;
        run(
            "bringing the lab bridge up",
            ip.ip().args(["-n", &wan, "link", "set", &bridge, "up"]),
        )?;
        // The harness's way in: its root end holds the bridge address.
        run(
            "creating the harness's veth pair into the WAN",
            ip.ip()
                .args(["link", "add", &harness, "type", "veth"])
                .args(["peer", "name", &harness_wan, "netns", &wan]),
        )?;
        self.created.links.push(harness.clone());
        run(
            "attaching the harness's veth to the bridge",
            ip.ip().args([
                "-n",
                &wan,
                "link",
                "set",
                &harness_wan,
                "master",
                &bridge,
                "up",
            ]),
        )?;
        let bridge_cidr = format!("{}/24", self.subnet.bridge());
        run(
            "addressing the harness's veth",
            ip.ip().args(["addr", "add", &bridge_cidr, "dev", &harness]),
        )?;
        run(
            "bringing the harness's veth up",
            ip.ip().args(["link", "set", &harness, "up"]),
        )?;
        for node in &self.nodes {
            let Node {
                ns,
                host_veth,
                ns_veth,
                addr,
                ..
            } = node;
            run(
                "creating a node namespace",
                ip.ip().args(["netns", "add", ns]),
            )?;
            self.created.netns.push(ns.clone());
            run(
                "bringing lo up in a node",
                ip.ip().args(["-n", ns, "link", "set", "lo", "up"]),
            )?;
            // Create the pair with its ends already in the WAN and in the node, so
            // neither ever exists in the root namespace.
            run(
                "creating a node's veth pair",
                ip.ip()
                    .args(["-n", &wan, "link", "add", host_veth, "type", "veth"])
                    .args(["peer", "name", ns_veth, "netns", ns]),
            )?;
            run(
                "attaching a node's veth to the bridge",
                ip.ip().args([
                    "-n", &wan, "link", "set", host_veth, "master", &bridge, "up",
                ]),
            )?;
            let cidr = format!("{addr}/24");
            run(
                "addressing a node",
                ip.ip()
                    .args(["-n", ns, "addr", "add", &cidr, "dev", ns_veth]),
            )?;
            run(
                "bringing a node's veth up",
                ip.ip().args(["-n", ns, "link", "set", ns_veth, "up"]),
            )?;
            // The fault chain exists from the start, empty; faults only ever fill or
            // flush it. Inserting the jumps first keeps them ahead of anyone's rules.
            for args in [
                vec!["-w", "-N", FAULT_CHAIN],
                vec!["-w", "-I", "INPUT", "1", "-j", FAULT_CHAIN],
                vec!["-w", "-I", "OUTPUT", "1", "-j", FAULT_CHAIN],
            ] {
                run_iptables(
                    "setting up a node's fault chain",
                    ip.iptables_in(ns).args(args),
                )?;
            }
        }
        wait_links_up(&self.tag, std::slice::from_ref(&harness))?;
        let mut in_wan = vec![bridge, harness_wan];
        in_wan.extend(self.nodes.iter().map(|n| n.host_veth.clone()));
        wait_ns_links_up(&self.tools, &self.tag, &wan, &in_wan)
    }

    /// The lab's tag: every namespace and link name it creates starts with it.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Node names, in creation order.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.nodes.iter().map(|n| n.name.as_str())
    }

    /// The lab's network address; the lab is the /24 starting there.
    pub fn subnet(&self) -> Ipv4Addr {
        self.subnet.network()
    }

    /// The root-namespace address on the bridge: harness traffic to nodes comes from
    /// here, and faults never block it.
    pub fn bridge_addr(&self) -> Ipv4Addr {
        self.subnet.bridge()
    }

    /// The bridge's interface name (inside the WAN namespace, [`NetLab::wan_ns`]).
    pub fn bridge_name(&self) -> String {
        plan::bridge_name(&self.tag)
    }

    /// The WAN namespace's name (it holds the bridge).
    pub fn wan_ns(&self) -> String {
        plan::wan_ns(&self.tag)
    }

    /// `node`'s address.
    ///
    /// # Panics
    /// If `node` is not in the lab: that is a bug in the caller's test, not a fault of
    /// the machine.
    pub fn addr(&self, node: &str) -> Ipv4Addr {
        self.expect_node(node).addr
    }

    /// `node`'s namespace name (for `ip netns exec` by hand).
    ///
    /// # Panics
    /// If `node` is not in the lab (a caller bug).
    pub fn ns_name(&self, node: &str) -> &str {
        &self.expect_node(node).ns
    }

    /// A command that runs `program` inside `node`'s namespace; add arguments and
    /// spawn it. The process is the caller's: the lab never kills it.
    ///
    /// # Panics
    /// If `node` is not in the lab (a caller bug).
    pub fn command(&self, node: &str, program: impl AsRef<OsStr>) -> Command {
        let ns = &self.expect_node(node).ns;
        let mut cmd = self.tools.ip();
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// Runs `f` on a new thread that has joined `node`'s network namespace, and returns
    /// its result. Sockets created in `f` stay in that namespace after it returns. A
    /// panic in `f` is resumed on the caller's thread.
    pub fn in_ns<T: Send>(&self, node: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        let ns = self.node(node)?.ns.clone();
        let path = Path::new(NETNS_DIR).join(&ns);
        let handle = fs::File::open(&path).map_err(|source| LabError::State {
            what: "opening namespace",
            path,
            source,
        })?;
        // A fresh thread, because setns changes the calling thread for good: the
        // caller's own thread must stay in the root namespace.
        std::thread::scope(|scope| {
            let worker = scope.spawn(move || -> Result<T, LabError> {
                setns(&handle, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| LabError::Enter { ns, source })?;
                Ok(f())
            });
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Drops all traffic between `node` and every other node, both ways. Traffic with
    /// the bridge address (the harness) still flows.
    pub fn isolate(&self, node: &str) -> Result<(), LabError> {
        let index = self.index(node)?;
        let count = self.nodes.len();
        self.change_faults(|f| f.isolate(index, count))
    }

    /// Drops all traffic between nodes `a` and `b`, both ways.
    pub fn partition(&self, a: &str, b: &str) -> Result<(), LabError> {
        let (a, b) = (self.index(a)?, self.index(b)?);
        self.change_faults(|f| f.block(a, b))
    }

    /// Drops what `from` sends to `to`, not the reverse: an asymmetric partition.
    pub fn partition_one_way(&self, from: &str, to: &str) -> Result<(), LabError> {
        let (from, to) = (self.index(from)?, self.index(to)?);
        self.change_faults(|f| f.block_one_way(from, to))
    }

    /// Removes every fault involving `node` (its isolation and its partitions).
    pub fn heal(&self, node: &str) -> Result<(), LabError> {
        let index = self.index(node)?;
        self.change_faults(|f| f.heal(index))
    }

    /// Removes every fault. Flushes each node's chain even where none should be in
    /// force, so it also repairs a half-applied change that returned an error.
    pub fn heal_all(&self) -> Result<(), LabError> {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        faults.clear();
        let mut errors = Vec::new();
        for i in 0..self.nodes.len() {
            if let Err(e) = self.write_chain(i, &[], &[]) {
                errors.push(e);
            }
        }
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    /// Decides the new fault set in pure code, then rewrites only the chains of nodes
    /// whose rules changed. The intended set is kept even if a rewrite fails, so a
    /// retry or `heal_all` converges on it.
    fn change_faults(&self, change: impl FnOnce(&mut Faults)) -> Result<(), LabError> {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = faults.clone();
        change(&mut next);
        let changed = faults.changed_nodes(&next, self.nodes.len());
        *faults = next;
        for i in changed {
            let addrs = |v: Vec<usize>| -> Vec<Ipv4Addr> {
                v.into_iter().map(|p| self.nodes[p].addr).collect()
            };
            let peers = addrs(faults.blocked_peers(i));
            let senders = addrs(faults.dropped_senders(i));
            self.write_chain(i, &peers, &senders)?;
        }
        Ok(())
    }

    /// Makes node `i`'s fault chain drop exactly the traffic from and to `peers`, and
    /// what arrives from `senders`.
    fn write_chain(
        &self,
        i: usize,
        peers: &[Ipv4Addr],
        senders: &[Ipv4Addr],
    ) -> Result<(), LabError> {
        let ns = &self.nodes[i].ns;
        let what = format!("changing faults of node {:?}", self.nodes[i].name);
        run_iptables(
            &what,
            self.tools.iptables_in(ns).args(["-w", "-F", FAULT_CHAIN]),
        )?;
        for rule in plan::fault_rules(FAULT_CHAIN, peers, senders) {
            run_iptables(&what, self.tools.iptables_in(ns).args(rule))?;
        }
        Ok(())
    }

    /// Sends every new TCP connection from `from` to `to`'s address, except to
    /// `except_port` and except sockets marked `mark`, to `port` on `from`'s loopback,
    /// where a transparent [`crate::proxy::LinkProxy`] (started inside `from` with
    /// [`NetLab::in_ns`]) forwards it. The rule lives in `from`'s namespace and goes
    /// with it; the fault chain still filters the proxy's own connections.
    pub fn redirect(
        &self,
        from: &str,
        to: &str,
        except_port: u16,
        mark: u32,
        port: u16,
    ) -> Result<(), LabError> {
        let ns = &self.node(from)?.ns;
        let dest = self.node(to)?.addr;
        run_iptables(
            &format!("redirecting {from}'s connections to {to} through its link proxy"),
            self.tools
                .iptables_in(ns)
                .args(plan::redirect_rule(dest, except_port, mark, port)),
        )?;
        Ok(())
    }

    /// Deletes everything the lab created and reports what could not be deleted.
    pub fn destroy(mut self) -> Result<(), LabError> {
        let errors = self.teardown();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(LabError::Teardown {
                tag: self.tag.clone(),
                errors,
            })
        }
    }

    /// Idempotent: forgets each item once handled, so Drop after destroy does nothing.
    fn teardown(&mut self) -> Vec<String> {
        let created = std::mem::take(&mut self.created);
        let links = created.links;
        let files: Vec<PathBuf> = created.reservation.into_iter().collect();
        let mut errors = remove_resources(&self.tools, &created.netns, &links, &files);
        // The record goes last: while anything above remains, it is how cleanup_stale
        // finds it.
        if let Some(record) = created.record {
            if errors.is_empty() {
                errors.extend(remove_files(&[record]));
            } else {
                errors.push(format!("kept {} for cleanup_stale", record.display()));
            }
        }
        errors
    }

    fn index(&self, node: &str) -> Result<usize, LabError> {
        self.nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| LabError::UnknownNode {
                tag: self.tag.clone(),
                node: node.to_string(),
                known: self.nodes().map(String::from).collect(),
            })
    }

    fn node(&self, node: &str) -> Result<&Node, LabError> {
        Ok(&self.nodes[self.index(node)?])
    }

    fn expect_node(&self, node: &str) -> &Node {
        match self.node(node) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        let errors = self.teardown();
        // Drop cannot return the error and this crate has no logger; stderr is the only
        // place a leak can be reported. `destroy` is the way to get it as a value.
        if !errors.is_empty() {
            eprintln!(
                "metrodr netns lab {}: teardown left problems: {}",
                self.tag,
                errors.join("; ")
            );
        }
    }
}
