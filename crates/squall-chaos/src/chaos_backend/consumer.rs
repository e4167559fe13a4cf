//! The consuming side of [`ChaosBackend`]: [`ChaosConsumer`] applies `deliver` rules, and every
//! delivery it hands out settles through a [`ChaosAcker`] applying `ack` rules.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use squall_core::{
    Acker, Consumer, Delivery, DeliveryInfo, Error, LeaseId, MessageId, Result, Subject,
    Subscription, Timestamp,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{ChaosBackend, partitioned, restarting};
use crate::faults::Faults;
use crate::rules::{Hold, PartitionMode, Point, Site, Verdict, flip_bit};

/// Deliveries a consumer keeps back (delayed, held, hanging, duplicated) at most; at the bound it
/// stops pulling from the inner consumer until some are handed out.
const MAX_KEPT: usize = 1024;

/// How long a consumer waits between checks while its backend restarts.
const RESTART_POLL: Duration = Duration::from_millis(20);

/// A delivery waiting to be handed over.
struct Kept {
    /// When it may go; `None`: when the partition catching it heals.
    due: Option<Instant>,
    delivery: Delivery,
}

/// A consumer whose deliveries and settles suffer the registry's `deliver` and `ack` rules.
///
/// [`next`](Consumer::next) stays cancel safe: deliveries it keeps back live in the consumer,
/// not in the future. When its [`ChaosBackend`] restarts, it resubscribes on the new backend.
pub struct ChaosConsumer {
    backend: ChaosBackend,
    sub: Subscription,
    /// The group deliver and ack sites report.
    group: Option<Arc<str>>,
    inner: Option<Box<dyn Consumer>>,
    /// The backend generation `inner` belongs to.
    generation: u64,
    generations: watch::Receiver<u64>,
    changes: watch::Receiver<u64>,
    /// Ready now (duplicates, released holds), in order.
    ready: VecDeque<Delivery>,
    /// Delayed or hanging in a partition.
    kept: Vec<Kept>,
    /// Held for reordering, with the verdict that started the batch's timer.
    held: Vec<Delivery>,
    hold_since: Option<(Instant, Hold)>,
    /// The inner consumer ended without a restart: hand out what is kept, then `None`.
    ended: bool,
    closed: bool,
}

impl ChaosConsumer {
    pub(super) async fn open(backend: ChaosBackend, sub: Subscription) -> Result<Self> {
        let group: Option<Arc<str>> = sub
            .group
            .as_deref()
            .map(Arc::from)
            .or_else(|| backend.shared.label.clone());
        let generations = backend.shared.generation.subscribe();
        let generation = *generations.borrow();
        backend.connect_gate(group.as_deref()).await?;
        let inner = backend.live()?.subscribe(sub.clone()).await?;
        let changes = backend.shared.faults.changes();
        Ok(ChaosConsumer {
            backend,
            sub,
            group,
            inner: Some(inner),
            generation,
            generations,
            changes,
            ready: VecDeque::new(),
            kept: Vec::new(),
            held: Vec::new(),
            hold_since: None,
            ended: false,
            closed: false,
        })
    }

    fn faults(&self) -> &Faults {
        &self.backend.shared.faults
    }

    /// A kept delivery that may go now.
    fn take_due(&mut self, now: Instant) -> Option<Delivery> {
        let faults = self.faults().clone();
        let group = self.group.clone();
        let i = self.kept.iter().position(|k| match k.due {
            Some(t) => t <= now,
            None => {
                let m = k.delivery.message();
                !faults
                    .is_partitioned(&Site::new(Point::Deliver).message(m).group(group.as_deref()))
            }
        })?;
        Some(self.kept.remove(i).delivery)
    }

    fn release_held(&mut self) {
        if let Some((_, h)) = self.hold_since.take() {
            let mut batch = std::mem::take(&mut self.held);
            batch.shuffle(&mut ChaCha8Rng::seed_from_u64(h.shuffle));
            self.ready.extend(batch);
        }
    }

    /// Wraps `d` so its settles pass the `ack` rules, and applies the `deliver` verdict.
    /// Returns what to hand out now, if anything.
    fn on_delivery(&mut self, d: Delivery) -> Option<Result<Delivery>> {
        let group = self.group.clone();
        let verdict = self.backend.shared.decide(
            &Site::new(Point::Deliver)
                .message(d.message())
                .group(group.as_deref()),
        );
        let info = DeliveryInfo {
            attempt: d.attempt(),
            sequence: d.sequence(),
            published_at: d.published_at(),
            deadline: d.deadline(),
            group: d.group().map(Arc::from),
            lease: d.lease(),
        };
        let mut msg = d.message().clone();
        let acker: Arc<dyn Acker> = Arc::new(ChaosAcker {
            inner: d.acker().clone(),
            backend: self.backend.clone(),
            subject: msg.subject().clone(),
            id: msg.id().clone(),
            group,
        });
        drop(d);
        let now = Instant::now();
        match verdict {
            Verdict::Drop => None,
            Verdict::Restart(downtime) => {
                // Not handed over: its lease dies with the old backend.
                self.backend.trigger_restart(downtime);
                None
            }
            Verdict::Error(k) => Some(Err(Error::new(k, "chaos: injected delivery error"))),
            Verdict::Partition(PartitionMode::Fail) => Some(Err(partitioned())),
            Verdict::Delay(by) => {
                let delivery = Delivery::new(msg, info, acker);
                self.kept.push(Kept {
                    due: Some(now + by),
                    delivery,
                });
                None
            }
            Verdict::Partition(PartitionMode::Hang) => {
                let delivery = Delivery::new(msg, info, acker);
                self.kept.push(Kept {
                    due: None,
                    delivery,
                });
                None
            }
            Verdict::Duplicate => {
                let copy = Delivery::new(msg.clone(), info.clone(), acker.clone());
                self.ready.push_back(copy);
                Some(Ok(Delivery::new(msg, info, acker)))
            }
            Verdict::Corrupt(n) => {
                flip_bit(&mut msg, n);
                Some(Ok(Delivery::new(msg, info, acker)))
            }
            Verdict::Hold(h) => {
                self.held.push(Delivery::new(msg, info, acker));
                self.hold_since.get_or_insert((now, h));
                if self.held.len() >= h.count.max(1) {
                    self.release_held();
                }
                None
            }
            Verdict::Pass | Verdict::LieDrop => Some(Ok(Delivery::new(msg, info, acker))),
        }
    }

    /// Replaces the inner consumer after a restart. `Ok(false)`: still restarting.
    async fn resubscribe(&mut self) -> Result<bool> {
        if self.backend.shared.is_restarting() {
            return Ok(false);
        }
        self.backend.connect_gate(self.group.as_deref()).await?;
        let generation = *self.generations.borrow_and_update();
        let inner = self.backend.live()?.subscribe(self.sub.clone()).await?;
        self.inner = Some(inner);
        self.generation = generation;
        self.ended = false;
        Ok(true)
    }

    fn restarted(&self) -> bool {
        self.backend.shared.is_restarting() || *self.generations.borrow() != self.generation
    }

    fn kept_count(&self) -> usize {
        self.ready.len() + self.kept.len() + self.held.len()
    }
}

#[async_trait]
impl Consumer for ChaosConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if self.closed {
                return None;
            }
            if let Some(d) = self.ready.pop_front() {
                return Some(Ok(d));
            }
            let now = Instant::now();
            if let Some(d) = self.take_due(now) {
                return Some(Ok(d));
            }
            if self.hold_since.is_some_and(|(t, h)| t + h.max_wait <= now) {
                self.release_held();
                continue;
            }
            let stale = *self.generations.borrow() != self.generation;
            if self.inner.is_none() || stale || (self.ended && self.restarted()) {
                if let Some(mut old) = self.inner.take() {
                    let _ = old.close().await;
                }
                match self.resubscribe().await {
                    Ok(true) => continue,
                    Ok(false) => {
                        tokio::time::sleep(RESTART_POLL).await;
                        continue;
                    }
                    Err(e) => {
                        tokio::time::sleep(RESTART_POLL).await;
                        return Some(Err(e));
                    }
                }
            }
            if self.ended && self.kept_count() == 0 {
                return None;
            }
            let wake = self
                .kept
                .iter()
                .filter_map(|k| k.due)
                .chain(self.hold_since.map(|(t, h)| t + h.max_wait))
                .min();
            let hanging = self.kept.iter().any(|k| k.due.is_none());
            let pull = !self.ended && self.kept_count() < MAX_KEPT;
            let Some(inner) = self.inner.as_mut() else {
                continue;
            };
            let got = tokio::select! {
                r = inner.next(), if pull => Some(r),
                _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => None,
                _ = self.changes.changed(), if hanging => None,
                else => {
                    // Unreachable by construction (something kept always has a wake-up), but
                    // never spin.
                    tokio::time::sleep(RESTART_POLL).await;
                    None
                }
            };
            match got {
                None => {}
                Some(None) => {
                    self.ended = true;
                    if self.restarted() {
                        // Keep what is kept; its leases died with the old backend anyway.
                        continue;
                    }
                }
                Some(Some(Err(e))) => return Some(Err(e)),
                Some(Some(Ok(d))) => {
                    if let Some(out) = self.on_delivery(d) {
                        return Some(out);
                    }
                }
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.closed = true;
        // Kept deliveries are leased by the inner consumer, which releases them on close.
        self.ready.clear();
        self.kept.clear();
        self.held.clear();
        self.hold_since = None;
        match self.inner.as_mut() {
            Some(c) => c.close().await,
            None => Ok(()),
        }
    }
}

/// Settles a delivery through the `ack` rules, then the inner backend's acker.
struct ChaosAcker {
    inner: Arc<dyn Acker>,
    backend: ChaosBackend,
    subject: Subject,
    id: MessageId,
    group: Option<Arc<str>>,
}

/// What an `ack` verdict does to one settle.
enum Gate {
    Forward,
    Twice,
    /// Not forwarded, reported as done.
    Swallow,
    Fail(Error),
}

impl ChaosAcker {
    async fn gate(&self) -> Gate {
        let site = Site {
            point: Point::Ack,
            subject: Some(&self.subject),
            group: self.group.as_deref(),
            message_id: Some(&self.id),
        };
        match self.backend.shared.decide(&site) {
            Verdict::Delay(d) => {
                tokio::time::sleep(d).await;
                Gate::Forward
            }
            Verdict::Restart(downtime) => {
                self.backend.trigger_restart(downtime);
                Gate::Fail(restarting("the settle was not sent"))
            }
            Verdict::Drop => Gate::Swallow,
            Verdict::Duplicate => Gate::Twice,
            Verdict::Error(k) => Gate::Fail(Error::new(k, "chaos: injected settle error")),
            Verdict::Partition(PartitionMode::Fail) => Gate::Fail(partitioned()),
            Verdict::Partition(PartitionMode::Hang) => {
                self.backend.shared.faults.wait_healed(&site).await;
                Gate::Forward
            }
            _ => Gate::Forward,
        }
    }
}

#[async_trait]
impl Acker for ChaosAcker {
    async fn ack(&self, lease: LeaseId) -> Result<()> {
        match self.gate().await {
            Gate::Forward => self.inner.ack(lease).await,
            Gate::Twice => {
                let first = self.inner.ack(lease).await;
                let _ = self.inner.ack(lease).await;
                first
            }
            Gate::Swallow => Ok(()),
            Gate::Fail(e) => Err(e),
        }
    }

    async fn nack(&self, lease: LeaseId, delay: Duration) -> Result<()> {
        match self.gate().await {
            Gate::Forward => self.inner.nack(lease, delay).await,
            Gate::Twice => {
                let first = self.inner.nack(lease, delay).await;
                let _ = self.inner.nack(lease, delay).await;
                first
            }
            Gate::Swallow => Ok(()),
            Gate::Fail(e) => Err(e),
        }
    }

    async fn reject(&self, lease: LeaseId, reason: &str) -> Result<()> {
        match self.gate().await {
            Gate::Forward => self.inner.reject(lease, reason).await,
            Gate::Twice => {
                let first = self.inner.reject(lease, reason).await;
                let _ = self.inner.reject(lease, reason).await;
                first
            }
            Gate::Swallow => Ok(()),
            Gate::Fail(e) => Err(e),
        }
    }

    async fn extend(&self, lease: LeaseId, by: Duration) -> Result<Timestamp> {
        match self.gate().await {
            Gate::Forward => self.inner.extend(lease, by).await,
            Gate::Twice => {
                let first = self.inner.extend(lease, by).await;
                let _ = self.inner.extend(lease, by).await;
                first
            }
            // The deadline the extension would have given; the lease itself is not extended.
            Gate::Swallow => Ok(Timestamp::now().saturating_add(by)),
            Gate::Fail(e) => Err(e),
        }
    }
}
