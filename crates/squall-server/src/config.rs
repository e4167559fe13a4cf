//! Server settings, validated with errors naming the key to fix.

use std::net::SocketAddr;
use std::time::Duration;

use squall_core::{Error, Result};
use squall_wire::DEFAULT_MAX_FRAME;

/// Default client port.
pub const DEFAULT_PORT: u16 = 4470;

/// How `squall serve` listens and what it allows.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Client listener. Default `127.0.0.1:4470`.
    pub listen: SocketAddr,
    /// Connections beyond this are refused with an error frame. Default 1024.
    pub max_connections: usize,
    /// Largest frame accepted or sent. Default 8 MiB.
    pub max_frame: usize,
    /// Unconfirmed publishes per connection; the server stops reading a connection's publishes
    /// beyond this until confirms go out (backpressure over TCP). Default 8192.
    pub max_in_flight: usize,
    /// Outgoing frames queued per connection before its producers (deliveries, confirms) wait.
    /// Default 1024.
    pub outbound_queue: usize,
    /// Concurrent request-reply calls per connection. Default 1024.
    pub max_requests: usize,
    /// Subscriptions per connection. Default 1024.
    pub max_subscriptions: usize,
    /// Ping interval. Default 5 s.
    pub heartbeat: Duration,
    /// Time a new connection has to say Hello. Default 10 s.
    pub handshake_timeout: Duration,
    /// On shutdown, how long connections may take to drain confirms and settles. Default 5 s.
    pub shutdown_grace: Duration,
    /// Bearer token clients must present in Hello (`None`: no authentication).
    pub token: Option<String>,
    /// Sent in Welcome.
    pub server_name: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            max_connections: 1024,
            max_frame: DEFAULT_MAX_FRAME,
            max_in_flight: 8192,
            outbound_queue: 1024,
            max_requests: 1024,
            max_subscriptions: 1024,
            heartbeat: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            token: None,
            server_name: format!("squall {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl ServerConfig {
    /// Checks every field; the error names the key.
    pub fn validate(&self, max_payload: usize) -> Result<()> {
        let positive = [
            ("server.max_connections", self.max_connections),
            ("server.max_in_flight", self.max_in_flight),
            ("server.outbound_queue", self.outbound_queue),
            ("server.max_requests", self.max_requests),
            ("server.max_subscriptions", self.max_subscriptions),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::config(key, "must be at least 1"));
            }
        }
        if self.max_frame < max_payload + 64 * 1024 + 1024 {
            return Err(Error::config(
                "server.max_frame",
                format!(
                    "{} bytes cannot hold a message of max_payload {max_payload} plus headers",
                    self.max_frame
                ),
            ));
        }
        if self.heartbeat.is_zero() {
            return Err(Error::config("server.heartbeat", "must be positive"));
        }
        if !self.listen.ip().is_loopback() && self.token.is_none() {
            return Err(Error::config(
                "server.token",
                format!(
                    "listening on {} (not loopback) requires a token",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}
