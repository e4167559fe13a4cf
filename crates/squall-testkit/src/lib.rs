//! # squall-testkit
//!
//! The conformance suite every squall backend runs: the embedded broker, the `squall serve`
//! client and the NATS, RabbitMQ, Kafka and SQS adapters. One list of cases, each declaring the
//! [`Capabilities`](squall_core::Capabilities) features it needs; a backend runs the cases its
//! capabilities allow and prints `SKIP <case>: <reason>` for the others. Like Watermill's
//! universal pub/sub tests, but duplicates are counted (see [`Tally`]) instead of de-duplicated
//! away, and every wait goes through `tokio::time`, so the suite runs under tokio's paused clock
//! (30 s leases in microseconds) as well as against a real broker.
//!
//! It is not a benchmark or a chaos test: it checks the contract of `squall-core`, one behaviour
//! per case, with failure messages that say what was expected and what arrived.
//!
//! | module | what it holds |
//! |---|---|
//! | [`harness`] | [`Harness`]: how the suite gets a backend, restarts it, and how long to wait ([`Timing`]) |
//! | [`case`] | [`Case`], [`CaseInfo`], [`cases()`], the [`Feature`]s a case needs |
//! | [`helpers`] | [`unique_prefix`], [`collect`], [`recv`], [`expect_quiet`], [`Tally`], [`consume_all`] |
//! | [`peers`] | tests against real brokers: [`peer_url`] (skip or fail when unset), [`with_options`], [`eventually`], [`PeerHarness`] |
//! | [`tansu`] | a Kafka-protocol broker of a test's own: [`tansu::tansu_bin`], [`tansu::Tansu`] |
//! | `pubsub` | publish/subscribe, fan-out, topic isolation, wildcards, ordering, close, cancel, batches |
//! | `groups` | consumer groups, subscriber close and concurrent close, flow control, durable groups |
//! | `leases` | nack, lease expiry, extend, late acks, one holder at a time |
//! | `dead_letters` | max deliveries, reject, the envelope, redrive, custom dead-letter subjects |
//! | `delivery_options` | delay, nack delay, time to live, deduplication, per-key order |
//! | `replay` | start positions: first, new, sequence, time; a group's default start |
//! | `request_reply` | request-reply, timeouts, concurrent requests |
//! | `limits` | header and payload limits, invalid subjects, patterns and policies, honest capabilities |
//!
//! ## Running the suite for a backend
//!
//! Implement [`Harness`] in the backend's test crate and expand [`conformance_tests!`] there: it
//! writes one `#[tokio::test]` per case plus `suite_summary`. The test crate needs `tokio` with the
//! `macros` and `rt` features, and `test-util` for `paused` (or `rt-multi-thread` for `real`).
//!
//! ```ignore
//! use std::sync::Arc;
//! use squall_core::{Backend, Capabilities, Result};
//! use squall_testkit::{Harness, Timing};
//!
//! struct NatsHarness { url: String }
//!
//! #[async_trait::async_trait]
//! impl Harness for NatsHarness {
//!     fn name(&self) -> String { "nats".into() }
//!     fn capabilities(&self) -> Capabilities { squall_nats::capabilities() }
//!     async fn backend(&self) -> Result<Arc<dyn Backend>> {
//!         Ok(Arc::new(squall_nats::connect(&self.url).await?))
//!     }
//!     async fn restart(&self) -> Result<Option<Arc<dyn Backend>>> { Ok(None) }
//!     fn timing(&self) -> Timing { Timing::real() }
//! }
//!
//! squall_testkit::conformance_tests!(real, || NatsHarness { url: "nats://127.0.0.1:4222".into() });
//! ```
//!
//! A single case can also be run by hand with [`run_case`].

pub mod case;
pub mod harness;
pub mod helpers;
pub mod peers;
pub mod tansu;

mod dead_letters;
mod delivery_options;
mod groups;
mod leases;
mod limits;
mod pubsub;
mod replay;
mod request_reply;

pub use case::{Case, CaseInfo, Feature, cases};
pub use harness::{Harness, Timing};
pub use helpers::{
    Must, Rng, Seen, Tally, collect, consume_all, expect_err, expect_quiet, join, recv,
    unique_prefix,
};
pub use peers::{
    PeerHarness, PeerScope, eventually, eventually_async, peer_url, peers_required, with_options,
};

use case::Ctx;

/// Runs one case against `harness`: prints `SKIP <case>: <reason>` and returns if the harness's
/// capabilities lack a feature the case needs, and panics with a message naming the case, the
/// backend and what went wrong if the case fails or outlasts its time budget.
pub async fn run_case<H: Harness>(harness: &H, case: Case) {
    let info = case.info();
    let caps = harness.capabilities();
    let missing = info.missing(&caps);
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|f| f.name()).collect();
        println!(
            "SKIP {}: {} lacks {}",
            info.name,
            harness.name(),
            names.join(", ")
        );
        return;
    }
    let ctx = Ctx::new(harness, case).await;
    println!(
        "CASE {} on {} (prefix {}, seed {}; replay with SQUALL_TEST_SEED={}): {}",
        info.name,
        harness.name(),
        ctx.prefix,
        ctx.seed,
        ctx.seed,
        info.checks
    );
    let budget = ctx.budget();
    if tokio::time::timeout(budget, case.run(&ctx)).await.is_err() {
        panic!(
            "conformance case `{}` on {} did not finish within {budget:?}: a wait is hung",
            info.name,
            harness.name()
        );
    }
}

/// Prints `conformance <harness>: N cases (K applicable)` and checks the suite's size.
pub fn summary<H: Harness>(harness: &H) {
    let caps = harness.capabilities();
    let applicable = cases().iter().filter(|c| c.applies(&caps)).count();
    println!(
        "conformance {}: {} cases ({applicable} applicable)",
        harness.name(),
        cases().len()
    );
    for c in cases().iter().filter(|c| !c.applies(&caps)) {
        let names: Vec<&str> = c.missing(&caps).iter().map(|f| f.name()).collect();
        println!("  skipped {}: needs {}", c.name, names.join(", "));
    }
    assert!(cases().len() >= 30, "the suite must have at least 30 cases");
}

/// Expands to one `#[tokio::test]` per conformance case (named after the case) plus
/// `suite_summary`, each building its own harness with the closure (written `|| expr`, or any
/// expression of a closure or function returning the harness).
///
/// - `conformance_tests!(paused, || harness)`: `#[tokio::test(start_paused = true)]`, for backends
///   whose clock follows tokio's (the embedded broker);
/// - `conformance_tests!(real, || harness)`: `#[tokio::test(flavor = "multi_thread",
///   worker_threads = 2)]`, for real brokers.
///
/// See the [crate documentation](crate) for an example.
#[macro_export]
macro_rules! conformance_tests {
    (paused, || $body:expr $(,)?) => {
        $crate::__squall_cases!([$crate::__conformance_fns] (start_paused = true) $body);
    };
    (real, || $body:expr $(,)?) => {
        $crate::__squall_cases!(
            [$crate::__conformance_fns]
            (flavor = "multi_thread", worker_threads = 2)
            $body
        );
    };
    (paused, $make:expr $(,)?) => {
        $crate::__squall_cases!([$crate::__conformance_fns] (start_paused = true) ($make)());
    };
    (real, $make:expr $(,)?) => {
        $crate::__squall_cases!(
            [$crate::__conformance_fns]
            (flavor = "multi_thread", worker_threads = 2)
            ($make)()
        );
    };
}

/// Writes the test functions for [`conformance_tests!`]; not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_fns {
    (($attr:tt $harness:expr) $({ $variant:ident, $fname:ident, $theme:ident, $checks:literal, [$($feature:ident),*] })*) => {
        $(
            #[doc = $checks]
            #[::tokio::test $attr]
            async fn $fname() {
                let harness = $harness;
                $crate::run_case(&harness, $crate::Case::$variant).await;
            }
        )*

        /// Prints how many cases the suite has and how many apply to this backend.
        #[::tokio::test $attr]
        async fn suite_summary() {
            let harness = $harness;
            $crate::summary(&harness);
        }
    };
}

/// The case list: `{ Variant, function, theme module, "what it checks", [features] }`. Calls
/// `callback!{ (args) list }`; the single source of [`Case`], [`cases()`] and the generated
/// tests. Not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __squall_cases {
    ([$($callback:tt)*] $($args:tt)*) => {
        $($callback)*! {
            ($($args)*)
            // pubsub
            { CapabilitiesConsistent, capabilities_consistent, limits, "The harness and the backend declare the same capabilities, and every missing feature is refused with Unsupported.", [] }
            { PublishSubscribe, publish_subscribe, pubsub, "Every published message arrives once with id, subject, key, headers and payload intact.", [] }
            { ConcurrentSubscribe, concurrent_subscribe, pubsub, "Subscriptions opened concurrently each receive every message published concurrently.", [] }
            { ManyTopics, many_topics, pubsub, "20 topics: each subscriber gets exactly its own topic's messages.", [] }
            { TopicIsolation, topic_isolation, pubsub, "A literal subscription receives neither sibling, longer nor prefix-sharing subjects.", [] }
            { WildcardMatching, wildcard_matching, pubsub, "`*` matches exactly one token and `>` one or more.", [Wildcards] }
            { FanOut, fan_out, pubsub, "Three subscribers without a group each receive every message once.", [] }
            { OrderedDelivery, ordered_delivery, pubsub, "A single subscriber receives messages in publish order.", [Ordered] }
            { PublishAckDurability, publish_ack_durability, pubsub, "Publish acks claim no more durability than the backend declares and are not duplicates.", [] }
            { PublisherCloseFlushes, publisher_close_flushes, pubsub, "Messages sent before a publisher closes are confirmed and delivered; sends after close fail with Closed.", [] }
            { SubscribeCancel, subscribe_cancel, pubsub, "Dropping a pending next() future loses no message.", [] }
            { NextBatchUpToMax, next_batch_up_to_max, pubsub, "next_batch returns between 1 and max deliveries and, batch after batch, every message once.", [] }
            // groups
            { ConsumerGroups, consumer_groups, groups, "Two groups each get every message; within a group each message is acked once.", [Groups] }
            { ContinueAfterSubscriberClose, continue_after_subscriber_close, groups, "Messages a closed member held go to the next member at once; its late acks are refused.", [Groups, Redelivery] }
            { ConcurrentClose, concurrent_close, groups, "Many members closing concurrently lose nothing: a new member receives every unacked message.", [Groups, Redelivery] }
            { NoAckNoNext, no_ack_no_next, groups, "With max_in_flight = 1 nothing more arrives until the delivery is acked.", [Redelivery] }
            { DurableGroupKeepsPosition, durable_group_keeps_position, groups, "A durable group without members keeps its position: acked messages are not redelivered.", [Groups, DurableGroups] }
            { DurableGroupSurvivesRestart, durable_group_survives_restart, groups, "After a restart keeping storage a durable group redelivers exactly the unacked messages.", [Groups, DurableGroups] }
            // leases
            { ResendOnNack, resend_on_nack, leases, "A nacked message is redelivered with the same id and the next attempt number.", [Redelivery] }
            { ContinueAfterErrors, continue_after_errors, leases, "Messages nacked several times are then acked and the stream keeps flowing.", [Redelivery] }
            { LeaseExpiryRedelivers, lease_expiry_redelivers, leases, "An unacked delivery is redelivered after ack_wait, not before, as attempt 2.", [Redelivery] }
            { ExtendPreventsRedelivery, extend_prevents_redelivery, leases, "An extended lease is not redelivered past its original deadline and can still be acked.", [Redelivery, LeaseExtend] }
            { AckAfterExpiryRefused, ack_after_expiry_refused, leases, "Acking, nacking or extending after the lease expired fails with LeaseExpired.", [Redelivery] }
            { NoTwoHolders, no_two_holders, leases, "Two members never hold one message at once: a redelivery happens only after the previous lease ended.", [Groups, Redelivery] }
            // dead letters
            { MaxDeliveriesDeadLetter, max_deliveries_dead_letter, dead_letters, "After max_deliveries nacks the message goes to the dead-letter subject with a complete envelope.", [Groups, Redelivery, DeadLetter] }
            { DeadLetterAfterLeaseExpiries, dead_letter_after_lease_expiries, dead_letters, "Lease expiries count towards max_deliveries and end in a dead letter.", [Groups, Redelivery, DeadLetter] }
            { RejectDeadLetters, reject_dead_letters, dead_letters, "A rejected message is dead-lettered at once with the reason, never redelivered.", [Groups, DeadLetter] }
            { DeadLetterRedrive, dead_letter_redrive, dead_letters, "A redriven dead letter is delivered again on its origin subject.", [Groups, DeadLetter] }
            { DeadLetterCustomSubject, dead_letter_custom_subject, dead_letters, "A policy's dead-letter subject is where dead letters go.", [Groups, DeadLetter] }
            // delivery options
            { DelayNotEarly, delay_not_early, delivery_options, "A delayed message is not delivered before its delay and is delivered after.", [DelayedDelivery] }
            { NackDelay, nack_delay, delivery_options, "A nack with a delay is not redelivered before the delay.", [Redelivery, NackDelay] }
            { TtlExpiry, ttl_expiry, delivery_options, "A message whose time to live passed while it waited is never delivered; others are.", [Ttl, Redelivery] }
            { DedupWindow, dedup_window, delivery_options, "Publishing one id twice stores it once: the second ack is a duplicate with the same sequence.", [Dedup] }
            { KeyOrderUnderConcurrency, key_order_under_concurrency, delivery_options, "With ordered_by_key, 4 members process each key's messages strictly in order.", [Groups, KeyOrdering] }
            // replay
            { NewSubscriberReceivesOld, new_subscriber_receives_old, replay, "StartPosition::First delivers messages published before subscribing.", [ReplayBySequence] }
            { StartNewSkipsOld, start_new_skips_old, replay, "StartPosition::New delivers only messages published after subscribing.", [] }
            { ReplayBySequence, replay_by_sequence, replay, "StartPosition::Sequence starts exactly at that sequence.", [ReplayBySequence] }
            { ReplayByTime, replay_by_time, replay, "StartPosition::Time starts at the first message stored at or after that time.", [ReplayByTime] }
            { GroupDefaultStartsFirst, group_default_starts_first, replay, "A group without a start position starts from the first message.", [Groups, ReplayBySequence] }
            // request-reply
            { RequestReply, request_reply, request_reply, "A request gets its reply, and the correlation id travels with both.", [RequestReply] }
            { RequestTimeout, request_timeout, request_reply, "A request nobody answers fails with Timeout or NoResponders in time.", [RequestReply] }
            { ConcurrentRequests, concurrent_requests, request_reply, "Concurrent requests each get their own reply.", [RequestReply] }
            // limits
            { OversizedHeaderRejected, oversized_header_rejected, limits, "Oversized or malformed headers are refused client-side with InvalidMessage; large valid ones round-trip.", [] }
            { PayloadLimit, payload_limit, limits, "A payload over max_payload is refused with InvalidMessage; one at the limit is delivered intact.", [] }
            { InvalidSubjectsRejected, invalid_subjects_rejected, limits, "Invalid subjects, patterns and reply subjects are refused with InvalidSubject / InvalidPattern.", [] }
            { InvalidPolicyRejected, invalid_policy_rejected, limits, "Subscriptions with a zero ack wait, max in flight or max deliveries are refused with InvalidConfig.", [] }
        }
    };
}
