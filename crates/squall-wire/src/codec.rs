//! Encoding and decoding frames over byte buffers (sans-io), and a `tokio_util` codec over them.
//!
//! Decoding never panics and never trusts a length: every read is bounds-checked, every string is
//! UTF-8-checked, and every value is validated by the same constructors the API uses (subjects,
//! ids, headers), so a server handed a decoded frame holds only valid data. Payloads are slices of
//! the received buffer (no copy).

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use squall_core::{
    DeliveryPolicy, LeaseId, Message, MessageId, Pattern, StartPosition, Subject, Timestamp,
};

use crate::frame::*;

/// Why bytes could not be decoded (or a frame encoded).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The length field exceeds the negotiated maximum.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced or encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The type byte is not a known frame.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The body does not parse.
    #[error("malformed {frame} frame: {detail}")]
    Malformed {
        /// The frame type's name.
        frame: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A field parses but is not a valid value (bad subject, id, header...).
    #[error("invalid value in {frame} frame: {source}")]
    Invalid {
        /// The frame type's name.
        frame: &'static str,
        /// The validation error.
        source: squall_core::Error,
    },
    /// Reading or writing the socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<WireError> for squall_core::Error {
    fn from(e: WireError) -> Self {
        let kind = match &e {
            WireError::Io(_) => squall_core::ErrorKind::Unavailable,
            _ => squall_core::ErrorKind::Protocol,
        };
        squall_core::Error::new(kind, e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn put_str16(dst: &mut BytesMut, s: &str) {
    // Longer strings are truncated at a char boundary; only free-text fields (error messages,
    // reasons) can be that long, the validated ones are bounded far below.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    dst.put_u16(end as u16);
    dst.put_slice(&s.as_bytes()[..end]);
}

fn put_opt_str16(dst: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            dst.put_u8(1);
            put_str16(dst, s);
        }
        None => dst.put_u8(0),
    }
}

fn put_error(dst: &mut BytesMut, e: &RemoteError) {
    dst.put_u16(kind_code(e.kind));
    put_str16(dst, &e.message);
}

fn put_result<T>(
    dst: &mut BytesMut,
    r: &Result<T, RemoteError>,
    ok: impl FnOnce(&mut BytesMut, &T),
) {
    match r {
        Ok(v) => {
            dst.put_u8(0);
            ok(dst, v);
        }
        Err(e) => {
            dst.put_u8(1);
            put_error(dst, e);
        }
    }
}

/// Appends the wire form of `m`.
pub fn put_message(dst: &mut BytesMut, m: &Message) {
    let flags = (m.key().is_some() as u8)
        | ((m.delay().is_some() as u8) << 1)
        | ((m.ttl().is_some() as u8) << 2);
    dst.put_u8(flags);
    put_str16(dst, m.id().as_str());
    put_str16(dst, m.subject().as_str());
    if let Some(k) = m.key() {
        put_str16(dst, k);
    }
    dst.put_u64(m.timestamp().as_nanos());
    if let Some(d) = m.delay() {
        dst.put_u64(nanos(d));
    }
    if let Some(t) = m.ttl() {
        dst.put_u64(nanos(t));
    }
    dst.put_u16(m.headers().len() as u16);
    for (n, v) in m.headers().iter() {
        put_str16(dst, n);
        put_str16(dst, v);
    }
    dst.put_u32(m.payload().len() as u32);
    dst.put_slice(m.payload());
}

fn put_subscribe(dst: &mut BytesMut, s: &Subscribe) {
    let sub = &s.subscription;
    let p = &sub.policy;
    dst.put_u64(s.request_id);
    dst.put_u32(s.sub_id);
    dst.put_u32(s.credit);
    put_str16(dst, sub.pattern.as_str());
    put_opt_str16(dst, sub.group.as_deref());
    dst.put_u8(sub.durable as u8);
    match sub.start {
        None => dst.put_u8(0),
        Some(StartPosition::New) => dst.put_u8(1),
        Some(StartPosition::First) => dst.put_u8(2),
        Some(StartPosition::Sequence(n)) => {
            dst.put_u8(3);
            dst.put_u64(n);
        }
        Some(StartPosition::Time(t)) => {
            dst.put_u8(4);
            dst.put_u64(t.as_nanos());
        }
    }
    dst.put_u64(nanos(p.ack_wait));
    dst.put_u32(p.max_deliveries.unwrap_or(0));
    put_opt_str16(dst, p.dead_letter.as_ref().map(Subject::as_str));
    dst.put_u16(p.backoff.len().min(u16::MAX as usize) as u16);
    for b in p.backoff.iter().take(u16::MAX as usize) {
        dst.put_u64(nanos(*b));
    }
    dst.put_u32(u32::try_from(p.max_in_flight).unwrap_or(u32::MAX));
    dst.put_u8(p.ordered_by_key as u8);
    put_opt_str16(dst, sub.stream.as_deref());
}

fn put_body(dst: &mut BytesMut, frame: &Frame) {
    match frame {
        Frame::Hello(h) => {
            dst.put_u16(h.version);
            dst.put_u16(h.min_version);
            put_str16(dst, &h.client_name);
            put_str16(dst, &h.token);
        }
        Frame::Welcome(w) => {
            dst.put_u16(w.version);
            put_str16(dst, &w.server_name);
            dst.put_u32(w.max_frame);
            dst.put_u32(w.max_payload);
            dst.put_u32(w.max_in_flight);
            dst.put_u64(nanos(w.heartbeat));
        }
        Frame::Ping(n) | Frame::Pong(n) => dst.put_u64(*n),
        Frame::Error {
            request_id,
            fatal,
            error,
        } => {
            dst.put_u64(*request_id);
            dst.put_u8(*fatal as u8);
            put_error(dst, error);
        }
        Frame::Goodbye(reason) => put_str16(dst, reason),
        Frame::Publish(items) => {
            dst.put_u32(items.len() as u32);
            for i in items {
                dst.put_u64(i.request_id);
                put_message(dst, &i.message);
            }
        }
        Frame::PublishAcks(items) => {
            dst.put_u32(items.len() as u32);
            for i in items {
                dst.put_u64(i.request_id);
                put_result(dst, &i.result, |dst, a| {
                    put_str16(dst, &a.stream);
                    dst.put_u64(a.sequence);
                    dst.put_u8(durability_code(a.durability));
                    dst.put_u8(a.duplicate as u8);
                });
            }
        }
        Frame::Subscribe(s) => put_subscribe(dst, s),
        Frame::SubscribeResult { request_id, result } => {
            dst.put_u64(*request_id);
            put_result(dst, result, |_, ()| {});
        }
        Frame::Unsubscribe { sub_id } => dst.put_u32(*sub_id),
        Frame::Credit { sub_id, credit } => {
            dst.put_u32(*sub_id);
            dst.put_u32(*credit);
        }
        Frame::Deliver(items) => {
            dst.put_u32(items.len() as u32);
            for d in items {
                dst.put_u32(d.sub_id);
                dst.put_u64(d.lease.sequence);
                dst.put_u64(d.lease.nonce);
                dst.put_u32(d.attempt);
                dst.put_u64(d.published_at.as_nanos());
                dst.put_u64(d.deadline.as_nanos());
                put_opt_str16(dst, d.group.as_deref());
                put_message(dst, &d.message);
            }
        }
        Frame::SubscriptionEnded { sub_id, error } => {
            dst.put_u32(*sub_id);
            match error {
                Some(e) => {
                    dst.put_u8(1);
                    put_error(dst, e);
                }
                None => dst.put_u8(0),
            }
        }
        Frame::Settle(items) => {
            dst.put_u32(items.len() as u32);
            for s in items {
                dst.put_u64(s.request_id);
                dst.put_u32(s.sub_id);
                dst.put_u64(s.lease.sequence);
                dst.put_u64(s.lease.nonce);
                match &s.op {
                    SettleOp::Ack => dst.put_u8(0),
                    SettleOp::Nack(d) => {
                        dst.put_u8(1);
                        dst.put_u64(nanos(*d));
                    }
                    SettleOp::Reject(r) => {
                        dst.put_u8(2);
                        put_str16(dst, r);
                    }
                    SettleOp::Extend(d) => {
                        dst.put_u8(3);
                        dst.put_u64(nanos(*d));
                    }
                }
            }
        }
        Frame::SettleResults(items) => {
            dst.put_u32(items.len() as u32);
            for r in items {
                dst.put_u64(r.request_id);
                put_result(dst, &r.result, |dst, t| dst.put_u64(t.as_nanos()));
            }
        }
        Frame::Request {
            request_id,
            timeout,
            message,
        } => {
            dst.put_u64(*request_id);
            dst.put_u64(nanos(*timeout));
            put_message(dst, message);
        }
        Frame::Reply { request_id, result } => {
            dst.put_u64(*request_id);
            put_result(dst, result, put_message);
        }
    }
}

/// Appends `frame` to `dst`. Fails (leaving `dst` as it was) if the frame would exceed `max_frame`.
pub fn encode(frame: &Frame, dst: &mut BytesMut, max_frame: usize) -> Result<(), WireError> {
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u8(frame.type_byte());
    dst.put_u8(0);
    put_body(dst, frame);
    let len = dst.len() - start;
    if len > max_frame {
        dst.truncate(start);
        return Err(WireError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let body_len = (len - 4) as u32;
    dst[start..start + 4].copy_from_slice(&body_len.to_be_bytes());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// A bounds-checked reader over one frame's body.
struct Reader {
    buf: Bytes,
    frame: &'static str,
}

impl Reader {
    fn malformed(&self, detail: impl Into<String>) -> WireError {
        WireError::Malformed {
            frame: self.frame,
            detail: detail.into(),
        }
    }
    fn need(&self, n: usize, what: &str) -> Result<(), WireError> {
        if self.buf.remaining() < n {
            return Err(self.malformed(format!(
                "truncated {what}: need {n} bytes, have {}",
                self.buf.remaining()
            )));
        }
        Ok(())
    }
    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self, what: &str) -> Result<u16, WireError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self, what: &str) -> Result<u64, WireError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64())
    }
    fn bool(&mut self, what: &str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            x => Err(self.malformed(format!("{what}: {x} is not a boolean"))),
        }
    }
    fn duration(&mut self, what: &str) -> Result<Duration, WireError> {
        Ok(Duration::from_nanos(self.u64(what)?))
    }
    fn bytes(&mut self, n: usize, what: &str) -> Result<Bytes, WireError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }
    fn str16(&mut self, what: &str) -> Result<String, WireError> {
        let n = self.u16(what)? as usize;
        let b = self.bytes(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.malformed(format!("{what} is not UTF-8")))
    }
    fn opt_str16(&mut self, what: &str) -> Result<Option<String>, WireError> {
        if self.bool(what)? {
            self.str16(what).map(Some)
        } else {
            Ok(None)
        }
    }
    /// A count of items each at least `min_item` bytes long: rejects counts the remaining bytes
    /// cannot hold, so a forged count cannot make the decoder allocate.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, WireError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_item) > self.buf.remaining() {
            return Err(self.malformed(format!(
                "{what}: {n} items cannot fit in {} bytes",
                self.buf.remaining()
            )));
        }
        Ok(n)
    }
    fn invalid(&self, e: squall_core::Error) -> WireError {
        WireError::Invalid {
            frame: self.frame,
            source: e,
        }
    }
    fn error(&mut self) -> Result<RemoteError, WireError> {
        let kind = code_kind(self.u16("error kind")?);
        let message = self.str16("error message")?;
        Ok(RemoteError { kind, message })
    }
    fn result<T>(
        &mut self,
        ok: impl FnOnce(&mut Self) -> Result<T, WireError>,
    ) -> Result<Result<T, RemoteError>, WireError> {
        match self.u8("result tag")? {
            0 => Ok(Ok(ok(self)?)),
            1 => Ok(Err(self.error()?)),
            x => Err(self.malformed(format!("result tag {x}"))),
        }
    }

    fn message(&mut self) -> Result<Message, WireError> {
        let flags = self.u8("message flags")?;
        if flags & !0b111 != 0 {
            return Err(self.malformed(format!("unknown message flags {flags:#x}")));
        }
        let id = self.str16("message id")?;
        let subject = self.str16("subject")?;
        let key = if flags & 1 != 0 {
            Some(self.str16("key")?)
        } else {
            None
        };
        let timestamp = Timestamp(self.u64("timestamp")?);
        let delay = if flags & 2 != 0 {
            Some(self.duration("delay")?)
        } else {
            None
        };
        let ttl = if flags & 4 != 0 {
            Some(self.duration("ttl")?)
        } else {
            None
        };
        let subject = Subject::new(subject).map_err(|e| self.invalid(e))?;
        let mut m = Message::new(subject, Bytes::new());
        m.set_id(MessageId::new(id).map_err(|e| self.invalid(e))?);
        m.set_key(key.as_deref()).map_err(|e| self.invalid(e))?;
        m.set_timestamp(timestamp);
        m.set_delay(delay);
        m.set_ttl(ttl);
        let n_headers = self.u16("header count")?;
        for _ in 0..n_headers {
            let name = self.str16("header name")?;
            let value = self.str16("header value")?;
            m.headers_mut()
                .insert(name, value)
                .map_err(|e| self.invalid(e))?;
        }
        let len = self.u32("payload length")? as usize;
        let payload = self.bytes(len, "payload")?;
        m.set_payload(payload);
        Ok(m)
    }

    fn subscribe(&mut self) -> Result<Subscribe, WireError> {
        let request_id = self.u64("request id")?;
        let sub_id = self.u32("subscription id")?;
        let credit = self.u32("credit")?;
        let pattern = Pattern::new(self.str16("pattern")?).map_err(|e| self.invalid(e))?;
        let group = self.opt_str16("group")?;
        let durable = self.bool("durable")?;
        let start = match self.u8("start")? {
            0 => None,
            1 => Some(StartPosition::New),
            2 => Some(StartPosition::First),
            3 => Some(StartPosition::Sequence(self.u64("start sequence")?)),
            4 => Some(StartPosition::Time(Timestamp(self.u64("start time")?))),
            x => return Err(self.malformed(format!("start position tag {x}"))),
        };
        let ack_wait = self.duration("ack wait")?;
        let max_deliveries = Some(self.u32("max deliveries")?).filter(|n| *n > 0);
        let dead_letter: DeadLetterSubject = match self.opt_str16("dead letter")? {
            Some(s) => Some(Subject::new(s).map_err(|e| self.invalid(e))?),
            None => None,
        };
        let n = self.u16("backoff count")? as usize;
        self.need(n * 8, "backoff")?;
        let backoff = (0..n)
            .map(|_| self.duration("backoff"))
            .collect::<Result<Vec<_>, _>>()?;
        let max_in_flight = self.u32("max in flight")? as usize;
        let ordered_by_key = self.bool("ordered by key")?;
        let stream = self.opt_str16("stream")?;
        let policy = DeliveryPolicy {
            ack_wait,
            max_deliveries,
            dead_letter,
            backoff,
            max_in_flight,
            ordered_by_key,
        };
        let subscription = subscription(pattern, group, durable, start, policy, stream)
            .map_err(|e| self.invalid(e))?;
        subscription.validate().map_err(|e| self.invalid(e))?;
        Ok(Subscribe {
            request_id,
            sub_id,
            subscription,
            credit,
        })
    }
}

/// The smallest encoded message: flags, two empty strings, timestamp, header count, payload length.
const MIN_MESSAGE: usize = 1 + 2 + 2 + 8 + 2 + 4;

fn decode_body(ty: u8, body: Bytes) -> Result<Frame, WireError> {
    let name = match ty {
        0x01 => "hello",
        0x02 => "welcome",
        0x03 => "ping",
        0x04 => "pong",
        0x05 => "error",
        0x06 => "goodbye",
        0x10 => "publish",
        0x11 => "publish_acks",
        0x20 => "subscribe",
        0x21 => "subscribe_result",
        0x22 => "unsubscribe",
        0x23 => "credit",
        0x24 => "deliver",
        0x25 => "subscription_ended",
        0x30 => "settle",
        0x31 => "settle_results",
        0x40 => "request",
        0x41 => "reply",
        other => return Err(WireError::UnknownType(other)),
    };
    let mut r = Reader {
        buf: body,
        frame: name,
    };
    let frame = match ty {
        0x01 => Frame::Hello(Hello {
            version: r.u16("version")?,
            min_version: r.u16("min version")?,
            client_name: r.str16("client name")?,
            token: r.str16("token")?,
        }),
        0x02 => Frame::Welcome(Welcome {
            version: r.u16("version")?,
            server_name: r.str16("server name")?,
            max_frame: r.u32("max frame")?,
            max_payload: r.u32("max payload")?,
            max_in_flight: r.u32("max in flight")?,
            heartbeat: r.duration("heartbeat")?,
        }),
        0x03 => Frame::Ping(r.u64("nonce")?),
        0x04 => Frame::Pong(r.u64("nonce")?),
        0x05 => Frame::Error {
            request_id: r.u64("request id")?,
            fatal: r.bool("fatal")?,
            error: r.error()?,
        },
        0x06 => Frame::Goodbye(r.str16("reason")?),
        0x10 => {
            let n = r.count("publish count", 8 + MIN_MESSAGE)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(PublishItem {
                    request_id: r.u64("request id")?,
                    message: r.message()?,
                });
            }
            Frame::Publish(items)
        }
        0x11 => {
            let n = r.count("ack count", 8 + 1 + 2)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let request_id = r.u64("request id")?;
                let result = r.result(|r| {
                    let stream = r.str16("stream")?;
                    let sequence = r.u64("sequence")?;
                    let code = r.u8("durability")?;
                    let durability = code_durability(code)
                        .ok_or_else(|| r.malformed(format!("durability {code}")))?;
                    Ok(WireAck {
                        stream,
                        sequence,
                        durability,
                        duplicate: r.bool("duplicate")?,
                    })
                })?;
                items.push(AckItem { request_id, result });
            }
            Frame::PublishAcks(items)
        }
        0x20 => Frame::Subscribe(Box::new(r.subscribe()?)),
        0x21 => Frame::SubscribeResult {
            request_id: r.u64("request id")?,
            result: r.result(|_| Ok(()))?,
        },
        0x22 => Frame::Unsubscribe {
            sub_id: r.u32("subscription id")?,
        },
        0x23 => Frame::Credit {
            sub_id: r.u32("subscription id")?,
            credit: r.u32("credit")?,
        },
        0x24 => {
            let n = r.count("delivery count", 4 + 8 + 8 + 4 + 8 + 8 + 1 + MIN_MESSAGE)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(DeliverItem {
                    sub_id: r.u32("subscription id")?,
                    lease: LeaseId {
                        sequence: r.u64("sequence")?,
                        nonce: r.u64("nonce")?,
                    },
                    attempt: r.u32("attempt")?,
                    published_at: Timestamp(r.u64("published at")?),
                    deadline: Timestamp(r.u64("deadline")?),
                    group: r.opt_str16("group")?,
                    message: r.message()?,
                });
            }
            Frame::Deliver(items)
        }
        0x25 => Frame::SubscriptionEnded {
            sub_id: r.u32("subscription id")?,
            error: if r.bool("has error")? {
                Some(r.error()?)
            } else {
                None
            },
        },
        0x30 => {
            let n = r.count("settle count", 8 + 4 + 8 + 8 + 1)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let request_id = r.u64("request id")?;
                let sub_id = r.u32("subscription id")?;
                let lease = LeaseId {
                    sequence: r.u64("sequence")?,
                    nonce: r.u64("nonce")?,
                };
                let op = match r.u8("settle op")? {
                    0 => SettleOp::Ack,
                    1 => SettleOp::Nack(r.duration("nack delay")?),
                    2 => SettleOp::Reject(r.str16("reason")?),
                    3 => SettleOp::Extend(r.duration("extend by")?),
                    x => return Err(r.malformed(format!("settle op {x}"))),
                };
                items.push(SettleItem {
                    request_id,
                    sub_id,
                    lease,
                    op,
                });
            }
            Frame::Settle(items)
        }
        0x31 => {
            let n = r.count("result count", 8 + 1 + 2)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let request_id = r.u64("request id")?;
                let result = r.result(|r| Ok(Timestamp(r.u64("deadline")?)))?;
                items.push(SettleResult { request_id, result });
            }
            Frame::SettleResults(items)
        }
        0x40 => Frame::Request {
            request_id: r.u64("request id")?,
            timeout: r.duration("timeout")?,
            message: r.message()?,
        },
        0x41 => Frame::Reply {
            request_id: r.u64("request id")?,
            result: r.result(Reader::message)?,
        },
        _ => unreachable!("type checked above"),
    };
    if r.buf.has_remaining() {
        return Err(r.malformed(format!("{} trailing bytes", r.buf.remaining())));
    }
    Ok(frame)
}

/// Takes one frame off the front of `src`, if a whole one is there. `Ok(None)`: need more bytes.
/// On error the connection should be closed: the stream position is lost.
pub fn decode(src: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, WireError> {
    if src.len() < 4 {
        return Ok(None);
    }
    let body_len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
    let len = body_len.saturating_add(4);
    if len > max_frame {
        return Err(WireError::TooLarge {
            len,
            max: max_frame,
        });
    }
    if body_len < 2 {
        return Err(WireError::Malformed {
            frame: "header",
            detail: format!("length {body_len} is shorter than the frame header"),
        });
    }
    if src.len() < len {
        src.reserve(len - src.len());
        return Ok(None);
    }
    let mut frame = src.split_to(len).freeze();
    frame.advance(4);
    let ty = frame.get_u8();
    let flags = frame.get_u8();
    if flags != 0 {
        return Err(WireError::Malformed {
            frame: "header",
            detail: format!("unknown frame flags {flags:#x}"),
        });
    }
    decode_body(ty, frame).map(Some)
}

/// Decodes a whole buffer of frames, for tests and fuzzing: every frame, then the first error.
pub fn decode_all(bytes: &[u8], max_frame: usize) -> (Vec<Frame>, Option<WireError>) {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match decode(&mut buf, max_frame) {
            Ok(Some(f)) => out.push(f),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// A `tokio_util` codec over [`encode`] and [`decode`].
#[derive(Debug, Clone)]
pub struct Codec {
    /// Largest frame accepted or produced.
    pub max_frame: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

impl tokio_util::codec::Decoder for Codec {
    type Item = Frame;
    type Error = WireError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        decode(src, self.max_frame)
    }
}

impl tokio_util::codec::Encoder<Frame> for Codec {
    type Error = WireError;
    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        encode(&item, dst, self.max_frame)
    }
}

impl tokio_util::codec::Encoder<&Frame> for Codec {
    type Error = WireError;
    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        encode(item, dst, self.max_frame)
    }
}
