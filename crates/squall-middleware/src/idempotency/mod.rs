//! Idempotent consumer: a layer that handles each message id once, whatever the backend
//! redelivers, through a pluggable [`IdempotencyStore`].
//!
//! For each message the layer **claims** its key (by default `handler/origin-id`, so two
//! handlers of one message each run once) for a lease, then:
//!
//! | claim | what happens |
//! |---|---|
//! | [`Claim::Claimed`] | the handler runs; on success the key is marked **done** (after success, never before), on failure the claim is **released** so the retry runs it |
//! | [`Claim::Done`] | the handler is skipped and the message acked (counted in `squall_idempotency_duplicates_total`) |
//! | [`Claim::InProgress`] | another worker holds it right now: the message is **deferred** — nacked after `in_progress_delay` (default 1 s) — and comes back when the first worker has finished, to be acked as done or (if it failed) handled |
//!
//! So two workers getting the same id at once (concurrent duplicates, or a redelivery after a
//! lease expired while the first handler still runs) never both run the handler. Deferring
//! rather than waiting keeps the worker free; deferrals count as deliveries at the backend
//! (`max_deliveries`) but never dead-letter a message by themselves.
//!
//! The claim's lease bounds how long a crashed worker blocks a message: set it above the
//! longest handler run (default 60 s). A worker that outlives its claim lease may run
//! concurrently with another; pair the layer with a timeout layer shorter than the lease.
//!
//! Stores: [`MemoryStore`] (one process; TTL and bounded size), [`RedisStore`] (`SET NX PX`),
//! [`PgStore`] (a table it creates).
//!
//! Shape: [`IdempotencyLayer`] makes the [`Idempotent`] service; its error is [`InProgress`] (the
//! source of a deferral); stores fail with `squall_core::Error`.
//!
//! ```
//! use std::time::Duration;
//! use squall_middleware::{Incoming, handler_fn, HandlerError};
//! use squall_middleware::idempotency::{IdempotencyLayer, MemoryStore};
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStore::new(Duration::from_secs(3600), 100_000);
//! let handled = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let count = handled.clone();
//! let svc = IdempotencyLayer::new(store).layer(handler_fn(move |_m: Incoming| {
//!     count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async { Ok::<_, HandlerError>(()) }
//! }));
//! let msg = squall_core::Message::builder("orders.paid")?.id("order-7")?.build();
//! svc.clone().oneshot(Incoming::new(msg.clone())).await.unwrap();
//! svc.oneshot(Incoming::new(msg)).await.unwrap(); // a duplicate: acked, not handled
//! assert_eq!(handled.load(std::sync::atomic::Ordering::SeqCst), 1);
//! # Ok::<(), squall_core::Error>(()) }).unwrap();
//! ```

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use metrics::Counter;
use squall_core::Result;
use tower::{Layer, Service};

use crate::error::{BoxError, HandlerError, from_inner};
use crate::handler::Incoming;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PgStore;
#[cfg(feature = "redis")]
pub use redis::RedisStore;

/// Proves a claim; needed to release it, so a worker whose claim expired and was taken over
/// cannot release the new holder's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimToken(String);

impl ClaimToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        ClaimToken(format!("{:032x}", rand::random::<u128>()))
    }
    /// The token as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// It is yours for the lease: handle it, then `complete` or `release`.
    Claimed(ClaimToken),
    /// Someone else holds an unexpired claim.
    InProgress,
    /// It was handled already.
    Done,
}

/// Where the idempotent consumer records claims and completions.
///
/// Each method is atomic with respect to the others for one id; `claim` of an id whose claim
/// lease expired succeeds (the holder is presumed dead). Errors are retryable
/// ([`squall_core::ErrorKind::Unavailable`] for an unreachable store).
///
/// Cancel safety: none of the methods is cancel safe. A `claim` dropped after the store
/// recorded it leaves a claim nobody holds until its lease expires (duplicates are deferred
/// meanwhile); a dropped `complete` may leave the id claimed instead of done (a duplicate after
/// the lease runs again); a dropped `release` leaves the claim to expire.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `id` for `lease` unless it is done or claimed by someone else.
    async fn claim(&self, id: &str, lease: Duration) -> Result<Claim>;
    /// Marks `id` done (kept for the store's retention), whoever holds the claim.
    async fn complete(&self, id: &str) -> Result<()>;
    /// Drops the claim on `id` if `token` still holds it; otherwise does nothing.
    async fn release(&self, id: &str, token: &ClaimToken) -> Result<()>;
}

#[async_trait]
impl<T: IdempotencyStore + ?Sized> IdempotencyStore for Arc<T> {
    async fn claim(&self, id: &str, lease: Duration) -> Result<Claim> {
        (**self).claim(id, lease).await
    }
    async fn complete(&self, id: &str) -> Result<()> {
        (**self).complete(id).await
    }
    async fn release(&self, id: &str, token: &ClaimToken) -> Result<()> {
        (**self).release(id, token).await
    }
}

/// The error a deferred duplicate carries.
#[derive(Debug, Clone)]
pub struct InProgress {
    /// The deduplication key.
    pub key: String,
}

impl fmt::Display for InProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message `{}` is being handled by another worker",
            self.key
        )
    }
}

impl std::error::Error for InProgress {}

type KeyFn = Arc<dyn Fn(&Incoming) -> String + Send + Sync>;

/// Deduplicates by message id; see the [module docs](self).
#[derive(Clone)]
pub struct IdempotencyLayer {
    store: Arc<dyn IdempotencyStore>,
    lease: Duration,
    in_progress_delay: Duration,
    key: KeyFn,
    duplicates: Counter,
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("lease", &self.lease)
            .field("in_progress_delay", &self.in_progress_delay)
            .finish_non_exhaustive()
    }
}

/// `handler/origin-id`, or the origin id outside a router.
fn default_key(m: &Incoming) -> String {
    if m.handler().is_empty() {
        m.origin_id().to_string()
    } else {
        format!("{}/{}", m.handler(), m.origin_id())
    }
}

impl IdempotencyLayer {
    /// Deduplicates through `store`, with a 60 s claim lease and a 1 s in-progress delay.
    pub fn new(store: impl IdempotencyStore + 'static) -> Self {
        IdempotencyLayer {
            store: Arc::new(store),
            lease: Duration::from_secs(60),
            in_progress_delay: Duration::from_secs(1),
            key: Arc::new(default_key),
            duplicates: metrics::counter!(crate::metrics::DUPLICATES),
        }
    }
    /// How long a claim holds without completion (above the longest handler run).
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }
    /// How long a duplicate found in progress waits before it is offered again.
    pub fn in_progress_delay(mut self, d: Duration) -> Self {
        self.in_progress_delay = d;
        self
    }
    /// The deduplication key of a message (default: `handler/origin-id`).
    pub fn key(mut self, f: impl Fn(&Incoming) -> String + Send + Sync + 'static) -> Self {
        self.key = Arc::new(f);
        self
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotent<S>;
    fn layer(&self, inner: S) -> Idempotent<S> {
        Idempotent {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`IdempotencyLayer`].
#[derive(Clone)]
pub struct Idempotent<S> {
    inner: S,
    layer: IdempotencyLayer,
}

impl<S> fmt::Debug for Idempotent<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.layer.fmt(f)
    }
}

impl<S> Service<Incoming> for Idempotent<S>
where
    S: Service<Incoming, Response = ()> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx).map_err(from_inner)
    }

    fn call(&mut self, req: Incoming) -> Self::Future {
        // The ready service goes into the future; a fresh clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let key = (layer.key)(&req);
            let token = match layer.store.claim(&key, layer.lease).await {
                Ok(Claim::Claimed(t)) => t,
                Ok(Claim::Done) => {
                    layer.duplicates.increment(1);
                    tracing::debug!(%key, "duplicate of a handled message: skipped");
                    return Ok(());
                }
                Ok(Claim::InProgress) => {
                    return Err(HandlerError::defer(
                        layer.in_progress_delay,
                        InProgress { key },
                    ));
                }
                Err(e) => {
                    return Err(
                        HandlerError::retryable(e).context("claiming the message id failed")
                    );
                }
            };
            let outcome = inner.call(req).await.map_err(from_inner);
            match outcome {
                Ok(()) => {
                    if let Err(e) = layer.store.complete(&key).await {
                        // Acked all the same; a duplicate after the claim lease would run again.
                        tracing::warn!(%key, "marking the message done failed: {e}");
                    }
                    Ok(())
                }
                Err(e) => {
                    if let Err(re) = layer.store.release(&key, &token).await {
                        tracing::warn!(%key, "releasing the claim failed (it expires with its lease): {re}");
                    }
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod contract {
    //! The behaviour every store must show; run by each store's tests.
    use super::*;

    /// `ids` must be fresh. `expire` waits until a claim of `short` has expired.
    pub(crate) async fn check<S: IdempotencyStore>(
        store: &S,
        ids: [&str; 3],
        short: Duration,
        expire: impl Future<Output = ()>,
    ) {
        let long = Duration::from_secs(60);
        let [a, b, c] = ids;
        let Claim::Claimed(t) = store.claim(a, long).await.unwrap() else {
            panic!("a fresh id is claimable")
        };
        assert_eq!(
            store.claim(a, long).await.unwrap(),
            Claim::InProgress,
            "held by another"
        );
        store.release(a, &ClaimToken::generate()).await.unwrap();
        assert_eq!(
            store.claim(a, long).await.unwrap(),
            Claim::InProgress,
            "a stranger's token releases nothing"
        );
        store.release(a, &t).await.unwrap();
        let Claim::Claimed(_) = store.claim(a, long).await.unwrap() else {
            panic!("a released id is claimable again")
        };
        store.complete(a).await.unwrap();
        assert_eq!(
            store.claim(a, long).await.unwrap(),
            Claim::Done,
            "done stays done"
        );
        let Claim::Claimed(t) = store.claim(b, long).await.unwrap() else {
            panic!("fresh")
        };
        store.complete(b).await.unwrap();
        store.release(b, &t).await.unwrap();
        assert_eq!(
            store.claim(b, long).await.unwrap(),
            Claim::Done,
            "release never undoes done"
        );
        let Claim::Claimed(_) = store.claim(c, short).await.unwrap() else {
            panic!("fresh")
        };
        expire.await;
        assert!(
            matches!(store.claim(c, long).await.unwrap(), Claim::Claimed(_)),
            "an expired claim is taken over"
        );
    }
}
