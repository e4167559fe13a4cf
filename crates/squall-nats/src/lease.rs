//! Leases on JetStream deliveries: the table of what one consumer holds, and the [`Acker`] that
//! settles deliveries (ack, nak with delay, in-progress, term) and emulates dead letters.
//!
//! JetStream redelivers a message `ack_wait` after it sent it, whether or not the client still
//! works on it, and accepts late acks silently. squall promises more: an ack after the lease
//! ended fails with `LeaseExpired`. So each consumer keeps the lease of every delivery it
//! holds, keyed by stream sequence: its deadline (the receipt time plus `ack_wait`, less a
//! safety margin so the client's lease ends before the server's timer) and a nonce that changes
//! with each redelivery. Settling checks the lease first and never sends an ack for a lease
//! that ended.
//!
//! Every settle is a request the server answers (JetStream's "double ack"), so a returned `Ok`
//! means the server processed it. A dead letter is published (and its JetStream ack awaited)
//! before the original is terminated, so a crash in between duplicates the dead letter (caught
//! by the dedup window: its id is deterministic) rather than losing the message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use squall_core::{
    Acker, DeadLetter, DeadLetterReason, DeliveryPolicy, Error, ErrorKind, LeaseId, Message,
    Result, Timestamp,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error;
use crate::publish::Publishing;

/// The lease of one message (by stream sequence) in one consumer.
pub(crate) struct Entry {
    /// Changes with every delivery of the message to this consumer.
    pub nonce: u64,
    /// When each delivery to this consumer arrived.
    pub attempts: Vec<Timestamp>,
    /// Current delivery, while held.
    pub held: Option<Held>,
    /// Last change, for evicting history.
    pub touched: Instant,
}

/// A delivery held by the application (or buffered for it).
#[derive(Debug)]
pub(crate) struct Held {
    pub deadline: Instant,
    pub reply: String,
    pub attempt: u32,
    pub message: Message,
    pub handed_out: bool,
}

/// The leases of one consumer.
#[derive(Default)]
pub(crate) struct Table {
    pub entries: HashMap<u64, Entry>,
    next_nonce: u64,
}

impl Table {
    /// Records a delivery of `seq` and returns its nonce.
    pub fn deliver(&mut self, seq: u64, held: Held, at: Timestamp, now: Instant) -> u64 {
        self.next_nonce += 1;
        let nonce = self.next_nonce;
        let e = self.entries.entry(seq).or_insert_with(|| Entry {
            nonce,
            attempts: Vec::new(),
            held: None,
            touched: now,
        });
        e.nonce = nonce;
        e.attempts.push(at);
        e.held = Some(held);
        e.touched = now;
        nonce
    }

    /// Deliveries held with a live lease.
    pub fn live(&self, now: Instant) -> usize {
        self.entries
            .values()
            .filter(|e| e.held.as_ref().is_some_and(|h| h.deadline > now))
            .count()
    }

    /// The earliest deadline of a live lease.
    pub fn earliest(&self, now: Instant) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| e.held.as_ref().map(|h| h.deadline))
            .filter(|d| *d > now)
            .min()
    }

    /// The held delivery of `lease` if its lease is live.
    pub fn check(&self, lease: LeaseId, now: Instant) -> Result<&Held> {
        self.entries
            .get(&lease.sequence)
            .filter(|e| e.nonce == lease.nonce)
            .and_then(|e| e.held.as_ref())
            .filter(|h| h.deadline > now)
            .ok_or_else(|| expired(lease))
    }

    /// Drops history beyond `cap` entries: first messages no longer held, oldest first.
    pub fn evict(&mut self, cap: usize, now: Instant) {
        if self.entries.len() <= cap {
            return;
        }
        let mut idle: Vec<(Instant, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.held.as_ref().is_none_or(|h| h.deadline <= now))
            .map(|(s, e)| (e.touched, *s))
            .collect();
        idle.sort_unstable();
        let excess = self.entries.len() - cap;
        for (_, s) in idle.into_iter().take(excess) {
            self.entries.remove(&s);
        }
    }
}

pub(crate) fn expired(lease: LeaseId) -> Error {
    Error::new(
        ErrorKind::LeaseExpired,
        format!(
            "the lease on the message at stream sequence {} ended (expired, settled, or its \
             consumer closed); it will be, or was, delivered again",
            lease.sequence
        ),
    )
}

/// What a consumer shares with its deliveries and its fetch task.
pub(crate) struct Shared {
    pub publishing: Arc<Publishing>,
    pub stream: String,
    pub consumer: String,
    pub group: Option<Arc<str>>,
    pub policy: DeliveryPolicy,
    pub table: Mutex<Table>,
    /// Signalled when a slot frees or the consumer closes.
    pub wake: Notify,
    /// How much earlier than the server the client ends a lease.
    pub margin: Duration,
}

impl Shared {
    /// The client-side lease length.
    pub fn lease(&self) -> Duration {
        self.policy.ack_wait.saturating_sub(self.margin)
    }

    /// Sends `body` to a delivery's ack subject and waits for the server's reply.
    pub async fn settle(&self, reply: &str, body: Bytes, what: &str) -> Result<()> {
        let client = &self.publishing.client;
        let timeout = self.publishing.config.api_timeout;
        let r = tokio::time::timeout(timeout, client.request(reply.to_string(), body)).await;
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Err(Error::new(
                    ErrorKind::Closed,
                    format!("{what}: consumer `{}` no longer exists", self.consumer),
                ))
            }
            Ok(Err(e)) => Err(error::request(what, e)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("{what}: no answer from the server within {timeout:?}"),
            )),
        }
    }

    /// Publishes the dead letter of `message` (stream sequence `seq`) and waits for its ack.
    pub async fn dead_letter(
        &self,
        message: &Message,
        seq: u64,
        reason: DeadLetterReason,
        error: String,
        attempts: Vec<Timestamp>,
    ) -> Result<()> {
        let env = DeadLetter::new(
            message,
            reason,
            error,
            Some(self.stream.clone()),
            seq,
            self.group.as_deref().map(str::to_string),
            attempts,
        );
        let to = self.policy.dead_letter_subject(message.subject())?;
        let mut dead = env.wrap(message, to)?;
        // The time to live of the original does not carry over to its dead letter.
        dead.set_ttl(None);
        self.publishing.publish(dead).await.map(|_| ())
    }

    /// Dead-letters the held delivery `seq` and terminates it; the lease is gone afterwards.
    pub async fn dead_letter_held(
        &self,
        lease: LeaseId,
        reply: &str,
        message: &Message,
        reason: DeadLetterReason,
        error: String,
    ) -> Result<()> {
        let attempts = self
            .table
            .lock()
            .expect("lease table")
            .entries
            .get(&lease.sequence)
            .map(|e| e.attempts.clone())
            .unwrap_or_default();
        self.dead_letter(message, lease.sequence, reason, error, attempts)
            .await?;
        self.settle(
            reply,
            Bytes::from_static(b"+TERM"),
            "terminating a dead-lettered message",
        )
        .await?;
        self.forget(lease.sequence, Some(lease.nonce));
        Ok(())
    }

    /// Removes `seq` from the table and frees its slot, unless it was delivered again since
    /// `nonce` (when given).
    pub fn forget(&self, seq: u64, nonce: Option<u64>) {
        {
            let mut t = self.table.lock().expect("lease table");
            if t.entries
                .get(&seq)
                .is_some_and(|e| nonce.is_none_or(|n| n == e.nonce))
            {
                t.entries.remove(&seq);
            }
        }
        self.wake.notify_one();
    }

    /// Ends the lease `lease` but keeps the message's history (it will come back), freeing its
    /// slot. A redelivery that already arrived (the server may redeliver a nacked message
    /// before it answered the nack) keeps its own lease.
    pub fn release(&self, lease: LeaseId) {
        if let Some(e) = self
            .table
            .lock()
            .expect("lease table")
            .entries
            .get_mut(&lease.sequence)
            .filter(|e| e.nonce == lease.nonce)
        {
            e.held = None;
            e.touched = Instant::now();
        }
        self.wake.notify_one();
    }

    fn checked(&self, lease: LeaseId) -> Result<(String, u32, Message)> {
        let t = self.table.lock().expect("lease table");
        let h = t.check(lease, Instant::now())?;
        Ok((h.reply.clone(), h.attempt, h.message.clone()))
    }
}

/// Settles the deliveries of one JetStream consumer.
pub(crate) struct JsAcker(pub Arc<Shared>);

#[async_trait]
impl Acker for JsAcker {
    async fn ack(&self, lease: LeaseId) -> Result<()> {
        let (reply, _, _) = self.0.checked(lease)?;
        self.0
            .settle(&reply, Bytes::from_static(b"+ACK"), "acknowledging")
            .await?;
        self.0.forget(lease.sequence, Some(lease.nonce));
        Ok(())
    }

    async fn nack(&self, lease: LeaseId, delay: Duration) -> Result<()> {
        let (reply, attempt, message) = self.0.checked(lease)?;
        if let Some(max) = self.0.policy.max_deliveries
            && attempt >= max
        {
            let why = format!("nacked on delivery {attempt} of at most {max}");
            return self
                .0
                .dead_letter_held(
                    lease,
                    &reply,
                    &message,
                    DeadLetterReason::MaxDeliveries,
                    why,
                )
                .await;
        }
        let body = if delay.is_zero() {
            Bytes::from_static(b"-NAK")
        } else {
            Bytes::from(format!("-NAK {{\"delay\":{}}}", delay.as_nanos()))
        };
        self.0.settle(&reply, body, "nacking").await?;
        self.0.release(lease);
        Ok(())
    }

    async fn reject(&self, lease: LeaseId, reason: &str) -> Result<()> {
        let (reply, _, message) = self.0.checked(lease)?;
        self.0
            .dead_letter_held(
                lease,
                &reply,
                &message,
                DeadLetterReason::Rejected,
                reason.to_string(),
            )
            .await
    }

    async fn extend(&self, lease: LeaseId, by: Duration) -> Result<Timestamp> {
        let (reply, _, _) = self.0.checked(lease)?;
        self.0
            .settle(&reply, Bytes::from_static(b"+WPI"), "extending a lease")
            .await?;
        // `+WPI` restarts the server's timer at a full ack_wait; longer extensions repeat it.
        let lease_len = self.0.lease();
        let now = Instant::now();
        let target = now + by.max(lease_len);
        {
            let mut t = self.0.table.lock().expect("lease table");
            let h = t
                .entries
                .get_mut(&lease.sequence)
                .filter(|e| e.nonce == lease.nonce)
                .and_then(|e| e.held.as_mut())
                .ok_or_else(|| expired(lease))?;
            h.deadline = now + lease_len;
        }
        if by > lease_len {
            tokio::spawn(keep_alive(self.0.clone(), lease, reply, target));
        }
        Ok(Timestamp::now().saturating_add(target - now))
    }
}

/// Sends `+WPI` every half lease until `until`, while `lease` is held.
async fn keep_alive(shared: Arc<Shared>, lease: LeaseId, reply: String, until: Instant) {
    let step = shared.lease() / 2;
    loop {
        tokio::time::sleep(step).await;
        let now = Instant::now();
        if now >= until || shared.checked(lease).is_err() {
            return;
        }
        if shared
            .settle(&reply, Bytes::from_static(b"+WPI"), "extending a lease")
            .await
            .is_err()
        {
            return;
        }
        let mut t = shared.table.lock().expect("lease table");
        if let Some(h) = t
            .entries
            .get_mut(&lease.sequence)
            .filter(|e| e.nonce == lease.nonce)
            .and_then(|e| e.held.as_mut())
        {
            h.deadline = (now + shared.lease()).min(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_core::Subject;

    fn held(deadline: Instant) -> Held {
        Held {
            deadline,
            reply: "r".into(),
            attempt: 1,
            message: Message::new(Subject::new("a").unwrap(), "x"),
            handed_out: false,
        }
    }

    #[test]
    fn a_redelivery_invalidates_the_previous_lease() {
        let now = Instant::now();
        let mut t = Table::default();
        let n1 = t.deliver(7, held(now + Duration::from_secs(5)), Timestamp(1), now);
        let first = LeaseId {
            sequence: 7,
            nonce: n1,
        };
        assert!(t.check(first, now).is_ok());
        assert_eq!(t.live(now), 1);
        let n2 = t.deliver(7, held(now + Duration::from_secs(5)), Timestamp(2), now);
        assert_eq!(
            t.check(first, now).unwrap_err().kind(),
            ErrorKind::LeaseExpired
        );
        let second = LeaseId {
            sequence: 7,
            nonce: n2,
        };
        assert!(t.check(second, now).is_ok());
        assert_eq!(t.entries[&7].attempts, vec![Timestamp(1), Timestamp(2)]);
        let later = now + Duration::from_secs(6);
        assert_eq!(t.live(later), 0);
        assert_eq!(
            t.check(second, later).unwrap_err().kind(),
            ErrorKind::LeaseExpired
        );
    }

    #[test]
    fn eviction_keeps_live_leases() {
        let now = Instant::now();
        let mut t = Table::default();
        for s in 0..10 {
            let n = t.deliver(s, held(now + Duration::from_secs(5)), Timestamp(s), now);
            if s < 8 {
                t.entries.get_mut(&s).unwrap().held = None;
            }
            assert!(n > 0);
        }
        t.evict(4, now);
        assert_eq!(t.entries.len(), 4);
        assert!(t.entries.contains_key(&8) && t.entries.contains_key(&9));
    }
}
