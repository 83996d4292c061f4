//! # ids — the one home of metrodr's identities and units
//!
//! Every crate names things with these types and never with raw integers or strings:
//! - [`names`]: the things of the model (sites, hosts, apps, VMs, volumes, nodes), as
//!   checked strings, and sizes ([`ByteSize`]);
//! - [`counters`]: the protocol's monotonic counters and ids: a volume's or group's
//!   [`Epoch`], a replication stream's [`GroupSeq`], a replica's data [`Generation`],
//!   an operation's [`OpId`], an agent command's [`CommandId`].
//!
//! Their serialized forms (serde) are the bare value, so that persisted records and
//! JSON outputs read the same as when these were plain numbers and strings.
//!
//! Never: depend on another metrodr crate (everyone depends on this one), or do I/O.

pub mod counters;
pub mod names;

pub use counters::{CommandId, Epoch, Generation, GroupSeq, OpId};
pub use names::{
    AppId, ByteSize, GIB, HostId, ID_MAX_LEN, KIB, MIB, NodeId, SiteId, TIB, VmId, VolumeId,
    check_id, human_size,
};
