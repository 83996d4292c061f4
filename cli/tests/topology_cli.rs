//! The `metrodr topology` and `metrodr demo` commands, run as a user runs them: the real
//! binary, real files, exit codes and output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn metrodr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metrodr"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run metrodr")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example(name: &str) -> String {
    root().join("examples").join(name).display().to_string()
}

/// Standard output, and standard error after it when there is any (so a failed
/// assertion shows why the command failed).
fn stdout(o: &Output) -> String {
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.stderr.is_empty() && !o.status.success() {
        s.push_str("\n--- stderr ---\n");
        s.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    s
}

#[test]
fn validate_accepts_the_examples() {
    for name in ["city-egov.toml", "minimal.toml"] {
        let o = metrodr(&["topology", "validate", &example(name)]);
        assert!(o.status.success(), "{name}: {}", stdout(&o));
        assert!(stdout(&o).contains(": valid"), "{}", stdout(&o));
    }
}

#[test]
fn validate_rejects_a_broken_file_with_exit_1_and_the_line() {
    let file = root().join("topology/tests/corpus/dangling-dep.toml");
    let o = metrodr(&["topology", "validate", &file.display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("error[dangling-ref]"), "{out}");
    assert!(out.contains("dangling-dep.toml:"), "{out}");
    assert!(out.contains("did you mean `web`?"), "{out}");
    assert!(out.contains("invalid"), "{out}");
}

#[test]
fn validate_json_gives_machine_readable_diagnostics() {
    let file = root().join("topology/tests/corpus/many-errors.toml");
    let o = metrodr(&[
        "topology",
        "validate",
        "--output",
        "json",
        &file.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["valid"], false);
    let diags = v["diagnostics"].as_array().expect("diagnostics array");
    let errors: Vec<_> = diags.iter().filter(|d| d["severity"] == "error").collect();
    assert_eq!(v["errors"].as_u64(), Some(errors.len() as u64));
    assert!(errors.len() >= 5, "{diags:?}");
    for d in errors {
        assert!(d["line"].as_u64().is_some_and(|l| l > 0), "{d}");
        assert!(
            d["code"].is_string() && d["message"].is_string() && d["hint"].is_string(),
            "{d}"
        );
    }
}

#[test]
fn validate_reports_unreadable_input_clearly() {
    let o = metrodr(&["topology", "validate", "/nonexistent/topology.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("cannot read /nonexistent/topology.toml"),
        "{}",
        stdout(&o)
    );

    let dir = root().join("examples").display().to_string();
    let o = metrodr(&["topology", "validate", &dir]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("is a directory"), "{}", stdout(&o));
}

#[test]
fn validate_reads_standard_input() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_metrodr"))
        .args(["topology", "validate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let text = std::fs::read(example("minimal.toml")).expect("read example");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&text)
        .expect("write");
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success(), "{}", stdout(&o));
}

#[test]
fn plan_prints_placement_and_failover_capacity() {
    let o = metrodr(&["topology", "plan", &example("city-egov.toml")]);
    assert!(o.status.success());
    let out = stdout(&o);
    for needle in [
        "Initial placement (15 VMs on 8 hosts)",
        "Failover capacity: if `north` is lost, `south` runs everything — OK",
        "Failover capacity: if `south` is lost, `north` runs everything — OK",
        "RTO budget",
        "identity-db-1",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }

    let o = metrodr(&["topology", "plan", "-o", "json", &example("city-egov.toml")]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["ok"], true);
    assert_eq!(v["plan"]["placements"].as_array().map(Vec::len), Some(15));
    assert_eq!(v["plan"]["failover"].as_array().map(Vec::len), Some(2));
}

#[test]
fn plan_of_an_undersized_site_shows_the_shortfall_and_fails() {
    let file = root().join("topology/tests/corpus/capacity.toml");
    let o = metrodr(&["topology", "plan", &file.display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("error[capacity]"), "{}", stdout(&o));
}

#[test]
fn generate_writes_a_topology_that_validates() {
    let dir = std::env::temp_dir().join(format!("metrodr-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("gen.toml").display().to_string();
    let o = metrodr(&[
        "topology", "generate", "--hosts", "20", "--apps", "100", "--seed", "9", "--out", &file,
    ]);
    assert!(o.status.success());
    let o = metrodr(&["topology", "validate", "-o", "json", &file]);
    assert!(o.status.success(), "{}", stdout(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["summary"]["apps"], 100);
    assert_eq!(v["summary"]["hosts"], 20);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn help_reads_well() {
    let o = metrodr(&["--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.contains("topology") && out.contains("demo") && out.contains("--output"),
        "{out}"
    );
    let o = metrodr(&["topology", "validate", "--help"]);
    assert!(
        stdout(&o).contains("Exits 0 when the file is valid"),
        "{}",
        stdout(&o)
    );
    // A typo in a subcommand is a usage error (exit 2) with a suggestion.
    let o = metrodr(&["topolgy"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("topology"));
}

#[test]
fn demo_plans_then_loses_the_leader_a_volume_primary_and_a_site_and_loses_nothing() {
    let o = metrodr(&["demo"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.contains("Failover capacity"), "{out}");
    assert!(out.contains("kill -9"), "{out}");
    assert!(out.contains("(0 lost)"), "{out}");
    assert!(out.contains("Not built yet"), "{out}");
    // op-1 is the test drill before the loss; the site failover follows it, after any
    // operation the cluster began on its own meanwhile (each one shown).
    assert!(out.contains("Test drill (op-1)"), "{out}");
    let meanwhile = out.matches("meanwhile the cluster ran op-").count();
    let failover = 2 + meanwhile;
    assert!(
        out.contains(&format!("began op-{failover}"))
            && out.contains(&format!("Failover record (op-{failover}, succeeded)")),
        "{out}"
    );
    let o = metrodr(&["demo", "-o", "json"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["ok"], true);
    assert_eq!(v["apps"], 13);
    let cp = &v["control_plane"];
    assert_eq!(cp["entries_lost"], 0, "{cp}");
    assert_eq!(cp["audit_verified"], true, "{cp}");
    assert_ne!(cp["leader_after"], cp["leader_killed"], "{cp}");
    assert!(
        cp["entries_after"].as_u64() > cp["entries_committed_before_kill"].as_u64(),
        "{cp}"
    );
    let st = &v["storage"];
    assert!(st["writes_acknowledged"].as_u64() > Some(100), "{st}");
    assert_eq!(st["writes_lost"], 0, "{st}");
    assert_eq!(st["promoted_epoch"], 2, "{st}");
    assert_ne!(st["primary_site"], st["secondary_site"], "{st}");
    // The whole site: every north app runs at south, nothing acknowledged is missing,
    // and the stored report says the same.
    let sf = &v["site_failover"];
    assert_eq!(sf["status"], "succeeded", "{sf}");
    let others = sf["other_operations"].as_array().expect("other_operations");
    assert_eq!(
        sf["op"].as_u64(),
        sf["drill"]["op"]
            .as_u64()
            .map(|d| d + 1 + others.len() as u64),
        "the failover follows the drill and the operations listed between them: {sf}"
    );
    // The test drill before the loss: every app's copy ran at its other site, every
    // check passed (production untouched, isolated, cleaned up), and both reports
    // verify offline against the cluster's key.
    let drill = &sf["drill"];
    assert_eq!(drill["status"], "succeeded", "{drill}");
    assert_eq!(drill["safe"], true, "{drill}");
    assert_eq!(drill["rto_met"], true, "{drill}");
    assert_eq!(drill["verified"], true, "{drill}");
    assert_eq!(drill["apps"].as_array().map(Vec::len), Some(5), "{drill}");
    assert_eq!(sf["signed_report"]["verified"], true, "{sf}");
    let html = sf["signed_report"]["html"].as_str().unwrap_or_default();
    let o = metrodr(&["report", "verify", html]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(sf["writes_acknowledged"].as_u64() > Some(100), "{sf}");
    assert_eq!(sf["writes_missing"], 0, "{sf}");
    let apps = sf["apps"].as_array().expect("apps");
    assert_eq!(
        apps.len(),
        4,
        "db, api, portal, archive moved; mail stays: {sf}"
    );
    for a in apps {
        assert_eq!(
            (&a["site_before"], &a["site_after"]),
            (&"north".into(), &"south".into()),
            "{a}"
        );
        let t = a["kill_to_healthy_s"].as_f64().expect("healthy");
        assert!(
            t > 0.0 && t <= a["rto_target_s"].as_f64().unwrap_or(0.0),
            "{a}"
        );
    }
    let db = apps.iter().find(|a| a["app"] == "db").expect("db");
    assert_eq!(db["acknowledged_writes_missing"], 0, "{db}");
    let report = std::fs::read(sf["report"].as_str().expect("report path")).expect("report file");
    let stored: serde_json::Value = serde_json::from_slice(&report).expect("report JSON");
    assert_eq!(stored["op"], sf["op"]);
    assert_eq!(stored["record"]["status"], "succeeded");
    let o = metrodr(&["demo", "--plan-only", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert!(v["control_plane"].is_null());
}

/// A command whose reader goes away (`metrodr … | head -1`) ends quietly with
/// success: no panic, no "broken pipe" message.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_metrodr"))
        .args(["topology", "plan", &example("city-egov.toml")])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run metrodr");
    // Read nothing: close the pipe at once, as `head -0` would.
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("wait for metrodr");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}: {err}", o.status);
    assert!(!err.contains("panicked"), "{err}");
}

/// Every metrodr process ignores SIGPIPE: a peer that closes a socket it writes to (an
/// orchestrator node the chaos runner has just killed) is an error the command handles,
/// never a silent death by signal — which is how a chaos run once died with no word.
/// Checked on a client command while it is connected to a server that never answers.
#[test]
fn a_command_talking_to_the_cluster_ignores_sigpipe() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_metrodr"))
        .args(["--cluster", &addr, "status"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run metrodr");
    // Once it has connected, its main has run (and set whatever it sets).
    let (_conn, _) = listener.accept().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .expect("SigIgn in /proc/PID/status");
    let sigpipe = 1u64 << (13 - 1);
    assert!(
        ignored & sigpipe != 0,
        "metrodr status does not ignore SIGPIPE (SigIgn {ignored:#x})"
    );
}
