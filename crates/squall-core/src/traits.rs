//! The traits every backend implements: [`Publisher`], [`Subscriber`] (yielding a [`Consumer`]),
//! [`Requester`], and [`Backend`] bundling them with [`Capabilities`].
//!
//! All are object safe (`Arc<dyn Backend>` selects a backend at run time).

use std::time::Duration;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::delivery::Delivery;
use crate::error::Result;
use crate::message::Message;
use crate::publish::{PendingAck, PublishAck};
use crate::subscription::Subscription;

/// Publishes messages.
///
/// A publish has two steps: [`send`](Self::send) hands the message to the backend (waiting here is
/// backpressure) and returns a [`PendingAck`]; awaiting that gives the confirm. Pipelining many sends
/// before awaiting their acks is how a single producer reaches high throughput.
///
/// Cancel safety: `send` is not cancel safe: if its future is dropped, the message may or may not
/// have been handed over. Dropping a [`PendingAck`] never cancels a publish.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Hands `msg` to the backend. Fails at once on invalid messages and, depending on the backend's
    /// overflow policy, when it is full.
    async fn send(&self, msg: Message) -> Result<PendingAck>;

    /// Sends and waits for the confirm.
    async fn publish(&self, msg: Message) -> Result<PublishAck> {
        self.send(msg).await?.await
    }

    /// Sends all, then waits for every confirm; one result per message, in order. Backends override
    /// this to batch.
    async fn publish_batch(&self, msgs: Vec<Message>) -> Result<Vec<Result<PublishAck>>> {
        let mut pending = Vec::with_capacity(msgs.len());
        for m in msgs {
            pending.push(self.send(m).await);
        }
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            out.push(match p {
                Ok(p) => p.await,
                Err(e) => Err(e),
            });
        }
        Ok(out)
    }

    /// Waits until everything sent so far is confirmed or failed.
    async fn flush(&self) -> Result<()>;

    /// Flushes, then refuses further sends with [`crate::ErrorKind::Closed`].
    async fn close(&self) -> Result<()>;
}

/// Opens consumers.
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// Starts consuming as `sub` describes. Fails on invalid patterns or policies, and with
    /// [`crate::ErrorKind::Unsupported`] if the subscription asks for what the backend lacks.
    async fn subscribe(&self, sub: Subscription) -> Result<Box<dyn Consumer>>;
}

/// A live subscription yielding leased deliveries.
///
/// Cancel safety: [`next`](Self::next) and [`next_batch`](Self::next_batch) are cancel safe: if the
/// future is dropped before it completes, no delivery is lost (nothing was leased).
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery, waiting for one. `None` once the consumer is closed. An `Err` reports a
    /// problem (e.g. disconnected) without ending the consumer; call again.
    async fn next(&mut self) -> Option<Result<Delivery>>;

    /// Up to `max` deliveries: waits for the first, then takes what is ready within `wait`.
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        match self.next().await {
            Some(d) => out.push(d?),
            None => return Ok(out),
        }
        let deadline = tokio::time::Instant::now() + wait;
        while out.len() < max {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Ok(Some(Ok(d))) => out.push(d),
                Ok(Some(Err(e))) if out.is_empty() => return Err(e),
                Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Stops receiving. Unsettled deliveries of this consumer are released for redelivery (to other
    /// group members, or to a later subscriber of a durable group).
    async fn close(&mut self) -> Result<()>;
}

/// Request-reply.
#[async_trait]
pub trait Requester: Send + Sync {
    /// Publishes `msg` with a fresh reply subject and correlation id and waits up to `timeout` for
    /// the first reply. [`crate::ErrorKind::Timeout`] when none comes.
    async fn request(&self, msg: Message, timeout: Duration) -> Result<Message>;
}

/// A complete backend.
pub trait Backend: Publisher + Subscriber + Requester {
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
    /// A short name for reports (`embedded`, `nats`, `amqp`...).
    fn name(&self) -> &str;
}
