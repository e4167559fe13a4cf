//! The fetch loops that drive one route, and the handling of one delivery or batch.
//!
//! Each route has one fetch task that owns its consumer. It takes a slot before it asks the
//! backend for the next delivery, so it never leases what it cannot start soon (a lease's clock
//! runs from the moment it is granted):
//!
//! - **unordered**: a slot is a worker; each delivery runs in its own task holding it.
//! - **per-key ordered**: slots are `workers + max_buffered`. A delivery whose key has no task
//!   starts one; otherwise it joins that key's queue. A key task handles its queue in order,
//!   taking a worker permit per message (so keys share the workers fairly) and ends when the
//!   queue is empty. Keyless messages run like unordered ones.
//! - **batch**: a slot is a worker; `Consumer::next_batch(size, max_wait)` fills it.
//!
//! Every queue is bounded by its semaphore; when full the fetch task waits (backpressure to the
//! backend, which keeps the messages). The fetch task stops at the stop token and hands its
//! consumer back to the router, which closes it only after the workers settled everything.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use squall_core::{Consumer, Delivery, Settle};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::HandlerError;
use crate::handler::{BoxBatchHandler, BoxHandler, Incoming};
use crate::panic::call_caught;
use crate::settle::{self, Facts, RouteCtx};

/// Fetch errors back off from here, doubling up to [`FETCH_BACKOFF_MAX`].
const FETCH_BACKOFF_MIN: Duration = Duration::from_millis(50);
const FETCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How a route consumes.
#[derive(Clone)]
pub(crate) enum Mode {
    Unordered(BoxHandler),
    Keyed {
        handler: BoxHandler,
        max_buffered: usize,
    },
    Batch {
        handler: BoxBatchHandler,
        size: usize,
        max_wait: Duration,
    },
}

/// Runs the fetch loop of one route until `stop` (or the consumer ends); returns the consumer.
pub(crate) async fn fetch(
    ctx: Arc<RouteCtx>,
    mut consumer: Box<dyn Consumer>,
    mode: Mode,
    workers: usize,
    stop: CancellationToken,
    tracker: TaskTracker,
) -> Box<dyn Consumer> {
    // Handler calls at once. Held by a handler task (or a key task, per message) while it runs.
    let workers_sem = Arc::new(Semaphore::new(workers));
    // Deliveries this route holds. Taken by this loop before leasing, released when the
    // delivery is settled; when none is free the loop waits, so the backend keeps the rest.
    let slots = match &mode {
        Mode::Keyed { max_buffered, .. } => Arc::new(Semaphore::new(workers + max_buffered)),
        _ => workers_sem.clone(),
    };
    // Keys with a running key task, and the deliveries queued behind each. Written by this
    // loop (enqueue, or insert and spawn) and by key tasks (dequeue, remove when empty), under
    // a std mutex never held across an await; bounded by `slots`; empty once every key task
    // has drained its queue.
    let keys: Arc<Mutex<HashMap<String, VecDeque<Held>>>> = Arc::default();
    let mut backoff = FETCH_BACKOFF_MIN;
    loop {
        let slot = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let fetched = match &mode {
            Mode::Batch { size, max_wait, .. } => tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                b = consumer.next_batch(*size, *max_wait) => match b {
                    Ok(b) if b.is_empty() => break, // the consumer ended
                    Ok(b) => Ok(b),
                    Err(e) => Err(e),
                },
            },
            _ => tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                d = consumer.next() => match d {
                    None => break,
                    Some(Ok(d)) => Ok(vec![d]),
                    Some(Err(e)) => Err(e),
                },
            },
        };
        let mut deliveries = match fetched {
            Ok(d) => {
                backoff = FETCH_BACKOFF_MIN;
                d
            }
            Err(e) => {
                ctx.counters.add(|c| &c.fetch_errors);
                tracing::warn!(route = %ctx.name, "fetching failed, trying again in {backoff:?}: {e}");
                drop(slot);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(FETCH_BACKOFF_MAX);
                continue;
            }
        };
        for _ in &deliveries {
            ctx.counters.add(|c| &c.fetched);
            ctx.counters.add(|c| &c.in_flight);
        }
        ctx.metrics.in_flight.increment(deliveries.len() as f64);
        match &mode {
            Mode::Unordered(h) => {
                let d = deliveries.pop().expect("one delivery");
                let (ctx, h) = (ctx.clone(), h.clone());
                tracker.spawn(async move {
                    handle_one(&ctx, h, d).await;
                    drop(slot);
                });
            }
            Mode::Batch { handler, .. } => {
                let (ctx, h) = (ctx.clone(), handler.clone());
                tracker.spawn(async move {
                    handle_batch(&ctx, h, deliveries).await;
                    drop(slot);
                });
            }
            Mode::Keyed { handler, .. } => {
                let d = deliveries.pop().expect("one delivery");
                let held = Held { delivery: d, slot };
                dispatch_keyed(&ctx, handler, &keys, &workers_sem, &tracker, held);
            }
        }
    }
    consumer
}

/// A delivery queued behind its key, with the slot it occupies.
struct Held {
    delivery: Delivery,
    slot: OwnedSemaphorePermit,
}

fn dispatch_keyed(
    ctx: &Arc<RouteCtx>,
    handler: &BoxHandler,
    keys: &Arc<Mutex<HashMap<String, VecDeque<Held>>>>,
    workers: &Arc<Semaphore>,
    tracker: &TaskTracker,
    held: Held,
) {
    let key = held.delivery.message().key().map(str::to_string);
    let (ctx, h, workers) = (ctx.clone(), handler.clone(), workers.clone());
    let Some(key) = key else {
        tracker.spawn(async move {
            if let Ok(_w) = workers.acquire().await {
                handle_one(&ctx, h, held.delivery).await;
            }
            drop(held.slot);
        });
        return;
    };
    {
        let mut map = keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = map.get_mut(&key) {
            q.push_back(held); // its key task takes it next
            return;
        }
        map.insert(key.clone(), VecDeque::new());
    }
    let keys = keys.clone();
    tracker.spawn(async move {
        let mut next = Some(held);
        while let Some(Held { delivery, slot }) = next.take() {
            if let Ok(_w) = workers.acquire().await {
                handle_one(&ctx, h.clone(), delivery).await;
            }
            drop(slot);
            let mut map = keys.lock().unwrap_or_else(|p| p.into_inner());
            next = map.get_mut(&key).and_then(VecDeque::pop_front);
            if next.is_none() {
                map.remove(&key);
            }
        }
    });
}

/// Runs the handler on one delivery and settles it.
async fn handle_one(ctx: &RouteCtx, h: BoxHandler, d: Delivery) {
    let incoming = Incoming::from_delivery(&d, ctx.name.clone(), ctx.handler.clone());
    let facts = Facts {
        attempt: incoming.attempt(),
        sequence: d.sequence(),
        published_at: d.published_at(),
        started: ctx.clock.now(),
        msg: d.message().clone(),
    };
    let (_, s) = d.into_parts();
    let settles = std::slice::from_ref(&s);
    let start = tokio::time::Instant::now();
    let outcome = tokio::select! {
        biased;
        _ = ctx.hard_stop.cancelled() => None,
        r = keep_leases(ctx, settles, call_caught(h, incoming)) => Some(r),
    };
    match outcome {
        None => settle::shutdown_nack(ctx, &facts, &s).await,
        Some(r) => {
            ctx.metrics.duration.record(start.elapsed().as_secs_f64());
            ctx.metrics.processed.increment(1);
            settle::settle(ctx, &facts, &s, r).await;
        }
    }
    ctx.counters.sub(|c| &c.in_flight);
    ctx.metrics.in_flight.decrement(1.0);
}

/// Runs the batch handler on `batch` and settles each delivery by its result.
async fn handle_batch(ctx: &RouteCtx, h: BoxBatchHandler, batch: Vec<Delivery>) {
    let n = batch.len();
    let mut facts = Vec::with_capacity(n);
    let mut settles = Vec::with_capacity(n);
    let mut incoming = Vec::with_capacity(n);
    let started = ctx.clock.now();
    for d in batch {
        let i = Incoming::from_delivery(&d, ctx.name.clone(), ctx.handler.clone());
        facts.push(Facts {
            attempt: i.attempt(),
            sequence: d.sequence(),
            published_at: d.published_at(),
            started,
            msg: d.message().clone(),
        });
        incoming.push(i);
        settles.push(d.into_parts().1);
    }
    let start = tokio::time::Instant::now();
    let outcome = tokio::select! {
        biased;
        _ = ctx.hard_stop.cancelled() => None,
        r = keep_leases(ctx, &settles, call_caught(h, incoming)) => Some(r),
    };
    let results: Vec<Option<Result<(), HandlerError>>> = match outcome {
        None => (0..n).map(|_| None).collect(),
        Some(r) => {
            ctx.metrics.duration.record(start.elapsed().as_secs_f64());
            ctx.metrics.processed.increment(n as u64);
            match r {
                Ok(per_message) => per_message.into_iter().map(Some).collect(),
                Err(e) => (0..n).map(|_| Some(Err(e.replicate()))).collect(),
            }
        }
    };
    let work = facts
        .iter()
        .zip(&settles)
        .zip(results)
        .map(|((f, s), r)| async move {
            match r {
                None => settle::shutdown_nack(ctx, f, s).await,
                Some(r) => settle::settle(ctx, f, s, r).await,
            }
            ctx.counters.sub(|c| &c.in_flight);
            ctx.metrics.in_flight.decrement(1.0);
        });
    futures::future::join_all(work).await;
}

/// Awaits `work`; with `extend_leases`, extends the leases by the ack wait every half ack wait
/// meanwhile (a lease that cannot be extended is left to expire).
async fn keep_leases<T>(
    ctx: &RouteCtx,
    settles: &[Settle],
    work: impl std::future::Future<Output = T>,
) -> T {
    if !ctx.extend_leases {
        return work.await;
    }
    let ack_wait = ctx.policy.ack_wait;
    let every = (ack_wait / 2).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    let mut live = vec![true; settles.len()];
    loop {
        tokio::select! {
            biased;
            r = &mut work => return r,
            _ = tick.tick() => {
                for (s, live) in settles.iter().zip(live.iter_mut()).filter(|(_, l)| **l) {
                    if let Err(e) = s.extend(ack_wait).await {
                        tracing::warn!(route = %ctx.name, "extending a lease failed; it will expire: {e}");
                        *live = false;
                    }
                }
            }
        }
    }
}
