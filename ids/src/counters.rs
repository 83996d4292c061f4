//! The protocol's counters and ids (DESIGN §4, §5): what a takeover, a replicated
//! write, a data history, an operation and an agent command are numbered by.
//!
//! Each is its own type so that a sequence number can never be passed as an epoch, or a
//! command id as an operation. The arithmetic each allows is the one its protocol uses:
//! an epoch only goes to the next one, a sequence number only advances.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The takeover counter of a volume or consistency group: bumped by every promotion,
/// committed in Raft before the new primary starts. A replica refuses frames of a lower
/// epoch and persists the highest it has seen, so an epoch only ever grows (DESIGN §4).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch the next promotion uses.
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The position of a write in a consistency group's replication stream: the primary
/// numbers every write (and barrier) it sends, the secondary applies them in order and
/// acknowledges up to one. 0 is "nothing yet"; the first write is 1.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct GroupSeq(pub u64);

impl GroupSeq {
    /// The sequence number after this one.
    pub fn next(self) -> GroupSeq {
        GroupSeq(self.0.saturating_add(1))
    }

    /// The sequence number before this one (0 stays 0: nothing comes before nothing).
    pub fn prev(self) -> GroupSeq {
        GroupSeq(self.0.saturating_sub(1))
    }
}

impl fmt::Display for GroupSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The id of one history of a replica's data: a new generation starts whenever two
/// copies may begin to differ (a promotion, a primary continuing without its peer).
/// Comparing generation histories tells "behind" (a delta resync) from "diverged" (a
/// full compare). Unique across sites; compared only for equality.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(pub String);

impl Generation {
    pub fn new(s: impl Into<String>) -> Generation {
        Generation(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An operation (failover, switchover, failback, drill) of the cluster: numbered from 1
/// in the order they were begun. Shown as `op-N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op-{}", self.0)
    }
}

/// A command queued for a host's agent: numbered from 1 across the cluster, in the order
/// they were committed. An agent runs each at most once (it journals the ids it ran).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct CommandId(pub u64);

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The persisted and JSON forms are the bare values: records written when these were
    /// plain numbers and strings read the same.
    #[test]
    fn serialized_forms_are_the_bare_values() {
        assert_eq!(serde_json::to_string(&Epoch(7)).unwrap(), "7");
        assert_eq!(serde_json::to_string(&GroupSeq(812)).unwrap(), "812");
        assert_eq!(serde_json::to_string(&OpId(3)).unwrap(), "3");
        assert_eq!(serde_json::to_string(&CommandId(44)).unwrap(), "44");
        assert_eq!(
            serde_json::to_string(&Generation::new("g-1")).unwrap(),
            "\"g-1\""
        );
        assert_eq!(serde_json::from_str::<Epoch>("9").unwrap(), Epoch(9));
    }

    #[test]
    fn counters_only_move_the_way_their_protocol_does() {
        assert_eq!(Epoch(1).next(), Epoch(2));
        assert_eq!(Epoch(u64::MAX).next(), Epoch(u64::MAX));
        assert_eq!(GroupSeq(0).prev(), GroupSeq(0));
        assert_eq!(GroupSeq(5).next().prev(), GroupSeq(5));
        assert_eq!(OpId(7).to_string(), "op-7");
    }
}
