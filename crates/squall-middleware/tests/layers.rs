//! Layers composed in a router: correlation propagation into published messages, tower's
//! timeout classified as retryable, tower's rate limit behind a buffer, lease extension.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Log, ms_since, publish, start};
use squall_broker::Broker;
use squall_core::{Message, Publisher, Subscriber, Subscription, headers};
use squall_middleware::correlation::{ContextPublisher, CorrelationLayer};
use squall_middleware::retry::{Backoff, RetryPolicy};
use squall_middleware::timeout::TimeoutLayer;
use squall_middleware::{HandlerError, Incoming, Route, Router, dlq, handler_fn};
use tokio::time::Instant;
use tower::ServiceBuilder;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Guards: a handler publishing through a `ContextPublisher` stamps the incoming message's
/// correlation id and traceparent on what it publishes; a message without a correlation id
/// passes its own id on.
#[tokio::test(start_paused = true)]
async fn correlation_id_and_traceparent_follow_into_published_messages() {
    let broker = Broker::in_memory().unwrap();
    let mut shipped = broker
        .subscribe(Subscription::new("shipping.>").unwrap())
        .await
        .unwrap();
    let out: Arc<dyn Publisher> = Arc::new(broker.clone());
    let out = ContextPublisher::from_arc(out);
    let handler = ServiceBuilder::new()
        .layer(CorrelationLayer::new())
        .service(handler_fn(move |m: Incoming| {
            let out = out.clone();
            async move {
                let next = Message::builder("shipping.requested")?
                    .payload(m.message().payload().clone())
                    .build();
                out.publish(next).await?;
                Ok::<_, HandlerError>(())
            }
        }));
    let sub = Subscription::new("orders.>").unwrap().group("o").unwrap();
    let running = start(Router::new(Arc::new(broker.clone())).route(Route::new("o", sub, handler)));
    let traced = Message::builder("orders.placed")
        .unwrap()
        .header(headers::CORRELATION_ID, "checkout-42")
        .unwrap()
        .header(headers::TRACEPARENT, TRACEPARENT)
        .unwrap()
        .payload("a")
        .build();
    broker.publish(traced).await.unwrap();
    let bare = Message::builder("orders.placed")
        .unwrap()
        .id("order-b")
        .unwrap()
        .payload("b")
        .build();
    broker.publish(bare).await.unwrap();
    running.until(|r| r.succeeded == 2).await;
    running.stop().await;

    let a = shipped.next().await.unwrap().unwrap();
    assert_eq!(a.message().payload(), "a");
    assert_eq!(a.message().correlation_id(), Some("checkout-42"));
    assert_eq!(
        a.message().headers().get(headers::TRACEPARENT),
        Some(TRACEPARENT)
    );
    let b = shipped.next().await.unwrap().unwrap();
    assert_eq!(b.message().correlation_id(), Some("order-b"));
    assert_eq!(b.message().headers().get(headers::TRACEPARENT), None);
}

/// Guards: tower's timeout fails the attempt as retryable; after the last attempt the dead
/// letter's chain starts with "handler timed out".
#[tokio::test(start_paused = true)]
async fn a_timed_out_handler_is_retried_then_dead_lettered() {
    let broker = Broker::in_memory().unwrap();
    let t0 = Instant::now();
    let starts: Log<u64> = Log::default();
    let s2 = starts.clone();
    let handler = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(handler_fn(move |_m: Incoming| {
            s2.push(ms_since(t0));
            async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, HandlerError>(())
            }
        }));
    let policy = RetryPolicy::new(Backoff::constant(Duration::from_secs(1))).max_attempts(2);
    let sub = Subscription::new("t.>").unwrap().group("t").unwrap();
    let running = start(
        Router::new(Arc::new(broker.clone())).route(Route::new("t", sub, handler).retry(policy)),
    );
    publish(&broker, "t.x", None, "x").await;
    running.until(|r| r.dead_lettered == 1).await;
    running.stop().await;
    assert_eq!(starts.all(), [0, 3000], "2 s timeout, then 1 s backoff");
    let e = &dlq::list(&broker, "dlq.>", 1).await.unwrap()[0];
    assert_eq!(e.error_chain(), ["handler timed out", "request timed out"]);
}

/// Guards composition with tower's rate limit (not Clone, so behind a buffer): 4 workers, at
/// most 2 calls per second.
#[tokio::test(start_paused = true)]
async fn tower_rate_limit_behind_a_buffer_paces_the_handler() {
    let broker = Broker::in_memory().unwrap();
    let t0 = Instant::now();
    let calls: Log<u64> = Log::default();
    let c2 = calls.clone();
    let handler = ServiceBuilder::new()
        .buffer(16)
        .rate_limit(2, Duration::from_secs(1))
        .service(handler_fn(move |_m: Incoming| {
            c2.push(ms_since(t0));
            async { Ok::<_, HandlerError>(()) }
        }));
    let sub = Subscription::new("r.>").unwrap().group("r").unwrap();
    let running = start(
        Router::new(Arc::new(broker.clone())).route(Route::new("r", sub, handler).workers(4)),
    );
    for i in 0..6 {
        publish(&broker, "r.x", None, &i.to_string()).await;
    }
    running.until(|r| r.succeeded == 6).await;
    running.stop().await;
    assert_eq!(calls.all(), [0, 0, 1000, 1000, 2000, 2000]);
}

/// Guards `extend_leases`: a 5 s handler on a 1 s lease keeps its message (no redelivery, the
/// ack is accepted) because the runtime extends the lease every 500 ms.
#[tokio::test(start_paused = true)]
async fn extend_leases_keeps_a_slow_handlers_message() {
    let broker = Broker::in_memory().unwrap();
    let calls: Log<u32> = Log::default();
    let c2 = calls.clone();
    let handler = handler_fn(move |m: Incoming| {
        c2.push(m.attempt());
        async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, HandlerError>(())
        }
    });
    let sub = Subscription::new("s.>")
        .unwrap()
        .group("s")
        .unwrap()
        .ack_wait(Duration::from_secs(1));
    let running = start(
        Router::new(Arc::new(broker.clone()))
            .route(Route::new("s", sub, handler).workers(2).extend_leases(true)),
    );
    publish(&broker, "s.x", None, "x").await;
    running.until(|r| r.succeeded == 1).await;
    let report = running.stop().await;
    assert_eq!(calls.all(), [1], "never redelivered");
    assert_eq!(report.routes[0].lease_lost, 0);
    let g = &broker.stream_stats("default").await.unwrap().groups[0];
    assert_eq!(g.counters.lease_expired, 0);
    assert_eq!(g.counters.acked, 1);
}
