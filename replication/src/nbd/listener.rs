//! Accept loops: [`UnixServer`] (how QEMU reaches a volume) and [`TcpServer`] (for
//! tests and tools), each serving every connection on its own task until a shutdown
//! token is cancelled.
//!
//! Must never: delete a file at the socket path that is not a socket, steal the path
//! of a server that is still accepting, leave the socket reachable by other users
//! than the mode says (it is created under a private name, chmod-ed, then renamed
//! into place), or let one connection's panic stop the others.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backend::BlockBackend;

use super::server::{ExportSet, ServeError, ServerConfig, serve_with};

/// Counters of one server, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    /// Connections closed for a protocol violation, an I/O error or a handshake timeout.
    pub failed: AtomicU64,
    /// Connection tasks that panicked (a bug: each is logged at error level).
    pub panicked: AtomicU64,
}

impl ServerStats {
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    pub fn panicked(&self) -> u64 {
        self.panicked.load(Ordering::Relaxed)
    }
}

/// The socket modes a volume export may use: owner read/write only, unless the
/// operator chooses to add the hypervisor's group.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// An NBD server on a unix socket.
pub struct UnixServer<B: BlockBackend> {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of our socket file, so that we only ever remove our own.
    id: (u64, u64),
    exports: Arc<ExportSet<B>>,
    config: ServerConfig,
    stats: Arc<ServerStats>,
}

static TMP_IDS: AtomicU64 = AtomicU64::new(0);

impl<B: BlockBackend> UnixServer<B> {
    /// Bind `path` with permission bits `mode` (e.g. [`DEFAULT_SOCKET_MODE`]). A stale
    /// socket file (nobody accepting) is replaced; a live one or a non-socket file is
    /// an error. Must be called inside a tokio runtime.
    pub fn bind(
        path: impl AsRef<Path>,
        mode: u32,
        exports: Arc<ExportSet<B>>,
        config: ServerConfig,
    ) -> io::Result<UnixServer<B>> {
        let path = path.as_ref().to_path_buf();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; not replacing it",
                        path.display()
                    ),
                ));
            }
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is a live socket: another server is accepting on it",
                        path.display()
                    ),
                ));
            }
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".nbd-{}-{}",
            std::process::id(),
            TMP_IDS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let meta = std::fs::symlink_metadata(&path)?;
        info!(path = %path.display(), mode = format!("{mode:o}"), "NBD server listening");
        Ok(UnixServer {
            listener,
            path,
            id: (meta.dev(), meta.ino()),
            exports,
            config,
            stats: Arc::new(ServerStats::default()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// Accept and serve until `shutdown` is cancelled, then let every connection
    /// finish (see [`serve_with`]), remove the socket file, and return.
    pub async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
        let UnixServer {
            listener,
            path,
            id,
            exports,
            config,
            stats,
        } = self;
        accept_loop(
            || async { listener.accept().await.map(|(s, _)| s) },
            exports,
            config,
            stats,
            shutdown,
        )
        .await;
        if let Ok(meta) = std::fs::symlink_metadata(&path)
            && (meta.dev(), meta.ino()) == id
        {
            std::fs::remove_file(&path)?;
        }
        info!(path = %path.display(), "NBD server stopped");
        Ok(())
    }
}

/// An NBD server on TCP (loopback tests and tools; volumes use [`UnixServer`]).
/// Sets `TCP_NODELAY` on every connection: without it small replies wait for
/// delayed ACKs (tens of milliseconds).
pub struct TcpServer<B: BlockBackend> {
    listener: TcpListener,
    exports: Arc<ExportSet<B>>,
    config: ServerConfig,
    stats: Arc<ServerStats>,
}

impl<B: BlockBackend> TcpServer<B> {
    pub async fn bind(
        addr: std::net::SocketAddr,
        exports: Arc<ExportSet<B>>,
        config: ServerConfig,
    ) -> io::Result<TcpServer<B>> {
        let listener = TcpListener::bind(addr).await?;
        Ok(TcpServer {
            listener,
            exports,
            config,
            stats: Arc::new(ServerStats::default()),
        })
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    pub async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
        let TcpServer {
            listener,
            exports,
            config,
            stats,
        } = self;
        accept_loop(
            || async {
                let (s, _) = listener.accept().await?;
                s.set_nodelay(true)?;
                Ok(s)
            },
            exports,
            config,
            stats,
            shutdown,
        )
        .await;
        Ok(())
    }
}

async fn accept_loop<S, B, A, F>(
    mut accept: A,
    exports: Arc<ExportSet<B>>,
    config: ServerConfig,
    stats: Arc<ServerStats>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: BlockBackend,
    A: FnMut() -> F,
    F: Future<Output = io::Result<S>>,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => reap(done, &stats),
            r = accept() => match r {
                Ok(stream) => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    stats.active.fetch_add(1, Ordering::Relaxed);
                    let (exports, config, shutdown, stats) =
                        (exports.clone(), config.clone(), shutdown.clone(), stats.clone());
                    conns.spawn(async move {
                        let r = std::panic::AssertUnwindSafe(serve_with(stream, exports, &config, shutdown))
                            .catch_unwind()
                            .await;
                        stats.active.fetch_sub(1, Ordering::Relaxed);
                        r
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    while let Some(done) = conns.join_next().await {
        reap(done, &stats);
    }
}

type ConnResult = Result<Result<(), ServeError>, Box<dyn std::any::Any + Send>>;

fn reap(done: Result<ConnResult, tokio::task::JoinError>, stats: &ServerStats) {
    // The connection logged its own outcome, with its export name (see `serve_with`).
    match done {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(_))) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(_)) => {
            stats.panicked.fetch_add(1, Ordering::Relaxed);
            error!("connection task panicked");
        }
        Err(e) => {
            stats.panicked.fetch_add(1, Ordering::Relaxed);
            stats.active.fetch_sub(1, Ordering::Relaxed);
            error!(error = %e, "connection task failed");
        }
    }
}
