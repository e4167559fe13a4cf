//! The connection a backend handle owns, and its reconnect loop.
//!
//! A [`Link`] holds the current AMQP connection in a `watch` channel together with a generation
//! number. A supervisor task (one per handle) watches the connection: on an error event, or when
//! its status stops being connected, it clears the slot and reconnects with exponential backoff
//! and full jitter between `reconnect_min` and `reconnect_max`, then publishes the new connection
//! under the next generation. Users of the link (the publisher, each consumer, the requester)
//! open their channels on the current connection and, when a channel fails, wait for a newer
//! generation and rebuild what they had (declarations, bindings, consumers).
//!
//! The AMQP client does not reconnect by itself here (its own recovery is left off so that the
//! adapter knows exactly which deliveries and confirms were lost with a connection).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use squall_core::backoff::Backoff;
use squall_core::{Error, ErrorKind, Result};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AmqpConfig;
use crate::error::amqp;

/// How long opening a channel (and, for the publisher, putting it in confirm mode) may take.
pub(crate) const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// One established connection and its generation (1 for the first).
#[derive(Clone)]
pub(crate) struct Live {
    pub conn: Arc<Connection>,
    pub generation: u64,
}

/// The connection of one backend handle; see the module docs.
pub(crate) struct Link {
    pub config: Arc<AmqpConfig>,
    /// The current connection; `None` while reconnecting or after close. Written only by the
    /// supervisor task and by `close`.
    current: watch::Sender<Option<Live>>,
    /// Cancelled by `close`: the supervisor stops, users of the link stop waiting.
    pub closed: CancellationToken,
    /// Completed reconnects.
    reconnects: AtomicU64,
    /// The supervisor and the consumer tasks; `close` waits for them.
    pub tasks: TaskTracker,
}

impl Link {
    /// Connects (once, failing fast) and starts the supervisor.
    pub async fn connect(config: Arc<AmqpConfig>) -> Result<Arc<Link>> {
        let conn = open(&config).await?;
        let (current, _) = watch::channel(Some(Live {
            conn: Arc::new(conn),
            generation: 1,
        }));
        let link = Arc::new(Link {
            config,
            current,
            closed: CancellationToken::new(),
            reconnects: AtomicU64::new(0),
            tasks: TaskTracker::new(),
        });
        let weak = Arc::downgrade(&link);
        let closed = link.closed.clone();
        link.tasks.spawn(async move {
            supervise(weak, closed).await;
        });
        Ok(link)
    }

    /// Completed reconnects since the handle was made.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// The current connection, if there is one.
    pub fn live(&self) -> Option<Live> {
        if self.closed.is_cancelled() {
            return None;
        }
        self.current
            .borrow()
            .clone()
            .filter(|l| l.conn.status().connected())
    }

    /// A new channel on the current connection, or `Unavailable` / `Closed`.
    pub async fn channel(&self) -> Result<(Channel, u64)> {
        if self.closed.is_cancelled() {
            return Err(Error::closed("the AMQP backend handle"));
        }
        let live = self.live().ok_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                format!(
                    "not connected to {} (reconnecting)",
                    self.config.redacted_url()
                ),
            )
        })?;
        // A connection that died a moment ago may still look connected, and the client library
        // then never answers the channel open: bounded, so a caller never waits forever.
        let ch = tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, live.conn.create_channel())
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "opening a channel on {} took over {CHANNEL_OPEN_TIMEOUT:?}: the \
                         connection is probably gone (reconnecting)",
                        self.config.redacted_url()
                    ),
                )
            })?
            .map_err(|e| amqp("opening a channel", e))?;
        Ok((ch, live.generation))
    }

    /// Waits until a connection newer than `generation` is up; `false` once the link is closed.
    pub async fn wait_newer(&self, generation: u64) -> bool {
        let mut rx = self.current.subscribe();
        loop {
            if self.closed.is_cancelled() {
                return false;
            }
            let ready = rx
                .borrow_and_update()
                .as_ref()
                .is_some_and(|l| l.generation > generation && l.conn.status().connected());
            if ready {
                return true;
            }
            tokio::select! {
                _ = self.closed.cancelled() => return false,
                changed = rx.changed() => if changed.is_err() { return false },
                // The status can change without a new generation (the supervisor has not noticed
                // yet); look again now and then.
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Stops the supervisor and closes the connection (channels close with it).
    pub async fn shutdown(&self) {
        self.closed.cancel();
        let live = self.current.send_replace(None);
        if let Some(l) = live
            && l.conn.status().connected()
            && let Err(e) = l.conn.close(200, "squall backend closed".into()).await
        {
            tracing::debug!(error = %e, "closing the AMQP connection");
        }
    }
}

async fn open(config: &AmqpConfig) -> Result<Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("squall-amqp {}", env!("CARGO_PKG_VERSION")).into());
    Connection::connect(&config.amqp_url, props)
        .await
        .map_err(|e| amqp(&format!("connecting to {}", config.redacted_url()), e))
}

/// Watches the connection; reconnects with backoff when it dies. Holds only a weak reference so
/// that dropping every handle ends it.
async fn supervise(link: std::sync::Weak<Link>, closed: CancellationToken) {
    let mut generation = 1;
    loop {
        let Some(l) = link.upgrade() else { return };
        let Some(live) = l.current.borrow().clone() else {
            return;
        };
        let mut events = live.conn.events_listener();
        drop(l);
        // Connected: wait for an error, a status change, or close.
        loop {
            tokio::select! {
                _ = closed.cancelled() => return,
                ev = events.next() => match ev {
                    // Channel errors (a refused declaration...) are reported here too; only a
                    // connection that stopped being connected is lost.
                    Some(Event::Error(e)) if !live.conn.status().connected() => {
                        tracing::warn!(error = %e, "AMQP connection lost");
                        break;
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if link.strong_count() == 0 {
                        // Every handle is gone: let the connection go with them.
                        return;
                    }
                    if !live.conn.status().connected() {
                        tracing::warn!("AMQP connection no longer connected");
                        break;
                    }
                }
            }
        }
        let Some(l) = link.upgrade() else { return };
        l.current.send_replace(None);
        let config = l.config.clone();
        drop(l);
        drop(live);
        let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
        let conn = loop {
            tokio::select! {
                _ = closed.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
            match open(&config).await {
                Ok(c) => break c,
                Err(e) => tracing::warn!(error = %e, "reconnecting to RabbitMQ"),
            }
        };
        generation += 1;
        let Some(l) = link.upgrade() else { return };
        if closed.is_cancelled() {
            return;
        }
        l.current.send_replace(Some(Live {
            conn: Arc::new(conn),
            generation,
        }));
        l.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(generation, "reconnected to RabbitMQ");
    }
}
