//! Pure decisions of the transmission phase: what a request header asks for and
//! whether it is allowed ([`judge`]), how backend errors become NBD errors
//! ([`errno_of`]), and how backend extents become `base:allocation` descriptors
//! ([`block_status_descriptors`]).
//!
//! Must never: let a request through that reaches past the export's end or carries
//! more payload than [`MAX_PAYLOAD`]; treat a request it cannot frame (an oversized
//! write whose payload it will not read) as anything but fatal for the connection.

use crate::backend::{BackendError, Extent};

use super::proto::*;

/// What the transmission phase knows about the negotiated session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub size: u64,
    pub read_only: bool,
    pub structured_replies: bool,
    pub base_allocation: Option<u32>,
}

/// A request the server will carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read {
        offset: u64,
        len: u32,
    },
    /// `len` bytes of payload follow the header.
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        may_trim: bool,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
        context_id: u32,
    },
    Disconnect,
}

/// The server's answer to a request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Do(Action),
    /// Answer with this error. `drain` payload bytes follow the header and must be
    /// read and dropped first to stay aligned on frames.
    Refuse {
        errno: Errno,
        drain: u32,
        why: &'static str,
    },
    /// The connection cannot continue (the payload cannot be skipped safely).
    Fatal(String),
}

/// Flags each command accepts. FUA is valid on every command once advertised.
fn allowed_flags(command: u16, l: &Limits) -> u16 {
    CMD_FLAG_FUA
        | match command {
            CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE,
            CMD_READ if l.structured_replies => CMD_FLAG_DF,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            _ => 0,
        }
}

/// Judge one request header against the session.
pub fn judge(h: &RequestHeader, l: &Limits) -> Verdict {
    let drain = if h.command == CMD_WRITE { h.length } else { 0 };
    if h.command == CMD_WRITE && h.length > MAX_PAYLOAD {
        return Verdict::Fatal(format!(
            "write payload of {} bytes exceeds the {} byte maximum",
            h.length, MAX_PAYLOAD
        ));
    }
    let refuse = |errno, why| Verdict::Refuse { errno, drain, why };
    if h.command == CMD_DISC {
        return Verdict::Do(Action::Disconnect);
    }
    if h.flags & !allowed_flags(h.command, l) != 0 {
        return refuse(Errno::Inval, "command flag not valid for this command");
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    let in_bounds = h
        .offset
        .checked_add(u64::from(h.length))
        .is_some_and(|end| end <= l.size);
    let writes = matches!(h.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && l.read_only {
        return refuse(Errno::Perm, "export is read-only");
    }
    let (offset, len) = (h.offset, h.length);
    match h.command {
        CMD_READ => {
            if len > MAX_PAYLOAD {
                return refuse(Errno::Inval, "read longer than the maximum payload");
            }
            if !in_bounds {
                return refuse(Errno::Inval, "read beyond the end of the export");
            }
            Verdict::Do(Action::Read { offset, len })
        }
        CMD_WRITE => {
            if !in_bounds {
                return refuse(Errno::NoSpc, "write beyond the end of the export");
            }
            Verdict::Do(Action::Write { offset, len, fua })
        }
        CMD_FLUSH => Verdict::Do(Action::Flush),
        CMD_TRIM => {
            if !in_bounds {
                return refuse(Errno::Inval, "trim beyond the end of the export");
            }
            Verdict::Do(Action::Trim { offset, len, fua })
        }
        CMD_WRITE_ZEROES => {
            if !in_bounds {
                return refuse(Errno::NoSpc, "write zeroes beyond the end of the export");
            }
            let may_trim = h.flags & CMD_FLAG_NO_HOLE == 0;
            Verdict::Do(Action::WriteZeroes {
                offset,
                len,
                fua,
                may_trim,
            })
        }
        CMD_BLOCK_STATUS => {
            let Some(context_id) = l.base_allocation else {
                return refuse(
                    Errno::Inval,
                    "block status without a negotiated metadata context",
                );
            };
            if !in_bounds {
                return refuse(Errno::Inval, "block status beyond the end of the export");
            }
            Verdict::Do(Action::BlockStatus {
                offset,
                len,
                req_one: h.flags & CMD_FLAG_REQ_ONE != 0,
                context_id,
            })
        }
        _ => refuse(Errno::Inval, "unknown or unsupported command"),
    }
}

/// The NBD error for a backend error. `EDQUOT` and `EFBIG` count as no space, as the
/// protocol asks.
pub fn errno_of(e: &BackendError) -> Errno {
    match e {
        BackendError::Io(io) => match io.raw_os_error() {
            Some(28 | 122 | 27) => Errno::NoSpc, // ENOSPC, EDQUOT, EFBIG
            _ => Errno::Io,
        },
        BackendError::NoSpace => Errno::NoSpc,
        BackendError::NotPermitted(_) => Errno::Perm,
        BackendError::Invalid(_) => Errno::Inval,
        BackendError::NotSupported(_) => Errno::NotSup,
    }
}

/// Most descriptors in one block-status reply (the protocol's cap is 2^20; a smaller
/// one keeps replies small, and the client asks again from where the reply stopped).
pub const MAX_DESCRIPTORS: usize = 4096;

/// The largest descriptor length: u32, rounded down to a 4 KiB multiple so that
/// descriptors stay aligned.
const MAX_DESCRIPTOR_LEN: u64 = (u32::MAX as u64) & !4095;

/// Turn backend extents (from the request's offset) into `base:allocation`
/// descriptors: merges neighbours with equal flags, drops empty extents, splits
/// lengths that do not fit 32 bits, stops once the request is covered, and with
/// `req_one` returns exactly one descriptor no longer than the request. Never empty
/// for a nonzero `len`: with no usable extent it reports the range as data.
pub fn block_status_descriptors(extents: &[Extent], len: u32, req_one: bool) -> Vec<(u32, u32)> {
    let want = u64::from(len.max(1));
    let mut out: Vec<(u64, u32)> = Vec::new();
    let mut covered = 0u64;
    for e in extents.iter().filter(|e| e.length > 0) {
        if covered >= want {
            break;
        }
        let flags = (if e.hole { STATE_HOLE } else { 0 }) | (if e.zero { STATE_ZERO } else { 0 });
        match out.last_mut() {
            Some((l, f)) if *f == flags => *l += e.length,
            _ => out.push((e.length, flags)),
        }
        covered = covered.saturating_add(e.length);
    }
    if out.is_empty() {
        out.push((want, 0));
    }
    if req_one {
        out.truncate(1);
        out[0].0 = out[0].0.min(want);
    }
    // Every descriptor but the last must end before the request does.
    let mut descriptors = Vec::with_capacity(out.len().min(MAX_DESCRIPTORS));
    let mut emitted = 0u64;
    'emit: for (mut l, f) in out {
        while l > 0 {
            if emitted >= want || descriptors.len() >= MAX_DESCRIPTORS {
                break 'emit;
            }
            let piece = l.min(MAX_DESCRIPTOR_LEN);
            // piece <= MAX_DESCRIPTOR_LEN < 2^32
            descriptors.push((piece as u32, f));
            l -= piece;
            emitted += piece;
        }
    }
    descriptors
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        size: 1 << 20,
        read_only: false,
        structured_replies: false,
        base_allocation: None,
    };

    fn req(command: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            cookie: 1,
            offset,
            length,
        }
    }

    fn errno(v: Verdict) -> (Errno, u32) {
        match v {
            Verdict::Refuse { errno, drain, .. } => (errno, drain),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn ordinary_requests_pass() {
        assert_eq!(
            judge(&req(CMD_READ, 0, 0, 4096), &L),
            Verdict::Do(Action::Read {
                offset: 0,
                len: 4096
            })
        );
        assert_eq!(
            judge(&req(CMD_WRITE, CMD_FLAG_FUA, 4096, 512), &L),
            Verdict::Do(Action::Write {
                offset: 4096,
                len: 512,
                fua: true
            })
        );
        assert_eq!(
            judge(&req(CMD_FLUSH, 0, 0, 0), &L),
            Verdict::Do(Action::Flush)
        );
        assert_eq!(
            judge(&req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0, 1 << 20), &L),
            Verdict::Do(Action::WriteZeroes {
                offset: 0,
                len: 1 << 20,
                fua: false,
                may_trim: false
            })
        );
        assert_eq!(
            judge(&req(CMD_WRITE_ZEROES, 0, 0, 1), &L),
            Verdict::Do(Action::WriteZeroes {
                offset: 0,
                len: 1,
                fua: false,
                may_trim: true
            })
        );
        assert_eq!(
            judge(&req(CMD_TRIM, 0, 1, 1), &L),
            Verdict::Do(Action::Trim {
                offset: 1,
                len: 1,
                fua: false
            })
        );
        assert_eq!(
            judge(&req(CMD_DISC, 0, 0, 0), &L),
            Verdict::Do(Action::Disconnect)
        );
        // The last byte of the export.
        assert_eq!(
            judge(&req(CMD_READ, 0, (1 << 20) - 1, 1), &L),
            Verdict::Do(Action::Read {
                offset: (1 << 20) - 1,
                len: 1
            })
        );
    }

    #[test]
    fn out_of_bounds_requests_are_refused_with_the_protocols_errors() {
        assert_eq!(
            errno(judge(&req(CMD_READ, 0, 1 << 20, 1), &L)),
            (Errno::Inval, 0)
        );
        assert_eq!(
            errno(judge(&req(CMD_WRITE, 0, (1 << 20) - 1, 2), &L)),
            (Errno::NoSpc, 2)
        );
        assert_eq!(
            errno(judge(&req(CMD_TRIM, 0, u64::MAX, 2), &L)),
            (Errno::Inval, 0)
        );
        assert_eq!(
            errno(judge(&req(CMD_WRITE_ZEROES, 0, u64::MAX - 1, 4), &L)),
            (Errno::NoSpc, 0)
        );
        assert_eq!(
            errno(judge(&req(CMD_READ, 0, 0, MAX_PAYLOAD + 1), &L)),
            (Errno::Inval, 0)
        );
    }

    #[test]
    fn oversized_write_is_fatal() {
        assert!(matches!(
            judge(&req(CMD_WRITE, 0, 0, MAX_PAYLOAD + 1), &L),
            Verdict::Fatal(_)
        ));
        // Even when other things are also wrong: the payload cannot be skipped.
        let ro = Limits {
            read_only: true,
            ..L
        };
        assert!(matches!(
            judge(&req(CMD_WRITE, 0xff, u64::MAX, u32::MAX), &ro),
            Verdict::Fatal(_)
        ));
    }

    #[test]
    fn bad_flags_and_unknown_commands_are_einval() {
        assert_eq!(
            errno(judge(&req(CMD_READ, CMD_FLAG_NO_HOLE, 0, 1), &L)),
            (Errno::Inval, 0)
        );
        assert_eq!(
            errno(judge(&req(CMD_READ, CMD_FLAG_DF, 0, 1), &L)),
            (Errno::Inval, 0)
        );
        let sr = Limits {
            structured_replies: true,
            ..L
        };
        assert!(matches!(
            judge(&req(CMD_READ, CMD_FLAG_DF, 0, 1), &sr),
            Verdict::Do(_)
        ));
        assert_eq!(
            errno(judge(&req(CMD_WRITE, 0x100, 0, 8), &L)),
            (Errno::Inval, 8)
        );
        assert_eq!(
            errno(judge(&req(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 8), &L)),
            (Errno::Inval, 0)
        );
        assert_eq!(
            errno(judge(&req(CMD_CACHE, 0, 0, 8), &L)),
            (Errno::Inval, 0)
        );
        assert_eq!(errno(judge(&req(99, 0, 0, 8), &L)), (Errno::Inval, 0));
        // FUA is accepted everywhere.
        assert_eq!(
            judge(&req(CMD_FLUSH, CMD_FLAG_FUA, 0, 0), &L),
            Verdict::Do(Action::Flush)
        );
    }

    #[test]
    fn read_only_refuses_writes_with_eperm() {
        let ro = Limits {
            read_only: true,
            ..L
        };
        assert_eq!(
            errno(judge(&req(CMD_WRITE, 0, 0, 16), &ro)),
            (Errno::Perm, 16)
        );
        assert_eq!(
            errno(judge(&req(CMD_TRIM, 0, 0, 16), &ro)),
            (Errno::Perm, 0)
        );
        assert_eq!(
            errno(judge(&req(CMD_WRITE_ZEROES, 0, 0, 16), &ro)),
            (Errno::Perm, 0)
        );
        assert!(matches!(
            judge(&req(CMD_READ, 0, 0, 16), &ro),
            Verdict::Do(_)
        ));
    }

    #[test]
    fn block_status_needs_the_context() {
        assert_eq!(
            errno(judge(&req(CMD_BLOCK_STATUS, 0, 0, 16), &L)),
            (Errno::Inval, 0)
        );
        let ctx = Limits {
            structured_replies: true,
            base_allocation: Some(1),
            ..L
        };
        assert_eq!(
            judge(&req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 16), &ctx),
            Verdict::Do(Action::BlockStatus {
                offset: 0,
                len: 16,
                req_one: true,
                context_id: 1
            })
        );
    }

    #[test]
    fn backend_errors_map_to_nbd_errors() {
        use std::io::Error;
        assert_eq!(
            errno_of(&BackendError::Io(Error::from_raw_os_error(5))),
            Errno::Io
        );
        assert_eq!(
            errno_of(&BackendError::Io(Error::from_raw_os_error(28))),
            Errno::NoSpc
        );
        assert_eq!(
            errno_of(&BackendError::Io(Error::from_raw_os_error(122))),
            Errno::NoSpc
        );
        assert_eq!(errno_of(&BackendError::Io(Error::other("x"))), Errno::Io);
        assert_eq!(errno_of(&BackendError::NoSpace), Errno::NoSpc);
        assert_eq!(
            errno_of(&BackendError::NotPermitted("fenced".into())),
            Errno::Perm
        );
        assert_eq!(errno_of(&BackendError::Invalid("x".into())), Errno::Inval);
        assert_eq!(
            errno_of(&BackendError::NotSupported("x".into())),
            Errno::NotSup
        );
    }

    fn ext(length: u64, hole: bool) -> Extent {
        Extent {
            length,
            hole,
            zero: hole,
        }
    }

    #[test]
    fn descriptors_merge_and_stop_once_covered() {
        let e = [
            ext(4096, false),
            ext(4096, false),
            ext(8192, true),
            ext(4096, false),
            ext(4096, true),
        ];
        assert_eq!(
            block_status_descriptors(&e, 12288, false),
            [(8192, 0), (8192, 3)]
        );
        assert_eq!(
            block_status_descriptors(&e, 32768, false),
            [(8192, 0), (8192, 3), (4096, 0), (4096, 3)]
        );
    }

    #[test]
    fn req_one_gives_one_descriptor_within_the_request() {
        let e = [ext(1 << 20, true), ext(4096, false)];
        assert_eq!(block_status_descriptors(&e, 4096, true), [(4096, 3)]);
        assert_eq!(block_status_descriptors(&e, 8 << 20, true), [(1 << 20, 3)]);
    }

    #[test]
    fn empty_or_zero_length_extents_report_data() {
        assert_eq!(block_status_descriptors(&[], 512, false), [(512, 0)]);
        assert_eq!(
            block_status_descriptors(&[ext(0, true)], 512, true),
            [(512, 0)]
        );
        assert_eq!(block_status_descriptors(&[], 0, false), [(1, 0)]);
    }

    #[test]
    fn huge_extents_are_split_into_aligned_u32_pieces() {
        let d = block_status_descriptors(&[ext(1 << 40, true)], u32::MAX, false);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().all(|&(l, f)| l > 0 && l % 4096 == 0 && f == 3));
        // All but the last end before the request does.
        assert!(u64::from(d[0].0) < u64::from(u32::MAX));
    }

    #[test]
    fn descriptor_count_is_capped() {
        let many: Vec<Extent> = (0..10_000).map(|i| ext(512, i % 2 == 0)).collect();
        let d = block_status_descriptors(&many, u32::MAX, false);
        assert_eq!(d.len(), MAX_DESCRIPTORS);
    }
}
