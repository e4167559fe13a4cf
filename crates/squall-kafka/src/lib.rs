//! # squall-kafka
//!
//! The squall backend for Kafka and Kafka-protocol brokers, through `rdkafka` (librdkafka built
//! from source): [`KafkaBackend`] implements the `squall-core` traits
//! ([`Publisher`](squall_core::Publisher), [`Subscriber`](squall_core::Subscriber),
//! [`Requester`](squall_core::Requester), [`Backend`](squall_core::Backend)) on topics,
//! partitions, consumer groups and committed offsets, and emulates, labelled, the per-message
//! settling Kafka does not have.
//!
//! ## Modules
//! | module | what it holds |
//! |---|---|
//! | [`config`] | [`KafkaConfig`]: `kafka://host:port[,host:port]?options` |
//! | `backend` | [`KafkaBackend`], [`capabilities`], connecting |
//! | [`topics`] | subject → topic name (escaped, hashed when too long), pattern → topic regex |
//! | [`codec`] | a squall message as a Kafka record (key, headers, timestamp) and back |
//! | [`consumer`] | [`KafkaConsumer`]: groups, fan-out, start positions, commits after processing, leases |
//! | `consumer::state` | the per-partition tracker: commit only the contiguous settled prefix |
//! | `link` | the producer, topic creation, live consumers, attempt hand-off |
//! | `request` | request-reply over an inbox topic |
//! | `error` | librdkafka errors as squall [`ErrorKind`](squall_core::ErrorKind)s |
//!
//! ## How squall maps onto Kafka
//! | squall | Kafka |
//! |---|---|
//! | subject | a topic: `topic_prefix` + the subject, escaped ([`topics`]); created on first use with `partitions` and `replication` |
//! | key | the record key: Kafka's partitioner sends a key to one partition, so one key keeps its order |
//! | headers, id, timestamp | record headers (`squall.id`, `squall.timestamp`), the record timestamp ([`codec`]) |
//! | publish ack | the producer's delivery report: `stream` = topic, `sequence` = offset + 1 |
//! | group | a consumer group, `group.id` = `group_prefix` + name; every Kafka group is durable |
//! | subscription without group | every partition assigned to the subscriber, throwaway `group.id`, never committed |
//! | `*`, `>` | a `^regex` subscription (groups) or topic discovery (fan-out), both on a metadata refresh (**emulated**) |
//! | ack | the record is done; the partition's committed offset moves to its first unsettled record (coalesced, asynchronous) |
//! | nack(delay) | this consumer delivers the record again after the delay, from memory; the offset stays uncommitted meanwhile (**emulated**) |
//! | lease expiry (`ack_wait`), `backoff` | the same, by a timer of the consumer (**emulated**) |
//! | extend | moves the consumer's deadline (**emulated**) |
//! | reject, `max_deliveries` | the [`DeadLetter`](squall_core::DeadLetter) envelope published to the dead-letter topic, then acked (**emulated**) |
//! | `max_in_flight` | records handed out and not committed; the consumer pauses partitions while its buffer is full |
//! | `ordered_by_key` | a key's next record is handed out once its previous one is settled (**emulated** on top of key → partition) |
//! | start `First` / `New` / `Sequence` / `Time` | beginning / end when subscribing / offset `sequence - 1` / Kafka's offset for the time, records before it skipped |
//! | request-reply | an inbox topic per handle, correlation ids (**emulated**, `request` module) |
//! | delay, time to live | refused with `Unsupported` |
//! | dedup | refused as a capability: the idempotent producer removes its own retry duplicates, not a publisher's repeated ids |
//!
//! ## Capabilities, honestly
//! | feature | support |
//! |---|---|
//! | persistence | native (`storage=log`), missing (`storage=memory`, e.g. tansu on `memory://`) |
//! | groups, durable groups | native (consumer groups, committed offsets) |
//! | redelivery | emulated within a consumer (leases, nacks); native across members (uncommitted offsets go to the next owner) |
//! | nack delay, lease extend, dead letter | emulated |
//! | delayed delivery, ttl, dedup | missing |
//! | key ordering | emulated (key → partition is Kafka's; one-at-a-time per key within a consumer is squall's) |
//! | ordered | native with `partitions=1`; missing otherwise (keyless records spread over partitions) |
//! | replay by sequence / time | native (offsets, `offsets_for_times`) |
//! | request-reply, wildcards | emulated |
//! | headers | native |
//!
//! Every missing feature is refused with `Unsupported`, never ignored.
//!
//! ## Durability of a publish ack
//! The producer is idempotent with `acks=all` (or `acks=1` when asked). A Kafka broker
//! acknowledges once the record is in the log of every in-sync replica, that is in the page
//! cache: it flushes to disk by its own policy, not per record. So an ack says
//! [`Written`](squall_core::Durability::Written) (never `Fsynced`), or
//! [`Replicated`](squall_core::Durability::Replicated) when the operator declares
//! `replicated=true` (topics with `min.insync.replicas` ≥ 2). On an in-memory broker (tansu with
//! `memory://` storage) declare `storage=memory`: acks then say
//! [`Memory`](squall_core::Durability::Memory) and `persistence` is missing. The adapter cannot
//! see the broker's storage; it reports what the URL declares.
//!
//! ## Trade-offs
//! - **Per-message settling is emulated, and only as good as the consumer that holds it.**
//!   Nacked and expired records are redelivered by the same consumer from memory; the offsets
//!   stay uncommitted, so if that consumer dies, the partition's next owner gets everything
//!   from the first unsettled offset again, including records acked after it
//!   (at-least-once, with duplicates).
//! - **A stuck record holds its partition's commit back.** Offsets commit only up to the first
//!   unsettled record; the records behind it count against `max_in_flight` until it settles.
//! - **Attempt numbers across members** travel in the commit metadata, and within one process
//!   through the handle. tansu 0.6 drops commit metadata, so there they cross processes as
//!   attempt 1.
//! - **Groups rebalance.** When members join or leave, partitions move; a moved partition's
//!   leases end (settling them fails with `LeaseExpired`) and its next owner resumes from the
//!   last commit. Subscribing to a group waits until the group has assigned partitions.
//! - **Wildcards see new topics late**: on the next metadata refresh (`metadata_refresh`),
//!   followed, in a group, by a rebalance. Subjects too long for a topic name are hashed and
//!   may be missed by wildcards (literal subscriptions reach them).
//! - **Sequences are per partition.** `sequence` is the offset + 1 within the record's
//!   partition; `StartPosition::Sequence` applies to every partition of the subscription.
//! - **Records of other producers** are read with synthesized ids (`topic/partition/offset`);
//!   keys and headers squall cannot hold are kept aside ([`codec`]).
//! - **Reconnects** are librdkafka's: it retries brokers by itself (backing off up to 2 s,
//!   `reconnect.backoff.max.ms`; librdkafka's own default is 10 s). Publishes wait in its
//!   queue (bounded by `max_pending`; `send` waits up to `send_timeout`, then `Full`) and fail
//!   with `Timeout` after `delivery_timeout`; consumers report `Unavailable` once when
//!   connecting has failed for a second, and go on.
//!
//! ## Known gaps of tansu 0.6 (the Kafka-protocol broker tested against)
//! - Commit metadata is dropped (attempt numbers cross processes as 1, see above).
//! - `offsets_for_times` answers offset 0 for any time: the adapter then starts at the
//!   beginning and skips records stamped before the requested time, so replay by time stays
//!   correct, only slower.
//! - It holds every JoinGroup for a while, at every rebalance: 3 s with a 6 s session
//!   timeout, about 1 s with 1 to 2 s (measured). Subscribing a group member takes that long.
//! - A consumer assigned a topic that is then deleted crashes librdkafka 2.12.1 (its metadata
//!   cache meets a topic without a name). Delete topics only after their consumers closed.
//! - Reported on this machine (not exercised here: squall uses no transactions):
//!   `isolation.level=read_committed` still returns aborted transactional records.
//! - It accepts topic names Kafka would refuse; the adapter validates names itself.
//! - A group whose leader leaves while the group is rebalancing keeps the departed member as
//!   its leader for good: nobody can join it again. Members of a group in one process
//!   therefore leave one at a time, each once the group is steady again (see [`consumer`]);
//!   members in different processes closing at once can still hit it.
//! - Restarted on memory storage it has forgotten producer ids, and librdkafka's idempotent
//!   producer retries with bumped epochs tansu never accepts: every publish of that handle
//!   times out. Where tansu may restart, use `acks=1` (no idempotence) or a new handle.
//!
//! ## Example
//! ```no_run
//! use squall_core::{Consumer, Message, Publisher, Subscriber, Subscription};
//!
//! # async fn run() -> squall_core::Result<()> {
//! let kafka = squall_kafka::connect_url("kafka://127.0.0.1:9092?partitions=3").await?;
//! let mut jobs = kafka
//!     .subscribe(Subscription::new("orders.created")?.group("billing")?)
//!     .await?;
//! let msg = Message::builder("orders.created")?.key("customer-7")?.payload("o-1").build();
//! let ack = kafka.publish(msg).await?;
//! println!("stored in {:?} at {}: {}", ack.stream, ack.sequence, ack.durability);
//! let job = jobs.next().await.expect("subscribed")?;
//! job.ack().await?;
//! jobs.close().await?;
//! kafka.close().await?;
//! # Ok(()) }
//! ```
//! Capabilities follow from the configuration alone:
//! ```
//! use squall_core::{Durability, Support};
//! use squall_kafka::{KafkaConfig, capabilities};
//!
//! let tansu = capabilities(&KafkaConfig::from_url("kafka://127.0.0.1:9092?storage=memory")?);
//! assert_eq!(tansu.max_durability, Durability::Memory);
//! assert_eq!(tansu.persistence, Support::Missing);
//! let kafka = capabilities(&KafkaConfig::from_url("kafka://k1,k2,k3?replicated=true")?);
//! assert_eq!(kafka.max_durability, Durability::Replicated);
//! assert_eq!(kafka.nack_delay, Support::Emulated);
//! assert_eq!(kafka.delayed_delivery, Support::Missing);
//! # Ok::<(), squall_core::Error>(())
//! ```

mod backend;
pub mod codec;
pub mod config;
pub mod consumer;
mod error;
mod link;
mod request;
pub mod topics;

pub use backend::{KafkaBackend, capabilities, connect_url};
pub use config::KafkaConfig;
pub use consumer::KafkaConsumer;
