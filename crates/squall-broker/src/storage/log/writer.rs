//! Group commit: the writer and syncer threads of a stream.
//!
//! Two std threads per stream (fsync blocks, so not tokio tasks), forming a pipeline:
//! - the **writer** takes everything appended since its last turn (one batch), writes it with one
//!   `pwrite` per segment touched, rolls to a new segment when the current one is full, updates
//!   the segment index, and hands the written files and the batch's commits to the syncer. In
//!   `Buffered` mode it resolves the commits itself (`Written`) right after the write;
//! - the **syncer** takes everything handed over since its last turn and makes it durable with
//!   one `fdatasync` per file (plus the directory when a segment was created), then resolves all
//!   those commits (`Fsynced`). While it syncs batch N, the writer writes batch N+1 and appenders
//!   fill batch N+2: with many concurrent publishers one fsync covers thousands of appends.
//!
//! In `Buffered` mode the syncer runs at most `buffered_sync_interval` after the first unsynced
//! change, or as soon as 8 MiB were written since the last sync. Consumer journals and the retention floor are synced on the same cadence (within
//! `buffered_sync_interval`, or with the next data sync, whichever comes first).
//!
//! Consumers see records up to `synced` in `Fsync` mode and up to `written` in `Buffered` mode
//! (see `stream.rs`); whichever thread advances that bound wakes the broker's consumers.
//!
//! A failed write or fsync poisons the stream: every later append, sync and consumer record
//! fails with [`StorageError::Poisoned`], and the syncer never fsyncs again (after a failed fsync
//! the kernel may have dropped the dirty pages, so a later success would prove nothing).
//!
//! Both threads stop when the stream is closed: the writer drains what was appended, the syncer
//! syncs it, then both exit.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use squall_core::Durability;

use super::SyncMode;
use super::format::SEGMENT_HEADER_LEN;
use super::index::{IndexFile, SparseIndex};
use super::recovery;
use super::segment::{Segment, index_file_name};
use super::stream::{Batch, Shared, Waiter, lock};
use crate::storage::StorageError;

/// `Buffered` mode syncs early once this much was written since the last sync, so one fsync never
/// has to flush a large backlog (which would stall the writes queued behind it).
const EARLY_SYNC_BYTES: u64 = 8 * 1024 * 1024;

/// The segment the writer appends to.
struct Active {
    base: u64,
    file: Arc<File>,
    path: PathBuf,
    len: u64,
}

/// Starts the writer and syncer of a freshly recovered stream.
pub(crate) fn spawn(sh: &Arc<Shared>) -> Result<Vec<JoinHandle<()>>, StorageError> {
    let (active, floor) = {
        let st = sh.lock();
        let s = st.segments.values().next_back().expect("a segment");
        let active = Active {
            base: s.base,
            file: s.file.clone(),
            path: s.path.clone(),
            len: s.len,
        };
        (active, st.floor)
    };
    let spawn_err = |e| StorageError::io("spawn thread for", sh.dir.display(), e);
    let w = {
        let sh = sh.clone();
        std::thread::Builder::new()
            .name(format!("squall-log-writer-{}", sh.name))
            .spawn(move || run_writer(sh, active))
            .map_err(spawn_err)?
    };
    let s = {
        let sh = sh.clone();
        std::thread::Builder::new()
            .name(format!("squall-log-syncer-{}", sh.name))
            .spawn(move || run_syncer(sh, floor))
            .map_err(spawn_err)?
    };
    Ok(vec![w, s])
}

fn run_writer(sh: Arc<Shared>, mut active: Active) {
    let mut spare = Batch::default();
    loop {
        let mut batch = {
            let mut st = sh.lock();
            while st.pending.recs.is_empty() && !st.closed {
                st.writer_idle = true;
                st = sh.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.writer_idle = false;
            if st.pending.recs.is_empty() {
                break;
            }
            if st.space_waiters > 0 {
                sh.space.notify_all();
            }
            std::mem::replace(&mut st.pending, std::mem::take(&mut spare))
        };
        match sh.poisoned() {
            Err(e) => {
                for w in batch.waiters.drain(..) {
                    let _ = w.send(Err(e.clone()));
                }
            }
            Ok(()) => write_batch(&sh, &mut active, &mut batch),
        }
        batch.buf.clear();
        batch.recs.clear();
        batch.waiters.clear();
        spare = batch;
    }
    let mut q = lock(&sh.sq);
    q.done = true;
    sh.sync_cv.notify_one();
}

fn fail(sh: &Shared, waiters: &mut Vec<Waiter>, err: StorageError) {
    sh.set_poison(err.to_string());
    for w in waiters.drain(..) {
        let _ = w.send(Err(err.clone()));
    }
}

fn write_batch(sh: &Shared, active: &mut Active, batch: &mut Batch) {
    let seg_bytes = sh.settings.segment_bytes;
    let recs = &batch.recs;
    let (mut i, mut boff) = (0usize, 0usize);
    let mut files: Vec<(Arc<File>, PathBuf)> = Vec::new();
    let mut seals = Vec::new();
    while i < recs.len() {
        let first = recs[i];
        if active.len > SEGMENT_HEADER_LEN && active.len + u64::from(first.len) > seg_bytes {
            match recovery::create_segment(&sh.io, &sh.dir, first.seq, false) {
                Ok((file, path)) => {
                    let file = Arc::new(file);
                    sh.lock().segments.insert(
                        first.seq,
                        Segment {
                            base: first.seq,
                            path: path.clone(),
                            file: file.clone(),
                            len: SEGMENT_HEADER_LEN,
                            last: first.seq - 1,
                            ts: None,
                            index: SparseIndex::default(),
                            holes: Vec::new(),
                            start_pos: first.pos,
                        },
                    );
                    seals.push(active.base);
                    *active = Active {
                        base: first.seq,
                        file,
                        path,
                        len: SEGMENT_HEADER_LEN,
                    };
                }
                Err(e) => {
                    let err = StorageError::io("create segment in", sh.dir.display(), e);
                    return fail(sh, &mut batch.waiters, err);
                }
            }
        }
        let mut j = i;
        let mut run = 0u64;
        while j < recs.len() && (j == i || active.len + run + u64::from(recs[j].len) <= seg_bytes) {
            run += u64::from(recs[j].len);
            j += 1;
        }
        let bytes = &batch.buf[boff..boff + run as usize];
        if let Err(e) = sh
            .io
            .write_at(&active.file, &active.path, bytes, active.len)
        {
            // Drop a partial record so the file ends where acknowledged data ends.
            let _ = active.file.set_len(active.len);
            let err = StorageError::io("write", active.path.display(), e);
            return fail(sh, &mut batch.waiters, err);
        }
        {
            let mut st = sh.lock();
            let seg = st
                .segments
                .get_mut(&active.base)
                .expect("the active segment is never removed");
            let mut off = active.len;
            for r in &recs[i..j] {
                seg.index.note(active.base, r.seq, off, r.ts);
                off += u64::from(r.len);
            }
            seg.len = off;
            seg.last = recs[j - 1].seq;
            let (t0, t1) = (recs[i].ts, recs[j - 1].ts);
            seg.ts = Some(seg.ts.map_or((t0, t1), |(a, _)| (a, t1)));
        }
        active.len += run;
        if !files.iter().any(|(f, _)| Arc::ptr_eq(f, &active.file)) {
            files.push((active.file.clone(), active.path.clone()));
        }
        boff += run as usize;
        i = j;
    }
    let last = recs[recs.len() - 1].seq;
    let fsync = sh.settings.sync == SyncMode::Fsync;
    {
        // Handed over before `written` advances, so a sync barrier that sees `written` reach its
        // target also finds these files queued.
        let mut q = lock(&sh.sq);
        let was_clean = q.dirty_since.is_none();
        for (f, p) in &files {
            q.add_file(f, p);
        }
        q.dir |= !seals.is_empty();
        q.seals.extend(seals);
        q.upto = q.upto.max(last);
        q.unsynced_bytes += batch.buf.len() as u64;
        if fsync {
            q.waiters.append(&mut batch.waiters);
        }
        if fsync || was_clean || q.unsynced_bytes >= EARLY_SYNC_BYTES {
            sh.sync_cv.notify_one();
        }
    }
    {
        let mut st = sh.lock();
        st.written = last;
        st.evict(sh.settings.cache_bytes / 2);
        if st.progress_waiters > 0 {
            sh.progress.notify_all();
        }
    }
    if !fsync {
        sh.wake_visible();
    }
    for w in batch.waiters.drain(..) {
        let _ = w.send(Ok(Durability::Written));
    }
}

/// One turn of the syncer.
struct Job {
    files: Vec<(Arc<File>, PathBuf)>,
    dir: bool,
    waiters: Vec<Waiter>,
    upto: u64,
    seals: Vec<u64>,
    meta: bool,
    ticket: u64,
}

/// `floor_saved`: the retention floor as the floor file holds it.
/// Metric: fdatasyncs of segment data (`mode` = fsync | buffered).
pub(crate) const FSYNCS: &str = "squall_storage_fsyncs_total";
/// Metric: seconds one sync job took (fdatasync of the segments it covers).
pub(crate) const FSYNC_SECONDS: &str = "squall_storage_fsync_seconds";
/// Metric: messages made durable by one sync job (the group-commit batch).
pub(crate) const FSYNC_BATCH: &str = "squall_storage_fsync_batch_messages";

fn run_syncer(sh: Arc<Shared>, mut floor_saved: u64) {
    let interval = sh.settings.interval;
    let fsync = sh.settings.sync == SyncMode::Fsync;
    loop {
        let mut job = {
            let mut q = lock(&sh.sq);
            loop {
                let forced = q.requested > q.taken;
                let dirty = !q.files.is_empty() || q.dir || q.meta || !q.seals.is_empty();
                let due = q.dirty_since.is_some_and(|t| t.elapsed() >= interval)
                    || q.unsynced_bytes >= EARLY_SYNC_BYTES;
                let urgent = fsync && !q.waiters.is_empty();
                if forced || urgent || (dirty && (due || q.done)) {
                    break;
                }
                if q.done {
                    drop(q);
                    let mut st = sh.lock();
                    st.sync_done = u64::MAX;
                    sh.progress.notify_all();
                    return;
                }
                q = match q.dirty_since {
                    Some(t) => {
                        let left = interval.saturating_sub(t.elapsed());
                        sh.sync_cv
                            .wait_timeout(q, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    None => sh.sync_cv.wait(q).unwrap_or_else(|p| p.into_inner()),
                };
            }
            q.taken = q.requested;
            q.dirty_since = None;
            q.unsynced_bytes = 0;
            Job {
                files: std::mem::take(&mut q.files),
                dir: std::mem::take(&mut q.dir),
                waiters: std::mem::take(&mut q.waiters),
                upto: q.upto,
                seals: std::mem::take(&mut q.seals),
                meta: std::mem::take(&mut q.meta),
                ticket: q.requested,
            }
        };
        let started = std::time::Instant::now();
        let result = run_job(&sh, &job, &mut floor_saved);
        if !job.files.is_empty() {
            let batch = job.upto.saturating_sub(sh.lock().synced);
            let mode = if fsync { "fsync" } else { "buffered" };
            metrics::counter!(FSYNCS, "mode" => mode).increment(1);
            metrics::histogram!(FSYNC_SECONDS, "mode" => mode)
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!(FSYNC_BATCH, "mode" => mode).record(batch as f64);
        }
        if let Err(e) = &result
            && !matches!(e, StorageError::Poisoned { .. })
        {
            sh.set_poison(format!("{e}"));
        }
        let advanced = {
            let mut st = sh.lock();
            let advanced = result.is_ok() && job.upto > st.synced;
            if advanced {
                st.synced = job.upto;
            }
            st.sync_done = job.ticket;
            if st.progress_waiters > 0 {
                sh.progress.notify_all();
            }
            advanced
        };
        if fsync && advanced {
            sh.wake_visible();
        }
        let outcome = result.map(|()| Durability::Fsynced);
        for w in job.waiters.drain(..) {
            let _ = w.send(outcome.clone());
        }
    }
}

fn run_job(sh: &Shared, job: &Job, floor_saved: &mut u64) -> Result<(), StorageError> {
    // Never fsync again after a failure: see the module docs.
    sh.poisoned()?;
    for (f, p) in &job.files {
        sh.io
            .sync_data(f, p)
            .map_err(|e| StorageError::io("fdatasync", p.display(), e))?;
    }
    if job.dir {
        sh.io
            .sync_dir(&sh.dir)
            .map_err(|e| StorageError::io("fsync directory", sh.dir.display(), e))?;
    }
    if job.meta {
        sh.consumers.sync(&sh.io)?;
        let floor = sh.lock().floor;
        if floor != *floor_saved && recovery::write_floor(&sh.io, &sh.dir, floor).is_ok() {
            *floor_saved = floor;
        }
    }
    for &base in &job.seals {
        let file = {
            let st = sh.lock();
            let newest = st.segments.keys().next_back().copied();
            st.segments
                .get(&base)
                .filter(|_| newest != Some(base))
                .map(|s| IndexFile {
                    base,
                    segment_len: s.len,
                    valid_len: s.len,
                    last: s.last,
                    ts: s.ts,
                    holes: s.holes.clone(),
                    index: s.index.clone(),
                })
        };
        if let Some(f) = file {
            // Only a cache (rebuilt by scanning when missing), so a failure is not an error.
            let _ = sh
                .io
                .write_atomic(&sh.dir.join(index_file_name(base)), &f.encode(), false);
        }
    }
    Ok(())
}

/// Waits until everything appended before the call is written and fsynced (in both modes), with
/// consumer journals; see [`crate::storage::StreamStore::sync`].
pub(crate) fn sync_barrier(sh: &Shared) -> Result<(), StorageError> {
    sh.poisoned()?;
    let mut st = sh.lock();
    let target = st.last;
    st.progress_waiters += 1;
    while st.written < target && sh.poison.get().is_none() && st.sync_done != u64::MAX {
        st = sh.progress.wait(st).unwrap_or_else(|p| p.into_inner());
    }
    drop(st);
    let ticket = {
        let mut q = lock(&sh.sq);
        q.requested += 1;
        sh.sync_cv.notify_one();
        q.requested
    };
    let mut st = sh.lock();
    while st.sync_done < ticket && sh.poison.get().is_none() {
        st = sh.progress.wait(st).unwrap_or_else(|p| p.into_inner());
    }
    st.progress_waiters -= 1;
    drop(st);
    sh.poisoned()
}
