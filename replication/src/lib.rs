//! # replication — the block replication engine
//!
//! NBD front end for QEMU, the inter-site stream per consistency group, sync and async
//! modes, epochs, dirty bitmaps and resync (DESIGN §5).
//!
//! - [`backend`]: the contract between the NBD server and what stores the blocks.
//! - [`frame`]: the inter-site stream's wire format (versioned, checksummed frames).
//! - [`nbd`]: the NBD server QEMU reaches a volume through (and a small client).
//! - [`meta`]: a replica's durable metadata, dirty bitmap and activity log.
//! - [`replica`]: the pure decisions: accepting a primary, resync plans, roles, acks.
//! - [`volume`]: a replica's data file, change tracking and range lock.
//! - [`primary`], [`link`]: the primary side of a group (NBD backends, the stream).
//! - [`secondary`]: the secondary side (the replica endpoint).
//! - [`service`]: a group being served (files + NBD server or stream endpoint).

pub mod backend;
pub mod frame;
pub mod link;
pub mod meta;
pub mod nbd;
pub mod primary;
pub mod replica;
pub mod secondary;
pub mod service;
pub mod snapshot;
pub mod volume;

/// A replication connection's halves, plain TCP or TLS alike.
pub type ReadHalf = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
pub type WriteHalf = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
