//! # squall-amqp
//!
//! The squall backend for RabbitMQ (AMQP 0-9-1, through the `lapin` client): an [`AmqpBackend`]
//! implementing the `squall-core` traits ([`Publisher`](squall_core::Publisher),
//! [`Subscriber`](squall_core::Subscriber), [`Requester`](squall_core::Requester),
//! [`Backend`](squall_core::Backend)), so code written against the traits runs on RabbitMQ
//! unchanged. It is not a RabbitMQ management client: it declares what it uses and nothing else.
//!
//! ## Modules
//! | module | what it holds |
//! |---|---|
//! | [`config`] | [`AmqpConfig`]: the URL and its options (exchange, exchange kind, queue type...) |
//! | `backend` | [`AmqpBackend`], [`capabilities`] |
//! | [`routing`] | subjects and patterns as routing keys and bindings, with the edge cases |
//! | [`codec`] | a squall message as AMQP properties, headers and body, and back |
//! | [`topology`] | the exchanges and queues declared, their names and arguments |
//! | `publisher` | publishing with publisher confirms, bounded, `flush` and `close` |
//! | `consumer` | [`AmqpConsumer`]: subscribing, prefetch, resubscribing, lease timers |
//! | `lease` | ack, nack (with delay), reject, extend and lease expiry on RabbitMQ |
//! | `request` | request-reply over direct reply-to |
//! | `connection` | the connection, its reconnect loop and backoff |
//! | `error` | AMQP errors as squall [`ErrorKind`](squall_core::ErrorKind)s |
//!
//! ## How squall maps onto RabbitMQ
//! | squall | RabbitMQ |
//! |---|---|
//! | subject | routing key on one durable exchange per deployment (`exchange`, default `squall`) |
//! | pattern `*`, `>` | topic binding `*`, `*.#` (see [`routing`] for `#` tokens and 256-byte subjects) |
//! | subscription without group | an exclusive, auto-delete queue of its own (fan-out) |
//! | group | a durable queue `<exchange>.group.<group>.<pattern hash>` its members consume (competing consumers) |
//! | durable group | that queue without expiry; a non-durable group's queue expires after `group_expiry` without members |
//! | publish ack | publisher confirm |
//! | `max_in_flight` | the channel's prefetch count (`basic.qos`) |
//! | ack | `basic.ack` |
//! | nack, lease expiry | a retry copy with the attempt count, published back to the queue (after a delay through a TTL'd retry queue), then `basic.ack` |
//! | reject, `max_deliveries` | the [`DeadLetter`](squall_core::DeadLetter) envelope published to the dead-letter subject, then `basic.ack` |
//! | ttl | per-message `expiration`, checked again on receipt |
//! | delay | a TTL'd queue `<exchange>.delay.<ms>` that dead-letters into the exchange |
//! | request-reply | direct reply-to (`amq.rabbitmq.reply-to`) |
//! | headers | the AMQP headers table and the `content-type`, `correlation-id`, `reply-to`, `message-id`, `timestamp` properties ([`codec`]) |
//!
//! ## Capabilities, honestly
//! | feature | support | how |
//! |---|---|---|
//! | persistence | native | durable queues and persistent messages (`persistent=false`: missing) |
//! | groups, durable groups | native | shared durable queues |
//! | redelivery | native | RabbitMQ requeues what a closed channel or lost connection held; the `ack_wait` timer that triggers a redelivery is squall's |
//! | lease extend | emulated | the deadline lives in the client; RabbitMQ's `consumer_timeout` (30 min by default) still applies |
//! | nack delay, delayed delivery | emulated | per-delay TTL queues that dead-letter onward; delays up to 24 days, rounded up to two significant digits of milliseconds |
//! | dead letter | emulated | the envelope is published by the consumer (RabbitMQ's DLX would lose the envelope and the per-subscription dead-letter subject) |
//! | ttl | native | `expiration`, plus a check on receipt against the publisher's clock |
//! | ordered | native | one queue is FIFO for one publisher channel; retries go to the back |
//! | request-reply | native | direct reply-to |
//! | wildcards | native (topic), emulated (fanout), missing (direct, headers) | |
//! | headers | native | |
//! | dedup, key ordering, replay by sequence or time | missing | RabbitMQ queues are not logs; refused with `Unsupported` |
//!
//! ## Durability of a publish ack
//! RabbitMQ confirms a persistent message once every queue it was routed to has accepted it: a
//! durable classic queue after writing it to disk and fsyncing (the message store fsyncs in
//! batches, every few hundred milliseconds or when idle, so confirms wait for the batch); a quorum
//! queue after a quorum of its replicas wrote and fsynced it. The ack therefore says
//! [`Fsynced`](squall_core::Durability::Fsynced) for persistent messages,
//! [`Replicated`](squall_core::Durability::Replicated) only with `queue_type=quorum` and
//! `replicated=true` (declare that only when the cluster really has other nodes: a single-node
//! quorum queue is one copy), and [`Memory`](squall_core::Durability::Memory) with
//! `persistent=false` and for replies. It speaks for the durable queues the message reached:
//! copies in exclusive fan-out queues are in memory and die with the broker anyway. A message no
//! queue is bound for is dropped by RabbitMQ and still confirmed; set `mandatory=true` to have
//! such publishes fail with `NoResponders`.
//!
//! ## Trade-offs
//! - **No deduplication, no re-send.** Confirms that never came (connection lost) fail with
//!   `Unavailable` and are not re-sent automatically; a retrying caller can store a message
//!   twice. Consumers should be idempotent (see squall-middleware's idempotency layer).
//! - **Acks are not confirmed.** AMQP 0-9-1 has no reply to `basic.ack`: an ack that returned
//!   `Ok` but was still in flight when the connection died is lost, and the message is delivered
//!   again (at-least-once).
//! - **Leases are client-side.** The `ack_wait` lease starts when the client receives a
//!   delivery (prefetched ones included). When a process dies, RabbitMQ redelivers at once.
//! - **Retries re-publish.** A nack or lease expiry publishes a copy and acks the original: exact
//!   attempt counts on classic queues, delays, and no message lost if the copy cannot be
//!   published (the original is then requeued natively) — at the cost of a duplicate if the
//!   process dies between the two steps, and of the message's place in the queue.
//! - **Groups per pattern.** A group's queue name includes its pattern's hash, so two members
//!   must subscribe to the same pattern to compete; RabbitMQ cannot tell the adapter which
//!   bindings an existing queue has, so a different pattern is a different queue, not a
//!   `Conflict`.
//! - **Starting positions.** A group's queue holds what was published since the queue was
//!   created; `StartPosition::First`, `Sequence` and `Time` are refused, and an unset start means
//!   "from the queue's creation" for a new group.
//! - **Fan-out subscribers miss outages.** Their exclusive queue dies with the connection; after a
//!   reconnect they get a new one (the consumer reports `Unavailable` once in between).
//! - **Dead letters nobody listens to are parked.** A dead letter is published `mandatory`; when
//!   no queue is bound for its subject it goes to the durable queue `<exchange>.parked` rather
//!   than being dropped. Undecodable messages (a routing key that is not a valid subject) go there
//!   too.
//!   With `exchange_kind=fanout` every queue is bound, so a dead letter is always routed and one
//!   nobody's pattern matches is dropped by the receiving filters instead of parked.
//! - **Delays are rounded up** to two significant digits of milliseconds (1234 ms waits 1300 ms)
//!   so that jittered delays share a bounded set of delay queues.
//! - **Broker-side dead-lettering of delay queues** follows RabbitMQ's rules: at-most-once on a
//!   broker failure for classic queues, and a delayed message reaches only the queues bound when
//!   its delay ends.
//! - **Clocks.** Time to live is enforced by the broker while a message waits and checked again
//!   on receipt against the publisher's clock, which assumes clocks in step. RabbitMQ does not say
//!   when it stored a message: a delivery's `published_at` is the producer's timestamp, and its
//!   `sequence` is 0.
//!
//! ## Example
//! ```no_run
//! use squall_amqp::AmqpBackend;
//! use squall_core::{Consumer, Message, Publisher, Subscriber, Subscription};
//!
//! # async fn run() -> squall_core::Result<()> {
//! let rabbit = AmqpBackend::connect_url("amqp://guest:guest@127.0.0.1:5672/%2f?exchange=shop").await?;
//! let mut jobs = rabbit
//!     .subscribe(Subscription::new("orders.>")?.group("billing")?.durable(true))
//!     .await?;
//! let ack = rabbit.publish(Message::builder("orders.eu.created")?.payload("o-1").build()).await?;
//! println!("stored: {}", ack.durability);
//! let job = jobs.next().await.expect("subscribed")?;
//! job.ack().await?;
//! rabbit.close().await?;
//! # Ok(()) }
//! ```
//! Configuration is checked without a broker:
//! ```
//! use squall_amqp::AmqpConfig;
//! let c = AmqpConfig::from_url("amqp://guest:guest@127.0.0.1/%2f?queue_type=quorum")?;
//! assert_eq!(squall_amqp::capabilities(&c).max_durability, squall_core::Durability::Fsynced);
//! assert!(AmqpConfig::from_url("amqp://h?prefetch=5").unwrap_err().to_string().contains("`prefetch`"));
//! # Ok::<(), squall_core::Error>(())
//! ```

mod backend;
pub mod codec;
pub mod config;
mod connection;
mod consumer;
mod error;
mod lease;
mod publisher;
mod request;
pub mod routing;
pub mod topology;

pub use backend::{AmqpBackend, capabilities};
pub use config::{AmqpConfig, ExchangeKind, QueueType};
pub use consumer::AmqpConsumer;
pub use topology::Declared;
