//! The broker's clock: wall time that never goes backwards and follows tokio's clock.
//!
//! [`Clock::now`] is the wall time when the clock was made plus the monotonic time elapsed since
//! (`tokio::time::Instant`). So timestamps are close to the system time, immune to wall-clock jumps
//! while the broker runs, and — because tokio's clock can be paused and advanced — tests of 30 s
//! leases or 15 min delays run in microseconds under `#[tokio::test(start_paused = true)]`.

use std::time::Duration;

use squall_core::Timestamp;

/// Broker time. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Clock {
    base: Timestamp,
    start: tokio::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock reading the system time now and following tokio's monotonic clock from here.
    pub fn new() -> Self {
        Clock::starting_at(Timestamp::now())
    }

    /// A clock that reads `base` now (tests pick a fixed epoch for reproducible timestamps).
    pub fn starting_at(base: Timestamp) -> Self {
        Clock {
            base,
            start: tokio::time::Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        self.base.saturating_add(self.start.elapsed())
    }

    /// Sleeps until the clock reads `t` (returns at once if it already does).
    pub async fn sleep_until(&self, t: Timestamp) {
        let d = t.saturating_since(self.now());
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// How long until `t`, zero if past.
    pub fn until(&self, t: Timestamp) -> Duration {
        t.saturating_since(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let c = Clock::starting_at(Timestamp(1_000));
        assert_eq!(c.now(), Timestamp(1_000));
        tokio::time::advance(Duration::from_secs(900)).await;
        assert_eq!(c.now(), Timestamp(1_000 + 900_000_000_000));
        c.sleep_until(Timestamp(1_000 + 901_000_000_000)).await;
        assert!(c.now() >= Timestamp(1_000 + 901_000_000_000));
    }
}
