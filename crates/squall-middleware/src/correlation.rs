//! Correlation ids and W3C trace context, carried from a message into everything a handler
//! publishes while handling it.
//!
//! [`CorrelationLayer`] reads the incoming message's `correlation-id` (falling back to its id,
//! so every chain has one) and `traceparent` headers into a [`TraceContext`], makes it the
//! task-local current context while the handler runs, and enters a `tracing` span carrying the
//! correlation id. Outgoing messages pick it up:
//!
//! - implicitly, by publishing through a [`ContextPublisher`] (a wrapper implementing
//!   [`Publisher`]);
//! - explicitly, with [`propagate`] (current context) or [`TraceContext::apply`] — needed in a
//!   task the handler spawns, where the task-local is not visible.
//!
//! Headers an outgoing message already has are kept. The `traceparent` is copied as is (the
//! handler's work is one hop of the same trace; a tracing integration that opens spans should
//! set its own before publishing).
//!
//! Shape: [`CorrelationLayer`] makes the [`Correlated`] service; it has no error of its own (the
//! inner error passes through).
//!
//! ```
//! use std::sync::Arc;
//! use squall_broker::Broker;
//! use squall_core::{Message, Publisher, Subscriber, Subscription, headers};
//! use squall_middleware::{Incoming, handler_fn, HandlerError};
//! use squall_middleware::correlation::{ContextPublisher, CorrelationLayer};
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let broker = Broker::in_memory()?;
//! let mut billed = broker.subscribe(Subscription::new("orders.billed")?).await?;
//! let out = Arc::new(ContextPublisher::new(broker.clone()));
//! let svc = CorrelationLayer::new().layer(handler_fn(move |_m: Incoming| {
//!     let out = out.clone();
//!     async move {
//!         out.publish(Message::builder("orders.billed")?.build()).await?;
//!         Ok::<_, HandlerError>(())
//!     }
//! }));
//! let msg = Message::builder("orders.placed")?.header(headers::CORRELATION_ID, "req-7")?.build();
//! svc.oneshot(Incoming::new(msg)).await.unwrap();
//! let billed = billed.next().await.unwrap()?;
//! assert_eq!(billed.message().correlation_id(), Some("req-7"));
//! # Ok::<(), squall_core::Error>(()) }).unwrap();
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use squall_core::{Message, PendingAck, Publisher, Result, headers};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::error::{BoxError, HandlerError, from_inner};
use crate::handler::Incoming;

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The correlation id and trace context of the message being handled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// The `correlation-id` to stamp on outgoing messages.
    pub correlation_id: Option<String>,
    /// The W3C `traceparent` to stamp on outgoing messages.
    pub traceparent: Option<String>,
}

impl TraceContext {
    /// The context `m` carries (no fallback).
    pub fn from_message(m: &Message) -> Self {
        TraceContext {
            correlation_id: m.correlation_id().map(str::to_string),
            traceparent: m.headers().get(headers::TRACEPARENT).map(str::to_string),
        }
    }

    /// The current task's context, if a [`CorrelationLayer`] (or [`TraceContext::scope`]) set one.
    pub fn current() -> Option<TraceContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `f` with this as the current context.
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }

    /// Sets the headers `m` does not have yet.
    pub fn apply(&self, m: &mut Message) -> Result<()> {
        for (name, value) in [
            (headers::CORRELATION_ID, &self.correlation_id),
            (headers::TRACEPARENT, &self.traceparent),
        ] {
            if let Some(v) = value
                && m.headers().get(name).is_none()
            {
                m.headers_mut().insert(name, v)?;
            }
        }
        Ok(())
    }
}

/// Stamps the current context (if any) on `m`; see [`TraceContext::apply`].
pub fn propagate(m: &mut Message) -> Result<()> {
    match TraceContext::current() {
        Some(ctx) => ctx.apply(m),
        None => Ok(()),
    }
}

/// Makes the incoming message's context current; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct CorrelationLayer {
    fallback_to_id: bool,
}

impl Default for CorrelationLayer {
    fn default() -> Self {
        CorrelationLayer::new()
    }
}

impl CorrelationLayer {
    /// Uses the message id as correlation id when the message has none.
    pub fn new() -> Self {
        CorrelationLayer {
            fallback_to_id: true,
        }
    }
    /// Whether a message without a correlation id starts one with its own id (default true).
    pub fn fallback_to_id(mut self, on: bool) -> Self {
        self.fallback_to_id = on;
        self
    }
}

impl<S> Layer<S> for CorrelationLayer {
    type Service = Correlated<S>;
    fn layer(&self, inner: S) -> Correlated<S> {
        Correlated {
            inner,
            fallback_to_id: self.fallback_to_id,
        }
    }
}

/// The service of [`CorrelationLayer`].
#[derive(Debug, Clone)]
pub struct Correlated<S> {
    inner: S,
    fallback_to_id: bool,
}

impl<S> Service<Incoming> for Correlated<S>
where
    S: Service<Incoming>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = HandlerError;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<S::Response, HandlerError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), HandlerError>> {
        self.inner.poll_ready(cx).map_err(from_inner)
    }

    fn call(&mut self, req: Incoming) -> Self::Future {
        let mut ctx = TraceContext::from_message(req.message());
        if ctx.correlation_id.is_none() && self.fallback_to_id {
            ctx.correlation_id = Some(req.message().id().to_string());
        }
        let span = tracing::info_span!(
            "message",
            correlation_id = ctx.correlation_id.as_deref().unwrap_or(""),
            id = %req.message().id(),
            route = req.route(),
        );
        // The synchronous part of `call` sees the context too.
        let fut = CURRENT.sync_scope(ctx.clone(), || self.inner.call(req));
        Box::pin(async move { CURRENT.scope(ctx, fut).await.map_err(from_inner) }.instrument(span))
    }
}

/// A [`Publisher`] stamping the current [`TraceContext`] on every message it sends.
pub struct ContextPublisher<P: ?Sized = dyn Publisher> {
    inner: Arc<P>,
}

impl<P: ?Sized> Clone for ContextPublisher<P> {
    fn clone(&self) -> Self {
        ContextPublisher {
            inner: self.inner.clone(),
        }
    }
}

impl<P: ?Sized> fmt::Debug for ContextPublisher<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContextPublisher")
    }
}

impl<P> ContextPublisher<P> {
    /// Wraps `inner`.
    pub fn new(inner: P) -> Self {
        ContextPublisher {
            inner: Arc::new(inner),
        }
    }
}

impl<P: ?Sized> ContextPublisher<P> {
    /// Wraps a shared publisher (e.g. an `Arc<dyn Publisher>`).
    pub fn from_arc(inner: Arc<P>) -> Self {
        ContextPublisher { inner }
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for ContextPublisher<P> {
    async fn send(&self, mut msg: Message) -> Result<PendingAck> {
        propagate(&mut msg)?;
        self.inner.send(msg).await
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler_fn;
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_handler_sees_the_context_and_outgoing_messages_get_it() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let msg = Message::builder("a")
            .unwrap()
            .header(headers::CORRELATION_ID, "req-1")
            .unwrap()
            .header(headers::TRACEPARENT, tp)
            .unwrap()
            .build();
        let svc = CorrelationLayer::new().layer(handler_fn(|_m: Incoming| async move {
            let mut out = Message::builder("b")?.build();
            propagate(&mut out)?;
            assert_eq!(out.correlation_id(), Some("req-1"));
            assert_eq!(out.headers().get(headers::TRACEPARENT), Some(tp));
            let mut keeps = Message::builder("c")?
                .header(headers::CORRELATION_ID, "own")?
                .build();
            propagate(&mut keeps)?;
            assert_eq!(
                keeps.correlation_id(),
                Some("own"),
                "existing headers are kept"
            );
            Ok::<_, HandlerError>(())
        }));
        svc.oneshot(Incoming::new(msg)).await.unwrap();
        assert_eq!(
            TraceContext::current(),
            None,
            "the context ends with the handler"
        );
    }

    #[tokio::test]
    async fn a_message_without_correlation_id_starts_one_with_its_id() {
        let msg = Message::builder("a").unwrap().id("m-9").unwrap().build();
        let svc = CorrelationLayer::new().layer(handler_fn(|_m: Incoming| async move {
            let ctx = TraceContext::current().expect("set");
            assert_eq!(ctx.correlation_id.as_deref(), Some("m-9"));
            assert_eq!(ctx.traceparent, None);
            Ok::<_, HandlerError>(())
        }));
        svc.oneshot(Incoming::new(msg)).await.unwrap();
    }
}
