//! Publishing one claimed batch: pipelined, in order per key.
//!
//! Rows without a key are all sent at once; for each key only its oldest unconfirmed row is in
//! flight, and the next row of the key is sent when the publisher confirms it. Sends are issued
//! one after another (each `send` may wait: backpressure), acks are awaited together.
//!
//! A retryable error (the publisher is unavailable, full, timing out) stops the batch: no new
//! sends, in-flight acks are collected, and the row and every later row of its key stay pending.
//! A non-retryable error (e.g. `InvalidMessage`) fails that row and releases the next row of its
//! key: one poison row does not block its key forever, nor any other key.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use squall_core::{PublishAck, Publisher};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::row::{Outcome, Row};

/// What became of a batch.
#[derive(Debug, Default)]
pub(crate) struct BatchReport {
    pub outcomes: Vec<Outcome>,
    /// Rows the publisher confirmed, in confirmation order.
    pub published: Vec<i64>,
    pub duplicates: u64,
    pub failed: u64,
    pub retries: u64,
    /// The first retryable error: the relay backs off.
    pub retryable: Option<squall_core::Error>,
}

/// Per-batch scheduling state: which rows may be sent now, which wait for their key.
struct Batch<'a> {
    rows: &'a [Row],
    /// Rows of a key waiting for the key's in-flight row to be confirmed, oldest first.
    waiting: HashMap<Arc<str>, VecDeque<usize>>,
    /// Rows that may be sent now.
    ready: VecDeque<usize>,
    /// No more sends in this batch (retryable error, shutdown, lease running out).
    halted: bool,
    report: BatchReport,
}

impl<'a> Batch<'a> {
    fn new(rows: &'a [Row]) -> Self {
        let mut waiting: HashMap<Arc<str>, VecDeque<usize>> = HashMap::new();
        let mut ready = VecDeque::new();
        for (i, r) in rows.iter().enumerate() {
            match &r.key {
                None => ready.push_back(i),
                Some(k) => match waiting.get_mut(k) {
                    Some(q) => q.push_back(i),
                    None => {
                        waiting.insert(k.clone(), VecDeque::new());
                        ready.push_back(i);
                    }
                },
            }
        }
        Batch {
            rows,
            waiting,
            ready,
            halted: false,
            report: BatchReport::default(),
        }
    }

    /// Row `i` is settled for good (confirmed or failed): its key's next row may go.
    fn release_next(&mut self, i: usize) {
        if let Some(q) = self.rows[i]
            .key
            .as_ref()
            .and_then(|k| self.waiting.get_mut(k))
            && let Some(next) = q.pop_front()
        {
            self.ready.push_back(next);
        }
    }

    fn settle(&mut self, i: usize, result: squall_core::Result<PublishAck>) {
        let seq = self.rows[i].seq;
        match result {
            Ok(ack) => {
                self.report.duplicates += u64::from(ack.duplicate);
                self.report.published.push(seq);
                self.report.outcomes.push(Outcome::Published {
                    seq,
                    duplicate: ack.duplicate,
                });
                self.release_next(i);
            }
            Err(e) if e.is_retryable() => {
                tracing::debug!(seq, "outbox publish failed, will retry: {e}");
                self.report.retries += 1;
                self.report.outcomes.push(Outcome::Retry {
                    seq,
                    error: e.to_string(),
                });
                self.report.retryable.get_or_insert(e);
                self.halted = true;
            }
            Err(e) => self.fail(i, format!("{}: {e}", e.kind())),
        }
    }

    fn fail(&mut self, i: usize, error: String) {
        let seq = self.rows[i].seq;
        tracing::warn!(seq, "outbox row failed for good: {error}");
        self.report.failed += 1;
        self.report.outcomes.push(Outcome::Failed { seq, error });
        self.release_next(i);
    }
}

/// Publishes `rows` (in insertion order) through `publisher`, keeping per-key order.
///
/// Sending stops at `valid_until` (the relay's lease) and at shutdown; after shutdown, in-flight
/// acks are awaited for at most `grace`. Rows not confirmed stay pending.
pub(crate) async fn publish_rows(
    publisher: &dyn Publisher,
    rows: &[Row],
    valid_until: Option<Instant>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> BatchReport {
    let mut b = Batch::new(rows);
    let mut in_flight = FuturesUnordered::new();
    let mut grace_deadline: Option<Instant> = None;
    loop {
        while !b.halted {
            let Some(i) = b.ready.pop_front() else { break };
            if valid_until.is_some_and(|t| Instant::now() >= t) {
                tracing::debug!("outbox lease about to expire: stopping the batch");
                b.halted = true;
                break;
            }
            let msg = match &rows[i].message {
                Ok(m) => m.clone(),
                Err(why) => {
                    b.fail(i, why.clone());
                    continue;
                }
            };
            let sent = tokio::select! {
                biased;
                _ = shutdown.cancelled() => None,
                r = publisher.send(msg) => Some(r),
            };
            match sent {
                // Dropped mid-send: the row stays pending; if it did reach the backend, the
                // republish is a duplicate the dedup window absorbs.
                None => b.halted = true,
                Some(Ok(pending)) => in_flight.push(async move { (i, pending.await) }),
                Some(Err(e)) => b.settle(i, Err(e)),
            }
        }
        if in_flight.is_empty() {
            break;
        }
        if grace_deadline.is_none() && shutdown.is_cancelled() {
            b.halted = true;
            grace_deadline = Some(Instant::now() + grace);
        }
        let far = Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            biased;
            Some((i, r)) = in_flight.next() => b.settle(i, r),
            _ = shutdown.cancelled(), if grace_deadline.is_none() => {
                b.halted = true;
                grace_deadline = Some(Instant::now() + grace);
            }
            _ = tokio::time::sleep_until(grace_deadline.unwrap_or(far)), if grace_deadline.is_some() => {
                tracing::warn!(
                    unconfirmed = in_flight.len(),
                    "outbox shutdown grace elapsed: unconfirmed rows stay pending"
                );
                break;
            }
        }
    }
    b.report
}
