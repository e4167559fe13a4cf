//! Segment files: naming, the in-memory view of one segment, and walking its records.
//!
//! A segment is `<base>.seg` (base = its first sequence, 20 digits so names sort), a 24-byte header
//! and then records back to back. Only the newest segment of a stream is written to; older ones are
//! sealed and only read or deleted. Reads use positional reads (`pread`) on a shared `File`, so
//! readers never move a cursor another thread relies on, and a reader holding the `Arc<File>` of a
//! segment retention just deleted still reads it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::format::{self, FormatError, RECORD_PREFIX, SEGMENT_HEADER_LEN};
use super::index::{Hole, Point, SparseIndex};

/// Bytes read at once when walking records (and read ahead into the cache).
pub(crate) const CHUNK: usize = 64 * 1024;

/// `<base>.seg`.
pub(crate) fn segment_file_name(base: u64) -> String {
    format!("{base:020}.seg")
}

/// `<base>.idx`.
pub(crate) fn index_file_name(base: u64) -> String {
    format!("{base:020}.idx")
}

/// The base of a segment or index file name with extension `ext`.
pub(crate) fn parse_file_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Something records can be read from at an offset: a file, or bytes in memory (fuzzing).
pub(crate) trait Source {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Source for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl Source for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A read window over `[0, end)` of a source: serves byte ranges, refilling `CHUNK`-sized (or
/// larger, for big records) buffers as needed.
pub(crate) struct Window<'a, S: Source + ?Sized> {
    src: &'a S,
    end: u64,
    at: u64,
    buf: Vec<u8>,
}

impl<'a, S: Source + ?Sized> Window<'a, S> {
    pub fn new(src: &'a S, end: u64) -> Self {
        Window {
            src,
            end,
            at: 0,
            buf: Vec::new(),
        }
    }

    /// End of the readable range.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// `len` bytes at `offset`, or `None` if they extend past the end.
    pub fn get(&mut self, offset: u64, len: usize) -> io::Result<Option<&[u8]>> {
        let Some(stop) = offset.checked_add(len as u64) else {
            return Ok(None);
        };
        if stop > self.end {
            return Ok(None);
        }
        let cached = offset >= self.at && stop <= self.at + self.buf.len() as u64;
        if !cached {
            let n = (len.max(CHUNK) as u64).min(self.end - offset) as usize;
            self.buf.resize(n, 0);
            self.at = offset;
            if let Err(e) = self.src.read_exact_at(&mut self.buf, offset) {
                self.buf.clear();
                return Err(e);
            }
        }
        let i = (offset - self.at) as usize;
        Ok(Some(&self.buf[i..i + len]))
    }
}

/// A record that verified: where it is and what it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Located {
    pub seq: u64,
    pub offset: u64,
    pub ts: u64,
    pub framed_len: u64,
}

/// Verifies the record at `offset` (prefix, length, CRC) and returns it with its body.
pub(crate) fn record_at<'w, S: Source + ?Sized>(
    win: &'w mut Window<'_, S>,
    offset: u64,
    max_body: usize,
) -> io::Result<Result<(Located, &'w [u8]), FormatError>> {
    let head = match win.get(offset, RECORD_PREFIX)? {
        None => return Ok(Err(FormatError::Short)),
        Some(b) => match format::parse_head(b, max_body) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        },
    };
    let Some(framed) = win.get(offset, head.framed_len())? else {
        return Ok(Err(FormatError::Short));
    };
    let body = &framed[RECORD_PREFIX..];
    Ok(format::verify_body(&head, body).map(|(seq, ts)| {
        (
            Located {
                seq,
                offset,
                ts,
                framed_len: head.framed_len() as u64,
            },
            body,
        )
    }))
}

/// How a walk over records ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WalkEnd {
    /// The visitor asked to stop.
    Stopped,
    /// The readable range ended at a record boundary.
    End,
    /// The record at `offset`, expected to hold sequence `expected`, did not verify (or, if
    /// `undecodable`, verified but its content could not be decoded).
    Bad {
        offset: u64,
        expected: u64,
        detail: String,
        undecodable: bool,
    },
}

/// Walks records from `start` (a known record boundary holding `start.seq`), verifying each and
/// that sequences follow one another, calling `visit` with each record and its body. `visit`
/// returns `Ok(true)` to stop, or an error text if the record's content is unusable.
pub(crate) fn walk<S: Source + ?Sized>(
    win: &mut Window<'_, S>,
    start: Point,
    max_body: usize,
    mut visit: impl FnMut(&Located, &[u8]) -> Result<bool, String>,
) -> io::Result<WalkEnd> {
    let (mut offset, mut expected) = (start.offset, start.seq);
    loop {
        if offset >= win.end() {
            return Ok(WalkEnd::End);
        }
        let bad = |detail: String, undecodable: bool| WalkEnd::Bad {
            offset,
            expected,
            detail,
            undecodable,
        };
        match record_at(win, offset, max_body)? {
            Err(e) => return Ok(bad(format!("record at offset {offset}: {e}"), false)),
            Ok((loc, _)) if loc.seq != expected => {
                return Ok(bad(
                    format!(
                        "record at offset {offset} holds sequence {}, expected {expected}",
                        loc.seq
                    ),
                    false,
                ));
            }
            Ok((loc, body)) => match visit(&loc, body) {
                Ok(true) => return Ok(WalkEnd::Stopped),
                Ok(false) => {
                    offset += loc.framed_len;
                    expected += 1;
                }
                Err(detail) => {
                    return Ok(bad(format!("record at offset {offset}: {detail}"), true));
                }
            },
        }
    }
}

/// Finds the first record at or after `from` that verifies and holds a sequence in
/// `expected..=max_seq`: where reading resumes after a damaged range. Candidates are screened by
/// length and sequence before their CRC is computed, so garbage costs a few comparisons a byte.
pub(crate) fn resync<S: Source + ?Sized>(
    win: &mut Window<'_, S>,
    from: u64,
    expected: u64,
    max_seq: u64,
    max_body: usize,
) -> io::Result<Option<Located>> {
    let mut offset = from;
    let probe = RECORD_PREFIX + 8;
    while offset + (RECORD_PREFIX + format::MIN_BODY) as u64 <= win.end() {
        let plausible = match win.get(offset, probe)? {
            None => false,
            Some(b) => match format::parse_head(b, max_body) {
                Err(_) => false,
                Ok(h) => {
                    let seq = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
                    (expected..=max_seq).contains(&seq)
                        && offset + h.framed_len() as u64 <= win.end()
                }
            },
        };
        if plausible
            && let Ok((loc, _)) = record_at(win, offset, max_body)?
            && (expected..=max_seq).contains(&loc.seq)
        {
            return Ok(Some(loc));
        }
        offset += 1;
    }
    Ok(None)
}

/// The in-memory view of one segment. Lives in the stream state, under its lock; the writer
/// updates the newest one after each write.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Its first sequence (and file name).
    pub base: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Bytes holding the header and verified (or written) records; reads never go past it.
    pub len: u64,
    /// Last sequence it covers (`base - 1` when empty), records and holes alike.
    pub last: u64,
    /// Publish times of its first and last readable records.
    pub ts: Option<(u64, u64)>,
    pub index: SparseIndex,
    /// Unreadable ranges, sorted, disjoint.
    pub holes: Vec<Hole>,
    /// Stream byte position of its first record (see `State::end_pos`).
    pub start_pos: u64,
}

impl Segment {
    /// The hole containing `seq`, if any.
    pub fn hole_at(&self, seq: u64) -> Option<Hole> {
        self.holes
            .iter()
            .find(|h| (h.first..=h.last).contains(&seq))
            .copied()
    }

    /// Records a hole, merging with overlapping ones.
    pub fn add_hole(&mut self, h: Hole) {
        if h.first > h.last {
            return;
        }
        let (mut first, mut last) = (h.first, h.last);
        self.holes.retain(|o| {
            let overlaps = o.first <= last.saturating_add(1) && first <= o.last.saturating_add(1);
            if overlaps {
                first = first.min(o.first);
                last = last.max(o.last);
            }
            !overlaps
        });
        let i = self.holes.partition_point(|o| o.first < first);
        self.holes.insert(i, Hole { first, last });
    }

    /// Where to start walking to reach `seq`.
    pub fn start_for(&self, seq: u64) -> Point {
        self.index.at_or_before(self.base, seq).unwrap_or(Point {
            seq: self.base,
            offset: SEGMENT_HEADER_LEN,
            ts: 0,
        })
    }

    /// Stream byte position of the record at `offset`.
    pub fn pos_at(&self, offset: u64) -> u64 {
        self.start_pos + offset.saturating_sub(SEGMENT_HEADER_LEN)
    }

    /// Stream byte position just after its last record.
    pub fn end_pos(&self) -> u64 {
        self.pos_at(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_and_parse() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_file_name(&segment_file_name(42), "seg"), Some(42));
        assert_eq!(
            parse_file_name(&index_file_name(u64::MAX), "idx"),
            Some(u64::MAX)
        );
        assert_eq!(parse_file_name("42.seg", "seg"), None);
        assert_eq!(parse_file_name("0000000000000000004x.seg", "seg"), None);
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn holes_merge() {
        let mut s = Segment {
            base: 1,
            path: PathBuf::new(),
            file: Arc::new(tempfile_like()),
            len: SEGMENT_HEADER_LEN,
            last: 0,
            ts: None,
            index: SparseIndex::default(),
            holes: Vec::new(),
            start_pos: 0,
        };
        s.add_hole(Hole {
            first: 10,
            last: 12,
        });
        s.add_hole(Hole { first: 3, last: 4 });
        s.add_hole(Hole {
            first: 13,
            last: 15,
        });
        s.add_hole(Hole {
            first: 11,
            last: 11,
        });
        assert_eq!(
            s.holes,
            vec![
                Hole { first: 3, last: 4 },
                Hole {
                    first: 10,
                    last: 15
                }
            ]
        );
        assert_eq!(
            s.hole_at(14),
            Some(Hole {
                first: 10,
                last: 15
            })
        );
        assert_eq!(s.hole_at(5), None);
    }

    fn tempfile_like() -> File {
        File::open("/dev/null").unwrap()
    }

    #[test]
    fn window_serves_ranges_across_refills() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut w = Window::new(&data[..], data.len() as u64);
        assert_eq!(w.get(5, 3).unwrap().unwrap(), &[5, 6, 7]);
        let far = w.get(150_000, 4).unwrap().unwrap().to_vec();
        assert_eq!(far, data[150_000..150_004].to_vec());
        assert!(w.get(199_999, 2).unwrap().is_none());
        assert_eq!(w.get(0, 100_000).unwrap().unwrap().len(), 100_000);
    }
}
