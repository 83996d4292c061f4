//! What the survivors spend while they fail over: CPU per process (from
//! /proc/PID/stat) and the time their state machines spent applying entries (their
//! `metrodr_apply_seconds`, from /metrics).

use std::io::{Read, Write};
use std::time::Duration;

use lab::procs::cpu_seconds as cpu_secs;

use crate::setup::{Lab, SURVIVORS};

/// `metrodr_apply_seconds` (sum, count) from a node's /metrics.
fn apply_seconds(http: &str) -> Option<(f64, f64)> {
    let mut s = std::net::TcpStream::connect(http).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {http}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let get = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((
        get("metrodr_apply_seconds_sum")?,
        get("metrodr_apply_seconds_count")?,
    ))
}

type ApplyBefore = (&'static str, String, Option<(f64, f64)>);

/// What the survivors have spent: CPU per process, state-machine apply time per node.
pub struct Meter {
    cpu: Vec<(String, i32, f64)>,
    /// (node, its /metrics address, apply seconds (sum, count) before).
    apply: Vec<ApplyBefore>,
}

impl Meter {
    pub fn start(lab: &Lab) -> Meter {
        let l = lab.inner();
        let pid = |name: &str| l.member(name).and_then(|m| m.pid()).unwrap();
        let mut procs: Vec<(String, i32)> =
            SURVIVORS.iter().map(|s| (s.to_string(), pid(s))).collect();
        procs.extend(
            ["south-h1", "south-h2"]
                .iter()
                .map(|h| (format!("agent {h}"), pid(h))),
        );
        Meter {
            cpu: procs
                .into_iter()
                .map(|(name, pid)| (name, pid, cpu_secs(pid)))
                .collect(),
            apply: SURVIVORS
                .iter()
                .map(|s| {
                    let http = l.member(s).and_then(|m| m.http.clone()).unwrap_or_default();
                    let a = apply_seconds(&http);
                    (*s, http, a)
                })
                .collect(),
        }
    }

    pub fn report(&self, wall: Duration) {
        let cpu: Vec<String> = self
            .cpu
            .iter()
            .map(|(name, pid, before)| format!("{name} {:.2} s", cpu_secs(*pid) - before))
            .collect();
        println!(
            "  CPU used from T0 until the bench saw the end ({:.1} s wall, 2 cores): {}",
            wall.as_secs_f64(),
            cpu.join(", ")
        );
        for (name, http, before) in &self.apply {
            if let (Some(a), Some(b)) = (apply_seconds(http), before) {
                println!(
                    "  {name}: applying committed entries took {:.2} s in {:.0} batches",
                    a.0 - b.0,
                    a.1 - b.1
                );
            }
        }
    }
}
