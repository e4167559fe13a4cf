//! Core NATS subscriptions: fan-out subscriptions and queue groups, at-most-once.
//!
//! A core NATS message is gone from the server once it was sent to the subscriber, so nothing
//! can be redelivered. Settling is therefore:
//!
//! - `ack`: succeeds (the message is done, and indeed never delivered again);
//! - `nack`, `reject`, `extend`: fail with `Unsupported` (no redelivery, no dead letters, no
//!   leases on core NATS), and free the delivery's slot; the message is not seen again.
//!
//! `max_in_flight` still holds: a subscriber gets at most that many unsettled deliveries; a slot
//! frees when its delivery is settled or `ack_wait` after it was handed out (the "lease" only
//! bounds flow, it never causes a redelivery). Messages wait meanwhile in the client's
//! subscription buffer; if that fills up, the client drops messages and logs a slow consumer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use squall_core::{
    Acker, Consumer, Delivery, DeliveryInfo, Error, ErrorKind, LeaseId, MessageId, Result,
    StartPosition, Subscription, Timestamp,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::codec::{self, Received};
use crate::publish::Publishing;

/// Refuses what core NATS cannot do, naming the feature.
pub(crate) fn check(sub: &Subscription, backend: &str) -> Result<()> {
    let p = &sub.policy;
    let refuse = |feature: &str| Err(Error::unsupported(backend, feature));
    if sub.group.is_some() && sub.durable {
        return refuse(
            "durable groups (core NATS queue groups end with their last member; use JetStream)",
        );
    }
    if p.ordered_by_key {
        return refuse("per-key ordering (ordered_by_key)");
    }
    if p.max_deliveries.is_some() || p.dead_letter.is_some() {
        return refuse("dead letters (max_deliveries, dead_letter): core NATS never redelivers");
    }
    if !p.backoff.is_empty() {
        return refuse("redelivery backoff: core NATS never redelivers");
    }
    if sub.stream.is_some() {
        return refuse("streams (core NATS keeps no messages; use JetStream)");
    }
    match sub.start {
        None | Some(StartPosition::New) => Ok(()),
        Some(StartPosition::First) => {
            refuse("replay from the first message (StartPosition::First)")
        }
        Some(StartPosition::Sequence(_)) => refuse("replay by sequence"),
        Some(StartPosition::Time(_)) => refuse("replay by time"),
    }
}

/// Delivery slots of one subscriber.
struct Slots {
    permits: Arc<Semaphore>,
    held: Mutex<HashMap<u64, (Instant, OwnedSemaphorePermit)>>,
}

impl Slots {
    /// Frees the slots of deliveries held past their deadline; returns the earliest deadline
    /// still pending.
    fn reap(&self, now: Instant) -> Option<Instant> {
        let mut held = self.held.lock().expect("slots lock");
        held.retain(|_, (deadline, _)| *deadline > now);
        held.values().map(|(d, _)| *d).min()
    }

    fn release(&self, nonce: u64) {
        self.held.lock().expect("slots lock").remove(&nonce);
    }
}

struct CoreAcker {
    slots: Slots,
    backend: &'static str,
}

#[async_trait]
impl Acker for CoreAcker {
    async fn ack(&self, lease: LeaseId) -> Result<()> {
        self.slots.release(lease.nonce);
        Ok(())
    }
    async fn nack(&self, lease: LeaseId, _delay: Duration) -> Result<()> {
        self.slots.release(lease.nonce);
        Err(Error::unsupported(
            self.backend,
            "nack: core NATS is at-most-once and cannot redeliver (use `?jetstream=1`); the message is dropped",
        ))
    }
    async fn reject(&self, lease: LeaseId, _reason: &str) -> Result<()> {
        self.slots.release(lease.nonce);
        Err(Error::unsupported(
            self.backend,
            "reject: core NATS has no dead letters (use `?jetstream=1`); the message is dropped",
        ))
    }
    async fn extend(&self, _lease: LeaseId, _by: Duration) -> Result<Timestamp> {
        Err(Error::unsupported(
            self.backend,
            "extending a lease: core NATS deliveries have none",
        ))
    }
}

/// A core NATS subscription.
pub struct CoreConsumer {
    sub: Option<async_nats::Subscriber>,
    acker: Arc<CoreAcker>,
    group: Option<Arc<str>>,
    ack_wait: Duration,
    nonce: AtomicU64,
}

impl CoreConsumer {
    pub(crate) async fn open(p: &Publishing, sub: Subscription) -> Result<CoreConsumer> {
        let pattern = sub.pattern.to_string();
        let r = match &sub.group {
            Some(g) => p.client.queue_subscribe(pattern.clone(), g.clone()).await,
            None => p.client.subscribe(pattern.clone()).await,
        };
        let s = r.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("subscribing to `{pattern}`"),
            )
            .with_source(e)
        })?;
        // Once the server processed what followed the subscription, it has the subscription, so
        // messages published from other connections after `subscribe` returns are received.
        p.flush().await?;
        Ok(CoreConsumer {
            sub: Some(s),
            acker: Arc::new(CoreAcker {
                slots: Slots {
                    permits: Arc::new(Semaphore::new(sub.policy.max_in_flight)),
                    held: Mutex::new(HashMap::new()),
                },
                backend: p.backend,
            }),
            group: sub.group.map(Into::into),
            ack_wait: sub.policy.ack_wait,
            nonce: AtomicU64::new(1),
        })
    }

    async fn slot(&self) -> OwnedSemaphorePermit {
        let slots = &self.acker.slots;
        loop {
            let earliest = slots.reap(Instant::now());
            if let Ok(p) = slots.permits.clone().try_acquire_owned() {
                return p;
            }
            let wait = slots.permits.clone().acquire_owned();
            match earliest {
                Some(at) => {
                    if let Ok(Ok(p)) = tokio::time::timeout_at(at, wait).await {
                        return p;
                    }
                }
                None => {
                    if let Ok(p) = wait.await {
                        return p;
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Consumer for CoreConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        self.sub.as_ref()?;
        let permit = self.slot().await;
        let msg = self.sub.as_mut()?.next().await?;
        let now = Timestamp::now();
        let fallback = MessageId::generate;
        let decoded = codec::decode(Received {
            subject: msg.subject.as_str(),
            headers: msg.headers.as_ref(),
            payload: msg.payload.clone(),
            reply: msg.reply.as_ref().map(|r| r.as_str()),
            fallback_id: &fallback,
            fallback_time: now,
        });
        let message = match decoded {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed);
        self.acker
            .slots
            .held
            .lock()
            .expect("slots lock")
            .insert(nonce, (Instant::now() + self.ack_wait, permit));
        let info = DeliveryInfo {
            attempt: 1,
            sequence: 0,
            published_at: now,
            deadline: now.saturating_add(self.ack_wait),
            group: self.group.clone(),
            lease: LeaseId { sequence: 0, nonce },
        };
        Some(Ok(Delivery::new(message, info, self.acker.clone())))
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(mut s) = self.sub.take() {
            s.unsubscribe()
                .await
                .map_err(|e| Error::new(ErrorKind::Unavailable, "unsubscribing").with_source(e))?;
        }
        Ok(())
    }
}
