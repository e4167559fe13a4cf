//! The transactional outbox: an order and its `orders.placed` event commit together or not at
//! all, and a relay publishes committed events to the broker.
//!
//! The articles' `OutboxPublisher` saves events in the business transaction and a poller
//! publishes unpublished ones every 5 s, marking them published (and logs and moves on when a
//! mark fails). Here the database is a real SQLite file in a temp directory: placing an order
//! inserts the order, takes the stock and enqueues the event in one transaction; an order the
//! stock cannot cover rolls back, and its event is never published. The `squall-outbox` relay
//! publishes pending rows in order per key, marks them only after the broker confirmed them
//! (fsync log), and is woken right after each commit instead of waiting for its next poll. A
//! crash between publish and mark republishes with the same message id, which the broker's dedup
//! window turns into an acked duplicate.
//!
//! Run: `cargo run -p squall --example outbox`

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, params};
use squall::broker::Broker;
use squall::broker::storage::{LogConfig, LogStorage, SyncMode};
use squall::prelude::*;
use squall_outbox::{Relay, RelayConfig, RelayWaker, sqlite};
use tokio_util::sync::CancellationToken;

/// Places an order: the order row, the stock update and the event, in one transaction.
/// `Ok(false)`: not enough stock, nothing was written.
fn place_order(
    conn: &mut Connection,
    order: u32,
    sku: &str,
    qty: u32,
) -> Result<bool, Box<dyn std::error::Error>> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO orders (id, sku, qty) VALUES (?1, ?2, ?3)",
        params![order, sku, qty],
    )?;
    let left: i64 = tx.query_row(
        "UPDATE stock SET qty = qty - ?1 WHERE sku = ?2 RETURNING qty",
        params![qty, sku],
        |r| r.get(0),
    )?;
    if left < 0 {
        return Ok(false); // dropping `tx` rolls the order and the stock change back
    }
    let event = Message::builder("orders.placed")?
        .id(format!("order-{order}-placed"))?
        .key(format!("order-{order}"))?
        .payload(format!(r#"{{"order":{order},"sku":"{sku}","qty":{qty}}}"#))
        .build();
    sqlite::enqueue(&tx, &event)?;
    tx.commit()?;
    Ok(true)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = LogConfig {
        sync: SyncMode::Fsync,
        ..LogConfig::default()
    };
    let broker = Broker::builder()
        .storage(LogStorage::open(dir.path().join("broker"), config)?)
        .open()?;
    let mut billing = broker
        .subscribe(Subscription::new("orders.>")?.group("billing")?)
        .await?;

    // The application's database, with the outbox table next to its own.
    let db = dir.path().join("shop.db");
    let mut conn = Connection::open(&db)?;
    sqlite::migrate(&conn)?;
    conn.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, sku TEXT NOT NULL, qty INTEGER NOT NULL);
         CREATE TABLE stock (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL);
         INSERT INTO stock VALUES ('kettle', 5);",
    )?;

    // The relay, with its own connection to the same file.
    let relay = Relay::new(
        sqlite::SqliteStore::open(&db)?,
        Arc::new(broker.clone()),
        RelayConfig::default(),
    )?;
    let waker: RelayWaker = relay.waker();
    let mut relay_stats = relay.stats();
    let shutdown = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(shutdown.clone()));

    let (mut committed, mut rolled_back) = (0u64, 0u64);
    for (order, qty) in [(1, 2), (2, 1), (3, 4), (4, 1), (5, 1)] {
        if place_order(&mut conn, order, "kettle", qty)? {
            committed += 1;
            println!("order {order}: {qty} kettle(s) placed, event enqueued");
            waker.wake();
        } else {
            rolled_back += 1;
            println!("order {order}: {qty} kettle(s) refused (stock), rolled back with its event");
        }
    }

    let published = tokio::time::timeout(
        Duration::from_secs(20),
        relay_stats.wait_for(|s| s.published == committed),
    )
    .await??
    .published;
    let mut received = Vec::new();
    while (received.len() as u64) < committed {
        let d = tokio::time::timeout(Duration::from_secs(20), billing.next())
            .await?
            .ok_or("consumer closed")??;
        received.push(String::from_utf8_lossy(d.message().payload()).into_owned());
        println!("billing got {}", received.last().unwrap());
        d.ack().await?;
    }
    shutdown.cancel();
    relaying.await??;
    billing.close().await?;

    let (pending, marked): (i64, i64) = conn.query_row(
        "SELECT COUNT(*) FILTER (WHERE status = 'pending'),
                COUNT(*) FILTER (WHERE status = 'published') FROM squall_outbox",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let stored = broker.stream_stats("default").await?.messages;
    broker.close().await?;
    if received.iter().any(|p| p.contains(r#""order":3"#))
        || pending != 0
        || marked as u64 != committed
        || stored != committed
    {
        return Err(format!(
            "received {received:?}, outbox pending {pending} published {marked}, stream {stored}"
        )
        .into());
    }
    println!("outbox rows: {marked} published, {pending} pending");
    println!(
        "outbox: {committed} orders committed, {rolled_back} rolled back; relay published {published}; consumer received {}",
        received.len()
    );
    Ok(())
}
