//! The checker: reads what producers sent and confirmed and what consumers received and acked,
//! and counts what went wrong.
//!
//! Every workload message carries its producer, sequence, key, intended send time and a checksum of
//! its payload ([`Stamp`]). The workload records [`Event`]s as they happen; [`check`] turns the log
//! into [`Findings`]:
//! - **lost**: confirmed to the producer, never delivered to a group;
//! - **unconfirmed but delivered**: the producer saw an error or no answer, yet it arrived
//!   (informative: at-least-once producers then retry, which makes duplicates);
//! - **duplicates**: deliveries of a message a group had already acked (what an idempotent
//!   consumer must absorb), split into redelivered-after-ack (same stored copy) and stored twice
//!   (different stream sequence, e.g. a producer retry outside the dedup window); and one
//!   delivery (same attempt of the same stored copy) handed over twice before its ack;
//! - **reorders**: per group, producer and key, a first delivery of an older sequence after a newer one;
//! - **corrupt**: payload checksum mismatch;
//! - **lease anomalies**: two consumers holding one message at once;
//! - **early delays**: a delayed message delivered before its time;
//! - **dead-letter misses**: a message a group rejected (or whose last allowed delivery went
//!   unsettled) must be in the dead-letter queue exactly once: misses and extra copies are counted;
//! - **unaccounted**: sent, but the producer neither got a confirm nor gave up (a run cut short);
//! - per-phase counts (by the phase a message was sent in, as in the partition test of the
//!   articles: pre, during, post), a one-second timeline, recovery time after each fault
//!   window, latency percentiles.
//!
//! Everything is counted, nothing is de-duplicated away.

use std::time::Duration;

use serde::Serialize;
use squall_core::{Message, Timestamp};

/// Header names of the stamp.
pub mod header {
    /// Producer id.
    pub const PRODUCER: &str = "chaos-producer";
    /// Producer sequence, from 1.
    pub const SEQUENCE: &str = "chaos-seq";
    /// Intended send time, ns since the epoch.
    pub const SENT: &str = "chaos-sent";
    /// CRC32C of the payload.
    pub const CHECKSUM: &str = "chaos-sum";
}

/// What identifies a workload message and lets a receiver verify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Stamp {
    /// Producer id.
    pub producer: u32,
    /// Producer sequence, from 1.
    pub seq: u64,
    /// Intended send time (open-loop schedule), for latency.
    pub sent: Timestamp,
    /// CRC32C of the payload as sent.
    pub checksum: u32,
}

impl Stamp {
    /// Writes the stamp into `msg`'s headers (the checksum is computed from its payload).
    pub fn apply(producer: u32, seq: u64, sent: Timestamp, msg: &mut Message) -> Stamp {
        let checksum = crc32c::crc32c(msg.payload());
        let h = msg.headers_mut();
        // Header names and decimal values are always valid.
        let _ = h.insert(header::PRODUCER, producer.to_string());
        let _ = h.insert(header::SEQUENCE, seq.to_string());
        let _ = h.insert(header::SENT, sent.as_nanos().to_string());
        let _ = h.insert(header::CHECKSUM, checksum.to_string());
        Stamp {
            producer,
            seq,
            sent,
            checksum,
        }
    }

    /// Reads the stamp of a received message and whether its payload still matches.
    /// `None`: not a workload message (or its stamp headers were damaged).
    pub fn read(msg: &Message) -> Option<(Stamp, bool)> {
        let h = msg.headers();
        let stamp = Stamp {
            producer: h.get(header::PRODUCER)?.parse().ok()?,
            seq: h.get(header::SEQUENCE)?.parse().ok()?,
            sent: Timestamp(h.get(header::SENT)?.parse().ok()?),
            checksum: h.get(header::CHECKSUM)?.parse().ok()?,
        };
        let intact = crc32c::crc32c(msg.payload()) == stamp.checksum;
        Some((stamp, intact))
    }
}

/// Identifies a message across the run.
pub type MsgKey = (u32, u64);

/// One thing that happened during a run, in time order per recorder.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A phase began.
    Phase {
        /// Name.
        name: String,
        /// When.
        at: Timestamp,
    },
    /// A fault was injected (`end: None`) or healed.
    Fault {
        /// Name.
        name: String,
        /// When it started.
        start: Timestamp,
        /// When it was healed.
        end: Option<Timestamp>,
    },
    /// A producer handed a message to the backend (first attempt).
    Sent {
        /// The message (its `sent` is the intended send time, from which latency counts).
        stamp: Stamp,
        /// When it was actually handed over (which phase it belongs to; faults act from here).
        at: Timestamp,
        /// Its key.
        key: Option<String>,
        /// Delay asked for, if any.
        delay: Option<Duration>,
    },
    /// The backend confirmed it.
    Confirmed {
        /// Which.
        msg: MsgKey,
        /// When.
        at: Timestamp,
        /// Stream sequence.
        stream_seq: u64,
        /// The backend said it was a duplicate.
        duplicate: bool,
    },
    /// The producer gave up on it (after its retries).
    Failed {
        /// Which.
        msg: MsgKey,
        /// When.
        at: Timestamp,
        /// Last error.
        error: String,
    },
    /// A consumer received it.
    Received {
        /// Which.
        msg: MsgKey,
        /// Consumer id.
        consumer: u32,
        /// Group.
        group: String,
        /// When.
        at: Timestamp,
        /// Attempt number.
        attempt: u32,
        /// Stream sequence.
        stream_seq: u64,
        /// When the backend stored it.
        published_at: Timestamp,
        /// Lease deadline.
        deadline: Timestamp,
        /// Payload matched its checksum.
        intact: bool,
    },
    /// A consumer's ack was accepted (`ok`) or refused.
    Acked {
        /// Which.
        msg: MsgKey,
        /// Consumer id.
        consumer: u32,
        /// Group.
        group: String,
        /// When.
        at: Timestamp,
        /// Stream sequence acked.
        stream_seq: u64,
        /// Accepted.
        ok: bool,
    },
    /// A consumer rejected a poison message; `ok`: the backend accepted the reject (the message
    /// must now be dead-lettered).
    Rejected {
        /// Which.
        msg: MsgKey,
        /// Consumer id.
        consumer: u32,
        /// Group.
        group: String,
        /// When.
        at: Timestamp,
        /// Stream sequence rejected.
        stream_seq: u64,
        /// Accepted.
        ok: bool,
    },
    /// The dead-letter observer saw a dead letter of a workload message.
    DeadLettered {
        /// The original message.
        msg: MsgKey,
        /// The group that gave up on it (from the envelope).
        group: String,
        /// `rejected` or `max_deliveries`.
        reason: String,
        /// When it was observed.
        at: Timestamp,
        /// The original's stream sequence.
        origin_seq: u64,
        /// The dead letter's own stream sequence (a redelivery to the observer has the same).
        dlq_seq: u64,
    },
    /// A consumer received something that is not a workload message (corrupted stamp).
    Unreadable {
        /// Consumer id.
        consumer: u32,
        /// When.
        at: Timestamp,
    },
}

/// Counts per phase (by the phase in which a message was first sent).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhaseCounts {
    /// Phase name.
    pub name: String,
    /// Sent.
    pub sent: u64,
    /// Confirmed.
    pub confirmed: u64,
    /// Failed at the producer.
    pub failed: u64,
    /// Delivered to every group at least once (or dead-lettered by it).
    pub delivered: u64,
    /// Confirmed and never delivered.
    pub lost: u64,
    /// `delivered / sent` (1 when nothing was sent).
    pub delivered_fraction: f64,
    /// First deliveries (to each group) that happened during the phase, whenever their message
    /// was sent.
    pub received: u64,
    /// 99th percentile end-to-end latency of the messages sent in the phase, ms.
    pub p99_ms: f64,
}

/// One second of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Bucket {
    /// Seconds since the start.
    pub t: u64,
    /// Messages sent.
    pub sent: u64,
    /// Confirms.
    pub confirmed: u64,
    /// First deliveries.
    pub delivered: u64,
    /// Producer failures.
    pub errors: u64,
    /// Confirmed but not yet delivered, at the end of the second.
    pub lag: u64,
    /// 99th percentile end-to-end latency of deliveries in this second, ms.
    pub p99_ms: f64,
}

/// Recovery after one fault window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recovery {
    /// The fault window.
    pub fault: String,
    /// When it began, seconds since the start.
    pub started_at_s: f64,
    /// When it was healed, seconds since the start (`None`: still active at the end).
    pub healed_at_s: Option<f64>,
    /// Time from healing until throughput and lag were back to baseline; `None`: not measured
    /// (see `note`) or never recovered.
    pub recovery: Option<Duration>,
    /// Why there is no recovery time, when there is a reason other than "never recovered":
    /// the window was never healed, or another fault window took over as it ended (the
    /// recovery is then measured after that one).
    pub note: Option<String>,
}

impl Recovery {
    /// Whether this window counts for the recovery criterion: healed, and not followed by
    /// another fault.
    pub fn judged(&self) -> bool {
        self.healed_at_s.is_some() && self.note.is_none()
    }
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th.
    pub p90_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// 99.9th.
    pub p999_ms: f64,
    /// Max.
    pub max_ms: f64,
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Findings {
    /// Messages sent.
    pub sent: u64,
    /// Confirmed.
    pub confirmed: u64,
    /// Failed at the producer.
    pub failed: u64,
    /// Confirmed and never delivered (to at least one group).
    pub lost: u64,
    /// A sample of lost messages (producer, sequence).
    pub lost_sample: Vec<MsgKey>,
    /// Delivered although not confirmed.
    pub unconfirmed_delivered: u64,
    /// Deliveries in total.
    pub deliveries: u64,
    /// Redeliveries before any ack (lease expiry, nack): expected under faults.
    pub redeliveries: u64,
    /// Deliveries of a message its group had already acked, or of one delivery (same attempt)
    /// twice: what an idempotent consumer absorbs.
    pub duplicates: u64,
    /// Of which the same stored copy redelivered after its ack was accepted.
    pub redelivered_after_ack: u64,
    /// Of which a second stored copy (different stream sequence).
    pub stored_twice: u64,
    /// Of which the same delivery (same stored copy and attempt) handed over twice before it
    /// was acked.
    pub delivered_twice: u64,
    /// First deliveries out of order per group, producer and key.
    pub reorders: u64,
    /// A sample of reorders: (producer, sequence delivered, newer sequence delivered before it,
    /// seconds since the start).
    pub reorder_sample: Vec<(u32, u64, u64, f64)>,
    /// Payload checksum mismatches (and unreadable stamps).
    pub corrupt: u64,
    /// Two consumers holding one message at once.
    pub two_holders: u64,
    /// Delayed messages delivered early.
    pub delay_early: u64,
    /// Acks refused by the backend.
    pub acks_refused: u64,
    /// Sent, but neither confirmed nor given up by the producer.
    pub unaccounted: u64,
    /// Distinct (group, message) rejects the backend accepted.
    pub rejected: u64,
    /// Distinct (group, message) pairs found in the dead-letter queue.
    pub dead_lettered: u64,
    /// Expected in the dead-letter queue (rejected, or last allowed delivery unsettled) and
    /// never seen there.
    pub dlq_missing: u64,
    /// Extra stored copies in the dead-letter queue (beyond one per group and message).
    pub dlq_duplicates: u64,
    /// A sample of dead-letter misses: (group, producer, sequence).
    pub dlq_missing_sample: Vec<(String, u32, u64)>,
    /// Per phase.
    pub phases: Vec<PhaseCounts>,
    /// Per second.
    pub timeline: Vec<Bucket>,
    /// After each healed fault.
    pub recoveries: Vec<Recovery>,
    /// Intended send → first delivery.
    pub end_to_end: Latency,
    /// Intended send → confirm.
    pub publish: Latency,
}

mod analyze;
mod recovery;

pub use analyze::{check, check_with};

#[cfg(test)]
mod tests;
