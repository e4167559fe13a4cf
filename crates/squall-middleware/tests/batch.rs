//! Batch routes: batches of at most `size`, handed over when full or `max_wait` after their
//! first message; per-message results settle each message on its own.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Log, ms_since, publish, start};
use squall_broker::Broker;
use squall_core::Subscription;
use squall_middleware::retry::{Backoff, RetryPolicy};
use squall_middleware::{HandlerError, Incoming, Route, Router, batch_fn};
use tokio::time::Instant;

fn payloads(batch: &[Incoming]) -> Vec<String> {
    batch
        .iter()
        .map(|m| String::from_utf8(m.message().payload().to_vec()).unwrap())
        .collect()
}

/// Guards: size 5, max wait 200 ms. 12 messages present at once make batches 5, 5 and 2 —
/// the last one 200 ms after it started filling; then 3 messages 1 s later make one batch of 3,
/// 200 ms after the first of them arrived.
#[tokio::test(start_paused = true)]
async fn batches_are_at_most_size_and_wait_at_most_max_wait() {
    let broker = Broker::in_memory().unwrap();
    let t0 = Instant::now();
    let batches: Log<(Vec<String>, u64)> = Log::default();
    let b2 = batches.clone();
    let handler = batch_fn(move |batch| {
        b2.push((payloads(&batch), ms_since(t0)));
        async { Ok::<_, HandlerError>(()) }
    });
    let sub = Subscription::new("b.>").unwrap().group("b").unwrap();
    for i in 0..12 {
        publish(&broker, "b.x", None, &i.to_string()).await;
    }
    let running = start(Router::new(Arc::new(broker.clone())).route(Route::batch(
        "b",
        sub,
        5,
        Duration::from_millis(200),
        handler,
    )));
    running.until(|r| r.succeeded == 12).await;
    tokio::time::sleep_until(t0 + Duration::from_secs(1)).await;
    for i in 12..15 {
        publish(&broker, "b.x", None, &i.to_string()).await;
    }
    running.until(|r| r.succeeded == 15).await;
    running.stop().await;

    let got = batches.all();
    let sizes: Vec<usize> = got.iter().map(|(b, _)| b.len()).collect();
    assert_eq!(sizes, [5, 5, 2, 3]);
    let times: Vec<u64> = got.iter().map(|(_, t)| *t).collect();
    assert_eq!(
        times,
        [0, 0, 200, 1200],
        "full batches at once, partial ones after max wait"
    );
    let all: Vec<String> = got.into_iter().flat_map(|(b, _)| b).collect();
    let expected: Vec<String> = (0..15).map(|i| i.to_string()).collect();
    assert_eq!(all, expected, "every message once, in order");
}

/// Guards per-message results: the handler fails message `2` of its batch only; that one is
/// retried (alone, as a batch of 1) and the others are acked once.
#[tokio::test(start_paused = true)]
async fn per_message_results_settle_each_message() {
    let broker = Broker::in_memory().unwrap();
    let batches: Log<Vec<String>> = Log::default();
    let b2 = batches.clone();
    let handler = batch_fn(move |batch| {
        b2.push(payloads(&batch));
        let results: Vec<Result<(), HandlerError>> = batch
            .iter()
            .map(|m| {
                if m.message().payload() == "2" && m.attempt() == 1 {
                    Err(HandlerError::msg("row 2 locked"))
                } else {
                    Ok(())
                }
            })
            .collect();
        async move { Ok::<_, HandlerError>(results) }
    });
    let sub = Subscription::new("b.>").unwrap().group("b").unwrap();
    for i in 0..4 {
        publish(&broker, "b.x", None, &i.to_string()).await;
    }
    let policy = RetryPolicy::new(Backoff::constant(Duration::from_secs(1)));
    let running = start(
        Router::new(Arc::new(broker.clone()))
            .route(Route::batch("b", sub, 10, Duration::from_millis(50), handler).retry(policy)),
    );
    running.until(|r| r.succeeded == 4).await;
    let report = running.stop().await;
    assert_eq!(batches.all(), [vec!["0", "1", "2", "3"], vec!["2"]]);
    assert_eq!(report.routes[0].retried, 1);
}

/// Guards: a batch handler error fails every message of the batch, each retried.
#[tokio::test(start_paused = true)]
async fn a_failed_batch_retries_all_its_messages() {
    let broker = Broker::in_memory().unwrap();
    let calls: Log<Vec<String>> = Log::default();
    let c2 = calls.clone();
    let handler = batch_fn(move |batch| {
        let first = batch[0].attempt() == 1;
        c2.push(payloads(&batch));
        async move {
            if first {
                return Err(HandlerError::msg("bulk insert failed"));
            }
            Ok::<_, HandlerError>(())
        }
    });
    let sub = Subscription::new("b.>").unwrap().group("b").unwrap();
    for i in 0..3 {
        publish(&broker, "b.x", None, &i.to_string()).await;
    }
    let policy = RetryPolicy::new(Backoff::constant(Duration::from_secs(1)));
    let running = start(
        Router::new(Arc::new(broker.clone()))
            .route(Route::batch("b", sub, 3, Duration::from_millis(50), handler).retry(policy)),
    );
    running.until(|r| r.succeeded == 3).await;
    let report = running.stop().await;
    assert_eq!(report.routes[0].retried, 3);
    assert_eq!(calls.all(), [vec!["0", "1", "2"], vec!["0", "1", "2"]]);
}
