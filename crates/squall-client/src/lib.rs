//! # squall-client
//!
//! The Rust client for `squall serve`: a [`Client`] implementing the `squall-core` traits
//! ([`Publisher`](squall_core::Publisher), [`Subscriber`](squall_core::Subscriber),
//! [`Requester`](squall_core::Requester), [`Backend`](squall_core::Backend)) over the wire
//! protocol of `docs/protocol.md`, so code written against the traits runs unchanged on the
//! embedded broker or on a shared server. It is not a server, and it speaks to nothing but
//! `squall serve`.
//!
//! ## Shape
//! A [`Client`] is a cloneable handle over **one connection task** that owns the socket. Handles
//! send commands over a bounded queue; the task batches them: every publish queued while the
//! previous write was in progress goes into one `Publish` frame (within a byte budget and the
//! server's `max_in_flight`), settles into one `Settle` frame, and the batch is written with one
//! flush. Publishing is pipelined: `send` returns once the message is queued (waiting there is
//! backpressure, bounded by `publish_buffer`), and the confirm is the second await.
//!
//! Each subscription ([`ClientConsumer`]) has a local buffer of at most `prefetch` deliveries,
//! enforced by credit: the server sends no more than the client granted, and the client returns
//! credit as the application takes deliveries (once half the window is taken, or the buffer runs
//! empty). Deliveries are leased on the server while they wait in the buffer, so a
//! subscription's `ack_wait` must cover the buffer plus processing time.
//!
//! ## Reconnecting: what survives and what does not
//! A connection is dead on a read or write error, when the server closes it, or after three
//! heartbeats (from Welcome) of silence. The task then reconnects with exponential backoff and
//! full jitter ([`ReconnectPolicy`]), says Hello again, and:
//! - **resubscribes** every live subscription under the same id. A durable group resumes where
//!   the broker has it. A fan-out subscription or non-durable group resumes at the oldest
//!   delivery it had not acked (or after the last it saw), so it may see messages again; one that
//!   had seen nothing restarts at its own start position (`New` misses the outage's messages).
//! - **re-sends every unconfirmed publish** with its message id, in order. The broker's dedup
//!   window turns a re-send of a message it already stored into an ack with `duplicate = true`:
//!   no loss, and no second copy *within the window* (a re-send after the window, possible only
//!   after a very long outage, is stored twice).
//! - deliveries leased on the lost connection are released by the server and **redelivered**
//!   (at-least-once): settling them fails with [`ErrorKind::LeaseExpired`](squall_core::ErrorKind)
//!   and those still in the local buffer are discarded. Settles in flight when the connection died
//!   fail the same way (the ack may or may not have been applied: assume the message may come
//!   again). Requests in flight fail with `Unavailable`.
//!
//! While disconnected, new publishes, subscribes and requests fail at once with `Unavailable`
//! ([`WhenDisconnected::Fail`], the default) or wait for the connection
//! ([`WhenDisconnected::Wait`]; publishes bounded by `publish_buffer`, then `Full`). Consumers
//! keep waiting. [`Client::state`] is a `watch` of [`ConnectionState`]; reconnects are counted
//! by [`Client::reconnects`] and the `squall_client_reconnects_total` metric. When the server
//! says Goodbye (shutdown), the client stops sending new publishes, lets in-flight ones be
//! confirmed, and reconnects once the server closes.
//!
//! [`Client::close`] is graceful: it waits (up to `request_timeout`) for every confirm,
//! unsubscribes, closes the socket; later calls fail with `Closed`.
//!
//! ## Modules
//! | module | what it holds |
//! |---|---|
//! | [`config`] | [`ClientConfig`], [`ReconnectPolicy`] (backoff maths), [`WhenDisconnected`], URL parsing |
//! | `client` | [`Client`]: the handle and its trait implementations |
//! | `consumer` | [`ClientConsumer`], the credit window, the acker |
//! | `driver` | the connection task: commands, reconnect loop, close |
//! | `session` | one connection: handshake, frame handling, batched writes |
//! | `batch` | sizing and packing of `Publish` frames |
//! | [`state`] | [`ConnectionState`] and the state handles share with the task |
//!
//! ## Metrics
//! `squall_client_reconnects_total`, `squall_client_publishes_resent_total` (written on a
//! connection that died before confirming them), `squall_client_credit_overruns_total`
//! (deliveries beyond the granted credit: a server bug; dropped and redelivered).
//!
//! ## Example
//! ```no_run
//! use squall_client::{Client, ClientConfig};
//! use squall_core::{Consumer, Message, Publisher, Subscriber, Subscription};
//!
//! # async fn run() -> squall_core::Result<()> {
//! let client = Client::connect(ClientConfig::from_url("squall://127.0.0.1:4470")?).await?;
//! let mut jobs = client.subscribe(Subscription::new("jobs.>")?.group("workers")?).await?;
//! let pending = client.send(Message::builder("jobs.resize")?.payload("img-1").build()).await?;
//! let ack = pending.await?; // the confirm: the second await
//! assert!(!ack.duplicate);
//! let job = jobs.next().await.expect("subscribed")?;
//! job.ack().await?;
//! client.close().await?;
//! # Ok(()) }
//! ```
//! The address forms are checked without a server:
//! ```
//! use squall_client::config::parse_addr;
//! assert_eq!(parse_addr("squall://broker.internal")?, "broker.internal:4470");
//! assert!(parse_addr("http://x:1").unwrap_err().to_string().contains("(set `server`)"));
//! # Ok::<(), squall_core::Error>(())
//! ```

mod batch;
mod client;
pub mod config;
mod consumer;
mod driver;
mod session;
pub mod state;

pub use client::Client;
pub use config::{ClientConfig, ReconnectPolicy, WhenDisconnected};
pub use consumer::ClientConsumer;
pub use state::ConnectionState;
