//! The NBD server's I/O shell for one connection: the handshake (frames in, the pure
//! [`Negotiation`] decides, replies out) and the pipelined transmission phase.
//!
//! Transmission runs three kinds of tasks per connection:
//!
//! ```text
//!  socket ──▶ reader (this fn) ──spawn──▶ request task ─┐ (one per request, runs
//!               │ judge() each header                   │  the backend future)
//!               │ waits for an in-flight slot and       ▼
//!               │ byte budget before reading on    writer task ──▶ socket
//!               └──────────── (permits return when the reply is written)
//! ```
//!
//! Replies go out as they complete (out of order) through the single writer, which
//! batches whatever is ready into one write. At most `max_in_flight` requests and
//! `max_buffered_bytes` of payload (write data read but not yet written to the
//! backend, read data not yet sent) exist per connection; at either bound the reader
//! stops reading the socket until replies have been written, so a fast client is
//! slowed by TCP/unix-socket backpressure instead of growing memory.
//!
//! Must never: panic on client bytes; let one connection's fault reach another (a bad
//! frame closes only its connection); interleave two replies on the wire; or reply
//! to a request before the backend completed it.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, warn};

use crate::backend::{BackendError, BlockBackend};

use super::negotiate::{ExportInfo, Negotiation, Next, Reply, SERVER_HANDSHAKE_FLAGS, Session};
use super::options::{OptionHeader, encode_greeting, put_option_reply};
use super::proto::*;
use super::session::{Action, Limits, Verdict, block_status_descriptors, errno_of, judge};

/// One export: a name clients ask for and the backend that stores its blocks.
pub struct Export<B: BlockBackend> {
    pub name: String,
    /// Shown by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION` (may be empty).
    pub description: String,
    pub backend: Arc<B>,
    /// Advertise `NBD_FLAG_CAN_MULTI_CONN`: true only when a flush or FUA on one
    /// connection makes the writes of every connection durable, i.e. the backend has
    /// no per-connection cache (a file shared by all connections qualifies).
    pub multi_conn: bool,
}

/// The exports one server offers.
pub struct ExportSet<B: BlockBackend> {
    exports: Vec<Arc<Export<B>>>,
}

/// An export list that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ExportSetError {
    #[error("export name {name:?} is used twice")]
    Duplicate { name: String },
    #[error("export name {name:?} is not a valid NBD string (NUL, or longer than 4096 bytes)")]
    BadName { name: String },
}

impl<B: BlockBackend> ExportSet<B> {
    pub fn new(exports: Vec<Export<B>>) -> Result<ExportSet<B>, ExportSetError> {
        for (i, e) in exports.iter().enumerate() {
            if e.name.len() > MAX_STRING || e.name.contains('\0') {
                return Err(ExportSetError::BadName {
                    name: e.name.clone(),
                });
            }
            if exports[..i].iter().any(|o| o.name == e.name) {
                return Err(ExportSetError::Duplicate {
                    name: e.name.clone(),
                });
            }
        }
        Ok(ExportSet {
            exports: exports.into_iter().map(Arc::new).collect(),
        })
    }

    /// A set with one export (reachable by its name and by the empty default name).
    pub fn single(export: Export<B>) -> Result<ExportSet<B>, ExportSetError> {
        ExportSet::new(vec![export])
    }

    pub fn exports(&self) -> &[Arc<Export<B>>] {
        &self.exports
    }

    fn infos(&self) -> Vec<ExportInfo> {
        self.exports
            .iter()
            .map(|e| ExportInfo {
                name: e.name.clone(),
                description: e.description.clone(),
                size: e.backend.size(),
                read_only: e.backend.read_only(),
                multi_conn: e.multi_conn,
            })
            .collect()
    }
}

/// Per-connection limits. Every default is a bound with a stated consequence.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests being served at once per connection (64: four times QEMU's 16, so a
    /// client is never throttled by this in normal use). At the bound the server stops
    /// reading requests until one is answered.
    pub max_in_flight: usize,
    /// Payload bytes held per connection (64 MiB; raised to at least one maximal
    /// payload, 32 MiB, so any legal request can be admitted). At the bound the server
    /// stops reading until replies are written.
    pub max_buffered_bytes: usize,
    /// Time a client has to finish the handshake (30 s; QEMU finishes in
    /// milliseconds). After it the connection is closed.
    pub handshake_timeout: Duration,
    /// On shutdown, how long requests already received may take to complete before
    /// the connection is dropped anyway (30 s).
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_in_flight: 64,
            max_buffered_bytes: 64 << 20,
            handshake_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Why a connection ended abnormally. A client that disconnects (`NBD_CMD_DISC`,
/// `NBD_OPT_ABORT`, or closing between frames) ends it normally (`Ok`).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("connection I/O failed")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
}

/// Above this, an option's data is not even read: the connection is closed.
const OPTION_DISCARD_MAX: u32 = 1 << 20;
/// Read buffer per connection: holds many small requests per system call.
const READ_BUFFER: usize = 128 * 1024;
/// Reply data up to this size is copied into the batch buffer; larger data is
/// written from its own buffer.
const COPY_MAX: usize = 32 * 1024;
/// The writer sends its batch once it holds this much.
const BATCH_MAX: usize = 256 * 1024;

static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);

/// Serve one connection with default limits until the client leaves.
pub async fn serve<S, B>(stream: S, exports: Arc<ExportSet<B>>) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: BlockBackend,
{
    serve_with(
        stream,
        exports,
        &ServerConfig::default(),
        CancellationToken::new(),
    )
    .await
}

/// Serve one connection. When `shutdown` is cancelled, a connection still in its
/// handshake is closed at once; one in transmission stops reading requests, answers
/// those already received (for at most `shutdown_grace`), then closes.
pub async fn serve_with<S, B>(
    stream: S,
    exports: Arc<ExportSet<B>>,
    config: &ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: BlockBackend,
{
    let conn = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("nbd", conn, export = tracing::field::Empty);
    let result = serve_inner(stream, exports, config.clone(), shutdown)
        .instrument(span.clone())
        .await;
    span.in_scope(|| match &result {
        Ok(()) => debug!("connection closed"),
        // The client went away (reset, broken pipe): routine.
        Err(ServeError::Io(e)) => debug!(error = %e, "connection ended"),
        Err(e) => warn!(error = %e, "connection closed by the server"),
    });
    result
}

async fn serve_inner<S, B>(
    stream: S,
    exports: Arc<ExportSet<B>>,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: BlockBackend,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
    let session = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = tokio::time::timeout(config.handshake_timeout, handshake(&mut rd, &mut wr, &exports)) => match r {
            Err(_) => return Err(ServeError::HandshakeTimeout(config.handshake_timeout)),
            Ok(r) => r?,
        },
    };
    let Some(session) = session else {
        return Ok(());
    };
    let export = exports.exports[session.export].clone();
    tracing::Span::current().record("export", export.name.as_str());
    debug!(
        structured = session.structured_replies,
        flags = session.transmission_flags,
        "transmission"
    );
    transmission(rd, wr, export, session, config, shutdown).await
}

/// Option haggling. `Ok(None)`: the client aborted.
async fn handshake<R, W, B>(
    rd: &mut R,
    wr: &mut W,
    exports: &ExportSet<B>,
) -> Result<Option<Session>, ServeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    B: BlockBackend,
{
    wr.write_all(&encode_greeting(SERVER_HANDSHAKE_FLAGS))
        .await?;
    wr.flush().await?;
    let mut flags = [0u8; 4];
    read_exact(rd, &mut flags, "client flags").await?;
    let mut negotiation =
        Negotiation::new(u32::from_be_bytes(flags)).map_err(ServeError::Protocol)?;
    let infos = exports.infos();
    let mut out = Vec::with_capacity(512);
    loop {
        let mut h = [0u8; OPTION_HEADER_LEN];
        read_exact(rd, &mut h, "option header").await?;
        let h = OptionHeader::decode(&h).map_err(|e| ServeError::Protocol(e.to_string()))?;
        let outcome = if h.length > MAX_OPTION_DATA {
            if h.length > OPTION_DISCARD_MAX {
                return Err(ServeError::Protocol(format!(
                    "option {} with {} bytes of data",
                    h.option, h.length
                )));
            }
            warn!(
                option = h.option,
                length = h.length,
                "option data too long; discarded"
            );
            let skipped = discard(rd, u64::from(h.length)).await?;
            if skipped != u64::from(h.length) {
                return Err(truncated("option data"));
            }
            negotiation.on_oversized_option(h.option, h.length)
        } else {
            let mut data = vec![0u8; h.length as usize];
            read_exact(rd, &mut data, "option data").await?;
            negotiation.on_option(&infos, h.option, &data)
        };
        out.clear();
        for reply in &outcome.replies {
            match reply {
                Reply::Option {
                    option,
                    reply_type,
                    payload,
                } => put_option_reply(&mut out, *option, *reply_type, payload),
                Reply::Raw(raw) => out.extend_from_slice(raw),
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            wr.flush().await?;
        }
        match outcome.next {
            Next::Continue => {}
            Next::Transmit(session) => return Ok(Some(session)),
            Next::Close(why) if h.option == OPT_ABORT => {
                debug!(why, "handshake ended by client");
                return Ok(None);
            }
            Next::Close(why) => return Err(ServeError::Protocol(why)),
        }
    }
}

/// Read and drop `n` bytes; returns how many there were before EOF.
async fn discard<R: AsyncRead + Unpin>(rd: &mut R, n: u64) -> io::Result<u64> {
    tokio::io::copy(&mut rd.take(n), &mut tokio::io::sink()).await
}

fn truncated(what: &str) -> ServeError {
    ServeError::Protocol(format!("connection closed in the middle of {what}"))
}

async fn read_exact<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut [u8],
    what: &str,
) -> Result<(), ServeError> {
    match rd.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(truncated(what)),
        Err(e) => Err(e.into()),
    }
}

/// Read a request header; `Ok(false)` when the client closed between frames.
async fn read_header<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut [u8; REQUEST_HEADER_LEN],
) -> Result<bool, ServeError> {
    let mut got = 0;
    while got < buf.len() {
        let n = rd.read(&mut buf[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(false)
            } else {
                Err(truncated("a request header"))
            };
        }
        got += n;
    }
    Ok(true)
}

/// What a request task hands the writer.
struct Outgoing {
    cookie: u64,
    body: Body,
    /// Released once the reply is on the wire: frees the in-flight slot and budget.
    _slot: OwnedSemaphorePermit,
    _budget: Option<OwnedSemaphorePermit>,
}

enum Body {
    Done,
    /// Read data for the request at `offset`.
    Data {
        offset: u64,
        data: Bytes,
    },
    Error {
        errno: Errno,
        message: String,
    },
    BlockStatus {
        context_id: u32,
        descriptors: Vec<(u32, u32)>,
    },
}

enum Ended {
    /// The client sent `NBD_CMD_DISC` or closed between frames.
    Client,
    /// The server is shutting down.
    Shutdown,
    /// The writer failed: the client is gone.
    WriterGone,
}

async fn transmission<R, W, B>(
    mut rd: BufReader<R>,
    wr: W,
    export: Arc<Export<B>>,
    session: Session,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    B: BlockBackend,
{
    let limits = Limits {
        size: export.backend.size(),
        read_only: export.backend.read_only(),
        structured_replies: session.structured_replies,
        base_allocation: session.base_allocation,
    };
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let budget = Arc::new(Semaphore::new(
        config.max_buffered_bytes.max(MAX_PAYLOAD as usize),
    ));
    // Unbounded is bounded by `slots`: every message holds one.
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer_gone = CancellationToken::new();
    let mut writer = tokio::spawn(
        write_replies(wr, rx, session.structured_replies, writer_gone.clone())
            .instrument(tracing::Span::current()),
    );

    let conn = Conn {
        export: &export,
        limits,
        slots,
        budget,
        tx,
        shutdown: &shutdown,
        writer_gone: &writer_gone,
    };
    let result = conn.read_requests(&mut rd).await;
    drop(conn);
    match result {
        Ok(ended) => {
            if matches!(ended, Ended::WriterGone) {
                debug!("client stopped reading replies");
            }
            // Answer what was received, then close. On shutdown, only for so long.
            let grace = async {
                shutdown.cancelled().await;
                tokio::time::sleep(config.shutdown_grace).await;
            };
            tokio::select! {
                r = &mut writer => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(error = %e, "writing replies failed"),
                    Err(e) => error!(error = %e, "reply writer failed"),
                },
                _ = grace => {
                    warn!(grace = ?config.shutdown_grace, "requests still in flight at shutdown; closing");
                    writer.abort();
                }
            }
            if matches!(ended, Ended::Shutdown) {
                debug!("closed for shutdown");
            }
            Ok(())
        }
        Err(e) => {
            // A broken frame: the stream cannot be trusted any more. Close now; request
            // tasks still running finish on their own and their replies are dropped.
            writer.abort();
            let _ = writer.await;
            Err(e)
        }
    }
}

/// The reading side of one connection in transmission.
struct Conn<'a, B: BlockBackend> {
    export: &'a Arc<Export<B>>,
    limits: Limits,
    /// One permit per request in flight.
    slots: Arc<Semaphore>,
    /// One permit per payload byte held.
    budget: Arc<Semaphore>,
    /// To the writer; every request task holds a clone until it has replied.
    tx: mpsc::UnboundedSender<Outgoing>,
    shutdown: &'a CancellationToken,
    writer_gone: &'a CancellationToken,
}

impl<B: BlockBackend> Conn<'_, B> {
    async fn read_requests<R: AsyncRead + Unpin>(
        &self,
        rd: &mut BufReader<R>,
    ) -> Result<Ended, ServeError> {
        let Conn {
            export,
            limits,
            slots,
            budget,
            tx,
            shutdown,
            writer_gone,
        } = self;
        let (shutdown, writer_gone) = (*shutdown, *writer_gone);
        let mut hdr = [0u8; REQUEST_HEADER_LEN];
        loop {
            let step = async {
                // Admission: a slot before reading, so at the bound nothing more is read.
                let slot = slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ServeError::Protocol("closed".into()))?;
                if !read_header(rd, &mut hdr).await? {
                    return Ok(None);
                }
                let h =
                    RequestHeader::decode(&hdr).map_err(|e| ServeError::Protocol(e.to_string()))?;
                Ok::<_, ServeError>(Some((slot, h)))
            };
            let (slot, h) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                _ = writer_gone.cancelled() => return Ok(Ended::WriterGone),
                r = step => match r? {
                    None => {
                        debug!("client closed the connection");
                        return Ok(Ended::Client);
                    }
                    Some(x) => x,
                },
            };
            let action = match judge(&h, limits) {
                // Logged with the export name by `serve_with`.
                Verdict::Fatal(why) => return Err(ServeError::Protocol(why)),
                Verdict::Refuse { errno, drain, why } => {
                    warn!(
                        export = %export.name, cookie = h.cookie, command = h.command, offset = h.offset,
                        length = h.length, %errno, why, "request refused"
                    );
                    if drain > 0 {
                        let skipped = tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                            r = discard(rd, u64::from(drain)) => r?,
                        };
                        if skipped != u64::from(drain) {
                            return Err(truncated("a write payload"));
                        }
                    }
                    let body = Body::Error {
                        errno,
                        message: why.to_string(),
                    };
                    let _ = tx.send(Outgoing {
                        cookie: h.cookie,
                        body,
                        _slot: slot,
                        _budget: None,
                    });
                    continue;
                }
                Verdict::Do(Action::Disconnect) => {
                    debug!("client sent NBD_CMD_DISC");
                    return Ok(Ended::Client);
                }
                Verdict::Do(action) => action,
            };
            let needs = match action {
                Action::Read { len, .. } | Action::Write { len, .. } => len,
                _ => 0,
            };
            let held = if needs > 0 {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                    p = budget.clone().acquire_many_owned(needs) => Some(p.map_err(|_| ServeError::Protocol("closed".into()))?),
                }
            } else {
                None
            };
            let payload = if let Action::Write { len, .. } = action {
                let mut data = vec![0u8; len as usize];
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                    r = read_exact(rd, &mut data, "a write payload") => r?,
                }
                Bytes::from(data)
            } else {
                Bytes::new()
            };
            let export = Arc::clone(export);
            let tx = tx.clone();
            tokio::spawn(async move {
                let body = run(&export, action, payload).await;
                let _ = tx.send(Outgoing {
                    cookie: h.cookie,
                    body,
                    _slot: slot,
                    _budget: held,
                });
            });
        }
    }
}

/// Carry out one request on the backend. A panicking backend future becomes EIO for
/// that request instead of a reply that never comes.
async fn run<B: BlockBackend>(export: &Export<B>, action: Action, payload: Bytes) -> Body {
    let backend = &*export.backend;
    let work = async {
        match action {
            Action::Read { offset, len: 0 } => Ok(Body::Data {
                offset,
                data: Bytes::new(),
            }),
            Action::Read { offset, len } => {
                let data = backend.read(offset, len).await?;
                if data.len() != len as usize {
                    return Err(BackendError::Io(io::Error::other(format!(
                        "backend returned {} bytes for a {len}-byte read",
                        data.len()
                    ))));
                }
                Ok(Body::Data { offset, data })
            }
            Action::Write { len: 0, .. } => Ok(Body::Done),
            Action::Write { offset, fua, .. } => backend
                .write(offset, payload, fua)
                .await
                .map(|()| Body::Done),
            Action::Flush => backend.flush().await.map(|()| Body::Done),
            Action::Trim { len: 0, .. } | Action::WriteZeroes { len: 0, .. } => Ok(Body::Done),
            Action::Trim { offset, len, fua } => {
                backend.trim(offset, u64::from(len)).await?;
                if fua {
                    backend.flush().await?;
                }
                Ok(Body::Done)
            }
            Action::WriteZeroes {
                offset,
                len,
                fua,
                may_trim,
            } => backend
                .write_zeroes(offset, u64::from(len), fua, may_trim)
                .await
                .map(|()| Body::Done),
            Action::BlockStatus {
                offset,
                len,
                req_one,
                context_id,
            } => {
                let extents = backend.extents(offset, u64::from(len.max(1))).await?;
                Ok(Body::BlockStatus {
                    context_id,
                    descriptors: block_status_descriptors(&extents, len, req_one),
                })
            }
            Action::Disconnect => Ok(Body::Done),
        }
    };
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            let errno = errno_of(&e);
            warn!(export = %export.name, ?action, %errno, error = %e, "backend error");
            Body::Error {
                errno,
                message: e.to_string(),
            }
        }
        Err(_) => {
            error!(export = %export.name, ?action, "backend panicked; answering EIO");
            Body::Error {
                errno: Errno::Io,
                message: "internal error".into(),
            }
        }
    }
}

/// The single writer: encodes replies as they arrive and sends whatever is ready in
/// one batch. Ends when every sender is gone (all requests answered) or on error.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    structured: bool,
    gone: CancellationToken,
) -> io::Result<()> {
    let result = async {
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut sent: Vec<Outgoing> = Vec::with_capacity(64);
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(msg) = next {
                encode_reply(&mut out, &msg, structured);
                if let Body::Data { data, .. } = &msg.body
                    && data.len() > COPY_MAX
                {
                    wr.write_all(&out).await?;
                    out.clear();
                    wr.write_all(data).await?;
                }
                sent.push(msg);
                if out.len() >= BATCH_MAX {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !out.is_empty() {
                wr.write_all(&out).await?;
                out.clear();
            }
            wr.flush().await?;
            // The replies are out: release their slots and budget.
            sent.clear();
        }
        wr.shutdown().await
    }
    .await;
    if result.is_err() {
        gone.cancel();
    }
    result
}

/// Encode a reply header (and small data) into `out`. Data longer than [`COPY_MAX`]
/// is left for the caller to write after `out`.
fn encode_reply(out: &mut BytesMut, msg: &Outgoing, structured: bool) {
    let cookie = msg.cookie;
    match &msg.body {
        Body::Done => put_simple_reply(out, cookie, 0),
        Body::Data { offset, data } => {
            if structured {
                if data.is_empty() {
                    put_none_chunk(out, cookie);
                } else {
                    // data.len() <= MAX_PAYLOAD, checked by `run`.
                    put_offset_data_header(out, cookie, *offset, data.len() as u32);
                }
            } else {
                put_simple_reply(out, cookie, 0);
            }
            if data.len() <= COPY_MAX {
                out.extend_from_slice(data);
            }
        }
        Body::Error { errno, message } => {
            if structured {
                put_error_chunk(out, cookie, *errno, message);
            } else {
                put_simple_reply(out, cookie, errno.code());
            }
        }
        Body::BlockStatus {
            context_id,
            descriptors,
        } => put_block_status_chunk(out, cookie, *context_id, descriptors),
    }
}
