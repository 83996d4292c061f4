//! The replication benchmark: fio (its `nbd` engine, i.e. libnbd) writing through
//! every storage path a metrodr user could choose, in one run on this machine:
//!
//! 1. `qemu-nbd` on a raw file (the baseline NBD server);
//! 2. `metrodr volume serve`, unreplicated;
//! 3. `metrodr volume serve --mode sync` to a `metrodr volume replica`, over loopback
//!    (0 RTT) and through the userspace WAN link ([`chaos::proxy::LinkProxy`]) with
//!    0.6 ms each way (~1.2 ms RTT; netem is not available here);
//! 4. the same in `--mode async` at ~1.2 ms RTT;
//! 5. QEMU's active mirror: `qemu-storage-daemon` exporting a raw file over NBD with a
//!    `blockdev-mirror` job (`copy-mode: write-blocking`) to a `qemu-nbd` target
//!    through the same link.
//!
//! Cases: 4 KiB random writes at queue depth 1 and 16 (IOPS, p50/p99 completion
//! latency) and 1 MiB sequential writes at queue depth 4 (MB/s), each after a warm-up.
//! Then the targets are checked and printed as PASS/FAIL. Run with
//! `cargo bench -p metrodr --bench replication`; `BENCH_SECS` sets the seconds per
//! case (default 5), `BENCH_ONLY=2,4` runs only those paths (no target check). The
//! last columns are the CPU time the storage path used per I/O (its processes, plus
//! the link proxy's threads where there is a link) at QD1 and QD16. Everything it starts is stopped by PID (or dropped) at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaos::proxy::{DirProps, LinkProps, LinkProxy};
use lab::daemons::Binary;
use lab::procs::{OnDrop, Proc, Rest};

const BIN: &str = env!("CARGO_BIN_EXE_metrodr");
const SIZE: &str = "256MiB";
const SIZE_BYTES: u64 = 256 << 20;
const ONE_WAY: Duration = Duration::from_micros(600);

fn banner(what: &str) -> ! {
    panic!("\n\n#### {what}\n")
}

fn need(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        banner(&format!(
            "{tool} is not installed: run scripts/install-deps.sh"
        ));
    }
}

/// Processes are the lab's: held by PID, stopped when dropped (SIGTERM, SIGKILL
/// after 15 s: a clean stop, after their numbers were taken).
fn held(p: Proc) -> Proc {
    p.on_drop(OnDrop::Terminate(Duration::from_secs(15)))
}

/// Start `cmd` (a tool that announces nothing) as `name`, held by PID.
fn spawn(name: &str, cmd: Command) -> Proc {
    held(Proc::spawn(name, cmd).unwrap_or_else(|e| panic!("{}", lab::error::chain(&e))))
}

/// Start `metrodr volume ...` and return it with its first (ready) line.
fn metrodr(dir: &Path, name: &'static str, args: &[String]) -> (Proc, serde_json::Value) {
    let log = dir.join(format!("{name}.log"));
    let (p, ready) = Binary::at(BIN)
        .volume(name, args, &log, Some("warn"), Rest::Drain)
        .unwrap_or_else(|e| panic!("{name}: {}", lab::error::chain(&e)));
    (held(p), serde_json::Value::Object(ready))
}

fn wait_socket(p: &Path) {
    let what = format!("{} to appear", p.display());
    lab::wait_blocking(Duration::from_secs(20), &what, || {
        UnixStream::connect(p).ok().map(drop)
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

fn sparse(path: &Path) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(SIZE_BYTES)
        .unwrap();
}

/// One storage path under test, running: its NBD socket and what to drop to stop it.
struct Path_ {
    name: &'static str,
    socket: PathBuf,
    _procs: Vec<Proc>,
    _link: Option<LinkProxy>,
}

fn link_to(target: &str) -> LinkProxy {
    let props = LinkProps::symmetric(DirProps::with_delay(ONE_WAY));
    LinkProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        target.parse().unwrap(),
        props,
    )
    .unwrap()
}

fn qemu_nbd(dir: &Path) -> Path_ {
    let file = dir.join("qemu-nbd.raw");
    sparse(&file);
    let socket = dir.join("qemu-nbd.sock");
    let mut cmd = Command::new("qemu-nbd");
    cmd.args(["-f", "raw", "-t", "--cache=writeback", "-x", "disk", "-k"])
        .arg(&socket)
        .arg(&file)
        .stderr(Stdio::null());
    let child = spawn("qemu-nbd", cmd);
    wait_socket(&socket);
    Path_ {
        name: "(1) qemu-nbd, raw file",
        socket,
        _procs: vec![child],
        _link: None,
    }
}

fn metrodr_alone(dir: &Path) -> Path_ {
    let socket = dir.join("alone.sock");
    let data = dir.join("alone.raw");
    let (p, _) = metrodr(
        dir,
        "serve-alone",
        &args(&[
            "serve",
            "--data",
            &s(&data),
            "--size",
            SIZE,
            "--socket",
            &s(&socket),
        ]),
    );
    Path_ {
        name: "(2) metrodr, unreplicated",
        socket,
        _procs: vec![p],
        _link: None,
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// A metrodr primary replicating to a replica, directly or through a delayed link.
fn metrodr_replicated(
    dir: &Path,
    tag: &'static str,
    name: &'static str,
    mode: &str,
    delayed: bool,
) -> Path_ {
    let (pdata, sdata) = (
        dir.join(format!("{tag}-a.raw")),
        dir.join(format!("{tag}-b.raw")),
    );
    let (rep, ready) = metrodr(
        dir,
        "replica",
        &args(&[
            "replica",
            "--data",
            &s(&sdata),
            "--size",
            SIZE,
            "--listen",
            "127.0.0.1:0",
        ]),
    );
    let listen = ready["listen"].as_str().unwrap().to_string();
    let link = delayed.then(|| link_to(&listen));
    let peer = link.as_ref().map_or(listen, |l| l.local_addr().to_string());
    let socket = dir.join(format!("{tag}.sock"));
    let (pri, _) = metrodr(
        dir,
        "serve-replicated",
        &args(&[
            "serve",
            "--data",
            &s(&pdata),
            "--size",
            SIZE,
            "--socket",
            &s(&socket),
            "--peer",
            &peer,
            "--mode",
            mode,
        ]),
    );
    // Wait until the initial sync is done (a first write would wait for it anyway).
    lab::wait_blocking(
        Duration::from_secs(60),
        &format!("{name}: the export"),
        || {
            let o = Command::new("nbdinfo")
                .arg(format!("nbd+unix:///disk?socket={}", socket.display()))
                .output()
                .unwrap();
            o.status.success().then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Path_ {
        name,
        socket,
        _procs: vec![pri, rep],
        _link: link,
    }
}

/// A tiny QMP client: one command, one answer (events in between are skipped).
struct Qmp(BufReader<UnixStream>);

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        wait_socket(path);
        let mut q = Qmp(BufReader::new(UnixStream::connect(path).unwrap()));
        q.read(); // greeting
        q.cmd(serde_json::json!({"execute": "qmp_capabilities"}));
        q
    }

    fn read(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP: {e}: {line:?}"))
    }

    fn cmd(&mut self, c: serde_json::Value) -> serde_json::Value {
        writeln!(self.0.get_mut(), "{c}").unwrap();
        loop {
            let v = self.read();
            if v.get("event").is_some() {
                continue;
            }
            assert!(v.get("error").is_none(), "QMP {c}: {v}");
            return v["return"].clone();
        }
    }
}

fn qemu_mirror(dir: &Path) -> Path_ {
    let (src, tgt) = (dir.join("mirror-a.raw"), dir.join("mirror-b.raw"));
    sparse(&src);
    sparse(&tgt);
    // The target: qemu-nbd on TCP, behind the delayed link.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut target = Command::new("qemu-nbd");
    target
        .args([
            "-f",
            "raw",
            "-t",
            "--cache=writeback",
            "-b",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .arg(&tgt)
        .stderr(Stdio::null());
    let target = spawn("qemu-nbd (mirror target)", target);
    lab::wait_blocking(
        Duration::from_secs(10),
        "the qemu-nbd target to listen",
        || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(drop)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let link = link_to(&format!("127.0.0.1:{port}"));
    let socket = dir.join("mirror.sock");
    let qmp = dir.join("mirror.qmp");
    let lp = link.local_addr().port().to_string();
    let mut qsd = Command::new("qemu-storage-daemon");
    qsd.arg("--blockdev")
        .arg(format!(
            "driver=file,filename={},node-name=file0,cache.direct=off",
            src.display()
        ))
        .args(["--blockdev", "driver=raw,file=file0,node-name=src"])
        .arg("--blockdev")
        .arg(format!(
            "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={lp},node-name=tgt"
        ))
        .arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", socket.display()))
        .args([
            "--export",
            "type=nbd,id=exp0,node-name=src,name=disk,writable=on",
        ])
        .arg("--chardev")
        .arg(format!(
            "socket,id=qmp,path={},server=on,wait=off",
            qmp.display()
        ))
        .args(["--monitor", "chardev=qmp"])
        .stderr(std::fs::File::create(dir.join("qsd.log")).unwrap());
    let qsd = spawn("qemu-storage-daemon", qsd);
    let mut q = Qmp::connect(&qmp);
    q.cmd(serde_json::json!({"execute": "blockdev-mirror", "arguments": {
        "job-id": "m0", "device": "src", "target": "tgt", "sync": "full", "copy-mode": "write-blocking"}}));
    // Ready: the initial copy is done and every new write goes to both.
    let mut jobs = serde_json::Value::Null;
    let ready = lab::wait_blocking(Duration::from_secs(120), "the mirror job ready", || {
        jobs = q.cmd(serde_json::json!({"execute": "query-block-jobs"}));
        (jobs[0]["ready"] == true).then_some(())
    });
    assert!(ready.is_ok(), "{ready:?}: {jobs}");
    Path_ {
        name: "(5) QEMU active mirror, ~1.2 ms RTT",
        socket,
        _procs: vec![qsd, target],
        _link: Some(link),
    }
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    i32::try_from(pid).map_or(0.0, lab::procs::cpu_seconds)
}

#[derive(Debug, Clone, Copy, Default)]
struct Res {
    iops: f64,
    mb_s: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU time of the storage path's processes (and the link proxy) per I/O.
    cpu_us_per_io: f64,
    /// The same, per process (in the order of the pids given).
    cpu_split: [f64; 4],
}

fn fio(uri: &str, rw: &str, bs: &str, qd: u32, secs: u64, pids: &[u32]) -> Res {
    let each = || pids.iter().map(|p| cpu_secs(*p)).collect::<Vec<f64>>();
    let cpu0 = each();
    let o = Command::new("fio")
        .args([
            "--name=bench",
            "--ioengine=nbd",
            "--output-format=json",
            "--time_based",
            "--ramp_time=1",
            "--randrepeat=0",
        ])
        .arg(format!("--uri={uri}"))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={bs}"))
        .arg(format!("--iodepth={qd}"))
        .arg(format!("--runtime={secs}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "fio failed: {}{}",
        text,
        String::from_utf8_lossy(&o.stderr)
    );
    let start = text.find('{').unwrap_or(0);
    let v: serde_json::Value =
        serde_json::from_str(&text[start..]).unwrap_or_else(|e| panic!("fio output: {e}: {text}"));
    let w = &v["jobs"][0]["write"];
    let pct = |p: &str| w["clat_ns"]["percentile"][p].as_f64().unwrap_or(0.0) / 1000.0;
    let ios = w["total_ios"].as_f64().unwrap_or(0.0).max(1.0);
    Res {
        iops: w["iops"].as_f64().unwrap_or(0.0),
        mb_s: w["bw_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        cpu_us_per_io: each().iter().zip(&cpu0).map(|(a, b)| a - b).sum::<f64>() * 1e6 / ios,
        cpu_split: {
            let mut split = [0.0; 4];
            for (i, (a, b)) in each().iter().zip(&cpu0).enumerate().take(4) {
                split[i] = (a - b) * 1e6 / ios;
            }
            split
        },
    }
}

/// Median round trip of 1-byte messages through a fresh link like the one used.
fn measured_rtt() -> Duration {
    use std::io::Read;
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = echo.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = echo.accept() {
            let mut b = [0u8; 1];
            while c.read_exact(&mut b).is_ok() && c.write_all(&b).is_ok() {}
        }
    });
    let link = link_to(&addr);
    let mut c = std::net::TcpStream::connect(link.local_addr()).unwrap();
    c.set_nodelay(true).unwrap();
    let mut rtts = Vec::new();
    let mut b = [0u8; 1];
    for _ in 0..300 {
        let t = Instant::now();
        c.write_all(&b).unwrap();
        c.read_exact(&mut b).unwrap();
        rtts.push(t.elapsed());
    }
    rtts.sort();
    rtts[rtts.len() / 2]
}

fn main() {
    for t in ["fio", "qemu-nbd", "qemu-storage-daemon", "nbdinfo"] {
        need(t);
    }
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::Builder::new()
        .prefix("metrodr-repl-bench")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = dir.path();
    let rtt = measured_rtt();
    println!(
        "link: 0.6 ms each way configured; measured RTT through the proxy (p50 of 300 pings): {:.3} ms",
        rtt.as_secs_f64() * 1e3
    );
    println!(
        "{SIZE} volumes in {}; {secs} s per case after 1 s warm-up; fio --ioengine=nbd\n",
        dir.display()
    );

    type Start = fn(&Path) -> Path_;
    let paths: Vec<Start> = vec![
        qemu_nbd,
        metrodr_alone,
        |d| {
            metrodr_replicated(
                d,
                "sync0",
                "(3) metrodr sync, loopback (0 RTT)",
                "sync",
                false,
            )
        },
        |d| metrodr_replicated(d, "sync1", "(3) metrodr sync, ~1.2 ms RTT", "sync", true),
        |d| metrodr_replicated(d, "async1", "(4) metrodr async, ~1.2 ms RTT", "async", true),
        qemu_mirror,
    ];
    let mut rows: Vec<(&str, [Res; 3])> = Vec::new();
    println!(
        "{:<40} {:>10} {:>9} {:>9} | {:>10} {:>9} {:>9} | {:>9} | {:>15}",
        "path",
        "QD1 IOPS",
        "p50 µs",
        "p99 µs",
        "QD16 IOPS",
        "p50 µs",
        "p99 µs",
        "1M MB/s",
        "CPU µs/IO QD1/16"
    );
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for (i, start) in paths.into_iter().enumerate() {
        if !only.is_empty() && !only.split(',').any(|k| k == (i + 1).to_string()) {
            continue;
        }
        let p = start(dir);
        let uri = format!("nbd+unix:///disk?socket={}", p.socket.display());
        // The proxy threads live in this process; count ours only when a link is used.
        let mut pids: Vec<u32> = p
            ._procs
            .iter()
            .filter_map(|p| p.pid())
            .map(|p| p as u32)
            .collect();
        if p._link.is_some() {
            pids.push(std::process::id());
        }
        let r = [
            fio(&uri, "randwrite", "4k", 1, secs, &pids),
            fio(&uri, "randwrite", "4k", 16, secs, &pids),
            fio(&uri, "write", "1M", 4, secs, &pids),
        ];
        println!(
            "{:<40} {:>10.0} {:>9.0} {:>9.0} | {:>10.0} {:>9.0} {:>9.0} | {:>9.0} | {:>7.0} {:>7.0}",
            p.name,
            r[0].iops,
            r[0].p50_us,
            r[0].p99_us,
            r[1].iops,
            r[1].p50_us,
            r[1].p99_us,
            r[2].mb_s,
            r[0].cpu_us_per_io,
            r[1].cpu_us_per_io
        );
        if pids.len() > 1 {
            let names: Vec<&str> = p
                ._procs
                .iter()
                .map(|p| p.name())
                .chain(p._link.as_ref().map(|_| "link proxy"))
                .collect();
            let split = |r: &Res| {
                names
                    .iter()
                    .zip(r.cpu_split)
                    .map(|(n, c)| format!("{n} {c:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "{:<40}   CPU µs/IO by process: QD1: {}; QD16: {}",
                "",
                split(&r[0]),
                split(&r[1])
            );
        }
        rows.push((p.name, r));
        drop(p);
    }
    if !only.is_empty() {
        return;
    }
    let get = |prefix: &str| {
        rows.iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|(_, r)| *r)
            .unwrap()
    };
    let (qn, alone, sync1, mirror) = (
        get("(1)"),
        get("(2)"),
        get("(3) metrodr sync, ~"),
        get("(5)"),
    );
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!("\ntargets:");
    for (i, what) in ["4 KiB QD1", "4 KiB QD16"].iter().enumerate() {
        let ratio = alone[i].iops / qn[i].iops;
        println!(
            "  (2) >= 0.9x (1), {what}: {ratio:.2}x  {}",
            verdict(ratio >= 0.9)
        );
    }
    let ratio = alone[2].mb_s / qn[2].mb_s;
    println!(
        "  (2) >= 0.9x (1), 1 MiB sequential: {ratio:.2}x  {}",
        verdict(ratio >= 0.9)
    );
    let added_ms = (sync1[0].p50_us - alone[0].p50_us) / 1e3;
    let budget_nominal = 1.2 + 0.2;
    let budget_measured = rtt.as_secs_f64() * 1e3 + 0.2;
    println!(
        "  (3) at QD1 adds <= RTT + 0.2 ms over (2): adds {added_ms:.3} ms (p50); nominal budget {budget_nominal:.2} ms {}, with the measured RTT {budget_measured:.2} ms {}",
        verdict(added_ms <= budget_nominal),
        verdict(added_ms <= budget_measured)
    );
    let ratio = sync1[1].iops / mirror[1].iops;
    println!(
        "  (3) >= (5) at QD16 (same RTT): {ratio:.2}x  {}",
        verdict(ratio >= 1.0)
    );
}
