//! [`RedisStore`]: claims as `SET key claimed:<token> NX PX <lease>`, completions as
//! `SET key done PX <ttl>`, releases by a compare-and-delete script.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use squall_core::{Error, ErrorKind, Result};

use super::{Claim, ClaimToken, IdempotencyStore};

const DONE: &str = "done";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// An [`IdempotencyStore`] in Redis, shared by every consumer process. Keys are
/// `<prefix><id>` (prefix default `squall:idem:`); done keys expire after `done_ttl`, claims
/// after their lease (Redis's clock).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    done_ttl: Duration,
    release: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("done_ttl", &self.done_ttl)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: redis::RedisError) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("redis idempotency store: {what}"),
    )
    .with_source(e)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    /// A store over `conn`, remembering done ids for 24 h.
    pub fn new(conn: ConnectionManager) -> Self {
        RedisStore {
            conn,
            prefix: "squall:idem:".into(),
            done_ttl: Duration::from_secs(24 * 3600),
            release: redis::Script::new(RELEASE),
        }
    }

    /// Connects to `url` (`redis://host:port/db`).
    pub async fn connect(url: &str) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("redis URL `{url}` is not valid"),
            )
            .with_source(e)
        })?;
        let conn = client
            .get_connection_manager()
            .await
            .map_err(|e| unavailable(&format!("connecting to {url}"), e))?;
        Ok(RedisStore::new(conn))
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long done ids are remembered.
    pub fn done_ttl(mut self, ttl: Duration) -> Self {
        self.done_ttl = ttl;
        self
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn claim(&self, id: &str, lease: Duration) -> Result<Claim> {
        let key = self.key(id);
        let mut conn = self.conn.clone();
        // A claim can expire between the failed SET and the GET: then try again.
        for _ in 0..3 {
            let token = ClaimToken::generate();
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(format!("claimed:{}", token.as_str()))
                .arg("NX")
                .arg("PX")
                .arg(millis(lease))
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("claiming", e))?;
            if set.is_some() {
                return Ok(Claim::Claimed(token));
            }
            let current: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("reading a claim", e))?;
            match current.as_deref() {
                Some(DONE) => return Ok(Claim::Done),
                Some(_) => return Ok(Claim::InProgress),
                None => continue,
            }
        }
        Ok(Claim::InProgress)
    }

    async fn complete(&self, id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(self.key(id))
            .arg(DONE)
            .arg("PX")
            .arg(millis(self.done_ttl))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| unavailable("marking done", e))
    }

    async fn release(&self, id: &str, token: &ClaimToken) -> Result<()> {
        let mut conn = self.conn.clone();
        self.release
            .key(self.key(id))
            .arg(format!("claimed:{}", token.as_str()))
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| unavailable("releasing a claim", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SQUALL_REDIS_URL`, or `None` (and a notice) when unset; unset with
    /// `SQUALL_REQUIRE_PEERS=1` fails.
    fn url() -> Option<String> {
        match std::env::var("SQUALL_REDIS_URL") {
            Ok(u) if !u.is_empty() => Some(u),
            _ => {
                assert!(
                    std::env::var("SQUALL_REQUIRE_PEERS").as_deref() != Ok("1"),
                    "SQUALL_REDIS_URL is unset and SQUALL_REQUIRE_PEERS=1"
                );
                eprintln!("skipped: set SQUALL_REDIS_URL to run the Redis idempotency store tests");
                None
            }
        }
    }

    #[tokio::test]
    async fn honours_the_store_contract() {
        let Some(url) = url() else { return };
        let run = format!(
            "{}-{}",
            std::process::id(),
            squall_core::Timestamp::now().as_nanos()
        );
        let store = RedisStore::connect(&url)
            .await
            .unwrap()
            .prefix(format!("squall-test:{run}:"))
            .done_ttl(Duration::from_secs(60));
        let short = Duration::from_millis(150);
        let probe = store.clone();
        // Redis expires on its own clock: wait until it says the short claim is gone.
        let expired = async move {
            let mut conn = probe.conn.clone();
            for _ in 0..200 {
                let exists: i64 = redis::cmd("EXISTS")
                    .arg(probe.key("c"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if exists == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the {short:?} claim never expired");
        };
        crate::idempotency::contract::check(&store, ["a", "b", "c"], short, expired).await;
    }
}
