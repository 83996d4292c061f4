//! The accept loops: unix socket permissions, stale and live socket files, clean
//! shutdown, and TCP serving (with real clients).
#![allow(clippy::unwrap_used)]

mod nbd_support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use nbd_support::*;
use replication::nbd::{
    ClientConfig, DEFAULT_SOCKET_MODE, Export, ExportSet, FileBackend, NbdClient, ServerConfig,
    TcpServer, UnixServer,
};
use tokio_util::sync::CancellationToken;

fn exports(dir: &std::path::Path) -> Arc<ExportSet<FileBackend>> {
    let b = FileBackend::create(dir.join("v.raw"), 1 << 20).unwrap();
    Arc::new(
        ExportSet::single(Export {
            name: "v".into(),
            description: String::new(),
            backend: Arc::new(b),
            multi_conn: true,
        })
        .unwrap(),
    )
}

/// The stale-socket check connects to the path: while another test of this process
/// forks a client (nbdinfo, qemu-io), the child briefly holds a copy of a just-closed
/// listener until it execs, and the socket looks live. The two tests take turns.
static FORKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[tokio::test]
#[allow(clippy::await_holding_lock)] // held on purpose for the whole test (see FORKS)
async fn socket_mode_stale_and_live_sockets() {
    let _turn = FORKS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("v.sock");
    let ex = exports(dir.path());

    // A stale socket (nobody accepting) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(
        std::fs::symlink_metadata(&sock)
            .unwrap()
            .file_type()
            .is_socket()
    );
    let server = UnixServer::bind(
        &sock,
        DEFAULT_SOCKET_MODE,
        ex.clone(),
        ServerConfig::default(),
    )
    .unwrap();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A live one is not stolen.
    let err = UnixServer::bind(&sock, 0o600, ex.clone(), ServerConfig::default())
        .err()
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");

    let token = CancellationToken::new();
    let run = tokio::spawn(server.run(token.clone()));
    let c = NbdClient::connect_unix(&sock, &ClientConfig::default())
        .await
        .unwrap();
    c.write(0, Bytes::from_static(b"abc"), true).await.unwrap();
    token.cancel();
    run.await.unwrap().unwrap();
    assert!(!sock.exists(), "the server removes its socket on shutdown");

    // A regular file at the path is never deleted.
    std::fs::write(&sock, b"precious").unwrap();
    let err = UnixServer::bind(&sock, 0o600, ex.clone(), ServerConfig::default())
        .err()
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
    std::fs::remove_file(&sock).unwrap();

    // Another mode, when the operator asks for it.
    let server = UnixServer::bind(&sock, 0o660, ex, ServerConfig::default()).unwrap();
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let token = CancellationToken::new();
    token.cancel();
    server.run(token).await.unwrap();
    // No temporary socket names left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().starts_with(".nbd-")),
        "{left:?}"
    );
}

#[test]
fn tcp_server_serves_nbdinfo_qemu_io_and_the_rust_client() {
    let _turn = FORKS.lock().unwrap_or_else(|e| e.into_inner());
    let nbdinfo = tool("nbdinfo", "libnbd-bin");
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = CancellationToken::new();
    let (addr, serving) = rt.block_on(async {
        let server = TcpServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            exports(dir.path()),
            ServerConfig::default(),
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        (addr, tokio::spawn(server.run(token.clone())))
    });
    let uri = format!("nbd://127.0.0.1:{}/v", addr.port());
    let out = run(Command::new(&nbdinfo).arg(&uri));
    assert!(String::from_utf8_lossy(&out.stdout).contains("export-size: 1048576"));
    let qemu_io = tool("qemu-io", "qemu-utils");
    run(Command::new(qemu_io)
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 3 0 64k",
            "-c",
            "read -P 3 0 64k",
        ])
        .arg(&uri));
    rt.block_on(async {
        let c = NbdClient::connect_tcp(
            addr,
            &ClientConfig {
                export: "v".into(),
                structured_replies: true,
            },
        )
        .await
        .unwrap();
        assert_eq!(c.read(0, 4).await.unwrap()[..], [3, 3, 3, 3]);
        c.disconnect().await.unwrap();
        token.cancel();
        serving.await.unwrap().unwrap();
    });
}
