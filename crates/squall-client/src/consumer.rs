//! [`ClientConsumer`]: a subscription's local buffer of deliveries, its credit window, and the
//! acker its deliveries settle through.
//!
//! The connection task pushes deliveries into the buffer; the application takes them with `next`.
//! The buffer never holds more than `prefetch` deliveries because the server sends no more than
//! the credit the client granted: `prefetch` at subscribe time, then one per delivery the
//! application took, returned in batches ([`CreditWindow`]). A server that overruns its credit is
//! a protocol violation: the extra delivery is dropped (its lease expires and the broker
//! redelivers it), counted in `squall_client_credit_overruns_total` and logged.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{
    Acker, Consumer, Delivery, Error, LeaseId, Result, StartPosition, Subscription, Timestamp,
};
use squall_wire::SettleOp;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::driver::{Command, lease_lost};
use crate::state::Shared;

/// Most sequences a non-durable subscription remembers as delivered but unsettled (to resume
/// from after a reconnect). Beyond it the oldest is forgotten.
const MAX_UNSETTLED: usize = 4096;

/// Credit bookkeeping of one subscription on one connection.
///
/// The server may send `prefetch` deliveries beyond those the application took. Each delivery
/// taken is owed back; the debt is returned in one `Credit` frame once half the window is owed,
/// or at once when the buffer runs empty (so a consumer that drained its buffer never waits on
/// its own bookkeeping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CreditWindow {
    prefetch: u32,
    owed: u32,
    due: bool,
}

impl CreditWindow {
    pub fn new(prefetch: u32) -> Self {
        CreditWindow {
            prefetch,
            owed: 0,
            due: false,
        }
    }

    /// The application took one delivery; `buffer_empty` says whether the buffer is now empty.
    /// Returns whether credit just became due (the connection task should be woken).
    pub fn took(&mut self, buffer_empty: bool) -> bool {
        self.owed += 1;
        let was_due = self.due;
        self.due = self.owed >= (self.prefetch / 2).max(1) || buffer_empty;
        self.due && !was_due
    }

    /// Credit to grant now, if due; resets the debt.
    pub fn grant(&mut self) -> Option<u32> {
        if !self.due || self.owed == 0 {
            return None;
        }
        self.due = false;
        Some(std::mem::take(&mut self.owed))
    }

    /// A new connection: the server starts with a full window again.
    pub fn reset(&mut self) {
        self.owed = 0;
        self.due = false;
    }
}

/// One buffered item: a delivery (or an error to report) and the connection it came from.
pub(crate) struct Buffered {
    pub epoch: u64,
    pub item: Result<Delivery>,
}

/// The mutable state of a subscription, shared by its consumer, its ackers and the connection
/// task, behind a `std` mutex held only for short bookkeeping.
pub(crate) struct SubQueue {
    /// Deliveries not yet taken. At most `prefetch` (the credit bound), plus a final error.
    pub items: VecDeque<Buffered>,
    /// The connection this subscription is attached to; 0 while detached (between
    /// connections). Ackers of another epoch fail with `LeaseExpired`.
    pub epoch: u64,
    /// Credit owed to the server.
    pub window: CreditWindow,
    /// No more items will come: `next` returns `None` once `items` is empty.
    pub ended: bool,
    /// The application closed or dropped the consumer: the connection task must unsubscribe.
    pub dropped: bool,
    /// Non-durable subscriptions only: delivered but not yet acked or rejected sequences, and
    /// the highest sequence delivered plus one: where to resume after a reconnect.
    pub unsettled: BTreeSet<u64>,
    pub next_sequence: u64,
}

/// A subscription as the consumer, its ackers and the connection task see it.
pub(crate) struct SubShared {
    pub sub_id: u32,
    /// Whether to track a resume point (fan-out subscriptions and non-durable groups).
    pub track_resume: bool,
    pub queue: Mutex<SubQueue>,
    /// Connection task → consumer: items were pushed or the subscription ended.
    pub ready: Notify,
}

impl SubShared {
    pub fn new(sub_id: u32, prefetch: u32, track_resume: bool) -> Self {
        SubShared {
            sub_id,
            track_resume,
            queue: Mutex::new(SubQueue {
                items: VecDeque::with_capacity(prefetch as usize),
                epoch: 0,
                window: CreditWindow::new(prefetch),
                ended: false,
                dropped: false,
                unsettled: BTreeSet::new(),
                next_sequence: 0,
            }),
            ready: Notify::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, SubQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the subscription, after `error` if given; wakes the consumer.
    pub fn end(&self, error: Option<Error>) {
        let mut q = self.lock();
        if let Some(e) = error {
            q.items.push_back(Buffered {
                epoch: 0,
                item: Err(e),
            });
        }
        q.ended = true;
        q.epoch = 0;
        drop(q);
        self.ready.notify_one();
    }

    /// Records a delivery of `sequence` for the resume point.
    pub fn delivered(q: &mut SubQueue, sequence: u64) {
        q.unsettled.insert(sequence);
        if q.unsettled.len() > MAX_UNSETTLED {
            q.unsettled.pop_first();
        }
        q.next_sequence = q.next_sequence.max(sequence + 1);
    }

    /// The subscription to send on a reconnect: durable groups as they are (the broker keeps
    /// their position); others resume at the oldest unsettled delivery, or after the last one.
    pub fn resubscription(&self, original: &Subscription) -> Subscription {
        let q = self.lock();
        let mut sub = original.clone();
        if self.track_resume && q.next_sequence > 0 {
            let from = q.unsettled.first().copied().unwrap_or(q.next_sequence);
            sub.start = Some(StartPosition::Sequence(from));
        }
        sub
    }
}

/// A subscription through a [`crate::Client`].
///
/// `next` takes from the local buffer and waits on it; it is cancel safe (a dropped `next`
/// leaves the buffer as it was). Across a reconnect, `next` keeps waiting: deliveries buffered
/// from the lost connection are discarded (the server released their leases and redelivers
/// them), and the subscription resumes on the new connection. Watch [`crate::Client::state`] to
/// observe outages. `close` (or dropping the consumer) unsubscribes: the server releases the
/// deliveries this consumer holds unsettled, and settling them afterwards fails with
/// [`squall_core::ErrorKind::LeaseExpired`].
pub struct ClientConsumer {
    sub: Arc<SubShared>,
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    closed: bool,
}

impl ClientConsumer {
    pub(crate) fn new(
        sub: Arc<SubShared>,
        commands: mpsc::Sender<Command>,
        shared: Arc<Shared>,
    ) -> Self {
        ClientConsumer {
            sub,
            commands,
            shared,
            closed: false,
        }
    }

    /// The subscription's id on the connection.
    pub fn sub_id(&self) -> u32 {
        self.sub.sub_id
    }

    /// Takes the next item if one is buffered; `Some(None)` once ended and drained.
    fn take(&self) -> Option<Option<Result<Delivery>>> {
        let mut q = self.sub.lock();
        while let Some(b) = q.items.pop_front() {
            if b.item.is_ok() && b.epoch != q.epoch {
                continue; // from a lost connection: released by the server, redelivered later
            }
            if b.item.is_ok() {
                let empty = q.items.is_empty();
                if q.window.took(empty) {
                    drop(q);
                    self.shared.wake.notify_one();
                }
            }
            return Some(Some(b.item));
        }
        q.ended.then_some(None)
    }
}

#[async_trait]
impl Consumer for ClientConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if let Some(item) = self.take() {
                return item;
            }
            self.sub.ready.notified().await;
        }
    }

    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        let mut deadline = None;
        while out.len() < max.max(1) {
            let item = match (self.take(), deadline) {
                (Some(item), _) => item,
                (None, None) => self.next().await,
                (None, Some(at)) => match tokio::time::timeout_at(at, self.next()).await {
                    Ok(item) => item,
                    Err(_) => break,
                },
            };
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + wait);
            match item {
                Some(Ok(d)) => out.push(d),
                Some(Err(e)) if out.is_empty() => return Err(e),
                Some(Err(_)) | None => break,
            }
        }
        Ok(out)
    }

    async fn close(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        {
            let mut q = self.sub.lock();
            q.ended = true;
            q.dropped = true;
            q.items.clear();
        }
        let (done, written) = oneshot::channel();
        let cmd = Command::Unsubscribe {
            sub_id: self.sub.sub_id,
            done,
        };
        if self.commands.send(cmd).await.is_ok() {
            // Resolved once the Unsubscribe frame is written (or at once while disconnected: the
            // server already dropped the subscription). A gone task means a closed client.
            let _ = written.await;
        }
        Ok(())
    }
}

impl Drop for ClientConsumer {
    fn drop(&mut self) {
        if !self.closed {
            let mut q = self.sub.lock();
            q.ended = true;
            q.dropped = true;
            q.items.clear();
            drop(q);
            self.shared.wake.notify_one();
        }
    }
}

impl std::fmt::Debug for ClientConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConsumer")
            .field("sub_id", &self.sub.sub_id)
            .finish()
    }
}

/// Settles the deliveries of one subscription received on one connection. One per
/// (subscription, connection), shared by its deliveries.
pub(crate) struct ClientAcker {
    pub sub: Arc<SubShared>,
    pub epoch: u64,
    pub commands: mpsc::Sender<Command>,
}

impl ClientAcker {
    async fn settle(&self, lease: LeaseId, op: SettleOp) -> Result<Timestamp> {
        {
            let q = self.sub.lock();
            if q.dropped || q.epoch != self.epoch {
                return Err(lease_lost());
            }
        }
        let settles = matches!(op, SettleOp::Ack | SettleOp::Reject(_));
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Settle {
            sub_id: self.sub.sub_id,
            epoch: self.epoch,
            lease,
            op,
            reply,
        };
        self.commands
            .send(cmd)
            .await
            .map_err(|_| Error::closed("the client"))?;
        let result = rx.await.unwrap_or_else(|_| Err(lease_lost()));
        if result.is_ok() && settles && self.sub.track_resume {
            self.sub.lock().unsettled.remove(&lease.sequence);
        }
        result
    }
}

#[async_trait]
impl Acker for ClientAcker {
    async fn ack(&self, lease: LeaseId) -> Result<()> {
        self.settle(lease, SettleOp::Ack).await.map(|_| ())
    }
    async fn nack(&self, lease: LeaseId, delay: Duration) -> Result<()> {
        self.settle(lease, SettleOp::Nack(delay)).await.map(|_| ())
    }
    async fn reject(&self, lease: LeaseId, reason: &str) -> Result<()> {
        self.settle(lease, SettleOp::Reject(reason.to_string()))
            .await
            .map(|_| ())
    }
    async fn extend(&self, lease: LeaseId, by: Duration) -> Result<Timestamp> {
        self.settle(lease, SettleOp::Extend(by)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_returned_at_half_the_window() {
        let mut w = CreditWindow::new(8);
        assert!(!w.took(false));
        assert_eq!(w.grant(), None, "one of eight owed: not yet");
        assert!(!w.took(false));
        assert!(!w.took(false));
        assert!(w.took(false), "four of eight owed: due");
        assert!(!w.took(false), "already due: no second wake-up");
        assert_eq!(w.grant(), Some(5));
        assert_eq!(w.grant(), None);
    }

    #[test]
    fn credit_is_returned_when_the_buffer_runs_empty() {
        let mut w = CreditWindow::new(64);
        assert!(w.took(true));
        assert_eq!(w.grant(), Some(1));
        w.took(false);
        w.reset();
        assert_eq!(
            w.grant(),
            None,
            "a reconnect forgets the old connection's debt"
        );
    }

    #[test]
    fn a_window_of_one_returns_every_delivery() {
        let mut w = CreditWindow::new(1);
        assert!(w.took(false));
        assert_eq!(w.grant(), Some(1));
    }

    #[test]
    fn resume_point_is_the_oldest_unsettled_delivery() {
        let sub = Subscription::new("a.>").unwrap();
        let s = SubShared::new(1, 4, true);
        assert_eq!(
            s.resubscription(&sub),
            sub,
            "nothing delivered: as subscribed"
        );
        {
            let mut q = s.lock();
            for seq in [5, 6, 7] {
                SubShared::delivered(&mut q, seq);
            }
            q.unsettled.remove(&5);
        }
        assert_eq!(
            s.resubscription(&sub).start,
            Some(StartPosition::Sequence(6))
        );
        s.lock().unsettled.clear();
        assert_eq!(
            s.resubscription(&sub).start,
            Some(StartPosition::Sequence(8))
        );
        let durable = SubShared::new(2, 4, false);
        SubShared::delivered(&mut durable.lock(), 9);
        assert_eq!(
            durable.resubscription(&sub),
            sub,
            "durable groups resume on the server"
        );
    }
}
