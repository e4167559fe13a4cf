//! # squall-sqs
//!
//! The squall backend for Amazon SQS (through `aws-sdk-sqs` and `aws-config`): an
//! [`SqsBackend`] implementing the `squall-core` traits ([`Publisher`](squall_core::Publisher),
//! [`Subscriber`](squall_core::Subscriber), [`Requester`](squall_core::Requester),
//! [`Backend`](squall_core::Backend)), so code written against the traits runs on SQS (or an
//! SQS-compatible server such as `moto_server`) unchanged. It is not an SQS administration
//! tool: it creates the queues it uses, and [`SqsBackend::client`] hands out the SDK client for
//! the rest.
//!
//! ## Modules
//! | module | what it holds |
//! |---|---|
//! | [`config`] | [`SqsConfig`]: the URL, its options, credentials and endpoint |
//! | `backend` | [`SqsBackend`], [`capabilities`] |
//! | [`naming`] | subjects, groups and subscriptions as queue names; how publishers find queues |
//! | [`codec`] | a squall message as an SQS body and message attributes, and back |
//! | `queues` | the SDK client: creating, listing, sending, receiving, settling, with timeouts |
//! | `publisher` | `SendMessage`, `SendMessageBatch`, the pending bound, `flush`, `close` |
//! | `consumer` | [`SqsConsumer`]: long polling into a bounded channel, flow control, closing |
//! | `lease` | ack, nack, reject, extend, lease expiry and dead letters on SQS |
//! | `request` | request-reply through an inbox queue per handle |
//! | `error` | SDK errors as squall [`ErrorKind`](squall_core::ErrorKind)s |
//!
//! ## How squall maps onto SQS
//! | squall | SQS |
//! |---|---|
//! | subject | no queue of its own: the queues *bound* to it, found by name prefix (`ListQueues`); see [`naming`] |
//! | group | one queue per subject and group, `<prefix><subject key>--g<hash>`, its members receiving from it (competing consumers) |
//! | subscription without a group | a queue of its own, `<prefix><subject key>--s<random>`, deleted when it closes (fan-out, emulated) |
//! | `Subscription::stream(name)` | receive from the existing queue `name` (one another tool fills, a native dead-letter queue...) |
//! | publish | `SendMessage` to every queue bound to the subject (dropped when there is none, or `NoResponders` with `mandatory=true`) |
//! | publish batch | `SendMessageBatch`, 10 messages per request |
//! | publish ack | SQS's answer for every bound queue; durability as configured (`durability`) |
//! | `max_in_flight` | how many unsettled deliveries the application may hold; the consumer also keeps at most two batches received ahead of `next` (a visibility timeout runs from the receive), and drops a delivery whose lease ran out before `next` took it (it comes again) |
//! | ack | `DeleteMessage` (`DeleteMessageBatch` for acks queued together) |
//! | lease, nack delay, extend | the visibility timeout (see [Leases](crate#leases)) |
//! | attempt | `ApproximateReceiveCount` |
//! | reject, `max_deliveries` | squall's [`DeadLetter`](squall_core::DeadLetter) envelope published to the dead-letter subject |
//! | `max_receive` (URL) | SQS's own redrive policy on group queues, to `<queue>-dlq` |
//! | delay | `DelaySeconds` (≤ 900 s, whole seconds, standard queues only) |
//! | ttl | attribute `squall.expires`, checked on receipt |
//! | key | attribute `squall.key`; on FIFO queues the `MessageGroupId` |
//! | id | attribute `squall.id`; on FIFO queues the `MessageDeduplicationId` |
//! | headers | message attributes ([`codec`]) |
//! | request-reply | an inbox queue per handle, replies matched by correlation id |
//!
//! ## Capabilities, honestly
//! | feature | support | how |
//! |---|---|---|
//! | persistence | native with `durability` ≥ `written` (Amazon's endpoint), missing otherwise | SQS stores messages redundantly; an emulator on another endpoint is not vouched for |
//! | groups, durable groups | native | a shared queue per group; it outlives its members (durable or not: SQS queues do not expire) |
//! | redelivery | native | the visibility timeout; the `ack_wait` timer that ends a lease is squall's |
//! | nack delay, lease extend | native | `ChangeMessageVisibility` (whole seconds, at most 12 h) |
//! | dead letter | emulated | the envelope is published by the consumer; SQS's redrive (`max_receive`) is there too, without the envelope |
//! | delayed delivery | native on standard queues (≤ 15 min), missing on FIFO queues | `DelaySeconds` |
//! | ttl | emulated | checked on receipt against the publisher's clock |
//! | dedup | native on FIFO queues (5-minute window), missing on standard queues | `MessageDeduplicationId` = the squall id |
//! | key ordering | native on FIFO queues, missing on standard queues | message groups; with `ordered_by_key` a consumer receives one message per request, so SQS never hands it two of one key at once |
//! | ordered | missing | standard queues are best-effort; on FIFO queues only messages of one key are ordered |
//! | replay by sequence or time | missing | queues are not logs; refused with `Unsupported` |
//! | request-reply | emulated | an inbox queue per handle |
//! | wildcards | missing | SQS has no routing: a publisher finds the queues of its exact subject; `*` and `>` are refused with `Unsupported` |
//! | headers | native | message attributes (10 per message: beyond, packed into one) |
//!
//! ## Fan-out, and its trade-offs
//! SQS has no fan-out (that is SNS's job), so squall emulates it with a queue per subscription
//! and per group, which every publish lists and sends to. Chosen over refusing fan-out, which
//! would refuse most of what squall's API is for; the price:
//! - **A publish costs a `ListQueues`** plus one `SendMessage` per bound queue. `discovery_ttl`
//!   caches the listing, at the price of subscribers created elsewhere meanwhile missing
//!   messages for that long. Amazon's `ListQueues` is eventually consistent: a queue may take a
//!   moment to be listed, so a subscriber in another process can miss messages published just
//!   after it subscribed (within one handle, subscribing refreshes the listing).
//! - **Messages nobody is bound for are dropped** (`mandatory=true` refuses them instead), and
//!   a group's queue holds what was published since it was created: create it ahead with
//!   [`SqsBackend::ensure_group_queue`] to keep earlier messages.
//! - **Queues of crashed subscribers stay**: a subscription without a group deletes its queue
//!   when it closes or is dropped; if the process dies first, the queue keeps receiving copies
//!   until it is deleted (`retention` bounds how long they are kept). [`SqsBackend::delete_queues`]
//!   clears a whole `queue_prefix`.
//! - **A partial fan-out is reported as a failure**: if one bound queue refuses a copy, the
//!   publish fails though the others have it; a retry duplicates it there (at-least-once).
//!
//! ## Leases
//! A delivery is received with a visibility timeout of `ack_wait + lease_grace`; the lease ends
//! `ack_wait` after SQS's answer arrived, so SQS does not hand the message to someone else while
//! the lease is held (as long as an answer takes less than `lease_grace` to arrive), and the
//! consumer decides what happens at expiry: redeliver after the policy's backoff, or dead-letter
//! on the last allowed delivery. A consumer that dies mid-lease has its deliveries redelivered
//! by SQS after `ack_wait + lease_grace`. The `lease` module has the details. Visibility
//! timeouts are whole seconds: leases, nack delays and backoffs are rounded up, never down.
//!
//! ## More trade-offs
//! - **Durability** is what `durability` says: `replicated` for Amazon's endpoint (SQS stores
//!   across availability zones before answering), `memory` for any other endpoint.
//! - **At-least-once.** A send that timed out may have been stored; the SDK retries (3 attempts)
//!   and a retrying caller can store a message twice on standard queues.
//! - **Network faults and long polls.** A long poll cut by a fault may still be answered by SQS
//!   into the lost connection; what it took comes again when its visibility timeout
//!   (`ack_wait + lease_grace`) ends, as the next attempt: late, not lost. Keep `ack_wait` short
//!   and extend leases for long work where that delay matters.
//! - **Closing.** On a group's queue, a consumer's long poll in progress is let finish (at most
//!   `wait_time`) in the background so that what it brings can be released; `close` itself
//!   returns within a second.
//! - **One receive at a time per queue and handle** (`serial_receive`, on by default): members
//!   of a group in one process take turns to long-poll. Each receive brings up to 10 messages,
//!   so this costs little, saves empty receives, and keeps servers whose concurrent receives can
//!   hand one message out twice (moto_server) from doing so within a process.
//! - **Clocks.** Time to live is checked on receipt against the publisher's clock.
//!
//! ## Example
//! ```no_run
//! use squall_core::{Consumer, Message, Publisher, Subscriber, Subscription};
//!
//! # async fn run() -> squall_core::Result<()> {
//! let sqs = squall_sqs::connect_url("sqs://127.0.0.1:4566?region=us-east-1&queue_prefix=shop-").await?;
//! let mut jobs = sqs
//!     .subscribe(Subscription::new("orders.created")?.group("billing")?)
//!     .await?;
//! let ack = sqs.publish(Message::builder("orders.created")?.payload("o-1").build()).await?;
//! println!("stored in {:?}: {}", ack.stream, ack.durability);
//! let job = jobs.next().await.expect("subscribed")?;
//! job.ack().await?;
//! sqs.close().await?;
//! # Ok(()) }
//! ```
//! Configuration is checked without a server:
//! ```
//! use squall_sqs::SqsConfig;
//! let c = SqsConfig::from_url("sqs://127.0.0.1:4566?region=us-east-1&fifo=1")?;
//! assert_eq!(squall_sqs::capabilities(&c).dedup, squall_core::Support::Native);
//! let e = SqsConfig::from_url("sqs://127.0.0.1:4566?wait_time=30s").unwrap_err();
//! assert!(e.to_string().contains("`wait_time`"));
//! # Ok::<(), squall_core::Error>(())
//! ```

mod backend;
pub mod codec;
pub mod config;
mod consumer;
mod error;
mod lease;
pub mod naming;
mod publisher;
mod queues;
mod request;

pub use backend::{SqsBackend, capabilities};
pub use config::{CredentialSource, Endpoint, SqsConfig};
pub use consumer::SqsConsumer;

/// Connects as `url` says (options in [`config`]).
pub async fn connect_url(url: &str) -> squall_core::Result<SqsBackend> {
    SqsBackend::connect_url(url).await
}

/// Connects with `config`.
pub async fn connect(config: SqsConfig) -> squall_core::Result<SqsBackend> {
    SqsBackend::connect(config).await
}
