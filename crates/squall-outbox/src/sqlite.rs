//! The SQLite outbox: [`migrate`], [`enqueue`] inside the application's transaction, and
//! [`SqliteStore`], the relay's side.
//!
//! ## One relay at a time
//! SQLite has a single writer, so relays do not share work: they elect one active relay with a
//! lease row (`squall_outbox_lease`), taken and renewed in a `BEGIN IMMEDIATE` transaction at
//! every poll. The others stand by and take over once the lease expires
//! ([`SqliteStore::lease_ttl`], default 30 s). A relay stops sending before its lease runs out,
//! so two relays never publish concurrently while clocks are sane; if a relay stalls longer
//! than its lease anyway, rows may be published twice, which the broker's dedup window absorbs.
//! A restarted relay with the same [`SqliteStore::relay_id`] resumes at once instead of waiting
//! for its old lease to expire. Give every running relay its own id.
//!
//! ## Blocking
//! `rusqlite` is synchronous. [`enqueue`] runs wherever the application's transaction runs (its
//! own blocking code). [`SqliteStore`] runs every statement on tokio's blocking pool
//! (`spawn_blocking`), never on a runtime worker.
//!
//! Use WAL mode (`PRAGMA journal_mode = WAL`) so the relay's reads do not wait for the
//! application's writes. Lock waits are bounded by the connection's busy timeout (5 s for
//! connections [`SqliteStore::open`] opens).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use squall_core::{Message, MessageId, Timestamp};
use tokio::time::Instant;

use crate::error::Result;
use crate::row::{Columns, Outcome, RawRow};
use crate::store::{Claim, Source, Store};

/// The schema [`migrate`] creates (idempotent).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS squall_outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT    NOT NULL UNIQUE,
    subject         TEXT    NOT NULL,
    msg_key         TEXT,
    headers         TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    timestamp_ns    INTEGER NOT NULL,
    delay_ns        INTEGER,
    ttl_ns          INTEGER,
    created_at_ns   INTEGER NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'published', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    published_at_ns INTEGER
);
CREATE INDEX IF NOT EXISTS squall_outbox_pending
    ON squall_outbox (seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS squall_outbox_published
    ON squall_outbox (published_at_ns) WHERE status = 'published';
CREATE TABLE IF NOT EXISTS squall_outbox_lease (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    holder        TEXT    NOT NULL,
    expires_at_ns INTEGER NOT NULL
);
";

/// Creates the outbox tables and indexes if they do not exist ([`SCHEMA`]).
pub fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

/// Stores `msg` in the outbox as part of `tx`, the transaction of the business change: both
/// commit or neither does. Returns the row's sequence (its place in insertion order).
///
/// The message id is the dedup key: if a row with this id is already in the outbox (pending,
/// published and retained, or failed), nothing is inserted and that row's sequence is returned.
/// Fails with [`crate::Error::Unstorable`] if a timestamp, delay or ttl does not fit the columns.
pub fn enqueue(tx: &rusqlite::Transaction<'_>, msg: &Message) -> Result<i64> {
    let c = Columns::new(msg)?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO squall_outbox (message_id, subject, msg_key, headers, payload,
                 timestamp_ns, delay_ns, ttl_ns, created_at_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (message_id) DO NOTHING RETURNING seq",
        )?
        .query_row(
            params![
                c.id,
                c.subject,
                c.key,
                c.headers.to_string(),
                c.payload,
                c.timestamp_ns,
                c.delay_ns,
                c.ttl_ns,
                now_ns()
            ],
            |r| r.get(0),
        )
        .optional()?;
    match inserted {
        Some(seq) => Ok(seq),
        None => Ok(tx
            .prepare_cached("SELECT seq FROM squall_outbox WHERE message_id = ?1")?
            .query_row([c.id], |r| r.get(0))?),
    }
}

/// The current wall time in nanoseconds since the epoch, as stored in the `*_ns` columns.
fn now_ns() -> i64 {
    i64::try_from(Timestamp::now().as_nanos()).unwrap_or(i64::MAX)
}

/// The relay's access to a SQLite outbox: one connection of its own, used on the blocking pool.
///
/// Concurrency: the connection sits behind a `std::sync::Mutex` that only blocking-pool closures
/// lock, one statement group at a time; the relay task owns the store and awaits each closure, so
/// the lock is never contended in practice and never held on a runtime thread.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    relay_id: Arc<str>,
    lease_ttl: Duration,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("relay_id", &self.relay_id)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database file at `path` with a 5 s busy timeout and runs [`migrate`]. Blocking:
    /// call it before starting the runtime or within `spawn_blocking` if that matters.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Self::from_connection(conn)
    }

    /// Uses `conn` (its busy timeout and pragmas as set) and runs [`migrate`].
    pub fn from_connection(conn: Connection) -> Result<Self> {
        migrate(&conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            relay_id: format!("relay-{}", MessageId::generate()).into(),
            lease_ttl: Duration::from_secs(30),
        })
    }

    /// This relay's name in the lease row (default: `relay-` and a fresh UUIDv7). A relay
    /// restarted with the id of its previous run takes its lease over at once.
    pub fn relay_id(mut self, id: impl Into<String>) -> Self {
        self.relay_id = id.into().into();
        self
    }

    /// How long a lease lasts without renewal (default 30 s): how long a standby relay waits
    /// after the active one died. It must exceed the longest batch (sending stops at 90 % of it)
    /// and the relay's poll interval (the lease is renewed at every poll).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await?
    }
}

impl From<SqliteStore> for Store {
    fn from(s: SqliteStore) -> Self {
        Store(Box::new(s))
    }
}

const SELECT_PENDING: &str = "SELECT seq, message_id, subject, msg_key, headers, payload,
        timestamp_ns, delay_ns, ttl_ns
    FROM squall_outbox WHERE status = 'pending' ORDER BY seq LIMIT ?1";

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    let headers: String = r.get(4)?;
    Ok(RawRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        subject: r.get(2)?,
        key: r.get(3)?,
        headers: serde_json::from_str(&headers).unwrap_or(serde_json::Value::Null),
        payload: r.get(5)?,
        timestamp_ns: r.get(6)?,
        delay_ns: r.get(7)?,
        ttl_ns: r.get(8)?,
    })
}

#[async_trait]
impl Source for SqliteStore {
    fn label(&self) -> &'static str {
        "sqlite"
    }

    async fn claim(&mut self, limit: usize) -> Result<Claim> {
        let (id, ttl) = (self.relay_id.clone(), self.lease_ttl);
        let started = Instant::now();
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        let (rows, holder) = self
            .blocking(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = now_ns();
                let expires = now.saturating_add(i64::try_from(ttl.as_nanos()).unwrap_or(i64::MAX));
                let taken = tx.execute(
                    "INSERT INTO squall_outbox_lease (id, holder, expires_at_ns) VALUES (1, ?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET holder = excluded.holder,
                         expires_at_ns = excluded.expires_at_ns
                     WHERE holder = excluded.holder OR expires_at_ns <= ?3",
                    params![&*id, expires, now],
                )? == 1;
                if !taken {
                    tx.commit()?;
                    return Ok((Vec::new(), false));
                }
                let rows = tx
                    .prepare_cached(SELECT_PENDING)?
                    .query_map([limit_sql], raw_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                tx.commit()?;
                Ok((rows, true))
            })
            .await?;
        let full = rows.len() >= limit;
        Ok(Claim {
            rows: rows.into_iter().map(RawRow::decode).collect(),
            valid_until: Some(started + ttl.mul_f64(0.9)),
            standby: !holder,
            full,
        })
    }

    async fn complete(&mut self, outcomes: Vec<Outcome>, delete: bool) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ns();
            {
                let mut mark = tx.prepare_cached(
                    "UPDATE squall_outbox SET status = 'published', published_at_ns = ?2,
                         attempts = attempts + 1, last_error = NULL
                     WHERE seq = ?1 AND status = 'pending'",
                )?;
                let mut remove = tx.prepare_cached("DELETE FROM squall_outbox WHERE seq = ?1")?;
                let mut fail = tx.prepare_cached(
                    "UPDATE squall_outbox SET status = 'failed', attempts = attempts + 1,
                         last_error = ?2
                     WHERE seq = ?1 AND status = 'pending'",
                )?;
                let mut retry = tx.prepare_cached(
                    "UPDATE squall_outbox SET attempts = attempts + 1, last_error = ?2
                     WHERE seq = ?1 AND status = 'pending'",
                )?;
                for o in &outcomes {
                    match o {
                        Outcome::Published { seq, .. } if delete => remove.execute([seq])?,
                        Outcome::Published { seq, .. } => mark.execute(params![seq, now])?,
                        Outcome::Failed { seq, error } => fail.execute(params![seq, error])?,
                        Outcome::Retry { seq, error } => retry.execute(params![seq, error])?,
                    };
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn oldest_pending(&mut self) -> Result<Option<Duration>> {
        self.blocking(|c| {
            let created: Option<i64> = c
                .prepare_cached(
                    "SELECT created_at_ns FROM squall_outbox WHERE status = 'pending'
                     ORDER BY seq LIMIT 1",
                )?
                .query_row([], |r| r.get(0))
                .optional()?;
            Ok(created.map(|t| Duration::from_nanos(now_ns().saturating_sub(t).max(0) as u64)))
        })
        .await
    }

    async fn purge_published(&mut self, older_than: Duration) -> Result<u64> {
        let cutoff =
            now_ns().saturating_sub(i64::try_from(older_than.as_nanos()).unwrap_or(i64::MAX));
        self.blocking(move |c| {
            let n = c.execute(
                "DELETE FROM squall_outbox WHERE seq IN (SELECT seq FROM squall_outbox
                     WHERE status = 'published' AND published_at_ns <= ?1 LIMIT 10000)",
                [cutoff],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn release(&mut self) -> Result<()> {
        let id = self.relay_id.clone();
        self.blocking(move |c| {
            c.execute("DELETE FROM squall_outbox_lease WHERE holder = ?1", [&*id])?;
            Ok(())
        })
        .await
    }
}
