//! Who a certificate speaks for: a role and a name, carried in the certificate as one
//! URI subject alternative name, `metrodr://ROLE/NAME`.
//!
//! The role is part of what the cluster CA signed, so a client cannot claim another
//! one; a certificate without exactly one such name is no metrodr identity.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The scheme of the identity URI in every certificate this project issues.
pub const SCHEME: &str = "metrodr://";

/// DNS name every orchestrator node's certificate carries: clients verify that the
/// server they reached holds a node certificate from the cluster CA.
pub const NODE_SERVER_NAME: &str = "orchestrator.metrodr";
/// DNS name every agent certificate carries: the server side of a replication link.
pub const AGENT_SERVER_NAME: &str = "agent.metrodr";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An orchestrator node (Raft peer).
    Node,
    /// An agent on a hypervisor host (also both ends of replication links).
    Agent,
    /// An operator who may also change the cluster itself (membership, topology).
    Admin,
    /// An operator who runs failovers, switchovers, drills.
    Operator,
    /// Read-only: status, reports, the audit log.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Node,
        Role::Agent,
        Role::Admin,
        Role::Operator,
        Role::Auditor,
    ];
    /// The roles a person can hold (as opposed to a process).
    pub const PEOPLE: [Role; 3] = [Role::Admin, Role::Operator, Role::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role {s:?}: the roles are node, agent, admin, operator and auditor"
                )
            })
    }

    /// The folder of a certificate directory holding this role's files.
    pub fn folder(self) -> &'static str {
        match self {
            Role::Node => "nodes",
            Role::Agent => "agents",
            Role::Admin | Role::Operator | Role::Auditor => "operators",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    pub role: Role,
    pub name: String,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.role)
    }
}

/// Names follow the topology's id rules (lowercase letters, digits, `-`, `_`, `.`, `@`;
/// at most 63 bytes), so they can be file names and audit actors as they are.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.@".contains(c);
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{name:?} must be 1 to 63 bytes long"));
    }
    if !name.chars().all(ok_char) || name.starts_with('.') {
        return Err(format!(
            "{name:?} may hold only lowercase letters, digits, '-', '_', '.' and '@' (and not start with '.')"
        ));
    }
    Ok(())
}

impl Principal {
    pub fn new(role: Role, name: &str) -> Result<Principal, String> {
        check_name(name)?;
        Ok(Principal {
            role,
            name: name.to_string(),
        })
    }

    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}", self.role, self.name)
    }

    /// Read an identity URI back.
    pub fn from_uri(uri: &str) -> Result<Principal, String> {
        let rest = uri.strip_prefix(SCHEME).ok_or_else(|| {
            format!("{uri:?} is not a metrodr identity (it must start with {SCHEME})")
        })?;
        let (role, name) = rest
            .split_once('/')
            .ok_or_else(|| format!("{uri:?} names no role/name"))?;
        Principal::new(Role::parse(role)?, name)
    }

    /// The identity in a DER certificate: its one `metrodr://` URI name.
    pub fn from_cert_der(der: &[u8]) -> Result<Principal, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("its subject alternative names do not parse: {e}"))?
            .ok_or("the certificate has no subject alternative names, so no metrodr identity")?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) if u.starts_with(SCHEME) => Some(*u),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [one] => Principal::from_uri(one),
            [] => Err(format!("the certificate carries no {SCHEME} identity")),
            _ => Err(format!(
                "the certificate carries {} identities; one is allowed",
                uris.len()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uri() {
        for role in Role::ALL {
            let p = Principal::new(role, "orch-north").unwrap();
            assert_eq!(Principal::from_uri(&p.uri()).unwrap(), p);
            assert_eq!(Role::parse(role.as_str()).unwrap(), role);
        }
    }

    #[test]
    fn malformed_identities_say_what_is_wrong() {
        for (uri, says) in [
            ("https://admin/alice", "not a metrodr identity"),
            ("metrodr://admin", "no role/name"),
            ("metrodr://root/alice", "unknown role"),
            ("metrodr://admin/", "1 to 63 bytes"),
            ("metrodr://admin/Alice", "lowercase"),
            ("metrodr://admin/a/b", "lowercase"),
            ("metrodr://admin/..", "not start with"),
        ] {
            let e = Principal::from_uri(uri).unwrap_err();
            assert!(e.contains(says), "{uri}: {e}");
        }
    }
}
