//! What a backend provides to run the suite: [`Harness`] and its [`Timing`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{Backend, Capabilities, Result};

/// How long the suite waits, chosen by the harness for its clock.
///
/// Under tokio's paused clock (the embedded broker) waiting costs no real time, so the durations
/// can be realistic; against a real broker they should be short but well above its latency.
/// Invariants the suite relies on (checked by [`Timing::check`]): `quiet < ack_wait`, and `slack`
/// much smaller than all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The short lease used by the lease, redelivery and dead-letter cases.
    pub ack_wait: Duration,
    /// How long to wait before concluding that nothing more arrives.
    pub quiet: Duration,
    /// The longest wait for a delivery that is expected (counted from when it became due).
    pub receive: Duration,
    /// Allowance when checking that something did not happen early (clock granularity, network
    /// latency between the client and the broker). Near zero under a paused clock.
    pub slack: Duration,
}

impl Timing {
    /// For backends whose clock follows tokio's paused clock: a 30 s lease, 5 s of quiet, 10 s to
    /// receive, 1 ms of slack (tokio's timer granularity). None of it takes real time.
    pub fn paused() -> Self {
        Timing {
            ack_wait: Duration::from_secs(30),
            quiet: Duration::from_secs(5),
            receive: Duration::from_secs(10),
            slack: Duration::from_millis(1),
        }
    }

    /// For real brokers on the same machine or network: a 2 s lease, 300 ms of quiet, 5 s to
    /// receive, 50 ms of slack.
    pub fn real() -> Self {
        Timing {
            ack_wait: Duration::from_secs(2),
            quiet: Duration::from_millis(300),
            receive: Duration::from_secs(5),
            slack: Duration::from_millis(50),
        }
    }

    /// A lease long enough that no case not about leases ever sees one expire.
    pub fn long_ack_wait(&self) -> Duration {
        (self.ack_wait + self.quiet + self.receive) * 20
    }

    /// Whether the durations are usable by the suite; the error says which relation fails.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.ack_wait.is_zero() || self.quiet.is_zero() || self.receive.is_zero() {
            return Err(format!("every duration must be positive: {self:?}"));
        }
        if self.quiet >= self.ack_wait {
            return Err(format!(
                "quiet ({:?}) must be shorter than ack_wait ({:?})",
                self.quiet, self.ack_wait
            ));
        }
        if self.slack * 4 > self.quiet.min(self.ack_wait) {
            return Err(format!(
                "slack ({:?}) must be under a quarter of quiet and ack_wait",
                self.slack
            ));
        }
        Ok(())
    }
}

/// Connects the suite to one backend.
///
/// Each case builds a fresh harness (through the closure given to
/// [`conformance_tests!`](crate::conformance_tests)), asks it for a backend and isolates itself
/// with a unique subject prefix, so a harness may share one broker between cases.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// Names the backend in reports (`embedded`, `nats`...).
    fn name(&self) -> String;

    /// What the backend can do; the suite skips the cases whose features are missing. Must equal
    /// what the backend itself reports (a case checks it).
    fn capabilities(&self) -> Capabilities;

    /// A connected backend. Each call may return a new handle or connection. After a handle was
    /// closed ([`squall_core::Publisher::close`]) the next call returns a working one (reconnected,
    /// or for an embedded broker reopened on the same storage). For backends without
    /// persistence, closing one handle must not stop consumers opened through another.
    async fn backend(&self) -> Result<Arc<dyn Backend>>;

    /// Restarts the backend keeping its storage and returns the new handle; `None` when this
    /// harness cannot restart (the restart case is then skipped). Handles from before the restart
    /// may stop working.
    async fn restart(&self) -> Result<Option<Arc<dyn Backend>>>;

    /// The durations the suite waits for.
    fn timing(&self) -> Timing;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_presets_satisfy_the_invariants() {
        assert_eq!(Timing::paused().check(), Ok(()));
        assert_eq!(Timing::real().check(), Ok(()));
        assert!(Timing::paused().long_ack_wait() > Timing::paused().receive * 10);
    }

    #[test]
    fn quiet_longer_than_the_lease_is_refused() {
        let t = Timing {
            quiet: Duration::from_secs(60),
            ..Timing::paused()
        };
        let err = t.check().unwrap_err();
        assert!(err.contains("quiet"), "{err}");
    }
}
