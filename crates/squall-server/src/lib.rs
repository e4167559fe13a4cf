//! # squall-server
//!
//! `squall serve`: the embedded [`squall_broker::Broker`] shared over TCP with the protocol of
//! `squall-wire` (see `docs/protocol.md`), plus an admin HTTP API (health, statistics,
//! Prometheus metrics).
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | [`ServerConfig`]: listener, limits, heartbeat, shutdown grace, token |
//! | [`server`] | [`Server`]: bind, accept within `max_connections`, graceful shutdown |
//! | [`admin`] | the admin HTTP API ([`admin::router`]) |
//!
//! Internal: `connection` (the per-connection session loop), `subscription` (credit-driven
//! delivery), `writer` (coalesced writes).
//!
//! Design: a connection is a session loop plus a writer task plus one task per subscription.
//! Every queue is bounded: unconfirmed publishes per connection (`max_in_flight`), outgoing frames
//! (`outbound_queue`), deliveries (client credit), requests (`max_requests`). A slow client fills
//! its own queues and stops its own deliveries; the broker and other clients are unaffected, since
//! the broker's consumers are pulled, never pushed. Malformed input ends that connection with a
//! fatal `Error` frame; nothing a client sends can panic the server.
//!
//! ```no_run
//! use squall_broker::Broker;
//! use squall_server::{Server, ServerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo() -> squall_core::Result<()> {
//! let broker = Broker::in_memory()?;
//! let server = Server::bind(ServerConfig::default(), broker.clone()).await?;
//! let shutdown = CancellationToken::new();
//! let running = tokio::spawn(server.run(shutdown.clone()));
//! // ... later:
//! shutdown.cancel();
//! running.await.expect("server task")?;
//! broker.close().await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod config;
mod connection;
pub mod server;
mod subscription;
mod writer;

pub use config::{DEFAULT_PORT, ServerConfig};
pub use server::Server;
