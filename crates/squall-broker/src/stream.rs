//! A stream: its store, its groups, dedup window and retention, behind one lock.
//!
//! Concurrency: all mutable state of a stream lives in [`StreamState`] behind a `std::sync::Mutex`.
//! Critical sections never await (the lock is never held across a suspension point), so a blocking
//! mutex is cheaper than an async one. The store is called under the lock for appends (so sequence
//! order is lock order) and reads. Waiting consumers park on `notify`, which is signalled after every
//! change that could make something deliverable (a record becoming visible, settle, member leaving,
//! close). A record becomes visible when the store can no longer lose it to a crash
//! ([`crate::storage::StreamBounds::visible`]): with the log storage in `fsync` mode that is after
//! its fsync, so delivery follows the group commit. The store signals `notify` then, through the
//! waker `Stream::new` registers (the memory store as it appends).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use squall_core::{Error, ErrorKind, Message, Result, Timestamp};
use tokio::sync::Notify;

use crate::config::{Discard, Retention, StreamConfig};
use crate::dedup::Dedup;
use crate::group::{Group, GroupCounters};
use crate::storage::{Commit, StreamStore};

/// Mutable state of a stream.
pub(crate) struct StreamState {
    pub config: StreamConfig,
    pub groups: HashMap<Arc<str>, Group>,
    pub dedup: Dedup,
    /// Append times never go backwards, even if the clock did across a restart.
    pub last_published: Timestamp,
    /// Messages removed by limits.
    pub dropped: u64,
}

pub(crate) struct Stream {
    pub name: Arc<str>,
    pub store: Arc<dyn StreamStore>,
    pub state: Mutex<StreamState>,
    pub notify: Arc<Notify>,
    published: metrics::Counter,
    duplicates: metrics::Counter,
    dropped: metrics::Counter,
}

/// The synchronous part of a publish.
pub(crate) enum Appended {
    Stored {
        seq: u64,
        commit: Commit,
        dropped: u64,
    },
    Duplicate {
        seq: u64,
    },
}

impl Stream {
    pub(crate) fn new(
        config: StreamConfig,
        store: Arc<dyn StreamStore>,
        groups: HashMap<Arc<str>, Group>,
    ) -> Self {
        let name: Arc<str> = config.name.as_str().into();
        let label = name.to_string();
        let last_published = store
            .read(store.bounds().last)
            .ok()
            .flatten()
            .map_or(Timestamp(0), |m| m.published_at);
        let notify = Arc::new(Notify::new());
        let wake = notify.clone();
        store.on_visible(Arc::new(move || wake.notify_waiters()));
        Stream {
            published: metrics::counter!("squall_published_total", "stream" => label.clone()),
            duplicates: metrics::counter!("squall_publish_duplicates_total", "stream" => label.clone()),
            dropped: metrics::counter!("squall_retention_dropped_total", "stream" => label),
            name,
            store,
            state: Mutex::new(StreamState {
                dedup: Dedup::new(config.dedup_window, config.dedup_max_entries),
                config,
                groups,
                last_published,
                dropped: 0,
            }),
            notify,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, StreamState> {
        // Every critical section leaves the state consistent before anything that can panic, so a
        // poisoned lock is recovered rather than propagated to every later caller.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refills the dedup window from the records stored within it (after a restart).
    pub(crate) fn rebuild_dedup(&self, now: Timestamp) -> Result<()> {
        let mut st = self.lock();
        if !st.dedup.enabled() {
            return Ok(());
        }
        let since = Timestamp(
            now.as_nanos()
                .saturating_sub(st.config.dedup_window.as_nanos() as u64),
        );
        let from = self.store.first_at_or_after(since)?;
        let last = self.store.bounds().last;
        for seq in from..=last {
            if let Some(m) = self.store.read(seq)? {
                st.dedup.insert(m.message.id().clone(), seq, m.published_at);
            }
        }
        Ok(())
    }

    /// Stores `msg` (or recognises it as a duplicate), then applies limits.
    pub(crate) fn append(&self, msg: &Message, now: Timestamp) -> Result<Appended> {
        let appended = {
            let mut st = self.lock();
            let at = now.max(st.last_published);
            if let Some(seq) = st.dedup.check(msg.id(), at) {
                self.duplicates.increment(1);
                return Ok(Appended::Duplicate { seq });
            }
            if st.config.discard == Discard::New {
                let b = self.store.bounds();
                let full_count = st.config.max_messages.is_some_and(|m| b.messages >= m);
                let full_bytes = st
                    .config
                    .max_bytes
                    .is_some_and(|m| b.bytes + msg.size() as u64 > m);
                if full_count || full_bytes {
                    return Err(Error::new(
                        ErrorKind::Full,
                        format!(
                            "stream `{}` is full ({} messages, {} bytes); retry later, consume faster, or raise `stream.max_messages` / `stream.max_bytes`",
                            self.name, b.messages, b.bytes
                        ),
                    ));
                }
            }
            let (seq, commit) = self.store.append(at, msg)?;
            st.last_published = at;
            st.dedup.insert(msg.id().clone(), seq, at);
            let dropped = self.enforce_limits(&mut st, at)?;
            Appended::Stored {
                seq,
                commit,
                dropped,
            }
        };
        // Consumers are woken by the store once the record is visible (see the module docs).
        self.published.increment(1);
        Ok(appended)
    }

    /// Applies count, byte and age limits (Discard::Old), and work-queue removal.
    pub(crate) fn enforce_limits(&self, st: &mut StreamState, now: Timestamp) -> Result<u64> {
        let before = self.store.bounds();
        let mut floor = before.first;
        if let Some(max) = st.config.max_messages
            && before.messages > max
        {
            floor = floor.max(before.last + 1 - max);
        }
        if let Some(age) = st.config.max_age {
            let cutoff = Timestamp(now.as_nanos().saturating_sub(age.as_nanos() as u64));
            floor = floor.max(self.store.first_at_or_after(cutoff)?);
        }
        if floor > before.first {
            self.store.remove_before(floor)?;
        }
        if let Some(max) = st.config.max_bytes {
            loop {
                let b = self.store.bounds();
                if b.bytes <= max || b.messages == 0 {
                    break;
                }
                self.store.remove_before(b.first + 1)?;
                if self.store.bounds() == b {
                    break; // the store removes whole segments only; it will go with the next one
                }
            }
        }
        let limits_removed = before.messages.saturating_sub(self.store.bounds().messages);
        if limits_removed > 0 {
            st.dropped += limits_removed;
            self.dropped.increment(limits_removed);
        }
        if st.config.retention == Retention::WorkQueue {
            self.remove_consumed(st)?;
        }
        Ok(limits_removed)
    }

    /// Work queues: drop what every group has settled.
    pub(crate) fn remove_consumed(&self, st: &StreamState) -> Result<()> {
        if st.config.retention != Retention::WorkQueue || st.groups.is_empty() {
            return Ok(());
        }
        let floor = st
            .groups
            .values()
            .map(|g| g.snap.ack_floor())
            .min()
            .unwrap_or(0);
        if floor >= self.store.bounds().first {
            self.store.remove_before(floor + 1)?;
        }
        Ok(())
    }

    /// Statistics, with expired leases processed first (by the caller).
    pub(crate) fn stats(&self, st: &StreamState, now: Timestamp) -> StreamStats {
        let b = self.store.bounds();
        let oldest_age = if b.messages > 0 {
            self.store
                .read(b.first)
                .ok()
                .flatten()
                .map(|m| now.saturating_since(m.published_at))
        } else {
            None
        };
        let mut groups: Vec<GroupStats> = st
            .groups
            .values()
            .map(|g| GroupStats {
                name: g.name.to_string(),
                pattern: g.config.pattern.to_string(),
                durable: g.config.durable && !g.ephemeral,
                ephemeral: g.ephemeral,
                members: g.members.len(),
                in_flight: g.in_flight(),
                waiting: g.waiting_len(),
                cursor: g.snap.cursor,
                ack_floor: g.snap.ack_floor(),
                lag: g.lag(b.last),
                counters: g.counters,
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        StreamStats {
            name: self.name.to_string(),
            subjects: st.config.subjects.iter().map(|p| p.to_string()).collect(),
            retention: st.config.retention,
            messages: b.messages,
            bytes: b.bytes,
            first_sequence: b.first,
            last_sequence: b.last,
            oldest_age,
            dropped: st.dropped,
            dedup_entries: st.dedup.len(),
            durability: self.store.durability(),
            groups,
        }
    }
}

/// A stream's statistics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    /// Name.
    pub name: String,
    /// Subjects captured.
    pub subjects: Vec<String>,
    /// Retention policy.
    pub retention: Retention,
    /// Messages held (the stream's depth).
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Lowest sequence held.
    pub first_sequence: u64,
    /// Highest sequence assigned.
    pub last_sequence: u64,
    /// Age of the oldest message held.
    pub oldest_age: Option<Duration>,
    /// Messages removed by limits since the broker opened.
    pub dropped: u64,
    /// Ids in the dedup window.
    pub dedup_entries: usize,
    /// Durability its appends reach.
    pub durability: squall_core::Durability,
    /// Its consumer groups and fan-out subscriptions.
    pub groups: Vec<GroupStats>,
}

/// A consumer group's statistics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupStats {
    /// Group name (fan-out subscriptions: `_sub.<n>`).
    pub name: String,
    /// Pattern consumed.
    pub pattern: String,
    /// Survives without members and restarts.
    pub durable: bool,
    /// A fan-out subscription's private consumer.
    pub ephemeral: bool,
    /// Connected members.
    pub members: usize,
    /// Leased, unsettled deliveries.
    pub in_flight: usize,
    /// Examined messages waiting (delayed, nacked, backing off, key-blocked).
    pub waiting: usize,
    /// Next sequence to examine.
    pub cursor: u64,
    /// Every sequence at or below is settled.
    pub ack_floor: u64,
    /// Messages after the ack floor (not yet settled, matching or not).
    pub lag: u64,
    /// Counters.
    pub counters: GroupCounters,
}
