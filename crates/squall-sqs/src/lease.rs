//! Leases on SQS: ack, nack (with delay), reject, extend, lease expiry, and dead letters.
//!
//! | squall | SQS |
//! |---|---|
//! | delivery, lease of `ack_wait` | `ReceiveMessage` with `VisibilityTimeout = ack_wait + lease_grace` (whole seconds, rounded up); the lease's deadline is `ack_wait` after the answer arrived, so it ends before SQS could hand the message to anyone else as long as an answer takes less than `lease_grace` to arrive |
//! | ack | `DeleteMessage`; acks queued at the same moment go out as one `DeleteMessageBatch` |
//! | nack(delay) | `ChangeMessageVisibility(delay)`: SQS delivers it again after the delay, as the next attempt |
//! | extend(by) | `ChangeMessageVisibility(by + lease_grace)`; the deadline moves to `by` from now |
//! | lease expiry | the adapter's timer: `ChangeMessageVisibility(backoff)` (the policy's backoff for that attempt, 0 by default), so redeliveries follow the backoff; if the process died, SQS redelivers after `ack_wait + lease_grace` by itself |
//! | attempt | `ApproximateReceiveCount` |
//! | reject, last allowed delivery nacked or expired | the [`DeadLetter`] envelope is published to the dead-letter subject (to `<queue_prefix>parked` when no queue is bound there), then the original is deleted (emulated: SQS's own redrive would move it without the envelope, to a queue rather than a subject) |
//! | delivery already past `max_deliveries` on receipt (its holders crashed) | dead-lettered on receipt |
//! | consumer closed or dropped | what it held is made visible at once (`ChangeMessageVisibilityBatch` to 0) |
//!
//! If publishing a dead letter fails, the original is made visible again and the operation
//! reports `Unavailable`: the message comes back, never lost. A crash between the dead letter's
//! confirm and the delete dead-letters it twice (at-least-once).
//!
//! The envelope's attempt times are those this consumer saw; SQS records only the first
//! receive (`ApproximateFirstReceiveTimestamp`), so attempts another consumer made are reported
//! at that time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{
    Acker, DeadLetter, DeadLetterReason, DeliveryPolicy, Error, ErrorKind, LeaseId, Message,
    Result, Subject, Timestamp,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::codec::{ceil_secs, encode};
use crate::config::{MAX_VISIBILITY, SqsConfig};
use crate::queues::{Queues, Route};

/// Most message histories a consumer keeps for envelopes.
const HISTORY_MAX: usize = 10_000;

/// One delivery held by the application.
pub(crate) struct Lease {
    pub receipt: String,
    /// SQS's message id (stable across receives).
    pub sqs_id: String,
    pub deadline: Instant,
    pub attempt: u32,
    /// Start times of this and the earlier deliveries.
    pub attempts: Vec<Timestamp>,
    pub message: Message,
    /// A slot of the consumer's `max_in_flight`, freed when the lease ends.
    pub _permit: Option<OwnedSemaphorePermit>,
}

/// A queued ack: the receipt to delete and who waits for the answer.
pub(crate) struct AckRequest {
    receipt: String,
    done: oneshot::Sender<Result<()>>,
}

/// What a consumer, its deliveries' acker and its lease timers share.
pub(crate) struct Shared {
    pub queues: Arc<Queues>,
    pub url: String,
    pub name: String,
    /// The subject the queue is bound to (the subscription's literal pattern).
    pub bound: Option<Subject>,
    pub group: Option<Arc<str>>,
    pub policy: DeliveryPolicy,
    /// Leases by nonce. A nonce is in the map while its delivery is settleable.
    pub leases: Mutex<HashMap<u64, Lease>>,
    /// Receive times per SQS message id, for dead-letter envelopes.
    history: Mutex<HashMap<String, Vec<Timestamp>>>,
    next_nonce: AtomicU64,
    /// Ends the consumer (a child of the backend's token).
    pub cancel: CancellationToken,
    acks: mpsc::Sender<AckRequest>,
}

impl Shared {
    /// A consumer's shared state; starts its ack batcher.
    pub fn new(
        queues: Arc<Queues>,
        url: String,
        name: String,
        bound: Option<Subject>,
        group: Option<Arc<str>>,
        policy: DeliveryPolicy,
        cancel: CancellationToken,
    ) -> Arc<Shared> {
        let (acks, rx) = mpsc::channel(1024);
        tokio::spawn(ack_batcher(queues.clone(), url.clone(), rx));
        Arc::new(Shared {
            queues,
            url,
            name,
            bound,
            group,
            policy,
            leases: Mutex::new(HashMap::new()),
            history: Mutex::new(HashMap::new()),
            next_nonce: AtomicU64::new(1),
            cancel,
            acks,
        })
    }

    pub fn config(&self) -> &SqsConfig {
        &self.queues.config
    }

    /// How long SQS keeps a delivery invisible: the lease plus the grace.
    pub fn visibility(&self) -> Duration {
        Duration::from_secs(ceil_secs(self.policy.ack_wait) + ceil_secs(self.config().lease_grace))
    }

    /// Registers a lease and starts its timer; returns its nonce.
    pub fn insert(self: &Arc<Self>, lease: Lease) -> u64 {
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let deadline = lease.deadline;
        self.leases.lock().expect("lease lock").insert(nonce, lease);
        tokio::spawn(lease_timer(
            Arc::downgrade(self),
            nonce,
            deadline,
            self.cancel.clone(),
        ));
        nonce
    }

    /// The attempt times of a delivery received `now` as `attempt`.
    pub fn attempts(
        &self,
        sqs_id: &str,
        attempt: u32,
        first_receive: Option<Timestamp>,
        now: Timestamp,
    ) -> Vec<Timestamp> {
        let mut h = self.history.lock().expect("history lock");
        if h.len() >= HISTORY_MAX {
            h.clear();
        }
        let seen = h.entry(sqs_id.to_string()).or_default();
        seen.push(now);
        let attempt = attempt.max(1) as usize;
        if seen.len() > attempt {
            let stale = seen.len() - attempt;
            seen.drain(..stale);
        }
        let missing = attempt - seen.len();
        let first = first_receive.filter(|f| *f <= seen[0]).unwrap_or(seen[0]);
        let mut out = vec![first; missing];
        out.extend(seen.iter().copied());
        out
    }

    fn forget(&self, sqs_id: &str) {
        self.history.lock().expect("history lock").remove(sqs_id);
    }

    fn take(&self, lease: LeaseId) -> Result<Lease> {
        let mut map = self.leases.lock().expect("lease lock");
        match map.get(&lease.nonce) {
            // Expired but not yet collected by its timer: leave it to the timer.
            Some(l) if l.deadline <= Instant::now() => Err(expired(lease)),
            Some(_) => Ok(map.remove(&lease.nonce).expect("present")),
            None => Err(expired(lease)),
        }
    }

    /// Takes every lease (consumer closing); returns their receipts to release.
    pub fn drain(&self) -> Vec<String> {
        let mut map = self.leases.lock().expect("lease lock");
        map.drain().map(|(_, l)| l.receipt).collect()
    }

    /// Deletes the message of `lease` (through the ack batcher).
    pub async fn delete(&self, receipt: String) -> Result<()> {
        let (done, rx) = oneshot::channel();
        self.acks
            .send(AckRequest { receipt, done })
            .await
            .map_err(|_| Error::closed("the SQS consumer"))?;
        rx.await
            .unwrap_or_else(|_| Err(Error::closed("the SQS consumer")))
    }

    /// After a lease ran out: make it visible after the policy's backoff, or dead-letter it on
    /// its last allowed delivery.
    async fn expire(&self, lease: Lease) {
        if let Some(max) = self.policy.max_deliveries
            && lease.attempt >= max
        {
            let error = format!(
                "its lease expired on delivery {} of at most {max}",
                lease.attempt
            );
            if let Err(e) = self
                .dead_letter(lease, DeadLetterReason::MaxDeliveries, &error)
                .await
            {
                tracing::warn!(error = %e, "dead-lettering after a lease expiry");
            }
            return;
        }
        let after = Duration::from_secs(ceil_secs(self.policy.backoff_for(lease.attempt)));
        if let Err(e) = self
            .queues
            .change_visibility(&self.url, &lease.receipt, after)
            .await
        {
            tracing::warn!(error = %e, queue = %self.name, "redelivering after a lease expiry; SQS redelivers when the visibility timeout ends");
        }
    }

    /// Publishes the dead letter of `lease`, then deletes the original.
    pub async fn dead_letter(
        &self,
        lease: Lease,
        reason: DeadLetterReason,
        error: &str,
    ) -> Result<()> {
        match self.publish_dead_letter(&lease, reason, error).await {
            Ok(()) => {
                self.forget(&lease.sqs_id);
                self.delete(lease.receipt).await
            }
            Err(e) => {
                let back = self
                    .queues
                    .change_visibility(&self.url, &lease.receipt, Duration::ZERO)
                    .await;
                Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "could not publish the dead letter of {} ({e}); {}",
                        lease.message.id(),
                        if back.is_ok() {
                            "it was made visible again"
                        } else {
                            "SQS redelivers it when its visibility timeout ends"
                        }
                    ),
                ))
            }
        }
    }

    async fn publish_dead_letter(
        &self,
        lease: &Lease,
        reason: DeadLetterReason,
        error: &str,
    ) -> Result<()> {
        let env = DeadLetter::new(
            &lease.message,
            reason,
            error,
            Some(self.name.clone()),
            0,
            self.group.as_deref().map(str::to_string),
            lease.attempts.clone(),
        );
        let to = self.policy.dead_letter_subject(lease.message.subject());
        let dead = env.wrap_or_origin(&lease.message, to)?;
        let enc = encode(&dead, self.config())?;
        self.queues
            .deliver(dead.subject(), &enc, Route::DeadLetter)
            .await
            .map(|_| ())
    }
}

fn expired(lease: LeaseId) -> Error {
    Error::new(
        ErrorKind::LeaseExpired,
        format!(
            "delivery lease {} is no longer held: its lease expired, it was settled, or the \
             consumer closed; the message will be, or was, delivered again",
            lease.nonce
        ),
    )
}

/// Ends a lease at its deadline (following extensions) unless it was settled first.
async fn lease_timer(
    shared: Weak<Shared>,
    nonce: u64,
    mut deadline: Instant,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let Some(s) = shared.upgrade() else { return };
        let lease = {
            let mut map = s.leases.lock().expect("lease lock");
            match map.get(&nonce) {
                None => return,
                Some(l) if l.deadline > Instant::now() => {
                    deadline = l.deadline;
                    None
                }
                Some(_) => map.remove(&nonce),
            }
        };
        if let Some(l) = lease {
            s.expire(l).await;
            return;
        }
    }
}

/// Deletes acked messages, batching the acks that are queued together.
async fn ack_batcher(queues: Arc<Queues>, url: String, mut rx: mpsc::Receiver<AckRequest>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 10 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let receipts: Vec<String> = batch.iter().map(|r| r.receipt.clone()).collect();
        let results = queues.delete_messages(&url, &receipts).await;
        for (req, r) in batch.into_iter().zip(results) {
            let _ = req.done.send(r);
        }
    }
}

/// The [`Acker`] of one consumer's deliveries.
pub(crate) struct SqsAcker(pub Arc<Shared>);

#[async_trait]
impl Acker for SqsAcker {
    async fn ack(&self, lease: LeaseId) -> Result<()> {
        let l = self.0.take(lease)?;
        self.0.forget(&l.sqs_id);
        self.0.delete(l.receipt).await
    }

    async fn nack(&self, lease: LeaseId, delay: Duration) -> Result<()> {
        if delay > MAX_VISIBILITY {
            // Refused before the lease is taken: the delivery can still be settled.
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!("a nack delay of {delay:?} is over SQS's limit of {MAX_VISIBILITY:?}"),
            ));
        }
        let l = self.0.take(lease)?;
        if let Some(max) = self.0.policy.max_deliveries
            && l.attempt >= max
        {
            let error = format!("nacked on delivery {} of at most {max}", l.attempt);
            return self
                .0
                .dead_letter(l, DeadLetterReason::MaxDeliveries, &error)
                .await;
        }
        let after = Duration::from_secs(ceil_secs(delay));
        self.0
            .queues
            .change_visibility(&self.0.url, &l.receipt, after)
            .await
    }

    async fn reject(&self, lease: LeaseId, reason: &str) -> Result<()> {
        let l = self.0.take(lease)?;
        self.0
            .dead_letter(l, DeadLetterReason::Rejected, reason)
            .await
    }

    async fn extend(&self, lease: LeaseId, by: Duration) -> Result<Timestamp> {
        let grace = self.0.config().lease_grace;
        let visible = Duration::from_secs(ceil_secs(by) + ceil_secs(grace));
        if visible > MAX_VISIBILITY {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!(
                    "an extension of {by:?} plus lease_grace {grace:?} is over SQS's visibility \
                     limit of {MAX_VISIBILITY:?}"
                ),
            ));
        }
        let (receipt, old) = {
            let mut map = self.0.leases.lock().expect("lease lock");
            let now = Instant::now();
            match map.get_mut(&lease.nonce) {
                Some(l) if l.deadline > now => {
                    let old = l.deadline;
                    // Moved first, so the timer does not end the lease while SQS is asked.
                    l.deadline = now + by;
                    (l.receipt.clone(), old)
                }
                _ => return Err(expired(lease)),
            }
        };
        let r = self
            .0
            .queues
            .change_visibility(&self.0.url, &receipt, visible)
            .await;
        if let Err(e) = r {
            if let Some(l) = self
                .0
                .leases
                .lock()
                .expect("lease lock")
                .get_mut(&lease.nonce)
            {
                l.deadline = old;
            }
            return Err(e);
        }
        Ok(Timestamp::now().saturating_add(by))
    }
}
