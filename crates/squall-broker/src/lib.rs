//! # squall-broker
//!
//! The embedded squall broker: durable streams, consumer groups with leases, redelivery, dead
//! letters, delayed messages, per-message TTL, deduplication, per-key ordering and request-reply,
//! in-process. It implements the [`squall_core`] traits, so code written against them runs
//! unchanged on the `squall serve` client or a broker adapter.
//!
//! It is not a cluster: one process owns a data directory. Several processes share it through
//! `squall serve`.
//!
//! ## Model
//! - A **stream** captures subjects matching its patterns and stores them in order, each message
//!   with a sequence. Subjects no explicit stream captures go to the catch-all `default` stream;
//!   `dlq.>` goes to the `dlq` stream, so dead letters have their own depth. Retention: by limits
//!   (count, bytes, age; drop oldest or refuse new) or as a work queue (removed once every group
//!   settled it).
//! - A **group** consumes a pattern within one stream; its members compete for messages. A
//!   subscription without a group gets a private consumer (fan-out: every subscription a copy).
//! - A **delivery** leases a message for `ack_wait`; ack settles it, nack requeues it after a
//!   delay, reject dead-letters it, extend keeps it; an expired lease redelivers it (after the
//!   policy's backoff), and the delivery past `max_deliveries` dead-letters it with an envelope.
//!
//! ## Modules
//! | module | what it holds |
//! |---|---|
//! | [`broker`] | [`Broker`], its builder, routing, publish, request-reply, statistics |
//! | [`consumer`] | [`BrokerConsumer`]: pull-based delivery, and the acker |
//! | [`config`] | [`BrokerConfig`], [`StreamConfig`], retention and overflow policies |
//! | [`storage`] | the [`storage::Storage`] seam and [`storage::MemoryStorage`] |
//! | [`clock`] | [`Clock`]: wall time that follows tokio's (pausable) clock |
//! | [`events`] | [`BrokerEvent`]: slow consumers, lease expiries, dead letters, drops |
//! | [`stream`] | [`StreamStats`] and [`GroupStats`] |
//!
//! Internal: `group` (the per-group state machine), `dedup` (the dedup window), `sweeper`
//! (expiries and idle groups when no consumer is waiting).
//!
//! ## Time
//! All timing (leases, delays, TTLs, dedup windows) follows the broker's [`Clock`], which follows
//! tokio's clock: under `#[tokio::test(start_paused = true)]` a 15-minute delay takes no real time.
//!
//! ## Example
//! ```
//! use squall_broker::Broker;
//! use squall_core::{Message, Publisher, Subscriber, Subscription};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let broker = Broker::in_memory()?;
//! let mut workers = broker.subscribe(Subscription::new("jobs.*")?.group("workers")?).await?;
//! let ack = broker.publish(Message::builder("jobs.resize")?.payload("img-1").build()).await?;
//! assert_eq!(ack.sequence, 1);
//! let job = workers.next().await.expect("consumer open")?;
//! assert_eq!(job.attempt(), 1);
//! job.ack().await?;
//! # Ok::<(), squall_core::Error>(()) }).unwrap();
//! ```

pub mod broker;
pub mod clock;
pub mod config;
pub mod consumer;
mod dedup;
pub mod events;
mod group;
pub mod storage;
pub mod stream;
mod sweeper;

pub use broker::{Broker, BrokerBuilder, INBOX_PREFIX};
pub use clock::Clock;
pub use config::{BrokerConfig, Discard, Retention, StreamConfig};
pub use consumer::BrokerConsumer;
pub use events::BrokerEvent;
pub use group::GroupCounters;
pub use stream::{GroupStats, StreamStats};
