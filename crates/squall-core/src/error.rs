//! Errors every backend reports in the same terms.
//!
//! An [`Error`] has a [`ErrorKind`] tests and retry logic can match on, a message an operator can act
//! on (naming the configuration key to fix where there is one), and an optional source with the
//! backend's own detail. Errors are cheap to clone so one failed group commit can be reported to every
//! publisher that shared it.

use std::fmt;
use std::sync::Arc;

/// What went wrong, in terms common to every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A subject failed validation (empty token, wildcard in a publish subject, too long...).
    InvalidSubject,
    /// A subscription pattern failed validation.
    InvalidPattern,
    /// A message broke a limit or a rule: payload or headers too large, bad id, bad header name.
    InvalidMessage,
    /// A configuration value is wrong; the message names the key.
    InvalidConfig,
    /// A stream, group or message does not exist.
    NotFound,
    /// The request conflicts with existing state (a stream with overlapping subjects, a group bound
    /// to another pattern...).
    Conflict,
    /// The backend cannot do this at all; see its [`crate::Capabilities`].
    Unsupported,
    /// The lease of a delivery expired (or was taken over) before it was acked, nacked or extended.
    LeaseExpired,
    /// A bounded queue or stream is full and its overflow policy rejects new messages.
    Full,
    /// An operation did not finish within its deadline.
    Timeout,
    /// A request found nobody to answer it.
    NoResponders,
    /// The handle, consumer or connection was closed.
    Closed,
    /// The backend cannot be reached right now (disconnected, restarting).
    Unavailable,
    /// Storage failed (I/O error, disk full, corrupt data).
    Storage,
    /// Storage refused writes after an earlier unrecoverable failure (a failed fsync). Reopen the
    /// broker after fixing the cause.
    StoragePoisoned,
    /// The peer broke the protocol.
    Protocol,
    /// A bug: an invariant did not hold.
    Internal,
}

impl ErrorKind {
    /// A short lowercase name, stable for metrics labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidSubject => "invalid_subject",
            ErrorKind::InvalidPattern => "invalid_pattern",
            ErrorKind::InvalidMessage => "invalid_message",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::LeaseExpired => "lease_expired",
            ErrorKind::Full => "full",
            ErrorKind::Timeout => "timeout",
            ErrorKind::NoResponders => "no_responders",
            ErrorKind::Closed => "closed",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Storage => "storage",
            ErrorKind::StoragePoisoned => "storage_poisoned",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error type of every squall trait method.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with an operator-facing message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A configuration error naming the key to fix.
    pub fn config(key: &str, problem: impl fmt::Display) -> Self {
        Error::new(ErrorKind::InvalidConfig, format!("{problem} (set `{key}`)"))
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the source chain.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying the same operation again later may succeed: a full queue, a timeout, an
    /// unreachable backend. Invalid input, conflicts, unsupported operations and poisoned storage
    /// are not retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Full | ErrorKind::Timeout | ErrorKind::Unavailable | ErrorKind::NoResponders
        )
    }

    /// Shorthand for a [`ErrorKind::Closed`] error.
    pub fn closed(what: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Closed, format!("{what} is closed"))
    }

    /// Shorthand for a [`ErrorKind::Unsupported`] error naming the backend and the feature.
    pub fn unsupported(backend: &str, feature: &str) -> Self {
        Error::new(
            ErrorKind::Unsupported,
            format!("the {backend} backend does not support {feature}"),
        )
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(s) = &self.source {
            d.field("source", &s.to_string());
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds_are_the_transient_ones() {
        assert!(Error::new(ErrorKind::Full, "x").is_retryable());
        assert!(Error::new(ErrorKind::Timeout, "x").is_retryable());
        assert!(Error::new(ErrorKind::Unavailable, "x").is_retryable());
        assert!(!Error::new(ErrorKind::InvalidSubject, "x").is_retryable());
        assert!(!Error::new(ErrorKind::StoragePoisoned, "x").is_retryable());
    }

    #[test]
    fn config_error_names_the_key_and_display_is_not_debug() {
        let e = Error::config("stream.max_bytes", "must be positive");
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert_eq!(e.to_string(), "must be positive (set `stream.max_bytes`)");
        let io = std::io::Error::other("disk on fire");
        let e = Error::new(ErrorKind::Storage, "append failed").with_source(io);
        assert_eq!(e.to_string(), "append failed: disk on fire");
    }
}
