//! The consumer runtime: a [`Router`] binds handlers to subscriptions ([`Route`]s) and drives
//! them until a shutdown token fires.
//!
//! Per route: a worker pool (`workers` handler calls at once), optionally per-key ordered
//! concurrency (parallel across keys, serial within a key, implemented here on top of any
//! backend) or batches (`size` messages or whatever arrived within `max_wait`). Each attempt's
//! outcome is settled by the runtime: ack on success; on failure the route's
//! [`RetryPolicy`] picks a nack delay or gives up and the message is dead-lettered
//! ([`crate::dlq`]). Panics anywhere in the handler stack are caught and retried.
//!
//! ## Shutdown
//! `run(shutdown)` returns after `shutdown` is cancelled (or every route's consumer ended):
//! 1. every route stops fetching (nothing new is leased);
//! 2. in-flight work — handlers running and deliveries queued behind their key — gets
//!    [`Router::shutdown_timeout`] to finish and be settled;
//! 3. what is still unfinished then is dropped and nacked with no delay, so another instance
//!    takes it at once;
//! 4. consumers are closed, then the router's publisher and those given to
//!    [`Router::flush_on_shutdown`] are flushed.
//!
//! ## Per-key order
//! With [`Route::ordered_by_key`], messages with the same key are handled one after another, in
//! the order the backend delivered them; keyless messages run in parallel. Order is that of
//! attempts: a failed message nacked for a retry comes back behind later messages of its key.
//! For strict order across retries and instances, also set the subscription's
//! `ordered_by_key` where the backend supports it (the broker then holds a key's later messages
//! until the earlier one is settled). Deliveries queued behind a busy key hold their lease while
//! they wait, so keep `ack_wait` above `max_buffered` × the handler time, or enable
//! [`Route::extend_leases`].
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use squall_broker::Broker;
//! use squall_core::{Message, Publisher, Subscription};
//! use squall_middleware::{Route, Router, Incoming, handler_fn, HandlerError};
//! use tokio_util::sync::CancellationToken;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let broker = Broker::in_memory()?;
//! let router = Router::new(Arc::new(broker.clone())).route(
//!     Route::new(
//!         "thumbnails",
//!         Subscription::new("images.>")?.group("thumbnailer")?,
//!         handler_fn(|msg: Incoming| async move {
//!             println!("resizing {:?}", msg.message().payload());
//!             Ok::<_, HandlerError>(())
//!         }),
//!     )
//!     .workers(4),
//! );
//! let stats = router.stats();
//! let shutdown = CancellationToken::new();
//! let running = tokio::spawn(router.run(shutdown.clone()));
//! broker.publish(Message::builder("images.new")?.payload("cat.png").build()).await?;
//! stats.wait_until(|r| r[0].succeeded == 1).await;
//! shutdown.cancel();
//! let report = running.await.unwrap()?;
//! assert!(report.finished_in_time);
//! # Ok::<(), squall_core::Error>(()) }).unwrap();
//! ```

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use squall_core::{
    Backend, Capabilities, Error, ErrorKind, Publisher, Result, Subscriber, Subscription,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::clock::Clock;
use crate::error::BoxError;
use crate::handler::{self, BatchResponse, BoxBatchHandler, BoxHandler, Incoming};
use crate::metrics::RouteMetrics;
use crate::retry::RetryPolicy;
use crate::settle::RouteCtx;
use crate::stats::{Counters, RouteReport, RouterStats};
use crate::worker::{self, Mode};

/// The most workers (and buffered deliveries) of one route.
const MAX_WORKERS: usize = 100_000;

/// After the shutdown deadline, how long the runtime waits for dropped work to be nacked.
const NACK_GRACE: Duration = Duration::from_secs(5);

enum Kind {
    Single(BoxHandler),
    Batch {
        handler: BoxBatchHandler,
        size: usize,
        max_wait: Duration,
    },
}

/// A handler bound to a subscription, with its worker pool and retry policy.
pub struct Route {
    name: String,
    handler_name: Option<String>,
    subscription: Subscription,
    workers: usize,
    ordered: bool,
    max_buffered: Option<usize>,
    retry: RetryPolicy,
    extend_leases: bool,
    kind: Kind,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("subscription", &self.subscription)
            .field("workers", &self.workers)
            .field("ordered", &self.ordered)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// Handles each message of `subscription` with `handler`: one worker, unordered, the default
    /// [`RetryPolicy`]. The handler name (in metrics and dead letters) defaults to `name`.
    pub fn new<S>(name: impl Into<String>, subscription: Subscription, handler: S) -> Route
    where
        S: Service<Incoming, Response = ()> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Route::with_kind(
            name.into(),
            subscription,
            Kind::Single(handler::boxed(handler)),
        )
    }

    /// Handles messages in batches of at most `size`: a batch is handed over when full or
    /// `max_wait` after its first message arrived (`Consumer::next_batch`). The handler answers
    /// `()` or one result per message ([`BatchResponse`]); an error fails the whole batch.
    pub fn batch<S>(
        name: impl Into<String>,
        subscription: Subscription,
        size: usize,
        max_wait: Duration,
        handler: S,
    ) -> Route
    where
        S: Service<Vec<Incoming>> + Clone + Send + 'static,
        S::Response: BatchResponse,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let kind = Kind::Batch {
            handler: handler::boxed_batch(handler),
            size,
            max_wait,
        };
        Route::with_kind(name.into(), subscription, kind)
    }

    fn with_kind(name: String, subscription: Subscription, kind: Kind) -> Route {
        Route {
            name,
            handler_name: None,
            subscription,
            workers: 1,
            ordered: false,
            max_buffered: None,
            retry: RetryPolicy::default(),
            extend_leases: false,
            kind,
        }
    }

    /// Names the handler in metrics, logs and dead-letter envelopes.
    pub fn handler_name(mut self, name: impl Into<String>) -> Self {
        self.handler_name = Some(name.into());
        self
    }
    /// At most `n` handler calls (or batches) at once. Default 1.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    /// Serial within a key, parallel across keys; see the [module docs](self#per-key-order).
    pub fn ordered_by_key(mut self, on: bool) -> Self {
        self.ordered = on;
        self
    }
    /// With per-key order: at most `n` deliveries wait behind busy keys (default 2 × workers).
    /// When full, fetching pauses.
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.max_buffered = Some(n);
        self
    }
    /// Sets the retry policy. The subscription's `max_deliveries` must be unset or at least
    /// the policy's attempts (with room for deferrals): the backend would otherwise
    /// dead-letter first, without the handler's reason.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
    /// Extends a running handler's lease by the subscription's ack wait every half ack wait, so
    /// a slow handler keeps its message (bound the handler with a timeout layer). Default off.
    pub fn extend_leases(mut self, on: bool) -> Self {
        self.extend_leases = on;
        self
    }

    fn validate(&self) -> Result<()> {
        let name_ok = |n: &str| !n.is_empty() && !n.chars().any(|c| c.is_control() || c == '`');
        if !name_ok(&self.name) {
            return Err(Error::config(
                "route.name",
                format!(
                    "route name {:?} must be non-empty, without control characters or backticks",
                    self.name
                ),
            ));
        }
        if let Some(h) = &self.handler_name
            && !name_ok(h)
        {
            return Err(Error::config(
                "route.handler_name",
                format!(
                    "handler name {h:?} must be non-empty, without control characters or backticks"
                ),
            ));
        }
        let key = |k: &str| format!("route `{}`: {k}", self.name);
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(Error::config(
                &key("workers"),
                format!("must be 1 to {MAX_WORKERS}, got {}", self.workers),
            ));
        }
        if self
            .max_buffered
            .is_some_and(|n| !(1..=MAX_WORKERS).contains(&n))
        {
            return Err(Error::config(
                &key("max_buffered"),
                format!("must be 1 to {MAX_WORKERS}"),
            ));
        }
        if let Some(max) = self.subscription.policy.max_deliveries
            && max < self.retry.attempts()
        {
            return Err(Error::config(
                &key("subscription.max_deliveries"),
                format!(
                    "{max} is below the retry policy's {} attempts: the backend would dead-letter before the handler gives up",
                    self.retry.attempts()
                ),
            ));
        }
        if let Kind::Batch { size, max_wait, .. } = &self.kind {
            if *size == 0 {
                return Err(Error::config(&key("batch size"), "must be at least 1"));
            }
            if max_wait.is_zero() {
                return Err(Error::config(&key("batch max_wait"), "must be positive"));
            }
            if self.ordered {
                return Err(Error::config(
                    &key("ordered_by_key"),
                    "batch routes cannot order by key; use the subscription's ordered_by_key",
                ));
            }
        }
        self.subscription.validate()?;
        self.retry.validate()
    }
}

/// What a router did, returned when it stops.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Counters per route, in the order routes were added.
    pub routes: Vec<RouteReport>,
    /// Whether all in-flight work finished before the shutdown deadline (else the rest was
    /// nacked; see each route's `shutdown_nacked`).
    pub finished_in_time: bool,
}

impl RunReport {
    /// The counters of route `name`.
    pub fn route(&self, name: &str) -> Option<&RouteReport> {
        self.routes.iter().find(|r| r.route == name)
    }
}

/// Binds routes to a backend and runs them; see the [module docs](self).
pub struct Router {
    subscriber: Arc<dyn Subscriber>,
    publisher: Arc<dyn Publisher>,
    capabilities: Capabilities,
    routes: Vec<(Route, Counters)>,
    shutdown_timeout: Duration,
    flush: Vec<Arc<dyn Publisher>>,
    stats: RouterStats,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field(
                "routes",
                &self.routes.iter().map(|(r, _)| &r.name).collect::<Vec<_>>(),
            )
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router over `backend`: it subscribes through it, and publishes dead letters and retry
    /// copies through it where the backend cannot do them natively (its [`Capabilities`]).
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        let capabilities = backend.capabilities();
        Router::from_parts(backend.clone(), backend, capabilities)
    }

    /// A router over separate halves, with the capabilities of the backend behind them.
    pub fn from_parts(
        subscriber: Arc<dyn Subscriber>,
        publisher: Arc<dyn Publisher>,
        capabilities: Capabilities,
    ) -> Self {
        Router {
            subscriber,
            publisher,
            capabilities,
            routes: Vec::new(),
            shutdown_timeout: Duration::from_secs(30),
            flush: Vec::new(),
            stats: RouterStats::default(),
        }
    }

    /// Adds a route.
    pub fn route(mut self, route: Route) -> Self {
        let handler = route
            .handler_name
            .clone()
            .unwrap_or_else(|| route.name.clone());
        let counters = self.stats.register(&route.name, &handler);
        self.routes.push((route, counters));
        self
    }

    /// How long in-flight work may take to finish after shutdown is signalled. Default 30 s.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Flushes `publisher` at the end of shutdown (e.g. the one handlers publish with).
    pub fn flush_on_shutdown(mut self, publisher: Arc<dyn Publisher>) -> Self {
        self.flush.push(publisher);
        self
    }

    /// Live counters, readable while the router runs.
    pub fn stats(&self) -> RouterStats {
        self.stats.clone()
    }

    fn validate(&self) -> Result<()> {
        if self.routes.is_empty() {
            return Err(Error::config(
                "router.routes",
                "a router needs at least one route",
            ));
        }
        let mut names = HashSet::new();
        for (r, _) in &self.routes {
            r.validate()?;
            if !names.insert(r.name.as_str()) {
                return Err(Error::config(
                    "route.name",
                    format!("two routes are named `{}`", r.name),
                ));
            }
        }
        Ok(())
    }

    /// Subscribes every route, runs until `shutdown` is cancelled (or every consumer ended),
    /// then shuts down as the [module docs](self#shutdown) say. Fails before doing any work if a
    /// route is misconfigured or cannot subscribe, and at the end if a flush fails.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunReport> {
        self.validate()?;
        let Router {
            subscriber,
            publisher,
            capabilities,
            routes,
            shutdown_timeout,
            flush,
            stats,
        } = self;
        let mut consumers = Vec::with_capacity(routes.len());
        // Routes are not Sync (handlers need not be): hold no reference to one across an await.
        let subscriptions: Vec<(String, Subscription)> = routes
            .iter()
            .map(|(r, _)| (r.name.clone(), r.subscription.clone()))
            .collect();
        for (name, sub) in subscriptions {
            let pattern = sub.pattern.clone();
            match subscriber.subscribe(sub).await {
                Ok(c) => consumers.push(c),
                Err(e) => {
                    for mut c in consumers {
                        let _ = c.close().await;
                    }
                    return Err(Error::new(
                        e.kind(),
                        format!("route `{name}`: subscribing to `{pattern}` failed"),
                    )
                    .with_source(e));
                }
            }
        }

        let clock = Clock::new();
        let stop = shutdown.child_token();
        let hard_stop = CancellationToken::new();
        let workers = TaskTracker::new();
        let fetchers = TaskTracker::new();
        let mut handles = Vec::with_capacity(routes.len());
        for ((r, counters), consumer) in routes.into_iter().zip(consumers) {
            let handler: Arc<str> = r.handler_name.as_deref().unwrap_or(&r.name).into();
            let ctx = Arc::new(RouteCtx {
                metrics: RouteMetrics::new(&r.name, &handler),
                name: r.name.as_str().into(),
                handler,
                retry: r.retry,
                policy: r.subscription.policy.clone(),
                group: r.subscription.group.clone(),
                publisher: publisher.clone(),
                caps: capabilities.clone(),
                clock: clock.clone(),
                extend_leases: r.extend_leases,
                counters,
                hard_stop: hard_stop.clone(),
            });
            let mode = match r.kind {
                Kind::Single(h) if r.ordered => Mode::Keyed {
                    handler: h,
                    max_buffered: r.max_buffered.unwrap_or(2 * r.workers),
                },
                Kind::Single(h) => Mode::Unordered(h),
                Kind::Batch {
                    handler,
                    size,
                    max_wait,
                } => Mode::Batch {
                    handler,
                    size,
                    max_wait,
                },
            };
            let task = worker::fetch(
                ctx,
                consumer,
                mode,
                r.workers,
                stop.clone(),
                workers.clone(),
            );
            handles.push((r.name, fetchers.spawn(task)));
        }
        fetchers.close();
        tokio::select! {
            _ = shutdown.cancelled() => tracing::info!("shutting down: no new deliveries"),
            _ = fetchers.wait() => tracing::info!("every consumer ended; stopping"),
        }
        stop.cancel();

        let mut consumers = Vec::with_capacity(handles.len());
        for (name, h) in handles {
            match h.await {
                Ok(c) => consumers.push(c),
                Err(e) => tracing::error!(route = %name, "the fetch task failed: {e}"),
            }
        }
        workers.close();
        let finished_in_time = tokio::time::timeout(shutdown_timeout, workers.wait())
            .await
            .is_ok();
        if !finished_in_time {
            tracing::warn!(
                "in-flight work did not finish within {shutdown_timeout:?}; nacking the rest"
            );
            hard_stop.cancel();
            if tokio::time::timeout(NACK_GRACE, workers.wait())
                .await
                .is_err()
            {
                tracing::error!(
                    "{} handler tasks still run {NACK_GRACE:?} after the deadline (blocking the thread?); closing anyway",
                    workers.len()
                );
            }
        }
        for c in &mut consumers {
            if let Err(e) = c.close().await {
                tracing::warn!("closing a consumer failed: {e}");
            }
        }
        let mut flush_error = None;
        for p in std::iter::once(&publisher).chain(&flush) {
            if let Err(e) = p.flush().await {
                tracing::error!("flushing a publisher at shutdown failed: {e}");
                flush_error.get_or_insert(e);
            }
        }
        if let Some(e) = flush_error
            && e.kind() != ErrorKind::Closed
        {
            return Err(
                Error::new(e.kind(), "flushing publishers at shutdown failed").with_source(e),
            );
        }
        Ok(RunReport {
            routes: stats.snapshot(),
            finished_in_time,
        })
    }
}
