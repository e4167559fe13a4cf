//! File operations of the log storage, with a fault hook in front of each write-side call.
//!
//! Every write, fdatasync and file creation of [`super::LogStorage`] goes through [`Io`], which
//! first asks the configured [`IoHook`] for a verdict. Tests (and the chaos lab) install a hook in
//! [`super::LogConfig::io_hook`] to fail the Nth fsync, fill the disk, or cut a write short;
//! without a hook the check is one branch.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A write-side file operation the log storage is about to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// A write(2) of records, journal frames or metadata.
    Write,
    /// An fdatasync of a file, or an fsync of a directory.
    Sync,
    /// Creating a file (new segment, journal, temporary metadata).
    Create,
}

/// What a hook decides about one operation.
#[derive(Debug)]
pub enum IoVerdict {
    /// Perform it.
    Pass,
    /// Do not perform it; fail with this error.
    Fail(io::Error),
    /// Writes only: write the first `bytes` bytes, then fail with `error` (a torn write).
    Short {
        /// Bytes actually written.
        bytes: usize,
        /// The error returned afterwards.
        error: io::Error,
    },
}

/// Decides the fate of file operations; see the module docs. Called on the thread doing the
/// operation, so it must be cheap and must not block.
pub trait IoHook: Send + Sync + 'static {
    /// The verdict for `op` on `path` (`len` bytes for writes, 0 otherwise).
    fn check(&self, op: IoOp, path: &Path, len: usize) -> IoVerdict;
}

/// A hook failing the `n`th (1-based) operation of one kind, and every later one if `sticky`,
/// with an OS error number (`libc::EIO` = 5, `ENOSPC` = 28), optionally only on paths containing
/// `path_contains`.
#[derive(Debug)]
pub struct FailNth {
    op: IoOp,
    n: u64,
    errno: i32,
    sticky: bool,
    short_bytes: Option<usize>,
    path_contains: Option<String>,
    seen: AtomicU64,
}

impl FailNth {
    /// Fails the `n`th `op` with OS error `errno`. Wrap it in an `Arc` for
    /// [`super::LogConfig::io_hook`].
    pub fn new(op: IoOp, n: u64, errno: i32) -> Self {
        FailNth {
            op,
            n,
            errno,
            sticky: false,
            short_bytes: None,
            path_contains: None,
            seen: AtomicU64::new(0),
        }
    }

    /// Also fails every later matching operation.
    pub fn sticky(mut self) -> Self {
        self.sticky = true;
        self
    }

    /// Writes only: writes this many bytes before failing (a torn write).
    pub fn after_bytes(mut self, bytes: usize) -> Self {
        self.short_bytes = Some(bytes);
        self
    }

    /// Only counts operations on paths containing `s`.
    pub fn on_paths_containing(mut self, s: &str) -> Self {
        self.path_contains = Some(s.to_string());
        self
    }

    /// Matching operations seen so far.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

impl IoHook for FailNth {
    fn check(&self, op: IoOp, path: &Path, len: usize) -> IoVerdict {
        if op != self.op {
            return IoVerdict::Pass;
        }
        if let Some(s) = &self.path_contains
            && !path.to_string_lossy().contains(s.as_str())
        {
            return IoVerdict::Pass;
        }
        let k = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if k < self.n || (k > self.n && !self.sticky) {
            return IoVerdict::Pass;
        }
        let error = io::Error::from_raw_os_error(self.errno);
        match self.short_bytes {
            Some(bytes) if op == IoOp::Write => IoVerdict::Short {
                bytes: bytes.min(len),
                error,
            },
            _ => IoVerdict::Fail(error),
        }
    }
}

/// The file operations, behind the optional hook.
#[derive(Clone, Default)]
pub(crate) struct Io {
    hook: Option<Arc<dyn IoHook>>,
}

impl Io {
    pub fn new(hook: Option<Arc<dyn IoHook>>) -> Self {
        Io { hook }
    }

    fn verdict(&self, op: IoOp, path: &Path, len: usize) -> IoVerdict {
        match &self.hook {
            Some(h) => h.check(op, path, len),
            None => IoVerdict::Pass,
        }
    }

    /// pwrite(2) of all of `buf` at `offset`.
    pub fn write_at(&self, file: &File, path: &Path, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.verdict(IoOp::Write, path, buf.len()) {
            IoVerdict::Pass => file.write_all_at(buf, offset),
            IoVerdict::Fail(e) => Err(e),
            IoVerdict::Short { bytes, error } => {
                file.write_all_at(&buf[..bytes.min(buf.len())], offset)?;
                Err(error)
            }
        }
    }

    /// fdatasync(2).
    pub fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        match self.verdict(IoOp::Sync, path, 0) {
            IoVerdict::Pass => file.sync_data(),
            IoVerdict::Fail(e) | IoVerdict::Short { error: e, .. } => Err(e),
        }
    }

    /// fsync(2) of a directory, making created, renamed and removed entries durable.
    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match self.verdict(IoOp::Sync, dir, 0) {
            IoVerdict::Pass => File::open(dir)?.sync_all(),
            IoVerdict::Fail(e) | IoVerdict::Short { error: e, .. } => Err(e),
        }
    }

    /// Creates `path`, failing if it exists, opened for reading and writing.
    pub fn create_new(&self, path: &Path) -> io::Result<File> {
        match self.verdict(IoOp::Create, path, 0) {
            IoVerdict::Pass => OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path),
            IoVerdict::Fail(e) | IoVerdict::Short { error: e, .. } => Err(e),
        }
    }

    /// Writes `bytes` to `path` atomically: a temporary file, written and fsynced, renamed over
    /// `path`, then the directory fsynced when `durable`.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let file = self.create_new(&tmp)?;
        let written = self
            .write_at(&file, &tmp, bytes, 0)
            .and_then(|()| match durable {
                true => self.sync_data(&file, &tmp),
                false => Ok(()),
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, path)?;
        if durable && let Some(dir) = path.parent() {
            self.sync_dir(dir)?;
        }
        Ok(())
    }
}
