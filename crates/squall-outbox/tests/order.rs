//! Per-key order under batches with many keys, pipelined acks that complete out of order, and
//! injected retryable failures (refused sends, lost confirms), checked two ways: by the
//! publisher wrapper at every send (a key's row only after its previous row was confirmed; no
//! row twice in flight) and on the consumer side (each id once, every key in order).

#![cfg(feature = "sqlite")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Checker, Faults, assert_once_and_in_order, drain, event, publisher};
use proptest::prelude::*;
use squall_broker::Broker;
use squall_outbox::sqlite::{self, SqliteStore};
use squall_outbox::{Relay, RelayConfig};
use tokio_util::sync::CancellationToken;

fn run_case(keys: Vec<Option<u8>>, batch_size: usize, seed: u64, faults: Faults) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        sqlite::migrate(&conn).unwrap();
        let mut next: HashMap<Option<u8>, usize> = HashMap::new();
        let tx = conn.transaction().unwrap();
        for k in &keys {
            let n = next.entry(*k).or_default();
            let key = k.map(|k| format!("key{k}"));
            sqlite::enqueue(&tx, &event(key.as_deref(), *n)).unwrap();
            *n += 1;
        }
        tx.commit().unwrap();

        let broker = Broker::in_memory().unwrap();
        let checker = Checker::new(std::sync::Arc::new(broker.clone()), seed, faults);
        let config = RelayConfig {
            batch_size,
            poll_interval: Duration::from_millis(10),
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            ..RelayConfig::default()
        };
        let relay = Relay::new(
            SqliteStore::open(&path).unwrap(),
            publisher(&checker),
            config,
        )
        .unwrap();
        let mut stats = relay.stats();
        let stop = CancellationToken::new();
        let task = tokio::spawn(relay.run(stop.clone()));
        let want = keys.len() as u64;
        let done = tokio::time::timeout(
            Duration::from_secs(30),
            stats.wait_for(|s| s.published == want),
        )
        .await
        .map(|r| r.map(|s| s.clone()));
        if done.is_err() {
            panic!("seed {seed}: stuck at {:?}", *stats.borrow());
        }
        stop.cancel();
        task.await.unwrap().unwrap();
        checker.assert_clean(&format!("seed {seed}"));
        assert_once_and_in_order(&drain(&broker, keys.len()).await);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn each_key_is_published_in_order_whatever_the_batching_and_faults(
        keys in proptest::collection::vec(proptest::option::weighted(0.8, 0u8..12), 1..160),
        batch_size in 1usize..48,
        seed in any::<u64>(),
        max_ack_delay_us in 0u64..3000,
        refuse_per_mille in 0u64..80,
        lose_ack_per_mille in 0u64..80,
    ) {
        run_case(keys, batch_size, seed, Faults {
            max_ack_delay: Duration::from_micros(max_ack_delay_us),
            refuse_per_mille,
            lose_ack_per_mille,
            down: false,
        });
    }
}

#[test]
fn one_hot_key_among_many_cold_ones_stays_in_order() {
    let keys: Vec<Option<u8>> = (0..300u32)
        .map(|i| {
            if i % 3 == 0 {
                Some(0)
            } else {
                Some((i % 11) as u8 + 1)
            }
        })
        .collect();
    run_case(
        keys,
        64,
        42,
        Faults {
            max_ack_delay: Duration::from_millis(1),
            refuse_per_mille: 20,
            lose_ack_per_mille: 20,
            down: false,
        },
    );
}
