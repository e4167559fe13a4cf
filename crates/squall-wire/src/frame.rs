//! The frames of protocol version 1, as Rust values.

use std::time::Duration;

use squall_core::{
    DeliveryPolicy, Durability, Error, ErrorKind, LeaseId, Message, Pattern, StartPosition,
    Subject, Subscription, Timestamp,
};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this crate accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Default largest frame (length field included): 8 MiB.
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;
/// Bytes before a frame's body: length (4), type (1), flags (1).
pub const HEADER_LEN: usize = 6;

/// An error reported by the peer: a kind and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The peer's message.
    pub message: String,
}

impl From<&Error> for RemoteError {
    fn from(e: &Error) -> Self {
        RemoteError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Self {
        Error::new(e.kind, e.message)
    }
}

/// Client → server: opens a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Highest protocol version the client speaks.
    pub version: u16,
    /// Lowest it accepts.
    pub min_version: u16,
    /// For logs and statistics.
    pub client_name: String,
    /// Bearer token, empty if none.
    pub token: String,
}

/// Server → client: accepts a session and states the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The version both will speak.
    pub version: u16,
    /// For logs.
    pub server_name: String,
    /// Largest frame the server accepts.
    pub max_frame: u32,
    /// Largest payload the server accepts.
    pub max_payload: u32,
    /// Most unconfirmed publishes the server keeps per connection.
    pub max_in_flight: u32,
    /// The server pings at this interval; a client may consider it gone after three.
    pub heartbeat: Duration,
}

/// One message of a [`Frame::Publish`].
#[derive(Debug, Clone, PartialEq)]
pub struct PublishItem {
    /// Chosen by the client; echoed in the ack.
    pub request_id: u64,
    /// The message.
    pub message: Message,
}

/// The confirm of one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckItem {
    /// The publish's request id.
    pub request_id: u64,
    /// Its outcome.
    pub result: Result<WireAck, RemoteError>,
}

/// A successful publish confirm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireAck {
    /// Stream name ("" if none).
    pub stream: String,
    /// Sequence.
    pub sequence: u64,
    /// Durability reached.
    pub durability: Durability,
    /// Stored before.
    pub duplicate: bool,
}

/// One leased message of a [`Frame::Deliver`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverItem {
    /// The subscription.
    pub sub_id: u32,
    /// The lease (echoed when settling).
    pub lease: LeaseId,
    /// Delivery attempt.
    pub attempt: u32,
    /// When the broker stored it.
    pub published_at: Timestamp,
    /// When the lease expires.
    pub deadline: Timestamp,
    /// The group, if any.
    pub group: Option<String>,
    /// The message.
    pub message: Message,
}

/// How to settle a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOp {
    /// Done.
    Ack,
    /// Redeliver after the delay.
    Nack(Duration),
    /// Dead-letter with a reason.
    Reject(String),
    /// Extend the lease by.
    Extend(Duration),
}

/// One settle request of a [`Frame::Settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleItem {
    /// Chosen by the client; echoed in the result.
    pub request_id: u64,
    /// The subscription the delivery came from.
    pub sub_id: u32,
    /// The lease.
    pub lease: LeaseId,
    /// What to do.
    pub op: SettleOp,
}

/// The outcome of one settle request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleResult {
    /// The request id.
    pub request_id: u64,
    /// New deadline for an extend, `Timestamp(0)` otherwise; or the error.
    pub result: Result<Timestamp, RemoteError>,
}

/// A subscription request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Chosen by the client; echoed in [`Frame::SubscribeResult`].
    pub request_id: u64,
    /// Chosen by the client; unique per connection; tags deliveries.
    pub sub_id: u32,
    /// What to consume.
    pub subscription: Subscription,
    /// Deliveries the server may send before the client grants more with [`Frame::Credit`].
    pub credit: u32,
}

/// Every frame of protocol version 1.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Client → server, first frame.
    Hello(Hello),
    /// Server → client, answer to `Hello`.
    Welcome(Welcome),
    /// Either way: are you there?
    Ping(u64),
    /// Either way: yes.
    Pong(u64),
    /// Server → client: a request failed (`request_id` 0: the connection is at fault and will be
    /// closed if `fatal`).
    Error {
        /// The request, or 0.
        request_id: u64,
        /// Whether the server closes the connection after this frame.
        fatal: bool,
        /// What went wrong.
        error: RemoteError,
    },
    /// Server → client: the server is shutting down; finish up.
    Goodbye(String),
    /// Client → server: messages to publish.
    Publish(Vec<PublishItem>),
    /// Server → client: confirms.
    PublishAcks(Vec<AckItem>),
    /// Client → server: start a subscription.
    Subscribe(Box<Subscribe>),
    /// Server → client: the subscription started, or why not.
    SubscribeResult {
        /// The request id.
        request_id: u64,
        /// Outcome.
        result: Result<(), RemoteError>,
    },
    /// Client → server: stop a subscription (its unsettled deliveries are released).
    Unsubscribe {
        /// Which.
        sub_id: u32,
    },
    /// Client → server: allow `credit` more deliveries on `sub_id`.
    Credit {
        /// Which.
        sub_id: u32,
        /// How many more.
        credit: u32,
    },
    /// Server → client: leased messages.
    Deliver(Vec<DeliverItem>),
    /// Server → client: a subscription ended (stream deleted, server closing, error).
    SubscriptionEnded {
        /// Which.
        sub_id: u32,
        /// Why, if abnormal.
        error: Option<RemoteError>,
    },
    /// Client → server: settle deliveries.
    Settle(Vec<SettleItem>),
    /// Server → client: settle outcomes.
    SettleResults(Vec<SettleResult>),
    /// Client → server: request-reply.
    Request {
        /// Chosen by the client.
        request_id: u64,
        /// How long to wait for the reply.
        timeout: Duration,
        /// The request.
        message: Message,
    },
    /// Server → client: the reply.
    Reply {
        /// The request id.
        request_id: u64,
        /// The reply, or why none.
        result: Result<Message, RemoteError>,
    },
}

impl Frame {
    /// The frame's type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello(_) => 0x01,
            Frame::Welcome(_) => 0x02,
            Frame::Ping(_) => 0x03,
            Frame::Pong(_) => 0x04,
            Frame::Error { .. } => 0x05,
            Frame::Goodbye(_) => 0x06,
            Frame::Publish(_) => 0x10,
            Frame::PublishAcks(_) => 0x11,
            Frame::Subscribe(_) => 0x20,
            Frame::SubscribeResult { .. } => 0x21,
            Frame::Unsubscribe { .. } => 0x22,
            Frame::Credit { .. } => 0x23,
            Frame::Deliver(_) => 0x24,
            Frame::SubscriptionEnded { .. } => 0x25,
            Frame::Settle(_) => 0x30,
            Frame::SettleResults(_) => 0x31,
            Frame::Request { .. } => 0x40,
            Frame::Reply { .. } => 0x41,
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Welcome(_) => "welcome",
            Frame::Ping(_) => "ping",
            Frame::Pong(_) => "pong",
            Frame::Error { .. } => "error",
            Frame::Goodbye(_) => "goodbye",
            Frame::Publish(_) => "publish",
            Frame::PublishAcks(_) => "publish_acks",
            Frame::Subscribe(_) => "subscribe",
            Frame::SubscribeResult { .. } => "subscribe_result",
            Frame::Unsubscribe { .. } => "unsubscribe",
            Frame::Credit { .. } => "credit",
            Frame::Deliver(_) => "deliver",
            Frame::SubscriptionEnded { .. } => "subscription_ended",
            Frame::Settle(_) => "settle",
            Frame::SettleResults(_) => "settle_results",
            Frame::Request { .. } => "request",
            Frame::Reply { .. } => "reply",
        }
    }
}

/// Maps error kinds to their wire codes. Unknown codes decode as [`ErrorKind::Internal`].
pub(crate) const ERROR_KINDS: &[(u16, ErrorKind)] = &[
    (1, ErrorKind::InvalidSubject),
    (2, ErrorKind::InvalidPattern),
    (3, ErrorKind::InvalidMessage),
    (4, ErrorKind::InvalidConfig),
    (5, ErrorKind::NotFound),
    (6, ErrorKind::Conflict),
    (7, ErrorKind::Unsupported),
    (8, ErrorKind::LeaseExpired),
    (9, ErrorKind::Full),
    (10, ErrorKind::Timeout),
    (11, ErrorKind::NoResponders),
    (12, ErrorKind::Closed),
    (13, ErrorKind::Unavailable),
    (14, ErrorKind::Storage),
    (15, ErrorKind::StoragePoisoned),
    (16, ErrorKind::Protocol),
    (17, ErrorKind::Internal),
];

pub(crate) fn kind_code(kind: ErrorKind) -> u16 {
    ERROR_KINDS
        .iter()
        .find(|(_, k)| *k == kind)
        .map_or(17, |(c, _)| *c)
}

pub(crate) fn code_kind(code: u16) -> ErrorKind {
    ERROR_KINDS
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(ErrorKind::Internal, |(_, k)| *k)
}

pub(crate) fn durability_code(d: Durability) -> u8 {
    match d {
        Durability::Memory => 0,
        Durability::Written => 1,
        Durability::Fsynced => 2,
        Durability::Replicated => 3,
    }
}

pub(crate) fn code_durability(c: u8) -> Option<Durability> {
    Some(match c {
        0 => Durability::Memory,
        1 => Durability::Written,
        2 => Durability::Fsynced,
        3 => Durability::Replicated,
        _ => return None,
    })
}

/// Rebuilds a subscription from its wire fields (validating them).
#[allow(clippy::too_many_arguments)]
pub(crate) fn subscription(
    pattern: Pattern,
    group: Option<String>,
    durable: bool,
    start: Option<StartPosition>,
    policy: DeliveryPolicy,
    stream: Option<String>,
) -> Result<Subscription, Error> {
    let mut s = Subscription::new(pattern.as_str())?;
    if let Some(g) = group {
        s = s.group(g)?;
    }
    s.durable = durable;
    s.start = start;
    s.policy = policy;
    s.stream = stream;
    Ok(s)
}

/// The dead-letter subject field.
pub(crate) type DeadLetterSubject = Option<Subject>;
