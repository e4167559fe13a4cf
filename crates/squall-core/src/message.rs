//! The message: id, subject, optional key, headers, payload, timestamp, and delivery hints (delay,
//! time to live).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::error::{Error, ErrorKind};
use crate::headers::{self, Headers};
use crate::subject::Subject;

/// The longest message id or key, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Nanoseconds since the Unix epoch. Wall-clock time as the broker's clock tells it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current system time.
    pub fn now() -> Self {
        Timestamp::from(SystemTime::now())
    }

    /// Nanoseconds since the epoch.
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// How long after `earlier` this is, zero if it is not after.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        UNIX_EPOCH + Duration::from_nanos(t.0)
    }
}

/// A message id: unique per producer, used for deduplication. Set by the producer or generated
/// (UUIDv7: unique and sortable by creation time).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(Arc<str>);

impl MessageId {
    /// A fresh unique id.
    pub fn generate() -> Self {
        MessageId(uuid::Uuid::now_v7().to_string().into())
    }

    /// Validates a producer-chosen id: 1 to [`MAX_ID_LEN`] bytes of printable ASCII.
    pub fn new(id: impl AsRef<str>) -> Result<Self, Error> {
        let id = id.as_ref();
        check_token("message id", id)?;
        Ok(MessageId(id.into()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_token(what: &str, s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(Error::new(
            ErrorKind::InvalidMessage,
            format!("{what} must be 1 to {MAX_ID_LEN} bytes, got {}", s.len()),
        ));
    }
    if s.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(Error::new(
            ErrorKind::InvalidMessage,
            format!(
                "{what} `{}` must be printable ASCII without spaces",
                s.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// A message. Cheap to clone: the payload is shared [`Bytes`], strings are reference counted.
///
/// ```
/// use squall_core::{Message, headers};
/// use std::time::Duration;
///
/// let msg = Message::builder("orders.created")?
///     .key("customer-42")?
///     .header(headers::CONTENT_TYPE, "application/json")?
///     .delay(Duration::from_secs(5))
///     .payload(r#"{"id":1}"#)
///     .build();
/// assert_eq!(msg.subject().as_str(), "orders.created");
/// assert_eq!(msg.key(), Some("customer-42"));
/// # Ok::<(), squall_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    id: MessageId,
    subject: Subject,
    key: Option<Arc<str>>,
    headers: Headers,
    payload: Bytes,
    timestamp: Timestamp,
    delay: Option<Duration>,
    ttl: Option<Duration>,
}

impl Message {
    /// A message with a generated id, the current time, no key and no headers.
    pub fn new(subject: Subject, payload: impl Into<Bytes>) -> Self {
        Message {
            id: MessageId::generate(),
            subject,
            key: None,
            headers: Headers::new(),
            payload: payload.into(),
            timestamp: Timestamp::now(),
            delay: None,
            ttl: None,
        }
    }

    /// Starts a builder for `subject` (validated).
    pub fn builder(subject: impl AsRef<str>) -> Result<MessageBuilder, Error> {
        Ok(MessageBuilder(Message::new(
            Subject::new(subject)?,
            Bytes::new(),
        )))
    }

    /// The reply to `request`: addressed to its reply subject, carrying its correlation id.
    /// Fails with [`ErrorKind::InvalidMessage`] if the request has no reply subject.
    pub fn reply_to(request: &Message, payload: impl Into<Bytes>) -> Result<Message, Error> {
        let to = request.reply_subject()?.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidMessage,
                format!(
                    "message {} has no `{}` header to reply to",
                    request.id,
                    headers::REPLY_TO
                ),
            )
        })?;
        let mut reply = Message::new(to, payload);
        if let Some(c) = request.correlation_id() {
            reply.headers.insert(headers::CORRELATION_ID, c)?;
        }
        Ok(reply)
    }

    /// Unique id, used for deduplication.
    pub fn id(&self) -> &MessageId {
        &self.id
    }
    /// Where the message is published.
    pub fn subject(&self) -> &Subject {
        &self.subject
    }
    /// Ordering / partitioning key.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
    /// Headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    /// Mutable headers (names and values are validated on insert).
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }
    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
    /// When the producer created the message.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }
    /// Deliver no sooner than this long after the broker stored the message.
    pub fn delay(&self) -> Option<Duration> {
        self.delay
    }
    /// Discard the message if not delivered within this long after the broker stored it.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }
    /// The `correlation-id` header.
    pub fn correlation_id(&self) -> Option<&str> {
        self.headers.get(headers::CORRELATION_ID)
    }
    /// The `reply-to` header as a subject, if present.
    pub fn reply_subject(&self) -> Result<Option<Subject>, Error> {
        self.headers
            .get(headers::REPLY_TO)
            .map(Subject::new)
            .transpose()
    }
    /// Payload plus headers, the size limits are checked against.
    pub fn size(&self) -> usize {
        self.payload.len() + self.headers.encoded_len()
    }

    /// Replaces the subject (used when dead-lettering or redriving).
    pub fn set_subject(&mut self, subject: Subject) {
        self.subject = subject;
    }
    /// Replaces the payload.
    pub fn set_payload(&mut self, payload: impl Into<Bytes>) {
        self.payload = payload.into();
    }
    /// Replaces the id.
    pub fn set_id(&mut self, id: MessageId) {
        self.id = id;
    }
    /// Replaces the delay.
    pub fn set_delay(&mut self, delay: Option<Duration>) {
        self.delay = delay;
    }
    /// Replaces the time to live.
    pub fn set_ttl(&mut self, ttl: Option<Duration>) {
        self.ttl = ttl;
    }
    /// Replaces the producer timestamp.
    pub fn set_timestamp(&mut self, ts: Timestamp) {
        self.timestamp = ts;
    }
    /// Replaces the key (validated like an id).
    pub fn set_key(&mut self, key: Option<&str>) -> Result<(), Error> {
        if let Some(k) = key {
            check_token("key", k)?;
        }
        self.key = key.map(Into::into);
        Ok(())
    }
}

/// Builds a [`Message`]; see [`Message::builder`].
#[derive(Debug, Clone)]
pub struct MessageBuilder(Message);

impl MessageBuilder {
    /// Sets a producer-chosen id (validated).
    pub fn id(mut self, id: impl AsRef<str>) -> Result<Self, Error> {
        self.0.id = MessageId::new(id)?;
        Ok(self)
    }
    /// Sets the ordering key (validated like an id).
    pub fn key(mut self, key: impl AsRef<str>) -> Result<Self, Error> {
        self.0.set_key(Some(key.as_ref()))?;
        Ok(self)
    }
    /// Adds or replaces a header (validated).
    pub fn header(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Result<Self, Error> {
        self.0.headers.insert(name, value)?;
        Ok(self)
    }
    /// Sets the payload.
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.0.payload = payload.into();
        self
    }
    /// Deliver no sooner than `d` after the broker stores it.
    pub fn delay(mut self, d: Duration) -> Self {
        self.0.delay = Some(d);
        self
    }
    /// Discard if not delivered within `d` after the broker stores it.
    pub fn ttl(mut self, d: Duration) -> Self {
        self.0.ttl = Some(d);
        self
    }
    /// Sets the producer timestamp.
    pub fn timestamp(mut self, ts: Timestamp) -> Self {
        self.0.timestamp = ts;
        self
    }
    /// The message.
    pub fn build(self) -> Message {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_validated() {
        assert_ne!(MessageId::generate(), MessageId::generate());
        assert!(MessageId::new("").is_err());
        assert!(MessageId::new("has space").is_err());
        assert!(MessageId::new("x".repeat(MAX_ID_LEN + 1)).is_err());
        assert_eq!(MessageId::new("order-1").unwrap().as_str(), "order-1");
    }

    #[test]
    fn reply_carries_the_correlation_id() {
        let req = Message::builder("users.get")
            .unwrap()
            .header(headers::REPLY_TO, "_inbox.abc")
            .unwrap()
            .header(headers::CORRELATION_ID, "c-1")
            .unwrap()
            .build();
        let reply = Message::reply_to(&req, "ok").unwrap();
        assert_eq!(reply.subject().as_str(), "_inbox.abc");
        assert_eq!(reply.correlation_id(), Some("c-1"));
        let no_reply = Message::builder("users.get").unwrap().build();
        assert_eq!(
            Message::reply_to(&no_reply, "x").unwrap_err().kind(),
            ErrorKind::InvalidMessage
        );
    }

    #[test]
    fn timestamps_round_trip_through_system_time() {
        let t = Timestamp(1_700_000_000_123_456_789);
        assert_eq!(Timestamp::from(SystemTime::from(t)), t);
        assert_eq!(t.saturating_add(Duration::from_nanos(1)).0, t.0 + 1);
        assert_eq!(Timestamp(5).saturating_since(Timestamp(9)), Duration::ZERO);
    }
}
