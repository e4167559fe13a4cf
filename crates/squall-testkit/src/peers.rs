//! Tests against real brokers ("peers": NATS, RabbitMQ, Kafka, SQS on the machine or the
//! network), shared by the adapters' test crates and the command-line tests.
//!
//! - [`peer_url`]: a peer's URL from its environment variable, or a printed `SKIP` notice when it
//!   is unset, a failure instead under `SQUALL_REQUIRE_PEERS=1` ([`peers_required`]);
//! - [`with_options`]: a URL with adapter options appended;
//! - [`eventually`] and [`eventually_async`]: wait for a condition with a bound, on tokio's clock;
//! - [`block_on_in_thread`]: async cleanup from a `Drop` (which cannot await);
//! - [`PeerHarness`]: the conformance [`Harness`] of a shared broker, given a [`PeerScope`] that
//!   hands out backends.
//!
//! ```no_run
//! # async fn f() {
//! use std::time::Duration;
//! use squall_testkit::peers::{eventually, peer_url};
//!
//! let Some(url) = peer_url("SQUALL_NATS_URL", "the NATS adapter") else { return };
//! assert!(eventually(Duration::from_secs(5), || !url.is_empty()).await);
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{Backend, Capabilities, Result};

use crate::harness::{Harness, Timing};

/// Runs `f` to completion on a thread of its own with its own runtime, and waits for it: async
/// cleanup (deleting a test's queues, streams, topics) from a `Drop`, which cannot await, and
/// may run inside or outside a runtime.
pub fn block_on_in_thread<F>(f: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let worker = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime")
            .block_on(f)
    });
    let _ = worker.join();
}

/// How often [`eventually`] checks its condition.
pub const POLL: Duration = Duration::from_millis(20);

/// Whether `SQUALL_REQUIRE_PEERS=1`: then a missing peer fails a test instead of skipping it.
pub fn peers_required() -> bool {
    std::env::var("SQUALL_REQUIRE_PEERS").as_deref() == Ok("1")
}

/// The value of the environment variable `var` (a peer's URL) if it is set and not empty.
/// Otherwise prints `SKIP: {var} is unset; not testing {what}` and returns `None`, or panics
/// under `SQUALL_REQUIRE_PEERS=1`.
pub fn peer_url(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                !peers_required(),
                "{var} is unset and SQUALL_REQUIRE_PEERS=1"
            );
            println!("SKIP: {var} is unset; not testing {what}");
            None
        }
    }
}

/// `base` with adapter `options` (`key=value&...`) appended after `?`, or `&` if `base` has a
/// query already.
pub fn with_options(base: &str, options: &str) -> String {
    if options.is_empty() {
        return base.to_string();
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{options}")
}

/// Waits up to `limit` for `cond`, checking every [`POLL`] (20 ms) and once more at the end;
/// whether it held. Sleeps on tokio's clock.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    eventually_async(limit, POLL, || std::future::ready(cond())).await
}

/// [`eventually`] with an asynchronous condition (one that asks a broker, say), checked every
/// `every`.
pub async fn eventually_async<F, Fut>(limit: Duration, every: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(every).await;
    }
    cond().await
}

/// One conformance case's share of a peer (its own names, and the cleanup of what it created),
/// which [`PeerHarness`] asks for backends.
#[async_trait]
pub trait PeerScope: Send + Sync + 'static {
    /// A new handle on the peer (a new connection, or whatever the adapter opens per handle).
    async fn connect(&self) -> Result<Arc<dyn Backend>>;
}

/// The conformance [`Harness`] of a peer shared with other tests and engineers: a
/// [`PeerScope`] per case, a new handle per `backend()` call, [`Timing::real`], and no restart
/// (a shared broker is never restarted by a test).
pub struct PeerHarness<S> {
    /// The case's scope.
    pub scope: S,
    name: String,
    caps: Capabilities,
}

impl<S: PeerScope> PeerHarness<S> {
    /// A harness named `name` in reports, declaring `caps` (what the adapter reports for the
    /// scope's configuration).
    pub fn new(name: impl Into<String>, caps: Capabilities, scope: S) -> Self {
        PeerHarness {
            scope,
            name: name.into(),
            caps,
        }
    }
}

#[async_trait]
impl<S: PeerScope> Harness for PeerHarness<S> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }

    async fn backend(&self) -> Result<Arc<dyn Backend>> {
        self.scope.connect().await
    }

    async fn restart(&self) -> Result<Option<Arc<dyn Backend>>> {
        Ok(None)
    }

    fn timing(&self) -> Timing {
        Timing::real()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_appended() {
        assert_eq!(with_options("nats://h", ""), "nats://h");
        assert_eq!(with_options("nats://h", "a=1"), "nats://h?a=1");
        assert_eq!(with_options("nats://h?a=1", "b=2"), "nats://h?a=1&b=2");
    }

    #[test]
    fn an_unset_variable_is_a_skip() {
        if peers_required() {
            return;
        }
        assert_eq!(peer_url("SQUALL_TESTKIT_NEVER_SET", "nothing"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_waits_up_to_its_limit() {
        let start = tokio::time::Instant::now();
        let mut calls = 0;
        assert!(
            eventually(Duration::from_secs(1), || {
                calls += 1;
                calls == 3
            })
            .await
        );
        assert_eq!(start.elapsed(), POLL * 2);
        assert!(!eventually(Duration::from_millis(100), || false).await);
        assert!(start.elapsed() >= POLL * 2 + Duration::from_millis(100));
        let n = std::sync::atomic::AtomicUsize::new(0);
        let every = Duration::from_millis(50);
        let t0 = tokio::time::Instant::now();
        let held = eventually_async(Duration::from_secs(1), every, || async {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 1
        })
        .await;
        assert!(held);
        assert_eq!(t0.elapsed(), every);
    }
}
