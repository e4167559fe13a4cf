//! A squall message as an SQS message body and message attributes, and back.
//!
//! | squall | SQS |
//! |---|---|
//! | payload | the body: as is when it is text SQS accepts (UTF-8 without characters below space other than tab, CR and LF, nor U+FFFE, U+FFFF), else base64 with `squall.body = base64`; an empty payload is the body `-` with `squall.body = empty` |
//! | subject | attribute `squall.subject` (String) |
//! | id | attribute `squall.id` (String); on FIFO queues also the `MessageDeduplicationId` |
//! | key | attribute `squall.key` (String); on FIFO queues also the `MessageGroupId` |
//! | timestamp | attribute `squall.ts` (Number, nanoseconds since the epoch) |
//! | time to live | attribute `squall.expires` (Number, nanoseconds since the epoch) |
//! | delay | `DelaySeconds`, rounded up to whole seconds (at most 900 s; refused on FIFO queues) |
//! | headers | one String attribute each, named as the header, while SQS's limit of 10 attributes allows and every name and value is one SQS accepts; otherwise all of them as a JSON array of `[name, value]` pairs in `squall.headers` |
//! | attempt | read from `ApproximateReceiveCount` |
//!
//! Ids and keys longer than SQS's 128 characters become `h-` and 32 hex digits of a 128-bit
//! FNV-1a hash in `MessageDeduplicationId` / `MessageGroupId` (the attributes keep them whole).
//! A FIFO message without a key gets its own message group (its deduplication id), so messages
//! without a key are not ordered, as in Kafka.
//!
//! A message another client sent (no `squall.id`) is read as well: the subject is the one the
//! queue is bound to, the id SQS's `MessageId`, the timestamp `SentTimestamp`, the key a FIFO
//! `MessageGroupId`, the body the payload as is, and every String or Number attribute a header.
//!
//! SQS counts the body and every attribute's name, type and value against `max_message_size`;
//! a message over it is refused with `InvalidMessage` before anything is sent.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::types::{
    Message as SqsMessage, MessageAttributeValue, MessageSystemAttributeName as Sys,
};
use bytes::Bytes;
use squall_core::{Error, ErrorKind, Message, MessageId, Result, Subject, Timestamp};

use crate::config::{MAX_DELAY, SqsConfig};
use crate::naming::fnv1a128;

/// Attribute holding the subject.
pub const ATTR_SUBJECT: &str = "squall.subject";
/// Attribute holding the message id.
pub const ATTR_ID: &str = "squall.id";
/// Attribute holding the key.
pub const ATTR_KEY: &str = "squall.key";
/// Attribute holding the producer timestamp (Number, nanoseconds).
pub const ATTR_TS: &str = "squall.ts";
/// Attribute holding the expiry of a time to live (Number, nanoseconds).
pub const ATTR_EXPIRES: &str = "squall.expires";
/// Attribute saying how the body encodes the payload (`base64`, `empty`); absent: as is.
pub const ATTR_BODY: &str = "squall.body";
/// Attribute holding all headers as JSON when they cannot be attributes of their own.
pub const ATTR_HEADERS: &str = "squall.headers";
/// SQS's limit of message attributes per message.
pub const MAX_ATTRIBUTES: usize = 10;
/// SQS's longest deduplication or group id.
const MAX_SQS_ID: usize = 128;

/// A message ready for `SendMessage` / `SendMessageBatch`.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The squall id.
    pub id: MessageId,
    /// The body.
    pub body: String,
    /// Message attributes.
    pub attributes: HashMap<String, MessageAttributeValue>,
    /// Size as SQS counts it: body plus attribute names, types and values.
    pub size: usize,
    /// `DelaySeconds` (0: none).
    pub delay_seconds: i32,
    /// FIFO only: `MessageGroupId`.
    pub group_id: Option<String>,
    /// FIFO only: `MessageDeduplicationId`.
    pub dedup_id: Option<String>,
}

/// A received message decoded, with what SQS said about the delivery.
#[derive(Debug, Clone)]
pub struct Received {
    /// The message.
    pub message: Message,
    /// When its time to live ends.
    pub expires_at: Option<Timestamp>,
    /// `ApproximateReceiveCount`: 1 on the first delivery.
    pub attempt: u32,
    /// When SQS stored it (`SentTimestamp`).
    pub sent_at: Timestamp,
    /// When it was first received (`ApproximateFirstReceiveTimestamp`).
    pub first_receive: Option<Timestamp>,
}

/// Encodes `msg` for queues configured as `cfg`; fails with `InvalidMessage` when SQS could not
/// take it and `Unsupported` for a delay on FIFO queues.
pub fn encode(msg: &Message, cfg: &SqsConfig) -> Result<Encoded> {
    let max_payload = cfg.max_payload();
    let payload = msg.payload();
    if payload.len() > max_payload {
        return Err(Error::new(
            ErrorKind::InvalidMessage,
            format!(
                "the payload of {} is {} bytes, over the SQS adapter's limit of {max_payload} \
                 (max_message_size {} with room for base64 and squall's attributes)",
                msg.id(),
                payload.len(),
                cfg.max_message_size
            ),
        ));
    }
    let delay_seconds = match msg.delay().filter(|d| !d.is_zero()) {
        None => 0,
        Some(_) if cfg.fifo => {
            return Err(Error::unsupported(
                "sqs",
                "per-message delays on FIFO queues (SQS allows only a queue-wide delay there)",
            ));
        }
        Some(d) if d > MAX_DELAY => {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!(
                    "a delay of {d:?} is over SQS's limit of {MAX_DELAY:?} (DelaySeconds ≤ 900)"
                ),
            ));
        }
        Some(d) => ceil_secs(d) as i32,
    };
    let mut attrs: HashMap<String, MessageAttributeValue> = HashMap::new();
    let string = |v: &str| string_attr("String", v);
    attrs.insert(ATTR_SUBJECT.into(), string(msg.subject().as_str()));
    attrs.insert(ATTR_ID.into(), string(msg.id().as_str()));
    attrs.insert(
        ATTR_TS.into(),
        string_attr("Number", &msg.timestamp().as_nanos().to_string()),
    );
    if let Some(k) = msg.key() {
        attrs.insert(ATTR_KEY.into(), string(k));
    }
    if let Some(ttl) = msg.ttl() {
        let at = Timestamp::now().saturating_add(ttl);
        attrs.insert(
            ATTR_EXPIRES.into(),
            string_attr("Number", &at.as_nanos().to_string()),
        );
    }
    let body = if payload.is_empty() {
        attrs.insert(ATTR_BODY.into(), string("empty"));
        "-".to_string()
    } else {
        match std::str::from_utf8(payload) {
            Ok(text) if text.chars().all(sqs_char) => text.to_string(),
            _ => {
                attrs.insert(ATTR_BODY.into(), string("base64"));
                base64_encode(payload)
            }
        }
    };
    for (name, value) in msg.headers() {
        if let Some(c) = value.chars().find(|c| !sqs_char(*c)) {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!("header `{name}` holds {c:?}, which SQS cannot carry"),
            ));
        }
    }
    let own = attrs.len() + msg.headers().len() <= MAX_ATTRIBUTES
        && msg
            .headers()
            .iter()
            .all(|(n, v)| attribute_name_ok(n) && !v.is_empty());
    if own {
        for (n, v) in msg.headers() {
            attrs.insert(n.to_string(), string(v));
        }
    } else if !msg.headers().is_empty() {
        let pairs: Vec<(&str, &str)> = msg.headers().iter().collect();
        let json = serde_json::to_string(&pairs)
            .map_err(|e| Error::new(ErrorKind::Internal, "encoding headers").with_source(e))?;
        attrs.insert(ATTR_HEADERS.into(), string(&json));
    }
    let size = body.len()
        + attrs
            .iter()
            .map(|(n, v)| n.len() + v.data_type().len() + v.string_value().map_or(0, str::len))
            .sum::<usize>();
    if size > cfg.max_message_size {
        return Err(Error::new(
            ErrorKind::InvalidMessage,
            format!(
                "message {} is {size} bytes as SQS counts it (body and attributes), over \
                 max_message_size {}",
                msg.id(),
                cfg.max_message_size
            ),
        ));
    }
    let (group_id, dedup_id) = if cfg.fifo {
        let dedup = sqs_id(msg.id().as_str());
        let group = msg.key().map(sqs_id).unwrap_or_else(|| dedup.clone());
        (Some(group), Some(dedup))
    } else {
        (None, None)
    };
    Ok(Encoded {
        id: msg.id().clone(),
        body,
        attributes: attrs,
        size,
        delay_seconds,
        group_id,
        dedup_id,
    })
}

/// Decodes a received message. `bound` is the subject the queue is bound to, used for messages
/// other clients sent without `squall.subject`.
pub fn decode(m: &SqsMessage, bound: Option<&Subject>) -> Result<Received> {
    let empty = HashMap::new();
    let attrs = m.message_attributes().unwrap_or(&empty);
    let text = |name: &str| attrs.get(name).and_then(|v| v.string_value());
    let sys = |name: Sys| {
        m.attributes()
            .and_then(|a| a.get(&name))
            .map(String::as_str)
    };
    let ms = |v: Option<&str>| {
        v.and_then(|v| v.parse::<u64>().ok())
            .map(|ms| Timestamp(ms.saturating_mul(1_000_000)))
    };
    let invalid = |what: String| Error::new(ErrorKind::InvalidMessage, what);
    let sqs_id = m.message_id().unwrap_or("?");
    let subject = match (text(ATTR_SUBJECT), bound) {
        (Some(s), _) => Subject::new(s).map_err(|e| {
            invalid(format!(
                "SQS message {sqs_id} has an invalid {ATTR_SUBJECT}: {e}"
            ))
        })?,
        (None, Some(b)) => b.clone(),
        (None, None) => {
            return Err(invalid(format!(
                "SQS message {sqs_id} has no {ATTR_SUBJECT} attribute and its queue is not bound \
                 to a subject"
            )));
        }
    };
    let body = m.body().unwrap_or("");
    let payload = match text(ATTR_BODY) {
        Some("base64") => Bytes::from(base64_decode(body).ok_or_else(|| {
            invalid(format!(
                "SQS message {sqs_id} says its body is base64, but it is not"
            ))
        })?),
        Some("empty") => Bytes::new(),
        _ => Bytes::copy_from_slice(body.as_bytes()),
    };
    let mut msg = Message::new(subject, payload);
    let foreign = text(ATTR_ID).is_none();
    let id = text(ATTR_ID).or(m.message_id()).unwrap_or("unknown");
    msg.set_id(
        MessageId::new(id)
            .map_err(|e| invalid(format!("SQS message {sqs_id} has an invalid id: {e}")))?,
    );
    let key = match text(ATTR_KEY) {
        Some(k) => Some(k),
        None if foreign => sys(Sys::MessageGroupId),
        None => None,
    };
    msg.set_key(key)
        .map_err(|e| invalid(format!("SQS message {sqs_id} has an invalid key: {e}")))?;
    let sent_at = ms(sys(Sys::SentTimestamp)).unwrap_or_else(Timestamp::now);
    let ts = text(ATTR_TS)
        .and_then(|v| v.parse::<u64>().ok())
        .map(Timestamp)
        .unwrap_or(sent_at);
    msg.set_timestamp(ts);
    if let Some(json) = text(ATTR_HEADERS) {
        let pairs: Vec<(String, String)> = serde_json::from_str(json).map_err(|e| {
            invalid(format!(
                "SQS message {sqs_id} has a malformed {ATTR_HEADERS}: {e}"
            ))
        })?;
        for (n, v) in pairs {
            msg.headers_mut().insert(&n, &v)?;
        }
    }
    let mut names: Vec<&String> = attrs.keys().filter(|n| !is_reserved(n)).collect();
    names.sort();
    for n in names {
        let Some(v) = attrs[n].string_value() else {
            continue;
        };
        if let Err(e) = msg.headers_mut().insert(n, v) {
            tracing::debug!(attribute = %n, error = %e, "message attribute not kept as a header");
        }
    }
    let expires_at = text(ATTR_EXPIRES)
        .and_then(|v| v.parse::<u64>().ok())
        .map(Timestamp);
    let attempt = sys(Sys::ApproximateReceiveCount)
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    Ok(Received {
        message: msg,
        expires_at,
        attempt,
        sent_at,
        first_receive: ms(sys(Sys::ApproximateFirstReceiveTimestamp)),
    })
}

fn string_attr(data_type: &str, value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type(data_type)
        .string_value(value)
        .build()
        .expect("data_type is set")
}

/// Whether `c` may appear in an SQS body or attribute value.
fn sqs_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && !matches!(c, '\u{fffe}' | '\u{ffff}'))
}

fn is_reserved(name: &str) -> bool {
    name.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("squall."))
}

/// Whether a header name can be an SQS attribute name of its own.
fn attribute_name_ok(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !is_reserved(name)
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
}

/// An id SQS takes as deduplication or group id.
fn sqs_id(id: &str) -> String {
    if id.len() <= MAX_SQS_ID {
        id.to_string()
    } else {
        format!("h-{:032x}", fnv1a128(id.as_bytes()))
    }
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding required); `None` if malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| B64.iter().position(|&b| b == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, q) in s.chunks(4).enumerate() {
        let last = i == s.len() / 4 - 1;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_core::headers;

    fn cfg(fifo: bool) -> SqsConfig {
        let mut c = SqsConfig::from_url("sqs://127.0.0.1:4566?region=us-east-1").unwrap();
        c.fifo = fifo;
        c
    }

    fn sqs(e: &Encoded, extra: &[(Sys, &str)]) -> SqsMessage {
        let mut b = SqsMessage::builder()
            .message_id("0b7c8f2a-1111-2222-3333-444455556666")
            .body(&e.body)
            .set_message_attributes(Some(e.attributes.clone()));
        for (k, v) in extra {
            b = b.attributes(k.clone(), *v);
        }
        b.build()
    }

    #[test]
    fn base64_round_trips_every_length() {
        for n in 0..40usize {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let enc = base64_encode(&data);
            assert_eq!(base64_decode(&enc).as_deref(), Some(&data[..]), "{n}");
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        assert!(base64_decode("aGVsbG8").is_none());
        assert!(base64_decode("a=Vs").is_none());
    }

    #[test]
    fn a_message_round_trips_with_text_binary_and_empty_payloads() {
        for payload in [&b"plain text"[..], &[0u8, 0xff, b'\n', 7][..], &b""[..]] {
            let m = Message::builder("orders.created")
                .unwrap()
                .id("o-1")
                .unwrap()
                .key("customer-1")
                .unwrap()
                .header(headers::CONTENT_TYPE, "application/json")
                .unwrap()
                .header("x-empty", "")
                .unwrap()
                .payload(payload.to_vec())
                .ttl(Duration::from_secs(60))
                .build();
            let e = encode(&m, &cfg(false)).unwrap();
            let r = decode(&sqs(&e, &[(Sys::ApproximateReceiveCount, "3")]), None).unwrap();
            assert_eq!(r.message.payload(), m.payload());
            assert_eq!(r.message.id(), m.id());
            assert_eq!(r.message.key(), m.key());
            assert_eq!(r.message.subject(), m.subject());
            assert_eq!(r.message.timestamp(), m.timestamp());
            assert_eq!(r.message.headers(), m.headers());
            assert!(r.expires_at.is_some());
            assert_eq!(r.attempt, 3);
        }
    }

    #[test]
    fn headers_are_attributes_while_they_fit_and_json_beyond() {
        let mut b = Message::builder("a").unwrap();
        for i in 0..3 {
            b = b.header(format!("h{i}"), "v").unwrap();
        }
        let e = encode(&b.clone().build(), &cfg(false)).unwrap();
        assert!(e.attributes.contains_key("h0"), "{:?}", e.attributes.keys());
        assert!(!e.attributes.contains_key(ATTR_HEADERS));
        for i in 3..12 {
            b = b.header(format!("h{i}"), "v").unwrap();
        }
        let m = b.build();
        let e = encode(&m, &cfg(false)).unwrap();
        assert!(e.attributes.len() <= MAX_ATTRIBUTES);
        assert!(e.attributes.contains_key(ATTR_HEADERS));
        let r = decode(&sqs(&e, &[]), None).unwrap();
        assert_eq!(r.message.headers(), m.headers());
    }

    #[test]
    fn limits_are_refused_before_sending() {
        let c = cfg(false);
        let big = Message::builder("a")
            .unwrap()
            .payload(vec![1u8; c.max_payload() + 1])
            .build();
        assert_eq!(
            encode(&big, &c).unwrap_err().kind(),
            ErrorKind::InvalidMessage
        );
        let at = Message::builder("a")
            .unwrap()
            .payload(vec![1u8; c.max_payload()])
            .build();
        assert!(encode(&at, &c).unwrap().size <= c.max_message_size);
        let late = Message::builder("a")
            .unwrap()
            .delay(Duration::from_secs(901))
            .build();
        assert_eq!(
            encode(&late, &c).unwrap_err().kind(),
            ErrorKind::InvalidMessage
        );
        let soon = Message::builder("a")
            .unwrap()
            .delay(Duration::from_millis(1500))
            .build();
        assert_eq!(encode(&soon, &c).unwrap().delay_seconds, 2);
        assert_eq!(
            encode(&soon, &cfg(true)).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }

    #[test]
    fn fifo_ids_fit_sqs_and_unkeyed_messages_get_their_own_group() {
        let long = "i".repeat(200);
        let m = Message::builder("a").unwrap().id(&long).unwrap().build();
        let e = encode(&m, &cfg(true)).unwrap();
        let dedup = e.dedup_id.unwrap();
        assert!(dedup.len() <= 128 && dedup.starts_with("h-"));
        assert_eq!(e.group_id.as_deref(), Some(dedup.as_str()));
        let k = Message::builder("a").unwrap().key("k-1").unwrap().build();
        assert_eq!(
            encode(&k, &cfg(true)).unwrap().group_id.as_deref(),
            Some("k-1")
        );
    }

    #[test]
    fn a_foreign_message_takes_the_bound_subject_and_its_attributes_as_headers() {
        let m = SqsMessage::builder()
            .message_id("8d1e-foreign")
            .body("{\"n\":1}")
            .message_attributes("content-type", string_attr("String", "application/json"))
            .message_attributes("count", string_attr("Number", "7"))
            .attributes(Sys::SentTimestamp, "1700000000000")
            .attributes(Sys::MessageGroupId, "g-1")
            .build();
        let bound = Subject::new("orders.created").unwrap();
        let r = decode(&m, Some(&bound)).unwrap();
        assert_eq!(r.message.subject(), &bound);
        assert_eq!(r.message.id().as_str(), "8d1e-foreign");
        assert_eq!(r.message.key(), Some("g-1"));
        assert_eq!(&r.message.payload()[..], b"{\"n\":1}");
        assert_eq!(
            r.message.headers().get("content-type"),
            Some("application/json")
        );
        assert_eq!(r.message.headers().get("count"), Some("7"));
        assert_eq!(r.message.timestamp(), Timestamp(1_700_000_000_000_000_000));
        assert_eq!(r.attempt, 1);
        assert!(decode(&m, None).is_err());
    }
}
