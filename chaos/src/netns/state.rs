//! Reservations and records in [`STATE_DIR`], and [`cleanup_stale`] for labs whose
//! creator died before its Drop ran.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use nix::fcntl::{Flock, FlockArg};

use super::plan::{self, Record, Subnet};
use super::shell::{Tools, host_ipv4_nets, remove_files, remove_resources, root_links};
use super::{LAB_COUNTER, LabError, NETNS_DIR, STATE_DIR, SUBNET_TRIES, TAG_PREFIX, TAG_TRIES};

fn state_path(name: &str) -> PathBuf {
    Path::new(STATE_DIR).join(name)
}

fn record_path(tag: &str) -> PathBuf {
    state_path(&format!("{tag}.lab"))
}

/// Creates `path` holding `contents`, failing with `AlreadyExists` if it exists. The
/// file is complete from the moment it appears (written aside, then hard-linked), so a
/// concurrent `cleanup_stale` never reads a half-written reservation.
fn create_exclusive(path: &Path, contents: &str) -> io::Result<()> {
    let aside = aside_path(path);
    fs::write(&aside, contents)?;
    let linked = fs::hard_link(&aside, path);
    let _ = fs::remove_file(&aside);
    linked
}

/// Replaces `path` atomically (write aside, rename over).
pub(super) fn replace(path: &Path, contents: &str) -> io::Result<()> {
    let aside = aside_path(path);
    fs::write(&aside, contents)?;
    fs::rename(&aside, path)
}

fn aside_path(path: &Path) -> PathBuf {
    let unique = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.{unique}.tmp", std::process::id()));
    PathBuf::from(name)
}

/// This process's start time, to write into records (see [`Record::starttime`]).
/// The start time of a live process `pid` (None: no such process, or it has exited and
/// is a zombie nobody reaped).
pub(super) fn process_starttime(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    if plan::exited_from_stat(&stat) {
        return None;
    }
    plan::starttime_from_stat(&stat)
}

/// Picks a tag nobody uses (no record, no namespace or link with it) and reserves it
/// by creating its record file. Returns the tag and the record's path.
pub(super) fn reserve_tag(tools: &Tools, record: &Record) -> Result<(String, PathBuf), LabError> {
    let links = root_links(tools)?;
    let counter = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
    for attempt in 0..TAG_TRIES {
        let tag = plan::tag_from(plan::mix(record.pid, counter, attempt));
        let leftover = links.iter().any(|l| l.starts_with(&tag))
            || fs::read_dir(NETNS_DIR)
                .map(|dir| {
                    dir.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with(&tag))
                })
                .unwrap_or(false);
        if leftover {
            continue;
        }
        let path = record_path(&tag);
        match create_exclusive(&path, &record.encode()) {
            Ok(()) => return Ok((tag, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(LabError::State {
                    what: "reserving lab tag in",
                    path,
                    source,
                });
            }
        }
    }
    Err(LabError::NoFreeTag { tries: TAG_TRIES })
}

/// Picks a /24 that no host address or route uses and reserves it across processes
/// with an exclusively created file holding our tag.
pub(super) fn reserve_subnet(tools: &Tools, tag: &str) -> Result<(Subnet, PathBuf), LabError> {
    let used = host_ipv4_nets(tools)?;
    let counter = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
    for attempt in 0..SUBNET_TRIES {
        // A different stream from the tag's: salt the attempt.
        let subnet = plan::subnet_from(plan::mix(std::process::id(), counter, attempt + 1000));
        if plan::clashes(subnet, &used) {
            continue;
        }
        let path = state_path(&subnet.reservation_name());
        match create_exclusive(&path, tag) {
            Ok(()) => return Ok((subnet, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(LabError::State {
                    what: "reserving lab subnet in",
                    path,
                    source,
                });
            }
        }
    }
    Err(LabError::NoFreeSubnet {
        tries: SUBNET_TRIES,
    })
}

/// Whether the process that wrote `record` still runs. A pid alone could have been
/// reused by another process; the start time tells them apart (0 means it could not
/// be read at creation, and then a live pid is trusted, erring towards keeping).
fn creator_alive(record: &Record) -> bool {
    process_starttime(record.pid).is_some_and(|t| record.starttime == 0 || t == record.starttime)
}

/// Removes the leftovers of labs whose tag starts with `tag_prefix` and whose creating
/// process is gone (crashed or killed before Drop ran). Labs of live processes are left
/// alone. Only the names a lab listed in its own record are deleted. Returns the tags
/// cleaned.
pub fn cleanup_stale(tag_prefix: &str) -> Result<Vec<String>, LabError> {
    let tools = Tools::find()?;
    let entries = match fs::read_dir(STATE_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LabError::State {
                what: "reading",
                path: STATE_DIR.into(),
                source,
            });
        }
    };
    // Cleaners in several processes (parallel test binaries) would otherwise race to
    // delete the same leftovers and report each other's deletions as failures. The
    // lock is held only while this loop runs a bounded number of `ip` commands.
    let lock_path = state_path(".cleanup.lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| LabError::State {
            what: "opening",
            path: lock_path.clone(),
            source,
        })?;
    let _lock =
        Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, errno)| LabError::State {
            what: "locking",
            path: lock_path,
            source: errno.into(),
        })?;
    let mut cleaned = Vec::new();
    let mut errors = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(tag) = file_name.strip_suffix(".lab") else {
            continue;
        };
        if !tag.starts_with(tag_prefix) || !tag.starts_with(TAG_PREFIX) {
            continue;
        }
        let path = entry.path();
        let record = match fs::read_to_string(&path) {
            Ok(text) => Record::decode(&text).map_err(|reason| LabError::BadRecord {
                path: path.clone(),
                reason,
            }),
            // Removed by its owner or another cleaner meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => Err(LabError::State {
                what: "reading lab record",
                path: path.clone(),
                source,
            }),
        };
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        if creator_alive(&record) {
            continue;
        }
        let mut links = record.links.clone();
        links.extend(record.bridge.clone());
        let mut files = Vec::new();
        if let Some(subnet) = record.subnet {
            // Only release the subnet if it is still this lab's reservation.
            let reservation = state_path(&subnet.reservation_name());
            if fs::read_to_string(&reservation).is_ok_and(|owner| owner == tag) {
                files.push(reservation);
            }
        }
        let failed = remove_resources(&tools, &record.netns, &links, &files);
        if failed.is_empty() {
            errors.extend(remove_files(&[path]));
            cleaned.push(tag.to_string());
        } else {
            errors.extend(failed);
        }
    }
    if errors.is_empty() {
        Ok(cleaned)
    } else {
        Err(LabError::Teardown {
            tag: format!("stale labs {tag_prefix}*"),
            errors,
        })
    }
}
