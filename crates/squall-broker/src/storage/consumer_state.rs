//! Consumer progress as data: a [`ConsumerSnapshot`] changed only by applying [`ConsumerOp`]s.
//!
//! The broker mutates a group's live state exclusively through [`ConsumerSnapshot::apply`] and hands
//! the same ops to the store, so the state a store replays after a restart is, by construction, the
//! state the broker had when the last recorded op was applied.
//!
//! Settled sequences are not stored: a sequence below `cursor` that is neither pending nor ready is
//! settled (acked, dead-lettered, expired, or not matching the group's pattern). Memory is therefore
//! bounded by what is in flight or waiting, not by the backlog.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use squall_core::Timestamp;

/// Most attempt times remembered per message (for the dead-letter envelope).
pub const MAX_ATTEMPT_TIMES: usize = 16;

/// A message leased to a consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingState {
    /// Deliveries so far, this one included.
    pub attempts: u32,
    /// When the lease expires.
    pub deadline: Timestamp,
    /// Identifies this lease.
    pub nonce: u64,
    /// When each delivery started (the last [`MAX_ATTEMPT_TIMES`]).
    pub attempt_times: Vec<Timestamp>,
}

/// A message examined and waiting: delayed, nacked with a delay, expired lease, or blocked behind
/// an earlier message of its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyState {
    /// Deliveries so far.
    pub attempts: u32,
    /// Not to be delivered before this.
    pub not_before: Timestamp,
    /// When each earlier delivery started.
    pub attempt_times: Vec<Timestamp>,
}

/// One change of a consumer's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsumerOp {
    /// The group's configuration (opaque to the store).
    Config(Vec<u8>),
    /// Every sequence below `to` has been examined.
    Cursor {
        /// The new cursor.
        to: u64,
    },
    /// A newly examined message waits (delayed or key-blocked).
    Ready {
        /// Its sequence.
        seq: u64,
        /// Not before.
        not_before: Timestamp,
    },
    /// A message was leased.
    Deliver {
        /// Its sequence.
        seq: u64,
        /// Lease identity.
        nonce: u64,
        /// When.
        at: Timestamp,
        /// Lease deadline.
        deadline: Timestamp,
    },
    /// A lease was extended.
    Extend {
        /// Its sequence.
        seq: u64,
        /// New deadline.
        deadline: Timestamp,
    },
    /// A leased message goes back to wait (nack, lease expiry, released by a closing member).
    Requeue {
        /// Its sequence.
        seq: u64,
        /// Not before.
        not_before: Timestamp,
    },
    /// A message is done for this group (acked, dead-lettered, expired, removed).
    Settle {
        /// Its sequence.
        seq: u64,
    },
    /// Forget everything in flight and continue from `cursor`.
    Reset {
        /// The new cursor.
        cursor: u64,
    },
    /// The log lost its tail from `to` on (records that never reached the disk, or a damaged
    /// tail cut off by recovery): forget what was examined at or after `to` and examine it again,
    /// since the records that take those sequences now are other messages.
    Rewind {
        /// The first sequence lost, and the new cursor.
        to: u64,
    },
}

/// A consumer group's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerSnapshot {
    /// The group's configuration, as last recorded.
    pub config: Vec<u8>,
    /// Next sequence not yet examined.
    pub cursor: u64,
    /// Leased messages.
    pub pending: BTreeMap<u64, PendingState>,
    /// Examined messages waiting for delivery.
    pub ready: BTreeMap<u64, ReadyState>,
}

impl ConsumerSnapshot {
    /// A fresh consumer starting at `cursor`.
    pub fn new(config: Vec<u8>, cursor: u64) -> Self {
        ConsumerSnapshot {
            config,
            cursor,
            ..Default::default()
        }
    }

    /// Applies one op. Ops that do not fit the state (settling an unknown sequence) are ignored, so
    /// replaying a journal twice from a snapshot is harmless.
    pub fn apply(&mut self, op: &ConsumerOp) {
        match op {
            ConsumerOp::Config(c) => self.config.clone_from(c),
            ConsumerOp::Cursor { to } => self.cursor = self.cursor.max(*to),
            ConsumerOp::Ready { seq, not_before } => {
                if *seq >= self.cursor || !self.pending.contains_key(seq) {
                    self.ready.entry(*seq).or_insert(ReadyState {
                        attempts: 0,
                        not_before: *not_before,
                        attempt_times: Vec::new(),
                    });
                }
                self.cursor = self.cursor.max(seq + 1);
            }
            ConsumerOp::Deliver {
                seq,
                nonce,
                at,
                deadline,
            } => {
                let (attempts, mut times) = match self.ready.remove(seq) {
                    Some(r) => (r.attempts, r.attempt_times),
                    None => match self.pending.remove(seq) {
                        Some(p) => (p.attempts, p.attempt_times),
                        None => (0, Vec::new()),
                    },
                };
                if times.len() >= MAX_ATTEMPT_TIMES {
                    times.remove(0);
                }
                times.push(*at);
                self.pending.insert(
                    *seq,
                    PendingState {
                        attempts: attempts + 1,
                        deadline: *deadline,
                        nonce: *nonce,
                        attempt_times: times,
                    },
                );
                self.cursor = self.cursor.max(seq + 1);
            }
            ConsumerOp::Extend { seq, deadline } => {
                if let Some(p) = self.pending.get_mut(seq) {
                    p.deadline = *deadline;
                }
            }
            ConsumerOp::Requeue { seq, not_before } => {
                if let Some(p) = self.pending.remove(seq) {
                    self.ready.insert(
                        *seq,
                        ReadyState {
                            attempts: p.attempts,
                            not_before: *not_before,
                            attempt_times: p.attempt_times,
                        },
                    );
                }
            }
            ConsumerOp::Settle { seq } => {
                self.pending.remove(seq);
                self.ready.remove(seq);
            }
            ConsumerOp::Reset { cursor } => {
                self.pending.clear();
                self.ready.clear();
                self.cursor = *cursor;
            }
            ConsumerOp::Rewind { to } => {
                self.pending.split_off(to);
                self.ready.split_off(to);
                self.cursor = self.cursor.min(*to);
            }
        }
    }

    /// Every sequence at or below this is settled.
    pub fn ack_floor(&self) -> u64 {
        let mut floor = self.cursor.saturating_sub(1);
        if let Some((&s, _)) = self.pending.first_key_value() {
            floor = floor.min(s - 1);
        }
        if let Some((&s, _)) = self.ready.first_key_value() {
            floor = floor.min(s - 1);
        }
        floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_cycle_replays_to_the_same_state() {
        let ops = vec![
            ConsumerOp::Config(b"cfg".to_vec()),
            ConsumerOp::Deliver {
                seq: 1,
                nonce: 7,
                at: Timestamp(10),
                deadline: Timestamp(40),
            },
            ConsumerOp::Ready {
                seq: 2,
                not_before: Timestamp(100),
            },
            ConsumerOp::Cursor { to: 5 },
            ConsumerOp::Requeue {
                seq: 1,
                not_before: Timestamp(50),
            },
            ConsumerOp::Deliver {
                seq: 1,
                nonce: 8,
                at: Timestamp(50),
                deadline: Timestamp(80),
            },
            ConsumerOp::Settle { seq: 1 },
        ];
        let mut s = ConsumerSnapshot::new(Vec::new(), 1);
        for op in &ops {
            s.apply(op);
        }
        assert_eq!(s.cursor, 5);
        assert!(s.pending.is_empty());
        assert_eq!(s.ready.len(), 1);
        assert_eq!(
            s.ack_floor(),
            1,
            "2 still waits, so only 1 is below the floor"
        );
        let mut again = s.clone();
        for op in &ops[1..] {
            again.apply(op);
        }
        assert_eq!(
            again.ready.len(),
            1,
            "replaying ops does not duplicate waiting messages"
        );
    }

    #[test]
    fn a_rewind_forgets_what_was_examined_from_its_sequence_on() {
        let mut s = ConsumerSnapshot::new(Vec::new(), 1);
        for seq in 1..=6 {
            s.apply(&ConsumerOp::Deliver {
                seq,
                nonce: seq,
                at: Timestamp(1),
                deadline: Timestamp(9),
            });
        }
        s.apply(&ConsumerOp::Requeue {
            seq: 5,
            not_before: Timestamp(0),
        });
        s.apply(&ConsumerOp::Settle { seq: 2 });
        s.apply(&ConsumerOp::Rewind { to: 4 });
        assert_eq!(s.cursor, 4, "examined again from the first lost sequence");
        assert_eq!(s.pending.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert!(s.ready.is_empty(), "5 was lost with the tail");
        s.apply(&ConsumerOp::Rewind { to: 9 });
        assert_eq!(s.cursor, 4, "a rewind never moves the cursor forward");
    }

    #[test]
    fn attempts_accumulate_across_requeues() {
        let mut s = ConsumerSnapshot::new(Vec::new(), 1);
        for i in 0..3u64 {
            s.apply(&ConsumerOp::Deliver {
                seq: 1,
                nonce: i,
                at: Timestamp(i),
                deadline: Timestamp(i + 1),
            });
            s.apply(&ConsumerOp::Requeue {
                seq: 1,
                not_before: Timestamp(0),
            });
        }
        assert_eq!(s.ready[&1].attempts, 3);
        assert_eq!(
            s.ready[&1].attempt_times,
            vec![Timestamp(0), Timestamp(1), Timestamp(2)]
        );
    }
}
