//! [`NatsConfig`]: the server URL and its options, parsed and checked without a server.
//!
//! ```text
//! nats://[user:password@ | token@]host[:port][?option=value&...]
//! ```
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `jetstream` | `0` | `1`: JetStream (streams, acks, replay); `0`: core NATS (at-most-once) |
//! | `name` | `squall` | connection name shown by the server |
//! | `max_payload` | 1 MiB − 2 KiB | largest payload plus headers squall accepts; the server's `max_payload` must leave [`HEADER_RESERVE`] bytes on top for the headers squall adds |
//! | `stream` | — | JetStream: use this one stream for everything (created if missing, with `subjects`) |
//! | `subjects` | — | JetStream: comma-separated subjects of the `stream` when it is created |
//! | `stream_prefix` | `squall` | JetStream: prefix of the streams derived from subjects |
//! | `stream_depth` | `1` | JetStream: how many leading subject tokens name a derived stream |
//! | `storage` | `file` | JetStream: `file` or `memory` for streams squall creates |
//! | `replicas` | `1` | JetStream: replicas of streams squall creates |
//! | `max_age`, `max_bytes`, `max_msgs` | unlimited | JetStream: limits of streams squall creates |
//! | `duplicate_window` | `2m` | JetStream: the `Nats-Msg-Id` deduplication window of streams squall creates |
//! | `sync` | `default` | JetStream: `always` declares that the server runs with `sync_interval: always`, so acks report `fsynced` |
//! | `max_pending_acks` | `256` | JetStream: publishes awaiting their ack at once (then `send` waits) |
//! | `api_timeout` | `5s` | JetStream API calls and publish acks |
//! | `pull_expires` | `5s` | JetStream: how long one pull request waits on the server |
//! | `group_expiry` | `5m` | JetStream: a non-durable group's consumer is removed this long after its last member left |
//! | `fanout_expiry` | `30s` | JetStream: a fan-out consumer whose process vanished is removed after this long |
//! | `connect_timeout` | `5s` | the first connection attempt |
//!
//! Durations take a unit: `500ms`, `2s`, `5m`, `1h` (a bare number is seconds).

use std::time::Duration;

use squall_core::options::{flag_on_off, nonempty, positive, positive_duration};
use squall_core::{Error, Result};

/// Bytes kept free for the headers squall adds (id, key, timestamp, time to live and framing).
/// The server's `max_payload` must be at least `max_payload + HEADER_RESERVE`.
pub const HEADER_RESERVE: usize = 2048;

/// Core NATS or JetStream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Core NATS: fan-out, queue groups, request-reply; at-most-once.
    Core,
    /// JetStream: streams, pull consumers, acks; at-least-once.
    JetStream,
}

/// Where JetStream streams squall creates keep their messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Files on the server's disk.
    File,
    /// Server memory: lost when the server stops.
    Memory,
}

/// How streams are chosen for subjects and patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamScope {
    /// One named stream for every subject; created with these subjects if missing.
    Fixed {
        /// The stream name.
        name: String,
        /// Its subjects when squall creates it (empty: it must exist).
        subjects: Vec<String>,
    },
    /// A stream per subject prefix: the first `depth` tokens of a subject name its stream
    /// `<prefix>_<token>_<token>...`, which captures `<tokens>` and `<tokens>.>`.
    Derived {
        /// Stream name prefix.
        prefix: String,
        /// Leading tokens that select the stream.
        depth: usize,
    },
}

/// Everything the adapter needs to connect, from a `nats://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// `host:port` of the server.
    pub server: String,
    /// User name, if the URL has one with a password.
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<String>,
    /// Token, if the URL has a user part without a password.
    pub token: Option<String>,
    /// Connection name.
    pub name: String,
    /// Core NATS or JetStream.
    pub mode: Mode,
    /// Largest payload plus headers accepted, in bytes.
    pub max_payload: usize,
    /// How streams are chosen (JetStream).
    pub streams: StreamScope,
    /// Storage of created streams.
    pub storage: Storage,
    /// Replicas of created streams.
    pub replicas: usize,
    /// Age limit of created streams.
    pub max_age: Option<Duration>,
    /// Size limit of created streams.
    pub max_bytes: Option<i64>,
    /// Message count limit of created streams.
    pub max_msgs: Option<i64>,
    /// Deduplication window of created streams.
    pub duplicate_window: Duration,
    /// The server fsyncs every write (`sync_interval: always`), as declared by the operator.
    pub sync_always: bool,
    /// Publish acks outstanding at once.
    pub max_pending_acks: usize,
    /// JetStream API and publish ack timeout.
    pub api_timeout: Duration,
    /// Lifetime of one pull request on the server.
    pub pull_expires: Duration,
    /// Inactivity after which a non-durable group's consumer is removed.
    pub group_expiry: Duration,
    /// Inactivity after which an abandoned fan-out consumer is removed.
    pub fanout_expiry: Duration,
    /// First connection timeout.
    pub connect_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            server: "127.0.0.1:4222".into(),
            user: None,
            password: None,
            token: None,
            name: "squall".into(),
            mode: Mode::Core,
            max_payload: (1 << 20) - HEADER_RESERVE,
            streams: StreamScope::Derived {
                prefix: "squall".into(),
                depth: 1,
            },
            storage: Storage::File,
            replicas: 1,
            max_age: None,
            max_bytes: None,
            max_msgs: None,
            duplicate_window: Duration::from_secs(120),
            sync_always: false,
            max_pending_acks: 256,
            api_timeout: Duration::from_secs(5),
            pull_expires: Duration::from_secs(5),
            group_expiry: Duration::from_secs(300),
            fanout_expiry: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl NatsConfig {
    /// Parses `nats://...` with the options in the [module docs](self). Unknown options and bad
    /// values fail with [`squall_core::ErrorKind::InvalidConfig`] naming the option.
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url)
            .map_err(|e| Error::config("url", format!("`{url}` is not a URL: {e}")))?;
        if parsed.scheme() != "nats" {
            return Err(Error::config(
                "url",
                format!("scheme `{}`: expected nats://", parsed.scheme()),
            ));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::config("url", "no host in the URL"))?;
        let mut c = NatsConfig {
            server: format!("{host}:{}", parsed.port().unwrap_or(4222)),
            ..NatsConfig::default()
        };
        let user = percent_decode(parsed.username());
        match (user.is_empty(), parsed.password()) {
            (false, Some(p)) => {
                c.user = Some(user);
                c.password = Some(percent_decode(p));
            }
            (false, None) => c.token = Some(user),
            (true, Some(_)) => return Err(Error::config("url", "a password without a user")),
            (true, None) => {}
        }
        let (mut stream, mut subjects, mut prefix, mut depth) = (None, Vec::new(), None, None);
        for (key, value) in parsed.query_pairs() {
            let (key, value) = (key.as_ref(), value.as_ref());
            match key {
                "jetstream" => {
                    c.mode = if flag_on_off(key, value)? {
                        Mode::JetStream
                    } else {
                        Mode::Core
                    }
                }
                "name" => c.name = nonempty(key, value)?.to_string(),
                "max_payload" => c.max_payload = positive(key, value)?,
                "stream" => stream = Some(stream_name(key, value)?),
                "subjects" => {
                    subjects = value
                        .split(',')
                        .map(|s| {
                            squall_core::Pattern::new(s.trim())
                                .map(|p| p.to_string())
                                .map_err(|e| Error::config(key, e))
                        })
                        .collect::<Result<_>>()?
                }
                "stream_prefix" => prefix = Some(stream_name(key, value)?),
                "stream_depth" => depth = Some(positive(key, value)?),
                "storage" => {
                    c.storage = match value {
                        "file" => Storage::File,
                        "memory" => Storage::Memory,
                        _ => return Err(Error::config(key, "expected `file` or `memory`")),
                    }
                }
                "replicas" => c.replicas = positive(key, value)?,
                "max_age" => c.max_age = Some(positive_duration(key, value)?),
                "max_bytes" => c.max_bytes = Some(positive::<i64>(key, value)?),
                "max_msgs" => c.max_msgs = Some(positive::<i64>(key, value)?),
                "duplicate_window" => c.duplicate_window = positive_duration(key, value)?,
                "sync" => {
                    c.sync_always = match value {
                        "always" => true,
                        "default" => false,
                        _ => return Err(Error::config(key, "expected `always` or `default`")),
                    }
                }
                "max_pending_acks" => c.max_pending_acks = positive(key, value)?,
                "api_timeout" => c.api_timeout = positive_duration(key, value)?,
                "pull_expires" => c.pull_expires = positive_duration(key, value)?,
                "group_expiry" => c.group_expiry = positive_duration(key, value)?,
                "fanout_expiry" => c.fanout_expiry = positive_duration(key, value)?,
                "connect_timeout" => c.connect_timeout = positive_duration(key, value)?,
                other => {
                    return Err(Error::config(
                        other,
                        format!("unknown option `{other}` in the NATS URL"),
                    ));
                }
            }
        }
        c.streams = match stream {
            Some(name) => {
                if prefix.is_some() || depth.is_some() {
                    return Err(Error::config(
                        "stream",
                        "`stream` binds one stream; it cannot be combined with `stream_prefix` or `stream_depth`",
                    ));
                }
                StreamScope::Fixed { name, subjects }
            }
            None => {
                if !subjects.is_empty() {
                    return Err(Error::config("subjects", "`subjects` needs `stream`"));
                }
                StreamScope::Derived {
                    prefix: prefix.unwrap_or_else(|| "squall".into()),
                    depth: depth.unwrap_or(1),
                }
            }
        };
        if c.pull_expires < Duration::from_millis(100) {
            return Err(Error::config("pull_expires", "must be at least 100ms"));
        }
        if c.fanout_expiry < c.pull_expires * 5 || c.group_expiry < c.pull_expires * 5 {
            return Err(Error::config(
                "fanout_expiry",
                "consumer expiries must be at least five pull_expires",
            ));
        }
        Ok(c)
    }

    /// Whether this configuration uses JetStream.
    pub fn is_jetstream(&self) -> bool {
        self.mode == Mode::JetStream
    }
}

/// Userinfo is percent-encoded in URLs.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A stream name: letters, digits, `-` and `_` (what every NATS server accepts).
fn stream_name(key: &str, value: &str) -> Result<String> {
    if value.is_empty()
        || value.len() > 64
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::config(
            key,
            format!("`{value}` must be 1 to 64 ASCII letters, digits, `-` or `_`"),
        ));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_core::ErrorKind;

    #[test]
    fn defaults_and_options_parse() {
        let c = NatsConfig::from_url("nats://127.0.0.1").unwrap();
        assert_eq!(c.server, "127.0.0.1:4222");
        assert_eq!(c.mode, Mode::Core);
        let c = NatsConfig::from_url(
            "nats://u:p%40ss@h:14222?jetstream=1&stream_depth=3&storage=memory&pull_expires=500ms&duplicate_window=1m&sync=always",
        )
        .unwrap();
        assert_eq!(c.server, "h:14222");
        assert_eq!(c.user.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert!(c.is_jetstream());
        assert!(c.sync_always);
        assert_eq!(c.storage, Storage::Memory);
        assert_eq!(c.pull_expires, Duration::from_millis(500));
        assert_eq!(c.duplicate_window, Duration::from_secs(60));
        assert_eq!(
            c.streams,
            StreamScope::Derived {
                prefix: "squall".into(),
                depth: 3
            }
        );
        let c = NatsConfig::from_url("nats://u:p%41@h").unwrap();
        assert_eq!(
            c.password.as_deref(),
            Some("pA"),
            "a trailing %41 is decoded"
        );
        let c = NatsConfig::from_url("nats://tok@h?jetstream=1&stream=ORDERS&subjects=orders.>,x")
            .unwrap();
        assert_eq!(c.token.as_deref(), Some("tok"));
        assert_eq!(
            c.streams,
            StreamScope::Fixed {
                name: "ORDERS".into(),
                subjects: vec!["orders.>".into(), "x".into()]
            }
        );
    }

    #[test]
    fn bad_values_name_the_option() {
        for (url, key) in [
            ("nats://h?bogus=1", "bogus"),
            ("nats://h?jetstream=maybe", "jetstream"),
            ("nats://h?stream=a.b", "stream"),
            ("nats://h?stream_depth=0", "stream_depth"),
            ("nats://h?pull_expires=5x", "pull_expires"),
            ("nats://h?subjects=a", "subjects"),
            ("nats://h?stream=S&stream_depth=2", "stream"),
            ("amqp://h", "url"),
        ] {
            let e = NatsConfig::from_url(url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}");
            assert!(e.to_string().contains(&format!("`{key}`")), "{url}: {e}");
        }
    }
}
