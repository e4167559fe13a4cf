//! Graceful shutdown: stop fetching, let in-flight work finish within the deadline, nack what
//! did not, close consumers, flush publishers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{group_state, publish, start};
use squall_broker::Broker;
use squall_core::{Message, PendingAck, Publisher, Result, Subscriber, Subscription};
use squall_middleware::{HandlerError, Incoming, Route, Router, handler_fn};
use tokio::time::Instant;

fn sleeping(
    d: Duration,
) -> impl tower::Service<Incoming, Response = (), Error = HandlerError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    handler_fn(move |_m: Incoming| async move {
        tokio::time::sleep(d).await;
        Ok::<_, HandlerError>(())
    })
}

/// A publisher that counts flushes.
struct CountingFlush {
    broker: Broker,
    flushes: AtomicU32,
}

#[async_trait]
impl Publisher for CountingFlush {
    async fn send(&self, msg: Message) -> Result<PendingAck> {
        self.broker.send(msg).await
    }
    async fn flush(&self) -> Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Guards: three 2-second handlers are running when shutdown is signalled; they finish and
/// are acked, nothing new is fetched (two messages published after the signal stay in the
/// stream), the extra publisher is flushed, and `run` returns when the last one is done.
#[tokio::test(start_paused = true)]
async fn in_flight_work_finishes_and_nothing_new_is_fetched() {
    let broker = Broker::in_memory().unwrap();
    let extra = Arc::new(CountingFlush {
        broker: broker.clone(),
        flushes: AtomicU32::new(0),
    });
    let sub = Subscription::new("w.>").unwrap().group("w").unwrap();
    let router = Router::new(Arc::new(broker.clone()))
        .route(Route::new("w", sub, sleeping(Duration::from_secs(2))).workers(3))
        .shutdown_timeout(Duration::from_secs(5))
        .flush_on_shutdown(extra.clone());
    let running = start(router);
    for i in 0..3 {
        publish(&broker, "w.job", None, &i.to_string()).await;
    }
    running.until(|r| r.in_flight == 3).await;
    let t0 = Instant::now();
    running.shutdown.cancel();
    for i in 3..5 {
        publish(&broker, "w.job", None, &i.to_string()).await;
    }
    let report = running.task.await.unwrap().unwrap();

    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(2),
        "returned as the last handler finished"
    );
    assert!(report.finished_in_time);
    let r = &report.routes[0];
    assert_eq!((r.fetched, r.succeeded, r.shutdown_nacked), (3, 3, 0));
    assert_eq!(
        extra.flushes.load(Ordering::SeqCst),
        1,
        "flushed once at the end"
    );
    let (in_flight, _, lag) = group_state(&broker, "default", "w").await;
    assert_eq!(
        (in_flight, lag),
        (0, 2),
        "the three acked, the two later ones untouched"
    );
}

/// Guards: handlers that would take a minute are dropped at the 1 s deadline and their
/// deliveries nacked at once: another consumer gets them immediately, as attempt 2.
#[tokio::test(start_paused = true)]
async fn work_past_the_deadline_is_nacked_for_redelivery() {
    let broker = Broker::in_memory().unwrap();
    let sub = Subscription::new("w.>").unwrap().group("w").unwrap();
    let router = Router::new(Arc::new(broker.clone()))
        .route(Route::new("w", sub.clone(), sleeping(Duration::from_secs(60))).workers(2))
        .shutdown_timeout(Duration::from_secs(1));
    let running = start(router);
    publish(&broker, "w.job", None, "a").await;
    publish(&broker, "w.job", None, "b").await;
    running.until(|r| r.in_flight == 2).await;
    let t0 = Instant::now();
    running.shutdown.cancel();
    let report = running.task.await.unwrap().unwrap();

    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(1),
        "returned at the deadline"
    );
    assert!(!report.finished_in_time);
    let r = &report.routes[0];
    assert_eq!((r.succeeded, r.shutdown_nacked, r.lease_lost), (0, 2, 0));
    let mut next = broker.subscribe(sub).await.unwrap();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_millis(1), next.next())
            .await
            .expect("redelivered at once, not after the 30 s lease")
            .unwrap()
            .unwrap();
        assert_eq!(d.attempt(), 2);
        d.ack().await.unwrap();
    }
}

/// Guards: with per-key order, deliveries queued behind a busy key count as in flight: they
/// are handled (in order) within the deadline rather than dropped.
#[tokio::test(start_paused = true)]
async fn queued_deliveries_behind_a_key_are_finished_too() {
    let broker = Broker::in_memory().unwrap();
    let sub = Subscription::new("k.>").unwrap().group("k").unwrap();
    let router = Router::new(Arc::new(broker.clone()))
        .route(
            Route::new("k", sub, sleeping(Duration::from_secs(1)))
                .workers(2)
                .ordered_by_key(true),
        )
        .shutdown_timeout(Duration::from_secs(10));
    let running = start(router);
    for i in 0..3 {
        publish(&broker, "k.x", Some("same"), &i.to_string()).await;
    }
    running.until(|r| r.fetched == 3).await;
    running.shutdown.cancel();
    let report = running.task.await.unwrap().unwrap();
    assert!(report.finished_in_time);
    assert_eq!(report.routes[0].succeeded, 3);
    assert_eq!(group_state(&broker, "default", "k").await, (0, 0, 0));
}

/// Guards: `run` also returns when the backend goes away (every consumer ended).
#[tokio::test(start_paused = true)]
async fn run_returns_when_the_backend_closes() {
    let broker = Broker::in_memory().unwrap();
    let sub = Subscription::new("c.>").unwrap().group("c").unwrap();
    let running = start(Router::new(Arc::new(broker.clone())).route(Route::new(
        "c",
        sub,
        sleeping(Duration::ZERO),
    )));
    tokio::task::yield_now().await;
    broker.close().await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(1), running.task)
        .await
        .expect("run returned")
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// Guards: a route that cannot subscribe, or is misconfigured, fails the run before anything
/// starts, naming the route and the setting.
#[tokio::test(start_paused = true)]
async fn a_failing_subscription_fails_the_run_with_the_route_name() {
    let broker = Broker::in_memory().unwrap();
    let good = Subscription::new("a.>").unwrap().group("a").unwrap();
    let bad = Subscription::new("b.>").unwrap().group("a").unwrap(); // group `a` consumes `a.>`
    let router = Router::new(Arc::new(broker.clone()))
        .route(Route::new("first", good, sleeping(Duration::ZERO)))
        .route(Route::new("second", bad, sleeping(Duration::ZERO)));
    let e = router
        .run(tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), squall_core::ErrorKind::Conflict);
    assert!(e.to_string().contains("route `second`"), "{e}");
    let bad_config = Router::new(Arc::new(broker)).route(
        Route::new(
            "zero",
            Subscription::new("z").unwrap(),
            sleeping(Duration::ZERO),
        )
        .workers(0),
    );
    let e = bad_config
        .run(tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("route `zero`: workers"), "{e}");
    let inconsistent = Router::new(Arc::new(Broker::in_memory().unwrap())).route(Route::new(
        "dl",
        Subscription::new("z").unwrap().max_deliveries(2),
        sleeping(Duration::ZERO),
    ));
    let e = inconsistent
        .run(tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("route `dl`: subscription.max_deliveries"),
        "{e}"
    );
}
