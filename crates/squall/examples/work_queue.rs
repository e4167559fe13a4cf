//! A work queue with three workers: each order is processed by exactly one of them.
//!
//! The articles' NATS `QueueSubscribe("orders.process", "order-workers")` with three workers and
//! ten published orders, where the group spreads the work. Here the three workers are consumers
//! of one group on the embedded broker (fsync log in a temp directory). Consumers pull: a worker
//! holds a lease only on the message it is working on, so a busy worker never hoards work, and
//! an order whose worker crashed before acking is redelivered to another when its lease expires.
//! The example stops its workers once all ten orders are acked and checks none was processed
//! twice.
//!
//! Run: `cargo run -p squall --example work_queue`

use std::collections::BTreeMap;
use std::time::Duration;

use squall::broker::Broker;
use squall::broker::storage::{LogConfig, LogStorage, SyncMode};
use squall::prelude::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WORKERS: usize = 3;
const ORDERS: usize = 10;

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

    // Each worker reports `(worker, order)` after acking it.
    let (done_tx, mut done) = mpsc::channel::<(usize, String)>(ORDERS);
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for w in 1..=WORKERS {
        let sub = Subscription::new("orders.process")?
            .group("order-workers")?
            .ack_wait(Duration::from_secs(10));
        let mut consumer = broker.subscribe(sub).await?;
        let (done_tx, stop) = (done_tx.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = stop.cancelled() => break,
                    d = consumer.next() => match d {
                        Some(d) => d?,
                        None => break,
                    },
                };
                let order = String::from_utf8_lossy(delivery.message().payload()).into_owned();
                println!("worker {w} processing: {order}");
                tokio::time::sleep(Duration::from_millis(30)).await; // the work
                delivery.ack().await?;
                println!("worker {w} finished: {order}");
                if done_tx.send((w, order)).await.is_err() {
                    break;
                }
            }
            consumer.close().await?;
            Ok::<(), squall::Error>(())
        }));
    }
    drop(done_tx);

    for i in 1..=ORDERS {
        let msg = Message::builder("orders.process")?
            .payload(format!("Order {i}"))
            .build();
        broker.publish(msg).await?;
    }

    let mut by_worker: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut processed = BTreeMap::<String, u32>::new();
    while processed.values().sum::<u32>() < ORDERS as u32 {
        let Some((w, order)) = tokio::time::timeout(Duration::from_secs(20), done.recv()).await?
        else {
            return Err("the workers stopped early".into());
        };
        by_worker.entry(w).or_default().push(order.clone());
        *processed.entry(order).or_default() += 1;
    }
    stop.cancel();
    for w in workers {
        w.await??;
    }
    broker.close().await?;

    if processed.len() != ORDERS || processed.values().any(|&n| n != 1) {
        return Err(format!("not once each: {processed:?}").into());
    }
    for (w, orders) in &by_worker {
        println!("worker {w}: {} orders", orders.len());
    }
    println!("work_queue: {ORDERS} orders processed once each by {WORKERS} workers");
    Ok(())
}
