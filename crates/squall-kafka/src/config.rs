//! [`KafkaConfig`]: the broker list and the adapter's options, parsed and checked without a
//! broker.
//!
//! ```text
//! kafka://host[:port][,host[:port]...][?option=value&...]
//! ```
//!
//! The port defaults to 9092. Options:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `topic_prefix` | (none) | put in front of every topic name derived from a subject (see [`crate::topics`]) |
//! | `group_prefix` | (none) | put in front of every squall group name to form the Kafka `group.id` |
//! | `partitions` | `1` | partitions of the topics the adapter creates |
//! | `replication` | `-1` | replication factor of the topics the adapter creates; `-1`: the broker's default |
//! | `create_topics` | `true` | create missing topics on first publish or subscribe; `false`: they must exist |
//! | `acks` | `all` | `all`: every in-sync replica, idempotent producer; `1`: the leader only, producer not idempotent |
//! | `storage` | `log` | what the broker keeps messages in: `log` (Kafka's log files) or `memory` (an in-memory broker such as tansu with `memory://`); decides `persistence` and the ack durability |
//! | `replicated` | `false` | declares that the topics' `min.insync.replicas` is at least 2, so an `acks=all` ack means `replicated` |
//! | `linger` | `1ms` | how long the producer waits to batch (`linger.ms`) |
//! | `max_pending` | `10000` | messages the producer holds unconfirmed (`queue.buffering.max.messages`); then `send` waits |
//! | `send_timeout` | `30s` | the longest `send` waits for room in the producer's queue before failing with `Full` |
//! | `delivery_timeout` | `30s` | how long the producer retries a message before its ack fails with `Timeout` (`message.timeout.ms`) |
//! | `request_timeout` | `10s` | admin and metadata requests (topic creation, offsets, watermarks) |
//! | `max_payload` | `900000` | largest payload accepted, in bytes; the broker's `message.max.bytes` must leave [`HEADER_RESERVE`] bytes on top |
//! | `session_timeout` | `10s` | consumer group session timeout (`session.timeout.ms`; Kafka brokers accept 6s to 30 min by default) |
//! | `heartbeat` | a tenth of `session_timeout` | consumer group heartbeat interval |
//! | `join_timeout` | `30s` | how long subscribing to a group waits for the group to assign partitions |
//! | `metadata_refresh` | `5s` | how often wildcard subscriptions look for new topics |
//! | `prefetch` | `256` | messages a consumer fetches ahead of what it hands out, on top of `max_in_flight` |
//! | `client_id` | `squall` | `client.id` shown in broker logs |
//! | `rdkafka.<name>` | | passed to librdkafka as `<name>` for every client (e.g. `rdkafka.security.protocol=ssl`); a setting this build cannot honour fails at connect with `InvalidConfig` |
//!
//! Durations take a unit: `500ms`, `2s`, `5m`, `1h` (a bare number is seconds).

use std::time::Duration;

use squall_core::options::{flag_on_off, nonempty, positive, positive_duration};
use squall_core::{Durability, Error, Result};

/// Bytes kept free on top of `max_payload` for the key and headers (squall's and the user's, at
/// most [`squall_core::headers::MAX_HEADERS_LEN`]) of one record.
pub const HEADER_RESERVE: usize = squall_core::headers::MAX_HEADERS_LEN + 4096;

/// How many in-sync replicas must acknowledge a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// `acks=all` with the idempotent producer.
    All,
    /// `acks=1`: the partition leader only; the producer is not idempotent.
    Leader,
}

/// What the broker keeps messages in, as declared by the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Kafka's log segments on disk (written to the page cache, flushed by the broker's policy).
    Log,
    /// Memory only: everything is lost when the broker stops.
    Memory,
}

/// Everything the adapter needs, from a `kafka://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port` of every bootstrap broker.
    pub brokers: Vec<String>,
    /// Prefix of derived topic names.
    pub topic_prefix: String,
    /// Prefix of Kafka group ids.
    pub group_prefix: String,
    /// Partitions of created topics.
    pub partitions: i32,
    /// Replication factor of created topics (`-1`: broker default).
    pub replication: i32,
    /// Whether missing topics are created.
    pub create_topics: bool,
    /// Producer acknowledgements.
    pub acks: Acks,
    /// Broker storage, as declared.
    pub storage: Storage,
    /// `min.insync.replicas` of the topics is at least 2, as declared.
    pub replicated: bool,
    /// Producer batching delay.
    pub linger: Duration,
    /// Unconfirmed messages the producer holds.
    pub max_pending: usize,
    /// Longest wait for room in the producer queue.
    pub send_timeout: Duration,
    /// Producer delivery timeout.
    pub delivery_timeout: Duration,
    /// Admin and metadata request timeout.
    pub request_timeout: Duration,
    /// Largest payload accepted.
    pub max_payload: usize,
    /// Consumer group session timeout.
    pub session_timeout: Duration,
    /// Consumer group heartbeat interval.
    pub heartbeat: Duration,
    /// How long a group subscription waits for its first assignment.
    pub join_timeout: Duration,
    /// How often wildcard subscriptions look for new topics.
    pub metadata_refresh: Duration,
    /// Messages fetched ahead of `max_in_flight`.
    pub prefetch: usize,
    /// `client.id`.
    pub client_id: String,
    /// Extra librdkafka settings, in order.
    pub rdkafka: Vec<(String, String)>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: vec!["127.0.0.1:9092".into()],
            topic_prefix: String::new(),
            group_prefix: String::new(),
            partitions: 1,
            replication: -1,
            create_topics: true,
            acks: Acks::All,
            storage: Storage::Log,
            replicated: false,
            linger: Duration::from_millis(1),
            max_pending: 10_000,
            send_timeout: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            max_payload: 900_000,
            session_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(1),
            join_timeout: Duration::from_secs(30),
            metadata_refresh: Duration::from_secs(5),
            prefetch: 256,
            client_id: "squall".into(),
            rdkafka: Vec::new(),
        }
    }
}

impl KafkaConfig {
    /// Parses `kafka://...` with the options in the [module docs](self). Unknown options and bad
    /// values fail with [`squall_core::ErrorKind::InvalidConfig`] naming the option.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| Error::config("url", format!("`{url}`: expected kafka://host:port")))?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hosts = hosts.trim_end_matches('/');
        let mut c = KafkaConfig {
            brokers: hosts.split(',').map(broker).collect::<Result<Vec<_>>>()?,
            ..KafkaConfig::default()
        };
        let mut heartbeat = None;
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let (key, value) = (key.as_ref(), value.as_ref());
            match key {
                "topic_prefix" => c.topic_prefix = topic_prefix(key, value)?,
                "group_prefix" => c.group_prefix = group_prefix(key, value)?,
                "partitions" => c.partitions = positive(key, value)?,
                "replication" => {
                    c.replication = match value.parse::<i32>() {
                        Ok(-1) => -1,
                        Ok(n) if n > 0 => n,
                        _ => return Err(Error::config(key, "expected -1 or a positive integer")),
                    }
                }
                "create_topics" => c.create_topics = flag_on_off(key, value)?,
                "acks" => {
                    c.acks = match value {
                        "all" | "-1" => Acks::All,
                        "1" | "leader" => Acks::Leader,
                        _ => return Err(Error::config(key, "expected `all` or `1`")),
                    }
                }
                "storage" => {
                    c.storage = match value {
                        "log" | "disk" => Storage::Log,
                        "memory" => Storage::Memory,
                        _ => return Err(Error::config(key, "expected `log` or `memory`")),
                    }
                }
                "replicated" => c.replicated = flag_on_off(key, value)?,
                "linger" => c.linger = duration_or_zero(key, value)?,
                "max_pending" => c.max_pending = positive(key, value)?,
                "send_timeout" => c.send_timeout = duration(key, value)?,
                "delivery_timeout" => c.delivery_timeout = duration(key, value)?,
                "request_timeout" => c.request_timeout = duration(key, value)?,
                "max_payload" => c.max_payload = positive(key, value)?,
                "session_timeout" => c.session_timeout = duration(key, value)?,
                "heartbeat" => heartbeat = Some(duration(key, value)?),
                "join_timeout" => c.join_timeout = duration(key, value)?,
                "metadata_refresh" => c.metadata_refresh = duration(key, value)?,
                "prefetch" => c.prefetch = positive(key, value)?,
                "client_id" => c.client_id = nonempty(key, value)?.to_string(),
                other => match other.strip_prefix("rdkafka.") {
                    Some(name) if !name.is_empty() => {
                        c.rdkafka.push((name.to_string(), value.to_string()));
                    }
                    _ => {
                        return Err(Error::config(
                            other,
                            format!("unknown option `{other}` in the Kafka URL"),
                        ));
                    }
                },
            }
        }
        c.heartbeat =
            heartbeat.unwrap_or_else(|| (c.session_timeout / 10).max(Duration::from_millis(100)));
        if c.heartbeat >= c.session_timeout {
            return Err(Error::config(
                "heartbeat",
                "must be shorter than session_timeout",
            ));
        }
        if c.replicated && c.acks == Acks::Leader {
            return Err(Error::config(
                "replicated",
                "a leader-only ack (acks=1) is never replicated",
            ));
        }
        if c.replicated && c.storage == Storage::Memory {
            return Err(Error::config(
                "replicated",
                "cannot be combined with storage=memory",
            ));
        }
        if c.linger > Duration::from_secs(5) {
            return Err(Error::config("linger", "must be at most 5s"));
        }
        if c.max_payload > 512 << 20 {
            return Err(Error::config("max_payload", "must be at most 512 MiB"));
        }
        Ok(c)
    }

    /// The durability an acknowledged publish reaches, from the declared storage and acks.
    ///
    /// A Kafka broker acknowledges once the record is in its log (the page cache; it is flushed
    /// to disk by the broker's own policy, not per record), so an ack is never `Fsynced`.
    pub fn ack_durability(&self) -> Durability {
        match (self.storage, self.acks, self.replicated) {
            (Storage::Memory, _, _) => Durability::Memory,
            (Storage::Log, Acks::All, true) => Durability::Replicated,
            (Storage::Log, _, _) => Durability::Written,
        }
    }

    /// `host:port,host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.brokers.join(",")
    }

    /// The Kafka `group.id` of squall group `group`.
    pub fn group_id(&self, group: &str) -> String {
        format!("{}{group}", self.group_prefix)
    }
}

fn broker(s: &str) -> Result<String> {
    let s = s.trim();
    if s.is_empty() {
        return Err(Error::config("url", "empty broker address in the URL"));
    }
    if s.contains(['/', '@', ' ']) {
        return Err(Error::config(
            "url",
            format!("`{s}` is not a host[:port] broker address"),
        ));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') => (h, Some(p)),
        _ => (s, None),
    };
    if host.is_empty() {
        return Err(Error::config("url", format!("`{s}` has no host")));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::config("url", format!("`{s}`: bad port `{p}`")))?,
        None => 9092,
    };
    Ok(format!("{host}:{port}"))
}

/// Kafka topic characters only: the prefix goes in front of escaped subjects.
fn topic_prefix(key: &str, value: &str) -> Result<String> {
    if value.len() > 100
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(Error::config(
            key,
            format!("`{value}` must be at most 100 ASCII letters, digits, `.`, `-` or `_`"),
        ));
    }
    Ok(value.to_string())
}

fn group_prefix(key: &str, value: &str) -> Result<String> {
    if value.len() > 100 || value.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(Error::config(
            key,
            format!("`{value}` must be at most 100 printable ASCII characters"),
        ));
    }
    Ok(value.to_string())
}

fn duration_or_zero(key: &str, value: &str) -> Result<Duration> {
    if value.trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Ok(Duration::ZERO);
    }
    duration(key, value)
}

/// `500ms`, `2s`, `5m`, `1h`, or a bare number of seconds; positive, and short enough for
/// librdkafka's millisecond `i32` settings.
fn duration(key: &str, value: &str) -> Result<Duration> {
    let d = positive_duration(key, value)?;
    if d > Duration::from_secs(i32::MAX as u64 / 1000) {
        return Err(Error::config(key, "is too long"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_core::ErrorKind;

    #[test]
    fn defaults_and_options_parse() {
        let c = KafkaConfig::from_url("kafka://127.0.0.1").unwrap();
        assert_eq!(c.brokers, vec!["127.0.0.1:9092"]);
        assert_eq!(c.acks, Acks::All);
        assert_eq!(c.ack_durability(), Durability::Written);
        assert_eq!(c.heartbeat, Duration::from_secs(1));
        let c = KafkaConfig::from_url(
            "kafka://a:9093,b,[::1]:9094/?topic_prefix=sq.&partitions=4&storage=memory&session_timeout=2s&linger=0&rdkafka.socket.keepalive.enable=true",
        )
        .unwrap();
        assert_eq!(c.brokers, vec!["a:9093", "b:9092", "[::1]:9094"]);
        assert_eq!(c.bootstrap(), "a:9093,b:9092,[::1]:9094");
        assert_eq!(c.topic_prefix, "sq.");
        assert_eq!(c.partitions, 4);
        assert_eq!(c.ack_durability(), Durability::Memory);
        assert_eq!(c.session_timeout, Duration::from_secs(2));
        assert_eq!(c.heartbeat, Duration::from_millis(200));
        assert_eq!(c.linger, Duration::ZERO);
        assert_eq!(
            c.rdkafka,
            vec![("socket.keepalive.enable".into(), "true".into())]
        );
        let c = KafkaConfig::from_url("kafka://h?replicated=1&group_prefix=app-").unwrap();
        assert_eq!(c.ack_durability(), Durability::Replicated);
        assert_eq!(c.group_id("billing"), "app-billing");
        let c = KafkaConfig::from_url("kafka://h?acks=1").unwrap();
        assert_eq!(c.ack_durability(), Durability::Written);
    }

    #[test]
    fn bad_values_name_the_option() {
        for (url, key) in [
            ("kafka://h?bogus=1", "bogus"),
            ("kafka://h?acks=2", "acks"),
            ("kafka://h?partitions=0", "partitions"),
            ("kafka://h?replication=0", "replication"),
            ("kafka://h?topic_prefix=a/b", "topic_prefix"),
            ("kafka://h?storage=tape", "storage"),
            ("kafka://h?acks=1&replicated=1", "replicated"),
            ("kafka://h?session_timeout=2s&heartbeat=2s", "heartbeat"),
            ("kafka://h?linger=5x", "linger"),
            ("kafka://h?rdkafka.=x", "rdkafka."),
            ("kafka://h:99999", "url"),
            ("kafka://", "url"),
            ("kafka://a,,b", "url"),
            ("nats://h", "url"),
        ] {
            let e = KafkaConfig::from_url(url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}");
            assert!(e.to_string().contains(&format!("`{key}`")), "{url}: {e}");
        }
    }
}
