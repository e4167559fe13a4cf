//! # squall-outbox
//!
//! The transactional outbox: a message is saved in the same database transaction as the
//! business change it announces, so it exists if and only if the change committed. A [`Relay`]
//! publishes pending rows through any [`squall_core::Publisher`] and marks them published.
//!
//! It gives **at-least-once** delivery with the message id as the dedup key end to end (a
//! backend with a dedup window, like the embedded broker, turns a crash's republish into an
//! acked duplicate), **per-key order**, and **no concurrent double publish** between relays.
//! It is not a change-data-capture tailer: the relay polls (and can be woken).
//!
//! | module | what it holds |
//! |---|---|
//! | [`sqlite`] | schema, `migrate`, `enqueue` in a `rusqlite::Transaction`, [`sqlite::SqliteStore`] (one active relay, by lease) |
//! | [`postgres`] | schema, `migrate`, `enqueue` in a `tokio_postgres::Transaction`, LISTEN/NOTIFY, [`postgres::PgStore`] (`FOR UPDATE SKIP LOCKED`, order per key kept) |
//! | [`relay`] | [`Relay`], [`RelayConfig`], [`RelayStats`], [`RelayWaker`]: the guarantees, the publishing rules, the metrics |
//! | [`store`] | [`Store`]: what a relay reads |
//! | [`error`] | [`Error`], [`Result`] |
//!
//! Features: `sqlite` and `postgres`, both on by default.
//!
//! ## Schema
//! One table, `squall_outbox`, created by `migrate()` (exact DDL in [`sqlite::SCHEMA`] and
//! [`postgres::SCHEMA`]):
//!
//! | column | SQLite / PostgreSQL | meaning |
//! |---|---|---|
//! | `seq` | `INTEGER PRIMARY KEY AUTOINCREMENT` / `BIGINT` identity | insertion order, never reused |
//! | `message_id` | `TEXT UNIQUE` | [`squall_core::Message::id`], the dedup key |
//! | `subject` | `TEXT` | subject |
//! | `msg_key` | `TEXT NULL` | ordering key |
//! | `headers` | `TEXT` / `JSONB` | JSON array of `[name, value]` pairs, in order |
//! | `payload` | `BLOB` / `BYTEA` | payload bytes |
//! | `timestamp_ns` | `INTEGER` / `BIGINT` | producer timestamp, ns since the epoch |
//! | `delay_ns`, `ttl_ns` | `INTEGER NULL` / `BIGINT NULL` | delay and time to live, ns |
//! | `created_at_ns` / `created_at` | `INTEGER` ns / `TIMESTAMPTZ` | enqueue time (lag) |
//! | `status` | `TEXT` | `pending`, `published` or `failed` |
//! | `attempts` | `INTEGER` | publish attempts so far |
//! | `last_error` | `TEXT NULL` | the last publish error (why a row `failed`) |
//! | `published_at_ns` / `published_at` | `INTEGER NULL` / `TIMESTAMPTZ NULL` | when marked (retention) |
//!
//! Partial indexes cover pending rows by `seq` (and by `(msg_key, seq)` on PostgreSQL) and
//! published rows by mark time. SQLite also has `squall_outbox_lease` (one row: holder, expiry).
//!
//! ## Example (SQLite)
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use squall_broker::Broker;
//! use squall_core::Message;
//! use squall_outbox::{Relay, RelayConfig, sqlite};
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("app.db");
//!
//! // The application: the business change and its event commit together.
//! let mut conn = rusqlite::Connection::open(&path)?;
//! sqlite::migrate(&conn)?;
//! conn.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")?;
//! let tx = conn.transaction()?;
//! tx.execute("INSERT INTO orders (id, total) VALUES (1, 42)", [])?;
//! let event = Message::builder("orders.created")?.key("order-1")?.payload("42").build();
//! sqlite::enqueue(&tx, &event)?;
//! tx.commit()?;
//!
//! // The relay: publishes pending rows to the broker and marks them.
//! let broker = Broker::in_memory()?;
//! let config = RelayConfig { poll_interval: Duration::from_millis(20), ..Default::default() };
//! let relay = Relay::new(sqlite::SqliteStore::open(&path)?, Arc::new(broker.clone()), config)?;
//! let mut stats = relay.stats();
//! let shutdown = CancellationToken::new();
//! let task = tokio::spawn(relay.run(shutdown.clone()));
//! stats.wait_for(|s| s.published == 1).await?;
//! shutdown.cancel();
//! task.await??;
//! assert_eq!(broker.stream_stats("default").await?.messages, 1);
//! # Ok(()) }
//! ```

// Without a database feature the crate is only its relay logic.
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]

pub mod error;
#[cfg(feature = "postgres")]
pub mod postgres;
mod publish;
pub mod relay;
mod row;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod store;

pub use error::{Error, Result};
pub use relay::{
    AfterPublishHook, HookAction, OnPublished, Relay, RelayConfig, RelayStats, RelayWaker,
};
pub use store::Store;
