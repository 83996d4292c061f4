//! # chaos — the lab and fault injection
//!
//! Sites as network namespaces, a userspace link proxy for delay/loss/bandwidth, fault
//! schedules from a seed, and invariant checkers (DESIGN §8).
//!
//! Status: not built yet (issue "Lab and chaos"). Empty placeholder for the workspace
//! layout.
