//! The deduplication window: message ids seen recently, per stream.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use squall_core::{MessageId, Timestamp};

/// Remembers ids for `window`, at most `max_entries` (oldest forgotten first).
#[derive(Debug)]
pub(crate) struct Dedup {
    window: Duration,
    max_entries: usize,
    seen: HashMap<MessageId, u64>,
    order: VecDeque<(Timestamp, MessageId)>,
    /// Ids forgotten early because of `max_entries`.
    pub evicted: u64,
}

impl Dedup {
    pub(crate) fn new(window: Duration, max_entries: usize) -> Self {
        Dedup {
            window,
            max_entries,
            seen: HashMap::new(),
            order: VecDeque::new(),
            evicted: 0,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    fn expire(&mut self, now: Timestamp) {
        while let Some((t, _)) = self.order.front() {
            if t.saturating_add(self.window) > now && self.order.len() <= self.max_entries {
                break;
            }
            let (t, id) = self.order.pop_front().expect("front checked");
            if t.saturating_add(self.window) > now {
                self.evicted += 1;
            }
            self.seen.remove(&id);
        }
    }

    /// The sequence `id` was stored at, if seen within the window.
    pub(crate) fn check(&mut self, id: &MessageId, now: Timestamp) -> Option<u64> {
        if !self.enabled() {
            return None;
        }
        self.expire(now);
        self.seen.get(id).copied()
    }

    /// Remembers `id` stored at `seq` at time `at`.
    pub(crate) fn insert(&mut self, id: MessageId, seq: u64, at: Timestamp) {
        if !self.enabled() {
            return;
        }
        if self.seen.insert(id.clone(), seq).is_none() {
            self.order.push_back((at, id));
        }
        if self.order.len() > self.max_entries {
            self.expire(at);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> MessageId {
        MessageId::new(s).unwrap()
    }

    #[test]
    fn ids_are_forgotten_after_the_window_or_beyond_capacity() {
        let mut d = Dedup::new(Duration::from_nanos(100), 2);
        d.insert(id("a"), 1, Timestamp(0));
        assert_eq!(d.check(&id("a"), Timestamp(99)), Some(1));
        assert_eq!(d.check(&id("a"), Timestamp(100)), None);
        d.insert(id("b"), 2, Timestamp(100));
        d.insert(id("c"), 3, Timestamp(101));
        d.insert(id("d"), 4, Timestamp(102));
        assert_eq!(d.len(), 2);
        assert_eq!(d.evicted, 1);
        assert_eq!(d.check(&id("b"), Timestamp(103)), None);
        assert_eq!(d.check(&id("d"), Timestamp(103)), Some(4));
    }
}
