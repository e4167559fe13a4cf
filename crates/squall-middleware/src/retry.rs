//! Retry: exponential [`Backoff`] with jitter, and the [`RetryPolicy`] deciding after each failed
//! attempt whether to try again and when.
//!
//! Retry is not a tower layer on purpose. A layer would retry inside the handler call, holding
//! the lease, a worker and (with per-key order) the whole key while it sleeps. The runtime
//! instead settles a failed attempt with a **nack carrying the backoff delay**: the message goes
//! back to the backend, the worker takes the next message, other keys keep flowing, and the
//! backend counts the attempt ([`squall_core::Delivery::attempt`]). On a backend without delayed
//! nacks the runtime republishes a delayed copy carrying the next attempt in the `squall-attempt`
//! header instead.
//!
//! After attempt `n` fails with a retryable error, the delay is [`Backoff::delay`]`(n)` (or the
//! error's [`crate::HandlerError::retry_after`] hint when longer). The policy gives up — and the
//! message is dead-lettered — when the error is permanent or fails the `retry_if` predicate, when
//! `n` reached `max_attempts`, or when the next attempt would start more than `max_elapsed`
//! after the message was published.
//!
//! ```
//! use std::time::Duration;
//! use squall_middleware::retry::{Backoff, Decision, RetryPolicy};
//! use squall_middleware::HandlerError;
//!
//! let policy = RetryPolicy::new(Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)).jitter(0.0))
//!     .max_attempts(4);
//! let err = HandlerError::msg("db down");
//! assert_eq!(policy.decide(1, Duration::ZERO, &err, 0.5), Decision::Retry(Duration::from_secs(1)));
//! assert_eq!(policy.decide(3, Duration::ZERO, &err, 0.5), Decision::Retry(Duration::from_secs(4)));
//! assert!(matches!(policy.decide(4, Duration::ZERO, &err, 0.5), Decision::GiveUp(_)));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use squall_core::{Error, Result};

use crate::error::HandlerError;

/// Attempts beyond this get the same delay as this one (the growth loop is bounded).
const MAX_GROWTH_STEPS: u32 = 10_000;

/// Exponential backoff with a cap and proportional jitter.
///
/// The base delay after attempt `n` (from 1) is `min(max, initial × multiplierⁿ⁻¹)`: non-decreasing
/// in `n` and never above `max`. [`delay`](Self::delay) subtracts up to `jitter × base`, so delays
/// spread over `[base × (1 − jitter), base]` and never exceed the base or `max`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// Growth per attempt, at least 1.
    pub multiplier: f64,
    /// The cap.
    pub max: Duration,
    /// Fraction of the base delay that may be taken off at random, 0 to 1.
    pub jitter: f64,
}

impl Backoff {
    /// Doubling from `initial` up to `max`, with 20 % jitter.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            multiplier: 2.0,
            max,
            jitter: 0.2,
        }
    }

    /// The same delay every time, no jitter.
    pub fn constant(d: Duration) -> Self {
        Backoff {
            initial: d,
            multiplier: 1.0,
            max: d,
            jitter: 0.0,
        }
    }

    /// Sets the jitter fraction.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the growth factor.
    pub fn multiplier(mut self, m: f64) -> Self {
        self.multiplier = m;
        self
    }

    /// Checks the values, naming the field to fix.
    pub fn validate(&self) -> Result<()> {
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(Error::config(
                "retry.backoff.multiplier",
                format!("must be a finite number ≥ 1, got {}", self.multiplier),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::config(
                "retry.backoff.jitter",
                format!("must be between 0 and 1, got {}", self.jitter),
            ));
        }
        if self.initial > self.max {
            return Err(Error::config(
                "retry.backoff.initial",
                format!(
                    "{:?} is above retry.backoff.max ({:?})",
                    self.initial, self.max
                ),
            ));
        }
        Ok(())
    }

    /// The delay after attempt `attempt` (1-based) before jitter.
    pub fn base(&self, attempt: u32) -> Duration {
        let max = self.max.as_secs_f64();
        let mut d = self.initial.as_secs_f64().min(max);
        // Multiplying step by step by m ≥ 1 is monotone even in floating point, which a single
        // `powi` is not guaranteed to be for multipliers a hair above 1.
        let m = if self.multiplier.is_finite() {
            self.multiplier.max(1.0)
        } else {
            1.0
        };
        for _ in 1..attempt.clamp(1, MAX_GROWTH_STEPS) {
            if d >= max || m == 1.0 {
                break;
            }
            d *= m;
        }
        if d.is_finite() && d < max {
            Duration::from_secs_f64(d).min(self.max)
        } else {
            self.max
        }
    }

    /// The delay after attempt `attempt` with jitter drawn as `unit` in `[0, 1)`:
    /// `base × (1 − jitter × unit)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.base(attempt);
        let j = self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0);
        base.mul_f64(1.0 - j).min(base)
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Redeliver after this delay.
    Retry(Duration),
    /// Stop: dead-letter the message.
    GiveUp(GiveUp),
}

/// Why the policy gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiveUp {
    /// The error is permanent, or the `retry_if` predicate refused it.
    NotRetryable,
    /// The attempt was the last one allowed.
    AttemptsExhausted {
        /// Attempts made.
        attempts: u32,
    },
    /// The next attempt would start too long after the message was published.
    ElapsedExceeded {
        /// Time since publication, plus the delay the next attempt would have had.
        elapsed: Duration,
        /// The policy's limit.
        limit: Duration,
    },
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUp::NotRetryable => f.write_str("the error is not retryable"),
            GiveUp::AttemptsExhausted { attempts } => {
                write!(f, "gave up after {attempts} attempts")
            }
            GiveUp::ElapsedExceeded { elapsed, limit } => write!(
                f,
                "gave up: the next attempt would be {elapsed:?} after publication, over the {limit:?} limit"
            ),
        }
    }
}

type Predicate = Arc<dyn Fn(&HandlerError) -> bool + Send + Sync>;

/// When to retry; see the [module docs](self).
#[derive(Clone)]
pub struct RetryPolicy {
    backoff: Backoff,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    retry_if: Option<Predicate>,
}

impl Default for RetryPolicy {
    /// Five attempts, backoff doubling from 1 s up to 1 min with 20 % jitter.
    fn default() -> Self {
        RetryPolicy::new(Backoff::exponential(
            Duration::from_secs(1),
            Duration::from_secs(60),
        ))
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .field("max_elapsed", &self.max_elapsed)
            .field("retry_if", &self.retry_if.as_ref().map(|_| ".."))
            .finish()
    }
}

impl RetryPolicy {
    /// Five attempts with `backoff`, no elapsed limit, retrying every retryable error.
    pub fn new(backoff: Backoff) -> Self {
        RetryPolicy {
            backoff,
            max_attempts: 5,
            max_elapsed: None,
            retry_if: None,
        }
    }

    /// One attempt: every failure is dead-lettered at once.
    pub fn never() -> Self {
        RetryPolicy::new(Backoff::constant(Duration::ZERO)).max_attempts(1)
    }

    /// Sets the most attempts (at least 1), the first included.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Gives up when the next attempt would start more than `d` after publication.
    pub fn max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = Some(d);
        self
    }

    /// Retries only retryable errors for which `f` is true (e.g. only timeouts).
    pub fn retry_if(mut self, f: impl Fn(&HandlerError) -> bool + Send + Sync + 'static) -> Self {
        self.retry_if = Some(Arc::new(f));
        self
    }

    /// The backoff.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The most attempts.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Checks the values, naming the field to fix.
    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::config("retry.max_attempts", "must be at least 1"));
        }
        self.backoff.validate()
    }

    /// The decision after attempt `attempt` failed with `err`, `elapsed` after publication.
    /// `unit` in `[0, 1)` draws the jitter. A deferred error is retried after its delay
    /// whatever the attempt count.
    pub fn decide(
        &self,
        attempt: u32,
        elapsed: Duration,
        err: &HandlerError,
        unit: f64,
    ) -> Decision {
        if let Some(d) = err.deferred() {
            return Decision::Retry(d);
        }
        if !err.is_retryable() || self.retry_if.as_ref().is_some_and(|f| !f(err)) {
            return Decision::GiveUp(GiveUp::NotRetryable);
        }
        if attempt >= self.max_attempts {
            return Decision::GiveUp(GiveUp::AttemptsExhausted { attempts: attempt });
        }
        let delay = self
            .backoff
            .delay(attempt, unit)
            .max(err.retry_after_hint().unwrap_or_default());
        if let Some(limit) = self.max_elapsed {
            let next = elapsed.saturating_add(delay);
            if next > limit {
                return Decision::GiveUp(GiveUp::ElapsedExceeded {
                    elapsed: next,
                    limit,
                });
            }
        }
        Decision::Retry(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backoff() -> impl Strategy<Value = Backoff> {
        (
            0u64..10_000_000,
            1.0f64..10.0,
            0u64..100_000_000_000,
            0.0f64..=1.0,
        )
            .prop_map(|(initial_us, multiplier, extra_us, jitter)| Backoff {
                initial: Duration::from_micros(initial_us),
                multiplier,
                max: Duration::from_micros(initial_us + extra_us),
                jitter,
            })
    }

    proptest! {
        #[test]
        fn base_is_monotone_up_to_the_cap(b in backoff(), a in 1u32..200, step in 1u32..50) {
            let (x, y) = (b.base(a), b.base(a + step));
            prop_assert!(x <= y, "base({a}) = {x:?} > base({}) = {y:?}", a + step);
            prop_assert!(y <= b.max);
        }

        #[test]
        fn jittered_delays_stay_within_their_bounds(b in backoff(), a in 1u32..200, unit in 0.0f64..1.0) {
            let base = b.base(a);
            let d = b.delay(a, unit);
            prop_assert!(d <= base, "{d:?} above base {base:?}");
            prop_assert!(d <= b.max, "{d:?} above max {:?}", b.max);
            let floor = base.mul_f64(1.0 - b.jitter);
            prop_assert!(d + Duration::from_micros(1) >= floor, "{d:?} below {floor:?}");
        }

        #[test]
        fn multipliers_a_hair_above_one_stay_monotone(e in 1u32..100, a in 1u32..5_000) {
            let b = Backoff {
                initial: Duration::from_millis(10),
                multiplier: 1.0 + f64::EPSILON * f64::from(e),
                max: Duration::from_secs(3600),
                jitter: 0.0,
            };
            prop_assert!(b.base(a) <= b.base(a + 1));
        }
    }

    #[test]
    fn growth_reaches_the_cap_and_stays() {
        let b =
            Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5)).jitter(0.0);
        let got: Vec<u64> = (1..=8).map(|a| b.base(a).as_millis() as u64).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.base(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn policy_gives_up_on_permanent_errors_attempts_and_elapsed_time() {
        let p = RetryPolicy::new(Backoff::constant(Duration::from_secs(10)))
            .max_attempts(3)
            .max_elapsed(Duration::from_secs(25));
        let retryable = HandlerError::msg("x");
        assert_eq!(
            p.decide(1, Duration::ZERO, &retryable, 0.0),
            Decision::Retry(Duration::from_secs(10))
        );
        assert_eq!(
            p.decide(1, Duration::ZERO, &crate::permanent("bad"), 0.0),
            Decision::GiveUp(GiveUp::NotRetryable)
        );
        assert_eq!(
            p.decide(3, Duration::ZERO, &retryable, 0.0),
            Decision::GiveUp(GiveUp::AttemptsExhausted { attempts: 3 })
        );
        assert!(matches!(
            p.decide(2, Duration::from_secs(20), &retryable, 0.0),
            Decision::GiveUp(GiveUp::ElapsedExceeded { .. })
        ));
        let only_timeouts = p.clone().retry_if(|e| e.to_string().contains("timed out"));
        assert_eq!(
            only_timeouts.decide(1, Duration::ZERO, &retryable, 0.0),
            Decision::GiveUp(GiveUp::NotRetryable)
        );
        let hinted = HandlerError::msg("open").retry_after(Duration::from_secs(15));
        assert_eq!(
            p.decide(1, Duration::ZERO, &hinted, 0.0),
            Decision::Retry(Duration::from_secs(15))
        );
        let deferred = HandlerError::defer(Duration::from_millis(500), "busy");
        assert_eq!(
            p.decide(9, Duration::from_secs(99), &deferred, 0.0),
            Decision::Retry(Duration::from_millis(500))
        );
    }

    #[test]
    fn invalid_values_name_the_key() {
        let e = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(2))
            .multiplier(0.5)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("retry.backoff.multiplier"));
        let e = RetryPolicy::default()
            .max_attempts(0)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("retry.max_attempts"));
    }
}
