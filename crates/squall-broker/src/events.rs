//! Events the broker reports about itself: slow consumers, lease expiries, dead letters, drops.
//!
//! Subscribe with [`crate::Broker::events`]. The channel is bounded; a receiver that falls behind
//! loses the oldest events and learns how many from `RecvError::Lagged`.

use squall_core::DeadLetterReason;

/// Something an operator may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerEvent {
    /// A lease expired before the holder settled it: the consumer is slower than `ack_wait`.
    LeaseExpired {
        /// Stream.
        stream: String,
        /// Group (or private consumer) name.
        group: String,
        /// Message sequence.
        sequence: u64,
        /// Deliveries so far.
        attempts: u32,
    },
    /// A message went to its dead-letter subject.
    DeadLettered {
        /// Stream.
        stream: String,
        /// Group.
        group: String,
        /// Message sequence.
        sequence: u64,
        /// Why.
        reason: DeadLetterReason,
    },
    /// A group's lag crossed the configured threshold.
    SlowConsumer {
        /// Stream.
        stream: String,
        /// Group.
        group: String,
        /// Messages not yet settled.
        lag: u64,
    },
    /// Messages were removed by limits before every consumer had them.
    RetentionDropped {
        /// Stream.
        stream: String,
        /// How many.
        count: u64,
    },
}
