//! The sweeper: processes expired leases (redelivery, dead letters) and forgets inactive
//! non-durable groups even when no consumer is waiting. One task per broker; it holds only a weak
//! reference while it sleeps, so dropping every handle (or closing the broker) stops it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use squall_core::Timestamp;

use crate::broker::{Broker, Inner};
use crate::group::Ctx;

impl Broker {
    /// One pass of the sweeper: expired leases of every group, forgotten idle groups. Returns
    /// when it should run next at the latest (the earliest lease deadline).
    pub(crate) async fn sweep(&self) -> Option<Timestamp> {
        let mut wake: Option<Timestamp> = None;
        let ttl = self.inner.config.inactive_group_ttl;
        for s in self.all_streams() {
            let now = self.inner.clock.now();
            let jobs = {
                let mut st = s.lock();
                let mut ctx = Ctx::new(&s.name, s.store.as_ref());
                let mut forget = Vec::new();
                for g in st.groups.values_mut() {
                    g.expire_leases(now, &mut ctx);
                    if let Err(e) = g.flush_ops(s.store.as_ref()) {
                        tracing::error!(stream = %s.name, group = %g.name, "recording progress failed: {e}");
                    }
                    if !g.config.durable
                        && g.idle_since.is_some_and(|t| t.saturating_add(ttl) <= now)
                    {
                        forget.push(g.name.clone());
                    }
                    if let Some(t) = g.next_deadline() {
                        wake = Some(wake.map_or(t, |w| w.min(t)));
                    }
                }
                for name in forget {
                    tracing::debug!(stream = %s.name, group = %name, "forgetting an inactive group");
                    st.groups.remove(&name);
                    if let Err(e) = s.store.delete_consumer(&name) {
                        tracing::warn!(stream = %s.name, group = %name, "forgetting consumer failed: {e}");
                    }
                }
                let changed = !ctx.jobs.is_empty() || !ctx.expired_leases.is_empty();
                self.report_expired(&s, std::mem::take(&mut ctx.expired_leases));
                if changed {
                    s.notify.notify_waiters();
                }
                std::mem::take(&mut ctx.jobs)
            };
            if !jobs.is_empty() {
                let _ = self.dead_letter(s.clone(), jobs).await;
            }
        }
        wake
    }
}

/// Runs [`Broker::sweep`] until the broker is closed or dropped. Holds only a weak reference
/// while sleeping, so dropping every handle stops it.
pub(crate) async fn sweeper(inner: std::sync::Weak<Inner>) {
    loop {
        let (clock, interval, wake) = {
            let Some(inner) = inner.upgrade() else { return };
            if inner.closed.load(Ordering::Acquire) {
                return;
            }
            let broker = Broker::from_inner(inner);
            let wake = broker.sweep().await;
            (
                broker.inner.clock.clone(),
                broker.inner.config.sweep_interval,
                wake,
            )
        };
        let latest = clock.now().saturating_add(interval);
        clock
            .sleep_until(
                wake.map_or(latest, |w| w.min(latest))
                    .max(clock.now().saturating_add(Duration::from_millis(1))),
            )
            .await;
    }
}
