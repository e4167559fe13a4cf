//! The consuming side of the workload: acking consumers, and the observer of the dead-letter
//! queue.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use squall_core::{
    Backend, DeadLetter, DeadLetterReason, Delivery, StartPosition, Subscription, Timestamp,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{POISON_HEADER, Progress, Workload};
use crate::checker::{Event, Stamp};

/// How long a stopping consumer waits for its settles still in flight.
const SETTLE_GRACE: Duration = Duration::from_secs(5);

/// Subscribes, retrying while the target is down (until `stop`); counts the subscription in
/// `progress` once it stands, and keeps the last failure there for the runner to report.
async fn subscribe(
    backend: &Arc<dyn Backend>,
    sub: Subscription,
    progress: &Progress,
    stop: &CancellationToken,
) -> Option<Box<dyn squall_core::Consumer>> {
    loop {
        match backend.subscribe(sub.clone()).await {
            Ok(c) => {
                progress
                    .subscribed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Some(c);
            }
            Err(e) => {
                tracing::debug!("subscribe failed, retrying: {e}");
                progress.subscribe_failed(&e);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.cancelled() => return None,
                }
            }
        }
    }
}

/// Settles run concurrently with the next receive, as a consumer with prefetch does: each is a
/// future here, at most `max_in_flight` queued (the channel's bound) besides those running (at
/// most the subscription's `max_in_flight`: unsettled deliveries count against it), recorded when
/// it completes.
fn settler(
    bound: usize,
) -> (
    mpsc::Sender<BoxFuture<'static, Option<Event>>>,
    tokio::task::JoinHandle<Vec<Event>>,
) {
    let (tx, mut rx) = mpsc::channel::<BoxFuture<'static, Option<Event>>>(bound.max(1));
    let task = tokio::spawn(async move {
        let mut events = Vec::new();
        let mut pending = FuturesUnordered::new();
        loop {
            tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => pending.push(f),
                    None => break,
                },
                Some(e) = pending.next(), if !pending.is_empty() => events.extend(e),
            }
        }
        let rest = async {
            while let Some(e) = pending.next().await {
                events.extend(e);
            }
        };
        if tokio::time::timeout(SETTLE_GRACE, rest).await.is_err() {
            tracing::warn!("settles still pending after {SETTLE_GRACE:?}: not recorded");
        }
        events
    });
    (tx, task)
}

/// Runs one consumer of `group` until `stop`: receives, simulates `processing`, then acks (or
/// rejects a poison message) without waiting for the settle before receiving the next.
/// `now` reads the clock the run uses.
pub async fn consume<N>(
    w: Arc<Workload>,
    backend: Arc<dyn Backend>,
    group: String,
    consumer: u32,
    now: N,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> Vec<Event>
where
    N: Fn() -> Timestamp + Send + Sync + Clone + 'static,
{
    let mut events = Vec::new();
    let sub = match w.subscription(&group) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("workload subscription: {e}");
            return events;
        }
    };
    let Some(mut c) = subscribe(&backend, sub, &progress, &stop).await else {
        return events;
    };
    let (settle, settled) = settler(w.max_in_flight);
    loop {
        let next = tokio::select! {
            n = c.next() => n,
            _ = stop.cancelled() => break,
        };
        let d = match next {
            None => break,
            Some(Err(e)) => {
                tracing::debug!("consumer error: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Some(Ok(d)) => d,
        };
        let at = now();
        progress
            .delivered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stamp = match Stamp::read(d.message()) {
            Some((stamp, intact)) => {
                progress.first_delivery(&group, stamp.producer, stamp.seq);
                events.push(Event::Received {
                    msg: (stamp.producer, stamp.seq),
                    consumer,
                    group: group.clone(),
                    at,
                    attempt: d.attempt(),
                    stream_seq: d.sequence(),
                    published_at: d.published_at(),
                    deadline: d.deadline(),
                    intact,
                });
                Some(stamp)
            }
            None => {
                events.push(Event::Unreadable { consumer, at });
                None
            }
        };
        if !w.processing.is_zero() {
            tokio::time::sleep(w.processing).await;
        }
        let f = settle_one(
            d,
            stamp,
            group.clone(),
            consumer,
            now.clone(),
            progress.clone(),
        );
        if settle.send(f).await.is_err() {
            break;
        }
    }
    // Settles in flight finish before the consumer closes (closing releases its leases).
    drop(settle);
    if let Ok(mut more) = settled.await {
        events.append(&mut more);
    }
    let _ = c.close().await;
    events
}

fn settle_one<N>(
    d: Delivery,
    stamp: Option<Stamp>,
    group: String,
    consumer: u32,
    now: N,
    progress: Arc<Progress>,
) -> BoxFuture<'static, Option<Event>>
where
    N: Fn() -> Timestamp + Send + Sync + 'static,
{
    let poison = d.message().headers().get(POISON_HEADER).is_some();
    let stream_seq = d.sequence();
    Box::pin(async move {
        let msg = stamp.map(|s| (s.producer, s.seq));
        if poison {
            let ok = d.reject("chaos: poison message").await.is_ok();
            if ok && let Some((p, s)) = msg {
                progress.first_reject(&group, p, s);
            }
            msg.map(|msg| Event::Rejected {
                msg,
                consumer,
                group,
                at: now(),
                stream_seq,
                ok,
            })
        } else {
            let ok = d.ack().await.is_ok();
            msg.map(|msg| Event::Acked {
                msg,
                consumer,
                group,
                at: now(),
                stream_seq,
                ok,
            })
        }
    })
}

/// Watches the dead-letter queue of the workload's subjects (`dlq.<subject>.>`) until `stop`,
/// recording every dead letter with its envelope. Use a client that suffers no faults: this is
/// the checker's eye, not part of the system under test.
pub async fn observe_dead_letters<N>(
    w: Arc<Workload>,
    backend: Arc<dyn Backend>,
    now: N,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> Vec<Event>
where
    N: Fn() -> Timestamp + Send + Sync,
{
    let mut events = Vec::new();
    // From the first dead letter where the backend can replay; otherwise the group's queue
    // holds what arrives from now on (the observer subscribes before anything is produced).
    let replay = backend.capabilities().replay_by_sequence.available();
    let sub = match Subscription::new(format!("dlq.{}.>", w.subject)).and_then(|s| {
        let s = s
            .group("chaos-dlq-observer")?
            .durable(true)
            .ack_wait(Duration::from_secs(30));
        Ok(if replay {
            s.start(StartPosition::First)
        } else {
            s
        })
    }) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("dead-letter subscription: {e}");
            return events;
        }
    };
    let Some(mut c) = subscribe(&backend, sub, &progress, &stop).await else {
        return events;
    };
    loop {
        let next = tokio::select! {
            n = c.next() => n,
            _ = stop.cancelled() => break,
        };
        let d = match next {
            None => break,
            Some(Err(e)) => {
                tracing::debug!("dead-letter observer error: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Some(Ok(d)) => d,
        };
        let at = now();
        let envelope = DeadLetter::read(d.message()).ok().flatten();
        match (Stamp::read(d.message()), envelope) {
            (Some((stamp, _)), Some(env)) => {
                let group = env.group.clone().unwrap_or_default();
                progress.first_dead_letter(&group, stamp.producer, stamp.seq);
                events.push(Event::DeadLettered {
                    msg: (stamp.producer, stamp.seq),
                    group,
                    reason: match env.reason {
                        DeadLetterReason::Rejected => "rejected".into(),
                        DeadLetterReason::MaxDeliveries => "max_deliveries".into(),
                    },
                    at,
                    origin_seq: env.origin_sequence,
                    dlq_seq: d.sequence(),
                });
            }
            _ => tracing::warn!(
                id = %d.message().id(),
                "a message in the dead-letter queue without a workload stamp or envelope"
            ),
        }
        // A redelivery of the same dead letter (a lost ack) is told apart by `dlq_seq`.
        let _ = d.ack().await;
    }
    let _ = c.close().await;
    events
}
