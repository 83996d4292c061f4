//! The inter-site replication stream: one ordered TCP stream per consistency group,
//! carrying length-prefixed, versioned, checksummed frames (DESIGN §5).
//!
//! ```text
//!  0       4   5    6       8               16              24      28      32
//!  | magic | v | kind | flags |      seq      |     epoch     |  len  |  crc  | payload…
//! ```
//! Big-endian. `magic` = "MDRR", `v` = [`VERSION`], `seq` is the group sequence number
//! of data and barrier frames, `epoch` the sender's epoch (a replica refuses frames from
//! a lower epoch), `len` the payload length (at most [`MAX_PAYLOAD`]), `crc` a CRC-32C
//! over the first 28 header bytes and the payload. Pure: no I/O, never panics on input.
//!
//! Versions: 1 carried a refusal as free text; 2 carries it as a typed [`Refusal`]. A
//! frame of another version is refused (the secondary answers a hello of another
//! version with [`Refusal::Version`]). Any change to a frame's layout or to the set of
//! refusals bumps [`VERSION`] and the fixtures the tests pin it with.

mod refusal;

pub use refusal::Refusal;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ids::{Epoch, Generation, GroupSeq};
use serde::{Deserialize, Serialize};

pub const MAGIC: u32 = 0x4D44_5252;
/// The frame format this side speaks (pinned by a test).
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 32;
/// Largest data write (NBD's maximum request) plus its 10-byte prefix, and room for
/// checksum lists.
pub const MAX_PAYLOAD: usize = (32 << 20) + 64;

/// Frame flags.
pub const FLAG_FUA: u16 = 1;
/// A write that resynchronizes a region (counted separately; applied like any write).
pub const FLAG_RESYNC: u16 = 2;
/// A zero frame may deallocate.
pub const FLAG_TRIM: u16 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Hello = 1,
    HelloReply = 2,
    Write = 3,
    Zero = 4,
    Flush = 5,
    Ack = 6,
    FlushAck = 7,
    Ping = 8,
    Pong = 9,
    SumsRequest = 10,
    Sums = 11,
    ResyncDone = 12,
    Refused = 13,
}

impl Kind {
    fn from_u8(k: u8) -> Option<Kind> {
        Some(match k {
            1 => Kind::Hello,
            2 => Kind::HelloReply,
            3 => Kind::Write,
            4 => Kind::Zero,
            5 => Kind::Flush,
            6 => Kind::Ack,
            7 => Kind::FlushAck,
            8 => Kind::Ping,
            9 => Kind::Pong,
            10 => Kind::SumsRequest,
            11 => Kind::Sums,
            12 => Kind::ResyncDone,
            13 => Kind::Refused,
            _ => return None,
        })
    }
}

/// One volume of a consistency group, as the handshake describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: String,
    pub size: u64,
}

/// The primary's opening frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The consistency group (the app).
    pub group: String,
    pub volumes: Vec<VolumeInfo>,
    /// The primary's data generation (changes at promotion and when it continues
    /// without its peer), and the generations before it (oldest first).
    pub generation: Generation,
    #[serde(default)]
    pub history: Vec<Generation>,
    pub mode: String,
    /// The first sequence number the primary can still resend from its buffer.
    pub resend_from: GroupSeq,
}

/// The secondary's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The highest epoch this replica has seen (persisted).
    pub epoch: Epoch,
    pub generation: Generation,
    /// Generations this replica's data descends from (newest last).
    pub history: Vec<Generation>,
    /// Highest group sequence number written to this replica's files.
    pub last_seq: GroupSeq,
    /// Whether this replica's data is known to be a complete, consistent copy.
    pub consistent: bool,
    /// Regions (per volume) this replica may have written without its peer knowing:
    /// its activity log from when it was primary.
    pub own_regions: Vec<(u16, Vec<u32>)>,
}

/// The primary asks for checksums of regions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumsRequest {
    pub volume: u16,
    pub region_size: u32,
    pub regions: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncSummary {
    pub regions_compared: u64,
    pub regions_copied: u64,
    pub bytes_copied: u64,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    HelloReply(HelloReply),
    Write {
        volume: u16,
        offset: u64,
        data: Bytes,
        fua: bool,
        resync: bool,
    },
    Zero {
        volume: u16,
        offset: u64,
        len: u64,
        trim: bool,
    },
    /// Barrier: make everything up to this frame's seq durable.
    Flush,
    /// Everything up to `seq` is written to the replica's files.
    Ack,
    /// Everything up to `seq` is durable on the replica.
    FlushAck,
    Ping(u64),
    Pong(u64),
    SumsRequest(SumsRequest),
    Sums {
        volume: u16,
        region_size: u32,
        sums: Vec<(u32, u32)>,
    },
    ResyncDone(ResyncSummary),
    /// The secondary refuses the primary or its stream; it closes the connection after.
    Refused(Refusal),
}

impl Frame {
    /// The frame's kind, for messages (a frame's Debug would print its data).
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::HelloReply(_) => "hello reply",
            Frame::Write { .. } => "write",
            Frame::Zero { .. } => "zero",
            Frame::Flush => "flush",
            Frame::Ack => "ack",
            Frame::FlushAck => "flush ack",
            Frame::Ping(_) => "ping",
            Frame::Pong(_) => "pong",
            Frame::SumsRequest(_) => "checksum request",
            Frame::Sums { .. } => "checksums",
            Frame::ResyncDone(_) => "resync done",
            Frame::Refused(_) => "refusal",
        }
    }
}

/// A frame with its header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The group sequence number of a data or barrier frame (0 on other frames).
    pub seq: GroupSeq,
    pub epoch: Epoch,
    pub frame: Frame,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic {0:#010x} (not a metrodr replication stream)")]
    Magic(u32),
    #[error(
        "the peer speaks replication frame format {0}, this side speaks {VERSION}: run the same metrodr version on both sites"
    )]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLarge(u32),
    #[error("checksum mismatch (frame corrupted in transit)")]
    Checksum,
    #[error("malformed {kind} payload: {why}")]
    Payload { kind: &'static str, why: String },
}

fn payload_err(kind: &'static str, why: impl Into<String>) -> FrameError {
    FrameError::Payload {
        kind,
        why: why.into(),
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs and enums cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn from_json<'a, T: Deserialize<'a>>(kind: &'static str, b: &'a [u8]) -> Result<T, FrameError> {
    serde_json::from_slice(b).map_err(|e| payload_err(kind, e.to_string()))
}

/// Append the encoding of `env` to `out`.
pub fn encode(env: &Envelope, out: &mut BytesMut) {
    let (kind, flags, payload): (Kind, u16, Vec<Bytes>) = match &env.frame {
        Frame::Hello(h) => (Kind::Hello, 0, vec![Bytes::from(json(h))]),
        Frame::HelloReply(h) => (Kind::HelloReply, 0, vec![Bytes::from(json(h))]),
        Frame::Write {
            volume,
            offset,
            data,
            fua,
            resync,
        } => {
            let mut p = BytesMut::with_capacity(10);
            p.put_u16(*volume);
            p.put_u64(*offset);
            let flags = if *fua { FLAG_FUA } else { 0 } | if *resync { FLAG_RESYNC } else { 0 };
            (Kind::Write, flags, vec![p.freeze(), data.clone()])
        }
        Frame::Zero {
            volume,
            offset,
            len,
            trim,
        } => {
            let mut p = BytesMut::with_capacity(18);
            p.put_u16(*volume);
            p.put_u64(*offset);
            p.put_u64(*len);
            (
                Kind::Zero,
                if *trim { FLAG_TRIM } else { 0 },
                vec![p.freeze()],
            )
        }
        Frame::Flush => (Kind::Flush, 0, vec![]),
        Frame::Ack => (Kind::Ack, 0, vec![]),
        Frame::FlushAck => (Kind::FlushAck, 0, vec![]),
        Frame::Ping(n) => (
            Kind::Ping,
            0,
            vec![Bytes::copy_from_slice(&n.to_be_bytes())],
        ),
        Frame::Pong(n) => (
            Kind::Pong,
            0,
            vec![Bytes::copy_from_slice(&n.to_be_bytes())],
        ),
        Frame::SumsRequest(r) => (Kind::SumsRequest, 0, vec![Bytes::from(json(r))]),
        Frame::Sums {
            volume,
            region_size,
            sums,
        } => {
            let mut p = BytesMut::with_capacity(6 + sums.len() * 8);
            p.put_u16(*volume);
            p.put_u32(*region_size);
            for (r, c) in sums {
                p.put_u32(*r);
                p.put_u32(*c);
            }
            (Kind::Sums, 0, vec![p.freeze()])
        }
        Frame::ResyncDone(s) => (Kind::ResyncDone, 0, vec![Bytes::from(json(s))]),
        Frame::Refused(r) => (Kind::Refused, 0, vec![Bytes::from(json(r))]),
    };
    let len: usize = payload.iter().map(Bytes::len).sum();
    let start = out.len();
    out.reserve(HEADER_LEN + len);
    out.put_u32(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(kind as u8);
    out.put_u16(flags);
    out.put_u64(env.seq.0);
    out.put_u64(env.epoch.0);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    let mut crc = crc32c::crc32c(&out[start..start + 28]);
    for p in &payload {
        crc = crc32c::crc32c_append(crc, p);
    }
    out.put_u32(crc);
    for p in payload {
        out.put_slice(&p);
    }
}

/// Decode one frame from the front of `buf` when it is complete (None: need more).
/// Errors mean the stream is unusable: log the reason and close the connection.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Envelope>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let magic = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if magic != MAGIC {
        return Err(FrameError::Magic(magic));
    }
    if buf[4] != VERSION {
        return Err(FrameError::Version(buf[4]));
    }
    let kind = Kind::from_u8(buf[5]).ok_or(FrameError::Kind(buf[5]))?;
    let len = u32::from_be_bytes([buf[24], buf[25], buf[26], buf[27]]);
    if len as usize > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < HEADER_LEN + len as usize {
        buf.reserve(HEADER_LEN + len as usize - buf.len());
        return Ok(None);
    }
    let crc = u32::from_be_bytes([buf[28], buf[29], buf[30], buf[31]]);
    let computed = crc32c::crc32c_append(
        crc32c::crc32c(&buf[..28]),
        &buf[HEADER_LEN..HEADER_LEN + len as usize],
    );
    if crc != computed {
        return Err(FrameError::Checksum);
    }
    let mut head = buf.split_to(HEADER_LEN);
    head.advance(6);
    let flags = head.get_u16();
    let seq = GroupSeq(head.get_u64());
    let epoch = Epoch(head.get_u64());
    let mut p = buf.split_to(len as usize);
    let frame = match kind {
        Kind::Hello => Frame::Hello(from_json("hello", &p)?),
        Kind::HelloReply => Frame::HelloReply(from_json("hello reply", &p)?),
        Kind::Write => {
            if p.len() < 10 {
                return Err(payload_err("write", "shorter than its 10-byte prefix"));
            }
            let volume = p.get_u16();
            let offset = p.get_u64();
            Frame::Write {
                volume,
                offset,
                data: p.freeze(),
                fua: flags & FLAG_FUA != 0,
                resync: flags & FLAG_RESYNC != 0,
            }
        }
        Kind::Zero => {
            if p.len() != 18 {
                return Err(payload_err("zero", "not 18 bytes"));
            }
            Frame::Zero {
                volume: p.get_u16(),
                offset: p.get_u64(),
                len: p.get_u64(),
                trim: flags & FLAG_TRIM != 0,
            }
        }
        Kind::Flush => Frame::Flush,
        Kind::Ack => Frame::Ack,
        Kind::FlushAck => Frame::FlushAck,
        Kind::Ping | Kind::Pong => {
            if p.len() != 8 {
                return Err(payload_err("ping", "not 8 bytes"));
            }
            let n = p.get_u64();
            if kind == Kind::Ping {
                Frame::Ping(n)
            } else {
                Frame::Pong(n)
            }
        }
        Kind::SumsRequest => Frame::SumsRequest(from_json("checksum request", &p)?),
        Kind::Sums => {
            if p.len() < 6 || !(p.len() - 6).is_multiple_of(8) {
                return Err(payload_err("checksums", "length is not 6 + 8n"));
            }
            let volume = p.get_u16();
            let region_size = p.get_u32();
            let mut sums = Vec::with_capacity(p.len() / 8);
            while p.has_remaining() {
                sums.push((p.get_u32(), p.get_u32()));
            }
            Frame::Sums {
                volume,
                region_size,
                sums,
            }
        }
        Kind::ResyncDone => Frame::ResyncDone(from_json("resync done", &p)?),
        Kind::Refused => Frame::Refused(from_json("refusal", &p)?),
    };
    Ok(Some(Envelope { seq, epoch, frame }))
}

/// tokio-util codec over [`encode`] / [`decode`].
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = Envelope;
    type Error = CodecError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Envelope>, CodecError> {
        Ok(decode(src)?)
    }
}

impl tokio_util::codec::Encoder<Envelope> for FrameCodec {
    type Error = CodecError;
    fn encode(&mut self, item: Envelope, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode(&item, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
