//! Tests of the frame format: every kind round-trips, the version and the bytes are
//! pinned by fixtures, corruption and garbage are errors, never panics.

use super::*;
use proptest::prelude::*;

fn round_trip(env: Envelope) {
    let mut b = BytesMut::new();
    encode(&env, &mut b);
    // Byte by byte: incomplete input is "need more", never an error.
    let whole = b.clone();
    for cut in 0..whole.len() {
        let mut part = BytesMut::from(&whole[..cut]);
        assert_eq!(decode(&mut part), Ok(None), "cut at {cut}");
    }
    assert_eq!(decode(&mut b), Ok(Some(env)));
    assert!(b.is_empty());
}

#[test]
fn every_kind_round_trips() {
    let mut frames = vec![
        Frame::Hello(Hello {
            group: "web".into(),
            volumes: vec![VolumeInfo {
                id: "web-disk".into(),
                size: 1 << 30,
            }],
            generation: Generation::new("g1"),
            history: vec![Generation::new("g0")],
            mode: "sync".into(),
            resend_from: GroupSeq(7),
        }),
        Frame::HelloReply(HelloReply {
            epoch: Epoch(3),
            generation: Generation::new("g1"),
            history: vec![Generation::new("g0")],
            last_seq: GroupSeq(9),
            consistent: true,
            own_regions: vec![(0, vec![1, 5])],
        }),
        Frame::Write {
            volume: 2,
            offset: 4096,
            data: Bytes::from_static(b"hello"),
            fua: true,
            resync: false,
        },
        Frame::Write {
            volume: 0,
            offset: 0,
            data: Bytes::new(),
            fua: false,
            resync: true,
        },
        Frame::Zero {
            volume: 1,
            offset: 8192,
            len: 1 << 20,
            trim: true,
        },
        Frame::Flush,
        Frame::Ack,
        Frame::FlushAck,
        Frame::Ping(42),
        Frame::Pong(43),
        Frame::SumsRequest(SumsRequest {
            volume: 0,
            region_size: 1 << 20,
            regions: vec![0, 3],
        }),
        Frame::Sums {
            volume: 0,
            region_size: 1 << 20,
            sums: vec![(0, 0xdead), (3, 0xbeef)],
        },
        Frame::ResyncDone(ResyncSummary {
            regions_compared: 4,
            regions_copied: 1,
            bytes_copied: 1 << 20,
        }),
    ];
    frames.extend(every_refusal().into_iter().map(Frame::Refused));
    for (i, frame) in frames.into_iter().enumerate() {
        round_trip(Envelope {
            seq: GroupSeq(i as u64 * 1000),
            epoch: Epoch(5),
            frame,
        });
    }
}

/// One of each refusal (a new reason must be added here, and bumps [`VERSION`]).
fn every_refusal() -> Vec<Refusal> {
    let v = |id: &str, size| VolumeInfo {
        id: id.into(),
        size,
    };
    vec![
        Refusal::StaleEpoch {
            epoch: Epoch(3),
            seen: Epoch(5),
        },
        Refusal::TwoPrimaries { epoch: Epoch(4) },
        Refusal::VolumesDiffer {
            offered: vec![v("a", 1 << 20)],
            held: vec![v("a", 2 << 20), v("b", 1 << 20)],
        },
        Refusal::Version { theirs: 1, ours: 2 },
        Refusal::ExpectedHello {
            got: "write".into(),
        },
        Refusal::UnexpectedFrame {
            got: "hello reply".into(),
        },
        Refusal::BadFrame {
            why: "checksum mismatch".into(),
        },
        Refusal::NoSuchVolume { volume: 7 },
        Refusal::OutOfRange {
            volume: "a".into(),
            offset: 4096,
            len: 512,
            size: 4096,
        },
        Refusal::BadSumsRequest { volume: 0 },
    ]
}

/// In the manner of crucible's message-version test: if this fails, something changed
/// the frame format. Understand the change, then update the version, this test, the
/// fixtures and docs/replication.md together.
#[test]
fn latest_frame_version() {
    assert_eq!(
        VERSION, 2,
        "the replication frame format version changed: bump it only with the fixtures and the docs"
    );
}

#[test]
fn the_wire_format_is_pinned() {
    let mut b = BytesMut::new();
    encode(
        &Envelope {
            seq: GroupSeq(1),
            epoch: Epoch(2),
            frame: Frame::Ack,
        },
        &mut b,
    );
    assert_eq!(&b[..8], &[0x4D, 0x44, 0x52, 0x52, 2, 6, 0, 0]);
    assert_eq!(b.len(), HEADER_LEN);
}

/// Frames of the current version, as bytes on the wire (written once by this code and
/// kept): they decode to the same values, and encoding those values gives the same bytes.
#[test]
fn current_version_fixtures_decode_and_encode_to_the_same_bytes() {
    let fixtures: [(&str, &[u8], Envelope); 2] = [
        (
            "frame-v2-hello.bin",
            include_bytes!("../../tests/fixtures/frame-v2-hello.bin"),
            fixture_hello(),
        ),
        (
            "frame-v2-refused.bin",
            include_bytes!("../../tests/fixtures/frame-v2-refused.bin"),
            fixture_refused(),
        ),
    ];
    for (name, bytes, want) in fixtures {
        let mut b = BytesMut::from(bytes);
        assert_eq!(decode(&mut b), Ok(Some(want.clone())), "{name}");
        assert!(b.is_empty(), "{name}: bytes left over");
        let mut again = BytesMut::new();
        encode(&want, &mut again);
        assert_eq!(&again[..], bytes, "{name}: encoded differently");
    }
}

pub(super) fn fixture_hello() -> Envelope {
    Envelope {
        seq: GroupSeq(0),
        epoch: Epoch(3),
        frame: Frame::Hello(Hello {
            group: "web".into(),
            volumes: vec![VolumeInfo {
                id: "web-disk".into(),
                size: 4 << 20,
            }],
            generation: Generation::new("18c4a1f2b3d4e5f6-3039"),
            history: vec![Generation::new("18c4a1f000000000-3038")],
            mode: "sync".into(),
            resend_from: GroupSeq(1),
        }),
    }
}

pub(super) fn fixture_refused() -> Envelope {
    Envelope {
        seq: GroupSeq(0),
        epoch: Epoch(5),
        frame: Frame::Refused(Refusal::StaleEpoch {
            epoch: Epoch(3),
            seen: Epoch(5),
        }),
    }
}

/// Frames of version 1 (written by the code of then) are refused by version, never
/// misread: a v1 refusal was free text, which must not fence anyone now.
#[test]
fn previous_version_frames_are_refused_by_version() {
    for bytes in [
        &include_bytes!("../../tests/fixtures/frame-v1-hello.bin")[..],
        &include_bytes!("../../tests/fixtures/frame-v1-error.bin")[..],
    ] {
        let mut b = BytesMut::from(bytes);
        let e = decode(&mut b).unwrap_err();
        assert_eq!(e, FrameError::Version(1));
        assert_eq!(
            e.to_string(),
            "the peer speaks replication frame format 1, this side speaks 2: run the same metrodr version on both sites"
        );
    }
}

/// Typing the epoch, the sequence numbers and the generations moved nothing on the wire:
/// a hello of version 2 is the hello of version 1 (written by the code of then) but for
/// the version byte and the checksum.
#[test]
fn the_hello_kept_its_bytes_across_the_version_bump() {
    let v1 = &include_bytes!("../../tests/fixtures/frame-v1-hello.bin")[..];
    let v2 = &include_bytes!("../../tests/fixtures/frame-v2-hello.bin")[..];
    assert_eq!((v1[4], v2[4]), (1, 2));
    assert_eq!(v1.len(), v2.len());
    assert_eq!(v1[..4], v2[..4]);
    assert_eq!(v1[5..28], v2[5..28]);
    assert_eq!(v1[HEADER_LEN..], v2[HEADER_LEN..]);
}

/// A refusal payload this side does not understand is a malformed frame (the
/// connection closes), never a panic and never a guess.
#[test]
fn unknown_or_malformed_refusals_are_errors() {
    for payload in [
        &br#"{"reason":"cosmic-rays","epoch":3}"#[..],
        br#"{"reason":"stale-epoch","epoch":"three","seen":5}"#,
        br#"{"reason":"stale-epoch","seen":5}"#,
        br#"{"epoch":3,"seen":5}"#,
        b"stale epoch 3: this replica has seen epoch 5",
        b"",
    ] {
        let mut b = frame_bytes(13, payload);
        match decode(&mut b) {
            Err(FrameError::Payload {
                kind: "refusal", ..
            }) => {}
            other => panic!(
                "{:?} decoded as {other:?}",
                String::from_utf8_lossy(payload)
            ),
        }
    }
}

#[test]
fn refusals_read_as_sentences() {
    let texts: Vec<String> = every_refusal().iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [
            "stale epoch 3: this replica has seen epoch 5; a newer primary exists",
            "this replica is itself primary at epoch 4; two primaries in one epoch are refused",
            "the primary offers [a (1048576 bytes)] but this replica holds [a (2097152 bytes), b (1048576 bytes)]",
            "the primary speaks replication frame format 1, this replica speaks 2: run the same metrodr version on both sites",
            "expected a hello, got a write frame",
            "unexpected hello reply frame",
            "bad frame: checksum mismatch",
            "no volume 7 in this group",
            "write of 512 bytes at 4096 is outside volume a (4096 bytes)",
            "checksum request for regions volume 0 does not have",
        ]
    );
}

/// A well-formed header of this version around `payload`.
fn frame_bytes(kind: u8, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32(MAGIC);
    b.put_u8(VERSION);
    b.put_u8(kind);
    b.put_u16(0);
    b.put_u64(1);
    b.put_u64(1);
    b.put_u32(payload.len() as u32);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..28]), payload);
    b.put_u32(crc);
    b.put_slice(payload);
    b
}

#[test]
fn corruption_is_detected_not_applied() {
    let mut b = BytesMut::new();
    encode(
        &Envelope {
            seq: GroupSeq(1),
            epoch: Epoch(1),
            frame: Frame::Write {
                volume: 0,
                offset: 0,
                data: Bytes::from_static(&[7; 100]),
                fua: false,
                resync: false,
            },
        },
        &mut b,
    );
    for i in [8, 20, 40, 100] {
        let mut bad = b.clone();
        bad[i] ^= 0x01;
        assert_eq!(decode(&mut bad), Err(FrameError::Checksum), "flip at {i}");
    }
    let mut bad = b.clone();
    bad[0] = 0;
    assert!(matches!(decode(&mut bad), Err(FrameError::Magic(_))));
    let mut bad = b.clone();
    bad[4] = 9;
    assert_eq!(decode(&mut bad), Err(FrameError::Version(9)));
    let mut bad = b.clone();
    bad[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(decode(&mut bad), Err(FrameError::TooLarge(_))));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut b = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode(&mut b) {}
    }

    #[test]
    fn valid_headers_with_garbage_payloads_never_panic(kind in 0u8..16, payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&mut frame_bytes(kind, &payload));
    }
}
