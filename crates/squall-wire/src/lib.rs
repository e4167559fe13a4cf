//! # squall-wire
//!
//! The network protocol between `squall serve` and its clients: frame types, and sans-io encoding
//! and decoding over byte buffers (no sockets here; [`Codec`] adapts it to `tokio_util::codec`).
//! The byte layout is specified in `docs/protocol.md`.
//!
//! - Every frame is `length (u32, big-endian) | type (u8) | flags (u8) | body`.
//! - A session starts with [`Frame::Hello`] → [`Frame::Welcome`], which fixes the protocol version
//!   and states the server's limits (frame size, payload size, in-flight publishes).
//! - Frames carry batches: one [`Frame::Publish`] holds many messages, one
//!   [`Frame::PublishAcks`] many confirms, one [`Frame::Deliver`] many deliveries, so 1000 small
//!   messages cost a handful of syscalls, not 1000.
//! - Decoding is defensive: bounded lengths, checked UTF-8, values validated by the `squall-core`
//!   constructors; it never panics (fuzzed, and property-tested on random bytes).
//!
//! | module | what it holds |
//! |---|---|
//! | [`frame`] | [`Frame`] and its parts, protocol constants |
//! | [`codec`] | [`encode`], [`decode`], [`Codec`], [`WireError`] |
//!
//! ```
//! use bytes::BytesMut;
//! use squall_core::Message;
//! use squall_wire::{decode, encode, Frame, PublishItem, DEFAULT_MAX_FRAME};
//!
//! let msg = Message::builder("orders.created")?.payload("hi").build();
//! let frame = Frame::Publish(vec![PublishItem { request_id: 1, message: msg }]);
//! let mut buf = BytesMut::new();
//! encode(&frame, &mut buf, DEFAULT_MAX_FRAME).unwrap();
//! assert_eq!(decode(&mut buf, DEFAULT_MAX_FRAME).unwrap(), Some(frame));
//! assert!(buf.is_empty());
//! # Ok::<(), squall_core::Error>(())
//! ```

pub mod codec;
pub mod frame;

pub use codec::{Codec, WireError, decode, decode_all, encode, put_message};
pub use frame::{
    AckItem, DEFAULT_MAX_FRAME, DeliverItem, Frame, HEADER_LEN, Hello, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, PublishItem, RemoteError, SettleItem, SettleOp, SettleResult, Subscribe,
    Welcome, WireAck,
};
