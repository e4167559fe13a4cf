//! Timeouts: tower's [`TimeoutLayer`], re-exported. A handler that does not finish in time is
//! dropped (its future cancelled) and the attempt fails with a retryable
//! [`HandlerError`](crate::HandlerError) whose chain starts with "handler timed out", so the
//! retry policy applies. Put it inside the idempotency layer (so a timed-out claim is released)
//! and keep it shorter than the subscription's ack wait (so the lease outlives the attempt).
//!
//! The layer's error is tower's [`BoxError`](crate::BoxError); layers of this crate and the
//! [`Router`](crate::Router) accept it, and [`HandlerError::from_boxed`](crate::HandlerError::from_boxed)
//! converts it for a layer of your own.
//!
//! Shape: [`TimeoutLayer`] makes the [`Timeout`] service; its error is [`Elapsed`].
//!
//! ```
//! use std::time::Duration;
//! use squall_middleware::{Incoming, handler_fn, HandlerError};
//! use squall_middleware::timeout::{Elapsed, TimeoutLayer};
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let svc = TimeoutLayer::new(Duration::from_secs(5)).layer(handler_fn(|_m: Incoming| async {
//!     tokio::time::sleep(Duration::from_secs(60)).await;
//!     Ok::<_, HandlerError>(())
//! }));
//! let err = svc.oneshot(Incoming::new(squall_core::Message::builder("a")?.build())).await.unwrap_err();
//! let err = HandlerError::from_boxed(err);
//! assert!(err.is_retryable());
//! assert!(err.find::<Elapsed>().is_some());
//! assert_eq!(err.chain()[0], "handler timed out");
//! # Ok::<(), squall_core::Error>(()) }).unwrap();
//! ```

pub use tower::timeout::error::Elapsed;
pub use tower::timeout::{Timeout, TimeoutLayer};
