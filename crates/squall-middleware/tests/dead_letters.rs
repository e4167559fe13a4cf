//! Poison messages reach the dead-letter subject exactly once with an envelope saying why, on a
//! backend with native dead letters and on one without; `dlq` lists, shows and redrives them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Limited, Log, publish, start};
use squall_broker::Broker;
use squall_core::{Backend, DeadLetterReason, Message, Publisher, Subscription, headers};
use squall_middleware::retry::{Backoff, RetryPolicy};
use squall_middleware::{HandlerError, Incoming, Route, Router, dlq, handler_fn, permanent};

/// A handler that fails with a two-level error chain while `failing` is set.
fn poison_handler(
    failing: Arc<AtomicBool>,
    seen: Log<(String, u32)>,
) -> impl tower::Service<Incoming, Response = (), Error = HandlerError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    handler_fn(move |m: Incoming| {
        let (failing, seen) = (failing.clone(), seen.clone());
        async move {
            seen.push((m.message().id().to_string(), m.attempt()));
            if failing.load(Ordering::SeqCst) {
                let cause = std::io::Error::other("connection refused");
                return Err(HandlerError::from(cause).context("charging card"));
            }
            Ok(())
        }
    })
}

fn three_attempts() -> RetryPolicy {
    RetryPolicy::new(Backoff::constant(Duration::from_secs(2))).max_attempts(3)
}

/// Guards: after 3 failed attempts the message is dead-lettered once (native path: reject),
/// the envelope names the handler, the error chain and the three attempts; `dlq::list` and
/// `dlq::show` find it; `dlq::redrive` publishes it back and the (now healthy) handler gets it.
#[tokio::test(start_paused = true)]
async fn poison_reaches_the_dlq_once_with_its_envelope_and_redrive_brings_it_back() {
    let broker = Broker::in_memory().unwrap();
    let failing = Arc::new(AtomicBool::new(true));
    let seen = Log::default();
    let sub = Subscription::new("orders.>")
        .unwrap()
        .group("billing")
        .unwrap();
    let route = Route::new(
        "billing",
        sub,
        poison_handler(failing.clone(), seen.clone()),
    )
    .handler_name("charge-card")
    .workers(2)
    .retry(three_attempts());
    let running = start(Router::new(Arc::new(broker.clone())).route(route));
    let msg = Message::builder("orders.placed")
        .unwrap()
        .id("order-1")
        .unwrap()
        .payload("{}")
        .build();
    broker.publish(msg).await.unwrap();
    running.until(|r| r.dead_lettered == 1).await;

    let entries = dlq::list(&broker, "dlq.>", 10).await.unwrap();
    assert_eq!(entries.len(), 1, "exactly one dead letter: {entries:?}");
    let e = &entries[0];
    let env = e.envelope.as_ref().expect("an envelope");
    assert_eq!(env.reason, DeadLetterReason::Rejected);
    assert_eq!(env.origin_id, "order-1");
    assert_eq!(env.origin_subject.as_str(), "orders.placed");
    assert_eq!(env.group.as_deref(), Some("billing"));
    assert_eq!(
        env.attempts.len(),
        3,
        "three attempts recorded by the broker"
    );
    assert!(
        env.error
            .starts_with("handler `charge-card` gave up after 3 attempts"),
        "{}",
        env.error
    );
    assert_eq!(e.handler().as_deref(), Some("charge-card"));
    assert_eq!(e.error_chain(), ["charging card", "connection refused"]);
    assert_eq!(e.message.subject().as_str(), "dlq.orders.placed");
    let shown = dlq::show(&broker, "dlq.>", "order-1").await.unwrap();
    assert_eq!(
        shown.map(|s| s.message.id().clone()),
        Some(e.message.id().clone())
    );
    assert_eq!(
        dlq::list(&broker, "dlq.>", 10).await.unwrap().len(),
        1,
        "looking does not consume"
    );

    failing.store(false, Ordering::SeqCst);
    let report = dlq::redrive(&broker, "dlq.>", None, None, false)
        .await
        .unwrap();
    assert_eq!(report.redriven.len(), 1);
    assert_eq!(report.redriven[0].origin_id, "order-1");
    running.until(|r| r.succeeded == 1).await;
    let report = running.stop().await;
    assert_eq!(report.routes[0].dead_lettered, 1);
    let ids: Vec<(String, u32)> = seen.all();
    assert_eq!(
        ids.len(),
        4,
        "3 failed attempts and the redriven one: {ids:?}"
    );
    assert_eq!(ids[3].1, 1, "a redriven message starts again at attempt 1");
    assert_ne!(ids[3].0, "order-1", "with a fresh id");
    assert!(
        dlq::list(&broker, "dlq.>", 10).await.unwrap().is_empty(),
        "redriven dead letters are gone from the list"
    );
    assert_eq!(
        broker.stream_stats("dlq").await.unwrap().messages,
        1,
        "and were published once"
    );
}

/// Guards the emulated path: on a backend without native dead letters the runtime publishes
/// the envelope (structured handler, chain, attempt header) and acks the original — once.
#[tokio::test(start_paused = true)]
async fn without_native_dead_letters_the_runtime_publishes_the_envelope_once() {
    let broker = Broker::in_memory().unwrap();
    let backend = Arc::new(Limited::without_dead_letters(broker.clone()));
    assert!(!backend.capabilities().dead_letter.available());
    let seen = Log::default();
    let sub = Subscription::new("orders.>")
        .unwrap()
        .group("billing")
        .unwrap();
    let route = Route::new(
        "billing",
        sub,
        poison_handler(Arc::new(AtomicBool::new(true)), seen.clone()),
    )
    .retry(three_attempts());
    let running = start(Router::new(backend.clone()).route(route));
    publish(&*backend, "orders.placed", Some("c-1"), "{}").await;
    running.until(|r| r.dead_lettered == 1).await;
    running.stop().await;

    assert_eq!(seen.len(), 3);
    let entries = dlq::list(&broker, "dlq.>", 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    let env = entries[0].envelope.clone().unwrap();
    assert_eq!(env.handler.as_deref(), Some("billing"));
    assert_eq!(env.error_chain, ["charging card", "connection refused"]);
    assert_eq!(env.origin_sequence, 1);
    assert_eq!(
        entries[0].message.headers().get(headers::ATTEMPT),
        Some("3")
    );
    assert_eq!(
        entries[0].message.key(),
        Some("c-1"),
        "the key travels with it"
    );
    let (in_flight, waiting, lag) = common::group_state(&broker, "default", "billing").await;
    assert_eq!(
        (in_flight, waiting, lag),
        (0, 0, 0),
        "the original was acked"
    );
}

/// Guards: a permanent error skips the retries; the verdict says so.
#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_dead_lettered_on_the_first_attempt() {
    let broker = Broker::in_memory().unwrap();
    let calls = Log::default();
    let calls2 = calls.clone();
    let handler = handler_fn(move |m: Incoming| {
        calls2.push(m.attempt());
        async { Err::<(), _>(permanent("unknown currency XYZ")) }
    });
    let sub = Subscription::new("fx.>").unwrap().group("fx").unwrap();
    let running = start(
        Router::new(Arc::new(broker.clone()))
            .route(Route::new("fx", sub, handler).retry(three_attempts())),
    );
    publish(&broker, "fx.convert", None, "x").await;
    running.until(|r| r.dead_lettered == 1).await;
    running.stop().await;
    assert_eq!(calls.all(), [1]);
    let e = &dlq::list(&broker, "dlq.>", 10).await.unwrap()[0];
    assert!(
        e.envelope
            .as_ref()
            .unwrap()
            .error
            .starts_with("handler `fx` failed permanently on attempt 1")
    );
    assert_eq!(e.error_chain(), ["unknown currency XYZ"]);
}

/// Guards `redrive`'s options: a dry run changes nothing, `to` redirects, `rate` paces.
#[tokio::test(start_paused = true)]
async fn redrive_dry_run_target_and_rate() {
    let broker = Broker::in_memory().unwrap();
    let mut c = squall_core::Subscriber::subscribe(
        &broker,
        Subscription::new("jobs.>").unwrap().group("w").unwrap(),
    )
    .await
    .unwrap();
    for i in 0..5 {
        publish(&broker, "jobs.run", None, &i.to_string()).await;
        c.next()
            .await
            .unwrap()
            .unwrap()
            .reject("bad input")
            .await
            .unwrap();
    }
    let dry = dlq::redrive(&broker, "dlq.jobs.>", None, None, true)
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.redriven.len(), 5);
    assert!(
        dry.redriven
            .iter()
            .all(|r| r.subject.as_str() == "jobs.run" && r.new_id.is_empty())
    );
    assert_eq!(
        dlq::list(&broker, "dlq.jobs.>", 10).await.unwrap().len(),
        5,
        "dry run kept them"
    );

    let mut retry_sub = squall_core::Subscriber::subscribe(
        &broker,
        Subscription::new("retry.>").unwrap().group("r").unwrap(),
    )
    .await
    .unwrap();
    let to = squall_core::Subject::new("retry.jobs").unwrap();
    let start = tokio::time::Instant::now();
    let report = dlq::redrive(&broker, "dlq.jobs.>", Some(to), Some(2), false)
        .await
        .unwrap();
    let took = start.elapsed() - dlq::SCAN_IDLE;
    assert_eq!(report.redriven.len(), 5);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
        "5 at 2/s: the first at once, the fifth after 2 s; took {took:?}"
    );
    let mut payloads = Vec::new();
    for _ in 0..5 {
        let d = retry_sub.next().await.unwrap().unwrap();
        assert_eq!(d.message().headers().get(headers::DEAD_LETTER), None);
        payloads.push(String::from_utf8(d.message().payload().to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(payloads, ["0", "1", "2", "3", "4"]);
    assert!(
        dlq::list(&broker, "dlq.jobs.>", 10)
            .await
            .unwrap()
            .is_empty()
    );
}
