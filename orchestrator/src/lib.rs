//! # orchestrator — the Raft-replicated brain of metrodr
//!
//! One Raft node (openraft + RocksDB) per site; the replicated state machine records the
//! topology, where every app runs, every volume replica's role and epoch, site and host
//! state, operations (the saga log) and the hash-chained audit log (DESIGN §3). It also
//! holds the lease table, the failure detector and the failover planner and executor.
//!
//! Status: not built yet (issue "Raft control plane"). This crate is an empty placeholder
//! so the workspace layout matches DESIGN §2; nothing depends on it yet.
