//! Shared helpers for the NBD integration tests: an in-process server on its own
//! runtime thread, tool lookup that fails loudly, and a blocking raw-protocol client
//! for abuse tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use replication::backend::BlockBackend;
use replication::nbd::proto::*;
use replication::nbd::{
    DEFAULT_SOCKET_MODE, Export, ExportSet, FileBackend, ServerConfig, ServerStats, UnixServer,
};
use tokio_util::sync::CancellationToken;

/// A server on a unix socket in a temp dir, running on its own runtime thread.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub stats: Arc<ServerStats>,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Serve `exports` (built on the server's runtime by `make`, given the temp dir).
    pub fn start<B, F>(make: F) -> TestServer
    where
        B: BlockBackend,
        F: FnOnce(&Path) -> ExportSet<B> + Send + 'static,
    {
        Self::start_with(ServerConfig::default(), make)
    }

    pub fn start_with<B, F>(config: ServerConfig, make: F) -> TestServer
    where
        B: BlockBackend,
        F: FnOnce(&Path) -> ExportSet<B> + Send + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nbd.sock");
        let shutdown = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let (sock2, dir2, token) = (sock.clone(), dir.path().to_path_buf(), shutdown.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let exports = Arc::new(make(&dir2));
                let server =
                    UnixServer::bind(&sock2, DEFAULT_SOCKET_MODE, exports, config).unwrap();
                tx.send(server.stats()).unwrap();
                server.run(token).await.unwrap();
            });
        });
        let stats = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server did not start");
        TestServer {
            dir,
            sock,
            stats,
            shutdown,
            thread: Some(thread),
        }
    }

    /// One writable FileBackend export named "vol" (also the default export), with
    /// CAN_MULTI_CONN.
    pub fn file(size: u64) -> TestServer {
        TestServer::start(move |dir| {
            let b = FileBackend::create(dir.join("vol.raw"), size).unwrap();
            ExportSet::single(Export {
                name: "vol".into(),
                description: "test volume".into(),
                backend: Arc::new(b),
                multi_conn: true,
            })
            .unwrap()
        })
    }

    /// The backing file of [`TestServer::file`].
    pub fn image(&self) -> PathBuf {
        self.dir.path().join("vol.raw")
    }

    /// URI of the default export.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }

    pub fn uri_named(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.sock.display())
    }

    /// Ask the server to shut down without waiting.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Stop and wait until every connection is closed; asserts nothing panicked.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread panicked");
            assert_eq!(self.stats.panicked(), 0, "a connection task panicked");
            assert!(!self.sock.exists(), "socket file left behind");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.stop_inner();
        } else {
            self.shutdown.cancel();
        }
    }
}

/// The path of a required tool; a missing one fails the test with a banner naming
/// the Debian package (never a silent skip).
pub fn tool(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => p,
        None => panic!(
            "\n####################################################################\n\
             ####  `{name}` is not installed: install the Debian package `{package}`\n\
             ####  (scripts/install-deps.sh installs it). Not skipping.\n\
             ####################################################################\n"
        ),
    }
}

/// Run a command, failing with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A deterministic pseudo-random byte source (xorshift), seeded by the caller.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// --- A blocking raw-protocol client for abuse tests ---------------------------------

pub struct Raw {
    pub s: UnixStream,
}

impl Raw {
    /// Connect and read the greeting.
    pub fn connect(sock: &Path) -> Raw {
        let s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut raw = Raw { s };
        let g = raw.read_n(18);
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        raw
    }

    /// Connect, send flags, optionally negotiate structured replies, GO to `name`.
    /// Returns (size, transmission flags).
    pub fn go(sock: &Path, name: &str, structured: bool) -> (Raw, u64, u16) {
        let mut r = Raw::connect(sock);
        r.send(&3u32.to_be_bytes());
        if structured {
            r.option(OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(r.option_reply().1, REP_ACK);
        }
        let go = replication::nbd::options::InfoRequest {
            name: name.into(),
            requests: vec![],
        }
        .encode();
        r.option(OPT_GO, &go);
        let mut export = None;
        loop {
            let (_, t, payload) = r.option_reply();
            match t {
                REP_INFO => {
                    if let Ok(replication::nbd::options::Info::Export { size, flags }) =
                        replication::nbd::options::Info::decode(&payload)
                    {
                        export = Some((size, flags));
                    }
                }
                REP_ACK => break,
                t => panic!("GO failed with reply type {t:#x}"),
            }
        }
        let (size, flags) = export.unwrap();
        (r, size, flags)
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// Send, tolerating a server that already hung up.
    pub fn send_lossy(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b);
    }

    pub fn option(&mut self, option: u32, data: &[u8]) {
        let mut out = Vec::new();
        replication::nbd::options::put_option(&mut out, option, data);
        self.send(&out);
    }

    /// (option, reply type, payload)
    pub fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let h = self.read_n(20);
        let h =
            replication::nbd::options::OptionReplyHeader::decode(&h.try_into().unwrap()).unwrap();
        let payload = self.read_n(h.length as usize);
        (h.option, h.reply_type, payload)
    }

    pub fn request(&mut self, command: u16, flags: u16, cookie: u64, offset: u64, length: u32) {
        self.send(
            &RequestHeader {
                flags,
                command,
                cookie,
                offset,
                length,
            }
            .encode(),
        );
    }

    /// A simple reply: (error, cookie).
    pub fn simple_reply(&mut self) -> (u32, u64) {
        let b = self.read_n(16);
        assert_eq!(
            b[..4],
            SIMPLE_REPLY_MAGIC.to_be_bytes(),
            "not a simple reply"
        );
        (
            u32::from_be_bytes(b[4..8].try_into().unwrap()),
            u64::from_be_bytes(b[8..16].try_into().unwrap()),
        )
    }

    /// A structured chunk: (flags, type, cookie, payload).
    pub fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        let b = self.read_n(20);
        assert_eq!(
            b[..4],
            STRUCTURED_REPLY_MAGIC.to_be_bytes(),
            "not a structured reply"
        );
        let flags = u16::from_be_bytes(b[4..6].try_into().unwrap());
        let t = u16::from_be_bytes(b[6..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(b[8..16].try_into().unwrap());
        let len = u32::from_be_bytes(b[16..20].try_into().unwrap());
        (flags, t, cookie, self.read_n(len as usize))
    }

    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    /// True when the server closes the connection (EOF or reset) within the timeout,
    /// discarding whatever it sends first.
    pub fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 4096];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// A fresh connection still works: GO, write, read back, flush, disconnect.
pub fn assert_serves(sock: &Path, name: &str) {
    let (mut r, size, _) = Raw::go(sock, name, false);
    assert!(size >= 4096);
    let data = pseudo_random(size, 4096);
    r.request(CMD_WRITE, 0, 1, 0, 4096);
    r.send(&data);
    assert_eq!(r.simple_reply(), (0, 1));
    r.request(CMD_READ, 0, 2, 0, 4096);
    assert_eq!(r.simple_reply(), (0, 2));
    assert_eq!(r.read_n(4096), data);
    r.request(CMD_FLUSH, 0, 3, 0, 0);
    assert_eq!(r.simple_reply(), (0, 3));
    r.request(CMD_DISC, 0, 4, 0, 0);
    assert!(r.closed_by_server());
}

/// Wait until an NBD server accepts on `sock`, probing with a polite handshake that
/// ends in `NBD_OPT_ABORT` (a bare connect-and-close makes qemu-nbd log errors).
pub fn wait_for_nbd_socket(sock: &Path, deadline: Duration) {
    let until = std::time::Instant::now() + deadline;
    loop {
        if let Ok(mut s) = UnixStream::connect(sock) {
            let mut greeting = [0u8; 18];
            s.read_exact(&mut greeting).unwrap();
            let mut out = 3u32.to_be_bytes().to_vec();
            replication::nbd::options::put_option(&mut out, OPT_ABORT, &[]);
            s.write_all(&out).unwrap();
            let mut reply = [0u8; 20];
            s.read_exact(&mut reply).unwrap();
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "no NBD server on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
