//! The sparse per-segment index, and its `.idx` file.
//!
//! A segment keeps one [`IndexEntry`] (sequence, file offset, publish time) for its first record
//! and then one every [`INDEX_INTERVAL`] bytes, plus one at every point where reading resumes after
//! a corrupt range. Memory is thus about 16 bytes per 4 KiB of log, whatever the record count. A
//! read binary-searches the entries and scans forward at most one interval (plus one record).
//!
//! When a segment is sealed (the writer moves to a new one) its index is saved next to it as
//! `<base>.idx` so reopening does not rescan it. The file is only a cache: it carries the length
//! of the segment it describes and a CRC, and is rebuilt by scanning whenever either does not
//! match. It is written atomically but not fsynced.

use super::format::{self, Cursor, FormatError};

/// Bytes of log between two index entries.
pub(crate) const INDEX_INTERVAL: u64 = 4096;

const IDX_MAGIC: [u8; 4] = *b"SQIX";
const IDX_VERSION: u16 = 1;

/// One index point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Sequence minus the segment's base.
    pub seq_delta: u32,
    /// File offset of the record.
    pub offset: u32,
    /// Its publish time (nanoseconds).
    pub ts: u64,
}

/// A range of sequences known to be unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hole {
    /// First unreadable sequence.
    pub first: u64,
    /// Last unreadable sequence.
    pub last: u64,
}

/// The sparse index of one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SparseIndex {
    entries: Vec<IndexEntry>,
    /// Offset of the last entry, to space the next one.
    last_offset: Option<u64>,
}

/// An index point resolved to absolute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Point {
    pub seq: u64,
    pub offset: u64,
    pub ts: u64,
}

impl SparseIndex {
    fn point(&self, base: u64, e: &IndexEntry) -> Point {
        Point {
            seq: base + u64::from(e.seq_delta),
            offset: u64::from(e.offset),
            ts: e.ts,
        }
    }

    /// Notes a record written at `offset`: indexed if it is the first or an interval has passed.
    pub fn note(&mut self, base: u64, seq: u64, offset: u64, ts: u64) {
        if self
            .last_offset
            .is_none_or(|l| offset >= l + INDEX_INTERVAL)
        {
            self.force(base, seq, offset, ts);
        }
    }

    /// Indexes the record at `offset` unconditionally (a resume point after a corrupt range).
    pub fn force(&mut self, base: u64, seq: u64, offset: u64, ts: u64) {
        let e = IndexEntry {
            seq_delta: u32::try_from(seq - base).unwrap_or(u32::MAX),
            offset: u32::try_from(offset).unwrap_or(u32::MAX),
            ts,
        };
        let i = self.entries.partition_point(|x| x.seq_delta < e.seq_delta);
        if self
            .entries
            .get(i)
            .is_some_and(|x| x.seq_delta == e.seq_delta)
        {
            return;
        }
        self.entries.insert(i, e);
        if self.last_offset.is_none_or(|l| offset > l) {
            self.last_offset = Some(offset);
        }
    }

    /// The last entry at or before `seq`.
    pub fn at_or_before(&self, base: u64, seq: u64) -> Option<Point> {
        let d = seq.checked_sub(base)?;
        let i = self
            .entries
            .partition_point(|e| u64::from(e.seq_delta) <= d);
        i.checked_sub(1).map(|i| self.point(base, &self.entries[i]))
    }

    /// The first entry after `seq`.
    #[cfg(test)]
    pub fn after(&self, base: u64, seq: u64) -> Option<Point> {
        let d = seq.saturating_sub(base);
        let i = self
            .entries
            .partition_point(|e| u64::from(e.seq_delta) <= d);
        self.entries.get(i).map(|e| self.point(base, e))
    }

    /// Where to start scanning for the first record published at or after `ts`: the last entry
    /// published before it, else the first entry.
    pub fn scan_start_for_time(&self, base: u64, ts: u64) -> Option<Point> {
        let i = self.entries.partition_point(|e| e.ts < ts);
        let e = self.entries.get(i.saturating_sub(1))?;
        Some(self.point(base, e))
    }

    /// Entries held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// What an `.idx` file records about a sealed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexFile {
    pub base: u64,
    /// Length of the segment file described; the index is stale if the file differs.
    pub segment_len: u64,
    /// Bytes of the segment holding valid records (header included).
    pub valid_len: u64,
    /// Last sequence the segment covers.
    pub last: u64,
    /// First and last publish time of its records.
    pub ts: Option<(u64, u64)>,
    pub holes: Vec<Hole>,
    pub index: SparseIndex,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(64 + self.index.entries.len() * 16);
        for v in [self.base, self.segment_len, self.valid_len, self.last] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        let (has_ts, (a, b)) = match self.ts {
            Some(t) => (1u8, t),
            None => (0, (0, 0)),
        };
        p.push(has_ts);
        p.extend_from_slice(&a.to_le_bytes());
        p.extend_from_slice(&b.to_le_bytes());
        p.extend_from_slice(&(self.holes.len() as u32).to_le_bytes());
        for h in &self.holes {
            p.extend_from_slice(&h.first.to_le_bytes());
            p.extend_from_slice(&h.last.to_le_bytes());
        }
        p.extend_from_slice(&(self.index.entries.len() as u32).to_le_bytes());
        for e in &self.index.entries {
            p.extend_from_slice(&e.seq_delta.to_le_bytes());
            p.extend_from_slice(&e.offset.to_le_bytes());
            p.extend_from_slice(&e.ts.to_le_bytes());
        }
        let mut out = Vec::with_capacity(p.len() + 16);
        out.extend_from_slice(&IDX_MAGIC);
        out.extend_from_slice(&IDX_VERSION.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        format::frame(&mut out, &p);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < 8 {
            return Err(FormatError::Short);
        }
        if b[0..4] != IDX_MAGIC {
            return Err(FormatError::Magic);
        }
        let v = u16::from_le_bytes([b[4], b[5]]);
        if v != IDX_VERSION {
            return Err(FormatError::Version(v));
        }
        if b[6..8] != [0, 0] {
            return Err(FormatError::Invalid("index flags"));
        }
        let (p, n) = format::unframe(&b[8..], b.len())?;
        if 8 + n != b.len() {
            return Err(FormatError::Invalid("trailing bytes in index file"));
        }
        let mut c = Cursor { b: p, at: 0 };
        let (base, segment_len, valid_len, last) = (c.u64()?, c.u64()?, c.u64()?, c.u64()?);
        let has_ts = c.u8()?;
        let (a, z) = (c.u64()?, c.u64()?);
        let n = c.u32()? as usize;
        let mut holes = Vec::with_capacity(n.min(p.len() / 16));
        for _ in 0..n {
            let first = c.u64()?;
            let last = c.u64()?;
            holes.push(Hole { first, last });
        }
        let n = c.u32()? as usize;
        let mut index = SparseIndex::default();
        index.entries.reserve(n.min(p.len() / 16));
        for _ in 0..n {
            let e = IndexEntry {
                seq_delta: c.u32()?,
                offset: c.u32()?,
                ts: c.u64()?,
            };
            if index
                .entries
                .last()
                .is_some_and(|l| l.seq_delta >= e.seq_delta)
                || u64::from(e.offset) >= valid_len
            {
                return Err(FormatError::Invalid("index entry order"));
            }
            index.last_offset = Some(u64::from(e.offset).max(index.last_offset.unwrap_or(0)));
            index.entries.push(e);
        }
        if c.at != p.len() || valid_len > segment_len || has_ts > 1 || last < base.saturating_sub(1)
        {
            return Err(FormatError::Invalid("index file"));
        }
        Ok(IndexFile {
            base,
            segment_len,
            valid_len,
            last,
            ts: (has_ts == 1).then_some((a, z)),
            holes,
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_sparse_and_searchable() {
        let mut ix = SparseIndex::default();
        let base = 100;
        // 1000 records of 100 bytes each starting at offset 24.
        for i in 0..1000u64 {
            ix.note(base, base + i, 24 + i * 100, 1000 + i);
        }
        assert!(ix.len() <= 1000 * 100 / INDEX_INTERVAL as usize + 1);
        assert_eq!(ix.at_or_before(base, 99), None);
        let p = ix.at_or_before(base, 550).unwrap();
        assert!(p.seq <= 550 && 550 - p.seq <= INDEX_INTERVAL / 100);
        assert_eq!(p.offset, 24 + (p.seq - base) * 100);
        let n = ix.after(base, 550).unwrap();
        assert!(n.seq > 550);
        let t = ix.scan_start_for_time(base, 1500).unwrap();
        assert!(t.ts < 1500 && t.seq >= 100 + 500 - INDEX_INTERVAL / 100);
        assert_eq!(ix.scan_start_for_time(base, 0).unwrap().seq, base);
    }

    #[test]
    fn index_file_round_trips_and_detects_damage() {
        let mut index = SparseIndex::default();
        index.note(5, 5, 24, 9);
        index.force(5, 9, 700, 12);
        let f = IndexFile {
            base: 5,
            segment_len: 1000,
            valid_len: 990,
            last: 12,
            ts: Some((9, 15)),
            holes: vec![Hole { first: 7, last: 8 }],
            index,
        };
        let bytes = f.encode();
        assert_eq!(IndexFile::decode(&bytes).unwrap(), f);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(IndexFile::decode(&b).is_err(), "byte {i}");
        }
    }
}
