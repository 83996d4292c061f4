//! The lab's error type: what failed, the command line and its stderr, what to do.

use std::io;
use std::path::PathBuf;

use super::{LINK_UP_DEADLINE, NETNS_DIR, STATE_DIR};

/// What went wrong while building, faulting or tearing down a lab, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "creating network namespaces needs root (CAP_NET_ADMIN) but this process runs as \
         uid {euid}; run the tests as root"
    )]
    NotRoot { euid: u32 },
    #[error(
        "creating network namespaces needs {cap}, which this process (root) does not \
         have; run the tests as root outside a restricted container (or grant {cap})"
    )]
    NoCapability { cap: &'static str },
    #[error(
        "`{tool}` was not found on PATH, /usr/sbin or /sbin; install iproute2 and iptables \
         (scripts/install-deps.sh)"
    )]
    ToolMissing { tool: &'static str },
    #[error("{what}: `{cmdline}` failed ({status}): {stderr}; {hint}")]
    Command {
        what: String,
        cmdline: String,
        status: String,
        stderr: String,
        hint: &'static str,
    },
    #[error("{what}: `{cmdline}` printed what is not the JSON iproute2 writes")]
    Output {
        what: String,
        cmdline: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{name} exists already, left over by a lab that crashed; remove it with \
         chaos::netns::cleanup_stale(\"mdr\") (`metrodr lab down`)"
    )]
    Leftover { name: String },
    #[error("{what}: could not start `{cmdline}`")]
    Spawn {
        what: String,
        cmdline: String,
        #[source]
        source: io::Error,
    },
    #[error("bad node list: {reason}")]
    BadNodes { reason: String },
    #[error("lab {tag} has no node {node:?}; its nodes are {known:?}")]
    UnknownNode {
        tag: String,
        node: String,
        known: Vec<String>,
    },
    #[error(
        "no free /24 in 10.200.0.0-10.255.255.255 after {tries} tries (used by other labs \
         or host interfaces); remove leftovers of crashed labs with \
         chaos::netns::cleanup_stale(\"mdr\")"
    )]
    NoFreeSubnet { tries: u64 },
    #[error(
        "no free lab tag after {tries} tries; remove leftovers of crashed labs with \
         chaos::netns::cleanup_stale(\"mdr\")"
    )]
    NoFreeTag { tries: u64 },
    #[error("{what} {path}; check that {STATE_DIR} is writable (it needs root)")]
    State {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "lab record {path} is malformed: {reason}; compare it with `ip netns list` and \
         `ip link` and delete it by hand"
    )]
    BadRecord { path: PathBuf, reason: String },
    #[error(
        "link {link} of lab {tag} is still {state:?} after {LINK_UP_DEADLINE:?}; \
         see `ip link show {link}`"
    )]
    LinkNotUp {
        tag: String,
        link: String,
        state: String,
    },
    #[error("entering network namespace {ns} ({NETNS_DIR}/{ns}) failed; is the lab gone?")]
    Enter {
        ns: String,
        #[source]
        source: nix::Error,
    },
    #[error(
        "tearing down {tag} left {} problem(s): {}; check `ip netns list` and `ip link`",
        errors.len(),
        errors.join("; ")
    )]
    Teardown { tag: String, errors: Vec<String> },
}
