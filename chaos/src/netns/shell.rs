//! The thin I/O shell: finding and running `ip`/`iptables`, listing links, waiting for
//! links and deleting exactly the names it is given.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{LINK_UP_DEADLINE, LabError, NETNS_DIR};

const HINT_DEFAULT: &str = "`ip netns list` and `ip -br link` show what exists";
const HINT_ROOT: &str = "creating network namespaces needs root (CAP_NET_ADMIN); run as root";
const HINT_EXISTS: &str = "a leftover with this name exists; run chaos::netns::cleanup_stale";
const HINT_IPTABLES: &str = "iptables cannot reach the kernel's firewall here; check that \
                             `iptables -L` works as root and the nf_tables modules load";

/// Checks that this process can build labs: root, `ip` and `iptables` present.
/// Tests call it first so a machine without them fails loudly instead of skipping.
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

/// Runs `cmd` to completion; stdout on success, a [`LabError::Command`] naming `what`,
/// the command line and its stderr otherwise.
pub(super) fn run(what: &str, cmd: &mut Command) -> Result<String, LabError> {
    let cmdline = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ");
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
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(LabError::Command {
        what: what.to_string(),
        cmdline,
        status: out.status.to_string(),
        hint: hint_for(&stderr),
        stderr,
    })
}

fn hint_for(stderr: &str) -> &'static str {
    if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        HINT_ROOT
    } else if stderr.contains("File exists") {
        HINT_EXISTS
    } else if stderr.contains("iptables") || stderr.contains("Table does not exist") {
        HINT_IPTABLES
    } else {
        HINT_DEFAULT
    }
}

/// Names of the links in the root namespace (`ip -o link show`).
pub(super) fn root_links(tools: &Tools) -> Result<Vec<String>, LabError> {
    let out = run("listing links", tools.ip().args(["-o", "link", "show"]))?;
    Ok(out
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect())
}

fn ns_exists(ns: &str) -> bool {
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

/// Like [`wait_links_up`], for links inside namespace `ns` (read with `ip -n NS -o
/// link show`: the root namespace's /sys shows only its own links). A bridge port or
/// veth counts once it is `UP`.
pub(super) fn wait_ns_links_up(
    tools: &Tools,
    tag: &str,
    ns: &str,
    links: &[String],
) -> Result<(), LabError> {
    let deadline = Instant::now() + LINK_UP_DEADLINE;
    loop {
        let out = run(
            "listing the WAN's links",
            tools.ip().args(["-n", ns, "-o", "link", "show"]),
        )?;
        let down = links.iter().find(|link| {
            !out.lines().any(|line| {
                line.split(": ")
                    .nth(1)
                    .is_some_and(|n| n.split('@').next() == Some(link.as_str()))
                    && line.contains("state UP")
            })
        });
        let Some(link) = down else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(LabError::LinkNotUp {
                tag: tag.to_string(),
                link: format!("{link} (in {ns})"),
                state: "not UP".into(),
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
                match run(
                    "deleting a lab link",
                    tools.ip().args(["link", "del", link]),
                ) {
                    // Gone meanwhile, e.g. with its peer: that is the goal.
                    Err(LabError::Command { stderr, .. })
                        if stderr.contains("Cannot find device") => {}
                    Err(e) => errors.push(e.to_string()),
                    Ok(_) => {}
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    for ns in netns.iter().rev().filter(|ns| ns_exists(ns)) {
        match run(
            "deleting a node namespace",
            tools.ip().args(["netns", "del", ns]),
        ) {
            Err(LabError::Command { stderr, .. }) if stderr.contains("No such file") => {}
            Err(e) => errors.push(e.to_string()),
            Ok(_) => {}
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
