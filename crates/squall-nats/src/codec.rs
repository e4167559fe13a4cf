//! A squall [`Message`] as a NATS message (subject, headers, payload) and back.
//!
//! | squall | NATS |
//! |---|---|
//! | subject | subject |
//! | payload | payload, byte for byte |
//! | id | [`ID`] (`Nats-Msg-Id`, JetStream's deduplication header); for requests [`REQUEST_ID`] (see below) |
//! | key | [`KEY`] (`Squall-Key`) |
//! | timestamp | [`TIMESTAMP`] (`Squall-Timestamp`, nanoseconds since the epoch) |
//! | time to live | [`TTL`] (`Squall-Ttl`, milliseconds; JetStream only) |
//! | `reply-to` header | kept as a header, and also the NATS reply subject on core NATS |
//! | other headers | NATS headers of the same name and value |
//!
//! A request is never deduplicated (a re-sent request waits on a new inbox and needs its own
//! reply): its `Nats-Msg-Id` is `<id>.<reply inbox token>` and its id travels in [`REQUEST_ID`]
//! (`Squall-Id`), which takes precedence over `Nats-Msg-Id` on receipt.
//!
//! These five names are reserved: a message carrying one of them as an ordinary header is
//! refused with `InvalidMessage`. Every other name, `Nats-*` included, passes through as it is
//! (so JetStream's `Nats-Expected-*` publish conditions work).
//!
//! Receiving a message published by another client: a missing or invalid `Nats-Msg-Id` gives
//! the id `<stream>-<sequence>` on JetStream (stable across redeliveries) or a fresh one on core
//! NATS; a missing timestamp is the stream's store time (JetStream) or the receipt time (core);
//! a header with several values becomes one value joined with `, `; headers arrive sorted by
//! name (NATS headers carry no order); a NATS reply subject
//! becomes the `reply-to` header when the message has none. Headers squall cannot represent (a
//! name outside letters, digits, `-`, `_`, `.`; a control character in the value; over the
//! 64 KiB header limit) are dropped and logged.

use std::time::Duration;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use squall_core::headers::REPLY_TO;
use squall_core::{Error, ErrorKind, Message, MessageId, Result, Subject, Timestamp};

/// Carries the message id; JetStream deduplicates on it.
pub const ID: &str = "Nats-Msg-Id";
/// Carries the ordering key.
pub const KEY: &str = "Squall-Key";
/// Carries the producer timestamp in nanoseconds since the epoch.
pub const TIMESTAMP: &str = "Squall-Timestamp";
/// Carries the time to live in milliseconds.
pub const TTL: &str = "Squall-Ttl";
/// Carries the id of a request, whose `Nats-Msg-Id` is made unique.
pub const REQUEST_ID: &str = "Squall-Id";

const RESERVED: [&str; 5] = [ID, KEY, TIMESTAMP, TTL, REQUEST_ID];

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Subject.
    pub subject: String,
    /// Headers, squall's own included.
    pub headers: HeaderMap,
    /// Payload.
    pub payload: Bytes,
    /// The `reply-to` header, for the NATS reply subject.
    pub reply: Option<String>,
}

/// What encoding may carry.
#[derive(Debug, Clone, Copy)]
pub struct EncodeRules {
    /// Largest `payload + headers` accepted.
    pub max_payload: usize,
    /// Whether a time to live can be carried (JetStream: enforced on receipt).
    pub ttl: bool,
    /// Backend name for `Unsupported` errors.
    pub backend: &'static str,
}

/// Encodes `msg`, refusing what the backend cannot carry.
pub fn encode(msg: &Message, rules: EncodeRules) -> Result<Outbound> {
    if msg.size() > rules.max_payload {
        return Err(Error::new(
            ErrorKind::InvalidMessage,
            format!(
                "message {} is {} bytes (payload and headers), over max_payload {}",
                msg.id(),
                msg.size(),
                rules.max_payload
            ),
        ));
    }
    if msg.delay().is_some() {
        return Err(Error::unsupported(
            rules.backend,
            "delayed delivery (NATS has no per-message delay)",
        ));
    }
    if msg.ttl().is_some() && !rules.ttl {
        return Err(Error::unsupported(
            rules.backend,
            "a per-message time to live (core NATS does not hold messages; use JetStream)",
        ));
    }
    let mut h = HeaderMap::new();
    for (name, value) in msg.headers() {
        if let Some(r) = RESERVED.iter().find(|r| r.eq_ignore_ascii_case(name)) {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!(
                    "header `{name}` is reserved by the NATS adapter for the message's {}",
                    match *r {
                        ID => "id (set it with the message id)",
                        KEY => "key",
                        TIMESTAMP => "timestamp",
                        REQUEST_ID => "id",
                        _ => "time to live",
                    }
                ),
            ));
        }
        insert(&mut h, name, value)?;
    }
    insert(&mut h, ID, msg.id().as_str())?;
    if let Some(k) = msg.key() {
        insert(&mut h, KEY, k)?;
    }
    insert(&mut h, TIMESTAMP, &msg.timestamp().as_nanos().to_string())?;
    if let Some(ttl) = msg.ttl() {
        insert(&mut h, TTL, &ttl.as_millis().max(1).to_string())?;
    }
    Ok(Outbound {
        subject: msg.subject().to_string(),
        headers: h,
        payload: msg.payload().clone(),
        reply: msg.headers().get(REPLY_TO).map(str::to_string),
    })
}

impl Outbound {
    /// Keeps this message out of deduplication: `Nats-Msg-Id` becomes `<id>.<unique>` and the id
    /// moves to [`REQUEST_ID`].
    pub fn undeduplicated(&mut self, id: &str, unique: &str) -> Result<()> {
        insert(&mut self.headers, REQUEST_ID, id)?;
        insert(&mut self.headers, ID, &format!("{id}.{unique}"))
    }
}

fn insert(h: &mut HeaderMap, name: &str, value: &str) -> Result<()> {
    let n = HeaderName::try_from(name).map_err(|e| {
        Error::new(
            ErrorKind::InvalidMessage,
            format!("header name `{name}` is not valid on NATS"),
        )
        .with_source(e)
    })?;
    let v: HeaderValue = value.parse().map_err(|e| {
        Error::new(
            ErrorKind::InvalidMessage,
            format!("the value of header `{name}` is not valid on NATS"),
        )
        .with_source(e)
    })?;
    h.insert(n, v);
    Ok(())
}

/// What the transport knows about a received message besides its headers.
#[derive(Clone)]
pub struct Received<'a> {
    /// NATS subject.
    pub subject: &'a str,
    /// NATS headers.
    pub headers: Option<&'a HeaderMap>,
    /// Payload.
    pub payload: Bytes,
    /// NATS reply subject, when it is the sender's (core NATS).
    pub reply: Option<&'a str>,
    /// Id to use when the message has none.
    pub fallback_id: &'a dyn Fn() -> MessageId,
    /// Timestamp to use when the message has none.
    pub fallback_time: Timestamp,
}

/// Decodes a received message. Fails only when the subject is not a valid squall subject.
pub fn decode(r: Received<'_>) -> Result<Message> {
    let subject = Subject::new(r.subject).map_err(|e| {
        Error::new(
            ErrorKind::InvalidMessage,
            format!("received a message whose subject squall cannot represent: {e}"),
        )
    })?;
    let mut m = Message::new(subject, r.payload);
    let mut id = None;
    let mut request_id = None;
    let mut time = None;
    let mut ttl = None;
    if let Some(headers) = r.headers {
        // HeaderMap is unordered; sort for a deterministic result.
        let mut all: Vec<(&HeaderName, &Vec<HeaderValue>)> = headers.iter().collect();
        all.sort_by(|a, b| AsRef::<str>::as_ref(a.0).cmp(AsRef::<str>::as_ref(b.0)));
        for (name, values) in all {
            let name: &str = name.as_ref();
            let value = values
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            if name.eq_ignore_ascii_case(ID) {
                id = MessageId::new(&value).ok();
            } else if name.eq_ignore_ascii_case(REQUEST_ID) {
                request_id = MessageId::new(&value).ok();
            } else if name.eq_ignore_ascii_case(KEY) {
                if m.set_key(Some(&value)).is_err() {
                    tracing::warn!(key = %value.escape_debug(), "dropping an invalid message key");
                }
            } else if name.eq_ignore_ascii_case(TIMESTAMP) {
                time = value.parse::<u64>().ok().map(Timestamp);
            } else if name.eq_ignore_ascii_case(TTL) {
                ttl = value.parse::<u64>().ok().map(Duration::from_millis);
            } else if let Err(e) = m.headers_mut().insert(name, &value) {
                tracing::warn!(header = %name.escape_debug(), error = %e, "dropping a header squall cannot represent");
            }
        }
    }
    if let Some(reply) = r.reply
        && m.headers().get(REPLY_TO).is_none()
        && Subject::new(reply).is_ok()
    {
        m.headers_mut().insert(REPLY_TO, reply)?;
    }
    m.set_id(request_id.or(id).unwrap_or_else(r.fallback_id));
    m.set_timestamp(time.unwrap_or(r.fallback_time));
    m.set_ttl(ttl);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_core::headers::CORRELATION_ID;

    const RULES: EncodeRules = EncodeRules {
        max_payload: 1000,
        ttl: true,
        backend: "nats",
    };

    fn received<'a>(o: &'a Outbound, fallback: &'a dyn Fn() -> MessageId) -> Received<'a> {
        Received {
            subject: &o.subject,
            headers: Some(&o.headers),
            payload: o.payload.clone(),
            reply: None,
            fallback_id: fallback,
            fallback_time: Timestamp(1),
        }
    }

    #[test]
    fn a_message_round_trips() {
        let m = Message::builder("orders.eu")
            .unwrap()
            .id("o-1")
            .unwrap()
            .key("k-9")
            .unwrap()
            .header("Nats-Expected-Stream", "S")
            .unwrap()
            .header(CORRELATION_ID, "c")
            .unwrap()
            .ttl(Duration::from_secs(3))
            .timestamp(Timestamp(42))
            .payload(&b"\0\xffbytes"[..])
            .build();
        let o = encode(&m, RULES).unwrap();
        assert_eq!(o.headers.get(ID).map(|v| v.as_str()), Some("o-1"));
        let fallback = || MessageId::new("unused").unwrap();
        let back = decode(received(&o, &fallback)).unwrap();
        // Equal as a whole: headers sorted by name come back in the same order.
        assert_eq!(back, m);
        let mut req = o.clone();
        req.undeduplicated("o-1", "c-7").unwrap();
        assert_eq!(req.headers.get(ID).map(|v| v.as_str()), Some("o-1.c-7"));
        assert_eq!(
            decode(received(&req, &fallback)).unwrap().id().as_str(),
            "o-1"
        );
    }

    #[test]
    fn reserved_headers_delays_and_size_are_refused() {
        let base = || Message::builder("a").unwrap();
        let m = base().header("squall-key", "x").unwrap().build();
        assert_eq!(
            encode(&m, RULES).unwrap_err().kind(),
            ErrorKind::InvalidMessage
        );
        let m = base().header("nats-msg-id", "x").unwrap().build();
        assert!(encode(&m, RULES).unwrap_err().to_string().contains("id"));
        let m = base().delay(Duration::from_secs(1)).build();
        assert_eq!(
            encode(&m, RULES).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        let m = base().ttl(Duration::from_secs(1)).build();
        let core = EncodeRules {
            ttl: false,
            ..RULES
        };
        assert_eq!(encode(&m, core).unwrap_err().kind(), ErrorKind::Unsupported);
        let m = base().payload(vec![0u8; 1001]).build();
        assert_eq!(
            encode(&m, RULES).unwrap_err().kind(),
            ErrorKind::InvalidMessage
        );
    }

    #[test]
    fn foreign_messages_get_fallbacks_and_joined_values() {
        let mut h = HeaderMap::new();
        h.append("X-Multi", "a");
        h.append("X-Multi", "b");
        h.insert("Bad/Name", "v");
        h.insert(ID, "has space");
        let fallback = || MessageId::new("S-7").unwrap();
        let m = decode(Received {
            subject: "x.y",
            headers: Some(&h),
            payload: Bytes::from_static(b"p"),
            reply: Some("_INBOX.abc"),
            fallback_id: &fallback,
            fallback_time: Timestamp(9),
        })
        .unwrap();
        assert_eq!(m.id().as_str(), "S-7");
        assert_eq!(m.timestamp(), Timestamp(9));
        assert_eq!(m.headers().get("x-multi"), Some("a, b"));
        assert_eq!(m.headers().get("bad/name"), None);
        assert_eq!(m.headers().get(REPLY_TO), Some("_INBOX.abc"));
        let bad = decode(Received {
            subject: "a..b",
            headers: None,
            payload: Bytes::new(),
            reply: None,
            fallback_id: &fallback,
            fallback_time: Timestamp(9),
        });
        assert_eq!(bad.unwrap_err().kind(), ErrorKind::InvalidMessage);
    }
}
