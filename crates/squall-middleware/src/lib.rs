//! # squall-middleware
//!
//! What users otherwise write by hand around every broker client, done once for every backend:
//! a consumer runtime and reliability middleware. It works only through the [`squall_core`]
//! traits, so it runs over the embedded broker, the `squall serve` client and every adapter.
//! It is not a backend and keeps no state of its own beyond what a layer's store holds.
//!
//! Handlers are [`tower`] services over [`Incoming`] (the message with its attempt,
//! sequence, group and publish time — not the settle handle: settling is the runtime's job),
//! so tower's layers (timeout, concurrency limit, rate limit, load shed) and your own compose
//! with this crate's.
//!
//! | module | what it holds |
//! |---|---|
//! | [`handler`] | [`Incoming`], [`handler_fn`], [`batch_fn`], [`request_fn`], [`BatchResponse`] |
//! | [`error`] | [`HandlerError`]: retryable / [`permanent`] / deferred, with the error chain |
//! | [`router`] | [`Router`] and [`Route`]: worker pools, batches, per-key ordered concurrency, graceful shutdown |
//! | [`retry`] | [`retry::Backoff`] (exponential, jitter, cap) and [`retry::RetryPolicy`] — applied as nack-with-delay |
//! | [`dlq`] | dead-letter reasons; `list`, `show`, `redrive` for the CLI |
//! | [`idempotency`] | idempotent consumer layer; memory, Redis and PostgreSQL stores |
//! | [`breaker`] | circuit breaker layer, and a breaker-guarded [`squall_core::Publisher`] |
//! | [`correlation`] | correlation id and `traceparent` propagation (task-local context) |
//! | [`timeout`] | tower's timeout layer, re-exported, and how its errors are classified |
//! | [`panic`](mod@panic) | panic recovery layer (the router always recovers panics itself) |
//! | [`metrics`] | metric names and a layer for handlers outside a router |
//! | [`json`] | typed JSON codec: [`json::Json<T>`], schema-version checks, permanent decode errors |
//! | [`stats`] | live per-route counters ([`RouterStats`]) |
//!
//! Every middleware module has the same shape: a `…Layer`, its service, its error type, and a
//! tested example in its docs.
//!
//! ## Layer order
//! Outermost first; each line says why it sits there.
//!
//! ```text
//! Router                  runtime: panics caught, ack / retry (nack + backoff) / dead-letter,
//!                         metrics, lease extension, shutdown
//!  └ CorrelationLayer     context and log span for everything below
//!   └ CircuitBreakerLayer an open circuit defers before anything is claimed or decoded
//!    └ IdempotencyLayer   claim before work, mark done after success, release on failure
//!     └ TimeoutLayer      bounds one attempt; inside idempotency so a timeout releases the claim,
//!                         inside the breaker so timeouts count against the dependency
//!      └ tower limits     ConcurrencyLimit, LoadShed; RateLimit behind a Buffer (it is not Clone)
//!       └ JsonLayer<T>    decode; undecodable payloads fail permanently → dead letter
//!        └ handler_fn(…)  your code
//! ```
//!
//! ## Example
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use squall_broker::Broker;
//! use squall_core::{Publisher, Subscription};
//! use squall_middleware::breaker::{BreakerConfig, CircuitBreaker, CircuitBreakerLayer};
//! use squall_middleware::correlation::CorrelationLayer;
//! use squall_middleware::idempotency::{IdempotencyLayer, MemoryStore};
//! use squall_middleware::json::{self, Json, JsonLayer};
//! use squall_middleware::retry::{Backoff, RetryPolicy};
//! use squall_middleware::timeout::TimeoutLayer;
//! use squall_middleware::{HandlerError, Route, Router, request_fn};
//! use tokio_util::sync::CancellationToken;
//! use tower::ServiceBuilder;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { id: u64, total_cents: u64 }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let broker = Broker::in_memory()?;
//! let handler = ServiceBuilder::new()
//!     .layer(CorrelationLayer::new())
//!     .layer(CircuitBreakerLayer::new(CircuitBreaker::new("billing-db", BreakerConfig::default())))
//!     .layer(IdempotencyLayer::new(MemoryStore::new(Duration::from_secs(3600), 100_000)))
//!     .layer(TimeoutLayer::new(Duration::from_secs(10)))
//!     .layer(JsonLayer::<Order>::new("1"))
//!     .service(request_fn(|order: Json<Order>| async move {
//!         assert_eq!(order.total_cents, 4200);
//!         Ok::<_, HandlerError>(())
//!     }));
//! let route = Route::new("billing", Subscription::new("orders.placed")?.group("billing")?, handler)
//!     .workers(8)
//!     .ordered_by_key(true)
//!     .retry(RetryPolicy::new(Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)))
//!         .max_attempts(5));
//! let router = Router::new(Arc::new(broker.clone())).route(route);
//! let stats = router.stats();
//! let shutdown = CancellationToken::new();
//! let running = tokio::spawn(router.run(shutdown.clone()));
//!
//! broker.publish(json::to_message("orders.placed", &Order { id: 7, total_cents: 4200 }, "1")?).await?;
//! stats.wait_until(|r| r[0].succeeded == 1).await;
//! shutdown.cancel();
//! let report = running.await.unwrap()?;
//! assert_eq!(report.route("billing").unwrap().dead_lettered, 0);
//! # Ok::<(), squall_core::Error>(()) }).unwrap();
//! ```

pub mod breaker;
mod clock;
pub mod correlation;
pub mod dlq;
pub mod error;
pub mod handler;
pub mod idempotency;
pub mod json;
pub mod metrics;
pub mod panic;
pub mod retry;
pub mod router;
mod settle;
pub mod stats;
pub mod timeout;
mod worker;

pub use error::{BoxError, Class, HandlerError, permanent, retryable};
pub use handler::{BatchResponse, HandlerFn, Incoming, batch_fn, handler_fn, request_fn};
pub use router::{Route, Router, RunReport};
pub use stats::{RouteReport, RouterStats};
