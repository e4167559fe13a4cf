//! Reopening a stream directory: scan, repair, rebuild.
//!
//! For each segment, oldest first:
//! - a sealed segment with a matching `.idx` file is taken from it without reading the segment
//!   (its records are still CRC-checked on every read);
//! - any other segment is scanned record by record: length, CRC, consecutive sequence;
//! - where a record does not verify, the scan looks for the next record that does (see
//!   [`resync`]). If one is found, the sequences in between become a *hole*: they stay in the
//!   stream's bounds and reading them returns [`super::super::StorageError::Corrupt`] with the
//!   range. If none is found in the newest segment, the bytes are a torn tail — a write cut short
//!   by a crash, never acknowledged in `Fsync` mode — and the file is truncated there. Both are
//!   logged with `tracing::warn!`. Opening never fails because of damaged records: the intact data
//!   stays available and the damage is reported where it is read.
//! - a sealed segment ending early, or a missing segment, becomes a hole up to the next base.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use super::format::{self, FormatError, RECORD_PREFIX, SEGMENT_HEADER_LEN};
use super::index::{Hole, IndexFile, SparseIndex};
use super::io::Io;
use super::segment::{self, Located, Segment, Source, Window, parse_file_name, record_at, resync};
use crate::storage::StorageError;

/// What a scan of one segment found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// The header's verdict (its base sequence if valid).
    pub header: Result<u64, FormatError>,
    /// Header plus records up to the end of the last one that verified.
    pub valid_len: u64,
    /// Last sequence covered (`base - 1` if none).
    pub last: u64,
    pub ts: Option<(u64, u64)>,
    pub index: SparseIndex,
    pub holes: Vec<Hole>,
    /// Bytes after the last verified record that hold nothing readable.
    pub torn: u64,
    /// Records that verified.
    pub records: u64,
}

/// Scans the first `len` bytes of a segment with base `base`. `next_base` is the base of the next
/// segment, if any: records must stay below it, and a shortfall becomes a hole. `each` sees every
/// record that verified.
pub(crate) fn scan<S: Source + ?Sized>(
    src: &S,
    len: u64,
    base: u64,
    max_body: usize,
    next_base: Option<u64>,
    mut each: impl FnMut(&Located, &[u8]),
) -> std::io::Result<Scan> {
    let mut win = Window::new(src, len);
    let header = match win.get(0, SEGMENT_HEADER_LEN as usize)? {
        None => Err(FormatError::Short),
        Some(h) => match format::parse_segment_header(h) {
            Ok(b) if b != base => Err(FormatError::Invalid("segment base")),
            r => r,
        },
    };
    let mut s = Scan {
        header,
        valid_len: SEGMENT_HEADER_LEN.min(len),
        last: base.saturating_sub(1),
        ts: None,
        index: SparseIndex::default(),
        holes: Vec::new(),
        torn: 0,
        records: 0,
    };
    let min_framed = (RECORD_PREFIX + format::MIN_BODY) as u64;
    let (mut offset, mut expected, mut resumed) = (SEGMENT_HEADER_LEN, base, false);
    while offset < len {
        match record_at(&mut win, offset, max_body)? {
            Ok((loc, body)) if loc.seq == expected => {
                each(&loc, body);
                if resumed {
                    s.index.force(base, loc.seq, offset, loc.ts);
                } else {
                    s.index.note(base, loc.seq, offset, loc.ts);
                }
                resumed = false;
                s.ts = Some(s.ts.map_or((loc.ts, loc.ts), |(a, _)| (a, loc.ts)));
                offset += loc.framed_len;
                expected += 1;
                s.valid_len = offset;
                s.records += 1;
            }
            _ => {
                let max_seq = match next_base {
                    Some(nb) => nb.saturating_sub(1),
                    None => expected.saturating_add((len - offset) / min_framed),
                };
                match resync(&mut win, offset, expected, max_seq, max_body)? {
                    Some(loc) => {
                        if loc.seq > expected {
                            s.holes.push(Hole {
                                first: expected,
                                last: loc.seq - 1,
                            });
                        }
                        offset = loc.offset;
                        expected = loc.seq;
                        resumed = true;
                    }
                    None => {
                        s.torn = len - offset;
                        break;
                    }
                }
            }
        }
    }
    s.last = expected.saturating_sub(1).max(base.saturating_sub(1));
    if let Some(nb) = next_base
        && expected < nb
    {
        s.holes.push(Hole {
            first: expected,
            last: nb - 1,
        });
        s.last = nb - 1;
    }
    Ok(s)
}

/// What reopening a stream directory produced.
pub(crate) struct Recovered {
    pub segments: BTreeMap<u64, Segment>,
    /// The floor saved by retention, if any.
    pub floor: Option<u64>,
}

const FLOOR_FILE: &str = "floor";

/// The retention floor saved in `dir`, if readable.
fn read_floor(dir: &Path) -> Option<u64> {
    let b = std::fs::read(dir.join(FLOOR_FILE)).ok()?;
    let (p, _) = format::unframe(&b, 8).ok()?;
    Some(u64::from_le_bytes(p.try_into().ok()?))
}

/// Saves the retention floor (atomically; not fsynced: losing it only keeps older records).
pub(crate) fn write_floor(io: &Io, dir: &Path, floor: u64) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(16);
    format::frame(&mut b, &floor.to_le_bytes());
    io.write_atomic(&dir.join(FLOOR_FILE), &b, false)
}

fn err(op: &'static str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::io(op, path.display(), e)
}

fn open_rw(path: &Path) -> Result<File, StorageError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| err("open", path, e))
}

/// Creates an empty segment with base `base` in `dir`, durably.
pub(crate) fn create_segment(
    io: &Io,
    dir: &Path,
    base: u64,
    durable: bool,
) -> std::io::Result<(File, std::path::PathBuf)> {
    let path = dir.join(segment::segment_file_name(base));
    let file = io.create_new(&path)?;
    io.write_at(&file, &path, &format::segment_header(base), 0)?;
    if durable {
        io.sync_data(&file, &path)?;
        io.sync_dir(dir)?;
    }
    Ok((file, path))
}

/// Reopens (or initialises) the segments of stream `stream` in `dir`.
pub(crate) fn recover(
    stream: &str,
    dir: &Path,
    io: &Io,
    max_body: usize,
) -> Result<Recovered, StorageError> {
    let mut bases = Vec::new();
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| err("list", dir, e))? {
        let entry = entry.map_err(|e| err("list", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(b) = parse_file_name(&name, "seg") {
            bases.push(b);
        } else if let Some(b) = parse_file_name(&name, "idx") {
            indexes.push(b);
        } else if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    bases.sort_unstable();
    for b in indexes.iter().filter(|b| bases.binary_search(b).is_err()) {
        let _ = std::fs::remove_file(dir.join(segment::index_file_name(*b)));
    }
    let floor = read_floor(dir);
    if bases.is_empty() {
        let base = floor.unwrap_or(1).max(1);
        create_segment(io, dir, base, true).map_err(|e| err("create segment", dir, e))?;
        bases.push(base);
    }
    let mut segments: BTreeMap<u64, Segment> = BTreeMap::new();
    let mut pos = 0;
    for (i, &base) in bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied();
        let path = dir.join(segment::segment_file_name(base));
        let file = open_rw(&path)?;
        let flen = file.metadata().map_err(|e| err("stat", &path, e))?.len();
        let idx_path = dir.join(segment::index_file_name(base));
        let cached = next_base.and_then(|_| {
            let f = IndexFile::decode(&std::fs::read(&idx_path).ok()?).ok()?;
            (f.base == base && f.segment_len == flen).then_some(f)
        });
        let mut seg = match cached {
            Some(f) => Segment {
                base,
                path,
                file: Arc::new(file),
                len: f.valid_len,
                last: f.last,
                ts: f.ts,
                index: f.index,
                holes: f.holes,
                start_pos: pos,
            },
            None => {
                let s = scan(&file, flen, base, max_body, next_base, |_, _| {})
                    .map_err(|e| err("read", &path, e))?;
                let mut valid_len = s.valid_len;
                if let Err(e) = &s.header {
                    tracing::warn!(stream, segment = %path.display(), error = %e, "segment header is damaged");
                    if let FormatError::Version(v) = e {
                        return Err(StorageError::Metadata {
                            what: path.display().to_string(),
                            detail: format!(
                                "segment format version {v}; this build reads version {}",
                                format::FORMAT_VERSION
                            ),
                        });
                    }
                }
                for h in &s.holes {
                    tracing::warn!(stream, segment = %path.display(), first = h.first, last = h.last,
                        "unreadable records: reads of these sequences will report corruption");
                }
                if next_base.is_none() {
                    if s.torn > 0 {
                        tracing::warn!(stream, segment = %path.display(), offset = s.valid_len,
                            bytes = s.torn, "truncating a torn tail (a write cut short by a crash)");
                    }
                    if s.header.is_err() && s.records == 0 && s.holes.is_empty() {
                        // Created but never written completely: start it over.
                        file.set_len(0).map_err(|e| err("truncate", &path, e))?;
                        io.write_at(&file, &path, &format::segment_header(base), 0)
                            .map_err(|e| err("write", &path, e))?;
                        valid_len = SEGMENT_HEADER_LEN;
                    }
                    if flen != valid_len {
                        file.set_len(valid_len)
                            .map_err(|e| err("truncate", &path, e))?;
                        io.sync_data(&file, &path)
                            .map_err(|e| err("fdatasync", &path, e))?;
                    }
                } else {
                    let f = IndexFile {
                        base,
                        segment_len: flen,
                        valid_len,
                        last: s.last,
                        ts: s.ts,
                        holes: s.holes.clone(),
                        index: s.index.clone(),
                    };
                    let _ = io.write_atomic(&idx_path, &f.encode(), false);
                }
                Segment {
                    base,
                    path,
                    file: Arc::new(file),
                    len: valid_len,
                    last: s.last,
                    ts: s.ts,
                    index: s.index,
                    holes: s.holes,
                    start_pos: pos,
                }
            }
        };
        if let Some((_, prev)) = segments.iter_mut().next_back() {
            if prev.last >= base {
                return Err(StorageError::Corrupt {
                    stream: stream.to_string(),
                    first: base,
                    last: prev.last,
                    detail: format!(
                        "segment {} overlaps segment {}; move one of them out of the directory",
                        seg.path.display(),
                        prev.path.display()
                    ),
                });
            }
            if prev.last + 1 < base {
                let h = Hole {
                    first: prev.last + 1,
                    last: base - 1,
                };
                tracing::warn!(
                    stream,
                    first = h.first,
                    last = h.last,
                    "missing segment: sequences lost"
                );
                prev.add_hole(h);
                prev.last = base - 1;
            }
        }
        seg.start_pos = pos;
        pos = seg.end_pos();
        segments.insert(base, seg);
    }
    Ok(Recovered { segments, floor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_core::{Message, Subject, Timestamp};

    fn segment_bytes(base: u64, n: u64) -> (Vec<u8>, Vec<u64>) {
        let mut b = format::segment_header(base).to_vec();
        let mut offsets = Vec::new();
        for i in 0..n {
            offsets.push(b.len() as u64);
            let m = Message::new(Subject::new("t").unwrap(), vec![i as u8; 50]);
            format::encode_record(&mut b, base + i, Timestamp(100 + i), &m, 1 << 20).unwrap();
        }
        (b, offsets)
    }

    #[test]
    fn a_clean_segment_scans_completely() {
        let (b, _) = segment_bytes(10, 100);
        let s = scan(&b[..], b.len() as u64, 10, 1 << 20, None, |_, _| {}).unwrap();
        assert_eq!((s.records, s.last, s.torn), (100, 109, 0));
        assert_eq!(s.valid_len, b.len() as u64);
        assert_eq!(s.ts, Some((100, 199)));
        assert!(s.holes.is_empty());
    }

    #[test]
    fn a_cut_record_is_a_torn_tail() {
        let (b, offsets) = segment_bytes(1, 20);
        let cut = offsets[15] + 11;
        let s = scan(&b[..], cut, 1, 1 << 20, None, |_, _| {}).unwrap();
        assert_eq!((s.records, s.last), (15, 15));
        assert_eq!(s.valid_len, offsets[15]);
        assert_eq!(s.torn, 11);
        assert!(s.holes.is_empty());
    }

    #[test]
    fn damage_in_the_middle_is_a_hole() {
        let (mut b, offsets) = segment_bytes(1, 20);
        b[offsets[7] as usize + 30] ^= 0xff;
        let s = scan(&b[..], b.len() as u64, 1, 1 << 20, None, |_, _| {}).unwrap();
        assert_eq!(s.holes, vec![Hole { first: 8, last: 8 }]);
        assert_eq!((s.records, s.last, s.torn), (19, 20, 0));
        // A damaged length field too.
        b[offsets[12] as usize] ^= 0x40;
        let s = scan(&b[..], b.len() as u64, 1, 1 << 20, None, |_, _| {}).unwrap();
        assert_eq!(
            s.holes,
            vec![
                Hole { first: 8, last: 8 },
                Hole {
                    first: 13,
                    last: 13
                }
            ]
        );
    }

    #[test]
    fn a_sealed_segment_ending_early_leaves_a_hole_to_the_next_base() {
        let (b, offsets) = segment_bytes(1, 10);
        let s = scan(&b[..], offsets[6], 1, 1 << 20, Some(11), |_, _| {}).unwrap();
        assert_eq!(s.holes, vec![Hole { first: 7, last: 10 }]);
        assert_eq!(s.last, 10);
    }
}
