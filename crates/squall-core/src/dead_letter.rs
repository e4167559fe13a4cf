//! The dead-letter envelope: why a message was dead-lettered, where from, and its attempts.
//!
//! A dead-lettered message keeps its payload, key and headers; it is published to the dead-letter
//! subject with a new id and the envelope as JSON in the [`crate::headers::DEAD_LETTER`] header, so
//! it can be consumed, inspected and redriven like any other message.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::headers;
use crate::message::{Message, MessageId, Timestamp};
use crate::subject::Subject;

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// Its deliveries reached the subscription's `max_deliveries`.
    MaxDeliveries,
    /// A consumer rejected it.
    Rejected,
}

/// What a dead letter carries about its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Why.
    pub reason: DeadLetterReason,
    /// The last error (the reject reason, or "lease expired").
    pub error: String,
    /// The error chain reported by the handler, outermost first, where known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_chain: Vec<String>,
    /// The handler that failed, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// The original message id.
    pub origin_id: String,
    /// The original subject.
    pub origin_subject: Subject,
    /// The stream it was stored in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_stream: Option<String>,
    /// Its sequence there.
    #[serde(default)]
    pub origin_sequence: u64,
    /// The group that gave up on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// When each delivery attempt started.
    pub attempts: Vec<Timestamp>,
    /// When it was dead-lettered.
    pub dead_lettered_at: Timestamp,
}

impl DeadLetter {
    /// The envelope of `message`, dead-lettered now (the backends' common case: no handler
    /// details), from `origin_stream` at `origin_sequence` (0 when unknown) by `group`.
    pub fn new(
        message: &Message,
        reason: DeadLetterReason,
        error: impl Into<String>,
        origin_stream: Option<String>,
        origin_sequence: u64,
        group: Option<String>,
        attempts: Vec<Timestamp>,
    ) -> DeadLetter {
        DeadLetter {
            reason,
            error: error.into(),
            error_chain: Vec::new(),
            handler: None,
            origin_id: message.id().to_string(),
            origin_subject: message.subject().clone(),
            origin_stream,
            origin_sequence,
            group,
            attempts,
            dead_lettered_at: Timestamp::now(),
        }
    }

    /// [`DeadLetter::wrap`] to `to`, the policy's dead-letter subject; when it could not be
    /// formed or taken (`dlq.` pushes a long subject past the limit), to the origin subject
    /// instead, with a warning, so the dead letter is kept rather than lost.
    pub fn wrap_or_origin(&self, original: &Message, to: Result<Subject>) -> Result<Message> {
        match to.and_then(|to| self.wrap(original, to)) {
            Ok(m) => Ok(m),
            Err(e) => {
                tracing::warn!(error = %e, "dead-lettering under the origin subject");
                self.wrap(original, original.subject().clone())
            }
        }
    }

    /// The dead-letter copy of `original`, addressed to `to`, with this envelope in its headers.
    pub fn wrap(&self, original: &Message, to: Subject) -> Result<Message> {
        let mut m = original.clone();
        m.set_subject(to);
        // Deterministic where the origin is known, so a dead letter published twice (a crash
        // between publishing it and settling the original) is caught by the dedup window.
        let discriminator = if self.origin_sequence > 0 {
            self.origin_sequence
        } else {
            self.dead_lettered_at.as_nanos()
        };
        m.set_id(MessageId::new(format!(
            "{}.dlq.{}.{discriminator}",
            truncate(original.id().as_str(), 160),
            truncate(self.group.as_deref().unwrap_or("_"), 64),
        ))?);
        m.set_delay(None);
        m.set_ttl(None);
        let json = serde_json::to_string(self)
            .map_err(|e| Error::new(ErrorKind::Internal, "encoding dead letter").with_source(e))?;
        m.headers_mut().insert(headers::DEAD_LETTER, json)?;
        Ok(m)
    }

    /// The envelope of a dead-lettered message, if it has one.
    pub fn read(msg: &Message) -> Result<Option<DeadLetter>> {
        msg.headers()
            .get(headers::DEAD_LETTER)
            .map(|json| {
                serde_json::from_str(json).map_err(|e| {
                    Error::new(ErrorKind::InvalidMessage, "malformed dead-letter envelope")
                        .with_source(e)
                })
            })
            .transpose()
    }

    /// The message to publish when redriving a dead letter: origin subject (or `to`), no envelope,
    /// a fresh id (the broker's dedup window would otherwise drop it), the original id in
    /// `squall-redriven-from`.
    pub fn redrive(dead: &Message, to: Option<Subject>) -> Result<Message> {
        let env = DeadLetter::read(dead)?.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidMessage,
                format!("message {} is not a dead letter", dead.id()),
            )
        })?;
        let mut m = dead.clone();
        m.headers_mut().remove(headers::DEAD_LETTER);
        m.headers_mut()
            .insert("squall-redriven-from", &env.origin_id)?;
        m.set_subject(to.unwrap_or(env.origin_subject));
        m.set_id(MessageId::generate());
        Ok(m)
    }
}

fn truncate(s: &str, n: usize) -> &str {
    &s[..s.len().min(n)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_read_and_redrive_round_trip() {
        let orig = Message::builder("orders.created")
            .unwrap()
            .id("o-1")
            .unwrap()
            .payload("p")
            .build();
        let env = DeadLetter {
            reason: DeadLetterReason::Rejected,
            error: "bad json".into(),
            error_chain: vec![],
            handler: None,
            origin_id: "o-1".into(),
            origin_subject: orig.subject().clone(),
            origin_stream: Some("default".into()),
            origin_sequence: 7,
            group: Some("billing".into()),
            attempts: vec![Timestamp(1), Timestamp(2)],
            dead_lettered_at: Timestamp(3),
        };
        let dead = env
            .wrap(&orig, Subject::new("dlq.orders.created").unwrap())
            .unwrap();
        assert_eq!(dead.payload(), orig.payload());
        assert_ne!(dead.id(), orig.id());
        assert_eq!(DeadLetter::read(&dead).unwrap().unwrap(), env);
        let again = DeadLetter::redrive(&dead, None).unwrap();
        assert_eq!(again.subject().as_str(), "orders.created");
        assert!(DeadLetter::read(&again).unwrap().is_none());
        assert_eq!(again.headers().get("squall-redriven-from"), Some("o-1"));
        assert!(DeadLetter::redrive(&orig, None).is_err());
    }
}
