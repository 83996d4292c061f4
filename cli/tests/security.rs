//! Mutual TLS and roles, end to end: three orchestrator processes with TLS on, the
//! CLI as different people. Who is refused (no certificate, another CA's, an auditor
//! failing over, an operator changing the topology) and that every refusal is in the
//! audit log, with who tried.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn tls_files(certs: &Path, name: &str) -> security::TlsFiles {
    security::TlsFiles {
        ca: certs.join("ca.crt"),
        cert: certs.join(format!("nodes/{name}.crt")),
        key: certs.join(format!("nodes/{name}.key")),
    }
}

/// `metrodr ARGS` against the cluster with `--certs certs --as who` (certs None:
/// no certificate at all).
fn as_who(cluster: &str, certs: Option<&Path>, who: &str, args: &[&str]) -> std::process::Output {
    let mut a = vec!["--cluster", cluster];
    let c;
    if let Some(dir) = certs {
        c = dir.display().to_string();
        a.extend(["--certs", c.as_str(), "--as", who]);
    }
    a.extend(args);
    metrodr(&a)
}

fn audit_entries(cluster: &str, certs: &Path) -> Vec<serde_json::Value> {
    let o = as_who(
        cluster,
        Some(certs),
        "admin",
        &["audit", "list", "--limit", "10000", "--output", "json"],
    );
    assert!(o.status.success(), "audit list: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .or_else(|| v["entries"].as_array())
        .cloned()
        .unwrap_or_default()
}

/// Wait until the audit log has a `security.refused` entry by `actor` whose detail
/// contains `says`.
fn wait_refusal(cluster: &str, certs: &Path, actor: &str, says: &str) -> serde_json::Value {
    let what = format!("a security.refused entry by {actor:?} saying {says:?}");
    let every = Duration::from_millis(300);
    let found = lab::wait::wait_blocking_every(every, Duration::from_secs(20), &what, || {
        audit_entries(cluster, certs).into_iter().find(|e| {
            e["action"] == "security.refused"
                && e["actor"].as_str().unwrap_or_default() == actor
                && e["detail"].as_str().unwrap_or_default().contains(says)
        })
    });
    found.unwrap_or_else(|e| {
        panic!(
            "{e}; the log holds:\n{}",
            audit_entries(cluster, certs)
                .iter()
                .map(|e| format!("  {} {} {}", e["actor"], e["action"], e["detail"]))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

#[test]
fn with_tls_on_only_the_right_people_get_in_and_every_refusal_is_audited() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let topo = minimal_topology();
    let c = certs.display().to_string();
    let o = metrodr(&[
        "certs",
        "init",
        "--dir",
        &c,
        "--topology",
        topo.to_str().unwrap(),
        "--operator",
        "admin:admin",
        "--operator",
        "olga:operator",
        "--operator",
        "carol:auditor",
    ]);
    assert!(o.status.success(), "certs init: {}", text(&o));
    // The keys are for their owners only.
    use std::os::unix::fs::PermissionsExt;
    for key in [
        "ca.key",
        "nodes/orch-a.key",
        "agents/a-h1.key",
        "operators/carol.key",
    ] {
        let mode = std::fs::metadata(certs.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    // init refuses to replace the CA (every certificate would stop working).
    let o = metrodr(&["certs", "init", "--dir", &c]);
    assert!(
        !o.status.success() && text(&o).contains("already holds a cluster CA"),
        "{}",
        text(&o)
    );

    let nodes: Vec<NodeProc> = ["orch-a", "orch-b", "orch-w"]
        .iter()
        .map(|n| {
            start_node_with(
                dir.path(),
                n,
                "127.0.0.1:0",
                None,
                Some(tls_files(&certs, n)),
            )
        })
        .collect();
    let cluster = nodes
        .iter()
        .map(|n| n.grpc.clone())
        .collect::<Vec<_>>()
        .join(",");
    let mut init = vec![
        "--certs".to_string(),
        c.clone(),
        "cluster".into(),
        "init".into(),
        "--topology".into(),
        topo.display().to_string(),
    ];
    for n in &nodes {
        init.push("--addr".into());
        init.push(format!("{}={}", n.name, n.grpc));
    }
    let o = metrodr(&init.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "cluster init over TLS: {}", text(&o));

    // 1. No certificate: the handshake fails; the node logs and audits it.
    let o = as_who(&cluster, None, "", &["status"]);
    assert!(
        !o.status.success(),
        "a client without a certificate was served: {}",
        text(&o)
    );
    wait_refusal(&cluster, &certs, "unauthenticated", "does not speak TLS");

    // 2. Another CA's certificate, by a client that trusts our CA (public) and so
    //    gets as far as presenting it: refused at the handshake, audited.
    let theirs = dir.path().join("theirs");
    let t = theirs.display().to_string();
    assert!(
        metrodr(&["certs", "init", "--dir", &t, "--operator", "mallory:admin"])
            .status
            .success()
    );
    std::fs::copy(certs.join("ca.crt"), theirs.join("ca.crt")).unwrap();
    let o = as_who(&cluster, Some(&theirs), "mallory", &["status"]);
    assert!(
        !o.status.success(),
        "another CA's certificate was accepted: {}",
        text(&o)
    );
    wait_refusal(
        &cluster,
        &certs,
        "unauthenticated",
        "not signed by this cluster's CA",
    );

    // 3. The auditor reads, but may not fail over: refused, told why, audited.
    let o = as_who(&cluster, Some(&certs), "carol", &["status"]);
    assert!(
        o.status.success(),
        "the auditor cannot read the status: {}",
        text(&o)
    );
    let o = as_who(
        &cluster,
        Some(&certs),
        "carol",
        &["app", "failover", "web", "--to", "b"],
    );
    assert!(
        !o.status.success(),
        "an auditor failed over an app: {}",
        text(&o)
    );
    assert!(
        text(&o).contains("carol (auditor) may not start an operation"),
        "{}",
        text(&o)
    );
    wait_refusal(&cluster, &certs, "carol (auditor)", "read-only");
    // Nothing moved.
    let o = as_who(
        &cluster,
        Some(&certs),
        "carol",
        &["app", "list", "--output", "json"],
    );
    assert!(
        text(&o).contains("\"active_site\": \"a\"") || text(&o).contains("\"active_site\":\"a\""),
        "{}",
        text(&o)
    );

    // 4. An operator operates (recorded as the certificate says, whatever the request
    //    claims) but may not change the topology.
    let o = as_who(
        &cluster,
        Some(&certs),
        "olga",
        &["--actor", "mallory", "audit", "note", "maintenance window"],
    );
    assert!(
        o.status.success(),
        "the operator cannot write a note: {}",
        text(&o)
    );
    let entries = audit_entries(&cluster, &certs);
    let note = entries
        .iter()
        .find(|e| e["action"] == "note")
        .expect("the note");
    assert_eq!(note["actor"], "olga (operator)");
    let o = as_who(
        &cluster,
        Some(&certs),
        "olga",
        &["topology", "apply", topo.to_str().unwrap()],
    );
    assert!(
        !o.status.success(),
        "an operator applied a topology: {}",
        text(&o)
    );
    wait_refusal(&cluster, &certs, "olga (operator)", "only an admin");

    // 5. An agent's certificate speaks for its own host only, and is no operator's.
    let agent_tls =
        security::Tls::load(&security::CertDir::new(&certs).files(security::Role::Agent, "a-h1"))
            .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = security::grpc::endpoint(&nodes[0].grpc, Some(&agent_tls))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut agent = orchestrator::pb::agent_client::AgentClient::new(ch.clone());
        let e = agent
            .renew(orchestrator::pb::RenewRequest {
                host: "b-h1".into(),
                seq: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(
            e.message().contains("may not speak for host \"b-h1\""),
            "{e:?}"
        );
        let mut op = orchestrator::pb::operator_client::OperatorClient::new(ch);
        let e = op
            .status(orchestrator::pb::StatusRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(
            e.message()
                .contains("an agent certificate is only good for"),
            "{e:?}"
        );
    });
    wait_refusal(&cluster, &certs, "a-h1 (agent)", "may not speak for host");

    // The chain still verifies with the refusals in it.
    let o = as_who(&cluster, Some(&certs), "carol", &["audit", "verify"]);
    assert!(o.status.success(), "audit verify: {}", text(&o));
    drop(nodes);
}
