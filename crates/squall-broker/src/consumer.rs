//! The consumer handle of a subscription ([`BrokerConsumer`]) and the acker its deliveries settle
//! through.
//!
//! Delivery is pull-based: `next()` takes the lock, leases one message if the group has one and
//! the member has room, and otherwise parks on the stream's `Notify` until something changes or the
//! group's next timer (a lease deadline, a delayed message) comes due. Nothing is pushed into
//! per-consumer buffers, so a slow consumer holds at most `max_in_flight` leases and never slows
//! the broker or other consumers; a lease starts exactly when the message is handed over.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{
    Acker, Consumer, Delivery, DeliveryInfo, Error, ErrorKind, LeaseId, Result, StartPosition,
    Subscription, Timestamp,
};

use crate::broker::Broker;
use crate::events::BrokerEvent;
use crate::group::{Ctx, Group, GroupConfig, LeaseProblem};
use crate::stream::Stream;

/// A live subscription on the embedded broker. Closing (or dropping) it releases its unsettled
/// deliveries for redelivery at once; a fan-out subscription's private consumer and a non-durable
/// group without members are removed.
pub struct BrokerConsumer {
    broker: Broker,
    stream: Arc<Stream>,
    group: Arc<str>,
    member: u64,
    acker: Arc<GroupAcker>,
    closed: bool,
}

impl BrokerConsumer {
    pub(crate) fn open(broker: Broker, sub: Subscription) -> Result<Self> {
        sub.validate()?;
        if broker.is_closed() {
            return Err(Error::closed("broker"));
        }
        let stream = resolve_stream(&broker, &sub)?;
        let member = broker.inner.member_ids.fetch_add(1, Ordering::Relaxed);
        let config = GroupConfig::new(
            sub.pattern.clone(),
            sub.durable && sub.group.is_some(),
            &sub.policy,
        );
        let group: Arc<str> = match &sub.group {
            Some(g) => g.as_str().into(),
            None => format!("_sub.{member}").into(),
        };
        {
            let mut st = stream.lock();
            match st.groups.get_mut(&group) {
                Some(g) => {
                    if g.config.pattern != sub.pattern {
                        return Err(Error::new(
                            ErrorKind::Conflict,
                            format!(
                                "group `{group}` consumes `{}`, not `{}`",
                                g.config.pattern, sub.pattern
                            ),
                        ));
                    }
                    g.add_member(member, sub.policy.max_in_flight);
                }
                None => {
                    let cursor = start_cursor(&stream, sub.start_position())?;
                    let mut g = Group::new(group.clone(), config, sub.group.is_none(), cursor);
                    g.add_member(member, sub.policy.max_in_flight);
                    g.flush_ops(stream.store.as_ref())?;
                    st.groups.insert(group.clone(), g);
                }
            }
        }
        let acker = Arc::new(GroupAcker {
            broker: broker.clone(),
            stream: stream.clone(),
            group: group.clone(),
        });
        Ok(BrokerConsumer {
            broker,
            stream,
            group,
            member,
            acker,
            closed: false,
        })
    }

    /// The group (or private consumer) name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The stream consumed.
    pub fn stream(&self) -> &str {
        &self.stream.name
    }

    fn leave(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let now = self.broker.inner.clock.now();
        {
            let mut st = self.stream.lock();
            let remove = match st.groups.get_mut(&self.group) {
                Some(g) => {
                    g.remove_member(self.member, now);
                    if let Err(e) = g.flush_ops(self.stream.store.as_ref()) {
                        tracing::error!(stream = %self.stream.name, group = %self.group, "recording progress failed: {e}");
                    }
                    // A fan-out subscription's private consumer goes with it. A named group
                    // stays: its members may come back (non-durable ones are forgotten by the
                    // sweeper after `inactive_group_ttl`).
                    g.members.is_empty() && g.ephemeral
                }
                None => false,
            };
            if remove {
                st.groups.remove(&self.group);
                if let Err(e) = self.stream.store.delete_consumer(&self.group) {
                    tracing::warn!(stream = %self.stream.name, group = %self.group, "forgetting consumer failed: {e}");
                }
                if let Err(e) = self.stream.remove_consumed(&st) {
                    tracing::warn!(stream = %self.stream.name, "work-queue removal failed: {e}");
                }
            }
        }
        self.stream.notify.notify_waiters();
    }
}

fn resolve_stream(broker: &Broker, sub: &Subscription) -> Result<Arc<Stream>> {
    if let Some(name) = &sub.stream {
        return broker
            .stream(name)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no stream `{name}`")));
    }
    let routes = broker
        .inner
        .routes
        .read()
        .unwrap_or_else(|p| p.into_inner());
    let mut overlapping = Vec::new();
    for s in &routes.explicit {
        let st = s.lock();
        if st.config.subjects.iter().any(|p| p.overlaps(&sub.pattern)) {
            let inside = st
                .config
                .subjects
                .iter()
                .any(|p| sub.pattern.is_subset_of(p));
            overlapping.push((s.clone(), inside));
        }
    }
    match overlapping.as_slice() {
        [] => routes.fallback.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("no stream captures `{}`", sub.pattern),
            )
        }),
        [(s, true)] => Ok(s.clone()),
        _ => Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "pattern `{}` spans streams {}; subscribe per stream, or name one with Subscription::stream",
                sub.pattern,
                overlapping
                    .iter()
                    .map(|(s, _)| format!("`{}`", s.name))
                    .collect::<Vec<_>>()
                    .join(", ")
                    + if routes.fallback.is_some() {
                        " and the default stream"
                    } else {
                        ""
                    }
            ),
        )),
    }
}

fn start_cursor(stream: &Stream, start: StartPosition) -> Result<u64> {
    let b = stream.store.bounds();
    Ok(match start {
        StartPosition::New => b.last + 1,
        StartPosition::First => b.first,
        StartPosition::Sequence(s) => s.max(b.first),
        StartPosition::Time(t) => stream.store.first_at_or_after(t)?,
    })
}

impl Drop for BrokerConsumer {
    fn drop(&mut self) {
        self.leave();
    }
}

#[async_trait]
impl Consumer for BrokerConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if self.closed || self.broker.is_closed() {
                return None;
            }
            let notified = self.stream.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.broker.inner.clock.now();
            let (granted, jobs, wake, slow) = {
                let mut st = self.stream.lock();
                let last = self.stream.store.bounds().last;
                let threshold = self.broker.inner.config.slow_consumer_lag;
                let Some(g) = st.groups.get_mut(&self.group) else {
                    return None; // the stream was deleted
                };
                let mut ctx = Ctx::new(&self.stream.name, self.stream.store.as_ref());
                let granted = g.take(self.member, &mut || self.broker.next_nonce(), now, &mut ctx);
                let flushed = g.flush_ops(self.stream.store.as_ref());
                let lag = g.lag(last);
                let slow = if lag > threshold && !g.slow_reported {
                    g.slow_reported = true;
                    Some(lag)
                } else {
                    if lag <= threshold / 2 {
                        g.slow_reported = false;
                    }
                    None
                };
                let wake = if ctx.more {
                    // Scan budget ran out with more to examine: come straight back.
                    Some(Timestamp(0))
                } else {
                    g.next_wake()
                };
                let jobs = std::mem::take(&mut ctx.jobs);
                self.broker.report_expired(&self.stream, ctx.expired_leases);
                let granted = match (granted, flushed) {
                    (Err(e), _) | (Ok(_), Err(e)) => Err(e),
                    (Ok(g), Ok(())) => Ok(g),
                };
                (granted, jobs, wake, slow)
            };
            if let Some(lag) = slow {
                self.broker.emit(BrokerEvent::SlowConsumer {
                    stream: self.stream.name.to_string(),
                    group: self.group.to_string(),
                    lag,
                });
            }
            let had_jobs = !jobs.is_empty();
            if had_jobs {
                // Spawned: dropping this future must not abandon a dead letter half-way.
                let _ = self.broker.dead_letter(self.stream.clone(), jobs).await;
            }
            match granted {
                Err(e) => return Some(Err(e.into())),
                Ok(Some(g)) => {
                    let info = DeliveryInfo {
                        attempt: g.attempt,
                        sequence: g.stored.sequence,
                        published_at: g.stored.published_at,
                        deadline: g.deadline,
                        group: (!self.group.starts_with("_sub.")).then(|| self.group.clone()),
                        lease: LeaseId {
                            sequence: g.stored.sequence,
                            nonce: g.nonce,
                        },
                    };
                    return Some(Ok(Delivery::new(
                        g.stored.message,
                        info,
                        self.acker.clone(),
                    )));
                }
                Ok(None) if had_jobs => continue,
                Ok(None) => {}
            }
            match wake {
                Some(t) if t <= now => tokio::task::yield_now().await,
                Some(t) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = self.broker.inner.clock.sleep_until(t) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.leave();
        Ok(())
    }
}

/// Settles deliveries of one group.
pub(crate) struct GroupAcker {
    broker: Broker,
    stream: Arc<Stream>,
    group: Arc<str>,
}

impl GroupAcker {
    async fn settle<T>(
        &self,
        lease: LeaseId,
        f: impl FnOnce(&mut Group, Timestamp, &mut Ctx<'_>) -> std::result::Result<T, LeaseProblem>,
    ) -> Result<T> {
        let now = self.broker.inner.clock.now();
        let (result, jobs) = {
            let mut st = self.stream.lock();
            let Some(g) = st.groups.get_mut(&self.group) else {
                return Err(Error::new(
                    ErrorKind::LeaseExpired,
                    format!("group `{}` no longer exists", self.group),
                ));
            };
            let mut ctx = Ctx::new(&self.stream.name, self.stream.store.as_ref());
            let result = f(g, now, &mut ctx);
            g.flush_ops(self.stream.store.as_ref())?;
            let jobs = std::mem::take(&mut ctx.jobs);
            self.broker.report_expired(&self.stream, ctx.expired_leases);
            if result.is_ok() {
                self.stream.remove_consumed(&st)?;
            }
            (result, jobs)
        };
        self.stream.notify.notify_waiters();
        if !jobs.is_empty() {
            let _ = self.broker.dead_letter(self.stream.clone(), jobs).await;
        }
        result.map_err(|p| {
            let why = match p {
                LeaseProblem::Expired => "expired",
                LeaseProblem::NotHeld => "is no longer held (settled, released or redelivered)",
            };
            Error::new(
                ErrorKind::LeaseExpired,
                format!(
                    "lease on message {} of group `{}` {why}",
                    lease.sequence, self.group
                ),
            )
        })
    }
}

#[async_trait]
impl Acker for GroupAcker {
    async fn ack(&self, lease: LeaseId) -> Result<()> {
        self.settle(lease, |g, now, ctx| {
            g.ack(lease.sequence, lease.nonce, now, ctx)
        })
        .await
    }

    async fn nack(&self, lease: LeaseId, delay: Duration) -> Result<()> {
        self.settle(lease, |g, now, ctx| {
            g.nack(lease.sequence, lease.nonce, delay, now, ctx)
        })
        .await
    }

    async fn reject(&self, lease: LeaseId, reason: &str) -> Result<()> {
        self.settle(lease, |g, now, ctx| {
            g.reject(lease.sequence, lease.nonce, reason, now, ctx)
        })
        .await
    }

    async fn extend(&self, lease: LeaseId, by: Duration) -> Result<Timestamp> {
        self.settle(lease, |g, now, ctx| {
            g.extend(lease.sequence, lease.nonce, by, now, ctx)
        })
        .await
    }
}
