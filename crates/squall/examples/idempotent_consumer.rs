//! The idempotent consumer: payment notifications delivered more than once are applied once.
//!
//! The articles' `IdempotentConsumer` checks a processed-message store, skips what was processed
//! and marks after success. Its check-then-mark races when two copies arrive at once; here
//! `IdempotencyLayer` claims the key before the handler runs, marks it done after success
//! (releases it on failure, so a retry runs), and defers a copy that arrives while another
//! worker holds the claim. The store is the in-memory one (TTL, bounded size); Redis and
//! PostgreSQL stores share the interface.
//!
//! The broker already drops a republished message with the same id (its dedup window), so the
//! duplicates here are the kind only the consumer can catch: a payment provider retrying its
//! notification, each retry a new message with the same `payment-id` header, which is the key.
//! Four workers handle them concurrently on the embedded broker (fsync log in a temp directory).
//!
//! Run: `cargo run -p squall --example idempotent_consumer`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use squall::broker::Broker;
use squall::broker::storage::{LogConfig, LogStorage, SyncMode};
use squall::prelude::*;
use squall_middleware::idempotency::{IdempotencyLayer, MemoryStore};
use squall_middleware::{HandlerError, Incoming, Route, Router, handler_fn};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

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

    // Applying a payment credits the account; doing it twice would credit it twice.
    let applied: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let ledger = applied.clone();
    let apply = handler_fn(move |m: Incoming| {
        let ledger = ledger.clone();
        async move {
            let payment = m.message().headers().get("payment-id").unwrap_or("?");
            tokio::time::sleep(Duration::from_millis(20)).await; // the database write
            *ledger
                .lock()
                .unwrap()
                .entry(payment.to_string())
                .or_default() += 1;
            println!("applied {payment} (message {})", m.message().id());
            Ok::<_, HandlerError>(())
        }
    });
    let store = MemoryStore::new(Duration::from_secs(24 * 3600), 100_000);
    let handler = ServiceBuilder::new()
        .layer(
            IdempotencyLayer::new(store)
                .in_progress_delay(Duration::from_millis(50))
                .key(|m: &Incoming| {
                    let payment = m.message().headers().get("payment-id");
                    format!("payments/{}", payment.unwrap_or(m.origin_id()))
                }),
        )
        .service(apply);
    let sub = Subscription::new("payments.received")?.group("ledger")?;
    let router = Router::new(Arc::new(broker.clone()))
        .route(Route::new("apply-payment", sub, handler).workers(4));
    let stats = router.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(router.run(shutdown.clone()));

    // Five payments; the provider sends p-2 twice and p-4 three times.
    let notifications = ["p-1", "p-2", "p-2", "p-3", "p-4", "p-4", "p-5", "p-4"];
    for payment in notifications {
        let msg = Message::builder("payments.received")?
            .header("payment-id", payment)?
            .payload(format!(r#"{{"payment":"{payment}","cents":1000}}"#))
            .build();
        broker.publish(msg).await?;
    }
    let total = notifications.len() as u64;
    tokio::time::timeout(
        Duration::from_secs(20),
        stats.wait_until(|r| r[0].succeeded == total),
    )
    .await?;
    shutdown.cancel();
    let report = running.await??;
    broker.close().await?;

    let applied = applied.lock().unwrap().clone();
    let distinct = notifications
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if applied.len() != distinct || applied.values().any(|&n| n != 1) {
        return Err(format!("not once each: {applied:?}").into());
    }
    let r = report.route("apply-payment").expect("the route");
    println!(
        "deferred {} copies that arrived while the first was being applied",
        r.deferred
    );
    println!(
        "idempotent_consumer: {total} deliveries, {} payments applied once each, {} duplicates skipped",
        applied.len(),
        total - applied.len() as u64
    );
    Ok(())
}
