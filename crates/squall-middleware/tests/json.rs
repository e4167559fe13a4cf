//! The JSON codec in a router: typed handlers get decoded values; undecodable payloads and
//! unknown schema versions are dead-lettered at once as permanent errors.

mod common;

use std::sync::Arc;

use common::{Log, publish, start};
use serde::{Deserialize, Serialize};
use squall_broker::Broker;
use squall_core::{Message, Publisher, Subscription, headers};
use squall_middleware::json::{self, Json, JsonLayer};
use squall_middleware::{HandlerError, Route, Router, dlq, request_fn};
use tower::Layer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    total_cents: u64,
}

/// Guards: a v1 order is decoded and handled; a v2 order, a truncated payload and an XML one
/// are each dead-lettered on their first attempt with the reason in the chain.
#[tokio::test(start_paused = true)]
async fn typed_handler_gets_orders_and_bad_payloads_are_dead_lettered_at_once() {
    let broker = Broker::in_memory().unwrap();
    let got: Log<(Order, u32)> = Log::default();
    let g2 = got.clone();
    let handler = JsonLayer::<Order>::new("1").layer(request_fn(move |o: Json<Order>| {
        g2.push((o.value.clone(), o.incoming.attempt()));
        async { Ok::<_, HandlerError>(()) }
    }));
    let sub = Subscription::new("orders.>").unwrap().group("o").unwrap();
    let running = start(
        Router::new(Arc::new(broker.clone()))
            .route(Route::new("orders", sub, handler).handler_name("orders-v1")),
    );
    let order = Order {
        id: 1,
        total_cents: 4200,
    };
    broker
        .publish(json::to_message("orders.placed", &order, "1").unwrap())
        .await
        .unwrap();
    broker
        .publish(json::to_message("orders.placed", &order, "2").unwrap())
        .await
        .unwrap();
    publish(&broker, "orders.placed", None, r#"{"id": 3, "total_ce"#).await;
    let xml = Message::builder("orders.placed")
        .unwrap()
        .header(headers::CONTENT_TYPE, "application/xml")
        .unwrap()
        .payload("<order/>")
        .build();
    broker.publish(xml).await.unwrap();
    running
        .until(|r| r.succeeded == 1 && r.dead_lettered == 3)
        .await;
    let report = running.stop().await;

    assert_eq!(got.all(), [(order, 1)]);
    assert_eq!(
        report.routes[0].retried, 0,
        "permanent errors are not retried"
    );
    let dead = dlq::list(&broker, "dlq.>", 10).await.unwrap();
    let chains: Vec<String> = dead.iter().map(|e| e.error_chain().join(" / ")).collect();
    assert_eq!(chains.len(), 3);
    assert_eq!(
        chains[0],
        "schema version `2` is not one this handler reads (1)"
    );
    assert!(
        chains[1].starts_with("payload is not a valid `json::Order` (JSON) / EOF while parsing"),
        "{}",
        chains[1]
    );
    assert_eq!(chains[2], "content type `application/xml` is not JSON");
    for e in &dead {
        assert_eq!(e.handler().as_deref(), Some("orders-v1"));
        assert!(
            e.envelope
                .as_ref()
                .unwrap()
                .error
                .contains("failed permanently on attempt 1")
        );
    }
}
