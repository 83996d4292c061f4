//! NBD handshake frames: the server greeting, option headers, option replies and the
//! payloads of `NBD_OPT_GO`/`INFO` and the metadata-context options, as pure
//! encode/decode functions shared by the server and the client.
//!
//! Must never: panic on client bytes, or accept a string that is not UTF-8 or is longer
//! than the protocol's 4096-byte limit (decoders return [`OptionDataError`], which the
//! server answers with `NBD_REP_ERR_INVALID`).

use bytes::BufMut;

use super::proto::{
    FrameError, IHAVEOPT, INFO_BLOCK_SIZE, INFO_DESCRIPTION, INFO_EXPORT, INFO_NAME, MAX_STRING,
    NBD_MAGIC, OPTION_HEADER_LEN, OPTION_REPLY_HEADER_LEN, OPTION_REPLY_MAGIC, be16, be32, be64,
};

/// Length of the server greeting: `NBDMAGIC`, `IHAVEOPT`, 16-bit handshake flags.
pub const GREETING_LEN: usize = 18;

pub fn encode_greeting(handshake_flags: u16) -> [u8; GREETING_LEN] {
    let mut b = [0u8; GREETING_LEN];
    b[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    b
}

/// Decode the greeting; returns the handshake flags.
pub fn decode_greeting(b: &[u8; GREETING_LEN]) -> Result<u16, FrameError> {
    let magic = be64(b, 0);
    if magic != NBD_MAGIC {
        return Err(FrameError::BadMagic {
            what: "server greeting",
            got: magic,
        });
    }
    let opt = be64(b, 8);
    if opt != IHAVEOPT {
        // Oldstyle servers send cliserv_magic here; this client does not speak it.
        return Err(FrameError::BadMagic {
            what: "newstyle",
            got: opt,
        });
    }
    Ok(be16(b, 16))
}

/// An option request header (`IHAVEOPT`, option, data length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    pub fn decode(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, FrameError> {
        let magic = be64(b, 0);
        if magic != IHAVEOPT {
            return Err(FrameError::BadMagic {
                what: "option",
                got: magic,
            });
        }
        Ok(OptionHeader {
            option: be32(b, 8),
            length: be32(b, 12),
        })
    }
}

/// Append an option request (client side).
pub fn put_option(out: &mut impl BufMut, option: u32, data: &[u8]) {
    out.put_u64(IHAVEOPT);
    out.put_u32(option);
    out.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
    out.put_slice(data);
}

/// An option reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply_type: u32,
    pub length: u32,
}

impl OptionReplyHeader {
    pub fn decode(b: &[u8; OPTION_REPLY_HEADER_LEN]) -> Result<OptionReplyHeader, FrameError> {
        let magic = be64(b, 0);
        if magic != OPTION_REPLY_MAGIC {
            return Err(FrameError::BadMagic {
                what: "option reply",
                got: magic,
            });
        }
        Ok(OptionReplyHeader {
            option: be32(b, 8),
            reply_type: be32(b, 12),
            length: be32(b, 16),
        })
    }
}

/// Append an option reply with its payload.
pub fn put_option_reply(out: &mut impl BufMut, option: u32, reply_type: u32, payload: &[u8]) {
    out.put_u64(OPTION_REPLY_MAGIC);
    out.put_u32(option);
    out.put_u32(reply_type);
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124 zero bytes
/// unless the client negotiated `NO_ZEROES`.
pub fn encode_export_name_reply(size: u64, transmission_flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + 124);
    out.put_u64(size);
    out.put_u16(transmission_flags);
    if !no_zeroes {
        out.put_bytes(0, 124);
    }
    out
}

/// Why option data could not be decoded (answered with `NBD_REP_ERR_INVALID`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed option data: {0}")]
pub struct OptionDataError(pub &'static str);

/// A cursor over option data that refuses to read past the end.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Cursor { data, at: 0 }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], OptionDataError> {
        let end = self.at.checked_add(n).ok_or(OptionDataError(what))?;
        let s = self.data.get(self.at..end).ok_or(OptionDataError(what))?;
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, OptionDataError> {
        Ok(be16(self.take(2, what)?, 0))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, OptionDataError> {
        Ok(be32(self.take(4, what)?, 0))
    }

    fn string(&mut self, len: u32, what: &'static str) -> Result<String, OptionDataError> {
        let len = usize::try_from(len).map_err(|_| OptionDataError(what))?;
        if len > MAX_STRING {
            return Err(OptionDataError("string longer than 4096 bytes"));
        }
        let raw = self.take(len, what)?;
        let s = std::str::from_utf8(raw).map_err(|_| OptionDataError("string is not UTF-8"))?;
        if s.contains('\0') {
            return Err(OptionDataError("string contains NUL"));
        }
        Ok(s.to_owned())
    }

    fn finish(&self) -> Result<(), OptionDataError> {
        if self.at == self.data.len() {
            Ok(())
        } else {
            Err(OptionDataError("trailing bytes"))
        }
    }
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

impl InfoRequest {
    pub fn decode(data: &[u8]) -> Result<InfoRequest, OptionDataError> {
        let mut c = Cursor::new(data);
        let name_len = c.u32("export name length")?;
        let name = c.string(name_len, "export name")?;
        let n = c.u16("information request count")?;
        let mut requests = Vec::with_capacity(usize::from(n).min(16));
        for _ in 0..n {
            requests.push(c.u16("information request")?);
        }
        c.finish()?;
        Ok(InfoRequest { name, requests })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.name.len() + 2 * self.requests.len());
        out.put_u32(u32::try_from(self.name.len()).unwrap_or(u32::MAX));
        out.put_slice(self.name.as_bytes());
        out.put_u16(u16::try_from(self.requests.len()).unwrap_or(u16::MAX));
        for r in &self.requests {
            out.put_u16(*r);
        }
        out
    }
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub name: String,
    pub queries: Vec<String>,
}

impl MetaContextRequest {
    pub fn decode(data: &[u8]) -> Result<MetaContextRequest, OptionDataError> {
        let mut c = Cursor::new(data);
        let name_len = c.u32("export name length")?;
        let name = c.string(name_len, "export name")?;
        let n = c.u32("query count")?;
        // Each query takes at least 4 bytes, so a count the data cannot hold is a lie.
        if u64::from(n) * 4 > data.len() as u64 {
            return Err(OptionDataError("query count larger than the data"));
        }
        let mut queries = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let len = c.u32("query length")?;
            queries.push(c.string(len, "query")?);
        }
        c.finish()?;
        Ok(MetaContextRequest { name, queries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_u32(u32::try_from(self.name.len()).unwrap_or(u32::MAX));
        out.put_slice(self.name.as_bytes());
        out.put_u32(u32::try_from(self.queries.len()).unwrap_or(u32::MAX));
        for q in &self.queries {
            out.put_u32(u32::try_from(q.len()).unwrap_or(u32::MAX));
            out.put_slice(q.as_bytes());
        }
        out
    }
}

/// One `NBD_REP_INFO` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    Export {
        size: u64,
        flags: u16,
    },
    Name(String),
    Description(String),
    BlockSize {
        min: u32,
        preferred: u32,
        max: u32,
    },
    /// An information type this side does not know (the client ignores it).
    Unknown(u16),
}

impl Info {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        match self {
            Info::Export { size, flags } => {
                out.put_u16(INFO_EXPORT);
                out.put_u64(*size);
                out.put_u16(*flags);
            }
            Info::Name(s) => {
                out.put_u16(INFO_NAME);
                out.put_slice(super::proto::truncate_str(s, MAX_STRING).as_bytes());
            }
            Info::Description(s) => {
                out.put_u16(INFO_DESCRIPTION);
                out.put_slice(super::proto::truncate_str(s, MAX_STRING).as_bytes());
            }
            Info::BlockSize {
                min,
                preferred,
                max,
            } => {
                out.put_u16(INFO_BLOCK_SIZE);
                out.put_u32(*min);
                out.put_u32(*preferred);
                out.put_u32(*max);
            }
            Info::Unknown(t) => out.put_u16(*t),
        }
        out
    }

    pub fn decode(payload: &[u8]) -> Result<Info, OptionDataError> {
        let mut c = Cursor::new(payload);
        let t = c.u16("information type")?;
        let info = match t {
            INFO_EXPORT => {
                let size = be64(c.take(8, "export size")?, 0);
                let flags = c.u16("transmission flags")?;
                Info::Export { size, flags }
            }
            INFO_NAME | INFO_DESCRIPTION => {
                let rest =
                    u32::try_from(payload.len() - 2).map_err(|_| OptionDataError("string"))?;
                let s = c.string(rest, "string")?;
                if t == INFO_NAME {
                    Info::Name(s)
                } else {
                    Info::Description(s)
                }
            }
            INFO_BLOCK_SIZE => Info::BlockSize {
                min: c.u32("minimum block size")?,
                preferred: c.u32("preferred block size")?,
                max: c.u32("maximum payload")?,
            },
            other => return Ok(Info::Unknown(other)),
        };
        c.finish()?;
        Ok(info)
    }
}

/// The payload of `NBD_REP_SERVER`: the name, then a description for humans.
pub fn encode_rep_server(name: &str, description: &str) -> Vec<u8> {
    let name = super::proto::truncate_str(name, MAX_STRING);
    let description = super::proto::truncate_str(description, MAX_STRING);
    let mut out = Vec::with_capacity(4 + name.len() + description.len());
    out.put_u32(name.len() as u32);
    out.put_slice(name.as_bytes());
    out.put_slice(description.as_bytes());
    out
}

pub fn decode_rep_server(payload: &[u8]) -> Result<(String, String), OptionDataError> {
    let mut c = Cursor::new(payload);
    let len = c.u32("name length")?;
    let name = c.string(len, "name")?;
    let rest = &payload[c.at..];
    Ok((name, String::from_utf8_lossy(rest).into_owned()))
}

/// The payload of `NBD_REP_META_CONTEXT`: id, then the context name.
pub fn encode_rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.put_u32(id);
    out.put_slice(name.as_bytes());
    out
}

pub fn decode_rep_meta_context(payload: &[u8]) -> Result<(u32, String), OptionDataError> {
    let mut c = Cursor::new(payload);
    let id = c.u32("context id")?;
    let rest = u32::try_from(payload.len() - 4).map_err(|_| OptionDataError("context name"))?;
    Ok((id, c.string(rest, "context name")?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::nbd::proto::*;

    #[test]
    fn greeting_bytes_are_pinned() {
        let g = encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(g[16..], [0, 3]);
        assert_eq!(decode_greeting(&g).unwrap(), 3);
        let mut old = g;
        old[8..16].copy_from_slice(&0x00420281861253u64.to_be_bytes());
        assert!(decode_greeting(&old).is_err());
    }

    #[test]
    fn option_header_round_trips() {
        let mut out = Vec::new();
        put_option(&mut out, OPT_GO, b"abc");
        assert_eq!(out.len(), OPTION_HEADER_LEN + 3);
        let h = OptionHeader::decode(out[..16].try_into().unwrap()).unwrap();
        assert_eq!(
            h,
            OptionHeader {
                option: OPT_GO,
                length: 3
            }
        );
        out[0] ^= 1;
        assert!(OptionHeader::decode(out[..16].try_into().unwrap()).is_err());
    }

    #[test]
    fn option_reply_bytes_are_pinned() {
        let mut out = Vec::new();
        put_option_reply(&mut out, OPT_LIST, REP_ACK, &[]);
        assert_eq!(
            out,
            [
                0, 3, 0xe8, 0x89, 4, 0x55, 0x65, 0xa9, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0
            ]
        );
        let h = OptionReplyHeader::decode(out[..20].try_into().unwrap()).unwrap();
        assert_eq!(
            h,
            OptionReplyHeader {
                option: OPT_LIST,
                reply_type: REP_ACK,
                length: 0
            }
        );
        assert!(is_rep_error(REP_ERR_UNSUP) && !is_rep_error(REP_ACK));
    }

    #[test]
    fn export_name_reply_zeroes() {
        assert_eq!(encode_export_name_reply(1, 1, true).len(), 10);
        let r = encode_export_name_reply(1 << 30, 0x10d, false);
        assert_eq!(r.len(), 134);
        assert_eq!(be64(&r, 0), 1 << 30);
        assert_eq!(be16(&r, 8), 0x10d);
        assert!(r[10..].iter().all(|&b| b == 0));
    }

    #[test]
    fn info_request_round_trips() {
        let r = InfoRequest {
            name: "vol-1".into(),
            requests: vec![INFO_BLOCK_SIZE, INFO_NAME],
        };
        let bytes = r.encode();
        assert_eq!(bytes.len(), 4 + 5 + 2 + 4);
        assert_eq!(InfoRequest::decode(&bytes).unwrap(), r);
        let empty = InfoRequest {
            name: String::new(),
            requests: vec![],
        };
        assert_eq!(InfoRequest::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn info_request_rejects_lies() {
        // Name length beyond the data.
        assert!(InfoRequest::decode(&[0, 0, 0, 9, b'a', 0, 0]).is_err());
        // Request count beyond the data.
        assert!(InfoRequest::decode(&[0, 0, 0, 0, 0, 2, 0, 3]).is_err());
        // Trailing bytes.
        assert!(InfoRequest::decode(&[0, 0, 0, 0, 0, 0, 1]).is_err());
        // Not UTF-8, NUL inside.
        assert!(InfoRequest::decode(&[0, 0, 0, 1, 0xff, 0, 0]).is_err());
        assert!(InfoRequest::decode(&[0, 0, 0, 1, 0, 0, 0]).is_err());
        // Too short for anything; huge name length.
        assert!(InfoRequest::decode(&[]).is_err());
        assert!(InfoRequest::decode(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());
    }

    #[test]
    fn meta_context_request_round_trips_and_rejects_lies() {
        let r = MetaContextRequest {
            name: "".into(),
            queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:x".into()],
        };
        assert_eq!(MetaContextRequest::decode(&r.encode()).unwrap(), r);
        let mut bad = r.encode();
        bad.truncate(bad.len() - 1);
        assert!(MetaContextRequest::decode(&bad).is_err());
        // A count of 2^32-1 queries in 8 bytes must not allocate for them.
        assert!(MetaContextRequest::decode(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn info_payloads_round_trip() {
        for info in [
            Info::Export {
                size: 1 << 40,
                flags: 0x1ed,
            },
            Info::Name("n".into()),
            Info::Description("a disk".into()),
            Info::Description(String::new()),
            Info::BlockSize {
                min: 1,
                preferred: 4096,
                max: MAX_PAYLOAD,
            },
            Info::Unknown(77),
        ] {
            assert_eq!(Info::decode(&info.encode()).unwrap(), info);
        }
        assert_eq!(Info::Export { size: 0, flags: 0 }.encode().len(), 12);
        assert_eq!(
            Info::BlockSize {
                min: 1,
                preferred: 1,
                max: 1
            }
            .encode()
            .len(),
            14
        );
        assert!(Info::decode(&[0, 0, 1]).is_err());
    }

    #[test]
    fn rep_server_and_meta_context_round_trip() {
        let p = encode_rep_server("vol", "a volume");
        assert_eq!(
            decode_rep_server(&p).unwrap(),
            ("vol".to_string(), "a volume".to_string())
        );
        let p = encode_rep_meta_context(1, BASE_ALLOCATION);
        assert_eq!(
            decode_rep_meta_context(&p).unwrap(),
            (1, BASE_ALLOCATION.to_string())
        );
        assert!(decode_rep_server(&[0, 0, 0, 5, b'a']).is_err());
    }
}
