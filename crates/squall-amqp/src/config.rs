//! [`AmqpConfig`]: everything the adapter is configured with, parsed from one URL.
//!
//! ```text
//! amqp://user:pass@host:port/vhost?exchange=orders&queue_type=quorum&group_expiry=30m
//! ```
//!
//! The user, password, host, port and vhost are RabbitMQ's own (`%2f` is the default vhost `/`;
//! `amqps://` connects with TLS). Query options:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `exchange` | `squall` | the exchange every subject is published to (durable) |
//! | `exchange_kind` | `topic` | `topic`, `direct`, `fanout` or `headers`; see the crate docs for what each allows |
//! | `queue_type` | `classic` | `classic` or `quorum`, for group queues |
//! | `replicated` | `false` | quorum queues only: the cluster has replicas on other machines, so confirms report `Replicated` |
//! | `persistent` | `true` | publish with delivery mode 2 (persistent); `false` publishes transient messages acked as `Memory` |
//! | `mandatory` | `false` | a publish no queue is bound for fails with `NoResponders` instead of being dropped |
//! | `group_expiry` | `30m` | a non-durable group's queue is deleted after it had no member for this long |
//! | `max_length` | none | most messages a group queue holds; publishes beyond it are refused (`Full`) |
//! | `max_payload` | `16777216` | largest payload accepted, in bytes (RabbitMQ 4's default `max_message_size`) |
//! | `max_unconfirmed` | `4096` | publishes awaiting their confirm per handle; `send` waits beyond it |
//! | `reconnect_min`, `reconnect_max` | `100ms`, `10s` | bounds of the exponential reconnect backoff (full jitter) |
//! | `close_timeout` | `10s` | how long `close` waits for outstanding confirms |
//! | `confirm_timeout` | `30s` | how long one publish waits for its confirm before failing with `Timeout` (outcome unknown) |
//! | `heartbeat`, `connection_timeout`, `channel_max`, `frame_max`, `auth_mechanism` | RabbitMQ's | passed to the AMQP client unchanged |
//!
//! Durations are written with a unit: `250ms`, `5s`, `2m`, `1h`. Unknown options are refused, so a
//! typo is an error, not a silently ignored setting.

use std::fmt;
use std::time::Duration;

use squall_core::options::{duration, flag, invalid, number, redact};
use squall_core::{Error, Result};
use url::Url;

/// The longest exchange name accepted, leaving room in queue names (255 bytes in AMQP) for the
/// group, the pattern hash and the suffixes the adapter adds.
pub const MAX_EXCHANGE_LEN: usize = 120;

/// How the exchange routes subjects to queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Routing key = subject; `*` and `>` become AMQP's `*` and `*.#`. The default.
    Topic,
    /// Routing key = subject, exact match only: wildcard subscriptions are refused.
    Direct,
    /// Every queue gets every message; squall filters by pattern on receipt (wildcards emulated).
    Fanout,
    /// Routed on the `squall-route-subject` header, exact match only: wildcards are refused.
    Headers,
}

impl ExchangeKind {
    /// The AMQP exchange type name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Topic => "topic",
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// The RabbitMQ queue type of group queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueType {
    /// Classic queues: one node; confirms after the message store's batched fsync.
    Classic,
    /// Quorum queues (Raft): confirms after a quorum of replicas wrote and fsynced; they count
    /// deliveries (`x-delivery-count`), so attempts are exact even after a consumer crash.
    Quorum,
}

impl QueueType {
    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// The adapter's configuration. Build it with [`AmqpConfig::from_url`].
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpConfig {
    /// The URL handed to the AMQP client: credentials, host, port, vhost and the client's own
    /// options, without the adapter's options.
    pub(crate) amqp_url: String,
    /// The URL with the password replaced by `***`, for messages and logs.
    pub(crate) redacted: String,
    /// The exchange every subject is published to.
    pub exchange: String,
    /// How it routes.
    pub exchange_kind: ExchangeKind,
    /// The type of group queues.
    pub queue_type: QueueType,
    /// Quorum queues replicate to other machines.
    pub replicated: bool,
    /// Publish persistent messages.
    pub persistent: bool,
    /// Refuse publishes no queue is bound for.
    pub mandatory: bool,
    /// Idle time after which a non-durable group's queue is deleted.
    pub group_expiry: Duration,
    /// Bound of group queues (`x-max-length` with `x-overflow = reject-publish`).
    pub max_length: Option<u32>,
    /// Largest payload accepted.
    pub max_payload: usize,
    /// Publishes awaiting a confirm per handle.
    pub max_unconfirmed: usize,
    /// Shortest reconnect backoff.
    pub reconnect_min: Duration,
    /// Longest reconnect backoff.
    pub reconnect_max: Duration,
    /// How long `close` waits for confirms.
    pub close_timeout: Duration,
    /// How long one publish waits for its confirm.
    pub confirm_timeout: Duration,
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.redacted)
            .field("exchange", &self.exchange)
            .field("exchange_kind", &self.exchange_kind)
            .field("queue_type", &self.queue_type)
            .field("replicated", &self.replicated)
            .field("persistent", &self.persistent)
            .field("mandatory", &self.mandatory)
            .field("group_expiry", &self.group_expiry)
            .field("max_length", &self.max_length)
            .field("max_payload", &self.max_payload)
            .field("max_unconfirmed", &self.max_unconfirmed)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("close_timeout", &self.close_timeout)
            .field("confirm_timeout", &self.confirm_timeout)
            .finish()
    }
}

/// Options the AMQP client itself understands; passed through unchanged.
const PASS_THROUGH: [&str; 5] = [
    "heartbeat",
    "connection_timeout",
    "channel_max",
    "frame_max",
    "auth_mechanism",
];

impl AmqpConfig {
    /// Parses `amqp://user:pass@host:port/vhost?option=value&...`; see the module docs for the
    /// options. Errors are [`ErrorKind::InvalidConfig`](squall_core::ErrorKind::InvalidConfig) naming the option.
    pub fn from_url(s: &str) -> Result<Self> {
        let url = Url::parse(s)
            .map_err(|e| Error::config("url", format!("`{}` is not a URL: {e}", redact(s))))?;
        if url.scheme() != "amqp" && url.scheme() != "amqps" {
            return Err(Error::config(
                "url",
                format!(
                    "scheme `{}` is not amqp:// or amqps://",
                    url.scheme().escape_debug()
                ),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(Error::config("url", "the URL names no host"));
        }
        let mut cfg = AmqpConfig {
            amqp_url: String::new(),
            redacted: redact(s),
            exchange: "squall".into(),
            exchange_kind: ExchangeKind::Topic,
            queue_type: QueueType::Classic,
            replicated: false,
            persistent: true,
            mandatory: false,
            group_expiry: Duration::from_secs(30 * 60),
            max_length: None,
            max_payload: 16 << 20,
            max_unconfirmed: 4096,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            close_timeout: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(30),
        };
        let mut passed = Vec::new();
        for (k, v) in url.query_pairs() {
            let (k, v) = (k.as_ref(), v.as_ref());
            match k {
                "exchange" => cfg.exchange = v.to_string(),
                "exchange_kind" => {
                    cfg.exchange_kind = match v {
                        "topic" => ExchangeKind::Topic,
                        "direct" => ExchangeKind::Direct,
                        "fanout" => ExchangeKind::Fanout,
                        "headers" => ExchangeKind::Headers,
                        _ => return Err(invalid(k, v, "topic, direct, fanout or headers")),
                    }
                }
                "queue_type" => {
                    cfg.queue_type = match v {
                        "classic" => QueueType::Classic,
                        "quorum" => QueueType::Quorum,
                        _ => return Err(invalid(k, v, "classic or quorum")),
                    }
                }
                "replicated" => cfg.replicated = flag(k, v)?,
                "persistent" => cfg.persistent = flag(k, v)?,
                "mandatory" => cfg.mandatory = flag(k, v)?,
                "group_expiry" => cfg.group_expiry = duration(k, v)?,
                "max_length" => cfg.max_length = Some(number(k, v)?),
                "max_payload" => cfg.max_payload = number(k, v)?,
                "max_unconfirmed" => cfg.max_unconfirmed = number(k, v)?,
                "reconnect_min" => cfg.reconnect_min = duration(k, v)?,
                "reconnect_max" => cfg.reconnect_max = duration(k, v)?,
                "close_timeout" => cfg.close_timeout = duration(k, v)?,
                "confirm_timeout" => cfg.confirm_timeout = duration(k, v)?,
                _ if PASS_THROUGH.contains(&k) => passed.push((k.to_string(), v.to_string())),
                _ => {
                    return Err(Error::config(
                        k,
                        format!(
                            "unknown option `{}` in the AMQP URL (adapter options: exchange, \
                             exchange_kind, queue_type, replicated, persistent, mandatory, \
                             group_expiry, max_length, max_payload, max_unconfirmed, \
                             reconnect_min, reconnect_max, close_timeout, confirm_timeout; client options: {})",
                            k.escape_debug(),
                            PASS_THROUGH.join(", ")
                        ),
                    ));
                }
            }
        }
        cfg.validate()?;
        let mut amqp = url.clone();
        amqp.set_query(None);
        if !passed.is_empty() {
            let mut q = amqp.query_pairs_mut();
            for (k, v) in &passed {
                q.append_pair(k, v);
            }
        }
        cfg.amqp_url = amqp.to_string();
        Ok(cfg)
    }

    /// Checks every value, naming the option to fix; `from_url` and `AmqpBackend::connect` call
    /// it (fields may have been changed in between).
    pub fn validate(&self) -> Result<()> {
        let ex = &self.exchange;
        if ex.is_empty() || ex.len() > MAX_EXCHANGE_LEN {
            return Err(Error::config(
                "exchange",
                format!("the exchange name must be 1 to {MAX_EXCHANGE_LEN} bytes"),
            ));
        }
        if !ex
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return Err(Error::config(
                "exchange",
                format!(
                    "exchange `{}` may hold only ASCII letters, digits, `-`, `_`, `.` and `:`",
                    ex.escape_debug()
                ),
            ));
        }
        if ex.starts_with("amq.") {
            return Err(Error::config(
                "exchange",
                "names starting with `amq.` are reserved by RabbitMQ",
            ));
        }
        if self.replicated && self.queue_type != QueueType::Quorum {
            return Err(Error::config(
                "replicated",
                "only quorum queues replicate: set queue_type=quorum too",
            ));
        }
        if self.max_payload == 0 {
            return Err(Error::config("max_payload", "must be at least 1"));
        }
        if self.max_unconfirmed == 0 || self.max_unconfirmed > 1 << 20 {
            return Err(Error::config(
                "max_unconfirmed",
                "must be between 1 and 1048576",
            ));
        }
        if self.max_length == Some(0) {
            return Err(Error::config("max_length", "must be at least 1"));
        }
        if self.group_expiry < Duration::from_secs(1) {
            return Err(Error::config(
                "group_expiry",
                "must be at least 1s (RabbitMQ's x-expires is in milliseconds, and a group needs time to rejoin)",
            ));
        }
        if self.group_expiry.as_millis() > u128::from(u32::MAX) {
            return Err(Error::config("group_expiry", "must be under 49 days"));
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return Err(Error::config(
                "reconnect_max",
                "reconnect_min must be positive and reconnect_max at least reconnect_min",
            ));
        }
        Ok(())
    }

    /// The URL with the password hidden.
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_core::ErrorKind;

    #[test]
    fn defaults_and_pass_through() {
        let c = AmqpConfig::from_url("amqp://guest:secret@127.0.0.1:5672/%2f?heartbeat=5").unwrap();
        assert_eq!(c.exchange, "squall");
        assert_eq!(c.exchange_kind, ExchangeKind::Topic);
        assert_eq!(c.queue_type, QueueType::Classic);
        assert!(c.persistent && !c.mandatory && !c.replicated);
        assert_eq!(
            c.amqp_url,
            "amqp://guest:secret@127.0.0.1:5672/%2f?heartbeat=5"
        );
        assert!(!format!("{c:?}").contains("secret"), "{c:?}");
        assert!(c.redacted_url().contains("***"));
    }

    #[test]
    fn options_are_parsed() {
        let c = AmqpConfig::from_url(
            "amqps://h/v?exchange=orders.x&exchange_kind=fanout&queue_type=quorum&replicated=true\
             &group_expiry=2m&max_length=10&max_payload=1024&persistent=false&mandatory=yes\
             &reconnect_min=5ms&reconnect_max=1s&close_timeout=3s&max_unconfirmed=7&confirm_timeout=4s",
        )
        .unwrap();
        assert_eq!(c.exchange, "orders.x");
        assert_eq!(c.exchange_kind, ExchangeKind::Fanout);
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert!(c.replicated && !c.persistent && c.mandatory);
        assert_eq!(c.group_expiry, Duration::from_secs(120));
        assert_eq!(c.max_length, Some(10));
        assert_eq!(c.max_payload, 1024);
        assert_eq!(c.max_unconfirmed, 7);
        assert_eq!(c.reconnect_min, Duration::from_millis(5));
        assert_eq!(c.close_timeout, Duration::from_secs(3));
        assert_eq!(c.confirm_timeout, Duration::from_secs(4));
        assert_eq!(c.amqp_url, "amqps://h/v");
    }

    #[test]
    fn bad_values_name_the_option() {
        for (url, key) in [
            ("http://h", "url"),
            ("amqp://h?exchnage=x", "exchnage"),
            ("amqp://h?queue_type=stream", "queue_type"),
            ("amqp://h?replicated=true", "replicated"),
            ("amqp://h?group_expiry=10", "group_expiry"),
            ("amqp://h?group_expiry=0s", "group_expiry"),
            ("amqp://h?exchange=amq.topic", "exchange"),
            ("amqp://h?exchange=a%20b", "exchange"),
            ("amqp://h?max_payload=0", "max_payload"),
            ("amqp://h?max_length=-1", "max_length"),
            (
                "amqp://h?reconnect_min=2s&reconnect_max=1s",
                "reconnect_max",
            ),
        ] {
            let e = AmqpConfig::from_url(url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}");
            assert!(e.to_string().contains(&format!("`{key}`")), "{url}: {e}");
        }
        let e = AmqpConfig::from_url("amqp://user:pw@[bad").unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
    }
}
