//! Conformance of the NBD server against real clients: libnbd's nbdinfo/nbdcopy and
//! QEMU's qemu-img/qemu-io, run as subprocesses against an in-process server on a unix
//! socket with a FileBackend; and of the Rust client against qemu-nbd. A missing tool
//! fails loudly (see `nbd_support::tool`), never skips.
#![allow(clippy::unwrap_used)]

mod nbd_support;

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nbd_support::*;
use replication::nbd::proto::Errno;
use replication::nbd::{ClientConfig, Export, ExportSet, FileBackend, NbdClient};

const MIB: u64 = 1 << 20;

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn nbdinfo_json_reports_size_block_sizes_and_flags() {
    let nbdinfo = tool("nbdinfo", "libnbd-bin");
    let srv = TestServer::file(64 * MIB);
    let v = json(&run(Command::new(&nbdinfo).arg("--json").arg(srv.uri())));
    assert_eq!(v["protocol"], "newstyle-fixed");
    assert_eq!(v["structured"], true);
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "vol");
    assert_eq!(e["description"], "test volume");
    assert_eq!(e["export-size"], 64 * MIB);
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 * MIB);
    for (flag, want) in [
        ("is_read_only", false),
        ("can_flush", true),
        ("can_fua", true),
        ("can_trim", true),
        ("can_zero", true),
        ("can_multi_conn", true),
        ("can_df", true),
        ("can_cache", false),
        ("can_fast_zero", false),
    ] {
        assert_eq!(e[flag], want, "{flag} in {e}");
    }
    assert_eq!(e["contexts"], serde_json::json!(["base:allocation"]));
    srv.stop();
}

fn two_exports() -> TestServer {
    TestServer::start(|dir| {
        let a = FileBackend::create(dir.join("a.raw"), 4 * MIB).unwrap();
        std::fs::write(dir.join("b.raw"), vec![7u8; MIB as usize]).unwrap();
        let b = FileBackend::open(dir.join("b.raw"), true).unwrap();
        ExportSet::new(vec![
            Export {
                name: "a".into(),
                description: "first".into(),
                backend: Arc::new(a),
                multi_conn: true,
            },
            Export {
                name: "b".into(),
                description: "second, read-only".into(),
                backend: Arc::new(b),
                multi_conn: false,
            },
        ])
        .unwrap()
    })
}

#[test]
fn nbdinfo_lists_named_exports_and_sees_read_only() {
    let nbdinfo = tool("nbdinfo", "libnbd-bin");
    let srv = two_exports();
    let v = json(&run(Command::new(&nbdinfo)
        .args(["--list", "--json"])
        .arg(srv.uri())));
    let names: Vec<_> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].clone())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let b = &v["exports"][1];
    assert_eq!(b["description"], "second, read-only");
    assert_eq!(b["is_read_only"], true);
    assert_eq!(b["can_multi_conn"], false);
    assert_eq!(b["export-size"], MIB);
    let text = run(Command::new(&nbdinfo).arg("--list").arg(srv.uri()));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("export=\"a\"") && text.contains("export=\"b\""),
        "{text}"
    );
    // With two exports the empty name selects nothing: a clean error, not a crash.
    let out = Command::new(&nbdinfo).arg(srv.uri()).output().unwrap();
    assert!(!out.status.success());
    srv.stop();
}

#[test]
fn qemu_img_info_and_convert_compare() {
    let qemu_img = tool("qemu-img", "qemu-utils");
    let srv = TestServer::file(8 * MIB);
    let v = json(&run(Command::new(&qemu_img)
        .args(["info", "--output=json"])
        .arg(srv.uri())));
    assert_eq!(v["virtual-size"], 8 * MIB);

    let src = srv.dir.path().join("src.raw");
    std::fs::write(&src, pseudo_random(42, 8 * MIB as usize)).unwrap();
    run(Command::new(&qemu_img)
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(srv.uri()));
    run(Command::new(&qemu_img)
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(srv.uri()));
    assert_eq!(
        std::fs::read(&src).unwrap(),
        std::fs::read(srv.image()).unwrap()
    );
    // A named URI reaches the same single export.
    run(Command::new(&qemu_img)
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(srv.uri_named("vol")));
    srv.stop();
}

fn qemu_io(uri: &str, commands: &[&str]) -> String {
    qemu_io_with(&[], uri, commands)
}

fn qemu_io_with(args: &[&str], uri: &str, commands: &[&str]) -> String {
    let qemu_io = tool("qemu-io", "qemu-utils");
    let mut cmd = Command::new(qemu_io);
    cmd.args(["-f", "raw"]).args(args);
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    cmd.arg(uri);
    let out = run(&mut cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("failed") && !text.contains("error"),
        "qemu-io reported a problem:\n{text}"
    );
    text
}

#[test]
fn qemu_io_patterns_aio_discard_zero_flush() {
    let srv = TestServer::file(16 * MIB);
    qemu_io(
        &srv.uri(),
        &[
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            // Pipelined: all in flight before aio_flush waits for them.
            "aio_write -P 1 1M 64k",
            "aio_write -P 2 2M 64k",
            "aio_write -P 3 3M 1M",
            "aio_write -P 4 5M 4k",
            "aio_flush",
            "read -P 1 1M 64k",
            "read -P 2 2M 64k",
            "read -P 3 3M 1M",
            "read -P 4 5M 4k",
            // FUA write.
            "write -f -P 5 6M 8k",
            "read -P 5 6M 8k",
            // Unaligned write.
            "write -P 6 7000 333",
            "read -P 6 7000 333",
            "discard 0 64k",
            "read -P 0 0 64k",
            // Zeroes keeping the allocation (NO_HOLE), then zeroes that may unmap.
            "write -P 7 8M 128k",
            "write -z 8M 64k",
            "read -P 0 8M 64k",
            "read -P 7 8256k 64k",
            "write -z -u 8256k 64k",
            "read -P 0 8M 128k",
            "flush",
        ],
    );
    // And again on a new connection: the data is really in the export.
    qemu_io(
        &srv.uri(),
        &["read -P 3 3M 1M", "read -P 5 6M 8k", "read -P 0 0 64k"],
    );
    srv.stop();
}

#[test]
fn qemu_img_map_sees_holes_through_base_allocation() {
    let qemu_img = tool("qemu-img", "qemu-utils");
    let srv = TestServer::file(16 * MIB);
    qemu_io(&srv.uri(), &["write -P 9 4M 1M", "flush"]);
    let v = json(&run(Command::new(&qemu_img)
        .args(["map", "--output=json", "-f", "raw"])
        .arg(srv.uri())));
    let entries = v.as_array().unwrap();
    let data: Vec<_> = entries.iter().filter(|e| e["data"] == true).collect();
    assert_eq!(data.len(), 1, "{v}");
    assert_eq!(data[0]["start"], 4 * MIB);
    assert_eq!(data[0]["length"], MIB);
    let holes: u64 = entries
        .iter()
        .filter(|e| e["zero"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(holes, 15 * MIB);
    srv.stop();
}

#[test]
fn nbdcopy_out_and_back_and_with_four_connections() {
    let nbdcopy = tool("nbdcopy", "libnbd-bin");
    let srv = TestServer::file(8 * MIB);
    let dir = srv.dir.path();
    let first = dir.join("first.raw");
    std::fs::write(&first, pseudo_random(7, 8 * MIB as usize)).unwrap();
    run(Command::new(&nbdcopy).arg(&first).arg(srv.uri()));
    let out = dir.join("out.raw");
    run(Command::new(&nbdcopy).arg(srv.uri()).arg(&out));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&first).unwrap());

    // The export advertises CAN_MULTI_CONN, so nbdcopy may really use 4 connections.
    let second = dir.join("second.raw");
    std::fs::write(&second, pseudo_random(8, 8 * MIB as usize)).unwrap();
    let before = srv.stats.accepted();
    // nbdcopy uses at most one connection per thread: ask for 4 threads too.
    run(Command::new(&nbdcopy)
        .args(["--connections=4", "--threads=4"])
        .arg(&second)
        .arg(srv.uri()));
    assert!(
        srv.stats.accepted() - before >= 4,
        "nbdcopy used {} connections",
        srv.stats.accepted() - before
    );
    run(Command::new(&nbdcopy)
        .args(["--connections=4", "--threads=4"])
        .arg(srv.uri())
        .arg(&out));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&second).unwrap()
    );
    assert_eq!(
        std::fs::read(srv.image()).unwrap(),
        std::fs::read(&second).unwrap()
    );
    srv.stop();
}

#[test]
fn read_only_export_refuses_writes_cleanly() {
    let qemu_io_bin = tool("qemu-io", "qemu-utils");
    let srv = two_exports();
    qemu_io_with(&["-r"], &srv.uri_named("b"), &["read -P 7 0 1M"]);
    // QEMU sees READ_ONLY and refuses to open read-write: a clean error.
    let out = Command::new(qemu_io_bin)
        .args(["-f", "raw", "-c", "write 0 4k"])
        .arg(srv.uri_named("b"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_serves(&srv.sock, "a");
    srv.stop();
}

// --- The Rust client against qemu-nbd -----------------------------------------------

struct QemuNbd {
    child: Child,
}

impl QemuNbd {
    fn start(sock: &Path, file: &Path) -> QemuNbd {
        let qemu_nbd = tool("qemu-nbd", "qemu-utils");
        let child = Command::new(qemu_nbd)
            .args(["-f", "raw", "-t", "-k"])
            .arg(sock)
            .arg(file)
            .spawn()
            .unwrap();
        wait_for_nbd_socket(sock, Duration::from_secs(10));
        QemuNbd { child }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn exercise_client(c: &NbdClient) {
    assert_eq!(c.size(), 8 * MIB);
    let data = Bytes::from(pseudo_random(3, 256 * 1024));
    c.write(4096, data.clone(), false).await.unwrap();
    c.write(MIB, Bytes::from(vec![5u8; 4096]), true)
        .await
        .unwrap();
    assert_eq!(c.read(4096, 256 * 1024).await.unwrap(), data);
    c.flush().await.unwrap();
    c.write_zeroes(4096, 4096, true, false).await.unwrap();
    c.trim(MIB, 4096).await.unwrap();
    let back = c.read(0, 3 * 4096).await.unwrap();
    assert!(back[4096..8192].iter().all(|&b| b == 0));
    assert_eq!(back[8192..], data[4096..8192]);
    // Many requests in flight from several tasks.
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let d = Bytes::from(pseudo_random(100 + i, 4096));
            c.write(2 * MIB + i * 4096, d.clone(), false).await.unwrap();
            assert_eq!(c.read(2 * MIB + i * 4096, 4096).await.unwrap(), d);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A read past the end is the server's error, and the connection stays usable.
    let err = c.read(8 * MIB, 4096).await.unwrap_err();
    assert_eq!(err.errno(), Some(Errno::Inval), "{err}");
    assert_eq!(c.read(0, 1).await.unwrap().len(), 1);
}

#[test]
fn rust_client_against_qemu_nbd_simple_and_structured() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.raw");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let sock = dir.path().join("q.sock");
    let _q = QemuNbd::start(&sock, &file);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for structured in [false, true] {
            let cfg = ClientConfig {
                export: String::new(),
                structured_replies: structured,
            };
            let c = NbdClient::connect_unix(&sock, &cfg).await.unwrap();
            assert_eq!(c.structured_replies(), structured);
            exercise_client(&c).await;
            c.disconnect().await.unwrap();
        }
    });
}

#[test]
fn rust_client_against_our_server_simple_and_structured() {
    let srv = TestServer::file(8 * MIB);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for structured in [false, true] {
            let cfg = ClientConfig {
                export: "vol".into(),
                structured_replies: structured,
            };
            let c = NbdClient::connect_unix(&srv.sock, &cfg).await.unwrap();
            assert_eq!(c.structured_replies(), structured);
            exercise_client(&c).await;
            c.disconnect().await.unwrap();
        }
    });
    srv.stop();
}
