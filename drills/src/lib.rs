//! # drills — drills, measurements and signed reports
//!
//! Test failovers that touch nothing, switchover and site-loss drills, RTO/RPO
//! measurements and reports auditors can verify offline (DESIGN §7).
//!
//! Status: not built yet (issue "Drills and auditor reports"). Empty placeholder for the
//! workspace layout.
