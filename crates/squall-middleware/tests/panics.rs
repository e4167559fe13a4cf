//! Panic recovery: a panicking handler is an attempt that failed (nacked with backoff), not a
//! dead worker or a dead runtime.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Log, ms_since, publish, start};
use squall_broker::Broker;
use squall_core::Subscription;
use squall_middleware::retry::{Backoff, RetryPolicy};
use squall_middleware::{HandlerError, Incoming, Route, Router, dlq, handler_fn};
use tokio::time::Instant;

/// Guards: message `boom` panics on its first attempt (in the future) and on its second (in
/// the synchronous part of `call`); it is retried after the 1 s and 2 s backoffs and then
/// succeeds. With one worker, the messages published after it are handled meanwhile, so the
/// worker survived every panic.
#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_retried_and_the_runtime_lives_on() {
    let broker = Broker::in_memory().unwrap();
    let t0 = Instant::now();
    let seen: Log<(String, u32, u64)> = Log::default();
    let seen2 = seen.clone();
    let handler = handler_fn(move |m: Incoming| {
        let body = String::from_utf8(m.message().payload().to_vec()).unwrap();
        seen2.push((body.clone(), m.attempt(), ms_since(t0)));
        if body == "boom" && m.attempt() == 2 {
            panic!("panicked before returning a future");
        }
        async move {
            if body == "boom" && m.attempt() == 1 {
                let v: Vec<u8> = Vec::new();
                let _ = v[3]; // index out of bounds
            }
            Ok::<_, HandlerError>(())
        }
    });
    let sub = Subscription::new("p.>").unwrap().group("p").unwrap();
    let policy = RetryPolicy::new(
        Backoff::exponential(Duration::from_secs(1), Duration::from_secs(10)).jitter(0.0),
    );
    let running = start(
        Router::new(Arc::new(broker.clone())).route(Route::new("p", sub, handler).retry(policy)),
    );
    publish(&broker, "p.x", None, "boom").await;
    publish(&broker, "p.x", None, "after-1").await;
    publish(&broker, "p.x", None, "after-2").await;
    running.until(|r| r.succeeded == 3).await;
    let report = running.stop().await;

    let r = &report.routes[0];
    assert_eq!((r.panics, r.retried, r.dead_lettered), (2, 2, 0));
    let boom: Vec<(u32, u64)> = seen
        .all()
        .into_iter()
        .filter(|(b, ..)| b == "boom")
        .map(|(_, a, t)| (a, t))
        .collect();
    assert_eq!(boom, [(1, 0), (2, 1000), (3, 3000)]);
    let others: Vec<u64> = seen
        .all()
        .into_iter()
        .filter(|(b, ..)| b != "boom")
        .map(|(.., t)| t)
        .collect();
    assert_eq!(others, [0, 0], "handled right after the first panic");
}

/// Guards: a message that always panics is dead-lettered with the panic message in its chain.
#[tokio::test(start_paused = true)]
async fn a_message_that_always_panics_is_dead_lettered_with_the_panic_message() {
    let broker = Broker::in_memory().unwrap();
    let handler = handler_fn(|_m: Incoming| async move {
        if true {
            panic!("invariant violated: negative balance");
        }
        Ok::<_, HandlerError>(())
    });
    let sub = Subscription::new("p.>").unwrap().group("p").unwrap();
    let policy = RetryPolicy::new(Backoff::constant(Duration::from_secs(1))).max_attempts(2);
    let running = start(
        Router::new(Arc::new(broker.clone())).route(Route::new("p", sub, handler).retry(policy)),
    );
    publish(&broker, "p.x", None, "x").await;
    running.until(|r| r.dead_lettered == 1).await;
    running.stop().await;
    let e = &dlq::list(&broker, "dlq.>", 1).await.unwrap()[0];
    assert_eq!(
        e.error_chain(),
        ["handler panicked: invariant violated: negative balance"]
    );
}
