//! One stream of the log storage: its shared state and the [`StreamStore`] implementation.
//!
//! Concurrency, field by field (see also `writer.rs`):
//! - [`State`] sits behind one `std::sync::Mutex` (critical sections are short and never await;
//!   disk reads happen with the lock released). Appenders (the broker, under its stream lock) push
//!   encoded records into `pending` and the decoded message into `recent`; the writer thread takes
//!   `pending`, writes it, then updates the newest segment, `written` and the cache.
//! - `pending` is bounded by [`MAX_PENDING_BYTES`]: an append finding it full blocks until the
//!   writer has taken it (overflow is backpressure, never a drop).
//! - `recent` holds every record not yet written (so an append is readable as soon as it returns)
//!   plus the newest written ones, up to half of `cache_bytes`; `readahead` holds records decoded
//!   from disk, up to the other half, evicting the lowest sequences first.
//! - The sync queue (behind its own lock) hands written files and commit waiters to the syncer
//!   thread; `poison` is set once, by whichever thread saw a write or sync fail.
//! - Consumers see a record only once a crash of the process can no longer take it away
//!   ([`StreamBounds::visible`]): in `Fsync` mode once it is fsynced, in `Buffered` mode once it is
//!   written. Readable at once is not visible at once: a record still in `pending` dies with the
//!   process, and a consumer that had acked it would, after the restart, skip whatever message
//!   then took its sequence. The thread that advances `synced` (resp. `written`) calls the
//!   broker's waker.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use squall_core::{Durability, Message, Timestamp};
use tokio::sync::oneshot;

use super::consumers::Consumers;
use super::format;
use super::io::Io;
use super::read::pos_of;
use super::segment::{self, Segment};
use super::{Settings, SyncMode, writer};
use crate::storage::{
    Commit, ConsumerOp, ConsumerSnapshot, StorageError, StoredMessage, StreamBounds, StreamStore,
    VisibleWaker,
};

/// Most bytes of encoded records waiting for the writer before appends block.
pub(crate) const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

/// Resolves one append's [`Commit`].
pub(crate) type Waiter = oneshot::Sender<Result<Durability, StorageError>>;

/// A record encoded by an appender, waiting for the writer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecMeta {
    pub seq: u64,
    pub ts: u64,
    pub len: u32,
    /// Stream byte position.
    pub pos: u64,
}

/// Records appended and not yet taken by the writer.
#[derive(Default)]
pub(crate) struct Batch {
    /// The framed records, back to back.
    pub buf: Vec<u8>,
    pub recs: Vec<RecMeta>,
    /// One per record, in order.
    pub waiters: Vec<Waiter>,
}

/// A decoded record in the cache.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub msg: StoredMessage,
    pub pos: u64,
    pub size: u32,
}

/// The mutable state of a stream; see the module docs.
pub(crate) struct State {
    /// By base sequence; the last one is the writer's.
    pub segments: BTreeMap<u64, Segment>,
    /// Highest sequence assigned.
    pub last: u64,
    /// Lowest sequence readable (retention); `last + 1` when empty.
    pub floor: u64,
    /// Stream byte position of `floor` (`end_pos` when empty): `bytes = end_pos - first_pos`.
    pub first_pos: u64,
    /// Stream byte position after the last record appended.
    pub end_pos: u64,
    /// Highest sequence written to its segment file.
    pub written: u64,
    /// Highest sequence fsynced.
    pub synced: u64,
    /// Sync tickets completed (see [`LogStream::sync`]).
    pub sync_done: u64,
    pub recent: VecDeque<Cached>,
    pub recent_bytes: usize,
    pub readahead: BTreeMap<u64, Cached>,
    pub readahead_bytes: usize,
    pub pending: Batch,
    /// The writer sleeps and must be woken.
    pub writer_idle: bool,
    /// Threads blocked on the `progress` condvar.
    pub progress_waiters: usize,
    /// Appenders blocked on the `space` condvar.
    pub space_waiters: usize,
    pub closed: bool,
}

impl State {
    pub fn recent_get(&self, seq: u64) -> Option<&Cached> {
        let first = self.recent.front()?.msg.sequence;
        self.recent
            .get(usize::try_from(seq.checked_sub(first)?).ok()?)
    }

    /// Drops cached records over budget; never one not yet written.
    pub fn evict(&mut self, budget: usize) {
        while self.recent_bytes > budget
            && let Some(front) = self.recent.front()
            && front.msg.sequence <= self.written
        {
            self.recent_bytes -= front.size as usize;
            self.recent.pop_front();
        }
        while self.readahead_bytes > budget
            && let Some((_, c)) = self.readahead.pop_first()
        {
            self.readahead_bytes -= c.size as usize;
        }
    }
}

/// What the syncer is asked to do; see `writer.rs`.
#[derive(Default)]
pub(crate) struct SyncQueue {
    /// Files written since the last sync (deduplicated).
    pub files: Vec<(Arc<File>, PathBuf)>,
    /// The stream directory changed (a segment was created).
    pub dir: bool,
    /// Commits to resolve once synced (`Fsync` mode).
    pub waiters: Vec<Waiter>,
    /// Highest sequence written and handed over.
    pub upto: u64,
    /// Sealed segments whose `.idx` file is to be written after the sync.
    pub seals: Vec<u64>,
    /// Consumer journals or the retention floor changed.
    pub meta: bool,
    /// When the oldest unsynced change was made.
    pub dirty_since: Option<Instant>,
    /// Bytes written since the last sync.
    pub unsynced_bytes: u64,
    /// Sync tickets requested and taken.
    pub requested: u64,
    pub taken: u64,
    /// The writer has exited: sync what is left, then stop.
    pub done: bool,
}

impl SyncQueue {
    pub fn add_file(&mut self, file: &Arc<File>, path: &Path) {
        if !self.files.iter().any(|(f, _)| Arc::ptr_eq(f, file)) {
            self.files.push((file.clone(), path.to_path_buf()));
        }
        self.dirty_since.get_or_insert_with(Instant::now);
    }
}

/// Everything the threads of a stream share.
pub(crate) struct Shared {
    pub name: String,
    pub dir: PathBuf,
    pub settings: Settings,
    pub io: Io,
    pub state: Mutex<State>,
    /// The writer waits here for records.
    pub work: Condvar,
    /// Appenders wait here for room in `pending`.
    pub space: Condvar,
    /// `sync` waits here for writes and syncs.
    pub progress: Condvar,
    pub sq: Mutex<SyncQueue>,
    /// The syncer waits here.
    pub sync_cv: Condvar,
    /// Why writes are refused, once they are.
    pub poison: OnceLock<String>,
    pub consumers: Consumers,
    /// Called when `visible` advances (see the module docs).
    pub waker: Mutex<Option<VisibleWaker>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections leave the state consistent at every step that can panic (allocation
    // failure aside), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Refuses writes from now on, keeping the first cause.
    pub fn set_poison(&self, cause: String) {
        if self.poison.set(cause.clone()).is_ok() {
            tracing::error!(stream = %self.name, %cause, "log storage refuses writes from now on");
        }
        let _g = self.lock();
        self.space.notify_all();
        self.progress.notify_all();
    }

    pub fn poisoned(&self) -> Result<(), StorageError> {
        match self.poison.get() {
            Some(cause) => Err(StorageError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The highest sequence consumers may see (see the module docs).
    pub fn visible(&self, st: &State) -> u64 {
        match self.settings.sync {
            SyncMode::Fsync => st.synced,
            SyncMode::Buffered => st.written,
        }
    }

    /// Tells the broker that `visible` advanced. Call without the state lock held.
    pub fn wake_visible(&self) {
        let waker = lock(&self.waker).clone();
        if let Some(wake) = waker {
            wake();
        }
    }

    /// Asks the syncer to persist metadata (journals, floor) within the sync window.
    pub fn mark_meta_dirty(&self) {
        let mut q = lock(&self.sq);
        q.meta = true;
        if q.dirty_since.is_none() {
            q.dirty_since = Some(Instant::now());
            self.sync_cv.notify_one();
        }
    }
}

/// The [`StreamStore`] of [`super::LogStorage`]: a handle that stops the stream's threads when the
/// last clone goes.
pub(crate) struct LogStream {
    pub shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl LogStream {
    /// Recovers stream `name` in `dir` and starts its writer and syncer.
    pub fn open(
        name: &str,
        dir: &Path,
        settings: Settings,
        io: Io,
    ) -> Result<Arc<Self>, StorageError> {
        let rec = super::recovery::recover(name, dir, &io, settings.max_body)?;
        let consumers = Consumers::open(&dir.join("consumers"), &io, settings.compact_bytes)?;
        let mut segments = rec.segments;
        let (last, end_pos, first_base) = {
            let newest = segments
                .values()
                .next_back()
                .expect("recovery leaves a segment");
            let oldest = segments.values().next().expect("recovery leaves a segment");
            (newest.last, newest.end_pos(), oldest.base)
        };
        let floor = rec.floor.unwrap_or(0).max(first_base).min(last + 1);
        // Retention may have been interrupted: drop sealed segments wholly below the floor.
        let newest = *segments.keys().next_back().expect("a segment");
        let below: Vec<u64> = segments
            .iter()
            .filter(|(b, s)| **b != newest && s.last < floor)
            .map(|(b, _)| *b)
            .collect();
        for b in below {
            let s = segments.remove(&b).expect("listed");
            remove_segment_files(dir, &s);
        }
        let state = State {
            segments,
            last,
            floor,
            first_pos: end_pos,
            end_pos,
            written: last,
            synced: last,
            sync_done: 0,
            recent: VecDeque::new(),
            recent_bytes: 0,
            readahead: BTreeMap::new(),
            readahead_bytes: 0,
            pending: Batch::default(),
            writer_idle: false,
            progress_waiters: 0,
            space_waiters: 0,
            closed: false,
        };
        let shared = Arc::new(Shared {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            settings,
            io,
            state: Mutex::new(state),
            work: Condvar::new(),
            space: Condvar::new(),
            progress: Condvar::new(),
            sq: Mutex::new(SyncQueue::default()),
            sync_cv: Condvar::new(),
            poison: OnceLock::new(),
            consumers,
            waker: Mutex::new(None),
        });
        let first_pos = pos_of(&shared, floor)?;
        shared.lock().first_pos = first_pos;
        let threads = writer::spawn(&shared)?;
        Ok(Arc::new(LogStream {
            shared,
            threads: Mutex::new(threads),
        }))
    }

    /// Stops accepting appends, writes and syncs what was appended, and stops the threads.
    pub fn close(&self) {
        {
            let mut st = self.shared.lock();
            st.closed = true;
            self.shared.work.notify_all();
            self.shared.space.notify_all();
        }
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Deletes a segment's files (retention).
pub(crate) fn remove_segment_files(dir: &Path, s: &Segment) {
    if let Err(e) = std::fs::remove_file(&s.path) {
        tracing::warn!(segment = %s.path.display(), error = %e, "could not delete a segment");
    }
    let _ = std::fs::remove_file(dir.join(segment::index_file_name(s.base)));
}

impl StreamStore for LogStream {
    fn append(
        &self,
        published_at: Timestamp,
        msg: &Message,
    ) -> Result<(u64, Commit), StorageError> {
        let sh = &*self.shared;
        sh.poisoned()?;
        let mut st = sh.lock();
        while st.pending.buf.len() >= MAX_PENDING_BYTES && !st.closed {
            st.space_waiters += 1;
            st = sh.space.wait(st).unwrap_or_else(|p| p.into_inner());
            st.space_waiters -= 1;
            sh.poisoned()?;
        }
        if st.closed {
            return Err(closed_error(sh));
        }
        let seq = st.last + 1;
        let max = sh.settings.max_body;
        let len = format::encode_record(&mut st.pending.buf, seq, published_at, msg, max)
            .map_err(|size| StorageError::TooLarge { size, limit: max })?;
        let pos = st.end_pos;
        st.pending.recs.push(RecMeta {
            seq,
            ts: published_at.as_nanos(),
            len: len as u32,
            pos,
        });
        let (tx, rx) = oneshot::channel();
        st.pending.waiters.push(tx);
        st.last = seq;
        st.end_pos += len as u64;
        st.recent_bytes += len;
        st.recent.push_back(Cached {
            msg: StoredMessage {
                sequence: seq,
                published_at,
                message: msg.clone(),
            },
            pos,
            size: len as u32,
        });
        if st.writer_idle {
            st.writer_idle = false;
            sh.work.notify_one();
        }
        Ok((seq, Commit::Pending(rx)))
    }

    fn read(&self, sequence: u64) -> Result<Option<StoredMessage>, StorageError> {
        {
            let st = self.shared.lock();
            if sequence < st.floor || sequence > st.last {
                return Ok(None);
            }
            if let Some(c) = st.recent_get(sequence).or(st.readahead.get(&sequence)) {
                return Ok(Some(c.msg.clone()));
            }
        }
        self.read_disk(sequence)
    }

    fn bounds(&self) -> StreamBounds {
        let st = self.shared.lock();
        StreamBounds {
            first: st.floor,
            last: st.last,
            visible: self.shared.visible(&st),
            messages: st.last + 1 - st.floor,
            bytes: st.end_pos - st.first_pos,
        }
    }

    fn on_visible(&self, wake: VisibleWaker) {
        *lock(&self.shared.waker) = Some(wake);
    }

    fn first_at_or_after(&self, ts: Timestamp) -> Result<u64, StorageError> {
        let (floor, last, in_recent, recent_first) = {
            let st = self.shared.lock();
            let recent_first = st.recent.front().map(|c| c.msg.sequence);
            let in_recent = match st.recent.front() {
                Some(f) if f.msg.published_at < ts => {
                    let i = st.recent.partition_point(|c| c.msg.published_at < ts);
                    Some(st.recent.get(i).map_or(st.last + 1, |c| c.msg.sequence))
                }
                _ => None,
            };
            (st.floor, st.last, in_recent, recent_first)
        };
        let found = match in_recent {
            Some(s) => s,
            None => match self.first_on_disk_at_or_after(ts.as_nanos())? {
                Some(s) => s,
                None => recent_first.unwrap_or(last + 1),
            },
        };
        Ok(found.max(floor).min(last + 1))
    }

    fn remove_before(&self, sequence: u64) -> Result<(), StorageError> {
        let sh = &*self.shared;
        let doomed = {
            let mut st = sh.lock();
            let floor = sequence.min(st.last + 1);
            if floor <= st.floor {
                return Ok(());
            }
            st.floor = floor;
            while let Some(f) = st.recent.front()
                && f.msg.sequence < floor
                && f.msg.sequence <= st.written
            {
                st.recent_bytes -= f.size as usize;
                st.recent.pop_front();
            }
            let keep = st.readahead.split_off(&floor);
            st.readahead = keep;
            st.readahead_bytes = st.readahead.values().map(|c| c.size as usize).sum();
            let newest = *st.segments.keys().next_back().expect("a segment");
            let doomed: Vec<u64> = st
                .segments
                .iter()
                .take_while(|(b, s)| **b != newest && s.last < floor)
                .map(|(b, _)| *b)
                .collect();
            doomed
                .into_iter()
                .filter_map(|b| st.segments.remove(&b))
                .collect::<Vec<_>>()
        };
        for s in &doomed {
            remove_segment_files(&sh.dir, s);
        }
        let floor = sh.lock().floor;
        let pos = pos_of(sh, floor)?;
        {
            let mut st = sh.lock();
            if st.floor == floor {
                st.first_pos = pos.min(st.end_pos);
            }
        }
        sh.mark_meta_dirty();
        Ok(())
    }

    fn durability(&self) -> Durability {
        match self.shared.settings.sync {
            SyncMode::Fsync => Durability::Fsynced,
            SyncMode::Buffered => Durability::Written,
        }
    }

    fn sync(&self) -> Result<(), StorageError> {
        writer::sync_barrier(&self.shared)
    }

    fn record_consumer(&self, name: &str, ops: &[ConsumerOp]) -> Result<(), StorageError> {
        let sh = &*self.shared;
        sh.poisoned()?;
        match sh.consumers.record(&sh.io, name, ops) {
            Ok(()) => {
                sh.mark_meta_dirty();
                Ok(())
            }
            Err(e) => {
                sh.set_poison(format!("consumer journal write failed: {e}"));
                Err(e)
            }
        }
    }

    fn consumers(&self) -> Result<Vec<(String, ConsumerSnapshot)>, StorageError> {
        Ok(self.shared.consumers.snapshots())
    }

    fn delete_consumer(&self, name: &str) -> Result<(), StorageError> {
        self.shared.poisoned()?;
        self.shared.consumers.delete(name)?;
        self.shared.mark_meta_dirty();
        Ok(())
    }
}

fn closed_error(sh: &Shared) -> StorageError {
    StorageError::Io {
        op: "append",
        path: sh.dir.display().to_string(),
        source: Arc::new(std::io::Error::other("the stream was closed or deleted")),
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        self.close();
    }
}
