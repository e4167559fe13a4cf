//! [`ConnectionState`], published by the connection task through a `tokio::sync::watch`, and the
//! state the handles, consumers and the connection task share.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use squall_core::Error;
use squall_wire::Welcome;
use tokio::sync::{Notify, Semaphore};

use crate::config::ClientConfig;

/// Where the client's connection is. Watch it with [`crate::Client::state`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Opening a connection (TCP connect, Hello/Welcome).
    Connecting,
    /// Connected; `server` is the name the server gave in Welcome.
    Connected {
        /// The server's name.
        server: String,
    },
    /// The connection was lost (or an attempt failed); the client retries after a backoff.
    Disconnected {
        /// Why.
        error: Error,
    },
    /// [`crate::Client::close`] finished, every handle was dropped, or the client gave up
    /// reconnecting (`client.reconnect.max_attempts`). Terminal.
    Closed,
}

impl ConnectionState {
    /// Whether this is [`ConnectionState::Connected`].
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionState::Connecting => f.write_str("connecting"),
            ConnectionState::Connected { server } => write!(f, "connected to {server}"),
            ConnectionState::Disconnected { error } => write!(f, "disconnected: {error}"),
            ConnectionState::Closed => f.write_str("closed"),
        }
    }
}

/// What handles, consumers, ackers and the connection task share. Everything here is either
/// immutable, atomic, or behind a `std` mutex held for a copy (never across an await).
pub(crate) struct Shared {
    /// The configuration the client was built with.
    pub config: ClientConfig,
    /// One permit per unconfirmed publish (`client.publish_buffer`). A permit is taken by `send`
    /// and travels with the publish until it is confirmed or failed: this bounds the memory the
    /// client spends on publishes it may have to re-send.
    pub publish_permits: Arc<Semaphore>,
    /// Set by `close` (or when the task ends): later calls fail with `Closed`.
    pub closed: AtomicBool,
    /// Consumers → connection task: "credit is due or a consumer was dropped; look at the
    /// subscriptions". One stored permit, so a wake-up is never lost and never queues up.
    pub wake: Notify,
    /// The last Welcome (limits for validation and capabilities).
    pub welcome: Mutex<Welcome>,
    /// Successful reconnects since the client was created.
    pub reconnects: AtomicU64,
}

impl Shared {
    pub fn new(config: ClientConfig, welcome: Welcome) -> Self {
        Shared {
            publish_permits: Arc::new(Semaphore::new(config.publish_buffer)),
            config,
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            welcome: Mutex::new(welcome),
            reconnects: AtomicU64::new(0),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn welcome(&self) -> Welcome {
        self.welcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_welcome(&self, welcome: Welcome) {
        *self.welcome.lock().unwrap_or_else(|p| p.into_inner()) = welcome;
    }
}
