//! Helpers the cases are written with, public so adapters can write their own tests the same way:
//! unique prefixes, receiving with deadlines, asserting quiet, counting deliveries per id.
//!
//! Every helper waits with `tokio::time`, so it runs under a paused clock as well as a real one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use squall_core::{Consumer, Delivery, Error, ErrorKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A subject prefix no other test uses: `t.<case>.<8 hex chars>`.
///
/// ```
/// let p = squall_testkit::unique_prefix("fan_out");
/// assert!(p.starts_with("t.fan_out."));
/// assert_ne!(p, squall_testkit::unique_prefix("fan_out"));
/// ```
pub fn unique_prefix(case: &str) -> String {
    format!("t.{case}.{}", unique_tag())
}

/// Eight random hex characters (the random tail of a UUIDv7).
pub(crate) fn unique_tag() -> String {
    let s = uuid::Uuid::now_v7().simple().to_string();
    s[s.len() - 8..].to_string()
}

/// Unwraps squall results with a message saying what was being done.
pub trait Must<T> {
    /// The value, or a panic naming `what`, the error kind and the message.
    fn must(self, what: &str) -> T;
}

impl<T> Must<T> for squall_core::Result<T> {
    #[track_caller]
    fn must(self, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{what}: failed with {} error: {e}", e.kind()),
        }
    }
}

/// Asserts `result` failed with one of `kinds`; returns the error. Panics naming `what` otherwise.
#[track_caller]
pub fn expect_err<T: fmt::Debug>(
    result: squall_core::Result<T>,
    kinds: &[ErrorKind],
    what: &str,
) -> Error {
    match result {
        Ok(v) => panic!("{what}: expected an error of kind {kinds:?}, got Ok({v:?})"),
        Err(e) => {
            assert!(
                kinds.contains(&e.kind()),
                "{what}: expected an error of kind {kinds:?}, got {} error: {e}",
                e.kind()
            );
            e
        }
    }
}

/// Receives until `n` deliveries arrived or `timeout` passed; returns what arrived (possibly
/// fewer: the caller asserts). Stops early if the consumer ends. Panics if the consumer reports
/// an error, naming it.
pub async fn collect(consumer: &mut dyn Consumer, n: usize, timeout: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => out.push(d),
            Ok(Some(Err(e))) => panic!(
                "consumer reported {} error after {} of {n} deliveries: {e}",
                e.kind(),
                out.len()
            ),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Receives exactly one delivery within `timeout`, panicking with `what` if none comes.
pub async fn recv(consumer: &mut dyn Consumer, timeout: Duration, what: &str) -> Delivery {
    match tokio::time::timeout(timeout, consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("{what}: consumer reported {} error: {e}", e.kind()),
        Ok(None) => panic!("{what}: the consumer ended"),
        Err(_) => panic!("{what}: nothing arrived within {timeout:?}"),
    }
}

/// Asserts that nothing arrives on `consumer` for `quiet`. A delivery (named in the panic), an
/// error or the consumer ending all fail.
pub async fn expect_quiet(consumer: &mut dyn Consumer, quiet: Duration) {
    match tokio::time::timeout(quiet, consumer.next()).await {
        Err(_) => {}
        Ok(Some(Ok(d))) => panic!(
            "expected nothing for {quiet:?}, got message {} on `{}` (attempt {}, sequence {})",
            d.message().id(),
            d.message().subject(),
            d.attempt(),
            d.sequence()
        ),
        Ok(Some(Err(e))) => panic!(
            "expected nothing for {quiet:?}, the consumer reported {} error: {e}",
            e.kind()
        ),
        Ok(None) => panic!("expected nothing for {quiet:?}, but the consumer ended"),
    }
}

/// Counts deliveries per message id against the ids expected, so failures report how many were
/// missing, duplicated or unexpected instead of hiding duplicates.
///
/// ```
/// use squall_testkit::Tally;
///
/// let mut t = Tally::expecting(["a", "b", "c"]);
/// t.record("a");
/// t.record("a");
/// t.record("x");
/// assert_eq!(t.missing(), vec!["b", "c"]);
/// assert_eq!(t.duplicates(), 1);
/// assert_eq!(t.unexpected(), vec!["x"]);
/// assert!(!t.is_exact());
/// assert!(t.to_string().contains("missing 2"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Tally {
    expected: Vec<String>,
    counts: BTreeMap<String, u32>,
    deliveries: u64,
}

impl Tally {
    /// A tally expecting each of `ids` exactly once.
    pub fn expecting<I, S>(ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let expected: Vec<String> = ids.into_iter().map(Into::into).collect();
        let counts = expected.iter().map(|id| (id.clone(), 0)).collect();
        Tally {
            expected,
            counts,
            deliveries: 0,
        }
    }

    /// Counts one delivery of `id`; returns how many times it has been seen, this one included.
    pub fn record(&mut self, id: &str) -> u32 {
        self.deliveries += 1;
        let c = self.counts.entry(id.to_string()).or_insert(0);
        *c += 1;
        *c
    }

    /// Counts one delivery.
    pub fn record_delivery(&mut self, d: &Delivery) -> u32 {
        self.record(d.message().id().as_str())
    }

    /// How many times `id` was seen.
    pub fn count(&self, id: &str) -> u32 {
        self.counts.get(id).copied().unwrap_or(0)
    }

    /// Expected ids never seen, in the order they were expected.
    pub fn missing(&self) -> Vec<&str> {
        self.expected
            .iter()
            .filter(|id| self.count(id) == 0)
            .map(String::as_str)
            .collect()
    }

    /// Extra deliveries: for every id seen more than once, the deliveries beyond the first.
    pub fn duplicates(&self) -> u64 {
        self.counts
            .values()
            .map(|&c| u64::from(c.saturating_sub(1)))
            .sum()
    }

    /// Ids seen more than once, with their counts.
    pub fn duplicated(&self) -> Vec<(&str, u32)> {
        self.counts
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(id, c)| (id.as_str(), *c))
            .collect()
    }

    /// Ids seen that were not expected.
    pub fn unexpected(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .counts
            .iter()
            .filter(|(id, c)| **c > 0 && !self.expected.contains(id))
            .map(|(id, _)| id.as_str())
            .collect();
        out.sort_unstable();
        out
    }

    /// Deliveries recorded.
    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }

    /// Whether every expected id was seen exactly once and nothing else was.
    pub fn is_exact(&self) -> bool {
        self.missing().is_empty() && self.duplicates() == 0 && self.unexpected().is_empty()
    }
}

/// Lists up to ten items, then how many more.
fn list<T: fmt::Display>(items: &[T]) -> String {
    let mut s: Vec<String> = items.iter().take(10).map(ToString::to_string).collect();
    if items.len() > 10 {
        s.push(format!("... {} more", items.len() - 10));
    }
    s.join(", ")
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let missing = self.missing();
        let dup: Vec<String> = self
            .duplicated()
            .into_iter()
            .map(|(id, c)| format!("{id}×{c}"))
            .collect();
        let unexpected = self.unexpected();
        write!(
            f,
            "expected {} ids, got {} deliveries of {} distinct ids; missing {}",
            self.expected.len(),
            self.deliveries,
            self.counts.values().filter(|c| **c > 0).count(),
            missing.len()
        )?;
        if !missing.is_empty() {
            write!(f, " [{}]", list(&missing))?;
        }
        write!(f, "; duplicates {} ({} ids)", self.duplicates(), dup.len())?;
        if !dup.is_empty() {
            write!(f, " [{}]", list(&dup))?;
        }
        write!(f, "; unexpected {}", unexpected.len())?;
        if !unexpected.is_empty() {
            write!(f, " [{}]", list(&unexpected))?;
        }
        Ok(())
    }
}

/// What a consumer saw of one delivery, kept after the delivery is settled.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Index of the consumer (in the order given) that received it.
    pub member: usize,
    /// Message id.
    pub id: String,
    /// Subject.
    pub subject: String,
    /// Ordering key.
    pub key: Option<String>,
    /// Delivery attempt.
    pub attempt: u32,
    /// Payload.
    pub payload: Bytes,
}

impl Seen {
    /// Summarises `d` as received by consumer `member`.
    pub fn of(member: usize, d: &Delivery) -> Self {
        let m = d.message();
        Seen {
            member,
            id: m.id().to_string(),
            subject: m.subject().to_string(),
            key: m.key().map(str::to_string),
            attempt: d.attempt(),
            payload: m.payload().clone(),
        }
    }
}

/// Runs `consumers` concurrently, acking every delivery, until together they received `total`
/// deliveries or `timeout` passed. Returns the consumers (to close them or assert quiet) and what
/// each received. Panics if a consumer reports an error or an ack fails.
pub async fn consume_all(
    consumers: Vec<Box<dyn Consumer>>,
    total: usize,
    timeout: Duration,
) -> (Vec<Box<dyn Consumer>>, Vec<Seen>) {
    let deadline = Instant::now() + timeout;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = watch::channel(total == 0);
    let done_tx = Arc::new(done_tx);
    let mut tasks = Vec::new();
    for (member, mut c) in consumers.into_iter().enumerate() {
        let seen = seen.clone();
        let done_tx = done_tx.clone();
        let mut done_rx = done_rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = done_rx.wait_for(|d| *d) => break,
                    r = tokio::time::timeout_at(deadline, c.next()) => r,
                };
                match next {
                    Ok(Some(Ok(d))) => {
                        let s = Seen::of(member, &d);
                        let what =
                            format!("consumer {member} acking {} attempt {}", s.id, s.attempt);
                        d.ack().await.must(&what);
                        let n = {
                            let mut v = seen.lock().expect("seen lock");
                            v.push(s);
                            v.len()
                        };
                        if n >= total {
                            done_tx.send_replace(true);
                        }
                    }
                    Ok(Some(Err(e))) => {
                        panic!("consumer {member} reported {} error: {e}", e.kind())
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            c
        }));
    }
    let mut back = Vec::with_capacity(tasks.len());
    for t in tasks {
        back.push(join(t).await);
    }
    let seen = std::mem::take(&mut *seen.lock().expect("seen lock"));
    (back, seen)
}

/// Awaits a spawned task, re-raising its panic (with its message) in the caller.
pub async fn join<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("a task of the case was cancelled: {e}"),
    }
}

/// A small deterministic generator (xorshift64*) so random choices replay from a printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A duration in `0..=max`, in steps of `max / 1000`.
    pub fn duration(&mut self, max: Duration) -> Duration {
        max * u32::try_from(self.below(1001)).unwrap_or(0) / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_tally_reports_nothing_wrong() {
        let mut t = Tally::expecting(["a", "b"]);
        assert_eq!(t.record("b"), 1);
        assert_eq!(t.record("a"), 1);
        assert!(t.is_exact(), "{t}");
        assert_eq!(t.deliveries(), 2);
        assert_eq!(
            t.to_string(),
            "expected 2 ids, got 2 deliveries of 2 distinct ids; missing 0; duplicates 0 (0 ids); unexpected 0"
        );
    }

    #[test]
    fn duplicates_are_counted_not_hidden() {
        let mut t = Tally::expecting(["a", "b"]);
        t.record("a");
        assert_eq!(t.record("a"), 2);
        assert_eq!(t.record("a"), 3);
        t.record("b");
        assert_eq!(t.duplicates(), 2);
        assert_eq!(t.duplicated(), vec![("a", 3)]);
        assert!(t.missing().is_empty());
        assert!(!t.is_exact());
        let s = t.to_string();
        assert!(s.contains("got 4 deliveries of 2 distinct ids"), "{s}");
        assert!(s.contains("duplicates 2 (1 ids) [a×3]"), "{s}");
    }

    #[test]
    fn missing_and_unexpected_are_listed_and_long_lists_cut() {
        let ids: Vec<String> = (0..15).map(|i| format!("m{i}")).collect();
        let mut t = Tally::expecting(ids.clone());
        t.record("zz");
        assert_eq!(t.missing().len(), 15);
        assert_eq!(t.unexpected(), vec!["zz"]);
        let s = t.to_string();
        assert!(s.contains("missing 15 [m0, m1"), "{s}");
        assert!(s.contains("... 5 more"), "{s}");
        assert!(s.contains("unexpected 1 [zz]"), "{s}");
    }

    #[test]
    fn rng_replays_from_its_seed_and_stays_in_range() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..20).map(|_| a.below(7)).collect();
        let ys: Vec<u64> = (0..20).map(|_| b.below(7)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| *x < 7));
        assert!(xs.iter().any(|x| *x != xs[0]), "not constant: {xs:?}");
        let d = Rng::new(0).duration(Duration::from_millis(10));
        assert!(d <= Duration::from_millis(10));
    }

    #[test]
    fn prefixes_are_valid_subjects_and_unique() {
        let a = unique_prefix("publish_subscribe");
        let b = unique_prefix("publish_subscribe");
        assert_ne!(a, b);
        squall_core::Subject::new(format!("{a}.x")).expect("prefix makes valid subjects");
    }

    #[test]
    fn must_and_expect_err_name_what_failed() {
        let ok: squall_core::Result<u8> = Ok(1);
        assert_eq!(ok.must("reading"), 1);
        let bad: squall_core::Result<u8> = Err(Error::new(ErrorKind::Timeout, "slow"));
        let e = expect_err(
            bad,
            &[ErrorKind::Timeout, ErrorKind::NoResponders],
            "request",
        );
        assert_eq!(e.kind(), ErrorKind::Timeout);
        let r = std::panic::catch_unwind(|| {
            let bad: squall_core::Result<u8> = Err(Error::new(ErrorKind::Full, "full"));
            bad.must("publishing m1")
        });
        let msg = r.unwrap_err().downcast::<String>().expect("string panic");
        assert!(
            msg.contains("publishing m1: failed with full error: full"),
            "{msg}"
        );
    }
}
