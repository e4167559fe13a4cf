//! What a backend can do, declared honestly: natively, emulated by squall (and labelled), or not at
//! all. A missing feature is refused with [`crate::ErrorKind::Unsupported`], never silently ignored.

use serde::{Deserialize, Serialize};

use crate::publish::Durability;

/// How a backend provides a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Support {
    /// The broker does it.
    Native,
    /// squall does it on top of the broker; the docs of the backend say how and at what cost.
    Emulated,
    /// Refused with [`crate::ErrorKind::Unsupported`].
    Missing,
}

impl Support {
    /// Native or emulated.
    pub fn available(self) -> bool {
        self != Support::Missing
    }
}

/// The features of one backend. The conformance suite runs the tests each feature enables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages survive a restart of the broker.
    pub persistence: Support,
    /// Competing consumers.
    pub groups: Support,
    /// Groups keep their position with no members and across restarts.
    pub durable_groups: Support,
    /// Unacked deliveries are redelivered (at-least-once). Missing: at-most-once.
    pub redelivery: Support,
    /// Nack with a delay.
    pub nack_delay: Support,
    /// Extending a lease.
    pub lease_extend: Support,
    /// Max deliveries and reject go to a dead-letter subject with an envelope.
    pub dead_letter: Support,
    /// Delayed delivery.
    pub delayed_delivery: Support,
    /// Per-message time to live.
    pub ttl: Support,
    /// Duplicate publishes of one id within a window are stored once.
    pub dedup: Support,
    /// Per-key ordering within a group.
    pub key_ordering: Support,
    /// Messages arrive in publish order for one subscriber without a group.
    pub ordered: Support,
    /// Start from a sequence.
    pub replay_by_sequence: Support,
    /// Start from a time.
    pub replay_by_time: Support,
    /// Request-reply.
    pub request_reply: Support,
    /// `*` and `>` patterns.
    pub wildcards: Support,
    /// Message headers.
    pub headers: Support,
    /// Largest payload accepted, in bytes.
    pub max_payload: usize,
    /// Best durability a publish can reach.
    pub max_durability: Durability,
}

impl Capabilities {
    /// Everything native (the embedded broker).
    pub fn all_native(max_payload: usize, max_durability: Durability) -> Self {
        use Support::Native as N;
        Capabilities {
            persistence: N,
            groups: N,
            durable_groups: N,
            redelivery: N,
            nack_delay: N,
            lease_extend: N,
            dead_letter: N,
            delayed_delivery: N,
            ttl: N,
            dedup: N,
            key_ordering: N,
            ordered: N,
            replay_by_sequence: N,
            replay_by_time: N,
            request_reply: N,
            wildcards: N,
            headers: N,
            max_payload,
            max_durability,
        }
    }

    /// Every feature with its support level, for tables and reports.
    pub fn table(&self) -> Vec<(&'static str, Support)> {
        vec![
            ("persistence", self.persistence),
            ("groups", self.groups),
            ("durable_groups", self.durable_groups),
            ("redelivery", self.redelivery),
            ("nack_delay", self.nack_delay),
            ("lease_extend", self.lease_extend),
            ("dead_letter", self.dead_letter),
            ("delayed_delivery", self.delayed_delivery),
            ("ttl", self.ttl),
            ("dedup", self.dedup),
            ("key_ordering", self.key_ordering),
            ("ordered", self.ordered),
            ("replay_by_sequence", self.replay_by_sequence),
            ("replay_by_time", self.replay_by_time),
            ("request_reply", self.request_reply),
            ("wildcards", self.wildcards),
            ("headers", self.headers),
        ]
    }
}
