//! async-nats errors as squall [`ErrorKind`]s: timeouts and lost connections are retryable
//! (`Timeout`, `Unavailable`), JetStream API refusals keep the server's code and message.

use async_nats::jetstream;
use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::stream::ConsumerErrorKind;
use squall_core::{Error, ErrorKind};

/// JetStream API error codes squall reacts to.
pub(crate) mod code {
    /// `stream name already in use with a different configuration`
    pub const STREAM_NAME_IN_USE: u64 = 10058;
    /// `subjects overlap with an existing stream`
    pub const SUBJECTS_OVERLAP: u64 = 10065;
    /// `stream not found`
    pub const STREAM_NOT_FOUND: u64 = 10059;
    /// `consumer not found`
    pub const CONSUMER_NOT_FOUND: u64 = 10014;
    /// `JetStream not enabled`
    pub const JETSTREAM_NOT_ENABLED: u64 = 10076;
    /// `JetStream not enabled for account`
    pub const JETSTREAM_NOT_ENABLED_ACCOUNT: u64 = 10039;
    /// `maximum messages exceeded` / `maximum bytes exceeded`
    pub const STREAM_FULL: [u64; 2] = [10054, 10055];
    /// `insufficient resources`
    pub const INSUFFICIENT_RESOURCES: u64 = 10023;
}

/// The squall kind of a JetStream API error.
pub(crate) fn api_kind(e: &jetstream::Error) -> ErrorKind {
    let c = e.error_code().0;
    match c {
        code::STREAM_NOT_FOUND | code::CONSUMER_NOT_FOUND => ErrorKind::NotFound,
        code::STREAM_NAME_IN_USE | code::SUBJECTS_OVERLAP => ErrorKind::Conflict,
        code::JETSTREAM_NOT_ENABLED | code::JETSTREAM_NOT_ENABLED_ACCOUNT => ErrorKind::Unsupported,
        code::INSUFFICIENT_RESOURCES => ErrorKind::Storage,
        c if code::STREAM_FULL.contains(&c) => ErrorKind::Full,
        _ if e.code() == 503 => ErrorKind::Unavailable,
        _ if e.code() == 404 => ErrorKind::NotFound,
        _ if e.code() >= 500 => ErrorKind::Storage,
        _ => ErrorKind::Conflict,
    }
}

/// The JetStream API error inside an async-nats error's source, if there is one.
pub(crate) fn api_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a jetstream::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(api) = err.downcast_ref::<jetstream::Error>() {
            return Some(api);
        }
        cur = err.source();
    }
    None
}

/// A JetStream publish that failed before or while waiting for its ack.
pub(crate) fn publish(subject: &str, e: jetstream::context::PublishError) -> Error {
    let kind = match e.kind() {
        PublishErrorKind::StreamNotFound => ErrorKind::NotFound,
        PublishErrorKind::TimedOut => ErrorKind::Timeout,
        PublishErrorKind::BrokenPipe => ErrorKind::Unavailable,
        PublishErrorKind::MaxAckPending => ErrorKind::Full,
        PublishErrorKind::MaxPayloadExceeded => ErrorKind::InvalidMessage,
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            ErrorKind::Conflict
        }
        PublishErrorKind::Other => match api_error(&e) {
            Some(api) => api_kind(api),
            None => ErrorKind::Unavailable,
        },
    };
    let what = match kind {
        ErrorKind::NotFound => format!("no JetStream stream captures `{subject}`"),
        ErrorKind::Timeout => format!(
            "no JetStream ack for `{subject}` in time; the message may or may not be stored \
             (publishing it again with the same id is deduplicated)"
        ),
        _ => format!("publishing to `{subject}` on JetStream failed"),
    };
    Error::new(kind, what).with_source(e)
}

/// A core NATS publish that could not be handed to the connection.
pub(crate) fn core_publish(subject: &str, e: async_nats::PublishError) -> Error {
    let kind = match e.kind() {
        async_nats::client::PublishErrorKind::MaxPayloadExceeded => ErrorKind::InvalidMessage,
        async_nats::client::PublishErrorKind::InvalidSubject => ErrorKind::InvalidSubject,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, format!("publishing to `{subject}` failed")).with_source(e)
}

/// A core NATS request.
pub(crate) fn request(what: &str, e: async_nats::RequestError) -> Error {
    let kind = match e.kind() {
        async_nats::RequestErrorKind::TimedOut => ErrorKind::Timeout,
        async_nats::RequestErrorKind::NoResponders => ErrorKind::NoResponders,
        async_nats::RequestErrorKind::InvalidSubject => ErrorKind::InvalidSubject,
        async_nats::RequestErrorKind::MaxPayloadExceeded => ErrorKind::InvalidMessage,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, what.to_string()).with_source(e)
}

/// Creating a stream.
pub(crate) fn create_stream(what: &str, e: jetstream::context::CreateStreamError) -> Error {
    let kind = match e.kind() {
        CreateStreamErrorKind::JetStream(api) => api_kind(&api),
        CreateStreamErrorKind::TimedOut => ErrorKind::Timeout,
        CreateStreamErrorKind::JetStreamUnavailable => ErrorKind::Unavailable,
        CreateStreamErrorKind::EmptyStreamName
        | CreateStreamErrorKind::InvalidStreamName
        | CreateStreamErrorKind::DomainAndExternalSet => ErrorKind::InvalidConfig,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, what.to_string()).with_source(e)
}

/// Looking a stream up.
pub(crate) fn get_stream(what: &str, e: jetstream::context::GetStreamError) -> Error {
    let kind = match e.kind() {
        GetStreamErrorKind::JetStream(api) => api_kind(&api),
        GetStreamErrorKind::EmptyName | GetStreamErrorKind::InvalidStreamName => {
            ErrorKind::InvalidConfig
        }
        GetStreamErrorKind::Request => ErrorKind::Unavailable,
    };
    Error::new(kind, what.to_string()).with_source(e)
}

/// Creating or updating a consumer.
pub(crate) fn consumer(what: &str, e: jetstream::stream::ConsumerError) -> Error {
    let kind = match e.kind() {
        ConsumerErrorKind::JetStream(api) => api_kind(&api),
        ConsumerErrorKind::TimedOut => ErrorKind::Timeout,
        ConsumerErrorKind::InvalidName | ConsumerErrorKind::InvalidConsumerType => {
            ErrorKind::InvalidConfig
        }
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, what.to_string()).with_source(e)
}

/// Reading consumer info.
pub(crate) fn consumer_info(what: &str, e: jetstream::context::ConsumerInfoError) -> Error {
    use jetstream::context::ConsumerInfoErrorKind as K;
    let kind = match e.kind() {
        K::JetStream(api) => api_kind(&api),
        K::NotFound | K::StreamNotFound => ErrorKind::NotFound,
        K::TimedOut => ErrorKind::Timeout,
        K::InvalidName => ErrorKind::InvalidConfig,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, what.to_string()).with_source(e)
}
