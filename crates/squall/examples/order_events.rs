//! The order service publishing events by type, and a consumer dispatching on the type.
//!
//! The articles' `PublishEvent` marshals an `Event { id, type, payload, timestamp }` to JSON and
//! publishes it persistently under `event.<type>` (RabbitMQ) or `events.<type>` (NATS); their
//! Kafka `EventHandler` switches on the type and logs unknown ones. Here:
//!
//! - each event is typed JSON (`json::to_message` sets `content-type` and `schema-version`),
//!   keyed by order id (per-order order), published to `events.order.<type>` and confirmed only
//!   once fsynced to the embedded broker's log (a temp directory);
//! - one route of the consumer runtime reads `events.order.*` as the group `order-handlers`,
//!   decodes with `JsonLayer` and dispatches on the type; an unknown type is logged and acked
//!   (the articles' `default:` branch). A payload that is not an `Event` would be dead-lettered
//!   at once (a permanent error) instead of being retried forever.
//!
//! Run: `cargo run -p squall --example order_events`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use squall::broker::Broker;
use squall::broker::storage::{LogConfig, LogStorage, SyncMode};
use squall::prelude::*;
use squall_middleware::json::{self, Json, JsonLayer};
use squall_middleware::{HandlerError, Route, Router, request_fn};
use tokio_util::sync::CancellationToken;
use tower::Layer;

/// The articles' event shape.
#[derive(Debug, Serialize, Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    payload: String,
    timestamp_ms: u128,
}

const ORDERS: u32 = 3;

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

    // The order service: one event per state change, the subject says which.
    let mut events: Vec<(u32, &str)> = Vec::new();
    for order in 1..=ORDERS {
        for kind in ["created", "paid", "shipped"] {
            events.push((order, kind));
        }
    }
    events.push((ORDERS, "refunded")); // a type no handler knows yet
    for (i, &(order, kind)) in events.iter().enumerate() {
        let event = Event {
            id: format!("evt-{}", i + 1),
            kind: kind.to_string(),
            payload: format!(r#"{{"order_id":{order}}}"#),
            timestamp_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)?
                .as_millis(),
        };
        let mut msg = json::to_message(&format!("events.order.{kind}"), &event, "1")?;
        msg.set_key(Some(&format!("order-{order}")))?;
        let ack = broker.publish(msg).await?;
        println!(
            "published {} for order {order} to events.order.{kind} (#{}, {})",
            event.id, ack.sequence, ack.durability
        );
    }

    // The consumer: decode, then dispatch by type.
    let handled: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let seen = handled.clone();
    let dispatch = request_fn(move |event: Json<Event>| {
        let seen = seen.clone();
        async move {
            let bucket = match event.kind.as_str() {
                "created" => "created",
                "paid" => "paid",
                "shipped" => "shipped",
                other => {
                    println!("unknown event type {other:?} ({}): acked", event.id);
                    "unknown"
                }
            };
            *seen.lock().unwrap().entry(bucket.into()).or_default() += 1;
            Ok::<_, HandlerError>(())
        }
    });
    let handler = JsonLayer::<Event>::new("1").layer(dispatch);
    let sub = Subscription::new("events.order.*")?.group("order-handlers")?;
    let router = Router::new(Arc::new(broker.clone()))
        .route(Route::new("order-events", sub, handler).ordered_by_key(true));
    let stats = router.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(router.run(shutdown.clone()));
    let total = events.len() as u64;
    tokio::time::timeout(
        Duration::from_secs(20),
        stats.wait_until(|r| r[0].succeeded == total),
    )
    .await?;
    shutdown.cancel();
    let report = running.await??;
    broker.close().await?;

    let handled = handled.lock().unwrap().clone();
    let r = report.route("order-events").expect("the route");
    if r.succeeded != total || handled.values().sum::<u32>() as u64 != total {
        return Err(format!("handled {handled:?}, route report {r:?}").into());
    }
    let n = |k: &str| handled.get(k).copied().unwrap_or(0);
    println!(
        "order_events: published {total} events, handled created {}, paid {}, shipped {}, unknown {}",
        n("created"),
        n("paid"),
        n("shipped"),
        n("unknown")
    );
    Ok(())
}
