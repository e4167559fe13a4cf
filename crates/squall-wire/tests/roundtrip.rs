//! Property tests of the codec: every frame decodes to itself, a prefix of a valid frame is "need
//! more bytes" (never an error), and arbitrary bytes never panic the decoder.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use squall_core::{ErrorKind, LeaseId, Message, StartPosition, Subject, Subscription, Timestamp};
use squall_wire::*;

fn token() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,8}"
}

fn message() -> impl Strategy<Value = Message> {
    (
        prop::collection::vec(token(), 1..4),
        "[A-Za-z0-9._-]{1,40}",
        prop::option::of("[a-z0-9]{1,12}"),
        prop::collection::vec(("[a-z][a-z0-9-]{0,10}", "[ -~]{0,30}"), 0..4),
        prop::collection::vec(any::<u8>(), 0..300),
        any::<u64>(),
        prop::option::of(0u64..1_000_000_000_000),
        prop::option::of(0u64..1_000_000_000_000),
    )
        .prop_map(|(subject, id, key, headers, payload, ts, delay, ttl)| {
            let mut b = Message::builder(subject.join("."))
                .unwrap()
                .id(id)
                .unwrap()
                .payload(payload);
            if let Some(k) = key {
                b = b.key(k).unwrap();
            }
            for (n, v) in headers {
                b = b.header(n, v).unwrap();
            }
            if let Some(d) = delay {
                b = b.delay(Duration::from_nanos(d));
            }
            if let Some(t) = ttl {
                b = b.ttl(Duration::from_nanos(t));
            }
            b.timestamp(Timestamp(ts)).build()
        })
}

fn remote_error() -> impl Strategy<Value = RemoteError> {
    (
        prop_oneof![
            Just(ErrorKind::Full),
            Just(ErrorKind::LeaseExpired),
            Just(ErrorKind::Timeout),
            Just(ErrorKind::InvalidSubject)
        ],
        "[ -~]{0,40}",
    )
        .prop_map(|(kind, message)| RemoteError { kind, message })
}

fn subscribe() -> impl Strategy<Value = Subscribe> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        prop::option::of("[a-z]{1,10}"),
        any::<bool>(),
        prop::option::of(prop_oneof![
            Just(StartPosition::New),
            Just(StartPosition::First),
            any::<u64>().prop_map(StartPosition::Sequence),
            any::<u64>().prop_map(|t| StartPosition::Time(Timestamp(t)))
        ]),
        (
            1u64..1_000_000_000_000,
            prop::option::of(1u32..100),
            prop::collection::vec(0u64..10_000_000_000, 0..4),
            1usize..10_000,
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                request_id,
                sub_id,
                credit,
                group,
                durable,
                start,
                (ack, maxd, backoff, mif, ordered),
            )| {
                let mut s = Subscription::new("orders.*.>").unwrap();
                if let Some(g) = group {
                    s = s.group(g).unwrap();
                }
                s.durable = durable;
                s.start = start;
                s.policy.ack_wait = Duration::from_nanos(ack);
                s.policy.max_deliveries = maxd;
                s.policy.backoff = backoff.into_iter().map(Duration::from_nanos).collect();
                s.policy.max_in_flight = mif;
                s.policy.ordered_by_key = ordered;
                s.policy.dead_letter = Some(Subject::new("dlq.orders").unwrap());
                Subscribe {
                    request_id,
                    sub_id,
                    subscription: s,
                    credit,
                }
            },
        )
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        ("[ -~]{0,20}", "[ -~]{0,20}", any::<u16>(), any::<u16>()).prop_map(
            |(client_name, token, version, min_version)| Frame::Hello(Hello {
                version,
                min_version,
                client_name,
                token
            })
        ),
        any::<u64>().prop_map(Frame::Ping),
        any::<u64>().prop_map(Frame::Pong),
        (any::<u64>(), any::<bool>(), remote_error()).prop_map(|(request_id, fatal, error)| {
            Frame::Error {
                request_id,
                fatal,
                error,
            }
        }),
        prop::collection::vec(
            (any::<u64>(), message()).prop_map(|(request_id, message)| PublishItem {
                request_id,
                message
            }),
            0..5
        )
        .prop_map(Frame::Publish),
        prop::collection::vec(
            (
                any::<u64>(),
                prop::result::maybe_err(
                    ("[a-z]{0,10}", any::<u64>(), any::<bool>()).prop_map(
                        |(stream, sequence, duplicate)| WireAck {
                            stream,
                            sequence,
                            durability: squall_core::Durability::Fsynced,
                            duplicate
                        }
                    ),
                    remote_error()
                )
            )
                .prop_map(|(request_id, result)| AckItem { request_id, result }),
            0..5
        )
        .prop_map(Frame::PublishAcks),
        subscribe().prop_map(|s| Frame::Subscribe(Box::new(s))),
        (any::<u32>(), any::<u32>()).prop_map(|(sub_id, credit)| Frame::Credit { sub_id, credit }),
        prop::collection::vec(
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                prop::option::of("[a-z]{1,8}"),
                message()
            )
                .prop_map(|(sub_id, sequence, nonce, attempt, group, message)| {
                    DeliverItem {
                        sub_id,
                        lease: LeaseId { sequence, nonce },
                        attempt,
                        published_at: Timestamp(sequence),
                        deadline: Timestamp(nonce),
                        group,
                        message,
                    }
                }),
            0..4
        )
        .prop_map(Frame::Deliver),
        (any::<u32>(), prop::option::of(remote_error()))
            .prop_map(|(sub_id, error)| Frame::SubscriptionEnded { sub_id, error }),
        prop::collection::vec(
            (
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                prop_oneof![
                    Just(SettleOp::Ack),
                    any::<u32>().prop_map(|n| SettleOp::Nack(Duration::from_nanos(n as u64))),
                    "[ -~]{0,30}".prop_map(SettleOp::Reject),
                    any::<u32>().prop_map(|n| SettleOp::Extend(Duration::from_nanos(n as u64)))
                ]
            )
                .prop_map(|(request_id, sub_id, seq, op)| SettleItem {
                    request_id,
                    sub_id,
                    lease: LeaseId {
                        sequence: seq,
                        nonce: seq ^ 7
                    },
                    op
                }),
            0..5
        )
        .prop_map(Frame::Settle),
        (any::<u64>(), message()).prop_map(|(request_id, message)| Frame::Request {
            request_id,
            timeout: Duration::from_millis(request_id % 10_000),
            message
        }),
        (
            any::<u64>(),
            prop::result::maybe_err(message(), remote_error())
        )
            .prop_map(|(request_id, result)| Frame::Reply { request_id, result }),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip(frames in prop::collection::vec(frame(), 1..6)) {
        let mut buf = BytesMut::new();
        for f in &frames {
            encode(f, &mut buf, DEFAULT_MAX_FRAME).unwrap();
        }
        let (decoded, err) = decode_all(&buf, DEFAULT_MAX_FRAME);
        prop_assert!(err.is_none(), "{err:?}");
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn every_prefix_of_a_frame_asks_for_more(f in frame()) {
        let mut full = BytesMut::new();
        encode(&f, &mut full, DEFAULT_MAX_FRAME).unwrap();
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            prop_assert!(matches!(decode(&mut part, DEFAULT_MAX_FRAME), Ok(None)), "cut at {}", cut);
        }
    }

    /// Random bytes, and valid frames with random bytes flipped, never panic the decoder.
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048), f in frame(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let _ = decode_all(&bytes, 1 << 16);
        let mut buf = BytesMut::new();
        encode(&f, &mut buf, DEFAULT_MAX_FRAME).unwrap();
        for (i, b) in flips {
            let i = i.index(buf.len());
            buf[i] ^= b;
        }
        let _ = decode_all(&buf, DEFAULT_MAX_FRAME);
    }
}

#[test]
fn an_oversized_length_is_refused_before_reading_the_body() {
    let mut buf = BytesMut::new();
    buf.put_u32(10_000_000);
    buf.put_u8(0x10);
    let err = decode(&mut buf, 1 << 20).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::TooLarge {
                len: 10_000_004,
                max: 1_048_576
            }
        ),
        "{err}"
    );
}

#[test]
fn encoding_refuses_a_frame_over_the_limit_and_leaves_the_buffer_alone() {
    let msg = Message::builder("a")
        .unwrap()
        .payload(vec![0u8; 2000])
        .build();
    let mut buf = BytesMut::from(&b"keep"[..]);
    let err = encode(
        &Frame::Publish(vec![PublishItem {
            request_id: 1,
            message: msg,
        }]),
        &mut buf,
        1000,
    )
    .unwrap_err();
    assert!(matches!(err, WireError::TooLarge { max: 1000, .. }));
    assert_eq!(&buf[..], b"keep");
}

#[test]
fn unknown_types_trailing_bytes_and_invalid_values_are_named() {
    let mut buf = BytesMut::new();
    buf.put_u32(2);
    buf.put_u8(0x7f);
    buf.put_u8(0);
    assert!(matches!(
        decode(&mut buf, 1024),
        Err(WireError::UnknownType(0x7f))
    ));

    let mut buf = BytesMut::new();
    encode(&Frame::Ping(1), &mut buf, 1024).unwrap();
    buf[3] += 1; // claim one more body byte
    buf.put_u8(9);
    let err = decode(&mut buf, 1024).unwrap_err();
    assert!(err.to_string().contains("trailing"), "{err}");

    // A publish whose subject has a wildcard: decodes the structure, refuses the value.
    let msg = Message::builder("a.b").unwrap().build();
    let mut buf = BytesMut::new();
    encode(
        &Frame::Publish(vec![PublishItem {
            request_id: 1,
            message: msg,
        }]),
        &mut buf,
        1024,
    )
    .unwrap();
    let pos = buf.windows(3).position(|w| w == b"a.b").unwrap();
    buf[pos + 2] = b'*';
    let err = decode(&mut buf, 1024).unwrap_err();
    assert!(
        matches!(&err, WireError::Invalid { frame: "publish", source } if source.kind() == ErrorKind::InvalidSubject),
        "{err}"
    );
}

#[test]
fn a_forged_item_count_cannot_make_the_decoder_allocate() {
    let mut buf = BytesMut::new();
    buf.put_u32(6);
    buf.put_u8(0x10);
    buf.put_u8(0);
    buf.put_u32(u32::MAX);
    let err = decode(&mut buf, 1024).unwrap_err();
    assert!(err.to_string().contains("cannot fit"), "{err}");
}
