//! What a publish promises: [`Durability`], [`PublishAck`], and the [`PendingAck`] future that
//! resolves when the backend confirms.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{Error, ErrorKind, Result};

/// How far a published message got before it was acknowledged. Ordered: each level implies the
/// ones before it. A backend never reports more than it did.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Held in memory only: lost if the process dies.
    Memory,
    /// Written to the operating system (page cache): survives a process crash, not a power loss.
    Written,
    /// On stable storage (fdatasync returned): survives a power loss.
    Fsynced,
    /// Copied to more than one machine by a replicating broker.
    Replicated,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Memory => "memory",
            Durability::Written => "written",
            Durability::Fsynced => "fsynced",
            Durability::Replicated => "replicated",
        })
    }
}

/// The confirmation of one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// The stream (or queue/topic) that stored the message, if the backend names one.
    pub stream: Option<String>,
    /// Its sequence in that stream (0 where the backend has none).
    pub sequence: u64,
    /// The durability actually reached.
    pub durability: Durability,
    /// True when the id was already seen within the dedup window: stored once, acked again.
    pub duplicate: bool,
}

type BoxedAck = Pin<Box<dyn Future<Output = Result<PublishAck>> + Send>>;

/// The second half of a publish: a future resolving to the [`PublishAck`] once the backend confirms.
///
/// Dropping it does not cancel the publish; the message may still be stored.
#[must_use = "a PendingAck does nothing unless awaited; drop it only if the confirm does not matter"]
pub struct PendingAck(Inner);

enum Inner {
    Ready(Option<Result<PublishAck>>),
    Channel(tokio::sync::oneshot::Receiver<Result<PublishAck>>),
    Boxed(BoxedAck),
}

impl PendingAck {
    /// Already confirmed (or failed).
    pub fn ready(r: Result<PublishAck>) -> Self {
        PendingAck(Inner::Ready(Some(r)))
    }
    /// Confirmed when the sender sends; a dropped sender is reported as [`ErrorKind::Unavailable`]
    /// (the outcome is unknown).
    pub fn channel(rx: tokio::sync::oneshot::Receiver<Result<PublishAck>>) -> Self {
        PendingAck(Inner::Channel(rx))
    }
    /// Any future.
    pub fn future(f: impl Future<Output = Result<PublishAck>> + Send + 'static) -> Self {
        PendingAck(Inner::Boxed(Box::pin(f)))
    }
}

impl Future for PendingAck {
    type Output = Result<PublishAck>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Inner::Ready(r) => Poll::Ready(r.take().unwrap_or_else(|| {
                Err(Error::new(
                    ErrorKind::Internal,
                    "PendingAck polled after completion",
                ))
            })),
            Inner::Channel(rx) => Pin::new(rx).poll(cx).map(|r| {
                r.unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorKind::Unavailable,
                        "the publish was abandoned before it was confirmed; its outcome is unknown",
                    ))
                })
            }),
            Inner::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for PendingAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingAck")
    }
}
