//! Handlers are tower services over [`Incoming`]: a message with its delivery facts (attempt,
//! sequence, group, publish time) but not its settle handle — settling is the runtime's job.
//!
//! [`handler_fn`] turns an async closure into a service; any tower layer (timeout, concurrency
//! limit, rate limit, load shed, or this crate's) wraps it. A batch handler ([`batch_fn`]) is a
//! service over `Vec<Incoming>` whose response is `()` (all succeeded) or one result per
//! message ([`BatchResponse`]); [`request_fn`] makes one over any request type, such as a
//! decoded [`crate::json::Json`].
//!
//! ```
//! use squall_middleware::{Incoming, handler_fn, HandlerError};
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let handler = handler_fn(|msg| async move {
//!     let n: u32 = std::str::from_utf8(msg.message().payload())?.parse()?;
//!     assert_eq!(n, 42);
//!     Ok::<_, HandlerError>(())
//! });
//! let msg = squall_core::Message::builder("jobs.count")?.payload("42").build();
//! handler.oneshot(Incoming::new(msg)).await.unwrap();
//! # Ok::<(), squall_core::Error>(()) }).unwrap();
//! ```

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::TryFutureExt;
use futures::future::MapErr;
use squall_core::{Delivery, Message, Timestamp, headers};
use tower::Service;
use tower::util::BoxCloneService;

use crate::error::HandlerError;

/// Header carrying the original message id on copies the runtime republishes (retries on
/// backends without delayed nacks), so deduplication keys stay stable.
pub const ORIGIN_ID: &str = "squall-origin-id";

/// A message handed to a handler, with what the backend said about this delivery.
#[derive(Debug, Clone)]
pub struct Incoming {
    message: Message,
    attempt: u32,
    sequence: u64,
    group: Option<Arc<str>>,
    published_at: Timestamp,
    deadline: Timestamp,
    route: Arc<str>,
    handler: Arc<str>,
}

impl Incoming {
    /// A first delivery of `message` outside any runtime (for tests and direct calls): attempt 1,
    /// sequence 0, no group, published and leased now, empty route and handler names.
    pub fn new(message: Message) -> Self {
        let now = Timestamp::now();
        Incoming {
            attempt: attempt_header(&message).unwrap_or(1),
            message,
            sequence: 0,
            group: None,
            published_at: now,
            deadline: now,
            route: "".into(),
            handler: "".into(),
        }
    }

    /// What the runtime hands a handler for `d`.
    pub fn from_delivery(d: &Delivery, route: Arc<str>, handler: Arc<str>) -> Self {
        Incoming {
            message: d.message().clone(),
            attempt: effective_attempt(d.attempt(), d.message()),
            sequence: d.sequence(),
            group: d.group().map(Into::into),
            published_at: d.published_at(),
            deadline: d.deadline(),
            route,
            handler,
        }
    }

    /// Sets the attempt number.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }
    /// Sets the route and handler names.
    pub fn with_names(mut self, route: &str, handler: &str) -> Self {
        self.route = route.into();
        self.handler = handler.into();
        self
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }
    /// Takes the message.
    pub fn into_message(self) -> Message {
        self.message
    }
    /// 1 on the first attempt: the delivery's attempt, or the `squall-attempt` header when a
    /// republished retry carries a higher one.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// Stream sequence (0 where the backend has none).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
    /// The consuming group.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }
    /// When the backend stored the message.
    pub fn published_at(&self) -> Timestamp {
        self.published_at
    }
    /// When the lease expires, as known at delivery.
    pub fn deadline(&self) -> Timestamp {
        self.deadline
    }
    /// The route name (empty outside a router).
    pub fn route(&self) -> &str {
        &self.route
    }
    /// The handler name (empty outside a router).
    pub fn handler(&self) -> &str {
        &self.handler
    }
    /// The id deduplication should use: the [`ORIGIN_ID`] header of a republished copy, else the
    /// message id.
    pub fn origin_id(&self) -> &str {
        origin_id(&self.message)
    }
}

/// The [`ORIGIN_ID`] header, else the message id.
pub(crate) fn origin_id(m: &Message) -> &str {
    m.headers()
        .get(ORIGIN_ID)
        .unwrap_or_else(|| m.id().as_str())
}

fn attempt_header(m: &Message) -> Option<u32> {
    m.headers()
        .get(headers::ATTEMPT)
        .and_then(|v| v.parse().ok())
}

/// The larger of the backend's attempt and the `squall-attempt` header.
pub(crate) fn effective_attempt(delivered: u32, m: &Message) -> u32 {
    delivered.max(attempt_header(m).unwrap_or(0)).max(1)
}

/// A service made from an async closure; see [`handler_fn`], [`batch_fn`], [`request_fn`].
pub struct HandlerFn<F, R = Incoming> {
    f: F,
    _request: PhantomData<fn(R)>,
}

impl<F: Clone, R> Clone for HandlerFn<F, R> {
    fn clone(&self) -> Self {
        HandlerFn {
            f: self.f.clone(),
            _request: PhantomData,
        }
    }
}

impl<F, R> std::fmt::Debug for HandlerFn<F, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerFn")
    }
}

/// A handler from `f(Incoming) -> impl Future<Output = Result<(), E>>`, where `E` converts into
/// a [`HandlerError`] (any `std::error::Error`, so `?` works). The closure's argument type is
/// inferred.
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F, Incoming>
where
    F: FnMut(Incoming) -> Fut,
{
    request_fn(f)
}

/// A batch handler from `f(Vec<Incoming>) -> impl Future<Output = Result<R, E>>`, where `R` is
/// a [`BatchResponse`].
pub fn batch_fn<F, Fut>(f: F) -> HandlerFn<F, Vec<Incoming>>
where
    F: FnMut(Vec<Incoming>) -> Fut,
{
    request_fn(f)
}

/// A service over any request type `R` (e.g. a decoded [`crate::json::Json`]) from
/// `f(R) -> impl Future<Output = Result<T, E>>`. Annotate the closure's argument.
pub fn request_fn<R, F, Fut>(f: F) -> HandlerFn<F, R>
where
    F: FnMut(R) -> Fut,
{
    HandlerFn {
        f,
        _request: PhantomData,
    }
}

impl<F, R, Fut, T, E> Service<R> for HandlerFn<F, R>
where
    F: FnMut(R) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Into<HandlerError>,
{
    type Response = T;
    type Error = HandlerError;
    type Future = MapErr<Fut, fn(E) -> HandlerError>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        (self.f)(req).map_err(Into::into as fn(E) -> HandlerError)
    }
}

/// What a batch handler may answer: `()` (every message succeeded) or one result per message,
/// in order.
pub trait BatchResponse {
    /// One result per message of a batch of `n`.
    fn into_results(self, n: usize) -> Vec<Result<(), HandlerError>>;
}

impl BatchResponse for () {
    fn into_results(self, n: usize) -> Vec<Result<(), HandlerError>> {
        (0..n).map(|_| Ok(())).collect()
    }
}

impl BatchResponse for Vec<Result<(), HandlerError>> {
    /// Missing results count as retryable failures; extra ones are ignored.
    fn into_results(mut self, n: usize) -> Vec<Result<(), HandlerError>> {
        self.truncate(n);
        while self.len() < n {
            self.push(Err(HandlerError::msg(
                "the batch handler returned no result for this message",
            )));
        }
        self
    }
}

/// A type-erased handler as the runtime stores it.
pub(crate) type BoxHandler = BoxCloneService<Incoming, (), HandlerError>;
/// A type-erased batch handler.
pub(crate) type BoxBatchHandler =
    BoxCloneService<Vec<Incoming>, Vec<Result<(), HandlerError>>, HandlerError>;

/// Erases a handler service.
pub(crate) fn boxed<S>(svc: S) -> BoxHandler
where
    S: Service<Incoming, Response = ()> + Clone + Send + 'static,
    S::Error: Into<crate::BoxError>,
    S::Future: Send + 'static,
{
    BoxCloneService::new(tower::ServiceExt::map_err(svc, |e: S::Error| {
        HandlerError::from_boxed(e.into())
    }))
}

/// Erases a batch handler service.
pub(crate) fn boxed_batch<S>(svc: S) -> BoxBatchHandler
where
    S: Service<Vec<Incoming>> + Clone + Send + 'static,
    S::Response: BatchResponse,
    S::Error: Into<crate::BoxError>,
    S::Future: Send + 'static,
{
    BoxCloneService::new(BatchAdapter { inner: svc })
}

/// Maps a batch service's response to per-message results, keeping the batch length.
#[derive(Clone)]
struct BatchAdapter<S> {
    inner: S,
}

impl<S> Service<Vec<Incoming>> for BatchAdapter<S>
where
    S: Service<Vec<Incoming>>,
    S::Response: BatchResponse,
    S::Error: Into<crate::BoxError>,
    S::Future: Send + 'static,
{
    type Response = Vec<Result<(), HandlerError>>;
    type Error = HandlerError;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, HandlerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| HandlerError::from_boxed(e.into()))
    }

    fn call(&mut self, batch: Vec<Incoming>) -> Self::Future {
        let n = batch.len();
        let fut = self.inner.call(batch);
        Box::pin(async move {
            match fut.await {
                Ok(r) => Ok(r.into_results(n)),
                Err(e) => Err(HandlerError::from_boxed(e.into())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attempt_header_raises_the_attempt_never_lowers_it() {
        let m = Message::builder("a")
            .unwrap()
            .header(headers::ATTEMPT, "3")
            .unwrap()
            .build();
        assert_eq!(effective_attempt(1, &m), 3);
        assert_eq!(effective_attempt(5, &m), 5);
        let plain = Message::builder("a").unwrap().build();
        assert_eq!(effective_attempt(2, &plain), 2);
        assert_eq!(Incoming::new(m).attempt(), 3);
    }

    #[test]
    fn short_batch_responses_fail_the_missing_messages() {
        let r = vec![Ok(())].into_results(3);
        assert_eq!(r.len(), 3);
        assert!(r[0].is_ok() && r[1].is_err() && r[2].is_err());
        assert_eq!(().into_results(2).len(), 2);
    }
}
