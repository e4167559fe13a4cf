//! Pub/sub with wildcards: the email, inventory and analytics services each get the order
//! events they subscribed to.
//!
//! The articles' diagram: the order service publishes `order.created` (and other `order.*`
//! events) without knowing who listens; the email service subscribes to `order.*`, inventory to
//! `order.created` only, analytics to `order.*`. Here each service is a group of its own (its
//! replicas would share the group and compete, while every service gets its own copy), so a
//! service that is briefly down catches up instead of missing events, unlike a plain fan-out
//! subscription. `*` matches one subject token, `>` the rest.
//!
//! Everything runs on the embedded broker (fsync log in a temp directory) with one router and
//! three routes; it ends once each service handled what it should.
//!
//! Run: `cargo run -p squall --example fanout_subscribers`

use std::sync::{Arc, Mutex};
use std::time::Duration;

use squall::broker::Broker;
use squall::broker::storage::{LogConfig, LogStorage, SyncMode};
use squall::prelude::*;
use squall_middleware::{HandlerError, Incoming, Route, Router, handler_fn};
use tokio_util::sync::CancellationToken;

/// What the services saw, as `(service, subject, payload)`.
type Seen = Arc<Mutex<Vec<(&'static str, String, String)>>>;

/// A service's handler: records what it got (a real one would send the email, reserve stock...).
fn service(
    name: &'static str,
    seen: Seen,
) -> impl tower::Service<Incoming, Response = (), Error = HandlerError, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    handler_fn(move |m: Incoming| {
        let seen = seen.clone();
        async move {
            let msg = m.message();
            let body = String::from_utf8_lossy(msg.payload()).into_owned();
            println!("{name:<9} got {}: {body}", msg.subject());
            seen.lock()
                .unwrap()
                .push((name, msg.subject().to_string(), body));
            Ok::<_, HandlerError>(())
        }
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = LogConfig {
        sync: SyncMode::Fsync,
        ..LogConfig::default()
    };
    let broker = Broker::builder()
        .storage(LogStorage::open(dir.path(), config)?)
        .open()?;

    let seen: Seen = Arc::default();
    let subscriptions = [
        ("email", "order.*"),
        ("inventory", "order.created"),
        ("analytics", "order.*"),
    ];
    let mut router = Router::new(Arc::new(broker.clone()));
    for (name, pattern) in subscriptions {
        let sub = Subscription::new(pattern)?.group(name)?.durable(true);
        router = router.route(Route::new(name, sub, service(name, seen.clone())));
    }
    let stats = router.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(router.run(shutdown.clone()));

    // The order service publishes; it knows no subscriber.
    let events = [
        ("order.created", "order 1"),
        ("order.created", "order 2"),
        ("order.paid", "order 1"),
        ("order.created", "order 3"),
        ("order.paid", "order 2"),
        ("order.cancelled", "order 3"),
    ];
    for (subject, body) in events {
        broker
            .publish(Message::builder(subject)?.payload(body).build())
            .await?;
    }
    let created = events.iter().filter(|(s, _)| *s == "order.created").count() as u64;
    let all = events.len() as u64;
    let expected = [all, created, all]; // email, inventory, analytics
    tokio::time::timeout(
        Duration::from_secs(20),
        stats.wait_until(|r| r.iter().zip(expected).all(|(r, n)| r.succeeded == n)),
    )
    .await?;
    shutdown.cancel();
    running.await??;
    broker.close().await?;

    let seen = seen.lock().unwrap().clone();
    let count = |name: &str| seen.iter().filter(|(n, _, _)| *n == name).count() as u64;
    if [count("email"), count("inventory"), count("analytics")] != expected
        || seen
            .iter()
            .any(|(n, s, _)| *n == "inventory" && s != "order.created")
    {
        return Err(format!("unexpected deliveries: {seen:?}").into());
    }
    println!(
        "fanout_subscribers: {all} events; email {}, inventory {}, analytics {}",
        count("email"),
        count("inventory"),
        count("analytics")
    );
    Ok(())
}
