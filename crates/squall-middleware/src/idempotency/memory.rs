//! [`MemoryStore`]: claims and completions in this process's memory, with a TTL for done
//! entries and a bounded size.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use metrics::Counter;
use squall_core::Result;
use tokio::time::Instant;

use super::{Claim, ClaimToken, IdempotencyStore};

/// An in-process [`IdempotencyStore`]: right for one consumer process (all its workers), not
/// for several (use Redis or PostgreSQL).
///
/// Done entries are remembered for `done_ttl`; claims for their lease. At most `max_entries`
/// are kept: adding one more first drops expired entries, then the entry expiring soonest. An
/// evicted done entry lets a later duplicate run again, so evictions are counted
/// ([`MemoryStore::evictions`], metric `squall_idempotency_evictions_total`): size the store
/// for the ids seen within the TTL. Time follows tokio's clock.
pub struct MemoryStore {
    /// One lock for the map and its expiry index; held for map operations only, never across
    /// an await.
    state: Mutex<State>,
    done_ttl: Duration,
    max_entries: usize,
    evictions: AtomicU64,
    evicted: Counter,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// `(expiry, insertion number) -> id`, to drop expired or soonest-expiring entries first.
    by_expiry: BTreeMap<(Instant, u64), String>,
    next: u64,
}

struct Entry {
    token: Option<ClaimToken>, // None: done
    expires: Instant,
    n: u64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.len())
            .field("done_ttl", &self.done_ttl)
            .field("max_entries", &self.max_entries)
            .field("evictions", &self.evictions())
            .finish()
    }
}

impl MemoryStore {
    /// Remembers done ids for `done_ttl`, at most `max_entries` ids (at least 1).
    pub fn new(done_ttl: Duration, max_entries: usize) -> Self {
        MemoryStore {
            state: Mutex::default(),
            done_ttl,
            max_entries: max_entries.max(1),
            evictions: AtomicU64::new(0),
            evicted: metrics::counter!(crate::metrics::EVICTIONS),
        }
    }

    /// Entries dropped before they expired to stay within `max_entries`.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Entries held now (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets `id` to `token` (None: done) until `expires`, making room first.
    fn put(&self, st: &mut State, id: &str, token: Option<ClaimToken>, expires: Instant) {
        st.remove(id);
        let now = Instant::now();
        while let Some((&(at, n), _)) = st.by_expiry.first_key_value() {
            if at > now && st.entries.len() < self.max_entries {
                break;
            }
            let victim = st.by_expiry.remove(&(at, n)).expect("present");
            st.entries.remove(&victim);
            if at > now {
                self.evictions.fetch_add(1, Ordering::Relaxed);
                self.evicted.increment(1);
            }
        }
        let n = st.next;
        st.next += 1;
        st.by_expiry.insert((expires, n), id.to_string());
        st.entries
            .insert(id.to_string(), Entry { token, expires, n });
    }
}

impl State {
    fn remove(&mut self, id: &str) -> Option<Entry> {
        let e = self.entries.remove(id)?;
        self.by_expiry.remove(&(e.expires, e.n));
        Some(e)
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(&self, id: &str, lease: Duration) -> Result<Claim> {
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(e) = st.entries.get(id)
            && e.expires > now
        {
            return Ok(if e.token.is_some() {
                Claim::InProgress
            } else {
                Claim::Done
            });
        }
        let token = ClaimToken::generate();
        self.put(&mut st, id, Some(token.clone()), now + lease);
        Ok(Claim::Claimed(token))
    }

    async fn complete(&self, id: &str) -> Result<()> {
        let mut st = self.lock();
        self.put(&mut st, id, None, Instant::now() + self.done_ttl);
        Ok(())
    }

    async fn release(&self, id: &str, token: &ClaimToken) -> Result<()> {
        let mut st = self.lock();
        if st
            .entries
            .get(id)
            .is_some_and(|e| e.token.as_ref() == Some(token))
        {
            st.remove(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn honours_the_store_contract() {
        let store = MemoryStore::new(Duration::from_secs(3600), 100);
        let short = Duration::from_secs(5);
        super::super::contract::check(&store, ["a", "b", "c"], short, tokio::time::sleep(short))
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn done_entries_expire_after_their_ttl() {
        let store = MemoryStore::new(Duration::from_secs(10), 100);
        let Claim::Claimed(_) = store.claim("x", Duration::from_secs(1)).await.unwrap() else {
            panic!("fresh")
        };
        store.complete("x").await.unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(
            store.claim("x", Duration::from_secs(1)).await.unwrap(),
            Claim::Done
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(
            store.claim("x", Duration::from_secs(1)).await.unwrap(),
            Claim::Claimed(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_evicts_the_soonest_expiring_and_counts_it() {
        let store = MemoryStore::new(Duration::from_secs(100), 3);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            store.claim(id, Duration::from_secs(1)).await.unwrap();
            store.complete(id).await.unwrap();
            tokio::time::advance(Duration::from_secs(1 + i as u64)).await;
        }
        assert_eq!(store.evictions(), 0);
        store.claim("d", Duration::from_secs(50)).await.unwrap();
        assert_eq!(store.len(), 3, "bounded");
        assert_eq!(store.evictions(), 1, "one live entry had to go");
        assert!(
            matches!(
                store.claim("a", Duration::from_secs(1)).await.unwrap(),
                Claim::Claimed(_)
            ),
            "the oldest done entry was the one evicted"
        );
        assert_eq!(
            store.claim("c", Duration::from_secs(1)).await.unwrap(),
            Claim::Done
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_make_room_without_counting_as_evictions() {
        let store = MemoryStore::new(Duration::from_secs(1), 2);
        store.complete("a").await.unwrap();
        store.complete("b").await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        store.complete("c").await.unwrap();
        assert_eq!(store.evictions(), 0);
        assert_eq!(store.len(), 1, "both expired entries were swept");
    }
}
