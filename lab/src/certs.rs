//! The lab's certificates: a cluster CA in `DIR/certs` and a certificate for every
//! orchestrator node, every host's agent and the admin, so a lab runs with mutual TLS
//! like production; and the admin's dialer, with which the lab calls its cluster.
//!
//! Never: write a key outside the lab's directory.

use std::path::Path;
use std::sync::Arc;

use orchestrator::client::Dialer;
use security::{CertDir, Principal, Role, Validity};
use topology::Topology;

use crate::error::{Context, LabError};

/// How long a lab's certificates are valid, in days (the CA: ten times as long).
const DAYS: u32 = 30;

/// Everyone of `topo` (its orchestrator nodes and hosts) plus `operators`.
pub fn principals(
    topo: Option<&Topology>,
    operators: &[Principal],
) -> Result<Vec<Principal>, LabError> {
    let mut who = Vec::new();
    if let Some(t) = topo {
        for o in &t.orchestrators {
            who.push(principal(Role::Node, o.id.as_str())?);
        }
        for h in &t.hosts {
            who.push(principal(Role::Agent, h.id.as_str())?);
        }
    }
    who.extend(operators.iter().cloned());
    Ok(who)
}

fn principal(role: Role, name: &str) -> Result<Principal, LabError> {
    Principal::new(role, name)
        .map_err(|why| LabError::refused(format!("no certificate for {name:?}: {why}")))
}

/// A CA in `dir` (kept if there is one: a lab restarted in the same directory) and a
/// certificate for each of `who`, valid `days`.
pub fn ensure(dir: &Path, who: &[Principal], days: u32) -> Result<CertDir, LabError> {
    let d = CertDir::new(dir);
    if !d.ca_cert().exists() {
        d.init(Validity::days(days.saturating_mul(10)))
            .with_ctx(|| format!("creating the cluster CA in {}", dir.display()))?;
    }
    for p in who {
        d.issue(p, Validity::days(days))
            .with_ctx(|| format!("issuing the certificate of {p}"))?;
    }
    Ok(d)
}

/// The certificates of `topo`'s cluster plus an admin, in `dir/certs`, and the admin's
/// dialer.
pub fn cluster_certs(dir: &Path, topo: &Topology) -> Result<(CertDir, Dialer), LabError> {
    let admin = principal(Role::Admin, "admin")?;
    let who = principals(Some(topo), &[admin])?;
    let certs = ensure(&dir.join("certs"), &who, DAYS)?;
    let tls = security::Tls::load(&certs.files(Role::Admin, "admin"))
        .ctx("loading the admin's certificate")?;
    Ok((certs, Dialer::new(Some(Arc::new(tls)))))
}
