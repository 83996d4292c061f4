//! The lab and chaos with real processes in network namespaces: every scenario shipped
//! in `chaos/scenarios/` and a few random schedules run through `metrodr chaos run`
//! (and two overlapping ones through `metrodr chaos soak`) and must keep every
//! invariant; `metrodr lab up|status|down` and the fault commands
//! work on a lab left running, and `lab down` cleans up after a crashed supervisor.
//! Needs root (network namespaces); without it the tests fail loudly.

#![allow(clippy::unwrap_used, clippy::await_holding_lock)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn need_netns() {
    if let Err(e) = chaos::netns::preflight() {
        panic!(
            "\n########################################################################\n\
             # the chaos tests need network namespaces: {e}\n\
             ########################################################################\n"
        );
    }
}

/// `metrodr -o json ARGS`; the parsed output, whether it exited 0, and for people: how
/// it ended (an exit code, or the signal that killed it), its stdout and its stderr.
fn run_json(args: &[&str]) -> (Value, bool, String) {
    let o = Command::new(BIN)
        .args(["-o", "json"])
        .args(args)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let v = serde_json::from_str(&out).unwrap_or(Value::Null);
    (
        v,
        o.status.success(),
        format!(
            "metrodr ended: {}\n--- stdout:\n{out}\n--- stderr:\n{err}",
            o.status
        ),
    )
}

/// The runner's own logs of the runs under `dir` (`DIR/RUN/runner.log`): the last line
/// of each is what the runner was doing when that run ended.
fn runner_logs(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path().join("runner.log");
        match std::fs::read_to_string(&path) {
            Ok(t) => out.push_str(&format!("--- {}:\n{t}", path.display())),
            Err(err) => out.push_str(&format!("--- no runner log at {}: {err}\n", path.display())),
        }
    }
    if out.is_empty() {
        out = format!("--- no run directory under {}", dir.display());
    }
    out
}

fn scenario(name: &str) -> Value {
    need_netns();
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let file = root().join(format!("chaos/scenarios/{name}.toml"));
    let (v, ok, text) = run_json(&[
        "chaos",
        "run",
        file.to_str().unwrap(),
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    let run = &v["runs"][0];
    eprintln!(
        "{name}: passed {} {} | {} writes acknowledged, {} blocks missing, longest write {} ms, {} samples, healed in {} s | ops {}",
        run["passed"],
        run["violations"],
        run["writes_acknowledged"],
        run["writes_missing"],
        run["max_write_stall_ms"],
        run["samples"],
        run["heal_s"],
        run["operations"]
    );
    if !ok || v["passed"] != true {
        let log = runner_logs(dir.path());
        keep_logs(dir.path(), name);
        panic!("{name} failed:\n{text}\n{log}");
    }
    assert!(run["samples"].as_u64().unwrap() > 20, "{run}");
    assert!(run["writes_acknowledged"].as_u64().unwrap() > 0, "{run}");
    run.clone()
}

/// A failed run's lab logs outlive the temporary directory.
fn keep_logs(dir: &Path, name: &str) {
    let keep = std::env::temp_dir().join(format!(
        "metrodr-failed-chaos-{name}-{}",
        std::process::id()
    ));
    let _ = Command::new("cp").arg("-r").arg(dir).arg(&keep).status();
    eprintln!("the failed run's directory is kept in {}", keep.display());
}

#[test]
fn site_loss_fails_every_app_over_and_loses_nothing() {
    let r = scenario("site-loss");
    assert_eq!(r["writes_missing"], 0);
    let ops = r["operations"].to_string();
    assert!(ops.contains("site north lost"), "{ops}");
}

#[test]
fn witness_loss_moves_nothing_and_never_stalls_a_write() {
    let r = scenario("witness-loss");
    assert!(r["max_write_stall_ms"].as_u64().unwrap() <= 1000, "{r}");
}

#[test]
fn a_cut_between_the_sites_leaves_one_side_with_everything() {
    scenario("link-cut");
}

#[test]
fn witness_and_link_loss_fails_nothing_over_and_writes_nothing_twice() {
    scenario("witness-and-link-loss");
}

#[test]
fn a_leader_killed_during_a_failover_finishes_it_once() {
    let r = scenario("leader-kill-during-failover");
    let steps = r["steps"].to_string();
    assert!(
        steps.contains("kill the leading orchestrator node"),
        "{steps}"
    );
    assert!(!steps.contains("error"), "{steps}");
}

#[test]
fn a_site_back_within_its_lease_runs_its_apps_again_where_they_belong() {
    scenario("site-blip");
}

#[test]
fn two_losses_in_a_row_end_with_every_app_running_where_it_belongs() {
    scenario("double-loss");
}

#[test]
fn a_flapping_link_settles_without_harm() {
    scenario("flapping-link");
}

#[test]
fn a_paused_site_wakes_up_stale_and_writes_nothing() {
    scenario("paused-site");
}

#[test]
fn a_one_way_partition_does_not_split_the_cluster() {
    scenario("one-way-partition");
}

#[test]
fn a_failed_secondary_disk_outdates_the_replica_and_loses_nothing() {
    let r = scenario("secondary-disk-failure");
    assert_eq!(r["writes_missing"], 0);
}

#[test]
fn a_slow_link_pushes_the_async_lag_over_its_bound_and_the_replica_catches_up() {
    let r = scenario("slow-link");
    assert_eq!(r["writes_missing"], 0, "{r}");
    let steps = r["steps"].to_string();
    assert!(steps.contains("30 ms"), "{steps}");
    // The bound held writers (the link could not carry the writes) but only briefly.
    let stall = r["max_write_stall_ms"].as_u64().unwrap();
    assert!(stall >= 1000, "the slow link never held a write: {r}");
}

#[test]
fn agents_with_slow_clocks_cannot_lose_a_write_when_their_site_is_cut_off() {
    let r = scenario("slow-clock");
    assert_eq!(r["writes_missing"], 0, "{r}");
    let ops = r["operations"].to_string();
    assert!(ops.contains("site north lost"), "{ops}");
}

#[test]
fn random_schedules_keep_every_invariant() {
    need_netns();
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (v, ok, text) = run_json(&[
        "chaos",
        "run",
        "--random",
        "--seed",
        "11",
        "--schedules",
        "3",
        "--duration",
        "14",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    for r in v["runs"].as_array().unwrap_or(&Vec::new()) {
        eprintln!(
            "seed {}: passed {} | steps {} | ops {}",
            r["seed"], r["passed"], r["steps"], r["operations"]
        );
    }
    if !ok {
        let log = runner_logs(dir.path());
        keep_logs(dir.path(), "random");
        panic!("a random schedule failed:\n{text}\n{log}");
    }
    assert_eq!(v["runs"].as_array().unwrap().len(), 3);
    // Each run wrote its exact schedule, to replay it.
    for r in v["runs"].as_array().unwrap() {
        let replay = r["replay"].as_str().unwrap();
        let t = std::fs::read_to_string(replay).unwrap();
        assert!(t.contains(&format!("seed = {}", r["seed"])), "{t}");
    }
}

#[test]
fn a_soak_runs_every_seed_and_leaves_its_summary() {
    need_netns();
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.json");
    let (v, ok, text) = run_json(&[
        "chaos",
        "soak",
        "--seeds",
        "2",
        "--seed",
        "1",
        "--duration",
        "12",
        "--dir",
        dir.path().to_str().unwrap(),
        "--json",
        summary.to_str().unwrap(),
    ]);
    eprintln!("soak: {}", v["totals"]);
    if !ok {
        let log = runner_logs(dir.path());
        keep_logs(dir.path(), "soak");
        panic!("the soak failed:\n{text}\n{log}");
    }
    // The file is what was printed, and says what ran.
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(file, v);
    assert_eq!(v["format"], 1);
    assert_eq!(v["generator"], "overlapping");
    assert_eq!(v["complete"], true);
    assert_eq!(v["totals"]["runs"], 2);
    assert_eq!(v["totals"]["passed"], 2);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(
        runs.iter()
            .map(|r| r["seed"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    for r in runs {
        // The schedule that ran is kept to replay it; a passed run's lab is not.
        let t = std::fs::read_to_string(r["replay"].as_str().unwrap()).unwrap();
        assert!(t.contains("name = \"random-overlap-"), "{t}");
        let run_dir = Path::new(r["dir"].as_str().unwrap());
        assert!(run_dir.join("runner.log").exists());
        assert!(
            !run_dir.join("lab").exists(),
            "a passed run's lab is removed"
        );
        assert!(r["time_s"].as_f64().unwrap() > 12.0, "{r}");
    }
}

#[test]
fn a_bad_scenario_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "name = \"x\"\nduration_s = 5\n[[fault]]\nat_s = 1\ndo = \"kill-site\"\nsite = \"mars\"\n",
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["chaos", "run", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no site \"mars\""), "{err}");
    let o = Command::new(BIN).args(["chaos", "run"]).output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("name a scenario file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `metrodr lab down --dir D` when dropped, so a failing test leaves no lab behind.
struct LabDown(String);

impl Drop for LabDown {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .args(["lab", "down", "--dir", &self.0])
            .output();
    }
}

fn ns_count(tag: &str) -> usize {
    let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with(tag))
        .count()
}

fn alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn a_lab_stays_up_takes_faults_and_comes_down_even_after_its_supervisor_dies() {
    need_netns();
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // Whatever happens below, the lab comes down (dropped before the directory).
    let _down = LabDown(d.to_string());
    let (rec, ok, text) = run_json(&["lab", "up", "--dir", d]);
    assert!(ok, "{text}");
    let tag = rec["tag"].as_str().unwrap().to_string();
    assert_eq!(ns_count(&tag), 4, "one namespace per site, and the WAN's");
    let nodes = rec["orchestrators"].as_array().unwrap();
    let cluster = nodes
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(",");
    // The lab runs with mutual TLS: without its certificates nothing is served.
    let certs = rec["certs"].as_str().unwrap().to_string();
    let o = cli_run(&cluster, &["vm", "list"]);
    assert!(
        !o.status.success(),
        "the lab served a client without a certificate: {}",
        common::text(&o)
    );
    // With them the cluster is reachable from here and every VM runs (as every node
    // sees it once it has applied the starts).
    let every = Duration::from_millis(200);
    let mut vms = serde_json::Value::Null;
    let running =
        lab::wait::wait_blocking_every(every, Duration::from_secs(10), "every VM running", || {
            vms = cli_json(&cluster, &["--certs", &certs, "vm", "list"]);
            vms.as_array()?
                .iter()
                .all(|v| v["state"] == "running")
                .then_some(())
        });
    assert!(running.is_ok(), "{running:?}: {vms}");
    // A fault: pause the witness; status says so; resume.
    let (_, ok, text) = run_json(&["chaos", "pause", "--dir", d, "witness"]);
    assert!(ok, "{text}");
    let (st, ok, _) = run_json(&["lab", "status", "--dir", d]);
    assert!(ok);
    let witness = st["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["site"] == "witness")
        .unwrap()
        .clone();
    assert_eq!(witness["state"], "paused", "{st}");
    let (_, ok, text) = run_json(&["chaos", "resume", "--dir", d, "witness"]);
    assert!(ok, "{text}");
    let (_, ok, text) = run_json(&["chaos", "partition", "--dir", d, "north", "mars"]);
    assert!(!ok, "an unknown site is refused");
    assert!(text.contains("no site \"mars\""), "{text}");
    let (_, ok, text) = run_json(&[
        "chaos",
        "partition",
        "--dir",
        d,
        "north",
        "south",
        "--one-way",
    ]);
    assert!(ok, "{text}");
    let (_, ok, text) = run_json(&["chaos", "disk-fail", "--dir", d, "south", "db-data"]);
    assert!(ok, "{text}");
    let (_, ok, text) = run_json(&["chaos", "disk-fail", "--dir", d, "south", "nope"]);
    assert!(!ok, "an unknown volume is refused");
    assert!(
        text.contains("no volume") && text.contains("nope"),
        "{text}"
    );
    let (_, ok, text) = run_json(&["chaos", "disk-repair", "--dir", d, "south", "db-data"]);
    assert!(ok, "{text}");
    let (_, ok, text) = run_json(&["chaos", "heal", "--dir", d]);
    assert!(ok, "{text}");
    // The WAN: the replication streams cross the link proxies; a shape shows in the
    // status, `heal` takes it away; bad values are refused with the reason.
    let (_, ok, text) = run_json(&[
        "chaos",
        "shape",
        "--dir",
        d,
        "north",
        "south",
        "--delay-ms",
        "20",
        "--bandwidth-mbit-s",
        "10",
    ]);
    assert!(ok, "{text}");
    let link = |st: &Value| st["links"][0].clone();
    let (st2, ok, _) = run_json(&["lab", "status", "--dir", d]);
    assert!(ok);
    let l = link(&st2);
    assert_eq!(
        (l["a"].as_str(), l["b"].as_str()),
        (Some("north"), Some("south")),
        "{st2}"
    );
    assert!(l["shape"].as_str().unwrap().contains("20 ms"), "{l}");
    assert!(l["shape"].as_str().unwrap().contains("10 Mbit/s"), "{l}");
    assert!(
        l["connections"].as_u64().unwrap() > 0 && l["bytes_a_to_b"].as_u64().unwrap() > 0,
        "the replication streams go through the link proxies: {l}"
    );
    let (_, ok, text) = run_json(&[
        "chaos", "shape", "--dir", d, "north", "south", "--loss", "2",
    ]);
    assert!(!ok, "a loss of 2 is refused");
    assert!(text.contains("must be a probability"), "{text}");
    let (_, ok, text) = run_json(&[
        "chaos",
        "shape",
        "--dir",
        d,
        "north",
        "witness",
        "--delay-ms",
        "5",
    ]);
    assert!(!ok, "the witness link is not shaped");
    assert!(
        text.contains("only links between sites with hosts"),
        "{text}"
    );
    let (_, ok, text) = run_json(&["chaos", "clock-skew", "--dir", d, "north", "0.9"]);
    assert!(ok, "{text}");
    let (_, ok, text) = run_json(&["chaos", "clock-skew", "--dir", d, "north", "0"]);
    assert!(!ok && text.contains("0.1 to 10"), "{text}");
    let (_, ok, text) = run_json(&["chaos", "clock-skew", "--dir", d, "witness", "0.9"]);
    assert!(!ok && text.contains("no agents run at witness"), "{text}");
    let (_, ok, text) = run_json(&["chaos", "heal", "--dir", d]);
    assert!(ok, "{text}");
    let (st2, _, _) = run_json(&["lab", "status", "--dir", d]);
    assert_eq!(link(&st2)["shape"], "full speed", "{st2}");

    // The supervisor crashes: `lab down` still stops every process and the namespaces.
    let pids: Vec<i64> = st["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pid"].as_i64())
        .collect();
    let sup = st["supervisor_pid"].as_i64().unwrap();
    Command::new("kill")
        .args(["-9", &sup.to_string()])
        .status()
        .unwrap();
    lab::wait_blocking(Duration::from_secs(10), "the supervisor to die", || {
        (!alive(sup)).then_some(())
    })
    .unwrap();
    let (_, ok, text) = run_json(&["lab", "down", "--dir", d]);
    assert!(ok, "{text}");
    let gone = lab::wait_blocking(Duration::from_secs(10), "every lab process gone", || {
        (!pids.iter().any(|p| alive(*p))).then_some(())
    });
    for p in &pids {
        assert!(
            !alive(*p),
            "process {p} of the lab still runs after lab down ({gone:?}): {text}"
        );
    }
    assert_eq!(ns_count(&tag), 0, "namespaces left after lab down: {text}");
    // Nothing is up any more.
    let (_, ok, text) = run_json(&["lab", "status", "--dir", d]);
    assert!(!ok);
    assert!(text.contains("no lab is up"), "{text}");
}
