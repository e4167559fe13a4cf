//! Circuit breaker: after repeated failures of a dependency, stop calling it for a while and
//! fail fast instead; then let a few trial calls through and close again if they succeed.
//!
//! States: **closed** (calls pass; `failure_threshold` consecutive failures open it) → **open**
//! (calls fail at once for `open_for`) → **half-open** (up to `half_open_calls` trial calls;
//! a success closes it, a failure opens it again). A result of a call started before the last
//! transition is ignored, so a slow call from an earlier state cannot flip the current one.
//!
//! One [`CircuitBreaker`] (cheap to clone, shared state) can guard both sides of a dependency:
//!
//! - [`CircuitBreakerLayer`] around a handler: retryable handler errors count as failures
//!   (permanent ones are about the message, not the dependency). While open, messages are
//!   **deferred** ([`crate::HandlerError::defer`]) until the breaker may half-open: an open
//!   circuit says nothing about the message, so it does not use up its attempts.
//! - [`BreakerPublisher`] around a [`Publisher`]: retryable publish errors count; while open,
//!   sends fail fast with [`ErrorKind::Unavailable`].
//!
//! Transitions are logged and counted in `squall_breaker_transitions_total{breaker, to}`. Time
//! follows tokio's clock.
//!
//! Shape: [`CircuitBreakerLayer`] makes the [`Breaker`] service; its error is [`BreakerOpen`].
//!
//! ```
//! use std::time::Duration;
//! use squall_middleware::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let breaker = CircuitBreaker::new("payments", BreakerConfig {
//!     failure_threshold: 2, open_for: Duration::from_secs(10), half_open_calls: 1,
//! });
//! breaker.try_acquire().unwrap().failure();
//! breaker.try_acquire().unwrap().failure();
//! assert_eq!(breaker.state(), BreakerState::Open);
//! assert!(breaker.try_acquire().is_err(), "open: fail fast");
//! tokio::time::advance(Duration::from_secs(10)).await;
//! let trial = breaker.try_acquire().unwrap();
//! assert_eq!(breaker.state(), BreakerState::HalfOpen);
//! trial.success();
//! assert_eq!(breaker.state(), BreakerState::Closed);
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{Error, ErrorKind, Message, PendingAck, Publisher, Result};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::error::{BoxError, HandlerError, from_inner};

/// Thresholds of a [`CircuitBreaker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker (at least 1).
    pub failure_threshold: u32,
    /// How long it stays open before allowing trial calls.
    pub open_for: Duration,
    /// Trial calls at once while half-open (at least 1).
    pub half_open_calls: u32,
}

impl Default for BreakerConfig {
    /// Five consecutive failures, open for 30 s, one trial call.
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            half_open_calls: 1,
        }
    }
}

/// A breaker's state, as [`CircuitBreaker::state`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls fail fast.
    Open,
    /// Trial calls pass (an open breaker whose time is up reads as half-open).
    HalfOpen,
}

impl BreakerState {
    fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// The error of a call refused by an open breaker.
#[derive(Debug, Clone)]
pub struct BreakerOpen {
    /// The breaker's name.
    pub breaker: String,
    /// How long until trial calls are allowed.
    pub retry_in: Duration,
}

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker `{}` is open; trial calls in {:?}",
            self.breaker, self.retry_in
        )
    }
}

impl std::error::Error for BreakerOpen {}

#[derive(Debug)]
enum St {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { in_flight: u32 },
}

#[derive(Debug)]
struct Inner {
    st: St,
    /// Incremented on every transition; a permit from an older generation records nothing.
    generation: u64,
}

/// A circuit breaker; see the [module docs](self). Clones share state.
#[derive(Clone)]
pub struct CircuitBreaker {
    name: Arc<str>,
    config: BreakerConfig,
    /// Short critical sections only; never held across an await.
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .field("config", &self.config)
            .finish()
    }
}

/// Permission for one call; report its outcome with [`success`](Self::success) or
/// [`failure`](Self::failure). Dropping it reports nothing (and frees a half-open trial slot).
#[must_use = "report the call's outcome with success() or failure()"]
pub struct Permit {
    breaker: CircuitBreaker,
    generation: u64,
    trial: bool,
    done: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("trial", &self.trial)
            .finish()
    }
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.done = true;
        self.breaker.record(self.generation, self.trial, true);
    }
    /// The call failed in a way that counts against the dependency.
    pub fn failure(mut self) {
        self.done = true;
        self.breaker.record(self.generation, self.trial, false);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.trial {
            let mut g = self.breaker.lock();
            let current = g.generation == self.generation;
            if let (St::HalfOpen { in_flight }, true) = (&mut g.st, current) {
                *in_flight = in_flight.saturating_sub(1);
            }
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker named `name` (in errors, logs and metrics).
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig) -> Self {
        CircuitBreaker {
            name: name.into(),
            config: BreakerConfig {
                failure_threshold: config.failure_threshold.max(1),
                half_open_calls: config.half_open_calls.max(1),
                ..config
            },
            inner: Arc::new(Mutex::new(Inner {
                st: St::Closed { failures: 0 },
                generation: 0,
            })),
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn transition(&self, g: &mut Inner, st: St) {
        let to = match st {
            St::Closed { .. } => BreakerState::Closed,
            St::Open { .. } => BreakerState::Open,
            St::HalfOpen { .. } => BreakerState::HalfOpen,
        };
        g.st = st;
        g.generation += 1;
        tracing::info!(breaker = %self.name, "circuit breaker {}", to.as_str());
        metrics::counter!(crate::metrics::BREAKER_TRANSITIONS, "breaker" => self.name.to_string(), "to" => to.as_str())
            .increment(1);
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match self.lock().st {
            St::Closed { .. } => BreakerState::Closed,
            St::Open { until } if until > Instant::now() => BreakerState::Open,
            St::Open { .. } | St::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to make a call: a [`Permit`], or [`BreakerOpen`] while open (or while half-open
    /// with every trial slot taken).
    pub fn try_acquire(&self) -> std::result::Result<Permit, BreakerOpen> {
        let now = Instant::now();
        let mut g = self.lock();
        if let St::Open { until } = g.st {
            if until > now {
                return Err(BreakerOpen {
                    breaker: self.name.to_string(),
                    retry_in: until - now,
                });
            }
            self.transition(&mut g, St::HalfOpen { in_flight: 0 });
        }
        let generation = g.generation;
        let trial = match &mut g.st {
            St::Closed { .. } => false,
            St::HalfOpen { in_flight } if *in_flight < self.config.half_open_calls => {
                *in_flight += 1;
                true
            }
            St::HalfOpen { .. } | St::Open { .. } => {
                return Err(BreakerOpen {
                    breaker: self.name.to_string(),
                    retry_in: Duration::ZERO,
                });
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            generation,
            trial,
            done: false,
        })
    }

    fn record(&self, generation: u64, trial: bool, success: bool) {
        let mut g = self.lock();
        if g.generation != generation {
            return; // a result from before the last transition
        }
        match (&mut g.st, success) {
            (St::Closed { failures }, true) => *failures = 0,
            (St::Closed { failures }, false) => {
                *failures += 1;
                if *failures >= self.config.failure_threshold {
                    let until = Instant::now() + self.config.open_for;
                    self.transition(&mut g, St::Open { until });
                }
            }
            (St::HalfOpen { .. }, true) if trial => {
                self.transition(&mut g, St::Closed { failures: 0 });
            }
            (St::HalfOpen { .. }, false) if trial => {
                let until = Instant::now() + self.config.open_for;
                self.transition(&mut g, St::Open { until });
            }
            _ => {}
        }
    }
}

type FailureIf = Arc<dyn Fn(&HandlerError) -> bool + Send + Sync>;

/// Guards a handler with a [`CircuitBreaker`]; see the [module docs](self).
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    breaker: CircuitBreaker,
    failure_if: FailureIf,
}

impl fmt::Debug for CircuitBreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// Counts retryable handler errors as failures.
    pub fn new(breaker: CircuitBreaker) -> Self {
        CircuitBreakerLayer {
            breaker,
            failure_if: Arc::new(HandlerError::is_retryable),
        }
    }
    /// Counts the errors for which `f` is true instead.
    pub fn failure_if(mut self, f: impl Fn(&HandlerError) -> bool + Send + Sync + 'static) -> Self {
        self.failure_if = Arc::new(f);
        self
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = Breaker<S>;
    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`CircuitBreakerLayer`].
#[derive(Clone)]
pub struct Breaker<S> {
    inner: S,
    layer: CircuitBreakerLayer,
}

impl<S> fmt::Debug for Breaker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.layer.fmt(f)
    }
}

impl<S, R> Service<R> for Breaker<S>
where
    S: Service<R> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = HandlerError;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<S::Response, HandlerError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), HandlerError>> {
        self.inner.poll_ready(cx).map_err(from_inner)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let permit = match self.layer.breaker.try_acquire() {
            Ok(p) => p,
            Err(open) => {
                let wait = open.retry_in.max(Duration::from_millis(100));
                return Box::pin(std::future::ready(Err(HandlerError::defer(wait, open))));
            }
        };
        let fut = self.inner.call(req);
        let failure_if = self.layer.failure_if.clone();
        Box::pin(async move {
            match fut.await {
                Ok(r) => {
                    permit.success();
                    Ok(r)
                }
                Err(e) => {
                    let e = from_inner(e);
                    if failure_if(&e) {
                        permit.failure();
                    } else {
                        drop(permit);
                    }
                    Err(e)
                }
            }
        })
    }
}

/// A [`Publisher`] guarded by a [`CircuitBreaker`]: retryable publish errors (send or confirm)
/// count as failures; while open, sends fail fast with [`ErrorKind::Unavailable`].
pub struct BreakerPublisher<P: ?Sized = dyn Publisher> {
    inner: Arc<P>,
    breaker: CircuitBreaker,
}

impl<P: ?Sized> fmt::Debug for BreakerPublisher<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerPublisher")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<P: ?Sized> Clone for BreakerPublisher<P> {
    fn clone(&self) -> Self {
        BreakerPublisher {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
        }
    }
}

impl<P> BreakerPublisher<P> {
    /// Guards `inner` with `breaker`.
    pub fn new(inner: P, breaker: CircuitBreaker) -> Self {
        BreakerPublisher::from_arc(Arc::new(inner), breaker)
    }
}

impl<P: ?Sized> BreakerPublisher<P> {
    /// Guards a shared publisher (e.g. an `Arc<dyn Publisher>`) with `breaker`.
    pub fn from_arc(inner: Arc<P>, breaker: CircuitBreaker) -> Self {
        BreakerPublisher { inner, breaker }
    }
    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

fn settle_permit<T>(permit: Permit, r: &Result<T>) {
    match r {
        Ok(_) => permit.success(),
        Err(e) if e.is_retryable() => permit.failure(),
        Err(_) => drop(permit), // the caller's mistake, not the dependency's
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for BreakerPublisher<P> {
    async fn send(&self, msg: Message) -> Result<PendingAck> {
        let permit = self.breaker.try_acquire().map_err(|open| {
            Error::new(ErrorKind::Unavailable, open.to_string()).with_source(open)
        })?;
        match self.inner.send(msg).await {
            Ok(pending) => Ok(PendingAck::future(async move {
                let r = pending.await;
                settle_permit(permit, &r);
                r
            })),
            Err(e) => {
                let r = Err(e);
                settle_permit(permit, &r);
                r
            }
        }
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
