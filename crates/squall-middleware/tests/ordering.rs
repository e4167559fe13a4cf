//! Per-key ordered concurrency implemented by the runtime (the broker's own `ordered_by_key`
//! is off): parallel across keys, serial and in order within a key.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{publish, start};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use squall_broker::Broker;
use squall_core::Subscription;
use squall_middleware::{HandlerError, Incoming, Route, Router, handler_fn};

const KEYS: usize = 12;
const PER_KEY: usize = 42;
/// Messages of one key published back to back.
const RUN: usize = 3;
const SEED: u64 = 0x5EED_0001;

#[derive(Default)]
struct Seen {
    /// Per key, the payload indexes in handling order.
    order: HashMap<String, Vec<usize>>,
    /// Keys being handled right now.
    active: HashSet<String>,
    /// Two handlers of one key overlapped.
    overlaps: Vec<String>,
    running: usize,
    max_running: usize,
}

/// Guards: 504 messages over 12 keys (in runs of 3 per key), 8 workers, random handler times (seeded). Within a key
/// messages are handled one at a time in publish order; across keys up to 8 run at once.
#[tokio::test(start_paused = true)]
async fn per_key_order_holds_with_eight_workers_and_random_processing_times() {
    let broker = Broker::in_memory().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(SEED)));
    let seen2 = seen.clone();
    let handler = handler_fn(move |m: Incoming| {
        let (seen, rng) = (seen2.clone(), rng.clone());
        async move {
            let key = m.message().key().expect("keyed").to_string();
            let idx: usize = std::str::from_utf8(m.message().payload())?.parse()?;
            let work = Duration::from_millis(rng.lock().unwrap().random_range(1..50));
            {
                let mut s = seen.lock().unwrap();
                if !s.active.insert(key.clone()) {
                    s.overlaps.push(key.clone());
                }
                s.running += 1;
                s.max_running = s.max_running.max(s.running);
                s.order.entry(key.clone()).or_default().push(idx);
            }
            tokio::time::sleep(work).await;
            let mut s = seen.lock().unwrap();
            s.active.remove(&key);
            s.running -= 1;
            Ok::<_, HandlerError>(())
        }
    });
    let sub = Subscription::new("acct.>")
        .unwrap()
        .group("ledger")
        .unwrap();
    let running = start(
        Router::new(Arc::new(broker.clone())).route(
            Route::new("ledger", sub, handler)
                .workers(8)
                .ordered_by_key(true),
        ),
    );
    // Runs of 3 messages per key, keys interleaved: without per-key control, 8 workers would
    // take a key's consecutive messages at once.
    for round in 0..PER_KEY / RUN {
        for k in 0..KEYS {
            for j in 0..RUN {
                let i = (round * RUN + j).to_string();
                publish(&broker, "acct.entry", Some(&format!("acct-{k}")), &i).await;
            }
        }
    }
    running
        .until(|r| r.succeeded == (KEYS * PER_KEY) as u64)
        .await;
    running.stop().await;

    let s = seen.lock().unwrap();
    assert!(
        s.overlaps.is_empty(),
        "seed {SEED:#x}: a key ran twice at once {} times, first: {:?}",
        s.overlaps.len(),
        &s.overlaps[..s.overlaps.len().min(5)]
    );
    assert_eq!(s.order.len(), KEYS);
    for (key, order) in &s.order {
        let expected: Vec<usize> = (0..PER_KEY).collect();
        assert_eq!(order, &expected, "seed {SEED:#x}: key {key} out of order");
    }
    assert_eq!(
        s.max_running, 8,
        "seed {SEED:#x}: all 8 workers were used, never more"
    );
}

/// Guards: keyless messages are not serialised (they run on all workers).
#[tokio::test(start_paused = true)]
async fn keyless_messages_run_in_parallel() {
    let broker = Broker::in_memory().unwrap();
    let running_now = Arc::new(Mutex::new((0usize, 0usize)));
    let r2 = running_now.clone();
    let handler = handler_fn(move |_m: Incoming| {
        let r = r2.clone();
        async move {
            {
                let mut g = r.lock().unwrap();
                g.0 += 1;
                g.1 = g.1.max(g.0);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            r.lock().unwrap().0 -= 1;
            Ok::<_, HandlerError>(())
        }
    });
    let sub = Subscription::new("n.>").unwrap().group("n").unwrap();
    let running = start(
        Router::new(Arc::new(broker.clone())).route(
            Route::new("n", sub, handler)
                .workers(4)
                .ordered_by_key(true),
        ),
    );
    for i in 0..8 {
        publish(&broker, "n.x", None, &i.to_string()).await;
    }
    running.until(|r| r.succeeded == 8).await;
    running.stop().await;
    assert_eq!(running_now.lock().unwrap().1, 4);
}
