//! The audit log: every operator action and automatic decision, hash-chained.
//!
//! Entry n carries the SHA-256 digest of entry n-1 and its own digest over a canonical
//! encoding of its fields plus that previous digest. Editing, removing or reordering
//! any entry breaks the chain from there on, which [`verify`] reports with the first
//! bad sequence number. Reports later embed the head digest of the slice they cover.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AuditEvent;

/// Digest of "nothing before the first entry".
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1-based, without gaps.
    pub seq: u64,
    /// Proposer's wall clock when the action was proposed (ms since the Unix epoch).
    pub at_ms: u64,
    /// Who: an operator identity, or `metrodr` for automatic decisions.
    pub actor: String,
    /// What, as a stable dotted name (`topology.apply`, `site.state`, …): the event's
    /// [`AuditEvent::action`].
    pub action: String,
    /// Details for humans: the event's `Display`.
    pub detail: String,
    /// What happened, typed: what readers decide on.
    pub event: AuditEvent,
    /// Digest of the previous entry (hex), [`GENESIS`] for the first.
    pub prev: String,
    /// Digest of this entry (hex).
    pub digest: String,
}

/// The digest an entry must carry, computed from its fields and `prev`: the typed event
/// (its canonical JSON) and the text both, so changing either breaks the chain.
pub fn digest_of(
    seq: u64,
    at_ms: u64,
    actor: &str,
    action: &str,
    detail: &str,
    event: &AuditEvent,
    prev: &str,
) -> String {
    let mut h = Sha256::new();
    // Length-prefixed fields: no two different entries encode to the same bytes.
    h.update(b"metrodr-audit-v2");
    h.update(seq.to_be_bytes());
    h.update(at_ms.to_be_bytes());
    // The event's fields are structs, enums and vectors (no maps): its JSON is canonical.
    let event = serde_json::to_string(event).unwrap_or_default();
    for field in [actor, action, detail, &event, prev] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

impl AuditEntry {
    pub fn new(seq: u64, at_ms: u64, actor: &str, event: AuditEvent, prev: &str) -> Self {
        let action = event.action().to_string();
        let detail = event.to_string();
        AuditEntry {
            seq,
            at_ms,
            actor: actor.to_string(),
            digest: digest_of(seq, at_ms, actor, &action, &detail, &event, prev),
            action,
            detail,
            event,
            prev: prev.to_string(),
        }
    }

    pub fn expected_digest(&self) -> String {
        digest_of(
            self.seq,
            self.at_ms,
            &self.actor,
            &self.action,
            &self.detail,
            &self.event,
            &self.prev,
        )
    }
}

/// Result of checking a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub entries: u64,
    /// Digest of the last entry (the chain's head).
    pub head: String,
    /// First broken entry and why, if any.
    pub broken: Option<(u64, String)>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

/// Check a chain of entries in order.
pub fn verify<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> Verification {
    let mut prev = GENESIS.to_string();
    let mut count = 0;
    for e in entries {
        count += 1;
        let why = if e.seq != count {
            Some(format!(
                "sequence number {} where {count} was expected (an entry is missing or out of order)",
                e.seq
            ))
        } else if e.prev != prev {
            Some(format!(
                "it links to {} but the previous entry's digest is {prev}",
                short(&e.prev)
            ))
        } else if e.expected_digest() != e.digest {
            Some("its content does not match its digest (the entry was modified)".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            return Verification {
                entries: count,
                head: prev,
                broken: Some((count, why)),
            };
        }
        prev = e.digest.clone();
    }
    Verification {
        entries: count,
        head: prev,
        broken: None,
    }
}

fn short(d: &str) -> &str {
    d.get(..12).unwrap_or(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|i| {
                let note = AuditEvent::Note {
                    text: format!("entry {i}"),
                };
                let e = AuditEntry::new(i, 1000 + i, "alice", note, &prev);
                prev = e.digest.clone();
                e
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let c = chain(5);
        let v = verify(&c);
        assert!(v.ok());
        assert_eq!(v.entries, 5);
        assert_eq!(v.head, c[4].digest);
        assert_eq!(verify(&[]).head, GENESIS);
    }

    #[test]
    fn any_edit_removal_or_reorder_is_detected_at_its_position() {
        let mut c = chain(5);
        c[2].detail.push('!');
        assert_eq!(verify(&c).broken.map(|b| b.0), Some(3));

        // The typed event is covered too: a reader that decides on it cannot be fooled.
        let mut c = chain(5);
        c[2].event = AuditEvent::Note {
            text: "something else".into(),
        };
        assert_eq!(verify(&c).broken.map(|b| b.0), Some(3));

        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify(&c).broken.map(|b| b.0), Some(2));

        let mut c = chain(5);
        c.swap(3, 4);
        assert_eq!(verify(&c).broken.map(|b| b.0), Some(4));

        // Re-hashing an edited entry does not help: the next one no longer links to it.
        let mut c = chain(5);
        c[1].actor = "mallory".into();
        c[1].digest = c[1].expected_digest();
        assert_eq!(verify(&c).broken.map(|b| b.0), Some(3));
    }

    #[test]
    fn field_boundaries_matter() {
        let e = AuditEvent::Note {
            text: String::new(),
        };
        assert_ne!(
            digest_of(1, 1, "ab", "c", "", &e, GENESIS),
            digest_of(1, 1, "a", "bc", "", &e, GENESIS)
        );
    }
}
