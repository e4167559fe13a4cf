//! Metrics (the `metrics` crate facade: install any recorder, e.g. Prometheus).
//!
//! The [`crate::Router`] records, per route, with labels `route` and `handler`:
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `squall_handler_processed_total` | counter | handler calls that finished (succeeded or failed) |
//! | `squall_handler_failed_total` | counter | handler calls that failed (panics included) |
//! | `squall_handler_retried_total` | counter | failed attempts settled for a later retry |
//! | `squall_handler_dead_lettered_total` | counter | messages dead-lettered by the runtime |
//! | `squall_handler_duration_seconds` | histogram | handler latency |
//! | `squall_handler_lease_lost_total` | counter | settlements refused because the lease was gone |
//! | `squall_handler_shutdown_nacked_total` | counter | deliveries nacked because shutdown's deadline passed |
//! | `squall_handler_panics_total` | counter | handler panics caught |
//! | `squall_handler_in_flight` | gauge | deliveries held: being handled or queued behind their key (bounded by workers + `max_buffered`; when full, fetching pauses) |
//!
//! Other modules add `squall_idempotency_duplicates_total`, `squall_idempotency_evictions_total`
//! and `squall_breaker_transitions_total` (label `to`); see their docs.
//!
//! [`MetricsLayer`] records the first five for a handler called outside a router (a router
//! already does; do not add it to routed handlers or calls are counted twice).
//!
//! Shape: [`MetricsLayer`] makes the [`Metered`] service; it has no error of its own.
//!
//! ```
//! use squall_middleware::{Incoming, handler_fn, HandlerError};
//! use squall_middleware::metrics::MetricsLayer;
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let svc = MetricsLayer::new("cli", "print")
//!     .layer(handler_fn(|_m: Incoming| async { Ok::<_, HandlerError>(()) }));
//! svc.oneshot(Incoming::new(squall_core::Message::builder("a")?.build())).await.unwrap();
//! # Ok::<(), squall_core::Error>(()) }).unwrap();
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use metrics::{Counter, Gauge, Histogram};
use tower::{Layer, Service};

use crate::error::HandlerError;
use crate::handler::Incoming;

/// Handler calls that finished.
pub const PROCESSED: &str = "squall_handler_processed_total";
/// Handler calls that failed.
pub const FAILED: &str = "squall_handler_failed_total";
/// Failed attempts settled for a retry.
pub const RETRIED: &str = "squall_handler_retried_total";
/// Messages dead-lettered by the runtime.
pub const DEAD_LETTERED: &str = "squall_handler_dead_lettered_total";
/// Handler latency, seconds.
pub const DURATION: &str = "squall_handler_duration_seconds";
/// Settlements refused because the lease was gone.
pub const LEASE_LOST: &str = "squall_handler_lease_lost_total";
/// Deliveries nacked at shutdown's deadline.
pub const SHUTDOWN_NACKED: &str = "squall_handler_shutdown_nacked_total";
/// Handler panics caught.
pub const PANICS: &str = "squall_handler_panics_total";
/// Deliveries held by the runtime.
pub const IN_FLIGHT: &str = "squall_handler_in_flight";
/// Duplicates skipped by the idempotent consumer.
pub const DUPLICATES: &str = "squall_idempotency_duplicates_total";
/// Entries the in-memory idempotency store evicted to stay within its size.
pub const EVICTIONS: &str = "squall_idempotency_evictions_total";
/// Circuit breaker state changes (label `to`: closed, open, half_open).
pub const BREAKER_TRANSITIONS: &str = "squall_breaker_transitions_total";

/// The handles one route records into (registered once, cheap to use).
#[derive(Clone)]
pub(crate) struct RouteMetrics {
    pub processed: Counter,
    pub failed: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub duration: Histogram,
    pub lease_lost: Counter,
    pub shutdown_nacked: Counter,
    pub panics: Counter,
    pub in_flight: Gauge,
}

impl RouteMetrics {
    pub(crate) fn new(route: &str, handler: &str) -> Self {
        let labels = [
            ("route", route.to_string()),
            ("handler", handler.to_string()),
        ];
        RouteMetrics {
            processed: metrics::counter!(PROCESSED, &labels),
            failed: metrics::counter!(FAILED, &labels),
            retried: metrics::counter!(RETRIED, &labels),
            dead_lettered: metrics::counter!(DEAD_LETTERED, &labels),
            duration: metrics::histogram!(DURATION, &labels),
            lease_lost: metrics::counter!(LEASE_LOST, &labels),
            shutdown_nacked: metrics::counter!(SHUTDOWN_NACKED, &labels),
            panics: metrics::counter!(PANICS, &labels),
            in_flight: metrics::gauge!(IN_FLIGHT, &labels),
        }
    }
}

/// Records processed, failed and latency for a handler; see the [module docs](self).
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<RouteMetrics>,
}

impl MetricsLayer {
    /// Records with labels `route` and `handler`.
    pub fn new(route: &str, handler: &str) -> Self {
        MetricsLayer {
            metrics: Arc::new(RouteMetrics::new(route, handler)),
        }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: Arc<RouteMetrics>,
}

impl<S> Service<Incoming> for Metered<S>
where
    S: Service<Incoming, Error = HandlerError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = HandlerError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, HandlerError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Incoming) -> Self::Future {
        let m = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let start = tokio::time::Instant::now();
            let r = fut.await;
            m.duration.record(start.elapsed().as_secs_f64());
            m.processed.increment(1);
            if r.is_err() {
                m.failed.increment(1);
            }
            r
        })
    }
}
