//! Replicated volumes as real processes: `metrodr volume serve` (the primary: NBD on a
//! unix socket) and `metrodr volume replica` (the secondary: the stream's endpoint on
//! TCP), driven by an NBD client, QEMU's own tools, the probe guest under QEMU, a
//! userspace WAN link ([`chaos::proxy::LinkProxy`]) and SIGKILL.
//!
//! Needs qemu-img, qemu-io, nbdinfo, nbdcopy and qemu-system-x86_64 (scripts/
//! install-deps.sh installs them); a missing tool fails the test with a banner.

// Each test holds the `serial()` guard for its whole run, on purpose: they measure
// nothing, but several QEMU/replication pairs at once starve a 2-core machine.
#![allow(clippy::await_holding_lock, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chaos::proxy::{CutMode, LinkProps, LinkProxy};
use common::*;
use replication::nbd::{ClientConfig, NbdClient};

const SIZE: &str = "64MiB";
const BYTES: u64 = 64 << 20;
const BLOCK: u64 = 4096;
const REGION: u64 = 1 << 20;

fn need(tool: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        banner(&format!(
            "{tool} is not installed: run scripts/install-deps.sh"
        ));
    }
}

/// Block `i`'s contents: its number, a tag, and a pattern from both.
fn block(i: u64, tag: u8) -> Bytes {
    let mut b = vec![(i as u8) ^ tag; BLOCK as usize];
    b[..8].copy_from_slice(&i.to_be_bytes());
    b[8] = tag;
    Bytes::from(b)
}

fn replica(dir: &Path, name: &str, data: &Path, listen: &str) -> VolProc {
    start_volume(
        dir,
        name,
        &[
            "replica",
            "--volume",
            &format!("v0={}", data.display()),
            "--size",
            SIZE,
            "--listen",
            listen,
            "--status-interval-ms",
            "50",
        ],
    )
}

fn primary(dir: &Path, name: &str, data: &Path, socket: &Path, extra: &[&str]) -> VolProc {
    let mut args = vec![
        "serve".to_string(),
        "--volume".into(),
        format!("v0={}", data.display()),
        "--size".into(),
        SIZE.into(),
        "--socket".into(),
        socket.display().to_string(),
        "--status-interval-ms".into(),
        "50".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_volume(dir, name, &args)
}

async fn client(socket: &Path) -> NbdClient {
    NbdClient::connect_unix(
        socket,
        &ClientConfig {
            export: "v0".into(),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("NBD connect to {}: {e}", socket.display()))
}

/// Blocks whose contents in `data` are not what was acknowledged.
fn wrong_blocks(data: &Path, acked: &[(u64, u8)]) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(data).unwrap();
    let mut buf = vec![0u8; BLOCK as usize];
    acked
        .iter()
        .filter(|(i, tag)| {
            f.read_exact_at(&mut buf, i * BLOCK).unwrap();
            buf[..] != block(*i, *tag)[..]
        })
        .map(|(i, _)| *i)
        .collect()
}

/// Blocks of the workload whose acknowledged write is not in `data` (the oracle of
/// the lab's workload, on a file).
fn lost_writes(data: &Path, acked: &lab::workload::Acked) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(data).unwrap();
    let mut buf = vec![0u8; BLOCK as usize];
    acked
        .latest()
        .filter(|(i, seq)| {
            f.read_exact_at(&mut buf, i * BLOCK).unwrap();
            !lab::workload::holds(*i, *seq, &buf)
        })
        .map(|(i, _)| i)
        .collect()
}

fn same_files(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{cmd:?} failed: {text}");
    text
}

fn nbd_uri(socket: &Path) -> String {
    format!("nbd+unix:///v0?socket={}", socket.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_primary_mid_stream_loses_no_acknowledged_write_and_it_rejoins_by_delta() {
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (a_raw, b_raw) = (dir.join("a.raw"), dir.join("b.raw"));
    let mut b = replica(dir, "b-replica", &b_raw, "127.0.0.1:0");
    let b_addr = b.ready["listen"].as_str().unwrap().to_string();
    let a_sock = dir.join("a.sock");
    let mut a = primary(dir, "a-primary", &a_raw, &a_sock, &["--peer", &b_addr]);
    a.wait_status(Duration::from_secs(20), "the initial sync", |st| {
        st["link"] == "streaming"
    });

    // 16 pipelined writers, each on its own stripe of blocks, until the primary dies.
    let blocks = BYTES / BLOCK;
    let w = lab::workload::Writers::start(
        client(&a_sock).await,
        lab::workload::Spec {
            writers: 16,
            blocks,
            once: true,
            fua: false,
        },
    );
    // Mid-stream: once a quarter of the volume is acknowledged.
    wait_for(
        Duration::from_secs(30),
        "a quarter of the volume written",
        || {
            let n = w.acknowledged();
            async move { (n >= blocks / 4).then_some(()) }
        },
    )
    .await;
    assert!(
        w.running() > 0,
        "the writers finished before the kill: write more"
    );
    a.kill(); // SIGKILL, mid-stream
    let acked = w.finish(Duration::from_secs(10)).await;
    assert!(
        acked.writes > 100,
        "only {} writes were acknowledged before the kill",
        acked.writes
    );
    b.stop();
    let lost = lost_writes(&b_raw, &acked);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are not on the secondary: {:?}",
        lost.len(),
        acked.writes,
        &lost[..lost.len().min(10)]
    );
    eprintln!(
        "{} writes acknowledged before SIGKILL; all of them on the secondary",
        acked.writes
    );

    // Failover: B becomes primary at epoch 2 and serves every acknowledged write.
    let b_sock = dir.join("b.sock");
    let mut bp = primary(
        dir,
        "b-primary",
        &b_raw,
        &b_sock,
        &["--promote", "--epoch", "2"],
    );
    assert_eq!(bp.ready["epoch"], 2);
    let cb = client(&b_sock).await;
    for (i, seq) in acked.latest() {
        let data = cb.read(i * BLOCK, BLOCK as u32).await.unwrap();
        assert!(
            lab::workload::holds(i, seq, &data),
            "block {i} after the failover lacks write {seq}"
        );
    }
    // B takes writes while A is away (its bitmap records them).
    let mut later = Vec::new();
    for k in 0..64u64 {
        let i = 40 * REGION / BLOCK + k;
        cb.write(i * BLOCK, block(i, 0xB2), false).await.unwrap();
        later.push((i, 0xB2u8));
    }
    cb.flush().await.unwrap();
    drop(cb);
    let st = bp.stop();
    assert_eq!(
        st["peer_confirmed_all"], true,
        "no peer: nothing to confirm"
    );

    // A returns as B's secondary. The old primary is demoted by B's higher epoch, and
    // gets only the regions that may differ (its own in-flight ones and B's changes).
    let mut ar = replica(dir, "a-replica", &a_raw, "127.0.0.1:0");
    let a_addr = ar.ready["listen"].as_str().unwrap().to_string();
    let mut bp = primary(dir, "b-primary-2", &b_raw, &b_sock, &["--peer", &a_addr]);
    let st = bp.wait_status(Duration::from_secs(60), "A to be resynced", |st| {
        st["link"] == "streaming" && st["degraded"] == false && !st["last_resync"].is_null()
    });
    let copied = st["last_resync"]["bytes_copied"].as_u64().unwrap();
    eprintln!("A rejoined: resync {}", st["last_resync"]);
    assert!(copied >= REGION, "B's changes were not copied: {st}");
    assert!(copied < BYTES / 2, "a delta, not a full copy: {st}");
    ar.wait_status(Duration::from_secs(10), "A consistent at epoch 2", |st| {
        st["consistent"] == true && st["epoch"] == 2
    });
    bp.stop();
    ar.stop();
    assert!(
        same_files(&a_raw, &b_raw),
        "A and B differ after the resync"
    );
    assert!(wrong_blocks(&a_raw, &later).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_secondary_and_a_partition_are_repaired_by_delta_resync() {
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (a_raw, b_raw) = (dir.join("a.raw"), dir.join("b.raw"));
    let mut b = replica(dir, "b-replica", &b_raw, "127.0.0.1:0");
    let b_addr = b.ready["listen"].as_str().unwrap().to_string();
    let link = LinkProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        b_addr.parse().unwrap(),
        LinkProps::default(),
    )
    .unwrap();
    let peer = link.local_addr().to_string();
    let a_sock = dir.join("a.sock");
    // No orchestrator here: --degrade always lets A continue alone (a lab setting).
    let mut a = primary(
        dir,
        "a-primary",
        &a_raw,
        &a_sock,
        &["--peer", &peer, "--degrade", "always", "--hold-ms", "200"],
    );
    a.wait_status(Duration::from_secs(20), "the initial sync", |st| {
        st["link"] == "streaming"
    });
    let c = client(&a_sock).await;
    let mut acked = Vec::new();
    // One block in each of the 64 regions.
    for r in 0..64u64 {
        let i = r * REGION / BLOCK + 3;
        c.write(i * BLOCK, block(i, 1), false).await.unwrap();
        acked.push((i, 1u8));
    }
    c.flush().await.unwrap();

    // The secondary dies. A holds its writes, then goes on alone.
    b.kill();
    let t = Instant::now();
    for k in 0..64u64 {
        let i = 10 * REGION / BLOCK + k * 8; // regions 10 and 11
        c.write(i * BLOCK, block(i, 2), false).await.unwrap();
        acked.push((i, 2));
    }
    eprintln!(
        "64 writes without the secondary took {:?} (held, then permitted to go on alone)",
        t.elapsed()
    );
    a.wait_status(Duration::from_secs(2), "A to report running alone", |st| {
        st["degraded"] == true
    });
    // B comes back on the same address: only the changed regions are copied.
    b = replica(dir, "b-replica-2", &b_raw, &b_addr);
    let st = a.wait_status(Duration::from_secs(30), "B to be resynced", |st| {
        st["link"] == "streaming"
            && st["degraded"] == false
            && st["resynced_bytes_total"].as_u64() > Some(0)
    });
    eprintln!(
        "after the secondary's restart: resync {}",
        st["last_resync"]
    );
    let first = st["resynced_bytes_total"].as_u64().unwrap();
    assert_eq!(
        first,
        2 * REGION,
        "exactly the two regions written without B: {st}"
    );

    // A partition: the link goes silent. A notices, holds, goes on alone; the heal
    // brings B back by another delta.
    link.cut(CutMode::Blackhole);
    link.applied().await;
    for k in 0..32u64 {
        let i = 20 * REGION / BLOCK + 16 + k; // not block 3, written before
        c.write(i * BLOCK, block(i, 3), false).await.unwrap();
        acked.push((i, 3));
    }
    a.wait_status(Duration::from_secs(2), "A to report running alone", |st| {
        st["degraded"] == true
    });
    link.heal();
    let st = a.wait_status(
        Duration::from_secs(60),
        "B to be resynced after the heal",
        |st| {
            st["link"] == "streaming"
                && st["degraded"] == false
                && st["resynced_bytes_total"].as_u64() > Some(first)
        },
    );
    eprintln!("after the partition: resync {}", st["last_resync"]);
    assert_eq!(
        st["last_resync"]["bytes_copied"], REGION,
        "exactly the region written during the partition: {st}"
    );
    c.flush().await.unwrap();
    drop(c);
    let stopped = a.stop();
    assert_eq!(stopped["peer_confirmed_all"], true);
    b.stop();
    link.stop().await;
    let wrong = wrong_blocks(&b_raw, &acked);
    assert!(
        wrong.is_empty(),
        "{} acknowledged blocks wrong on B: {:?}\nA log:\n{}\nB log:\n{}",
        wrong.len(),
        &wrong[..wrong.len().min(20)],
        std::fs::read_to_string(&a.log).unwrap_or_default(),
        std::fs::read_to_string(&b.log).unwrap_or_default()
    );
    assert!(same_files(&a_raw, &b_raw), "A and B differ");
}

#[tokio::test(flavor = "multi_thread")]
async fn qemu_tools_import_and_read_a_replicated_volume() {
    for t in ["qemu-img", "qemu-io", "nbdinfo", "nbdcopy"] {
        need(t);
    }
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // A qcow2 image with data, a hole and zeroes: what an agency brings to import.
    let src = dir.join("src.qcow2");
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&src)
        .arg("64M"));
    ok(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 3M",
            "-c",
            "write -P 0x22 20M 1M",
            "-c",
            "write -z 40M 2M",
            "-c",
            "write -P 0x33 63M 1M",
        ])
        .arg(&src));

    let (a_raw, b_raw) = (dir.join("a.raw"), dir.join("b.raw"));
    let mut b = replica(dir, "b-replica", &b_raw, "127.0.0.1:0");
    let b_addr = b.ready["listen"].as_str().unwrap().to_string();
    let sock = dir.join("a.sock");
    let mut a = primary(dir, "a-primary", &a_raw, &sock, &["--peer", &b_addr]);
    a.wait_status(Duration::from_secs(20), "the initial sync", |st| {
        st["link"] == "streaming"
    });
    let uri = nbd_uri(&sock);

    // Import through the replicated export, then compare through it.
    ok(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "qcow2", "-O", "raw"])
        .arg(&src)
        .arg(&uri));
    let cmp = ok(Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&src)
        .arg(&uri));
    assert!(cmp.contains("identical"), "{cmp}");
    // Read back with libnbd's tools.
    let info = ok(Command::new("nbdinfo").arg(&uri));
    assert!(info.contains("export-size: 67108864"), "{info}");
    let map = ok(Command::new("nbdinfo").arg("--map").arg(&uri));
    assert!(map.contains("data"), "{map}");
    let copy = dir.join("copy.raw");
    ok(Command::new("nbdcopy").arg(&uri).arg(&copy));
    let cmp = ok(Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&src)
        .arg(&copy));
    assert!(cmp.contains("identical"), "{cmp}");
    // qemu-io's pattern check reads through the server too.
    let out = ok(Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "read -P 0x22 20M 1M",
            "-c",
            "read -P 0 40M 2M",
        ])
        .arg(&uri));
    assert!(!out.contains("Pattern verification failed"), "{out}");

    a.stop();
    b.stop();
    // The secondary holds the same image.
    let cmp = ok(Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&src)
        .arg(&b_raw));
    assert!(cmp.contains("identical"), "secondary: {cmp}");
}

#[test]
fn importing_an_image_protects_it_at_both_sites() {
    need("qemu-img");
    need("qemu-io");
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let src = dir.join("agency.qcow2");
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&src)
        .arg("48M"));
    ok(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5e 1M 9M",
            "-c",
            "write -P 0x77 47M 1M",
        ])
        .arg(&src));
    let b_raw = dir.join("b.raw");
    let mut b = start_volume(
        dir,
        "b-replica",
        &[
            "replica",
            "--data",
            b_raw.to_str().unwrap(),
            "--size",
            "48MiB",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let b_addr = b.ready["listen"].as_str().unwrap().to_string();
    let a_raw = dir.join("a.raw");
    // The volume does not exist yet: import creates it with the image's size.
    let o = metrodr(&[
        "volume",
        "import",
        "--image",
        src.to_str().unwrap(),
        "--data",
        a_raw.to_str().unwrap(),
        "--peer",
        &b_addr,
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let done: serde_json::Value = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["event"] == "imported")
        .unwrap_or_else(|| panic!("no imported line: {out}"));
    assert_eq!(done["peer_in_sync"], true, "{done}");
    assert_eq!(done["bytes"], 48u64 << 20);
    b.stop();
    for f in [&a_raw, &b_raw] {
        let cmp = ok(Command::new("qemu-img")
            .args(["compare", "-f", "qcow2", "-F", "raw"])
            .arg(&src)
            .arg(f));
        assert!(cmp.contains("identical"), "{}: {cmp}", f.display());
    }
    // A bad image is refused with what qemu-img said.
    std::fs::write(dir.join("junk.qcow2"), b"QFI\xfbnot really").unwrap();
    let o = metrodr(&[
        "volume",
        "import",
        "--image",
        dir.join("junk.qcow2").to_str().unwrap(),
        "--data",
        dir.join("c.raw").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("qemu-img cannot read it"), "{}", text(&o));
}

fn guest_image() -> chaos::guest::GuestImage {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("metrodr-guest");
    chaos::guest::build(&chaos::guest::BuildOptions::new(dir))
        .unwrap_or_else(|e| banner(&format!("cannot build the probe guest: {e}")))
}

/// QEMU (TCG) booting the probe guest from an NBD export; killed by PID on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn boot(img: &chaos::guest::GuestImage, socket: &Path, console: &Path) -> Qemu {
    let drive = format!(
        "file=nbd+unix:///v0?socket={},format=raw,if=virtio,cache=none",
        socket.display()
    );
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "256",
            "-smp",
            "1",
            "-display",
            "none",
            "-no-reboot",
            "-nodefaults",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&img.kernel)
        .arg("-initrd")
        .arg(&img.initrd)
        .args(["-append", &img.cmdline, "-drive", &drive])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| banner(&format!("cannot start qemu-system-x86_64: {e}")));
    Qemu(child)
}

fn console(path: &Path) -> chaos::guest::ConsoleLog {
    chaos::guest::parse_console(&std::fs::read_to_string(path).unwrap_or_default())
}

fn wait_acks(path: &Path, at_least: u64, within: Duration) -> chaos::guest::ConsoleLog {
    let what = format!("the probe guest to acknowledge {at_least} records");
    lab::wait_blocking(within, &what, || {
        Some(console(path)).filter(|l| l.acks >= at_least)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}\nconsole:\n{}",
            console(path),
            std::fs::read_to_string(path).unwrap_or_default()
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_probe_guest_loses_no_acknowledged_record_when_its_site_dies() {
    need("qemu-system-x86_64");
    let _g = serial();
    let img = guest_image();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (a_raw, b_raw) = (dir.join("a.raw"), dir.join("b.raw"));
    let mut b = replica(dir, "b-replica", &b_raw, "127.0.0.1:0");
    let b_addr = b.ready["listen"].as_str().unwrap().to_string();
    let a_sock = dir.join("a.sock");
    let mut a = primary(dir, "a-primary", &a_raw, &a_sock, &["--peer", &b_addr]);
    a.wait_status(Duration::from_secs(20), "the initial sync", |st| {
        st["link"] == "streaming"
    });

    // The guest runs at site A on the replicated disk, writing a record every 100 ms
    // (O_DIRECT + fsync each) and printing each acknowledged one.
    let con_a = dir.join("console-a.log");
    let mut qa = boot(&img, &a_sock, &con_a);
    wait_acks(&con_a, 30, Duration::from_secs(180));
    // Site A dies: its storage process and its hypervisor, at once.
    a.kill();
    let _ = qa.0.kill();
    let _ = qa.0.wait();
    let log_a = console(&con_a);
    let last_ack = log_a.max_ack.unwrap();
    b.stop();
    let rec = chaos::guest::disk_records(&b_raw).unwrap();
    eprintln!(
        "site A: guest acknowledged up to record {last_ack}; site B's disk holds 1..={} (gap: {:?})",
        rec.contiguous, rec.first_gap
    );
    assert_eq!(
        rec.first_gap, None,
        "a hole on the secondary: an acknowledged write was lost: {rec:?}"
    );
    assert!(
        rec.contiguous >= last_ack,
        "RPO violated: acknowledged {last_ack}, secondary has {}",
        rec.contiguous
    );

    // Failover: the disk is promoted at site B and the guest boots there and resumes
    // after every record it had acknowledged.
    let b_sock = dir.join("b.sock");
    let mut bp = primary(
        dir,
        "b-primary",
        &b_raw,
        &b_sock,
        &["--promote", "--epoch", "2"],
    );
    let con_b = dir.join("console-b.log");
    let qb = boot(&img, &b_sock, &con_b);
    let log_b = wait_acks(&con_b, 5, Duration::from_secs(180));
    drop(qb);
    let resumed = *log_b.resume_after.first().unwrap();
    eprintln!("site B: the guest resumed after record {resumed}");
    assert!(
        resumed >= last_ack,
        "the guest at B resumed after {resumed}, but {last_ack} was acknowledged at A"
    );
    bp.stop();
}
