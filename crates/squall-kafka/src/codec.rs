//! A squall [`Message`] as a Kafka record, and back.
//!
//! | squall | Kafka record |
//! |---|---|
//! | subject | the topic (see [`crate::topics`]); a hashed topic also carries `squall.subject` |
//! | key | the record key (so Kafka's partitioner sends one key to one partition) |
//! | payload | the record value |
//! | headers | record headers, same names, UTF-8 values |
//! | id | header `squall.id` |
//! | timestamp | the record timestamp (`CreateTime`, milliseconds) and header `squall.timestamp` (nanoseconds, exact) |
//!
//! Header names starting with `squall.` are the adapter's; a message carrying one of its own is
//! refused with `InvalidMessage`.
//!
//! Records written by other producers are read as faithfully as squall's model allows:
//! - no `squall.id`: the id is `<topic>/<partition>/<offset>` (the same on every redelivery);
//! - no `squall.timestamp`: the record timestamp;
//! - a key that is not a squall key (1 to 256 printable ASCII bytes without spaces): no key,
//!   and its bytes in hex in the header `kafka-key-hex`;
//! - headers squall cannot hold (names outside `[A-Za-z0-9._-]`, values that are not UTF-8 text
//!   without control characters, or past the headers size limit): left out, and their names
//!   listed (comma-separated, escaped) in the header `kafka-dropped-headers`.

use std::fmt::Write as _;

use rdkafka::message::{Header, OwnedHeaders};
use squall_core::headers::MAX_HEADERS_LEN;
use squall_core::{Error, ErrorKind, Message, MessageId, Result, Subject, Timestamp};

use crate::topics;

/// Header carrying the squall message id.
pub const ID: &str = "squall.id";
/// Header carrying the producer timestamp in nanoseconds since the epoch.
pub const TIMESTAMP: &str = "squall.timestamp";
/// Header carrying the subject of a message whose topic name is hashed.
pub const SUBJECT: &str = "squall.subject";
/// Header naming the headers of a foreign record that squall could not represent.
pub const DROPPED: &str = "kafka-dropped-headers";
/// Header carrying, in hex, a foreign record key that is not a valid squall key.
pub const KEY_HEX: &str = "kafka-key-hex";

/// A message ready for the producer.
pub(crate) struct Encoded {
    pub topic: String,
    pub key: Option<String>,
    pub headers: OwnedHeaders,
    pub timestamp_ms: i64,
}

/// Encodes `msg` for the topic its subject maps to under `prefix`.
pub(crate) fn encode(prefix: &str, msg: &Message) -> Result<Encoded> {
    let topic = topics::topic_for(prefix, msg.subject());
    let mut headers = OwnedHeaders::new_with_capacity(msg.headers().len() + 3);
    let ts = msg.timestamp().as_nanos().to_string();
    headers = headers
        .insert(Header {
            key: ID,
            value: Some(msg.id().as_str()),
        })
        .insert(Header {
            key: TIMESTAMP,
            value: Some(ts.as_str()),
        });
    if topics::is_hashed(prefix, &topic) {
        headers = headers.insert(Header {
            key: SUBJECT,
            value: Some(msg.subject().as_str()),
        });
    }
    for (name, value) in msg.headers() {
        if is_reserved(name) {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!(
                    "header `{name}`: names starting with `squall.` are reserved by the Kafka adapter"
                ),
            ));
        }
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let nanos = msg.timestamp().as_nanos();
    Ok(Encoded {
        topic,
        key: msg.key().map(str::to_string),
        headers,
        timestamp_ms: i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX),
    })
}

fn is_reserved(name: &str) -> bool {
    name.len() >= 7 && name[..7].eq_ignore_ascii_case("squall.")
}

/// A record as the consumer saw it, borrowed from librdkafka.
pub(crate) struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
    /// Record timestamp in milliseconds, if it has one.
    pub timestamp_ms: Option<i64>,
}

/// A decoded record: the message and when the broker (or its producer) timestamped it.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub message: Message,
    pub published_at: Timestamp,
}

/// Decodes a record read from a topic under `prefix`. Fails with `InvalidSubject` only when
/// the record has no usable subject: a topic that is not an escaped subject and no valid
/// `squall.subject` header.
pub(crate) fn decode(prefix: &str, rec: &Record<'_>) -> Result<Decoded> {
    let header = |name: &str| {
        rec.headers
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| *v)
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    let subject = match header(SUBJECT).and_then(|s| Subject::new(s).ok()) {
        Some(s) => s,
        None => topics::subject_for(prefix, rec.topic).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidSubject,
                format!(
                    "record {}/{}/{}: the topic is not an escaped squall subject under prefix `{prefix}` and the record has no valid `{SUBJECT}` header",
                    rec.topic, rec.partition, rec.offset
                ),
            )
        })?,
    };
    let payload = bytes::Bytes::copy_from_slice(rec.payload.unwrap_or_default());
    let mut msg = Message::new(subject, payload);
    let id = header(ID)
        .and_then(|s| MessageId::new(s).ok())
        .unwrap_or_else(|| fallback_id(rec));
    msg.set_id(id);
    let published_at = rec
        .timestamp_ms
        .filter(|ms| *ms > 0)
        .map(|ms| Timestamp((ms as u64).saturating_mul(1_000_000)))
        .unwrap_or_else(Timestamp::now);
    let ts = header(TIMESTAMP)
        .and_then(|s| s.parse::<u64>().ok())
        .map(Timestamp)
        .unwrap_or(published_at);
    msg.set_timestamp(ts);
    let mut dropped = Vec::new();
    if let Some(key) = rec.key {
        let ok = std::str::from_utf8(key)
            .ok()
            .is_some_and(|k| msg.set_key(Some(k)).is_ok());
        if !ok {
            let mut hex = String::with_capacity(key.len() * 2);
            for b in key {
                let _ = write!(hex, "{b:02x}");
            }
            if msg.headers_mut().insert(KEY_HEX, &hex).is_err() {
                dropped.push("(record key)".to_string());
            }
        }
    }
    for (name, value) in &rec.headers {
        if is_reserved(name) {
            continue;
        }
        let text = match value {
            None => Some(""),
            Some(v) => std::str::from_utf8(v).ok(),
        };
        let kept = text.is_some_and(|t| {
            // Leave room for the list of dropped names.
            msg.headers().encoded_len() + name.len() + t.len() + 8 <= MAX_HEADERS_LEN - 1024
                && msg.headers_mut().insert(name, t).is_ok()
        });
        if !kept {
            dropped.push(name.escape_default().to_string());
        }
    }
    if !dropped.is_empty() {
        let mut list = dropped.join(",");
        list.truncate(900);
        let _ = msg.headers_mut().insert(DROPPED, list);
    }
    Ok(Decoded {
        message: msg,
        published_at,
    })
}

/// `<topic>/<partition>/<offset>`, or a hash of the topic when that is too long for an id.
fn fallback_id(rec: &Record<'_>) -> MessageId {
    let natural = format!("{}/{}/{}", rec.topic, rec.partition, rec.offset);
    if let Ok(id) = MessageId::new(&natural) {
        return id;
    }
    let h = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, rec.topic.as_bytes());
    MessageId::new(format!(
        "kafka-{}/{}/{}",
        h.simple(),
        rec.partition,
        rec.offset
    ))
    .unwrap_or_else(|_| MessageId::generate())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn record<'a>(
        topic: &'a str,
        key: Option<&'a [u8]>,
        headers: Vec<(&'a str, Option<&'a [u8]>)>,
    ) -> Record<'a> {
        Record {
            topic,
            partition: 2,
            offset: 41,
            key,
            payload: Some(b"body"),
            headers,
            timestamp_ms: Some(1_700_000_000_123),
        }
    }

    #[test]
    fn a_message_round_trips() {
        let msg = Message::builder("orders.eu")
            .unwrap()
            .id("o-1")
            .unwrap()
            .key("customer-9")
            .unwrap()
            .header("content-type", "application/json")
            .unwrap()
            .header("empty", "")
            .unwrap()
            .payload("{}")
            .build();
        let enc = encode("p.", &msg).unwrap();
        assert_eq!(enc.topic, "p.orders.eu");
        assert_eq!(enc.key.as_deref(), Some("customer-9"));
        assert_eq!(
            enc.timestamp_ms as u64,
            msg.timestamp().as_nanos() / 1_000_000
        );
        let hs: Vec<(&str, Option<&[u8]>)> = enc.headers.iter().map(|h| (h.key, h.value)).collect();
        let rec = Record {
            topic: &enc.topic,
            partition: 0,
            offset: 7,
            key: Some(b"customer-9"),
            payload: Some(b"{}"),
            headers: hs,
            timestamp_ms: Some(enc.timestamp_ms),
        };
        let d = decode("p.", &rec).unwrap();
        assert_eq!(d.message.id().as_str(), "o-1");
        assert_eq!(d.message.subject(), msg.subject());
        assert_eq!(d.message.key(), Some("customer-9"));
        assert_eq!(d.message.timestamp(), msg.timestamp(), "nanoseconds kept");
        assert_eq!(
            d.message.headers(),
            msg.headers(),
            "no adapter header leaks"
        );
        assert_eq!(&d.message.payload()[..], b"{}");
    }

    #[test]
    fn reserved_header_names_are_refused() {
        let msg = Message::builder("a")
            .unwrap()
            .header("Squall.id", "x")
            .unwrap()
            .build();
        let e = encode("", &msg).err().expect("refused");
        assert_eq!(e.kind(), ErrorKind::InvalidMessage);
    }

    #[test]
    fn foreign_records_are_read_without_loss_of_what_fits() {
        let bin: &[u8] = &[0, 255];
        let rec = record(
            "plain.topic",
            Some(&[1, 2, 0xff]),
            vec![
                ("x-a", Some(b"va")),
                ("bin", Some(bin)),
                ("bad name", Some(b"v")),
                ("nul", None),
            ],
        );
        let d = decode("", &rec).unwrap();
        let m = &d.message;
        assert_eq!(m.subject().as_str(), "plain.topic");
        assert_eq!(m.id().as_str(), "plain.topic/2/41");
        assert_eq!(m.key(), None);
        assert_eq!(m.headers().get(KEY_HEX), Some("0102ff"));
        assert_eq!(m.headers().get("x-a"), Some("va"));
        assert_eq!(m.headers().get("nul"), Some(""));
        assert_eq!(m.headers().get(DROPPED), Some("bin,bad name"));
        assert_eq!(d.published_at, Timestamp(1_700_000_000_123_000_000));
        assert_eq!(m.timestamp(), d.published_at);
    }

    #[test]
    fn a_topic_that_is_no_subject_needs_the_header() {
        let rec = record("a_zz", None, vec![]);
        assert_eq!(
            decode("", &rec).unwrap_err().kind(),
            ErrorKind::InvalidSubject
        );
        let rec = record("a_zz", None, vec![(SUBJECT, Some(b"real.subject"))]);
        assert_eq!(
            decode("", &rec).unwrap().message.subject().as_str(),
            "real.subject"
        );
        let rec = record("other.x", None, vec![]);
        assert!(decode("sq.", &rec).is_err(), "outside the prefix");
    }
}
