//! Reading records back from segment files: one record (with read-ahead into the cache), the
//! first record at or after a time, the byte position of a sequence, and what to do when a record
//! does not verify.
//!
//! All of it runs with the stream lock released while it reads: the lock is taken to plan (which
//! segment, from which index point, up to which length) and again to record what was learnt
//! (cached records, a new hole). A segment retention deletes meanwhile is still read through its
//! open `File`.

use super::format;
use super::index::Hole;
use super::segment::{self, WalkEnd, Window, resync, walk};
use super::stream::{Cached, LogStream, Shared};
use crate::storage::{StorageError, StoredMessage};

impl Shared {
    pub(crate) fn corrupt(&self, h: Hole, detail: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            stream: self.name.clone(),
            first: h.first,
            last: h.last,
            detail: detail.into(),
        }
    }

    /// Records the damage found at `offset` of segment `base` (expected to hold `expected`) as a
    /// hole, with an index entry where reading resumes. Returns the hole.
    pub(crate) fn damaged(
        &self,
        base: u64,
        offset: u64,
        expected: u64,
        undecodable: bool,
        detail: &str,
    ) -> Result<Option<Hole>, StorageError> {
        let (file, end, seg_last) = {
            let st = self.lock();
            let Some(seg) = st.segments.get(&base) else {
                return Ok(None);
            };
            (seg.file.clone(), seg.len, seg.last)
        };
        let (from, min_seq) = match undecodable {
            true => (offset + 1, expected + 1),
            false => (offset, expected),
        };
        let mut win = Window::new(&*file, end);
        let max_body = self.settings.max_body;
        let found = resync(&mut win, from, min_seq, seg_last, max_body)
            .map_err(|e| StorageError::io("read", self.dir.display(), e))?;
        let mut st = self.lock();
        let Some(seg) = st.segments.get_mut(&base) else {
            return Ok(None);
        };
        let hole = match found {
            Some(loc) => {
                seg.index.force(base, loc.seq, loc.offset, loc.ts);
                Hole {
                    first: expected,
                    last: loc.seq.saturating_sub(1),
                }
            }
            None => Hole {
                first: expected,
                last: seg_last,
            },
        };
        if hole.first <= hole.last && seg.hole_at(hole.first) != Some(hole) {
            tracing::warn!(stream = %self.name, segment = %seg.path.display(), first = hole.first,
                last = hole.last, %detail, "corrupt records: reads of these sequences fail");
            seg.add_hole(hole);
        }
        Ok(Some(hole))
    }
}

impl LogStream {
    pub(crate) fn read_disk(&self, seq: u64) -> Result<Option<StoredMessage>, StorageError> {
        let sh = &self.shared;
        loop {
            let (file, start, end, base, seg_last) = {
                let st = sh.lock();
                if seq < st.floor || seq > st.last {
                    return Ok(None);
                }
                let Some((_, seg)) = st.segments.range(..=seq).next_back() else {
                    return Ok(None);
                };
                if let Some(h) = seg.hole_at(seq) {
                    return Err(sh.corrupt(h, "the records failed verification"));
                }
                (
                    seg.file.clone(),
                    seg.start_for(seq),
                    seg.len,
                    seg.base,
                    seg.last,
                )
            };
            let mut win = Window::new(&*file, end);
            let mut got: Vec<Cached> = Vec::new();
            let mut got_bytes = 0;
            let res = walk(&mut win, start, sh.settings.max_body, |loc, body| {
                if loc.seq < seq {
                    return Ok(false);
                }
                let rec = format::decode_body(body).map_err(|e| e.to_string())?;
                got_bytes += loc.framed_len as usize;
                got.push(Cached {
                    msg: StoredMessage {
                        sequence: rec.seq,
                        published_at: rec.published_at,
                        message: rec.message,
                    },
                    pos: loc.offset,
                    size: loc.framed_len as u32,
                });
                Ok(got_bytes >= segment::CHUNK || loc.seq >= seg_last)
            })
            .map_err(|e| StorageError::io("read", file_name(sh, base), e))?;
            if !got.is_empty() {
                return Ok(Some(self.keep_readahead(base, got)));
            }
            match res {
                WalkEnd::Bad {
                    offset,
                    expected,
                    detail,
                    undecodable,
                } => {
                    let hole = sh.damaged(base, offset, expected, undecodable, &detail)?;
                    if let Some(h) = hole
                        && (h.first..=h.last).contains(&seq)
                    {
                        return Err(sh.corrupt(h, detail));
                    }
                }
                WalkEnd::End | WalkEnd::Stopped => {
                    let h = Hole {
                        first: seq,
                        last: seq,
                    };
                    return Err(sh.corrupt(h, "record missing from its segment"));
                }
            }
        }
    }

    /// Caches records read from segment `base` (the first is the one asked for) and returns the
    /// first.
    pub(crate) fn keep_readahead(&self, base: u64, mut got: Vec<Cached>) -> StoredMessage {
        let sh = &self.shared;
        let first = got[0].msg.clone();
        let mut st = sh.lock();
        if let Some(seg) = st.segments.get(&base) {
            for c in &mut got {
                c.pos = seg.pos_at(c.pos);
            }
            let floor = st.floor;
            for c in got.into_iter().skip(1).filter(|c| c.msg.sequence >= floor) {
                st.readahead_bytes += c.size as usize;
                if let Some(old) = st.readahead.insert(c.msg.sequence, c) {
                    st.readahead_bytes -= old.size as usize;
                }
            }
            st.evict(sh.settings.cache_bytes / 2);
        }
        first
    }

    /// The first record at or after `ts` on disk, searching segments from the one whose last
    /// publish time reaches `ts`.
    pub(crate) fn first_on_disk_at_or_after(&self, ts: u64) -> Result<Option<u64>, StorageError> {
        let sh = &self.shared;
        // Records below this have been examined (or are unreadable).
        let mut from_seq = 0;
        loop {
            let plan = {
                let st = sh.lock();
                st.segments
                    .values()
                    .find(|s| s.last >= from_seq && s.ts.is_some_and(|(_, z)| z >= ts))
                    .map(|s| {
                        let by_time = s.index.scan_start_for_time(s.base, ts);
                        let by_seq = s.start_for(from_seq.max(s.base));
                        let start = match by_time {
                            Some(p) if p.seq > by_seq.seq => p,
                            _ => by_seq,
                        };
                        (s.file.clone(), start, s.len, s.base, s.last)
                    })
            };
            let Some((file, start, end, base, seg_last)) = plan else {
                return Ok(None);
            };
            let mut win = Window::new(&*file, end);
            let mut found = None;
            let res = walk(&mut win, start, sh.settings.max_body, |loc, _| {
                if loc.ts >= ts && loc.seq >= from_seq {
                    found = Some(loc.seq);
                }
                Ok(found.is_some())
            })
            .map_err(|e| StorageError::io("read", file_name(sh, base), e))?;
            if found.is_some() {
                return Ok(found);
            }
            from_seq = match res {
                WalkEnd::Bad {
                    offset,
                    expected,
                    detail,
                    undecodable,
                } => match sh.damaged(base, offset, expected, undecodable, &detail)? {
                    Some(h) => h.last + 1,
                    None => seg_last + 1,
                },
                WalkEnd::End | WalkEnd::Stopped => seg_last + 1,
            };
        }
    }
}

pub(crate) fn file_name(sh: &Shared, base: u64) -> String {
    sh.dir
        .join(segment::segment_file_name(base))
        .display()
        .to_string()
}

/// Stream byte position of `seq` (for byte accounting), reading its segment if needed.
pub(crate) fn pos_of(sh: &Shared, seq: u64) -> Result<u64, StorageError> {
    let (file, start, end, pos_at_start, base) = {
        let st = sh.lock();
        if seq > st.last {
            return Ok(st.end_pos);
        }
        if let Some(c) = st.recent_get(seq) {
            return Ok(c.pos);
        }
        let Some((_, seg)) = st.segments.range(..=seq).next_back() else {
            return Ok(st.end_pos);
        };
        let start = seg.start_for(seq);
        (
            seg.file.clone(),
            start,
            seg.len,
            seg.pos_at(start.offset),
            seg.base,
        )
    };
    if start.seq == seq {
        return Ok(pos_at_start);
    }
    let mut win = Window::new(&*file, end);
    let mut offset = None;
    walk(&mut win, start, sh.settings.max_body, |loc, _| {
        offset = Some(loc.offset);
        Ok(loc.seq >= seq)
    })
    .map_err(|e| StorageError::io("read", file_name(sh, base), e))?;
    // Damage on the way: count from the last record reached (overstates bytes, never understates).
    let st = sh.lock();
    Ok(match (offset, st.segments.get(&base)) {
        (Some(o), Some(seg)) => seg.pos_at(o),
        _ => pos_at_start,
    })
}
