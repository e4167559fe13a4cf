//! Retry through the router: the backoff schedule is kept, a failing key does not hold up the
//! others, and on a backend without delayed nacks retries are republished with `squall-attempt`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Limited, Log, ms_since, publish, start};
use squall_broker::Broker;
use squall_core::{Publisher, Subscription, headers};
use squall_middleware::retry::{Backoff, RetryPolicy};
use squall_middleware::{HandlerError, Incoming, Route, Router, handler_fn};
use tokio::time::Instant;

fn policy() -> RetryPolicy {
    RetryPolicy::new(
        Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)).jitter(0.0),
    )
    .max_attempts(4)
}

/// Guards: retry is a nack with the backoff delay, not a sleep in the worker. With per-key
/// ordering and 2 workers, key `bad` fails 4 times at 0, 1, 3 and 7 s (backoff 1, 2, 4 s) and
/// is dead-lettered, while 30 messages of other keys published every 250 ms are each handled
/// the moment they arrive.
#[tokio::test(start_paused = true)]
async fn backoff_follows_the_schedule_without_blocking_other_keys() {
    let broker = Broker::in_memory().unwrap();
    let t0 = Instant::now();
    let bad: Log<(u32, u64)> = Log::default(); // (attempt, ms)
    let good: Log<(String, u64, u64)> = Log::default(); // (key, published ms, handled ms)
    let (bad2, good2) = (bad.clone(), good.clone());
    let handler = handler_fn(move |m: Incoming| {
        let (bad, good) = (bad2.clone(), good2.clone());
        async move {
            let key = m.message().key().unwrap_or_default().to_string();
            if key == "bad" {
                bad.push((m.attempt(), ms_since(t0)));
                return Err(HandlerError::msg("payment provider down"));
            }
            let published: u64 = std::str::from_utf8(m.message().payload())
                .unwrap()
                .parse()
                .unwrap();
            good.push((key, published, ms_since(t0)));
            Ok(())
        }
    });
    let sub = Subscription::new("pay.>")
        .unwrap()
        .group("payments")
        .unwrap();
    let router = Router::new(Arc::new(broker.clone())).route(
        Route::new("payments", sub, handler)
            .workers(2)
            .ordered_by_key(true)
            .retry(policy()),
    );
    let running = start(router);

    publish(&broker, "pay.charge", Some("bad"), "0").await;
    for i in 0..30u64 {
        let at = t0 + Duration::from_millis(250 * (i + 1));
        tokio::time::sleep_until(at).await;
        let key = format!("k{}", i % 3);
        publish(&broker, "pay.charge", Some(&key), &ms_since(t0).to_string()).await;
    }
    running
        .until(|r| r.dead_lettered == 1 && r.succeeded == 30)
        .await;
    let report = running.stop().await;

    let attempts = bad.all();
    assert_eq!(
        attempts,
        [(1, 0), (2, 1000), (3, 3000), (4, 7000)],
        "attempts of the failing key at the backoff schedule"
    );
    for (key, published, handled) in good.all() {
        assert!(
            handled - published <= 5,
            "{key} published at {published} ms waited until {handled} ms"
        );
    }
    let r = report.route("payments").unwrap();
    assert_eq!((r.retried, r.dead_lettered, r.failed), (3, 1, 4));
    let dlq = broker.stream_stats("dlq").await.unwrap();
    assert_eq!(dlq.messages, 1, "dead-lettered once");
}

/// Guards the republish path: a backend that cannot nack with a delay gets a delayed copy
/// carrying the next attempt in `squall-attempt` and the original id in `squall-origin-id`;
/// the handler sees attempts 1, 2, 3 at the backoff times and the message succeeds.
#[tokio::test(start_paused = true)]
async fn without_delayed_nacks_retries_are_republished_with_the_attempt_header() {
    let broker = Broker::in_memory().unwrap();
    let backend = Arc::new(Limited::without_delayed_nacks(broker.clone()));
    let t0 = Instant::now();
    let seen: Log<(u32, Option<String>, Option<String>, u64)> = Log::default();
    let seen2 = seen.clone();
    let handler = handler_fn(move |m: Incoming| {
        let seen = seen2.clone();
        async move {
            let h = m.message().headers();
            seen.push((
                m.attempt(),
                h.get(headers::ATTEMPT).map(str::to_string),
                h.get("squall-origin-id").map(str::to_string),
                ms_since(t0),
            ));
            if m.attempt() < 3 {
                return Err(HandlerError::msg("not yet"));
            }
            Ok(())
        }
    });
    let sub = Subscription::new("jobs.>").unwrap().group("jobs").unwrap();
    let router =
        Router::new(backend.clone()).route(Route::new("jobs", sub, handler).retry(policy()));
    let running = start(router);
    let msg = squall_core::Message::builder("jobs.x")
        .unwrap()
        .id("job-1")
        .unwrap()
        .build();
    backend.publish(msg).await.unwrap();
    running.until(|r| r.succeeded == 1).await;
    let report = running.stop().await;

    assert_eq!(
        seen.all(),
        [
            (1, None, None, 0),
            (2, Some("2".into()), Some("job-1".into()), 1000),
            (3, Some("3".into()), Some("job-1".into()), 3000),
        ]
    );
    assert_eq!(report.routes[0].retried, 2);
    let (in_flight, waiting, lag) = common::group_state(&broker, "default", "jobs").await;
    assert_eq!(
        (in_flight, waiting, lag),
        (0, 0, 0),
        "original and copies all acked"
    );
}

/// Guards `max_elapsed`: a message is dead-lettered once the next attempt would start more
/// than the limit after publication, even with attempts left.
#[tokio::test(start_paused = true)]
async fn max_elapsed_gives_up_before_max_attempts() {
    let broker = Broker::in_memory().unwrap();
    let calls: Log<u64> = Log::default();
    let t0 = Instant::now();
    let calls2 = calls.clone();
    let handler = handler_fn(move |_m: Incoming| {
        calls2.push(ms_since(t0));
        async { Err::<(), _>(HandlerError::msg("down")) }
    });
    let policy = policy()
        .max_attempts(100)
        .max_elapsed(Duration::from_secs(5));
    let sub = Subscription::new("e.>").unwrap().group("e").unwrap();
    let running = start(
        Router::new(Arc::new(broker.clone())).route(Route::new("e", sub, handler).retry(policy)),
    );
    publish(&broker, "e.1", None, "x").await;
    running.until(|r| r.dead_lettered == 1).await;
    running.stop().await;
    // Attempts at 0, 1, 3 s; the next would be at 7 s > 5 s.
    assert_eq!(calls.all(), [0, 1000, 3000]);
}
