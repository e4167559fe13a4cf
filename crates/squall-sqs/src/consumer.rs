//! Subscriptions: [`SqsConsumer`] and the task that long-polls its queue.
//!
//! `subscribe` creates the queue (a group's shared queue, or a queue of its own for a
//! subscription without a group; see [`crate::naming`]) and only then returns, so a message
//! published after `subscribe` returns is received. A driver task per consumer then owns the
//! receiving:
//!
//! - it asks SQS for a batch (`batch_size`, or one message with `ordered_by_key`), waiting up
//!   to `wait_time` (long polling), only when the application could take it: when it holds
//!   fewer than `max_in_flight` unsettled deliveries, and when at most one batch it received
//!   waits in the client for `next`. A message's visibility timeout runs from the moment SQS
//!   hands it out, so what waits in the client is kept to one batch ahead of the application
//!   (prefetch), and a delivery whose lease ran out before `next` took it is not handed over:
//!   it comes again (its timer made it visible);
//! - it decodes each message, deletes those whose time to live is over, moves those it cannot
//!   decode to `<queue_prefix>parked` (reported to the application as `InvalidMessage`),
//!   dead-letters those already past `max_deliveries`, and leases the rest (see
//!   [`crate::lease`]), handing them over a channel bounded by two batches plus 16 reports;
//! - when a receive fails it reports the error once through `next`, retries with backoff, and
//!   recreates its queue if it was deleted. A long poll cut by a network fault may still have
//!   been answered by SQS into the lost connection: what it took is received by nobody and
//!   comes again when its visibility timeout (`ack_wait + lease_grace`) ends, as the next
//!   attempt. Nothing is lost, but it is late by up to that timeout; keep `ack_wait` short
//!   (and extend leases for long work) where that matters. On FIFO queues each receive carries
//!   a `ReceiveRequestAttemptId`, kept until a receive is answered: SQS answers the retry of a
//!   lost receive with the messages it took, at once (moto ignores attempt ids, so against
//!   moto FIFO queues wait out the timeout like standard ones).
//!
//! `close` (or dropping the consumer, or closing the backend handle) makes what the consumer
//! held visible again at once, for the group's other members, and deletes the queue of a
//! subscription without a group (at once: a long poll on it is abandoned). On a group's queue a
//! receive already waiting is let finish (at most `wait_time`) in the background, and what it
//! brings is released too: dropping a long poll could leave its messages invisible for the
//! whole visibility timeout.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::Message as SqsMessage;
use squall_core::backoff::Backoff;
use squall_core::{
    Acker, Consumer, DeadLetterReason, Delivery, DeliveryInfo, Error, ErrorKind, LeaseId, Result,
    StartPosition, Subject, Subscription, Timestamp,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::codec::{ceil_secs, decode};
use crate::config::MAX_VISIBILITY;
use crate::lease::{Lease, Shared, SqsAcker};
use crate::naming;
use crate::queues::{Binding, Queues};

/// Extra room in the hand-over channel beyond the prefetch, for error reports.
const SLACK: usize = 16;
/// The most unsettled deliveries one consumer may hold.
const MAX_IN_FLIGHT: usize = 65_535;

/// Checks a subscription against what SQS can do; returns the subject its queue is bound to.
pub(crate) fn check(sub: &Subscription, queues: &Queues) -> Result<Subject> {
    sub.validate()?;
    let cfg = &queues.config;
    match sub.start {
        None | Some(StartPosition::New) => {}
        Some(StartPosition::First) => {
            return Err(Error::unsupported(
                "sqs",
                "StartPosition::First (SQS queues cannot replay: a group's queue holds what was \
                 published since it was created; leave `start` unset for that, and create it \
                 ahead with `SqsBackend::ensure_group_queue`)",
            ));
        }
        Some(StartPosition::Sequence(_)) => {
            return Err(Error::unsupported("sqs", "replay from a sequence"));
        }
        Some(StartPosition::Time(_)) => {
            return Err(Error::unsupported("sqs", "replay from a time"));
        }
    }
    if sub.policy.ordered_by_key && !cfg.fifo {
        return Err(Error::unsupported(
            "sqs",
            "ordered_by_key on standard queues (per-key order needs FIFO queues: `fifo=1`)",
        ));
    }
    if !sub.pattern.is_literal() {
        return Err(Error::unsupported(
            "sqs",
            &format!(
                "wildcard patterns such as `{}` (SQS has no routing: a publisher finds the \
                 queues of its exact subject; subscribe to each subject)",
                sub.pattern
            ),
        ));
    }
    let visible = Duration::from_secs(ceil_secs(sub.policy.ack_wait) + ceil_secs(cfg.lease_grace));
    if visible > MAX_VISIBILITY {
        return Err(Error::config(
            "subscription.ack_wait",
            format!(
                "ack_wait {:?} plus lease_grace {:?} is over SQS's visibility limit of 12h",
                sub.policy.ack_wait, cfg.lease_grace
            ),
        ));
    }
    if sub.policy.max_in_flight > MAX_IN_FLIGHT {
        return Err(Error::config(
            "subscription.max_in_flight",
            format!(
                "{} is over the SQS adapter's limit of {MAX_IN_FLIGHT}",
                sub.policy.max_in_flight
            ),
        ));
    }
    Subject::new(sub.pattern.as_str())
}

/// A live subscription; see the module docs.
pub struct SqsConsumer {
    /// Deliveries (each with its prefetch permit, freed when `next` takes it) and reports.
    rx: mpsc::Receiver<Handover>,
    driver: Option<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Whether the queue is this consumer's own (deleted when it ends).
    owned: bool,
}

impl std::fmt::Debug for SqsConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsConsumer")
            .field("queue", &self.shared.name)
            .field("group", &self.shared.group)
            .finish()
    }
}

impl SqsConsumer {
    /// Creates or finds the queue, then starts the driver.
    pub(crate) async fn start(
        queues: Arc<Queues>,
        sub: Subscription,
        subject: Subject,
        parent: &CancellationToken,
    ) -> Result<SqsConsumer> {
        let cfg = queues.config.clone();
        let (name, url, owned) = match (&sub.stream, sub.group_name()) {
            (Some(stream), _) => {
                let url = queues.url(stream).await.map_err(|e| {
                    if e.kind() == ErrorKind::NotFound {
                        Error::new(
                            ErrorKind::NotFound,
                            format!(
                                "queue `{stream}` does not exist (subscription.stream names an \
                                 existing queue to consume)"
                            ),
                        )
                    } else {
                        e
                    }
                })?;
                (stream.clone(), url, false)
            }
            (None, Some(g)) => {
                let name = naming::group_queue(&cfg.queue_prefix, &subject, g, cfg.fifo);
                let url = queues.ensure(&name, true).await?;
                (name, url, false)
            }
            (None, None) => {
                let name = naming::fanout_queue(&cfg.queue_prefix, &subject, cfg.fifo);
                let url = queues.ensure(&name, false).await?;
                (name, url, true)
            }
        };
        queues.invalidate(&subject);
        let shared = Shared::new(
            queues,
            url,
            name,
            Some(subject),
            sub.group.as_deref().map(Arc::from),
            sub.policy.clone(),
            parent.child_token(),
        );
        let batch = if sub.policy.ordered_by_key {
            1
        } else {
            usize::from(cfg.batch_size)
        };
        let (tx, rx) = mpsc::channel(2 * batch + SLACK);
        let permits = Permits {
            flight: Arc::new(Semaphore::new(sub.policy.max_in_flight)),
            prefetch: Arc::new(Semaphore::new(2 * batch)),
        };
        let driver = tokio::spawn(drive(shared.clone(), permits, tx, owned, batch));
        Ok(SqsConsumer {
            rx,
            driver: Some(driver),
            shared,
            owned,
        })
    }

    /// The name of the queue this consumer receives from.
    pub fn queue_name(&self) -> &str {
        &self.shared.name
    }

    /// The URL of that queue.
    pub fn queue_url(&self) -> &str {
        &self.shared.url
    }
}

impl Drop for SqsConsumer {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

#[async_trait]
impl Consumer for SqsConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            let (item, prefetch) = self.rx.recv().await?;
            drop(prefetch);
            match item {
                Ok(d) if d.deadline() <= Timestamp::now() => {
                    // Its timer already made it visible again: handing it over would only
                    // give the application work it can no longer settle.
                    tracing::debug!(id = %d.message().id(), queue = %self.shared.name, "lease ran out before `next` took the delivery; it comes again");
                }
                other => return Some(other),
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.shared.cancel.cancel();
        let held = self.shared.drain();
        if !held.is_empty() && !self.owned {
            self.shared.queues.release(&self.shared.url, held).await;
        }
        if let Some(d) = self.driver.take() {
            // A receive in progress finishes in the background (see the module docs).
            let _ = tokio::time::timeout(Duration::from_secs(1), d).await;
        }
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        Ok(())
    }
}

/// What the driver hands to `next`: a delivery with its prefetch permit, or a report.
type Handover = (Result<Delivery>, Option<OwnedSemaphorePermit>);

/// The driver's two limits.
struct Permits {
    /// One per unsettled delivery the application may hold (`max_in_flight`).
    flight: Arc<Semaphore>,
    /// One per received delivery waiting for `next` (two batches: the driver receives a batch
    /// when one batch's worth is free, so at most one batch waits beyond the one being taken).
    prefetch: Arc<Semaphore>,
}

async fn drive(
    shared: Arc<Shared>,
    permits: Permits,
    tx: mpsc::Sender<Handover>,
    owned: bool,
    batch: usize,
) {
    let cfg = shared.queues.config.clone();
    let acker: Arc<dyn Acker> = Arc::new(SqsAcker(shared.clone()));
    let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
    let mut reported = false;
    let visibility = shared.visibility();
    let mut attempt = ReceiveAttempt::default();
    'outer: loop {
        // Room for a batch in the client first, then at least one delivery the application may
        // hold; the request asks for no more than both allow.
        let mut prefetch = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            p = permits.prefetch.clone().acquire_many_owned(batch as u32) => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let first = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            p = permits.flight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let mut held = vec![first];
        while held.len() < batch {
            match permits.flight.clone().try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
        let turn = match shared.queues.receive_turn(&shared.url) {
            None => None,
            Some(turn) => tokio::select! {
                biased;
                _ = shared.cancel.cancelled() => break,
                g = turn.lock_owned() => Some(g),
            },
        };
        if shared.cancel.is_cancelled() {
            break;
        }
        tracing::trace!(queue = %shared.name, asking = held.len(), free = permits.flight.available_permits(), "receiving");
        let attempt_id = attempt.id(cfg.fifo, Instant::now());
        let receiving = shared.queues.receive(
            &shared.url,
            held.len() as i32,
            cfg.wait_time,
            visibility,
            attempt_id.as_deref(),
        );
        let received = if owned {
            // The queue is deleted when the consumer ends: what a dropped receive held dies
            // with it, so there is no need to wait for the long poll.
            tokio::select! {
                biased;
                _ = shared.cancel.cancelled() => break,
                r = receiving => r,
            }
        } else {
            receiving.await
        };
        // SQS started the visibility timeout between the request and now (a long poll may have
        // waited before): the lease counts from the answer, and `lease_grace` covers its transit.
        let arrived = Instant::now();
        drop(turn);
        tracing::trace!(queue = %shared.name, received = ?received.as_ref().map(|m| m.len()), "received");
        match received {
            Ok(msgs) => {
                attempt.answered();
                backoff.reset();
                reported = false;
                if shared.cancel.is_cancelled() {
                    let receipts = msgs
                        .iter()
                        .filter_map(|m| m.receipt_handle())
                        .map(str::to_string);
                    shared.queues.release(&shared.url, receipts.collect()).await;
                    break;
                }
                for m in msgs {
                    let Some(permit) = held.pop() else {
                        tracing::warn!(queue = %shared.name, "SQS returned more messages than asked for");
                        let r: Vec<String> =
                            m.receipt_handle().map(str::to_string).into_iter().collect();
                        shared.queues.release(&shared.url, r).await;
                        continue;
                    };
                    let waiting = prefetch.split(1);
                    if !handle(&shared, &acker, m, (permit, waiting), arrived, &tx).await {
                        // The application dropped the consumer.
                        shared.cancel.cancel();
                        break 'outer;
                    }
                }
            }
            Err(e) => {
                drop(held);
                if e.kind() == ErrorKind::NotFound {
                    tracing::warn!(queue = %shared.name, "the queue is gone; creating it again");
                    if let Err(again) = recreate(&shared).await {
                        tracing::warn!(error = %again, "recreating a queue");
                    }
                }
                if !reported {
                    reported = true;
                    let _ = tx.try_send((
                        Err(Error::new(
                            e.kind(),
                            format!(
                                "{e}; retrying (unsettled deliveries, and what a cut long poll \
                                 took, come again when their visibility timeout of {}s ends)",
                                visibility.as_secs()
                            ),
                        )),
                        None,
                    ));
                }
                tokio::select! {
                    _ = shared.cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
    let held = shared.drain();
    if owned {
        if let Err(e) = shared.queues.delete(&shared.url).await {
            tracing::warn!(error = %e, queue = %shared.name, "deleting a subscription's queue");
        }
    } else if !held.is_empty() {
        shared.queues.release(&shared.url, held).await;
    }
}

/// Creates a queue that vanished again (not a `stream` someone else owns).
async fn recreate(shared: &Shared) -> Result<()> {
    let prefix = &shared.config().queue_prefix;
    if !shared.name.starts_with(prefix.as_str()) {
        return Ok(());
    }
    shared
        .queues
        .ensure(&shared.name, shared.group.is_some())
        .await
        .map(|_| ())
}

/// Handles one received message; `false` if the application is gone.
async fn handle(
    shared: &Arc<Shared>,
    acker: &Arc<dyn Acker>,
    m: SqsMessage,
    (permit, waiting): (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
    arrived: Instant,
    tx: &mpsc::Sender<Handover>,
) -> bool {
    let Some(receipt) = m.receipt_handle().map(str::to_string) else {
        return true;
    };
    let sqs_id = m.message_id().unwrap_or_default().to_string();
    let now = Timestamp::now();
    let r = match decode(&m, shared.bound.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            let e = match park(shared, &m).await {
                Ok(queue) => {
                    let _ = shared.delete(receipt).await;
                    Error::new(
                        ErrorKind::InvalidMessage,
                        format!("{}; the message was moved to queue `{queue}`", e.message()),
                    )
                }
                Err(pe) => {
                    tracing::warn!(error = %pe, "parking an undecodable message");
                    e
                }
            };
            return tx.send((Err(e), waiting)).await.is_ok();
        }
    };
    if r.expires_at.is_some_and(|at| at <= now) {
        tracing::debug!(id = %r.message.id(), "time to live over: deleting");
        if let Err(e) = shared.delete(receipt).await {
            tracing::debug!(error = %e, "deleting an expired message");
        }
        return true;
    }
    let attempts = shared.attempts(&sqs_id, r.attempt, r.first_receive, now);
    let deadline = arrived + shared.policy.ack_wait;
    let attempt = r.attempt;
    let lease = Lease {
        receipt,
        sqs_id,
        deadline,
        attempt,
        attempts,
        message: r.message.clone(),
        _permit: Some(permit),
    };
    if let Some(max) = shared.policy.max_deliveries
        && attempt > max
    {
        // Returned by crashed consumers more often than allowed.
        let shared = shared.clone();
        tokio::spawn(async move {
            let error = format!("delivered {attempt} times, over max_deliveries {max}");
            if let Err(e) = shared
                .dead_letter(lease, DeadLetterReason::MaxDeliveries, &error)
                .await
            {
                tracing::warn!(error = %e, "dead-lettering on receipt");
            }
        });
        return true;
    }
    let nonce = shared.insert(lease);
    let left = deadline.saturating_duration_since(Instant::now());
    let info = DeliveryInfo {
        attempt,
        sequence: 0,
        published_at: r.sent_at,
        deadline: Timestamp::now().saturating_add(left),
        group: shared.group.clone(),
        lease: LeaseId { sequence: 0, nonce },
    };
    tx.send((Ok(Delivery::new(r.message, info, acker.clone())), waiting))
        .await
        .is_ok()
}

/// The FIFO `ReceiveRequestAttemptId` of the next receive. A receive whose answer was lost (a
/// cut connection, a timeout) may still have taken messages, which would then stay invisible
/// for their visibility timeout; SQS answers a retry carrying the same attempt id with those
/// same messages at once. So the id is kept until a receive is answered, and renewed after
/// 4 minutes (SQS honours an attempt id for 5). Standard queues have no attempt ids.
#[derive(Debug, Default)]
struct ReceiveAttempt {
    current: Option<(String, Instant)>,
}

/// How long an attempt id is reused: SQS keeps it for 5 minutes, less the time a receive and
/// its retries may take.
const ATTEMPT_REUSE: Duration = Duration::from_secs(240);

impl ReceiveAttempt {
    /// The id to send now, `None` for a standard queue.
    fn id(&mut self, fifo: bool, now: Instant) -> Option<String> {
        if !fifo {
            return None;
        }
        if self
            .current
            .as_ref()
            .is_none_or(|(_, since)| now.saturating_duration_since(*since) > ATTEMPT_REUSE)
        {
            self.current = Some((uuid::Uuid::now_v7().simple().to_string(), now));
        }
        self.current.as_ref().map(|(id, _)| id.clone())
    }

    /// The receive was answered: the next one is a new attempt.
    fn answered(&mut self) {
        self.current = None;
    }
}

/// Copies an undecodable message as received to `<queue_prefix>parked`; returns that name.
async fn park(shared: &Shared, m: &SqsMessage) -> Result<String> {
    let cfg = shared.config();
    let name = naming::parked_queue(&cfg.queue_prefix, cfg.fifo);
    let url = shared.queues.ensure(&name, false).await?;
    let body = m.body().unwrap_or("-");
    let enc = crate::codec::Encoded {
        id: squall_core::MessageId::new(m.message_id().unwrap_or("unknown"))
            .unwrap_or_else(|_| squall_core::MessageId::generate()),
        body: if body.is_empty() {
            "-".into()
        } else {
            body.into()
        },
        attributes: m.message_attributes().cloned().unwrap_or_default(),
        size: 0,
        delay_seconds: 0,
        group_id: cfg.fifo.then(|| "parked".to_string()),
        dedup_id: cfg
            .fifo
            .then(|| m.message_id().unwrap_or("unknown").to_string()),
    };
    shared
        .queues
        .send(
            &Binding {
                name: name.clone(),
                url,
            },
            &enc,
        )
        .await?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_receive_keeps_its_attempt_id_until_answered() {
        let mut a = ReceiveAttempt::default();
        let t0 = Instant::now();
        assert_eq!(a.id(false, t0), None, "standard queues send no attempt id");
        let first = a.id(true, t0).unwrap();
        let retry = a.id(true, t0 + Duration::from_secs(30)).unwrap();
        assert_eq!(
            first, retry,
            "an unanswered receive is retried as the same attempt"
        );
        a.answered();
        let next = a.id(true, t0 + Duration::from_secs(31)).unwrap();
        assert_ne!(next, first, "an answered receive ends the attempt");
        let late = a.id(true, t0 + Duration::from_secs(31) + ATTEMPT_REUSE * 2);
        assert_ne!(
            late.unwrap(),
            next,
            "an attempt id older than 4 minutes is renewed"
        );
    }
}
