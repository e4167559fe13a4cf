//! A leased message handed to a consumer: [`Delivery`], and the [`Acker`] a backend implements to
//! settle it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::message::{Message, Timestamp};

/// Identifies one delivery (one lease) to the backend that made it. Opaque to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId {
    /// Stream sequence of the message (or a backend-chosen number).
    pub sequence: u64,
    /// Distinguishes this delivery from earlier and later deliveries of the same message.
    pub nonce: u64,
}

/// Settles deliveries on behalf of a backend. Implemented by backends, called through [`Delivery`].
///
/// Every method fails with [`crate::ErrorKind::LeaseExpired`] if the lease is no longer held
/// (expired, or the message was redelivered to someone else): the caller must then assume the
/// message will be, or was, processed again.
#[async_trait]
pub trait Acker: Send + Sync {
    /// The message is done; it will not be delivered to this group again.
    async fn ack(&self, lease: LeaseId) -> Result<()>;
    /// Redeliver no sooner than `delay` from now.
    async fn nack(&self, lease: LeaseId, delay: Duration) -> Result<()>;
    /// Do not redeliver: dead-letter the message with `reason`.
    async fn reject(&self, lease: LeaseId, reason: &str) -> Result<()>;
    /// Keep the lease `by` longer from now; returns the new deadline.
    async fn extend(&self, lease: LeaseId, by: Duration) -> Result<Timestamp>;
}

/// One delivery of a message to a consumer, holding a lease on it.
///
/// Settle it with exactly one of [`ack`](Self::ack), [`nack`](Self::nack) or [`reject`](Self::reject)
/// (each consumes the delivery). Dropping it unsettled leaves the lease to expire, after which the
/// message is redelivered. [`extend`](Self::extend) keeps a long task's lease alive.
pub struct Delivery {
    message: Message,
    attempt: u32,
    sequence: u64,
    published_at: Timestamp,
    deadline: Timestamp,
    group: Option<Arc<str>>,
    lease: LeaseId,
    acker: Arc<dyn Acker>,
}

/// Everything a backend states about a delivery besides the message and its acker.
#[derive(Debug, Clone)]
pub struct DeliveryInfo {
    /// 1 for the first delivery, 2 for the first redelivery...
    pub attempt: u32,
    /// Stream sequence (0 where the backend has none).
    pub sequence: u64,
    /// When the backend stored the message.
    pub published_at: Timestamp,
    /// When the lease expires.
    pub deadline: Timestamp,
    /// The consuming group, if any.
    pub group: Option<Arc<str>>,
    /// The lease.
    pub lease: LeaseId,
}

impl Delivery {
    /// Made by backends.
    pub fn new(message: Message, info: DeliveryInfo, acker: Arc<dyn Acker>) -> Self {
        Delivery {
            message,
            attempt: info.attempt,
            sequence: info.sequence,
            published_at: info.published_at,
            deadline: info.deadline,
            group: info.group,
            lease: info.lease,
            acker,
        }
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }
    /// Takes the message out, leaving the lease to expire (use [`Delivery::into_parts`] to keep it).
    pub fn into_message(self) -> Message {
        self.message
    }
    /// 1 on first delivery.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// Whether this is a redelivery.
    pub fn is_redelivery(&self) -> bool {
        self.attempt > 1
    }
    /// Stream sequence (0 where the backend has none).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
    /// When the backend stored the message.
    pub fn published_at(&self) -> Timestamp {
        self.published_at
    }
    /// When the lease expires, as last known.
    pub fn deadline(&self) -> Timestamp {
        self.deadline
    }
    /// The consuming group.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }
    /// The lease identity.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }
    /// The backend's acker. Where a backend shares one acker across a consumer's deliveries (the
    /// embedded broker does), `(acker, lease)` is enough to settle a delivery later, e.g. on behalf
    /// of a network client.
    pub fn acker(&self) -> &Arc<dyn Acker> {
        &self.acker
    }

    /// Acknowledges: done, never delivered to this group again.
    pub async fn ack(self) -> Result<()> {
        self.acker.ack(self.lease).await
    }
    /// Negative acknowledgement: redeliver after `delay`.
    pub async fn nack(self, delay: Duration) -> Result<()> {
        self.acker.nack(self.lease, delay).await
    }
    /// Rejects: dead-letter with `reason`, no redelivery.
    pub async fn reject(self, reason: &str) -> Result<()> {
        self.acker.reject(self.lease, reason).await
    }
    /// Extends the lease by `by` from now.
    pub async fn extend(&mut self, by: Duration) -> Result<()> {
        self.deadline = self.acker.extend(self.lease, by).await?;
        Ok(())
    }

    /// Splits into the message and a [`Settle`] handle that can still ack, nack or reject.
    pub fn into_parts(self) -> (Message, Settle) {
        let settle = Settle {
            lease: self.lease,
            attempt: self.attempt,
            acker: self.acker,
        };
        (self.message, settle)
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.message.subject())
            .field("id", &self.message.id())
            .field("attempt", &self.attempt)
            .field("sequence", &self.sequence)
            .finish()
    }
}

/// The settling half of a [`Delivery`] split by [`Delivery::into_parts`].
#[derive(Clone)]
pub struct Settle {
    lease: LeaseId,
    attempt: u32,
    acker: Arc<dyn Acker>,
}

impl Settle {
    /// The attempt number of the delivery.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// See [`Delivery::ack`].
    pub async fn ack(&self) -> Result<()> {
        self.acker.ack(self.lease).await
    }
    /// See [`Delivery::nack`].
    pub async fn nack(&self, delay: Duration) -> Result<()> {
        self.acker.nack(self.lease, delay).await
    }
    /// See [`Delivery::reject`].
    pub async fn reject(&self, reason: &str) -> Result<()> {
        self.acker.reject(self.lease, reason).await
    }
    /// See [`Delivery::extend`].
    pub async fn extend(&self, by: Duration) -> Result<Timestamp> {
        self.acker.extend(self.lease, by).await
    }
}

impl fmt::Debug for Settle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settle")
            .field("lease", &self.lease)
            .finish()
    }
}
