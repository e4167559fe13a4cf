//! The storage seam: what the broker needs from a place to keep streams and consumer progress.
//!
//! The broker holds the semantics (who gets what, leases, retention decisions); a [`Storage`] only
//! keeps bytes: per stream an append-only sequence of [`StoredMessage`]s, plus a journal of
//! [`ConsumerOp`]s per consumer group. [`MemoryStorage`] keeps everything in memory; the log storage
//! (segment files, group commit, crash recovery) implements the same traits.
//!
//! Contract for implementors:
//! - sequences are assigned by the store, consecutively from `bounds().last + 1`, starting at 1;
//! - [`StreamStore::append`] returns once the record is readable; the [`Commit`] resolves once it
//!   reached the store's durability, and never claims more than was reached;
//! - `bounds().visible` is the highest sequence a crash of the process can no longer take away
//!   (see [`StreamBounds::visible`]); the broker gives consumers nothing above it, so consumer
//!   progress never refers to a record the log could still lose. A store calls the waker given to
//!   [`StreamStore::on_visible`] whenever `visible` advances (the memory store on every append);
//! - after an unrecoverable write failure (a failed fsync) every later append fails with
//!   [`StorageError::Poisoned`];
//! - [`StreamStore::remove_before`] may keep some older records (whole segments are deleted); the
//!   broker never reads below the floor it asked for.

mod consumer_state;
mod log;
mod memory;

use std::sync::Arc;

use squall_core::{Durability, Error, ErrorKind, Message, Timestamp};

pub use consumer_state::{ConsumerOp, ConsumerSnapshot, PendingState, ReadyState};
pub use log::{
    FORMAT_VERSION, FailNth, IoHook, IoOp, IoVerdict, LogConfig, LogStorage, SegmentCheck,
    SyncMode, decode_segment_for_fuzz,
};
pub use memory::MemoryStorage;

/// A message as a stream holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Position in the stream, from 1.
    pub sequence: u64,
    /// When the broker appended it (its clock).
    pub published_at: Timestamp,
    /// The message.
    pub message: Message,
}

/// What a stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamBounds {
    /// Lowest sequence still held; `last + 1` when empty.
    pub first: u64,
    /// Highest sequence ever assigned; 0 before the first append.
    pub last: u64,
    /// Highest sequence consumers may be given: every record up to it survives a crash of the
    /// process (`Fsync` log: fsynced; `Buffered` log: written to the OS; memory: `last`, as
    /// nothing survives a restart there anyway). At most `last`.
    pub visible: u64,
    /// Messages held.
    pub messages: u64,
    /// Bytes held (payload + headers + framing, as the store counts them).
    pub bytes: u64,
}

/// Storage failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: Arc<std::io::Error>,
    },
    /// The device is full; nothing acknowledged was damaged.
    #[error("disk full writing {path}: free space, or lower retention limits")]
    DiskFull {
        /// The file.
        path: String,
    },
    /// Stored data failed verification.
    #[error("corrupt data in stream `{stream}` sequences {first}..={last}: {detail}")]
    Corrupt {
        /// The stream.
        stream: String,
        /// First affected sequence (best known).
        first: u64,
        /// Last affected sequence (best known).
        last: u64,
        /// What failed.
        detail: String,
    },
    /// Writes are refused after an earlier failure that may have lost data (a failed fsync).
    #[error(
        "storage refuses writes after an earlier failure ({cause}); restart the broker once the cause is fixed"
    )]
    Poisoned {
        /// The original failure.
        cause: String,
    },
    /// A record is larger than the store accepts.
    #[error("record of {size} bytes exceeds the storage limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Another storage (in this or another process) holds the data directory.
    #[error(
        "data directory {dir} is in use by {holder}: stop that broker, or choose another data directory"
    )]
    Locked {
        /// The data directory.
        dir: String,
        /// Who holds it, as known (`process 4242`, or `another process`).
        holder: String,
    },
    /// Saved metadata could not be read.
    #[error("invalid metadata {what}: {detail}")]
    Metadata {
        /// Which.
        what: String,
        /// Why.
        detail: String,
    },
}

impl StorageError {
    /// An I/O error on `path`, recognising a full disk.
    pub fn io(op: &'static str, path: impl std::fmt::Display, e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull {
            return StorageError::DiskFull {
                path: path.to_string(),
            };
        }
        StorageError::Io {
            op,
            path: path.to_string(),
            source: Arc::new(e),
        }
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        let kind = match &e {
            StorageError::Poisoned { .. } => ErrorKind::StoragePoisoned,
            StorageError::TooLarge { .. } => ErrorKind::InvalidMessage,
            _ => ErrorKind::Storage,
        };
        Error::new(kind, e.to_string())
    }
}

/// The outcome of an append's durability: reached already, or later.
#[derive(Debug)]
pub enum Commit {
    /// Reached.
    Done(Durability),
    /// Resolves when the store has synced (or failed to).
    Pending(tokio::sync::oneshot::Receiver<Result<Durability, StorageError>>),
}

impl Commit {
    /// Waits for the durability.
    pub async fn wait(self) -> Result<Durability, StorageError> {
        match self {
            Commit::Done(d) => Ok(d),
            Commit::Pending(rx) => rx.await.unwrap_or_else(|_| {
                Err(StorageError::Poisoned {
                    cause: "the storage writer stopped".into(),
                })
            }),
        }
    }
}

/// Called (from any thread, possibly a storage thread) when a stream's `bounds().visible`
/// advanced; it must be cheap and must not block.
pub type VisibleWaker = Arc<dyn Fn() + Send + Sync>;

/// A place that keeps streams. Implementations are shared by all streams of one broker.
pub trait Storage: Send + Sync + 'static {
    /// `memory`, `log`...
    fn kind(&self) -> &'static str;
    /// The streams kept, with the metadata saved by [`Storage::open_stream`], for reopening.
    fn streams(&self) -> Result<Vec<(String, Vec<u8>)>, StorageError>;
    /// Opens (creating if needed) stream `name`, saving `meta` (the broker's stream config).
    fn open_stream(&self, name: &str, meta: &[u8]) -> Result<Arc<dyn StreamStore>, StorageError>;
    /// Deletes a stream and its consumers.
    fn delete_stream(&self, name: &str) -> Result<(), StorageError>;
}

/// One stream's records and its consumers' journals.
///
/// Methods take `&self`; implementations synchronise internally. The broker calls `append` under
/// its stream lock (so sequence order equals call order) and reads without it.
pub trait StreamStore: Send + Sync {
    /// Appends one message; returns its sequence and the commit to await for durability.
    fn append(&self, published_at: Timestamp, msg: &Message)
    -> Result<(u64, Commit), StorageError>;
    /// Reads one message; `None` if it was removed or never existed.
    fn read(&self, sequence: u64) -> Result<Option<StoredMessage>, StorageError>;
    /// What is held.
    fn bounds(&self) -> StreamBounds;
    /// Registers the waker to call whenever `bounds().visible` advances: the one way the broker
    /// learns that consumers have something new. A second call replaces the first waker.
    fn on_visible(&self, wake: VisibleWaker);
    /// The sequence of the first message appended at or after `ts` (`last + 1` if none).
    fn first_at_or_after(&self, ts: Timestamp) -> Result<u64, StorageError>;
    /// Drops messages with sequences below `sequence` (possibly keeping some; see the module docs).
    fn remove_before(&self, sequence: u64) -> Result<(), StorageError>;
    /// The durability an append's commit reaches.
    fn durability(&self) -> Durability;
    /// Forces everything appended so far to the store's durability.
    fn sync(&self) -> Result<(), StorageError>;
    /// Records consumer progress. May be buffered: the store documents its window.
    fn record_consumer(&self, name: &str, ops: &[ConsumerOp]) -> Result<(), StorageError>;
    /// The consumers recorded, with their progress replayed.
    fn consumers(&self) -> Result<Vec<(String, ConsumerSnapshot)>, StorageError>;
    /// Forgets a consumer.
    fn delete_consumer(&self, name: &str) -> Result<(), StorageError>;
}
