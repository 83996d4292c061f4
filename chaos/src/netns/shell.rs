//! The thin I/O shell: finding and running `ip`/`iptables`, reading the machine's
//! links and networks (`ip -json`, [`super::iproute`]), waiting for links and deleting
//! exactly the names it is given.
//!
//! Never decides anything from a command's human output or error text: state is read
//! as JSON, and whether something exists is asked of the kernel again.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::iproute::{self, OperState};
use super::{LINK_UP_DEADLINE, LabError, NETNS_DIR, plan};

/// What to look at when an `ip` command fails: the preconditions (root, the
/// capabilities, the tools) were checked before, so what is left is the machine's state.
const HINT_IP: &str = "`ip netns list` and `ip -br link` show what exists";
/// What to look at when an `iptables` command fails.
const HINT_IPTABLES: &str = "iptables cannot reach the kernel's firewall here; check that \
                             `iptables -L` works as root and the nf_tables modules load";

/// Capabilities a lab needs (bit numbers from linux/capability.h): network setup in
/// every namespace, and creating and entering namespaces (`ip netns add`, setns).
const NEEDED_CAPS: [(u32, &str); 2] = [(12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN")];

/// Checks that this process can build labs: root with the capabilities namespaces
/// need, `ip` and `iptables` present. Tests call it first so a machine without them
/// fails loudly instead of skipping.
pub fn preflight() -> Result<(), LabError> {
    Tools::find().map(drop)
}

/// Absolute paths of the tools we run, so a PATH without /usr/sbin still works.
#[derive(Debug, Clone)]
pub(super) struct Tools {
    ip: PathBuf,
    iptables: PathBuf,
}

impl Tools {
    pub(super) fn find() -> Result<Tools, LabError> {
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            return Err(LabError::NotRoot {
                euid: euid.as_raw(),
            });
        }
        // Root in a container may still lack them; then every `ip netns add` would fail.
        if let Some(effective) = effective_capabilities() {
            for (bit, cap) in NEEDED_CAPS {
                if effective & (1u64 << bit) == 0 {
                    return Err(LabError::NoCapability { cap });
                }
            }
        }
        Ok(Tools {
            ip: find_tool("ip")?,
            iptables: find_tool("iptables")?,
        })
    }

    pub(super) fn ip(&self) -> Command {
        Command::new(&self.ip)
    }

    /// `iptables` inside namespace `ns`; each namespace has its own tables.
    pub(super) fn iptables_in(&self, ns: &str) -> Command {
        let mut cmd = self.ip();
        cmd.args(["netns", "exec", ns]).arg(&self.iptables);
        cmd
    }
}

fn find_tool(tool: &'static str) -> Result<PathBuf, LabError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .ok_or(LabError::ToolMissing { tool })
}

/// This process's effective capability set (the `CapEff` field of
/// /proc/self/status, a hexadecimal bit mask); None where the kernel does not say.
fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    plan::effective_capabilities(&status)
}

/// Runs the `ip` command `cmd` to completion; stdout on success, a
/// [`LabError::Command`] naming `what`, the command line and its stderr otherwise.
pub(super) fn run(what: &str, cmd: &mut Command) -> Result<String, LabError> {
    run_with_hint(what, HINT_IP, cmd)
}

/// Like [`run`], for an `iptables` command ([`Tools::iptables_in`]).
pub(super) fn run_iptables(what: &str, cmd: &mut Command) -> Result<String, LabError> {
    run_with_hint(what, HINT_IPTABLES, cmd)
}

fn run_with_hint(what: &str, hint: &'static str, cmd: &mut Command) -> Result<String, LabError> {
    let cmdline = cmdline(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            what: what.to_string(),
            cmdline: cmdline.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(LabError::Command {
        what: what.to_string(),
        cmdline,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        hint,
    })
}

fn cmdline(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs an `ip -json` command and parses its output with `parse`.
fn run_json<T>(
    what: &str,
    cmd: &mut Command,
    parse: impl FnOnce(&str) -> Result<T, serde_json::Error>,
) -> Result<T, LabError> {
    let out = run(what, cmd)?;
    parse(&out).map_err(|source| LabError::Output {
        what: what.to_string(),
        cmdline: cmdline(cmd),
        source,
    })
}

/// The links of the root namespace (`ip -json link show`).
pub(super) fn root_links(tools: &Tools) -> Result<Vec<String>, LabError> {
    let links = run_json(
        "listing links",
        tools.ip().args(["-json", "link", "show"]),
        iproute::links,
    )?;
    Ok(links.into_iter().map(|l| l.name).collect())
}

/// The host's IPv4 networks: its addresses and its routes (`ip -json -4 addr` and
/// `ip -json -4 route`), which a lab's subnet must not clash with.
pub(super) fn host_ipv4_nets(tools: &Tools) -> Result<Vec<(Ipv4Addr, u8)>, LabError> {
    let mut nets = run_json(
        "listing host addresses",
        tools.ip().args(["-json", "-4", "addr", "show"]),
        iproute::ipv4_addrs,
    )?;
    nets.extend(run_json(
        "listing host routes",
        tools.ip().args(["-json", "-4", "route", "show"]),
        iproute::ipv4_routes,
    )?);
    Ok(nets)
}

pub(super) fn ns_exists(ns: &str) -> bool {
    Path::new(NETNS_DIR).join(ns).exists()
}

/// Polls each link's operstate until it is `up`, so callers can send at once.
pub(super) fn wait_links_up(tag: &str, links: &[String]) -> Result<(), LabError> {
    let deadline = Instant::now() + LINK_UP_DEADLINE;
    for link in links {
        loop {
            let path = format!("/sys/class/net/{link}/operstate");
            let state = fs::read_to_string(&path).unwrap_or_default();
            let state = state.trim();
            if state == "up" {
                break;
            }
            if Instant::now() >= deadline {
                return Err(LabError::LinkNotUp {
                    tag: tag.to_string(),
                    link: link.clone(),
                    state: state.to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// Like [`wait_links_up`], for links inside namespace `ns` (read with `ip -n NS
/// -json link show`: the root namespace's /sys shows only its own links). A bridge
/// port or veth counts once its operational state is up.
pub(super) fn wait_ns_links_up(
    tools: &Tools,
    tag: &str,
    ns: &str,
    links: &[String],
) -> Result<(), LabError> {
    let deadline = Instant::now() + LINK_UP_DEADLINE;
    loop {
        let present = run_json(
            "listing the WAN's links",
            tools.ip().args(["-n", ns, "-json", "link", "show"]),
            iproute::links,
        )?;
        let state = |link: &str| present.iter().find(|l| l.name == link).map(|l| l.operstate);
        let down = links
            .iter()
            .map(|link| (link, state(link)))
            .find(|(_, s)| *s != Some(OperState::Up));
        let Some((link, state)) = down else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(LabError::LinkNotUp {
                tag: tag.to_string(),
                link: format!("{link} (in {ns})"),
                state: state.map_or("missing".into(), |s| format!("{s:?}")),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Deletes the listed root-namespace links, then the listed namespaces, then files;
/// each only if it still exists. Returns one message per failure and goes on after
/// each, so one stuck item does not leak the rest.
pub(super) fn remove_resources(
    tools: &Tools,
    netns: &[String],
    links: &[String],
    files: &[PathBuf],
) -> Vec<String> {
    let mut errors = Vec::new();
    // Links first: deleting a veth end removes both ends before `ip` returns, whereas
    // a deleted namespace frees its veths later, from a kernel work queue (and never,
    // while a caller's process still runs inside it).
    match root_links(tools) {
        Ok(present) => {
            for link in links.iter().filter(|l| present.contains(l)) {
                if let Err(e) = run(
                    "deleting a lab link",
                    tools.ip().args(["link", "del", link]),
                ) {
                    // Gone meanwhile (e.g. with its peer) is the goal; ask the kernel
                    // again rather than read the error's wording.
                    let still_there = root_links(tools).map_or(true, |now| now.contains(link));
                    if still_there {
                        errors.push(e.to_string());
                    }
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    for ns in netns.iter().rev().filter(|ns| ns_exists(ns)) {
        if let Err(e) = run(
            "deleting a node namespace",
            tools.ip().args(["netns", "del", ns]),
        ) && ns_exists(ns)
        {
            errors.push(e.to_string());
        }
    }
    errors.extend(remove_files(files));
    errors
}

pub(super) fn remove_files(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .filter_map(|f| match fs::remove_file(f) {
            Ok(()) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("removing {}: {e}", f.display())),
        })
        .collect()
}
