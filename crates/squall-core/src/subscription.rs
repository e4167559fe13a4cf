//! What to consume and how: [`Subscription`], [`StartPosition`], [`DeliveryPolicy`].

use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::message::Timestamp;
use crate::subject::{Pattern, Subject};

/// Where a new subscription (or a group's first member) starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// Only messages published after subscribing.
    New,
    /// Everything the stream still holds.
    First,
    /// From this stream sequence on.
    Sequence(u64),
    /// From the first message stored at or after this time.
    Time(Timestamp),
}

/// How deliveries are leased, redelivered and dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// How long a delivery is leased before it is redelivered (the visibility timeout). Default 30 s.
    pub ack_wait: Duration,
    /// Deliveries after which the message is dead-lettered instead of redelivered. `None`: never
    /// (unbounded redelivery; set a limit in production). Default `None`.
    pub max_deliveries: Option<u32>,
    /// Where dead letters go. Default: the origin subject prefixed with `dlq.`.
    pub dead_letter: Option<Subject>,
    /// Delay before redelivering after a lease expiry, by attempt (the last entry repeats). Empty:
    /// redeliver at once. A nack carries its own delay.
    pub backoff: Vec<Duration>,
    /// Most unacknowledged deliveries one subscriber holds at once. Default 256.
    pub max_in_flight: usize,
    /// Deliver a key's next message only after the previous one of that key is acked (per-key order
    /// with concurrency across keys). Default false.
    pub ordered_by_key: bool,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            ack_wait: Duration::from_secs(30),
            max_deliveries: None,
            dead_letter: None,
            backoff: Vec::new(),
            max_in_flight: 256,
            ordered_by_key: false,
        }
    }
}

impl DeliveryPolicy {
    /// The redelivery delay after the `attempt`-th delivery's lease expired.
    pub fn backoff_for(&self, attempt: u32) -> Duration {
        if self.backoff.is_empty() {
            return Duration::ZERO;
        }
        let i = (attempt.max(1) as usize - 1).min(self.backoff.len() - 1);
        self.backoff[i]
    }

    /// The subject dead letters of a message from `origin` go to.
    pub fn dead_letter_subject(&self, origin: &Subject) -> Result<Subject> {
        match &self.dead_letter {
            Some(s) => Ok(s.clone()),
            None => origin.prefixed("dlq"),
        }
    }
}

/// The longest group name.
pub const MAX_GROUP_LEN: usize = 64;

/// A request to consume: pattern, optional group, start position and delivery policy.
///
/// Without a group every subscription gets its own copy of each message (fan-out). With a group,
/// subscribers sharing the group name compete: each message goes to one of them. A durable group
/// keeps its position while it has no members and across restarts (where the backend persists).
///
/// ```
/// use squall_core::{Subscription, StartPosition};
/// use std::time::Duration;
///
/// let sub = Subscription::new("orders.>")?
///     .group("billing")?
///     .durable(true)
///     .start(StartPosition::First)
///     .ack_wait(Duration::from_secs(10))
///     .max_deliveries(5);
/// assert_eq!(sub.group_name(), Some("billing"));
/// # Ok::<(), squall_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Subjects to receive.
    pub pattern: Pattern,
    /// Competing-consumer group, if any.
    pub group: Option<String>,
    /// Whether the group outlives its members (ignored without a group).
    pub durable: bool,
    /// Where to start. `None`: [`StartPosition::First`] for a group, [`StartPosition::New`] otherwise.
    pub start: Option<StartPosition>,
    /// Lease, redelivery and flow-control settings.
    pub policy: DeliveryPolicy,
    /// Bind to this stream instead of the one that captures the pattern (backends with streams).
    pub stream: Option<String>,
}

impl Subscription {
    /// A fan-out subscription to `pattern` with the default policy.
    pub fn new(pattern: impl AsRef<str>) -> Result<Self> {
        Ok(Subscription {
            pattern: Pattern::new(pattern)?,
            group: None,
            durable: false,
            start: None,
            policy: DeliveryPolicy::default(),
            stream: None,
        })
    }

    /// Joins competing-consumer group `name` (1 to 64 ASCII letters, digits, `-`, `_`).
    pub fn group(mut self, name: impl AsRef<str>) -> Result<Self> {
        let name = name.as_ref();
        if name.is_empty()
            || name.len() > MAX_GROUP_LEN
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "group name `{}` must be 1 to {MAX_GROUP_LEN} ASCII letters, digits, `-` or `_`",
                    name.escape_debug()
                ),
            ));
        }
        self.group = Some(name.to_string());
        Ok(self)
    }
    /// Makes the group durable.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
    /// Sets the start position.
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = Some(start);
        self
    }
    /// Sets the lease duration (visibility timeout).
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.policy.ack_wait = d;
        self
    }
    /// Dead-letters after `n` deliveries.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.policy.max_deliveries = Some(n);
        self
    }
    /// Sets the dead-letter subject.
    pub fn dead_letter(mut self, subject: Subject) -> Self {
        self.policy.dead_letter = Some(subject);
        self
    }
    /// Sets redelivery backoff after lease expiry.
    pub fn backoff(mut self, steps: Vec<Duration>) -> Self {
        self.policy.backoff = steps;
        self
    }
    /// Sets the most unacked deliveries held at once.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.policy.max_in_flight = n;
        self
    }
    /// Enables per-key ordering.
    pub fn ordered_by_key(mut self, on: bool) -> Self {
        self.policy.ordered_by_key = on;
        self
    }
    /// Binds to a named stream.
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = Some(name.into());
        self
    }

    /// The group name.
    pub fn group_name(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// The start position after applying the default rule.
    pub fn start_position(&self) -> StartPosition {
        self.start.unwrap_or(if self.group.is_some() {
            StartPosition::First
        } else {
            StartPosition::New
        })
    }

    /// Checks the policy values, naming the field to fix.
    pub fn validate(&self) -> Result<()> {
        if self.policy.ack_wait.is_zero() {
            return Err(Error::config(
                "subscription.ack_wait",
                "ack wait must be positive",
            ));
        }
        if self.policy.max_in_flight == 0 {
            return Err(Error::config(
                "subscription.max_in_flight",
                "max in flight must be at least 1",
            ));
        }
        if self.policy.max_deliveries == Some(0) {
            return Err(Error::config(
                "subscription.max_deliveries",
                "max deliveries must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_documented_rule() {
        let s = Subscription::new("a.>").unwrap();
        assert_eq!(s.start_position(), StartPosition::New);
        assert_eq!(
            s.clone().group("g").unwrap().start_position(),
            StartPosition::First
        );
        assert!(Subscription::new("a").unwrap().group("bad name").is_err());
        assert!(
            Subscription::new("a")
                .unwrap()
                .max_in_flight(0)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn backoff_repeats_its_last_step_and_dlq_defaults_to_prefix() {
        let p = DeliveryPolicy {
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5)],
            ..Default::default()
        };
        assert_eq!(p.backoff_for(1), Duration::from_secs(1));
        assert_eq!(p.backoff_for(2), Duration::from_secs(5));
        assert_eq!(p.backoff_for(9), Duration::from_secs(5));
        let origin = Subject::new("orders.created").unwrap();
        assert_eq!(
            p.dead_letter_subject(&origin).unwrap().as_str(),
            "dlq.orders.created"
        );
    }
}
