//! The case list, the features each case needs, and the context a case runs with.
//!
//! The list lives once, in [`__squall_cases!`](crate::__squall_cases): it generates the [`Case`]
//! enum, [`cases()`], the dispatch, and (through [`conformance_tests!`](crate::conformance_tests))
//! one test function per case in the adapter's test crate.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use squall_core::{
    Backend, Capabilities, Consumer, Message, PublishAck, Subject, Subscription, Support,
};

use crate::harness::{Harness, Timing};
use crate::helpers::{Must, Rng, unique_tag};

/// A backend feature a case needs, named as in [`Capabilities::table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// [`Capabilities::persistence`]
    Persistence,
    /// [`Capabilities::groups`]
    Groups,
    /// [`Capabilities::durable_groups`]
    DurableGroups,
    /// [`Capabilities::redelivery`]
    Redelivery,
    /// [`Capabilities::nack_delay`]
    NackDelay,
    /// [`Capabilities::lease_extend`]
    LeaseExtend,
    /// [`Capabilities::dead_letter`]
    DeadLetter,
    /// [`Capabilities::delayed_delivery`]
    DelayedDelivery,
    /// [`Capabilities::ttl`]
    Ttl,
    /// [`Capabilities::dedup`]
    Dedup,
    /// [`Capabilities::key_ordering`]
    KeyOrdering,
    /// [`Capabilities::ordered`]
    Ordered,
    /// [`Capabilities::replay_by_sequence`]
    ReplayBySequence,
    /// [`Capabilities::replay_by_time`]
    ReplayByTime,
    /// [`Capabilities::request_reply`]
    RequestReply,
    /// [`Capabilities::wildcards`]
    Wildcards,
    /// [`Capabilities::headers`]
    Headers,
}

impl Feature {
    /// Every feature.
    pub const ALL: [Feature; 17] = [
        Feature::Persistence,
        Feature::Groups,
        Feature::DurableGroups,
        Feature::Redelivery,
        Feature::NackDelay,
        Feature::LeaseExtend,
        Feature::DeadLetter,
        Feature::DelayedDelivery,
        Feature::Ttl,
        Feature::Dedup,
        Feature::KeyOrdering,
        Feature::Ordered,
        Feature::ReplayBySequence,
        Feature::ReplayByTime,
        Feature::RequestReply,
        Feature::Wildcards,
        Feature::Headers,
    ];

    /// The name used by [`Capabilities::table`].
    pub fn name(self) -> &'static str {
        match self {
            Feature::Persistence => "persistence",
            Feature::Groups => "groups",
            Feature::DurableGroups => "durable_groups",
            Feature::Redelivery => "redelivery",
            Feature::NackDelay => "nack_delay",
            Feature::LeaseExtend => "lease_extend",
            Feature::DeadLetter => "dead_letter",
            Feature::DelayedDelivery => "delayed_delivery",
            Feature::Ttl => "ttl",
            Feature::Dedup => "dedup",
            Feature::KeyOrdering => "key_ordering",
            Feature::Ordered => "ordered",
            Feature::ReplayBySequence => "replay_by_sequence",
            Feature::ReplayByTime => "replay_by_time",
            Feature::RequestReply => "request_reply",
            Feature::Wildcards => "wildcards",
            Feature::Headers => "headers",
        }
    }

    /// How `caps` provides this feature.
    pub fn support(self, caps: &Capabilities) -> Support {
        match self {
            Feature::Persistence => caps.persistence,
            Feature::Groups => caps.groups,
            Feature::DurableGroups => caps.durable_groups,
            Feature::Redelivery => caps.redelivery,
            Feature::NackDelay => caps.nack_delay,
            Feature::LeaseExtend => caps.lease_extend,
            Feature::DeadLetter => caps.dead_letter,
            Feature::DelayedDelivery => caps.delayed_delivery,
            Feature::Ttl => caps.ttl,
            Feature::Dedup => caps.dedup,
            Feature::KeyOrdering => caps.key_ordering,
            Feature::Ordered => caps.ordered,
            Feature::ReplayBySequence => caps.replay_by_sequence,
            Feature::ReplayByTime => caps.replay_by_time,
            Feature::RequestReply => caps.request_reply,
            Feature::Wildcards => caps.wildcards,
            Feature::Headers => caps.headers,
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one case is: its name (the test function's), what it checks, the features it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaseInfo {
    /// The case (and its test function's name).
    pub name: &'static str,
    /// The theme module it belongs to (`pubsub`, `groups`...).
    pub theme: &'static str,
    /// What it checks, in one sentence.
    pub checks: &'static str,
    /// Features that must be available (native or emulated) for the case to run.
    pub requires: &'static [Feature],
}

impl CaseInfo {
    /// The required features `caps` lacks; empty when the case applies.
    pub fn missing(&self, caps: &Capabilities) -> Vec<Feature> {
        self.requires
            .iter()
            .copied()
            .filter(|f| !f.support(caps).available())
            .collect()
    }

    /// Whether the case runs against a backend with `caps`.
    pub fn applies(&self, caps: &Capabilities) -> bool {
        self.missing(caps).is_empty()
    }
}

/// Generates the [`Case`] enum, its table and its dispatch from the list in `__squall_cases!`.
macro_rules! define_cases {
    (() $({ $variant:ident, $fname:ident, $theme:ident, $checks:literal, [$($feature:ident),*] })*) => {
        /// One conformance case; see [`cases()`] for what each checks.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Case {
            $(
                #[doc = $checks]
                $variant,
            )*
        }

        static CASES: &[CaseInfo] = &[
            $(CaseInfo {
                name: stringify!($fname),
                theme: stringify!($theme),
                checks: $checks,
                requires: &[$(Feature::$feature),*],
            },)*
        ];

        impl Case {
            /// Every case, in suite order.
            pub const ALL: &'static [Case] = &[$(Case::$variant),*];

            /// What the case is.
            pub fn info(self) -> &'static CaseInfo {
                &CASES[self as usize]
            }

            pub(crate) async fn run(self, t: &Ctx<'_>) {
                match self {
                    $(Case::$variant => crate::$theme::$fname(t).await,)*
                }
            }
        }
    };
}

crate::__squall_cases!([define_cases]);

/// Every case of the suite: name, what it checks, required features.
pub fn cases() -> &'static [CaseInfo] {
    CASES
}

/// What a running case has at hand.
pub(crate) struct Ctx<'a> {
    pub harness: &'a dyn Harness,
    pub backend: Arc<dyn Backend>,
    pub caps: Capabilities,
    pub timing: Timing,
    /// `t.<case>.<tag>`: every subject of the case starts with it.
    pub prefix: String,
    /// The random part of the prefix, also used in ids and group names.
    pub tag: String,
    pub case: &'static str,
    pub seed: u64,
}

impl<'a> Ctx<'a> {
    pub(crate) async fn new(harness: &'a dyn Harness, case: Case) -> Ctx<'a> {
        let name = case.info().name;
        let tag = unique_tag();
        let seed = std::env::var("SQUALL_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| u64::from_str_radix(&tag, 16).unwrap_or(1));
        let timing = harness.timing();
        if let Err(e) = timing.check() {
            panic!("harness {} has unusable timing: {e}", harness.name());
        }
        let backend = harness
            .backend()
            .await
            .must(&format!("harness {}: connecting", harness.name()));
        Ctx {
            harness,
            caps: harness.capabilities(),
            backend,
            timing,
            prefix: format!("t.{name}.{tag}"),
            tag,
            case: name,
            seed,
        }
    }

    /// `<prefix>.<suffix>`.
    pub fn subject(&self, suffix: &str) -> Subject {
        Subject::new(format!("{}.{suffix}", self.prefix)).must("building a test subject")
    }

    /// A fan-out subscription to `<prefix>.<suffix>` (a pattern) with a lease no case outlasts.
    pub fn sub(&self, suffix: &str) -> Subscription {
        Subscription::new(format!("{}.{suffix}", self.prefix))
            .must("building a subscription")
            .ack_wait(self.timing.long_ack_wait())
    }

    /// Like [`Ctx::sub`], in group `<name>-<tag>`.
    pub fn group_sub(&self, suffix: &str, group: &str) -> Subscription {
        self.sub(suffix)
            .group(self.group(group))
            .must("building a group subscription")
    }

    /// A group name unique to this run.
    pub fn group(&self, name: &str) -> String {
        format!("{name}-{}", self.tag)
    }

    /// A message id unique to this run: `<tag>-<label>-<i>`.
    pub fn id(&self, label: &str, i: usize) -> String {
        format!("{}-{label}-{i}", self.tag)
    }

    /// A message to `<prefix>.<suffix>` with id [`Ctx::id`] and payload `<label>-<i>`.
    pub fn message(&self, suffix: &str, label: &str, i: usize) -> Message {
        Message::builder(self.subject(suffix).as_str())
            .must("building a message")
            .id(self.id(label, i))
            .must("setting a message id")
            .payload(format!("{label}-{i}"))
            .build()
    }

    /// Publishes and waits for the confirm.
    pub async fn publish(&self, msg: Message) -> PublishAck {
        let what = format!("publishing {} to `{}`", msg.id(), msg.subject());
        self.backend.publish(msg).await.must(&what)
    }

    /// Publishes `n` messages [`Ctx::message`]`(suffix, label, 0..n)` one after another; returns
    /// their ids.
    pub async fn publish_n(&self, suffix: &str, label: &str, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let m = self.message(suffix, label, i);
            ids.push(m.id().to_string());
            self.publish(m).await;
        }
        ids
    }

    /// Subscribes through the case's backend.
    pub async fn subscribe(&self, sub: Subscription) -> Box<dyn Consumer> {
        let what = format!("subscribing to `{}` (group {:?})", sub.pattern, sub.group);
        self.backend.subscribe(sub).await.must(&what)
    }

    /// A generator for this case; `stream` separates independent users of randomness.
    pub fn rng(&self, stream: u64) -> Rng {
        Rng::new(self.seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// The longest a case may run before it is failed as hung.
    pub fn budget(&self) -> Duration {
        let t = &self.timing;
        (t.ack_wait + t.receive) * 20 + t.quiet * 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_core::Durability;
    use std::collections::HashSet;

    #[test]
    fn the_suite_has_at_least_thirty_uniquely_named_cases() {
        assert!(cases().len() >= 30, "only {} cases", cases().len());
        let names: HashSet<&str> = cases().iter().map(|c| c.name).collect();
        assert_eq!(names.len(), cases().len(), "duplicate case names");
        assert_eq!(Case::ALL.len(), cases().len());
        for (i, c) in Case::ALL.iter().enumerate() {
            assert_eq!(c.info(), &cases()[i], "table order follows the enum");
        }
    }

    #[test]
    fn feature_names_match_the_capability_table() {
        let caps = Capabilities::all_native(1024, Durability::Memory);
        let table: Vec<&str> = caps.table().iter().map(|(n, _)| *n).collect();
        let ours: Vec<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(ours, table);
    }

    #[test]
    fn a_missing_feature_makes_a_case_inapplicable() {
        let mut caps = Capabilities::all_native(1024, Durability::Memory);
        assert!(cases().iter().all(|c| c.applies(&caps)));
        caps.groups = Support::Missing;
        caps.dedup = Support::Emulated;
        let groups = cases()
            .iter()
            .find(|c| c.name == "consumer_groups")
            .expect("case");
        assert_eq!(groups.missing(&caps), vec![Feature::Groups]);
        let dedup = cases()
            .iter()
            .find(|c| c.name == "dedup_window")
            .expect("case");
        assert!(dedup.applies(&caps), "emulated features count as available");
        let skipped = cases().iter().filter(|c| !c.applies(&caps)).count();
        assert!(skipped > 0 && skipped < cases().len());
    }
}
