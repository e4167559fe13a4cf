//! # squall-nats
//!
//! The squall backend for NATS, through the `async-nats` client: [`NatsBackend`] implements the
//! `squall-core` traits ([`Publisher`](squall_core::Publisher),
//! [`Subscriber`](squall_core::Subscriber), [`Requester`](squall_core::Requester),
//! [`Backend`](squall_core::Backend)) over **core NATS** (`nats://host:port`: fan-out, queue
//! groups, request-reply, at-most-once) or **JetStream** (`nats://host:port?jetstream=1`:
//! streams, pull consumers, acks, replay, at-least-once).
//!
//! ## Modules
//! | module | what it holds |
//! |---|---|
//! | [`config`] | [`NatsConfig`]: the URL and its options (mode, streams, limits, timeouts) |
//! | `backend` | [`NatsBackend`], [`capabilities`], connecting |
//! | [`codec`] | a squall message as NATS subject, headers and payload, and back |
//! | [`streams`] | which stream holds a subject; creating or binding it |
//! | `publish` | core publishes and pipelined JetStream publishes with bounded pending acks |
//! | `core_consumer` | [`CoreConsumer`]: subscriptions and queue groups, flow control without redelivery |
//! | `js_consumer` | [`JsConsumer`]: pull consumers per subscription or group, the pulling task |
//! | `lease` | leases, ack / nak with delay / in-progress / term, emulated dead letters |
//! | `request` | request-reply over inboxes |
//! | `error` | async-nats errors as squall [`ErrorKind`](squall_core::ErrorKind)s |
//!
//! ## How squall maps onto NATS
//! | squall | core NATS | JetStream |
//! |---|---|---|
//! | subject, `*`, `>` | the same subject and wildcards | the same, as consumer filter subjects |
//! | where messages live | nowhere: delivered to current subscribers only | a stream per subject prefix (`stream_depth` tokens; see [`streams`]) or one configured `stream` |
//! | publish ack | handed to the connection: `stream: None`, `sequence: 0`, durability `memory` | the stream's `PubAck`: stream, sequence, `duplicate`; durability as below |
//! | subscription without group | a subscription | an ephemeral pull consumer (start `New` by default) |
//! | group | a queue group | a pull consumer named after the group, shared by its members (start `First` by default) |
//! | durable group | refused (`Unsupported`) | a durable consumer |
//! | ack | succeeds (nothing to confirm: nothing is ever redelivered) | `+ACK`, confirmed by the server |
//! | nack(delay) | `Unsupported` (at-most-once) | `-NAK` with the delay |
//! | extend | `Unsupported` | `+WPI` (in progress), repeated for extensions longer than `ack_wait` |
//! | reject | `Unsupported` | the [`DeadLetter`](squall_core::DeadLetter) envelope published to the dead-letter subject, then `+TERM` (**emulated**) |
//! | `max_deliveries` | refused | counted by squall; the delivery past the limit is dead-lettered, then terminated (**emulated**) |
//! | `backoff` | refused | JetStream `backoff` (`ack_wait + backoff[i]`) |
//! | `max_in_flight` | client-side slots | pull size bounded by free slots |
//! | dedup | — | `Nats-Msg-Id` = the message id, within the stream's `duplicate_window` |
//! | start `First` / `Sequence` / `Time` | refused | deliver policy `all` / `by_start_sequence` / `by_start_time` |
//! | time to live | refused | `Squall-Ttl` header, checked on receipt against the stream's store time (**emulated**) |
//! | delay | refused | refused: NATS before 2.12 has no per-message delay, and 2.12's message schedules are not used |
//! | request-reply | inbox + `reply-to` header; `NoResponders` from the server | the request is stored like any message; the reply travels over core NATS |
//! | headers | NATS headers; id, key, timestamp in `Nats-Msg-Id`, `Squall-Key`, `Squall-Timestamp` ([`codec`]) | the same |
//!
//! ## Capabilities, honestly
//! | feature | core NATS | JetStream |
//! |---|---|---|
//! | persistence | missing | native (`storage=file`), missing (`storage=memory`) |
//! | groups | native (queue groups) | native |
//! | durable groups | missing | native |
//! | redelivery, nack delay, lease extend | missing | native |
//! | dead letter | missing | emulated (the adapter publishes the envelope) |
//! | delayed delivery | missing | missing |
//! | ttl | missing | emulated (discarded on receipt once expired; stays in the stream until its limits remove it) |
//! | dedup | missing | native |
//! | key ordering | missing | missing |
//! | ordered | native (one publisher connection, one subscriber) | native |
//! | replay by sequence / time | missing | native |
//! | request-reply, wildcards, headers | native | native |
//!
//! Every missing feature is refused with `Unsupported`, never ignored.
//!
//! ## Durability of a publish ack
//! JetStream acknowledges a publish once the stream leader has written it to its file (and, on
//! a clustered stream, once a quorum of replicas has), but **before fsync** by default: the
//! server syncs every two minutes (`sync_interval`). The ack therefore says
//! [`Written`](squall_core::Durability::Written). When the operator runs the server with
//! `jetstream { sync_interval: always }` (NATS 2.10+), declare it with `sync=always` and acks
//! say [`Fsynced`](squall_core::Durability::Fsynced) ([`Replicated`](squall_core::Durability::Replicated)
//! with `replicas` above 1); the adapter cannot verify that setting. A stream with memory
//! storage acks [`Memory`](squall_core::Durability::Memory), and core NATS publishes are
//! `Memory` too: they are handed to the client's buffer, not confirmed at all.
//!
//! ## Trade-offs
//! - **Core NATS is at-most-once.** Messages published while a subscriber is disconnected, or
//!   that overflow its client buffer (a slow consumer), are lost; `ack` is accepted because
//!   nothing will redeliver, while `nack`, `reject` and `extend` fail with `Unsupported` so no
//!   code believes a retry is coming.
//! - **Leases are client-side first.** The server redelivers `ack_wait` after it sent a
//!   message; the client ends its lease a little earlier (1/20 of `ack_wait`, at most 250 ms)
//!   and refuses later settles with `LeaseExpired` instead of sending an ack the server may
//!   already have overtaken.
//! - **Dead letters are published by the consumer.** JetStream stops at `max_deliver` and only
//!   emits an advisory; squall counts deliveries itself, so the message past the limit is
//!   dead-lettered only while some member of the subscription is running.
//! - **A group's policy is shared.** JetStream has one consumer per group: the last member to
//!   subscribe sets `ack_wait`, `backoff` and `max_deliveries` for all.
//! - **Fan-out uses acked ephemeral consumers, not ordered consumers.** Ordered consumers have no
//!   acks, which would make `nack` a silent no-op; each fan-out subscriber gets an explicit-ack
//!   consumer instead, resumed after the last seen sequence if the server lost it.
//! - **Closing releases at once.** `close` naks everything the consumer holds so other members
//!   get it without waiting for `ack_wait`; a dropped consumer releases only what it had not
//!   handed out.
//! - **Streams are created on first use** with the configured limits; streams that already
//!   capture the subjects are used as they are (their storage decides the ack durability).
//! - **Closing a handle** (`Publisher::close`) flushes, then refuses sends, subscriptions and
//!   requests through it; consumers it opened keep running until they are closed or dropped.
//!   The connection ends once the handle, its clones and its consumers are all dropped, if it
//!   is up then: async-nats 0.51 notices dropped handles only while connected, so a connection
//!   that breaks as (or before) its last handle goes keeps reconnecting in the background
//!   (`squall certify` waits for its connections to end before it stops its proxy).
//! - **Requests are never deduplicated.** A re-sent request waits on a new inbox and needs its
//!   own reply, so its `Nats-Msg-Id` is made unique (the id travels in `Squall-Id`, [`codec`]).
//! - **Replies are not stored.** Subjects under the client's inbox prefix (`_INBOX.`) are
//!   published on core NATS even in JetStream mode.
//! - **Reconnects** are async-nats's: unlimited, with backoff. Publishes wait in the client's
//!   buffer meanwhile (JetStream acks then time out with the retryable `Timeout`; publishing
//!   again with the same id is deduplicated); consumers report `Unavailable` once per outage and
//!   resume.
//! - **A server crash can forget recent acks.** JetStream writes consumer state lazily: after a
//!   SIGKILL of NATS 2.9.10, acks confirmed shortly before were forgotten and those messages came
//!   again with attempt 1 (tests/restart.rs). Nothing unacked was lost; a clean shutdown kept
//!   every ack.
//!
//! ## Example
//! ```no_run
//! use squall_core::{Consumer, Message, Publisher, Subscriber, Subscription};
//!
//! # async fn run() -> squall_core::Result<()> {
//! let nats = squall_nats::connect_url("nats://127.0.0.1:4222?jetstream=1").await?;
//! let mut jobs = nats
//!     .subscribe(Subscription::new("orders.>")?.group("billing")?.durable(true))
//!     .await?;
//! let ack = nats.publish(Message::builder("orders.eu.created")?.payload("o-1").build()).await?;
//! println!("stored in {:?} at {}: {}", ack.stream, ack.sequence, ack.durability);
//! let job = jobs.next().await.expect("subscribed")?;
//! job.ack().await?;
//! nats.close().await?;
//! # Ok(()) }
//! ```
//! Capabilities follow from the configuration alone:
//! ```
//! use squall_core::{Durability, Support};
//! use squall_nats::{NatsConfig, capabilities};
//!
//! let core = capabilities(&NatsConfig::from_url("nats://127.0.0.1:4222")?);
//! assert_eq!(core.redelivery, Support::Missing);
//! let js = capabilities(&NatsConfig::from_url("nats://127.0.0.1:4222?jetstream=1")?);
//! assert_eq!(js.dead_letter, Support::Emulated);
//! assert_eq!(js.max_durability, Durability::Written);
//! # Ok::<(), squall_core::Error>(())
//! ```

mod backend;
pub mod codec;
pub mod config;
mod core_consumer;
mod error;
mod js_consumer;
mod lease;
mod publish;
mod request;
pub mod streams;

pub use backend::{NatsBackend, capabilities};
pub use config::{Mode, NatsConfig, Storage, StreamScope};
pub use core_consumer::CoreConsumer;
pub use js_consumer::JsConsumer;

/// Connects as `url` says: `nats://host:port` for core NATS, `?jetstream=1` for JetStream
/// (options in [`config`]).
pub async fn connect_url(url: &str) -> squall_core::Result<NatsBackend> {
    NatsBackend::connect_url(url).await
}

/// Connects with `config`.
pub async fn connect(config: NatsConfig) -> squall_core::Result<NatsBackend> {
    NatsBackend::connect(config).await
}
