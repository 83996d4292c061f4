//! The replica's decisions, pure (DESIGN §4–5): whether a secondary accepts a primary,
//! what a reconnect must resync, role changes under epochs, and when a write may be
//! acknowledged. The engine ([`crate::primary`], [`crate::secondary`]) only carries
//! these out. Exhaustively tested, including a model of two replicas driven by random
//! writes, disconnects, crashes and promotions (see the tests).
//!
//! Never: accept frames from a lower epoch, let two primaries share an epoch, skip a
//! region that may differ, or acknowledge a sync write the peer has not received
//! unless the peer was committed outdated first.

use std::collections::BTreeSet;

use ids::{Epoch, GroupSeq};

use crate::frame::{Hello, HelloReply, Refusal, VolumeInfo};
use crate::meta::{ReplicaMeta, Role};

/// What a secondary answers to a primary's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloDecision {
    /// Refuse (and say why); the connection closes.
    Reject(Refusal),
    /// Accept at `epoch` (persist it first); `demoted` when this replica was a primary
    /// that a newer one replaces (it must stop serving writes at once).
    Accept { epoch: Epoch, demoted: bool },
}

/// The secondary's rule for an incoming primary at `epoch`. `meta` stands for the
/// whole consistency group (its volumes share role, epoch and generation) and `local`
/// lists the group's volumes here, in stream order.
pub fn accept_hello(
    meta: &ReplicaMeta,
    local: &[VolumeInfo],
    epoch: Epoch,
    hello: &Hello,
) -> HelloDecision {
    if hello.volumes != local {
        return HelloDecision::Reject(Refusal::VolumesDiffer {
            offered: hello.volumes.clone(),
            held: local.to_vec(),
        });
    }
    if epoch < meta.epoch {
        return HelloDecision::Reject(Refusal::StaleEpoch {
            epoch,
            seen: meta.epoch,
        });
    }
    match meta.role {
        Role::Primary if epoch == meta.epoch => {
            HelloDecision::Reject(Refusal::TwoPrimaries { epoch })
        }
        Role::Primary => HelloDecision::Accept {
            epoch,
            demoted: true,
        },
        Role::Secondary => HelloDecision::Accept {
            epoch,
            demoted: false,
        },
    }
}

/// What a primary must do after a secondary accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncPlan {
    /// The secondary has everything up to `from - 1`: resend buffered frames from `from`.
    Replay { from: GroupSeq },
    /// Compare these regions by checksum and copy the ones that differ.
    Regions(BTreeSet<u32>),
    /// Compare every region (the copies diverged, or the secondary is incomplete).
    Full,
}

/// What the primary knows about itself when planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryView<'a> {
    pub meta: &'a ReplicaMeta,
    /// Regions that may hold writes the peer lacks: activity log ∪ dirty bitmap.
    pub changed: &'a BTreeSet<u32>,
    /// Oldest sequence number still in the resend buffer.
    pub resend_from: GroupSeq,
}

pub fn plan_resync(p: &PrimaryView<'_>, reply: &HelloReply) -> ResyncPlan {
    if !reply.consistent {
        return ResyncPlan::Full;
    }
    let own: BTreeSet<u32> = reply
        .own_regions
        .iter()
        .flat_map(|(_, r)| r.iter().copied())
        .collect();
    let with_own = || -> BTreeSet<u32> { p.changed.union(&own).copied().collect() };
    if reply.generation == p.meta.generation {
        // Same data history: the buffer closes the gap if it reaches back far enough.
        // Not while this primary still holds the peer outdated: a resync that the peer
        // finished but whose end this primary never saw confirmed (the link broke
        // first) left the bitmap dirty and the group degraded, and only a resync's end
        // clears them (a compare of the dirty regions, which copies nothing if the
        // peer has them).
        if own.is_empty() && !p.meta.peer_outdated && reply.last_seq.next() >= p.resend_from {
            return ResyncPlan::Replay {
                from: reply.last_seq.next(),
            };
        }
        return ResyncPlan::Regions(with_own());
    }
    // The secondary is behind an older generation of ours: the bitmap covers the gap
    // only if tracking started at (or before) that generation.
    let gen_pos = p.meta.history.iter().position(|g| *g == reply.generation);
    let tracked_pos = p.meta.tracked_since.as_ref().and_then(|t| {
        p.meta
            .history
            .iter()
            .position(|g| g == t)
            .or((*t == p.meta.generation).then_some(p.meta.history.len()))
    });
    match (gen_pos, tracked_pos) {
        (Some(g), Some(t)) if t <= g + 1 => ResyncPlan::Regions(with_own()),
        _ => ResyncPlan::Full,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error(
        "epoch {given} is not above this replica's epoch {current}; promotions need a newly committed epoch"
    )]
    StaleEpoch { given: Epoch, current: Epoch },
    #[error(
        "this replica is not consistent (never synced, or a resync was interrupted); it cannot become primary"
    )]
    Inconsistent,
}

/// Become primary at `epoch` (committed by the orchestrator as the volume's epoch + 1).
/// The peer is treated as outdated from here on: every write is tracked in the bitmap
/// until the peer is resynced.
pub fn promote(meta: &ReplicaMeta, epoch: Epoch) -> Result<ReplicaMeta, RoleError> {
    if epoch <= meta.epoch {
        return Err(RoleError::StaleEpoch {
            given: epoch,
            current: meta.epoch,
        });
    }
    if !meta.consistent {
        return Err(RoleError::Inconsistent);
    }
    let mut m = meta.clone();
    m.role = Role::Primary;
    m.epoch = epoch;
    m.bump_generation();
    m.peer_outdated = true;
    m.tracked_since = Some(m.generation.clone());
    Ok(m)
}

/// A primary starts a run (process start, after a crash or not). Its resend buffer is
/// gone and its sequence numbers start over, so the peer cannot be caught up by replay:
/// a new generation forces a region resync. The caller must first have folded the
/// activity log into the dirty bitmap (durably): the log covers every write the peer
/// may lack, so from here on the bitmap does, since the current generation (or since
/// an earlier one, when tracking was already in force).
pub fn start_run(meta: &ReplicaMeta) -> ReplicaMeta {
    let mut m = meta.clone();
    if m.tracked_since.is_none() {
        m.tracked_since = Some(m.generation.clone());
    }
    m.bump_generation();
    m
}

/// The orchestrator committed the peer outdated: continue alone in a new generation,
/// recording every write in the bitmap (the caller folds the writes the peer has not
/// confirmed into it before acknowledging them).
pub fn degrade(meta: &ReplicaMeta) -> ReplicaMeta {
    let mut m = meta.clone();
    m.bump_generation();
    m.peer_outdated = true;
    if m.tracked_since.is_none() {
        m.tracked_since = Some(m.generation.clone());
    }
    m
}

/// The peer holds a complete copy again (a resync finished): tracking ends.
pub fn resynced(meta: &ReplicaMeta) -> ReplicaMeta {
    let mut m = meta.clone();
    m.peer_outdated = false;
    m.tracked_since = None;
    m
}

/// Become secondary at `epoch` (at least the current one).
pub fn demote(meta: &ReplicaMeta, epoch: Epoch) -> Result<ReplicaMeta, RoleError> {
    if epoch < meta.epoch {
        return Err(RoleError::StaleEpoch {
            given: epoch,
            current: meta.epoch,
        });
    }
    let mut m = meta.clone();
    m.role = Role::Secondary;
    m.epoch = epoch;
    m.peer_outdated = false;
    m.tracked_since = None;
    Ok(m)
}

/// Replication mode of a consistency group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Acknowledge a write once it is local and the peer has it.
    Sync,
    /// Acknowledge locally; ship in order; the peer may lag within bounds.
    Async,
}

/// May a write with sequence number `seq` be acknowledged to the guest?
pub fn may_ack(
    mode: Mode,
    local_done: bool,
    peer_acked_upto: GroupSeq,
    seq: GroupSeq,
    peer_outdated: bool,
) -> bool {
    local_done
        && match mode {
            Mode::Async => true,
            Mode::Sync => peer_outdated || peer_acked_upto >= seq,
        }
}

#[cfg(test)]
mod tests;
