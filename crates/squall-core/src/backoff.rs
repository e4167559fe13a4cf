//! [`Backoff`]: the reconnect and retry delays adapters share.
//!
//! Exponential with full jitter (each delay a random time up to a cap that doubles per attempt),
//! never under the minimum, so that many clients cut off at once do not come back in step.

use std::time::Duration;

/// Exponential backoff with full jitter: attempt `n` waits a random time in
/// `[min, min(max, min * 2^n)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    /// The next delay; the cap doubles with each call, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = rand::random::<f64>();
        self.min.max(cap.mul_f64(jitter))
    }

    /// Starts again from the first attempt (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_stays_within_bounds_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(min, max);
        let delays: Vec<Duration> = (0..30).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= min && *d <= max), "{delays:?}");
        assert!(
            delays[10..].iter().any(|d| *d > min * 4),
            "the cap grows: {delays:?}"
        );
        b.reset();
        assert_eq!(b.next_delay(), min, "the first delay after a reset");
    }
}
