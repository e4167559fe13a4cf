//! [`MemoryStorage`]: streams and consumer progress in memory.
//!
//! Survives dropping and reopening a [`crate::Broker`] over the same `Arc<MemoryStorage>` within one
//! process (tests use that to check restart semantics), not a process exit. Appends report
//! [`Durability::Memory`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use squall_core::{Durability, Message, Timestamp};

use super::{
    Commit, ConsumerOp, ConsumerSnapshot, Storage, StorageError, StoredMessage, StreamBounds,
    StreamStore, VisibleWaker,
};

/// Stream name -> (saved metadata, the stream).
type StreamMap = HashMap<String, (Vec<u8>, Arc<MemoryStream>)>;

/// In-memory [`Storage`].
#[derive(Default)]
pub struct MemoryStorage {
    streams: Mutex<StreamMap>,
}

impl MemoryStorage {
    /// Empty storage.
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryStorage::default())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a way later
    // readers would misinterpret (every critical section is a single push/pop/insert), so poisoning
    // is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Storage for MemoryStorage {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn streams(&self) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        Ok(lock(&self.streams)
            .iter()
            .map(|(n, (m, _))| (n.clone(), m.clone()))
            .collect())
    }

    fn open_stream(&self, name: &str, meta: &[u8]) -> Result<Arc<dyn StreamStore>, StorageError> {
        let mut streams = lock(&self.streams);
        let entry = streams
            .entry(name.to_string())
            .or_insert_with(|| (meta.to_vec(), Arc::new(MemoryStream::default())));
        entry.0 = meta.to_vec();
        Ok(entry.1.clone())
    }

    fn delete_stream(&self, name: &str) -> Result<(), StorageError> {
        lock(&self.streams).remove(name);
        Ok(())
    }
}

#[derive(Default)]
struct MemoryStream {
    log: Mutex<Log>,
    consumers: Mutex<HashMap<String, ConsumerSnapshot>>,
}

#[derive(Default)]
struct Log {
    /// Sequence of `records[0]`.
    first: u64,
    last: u64,
    bytes: u64,
    records: VecDeque<StoredMessage>,
    /// Called after every append: a record is visible once appended.
    waker: Option<VisibleWaker>,
}

fn record_size(m: &Message) -> u64 {
    (m.size() + m.subject().as_str().len() + m.id().as_str().len() + 64) as u64
}

impl StreamStore for MemoryStream {
    fn append(
        &self,
        published_at: Timestamp,
        msg: &Message,
    ) -> Result<(u64, Commit), StorageError> {
        let mut log = lock(&self.log);
        if log.records.is_empty() {
            log.first = log.last + 1;
        }
        log.last += 1;
        let sequence = log.last;
        log.bytes += record_size(msg);
        log.records.push_back(StoredMessage {
            sequence,
            published_at,
            message: msg.clone(),
        });
        let wake = log.waker.clone();
        drop(log);
        if let Some(wake) = wake {
            wake();
        }
        Ok((sequence, Commit::Done(Durability::Memory)))
    }

    fn read(&self, sequence: u64) -> Result<Option<StoredMessage>, StorageError> {
        let log = lock(&self.log);
        if sequence < log.first {
            return Ok(None);
        }
        Ok(log.records.get((sequence - log.first) as usize).cloned())
    }

    fn bounds(&self) -> StreamBounds {
        let log = lock(&self.log);
        let first = if log.records.is_empty() {
            log.last + 1
        } else {
            log.first
        };
        StreamBounds {
            first,
            last: log.last,
            visible: log.last,
            messages: log.records.len() as u64,
            bytes: log.bytes,
        }
    }

    fn on_visible(&self, wake: VisibleWaker) {
        lock(&self.log).waker = Some(wake);
    }

    fn first_at_or_after(&self, ts: Timestamp) -> Result<u64, StorageError> {
        let log = lock(&self.log);
        let i = log.records.partition_point(|r| r.published_at < ts);
        Ok(log.records.get(i).map_or(log.last + 1, |r| r.sequence))
    }

    fn remove_before(&self, sequence: u64) -> Result<(), StorageError> {
        let mut log = lock(&self.log);
        while log.records.front().is_some_and(|r| r.sequence < sequence) {
            let r = log.records.pop_front().expect("front checked");
            log.bytes -= record_size(&r.message);
            log.first = r.sequence + 1;
        }
        Ok(())
    }

    fn durability(&self) -> Durability {
        Durability::Memory
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn record_consumer(&self, name: &str, ops: &[ConsumerOp]) -> Result<(), StorageError> {
        let mut consumers = lock(&self.consumers);
        let state = consumers.entry(name.to_string()).or_default();
        for op in ops {
            state.apply(op);
        }
        Ok(())
    }

    fn consumers(&self) -> Result<Vec<(String, ConsumerSnapshot)>, StorageError> {
        Ok(lock(&self.consumers)
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect())
    }

    fn delete_consumer(&self, name: &str) -> Result<(), StorageError> {
        lock(&self.consumers).remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_core::Subject;

    #[test]
    fn sequences_bounds_and_retention() {
        let storage = MemoryStorage::new();
        let s = storage.open_stream("s", b"meta").unwrap();
        let msg = Message::new(Subject::new("a").unwrap(), "x");
        for i in 0..5 {
            let (seq, _) = s.append(Timestamp(100 + i), &msg).unwrap();
            assert_eq!(seq, i + 1);
        }
        assert_eq!(s.first_at_or_after(Timestamp(102)).unwrap(), 3);
        assert_eq!(s.first_at_or_after(Timestamp(999)).unwrap(), 6);
        s.remove_before(3).unwrap();
        let b = s.bounds();
        assert_eq!((b.first, b.last, b.messages), (3, 5, 3));
        assert!(s.read(2).unwrap().is_none());
        assert_eq!(s.read(4).unwrap().unwrap().sequence, 4);
        s.remove_before(10).unwrap();
        let b = s.bounds();
        assert_eq!((b.first, b.last, b.messages, b.bytes), (6, 5, 0, 0));
        assert_eq!(
            s.append(Timestamp(200), &msg).unwrap().0,
            6,
            "sequences continue after emptying"
        );
        assert_eq!(storage.streams().unwrap()[0].1, b"meta");
    }
}
