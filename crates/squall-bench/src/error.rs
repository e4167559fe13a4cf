//! [`BenchError`]: what can stop a benchmark, a row or the whole run.

use std::time::Duration;

/// Why a benchmark step failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Other processes used the CPU before a measurement and `allow_busy` was off.
    #[error(
        "the machine is busy: other processes used {other_cores:.2} of a core (limit {limit:.2}) \
         while idle was sampled for {sample:?}; figures taken now would be wrong. Wait for a quiet \
         machine, or pass --allow-busy to run anyway (every output then says the machine was busy)"
    )]
    Busy {
        /// Cores used by other processes during the sample.
        other_cores: f64,
        /// The threshold.
        limit: f64,
        /// How long the sample was.
        sample: Duration,
    },
    /// A broker or its client reported an error.
    #[error("{target}: {what}: {detail}")]
    Broker {
        /// The target (`nats-js`, `squall-serve`...).
        target: &'static str,
        /// What the harness was doing.
        what: String,
        /// The error, as text (each client has its own error type).
        detail: String,
    },
    /// A run did not complete within its deadline.
    #[error("{target}: {what}")]
    Stalled {
        /// The target.
        target: &'static str,
        /// What stalled, with the counts seen.
        what: String,
    },
    /// A peer process could not be started or stopped.
    #[error("starting or stopping {what}: {detail}")]
    Process {
        /// The process.
        what: String,
        /// Why.
        detail: String,
    },
    /// The options make no sense.
    #[error("invalid option {option}: {detail}")]
    Options {
        /// The option name.
        option: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Reading `/proc` or writing a report failed.
    #[error("{what}: {source}")]
    Io {
        /// What was read or written.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl BenchError {
    /// A broker error from any displayable client error.
    pub fn broker(
        target: &'static str,
        what: impl Into<String>,
        e: impl std::fmt::Display,
    ) -> Self {
        BenchError::Broker {
            target,
            what: what.into(),
            detail: e.to_string(),
        }
    }

    /// An I/O error with context.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result with [`BenchError`].
pub type Result<T, E = BenchError> = std::result::Result<T, E>;
