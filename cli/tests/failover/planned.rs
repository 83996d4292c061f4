//! Planned moves: a graceful switchover and the failback home, refusals with their
//! reasons, and tcp health gates that hold until the service answers.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn switchover_moves_an_app_gracefully_and_failback_brings_it_home() {
    let _g = serial();
    let lab = Lab::start().await;
    let rec = lab.json(&["app", "switchover", "db", "--to", "south"]);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let vol = lab.volume("db-data");
    assert_eq!(vol["epoch"], 2);
    assert_eq!(replica(&vol, "south")["role"], "primary");
    assert_eq!(
        replica(&vol, "north")["data"],
        "up-to-date",
        "a graceful switchover keeps the old primary promotable: {vol}"
    );
    let live = lab.live();
    assert_eq!(
        commands_for(&live, "shutdown", "db-1").await,
        1,
        "stopped gracefully"
    );
    assert_eq!(lab.app("db")["active_site"], "south");
    assert!(vm_running(&live, "db-1").await);

    let rec = lab.json(&["app", "failback", "db"]);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let vol = lab.volume("db-data");
    assert_eq!(vol["epoch"], 3);
    assert_eq!(replica(&vol, "north")["role"], "primary");
    assert_eq!(lab.app("db")["active_site"], "north");

    // Async volumes need a drain first, which is not built: refused, said why.
    let o = lab.run(&["app", "switchover", "archive", "--to", "south"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("asynchronously"), "{}", text(&o));
    // Dry run changes nothing.
    let plan = lab.json(&["app", "failover", "mail", "--to", "north", "--dry-run"]);
    assert_eq!(plan["waves"][0]["apps"][0]["app"], "mail", "{plan}");
    assert_eq!(lab.app("mail")["active_site"], "south");

    // Bad requests: a clear reason, exit 1, nothing changes but the audit log.
    let audit_before = audit(&live).await.len();
    for (args, says) in [
        (
            &["app", "failover", "nope", "--to", "south"][..],
            "no app \"nope\"",
        ),
        (
            &["app", "failover", "mail", "--to", "witness"][..],
            "witness",
        ),
        (
            &["app", "failover", "mail", "--to", "mars"][..],
            "no site \"mars\"",
        ),
        (&["site", "fail", "witness"][..], "witness"),
        (&["site", "recover", "mars"][..], "no site \"mars\""),
        (&["op", "show", "999"][..], "no operation op-999"),
        (&["op", "approve", "1"][..], "already finished"),
    ] {
        let o = lab.run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains(says),
            "{args:?} should say {says:?}: {}",
            text(&o)
        );
    }
    // Each refused change is in the audit log (who tried what, and why), and nothing
    // else is: `op show` is a read.
    let new: Vec<_> = audit(&live).await.into_iter().skip(audit_before).collect();
    assert_eq!(new.len(), 6, "one entry per refused change: {new:?}");
    assert!(
        new.iter().all(|e| e.action == "call.refused"),
        "refused requests change nothing else: {new:?}"
    );
    assert!(new[0].detail.contains("no app \"nope\""), "{:?}", new[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_probes_hold_the_health_gate_until_the_service_answers() {
    let _g = serial();
    // db's service answers (a listener this test holds); mail's port is closed.
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let probe = |port: u16, timeout: u32| {
        format!(
            "\n  [[app.probe]]\n  kind = \"tcp\"\n  port = {port}\n  address = \"127.0.0.1\"\n  timeout_s = {timeout}\n\n"
        )
    };
    let lab = Lab::start_with(|t| {
        let t = t.replacen(
            "[[app]]\nid = \"api\"",
            &format!("{}[[app]]\nid = \"api\"", probe(open_port, 10)),
            1,
        );
        format!("{t}{}", probe(closed_port, 2))
    })
    .await;

    let rec = lab.json(&["app", "switchover", "db", "--to", "south"]);
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let gate = rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["app"] == "db" && s["name"] == "health gate")
        .cloned()
        .unwrap_or_else(|| panic!("no health gate step: {rec}"));
    let said = gate["result"].as_str().unwrap_or_default();
    assert!(
        said.contains(&format!("tcp 127.0.0.1:{open_port} accepted a connection")),
        "{gate}"
    );

    // Nothing answers mail's port: the gate waits its 2 s, then fails the operation
    // and says what it tried.
    let started = Instant::now();
    let o = lab.run(&["app", "switchover", "mail", "--to", "north"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "tcp port {closed_port} did not accept a connection within 2 s"
        )),
        "{out}"
    );
    assert!(out.contains("refused"), "{out}");
    assert!(started.elapsed() >= Duration::from_secs(2), "{out}");
    drop(open);
}
