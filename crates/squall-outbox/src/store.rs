//! [`Store`]: the database a [`crate::Relay`] reads, behind the crate-private `Source` seam
//! both databases implement.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::Result;
use crate::row::{Outcome, Row};

/// Rows a relay may publish now, in insertion order.
pub(crate) struct Claim {
    pub rows: Vec<Row>,
    /// Sending must stop at this instant: past it another relay may take over (SQLite lease).
    pub valid_until: Option<Instant>,
    /// Another relay holds the outbox; this one waits.
    pub standby: bool,
    /// The query returned a full batch: more rows may be waiting.
    pub full: bool,
}

/// What a relay needs from a database. Every `claim` is followed by exactly one `complete` (or
/// the source is dropped, which must leave every claimed row pending).
#[async_trait]
pub(crate) trait Source: Send + Sync {
    /// `sqlite` or `postgres`, for metrics labels and logs.
    fn label(&self) -> &'static str;
    /// Where database notifications (PostgreSQL LISTEN) wake the relay.
    fn set_waker(&mut self, _waker: Arc<Notify>) {}
    /// Up to `limit` pending rows this relay may publish, keeping per-key order: a row is
    /// returned only with every earlier pending row of its key before it in the same claim.
    async fn claim(&mut self, limit: usize) -> Result<Claim>;
    /// Records the outcomes of the last claim (published rows are marked or, with `delete`,
    /// removed) and ends it.
    async fn complete(&mut self, outcomes: Vec<Outcome>, delete: bool) -> Result<()>;
    /// Age of the oldest pending row.
    async fn oldest_pending(&mut self) -> Result<Option<Duration>>;
    /// Deletes published rows marked more than `older_than` ago; returns how many.
    async fn purge_published(&mut self, older_than: Duration) -> Result<u64>;
    /// Gives up whatever this relay holds (the SQLite lease) at shutdown.
    async fn release(&mut self) -> Result<()>;
}

/// The outbox a [`crate::Relay`] reads: a [`crate::sqlite::SqliteStore`] or a
/// [`crate::postgres::PgStore`] (both convert with `into()`).
pub struct Store(pub(crate) Box<dyn Source>);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Store").field(&self.0.label()).finish()
    }
}
