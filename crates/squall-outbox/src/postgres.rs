//! The PostgreSQL outbox: [`migrate`], [`enqueue`] (and [`notify_relay`]) inside the
//! application's transaction, and [`PgStore`], the relay's side.
//!
//! ## Several relays at once
//! Relays share the work with `SELECT ... FOR UPDATE SKIP LOCKED`: each claims the oldest pending
//! rows nobody else holds, in a transaction that stays open while it publishes them and commits
//! with their marks. A row is therefore published by one relay at a time; if a relay dies, its
//! connection closes, the server rolls back, and the rows are pending again.
//!
//! Skipping locked rows alone would break per-key order: relay B could skip key K's first row
//! (held by A) and publish K's second. So after locking, a relay re-reads the pending rows of
//! the keys it claimed (a plain read sees rows others hold) and keeps, per key, only the rows
//! that form an unbroken run from that key's oldest pending row; the rest stay pending and
//! locked until its commit. Whoever holds a key's oldest row makes progress, so nothing starves,
//! and relays work in parallel on different keys.
//!
//! "Order" is the order of `seq`, assigned at insert. Rows of one key inserted by concurrent
//! transactions are ordered by commit only if the application serializes them; it usually
//! does, by updating the same business row first (insert the outbox row after that update).
//!
//! A relay whose connection hangs keeps its locks: set `idle_in_transaction_session_timeout`
//! on the relay's role so a stuck relay's rows are released (and republished, deduplicated).
//!
//! ## Wake-up
//! With [`PgStore::listen`] the relay `LISTEN`s on [`NOTIFY_CHANNEL`]; call [`notify_relay`] in
//! the enqueuing transaction and the relay wakes when it commits, instead of at its next poll.
//! (PostgreSQL serializes the commits of notifying transactions; leave it off for heavy write
//! loads and use the poll interval or [`crate::RelayWaker`].)
//!
//! ## Schema
//! The table is `squall_outbox` resolved through `search_path`: to keep it in a schema, set the
//! search path on the connections (e.g. `Config::options("-c search_path=app")`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::BoxFuture;
use squall_core::Message;
use tokio::sync::Notify;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, Socket};

use crate::error::{Error, Result};
use crate::row::{Columns, Outcome, RawRow};
use crate::store::{Claim, Source, Store};

/// The channel [`notify_relay`] notifies and a listening [`PgStore`] listens on.
pub const NOTIFY_CHANNEL: &str = "squall_outbox";

/// The schema [`migrate`] creates (idempotent).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS squall_outbox (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id   TEXT        NOT NULL UNIQUE,
    subject      TEXT        NOT NULL,
    msg_key      TEXT,
    headers      JSONB       NOT NULL,
    payload      BYTEA       NOT NULL,
    timestamp_ns BIGINT      NOT NULL,
    delay_ns     BIGINT,
    ttl_ns       BIGINT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    status       TEXT        NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'published', 'failed')),
    attempts     INTEGER     NOT NULL DEFAULT 0,
    last_error   TEXT,
    published_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS squall_outbox_pending
    ON squall_outbox (seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS squall_outbox_pending_key
    ON squall_outbox (msg_key, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS squall_outbox_published
    ON squall_outbox (published_at) WHERE status = 'published';
";

/// Creates the outbox table and indexes if they do not exist ([`SCHEMA`]), in one transaction
/// serialized with other migrations by an advisory lock.
pub async fn migrate(client: &mut Client) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('squall_outbox_migrate'))",
        &[],
    )
    .await?;
    tx.batch_execute(SCHEMA).await?;
    tx.commit().await?;
    Ok(())
}

/// Stores `msg` in the outbox as part of `tx`, the transaction of the business change: both
/// commit or neither does. Returns the row's sequence (its place in insertion order).
///
/// The message id is the dedup key: if a row with this id is already in the outbox, nothing is
/// inserted and that row's sequence is returned. Fails with [`Error::Unstorable`] if a
/// timestamp, delay or ttl does not fit the columns.
pub async fn enqueue(tx: &tokio_postgres::Transaction<'_>, msg: &Message) -> Result<i64> {
    let c = Columns::new(msg)?;
    let inserted = tx
        .query_opt(
            "INSERT INTO squall_outbox (message_id, subject, msg_key, headers, payload,
                 timestamp_ns, delay_ns, ttl_ns)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (message_id) DO NOTHING RETURNING seq",
            &[
                &c.id,
                &c.subject,
                &c.key,
                &c.headers,
                &c.payload,
                &c.timestamp_ns,
                &c.delay_ns,
                &c.ttl_ns,
            ],
        )
        .await?;
    let row = match inserted {
        Some(row) => row,
        None => {
            tx.query_one(
                "SELECT seq FROM squall_outbox WHERE message_id = $1",
                &[&c.id],
            )
            .await?
        }
    };
    Ok(row.try_get(0)?)
}

/// Wakes listening relays ([`PgStore::listen`]) when `tx` commits. Call it once per
/// transaction, after [`enqueue`]; PostgreSQL folds repeated notifications into one.
pub async fn notify_relay(tx: &tokio_postgres::Transaction<'_>) -> Result<()> {
    tx.execute("SELECT pg_notify($1, '')", &[&NOTIFY_CHANNEL])
        .await?;
    Ok(())
}

type Connector = Box<
    dyn Fn(Config, Option<Arc<Notify>>) -> BoxFuture<'static, Result<Client, tokio_postgres::Error>>
        + Send
        + Sync,
>;

/// The relay's access to a PostgreSQL outbox: a connection of its own, opened lazily and
/// reopened after it is lost (the failed poll backs off first).
///
/// Concurrency: the store belongs to one relay task; the connection's driver runs in a spawned
/// task that ends when the connection closes, forwarding notifications to the relay's waker.
pub struct PgStore {
    config: Config,
    connect: Connector,
    client: Option<Client>,
    /// A claim transaction is open on `client`.
    in_tx: bool,
    listen: bool,
    waker: Option<Arc<Notify>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("connected", &self.client.is_some())
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// A store connecting with `config` through `tls` (`tokio_postgres::NoTls` or a TLS
    /// connector). Nothing is opened until the relay's first poll.
    pub fn new<T>(config: Config, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let connect: Connector = Box::new(move |config, waker| {
            let tls = tls.clone();
            Box::pin(async move {
                let (client, mut conn) = config.connect(tls).await?;
                tokio::spawn(async move {
                    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(_)) => {
                                if let Some(w) = &waker {
                                    w.notify_one();
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!("postgres outbox connection ended: {e}");
                                break;
                            }
                        }
                    }
                });
                Ok(client)
            })
        });
        PgStore {
            config,
            connect,
            client: None,
            in_tx: false,
            listen: false,
            waker: None,
        }
    }

    /// `LISTEN` on [`NOTIFY_CHANNEL`] so [`notify_relay`] wakes the relay (default off).
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }

    async fn connected(&mut self) -> Result<&Client> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
            self.in_tx = false;
        }
        if self.client.is_none() {
            let client = (self.connect)(self.config.clone(), self.waker.clone()).await?;
            if self.listen {
                client
                    .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
                    .await?;
            }
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| Error::Internal("postgres client missing after connect".into()))
    }

    /// After a failure the connection's state is unknown: drop it (the server rolls back an
    /// open claim) and reconnect at the next poll.
    fn reset_on_err<T>(&mut self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.client = None;
            self.in_tx = false;
        }
        r
    }

    async fn try_claim(&mut self, limit: usize) -> Result<Claim> {
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        let c = self.connected().await?;
        c.batch_execute("BEGIN").await?;
        let rows = c
            .query(
                "SELECT seq, message_id, subject, msg_key, headers, payload,
                        timestamp_ns, delay_ns, ttl_ns
                 FROM squall_outbox WHERE status = 'pending'
                 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&limit_sql],
            )
            .await?;
        let mut raw = Vec::with_capacity(rows.len());
        for r in &rows {
            raw.push(RawRow {
                seq: r.try_get(0)?,
                id: r.try_get(1)?,
                subject: r.try_get(2)?,
                key: r.try_get(3)?,
                headers: r.try_get(4)?,
                payload: r.try_get(5)?,
                timestamp_ns: r.try_get(6)?,
                delay_ns: r.try_get(7)?,
                ttl_ns: r.try_get(8)?,
            });
        }
        let full = raw.len() >= limit;
        let keys: Vec<&str> = raw
            .iter()
            .filter_map(|r| r.key.as_deref())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !keys.is_empty() {
            // Keep, per key, the unbroken run of claimed rows from the key's oldest pending row;
            // a row held by another relay (or committed late) stops the run.
            let max_seq = raw.iter().map(|r| r.seq).max().unwrap_or(0);
            let claimed: HashSet<i64> = raw.iter().map(|r| r.seq).collect();
            let pending = c
                .query(
                    "SELECT seq, msg_key FROM squall_outbox
                     WHERE status = 'pending' AND msg_key = ANY($1) AND seq <= $2
                     ORDER BY seq",
                    &[&keys, &max_seq],
                )
                .await?;
            let mut blocked: HashSet<String> = HashSet::new();
            let mut runs: HashSet<i64> = HashSet::new();
            for p in &pending {
                let (seq, key): (i64, String) = (p.try_get(0)?, p.try_get(1)?);
                if blocked.contains(&key) {
                    continue;
                }
                if claimed.contains(&seq) {
                    runs.insert(seq);
                } else {
                    blocked.insert(key);
                }
            }
            raw.retain(|r| r.key.is_none() || runs.contains(&r.seq));
        }
        self.in_tx = true;
        Ok(Claim {
            rows: raw.into_iter().map(RawRow::decode).collect(),
            valid_until: None,
            standby: false,
            full,
        })
    }

    async fn try_complete(&mut self, outcomes: Vec<Outcome>, delete: bool) -> Result<()> {
        let mut published = Vec::new();
        let (mut failed, mut failed_err) = (Vec::new(), Vec::new());
        let (mut retry, mut retry_err) = (Vec::new(), Vec::new());
        for o in outcomes {
            match o {
                Outcome::Published { seq, .. } => published.push(seq),
                Outcome::Failed { seq, error } => {
                    failed.push(seq);
                    failed_err.push(error);
                }
                Outcome::Retry { seq, error } => {
                    retry.push(seq);
                    retry_err.push(error);
                }
            }
        }
        let c = self
            .client
            .as_ref()
            .ok_or_else(|| Error::Internal("complete without a claim".into()))?;
        if !published.is_empty() {
            let sql = if delete {
                "DELETE FROM squall_outbox WHERE seq = ANY($1)"
            } else {
                "UPDATE squall_outbox SET status = 'published', published_at = now(),
                     attempts = attempts + 1, last_error = NULL
                 WHERE seq = ANY($1)"
            };
            c.execute(sql, &[&published]).await?;
        }
        for (seqs, errs, status) in [
            (&failed, &failed_err, "failed"),
            (&retry, &retry_err, "pending"),
        ] {
            if seqs.is_empty() {
                continue;
            }
            c.execute(
                "UPDATE squall_outbox o SET status = $3, attempts = o.attempts + 1,
                     last_error = f.err
                 FROM unnest($1::bigint[], $2::text[]) AS f(seq, err)
                 WHERE o.seq = f.seq",
                &[seqs, errs, &status],
            )
            .await?;
        }
        c.batch_execute("COMMIT").await?;
        self.in_tx = false;
        Ok(())
    }
}

impl From<PgStore> for Store {
    fn from(s: PgStore) -> Self {
        Store(Box::new(s))
    }
}

#[async_trait]
impl Source for PgStore {
    fn label(&self) -> &'static str {
        "postgres"
    }

    fn set_waker(&mut self, waker: Arc<Notify>) {
        self.waker = Some(waker);
    }

    async fn claim(&mut self, limit: usize) -> Result<Claim> {
        if self.in_tx {
            // A claim that was never completed (the relay gave up on it): end it first.
            let r = match &self.client {
                Some(c) => c.batch_execute("ROLLBACK").await.map_err(Error::from),
                None => Ok(()),
            };
            self.in_tx = false;
            self.reset_on_err(r)?;
        }
        let r = self.try_claim(limit).await;
        self.reset_on_err(r)
    }

    async fn complete(&mut self, outcomes: Vec<Outcome>, delete: bool) -> Result<()> {
        if !self.in_tx {
            return Err(Error::Internal("complete without an open claim".into()));
        }
        let r = self.try_complete(outcomes, delete).await;
        self.reset_on_err(r)
    }

    async fn oldest_pending(&mut self) -> Result<Option<Duration>> {
        let r = async {
            let row = self
                .connected()
                .await?
                .query_opt(
                    "SELECT EXTRACT(EPOCH FROM clock_timestamp() - created_at)::float8
                     FROM squall_outbox WHERE status = 'pending' ORDER BY seq LIMIT 1",
                    &[],
                )
                .await?;
            Ok(match row {
                Some(r) => Some(Duration::from_secs_f64(r.try_get::<_, f64>(0)?.max(0.0))),
                None => None,
            })
        }
        .await;
        self.reset_on_err(r)
    }

    async fn purge_published(&mut self, older_than: Duration) -> Result<u64> {
        let secs = older_than.as_secs_f64();
        let r = async {
            Ok(self
                .connected()
                .await?
                .execute(
                    "DELETE FROM squall_outbox WHERE seq IN (SELECT seq FROM squall_outbox
                         WHERE status = 'published'
                           AND published_at <= now() - make_interval(secs => $1)
                         LIMIT 10000)",
                    &[&secs],
                )
                .await?)
        }
        .await;
        self.reset_on_err(r)
    }

    async fn release(&mut self) -> Result<()> {
        if self.in_tx {
            self.in_tx = false;
            if let Some(c) = &self.client {
                c.batch_execute("ROLLBACK").await?;
            }
        }
        Ok(())
    }
}
