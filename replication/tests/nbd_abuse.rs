//! Protocol abuse against a live server over raw unix sockets: every malformed or
//! hostile input gets the right reaction (an error reply, or closing that one
//! connection), nothing panics, and a fresh connection is still served. Ends with
//! property tests that throw arbitrary bytes at the handshake and at the
//! transmission phase.
#![allow(clippy::unwrap_used)]

mod nbd_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nbd_support::*;
use proptest::prelude::*;
use replication::backend::{BackendError, BlockBackend};
use replication::nbd::options::{InfoRequest, MetaContextRequest};
use replication::nbd::proto::*;
use replication::nbd::{Export, ExportSet, FileBackend, ServerConfig};

const SIZE: u64 = 1 << 20;

fn server() -> TestServer {
    TestServer::file(SIZE)
}

#[test]
fn garbage_instead_of_client_flags_closes() {
    let srv = server();
    let mut r = Raw::connect(&srv.sock);
    r.send_lossy(&pseudo_random(1, 1000));
    assert!(r.closed_by_server());
    assert_serves(&srv.sock, "");
    srv.stop();
}

#[test]
fn garbage_instead_of_an_option_closes() {
    let srv = server();
    let mut r = Raw::connect(&srv.sock);
    r.send(&3u32.to_be_bytes());
    r.send_lossy(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.closed_by_server());
    assert_serves(&srv.sock, "");
    srv.stop();
}

#[test]
fn unknown_option_and_starttls_get_unsup_and_the_handshake_goes_on() {
    let srv = server();
    let mut r = Raw::connect(&srv.sock);
    r.send(&3u32.to_be_bytes());
    for opt in [99, OPT_STARTTLS, OPT_EXTENDED_HEADERS] {
        r.option(opt, &[]);
        let (o, t, msg) = r.option_reply();
        assert_eq!(
            (o, t),
            (opt, REP_ERR_UNSUP),
            "{}",
            String::from_utf8_lossy(&msg)
        );
    }
    r.option(OPT_LIST, &[]);
    assert_eq!(r.option_reply().1, REP_SERVER);
    assert_eq!(r.option_reply().1, REP_ACK);
    r.option(
        OPT_GO,
        &InfoRequest {
            name: "nope".into(),
            requests: vec![],
        }
        .encode(),
    );
    assert_eq!(r.option_reply().1, REP_ERR_UNKNOWN);
    r.option(OPT_GO, &[0, 0, 0, 200, 1]);
    assert_eq!(r.option_reply().1, REP_ERR_INVALID);
    r.option(
        OPT_SET_META_CONTEXT,
        &MetaContextRequest {
            name: "".into(),
            queries: vec![],
        }
        .encode(),
    );
    assert_eq!(
        r.option_reply().1,
        REP_ERR_INVALID,
        "meta context before structured replies"
    );
    r.option(OPT_ABORT, &[]);
    assert_eq!(r.option_reply().1, REP_ACK);
    assert!(r.closed_by_server());
    assert_serves(&srv.sock, "vol");
    srv.stop();
}

#[test]
fn oversized_option_data_is_too_big_or_closes() {
    let srv = server();
    let mut r = Raw::connect(&srv.sock);
    r.send(&3u32.to_be_bytes());
    r.option(OPT_GO, &vec![0u8; 100 * 1024]);
    assert_eq!(r.option_reply().1, REP_ERR_TOO_BIG);
    // Still negotiating: a second, absurd length closes.
    let mut out = Vec::new();
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&OPT_GO.to_be_bytes());
    out.extend_from_slice(&u32::MAX.to_be_bytes());
    r.send(&out);
    assert!(r.closed_by_server());
    assert_serves(&srv.sock, "");
    srv.stop();
}

#[test]
fn export_name_for_an_unknown_export_closes_and_a_known_one_works() {
    let srv = server();
    let mut r = Raw::connect(&srv.sock);
    r.send(&1u32.to_be_bytes()); // fixed newstyle, no NO_ZEROES: 124 zero bytes follow
    r.option(OPT_EXPORT_NAME, b"missing");
    assert!(r.closed_by_server());

    let mut r = Raw::connect(&srv.sock);
    r.send(&1u32.to_be_bytes());
    r.option(OPT_EXPORT_NAME, b"");
    let reply = r.read_n(8 + 2 + 124);
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), SIZE);
    assert!(reply[10..].iter().all(|&b| b == 0));
    r.request(CMD_READ, 0, 9, 0, 512);
    assert_eq!(r.simple_reply(), (0, 9));
    r.read_n(512);
    srv.stop();
}

#[test]
fn truncated_request_header_closes() {
    let srv = server();
    let (mut r, _, _) = Raw::go(&srv.sock, "", false);
    r.send(
        &RequestHeader {
            flags: 0,
            command: CMD_READ,
            cookie: 1,
            offset: 0,
            length: 512,
        }
        .encode()[..10],
    );
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(r.closed_by_server());
    assert_serves(&srv.sock, "");
    srv.stop();
}

#[test]
fn bad_request_magic_and_garbage_after_go_close() {
    let srv = server();
    let (mut r, _, _) = Raw::go(&srv.sock, "", false);
    let mut h = RequestHeader {
        flags: 0,
        command: CMD_READ,
        cookie: 1,
        offset: 0,
        length: 512,
    }
    .encode();
    h[0] ^= 0xff;
    r.send(&h);
    assert!(r.closed_by_server());

    let (mut r, _, _) = Raw::go(&srv.sock, "", true);
    r.send_lossy(&pseudo_random(5, 4096));
    assert!(r.closed_by_server());
    assert_serves(&srv.sock, "");
    srv.stop();
}

#[test]
fn out_of_range_and_invalid_requests_get_error_replies_and_the_connection_lives() {
    let srv = server();
    let (mut r, size, _) = Raw::go(&srv.sock, "", false);
    assert_eq!(size, SIZE);
    // Read past the end: EINVAL, no payload.
    r.request(CMD_READ, 0, 1, SIZE - 100, 512);
    assert_eq!(r.simple_reply(), (Errno::Inval.code(), 1));
    // Offset + length overflowing u64.
    r.request(CMD_READ, 0, 2, u64::MAX - 10, 512);
    assert_eq!(r.simple_reply(), (Errno::Inval.code(), 2));
    // Write past the end: ENOSPC, and its payload is skipped to stay in frame.
    r.request(CMD_WRITE, 0, 3, SIZE, 4096);
    r.send(&[0xee; 4096]);
    assert_eq!(r.simple_reply(), (Errno::NoSpc.code(), 3));
    // Unknown command, unknown flag, block status without a context, CACHE.
    r.request(77, 0, 4, 0, 0);
    assert_eq!(r.simple_reply(), (Errno::Inval.code(), 4));
    r.request(CMD_READ, 0x4000, 5, 0, 512);
    assert_eq!(r.simple_reply(), (Errno::Inval.code(), 5));
    r.request(CMD_BLOCK_STATUS, 0, 6, 0, 512);
    assert_eq!(r.simple_reply(), (Errno::Inval.code(), 6));
    // A read longer than the maximum payload.
    r.request(CMD_READ, 0, 7, 0, MAX_PAYLOAD + 1);
    assert_eq!(r.simple_reply(), (Errno::Inval.code(), 7));
    // Zero-length requests are fine.
    r.request(CMD_WRITE, 0, 8, 0, 0);
    assert_eq!(r.simple_reply(), (0, 8));
    r.request(CMD_READ, 0, 9, 0, 0);
    assert_eq!(r.simple_reply(), (0, 9));
    // And the connection still does real work.
    r.request(CMD_WRITE, 0, 10, 0, 4);
    r.send(b"abcd");
    assert_eq!(r.simple_reply(), (0, 10));
    r.request(CMD_READ, 0, 11, 0, 4);
    assert_eq!(r.simple_reply(), (0, 11));
    assert_eq!(r.read_n(4), b"abcd");
    srv.stop();
}

#[test]
fn structured_errors_carry_a_message_and_block_status_works() {
    let srv = server();
    let (mut r, _, _) = {
        let mut r = Raw::connect(&srv.sock);
        r.send(&3u32.to_be_bytes());
        r.option(OPT_STRUCTURED_REPLY, &[]);
        assert_eq!(r.option_reply().1, REP_ACK);
        let q = MetaContextRequest {
            name: "".into(),
            queries: vec![BASE_ALLOCATION.into()],
        };
        r.option(OPT_SET_META_CONTEXT, &q.encode());
        let (_, t, payload) = r.option_reply();
        assert_eq!(t, REP_META_CONTEXT);
        assert_eq!(&payload[4..], BASE_ALLOCATION.as_bytes());
        assert_eq!(r.option_reply().1, REP_ACK);
        r.option(
            OPT_GO,
            &InfoRequest {
                name: "".into(),
                requests: vec![],
            }
            .encode(),
        );
        while r.option_reply().1 != REP_ACK {}
        (r, (), ())
    };
    r.request(CMD_READ, 0, 1, SIZE, 1);
    let (flags, t, cookie, payload) = r.chunk();
    assert_eq!((flags, t, cookie), (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 1));
    let (errno, msg) = decode_error_chunk(&payload).unwrap();
    assert_eq!(errno, Errno::Inval);
    assert!(msg.contains("beyond the end"), "{msg}");

    r.request(CMD_WRITE, 0, 2, 8192, 4096);
    r.send(&[1; 4096]);
    assert_eq!(r.simple_reply(), (0, 2));
    r.request(CMD_BLOCK_STATUS, 0, 3, 0, SIZE as u32);
    let (flags, t, cookie, payload) = r.chunk();
    assert_eq!(
        (flags, t, cookie),
        (REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, 3)
    );
    let descriptors: Vec<(u32, u32)> = payload[4..]
        .chunks(8)
        .map(|c| {
            (
                u32::from_be_bytes(c[..4].try_into().unwrap()),
                u32::from_be_bytes(c[4..].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        descriptors,
        [
            (8192, STATE_HOLE | STATE_ZERO),
            (4096, 0),
            (SIZE as u32 - 12288, STATE_HOLE | STATE_ZERO)
        ]
    );
    r.request(CMD_READ, CMD_FLAG_DF, 4, 8192, 4096);
    let (flags, t, cookie, payload) = r.chunk();
    assert_eq!(
        (flags, t, cookie),
        (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 4)
    );
    assert_eq!(u64::from_be_bytes(payload[..8].try_into().unwrap()), 8192);
    assert!(payload[8..].iter().all(|&b| b == 1));
    srv.stop();
}

#[test]
fn oversized_write_closes() {
    let srv = server();
    let (mut r, _, _) = Raw::go(&srv.sock, "", false);
    r.request(CMD_WRITE, 0, 1, 0, MAX_PAYLOAD + 1);
    r.send_lossy(&[0; 4096]);
    assert!(r.closed_by_server());
    assert_serves(&srv.sock, "");
    srv.stop();
}

#[test]
fn disc_answers_requests_already_received_then_closes() {
    let srv = server();
    let (mut r, _, _) = Raw::go(&srv.sock, "", false);
    let mut burst = Vec::new();
    for i in 0..8u64 {
        burst.extend_from_slice(
            &RequestHeader {
                flags: 0,
                command: CMD_WRITE,
                cookie: i,
                offset: i * 4096,
                length: 4096,
            }
            .encode(),
        );
        burst.extend_from_slice(&[i as u8; 4096]);
    }
    burst.extend_from_slice(
        &RequestHeader {
            flags: 0,
            command: CMD_DISC,
            cookie: 99,
            offset: 0,
            length: 0,
        }
        .encode(),
    );
    r.send(&burst);
    let mut cookies: Vec<u64> = (0..8)
        .map(|_| r.simple_reply())
        .map(|(e, c)| {
            assert_eq!(e, 0);
            c
        })
        .collect();
    cookies.sort();
    assert_eq!(cookies, (0..8).collect::<Vec<_>>());
    assert!(r.closed_by_server());
    let data = std::fs::read(srv.image()).unwrap();
    for i in 0..8usize {
        assert!(data[i * 4096..(i + 1) * 4096].iter().all(|&b| b == i as u8));
    }
    srv.stop();
}

/// A backend that fails every call with the error its offset selects.
struct Failing;

fn failure(offset: u64) -> BackendError {
    match offset / 4096 {
        0 => BackendError::Io(std::io::Error::other("disk gone")),
        1 => BackendError::NoSpace,
        2 => BackendError::NotPermitted("fenced: epoch 7 < 8".into()),
        3 => BackendError::Invalid("no".into()),
        _ => BackendError::NotSupported("no".into()),
    }
}

impl BlockBackend for Failing {
    fn size(&self) -> u64 {
        SIZE
    }
    async fn read(&self, offset: u64, _len: u32) -> Result<Bytes, BackendError> {
        if offset >= 5 * 4096 {
            panic!("a backend bug");
        }
        Err(failure(offset))
    }
    async fn write(&self, offset: u64, _data: Bytes, _fua: bool) -> Result<(), BackendError> {
        Err(failure(offset))
    }
    async fn flush(&self) -> Result<(), BackendError> {
        Err(failure(0))
    }
    async fn trim(&self, offset: u64, _len: u64) -> Result<(), BackendError> {
        Err(failure(offset))
    }
    async fn write_zeroes(
        &self,
        offset: u64,
        _len: u64,
        _fua: bool,
        _may_trim: bool,
    ) -> Result<(), BackendError> {
        Err(failure(offset))
    }
}

#[test]
fn backend_errors_become_nbd_errors_and_panics_become_eio() {
    let srv = TestServer::start(|_| {
        ExportSet::single(Export {
            name: "f".into(),
            description: String::new(),
            backend: Arc::new(Failing),
            multi_conn: false,
        })
        .unwrap()
    });
    let (mut r, _, flags) = Raw::go(&srv.sock, "", false);
    assert_eq!(flags & TFLAG_CAN_MULTI_CONN, 0);
    let want = [
        Errno::Io,
        Errno::NoSpc,
        Errno::Perm,
        Errno::Inval,
        Errno::NotSup,
    ];
    for (i, e) in want.iter().enumerate() {
        let off = i as u64 * 4096;
        r.request(CMD_WRITE, 0, 10 + i as u64, off, 1);
        r.send(&[0]);
        assert_eq!(r.simple_reply(), (e.code(), 10 + i as u64));
        r.request(CMD_READ, 0, 20 + i as u64, off, 1);
        assert_eq!(r.simple_reply(), (e.code(), 20 + i as u64));
        r.request(CMD_TRIM, CMD_FLAG_FUA, 30 + i as u64, off, 1);
        assert_eq!(r.simple_reply(), (e.code(), 30 + i as u64));
        r.request(CMD_WRITE_ZEROES, 0, 40 + i as u64, off, 1);
        assert_eq!(r.simple_reply(), (e.code(), 40 + i as u64));
    }
    r.request(CMD_FLUSH, 0, 50, 0, 0);
    assert_eq!(r.simple_reply(), (Errno::Io.code(), 50));
    // A panicking backend future is answered with EIO; the connection carries on.
    r.request(CMD_READ, 0, 60, 8 * 4096, 1);
    assert_eq!(r.simple_reply(), (Errno::Io.code(), 60));
    r.request(CMD_READ, 0, 61, 0, 1);
    assert_eq!(r.simple_reply(), (Errno::Io.code(), 61));
    srv.stop();
}

#[test]
fn other_exports_and_connections_survive_a_bad_one() {
    let srv = TestServer::start(|dir| {
        let a = FileBackend::create(dir.join("a.raw"), SIZE).unwrap();
        let b = FileBackend::create(dir.join("b.raw"), SIZE).unwrap();
        ExportSet::new(vec![
            Export {
                name: "a".into(),
                description: String::new(),
                backend: Arc::new(a),
                multi_conn: true,
            },
            Export {
                name: "b".into(),
                description: String::new(),
                backend: Arc::new(b),
                multi_conn: true,
            },
        ])
        .unwrap()
    });
    let (mut good, _, _) = Raw::go(&srv.sock, "b", false);
    let (mut bad, _, _) = Raw::go(&srv.sock, "a", false);
    bad.send_lossy(&[0xff; 64]);
    assert!(bad.closed_by_server());
    good.request(CMD_WRITE, 0, 1, 0, 3);
    good.send(b"xyz");
    assert_eq!(good.simple_reply(), (0, 1));
    assert_serves(&srv.sock, "a");
    assert!(srv.stats.failed() >= 1);
    srv.stop();
}

#[test]
fn a_stalled_handshake_times_out() {
    let config = ServerConfig {
        handshake_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let srv = TestServer::start_with(config, |dir| {
        let a = FileBackend::create(dir.join("a.raw"), SIZE).unwrap();
        ExportSet::single(Export {
            name: "a".into(),
            description: String::new(),
            backend: Arc::new(a),
            multi_conn: true,
        })
        .unwrap()
    });
    let mut r = Raw::connect(&srv.sock);
    assert!(r.closed_by_server());
    assert_serves(&srv.sock, "");
    srv.stop();
}

// --- Property tests -----------------------------------------------------------------

/// One piece of hostile transmission traffic.
#[derive(Debug, Clone)]
enum Piece {
    Bytes(Vec<u8>),
    Request {
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: u16,
    },
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Piece::Bytes),
        (
            0u16..10,
            prop_oneof![
                Just(0u16),
                Just(CMD_FLAG_FUA),
                Just(CMD_FLAG_NO_HOLE),
                any::<u16>()
            ],
            prop_oneof![0u64..SIZE, Just(SIZE), any::<u64>()],
            prop_oneof![0u32..8192, Just(MAX_PAYLOAD), any::<u32>()],
            0u16..8192,
        )
            .prop_map(|(command, flags, offset, length, payload)| Piece::Request {
                command,
                flags,
                offset,
                length,
                payload
            }),
    ]
}

fn encode(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        match p {
            Piece::Bytes(b) => out.extend_from_slice(b),
            Piece::Request {
                command,
                flags,
                offset,
                length,
                payload,
            } => {
                out.extend_from_slice(
                    &RequestHeader {
                        flags: *flags,
                        command: *command,
                        cookie: i as u64,
                        offset: *offset,
                        length: *length,
                    }
                    .encode(),
                );
                out.extend(std::iter::repeat_n(0x5a, usize::from(*payload)));
            }
        }
    }
    out
}

/// Cases per fuzz property: 48 in CI, `PROPTEST_CASES=N` for a longer run.
fn fuzz_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(48), ..ProptestConfig::default() })]

    /// Arbitrary bytes after the greeting: the server answers or closes, and once
    /// the client stops sending, it closes; a fresh client is still served.
    #[test]
    fn arbitrary_handshake_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), flags_ok in any::<bool>()) {
        let srv = server();
        let mut r = Raw::connect(&srv.sock);
        if flags_ok {
            r.send(&3u32.to_be_bytes());
        }
        r.send_lossy(&bytes);
        let _ = r.s.shutdown(std::net::Shutdown::Write);
        prop_assert!(r.closed_by_server());
        assert_serves(&srv.sock, "");
        prop_assert_eq!(srv.stats.panicked(), 0);
        srv.stop();
    }

    /// Arbitrary requests and bytes on a live connection (simple or structured).
    #[test]
    fn arbitrary_transmission_traffic(pieces in proptest::collection::vec(piece(), 0..24), structured in any::<bool>()) {
        let srv = server();
        let (mut r, _, _) = Raw::go(&srv.sock, "", structured);
        let bytes = encode(&pieces);
        // Send from another thread while this one drains replies, so that neither
        // side can block the other.
        let mut w = r.s.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            use std::io::Write;
            let _ = w.write_all(&bytes);
            let _ = w.shutdown(std::net::Shutdown::Write);
        });
        prop_assert!(r.closed_by_server());
        sender.join().unwrap();
        assert_serves(&srv.sock, "");
        prop_assert_eq!(srv.stats.panicked(), 0);
        srv.stop();
    }
}
