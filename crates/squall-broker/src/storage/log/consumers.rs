//! Consumer progress: one journal of [`ConsumerOp`]s per consumer, plus a snapshot.
//!
//! Files, in `<stream>/consumers/`, named after the hex of the consumer name:
//! - `<hex>.journal`: a header (magic, version, generation) then frames
//!   `len u32 | crc32c u32 | ops`, each the ops of one `record_consumer` call;
//! - `<hex>.snapshot`: the state at the start of the journal of the same generation.
//!
//! `record_consumer` writes (write(2)) its frame before returning, so a process crash loses
//! nothing it recorded; the fdatasync happens on the syncer's cadence, within
//! `buffered_sync_interval` (or with the next data fsync). **Window**: after a power loss or kernel
//! crash, ops recorded in the last `buffered_sync_interval` may be lost; the consumer then restarts
//! from an earlier state, so those messages are delivered again (at-least-once, never lost).
//!
//! Replay stops at the first frame that does not verify (a torn write) and truncates there: the
//! state replayed is always a prefix of what was recorded, never a mix.
//!
//! Compaction, when a journal passes `consumer_compact_bytes`: write the snapshot of generation
//! g+1 (temp file, fsync, rename, fsync dir), then replace the journal by an empty one of
//! generation g+1 the same way. A journal older than its snapshot is ignored on replay (a crash
//! between the two steps), so no op is applied twice.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use squall_core::Timestamp;

use super::format::{self, Cursor, FormatError};
use super::io::Io;
use super::stream::lock;
use crate::storage::{ConsumerOp, ConsumerSnapshot, StorageError};

const JOURNAL_MAGIC: [u8; 4] = *b"SQCJ";
const SNAPSHOT_MAGIC: [u8; 4] = *b"SQCS";
const VERSION: u16 = 1;
const JOURNAL_HEADER_LEN: u64 = 20;
/// Largest frame accepted on replay.
const MAX_FRAME: usize = 64 * 1024 * 1024;

struct Journal {
    snap: ConsumerSnapshot,
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    generation: u64,
    /// Written since the last fdatasync.
    dirty: bool,
}

#[derive(Default)]
struct Inner {
    journals: HashMap<String, Journal>,
    /// A file was created or removed since the directory was last fsynced.
    dir_dirty: bool,
}

/// The consumers of one stream.
pub(crate) struct Consumers {
    dir: PathBuf,
    compact_bytes: u64,
    inner: Mutex<Inner>,
}

fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn err(op: &'static str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::io(op, path.display(), e)
}

fn journal_header(generation: u64) -> [u8; JOURNAL_HEADER_LEN as usize] {
    let mut h = [0u8; JOURNAL_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&JOURNAL_MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn parse_journal_header(h: &[u8]) -> Result<u64, FormatError> {
    if h.len() < JOURNAL_HEADER_LEN as usize {
        return Err(FormatError::Short);
    }
    if h[0..4] != JOURNAL_MAGIC {
        return Err(FormatError::Magic);
    }
    let v = u16::from_le_bytes([h[4], h[5]]);
    if v != VERSION {
        return Err(FormatError::Version(v));
    }
    if crc32c::crc32c(&h[0..16]) != u32::from_le_bytes([h[16], h[17], h[18], h[19]]) {
        return Err(FormatError::Crc);
    }
    Ok(u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")))
}

/// Encodes ops compactly: a tag byte, then fixed-width fields.
pub(crate) fn encode_ops(ops: &[ConsumerOp], out: &mut Vec<u8>) {
    out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    let put = |out: &mut Vec<u8>, tag: u8, vals: &[u64]| {
        out.push(tag);
        for v in vals {
            out.extend_from_slice(&v.to_le_bytes());
        }
    };
    for op in ops {
        match op {
            ConsumerOp::Config(c) => {
                out.push(0);
                out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                out.extend_from_slice(c);
            }
            ConsumerOp::Cursor { to } => put(out, 1, &[*to]),
            ConsumerOp::Ready { seq, not_before } => put(out, 2, &[*seq, not_before.0]),
            ConsumerOp::Deliver {
                seq,
                nonce,
                at,
                deadline,
            } => put(out, 3, &[*seq, *nonce, at.0, deadline.0]),
            ConsumerOp::Extend { seq, deadline } => put(out, 4, &[*seq, deadline.0]),
            ConsumerOp::Requeue { seq, not_before } => put(out, 5, &[*seq, not_before.0]),
            ConsumerOp::Settle { seq } => put(out, 6, &[*seq]),
            ConsumerOp::Reset { cursor } => put(out, 7, &[*cursor]),
            ConsumerOp::Rewind { to } => put(out, 8, &[*to]),
        }
    }
}

/// Decodes what [`encode_ops`] wrote.
pub(crate) fn decode_ops(b: &[u8]) -> Result<Vec<ConsumerOp>, FormatError> {
    let mut c = Cursor { b, at: 0 };
    let n = c.u32()? as usize;
    let mut ops = Vec::with_capacity(n.min(b.len() / 9));
    for _ in 0..n {
        let op = match c.u8()? {
            0 => {
                let len = c.u32()? as usize;
                ConsumerOp::Config(c.take(len)?.to_vec())
            }
            1 => ConsumerOp::Cursor { to: c.u64()? },
            2 => ConsumerOp::Ready {
                seq: c.u64()?,
                not_before: Timestamp(c.u64()?),
            },
            3 => ConsumerOp::Deliver {
                seq: c.u64()?,
                nonce: c.u64()?,
                at: Timestamp(c.u64()?),
                deadline: Timestamp(c.u64()?),
            },
            4 => ConsumerOp::Extend {
                seq: c.u64()?,
                deadline: Timestamp(c.u64()?),
            },
            5 => ConsumerOp::Requeue {
                seq: c.u64()?,
                not_before: Timestamp(c.u64()?),
            },
            6 => ConsumerOp::Settle { seq: c.u64()? },
            7 => ConsumerOp::Reset { cursor: c.u64()? },
            8 => ConsumerOp::Rewind { to: c.u64()? },
            _ => return Err(FormatError::Invalid("consumer op")),
        };
        ops.push(op);
    }
    if c.at != b.len() {
        return Err(FormatError::Invalid("trailing bytes in consumer ops"));
    }
    Ok(ops)
}

fn snapshot_bytes(generation: u64, snap: &ConsumerSnapshot) -> Vec<u8> {
    let json = serde_json::to_vec(snap).expect("a snapshot serialises");
    let mut payload = generation.to_le_bytes().to_vec();
    payload.extend_from_slice(&json);
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    format::frame(&mut out, &payload);
    out
}

fn parse_snapshot(b: &[u8]) -> Result<(u64, ConsumerSnapshot), String> {
    if b.len() < 8 || b[0..4] != SNAPSHOT_MAGIC {
        return Err("bad magic number".into());
    }
    let v = u16::from_le_bytes([b[4], b[5]]);
    if v != VERSION {
        return Err(format!("unsupported version {v}"));
    }
    let (p, n) = format::unframe(&b[8..], b.len()).map_err(|e| e.to_string())?;
    if 8 + n != b.len() || p.len() < 8 {
        return Err("bad length".into());
    }
    let generation = u64::from_le_bytes(p[0..8].try_into().expect("8 bytes"));
    let snap = serde_json::from_slice(&p[8..]).map_err(|e| e.to_string())?;
    Ok((generation, snap))
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Writes a fresh journal of `generation` over `path` (temp file, fsync, rename, fsync dir).
fn fresh_journal(io: &Io, path: &Path, generation: u64) -> Result<File, StorageError> {
    io.write_atomic(path, &journal_header(generation), true)
        .map_err(|e| err("write", path, e))?;
    open_rw(path).map_err(|e| err("open", path, e))
}

impl Consumers {
    /// Loads every consumer of the stream in `dir` (created if missing).
    pub fn open(dir: &Path, io: &Io, compact_bytes: u64) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| err("create", dir, e))?;
        let mut inner = Inner::default();
        for entry in std::fs::read_dir(dir).map_err(|e| err("list", dir, e))? {
            let entry = entry.map_err(|e| err("list", dir, e))?;
            let fname = entry.file_name().to_string_lossy().into_owned();
            if fname.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(name) = fname.strip_suffix(".journal").and_then(unhex) else {
                continue;
            };
            let j = load(dir, io, &name)?;
            inner.journals.insert(name, j);
        }
        Ok(Consumers {
            dir: dir.to_path_buf(),
            compact_bytes,
            inner: Mutex::new(inner),
        })
    }

    fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let h = hex(name);
        (
            self.dir.join(format!("{h}.journal")),
            self.dir.join(format!("{h}.snapshot")),
        )
    }

    /// Appends `ops` to `name`'s journal (creating it) and applies them.
    pub fn record(&self, io: &Io, name: &str, ops: &[ConsumerOp]) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        if !inner.journals.contains_key(name) {
            let (path, _) = self.paths(name);
            let file = io.create_new(&path).map_err(|e| err("create", &path, e))?;
            io.write_at(&file, &path, &journal_header(0), 0)
                .map_err(|e| err("write", &path, e))?;
            inner.dir_dirty = true;
            inner.journals.insert(
                name.to_string(),
                Journal {
                    snap: ConsumerSnapshot::default(),
                    file: Arc::new(file),
                    path,
                    len: JOURNAL_HEADER_LEN,
                    generation: 0,
                    dirty: true,
                },
            );
        }
        let j = inner.journals.get_mut(name).expect("inserted above");
        let mut payload = Vec::with_capacity(8 + ops.len() * 33);
        encode_ops(ops, &mut payload);
        let mut frame = Vec::with_capacity(payload.len() + 8);
        format::frame(&mut frame, &payload);
        io.write_at(&j.file, &j.path, &frame, j.len)
            .map_err(|e| err("write", &j.path, e))?;
        j.len += frame.len() as u64;
        j.dirty = true;
        for op in ops {
            j.snap.apply(op);
        }
        Ok(())
    }

    /// Every consumer's replayed state.
    pub fn snapshots(&self) -> Vec<(String, ConsumerSnapshot)> {
        lock(&self.inner)
            .journals
            .iter()
            .map(|(n, j)| (n.clone(), j.snap.clone()))
            .collect()
    }

    /// Forgets `name` and removes its files.
    pub fn delete(&self, name: &str) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        if inner.journals.remove(name).is_some() {
            // Journal first: a snapshot without a journal is ignored, the reverse is an error.
            let (journal, snapshot) = self.paths(name);
            std::fs::remove_file(&journal).map_err(|e| err("remove", &journal, e))?;
            let _ = std::fs::remove_file(&snapshot);
            inner.dir_dirty = true;
        }
        Ok(())
    }

    /// Fsyncs the journals written since the last call (and the directory), and compacts the
    /// journals over the threshold. Called by the syncer.
    pub fn sync(&self, io: &Io) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        for j in inner.journals.values_mut().filter(|j| j.dirty) {
            io.sync_data(&j.file, &j.path)
                .map_err(|e| err("fdatasync", &j.path, e))?;
            j.dirty = false;
        }
        if std::mem::take(&mut inner.dir_dirty) {
            io.sync_dir(&self.dir)
                .map_err(|e| err("fsync directory", &self.dir, e))?;
        }
        let big: Vec<String> = inner
            .journals
            .iter()
            .filter(|(_, j)| j.len > self.compact_bytes)
            .map(|(n, _)| n.clone())
            .collect();
        for name in big {
            let (journal, snapshot) = self.paths(&name);
            let j = inner.journals.get_mut(&name).expect("listed");
            let generation = j.generation + 1;
            io.write_atomic(&snapshot, &snapshot_bytes(generation, &j.snap), true)
                .map_err(|e| err("write", &snapshot, e))?;
            let file = fresh_journal(io, &journal, generation)?;
            *j = Journal {
                snap: std::mem::take(&mut j.snap),
                file: Arc::new(file),
                path: journal,
                len: JOURNAL_HEADER_LEN,
                generation,
                dirty: false,
            };
        }
        Ok(())
    }
}

/// Replays `name`'s snapshot and journal.
fn load(dir: &Path, io: &Io, name: &str) -> Result<Journal, StorageError> {
    let h = hex(name);
    let path = dir.join(format!("{h}.journal"));
    let snap_path = dir.join(format!("{h}.snapshot"));
    let (snap_gen, mut snap) = match std::fs::read(&snap_path) {
        Ok(b) => parse_snapshot(&b).map_err(|detail| StorageError::Metadata {
            what: snap_path.display().to_string(),
            detail: format!("{detail}; delete the file to restart the consumer from scratch"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, ConsumerSnapshot::default()),
        Err(e) => return Err(err("read", &snap_path, e)),
    };
    let bytes = std::fs::read(&path).map_err(|e| err("read", &path, e))?;
    let journal_gen = parse_journal_header(&bytes);
    let stale = match journal_gen {
        Ok(g) if g == snap_gen => false,
        Ok(g) if g < snap_gen => true,
        Ok(g) => {
            return Err(StorageError::Metadata {
                what: path.display().to_string(),
                detail: format!(
                    "journal generation {g} is newer than its snapshot ({snap_gen}); restore the snapshot or delete both files"
                ),
            });
        }
        // A journal created but never completely written: nothing was recorded in it.
        Err(FormatError::Short) => true,
        Err(e) => {
            return Err(StorageError::Metadata {
                what: path.display().to_string(),
                detail: format!("journal header: {e}"),
            });
        }
    };
    if stale {
        let file = fresh_journal(io, &path, snap_gen)?;
        return Ok(Journal {
            snap,
            file: Arc::new(file),
            path,
            len: JOURNAL_HEADER_LEN,
            generation: snap_gen,
            dirty: false,
        });
    }
    let mut at = JOURNAL_HEADER_LEN as usize;
    while at < bytes.len() {
        let Ok((payload, n)) = format::unframe(&bytes[at..], MAX_FRAME) else {
            break;
        };
        let Ok(ops) = decode_ops(payload) else {
            break;
        };
        for op in &ops {
            snap.apply(op);
        }
        at += n;
    }
    let file = open_rw(&path).map_err(|e| err("open", &path, e))?;
    if at < bytes.len() {
        tracing::warn!(journal = %path.display(), offset = at, bytes = bytes.len() - at,
            "consumer journal ends in a torn or damaged frame; truncating (those ops are replayed as redeliveries)");
        file.set_len(at as u64)
            .map_err(|e| err("truncate", &path, e))?;
        io.sync_data(&file, &path)
            .map_err(|e| err("fdatasync", &path, e))?;
    }
    Ok(Journal {
        snap,
        file: Arc::new(file),
        path,
        len: at as u64,
        generation: snap_gen,
        dirty: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_ops() -> Vec<ConsumerOp> {
        vec![
            ConsumerOp::Config(b"cfg".to_vec()),
            ConsumerOp::Cursor { to: 3 },
            ConsumerOp::Ready {
                seq: 4,
                not_before: Timestamp(9),
            },
            ConsumerOp::Deliver {
                seq: 4,
                nonce: 1,
                at: Timestamp(10),
                deadline: Timestamp(20),
            },
            ConsumerOp::Extend {
                seq: 4,
                deadline: Timestamp(30),
            },
            ConsumerOp::Requeue {
                seq: 4,
                not_before: Timestamp(31),
            },
            ConsumerOp::Settle { seq: 4 },
            ConsumerOp::Reset { cursor: 7 },
            ConsumerOp::Rewind { to: 5 },
        ]
    }

    #[test]
    fn ops_round_trip() {
        let mut b = Vec::new();
        encode_ops(&all_ops(), &mut b);
        assert_eq!(decode_ops(&b).unwrap(), all_ops());
        assert!(decode_ops(&b[..b.len() - 1]).is_err());
    }

    proptest::proptest! {
        /// Journal frames pass a CRC before they are decoded, but the decoder must still refuse
        /// anything else with an error, never a panic or an allocation sized by the input.
        #[test]
        fn arbitrary_bytes_decode_to_an_error_or_ops_that_encode_back(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            if let Ok(ops) = decode_ops(&b) {
                let mut again = Vec::new();
                encode_ops(&ops, &mut again);
                proptest::prop_assert_eq!(again, b);
            }
        }

        /// The same for a valid frame with one byte changed or the end cut off.
        #[test]
        fn a_damaged_frame_decodes_to_an_error_or_ops_that_encode_back(
            at in 0usize..1000, value in proptest::prelude::any::<u8>(), cut in 0usize..1000,
        ) {
            let mut b = Vec::new();
            encode_ops(&all_ops(), &mut b);
            let i = at % b.len();
            b[i] = value;
            b.truncate(b.len() - cut % 4);
            if let Ok(ops) = decode_ops(&b) {
                let mut again = Vec::new();
                encode_ops(&ops, &mut again);
                proptest::prop_assert_eq!(again, b);
            }
        }
    }

    #[test]
    fn names_hex_round_trip() {
        for n in ["workers", "a/b..c", "é", ""] {
            assert_eq!(unhex(&hex(n)).as_deref(), Some(n));
        }
        assert_eq!(unhex("zz"), None);
    }
}
