//! [`LogStorage`]: streams in append-only segment files, with group commit and crash recovery.
//!
//! ## Layout
//! ```text
//! <dir>/LOCK                                      held (flock) while a storage is open; its PID
//! <dir>/streams/<stream>/meta                     the stream's saved metadata (atomic rewrite)
//! <dir>/streams/<stream>/00000000000000000001.seg records from sequence 1
//! <dir>/streams/<stream>/00000000000000052001.idx sparse index of a sealed segment (a cache)
//! <dir>/streams/<stream>/floor                    retention floor (advisory)
//! <dir>/streams/<stream>/consumers/<hex>.journal  consumer ops since the snapshot
//! <dir>/streams/<stream>/consumers/<hex>.snapshot consumer state at the journal's start
//! ```
//! A stream directory is the stream name when it is made of ASCII letters, digits, `-` and `_`
//! (up to 100 bytes), else `%` followed by the name in hex. The record format is in
//! `docs/storage-format.md`.
//!
//! ## What each mode survives
//! | [`SyncMode`] | commit reports | process crash (kill -9) | power loss / kernel crash |
//! |---|---|---|---|
//! | `Fsync` | `Fsynced`, after the fdatasync covering it | nothing acknowledged lost | nothing acknowledged lost |
//! | `Buffered` | `Written`, after write(2) | nothing acknowledged lost | up to `buffered_sync_interval` of appends lost |
//!
//! There is no memory mode: use [`super::MemoryStorage`], which reports `Memory` honestly.
//!
//! Consumer progress is written on every `record_consumer` call and fsynced within
//! `buffered_sync_interval` in both modes (see `consumers.rs`): after a power loss, deliveries and
//! acks recorded in that window may be replayed as redeliveries (at-least-once).
//!
//! ## Modules
//! | module | what it holds |
//! |---|---|
//! | `format` | record and segment header encoding, version 1 |
//! | `segment` | segment files, windowed reads, walking and resynchronising records |
//! | `index` | the sparse per-segment index and its `.idx` cache file |
//! | `recovery` | scanning and repairing a stream directory on open |
//! | `stream` | the per-stream state and the [`crate::storage::StreamStore`] implementation |
//! | `read` | reading records back: read-ahead, time search, damage found while reading |
//! | `writer` | group commit: the writer and syncer threads |
//! | `consumers` | consumer journals, snapshots, compaction |
//! | `io` | file operations behind the [`IoHook`] fault hook |
//!
//! ## Example
//! ```
//! use squall_broker::storage::{LogConfig, LogStorage, Storage, StreamStore};
//! use squall_core::{Durability, Message, Timestamp};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let storage = LogStorage::open(dir.path(), LogConfig::default()).unwrap();
//! let orders = storage.open_stream("orders", b"config").unwrap();
//! let msg = Message::builder("orders.created").unwrap().payload("hello").build();
//! let (seq, commit) = orders.append(Timestamp(1), &msg).unwrap();
//! assert_eq!(orders.read(seq).unwrap().unwrap().message, msg, "readable at once");
//! assert_eq!(commit.wait().await.unwrap(), Durability::Fsynced);
//! # });
//! ```

mod consumers;
mod format;
mod index;
mod io;
mod read;
mod recovery;
mod segment;
mod stream;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use format::FORMAT_VERSION;
pub use io::{FailNth, IoHook, IoOp, IoVerdict};

use super::{Storage, StorageError, StreamStore};
use stream::{LogStream, lock};

/// When appends become durable; see the module docs for what each survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// A commit resolves after an fdatasync covering the append (group commit).
    #[default]
    Fsync,
    /// A commit resolves after write(2); fdatasync follows within `buffered_sync_interval`.
    Buffered,
}

/// Settings of a [`LogStorage`].
#[derive(Clone)]
pub struct LogConfig {
    /// Durability of appends.
    pub sync: SyncMode,
    /// Size at which a segment is sealed and a new one started (clamped to 256 B..=2 GiB).
    /// Retention deletes whole segments. Default 64 MiB.
    pub segment_bytes: u64,
    /// Largest encoded record accepted (message plus about 60 bytes of framing); larger appends
    /// fail with [`StorageError::TooLarge`]. Default 65 MiB (the broker's largest `max_payload`
    /// plus headers).
    pub max_record_bytes: usize,
    /// Memory for decoded messages per stream: half for the newest appended, half for read-ahead
    /// from disk. Records not yet written are held regardless. Default 32 MiB.
    pub cache_bytes: usize,
    /// `Buffered` mode: the longest time between a write and its fdatasync. Both modes: the
    /// window in which consumer progress is fsynced. Default 100 ms.
    pub buffered_sync_interval: Duration,
    /// A consumer journal larger than this is compacted into a snapshot. Default 4 MiB.
    pub consumer_compact_bytes: u64,
    /// Fault injection for tests and the chaos lab: consulted before every write, fsync and
    /// file creation. `None` in production.
    pub io_hook: Option<Arc<dyn IoHook>>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            sync: SyncMode::Fsync,
            segment_bytes: 64 * 1024 * 1024,
            max_record_bytes: 65 * 1024 * 1024,
            cache_bytes: 32 * 1024 * 1024,
            buffered_sync_interval: Duration::from_millis(100),
            consumer_compact_bytes: 4 * 1024 * 1024,
            io_hook: None,
        }
    }
}

impl std::fmt::Debug for LogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogConfig")
            .field("sync", &self.sync)
            .field("segment_bytes", &self.segment_bytes)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("cache_bytes", &self.cache_bytes)
            .field("buffered_sync_interval", &self.buffered_sync_interval)
            .field("consumer_compact_bytes", &self.consumer_compact_bytes)
            .field("io_hook", &self.io_hook.is_some())
            .finish()
    }
}

/// The configuration values the threads use, copied out of [`LogConfig`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub sync: SyncMode,
    pub segment_bytes: u64,
    /// Largest record body.
    pub max_body: usize,
    pub cache_bytes: usize,
    pub interval: Duration,
    pub compact_bytes: u64,
}

impl Settings {
    fn from(c: &LogConfig) -> Self {
        Settings {
            sync: c.sync,
            segment_bytes: c.segment_bytes.clamp(256, 2 << 30),
            max_body: c.max_record_bytes.clamp(format::MIN_BODY, format::MAX_BODY),
            cache_bytes: c.cache_bytes,
            interval: c.buffered_sync_interval.max(Duration::from_millis(1)),
            compact_bytes: c.consumer_compact_bytes,
        }
    }
}

/// Durable [`Storage`] in segment files; see the module docs.
pub struct LogStorage {
    streams_dir: PathBuf,
    config: LogConfig,
    settings: Settings,
    io: io::Io,
    /// Streams opened in this process. A stream is opened once: every `open_stream` returns the
    /// same store, so one writer owns each directory.
    open: Mutex<HashMap<String, Arc<LogStream>>>,
    /// The data directory's lock, held while the storage lives (dropped last: streams close
    /// first, in `Drop`).
    _lock: std::fs::File,
}

/// Takes the exclusive lock on `<dir>/LOCK` and writes this process's PID into it.
fn lock_dir(dir: &Path) -> Result<std::fs::File, StorageError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("LOCK");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StorageError::io("open", path.display(), e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let holder = match pid.trim().parse::<u32>() {
                Ok(p) if p == std::process::id() => format!("this process (PID {p})"),
                Ok(p) => format!("process {p}"),
                Err(_) => "another process".to_string(),
            };
            return Err(StorageError::Locked {
                dir: dir.display().to_string(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(StorageError::io("lock", path.display(), e));
        }
    }
    // Advisory only: the flock is the lock; the PID names the holder in the error above.
    let pid = std::process::id().to_string();
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()));
    written.map_err(|e| StorageError::io("write", path.display(), e))?;
    Ok(file)
}

impl std::fmt::Debug for LogStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStorage")
            .field("dir", &self.streams_dir)
            .field("config", &self.config)
            .finish()
    }
}

const META_MAGIC: [u8; 4] = *b"SQMT";
const META_VERSION: u16 = 1;

fn encode_meta(name: &str, meta: &[u8]) -> Vec<u8> {
    let mut p = (name.len() as u32).to_le_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(meta);
    let mut out = META_MAGIC.to_vec();
    out.extend_from_slice(&META_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    format::frame(&mut out, &p);
    out
}

fn decode_meta(b: &[u8]) -> Result<(String, Vec<u8>), String> {
    if b.len() < 8 || b[0..4] != META_MAGIC {
        return Err("bad magic number".into());
    }
    let v = u16::from_le_bytes([b[4], b[5]]);
    if v != META_VERSION {
        return Err(format!("unsupported version {v}"));
    }
    let (p, n) = format::unframe(&b[8..], b.len()).map_err(|e| e.to_string())?;
    if 8 + n != b.len() {
        return Err("trailing bytes".into());
    }
    let mut c = format::Cursor { b: p, at: 0 };
    let len = c.u32().map_err(|e| e.to_string())? as usize;
    let name = c.take(len).map_err(|e| e.to_string())?;
    let name = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
    Ok((name, p[c.at..].to_vec()))
}

/// The directory name of stream `name`.
fn dir_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        name.to_string()
    } else {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        format!("%{hex}")
    }
}

impl LogStorage {
    /// Opens (creating if needed) the storage in `dir`. Streams are recovered when first opened
    /// with [`Storage::open_stream`].
    ///
    /// One storage owns `dir`: it holds an exclusive lock on `<dir>/LOCK` (flock, released when
    /// the storage is dropped or its process dies, kill -9 included), and a second open, in this
    /// process or another, fails with [`StorageError::Locked`] naming the holder's PID.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Arc<LogStorage>, StorageError> {
        let streams_dir = dir.as_ref().join("streams");
        std::fs::create_dir_all(&streams_dir)
            .map_err(|e| StorageError::io("create", streams_dir.display(), e))?;
        let lock_file = lock_dir(dir.as_ref())?;
        // A deletion interrupted by a crash: finish it.
        let entries = std::fs::read_dir(&streams_dir)
            .map_err(|e| StorageError::io("list", streams_dir.display(), e))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".deleted-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let io = io::Io::new(config.io_hook.clone());
        Ok(Arc::new(LogStorage {
            streams_dir,
            settings: Settings::from(&config),
            config,
            io,
            open: Mutex::new(HashMap::new()),
            _lock: lock_file,
        }))
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    fn meta_error(path: &Path, detail: String) -> StorageError {
        StorageError::Metadata {
            what: path.display().to_string(),
            detail,
        }
    }
}

impl Storage for LogStorage {
    fn kind(&self) -> &'static str {
        "log"
    }

    fn streams(&self) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let dir = &self.streams_dir;
        let mut out = Vec::new();
        for entry in
            std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir.display(), e))?
        {
            let entry = entry.map_err(|e| StorageError::io("list", dir.display(), e))?;
            if entry.file_name().to_string_lossy().starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            let path = entry.path().join("meta");
            match std::fs::read(&path) {
                Ok(b) => out.push(decode_meta(&b).map_err(|d| Self::meta_error(&path, d))?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(dir = %entry.path().display(), "stream directory without metadata (creation interrupted); ignored");
                }
                Err(e) => return Err(StorageError::io("read", path.display(), e)),
            }
        }
        out.sort();
        Ok(out)
    }

    fn open_stream(&self, name: &str, meta: &[u8]) -> Result<Arc<dyn StreamStore>, StorageError> {
        let mut open = lock(&self.open);
        let dir = self.streams_dir.join(dir_name(name));
        let meta_path = dir.join("meta");
        let bytes = encode_meta(name, meta);
        if !dir.exists() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| StorageError::io("create", dir.display(), e))?;
            self.io
                .sync_dir(&self.streams_dir)
                .map_err(|e| StorageError::io("fsync directory", self.streams_dir.display(), e))?;
        }
        if std::fs::read(&meta_path).ok().as_deref() != Some(&bytes[..]) {
            self.io
                .write_atomic(&meta_path, &bytes, true)
                .map_err(|e| StorageError::io("write", meta_path.display(), e))?;
        }
        if let Some(s) = open.get(name) {
            return Ok(s.clone());
        }
        let s = LogStream::open(name, &dir, self.settings, self.io.clone())?;
        open.insert(name.to_string(), s.clone());
        Ok(s)
    }

    fn delete_stream(&self, name: &str) -> Result<(), StorageError> {
        let s = lock(&self.open).remove(name);
        if let Some(s) = s {
            s.close();
        }
        let dir = self.streams_dir.join(dir_name(name));
        if !dir.exists() {
            return Ok(());
        }
        // Renamed first so a crash mid-removal leaves no half stream behind.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let trash = self
            .streams_dir
            .join(format!(".deleted-{}-{nanos}", dir_name(name)));
        std::fs::rename(&dir, &trash).map_err(|e| StorageError::io("rename", dir.display(), e))?;
        self.io
            .sync_dir(&self.streams_dir)
            .map_err(|e| StorageError::io("fsync directory", self.streams_dir.display(), e))?;
        std::fs::remove_dir_all(&trash).map_err(|e| StorageError::io("remove", trash.display(), e))
    }
}

impl Drop for LogStorage {
    fn drop(&mut self) {
        for (_, s) in lock(&self.open).drain() {
            s.close();
        }
    }
}

/// What [`decode_segment_for_fuzz`] found in a byte string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentCheck {
    /// The header verified.
    pub header_ok: bool,
    /// Records that verified and decoded.
    pub records: u64,
    /// Unreadable ranges found between valid records.
    pub holes: usize,
    /// Bytes of torn tail.
    pub torn: u64,
}

/// Runs the segment scanner and record decoder over arbitrary bytes (taken as a segment with base
/// sequence 1), and the other on-disk decoders (a record body as if its CRC matched, an `.idx`
/// file, a consumer journal frame, metadata). For the `segment_reader` fuzz target: none may
/// panic.
#[doc(hidden)]
pub fn decode_segment_for_fuzz(bytes: &[u8]) -> SegmentCheck {
    let mut decoded = 0;
    let scan = recovery::scan(bytes, bytes.len() as u64, 1, 1 << 20, None, |_, body| {
        if format::decode_body(body).is_ok() {
            decoded += 1;
        }
    });
    // The decoders behind the CRC, as if it matched.
    let _ = format::decode_body(bytes);
    let _ = index::IndexFile::decode(bytes);
    let _ = consumers::decode_ops(bytes);
    let _ = decode_meta(bytes);
    // Also decode every offset as a lone record, as reads do after a seek.
    for start in 0..bytes.len().min(4096) {
        let _ = format::decode_record(&bytes[start..], 1 << 20);
    }
    match scan {
        Ok(s) => SegmentCheck {
            header_ok: s.header.is_ok(),
            records: decoded,
            holes: s.holes.len(),
            torn: s.torn,
        },
        Err(_) => SegmentCheck::default(),
    }
}
