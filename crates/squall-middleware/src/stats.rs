//! Live counters of a [`crate::Router`]'s routes, readable while it runs ([`RouterStats`]) and
//! returned when it stops ([`crate::RunReport`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// What one route did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteReport {
    /// The route name.
    pub route: String,
    /// The handler name.
    pub handler: String,
    /// Deliveries received from the backend.
    pub fetched: u64,
    /// Handler calls that succeeded (the delivery was then acked).
    pub succeeded: u64,
    /// Handler calls that failed (panics included).
    pub failed: u64,
    /// Failed attempts settled for a later retry.
    pub retried: u64,
    /// Deferred attempts (a duplicate in progress, an open circuit).
    pub deferred: u64,
    /// Messages dead-lettered by the runtime.
    pub dead_lettered: u64,
    /// Panics caught.
    pub panics: u64,
    /// Settlements the backend refused because the lease was gone (the message is or will be
    /// redelivered).
    pub lease_lost: u64,
    /// Deliveries nacked because the shutdown deadline passed before they finished.
    pub shutdown_nacked: u64,
    /// Errors from the consumer while fetching.
    pub fetch_errors: u64,
    /// Deliveries held by the runtime right now (being handled or queued behind their key).
    pub in_flight: u64,
}

#[derive(Default)]
pub(crate) struct RouteCounters {
    pub fetched: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub deferred: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub panics: AtomicU64,
    pub lease_lost: AtomicU64,
    pub shutdown_nacked: AtomicU64,
    pub fetch_errors: AtomicU64,
    pub in_flight: AtomicU64,
}

/// A cloneable handle on the counters of every route of a router.
#[derive(Clone, Default)]
pub struct RouterStats {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Written when routes are added, before the router runs; read by `snapshot`.
    routes: Mutex<Vec<(String, String, Arc<RouteCounters>)>>,
    /// Woken after every change a report shows.
    changed: Notify,
}

impl std::fmt::Debug for RouterStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.snapshot()).finish()
    }
}

impl RouterStats {
    pub(crate) fn register(&self, route: &str, handler: &str) -> Counters {
        let c = Arc::new(RouteCounters::default());
        self.inner
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((route.to_string(), handler.to_string(), c.clone()));
        Counters {
            counters: c,
            stats: self.clone(),
        }
    }

    /// Every route's counters now, in the order routes were added.
    pub fn snapshot(&self) -> Vec<RouteReport> {
        let routes = self.inner.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .iter()
            .map(|(route, handler, c)| {
                let g = |a: &AtomicU64| a.load(Ordering::Acquire);
                RouteReport {
                    route: route.clone(),
                    handler: handler.clone(),
                    fetched: g(&c.fetched),
                    succeeded: g(&c.succeeded),
                    failed: g(&c.failed),
                    retried: g(&c.retried),
                    deferred: g(&c.deferred),
                    dead_lettered: g(&c.dead_lettered),
                    panics: g(&c.panics),
                    lease_lost: g(&c.lease_lost),
                    shutdown_nacked: g(&c.shutdown_nacked),
                    fetch_errors: g(&c.fetch_errors),
                    in_flight: g(&c.in_flight),
                }
            })
            .collect()
    }

    /// The counters of the route named `route`.
    pub fn route(&self, route: &str) -> Option<RouteReport> {
        self.snapshot().into_iter().find(|r| r.route == route)
    }

    /// Waits until `done` holds for the counters (checked now and after every change).
    pub async fn wait_until(&self, mut done: impl FnMut(&[RouteReport]) -> bool) {
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.snapshot()) {
                return;
            }
            notified.await;
        }
    }
}

/// One route's counters plus the handle to wake waiters.
#[derive(Clone)]
pub(crate) struct Counters {
    counters: Arc<RouteCounters>,
    stats: RouterStats,
}

impl Counters {
    pub(crate) fn add(&self, f: impl FnOnce(&RouteCounters) -> &AtomicU64) {
        f(&self.counters).fetch_add(1, Ordering::AcqRel);
        self.stats.inner.changed.notify_waiters();
    }

    pub(crate) fn sub(&self, f: impl FnOnce(&RouteCounters) -> &AtomicU64) {
        f(&self.counters).fetch_sub(1, Ordering::AcqRel);
        self.stats.inner.changed.notify_waiters();
    }
}
