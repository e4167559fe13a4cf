//! [`Relay`]: polls the outbox, publishes pending rows, marks them; [`RelayConfig`],
//! [`RelayStats`], [`RelayWaker`].
//!
//! ## Guarantees
//! - **At least once.** A row is marked only after the publisher confirmed it. A crash between
//!   the confirm and the mark republishes the row with the same message id, which a backend
//!   with a dedup window (the embedded broker) stores once and acks with `duplicate = true`.
//! - **Per-key order.** A key's later row is never sent before its earlier row is confirmed;
//!   rows without a key go in parallel (see the publishing rules below).
//! - **No concurrent double publish** between relays: a lease on SQLite, row locks on
//!   PostgreSQL (see [`crate::sqlite`] and [`crate::postgres`]).
//!
//! ## Publishing rules
//! Rows without a key are all sent at once; for each key only its oldest unconfirmed row is in
//! flight. A **retryable** error (`Unavailable`, `Full`, `Timeout`, ...: see
//! [`squall_core::Error::is_retryable`]) stops the batch, records the attempt and error on the
//! row (it stays `pending`, with the rest of its key), and backs off exponentially
//! ([`RelayConfig::backoff_min`] to [`RelayConfig::backoff_max`], with jitter). A
//! **non-retryable** error (e.g. `InvalidMessage`), or a row that no longer decodes, marks the
//! row `failed` with the error text in `last_error`, counts it in `squall_outbox_failed_total`,
//! and lets the next row of its key go: a poison row neither blocks other keys nor stalls its
//! own. Failed rows stay in the table for an operator (`UPDATE squall_outbox SET status =
//! 'pending' WHERE ...` retries them).
//!
//! ## Metrics
//! Labelled `store` = `sqlite` | `postgres`: `squall_outbox_published_total`,
//! `squall_outbox_duplicates_total`, `squall_outbox_failed_total`,
//! `squall_outbox_retries_total`, `squall_outbox_store_errors_total`,
//! `squall_outbox_purged_total`, and the gauge `squall_outbox_lag_seconds` (age of the oldest
//! pending row, 0 when none).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use squall_core::Publisher;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::publish::publish_rows;
use crate::store::{Source, Store};

/// What happens to a row once published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPublished {
    /// Set `status = 'published'` and `published_at`; delete such rows once older than
    /// `retention` (`None`: keep them).
    Mark {
        /// How long published rows are kept for inspection.
        retention: Option<Duration>,
    },
    /// Delete the row in the transaction that would have marked it.
    Delete,
}

/// What the relay does after [`RelayConfig::after_publish_hook`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    /// Carry on: mark the rows.
    Continue,
    /// Stop at once as if the process died: nothing is marked or released, and
    /// [`Relay::run`] returns [`Error::Crashed`].
    Crash,
}

/// A fault point called after a batch was published and before it is marked, with the
/// sequences the publisher confirmed. Tests use it to crash the relay there.
pub type AfterPublishHook = Arc<dyn Fn(&[i64]) -> HookAction + Send + Sync>;

/// How a [`Relay`] polls and publishes.
#[derive(Clone)]
pub struct RelayConfig {
    /// Time between polls when the outbox is empty (default 1 s). A full batch is followed by
    /// the next poll at once; [`RelayWaker::wake`] cuts the wait short.
    pub poll_interval: Duration,
    /// Most rows claimed and in flight per poll (default 256).
    pub batch_size: usize,
    /// Mark or delete published rows (default: mark, keep 24 h).
    pub on_published: OnPublished,
    /// First pause after a retryable publisher or database error (default 100 ms).
    pub backoff_min: Duration,
    /// Longest pause between retries (default 30 s).
    pub backoff_max: Duration,
    /// At shutdown, how long in-flight confirms are awaited before the relay gives up on them
    /// (they stay pending; default 5 s).
    pub shutdown_grace: Duration,
    /// Fault point between publishing and marking (default none).
    pub after_publish_hook: Option<AfterPublishHook>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            poll_interval: Duration::from_secs(1),
            batch_size: 256,
            on_published: OnPublished::Mark {
                retention: Some(Duration::from_secs(24 * 3600)),
            },
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            after_publish_hook: None,
        }
    }
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("poll_interval", &self.poll_interval)
            .field("batch_size", &self.batch_size)
            .field("on_published", &self.on_published)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("after_publish_hook", &self.after_publish_hook.is_some())
            .finish()
    }
}

impl RelayConfig {
    /// Checks every field; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.poll_interval.is_zero() {
            return Err(Error::config("relay.poll_interval", "must be positive"));
        }
        if self.batch_size == 0 {
            return Err(Error::config("relay.batch_size", "must be at least 1"));
        }
        if self.backoff_min.is_zero() {
            return Err(Error::config("relay.backoff_min", "must be positive"));
        }
        if self.backoff_max < self.backoff_min {
            return Err(Error::config(
                "relay.backoff_max",
                "must be at least relay.backoff_min",
            ));
        }
        Ok(())
    }
}

/// Counters of one relay since it started, published on a `watch` channel ([`Relay::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Rows the publisher confirmed (including duplicates).
    pub published: u64,
    /// Of those, rows the backend had already stored (republished after a crash).
    pub duplicates: u64,
    /// Rows marked failed (non-retryable error or undecodable).
    pub failed: u64,
    /// Retryable publish errors.
    pub retries: u64,
    /// Batches whose outcomes were recorded.
    pub batches: u64,
    /// Published rows deleted by retention.
    pub purged: u64,
    /// Age of the oldest pending row at the last poll.
    pub lag: Option<Duration>,
    /// Another relay holds the outbox (SQLite lease); this one waits.
    pub standby: bool,
    /// The last publisher or database error.
    pub last_error: Option<String>,
}

/// Wakes a relay before its next poll, e.g. right after the application committed a
/// transaction that enqueued messages. Cheap to clone. A wake while the relay is busy is kept
/// and makes it poll again at once.
#[derive(Debug, Clone)]
pub struct RelayWaker(Arc<Notify>);

impl RelayWaker {
    /// Asks the relay to poll now.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Publishes what the outbox holds. See the [module docs](self) for the guarantees.
pub struct Relay {
    store: Box<dyn Source>,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
    wake: Arc<Notify>,
    stats: watch::Sender<RelayStats>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("store", &self.store.label())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Exponential backoff with ±25 % jitter.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        d.mul_f64(0.75 + (r % 1000) as f64 / 2000.0)
    }
    fn reset(&mut self) {
        self.next = self.min;
    }
}

impl Relay {
    /// A relay reading `store` and publishing through `publisher`. Fails on an invalid config.
    pub fn new(
        store: impl Into<Store>,
        publisher: Arc<dyn Publisher>,
        config: RelayConfig,
    ) -> Result<Self> {
        config.validate()?;
        let mut store = store.into().0;
        let wake = Arc::new(Notify::new());
        store.set_waker(wake.clone());
        Ok(Relay {
            store,
            publisher,
            config,
            wake,
            stats: watch::Sender::new(RelayStats::default()),
        })
    }

    /// A handle that wakes this relay.
    pub fn waker(&self) -> RelayWaker {
        RelayWaker(self.wake.clone())
    }

    /// The relay's counters, updated after every poll.
    pub fn stats(&self) -> watch::Receiver<RelayStats> {
        self.stats.subscribe()
    }

    /// Runs until `shutdown` is cancelled: finishes the batch in flight (confirms awaited up to
    /// [`RelayConfig::shutdown_grace`], then marked), releases the SQLite lease, returns `Ok`.
    /// Database and publisher errors are retried with backoff, never returned; the only errors
    /// are [`Error::Crashed`] from the fault hook.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let label = self.store.label();
        let c = &self.config;
        let mut backoff = Backoff {
            next: c.backoff_min,
            min: c.backoff_min,
            max: c.backoff_max,
        };
        let delete = c.on_published == OnPublished::Delete;
        let retention = match c.on_published {
            OnPublished::Mark { retention } => retention,
            OnPublished::Delete => None,
        };
        let mut next_purge = Instant::now();
        while !shutdown.is_cancelled() {
            let claim = match self.store.claim(self.config.batch_size).await {
                Ok(claim) => claim,
                Err(e) => {
                    self.store_error("claim", &e);
                    if !pause(backoff.next(), &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            if claim.standby {
                self.stats
                    .send_if_modified(|s| !std::mem::replace(&mut s.standby, true));
                self.wait(&shutdown).await;
                continue;
            }
            let report = publish_rows(
                self.publisher.as_ref(),
                &claim.rows,
                claim.valid_until,
                &shutdown,
                self.config.shutdown_grace,
            )
            .await;
            if let Some(hook) = &self.config.after_publish_hook
                && !report.published.is_empty()
                && hook(&report.published) == HookAction::Crash
            {
                tracing::warn!("outbox relay crashing at the injected fault point");
                return Err(Error::Crashed {
                    seqs: report.published,
                });
            }
            let settled = report.outcomes.len();
            let mut retry_after = None;
            match &report.retryable {
                Some(e) => {
                    retry_after = Some(backoff.next());
                    self.stats
                        .send_modify(|s| s.last_error = Some(format!("publish: {e}")));
                }
                None => backoff.reset(),
            }
            metrics::counter!("squall_outbox_published_total", "store" => label)
                .increment(report.published.len() as u64);
            metrics::counter!("squall_outbox_duplicates_total", "store" => label)
                .increment(report.duplicates);
            metrics::counter!("squall_outbox_failed_total", "store" => label)
                .increment(report.failed);
            metrics::counter!("squall_outbox_retries_total", "store" => label)
                .increment(report.retries);
            let recorded = self.store.complete(report.outcomes, delete).await;
            if let Err(e) = &recorded {
                // The published rows stay pending and go again: duplicates, not losses.
                self.store_error("mark", e);
                retry_after = Some(backoff.next());
            }
            self.stats.send_modify(|s| {
                s.published += report.published.len() as u64;
                s.duplicates += report.duplicates;
                s.failed += report.failed;
                s.retries += report.retries;
                s.batches += u64::from(recorded.is_ok() && settled > 0);
                s.standby = false;
            });
            if let Some(r) = retention
                && recorded.is_ok()
                && Instant::now() >= next_purge
            {
                match self.store.purge_published(r).await {
                    Ok(n) => {
                        metrics::counter!("squall_outbox_purged_total", "store" => label)
                            .increment(n);
                        self.stats.send_if_modified(|s| {
                            s.purged += n;
                            n > 0
                        });
                    }
                    Err(e) => self.store_error("purge", &e),
                }
                next_purge = Instant::now() + r.min(Duration::from_secs(60));
            }
            self.update_lag(label).await;
            if let Some(d) = retry_after {
                if !pause(d, &shutdown).await {
                    break;
                }
            } else if !(claim.full && settled > 0) {
                self.wait(&shutdown).await;
            }
        }
        if let Err(e) = self.store.release().await {
            tracing::warn!("outbox relay could not release its lease: {e}");
        }
        Ok(())
    }

    fn store_error(&self, what: &str, e: &Error) {
        tracing::warn!(
            store = self.store.label(),
            "outbox {what} failed, backing off: {e}"
        );
        metrics::counter!("squall_outbox_store_errors_total", "store" => self.store.label())
            .increment(1);
        self.stats
            .send_modify(|s| s.last_error = Some(format!("{what}: {e}")));
    }

    async fn update_lag(&mut self, label: &'static str) {
        match self.store.oldest_pending().await {
            Ok(lag) => {
                metrics::gauge!("squall_outbox_lag_seconds", "store" => label)
                    .set(lag.unwrap_or_default().as_secs_f64());
                self.stats.send_if_modified(|s| {
                    let changed = s.lag != lag;
                    s.lag = lag;
                    changed
                });
            }
            Err(e) => tracing::debug!("outbox lag query failed: {e}"),
        }
    }

    /// Waits for the poll interval, a wake-up, or shutdown.
    async fn wait(&self, shutdown: &CancellationToken) {
        tokio::select! {
            _ = tokio::time::sleep(self.config.poll_interval) => {}
            _ = self.wake.notified() => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Sleeps `d` unless shut down first; `false` on shutdown.
async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}
