//! The idempotent consumer under concurrent redelivery: duplicates of one id reach several
//! workers at once, and a lease expires while the first handler still runs — the handler body
//! runs once either way, and every copy ends up acked.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Log, ms_since, start};
use squall_broker::{Broker, StreamConfig};
use squall_core::{Message, Pattern, Publisher, Subscription};
use squall_middleware::idempotency::{IdempotencyLayer, MemoryStore};
use squall_middleware::{HandlerError, Incoming, Route, Router, handler_fn};
use tokio::time::Instant;
use tower::Layer;

/// A broker whose `pay.>` stream keeps no dedup window, so the same id can be stored twice.
fn broker_without_dedup() -> Broker {
    let broker = Broker::in_memory().unwrap();
    let mut stream = StreamConfig::new("pay", vec![Pattern::new("pay.>").unwrap()]);
    stream.dedup_window = Duration::ZERO;
    broker.create_stream(stream).unwrap();
    broker
}

fn payment(id: &str) -> Message {
    Message::builder("pay.charge")
        .unwrap()
        .id(id)
        .unwrap()
        .payload("100")
        .build()
}

/// A handler that takes `work` (the first call only, when `first_only`) and counts its runs.
fn slow_handler(
    runs: Arc<AtomicU32>,
    started: Log<(u32, u64)>,
    t0: Instant,
    work: Duration,
) -> impl tower::Service<Incoming, Response = (), Error = HandlerError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    handler_fn(move |m: Incoming| {
        let (runs, started) = (runs.clone(), started.clone());
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            started.push((m.attempt(), ms_since(t0)));
            tokio::time::sleep(work).await;
            Ok::<_, HandlerError>(())
        }
    })
}

/// Guards: two stored copies of id `pay-1` are leased by two of four workers at the same time;
/// the second finds the claim in progress and is deferred (200 ms) until the first completed,
/// then acked without running. The handler body runs once.
#[tokio::test(start_paused = true)]
async fn concurrent_duplicates_are_handled_once() {
    let broker = broker_without_dedup();
    let first = broker.publish(payment("pay-1")).await.unwrap();
    let second = broker.publish(payment("pay-1")).await.unwrap();
    assert!(
        !second.duplicate && second.sequence == first.sequence + 1,
        "dedup defeated"
    );

    let runs = Arc::new(AtomicU32::new(0));
    let started = Log::default();
    let t0 = Instant::now();
    let layer = IdempotencyLayer::new(MemoryStore::new(Duration::from_secs(3600), 1000))
        .in_progress_delay(Duration::from_millis(200));
    let handler = layer.layer(slow_handler(
        runs.clone(),
        started.clone(),
        t0,
        Duration::from_secs(1),
    ));
    let sub = Subscription::new("pay.>").unwrap().group("pay").unwrap();
    let running = start(
        Router::new(Arc::new(broker.clone())).route(Route::new("charge", sub, handler).workers(4)),
    );
    running.until(|r| r.succeeded == 2).await;
    let report = running.stop().await;

    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler body ran once");
    assert_eq!(started.all(), [(1, 0)]);
    let r = &report.routes[0];
    assert!(
        r.deferred >= 4,
        "the copy waited in 200 ms steps for 1 s: {r:?}"
    );
    assert_eq!((r.failed, r.dead_lettered, r.lease_lost), (0, 0, 0));
    assert_eq!(
        common::group_state(&broker, "pay", "pay").await,
        (0, 0, 0),
        "both acked"
    );
}

/// Guards: the lease (1 s) expires while the first run (3 s) still works; the broker
/// redelivers to another worker, which is deferred while the claim is held. The first run
/// completes the id; its ack finds the lease gone; the redelivered copy is then acked as done.
/// The handler body runs once.
#[tokio::test(start_paused = true)]
async fn a_redelivery_after_lease_expiry_does_not_run_the_handler_again() {
    let broker = broker_without_dedup();
    broker.publish(payment("pay-2")).await.unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let started = Log::default();
    let t0 = Instant::now();
    let layer = IdempotencyLayer::new(MemoryStore::new(Duration::from_secs(3600), 1000))
        .lease(Duration::from_secs(30))
        .in_progress_delay(Duration::from_millis(500));
    let handler = layer.layer(slow_handler(
        runs.clone(),
        started.clone(),
        t0,
        Duration::from_secs(3),
    ));
    let sub = Subscription::new("pay.>")
        .unwrap()
        .group("pay")
        .unwrap()
        .ack_wait(Duration::from_secs(1));
    let running = start(
        Router::new(Arc::new(broker.clone())).route(Route::new("charge", sub, handler).workers(2)),
    );
    running.until(|r| r.succeeded == 2).await;
    let report = running.stop().await;

    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler body ran once");
    let r = &report.routes[0];
    assert_eq!(
        r.lease_lost, 1,
        "the first run's ack came after the lease: {r:?}"
    );
    assert!(
        r.deferred >= 1,
        "the redelivery was deferred while the claim was held: {r:?}"
    );
    assert_eq!(r.dead_lettered, 0);
    let stats = broker.stream_stats("pay").await.unwrap();
    let g = &stats.groups[0];
    assert!(g.counters.lease_expired >= 1, "the lease did expire: {g:?}");
    assert_eq!(
        (g.in_flight, g.waiting, g.lag),
        (0, 0, 0),
        "settled in the end"
    );
}

/// Guards: a failed run releases its claim, so the retry runs the handler again (the failure
/// is not recorded as done).
#[tokio::test(start_paused = true)]
async fn a_failed_run_releases_the_claim_for_the_retry() {
    let broker = broker_without_dedup();
    broker.publish(payment("pay-3")).await.unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let runs2 = runs.clone();
    let handler = IdempotencyLayer::new(MemoryStore::new(Duration::from_secs(3600), 1000)).layer(
        handler_fn(move |_m: Incoming| {
            let n = runs2.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    return Err(HandlerError::msg("flaky"));
                }
                Ok(())
            }
        }),
    );
    let sub = Subscription::new("pay.>").unwrap().group("pay").unwrap();
    let running =
        start(Router::new(Arc::new(broker.clone())).route(Route::new("charge", sub, handler)));
    running.until(|r| r.succeeded == 1).await;
    let report = running.stop().await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(report.routes[0].retried, 1);
}
