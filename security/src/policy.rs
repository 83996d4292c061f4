//! What each role may do. Pure: the servers classify every call into an [`Access`] and
//! ask [`authorize`]; the table below is the whole policy.

use crate::identity::{Principal, Role};

/// The kinds of calls the cluster serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Status, listings, reports, the audit log, dry-run plans.
    Read,
    /// Failovers, switchovers, failbacks, declared site loss and recovery, drills,
    /// approvals, VM actions, notes.
    Operate,
    /// The cluster itself: initialization, membership, the topology.
    Administer,
    /// Raft between orchestrator nodes (and writes a follower forwards to its leader).
    Peer,
    /// An agent's leases, command polls and reports.
    Host,
    /// A primary's replication stream into a secondary.
    Replicate,
}

impl Access {
    pub const ALL: [Access; 6] = [
        Access::Read,
        Access::Operate,
        Access::Administer,
        Access::Peer,
        Access::Host,
        Access::Replicate,
    ];
}

/// The policy table.
pub fn allows(role: Role, access: Access) -> bool {
    use Access::*;
    match role {
        Role::Admin => matches!(access, Read | Operate | Administer),
        Role::Operator => matches!(access, Read | Operate),
        Role::Auditor => matches!(access, Read),
        Role::Node => matches!(access, Peer),
        Role::Agent => matches!(access, Host | Replicate),
    }
}

/// A refused call, with a message that says who, what, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{principal} may not {what}: {why}")]
pub struct Denied {
    pub principal: Principal,
    pub what: String,
    pub why: String,
}

pub fn authorize(p: &Principal, access: Access, what: &str) -> Result<(), Denied> {
    if allows(p.role, access) {
        return Ok(());
    }
    let why = match p.role {
        Role::Auditor => {
            "the auditor role is read-only (status, reports, the audit log); ask an operator or admin"
        }
        Role::Operator => "only an admin may change the cluster itself (membership, topology)",
        Role::Admin if matches!(access, Access::Peer | Access::Host | Access::Replicate) => {
            "that call is for cluster processes (nodes, agents), not operators"
        }
        Role::Node => "a node certificate is only good for Raft between nodes",
        Role::Agent => "an agent certificate is only good for an agent's own calls and replication",
        Role::Admin => "not allowed",
    };
    Err(Denied {
        principal: p.clone(),
        what: what.to_string(),
        why: why.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Access::*;

    /// The whole table, spelled out: a change to the policy must change this test.
    #[test]
    fn every_role_and_access_pair_is_as_designed() {
        let table: [(Role, &[Access]); 5] = [
            (Role::Admin, &[Read, Operate, Administer]),
            (Role::Operator, &[Read, Operate]),
            (Role::Auditor, &[Read]),
            (Role::Node, &[Peer]),
            (Role::Agent, &[Host, Replicate]),
        ];
        let expect = |role: Role, access: Access| {
            table
                .iter()
                .any(|(r, allowed)| *r == role && allowed.contains(&access))
        };
        let mut allowed = 0;
        for role in Role::ALL {
            for access in Access::ALL {
                assert_eq!(
                    allows(role, access),
                    expect(role, access),
                    "{role} {access:?}"
                );
                let p = Principal::new(role, "x").unwrap();
                let r = authorize(&p, access, "do it");
                assert_eq!(r.is_ok(), expect(role, access));
                if let Err(d) = r {
                    assert!(d.to_string().starts_with("x (") && d.to_string().contains("do it"));
                }
                allowed += usize::from(expect(role, access));
            }
        }
        assert_eq!(allowed, 9);
    }

    #[test]
    fn an_auditor_refused_a_failover_is_told_why() {
        let p = Principal::new(Role::Auditor, "carol").unwrap();
        let e = authorize(&p, Operate, "fail over db").unwrap_err();
        assert_eq!(
            e.to_string(),
            "carol (auditor) may not fail over db: the auditor role is read-only (status, reports, the audit log); ask an operator or admin"
        );
    }
}
