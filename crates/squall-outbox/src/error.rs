//! [`Error`]: what the outbox reports, with [`Error::is_retryable`] and a conversion to
//! [`squall_core::Error`] at the trait boundary.

use squall_core::ErrorKind;

/// `Result` with the outbox [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An outbox error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite failed (busy past the busy timeout, I/O, missing table...).
    #[cfg(feature = "sqlite")]
    #[error("sqlite outbox: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed (connection lost, missing table, serialization...).
    #[cfg(feature = "postgres")]
    #[error("postgres outbox: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A message cannot be stored as it is: a timestamp after the year 2262 or a delay or time to
    /// live longer than 292 years (the columns hold signed 64-bit nanoseconds).
    #[error("message {id} cannot be stored in the outbox: {reason}")]
    Unstorable {
        /// The message id.
        id: String,
        /// What does not fit.
        reason: String,
    },
    /// A configuration value is wrong; the message names the key.
    #[error("{problem} (set `{key}`)")]
    Config {
        /// The configuration key to fix, e.g. `relay.batch_size`.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The relay was stopped at a fault point by [`crate::RelayConfig::after_publish_hook`]
    /// (tests simulate a crash this way): rows it published were not marked.
    #[error("the relay crashed at an injected fault point after publishing rows {seqs:?}")]
    Crashed {
        /// The rows published and left unmarked.
        seqs: Vec<i64>,
    },
    /// A blocking database task panicked or was cancelled.
    #[error("an outbox database task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A bug: an invariant of the relay did not hold.
    #[error("outbox invariant broken: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn config(key: &'static str, problem: impl Into<String>) -> Self {
        Error::Config {
            key,
            problem: problem.into(),
        }
    }

    /// Whether trying again later may succeed: a busy or locked SQLite file, a lost PostgreSQL
    /// connection, a serialization failure. The relay retries those with backoff whatever this
    /// says; applications use it to decide whether to retry their own transaction.
    pub fn is_retryable(&self) -> bool {
        match self {
            #[cfg(feature = "sqlite")]
            Error::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            #[cfg(feature = "postgres")]
            Error::Postgres(e) => {
                e.is_closed()
                    || e.code().is_some_and(|c| {
                        let c = c.code();
                        // Class 08: connection exception; 40001 serialization failure;
                        // 40P01 deadlock detected; 57P01 admin shutdown.
                        c.starts_with("08") || c == "40001" || c == "40P01" || c == "57P01"
                    })
                    || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
            }
            Error::Task(_) => true,
            Error::Unstorable { .. }
            | Error::Config { .. }
            | Error::Crashed { .. }
            | Error::Internal(_) => false,
        }
    }

    /// The [`ErrorKind`] this maps to at the [`squall_core`] boundary.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Unstorable { .. } => ErrorKind::InvalidMessage,
            Error::Config { .. } => ErrorKind::InvalidConfig,
            Error::Crashed { .. } | Error::Internal(_) => ErrorKind::Internal,
            _ if self.is_retryable() => ErrorKind::Unavailable,
            _ => ErrorKind::Storage,
        }
    }
}

impl From<Error> for squall_core::Error {
    fn from(e: Error) -> Self {
        let kind = e.kind();
        squall_core::Error::new(kind, "transactional outbox").with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_key_and_convert_to_core_kinds() {
        let e = Error::config("relay.batch_size", "must be at least 1");
        assert_eq!(e.to_string(), "must be at least 1 (set `relay.batch_size`)");
        assert!(!e.is_retryable());
        let core: squall_core::Error = e.into();
        assert_eq!(core.kind(), ErrorKind::InvalidConfig);
        assert!(core.to_string().contains("relay.batch_size"));
    }
}
