//! [`SqsConfig`]: everything the adapter is configured with, parsed from one URL.
//!
//! ```text
//! sqs://127.0.0.1:4566?region=us-east-1&queue_prefix=shop-&wait_time=5s&max_receive=5
//! sqs://aws?region=eu-west-1&fifo=1
//! sqs://AKIA...:secret@sqs.eu-west-1.amazonaws.com?region=eu-west-1&tls=true
//! ```
//!
//! The host says where SQS is: `aws` (or nothing: `sqs://?region=…`) is Amazon's own endpoint
//! for the region; anything else is an endpoint override (`http://host:port`, or `https://`
//! with `tls=true`), for SQS-compatible servers such as `moto_server` or LocalStack, or a VPC
//! endpoint.
//!
//! **Credentials**: a user and password in the URL are used as a static access key and secret.
//! Otherwise they come from the environment through the AWS SDK's default chain (environment
//! variables, profile files, SSO, container or instance metadata), except for an endpoint
//! override on the loopback interface (`localhost`, `127.0.0.0/8`, `::1`) while
//! `AWS_ACCESS_KEY_ID` is unset: emulators accept anything, so the dummy key `test` / `test`
//! is used and nothing is looked up.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `region` | `AWS_REGION`, `AWS_DEFAULT_REGION`, else `us-east-1` on a loopback endpoint | the AWS region (required for Amazon's endpoint) |
//! | `tls` | `false` on a loopback endpoint, else `true` | reach an endpoint override over `https://` |
//! | `queue_prefix` | `squall-` | every queue the adapter creates or looks for starts with it (1 to 20 letters, digits, `-`, `_`) |
//! | `fifo` | `false` | create and use FIFO queues (`.fifo`): message groups by key, deduplication by message id, no per-message delay |
//! | `wait_time` | `5s` | long polling: how long one `ReceiveMessage` waits for messages (whole seconds, 0 to 20 s) |
//! | `batch_size` | `10` | most messages one `ReceiveMessage` asks for (1 to 10) |
//! | `serial_receive` | `true` | the consumers of one queue through one handle (members of a group in one process) take turns to receive, one request in flight at a time: fewer empty long polls, and no duplicates from servers whose concurrent receives can hand out one message twice (moto_server does) |
//! | `visibility_timeout` | `30s` | the `VisibilityTimeout` attribute of queues the adapter creates (what other clients get by default; squall consumers always ask for their own `ack_wait`) |
//! | `lease_grace` | `5s` | how much longer than a delivery's `ack_wait` SQS keeps it invisible, so the adapter decides (redeliver after the backoff, or dead-letter) before SQS redelivers on its own |
//! | `max_receive` | none | native redrive policy: after this many receives SQS moves a message of a group queue to its dead-letter queue `<queue>-dlq` |
//! | `retention` | SQS's (4 days) | `MessageRetentionPeriod` of queues the adapter creates (60 s to 14 days) |
//! | `max_message_size` | `262144` | the largest SQS message (body and attributes) sent, in bytes (1024 to 1048576; raise it only where the queues accept it) |
//! | `durability` | `replicated` on Amazon's endpoint, else `memory` | what a publish ack claims: `memory`, `written`, `fsynced` or `replicated` |
//! | `discovery_ttl` | `0s` | how long the queues bound to a subject are cached by a publisher; `0s` lists them for every publish |
//! | `mandatory` | `false` | a publish no queue is bound for fails with `NoResponders` instead of being dropped |
//! | `max_pending` | `1024` | publishes awaiting their confirm per handle; `send` waits beyond it |
//! | `connect_timeout` | `5s` | bound of a TCP connect, and of the check `connect` makes that SQS answers |
//! | `request_timeout` | `10s` | bound of one request (a long poll gets `wait_time` on top) |
//! | `close_timeout` | `10s` | how long `close` waits for outstanding confirms |
//! | `reconnect_min`, `reconnect_max` | `100ms`, `5s` | bounds of the backoff (full jitter) of a consumer whose receives fail |
//!
//! Durations are written with a unit: `250ms`, `5s`, `2m`, `1h`. Unknown options are refused, so
//! a typo is an error, not a silently ignored setting; every error names the option to fix.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use squall_core::options::{duration, flag, invalid, number, redact};
use squall_core::{Durability, Error, Result};
use url::Url;

use crate::naming::MAX_PREFIX_LEN;

/// The largest visibility timeout SQS accepts (12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);
/// The largest per-message delay SQS accepts (15 minutes).
pub const MAX_DELAY: Duration = Duration::from_secs(900);
/// The longest long poll SQS accepts.
pub const MAX_WAIT_TIME: Duration = Duration::from_secs(20);

/// Where SQS is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Amazon's endpoint for the region, resolved by the SDK.
    Aws,
    /// An endpoint override: `http(s)://host:port`.
    Url {
        /// The URL handed to the SDK.
        url: String,
        /// Whether the host is on the loopback interface.
        loopback: bool,
    },
}

/// How the adapter gets its credentials; see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// The AWS SDK's default chain.
    Environment,
    /// A fixed access key and secret (from the URL, or `test` / `test` for a local emulator).
    Static {
        /// Access key id.
        access_key: String,
        /// Secret access key.
        secret_key: String,
    },
}

impl fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Environment => f.write_str("Environment"),
            CredentialSource::Static { access_key, .. } => f
                .debug_struct("Static")
                .field("access_key", access_key)
                .field("secret_key", &"***")
                .finish(),
        }
    }
}

/// The adapter's configuration. Build it with [`SqsConfig::from_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsConfig {
    /// The URL with the secret replaced by `***`, for messages and logs.
    pub(crate) redacted: String,
    /// Where SQS is.
    pub endpoint: Endpoint,
    /// The AWS region.
    pub region: String,
    /// Where credentials come from.
    pub credentials: CredentialSource,
    /// Prefix of every queue name.
    pub queue_prefix: String,
    /// FIFO queues.
    pub fifo: bool,
    /// Long-poll duration of one receive.
    pub wait_time: Duration,
    /// Most messages one receive asks for.
    pub batch_size: u8,
    /// One receive at a time per queue and handle.
    pub serial_receive: bool,
    /// `VisibilityTimeout` attribute of created queues.
    pub visibility_timeout: Duration,
    /// Extra invisibility beyond a delivery's lease; see the module docs.
    pub lease_grace: Duration,
    /// Native redrive after this many receives.
    pub max_receive: Option<u32>,
    /// `MessageRetentionPeriod` of created queues.
    pub retention: Option<Duration>,
    /// Largest SQS message sent (body and attributes).
    pub max_message_size: usize,
    /// What publish acks claim.
    pub durability: Durability,
    /// How long a subject's queues are cached by a publisher.
    pub discovery_ttl: Duration,
    /// Refuse publishes no queue is bound for.
    pub mandatory: bool,
    /// Publishes awaiting a confirm per handle.
    pub max_pending: usize,
    /// Bound of a connect and of the check `connect` makes.
    pub connect_timeout: Duration,
    /// Bound of one request.
    pub request_timeout: Duration,
    /// How long `close` waits for confirms.
    pub close_timeout: Duration,
    /// Shortest backoff of a failing receive loop.
    pub reconnect_min: Duration,
    /// Longest backoff of a failing receive loop.
    pub reconnect_max: Duration,
}

const OPTIONS: &str = "region, tls, queue_prefix, fifo, wait_time, batch_size, serial_receive, \
                       visibility_timeout, \
                       lease_grace, max_receive, retention, max_message_size, durability, \
                       discovery_ttl, mandatory, max_pending, connect_timeout, request_timeout, \
                       close_timeout, reconnect_min, reconnect_max";

impl SqsConfig {
    /// Parses `sqs://[key:secret@]host[:port]?option=value&...`; see the module docs for the
    /// options. Errors are [`ErrorKind::InvalidConfig`](squall_core::ErrorKind::InvalidConfig)
    /// naming the option.
    pub fn from_url(s: &str) -> Result<Self> {
        let url = Url::parse(s)
            .map_err(|e| Error::config("url", format!("`{}` is not a URL: {e}", redact(s))))?;
        if url.scheme() != "sqs" {
            return Err(Error::config(
                "url",
                format!("scheme `{}` is not sqs://", url.scheme().escape_debug()),
            ));
        }
        if !matches!(url.path(), "" | "/") {
            return Err(Error::config(
                "url",
                format!(
                    "the SQS URL has a path `{}`: queues are named from subjects (see \
                     `queue_prefix`), not in the URL",
                    url.path().escape_debug()
                ),
            ));
        }
        let host = url.host_str().unwrap_or("").to_string();
        let loopback = is_loopback(&host);
        let mut tls = !loopback;
        let mut region = None;
        let mut durability = None;
        let mut cfg = SqsConfig {
            redacted: redact(s),
            endpoint: Endpoint::Aws,
            region: String::new(),
            credentials: CredentialSource::Environment,
            queue_prefix: "squall-".into(),
            fifo: false,
            wait_time: Duration::from_secs(5),
            batch_size: 10,
            serial_receive: true,
            visibility_timeout: Duration::from_secs(30),
            lease_grace: Duration::from_secs(5),
            max_receive: None,
            retention: None,
            max_message_size: 262_144,
            durability: Durability::Memory,
            discovery_ttl: Duration::ZERO,
            mandatory: false,
            max_pending: 1024,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        };
        for (k, v) in url.query_pairs() {
            let (k, v) = (k.as_ref(), v.as_ref());
            match k {
                "region" => region = Some(v.to_string()),
                "tls" => tls = flag(k, v)?,
                "queue_prefix" => cfg.queue_prefix = v.to_string(),
                "fifo" => cfg.fifo = flag(k, v)?,
                "wait_time" => cfg.wait_time = duration(k, v)?,
                "batch_size" => cfg.batch_size = number(k, v)?,
                "serial_receive" => cfg.serial_receive = flag(k, v)?,
                "visibility_timeout" => cfg.visibility_timeout = duration(k, v)?,
                "lease_grace" => cfg.lease_grace = duration(k, v)?,
                "max_receive" => cfg.max_receive = Some(number(k, v)?),
                "retention" => cfg.retention = Some(duration(k, v)?),
                "max_message_size" => cfg.max_message_size = number(k, v)?,
                "durability" => {
                    durability = Some(match v {
                        "memory" => Durability::Memory,
                        "written" => Durability::Written,
                        "fsynced" => Durability::Fsynced,
                        "replicated" => Durability::Replicated,
                        _ => return Err(invalid(k, v, "memory, written, fsynced or replicated")),
                    })
                }
                "discovery_ttl" => cfg.discovery_ttl = duration(k, v)?,
                "mandatory" => cfg.mandatory = flag(k, v)?,
                "max_pending" => cfg.max_pending = number(k, v)?,
                "connect_timeout" => cfg.connect_timeout = duration(k, v)?,
                "request_timeout" => cfg.request_timeout = duration(k, v)?,
                "close_timeout" => cfg.close_timeout = duration(k, v)?,
                "reconnect_min" => cfg.reconnect_min = duration(k, v)?,
                "reconnect_max" => cfg.reconnect_max = duration(k, v)?,
                _ => {
                    return Err(Error::config(
                        k,
                        format!(
                            "unknown option `{}` in the SQS URL (options: {OPTIONS})",
                            k.escape_debug()
                        ),
                    ));
                }
            }
        }
        let aws = host.is_empty() || host.eq_ignore_ascii_case("aws");
        if !aws {
            let scheme = if tls { "https" } else { "http" };
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            let host = match url.host() {
                Some(url::Host::Ipv6(a)) => format!("[{a}]"),
                _ => host.clone(),
            };
            cfg.endpoint = Endpoint::Url {
                url: format!("{scheme}://{host}{port}"),
                loopback,
            };
        } else if url.port().is_some() {
            return Err(Error::config(
                "url",
                "a port makes no sense with Amazon's endpoint (`sqs://aws`): name the host of an \
                 endpoint override instead",
            ));
        }
        cfg.region = match region.or_else(env_region) {
            Some(r) => r,
            None if loopback => "us-east-1".into(),
            None => {
                return Err(Error::config(
                    "region",
                    "no AWS region: add `region=…` to the URL or set AWS_REGION",
                ));
            }
        };
        cfg.durability = durability.unwrap_or(if aws {
            Durability::Replicated
        } else {
            Durability::Memory
        });
        let user = percent_decode(url.username());
        let password = url.password().map(percent_decode);
        cfg.credentials = match (user.is_empty(), password) {
            (false, Some(secret)) => CredentialSource::Static {
                access_key: user,
                secret_key: secret,
            },
            (false, None) => {
                return Err(Error::config(
                    "url",
                    "the URL names an access key without a secret: write `sqs://KEY:SECRET@host`",
                ));
            }
            (true, _) if loopback && std::env::var_os("AWS_ACCESS_KEY_ID").is_none() => {
                CredentialSource::Static {
                    access_key: "test".into(),
                    secret_key: "test".into(),
                }
            }
            (true, _) => CredentialSource::Environment,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value, naming the option to fix; `from_url` and `SqsBackend::connect` call
    /// it (fields may have been changed in between).
    pub fn validate(&self) -> Result<()> {
        let p = &self.queue_prefix;
        if p.is_empty()
            || p.len() > MAX_PREFIX_LEN
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::config(
                "queue_prefix",
                format!(
                    "queue prefix `{}` must be 1 to {MAX_PREFIX_LEN} ASCII letters, digits, `-` \
                     or `_` (SQS queue names are at most 80 characters)",
                    p.escape_debug()
                ),
            ));
        }
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Error::config(
                "region",
                format!("`{}` is not an AWS region", self.region.escape_debug()),
            ));
        }
        if self.wait_time > MAX_WAIT_TIME || self.wait_time.subsec_nanos() != 0 {
            return Err(Error::config(
                "wait_time",
                "must be whole seconds from 0s to 20s (SQS's long-poll limit)",
            ));
        }
        if !(1..=10).contains(&self.batch_size) {
            return Err(Error::config(
                "batch_size",
                "must be 1 to 10 (SQS returns at most 10 messages per receive)",
            ));
        }
        if self.visibility_timeout > MAX_VISIBILITY || self.visibility_timeout.subsec_nanos() != 0 {
            return Err(Error::config(
                "visibility_timeout",
                "must be whole seconds up to 12h",
            ));
        }
        if self.lease_grace > Duration::from_secs(3600) {
            return Err(Error::config("lease_grace", "must be at most 1h"));
        }
        if self.max_receive.is_some_and(|n| !(1..=1000).contains(&n)) {
            return Err(Error::config(
                "max_receive",
                "must be 1 to 1000 (SQS's maxReceiveCount)",
            ));
        }
        if self
            .retention
            .is_some_and(|r| r < Duration::from_secs(60) || r > Duration::from_secs(1_209_600))
        {
            return Err(Error::config("retention", "must be 60s to 14 days"));
        }
        if !(1024..=1_048_576).contains(&self.max_message_size) {
            return Err(Error::config(
                "max_message_size",
                "must be 1024 to 1048576 bytes (SQS's limits)",
            ));
        }
        if self.max_pending == 0 || self.max_pending > 1 << 20 {
            return Err(Error::config(
                "max_pending",
                "must be between 1 and 1048576",
            ));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(Error::config(
                "request_timeout",
                "connect_timeout and request_timeout must be positive",
            ));
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return Err(Error::config(
                "reconnect_max",
                "reconnect_min must be positive and reconnect_max at least reconnect_min",
            ));
        }
        Ok(())
    }

    /// The URL with the secret hidden.
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    /// The endpoint requests go to, for messages: the override URL, or Amazon's for the region.
    pub fn endpoint_display(&self) -> String {
        match &self.endpoint {
            Endpoint::Aws => format!("https://sqs.{}.amazonaws.com", self.region),
            Endpoint::Url { url, .. } => url.clone(),
        }
    }

    /// The largest payload accepted: what fits in `max_message_size` base64-encoded (binary
    /// payloads are), with 4 KiB left for squall's attributes.
    pub fn max_payload(&self) -> usize {
        (self.max_message_size.saturating_sub(ATTRIBUTE_RESERVE)) / 4 * 3
    }
}

/// Room kept in every SQS message for squall's own attributes when computing `max_payload`.
pub(crate) const ATTRIBUTE_RESERVE: usize = 4096;

fn env_region() -> Option<String> {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// Userinfo is percent-encoded in URLs.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_core::ErrorKind;

    #[test]
    fn a_local_endpoint_gets_http_dummy_credentials_and_memory_durability() {
        let c = SqsConfig::from_url("sqs://127.0.0.1:4566?region=us-east-1").unwrap();
        assert_eq!(
            c.endpoint,
            Endpoint::Url {
                url: "http://127.0.0.1:4566".into(),
                loopback: true
            }
        );
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.durability, Durability::Memory);
        assert_eq!(c.queue_prefix, "squall-");
        assert_eq!(c.wait_time, Duration::from_secs(5));
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            assert!(matches!(c.credentials, CredentialSource::Static { .. }));
        }
        assert_eq!(c.max_payload(), (262_144 - 4096) / 4 * 3);
    }

    #[test]
    fn aws_is_replicated_and_url_credentials_are_hidden() {
        let c = SqsConfig::from_url("sqs://AKID:s%2Fw0rd@aws?region=eu-west-1&fifo=1").unwrap();
        assert_eq!(c.endpoint, Endpoint::Aws);
        assert_eq!(c.durability, Durability::Replicated);
        assert!(c.fifo);
        assert_eq!(
            c.credentials,
            CredentialSource::Static {
                access_key: "AKID".into(),
                secret_key: "s/w0rd".into()
            }
        );
        assert!(!format!("{c:?}").contains("w0rd"), "{c:?}");
        assert!(c.redacted_url().contains("***"));
        assert_eq!(c.endpoint_display(), "https://sqs.eu-west-1.amazonaws.com");
        let c = SqsConfig::from_url("sqs://AKID:s%41@aws?region=eu-west-1").unwrap();
        assert_eq!(
            c.credentials,
            CredentialSource::Static {
                access_key: "AKID".into(),
                secret_key: "sA".into()
            },
            "a trailing %41 is decoded"
        );
        let o = SqsConfig::from_url("sqs://sqs.internal:443?region=eu-west-1").unwrap();
        assert_eq!(
            o.endpoint,
            Endpoint::Url {
                url: "https://sqs.internal:443".into(),
                loopback: false
            }
        );
    }

    #[test]
    fn options_are_parsed() {
        let c = SqsConfig::from_url(
            "sqs://localhost:4566?region=us-east-1&queue_prefix=t-1&wait_time=1s&batch_size=4\
             &visibility_timeout=10s&lease_grace=2s&max_receive=3&retention=2m\
             &max_message_size=1048576&durability=written&discovery_ttl=1s&mandatory=yes\
             &max_pending=7&connect_timeout=1s&request_timeout=3s&close_timeout=2s\
             &reconnect_min=5ms&reconnect_max=1s&tls=false",
        )
        .unwrap();
        assert_eq!(c.queue_prefix, "t-1");
        assert_eq!(c.wait_time, Duration::from_secs(1));
        assert_eq!(c.batch_size, 4);
        assert_eq!(c.max_receive, Some(3));
        assert_eq!(c.retention, Some(Duration::from_secs(120)));
        assert_eq!(c.max_message_size, 1_048_576);
        assert_eq!(c.durability, Durability::Written);
        assert!(c.mandatory);
        assert_eq!(c.max_pending, 7);
        assert_eq!(c.reconnect_min, Duration::from_millis(5));
    }

    #[test]
    fn bad_values_name_the_option() {
        for (url, key) in [
            ("http://h", "url"),
            ("sqs://h/queue?region=r", "url"),
            ("sqs://aws:99?region=r", "url"),
            ("sqs://127.0.0.1?wiat_time=1s", "wiat_time"),
            ("sqs://127.0.0.1?wait_time=21s", "wait_time"),
            ("sqs://127.0.0.1?wait_time=1500ms", "wait_time"),
            ("sqs://127.0.0.1?wait_time=1", "wait_time"),
            ("sqs://127.0.0.1?batch_size=11", "batch_size"),
            ("sqs://127.0.0.1?queue_prefix=a.b", "queue_prefix"),
            (
                "sqs://127.0.0.1?queue_prefix=aaaaaaaaaaaaaaaaaaaaa",
                "queue_prefix",
            ),
            ("sqs://127.0.0.1?max_receive=0", "max_receive"),
            ("sqs://127.0.0.1?retention=1s", "retention"),
            ("sqs://127.0.0.1?max_message_size=100", "max_message_size"),
            ("sqs://127.0.0.1?durability=disk", "durability"),
            ("sqs://127.0.0.1?fifo=maybe", "fifo"),
            ("sqs://127.0.0.1?region=a%20b", "region"),
            ("sqs://key@127.0.0.1", "url"),
            (
                "sqs://127.0.0.1?reconnect_min=2s&reconnect_max=1s",
                "reconnect_max",
            ),
        ] {
            let e = SqsConfig::from_url(url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}");
            assert!(e.to_string().contains(&format!("`{key}`")), "{url}: {e}");
        }
        let e = SqsConfig::from_url("sqs://user:pw@[bad").unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
    }
}
