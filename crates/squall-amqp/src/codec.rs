//! A squall [`Message`] as an AMQP message, and back.
//!
//! | squall | AMQP |
//! |---|---|
//! | id | `message-id` property (`x-squall-id` header when over 255 bytes) |
//! | subject | routing key (`x-squall-subject` header when it cannot be: 256 bytes, or a retry sent through the default exchange) |
//! | key | `x-squall-key` header |
//! | timestamp | `timestamp` property (seconds) and `x-squall-timestamp` (nanoseconds, exact round trip) |
//! | header `content-type`, `correlation-id`, `reply-to` | the properties of the same name (in the table when over 255 bytes) |
//! | every other header | an entry of the headers table, as a long string |
//! | ttl | `expiration` property (ms) and `x-squall-expires-at`, checked again on receipt |
//! | payload | body, unchanged |
//!
//! Receiving a message published by another client: the routing key is the subject, a missing
//! `message-id` gets a generated id, a `message-id` squall cannot use (spaces, over 256 bytes) is
//! replaced by a generated one and kept in the `amqp-message-id` header, and header values that
//! are not strings are rendered (numbers and booleans as text, arrays and tables as JSON). Header
//! names squall refuses (spaces, `:`...) and values that are not UTF-8 or hold control characters
//! are skipped, with a warning in the log: squall headers are text.
//!
//! Names starting with `x-squall-` or `squall-route-` are the adapter's own: refused on publish,
//! removed on receipt.

use std::time::Duration;

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use squall_core::{Error, ErrorKind, Headers, Message, MessageId, Result, Subject, Timestamp};

use crate::routing::{MAX_ROUTING_KEY, routing_key};

pub(crate) const H_SUBJECT: &str = "x-squall-subject";
pub(crate) const H_ID: &str = "x-squall-id";
pub(crate) const H_KEY: &str = "x-squall-key";
pub(crate) const H_TIMESTAMP: &str = "x-squall-timestamp";
pub(crate) const H_EXPIRES_AT: &str = "x-squall-expires-at";
pub(crate) const H_TTL: &str = "x-squall-ttl";
/// Deliveries before this copy was published (a retry carries the count).
pub(crate) const H_ATTEMPT: &str = "x-squall-attempt";
/// When each earlier delivery started, nanoseconds.
pub(crate) const H_ATTEMPTS: &str = "x-squall-attempts";
/// Set on copies that pass through a delay queue.
pub(crate) const H_DELAYED: &str = "x-squall-delayed";
/// Routes on a headers exchange (without `x-`: RabbitMQ ignores `x-` headers when matching).
pub(crate) const H_ROUTE_SUBJECT: &str = "squall-route-subject";
pub(crate) const H_ROUTE_DELAY: &str = "squall-route-delay";
pub(crate) const H_ROUTE_TO: &str = "squall-route-to";
/// Where an unusable foreign `message-id` is kept.
pub const H_AMQP_MESSAGE_ID: &str = "amqp-message-id";

const MIRRORED: [&str; 3] = [
    squall_core::headers::CONTENT_TYPE,
    squall_core::headers::CORRELATION_ID,
    squall_core::headers::REPLY_TO,
];

/// Whether `name` is one of the adapter's own header names.
pub(crate) fn is_internal(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("x-squall-") || n.starts_with("squall-route-")
}

pub(crate) fn short(what: &str, s: &str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|_| {
        Error::new(
            ErrorKind::InvalidMessage,
            format!("{what} is {} bytes, over AMQP's 255", s.len()),
        )
    })
}

fn nanos(t: Timestamp) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(t.as_nanos()).unwrap_or(i64::MAX))
}

fn ttl_ms(ttl: Duration) -> u64 {
    // Rounded up: a message must not be discarded before its time to live.
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// A message ready for `basic.publish`.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub routing_key: ShortString,
    pub properties: BasicProperties,
    pub payload: Bytes,
}

/// Encodes `msg`. `persistent` sets the delivery mode; `in_delay` leaves out the broker-side
/// expiration (a message expiring in a delay queue would be dead-lettered onward, not dropped);
/// `route_subject` adds the header a headers exchange routes on.
pub(crate) fn encode(
    msg: &Message,
    persistent: bool,
    in_delay: bool,
    route_subject: bool,
) -> Result<Outgoing> {
    let mut table = FieldTable::default();
    let mut props = BasicProperties::default();
    for (name, value) in msg.headers() {
        if is_internal(name) {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!(
                    "header `{name}`: names starting with `x-squall-` or `squall-route-` are reserved by the AMQP adapter"
                ),
            ));
        }
        let lower = name.to_ascii_lowercase();
        if MIRRORED.contains(&lower.as_str()) && value.len() <= MAX_ROUTING_KEY {
            let v = short(name, value)?;
            props = match lower.as_str() {
                "content-type" => props.with_content_type(v),
                "correlation-id" => props.with_correlation_id(v),
                _ => props.with_reply_to(v),
            };
            continue;
        }
        table.insert(
            short("header name", name)?,
            AMQPValue::LongString(value.into()),
        );
    }
    let (rk, long) = routing_key(msg.subject());
    if long {
        table.insert(
            H_SUBJECT.into(),
            AMQPValue::LongString(msg.subject().as_str().into()),
        );
    }
    if route_subject {
        table.insert(
            H_ROUTE_SUBJECT.into(),
            AMQPValue::LongString(msg.subject().as_str().into()),
        );
    }
    let id = msg.id().as_str();
    match ShortString::try_new(id) {
        Ok(s) => props = props.with_message_id(s),
        Err(_) => {
            table.insert(H_ID.into(), AMQPValue::LongString(id.into()));
        }
    }
    if let Some(k) = msg.key() {
        table.insert(H_KEY.into(), AMQPValue::LongString(k.into()));
    }
    let ts = msg.timestamp();
    props = props.with_timestamp(ts.as_nanos() / 1_000_000_000);
    table.insert(H_TIMESTAMP.into(), nanos(ts));
    if let Some(ttl) = msg.ttl() {
        let ms = ttl_ms(ttl);
        // Counted from when the broker stores it, like the delay: a ttl shorter than the delay
        // means the message is never delivered.
        table.insert(
            H_EXPIRES_AT.into(),
            nanos(Timestamp::now().saturating_add(ttl)),
        );
        table.insert(
            H_TTL.into(),
            AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX)),
        );
        if !in_delay {
            props = props.with_expiration(ms.to_string().into());
        }
    }
    props = props
        .with_delivery_mode(if persistent { 2 } else { 1 })
        .with_headers(table);
    Ok(Outgoing {
        routing_key: rk.into(),
        properties: props,
        payload: msg.payload().clone(),
    })
}

/// What a received AMQP message says besides the squall message.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    /// Deliveries recorded before this copy was published (retries carry it).
    pub prior_attempts: u32,
    /// When those deliveries started.
    pub attempts: Vec<Timestamp>,
    /// When the message must be discarded, if it has a time to live.
    pub expires_at: Option<Timestamp>,
}

/// Decodes a received message. `routing_key` is the delivery's. Fails with `InvalidMessage` when
/// no valid subject can be found.
pub(crate) fn decode(
    routing_key: &str,
    props: &BasicProperties,
    payload: Bytes,
) -> Result<(Message, Meta)> {
    let empty = FieldTable::default();
    let table = props.headers().as_ref().unwrap_or(&empty);
    let get = |k: &str| table.inner().get(k);
    let subject_text = match get(H_SUBJECT) {
        Some(v) => text(v).unwrap_or_default(),
        None => routing_key.to_string(),
    };
    let subject = Subject::new(&subject_text).map_err(|e| {
        Error::new(
            ErrorKind::InvalidMessage,
            format!(
                "a message with routing key `{}` has no valid squall subject: {e}",
                routing_key.escape_debug()
            ),
        )
    })?;
    let mut msg = Message::new(subject, payload);
    let mut headers = Headers::new();
    let raw_id = get(H_ID)
        .and_then(text)
        .or_else(|| props.message_id().as_ref().map(|s| s.to_string()));
    if let Some(raw) = raw_id {
        match MessageId::new(&raw) {
            Ok(id) => msg.set_id(id),
            Err(_) => insert(&mut headers, H_AMQP_MESSAGE_ID, &raw),
        }
    }
    if let Some(k) = get(H_KEY).and_then(text)
        && let Err(e) = msg.set_key(Some(&k))
    {
        tracing::warn!(error = %e, "dropping an unusable key from an AMQP message");
    }
    let ts = get(H_TIMESTAMP)
        .and_then(int)
        .map(|n| Timestamp(u64::try_from(n).unwrap_or(0)))
        .or_else(|| {
            props
                .timestamp()
                .map(|s| Timestamp(s.saturating_mul(1_000_000_000)))
        });
    if let Some(ts) = ts {
        msg.set_timestamp(ts);
    }
    let ttl = get(H_TTL).and_then(int).or_else(|| {
        props
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse::<i64>().ok())
    });
    msg.set_ttl(ttl.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))));
    let delayed = table.contains_key(H_DELAYED);
    for (k, v) in table.inner() {
        let k = k.as_str();
        if is_internal(k) || (delayed && is_dead_letter_trace(k)) {
            continue;
        }
        match render(v) {
            Some(s) => insert(&mut headers, k, &s),
            None => tracing::warn!(header = k, "skipping a binary AMQP header value"),
        }
    }
    let mirrored = [
        (MIRRORED[0], props.content_type()),
        (MIRRORED[1], props.correlation_id()),
        (MIRRORED[2], props.reply_to()),
    ];
    for (name, value) in mirrored {
        if let Some(v) = value {
            insert(&mut headers, name, v.as_str());
        }
    }
    *msg.headers_mut() = headers;
    let meta = Meta {
        prior_attempts: get(H_ATTEMPT)
            .and_then(int)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        attempts: match get(H_ATTEMPTS) {
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .filter_map(int)
                .map(|n| Timestamp(u64::try_from(n).unwrap_or(0)))
                .collect(),
            _ => Vec::new(),
        },
        expires_at: get(H_EXPIRES_AT)
            .and_then(int)
            .map(|n| Timestamp(u64::try_from(n).unwrap_or(0))),
    };
    Ok((msg, meta))
}

/// The quorum queue's count of earlier returns of this copy, if the broker set it.
pub(crate) fn delivery_count(props: &BasicProperties) -> Option<u32> {
    props
        .headers()
        .as_ref()?
        .inner()
        .get("x-delivery-count")
        .and_then(int)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

fn is_dead_letter_trace(k: &str) -> bool {
    k == "x-death" || k.starts_with("x-first-death-") || k.starts_with("x-last-death-")
}

fn insert(headers: &mut Headers, name: &str, value: &str) {
    if let Err(e) = headers.insert(name, value) {
        tracing::warn!(header = name, error = %e, "skipping an AMQP header squall cannot carry");
    }
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn int(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok()?,
        _ => return None,
    })
}

/// A header value as text: strings as they are, scalars as text, arrays and tables as JSON.
/// `None` for bytes that are not UTF-8.
fn render(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => text(v)?,
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::DecimalValue(d) => {
            let scale = 10f64.powi(i32::from(d.scale));
            (f64::from(d.value) / scale).to_string()
        }
        AMQPValue::Void => String::new(),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => json(v)?.to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8(b.as_slice().to_vec()).ok()?,
        other => int(other)?.to_string(),
    })
}

fn json(v: &AMQPValue) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    Some(match v {
        AMQPValue::FieldArray(a) => J::Array(a.as_slice().iter().filter_map(json).collect()),
        AMQPValue::FieldTable(t) => J::Object(
            t.inner()
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), json(v)?)))
                .collect(),
        ),
        AMQPValue::Boolean(b) => J::Bool(*b),
        AMQPValue::Void => J::Null,
        AMQPValue::Float(_) | AMQPValue::Double(_) | AMQPValue::DecimalValue(_) => {
            render(v)?.parse::<f64>().ok().map(J::from)?
        }
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) | AMQPValue::ByteArray(_) => {
            J::String(render(v)?)
        }
        other => J::from(int(other)?),
    })
}

/// The properties of a retry copy: the received properties with the subject, the delivery count
/// and the attempt times updated, the broker's dead-letter trace removed, and the expiration set
/// to what is left of the time to live (`None`: no time to live).
pub(crate) fn retry_properties(
    props: &BasicProperties,
    subject: &Subject,
    attempt: u32,
    attempts: &[Timestamp],
    left: Option<Duration>,
    delayed: bool,
) -> BasicProperties {
    let mut map = props
        .headers()
        .as_ref()
        .map(|t| t.inner().clone())
        .unwrap_or_default();
    map.retain(|k, _| {
        let k = k.as_str();
        !is_dead_letter_trace(k) && k != "x-delivery-count" && k != H_DELAYED
    });
    map.insert(
        H_SUBJECT.into(),
        AMQPValue::LongString(subject.as_str().into()),
    );
    map.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(attempt)));
    let times: Vec<AMQPValue> = attempts.iter().map(|t| nanos(*t)).collect();
    map.insert(
        H_ATTEMPTS.into(),
        AMQPValue::FieldArray(FieldArray::from(times)),
    );
    if delayed {
        map.insert(H_DELAYED.into(), AMQPValue::Boolean(true));
    }
    let mut p = props.clone().with_headers(FieldTable::from(map));
    // An expiration cannot be removed from properties; set it to what is left, or to a day for a
    // copy on its way through a delay queue (the receipt-side check still applies).
    if let Some(left) = left {
        if delayed {
            p = p.with_expiration(ttl_ms(Duration::from_secs(86_400)).to_string().into());
        } else {
            p = p.with_expiration(ttl_ms(left).to_string().into());
        }
    }
    p
}

/// Adds the headers that route a copy through the delay exchange.
pub(crate) fn with_delay_route(
    props: BasicProperties,
    delay_ms: u64,
    to_queue: bool,
) -> BasicProperties {
    let mut map = props
        .headers()
        .as_ref()
        .map(|t| t.inner().clone())
        .unwrap_or_default();
    map.insert(
        H_ROUTE_DELAY.into(),
        AMQPValue::LongString(LongString::from(delay_ms.to_string())),
    );
    map.insert(
        H_ROUTE_TO.into(),
        AMQPValue::LongString(LongString::from(if to_queue {
            "queue"
        } else {
            "exchange"
        })),
    );
    map.insert(H_DELAYED.into(), AMQPValue::Boolean(true));
    props.with_headers(FieldTable::from(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_core::headers::{CONTENT_TYPE, CORRELATION_ID, REPLY_TO};

    fn round_trip(m: &Message) -> (Message, Meta) {
        let out = encode(m, true, false, false).unwrap();
        decode(
            out.routing_key.as_str(),
            &out.properties,
            out.payload.clone(),
        )
        .unwrap()
    }

    #[test]
    fn a_message_round_trips_exactly() {
        let m = Message::builder("orders.eu.created")
            .unwrap()
            .id("o-1")
            .unwrap()
            .key("customer-7")
            .unwrap()
            .header(CONTENT_TYPE, "application/json")
            .unwrap()
            .header(CORRELATION_ID, "c-9")
            .unwrap()
            .header(REPLY_TO, "_inbox.x")
            .unwrap()
            .header("x-index", "3")
            .unwrap()
            .ttl(Duration::from_millis(1500))
            .payload(&b"\x00\xffbody"[..])
            .build();
        let out = encode(&m, true, false, false).unwrap();
        assert_eq!(
            out.properties.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(
            out.properties.message_id().as_ref().unwrap().as_str(),
            "o-1"
        );
        assert_eq!(out.properties.delivery_mode(), &Some(2));
        assert_eq!(
            out.properties.expiration().as_ref().unwrap().as_str(),
            "1500"
        );
        let (back, meta) = round_trip(&m);
        assert_eq!(back.id(), m.id());
        assert_eq!(back.subject(), m.subject());
        assert_eq!(back.key(), m.key());
        assert_eq!(back.payload(), m.payload());
        assert_eq!(back.timestamp(), m.timestamp());
        assert_eq!(back.ttl(), m.ttl());
        for (k, v) in m.headers() {
            assert_eq!(back.headers().get(k), Some(v), "header {k}");
        }
        assert_eq!(
            back.headers().len(),
            m.headers().len(),
            "{:?}",
            back.headers()
        );
        assert!(meta.expires_at.is_some());
        assert_eq!(meta.prior_attempts, 0);
    }

    #[test]
    fn long_ids_and_subjects_travel_in_headers() {
        let long_subject = format!("a.{}", "b".repeat(254));
        let m = Message::builder(&long_subject)
            .unwrap()
            .id("i".repeat(256))
            .unwrap()
            .build();
        let out = encode(&m, true, false, false).unwrap();
        assert_eq!(out.routing_key.as_str(), crate::routing::LONG_SUBJECT_KEY);
        assert!(out.properties.message_id().is_none());
        let (back, _) = round_trip(&m);
        assert_eq!(back.subject().as_str(), long_subject);
        assert_eq!(back.id(), m.id());
    }

    #[test]
    fn reserved_names_are_refused_and_payload_checked_elsewhere() {
        let m = Message::builder("a")
            .unwrap()
            .header("x-squall-key", "v")
            .unwrap()
            .build();
        let e = encode(&m, true, false, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidMessage);
        assert!(e.to_string().contains("reserved"), "{e}");
    }

    #[test]
    fn foreign_messages_are_decoded_with_their_properties() {
        let mut t = FieldTable::default();
        t.insert("tenant".into(), AMQPValue::LongString("acme".into()));
        t.insert("count".into(), AMQPValue::LongInt(7));
        t.insert("ok".into(), AMQPValue::Boolean(true));
        t.insert("bad name".into(), AMQPValue::LongString("x".into()));
        t.insert(
            "list".into(),
            AMQPValue::FieldArray(
                vec![AMQPValue::LongInt(1), AMQPValue::LongString("a".into())].into(),
            ),
        );
        let props = BasicProperties::default()
            .with_message_id("has space".into())
            .with_correlation_id("c-1".into())
            .with_timestamp(1_700_000_000)
            .with_headers(t);
        let (m, meta) = decode("billing.paid", &props, Bytes::from_static(b"p")).unwrap();
        assert_eq!(m.subject().as_str(), "billing.paid");
        assert_eq!(m.headers().get("tenant"), Some("acme"));
        assert_eq!(m.headers().get("count"), Some("7"));
        assert_eq!(m.headers().get("ok"), Some("true"));
        assert_eq!(m.headers().get("list"), Some(r#"[1,"a"]"#));
        assert_eq!(m.headers().get("bad name"), None);
        assert_eq!(m.headers().get(H_AMQP_MESSAGE_ID), Some("has space"));
        assert_ne!(m.id().as_str(), "has space");
        assert_eq!(m.correlation_id(), Some("c-1"));
        assert_eq!(m.timestamp(), Timestamp(1_700_000_000_000_000_000));
        assert_eq!(meta.prior_attempts, 0);
        let e = decode("a..b", &BasicProperties::default(), Bytes::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidMessage);
    }

    #[test]
    fn retries_carry_attempts_and_drop_the_dead_letter_trace() {
        let m = Message::builder("a.b").unwrap().build();
        let out = encode(&m, true, false, false).unwrap();
        let mut map = out.properties.headers().clone().unwrap().inner().clone();
        map.insert("x-death".into(), AMQPValue::LongString("trace".into()));
        let props = out.properties.clone().with_headers(FieldTable::from(map));
        let times = [Timestamp(5), Timestamp(9)];
        let retry = retry_properties(&props, m.subject(), 2, &times, None, false);
        let (back, meta) = decode("queue-name", &retry, Bytes::new()).unwrap();
        assert_eq!(back.subject(), m.subject());
        assert_eq!(meta.prior_attempts, 2);
        assert_eq!(meta.attempts, times);
        assert_eq!(back.headers().get("x-death"), None);
    }
}
