//! Broker and stream configuration, validated with errors naming the key to fix.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use squall_core::{Error, Pattern, Result};

/// The largest payload the broker accepts unless configured otherwise: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;
/// The largest `max_payload` that may be configured: 64 MiB.
pub const MAX_MAX_PAYLOAD: usize = 64 << 20;

/// When messages leave a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    /// Kept until a limit (count, bytes, age) pushes them out, whoever consumed them.
    Limits,
    /// Removed once every consumer group of the stream has settled them (and limits still apply).
    WorkQueue,
}

/// What happens when a publish would exceed `max_messages` or `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discard {
    /// Drop the oldest messages to make room (counted in the stream's `dropped` statistic and the
    /// `squall_retention_dropped_total` metric).
    Old,
    /// Refuse the publish with [`squall_core::ErrorKind::Full`] (retryable): backpressure to the
    /// producer.
    New,
}

/// A stream: a log capturing the subjects its patterns match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// 1 to 64 ASCII letters, digits, `-`, `_`.
    pub name: String,
    /// Subjects captured. Explicit streams must not overlap each other.
    pub subjects: Vec<Pattern>,
    /// Retention policy.
    pub retention: Retention,
    /// Most messages held.
    pub max_messages: Option<u64>,
    /// Most bytes held.
    pub max_bytes: Option<u64>,
    /// Oldest message age kept.
    pub max_age: Option<Duration>,
    /// Overflow policy for `max_messages` / `max_bytes`.
    pub discard: Discard,
    /// How long a message id is remembered for deduplication.
    pub dedup_window: Duration,
    /// Most ids remembered (oldest forgotten first, counted in a metric).
    pub dedup_max_entries: usize,
}

impl StreamConfig {
    /// A limits-retention stream with no limits, a 2-minute dedup window of at most 100k ids.
    pub fn new(name: impl Into<String>, subjects: Vec<Pattern>) -> Self {
        StreamConfig {
            name: name.into(),
            subjects,
            retention: Retention::Limits,
            max_messages: None,
            max_bytes: None,
            max_age: None,
            discard: Discard::Old,
            dedup_window: Duration::from_secs(120),
            dedup_max_entries: 100_000,
        }
    }

    /// A work queue: messages removed once consumed; publishes refused beyond `max_messages`.
    pub fn work_queue(name: impl Into<String>, subjects: Vec<Pattern>, max_messages: u64) -> Self {
        StreamConfig {
            retention: Retention::WorkQueue,
            max_messages: Some(max_messages),
            discard: Discard::New,
            ..StreamConfig::new(name, subjects)
        }
    }

    /// Checks every field; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::config(
                "stream.name",
                format!(
                    "stream name `{}` must be 1 to 64 ASCII letters, digits, `-` or `_`",
                    n.escape_debug()
                ),
            ));
        }
        if self.subjects.is_empty() {
            return Err(Error::config(
                "stream.subjects",
                format!("stream `{n}` captures no subjects"),
            ));
        }
        for (i, a) in self.subjects.iter().enumerate() {
            for b in &self.subjects[i + 1..] {
                if a.overlaps(b) {
                    return Err(Error::config(
                        "stream.subjects",
                        format!("stream `{n}`: patterns `{a}` and `{b}` overlap"),
                    ));
                }
            }
        }
        if self.max_messages == Some(0) {
            return Err(Error::config("stream.max_messages", "must be at least 1"));
        }
        if self.max_bytes == Some(0) {
            return Err(Error::config("stream.max_bytes", "must be at least 1"));
        }
        if self.max_age.is_some_and(|d| d.is_zero()) {
            return Err(Error::config("stream.max_age", "must be positive"));
        }
        if self.dedup_max_entries == 0 && !self.dedup_window.is_zero() {
            return Err(Error::config(
                "stream.dedup_max_entries",
                "must be at least 1 when dedup_window is set",
            ));
        }
        Ok(())
    }
}

/// Broker-wide settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Largest payload accepted.
    pub max_payload: usize,
    /// The catch-all stream for subjects no explicit stream captures (`None`: such publishes fail
    /// with [`squall_core::ErrorKind::NotFound`]).
    pub default_stream: Option<StreamConfig>,
    /// The stream capturing `dlq.>`, so dead letters have their own depth (`None`: dead letters
    /// land wherever their subject routes).
    pub dead_letter_stream: Option<StreamConfig>,
    /// A group whose lag (messages not yet settled) crosses this is reported as a slow consumer.
    pub slow_consumer_lag: u64,
    /// Capacity of the event channel (lagging receivers lose the oldest events and are told so).
    pub event_capacity: usize,
    /// A non-durable group without members is forgotten after this long (a durable one is kept
    /// until deleted). Members that leave and rejoin within it continue where the group was.
    pub inactive_group_ttl: Duration,
    /// The sweeper processes expired leases (redelivery, dead letters) and forgets inactive
    /// groups at least this often, even when no consumer is waiting. A waiting consumer handles
    /// its group's expiries at once.
    pub sweep_interval: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        let mut default_stream =
            StreamConfig::new("default", vec![Pattern::new(">").expect("valid")]);
        default_stream.max_bytes = Some(1 << 30);
        let mut dlq = StreamConfig::new("dlq", vec![Pattern::new("dlq.>").expect("valid")]);
        dlq.max_bytes = Some(256 << 20);
        BrokerConfig {
            max_payload: DEFAULT_MAX_PAYLOAD,
            default_stream: Some(default_stream),
            dead_letter_stream: Some(dlq),
            slow_consumer_lag: 10_000,
            event_capacity: 1024,
            inactive_group_ttl: Duration::from_secs(600),
            sweep_interval: Duration::from_secs(1),
        }
    }
}

impl BrokerConfig {
    /// Checks every field; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.max_payload == 0 || self.max_payload > MAX_MAX_PAYLOAD {
            return Err(Error::config(
                "broker.max_payload",
                format!(
                    "must be 1 to {MAX_MAX_PAYLOAD} bytes, got {}",
                    self.max_payload
                ),
            ));
        }
        if self.event_capacity == 0 {
            return Err(Error::config("broker.event_capacity", "must be at least 1"));
        }
        if self.sweep_interval.is_zero() {
            return Err(Error::config("broker.sweep_interval", "must be positive"));
        }
        for s in self.default_stream.iter().chain(&self.dead_letter_stream) {
            s.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_stream_configs_name_the_key() {
        let p = |s: &str| Pattern::new(s).unwrap();
        let mut c = StreamConfig::new("orders", vec![p("orders.>")]);
        assert!(c.validate().is_ok());
        c.max_messages = Some(0);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("stream.max_messages")
        );
        let c = StreamConfig::new("bad name", vec![p("a")]);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("stream.name")
        );
        let c = StreamConfig::new("o", vec![p("a.*"), p("a.b")]);
        assert!(c.validate().unwrap_err().to_string().contains("overlap"));
        let b = BrokerConfig {
            max_payload: MAX_MAX_PAYLOAD + 1,
            ..Default::default()
        };
        assert!(
            b.validate()
                .unwrap_err()
                .to_string()
                .contains("broker.max_payload")
        );
    }
}
