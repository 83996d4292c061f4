//! NBD wire constants and the transmission-phase frames (requests, simple replies,
//! structured reply chunks), as pure encode/decode functions.
//!
//! Everything here is a function of bytes in, bytes or values out: no I/O, no
//! allocation beyond the output buffer the caller hands in. The constants are the
//! protocol's (doc/proto.md of the NBD project) and are pinned by tests, because a
//! changed magic or flag bit is a silent incompatibility with every client.
//!
//! Must never: panic on any input (decoders return [`FrameError`]), or guess at a
//! frame it does not understand.

use bytes::BufMut;

// --- Magic numbers -----------------------------------------------------------------

/// `NBDMAGIC`: first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation magic, also prefixes every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefixes every fixed-newstyle option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefixes every (compact) transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefixes an extended-header request (experimental; never negotiated here).
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Prefixes a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefixes a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// --- Handshake flags (server, 16 bits) and client flags (32 bits) ------------------

pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// --- Transmission flags (16 bits) ---------------------------------------------------

pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_RESIZE: u16 = 1 << 9;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// --- Options ------------------------------------------------------------------------

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_PEEK_EXPORT: u32 = 4;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// --- Option reply types -------------------------------------------------------------

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR + 1;
pub const REP_ERR_POLICY: u32 = REP_ERR + 2;
pub const REP_ERR_INVALID: u32 = REP_ERR + 3;
pub const REP_ERR_PLATFORM: u32 = REP_ERR + 4;
pub const REP_ERR_TLS_REQD: u32 = REP_ERR + 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR + 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR + 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_ERR + 8;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR + 9;
pub const REP_ERR_EXT_HEADER_REQD: u32 = REP_ERR + 10;

/// True for option reply types that end an option with an error.
pub fn is_rep_error(reply_type: u32) -> bool {
    reply_type & REP_ERR != 0
}

// --- NBD_INFO types -----------------------------------------------------------------

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// --- Commands, command flags --------------------------------------------------------

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// --- Structured replies -------------------------------------------------------------

pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) + 2;

/// `base:allocation` state bits.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// The one metadata context this server knows.
pub const BASE_ALLOCATION: &str = "base:allocation";

// --- Sizes and limits ---------------------------------------------------------------

pub const REQUEST_HEADER_LEN: usize = 28;
pub const SIMPLE_REPLY_LEN: usize = 16;
pub const STRUCTURED_HEADER_LEN: usize = 20;
pub const OPTION_HEADER_LEN: usize = 16;
pub const OPTION_REPLY_HEADER_LEN: usize = 20;

/// Advertised minimum block size: any byte is addressable (a file backend).
pub const MIN_BLOCK_SIZE: u32 = 1;
/// Advertised preferred block size: the page size, below which a file does
/// read-modify-write.
pub const PREFERRED_BLOCK_SIZE: u32 = 4096;
/// Advertised (and enforced) maximum payload of one READ or WRITE: 32 MiB, the size
/// every client must accept without calling it a denial of service.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Longest option data the server reads during the handshake (names, queries).
pub const MAX_OPTION_DATA: u32 = 64 * 1024;
/// Longest string (name, message) the protocol allows.
pub const MAX_STRING: usize = 4096;

/// NBD error values carried in replies. Values are the protocol's, not the host's
/// errno (they happen to match Linux's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    Perm,
    Io,
    NoMem,
    Inval,
    NoSpc,
    Overflow,
    NotSup,
    Shutdown,
    /// A value this implementation does not know (clients treat it as EINVAL).
    Other(u32),
}

impl Errno {
    pub fn code(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::NoMem => 12,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::Overflow => 75,
            Errno::NotSup => 95,
            Errno::Shutdown => 108,
            Errno::Other(c) => c,
        }
    }

    pub fn from_code(code: u32) -> Errno {
        match code {
            1 => Errno::Perm,
            5 => Errno::Io,
            12 => Errno::NoMem,
            22 => Errno::Inval,
            28 => Errno::NoSpc,
            75 => Errno::Overflow,
            95 => Errno::NotSup,
            108 => Errno::Shutdown,
            c => Errno::Other(c),
        }
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Errno::Perm => "EPERM",
            Errno::Io => "EIO",
            Errno::NoMem => "ENOMEM",
            Errno::Inval => "EINVAL",
            Errno::NoSpc => "ENOSPC",
            Errno::Overflow => "EOVERFLOW",
            Errno::NotSup => "ENOTSUP",
            Errno::Shutdown => "ESHUTDOWN",
            Errno::Other(c) => return write!(f, "NBD error {c}"),
        };
        f.write_str(name)
    }
}

/// A frame that cannot be decoded. Always fatal for the connection: the byte stream
/// can no longer be trusted to be aligned on frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad {what} magic {got:#x}")]
    BadMagic { what: &'static str, got: u64 },
    #[error("{what} is {got} bytes, at most {max} allowed")]
    TooLong {
        what: &'static str,
        got: u64,
        max: u64,
    },
    #[error("malformed {what}: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
}

// --- Requests -----------------------------------------------------------------------

/// A transmission-phase request header (28 bytes on the wire); for `CMD_WRITE`,
/// `length` bytes of payload follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl RequestHeader {
    pub fn decode(b: &[u8; REQUEST_HEADER_LEN]) -> Result<RequestHeader, FrameError> {
        let magic = be32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(FrameError::BadMagic {
                what: if magic == EXTENDED_REQUEST_MAGIC {
                    "request (extended headers were not negotiated)"
                } else {
                    "request"
                },
                got: u64::from(magic),
            });
        }
        Ok(RequestHeader {
            flags: be16(b, 4),
            command: be16(b, 6),
            cookie: be64(b, 8),
            offset: be64(b, 16),
            length: be32(b, 24),
        })
    }

    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

// --- Replies (server side: encoders) ------------------------------------------------

/// Append a simple reply header; for a successful `CMD_READ` the data follows it.
pub fn put_simple_reply(out: &mut impl BufMut, cookie: u64, error: u32) {
    out.put_u32(SIMPLE_REPLY_MAGIC);
    out.put_u32(error);
    out.put_u64(cookie);
}

/// Append a structured reply chunk header whose payload is `length` bytes.
pub fn put_chunk_header(
    out: &mut impl BufMut,
    flags: u16,
    reply_type: u16,
    cookie: u64,
    length: u32,
) {
    out.put_u32(STRUCTURED_REPLY_MAGIC);
    out.put_u16(flags);
    out.put_u16(reply_type);
    out.put_u64(cookie);
    out.put_u32(length);
}

/// Append the header of a final `OFFSET_DATA` chunk; `data_len` bytes of data
/// (at least 1) must follow.
pub fn put_offset_data_header(out: &mut impl BufMut, cookie: u64, offset: u64, data_len: u32) {
    put_chunk_header(
        out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        data_len.saturating_add(8),
    );
    out.put_u64(offset);
}

/// Append a final `NBD_REPLY_TYPE_NONE` chunk (success with no payload).
pub fn put_none_chunk(out: &mut impl BufMut, cookie: u64) {
    put_chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
}

/// Append a final `NBD_REPLY_TYPE_ERROR` chunk. The message is cut to a valid UTF-8
/// prefix of at most [`MAX_STRING`] bytes.
pub fn put_error_chunk(out: &mut impl BufMut, cookie: u64, error: Errno, message: &str) {
    let msg = truncate_str(message, MAX_STRING);
    // 4 + 2 + at most 4096: fits u32 and u16.
    let msg_len = msg.len() as u16;
    put_chunk_header(
        out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + u32::from(msg_len),
    );
    out.put_u32(nonzero_error(error));
    out.put_u16(msg_len);
    out.put_slice(msg.as_bytes());
}

/// Append a final `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for one context.
/// `descriptors` are (length, flags) pairs, each length nonzero.
pub fn put_block_status_chunk(
    out: &mut impl BufMut,
    cookie: u64,
    context_id: u32,
    descriptors: &[(u32, u32)],
) {
    let len = 4 + 8 * descriptors.len();
    // Callers bound the descriptor count far below u32::MAX / 8.
    put_chunk_header(
        out,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        u32::try_from(len).unwrap_or(u32::MAX),
    );
    out.put_u32(context_id);
    for &(length, flags) in descriptors {
        out.put_u32(length);
        out.put_u32(flags);
    }
}

fn nonzero_error(e: Errno) -> u32 {
    match e.code() {
        0 => Errno::Io.code(),
        c => c,
    }
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a char boundary.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// --- Replies (client side: decoders) ------------------------------------------------

/// What the 4-byte magic at the start of a reply says follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// 12 more header bytes (error, cookie).
    Simple,
    /// 16 more header bytes (flags, type, cookie, length).
    Structured,
}

impl ReplyKind {
    pub fn from_magic(magic: u32) -> Result<ReplyKind, FrameError> {
        match magic {
            SIMPLE_REPLY_MAGIC => Ok(ReplyKind::Simple),
            STRUCTURED_REPLY_MAGIC => Ok(ReplyKind::Structured),
            m => Err(FrameError::BadMagic {
                what: "reply",
                got: u64::from(m),
            }),
        }
    }

    /// Header bytes after the magic.
    pub fn rest_len(self) -> usize {
        match self {
            ReplyKind::Simple => SIMPLE_REPLY_LEN - 4,
            ReplyKind::Structured => STRUCTURED_HEADER_LEN - 4,
        }
    }
}

/// A decoded reply header (the magic already consumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    Simple {
        error: u32,
        cookie: u64,
    },
    Chunk {
        flags: u16,
        reply_type: u16,
        cookie: u64,
        length: u32,
    },
}

impl ReplyHeader {
    /// Decode the bytes after the magic; `rest.len()` must be `kind.rest_len()`.
    pub fn decode(kind: ReplyKind, rest: &[u8]) -> Result<ReplyHeader, FrameError> {
        if rest.len() != kind.rest_len() {
            return Err(FrameError::Malformed {
                what: "reply header",
                why: "wrong length",
            });
        }
        Ok(match kind {
            ReplyKind::Simple => ReplyHeader::Simple {
                error: be32(rest, 0),
                cookie: be64(rest, 4),
            },
            ReplyKind::Structured => ReplyHeader::Chunk {
                flags: be16(rest, 0),
                reply_type: be16(rest, 2),
                cookie: be64(rest, 4),
                length: be32(rest, 12),
            },
        })
    }

    pub fn cookie(&self) -> u64 {
        match *self {
            ReplyHeader::Simple { cookie, .. } | ReplyHeader::Chunk { cookie, .. } => cookie,
        }
    }
}

/// The error and message of an error chunk payload (`ERROR` or `ERROR_OFFSET`).
pub fn decode_error_chunk(payload: &[u8]) -> Result<(Errno, String), FrameError> {
    if payload.len() < 6 {
        return Err(FrameError::Malformed {
            what: "error chunk",
            why: "shorter than 6 bytes",
        });
    }
    let code = be32(payload, 0);
    let msg_len = usize::from(be16(payload, 4));
    let msg = payload.get(6..6 + msg_len).ok_or(FrameError::Malformed {
        what: "error chunk",
        why: "message longer than chunk",
    })?;
    Ok((
        Errno::from_code(code),
        String::from_utf8_lossy(msg).into_owned(),
    ))
}

// --- Big-endian helpers (callers guarantee the slice is long enough) ---------------

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(a)
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The protocol's numbers. A change here breaks every client: it must be deliberate.
    #[test]
    fn constants_are_pinned() {
        assert_eq!(&NBD_MAGIC.to_be_bytes(), b"NBDMAGIC");
        assert_eq!(&IHAVEOPT.to_be_bytes(), b"IHAVEOPT");
        assert_eq!(OPTION_REPLY_MAGIC, 0x3e889045565a9);
        assert_eq!(REQUEST_MAGIC, 0x25609513);
        assert_eq!(SIMPLE_REPLY_MAGIC, 0x67446698);
        assert_eq!(STRUCTURED_REPLY_MAGIC, 0x668e33ef);
        assert_eq!(EXTENDED_REQUEST_MAGIC, 0x21e41c71);
        assert_eq!((FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES), (1, 2));
        assert_eq!((FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES), (1, 2));
        assert_eq!(
            [
                TFLAG_HAS_FLAGS,
                TFLAG_READ_ONLY,
                TFLAG_SEND_FLUSH,
                TFLAG_SEND_FUA,
                TFLAG_ROTATIONAL,
                TFLAG_SEND_TRIM,
                TFLAG_SEND_WRITE_ZEROES,
                TFLAG_SEND_DF,
                TFLAG_CAN_MULTI_CONN,
                TFLAG_SEND_RESIZE,
                TFLAG_SEND_CACHE,
                TFLAG_SEND_FAST_ZERO
            ],
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
        );
        assert_eq!(
            [
                OPT_EXPORT_NAME,
                OPT_ABORT,
                OPT_LIST,
                OPT_PEEK_EXPORT,
                OPT_STARTTLS,
                OPT_INFO,
                OPT_GO,
                OPT_STRUCTURED_REPLY,
                OPT_LIST_META_CONTEXT,
                OPT_SET_META_CONTEXT,
                OPT_EXTENDED_HEADERS
            ],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
        );
        assert_eq!(
            [REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT],
            [1, 2, 3, 4]
        );
        assert_eq!(REP_ERR_UNSUP, 0x8000_0001);
        assert_eq!(REP_ERR_POLICY, 0x8000_0002);
        assert_eq!(REP_ERR_INVALID, 0x8000_0003);
        assert_eq!(REP_ERR_PLATFORM, 0x8000_0004);
        assert_eq!(REP_ERR_TLS_REQD, 0x8000_0005);
        assert_eq!(REP_ERR_UNKNOWN, 0x8000_0006);
        assert_eq!(REP_ERR_SHUTDOWN, 0x8000_0007);
        assert_eq!(REP_ERR_BLOCK_SIZE_REQD, 0x8000_0008);
        assert_eq!(REP_ERR_TOO_BIG, 0x8000_0009);
        assert_eq!(REP_ERR_EXT_HEADER_REQD, 0x8000_000a);
        assert_eq!(
            [INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
            [0, 1, 2, 3]
        );
        assert_eq!(
            [
                CMD_READ,
                CMD_WRITE,
                CMD_DISC,
                CMD_FLUSH,
                CMD_TRIM,
                CMD_CACHE,
                CMD_WRITE_ZEROES,
                CMD_BLOCK_STATUS
            ],
            [0, 1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(
            [
                CMD_FLAG_FUA,
                CMD_FLAG_NO_HOLE,
                CMD_FLAG_DF,
                CMD_FLAG_REQ_ONE,
                CMD_FLAG_FAST_ZERO
            ],
            [1, 2, 4, 8, 16]
        );
        assert_eq!(REPLY_FLAG_DONE, 1);
        assert_eq!(
            [
                REPLY_TYPE_NONE,
                REPLY_TYPE_OFFSET_DATA,
                REPLY_TYPE_OFFSET_HOLE,
                REPLY_TYPE_BLOCK_STATUS
            ],
            [0, 1, 2, 5]
        );
        assert_eq!((REPLY_TYPE_ERROR, REPLY_TYPE_ERROR_OFFSET), (32769, 32770));
        assert_eq!((STATE_HOLE, STATE_ZERO), (1, 2));
        assert_eq!(MAX_PAYLOAD, 33_554_432);
    }

    #[test]
    fn errno_values_round_trip() {
        let all = [
            (Errno::Perm, 1),
            (Errno::Io, 5),
            (Errno::NoMem, 12),
            (Errno::Inval, 22),
            (Errno::NoSpc, 28),
            (Errno::Overflow, 75),
            (Errno::NotSup, 95),
            (Errno::Shutdown, 108),
            (Errno::Other(7), 7),
        ];
        for (e, code) in all {
            assert_eq!(e.code(), code);
            assert_eq!(Errno::from_code(code), e);
        }
        assert_eq!(Errno::NoSpc.to_string(), "ENOSPC");
    }

    #[test]
    fn request_header_bytes_are_pinned() {
        let h = RequestHeader {
            flags: CMD_FLAG_FUA,
            command: CMD_WRITE,
            cookie: 0x0102030405060708,
            offset: 0x1000,
            length: 512,
        };
        let b = h.encode();
        assert_eq!(
            b,
            [
                0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0x10,
                0, 0, 0, 2, 0
            ]
        );
        assert_eq!(RequestHeader::decode(&b).unwrap(), h);
    }

    #[test]
    fn bad_request_magic_is_an_error_not_a_panic() {
        let mut b = [0xffu8; REQUEST_HEADER_LEN];
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(FrameError::BadMagic {
                what: "request",
                ..
            })
        ));
        b[0..4].copy_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        let err = RequestHeader::decode(&b).unwrap_err();
        assert!(err.to_string().contains("extended headers"), "{err}");
    }

    #[test]
    fn simple_reply_round_trips() {
        let mut out = Vec::new();
        put_simple_reply(&mut out, 42, Errno::NoSpc.code());
        assert_eq!(out.len(), SIMPLE_REPLY_LEN);
        assert_eq!(out[0..4], SIMPLE_REPLY_MAGIC.to_be_bytes());
        let kind = ReplyKind::from_magic(be32(&out, 0)).unwrap();
        assert_eq!(kind, ReplyKind::Simple);
        let h = ReplyHeader::decode(kind, &out[4..]).unwrap();
        assert_eq!(
            h,
            ReplyHeader::Simple {
                error: 28,
                cookie: 42
            }
        );
        assert_eq!(h.cookie(), 42);
    }

    #[test]
    fn offset_data_chunk_layout() {
        let mut out = Vec::new();
        put_offset_data_header(&mut out, 7, 4096, 512);
        assert_eq!(out.len(), STRUCTURED_HEADER_LEN + 8);
        let h = ReplyHeader::decode(ReplyKind::from_magic(be32(&out, 0)).unwrap(), &out[4..20])
            .unwrap();
        assert_eq!(
            h,
            ReplyHeader::Chunk {
                flags: REPLY_FLAG_DONE,
                reply_type: REPLY_TYPE_OFFSET_DATA,
                cookie: 7,
                length: 520
            }
        );
        assert_eq!(be64(&out, 20), 4096);
    }

    #[test]
    fn none_chunk_layout() {
        let mut out = Vec::new();
        put_none_chunk(&mut out, 9);
        assert_eq!(
            out,
            [
                0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn error_chunk_round_trips_and_truncates() {
        let mut out = Vec::new();
        put_error_chunk(&mut out, 3, Errno::Io, "disk on fire");
        let h = ReplyHeader::decode(ReplyKind::Structured, &out[4..20]).unwrap();
        let ReplyHeader::Chunk {
            reply_type, length, ..
        } = h
        else {
            panic!("not a chunk")
        };
        assert_eq!(reply_type, REPLY_TYPE_ERROR);
        assert_eq!(length as usize, out.len() - 20);
        assert_eq!(
            decode_error_chunk(&out[20..]).unwrap(),
            (Errno::Io, "disk on fire".to_string())
        );

        let long = "é".repeat(3000); // 6000 bytes, 2-byte chars
        let mut out = Vec::new();
        put_error_chunk(&mut out, 3, Errno::Inval, &long);
        let (_, msg) = decode_error_chunk(&out[20..]).unwrap();
        assert!(msg.len() <= MAX_STRING && msg.len() >= MAX_STRING - 1);
        assert!(msg.chars().all(|c| c == 'é'));
    }

    #[test]
    fn error_chunk_never_carries_zero() {
        let mut out = Vec::new();
        put_error_chunk(&mut out, 1, Errno::Other(0), "");
        assert_eq!(be32(&out, 20), Errno::Io.code());
    }

    #[test]
    fn malformed_error_chunks_are_errors() {
        assert!(decode_error_chunk(&[0, 0, 0, 5, 0]).is_err());
        assert!(decode_error_chunk(&[0, 0, 0, 5, 0, 10, b'a']).is_err());
    }

    #[test]
    fn block_status_chunk_layout() {
        let mut out = Vec::new();
        put_block_status_chunk(
            &mut out,
            5,
            1,
            &[(4096, 0), (8192, STATE_HOLE | STATE_ZERO)],
        );
        assert_eq!(out.len(), 20 + 4 + 16);
        assert_eq!(be16(&out, 6), REPLY_TYPE_BLOCK_STATUS);
        assert_eq!(be32(&out, 16), 20);
        assert_eq!(be32(&out, 20), 1);
        assert_eq!((be32(&out, 24), be32(&out, 28)), (4096, 0));
        assert_eq!((be32(&out, 32), be32(&out, 36)), (8192, 3));
    }

    #[test]
    fn unknown_reply_magic_is_an_error() {
        assert!(ReplyKind::from_magic(0xdeadbeef).is_err());
        assert!(ReplyHeader::decode(ReplyKind::Simple, &[0; 3]).is_err());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate_str("abc", 10), "abc");
        assert_eq!(truncate_str("aé", 2), "a");
        assert_eq!(truncate_str("", 0), "");
    }
}
