//! Dead letters: retry with backoff, give up into the dead-letter queue, inspect, fix, redrive.
//!
//! The articles' `SubscribeWithRetry` counts retries in a header and, past the maximum, nacks
//! without requeue so RabbitMQ dead-letters the message; their DLQ processor inspects failed
//! messages (id, body, error, original queue, retries) and reprocesses them. Here:
//!
//! - the inventory handler fails while its downstream service is down; the consumer runtime
//!   retries each order 3 times with exponential backoff (a nack with a delay, so other orders
//!   are not blocked), then dead-letters it to `dlq.orders.placed` with an envelope: the error
//!   chain, the handler, the origin subject and group, and when each attempt started;
//! - `squall_middleware::dlq::list` and `show` inspect the dead letters without consuming them;
//! - once the service is back, a dry run says what would happen, and `redrive` publishes each
//!   dead letter back to its origin subject (rate-limited) and removes it from the dead-letter
//!   queue only after the publish was confirmed.
//!
//! The same operations are `squall dlq ls | show | redrive` against a `squall serve`. Runs on
//! the embedded broker (fsync log in a temp directory).
//!
//! Run: `cargo run -p squall --example dlq_redrive`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use squall::broker::Broker;
use squall::broker::storage::{LogConfig, LogStorage, SyncMode};
use squall::prelude::*;
use squall_middleware::retry::{Backoff, RetryPolicy};
use squall_middleware::{HandlerError, Incoming, Route, Router, dlq, handler_fn};
use tokio_util::sync::CancellationToken;

const ORDERS: u64 = 2;

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

    let inventory_up = Arc::new(AtomicBool::new(false));
    let up = inventory_up.clone();
    let reserve = handler_fn(move |m: Incoming| {
        let up = up.clone();
        async move {
            // A redriven copy has a fresh id and names its origin in `squall-redriven-from`.
            let msg = m.message();
            let order = match msg.headers().get("squall-redriven-from") {
                Some(origin) => format!("{origin} (redriven as {})", msg.id()),
                None => msg.id().to_string(),
            };
            if !up.load(Ordering::SeqCst) {
                println!("reserve {order}: attempt {} failed", m.attempt());
                let cause = std::io::Error::other("inventory service unavailable");
                return Err(HandlerError::from(cause).context("reserving stock"));
            }
            println!("reserve {order}: done (attempt {})", m.attempt());
            Ok(())
        }
    });
    let retry = RetryPolicy::new(Backoff::exponential(
        Duration::from_millis(20),
        Duration::from_millis(200),
    ))
    .max_attempts(3);
    let sub = Subscription::new("orders.placed")?.group("inventory")?;
    let route = Route::new("inventory", sub, reserve)
        .handler_name("reserve-stock")
        .retry(retry);
    let router = Router::new(Arc::new(broker.clone())).route(route);
    let stats = router.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(router.run(shutdown.clone()));

    for n in 1..=ORDERS {
        let msg = Message::builder("orders.placed")?
            .id(format!("order-{n}"))?
            .payload(format!(r#"{{"order":{n},"sku":"kettle"}}"#))
            .build();
        broker.publish(msg).await?;
    }
    let wait = Duration::from_secs(20);
    tokio::time::timeout(wait, stats.wait_until(|r| r[0].dead_lettered == ORDERS)).await?;

    // Inspect.
    let entries = dlq::list(&broker, "dlq.orders.>", 100).await?;
    println!("dead letters on dlq.orders.>: {}", entries.len());
    for e in &entries {
        let env = e
            .envelope
            .as_ref()
            .ok_or("a dead letter without envelope")?;
        println!(
            "  {}  from {} (group {}), {} attempts: {}",
            e.message.id(),
            env.origin_subject,
            env.group.as_deref().unwrap_or("-"),
            env.attempts.len(),
            e.error_chain().join(": ")
        );
    }
    let shown = dlq::show(&broker, "dlq.orders.>", "order-1")
        .await?
        .ok_or("order-1 is not in the dead-letter queue")?;
    let env = shown.envelope.as_ref().ok_or("no envelope")?;
    println!(
        "order-1: handler {}, payload {}",
        shown.handler().unwrap_or_default(),
        String::from_utf8_lossy(shown.message.payload())
    );
    let first = env
        .attempts
        .first()
        .copied()
        .unwrap_or(env.dead_lettered_at);
    for (i, t) in env.attempts.iter().enumerate() {
        let after = t.saturating_since(first).as_millis();
        println!("  attempt {} started at +{after} ms", i + 1);
    }
    let attempts: Vec<usize> = entries
        .iter()
        .filter_map(|e| e.envelope.as_ref().map(|v| v.attempts.len()))
        .collect();

    // Fix, look before leaping, redrive.
    inventory_up.store(true, Ordering::SeqCst);
    let plan = dlq::redrive(&broker, "dlq.orders.>", None, None, true).await?;
    println!("dry run: would redrive {}", plan.redriven.len());
    let done = dlq::redrive(&broker, "dlq.orders.>", None, Some(20), false).await?;
    for r in &done.redriven {
        println!(
            "redriven {} to {} as {}",
            r.dead_letter_id, r.subject, r.new_id
        );
    }
    tokio::time::timeout(wait, stats.wait_until(|r| r[0].succeeded == ORDERS)).await?;
    let left = dlq::list(&broker, "dlq.orders.>", 100).await?.len();
    shutdown.cancel();
    let report = running.await??;
    broker.close().await?;

    let r = report.route("inventory").expect("the route");
    if attempts != vec![3; ORDERS as usize]
        || plan.redriven.len() as u64 != ORDERS
        || done.redriven.len() as u64 != ORDERS
        || r.succeeded != ORDERS
        || left != 0
    {
        return Err(format!(
            "attempts {attempts:?}, dry run {plan:?}, redrive {done:?}, left {left}, route {r:?}"
        )
        .into());
    }
    println!(
        "dlq_redrive: {ORDERS} dead-lettered after 3 attempts each, {} redriven, {} processed, DLQ empty",
        done.redriven.len(),
        r.succeeded
    );
    Ok(())
}
