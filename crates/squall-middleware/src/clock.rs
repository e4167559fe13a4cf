//! The runtime's clock: the wall time when it was made plus tokio's monotonic time since, like
//! the embedded broker's. Under a paused tokio clock it advances with `tokio::time::advance`, so
//! elapsed-time limits compare with the broker's timestamps in tests as they do in production.

use std::time::Duration;

use squall_core::Timestamp;

#[derive(Debug, Clone)]
pub(crate) struct Clock {
    base: Timestamp,
    start: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            base: Timestamp::now(),
            start: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.base.saturating_add(self.start.elapsed())
    }

    pub(crate) fn since(&self, t: Timestamp) -> Duration {
        self.now().saturating_since(t)
    }
}
