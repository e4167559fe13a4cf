//! Mapping the AMQP client's errors to squall's [`ErrorKind`]s.
//!
//! | AMQP / client error | kind |
//! |---|---|
//! | I/O error, missing heartbeat, channel or connection not open, `CONNECTION_FORCED` | `Unavailable` |
//! | `NOT_FOUND` (404) | `NotFound` |
//! | `PRECONDITION_FAILED` (406): a queue or exchange exists with other settings | `Conflict` |
//! | `RESOURCE_LOCKED` (405): an exclusive queue of another connection | `Conflict` |
//! | `ACCESS_REFUSED` (403), `NOT_ALLOWED` (530), authentication | `InvalidConfig` (credentials, vhost permissions) |
//! | `CONTENT_TOO_LARGE` (311) | `InvalidMessage` |
//! | `NO_ROUTE`, `NO_CONSUMERS` | `NoResponders` |
//! | anything else the broker or the codec reports | `Protocol` |

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use squall_core::{Error, ErrorKind};

/// A squall error for `what` failing with the client error `e`.
pub(crate) fn amqp(what: &str, e: lapin::Error) -> Error {
    use lapin::ErrorKind as L;
    let kind = match e.kind() {
        L::IOError(_)
        | L::MissingHeartbeatError
        | L::InvalidChannel(_)
        | L::InvalidChannelState(..)
        | L::InvalidConnectionState(_)
        | L::RuntimeShutdownError(_)
        | L::ChannelsLimitReached => ErrorKind::Unavailable,
        L::AuthProviderError(_) => ErrorKind::InvalidConfig,
        L::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(s) => match s {
                AMQPSoftError::NOTFOUND => ErrorKind::NotFound,
                AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::RESOURCELOCKED => {
                    ErrorKind::Conflict
                }
                AMQPSoftError::ACCESSREFUSED => ErrorKind::InvalidConfig,
                AMQPSoftError::CONTENTTOOLARGE => ErrorKind::InvalidMessage,
                AMQPSoftError::NOROUTE | AMQPSoftError::NOCONSUMERS => ErrorKind::NoResponders,
            },
            AMQPErrorKind::Hard(h) => match h {
                AMQPHardError::CONNECTIONFORCED => ErrorKind::Unavailable,
                AMQPHardError::NOTALLOWED | AMQPHardError::INVALIDPATH => ErrorKind::InvalidConfig,
                _ => ErrorKind::Protocol,
            },
        },
        _ => ErrorKind::Protocol,
    };
    let hint = match kind {
        ErrorKind::InvalidConfig => " (check the user, password and vhost in the URL)",
        ErrorKind::Conflict => {
            " (it exists with other settings: another queue type, durability or expiry)"
        }
        _ => "",
    };
    Error::new(kind, format!("{what}{hint}")).with_source(e)
}

/// The connection or channel is gone: the operation's outcome is unknown where it was in flight.
pub(crate) fn unavailable(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unavailable, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    #[test]
    fn kinds_follow_the_table() {
        let soft = |s| {
            let e: lapin::Error =
                lapin::ErrorKind::ProtocolError(AMQPError::new(AMQPErrorKind::Soft(s), "x".into()))
                    .into();
            amqp("declaring", e).kind()
        };
        assert_eq!(soft(AMQPSoftError::NOTFOUND), ErrorKind::NotFound);
        assert_eq!(soft(AMQPSoftError::PRECONDITIONFAILED), ErrorKind::Conflict);
        assert_eq!(soft(AMQPSoftError::ACCESSREFUSED), ErrorKind::InvalidConfig);
        let io: lapin::Error = std::io::Error::other("reset").into();
        let e = amqp("publishing", io);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().starts_with("publishing: "), "{e}");
    }
}
