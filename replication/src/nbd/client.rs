//! A small pipelined NBD client: fixed-newstyle handshake with `NBD_OPT_GO` (and
//! structured replies when the server has them), then read, write, flush, trim and
//! write-zeroes from any number of tasks over one connection.
//!
//! [`NbdClient`] is a cheap handle (clone it into tasks). Each request registers its
//! cookie, then hands one complete frame to a writer task — so a request future that
//! is dropped midway never leaves half a frame on the socket — and waits for the
//! reader task, which matches replies to requests by cookie, in whatever order the
//! server sends them.
//!
//! Used by crash tests ("every write the client saw acknowledged is there") and tools.
//!
//! Must never: report a write as done unless the server's reply for that cookie said
//! so; leave a caller waiting after the connection died (every pending request fails
//! with [`ClientError::Disconnected`]).

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::options::{Info, InfoRequest, OptionReplyHeader, decode_greeting, put_option};
use super::proto::*;

/// Errors seen by a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O error talking to the NBD server")]
    Io(#[from] io::Error),
    #[error("NBD protocol error: {0}")]
    Protocol(String),
    #[error("server refused option {option}: reply type {reply_type:#x}: {message}")]
    Refused {
        option: u32,
        reply_type: u32,
        message: String,
    },
    #[error("server answered {errno}: {message}")]
    Server { errno: Errno, message: String },
    #[error("connection closed: {0}")]
    Disconnected(String),
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
}

impl ClientError {
    /// The NBD error the server answered with, if that is what this is.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            ClientError::Server { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Export name; "" asks for the server's default export.
    pub export: String,
    /// Ask for structured replies (the client falls back to simple ones if refused).
    pub structured_replies: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            export: String::new(),
            structured_replies: true,
        }
    }
}

/// Longest option reply payload the client accepts during the handshake.
const MAX_OPTION_REPLY: u32 = 64 * 1024;
/// Longest structured chunk payload the client accepts (a full read plus headers;
/// block-status chunks of this client's requests are far smaller).
const MAX_CHUNK: u32 = MAX_PAYLOAD + 4096;
/// Data up to this size is copied into the writer's batch.
const COPY_MAX: usize = 32 * 1024;

type Answer = Result<Option<Bytes>, ClientError>;

/// A request waiting for its reply.
struct Pending {
    kind: Kind,
    /// The first error chunk of a structured reply (answered when DONE arrives).
    error: Option<ClientError>,
    tx: oneshot::Sender<Answer>,
}

enum Kind {
    Plain,
    Read {
        offset: u64,
        len: u32,
        buf: Option<BytesMut>,
        /// Bytes described by content chunks so far (they may not overlap).
        covered: u64,
    },
}

impl Pending {
    fn finish(self, answer: Answer) {
        let _ = self.tx.send(answer);
    }

    /// The answer once the final chunk arrived.
    fn done(mut self) {
        let answer = match (self.error.take(), &mut self.kind) {
            (Some(e), _) => Err(e),
            (None, Kind::Plain) => Ok(None),
            (None, Kind::Read { len, covered, .. }) if *covered != u64::from(*len) => {
                Err(ClientError::Protocol(format!(
                    "structured read reply described {covered} of {len} bytes"
                )))
            }
            (None, Kind::Read { len, buf, .. }) => Ok(Some(
                buf.take()
                    .map(BytesMut::freeze)
                    .unwrap_or_else(|| Bytes::from(vec![0u8; *len as usize])),
            )),
        };
        self.finish(answer);
    }
}

#[derive(Default)]
struct Table {
    pending: HashMap<u64, Pending>,
    /// Set once the connection is dead: why.
    closed: Option<String>,
}

struct Frame {
    header: [u8; REQUEST_HEADER_LEN],
    data: Bytes,
}

/// What the handles and the reader task share. The reader holds only this (not the
/// sender), so dropping every handle ends the writer, which closes the socket.
struct Shared {
    table: Mutex<Table>,
    structured: bool,
}

struct Inner {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Frame>,
    next_cookie: AtomicU64,
    size: u64,
    flags: u16,
}

/// A connected NBD client. Clone it to use it from several tasks at once.
#[derive(Clone)]
pub struct NbdClient {
    inner: Arc<Inner>,
}

impl NbdClient {
    /// Connect to a unix socket.
    pub async fn connect_unix(
        path: impl AsRef<Path>,
        config: &ClientConfig,
    ) -> Result<NbdClient, ClientError> {
        let s = tokio::net::UnixStream::connect(path).await?;
        NbdClient::connect(s, config).await
    }

    /// Connect over TCP (with `TCP_NODELAY`).
    pub async fn connect_tcp(
        addr: std::net::SocketAddr,
        config: &ClientConfig,
    ) -> Result<NbdClient, ClientError> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        NbdClient::connect(s, config).await
    }

    /// Handshake on an open stream and start the reader and writer tasks.
    pub async fn connect<S>(stream: S, config: &ClientConfig) -> Result<NbdClient, ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, mut wr) = tokio::io::split(stream);
        let mut rd = BufReader::with_capacity(128 * 1024, rd);
        let (size, flags, structured) = handshake(&mut rd, &mut wr, config).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::default()),
            structured,
        });
        let inner = Arc::new(Inner {
            shared: shared.clone(),
            tx,
            next_cookie: AtomicU64::new(1),
            size,
            flags,
        });
        tokio::spawn(write_frames(wr, rx));
        let reader_inner = shared;
        tokio::spawn(async move {
            let why = match read_replies(&mut rd, &reader_inner).await {
                Ok(()) => "server closed the connection".to_string(),
                Err(e) => e.to_string(),
            };
            debug!(why, "NBD client connection ended");
            let pending = {
                let mut t = reader_inner.table.lock().unwrap_or_else(|p| p.into_inner());
                t.closed = Some(why.clone());
                std::mem::take(&mut t.pending)
            };
            for (_, p) in pending {
                p.finish(Err(ClientError::Disconnected(why.clone())));
            }
        });
        Ok(NbdClient { inner })
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// Transmission flags the server advertised.
    pub fn transmission_flags(&self) -> u16 {
        self.inner.flags
    }

    /// Whether structured replies were negotiated.
    pub fn structured_replies(&self) -> bool {
        self.inner.shared.structured
    }

    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ClientError> {
        if len > MAX_PAYLOAD {
            return Err(ClientError::InvalidRequest(
                "read longer than the maximum payload",
            ));
        }
        let kind = Kind::Read {
            offset,
            len,
            buf: None,
            covered: 0,
        };
        let r = self
            .submit(CMD_READ, 0, offset, len, Bytes::new(), kind)
            .await?;
        Ok(r.unwrap_or_default())
    }

    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), ClientError> {
        let len = u32::try_from(data.len())
            .ok()
            .filter(|&l| l <= MAX_PAYLOAD)
            .ok_or(ClientError::InvalidRequest(
                "write longer than the maximum payload",
            ))?;
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        self.plain(CMD_WRITE, flags, offset, len, data).await
    }

    pub async fn flush(&self) -> Result<(), ClientError> {
        self.plain(CMD_FLUSH, 0, 0, 0, Bytes::new()).await
    }

    pub async fn trim(&self, offset: u64, len: u32) -> Result<(), ClientError> {
        self.plain(CMD_TRIM, 0, offset, len, Bytes::new()).await
    }

    /// Zero a range; `no_hole` asks the server to keep it allocated.
    pub async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        no_hole: bool,
        fua: bool,
    ) -> Result<(), ClientError> {
        let flags =
            (if no_hole { CMD_FLAG_NO_HOLE } else { 0 }) | (if fua { CMD_FLAG_FUA } else { 0 });
        self.plain(CMD_WRITE_ZEROES, flags, offset, len, Bytes::new())
            .await
    }

    /// Send `NBD_CMD_DISC`. Requests still pending fail with `Disconnected` when the
    /// server closes; the caller should wait for its replies first.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        let header = RequestHeader {
            flags: 0,
            command: CMD_DISC,
            cookie: 0,
            offset: 0,
            length: 0,
        }
        .encode();
        self.inner
            .tx
            .send(Frame {
                header,
                data: Bytes::new(),
            })
            .map_err(|_| ClientError::Disconnected("writer gone".into()))
    }

    async fn plain(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
        data: Bytes,
    ) -> Result<(), ClientError> {
        self.submit(command, flags, offset, len, data, Kind::Plain)
            .await
            .map(drop)
    }

    async fn submit(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        data: Bytes,
        kind: Kind,
    ) -> Answer {
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            kind,
            error: None,
            tx,
        };
        let cookie = self.inner.next_cookie.fetch_add(1, Ordering::Relaxed);
        {
            let mut t = self
                .inner
                .shared
                .table
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(why) = &t.closed {
                return Err(ClientError::Disconnected(why.clone()));
            }
            t.pending.insert(cookie, pending);
        }
        let header = RequestHeader {
            flags,
            command,
            cookie,
            offset,
            length,
        }
        .encode();
        if self.inner.tx.send(Frame { header, data }).is_err() {
            self.inner
                .shared
                .table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pending
                .remove(&cookie);
            return Err(ClientError::Disconnected("writer gone".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(ClientError::Disconnected("reply dropped".into())))
    }
}

async fn handshake<R, W>(
    rd: &mut R,
    wr: &mut W,
    config: &ClientConfig,
) -> Result<(u64, u16, bool), ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut g = [0u8; 18];
    rd.read_exact(&mut g).await?;
    let hflags = decode_greeting(&g).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(ClientError::Protocol(
            "server does not speak fixed newstyle".into(),
        ));
    }
    let cflags = FLAG_C_FIXED_NEWSTYLE
        | if hflags & FLAG_NO_ZEROES != 0 {
            FLAG_C_NO_ZEROES
        } else {
            0
        };
    wr.write_all(&cflags.to_be_bytes()).await?;

    let mut structured = false;
    if config.structured_replies {
        let mut out = Vec::new();
        put_option(&mut out, OPT_STRUCTURED_REPLY, &[]);
        wr.write_all(&out).await?;
        wr.flush().await?;
        let (h, _) = option_reply(rd, OPT_STRUCTURED_REPLY).await?;
        structured = h.reply_type == REP_ACK;
    }

    let go = InfoRequest {
        name: config.export.clone(),
        requests: vec![INFO_BLOCK_SIZE],
    }
    .encode();
    let mut out = Vec::new();
    put_option(&mut out, OPT_GO, &go);
    wr.write_all(&out).await?;
    wr.flush().await?;
    let mut export = None;
    loop {
        let (h, payload) = option_reply(rd, OPT_GO).await?;
        match h.reply_type {
            REP_INFO => {
                if let Ok(Info::Export { size, flags }) = Info::decode(&payload) {
                    export = Some((size, flags));
                }
            }
            REP_ACK => break,
            t if is_rep_error(t) => {
                return Err(ClientError::Refused {
                    option: OPT_GO,
                    reply_type: t,
                    message: String::from_utf8_lossy(&payload).into_owned(),
                });
            }
            t => {
                return Err(ClientError::Protocol(format!(
                    "unexpected reply type {t} to NBD_OPT_GO"
                )));
            }
        }
    }
    let (size, flags) = export.ok_or_else(|| {
        ClientError::Protocol("NBD_OPT_GO succeeded without NBD_INFO_EXPORT".into())
    })?;
    Ok((size, flags, structured))
}

async fn option_reply<R: AsyncRead + Unpin>(
    rd: &mut R,
    option: u32,
) -> Result<(OptionReplyHeader, Vec<u8>), ClientError> {
    let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
    rd.read_exact(&mut h).await?;
    let h = OptionReplyHeader::decode(&h).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if h.option != option {
        return Err(ClientError::Protocol(format!(
            "reply to option {} while waiting for {option}",
            h.option
        )));
    }
    if h.length > MAX_OPTION_REPLY {
        return Err(ClientError::Protocol(format!(
            "option reply of {} bytes",
            h.length
        )));
    }
    let mut payload = vec![0u8; h.length as usize];
    rd.read_exact(&mut payload).await?;
    Ok((h, payload))
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Frame>,
) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut disc = false;
        while let Some(f) = next {
            out.extend_from_slice(&f.header);
            disc |= f.header[6..8] == CMD_DISC.to_be_bytes();
            if f.data.len() <= COPY_MAX {
                out.extend_from_slice(&f.data);
            } else {
                wr.write_all(&out).await?;
                out.clear();
                wr.write_all(&f.data).await?;
            }
            if out.len() >= 256 * 1024 || disc {
                break;
            }
            next = rx.try_recv().ok();
        }
        wr.write_all(&out).await?;
        out.clear();
        wr.flush().await?;
        if disc {
            // Nothing may follow NBD_CMD_DISC.
            return wr.shutdown().await;
        }
    }
    wr.shutdown().await
}

fn take(inner: &Shared, cookie: u64) -> Result<Pending, ClientError> {
    inner
        .table
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pending
        .remove(&cookie)
        .ok_or_else(|| ClientError::Protocol(format!("reply for unknown cookie {cookie}")))
}

fn put_back(inner: &Shared, cookie: u64, p: Pending) {
    inner
        .table
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pending
        .insert(cookie, p);
}

/// Read replies until the connection ends. `Ok(())`: clean EOF between replies.
async fn read_replies<R: AsyncRead + Unpin>(rd: &mut R, inner: &Shared) -> Result<(), ClientError> {
    loop {
        let mut magic = [0u8; 4];
        match rd.read_exact(&mut magic).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let kind = ReplyKind::from_magic(u32::from_be_bytes(magic))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut rest = [0u8; 16];
        let rest = &mut rest[..kind.rest_len()];
        rd.read_exact(rest).await?;
        let header =
            ReplyHeader::decode(kind, rest).map_err(|e| ClientError::Protocol(e.to_string()))?;
        match header {
            ReplyHeader::Simple { error, cookie } => {
                let p = take(inner, cookie)?;
                if error != 0 {
                    p.finish(Err(ClientError::Server {
                        errno: Errno::from_code(error),
                        message: String::new(),
                    }));
                    continue;
                }
                match p.kind {
                    Kind::Read { len, .. } => {
                        if inner.structured {
                            return Err(ClientError::Protocol(
                                "simple reply to a read under structured replies".into(),
                            ));
                        }
                        let mut data = vec![0u8; len as usize];
                        rd.read_exact(&mut data).await?;
                        p.finish(Ok(Some(Bytes::from(data))));
                    }
                    Kind::Plain => p.finish(Ok(None)),
                }
            }
            ReplyHeader::Chunk {
                flags,
                reply_type,
                cookie,
                length,
            } => {
                if length > MAX_CHUNK {
                    return Err(ClientError::Protocol(format!("chunk of {length} bytes")));
                }
                let mut payload = vec![0u8; length as usize];
                rd.read_exact(&mut payload).await?;
                let mut p = take(inner, cookie)?;
                apply_chunk(&mut p, reply_type, &payload)?;
                if flags & REPLY_FLAG_DONE != 0 {
                    p.done();
                } else {
                    put_back(inner, cookie, p);
                }
            }
        }
    }
}

/// Fold one structured chunk into the pending request.
fn apply_chunk(p: &mut Pending, reply_type: u16, payload: &[u8]) -> Result<(), ClientError> {
    if reply_type & 0x8000 != 0 {
        let (errno, message) =
            decode_error_chunk(payload).map_err(|e| ClientError::Protocol(e.to_string()))?;
        p.error
            .get_or_insert(ClientError::Server { errno, message });
        return Ok(());
    }
    match (reply_type, &mut p.kind) {
        (REPLY_TYPE_NONE, _) => Ok(()),
        (
            REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE,
            Kind::Read {
                offset,
                len,
                buf,
                covered,
            },
        ) => {
            if payload.len() < 8 {
                return Err(ClientError::Protocol(
                    "content chunk shorter than 8 bytes".into(),
                ));
            }
            let at = be64(payload, 0);
            let n = if reply_type == REPLY_TYPE_OFFSET_DATA {
                (payload.len() - 8) as u64
            } else if payload.len() == 12 {
                u64::from(be32(payload, 8))
            } else {
                return Err(ClientError::Protocol("hole chunk is not 12 bytes".into()));
            };
            let rel = at
                .checked_sub(*offset)
                .filter(|r| r.checked_add(n).is_some_and(|end| end <= u64::from(*len)));
            let Some(rel) = rel else {
                return Err(ClientError::Protocol(
                    "content chunk outside the request".into(),
                ));
            };
            *covered += n;
            let buf = buf.get_or_insert_with(|| BytesMut::zeroed(*len as usize));
            if reply_type == REPLY_TYPE_OFFSET_DATA {
                buf[rel as usize..(rel + n) as usize].copy_from_slice(&payload[8..]);
            } else {
                buf[rel as usize..(rel + n) as usize].fill(0);
            }
            Ok(())
        }
        (t, _) => Err(ClientError::Protocol(format!("unexpected chunk type {t}"))),
    }
}
