//! # squall
//!
//! Resilient messaging for Rust services: one async API for work queues, pub/sub, durable streams
//! and request-reply, with an embedded durable broker as the default backend.
//!
//! This is the crate applications depend on. It holds no logic of its own: it re-exports the
//! message model and the backend contracts from [`squall_core`], and the backends behind cargo
//! features. It is not a cluster: when one machine is not enough, switch the backend, not the code.
//!
//! | path | what it holds | feature |
//! |---|---|---|
//! | [`prelude`] | the traits and types most code needs: `use squall::prelude::*;` | always |
//! | [`core`] | the whole model: subjects and patterns, messages, headers, publish acks and durability, subscriptions, deliveries, dead letters, capabilities, errors | always |
//! | crate root | everything in [`core`], re-exported (`squall::Message`, `squall::Subject`...) | always |
//! | `broker` | the embedded durable broker (`squall-broker`) | `broker` (default) |
//!
//! The model in a few lines (every backend honours the same contract):
//!
//! ```
//! use squall::prelude::*;
//!
//! let msg = Message::builder("orders.eu.created")?.key("customer-42")?.payload("hi").build();
//! let sub = Subscription::new("orders.>")?.group("billing")?;
//! assert!(Pattern::new("orders.>")?.matches(msg.subject()));
//! assert_eq!(sub.group_name(), Some("billing"));
//! # Ok::<(), squall::Error>(())
//! ```
//!
//! With the embedded broker, publishing and consuming look like this (the consumer holds a lease
//! on each delivery until it acks, nacks or rejects it):
//!
//! ```ignore
//! use squall::prelude::*;
//!
//! let broker = squall::broker::Broker::builder().open()?;
//! broker.publish(Message::builder("orders.created")?.payload("hi").build()).await?;
//! let mut c = broker.subscribe(Subscription::new("orders.>")?.group("billing")?).await?;
//! let d = c.next().await.unwrap()?;
//! d.ack().await?;
//! ```

pub use squall_core as core;
pub use squall_core::*;

/// The version of squall (this crate), e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(feature = "broker")]
pub use squall_broker as broker;

/// The traits and types most code needs, for a glob import: `use squall::prelude::*;`.
///
/// The traits ([`Publisher`], [`Subscriber`], [`Consumer`], [`Requester`], [`Backend`]) are what
/// bring `publish`, `subscribe`, `next` and `request` into scope on any backend.
pub mod prelude {
    pub use squall_core::{
        Backend, Consumer, Delivery, Durability, Error, ErrorKind, Message, Pattern, PublishAck,
        Publisher, Requester, Result, StartPosition, Subject, Subscriber, Subscription,
    };
}
