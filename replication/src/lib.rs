//! # replication — the block replication engine
//!
//! NBD front end for QEMU, the inter-site stream per consistency group, sync and async
//! modes, epochs, dirty bitmaps and resync (DESIGN §5).
//!
//! Status: not built yet (issue "Block replication engine"). Empty placeholder for the
//! workspace layout.
