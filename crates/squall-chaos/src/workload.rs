//! The workload: open-loop producers and acking consumers over any backend, recording every
//! [`Event`] the checker needs.
//!
//! Producers follow a fixed schedule (message `i` of a producer is due at `start + i / rate`) and
//! stamp each message with that *intended* time, so latency includes any time the producer spent
//! blocked (no coordinated omission). A failed send is retried with the same message id (the
//! broker's dedup window makes that safe) up to `retries` times. Consumers receive, simulate work,
//! and ack — or reject a poison message ([`Workload::poison`]) so the broker dead-letters it. A
//! consumer does not wait for one settle before receiving the next (settles run concurrently, at
//! most `max_in_flight`), as a consumer with prefetch does: otherwise every delivery would cost a
//! round trip and added network latency would throttle consumers to a crawl. Processing itself is
//! sequential per consumer. When the run can dead-letter anything, an observer that suffers no
//! faults watches the dead-letter queue. Each task records into its own buffer; buffers are
//! merged and time-ordered at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use squall_core::{Backend, Message, MessageId, Result, Subscription, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::checker::{Event, Stamp};

mod consumer;

pub use consumer::{consume, observe_dead_letters};

/// What load to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Concurrent producers.
    pub producers: u32,
    /// Consumers per group.
    pub consumers: u32,
    /// Groups; every message must reach each.
    pub groups: Vec<String>,
    /// Subject prefix; messages go to `<subject>.<key>`.
    pub subject: String,
    /// Total offered rate, messages per second (`0`: as fast as confirms allow).
    pub rate: u32,
    /// Total messages.
    pub count: u64,
    /// Payload bytes.
    pub size: usize,
    /// Distinct keys (0: no keys).
    pub keys: u32,
    /// Simulated processing time per message.
    #[serde(with = "humantime_serde")]
    pub processing: Duration,
    /// Producer retries per message after a failed send or confirm.
    pub retries: u32,
    /// Pause before a retry.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Unconfirmed publishes per producer.
    pub pipeline: usize,
    /// Lease duration of the consumers.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Unacked deliveries per consumer.
    pub max_in_flight: usize,
    /// Durable groups.
    pub durable: bool,
    /// Per-key ordering in the groups.
    pub ordered_by_key: bool,
    /// Fraction of messages (0 to 1) marked as poison: consumers reject them, so the broker
    /// dead-letters them and the checker looks for each exactly once in the dead-letter queue.
    /// Which messages are poison is fixed by their producer and sequence.
    pub poison: f64,
    /// Deliveries after which the broker dead-letters a message (unset: redeliver forever).
    pub max_deliveries: Option<u32>,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            producers: 2,
            consumers: 2,
            groups: vec!["workers".into()],
            subject: "chaos.orders".into(),
            rate: 2000,
            count: 10_000,
            size: 256,
            keys: 16,
            processing: Duration::ZERO,
            retries: 5,
            retry_backoff: Duration::from_millis(200),
            pipeline: 256,
            ack_wait: Duration::from_secs(5),
            max_in_flight: 128,
            durable: true,
            ordered_by_key: false,
            poison: 0.0,
            max_deliveries: None,
        }
    }
}

/// Live counters for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    /// Sent (first attempts).
    pub sent: AtomicU64,
    /// Confirmed.
    pub confirmed: AtomicU64,
    /// Given up.
    pub failed: AtomicU64,
    /// Deliveries.
    pub delivered: AtomicU64,
    /// Send or confirm errors (before retries).
    pub errors: AtomicU64,
    /// Distinct (group, message) pairs delivered (confirmed or not).
    pub distinct: AtomicU64,
    /// Distinct (group, message) pairs delivered whose message was confirmed: the drain waits
    /// for confirmed × groups. (Not `distinct`: a publish that failed at the producer may still
    /// be delivered, and must not make up for a confirmed message that has not arrived yet.)
    pub confirmed_delivered: AtomicU64,
    /// Distinct (group, message) pairs whose reject the backend accepted.
    pub rejected: AtomicU64,
    /// Distinct (group, message) pairs seen in the dead-letter queue: the drain waits for
    /// `rejected`.
    pub dead_letters: AtomicU64,
    /// Consumers (and the dead-letter observer) whose subscription stands: the runner starts
    /// the producers once all are subscribed.
    pub subscribed: AtomicU64,
    /// The last subscribe failure, if any.
    last_subscribe_error: std::sync::Mutex<Option<String>>,
    seen: Seen,
    /// Confirmed messages, and per message how many groups have received it.
    arrivals: std::sync::Mutex<Arrivals>,
    rejects: Seen,
    dead: Seen,
}

type Seen = std::sync::Mutex<std::collections::HashSet<(String, u32, u64)>>;

/// What `confirmed_delivered` is counted from.
#[derive(Debug, Default)]
struct Arrivals {
    confirmed: std::collections::HashSet<(u32, u64)>,
    groups: std::collections::HashMap<(u32, u64), u64>,
}

/// Records (group, producer, seq) in `set`; true (and `counter` counts it) the first time.
fn first(set: &Seen, counter: &AtomicU64, group: &str, producer: u32, seq: u64) -> bool {
    let new =
        set.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((group.to_string(), producer, seq));
    if new {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    new
}

impl Progress {
    pub(crate) fn subscribe_failed(&self, e: &squall_core::Error) {
        *self
            .last_subscribe_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    /// The last subscribe failure of a consumer or the observer, if any.
    pub fn last_subscribe_error(&self) -> Option<String> {
        self.last_subscribe_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn first_delivery(&self, group: &str, producer: u32, seq: u64) {
        if !first(&self.seen, &self.distinct, group, producer, seq) {
            return;
        }
        let mut a = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        *a.groups.entry((producer, seq)).or_insert(0) += 1;
        if a.confirmed.contains(&(producer, seq)) {
            self.confirmed_delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// Counts a confirm (once per message), with the groups that already received it.
    pub(crate) fn record_confirm(&self, producer: u32, seq: u64) {
        let mut a = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        if a.confirmed.insert((producer, seq)) {
            let groups = a.groups.get(&(producer, seq)).copied().unwrap_or(0);
            self.confirmed_delivered
                .fetch_add(groups, Ordering::Relaxed);
            self.confirmed.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn first_reject(&self, group: &str, producer: u32, seq: u64) {
        first(&self.rejects, &self.rejected, group, producer, seq);
    }
    pub(crate) fn first_dead_letter(&self, group: &str, producer: u32, seq: u64) {
        first(&self.dead, &self.dead_letters, group, producer, seq);
    }

    /// Whether every accepted reject so far has been seen in the dead-letter queue.
    pub fn rejects_dead_lettered(&self) -> bool {
        let rejects = self.rejects.lock().unwrap_or_else(|p| p.into_inner());
        let dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        rejects.is_subset(&dead)
    }
}

/// The header that marks a poison message (value `1`).
pub const POISON_HEADER: &str = "chaos-poison";

/// Deterministic payload of `size` bytes for (producer, seq).
fn payload(producer: u32, seq: u64, size: usize) -> Vec<u8> {
    let mut x = (u64::from(producer) << 40) ^ seq ^ 0x9E37_79B9_7F4A_7C15;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl Workload {
    fn per_producer(&self, p: u32) -> u64 {
        let n = u64::from(self.producers.max(1));
        self.count / n + u64::from(u64::from(p) < self.count % n)
    }

    fn interval(&self) -> Option<Duration> {
        (self.rate > 0).then(|| {
            Duration::from_secs_f64(f64::from(self.producers.max(1)) / f64::from(self.rate))
        })
    }

    /// The subscription each consumer of `group` uses.
    pub fn subscription(&self, group: &str) -> Result<Subscription> {
        let mut sub = Subscription::new(format!("{}.>", self.subject))?
            .group(group)?
            .durable(self.durable)
            .ack_wait(self.ack_wait)
            .max_in_flight(self.max_in_flight)
            .ordered_by_key(self.ordered_by_key);
        if let Some(n) = self.max_deliveries {
            sub = sub.max_deliveries(n);
        }
        Ok(sub)
    }

    /// This workload as a backend with `caps` can carry it out, and what had to change: a
    /// subscription option the backend lacks would be refused (`Unsupported`) and its consumers
    /// would never start. Dropped, each with a note for the report: per-key ordering, durable
    /// groups, and dead letters (the delivery limit and poison messages). The criteria stay as
    /// they are, so what the backend cannot promise shows in the verdict.
    pub fn fit(&self, caps: &squall_core::Capabilities, backend: &str) -> (Workload, Vec<String>) {
        let mut w = self.clone();
        let mut notes = Vec::new();
        if w.ordered_by_key && !caps.key_ordering.available() {
            w.ordered_by_key = false;
            notes.push(format!(
                "{backend} has no per-key ordering within a group: consumers subscribed without it; per-key order is judged on what arrived"
            ));
        }
        if w.durable && !caps.durable_groups.available() {
            w.durable = false;
            notes.push(format!(
                "{backend} has no durable groups: consumers subscribed to non-durable groups (what is published while none is connected is not kept)"
            ));
        }
        if !caps.dead_letter.available() && (w.max_deliveries.is_some() || w.poison > 0.0) {
            w.max_deliveries = None;
            w.poison = 0.0;
            notes.push(format!(
                "{backend} has no dead letters: no delivery limit and no poison messages"
            ));
        }
        (w, notes)
    }

    /// Whether the run can dead-letter anything (poison messages or a delivery limit): then the
    /// runner watches the dead-letter queue.
    pub fn dead_letters_expected(&self) -> bool {
        self.poison > 0.0 || self.max_deliveries.is_some()
    }

    /// Whether message `seq` of `producer` is poison: a stable hash of both, compared with the
    /// `poison` fraction.
    pub fn is_poison(&self, producer: u32, seq: u64) -> bool {
        if self.poison <= 0.0 {
            return false;
        }
        let mut x = (u64::from(producer) << 48) ^ seq ^ 0x2545_F491_4F6C_DD1D;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^= x >> 33;
        (x as f64 / u64::MAX as f64) < self.poison
    }

    fn message(
        &self,
        producer: u32,
        seq: u64,
        sent: Timestamp,
    ) -> Result<(Message, Option<String>, Stamp)> {
        let key = (self.keys > 0)
            .then(|| format!("k{}", (seq + u64::from(producer)) % u64::from(self.keys)));
        let subject = format!("{}.{}", self.subject, key.as_deref().unwrap_or("none"));
        let mut b = Message::builder(subject)?
            .id(format!("p{producer}-{seq}"))?
            .payload(payload(producer, seq, self.size));
        if let Some(k) = &key {
            b = b.key(k)?;
        }
        if self.is_poison(producer, seq) {
            b = b.header(POISON_HEADER, "1")?;
        }
        let mut m = b.build();
        let stamp = Stamp::apply(producer, seq, sent, &mut m);
        Ok((m, key, stamp))
    }
}

/// Runs one producer to completion (or until `stop`). `now` reads the clock the run uses.
pub async fn produce(
    w: Arc<Workload>,
    backend: Arc<dyn Backend>,
    producer: u32,
    now: impl Fn() -> Timestamp + Send + Sync,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> Vec<Event> {
    let never = CancellationToken::new();
    produce_until(w, backend, producer, now, progress, stop, never).await
}

/// Like [`produce`], and when `abandon` is cancelled it stops waiting at once — for a send, for
/// pipeline room, for outstanding confirms and retries — and returns what it recorded: the
/// messages whose outcome it did not learn stay sent, neither confirmed nor failed
/// (`unaccounted` in the checker). A backend that never answers a confirm thus shows in the
/// report instead of taking the producer's events with it.
pub async fn produce_until(
    w: Arc<Workload>,
    backend: Arc<dyn Backend>,
    producer: u32,
    now: impl Fn() -> Timestamp + Send + Sync,
    progress: Arc<Progress>,
    stop: CancellationToken,
    abandon: CancellationToken,
) -> Vec<Event> {
    let mut events = Vec::new();
    let total = w.per_producer(producer);
    let start = tokio::time::Instant::now();
    let wall_start = now();
    let mut pending = FuturesUnordered::new();
    for seq in 1..=total {
        if stop.is_cancelled() {
            break;
        }
        let due_in = w
            .interval()
            .map(|i| i.mul_f64((seq - 1) as f64))
            .unwrap_or_default();
        let intended = if w.rate > 0 {
            wall_start.saturating_add(due_in)
        } else {
            now()
        };
        while pending.len() >= w.pipeline.max(1) {
            tokio::select! {
                Some(e) = pending.next() => events.push(e),
                _ = abandon.cancelled() => return events,
            }
        }
        if w.rate > 0 {
            // Wait for the send slot while recording confirms as they come (a confirm's time is
            // when it arrived, not when the pipeline next had to make room).
            let slot = tokio::time::sleep_until(start + due_in);
            tokio::pin!(slot);
            let stopped = loop {
                tokio::select! {
                    _ = &mut slot => break false,
                    _ = stop.cancelled() => break true,
                    Some(e) = pending.next(), if !pending.is_empty() => events.push(e),
                }
            };
            if stopped {
                break;
            }
        }
        let (msg, key, stamp) = match w.message(producer, seq, intended) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("building workload message: {e}");
                break;
            }
        };
        events.push(Event::Sent {
            stamp,
            at: now(),
            key,
            delay: None,
        });
        progress.sent.fetch_add(1, Ordering::Relaxed);
        // The first send happens here, in sequence order (waiting here is the backend's
        // backpressure); only the confirm, and any retry after a failure, run concurrently.
        // A retry re-sends the same id later, so it may land after newer messages: retries are
        // a documented source of reorders.
        // Retries in `pending` call `send` too: keep polling them while this send waits, or a
        // retry that the backend's send lock was handed to would never run, and this send
        // would wait for it forever.
        let first = {
            let send = backend.send(msg.clone());
            tokio::pin!(send);
            loop {
                tokio::select! {
                    r = &mut send => break r,
                    Some(e) = pending.next(), if !pending.is_empty() => events.push(e),
                    _ = abandon.cancelled() => return events,
                }
            }
        };
        let (backend, w2, progress2) = (backend.clone(), w.clone(), progress.clone());
        let now2 = &now;
        pending.push(async move {
            let id: MessageId = msg.id().clone();
            let mut last_err = String::new();
            let mut first = Some(first);
            for _ in 0..=w2.retries {
                let sent = match first.take() {
                    Some(s) => s,
                    None => {
                        tokio::time::sleep(w2.retry_backoff).await;
                        backend.send(msg.clone()).await
                    }
                };
                let r = match sent {
                    Ok(p) => p.await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(ack) => {
                        progress2.record_confirm(producer, seq);
                        return Event::Confirmed {
                            msg: (producer, seq),
                            at: now2(),
                            stream_seq: ack.sequence,
                            duplicate: ack.duplicate,
                        };
                    }
                    Err(e) => {
                        progress2.errors.fetch_add(1, Ordering::Relaxed);
                        last_err = e.to_string();
                        if !e.is_retryable() && e.kind() != squall_core::ErrorKind::Closed {
                            break;
                        }
                    }
                }
            }
            tracing::debug!(%id, "giving up: {last_err}");
            progress2.failed.fetch_add(1, Ordering::Relaxed);
            Event::Failed {
                msg: (producer, seq),
                at: now2(),
                error: last_err,
            }
        });
    }
    loop {
        tokio::select! {
            e = pending.next() => match e {
                Some(e) => events.push(e),
                None => break,
            },
            _ = abandon.cancelled() => break,
        }
    }
    events
}

/// Sorts merged event buffers by time (stable), so the checker sees each message's events in the
/// order they happened.
pub fn merge(mut buffers: Vec<Vec<Event>>) -> Vec<Event> {
    let mut all: Vec<Event> = buffers.drain(..).flatten().collect();
    all.sort_by_key(Event::time);
    all
}

impl Event {
    /// When it happened.
    pub fn time(&self) -> Timestamp {
        match self {
            Event::Phase { at, .. }
            | Event::Confirmed { at, .. }
            | Event::Failed { at, .. }
            | Event::Received { at, .. }
            | Event::Acked { at, .. }
            | Event::Rejected { at, .. }
            | Event::DeadLettered { at, .. }
            | Event::Unreadable { at, .. } => *at,
            Event::Fault { start, .. } => *start,
            Event::Sent { at, .. } => *at,
        }
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    /// The drain's count: a delivered message that failed at the producer does not make up for
    /// a confirmed one still on its way; a confirm after the delivery counts it.
    #[test]
    fn only_confirmed_messages_count_towards_the_drain() {
        let p = Progress::default();
        p.record_confirm(0, 1);
        p.record_confirm(0, 2);
        p.first_delivery("g", 0, 3); // failed at the producer, delivered anyway
        assert_eq!(p.distinct.load(Ordering::Relaxed), 1);
        assert_eq!(p.confirmed_delivered.load(Ordering::Relaxed), 0);
        p.first_delivery("g", 0, 1);
        p.first_delivery("g", 0, 1); // a duplicate
        assert_eq!(p.confirmed_delivered.load(Ordering::Relaxed), 1);
        p.first_delivery("g", 0, 4);
        p.first_delivery("h", 0, 4);
        p.record_confirm(0, 4); // confirmed after both groups received it
        p.record_confirm(0, 4);
        assert_eq!(p.confirmed.load(Ordering::Relaxed), 3);
        assert_eq!(p.confirmed_delivered.load(Ordering::Relaxed), 3);
    }
}
