//! Leases, and what ack, nack, reject, extend and lease expiry do on RabbitMQ.
//!
//! RabbitMQ has no visibility timeout, attempt count (classic queues) or delayed requeue, so the
//! adapter keeps them. Each delivery handed out is a [`Lease`] in its consumer's map until it is
//! settled or its `ack_wait` runs out; settling a delivery no longer in the map fails with
//! `LeaseExpired`.
//!
//! | operation | on RabbitMQ |
//! |---|---|
//! | ack | `basic.ack` |
//! | nack(delay), lease expiry | a **retry copy** is published to the same queue (through the default exchange, or through a retry queue `<exchange>.retry.<ms>` whose TTL dead-letters it back after the delay) carrying the attempt count and attempt times; once the broker confirms it, the original is acked. Lease expiry uses the policy's backoff as the delay |
//! | reject, last allowed delivery | the [`DeadLetter`] envelope is published to the dead-letter subject (mandatory: if no queue is bound there it goes to `<exchange>.parked` instead); once confirmed, the original is acked |
//! | extend | the lease's deadline moves; RabbitMQ is not told (its own `consumer_timeout`, 30 min by default, still closes a channel holding a message longer) |
//! | consumer closed or connection lost | the channel closes and RabbitMQ requeues what it held (`redelivered` set) |
//!
//! A retry copy goes to the back of the queue (a native requeue would keep the position but lose
//! the count). If publishing the copy or the dead letter fails, the original is requeued with
//! `basic.nack` instead and the operation reports `Unavailable`: the message comes back sooner
//! than asked, never lost. A crash between the copy's confirm and the original's ack delivers the
//! message twice (at-least-once).
//!
//! Attempt = deliveries recorded in the copy's headers + 1 + earlier returns of this copy (the
//! quorum queue's `x-delivery-count`, or 1 if a classic queue says `redelivered`). On classic
//! queues a message returned several times by crashing consumers counts once, so
//! `max_deliveries` is exact for nacks and lease expiries, and a lower bound after crashes;
//! quorum queues count every return. A delivery whose attempt is already past `max_deliveries`
//! when it arrives (returned by crashing consumers) is dead-lettered on receipt.
//!
//! Quorum queues' own `x-delivery-limit` is not used: it is an argument of the queue, fixed when
//! it is created, while `max_deliveries` belongs to each subscription; and RabbitMQ's
//! dead-lettering would route the message under its original subject without squall's envelope.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel, Confirmation};
use squall_core::{
    Acker, DeadLetter, DeadLetterReason, DeliveryPolicy, Error, ErrorKind, LeaseId, Message,
    Pattern, Result, Subject, Timestamp,
};

use crate::codec::{encode, retry_properties, short, with_delay_route};
use crate::config::{AmqpConfig, ExchangeKind};
use crate::connection::Link;
use crate::error::{amqp, unavailable};
use crate::publisher::INTERNAL_CONFIRM_TIMEOUT;
use crate::topology::{MAX_DELAY, Topology, delay_exchange, delay_ms};

/// One delivery held by the application.
pub(crate) struct Lease {
    pub channel: Channel,
    pub tag: u64,
    pub queue: String,
    pub deadline: tokio::time::Instant,
    pub attempt: u32,
    /// Start times of this and the recorded earlier deliveries.
    pub attempts: Vec<Timestamp>,
    pub message: Message,
    pub properties: BasicProperties,
    pub payload: Bytes,
    pub expires_at: Option<Timestamp>,
}

/// What a consumer and its acker share.
pub(crate) struct Shared {
    pub link: Arc<Link>,
    pub topology: Arc<Topology>,
    pub pattern: Pattern,
    pub group: Option<Arc<str>>,
    pub policy: DeliveryPolicy,
    /// Leases by nonce. A nonce is in the map while its delivery is settleable.
    pub leases: Mutex<HashMap<u64, Lease>>,
    pub next_nonce: AtomicU64,
}

impl Shared {
    pub fn config(&self) -> &AmqpConfig {
        &self.link.config
    }

    fn take(&self, lease: LeaseId) -> Result<Lease> {
        let mut map = self.leases.lock().expect("lease lock");
        match map.get(&lease.nonce) {
            Some(l) if l.deadline <= tokio::time::Instant::now() => {
                // Expired but not yet collected by the timer: leave it to the timer.
                Err(expired(lease))
            }
            Some(_) => Ok(map.remove(&lease.nonce).expect("present")),
            None => Err(expired(lease)),
        }
    }

    /// Forgets every lease (consumer closing or its channel gone); their settles fail with
    /// `LeaseExpired` and RabbitMQ redelivers the messages.
    pub fn drop_leases(&self) {
        self.leases.lock().expect("lease lock").clear();
    }

    /// Removes an expired lease for the timer; `None` if it was settled or extended.
    pub fn take_expired(
        &self,
        nonce: u64,
    ) -> Option<std::result::Result<Lease, tokio::time::Instant>> {
        let mut map = self.leases.lock().expect("lease lock");
        let deadline = map.get(&nonce)?.deadline;
        if deadline > tokio::time::Instant::now() {
            return Some(Err(deadline));
        }
        map.remove(&nonce).map(Ok)
    }

    /// After a delivery's lease ran out: redeliver after the policy's backoff, or dead-letter.
    pub async fn expire(self: Arc<Self>, lease: Lease) {
        let delay = self.policy.backoff_for(lease.attempt);
        let what = "its lease expired";
        if let Err(e) = self.retry(lease, delay, what).await {
            tracing::warn!(error = %e, "redelivering after a lease expiry");
        }
    }

    /// Redelivers `lease`'s message after `delay`, or dead-letters it on its last allowed
    /// delivery. `cause` ends up in the envelope.
    pub async fn retry(&self, lease: Lease, delay: Duration, cause: &str) -> Result<()> {
        if self
            .policy
            .max_deliveries
            .is_some_and(|max| lease.attempt >= max)
        {
            let error = format!(
                "{cause} on delivery {} of at most {}",
                lease.attempt,
                self.policy.max_deliveries.unwrap_or(0)
            );
            return self
                .dead_letter(lease, DeadLetterReason::MaxDeliveries, &error)
                .await;
        }
        let left = match lease.expires_at {
            Some(at) => {
                let now = Timestamp::now();
                if at <= now {
                    // Its time to live is over: it would never be delivered again.
                    return settle_ack(&lease).await;
                }
                Some(at.saturating_since(now))
            }
            None => None,
        };
        let delayed = !delay.is_zero();
        let props = retry_properties(
            &lease.properties,
            lease.message.subject(),
            lease.attempt,
            &lease.attempts,
            left,
            delayed,
        );
        let cfg = self.config();
        let result = async {
            let (exchange, props) = if delayed {
                self.topology
                    .delay_queue(&lease.channel, cfg, delay, true)
                    .await?;
                (
                    delay_exchange(cfg),
                    with_delay_route(props, delay_ms(delay), true),
                )
            } else {
                (String::new(), props)
            };
            publish_confirmed(
                &lease.channel,
                &exchange,
                &lease.queue,
                false,
                &lease.payload,
                props,
            )
            .await
            .map(|_| ())
        }
        .await;
        match result {
            Ok(()) => settle_ack(&lease).await,
            Err(e) => Err(requeue(&lease, e).await),
        }
    }

    /// Publishes the dead letter of `lease`, then acks the original.
    pub async fn dead_letter(
        &self,
        lease: Lease,
        reason: DeadLetterReason,
        error: &str,
    ) -> Result<()> {
        match self.publish_dead_letter(&lease, reason, error).await {
            Ok(()) => settle_ack(&lease).await,
            Err(e) => Err(requeue(&lease, e).await),
        }
    }

    async fn publish_dead_letter(
        &self,
        lease: &Lease,
        reason: DeadLetterReason,
        error: &str,
    ) -> Result<()> {
        let cfg = self.config();
        let env = DeadLetter::new(
            &lease.message,
            reason,
            error,
            Some(lease.queue.clone()),
            0,
            self.group.as_deref().map(str::to_string),
            lease.attempts.clone(),
        );
        let to = self.policy.dead_letter_subject(lease.message.subject());
        let dead = env.wrap_or_origin(&lease.message, to)?;
        let out = encode(
            &dead,
            cfg.persistent,
            false,
            cfg.exchange_kind == ExchangeKind::Headers,
        )?;
        let confirm = publish_confirmed(
            &lease.channel,
            &cfg.exchange,
            out.routing_key.as_str(),
            true,
            &out.payload,
            out.properties.clone(),
        )
        .await?;
        if confirm {
            return Ok(());
        }
        // Nobody is subscribed to the dead-letter subject: keep it in the parked queue.
        let parked = self.topology.parked_queue(&lease.channel, cfg).await?;
        tracing::warn!(
            subject = %dead.subject(),
            queue = %parked,
            "no queue is bound for the dead-letter subject; parking the dead letter"
        );
        publish_confirmed(
            &lease.channel,
            "",
            &parked,
            false,
            &out.payload,
            out.properties,
        )
        .await
        .map(|_| ())
    }
}

fn expired(lease: LeaseId) -> Error {
    Error::new(
        ErrorKind::LeaseExpired,
        format!(
            "delivery {} (lease {}) is no longer held: its lease expired, the consumer closed or \
             the connection was lost; the message will be, or was, delivered again",
            lease.sequence, lease.nonce
        ),
    )
}

/// Publishes on `ch` and waits for the broker's confirm. With `mandatory`, returns `Ok(false)`
/// if the broker returned the message as unroutable.
pub(crate) async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    payload: &[u8],
    props: BasicProperties,
) -> Result<bool> {
    let confirm = ch
        .basic_publish(
            short("exchange", exchange)?,
            short("routing key", routing_key)?,
            BasicPublishOptions {
                mandatory,
                immediate: false,
            },
            payload,
            props,
        )
        .await
        .map_err(|e| amqp(&format!("publishing to `{routing_key}`"), e))?;
    match tokio::time::timeout(INTERNAL_CONFIRM_TIMEOUT, confirm).await {
        Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(true),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Ok(false),
        Ok(Ok(Confirmation::Nack(_))) => Err(Error::new(
            ErrorKind::Full,
            format!("the broker refused the message to `{routing_key}` (basic.nack)"),
        )),
        Ok(Err(e)) => Err(amqp(
            &format!("confirming the message to `{routing_key}`"),
            e,
        )),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "no confirm for the message to `{routing_key}` within {INTERNAL_CONFIRM_TIMEOUT:?}"
            ),
        )),
    }
}

async fn settle_ack(lease: &Lease) -> Result<()> {
    lease
        .channel
        .basic_ack(lease.tag, BasicAckOptions::default())
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::LeaseExpired,
                format!(
                    "acking delivery {} failed because its channel closed; RabbitMQ redelivers it",
                    lease.tag
                ),
            )
            .with_source(e)
        })
}

/// The retry copy or dead letter could not be published: requeue the original natively and
/// report why.
async fn requeue(lease: &Lease, cause: Error) -> Error {
    let r = lease
        .channel
        .basic_nack(
            lease.tag,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        )
        .await;
    match r {
        Ok(()) => unavailable(format!(
            "could not publish the retry or dead letter of {} ({cause}); it was requeued at once \
             instead",
            lease.message.id()
        )),
        Err(_) => unavailable(format!(
            "could not publish the retry or dead letter of {} ({cause}); its channel is gone, so \
             RabbitMQ redelivers it",
            lease.message.id()
        )),
    }
}

/// The [`Acker`] of one consumer's deliveries.
pub(crate) struct AmqpAcker(pub Arc<Shared>);

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self, lease: LeaseId) -> Result<()> {
        let l = self.0.take(lease)?;
        settle_ack(&l).await
    }

    async fn nack(&self, lease: LeaseId, delay: Duration) -> Result<()> {
        if delay > MAX_DELAY {
            // Refused before the lease is taken: the delivery can still be settled.
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!(
                    "a nack delay of {delay:?} is over the AMQP adapter's limit of {MAX_DELAY:?}"
                ),
            ));
        }
        let l = self.0.take(lease)?;
        self.0.retry(l, delay, "nacked").await
    }

    async fn reject(&self, lease: LeaseId, reason: &str) -> Result<()> {
        let l = self.0.take(lease)?;
        self.0
            .dead_letter(l, DeadLetterReason::Rejected, reason)
            .await
    }

    async fn extend(&self, lease: LeaseId, by: Duration) -> Result<Timestamp> {
        let mut map = self.0.leases.lock().expect("lease lock");
        let now = tokio::time::Instant::now();
        match map.get_mut(&lease.nonce) {
            Some(l) if l.deadline > now => {
                l.deadline = now + by;
                Ok(Timestamp::now().saturating_add(by))
            }
            _ => Err(expired(lease)),
        }
    }
}

/// A fresh nonce.
pub(crate) fn nonce(shared: &Shared) -> u64 {
    shared.next_nonce.fetch_add(1, Ordering::Relaxed)
}

/// Whether `subject` is one this consumer should see.
pub(crate) fn wanted(shared: &Shared, subject: &Subject) -> bool {
    shared.pattern.matches(subject)
}
