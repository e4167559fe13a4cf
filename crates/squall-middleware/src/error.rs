//! [`HandlerError`]: why a handler failed, whether trying again may help, and the error chain.
//!
//! A handler returns `Result<_, HandlerError>` (or any error that converts into one; `?` works on
//! every `std::error::Error + Send + Sync + 'static`). Each error has a [`Class`]:
//!
//! | class | made by | what the runtime does |
//! |---|---|---|
//! | [`Class::Retryable`] | `?`, [`retryable`], [`HandlerError::msg`] (the default) | nack with backoff until the [`crate::retry::RetryPolicy`] gives up, then dead-letter |
//! | [`Class::Permanent`] | [`permanent`] | dead-letter now: retrying cannot help (bad payload, unknown schema) |
//! | [`Class::Defer`] | [`HandlerError::defer`] | nack after exactly the given delay; never dead-letters by itself (a duplicate in progress, an open circuit) |
//!
//! The chain ([`HandlerError::chain`]) lists the context added with [`HandlerError::context`],
//! then the source error and its `source()`s, outermost first. It travels into the dead-letter
//! envelope so an operator sees why.
//!
//! Tower layers report errors as [`BoxError`]; a `HandlerError` converts into one and back
//! without losing its class ([`HandlerError::from_boxed`]), and tower's timeout error becomes a
//! retryable "handler timed out".
//!
//! ```
//! use squall_middleware::{HandlerError, permanent};
//!
//! fn parse(input: &str) -> Result<u32, HandlerError> {
//!     let n: u32 = input.parse().map_err(|e| permanent(e).context("reading the quantity"))?;
//!     Ok(n)
//! }
//! let e = parse("x").unwrap_err();
//! assert!(e.is_permanent());
//! assert_eq!(e.chain(), ["reading the quantity", "invalid digit found in string"]);
//!
//! let io: Result<(), HandlerError> = Err(std::io::Error::other("db down").into());
//! assert!(io.unwrap_err().is_retryable(), "errors are retryable unless said otherwise");
//! ```

use std::fmt;
use std::time::Duration;

/// The error type tower uses between layers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Whether retrying may help. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A transient failure: retry with backoff (the default).
    Retryable,
    /// Retrying cannot help: dead-letter at once.
    Permanent,
    /// Not a failure of the message: redeliver after the given delay.
    Defer(Duration),
}

/// Why a handler failed. See the [module docs](self).
///
/// It deliberately does not implement `std::error::Error`, so that `?` converts any error into it
/// (like `anyhow::Error`); it converts into a [`BoxError`] for tower.
pub struct HandlerError {
    class: Class,
    retry_after: Option<Duration>,
    /// Context messages, outermost first.
    context: Vec<String>,
    source: BoxError,
}

/// A retryable error (the default class).
pub fn retryable(e: impl Into<BoxError>) -> HandlerError {
    HandlerError::retryable(e)
}

/// A permanent error: the message is dead-lettered without further attempts.
pub fn permanent(e: impl Into<BoxError>) -> HandlerError {
    HandlerError::permanent(e)
}

/// The longest chain entry kept, in bytes; longer ones are cut.
const MAX_ENTRY: usize = 1024;
/// The most chain entries kept.
const MAX_CHAIN: usize = 16;

impl HandlerError {
    /// A retryable error.
    pub fn retryable(e: impl Into<BoxError>) -> Self {
        let mut h = HandlerError::from_boxed(e.into());
        h.class = Class::Retryable;
        h
    }

    /// A permanent error.
    pub fn permanent(e: impl Into<BoxError>) -> Self {
        let mut h = HandlerError::from_boxed(e.into());
        h.class = Class::Permanent;
        h
    }

    /// Redeliver after `after`, without counting as a failure of the message. `why` is logged.
    pub fn defer(after: Duration, why: impl Into<BoxError>) -> Self {
        let mut h = HandlerError::from_boxed(why.into());
        h.class = Class::Defer(after);
        h
    }

    /// A retryable error with just a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        HandlerError::retryable(message.to_string())
    }

    /// Recovers a `HandlerError` a tower layer passed on as a [`BoxError`] (keeping its class);
    /// tower's timeout becomes a retryable "handler timed out"; anything else is retryable.
    pub fn from_boxed(e: BoxError) -> Self {
        let e = match e.downcast::<Wrapped>() {
            Ok(w) => return w.0,
            Err(e) => e,
        };
        let mut h = HandlerError {
            class: Class::Retryable,
            retry_after: None,
            context: Vec::new(),
            source: e,
        };
        if h.source.is::<tower::timeout::error::Elapsed>() {
            h.context.push("handler timed out".into());
        }
        h
    }

    /// Adds an outer context message (shown first in the chain).
    pub fn context(mut self, message: impl fmt::Display) -> Self {
        self.context.insert(0, message.to_string());
        self
    }

    /// Asks the runtime to wait at least `d` before the next attempt (e.g. an open circuit's
    /// remaining time). The backoff still applies when it is longer.
    pub fn retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// The class.
    pub fn class(&self) -> Class {
        self.class
    }
    /// Whether the class is [`Class::Retryable`].
    pub fn is_retryable(&self) -> bool {
        self.class == Class::Retryable
    }
    /// Whether the class is [`Class::Permanent`].
    pub fn is_permanent(&self) -> bool {
        self.class == Class::Permanent
    }
    /// The delay of a [`Class::Defer`] error.
    pub fn deferred(&self) -> Option<Duration> {
        match self.class {
            Class::Defer(d) => Some(d),
            _ => None,
        }
    }
    /// The hint set by [`HandlerError::retry_after`].
    pub fn retry_after_hint(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The source error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// The first error of type `T` in the source chain.
    pub fn find<T: std::error::Error + 'static>(&self) -> Option<&T> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&*self.source);
        while let Some(e) = cur {
            if let Some(t) = e.downcast_ref::<T>() {
                return Some(t);
            }
            cur = e.source();
        }
        None
    }

    /// Context messages, then the source and its causes, outermost first. An error whose
    /// `Display` already ends with its cause (`"append failed: disk full"` caused by
    /// `"disk full"`) is shortened so no entry repeats the next. At most 16 entries of 1 KiB.
    pub fn chain(&self) -> Vec<String> {
        let mut raw = Vec::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&*self.source);
        while let Some(e) = cur {
            if raw.len() == MAX_CHAIN {
                break;
            }
            raw.push(e.to_string());
            cur = e.source();
        }
        let mut out: Vec<String> = self.context.clone();
        for (i, s) in raw.iter().enumerate() {
            let own = match raw.get(i + 1) {
                Some(next) => s
                    .strip_suffix(next.as_str())
                    .and_then(|p| p.strip_suffix(": "))
                    .unwrap_or(s),
                None => s,
            };
            out.push(own.to_string());
        }
        out.truncate(MAX_CHAIN);
        for s in &mut out {
            if s.len() > MAX_ENTRY {
                let mut cut = MAX_ENTRY;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
                s.push('…');
            }
        }
        out
    }
}

impl HandlerError {
    /// A copy for each message of a failed batch: same class, hint and chain (the source
    /// becomes the last chain entry; a panic stays findable as [`crate::panic::Panicked`]).
    pub(crate) fn replicate(&self) -> HandlerError {
        let mut context = self.chain();
        let last = context.pop().unwrap_or_default();
        let source: BoxError = match self.find::<crate::panic::Panicked>() {
            Some(p) => Box::new(p.clone()),
            None => last.into(),
        };
        HandlerError {
            class: self.class,
            retry_after: self.retry_after,
            context,
            source,
        }
    }
}

/// Converts the error of an inner service (a `HandlerError`, or a tower [`BoxError`]).
pub(crate) fn from_inner<E: Into<BoxError>>(e: E) -> HandlerError {
    HandlerError::from_boxed(e.into())
}

impl<E> From<E> for HandlerError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        HandlerError::from_boxed(Box::new(e))
    }
}

impl From<HandlerError> for BoxError {
    fn from(e: HandlerError) -> Self {
        Box::new(Wrapped(e))
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.chain().join(": "))
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("class", &self.class)
            .field("retry_after", &self.retry_after)
            .field("chain", &self.chain())
            .finish()
    }
}

/// A [`HandlerError`] travelling through tower as a [`BoxError`].
struct Wrapped(HandlerError);

impl fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_survives_a_trip_through_box_error() {
        let e = permanent("bad payload").context("decoding");
        let boxed: BoxError = e.into();
        let back = HandlerError::from_boxed(boxed);
        assert!(back.is_permanent());
        assert_eq!(back.chain(), ["decoding", "bad payload"]);
        let d = HandlerError::defer(Duration::from_secs(2), "busy");
        let back = HandlerError::from_boxed(d.into());
        assert_eq!(back.deferred(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn chain_drops_causes_repeated_in_the_display() {
        let io = std::io::Error::other("disk full");
        let core = squall_core::Error::new(squall_core::ErrorKind::Storage, "append failed")
            .with_source(io);
        assert_eq!(core.to_string(), "append failed: disk full");
        let e = HandlerError::from(core).context("saving order 7");
        assert_eq!(e.chain(), ["saving order 7", "append failed", "disk full"]);
        assert_eq!(e.to_string(), "saving order 7: append failed: disk full");
        assert!(e.find::<std::io::Error>().is_some());
        assert!(e.find::<squall_core::Error>().is_some());
    }

    #[test]
    fn tower_timeouts_are_retryable_and_say_so() {
        let boxed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        let e = HandlerError::from_boxed(boxed);
        assert!(e.is_retryable());
        assert_eq!(e.chain()[0], "handler timed out");
    }

    #[test]
    fn long_entries_are_cut() {
        let e = HandlerError::msg("é".repeat(MAX_ENTRY));
        let c = e.chain();
        assert!(c[0].len() <= MAX_ENTRY + '…'.len_utf8());
        assert!(c[0].ends_with('…'));
    }
}
