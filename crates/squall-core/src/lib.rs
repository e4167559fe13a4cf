//! # squall-core
//!
//! The message model and the contracts every squall backend honours: the embedded broker, the
//! `squall serve` client and the adapters for NATS, RabbitMQ, Kafka and SQS. It does no I/O.
//!
//! | module | what it holds |
//! |---|---|
//! | [`subject`] | [`Subject`] and wildcard [`Pattern`] (`*`, `>`), validated |
//! | [`message`] | [`Message`], [`MessageId`], [`Timestamp`], the builder |
//! | [`headers`] | [`Headers`] and the header names squall uses |
//! | [`publish`] | [`Durability`], [`PublishAck`], [`PendingAck`] |
//! | [`subscription`] | [`Subscription`], [`StartPosition`], [`DeliveryPolicy`] |
//! | [`delivery`] | [`Delivery`] (a leased message) and the backend's [`Acker`] |
//! | [`dead_letter`] | the [`DeadLetter`] envelope, redrive |
//! | [`capabilities`] | [`Capabilities`]: native / emulated / missing per feature |
//! | [`traits`] | [`Publisher`], [`Subscriber`], [`Consumer`], [`Requester`], [`Backend`] |
//! | [`error`] | [`Error`] with an [`ErrorKind`] and [`Error::is_retryable`] |
//! | [`backoff`] | [`Backoff`](backoff::Backoff): exponential reconnect delays with full jitter |
//! | [`options`] | parsers of backend URL options (flags, integers, durations) whose errors name the option |
//!
//! ```
//! use squall_core::{Message, Pattern, Subject};
//!
//! let subject = Subject::new("orders.eu.created")?;
//! assert!(Pattern::new("orders.*.created")?.matches(&subject));
//! assert!(Pattern::new("orders.>")?.matches(&subject));
//! let msg = Message::new(subject, "hello");
//! assert_eq!(&msg.payload()[..], b"hello");
//! # Ok::<(), squall_core::Error>(())
//! ```

pub mod backoff;
pub mod capabilities;
pub mod dead_letter;
pub mod delivery;
pub mod error;
pub mod headers;
pub mod message;
pub mod options;
pub mod publish;
pub mod subject;
pub mod subscription;
pub mod traits;

pub use capabilities::{Capabilities, Support};
pub use dead_letter::{DeadLetter, DeadLetterReason};
pub use delivery::{Acker, Delivery, DeliveryInfo, LeaseId, Settle};
pub use error::{Error, ErrorKind, Result};
pub use headers::Headers;
pub use message::{Message, MessageBuilder, MessageId, Timestamp};
pub use publish::{Durability, PendingAck, PublishAck};
pub use subject::{Pattern, Subject};
pub use subscription::{DeliveryPolicy, StartPosition, Subscription};
pub use traits::{Backend, Consumer, Publisher, Requester, Subscriber};
