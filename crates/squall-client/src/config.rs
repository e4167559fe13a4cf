//! [`ClientConfig`]: where the server is, how to reconnect ([`ReconnectPolicy`]), what publishes do
//! while disconnected ([`WhenDisconnected`]), and the client's bounded buffers.
//!
//! Every value is checked by [`ClientConfig::validate`], and errors name the key to fix
//! (`server`, `client.publish_buffer`...), as [`squall_core::Error::config`] words them.

use std::time::Duration;

use rand::Rng;
use squall_core::{Error, Result};

/// The port `squall serve` listens on by default.
pub const DEFAULT_PORT: u16 = 4470;
/// The URL scheme of a `squall serve` address.
pub const URL_SCHEME: &str = "squall://";

/// What `send` does while the client is not connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenDisconnected {
    /// Fail at once with [`squall_core::ErrorKind::Unavailable`]: the application decides (retry,
    /// spool, drop). The default, because a silent queue hides an outage.
    #[default]
    Fail,
    /// Hold the publish until the client reconnects, then send it. At most
    /// [`ClientConfig::publish_buffer`] unconfirmed publishes are held; beyond that `send` fails
    /// with [`squall_core::ErrorKind::Full`] instead of waiting for an outage of unknown length.
    Wait,
}

/// How the client reconnects after losing its connection: exponential backoff from `initial`
/// doubling up to `max`, with full jitter (a uniformly random delay between zero and the backoff,
/// so many clients of a restarted server do not reconnect in lockstep).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Delay before the first reconnect attempt (before jitter). Default 50 ms.
    pub initial: Duration,
    /// Largest delay between attempts. Default 5 s.
    pub max: Duration,
    /// Full jitter on every delay. Default on.
    pub jitter: bool,
    /// Give up after this many failed attempts in a row: the client then closes, failing what it
    /// holds with [`squall_core::ErrorKind::Unavailable`]. `None` (default): never give up.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            jitter: true,
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// The backoff before attempt `attempt` (0-based), before jitter: `initial × 2^attempt`,
    /// capped at `max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay before attempt `attempt`: [`backoff`](Self::backoff), and with jitter a uniformly
    /// random duration between zero and it.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let base = self.backoff(attempt);
        if !self.jitter || base.is_zero() {
            return base;
        }
        let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

/// How to reach and use a `squall serve` server.
///
/// ```
/// use squall_client::{ClientConfig, WhenDisconnected};
///
/// let config = ClientConfig::from_url("squall://127.0.0.1:4470?name=billing&when_disconnected=wait")?;
/// assert_eq!(config.addr, "127.0.0.1:4470");
/// assert_eq!(config.name, "billing");
/// assert_eq!(config.when_disconnected, WhenDisconnected::Wait);
/// # Ok::<(), squall_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server: `host:port` (`127.0.0.1:4470`) or a URL (`squall://host[:port]`, port 4470 by
    /// default). The configuration key is `server`.
    pub addr: String,
    /// Sent in Hello, for the server's logs and statistics. Default `squall-client`.
    pub name: String,
    /// Bearer token, if the server requires one.
    pub token: Option<String>,
    /// How long one connection attempt (TCP connect plus Hello/Welcome) may take. Default 5 s.
    pub connect_timeout: Duration,
    /// Backoff between reconnect attempts.
    pub reconnect: ReconnectPolicy,
    /// Most unconfirmed publishes the client holds (queued, in flight, or waiting for a
    /// reconnect). A full buffer makes `send` wait while connected (backpressure) and fail with
    /// [`squall_core::ErrorKind::Full`] while disconnected. Default 4096.
    pub publish_buffer: usize,
    /// What `send` does while disconnected. Default [`WhenDisconnected::Fail`].
    pub when_disconnected: WhenDisconnected,
    /// Bound on the waits that have no timeout of their own: `subscribe` (for the server's
    /// answer), `flush`, and the flush of [`crate::Client::close`]. Request-reply uses the
    /// caller's timeout. Default 30 s.
    pub request_timeout: Duration,
    /// Deliveries a subscription may have buffered in the client (its credit window). The
    /// server leases them before the application takes them, so `ack_wait` must cover this
    /// buffer plus processing. Default 64.
    pub prefetch: u32,
    /// Size of the queue of commands from handles to the connection task. Default 1024.
    pub command_queue: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            addr: format!("127.0.0.1:{DEFAULT_PORT}"),
            name: "squall-client".to_string(),
            token: None,
            connect_timeout: Duration::from_secs(5),
            reconnect: ReconnectPolicy::default(),
            publish_buffer: 4096,
            when_disconnected: WhenDisconnected::Fail,
            request_timeout: Duration::from_secs(30),
            prefetch: 64,
            command_queue: 1024,
        }
    }
}

impl ClientConfig {
    /// Defaults, with the server at `addr` (`host:port` or a `squall://` URL; checked at connect).
    pub fn new(addr: impl Into<String>) -> Self {
        ClientConfig {
            addr: addr.into(),
            ..Default::default()
        }
    }

    /// Parses `squall://host[:port][?key=value&...]`. Query keys: `name`, `token`, `prefetch`,
    /// `publish_buffer`, `when_disconnected` (`fail` or `wait`), `max_attempts`.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url.strip_prefix(URL_SCHEME).ok_or_else(|| {
            Error::config(
                "server",
                format!("`{url}` is not a squall URL (expected `squall://host:port`)"),
            )
        })?;
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut config = ClientConfig::new(parse_addr(&format!("{URL_SCHEME}{authority}"))?);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |key: &str| {
                value.parse::<u32>().map_err(|_| {
                    Error::config(
                        &format!("server.{key}"),
                        format!("`{value}` in `{url}` is not a number"),
                    )
                })
            };
            match key {
                "name" => config.name = value.to_string(),
                "token" => config.token = Some(value.to_string()),
                "prefetch" => config.prefetch = number(key)?,
                "publish_buffer" => config.publish_buffer = number(key)? as usize,
                "max_attempts" => config.reconnect.max_attempts = Some(number(key)?),
                "when_disconnected" => {
                    config.when_disconnected = match value {
                        "fail" => WhenDisconnected::Fail,
                        "wait" => WhenDisconnected::Wait,
                        _ => {
                            return Err(Error::config(
                                "server.when_disconnected",
                                format!("`{value}` must be `fail` or `wait`"),
                            ));
                        }
                    }
                }
                _ => {
                    return Err(Error::config(
                        "server",
                        format!(
                            "unknown option `{key}` in `{url}` (known: name, token, prefetch, \
                             publish_buffer, when_disconnected, max_attempts)"
                        ),
                    ));
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the key to fix.
    pub fn validate(&self) -> Result<()> {
        parse_addr(&self.addr)?;
        let positive = [
            ("client.publish_buffer", self.publish_buffer),
            ("client.prefetch", self.prefetch as usize),
            ("client.command_queue", self.command_queue),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::config(key, "must be at least 1"));
            }
        }
        let durations = [
            ("client.connect_timeout", self.connect_timeout),
            ("client.request_timeout", self.request_timeout),
            ("client.reconnect.max", self.reconnect.max),
        ];
        for (key, d) in durations {
            if d.is_zero() {
                return Err(Error::config(key, "must be positive"));
            }
        }
        if self.reconnect.initial > self.reconnect.max {
            return Err(Error::config(
                "client.reconnect.initial",
                format!(
                    "{:?} is longer than client.reconnect.max ({:?})",
                    self.reconnect.initial, self.reconnect.max
                ),
            ));
        }
        if self.reconnect.max_attempts == Some(0) {
            return Err(Error::config(
                "client.reconnect.max_attempts",
                "must be at least 1 (or unset: retry forever)",
            ));
        }
        Ok(())
    }

    /// The server as `host:port`, from [`addr`](Self::addr).
    pub fn server(&self) -> Result<String> {
        parse_addr(&self.addr)
    }
}

/// Normalises `host:port` or `squall://host[:port]` to `host:port`. IPv6 hosts are bracketed
/// (`[::1]:4470`).
pub fn parse_addr(addr: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::config(
            "server",
            format!(
                "`{addr}` is not a server address: {why} (expected `host:port` or \
                 `squall://host[:port]`)"
            ),
        )
    };
    let (authority, default_port) = match addr.strip_prefix(URL_SCHEME) {
        Some(rest) => {
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            if rest.contains(['/', '?', '#', '@']) {
                return Err(bad("a squall URL has no path, user or fragment"));
            }
            (rest, Some(DEFAULT_PORT))
        }
        None if addr.contains("://") => return Err(bad("the scheme must be `squall://`")),
        None => (addr, None),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("the bracketed host is not an IPv6 address"));
        }
        match after.strip_prefix(':') {
            Some(p) => (format!("[{host}]"), Some(p)),
            None if after.is_empty() => (format!("[{host}]"), None),
            None => return Err(bad("unexpected text after `]`")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(bad("IPv6 addresses must be bracketed, as in `[::1]:4470`"));
            }
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let plain = |h: &str| {
        h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    };
    if host.is_empty() || !(host.starts_with('[') || plain(&host)) {
        return Err(bad("the host is empty or has invalid characters"));
    }
    let port = match (port, default_port) {
        (Some(p), _) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
        (None, Some(d)) => d,
        (None, None) => return Err(bad("the port is missing")),
    };
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use squall_core::ErrorKind;

    #[test]
    fn both_address_forms_parse_to_host_port() {
        assert_eq!(parse_addr("127.0.0.1:4470").unwrap(), "127.0.0.1:4470");
        assert_eq!(parse_addr("squall://localhost:9").unwrap(), "localhost:9");
        assert_eq!(
            parse_addr("squall://broker.internal").unwrap(),
            "broker.internal:4470"
        );
        assert_eq!(parse_addr("squall://broker/").unwrap(), "broker:4470");
        assert_eq!(parse_addr("[::1]:4470").unwrap(), "[::1]:4470");
        assert_eq!(parse_addr("squall://[::1]").unwrap(), "[::1]:4470");
    }

    #[test]
    fn bad_addresses_name_the_server_key() {
        for bad in [
            "",
            "localhost",
            "http://localhost:4470",
            "squall://",
            "squall://host:0",
            "squall://host:70000",
            "squall://host:port",
            "squall://host/path",
            "::1:4470",
            "[::1:4470",
            "ho st:1",
        ] {
            let e = parse_addr(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{bad}");
            assert!(e.to_string().contains("(set `server`)"), "{bad}: {e}");
            assert!(
                e.to_string().contains(bad),
                "{bad}: the message quotes the input: {e}"
            );
        }
    }

    #[test]
    fn from_url_reads_the_query_and_refuses_unknown_keys() {
        let c =
            ClientConfig::from_url("squall://h:1?token=s3cret&prefetch=8&max_attempts=3").unwrap();
        assert_eq!(c.addr, "h:1");
        assert_eq!(c.token.as_deref(), Some("s3cret"));
        assert_eq!(c.prefetch, 8);
        assert_eq!(c.reconnect.max_attempts, Some(3));
        let e = ClientConfig::from_url("squall://h:1?colour=blue").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = ClientConfig::from_url("squall://h:1?prefetch=0").unwrap_err();
        assert!(e.to_string().contains("client.prefetch"), "{e}");
        let e = ClientConfig::from_url("h:1").unwrap_err();
        assert!(e.to_string().contains("(set `server`)"), "{e}");
    }

    #[test]
    fn validate_names_the_key() {
        let mut c = ClientConfig::default();
        assert!(c.validate().is_ok());
        c.publish_buffer = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("client.publish_buffer")
        );
        let mut c = ClientConfig::default();
        c.reconnect.initial = Duration::from_secs(10);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("client.reconnect.initial")
        );
    }

    #[test]
    fn backoff_doubles_from_initial_up_to_max() {
        let p = ReconnectPolicy {
            jitter: false,
            ..Default::default()
        };
        let ms = |a| p.backoff(a).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(3)], [50, 100, 200, 400]);
        assert_eq!(ms(7), 5000, "6400 ms is capped at max");
        assert_eq!(ms(u32::MAX), 5000);
    }

    fn policy() -> impl Strategy<Value = ReconnectPolicy> {
        (0u64..10_000, 0u64..100_000, any::<bool>()).prop_map(|(a, b, jitter)| ReconnectPolicy {
            initial: Duration::from_millis(a.min(b)),
            max: Duration::from_millis(a.max(b)),
            jitter,
            max_attempts: None,
        })
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_the_backoff_or_max(p in policy(), attempt in any::<u32>(), seed in any::<u64>()) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let d = p.delay(attempt, &mut rng);
            prop_assert!(d <= p.backoff(attempt));
            prop_assert!(d <= p.max);
            if !p.jitter {
                prop_assert_eq!(d, p.backoff(attempt));
            }
        }

        #[test]
        fn backoff_is_monotonic_and_starts_at_initial(p in policy(), attempt in 0u32..64) {
            prop_assert_eq!(p.backoff(0), p.initial);
            prop_assert!(p.backoff(attempt) <= p.backoff(attempt + 1));
            prop_assert!(p.backoff(attempt) >= p.initial.min(p.max));
        }

        #[test]
        fn parsing_never_panics_and_accepts_what_it_prints(s in "\\PC{0,40}") {
            if let Ok(norm) = parse_addr(&s) {
                prop_assert_eq!(parse_addr(&norm).ok(), Some(norm.clone()));
            }
        }
    }
}
