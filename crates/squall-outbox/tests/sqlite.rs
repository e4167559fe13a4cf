//! The SQLite outbox against the embedded broker, on real database files.

#![cfg(feature = "sqlite")]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Faults, assert_once_and_in_order, checked, drain, event, fast, publisher, start};
use rusqlite::Connection;
use squall_broker::Broker;
use squall_core::{Message, Publisher};
use squall_outbox::sqlite::{self, SqliteStore};
use squall_outbox::{Error, HookAction, OnPublished, Relay, RelayConfig, RelayStats};
use tokio_util::sync::CancellationToken;

fn app_db(path: &Path, journal: &str) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mode: String = c
        .query_row(&format!("PRAGMA journal_mode = {journal}"), [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(mode.to_lowercase(), journal.to_lowercase());
    sqlite::migrate(&c).unwrap();
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, note TEXT NOT NULL)",
    )
    .unwrap();
    c
}

/// Each message in its own transaction with a business row.
fn commit_each(conn: &mut Connection, msgs: &[Message]) {
    for m in msgs {
        let tx = conn.transaction().unwrap();
        tx.execute("INSERT INTO orders (note) VALUES (?1)", [m.id().as_str()])
            .unwrap();
        sqlite::enqueue(&tx, m).unwrap();
        tx.commit().unwrap();
    }
}

/// `n` events over keys a, b, c and no key, each key's events numbered from 0.
fn events(n: usize) -> Vec<Message> {
    let keys = [Some("a"), Some("b"), Some("c"), None];
    let mut next: HashMap<Option<&str>, usize> = HashMap::new();
    (0..n)
        .map(|i| {
            let k = keys[i % keys.len()];
            let c = next.entry(k).or_default();
            *c += 1;
            event(k, *c - 1)
        })
        .collect()
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn status_counts(conn: &Connection) -> HashMap<String, i64> {
    let mut stmt = conn
        .prepare("SELECT status, count(*) FROM squall_outbox GROUP BY status")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn the_event_commits_with_the_business_row_and_the_relay_publishes_and_marks_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut conn = app_db(&path, "WAL");

    // Rolled back: neither row exists.
    let tx = conn.transaction().unwrap();
    tx.execute("INSERT INTO orders (note) VALUES ('rolled back')", [])
        .unwrap();
    sqlite::enqueue(&tx, &event(Some("a"), 99)).unwrap();
    tx.rollback().unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM orders"), 0);
    assert_eq!(count(&conn, "SELECT count(*) FROM squall_outbox"), 0);

    // Committed: both exist; re-enqueueing the same id is a no-op returning the same seq.
    let msg = Message::builder("orders.created")
        .unwrap()
        .id("order-1-created")
        .unwrap()
        .key("a")
        .unwrap()
        .header("correlation-id", "c-1")
        .unwrap()
        .header("content-type", "text/plain")
        .unwrap()
        .payload("a|0")
        .build();
    let tx = conn.transaction().unwrap();
    tx.execute("INSERT INTO orders (note) VALUES ('committed')", [])
        .unwrap();
    let seq = sqlite::enqueue(&tx, &msg).unwrap();
    assert_eq!(
        sqlite::enqueue(&tx, &msg).unwrap(),
        seq,
        "same id, same row"
    );
    tx.commit().unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM orders"), 1);
    assert_eq!(status_counts(&conn), HashMap::from([("pending".into(), 1)]));

    let broker = Broker::in_memory().unwrap();
    let checker = checked(&broker);
    let mut relay = start(
        SqliteStore::open(&path).unwrap(),
        publisher(&checker),
        fast(),
    );
    let stats = relay.until("the publish", |s| s.published == 1).await;
    relay.stop().await;
    assert_eq!((stats.duplicates, stats.failed), (0, 0));

    let (status, attempts, published_at): (String, i64, Option<i64>) = conn
        .query_row(
            "SELECT status, attempts, published_at_ns FROM squall_outbox WHERE seq = ?1",
            [seq],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), attempts), ("published", 1));
    assert!(published_at.is_some());
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
        "every field travels through the outbox"
    );
    checker.assert_clean("relay");
}

#[tokio::test]
async fn a_crash_between_publish_and_mark_loses_nothing_and_the_broker_stores_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut conn = app_db(&path, "WAL");
    let msgs = events(30);
    commit_each(&mut conn, &msgs);

    let broker = Broker::in_memory().unwrap();
    let checker = checked(&broker);
    let crash = RelayConfig {
        batch_size: 12,
        after_publish_hook: Some(Arc::new(|_: &[i64]| HookAction::Crash)),
        ..fast()
    };
    let store = SqliteStore::open(&path)
        .unwrap()
        .relay_id("first")
        .lease_ttl(Duration::from_millis(300));
    let relay = start(store, publisher(&checker), crash);
    let crashed = relay.task.await.unwrap();
    let Err(Error::Crashed { seqs }) = crashed else {
        panic!("expected a crash at the fault point, got {crashed:?}");
    };
    assert_eq!(seqs.len(), 12, "the first batch was published");
    assert_eq!(broker.stream_stats("default").await.unwrap().messages, 12);
    assert_eq!(
        status_counts(&conn),
        HashMap::from([("pending".into(), 30)]),
        "nothing was marked"
    );

    // A fresh relay (another id: it waits out the dead relay's lease) republishes the batch.
    let store = SqliteStore::open(&path).unwrap().relay_id("second");
    let mut relay = start(store, publisher(&checker), fast());
    let stats = relay.until("every row", |s| s.published == 30).await;
    relay.stop().await;
    assert_eq!(
        stats.duplicates, 12,
        "the crashed batch came back as duplicates"
    );
    let mut dup = checker.duplicate_acks();
    dup.sort();
    let mut first: Vec<String> = msgs[..12].iter().map(|m| m.id().to_string()).collect();
    first.sort();
    assert_eq!(
        dup, first,
        "PublishAck.duplicate was set exactly on the re-published rows"
    );
    assert_eq!(
        status_counts(&conn),
        HashMap::from([("published".into(), 30)])
    );
    assert_eq!(broker.stream_stats("default").await.unwrap().messages, 30);
    assert_once_and_in_order(&drain(&broker, 30).await);
    checker.assert_clean("relay");
}

const CHILD_DB: &str = "SQUALL_OUTBOX_CHILD_DB";
const CHILD_JOURNAL: &str = "SQUALL_OUTBOX_CHILD_JOURNAL";

/// Not a test on its own: the child process of the kill test. It commits five events, then
/// starts a sixth transaction, writes into it, says so and waits to be killed.
#[test]
fn child_writer_killed_mid_transaction() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let journal = std::env::var(CHILD_JOURNAL).unwrap();
    let mut conn = app_db(Path::new(&path), &journal);
    commit_each(
        &mut conn,
        &(0..5).map(|n| event(Some("k"), n)).collect::<Vec<_>>(),
    );
    let tx = conn.transaction().unwrap();
    for n in 5..8 {
        tx.execute("INSERT INTO orders (note) VALUES ('uncommitted')", [])
            .unwrap();
        sqlite::enqueue(&tx, &event(Some("k"), n)).unwrap();
    }
    println!("MID_TX");
    std::thread::sleep(Duration::from_secs(60));
    unreachable!("the parent kills this process");
}

#[tokio::test]
async fn a_writer_killed_mid_transaction_leaves_all_or_nothing_and_the_relay_resumes() {
    for journal in ["WAL", "DELETE"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "child_writer_killed_mid_transaction",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD_DB, &path)
            .env(CHILD_JOURNAL, journal)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let seen = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains("MID_TX"))
        })
        .await
        .unwrap();
        assert!(
            seen,
            "{journal}: the child never reached its open transaction"
        );
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        assert!(!status.success(), "{journal}: the child was killed");

        let conn = Connection::open(&path).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "{journal}");
        assert_eq!(count(&conn, "SELECT count(*) FROM orders"), 5, "{journal}");
        assert_eq!(
            count(&conn, "SELECT count(*) FROM squall_outbox"),
            5,
            "{journal}: the open transaction left nothing"
        );

        let broker = Broker::in_memory().unwrap();
        let checker = checked(&broker);
        let mut relay = start(
            SqliteStore::open(&path).unwrap(),
            publisher(&checker),
            fast(),
        );
        relay
            .until("the committed rows", |s| s.published == 5)
            .await;
        relay.stop().await;
        assert_once_and_in_order(&drain(&broker, 5).await);
        assert_eq!(
            status_counts(&conn),
            HashMap::from([("published".into(), 5)])
        );
    }
}

#[tokio::test]
async fn a_non_retryable_error_fails_its_row_and_blocks_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut conn = app_db(&path, "WAL");
    let mut msgs = events(12);
    // Row 5 (key b, n = 1) is too large for the broker: InvalidMessage.
    msgs[5].set_payload(format!("b|1|{}", "x".repeat(200)));
    commit_each(&mut conn, &msgs);

    let broker = Broker::builder().max_payload(100).open().unwrap();
    let checker = checked(&broker);
    let mut relay = start(
        SqliteStore::open(&path).unwrap(),
        publisher(&checker),
        fast(),
    );
    let stats = relay
        .until("all rows settled", |s| s.published + s.failed == 12)
        .await;
    relay.stop().await;
    assert_eq!((stats.published, stats.failed), (11, 1));
    let (status, error): (String, String) = conn
        .query_row(
            "SELECT status, last_error FROM squall_outbox WHERE message_id = ?1",
            [msgs[5].id().as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "failed");
    assert!(error.starts_with("invalid_message"), "{error}");
    let got = drain(&broker, 11).await;
    let b_after: Vec<usize> = got
        .iter()
        .map(common::parse)
        .filter(|(k, _)| k.as_deref() == Some("b"))
        .map(|(_, n)| n)
        .collect();
    assert_eq!(
        b_after,
        vec![0, 2],
        "key b went on past its poison row, in order"
    );
}

#[tokio::test]
async fn an_outage_keeps_rows_pending_reports_lag_and_drains_in_order_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut conn = app_db(&path, "WAL");
    commit_each(&mut conn, &events(20));
    let broker = Broker::in_memory().unwrap();
    let checker = checked(&broker);
    checker.set_faults(Faults {
        down: true,
        ..Faults::default()
    });
    let mut relay = start(
        SqliteStore::open(&path).unwrap(),
        publisher(&checker),
        fast(),
    );
    let stats = relay
        .until("retries and lag", |s| s.retries >= 3 && s.lag.is_some())
        .await;
    assert_eq!(stats.published, 0);
    assert!(stats.last_error.unwrap().contains("broker down"));
    assert_eq!(
        status_counts(&conn),
        HashMap::from([("pending".into(), 20)])
    );
    let (attempts, error): (i64, String) = conn
        .query_row(
            "SELECT attempts, last_error FROM squall_outbox ORDER BY seq LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        attempts >= 1 && error.contains("broker down"),
        "{attempts} {error}"
    );

    checker.set_faults(Faults::default());
    let stats = relay
        .until("recovery", |s| s.published == 20 && s.lag.is_none())
        .await;
    relay.stop().await;
    assert_eq!(stats.failed, 0);
    assert_once_and_in_order(&drain(&broker, 20).await);
    checker.assert_clean("relay");
}

#[tokio::test]
async fn delete_mode_removes_rows_and_mark_mode_purges_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut conn = app_db(&path, "WAL");
    commit_each(&mut conn, &events(10));
    let broker = Broker::in_memory().unwrap();
    let delete = RelayConfig {
        on_published: OnPublished::Delete,
        ..fast()
    };
    let mut relay = start(
        SqliteStore::open(&path).unwrap(),
        Arc::new(broker.clone()),
        delete,
    );
    relay.until("published", |s| s.published == 10).await;
    relay.stop().await;
    assert_eq!(count(&conn, "SELECT count(*) FROM squall_outbox"), 0);

    let more: Vec<Message> = (0..10).map(|n| event(Some("z"), n)).collect();
    commit_each(&mut conn, &more);
    let purge = RelayConfig {
        on_published: OnPublished::Mark {
            retention: Some(Duration::ZERO),
        },
        ..fast()
    };
    let mut relay = start(
        SqliteStore::open(&path).unwrap(),
        Arc::new(broker.clone()),
        purge,
    );
    relay
        .until("published and purged", |s| {
            s.published == 10 && s.purged == 10
        })
        .await;
    relay.stop().await;
    assert_eq!(count(&conn, "SELECT count(*) FROM squall_outbox"), 0);
    assert_once_and_in_order(&drain(&broker, 20).await);
}

#[tokio::test]
async fn a_wake_up_publishes_without_waiting_for_the_poll_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut conn = app_db(&path, "WAL");
    let broker = Broker::in_memory().unwrap();
    let slow = RelayConfig {
        poll_interval: Duration::from_secs(3600),
        ..fast()
    };
    let relay = Relay::new(
        SqliteStore::open(&path).unwrap(),
        Arc::new(broker.clone()),
        slow,
    )
    .unwrap();
    let waker = relay.waker();
    let mut stats = relay.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(relay.run(stop.clone()));
    // Let the first (empty) poll happen, then commit and wake.
    tokio::time::sleep(Duration::from_millis(100)).await;
    commit_each(&mut conn, &events(3));
    waker.wake();
    tokio::time::timeout(Duration::from_secs(5), stats.wait_for(|s| s.published == 3))
        .await
        .expect("the wake-up made the relay poll")
        .unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn two_relays_on_one_file_never_publish_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut conn = app_db(&path, "WAL");
    let broker = Broker::in_memory().unwrap();
    let checker = common::Checker::new(
        Arc::new(broker.clone()),
        7,
        Faults {
            max_ack_delay: Duration::from_millis(2),
            ..Faults::default()
        },
    );
    let small = RelayConfig {
        batch_size: 8,
        ..fast()
    };
    let mut a = start(
        SqliteStore::open(&path).unwrap(),
        publisher(&checker),
        small.clone(),
    );
    let mut b = start(
        SqliteStore::open(&path).unwrap(),
        publisher(&checker),
        small,
    );
    for chunk in events(120).chunks(10) {
        commit_each(&mut conn, chunk);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = |a: &RelayStats, b: &RelayStats| a.published + b.published;
    tokio::time::timeout(Duration::from_secs(20), async {
        while total(&a.stats.borrow(), &b.stats.borrow()) < 120 {
            tokio::select! {
                _ = a.stats.changed() => {}
                _ = b.stats.changed() => {}
            }
        }
    })
    .await
    .expect("all published");
    let (sa, sb) = (a.stats.borrow().clone(), b.stats.borrow().clone());
    assert!(
        sa.published == 0 || sb.published == 0,
        "one active relay holds the lease: {sa:?} {sb:?}"
    );
    assert!(sa.standby || sb.standby, "the other stood by");
    a.stop().await;
    b.stop().await;
    checker.assert_clean("relay");
    assert!(
        checker.sends().values().all(|&n| n == 1),
        "no row sent twice"
    );
    assert_once_and_in_order(&drain(&broker, 120).await);
}

#[tokio::test]
async fn a_stopped_relay_releases_its_lease_for_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut conn = app_db(&path, "WAL");
    let broker = Broker::in_memory().unwrap();
    let long = |id: &str| {
        SqliteStore::open(&path)
            .unwrap()
            .relay_id(id)
            .lease_ttl(Duration::from_secs(3600))
    };
    let mut first = start(long("one"), Arc::new(broker.clone()), fast());
    commit_each(&mut conn, &events(4));
    first.until("published", |s| s.published == 4).await;
    first.stop().await;
    commit_each(&mut conn, &events(8)[4..]);
    let mut second = start(long("two"), Arc::new(broker.clone()), fast());
    let stats = second.until("published", |s| s.published == 4).await;
    second.stop().await;
    assert!(!stats.standby);
}

#[tokio::test]
async fn an_invalid_config_names_the_key() {
    let broker: Arc<dyn Publisher> = Arc::new(Broker::in_memory().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("x.db")).unwrap();
    let bad = RelayConfig {
        batch_size: 0,
        ..RelayConfig::default()
    };
    let err = Relay::new(store, broker, bad).unwrap_err();
    assert!(err.to_string().contains("relay.batch_size"), "{err}");
}
