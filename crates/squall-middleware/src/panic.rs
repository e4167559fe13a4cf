//! Panic recovery: a panicking handler becomes a retryable [`HandlerError`] whose source is
//! [`Panicked`], so the message is nacked with backoff and the worker lives on.
//!
//! The [`crate::Router`] always does this around the whole handler stack (a panic in any layer,
//! in `poll_ready`, `call` or the future); [`CatchPanicLayer`] does it for handlers called
//! outside a router, or to turn a panic into an error an outer layer (a circuit breaker, say)
//! should see.
//!
//! Shape: [`CatchPanicLayer`] makes the [`CatchPanic`] service; its error is [`Panicked`].
//!
//! ```
//! use squall_middleware::{Incoming, handler_fn, HandlerError};
//! use squall_middleware::panic::{CatchPanicLayer, Panicked};
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let svc = CatchPanicLayer.layer(handler_fn(|_m: Incoming| async {
//!     if true { panic!("index out of range") }
//!     Ok::<(), HandlerError>(())
//! }));
//! let err = svc.oneshot(Incoming::new(squall_core::Message::builder("a")?.build())).await.unwrap_err();
//! assert!(err.is_retryable());
//! assert_eq!(err.find::<Panicked>().unwrap().message(), "index out of range");
//! # Ok::<(), squall_core::Error>(()) }).unwrap();
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt;
use tower::{Layer, Service, ServiceExt};

use crate::error::HandlerError;

/// The error a caught panic becomes.
#[derive(Debug, Clone)]
pub struct Panicked {
    message: String,
}

impl Panicked {
    /// The panic message (`"<non-string panic payload>"` when it was not a string).
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn from_payload(payload: Box<dyn Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "<non-string panic payload>".to_string()
        };
        Panicked { message }
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler panicked: {}", self.message)
    }
}

impl std::error::Error for Panicked {}

/// Drives `svc` to readiness and calls it, turning a panic anywhere on the way into an error.
pub(crate) async fn call_caught<S, R>(mut svc: S, req: R) -> Result<S::Response, HandlerError>
where
    S: Service<R, Error = HandlerError>,
{
    let work = async move {
        svc.ready().await?;
        svc.call(req).await
    };
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(r) => r,
        Err(payload) => Err(HandlerError::retryable(Panicked::from_payload(payload))),
    }
}

/// Catches handler panics; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;
    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

/// The service of [`CatchPanicLayer`].
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, R> Service<R> for CatchPanic<S>
where
    S: Service<R, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = HandlerError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, HandlerError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        // Readiness is driven inside the caught future, so a panic there is caught too.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        let svc = self.inner.clone();
        Box::pin(call_caught(svc, req))
    }
}
