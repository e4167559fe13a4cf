//! [`PgStore`]: claims and completions in a PostgreSQL table it creates if missing.

use std::time::Duration;

use async_trait::async_trait;
use squall_core::{Error, ErrorKind, Result};
use tokio_postgres::Client;

use super::{Claim, ClaimToken, IdempotencyStore};

/// An [`IdempotencyStore`] in PostgreSQL, shared by every consumer process.
///
/// One table (default `squall_idempotency`), created by [`PgStore::new`] if missing:
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS squall_idempotency (
///     id         TEXT PRIMARY KEY,
///     state      TEXT NOT NULL,        -- 'claimed' or 'done'
///     token      TEXT,                 -- the claim's token
///     expires_at TIMESTAMPTZ NOT NULL  -- claim lease end, or when a done id is forgotten
/// );
/// ```
///
/// Expiry is checked with the database's clock; expired rows are taken over by a claim and
/// deleted by [`PgStore::purge_expired`] (call it now and then).
pub struct PgStore {
    client: Client,
    table: String,
    done_ttl: Duration,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("table", &self.table)
            .field("done_ttl", &self.done_ttl)
            .finish_non_exhaustive()
    }
}

fn db(what: &str, e: tokio_postgres::Error) -> Error {
    let kind = if e.is_closed() {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Storage
    };
    Error::new(kind, format!("postgres idempotency store: {what}")).with_source(e)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl PgStore {
    /// A store in table `squall_idempotency`, created if missing; done ids are kept 24 h.
    pub async fn new(client: Client) -> Result<Self> {
        PgStore::with_table(client, "squall_idempotency").await
    }

    /// A store in `table` (letters, digits and `_`, optionally `schema.table`), created if
    /// missing.
    pub async fn with_table(client: Client, table: &str) -> Result<Self> {
        let valid = !table.is_empty()
            && table.split('.').count() <= 2
            && table.split('.').all(|p| {
                !p.is_empty()
                    && !p.starts_with(|c: char| c.is_ascii_digit())
                    && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !valid {
            return Err(Error::config(
                "idempotency.postgres.table",
                format!("`{table}` is not a plain table name"),
            ));
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                     id TEXT PRIMARY KEY,
                     state TEXT NOT NULL,
                     token TEXT,
                     expires_at TIMESTAMPTZ NOT NULL
                 )"
            ))
            .await
            .map_err(|e| db("creating the table", e))?;
        Ok(PgStore {
            client,
            table: table.to_string(),
            done_ttl: Duration::from_secs(24 * 3600),
        })
    }

    /// How long done ids are remembered.
    pub fn done_ttl(mut self, ttl: Duration) -> Self {
        self.done_ttl = ttl;
        self
    }

    /// Deletes expired rows; returns how many.
    pub async fn purge_expired(&self) -> Result<u64> {
        self.client
            .execute(
                &format!("DELETE FROM {} WHERE expires_at <= now()", self.table),
                &[],
            )
            .await
            .map_err(|e| db("purging", e))
    }
}

#[async_trait]
impl IdempotencyStore for PgStore {
    async fn claim(&self, id: &str, lease: Duration) -> Result<Claim> {
        let t = &self.table;
        for _ in 0..3 {
            let token = ClaimToken::generate();
            let claimed = self
                .client
                .query_opt(
                    &format!(
                        "INSERT INTO {t} (id, state, token, expires_at)
                         VALUES ($1, 'claimed', $2, now() + $3::float8 * interval '1 millisecond')
                         ON CONFLICT (id) DO UPDATE
                           SET state = 'claimed', token = EXCLUDED.token, expires_at = EXCLUDED.expires_at
                           WHERE {t}.expires_at <= now()
                         RETURNING id"
                    ),
                    &[&id, &token.as_str(), &millis(lease)],
                )
                .await
                .map_err(|e| db("claiming", e))?;
            if claimed.is_some() {
                return Ok(Claim::Claimed(token));
            }
            let row = self
                .client
                .query_opt(
                    &format!("SELECT state FROM {t} WHERE id = $1 AND expires_at > now()"),
                    &[&id],
                )
                .await
                .map_err(|e| db("reading a claim", e))?;
            match row.map(|r| r.get::<_, String>(0)).as_deref() {
                Some("done") => return Ok(Claim::Done),
                Some(_) => return Ok(Claim::InProgress),
                None => continue, // expired in between: claim again
            }
        }
        Ok(Claim::InProgress)
    }

    async fn complete(&self, id: &str) -> Result<()> {
        self.client
            .execute(
                &format!(
                    "INSERT INTO {t} (id, state, token, expires_at)
                     VALUES ($1, 'done', NULL, now() + $2::float8 * interval '1 millisecond')
                     ON CONFLICT (id) DO UPDATE
                       SET state = 'done', token = NULL, expires_at = EXCLUDED.expires_at",
                    t = self.table
                ),
                &[&id, &millis(self.done_ttl)],
            )
            .await
            .map(|_| ())
            .map_err(|e| db("marking done", e))
    }

    async fn release(&self, id: &str, token: &ClaimToken) -> Result<()> {
        self.client
            .execute(
                &format!(
                    "DELETE FROM {} WHERE id = $1 AND state = 'claimed' AND token = $2",
                    self.table
                ),
                &[&id, &token.as_str()],
            )
            .await
            .map(|_| ())
            .map_err(|e| db("releasing a claim", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client on `SQUALL_POSTGRES_URL`, or `None` (and a notice) when unset; unset with
    /// `SQUALL_REQUIRE_PEERS=1` fails.
    async fn client() -> Option<Client> {
        let url = match std::env::var("SQUALL_POSTGRES_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                assert!(
                    std::env::var("SQUALL_REQUIRE_PEERS").as_deref() != Ok("1"),
                    "SQUALL_POSTGRES_URL is unset and SQUALL_REQUIRE_PEERS=1"
                );
                eprintln!(
                    "skipped: set SQUALL_POSTGRES_URL to run the PostgreSQL idempotency store tests"
                );
                return None;
            }
        };
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect to SQUALL_POSTGRES_URL");
        tokio::spawn(conn);
        Some(client)
    }

    #[tokio::test]
    async fn honours_the_store_contract_in_a_table_it_creates() {
        let Some(client) = client().await else { return };
        let table = format!(
            "squall_idem_test_{}_{}",
            std::process::id(),
            squall_core::Timestamp::now().as_nanos() % 1_000_000_000
        );
        let store = PgStore::with_table(client, &table).await.unwrap();
        let short = Duration::from_millis(150);
        let expired = async {
            // PostgreSQL's clock decides; wait until it says the short claim is over.
            for _ in 0..200 {
                let over: bool = store
                    .client
                    .query_one(
                        &format!("SELECT NOT EXISTS (SELECT 1 FROM {table} WHERE id = 'c' AND expires_at > now())"),
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if over {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the {short:?} claim never expired");
        };
        crate::idempotency::contract::check(&store, ["a", "b", "c"], short, expired).await;
        assert!(store.purge_expired().await.unwrap() <= 3);
        store
            .client
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn table_names_are_checked() {
        let Some(client) = client().await else { return };
        let e = PgStore::with_table(client, "x; DROP TABLE y")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("idempotency.postgres.table"));
    }
}
