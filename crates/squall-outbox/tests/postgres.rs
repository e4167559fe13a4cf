//! The PostgreSQL outbox against the embedded broker, on the server named by
//! `SQUALL_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`). Each test works
//! in a schema of its own, dropped afterwards. Without the variable the tests print a notice
//! and pass, unless `SQUALL_REQUIRE_PEERS=1`, which makes them fail.

#![cfg(feature = "postgres")]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{
    Checker, Faults, Running, assert_once_and_in_order, checked, drain, event, fast, publisher,
    start,
};
use squall_broker::Broker;
use squall_core::Message;
use squall_outbox::postgres::{self, PgStore};
use squall_outbox::{Error, HookAction, OnPublished, RelayConfig};
use tokio_postgres::{Client, Config, NoTls};

/// A schema of this test's own; dropped on drop, even when the test fails.
struct Db {
    base: Config,
    config: Config,
    schema: String,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

async fn db() -> Option<Db> {
    let url = match std::env::var("SQUALL_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            assert!(
                std::env::var("SQUALL_REQUIRE_PEERS").as_deref() != Ok("1"),
                "SQUALL_POSTGRES_URL is unset and SQUALL_REQUIRE_PEERS=1"
            );
            eprintln!("skipped: set SQUALL_POSTGRES_URL to run the PostgreSQL outbox tests");
            return None;
        }
    };
    let base: Config = url.parse().expect("SQUALL_POSTGRES_URL");
    let schema = format!(
        "squall_outbox_test_{}_{}_{}",
        std::process::id(),
        squall_core::Timestamp::now().as_nanos() % 1_000_000_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut config = base.clone();
    config.options(format!("-c search_path={schema}"));
    let db = Db {
        base,
        config,
        schema,
    };
    let admin = connect(&db.base).await;
    admin
        .batch_execute(&format!("CREATE SCHEMA {}", db.schema))
        .await
        .unwrap();
    let mut app = db.client().await;
    postgres::migrate(&mut app).await.unwrap();
    app.batch_execute("CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, note TEXT NOT NULL)")
        .await
        .unwrap();
    Some(db)
}

async fn connect(config: &Config) -> Client {
    let (client, conn) = config.connect(NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(conn);
    client
}

impl Db {
    async fn client(&self) -> Client {
        connect(&self.config).await
    }
    fn store(&self) -> PgStore {
        PgStore::new(self.config.clone(), NoTls)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let (base, schema) = (self.base.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = connect(&base).await;
                c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            other => eprintln!("could not drop test schema {}: {other:?}", self.schema),
        }
    }
}

async fn commit_each(client: &mut Client, msgs: &[Message]) {
    for m in msgs {
        let tx = client.transaction().await.unwrap();
        tx.execute("INSERT INTO orders (note) VALUES ($1)", &[&m.id().as_str()])
            .await
            .unwrap();
        postgres::enqueue(&tx, m).await.unwrap();
        tx.commit().await.unwrap();
    }
}

fn events(n: usize, keys: usize) -> Vec<Message> {
    let mut next: HashMap<usize, usize> = HashMap::new();
    (0..n)
        .map(|i| {
            let k = i % (keys + 1);
            let c = next.entry(k).or_default();
            *c += 1;
            let key = (k < keys).then(|| format!("k{k}"));
            event(key.as_deref(), *c - 1)
        })
        .collect()
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn status_counts(client: &Client) -> HashMap<String, i64> {
    client
        .query(
            "SELECT status, count(*) FROM squall_outbox GROUP BY status",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn pg_the_event_commits_with_the_business_row_and_the_relay_publishes_and_marks_it() {
    let Some(db) = db().await else { return };
    let mut app = db.client().await;

    let tx = app.transaction().await.unwrap();
    tx.execute("INSERT INTO orders (note) VALUES ('rolled back')", &[])
        .await
        .unwrap();
    postgres::enqueue(&tx, &event(Some("a"), 9)).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 0);
    assert_eq!(count(&app, "SELECT count(*) FROM squall_outbox").await, 0);

    let msg = Message::builder("orders.created")
        .unwrap()
        .key("a")
        .unwrap()
        .header("correlation-id", "c-1")
        .unwrap()
        .payload("a|0")
        .ttl(Duration::from_secs(3600))
        .build();
    let tx = app.transaction().await.unwrap();
    tx.execute("INSERT INTO orders (note) VALUES ('committed')", &[])
        .await
        .unwrap();
    let seq = postgres::enqueue(&tx, &msg).await.unwrap();
    assert_eq!(
        postgres::enqueue(&tx, &msg).await.unwrap(),
        seq,
        "same id, same row"
    );
    tx.commit().await.unwrap();
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 1);

    let broker = Broker::in_memory().unwrap();
    let checker = checked(&broker);
    let mut relay = start(db.store(), publisher(&checker), fast());
    relay.until("the publish", |s| s.published == 1).await;
    relay.stop().await;
    let row = app
        .query_one(
            "SELECT status, attempts, published_at IS NOT NULL, ttl_ns FROM squall_outbox
             WHERE seq = $1",
            &[&seq],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "published");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, Option<i64>>(3), Some(3_600_000_000_000));
    let got = drain(&broker, 1).await;
    let m = &got[0];
    assert_eq!(
        (
            m.id(),
            m.subject(),
            m.key(),
            m.headers(),
            m.payload(),
            m.timestamp()
        ),
        (
            msg.id(),
            msg.subject(),
            msg.key(),
            msg.headers(),
            msg.payload(),
            msg.timestamp()
        ),
    );
    checker.assert_clean("relay");
}

#[tokio::test]
async fn pg_a_crash_between_publish_and_mark_loses_nothing_and_the_broker_stores_each_once() {
    let Some(db) = db().await else { return };
    let mut app = db.client().await;
    let msgs = events(30, 3);
    commit_each(&mut app, &msgs).await;

    let broker = Broker::in_memory().unwrap();
    let checker = checked(&broker);
    let crash = RelayConfig {
        batch_size: 12,
        after_publish_hook: Some(Arc::new(|_: &[i64]| HookAction::Crash)),
        ..fast()
    };
    let crashed = start(db.store(), publisher(&checker), crash)
        .task
        .await
        .unwrap();
    let Err(Error::Crashed { seqs }) = crashed else {
        panic!("expected a crash at the fault point, got {crashed:?}");
    };
    assert_eq!(seqs.len(), 12);
    assert_eq!(broker.stream_stats("default").await.unwrap().messages, 12);
    assert_eq!(
        status_counts(&app).await,
        HashMap::from([("pending".into(), 30)])
    );

    let mut relay = start(db.store(), publisher(&checker), fast());
    let stats = relay.until("every row", |s| s.published == 30).await;
    relay.stop().await;
    assert_eq!(stats.duplicates, 12);
    let dup: HashSet<String> = checker.duplicate_acks().into_iter().collect();
    let first: HashSet<String> = msgs[..12].iter().map(|m| m.id().to_string()).collect();
    assert_eq!(
        dup, first,
        "PublishAck.duplicate was set exactly on the re-published rows"
    );
    assert_eq!(
        status_counts(&app).await,
        HashMap::from([("published".into(), 30)])
    );
    assert_once_and_in_order(&drain(&broker, 30).await);
    checker.assert_clean("relays");
}

/// Three relays on one table: `SKIP LOCKED` shares the rows, the per-key run filter keeps each
/// key in order, and no row is sent twice.
async fn relays_share(faults: Faults, seed: u64) {
    let Some(db) = db().await else { return };
    let mut app = db.client().await;
    commit_each(&mut app, &events(240, 12)).await;
    let broker = Broker::in_memory().unwrap();
    let checker = Checker::new(Arc::new(broker.clone()), seed, faults);
    let config = RelayConfig {
        batch_size: 16,
        ..fast()
    };
    let relays: Vec<Running> = (0..3)
        .map(|_| start(db.store(), publisher(&checker), config.clone()))
        .collect();
    let published = "SELECT count(*) FROM squall_outbox WHERE status = 'published'";
    tokio::time::timeout(Duration::from_secs(30), async {
        while count(&app, published).await < 240 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("all rows published");
    let mut per_relay = Vec::new();
    for r in relays {
        per_relay.push(r.stop().await.published);
    }
    checker.assert_clean(&format!("seed {seed}"));
    assert_eq!(
        status_counts(&app).await,
        HashMap::from([("published".into(), 240)])
    );
    assert_once_and_in_order(&drain(&broker, 240).await);
    if faults.lose_ack_per_mille == 0 && faults.refuse_per_mille == 0 {
        assert!(
            checker.sends().values().all(|&n| n == 1),
            "no row was sent twice"
        );
        assert!(
            per_relay.iter().filter(|&&n| n > 0).count() >= 2,
            "the relays shared the work: {per_relay:?}"
        );
    }
}

#[tokio::test]
async fn pg_relays_share_the_work_without_double_publishing_or_reordering_a_key() {
    relays_share(
        Faults {
            max_ack_delay: Duration::from_millis(3),
            ..Faults::default()
        },
        11,
    )
    .await;
}

#[tokio::test]
async fn pg_relays_keep_key_order_under_refused_sends_and_lost_confirms() {
    for seed in [1, 2, 3] {
        relays_share(
            Faults {
                max_ack_delay: Duration::from_millis(2),
                refuse_per_mille: 50,
                lose_ack_per_mille: 50,
                down: false,
            },
            seed,
        )
        .await;
    }
}

#[tokio::test]
async fn pg_listen_notify_wakes_the_relay_at_commit() {
    let Some(db) = db().await else { return };
    let mut app = db.client().await;
    let broker = Broker::in_memory().unwrap();
    let slow = RelayConfig {
        poll_interval: Duration::from_secs(3600),
        ..fast()
    };
    let mut relay = start(db.store().listen(true), Arc::new(broker.clone()), slow);
    // The first poll (empty) has run once the lag is known.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tx = app.transaction().await.unwrap();
    for m in events(3, 1) {
        postgres::enqueue(&tx, &m).await.unwrap();
    }
    postgres::notify_relay(&tx).await.unwrap();
    tx.commit().await.unwrap();
    relay.until("the notified rows", |s| s.published == 3).await;
    relay.stop().await;
}

#[tokio::test]
async fn pg_a_poison_row_fails_alone_and_delete_mode_removes_the_rest() {
    let Some(db) = db().await else { return };
    let mut app = db.client().await;
    let mut msgs = events(8, 1);
    msgs[2].set_payload(format!("k0|1|{}", "x".repeat(200)));
    commit_each(&mut app, &msgs).await;
    let broker = Broker::builder().max_payload(100).open().unwrap();
    let delete = RelayConfig {
        on_published: OnPublished::Delete,
        ..fast()
    };
    let mut relay = start(db.store(), Arc::new(broker.clone()), delete);
    let stats = relay
        .until("all settled", |s| s.published + s.failed == 8)
        .await;
    relay.stop().await;
    assert_eq!((stats.published, stats.failed), (7, 1));
    let rows = app
        .query(
            "SELECT message_id, status, last_error FROM squall_outbox",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        1,
        "published rows were deleted, the failed one kept"
    );
    assert_eq!(rows[0].get::<_, String>(0), msgs[2].id().as_str());
    assert_eq!(rows[0].get::<_, String>(1), "failed");
    assert!(rows[0].get::<_, String>(2).starts_with("invalid_message"));
    let k0: Vec<usize> = drain(&broker, 7)
        .await
        .iter()
        .map(common::parse)
        .filter(|(k, _)| k.is_some())
        .map(|(_, n)| n)
        .collect();
    assert_eq!(
        k0,
        vec![0, 2, 3],
        "the key went on past its poison row, in order"
    );
}
