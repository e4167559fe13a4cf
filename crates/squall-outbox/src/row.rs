//! How a [`Message`] maps to outbox columns and back, shared by both databases.
//!
//! Every field is stored: id, subject, key, headers (a JSON array of `[name, value]` pairs, so
//! their order survives), payload bytes, producer timestamp, delay and time to live (signed 64-bit
//! nanoseconds; a value that does not fit is refused at enqueue rather than truncated).

use std::sync::Arc;
use std::time::Duration;

use squall_core::{Message, Timestamp};

use crate::error::{Error, Result};

/// A message as column values, borrowed from the message.
pub(crate) struct Columns<'a> {
    pub id: &'a str,
    pub subject: &'a str,
    pub key: Option<&'a str>,
    pub headers: serde_json::Value,
    pub payload: &'a [u8],
    pub timestamp_ns: i64,
    pub delay_ns: Option<i64>,
    pub ttl_ns: Option<i64>,
}

fn nanos(id: &str, what: &str, d: Duration) -> Result<i64> {
    i64::try_from(d.as_nanos()).map_err(|_| Error::Unstorable {
        id: id.to_string(),
        reason: format!("{what} of {d:?} exceeds 2^63 nanoseconds"),
    })
}

impl<'a> Columns<'a> {
    pub(crate) fn new(msg: &'a Message) -> Result<Self> {
        let id = msg.id().as_str();
        let timestamp_ns =
            i64::try_from(msg.timestamp().as_nanos()).map_err(|_| Error::Unstorable {
                id: id.to_string(),
                reason: "timestamp is after the year 2262".into(),
            })?;
        let headers = serde_json::Value::Array(
            msg.headers()
                .iter()
                .map(|(n, v)| serde_json::json!([n, v]))
                .collect(),
        );
        Ok(Columns {
            id,
            subject: msg.subject().as_str(),
            key: msg.key(),
            headers,
            payload: msg.payload(),
            timestamp_ns,
            delay_ns: msg.delay().map(|d| nanos(id, "delay", d)).transpose()?,
            ttl_ns: msg.ttl().map(|d| nanos(id, "ttl", d)).transpose()?,
        })
    }
}

/// A pending row as read back, before it is turned into a [`Message`].
pub(crate) struct RawRow {
    pub seq: i64,
    pub id: String,
    pub subject: String,
    pub key: Option<String>,
    pub headers: serde_json::Value,
    pub payload: Vec<u8>,
    pub timestamp_ns: i64,
    pub delay_ns: Option<i64>,
    pub ttl_ns: Option<i64>,
}

/// A claimed row: its position, its ordering key, and the message (or why it cannot be one).
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub seq: i64,
    /// The key column as stored, even when the message does not decode: a failed row still
    /// releases the next row of its key.
    pub key: Option<Arc<str>>,
    pub message: std::result::Result<Message, String>,
}

fn duration(what: &str, ns: i64) -> std::result::Result<Duration, String> {
    u64::try_from(ns)
        .map(Duration::from_nanos)
        .map_err(|_| format!("{what} is negative ({ns} ns)"))
}

impl RawRow {
    fn message(self) -> std::result::Result<Message, String> {
        let e = |e: squall_core::Error| e.to_string();
        let mut b = Message::builder(&self.subject)
            .map_err(e)?
            .id(&self.id)
            .map_err(e)?
            .payload(self.payload)
            .timestamp(Timestamp(u64::try_from(self.timestamp_ns).map_err(
                |_| format!("timestamp is negative ({} ns)", self.timestamp_ns),
            )?));
        if let Some(k) = &self.key {
            b = b.key(k).map_err(e)?;
        }
        let pairs = self
            .headers
            .as_array()
            .ok_or("headers are not a JSON array of [name, value] pairs")?;
        for pair in pairs {
            match pair.as_array().map(Vec::as_slice) {
                Some([serde_json::Value::String(n), serde_json::Value::String(v)]) => {
                    b = b.header(n, v).map_err(e)?;
                }
                _ => return Err(format!("header {pair} is not a [name, value] pair")),
            }
        }
        if let Some(d) = self.delay_ns {
            b = b.delay(duration("delay", d)?);
        }
        if let Some(d) = self.ttl_ns {
            b = b.ttl(duration("ttl", d)?);
        }
        Ok(b.build())
    }

    /// Decodes the row; a row that does not make a valid message (edited by hand, written by a
    /// newer version) is kept with the reason, and the relay marks it failed.
    pub(crate) fn decode(self) -> Row {
        let seq = self.seq;
        let key = self.key.as_deref().map(Arc::from);
        let message = self
            .message()
            .map_err(|why| format!("outbox row {seq} is not a valid message: {why}"));
        Row { seq, key, message }
    }
}

/// What became of a claimed row; the store records it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// The publisher confirmed it (`duplicate`: its id was already stored).
    Published { seq: i64, duplicate: bool },
    /// It can never be published (non-retryable error or undecodable row): status `failed`.
    Failed { seq: i64, error: String },
    /// A retryable error: it stays pending; the attempt and the error are recorded.
    Retry { seq: i64, error: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(msg: &Message) -> Row {
        let c = Columns::new(msg).unwrap();
        RawRow {
            seq: 7,
            id: c.id.into(),
            subject: c.subject.into(),
            key: c.key.map(Into::into),
            headers: c.headers,
            payload: c.payload.to_vec(),
            timestamp_ns: c.timestamp_ns,
            delay_ns: c.delay_ns,
            ttl_ns: c.ttl_ns,
        }
        .decode()
    }

    #[test]
    fn every_field_survives_the_columns() {
        let msg = Message::builder("orders.created")
            .unwrap()
            .id("order-1")
            .unwrap()
            .key("customer-9")
            .unwrap()
            .header("b-second", "2")
            .unwrap()
            .header("a-first", "1\twith tab")
            .unwrap()
            .payload(vec![0u8, 159, 255])
            .timestamp(Timestamp(1_700_000_000_123_456_789))
            .delay(Duration::from_nanos(1_500))
            .ttl(Duration::from_secs(60))
            .build();
        let row = round_trip(&msg);
        assert_eq!(row.key.as_deref(), Some("customer-9"));
        assert_eq!(row.message.unwrap(), msg, "headers keep their order");
        let bare = Message::builder("a").unwrap().build();
        assert_eq!(round_trip(&bare).message.unwrap(), bare);
    }

    #[test]
    fn values_that_do_not_fit_are_refused_not_truncated() {
        let far = Message::builder("a")
            .unwrap()
            .timestamp(Timestamp(u64::MAX))
            .build();
        assert!(matches!(Columns::new(&far), Err(Error::Unstorable { .. })));
        let long = Message::builder("a").unwrap().ttl(Duration::MAX).build();
        let err = Columns::new(&long).err().expect("refused");
        assert!(err.to_string().contains("ttl"), "{err}");
    }

    #[test]
    fn a_corrupt_row_decodes_to_its_reason_with_its_key() {
        let row = RawRow {
            seq: 3,
            id: "x".into(),
            subject: "bad subject".into(),
            key: Some("k".into()),
            headers: serde_json::json!([]),
            payload: vec![],
            timestamp_ns: 0,
            delay_ns: None,
            ttl_ns: None,
        }
        .decode();
        assert_eq!(row.key.as_deref(), Some("k"));
        let why = row.message.unwrap_err();
        assert!(
            why.starts_with("outbox row 3 is not a valid message"),
            "{why}"
        );
    }
}
