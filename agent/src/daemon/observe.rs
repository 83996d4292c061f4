//! One look at the host, as a task: the lab's clock-fault file, this host's domains in
//! libvirt, and the lab's disk faults applied to the volumes served here (files in
//! `state_dir/faults/`). The core compares what it sees with what the cluster was told.
//!
//! Never: decide what to report (the core does), or apply a disk fault while libvirt
//! cannot be listed (as before: the next look applies it).

use std::collections::BTreeSet;

use super::{Resources, hv};
use crate::core::{ClockFile, Input, ObsSeq};
use crate::hypervisor::only_ours;

pub(super) async fn observe(res: &Resources, obs: ObsSeq) -> Input {
    let faults = res.cfg.state_dir.join("faults");
    let clock = match std::fs::read_to_string(faults.join(crate::clock::RATE_FILE)) {
        Ok(text) => match crate::clock::parse_rate(&text) {
            Ok(r) => ClockFile::Rate(r),
            Err(e) => ClockFile::Bad(e),
        },
        Err(_) => ClockFile::Absent,
    };
    let host = res.cfg.host.clone();
    let domains = hv(res, move |h| h.list().map(|d| only_ours(d, &host)))
        .await
        .map_err(|e| e.to_string());
    let disk = if domains.is_ok() {
        let failed: BTreeSet<String> = std::fs::read_dir(&faults)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix(crate::volumes::DISK_FAULT_PREFIX))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        res.volumes.apply_disk_faults(&failed)
    } else {
        Vec::new()
    };
    Input::Observed {
        obs,
        clock,
        domains,
        disk,
    }
}
