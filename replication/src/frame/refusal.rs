//! Why a secondary refuses a primary or its stream: the payload of a
//! [`Frame::Refused`](super::Frame::Refused) frame, after which the secondary closes the
//! connection.
//!
//! A closed set of reasons, each carrying the values it is about, so that the primary
//! decides on the reason (a newer primary exists: fence) and people read its
//! [`Display`](std::fmt::Display). On the wire: JSON tagged by `reason`
//! (`{"reason":"stale-epoch","epoch":3,"seen":5}`). A reason this side does not know, or
//! a malformed one, fails to decode: the frame is malformed and the connection closes.
//!
//! Never: add, remove or change a reason without bumping [`super::VERSION`], or decide
//! anything on the rendered text.

use ids::Epoch;
use serde::{Deserialize, Serialize};

use super::VolumeInfo;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Refusal {
    /// The primary's epoch (of its hello or of a frame) is below the highest this
    /// replica has seen: a newer primary exists, this one is stale.
    #[error("stale epoch {epoch}: this replica has seen epoch {seen}; a newer primary exists")]
    StaleEpoch { epoch: Epoch, seen: Epoch },
    /// This replica is itself the primary at the epoch the other primary offers.
    #[error(
        "this replica is itself primary at epoch {epoch}; two primaries in one epoch are refused"
    )]
    TwoPrimaries { epoch: Epoch },
    /// The primary's volumes (ids and sizes, in stream order) are not the ones this
    /// replica holds.
    #[error(
        "the primary offers [{}] but this replica holds [{}]",
        show(offered),
        show(held)
    )]
    VolumesDiffer {
        offered: Vec<VolumeInfo>,
        held: Vec<VolumeInfo>,
    },
    /// The primary speaks another version of the frame format.
    #[error(
        "the primary speaks replication frame format {theirs}, this replica speaks {ours}: run the same metrodr version on both sites"
    )]
    Version { theirs: u8, ours: u8 },
    /// The connection did not open with a hello.
    #[error("expected a hello, got a {got} frame")]
    ExpectedHello { got: String },
    /// A frame that is not part of the protocol at this point.
    #[error("unexpected {got} frame")]
    UnexpectedFrame { got: String },
    /// A frame that could not be decoded (corrupted, too large, malformed).
    #[error("bad frame: {why}")]
    BadFrame { why: String },
    /// A frame for a volume index the group does not have.
    #[error("no volume {volume} in this group")]
    NoSuchVolume { volume: u16 },
    /// A write or zero frame beyond the end of its volume.
    #[error("write of {len} bytes at {offset} is outside volume {volume} ({size} bytes)")]
    OutOfRange {
        volume: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// A checksum request for another region size or for regions the volume does not
    /// have (or too many at once).
    #[error("checksum request for regions volume {volume} does not have")]
    BadSumsRequest { volume: u16 },
}

fn show(v: &[VolumeInfo]) -> String {
    v.iter()
        .map(|v| format!("{} ({} bytes)", v.id, v.size))
        .collect::<Vec<_>>()
        .join(", ")
}
