//! Settling deliveries ([`KafkaAcker`]), the timer task (lease expiry, nack delays, coalesced
//! commits), and dead letters.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{Acker, LeaseId, Result, Timestamp};

use super::Shared;
use super::state::{Effects, Finish, Job, State};

/// The [`Acker`] of one consumer's deliveries.
pub(crate) struct KafkaAcker {
    shared: Arc<Shared>,
}

impl KafkaAcker {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        KafkaAcker { shared }
    }

    /// Runs `f` on the state, then carries out its effects.
    fn settle<T>(
        &self,
        f: impl FnOnce(&mut State, &super::Rules, &mut Effects) -> Result<T>,
    ) -> Result<T> {
        settle(&self.shared, f)
    }
}

pub(crate) fn settle<T>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut State, &super::Rules, &mut Effects) -> Result<T>,
) -> Result<T> {
    let mut fx = Effects::default();
    let r = {
        let mut st = shared.lock();
        let r = f(&mut st, &shared.rules, &mut fx);
        shared.resume(&fx.resume);
        r
    };
    apply(shared, fx);
    r
}

/// Wakes whoever must act on `fx`, and dead-letters in the background.
fn apply(shared: &Arc<Shared>, fx: Effects) {
    if fx.commit {
        shared.wake.notify_one();
    }
    for job in fx.dead_letters {
        let shared = shared.clone();
        tokio::spawn(async move {
            let (tp, off) = (job.tp.clone(), job.offset);
            let how = match dead_letter(&shared, &job).await {
                Ok(()) => Finish::Done,
                Err(e) => {
                    tracing::warn!(target: "squall_kafka", error = %e, topic = %tp.0, offset = off,
                        "dead-lettering failed; the record will be delivered again");
                    Finish::Requeue
                }
            };
            settle(&shared, |st, rules, fx| {
                st.finish(rules, &tp, off, how, fx);
                Ok(())
            })
            .ok();
        });
    }
    shared.notify.notify_waiters();
}

/// Publishes the dead letter of `job` and waits for its ack.
async fn dead_letter(shared: &Shared, job: &Job) -> Result<()> {
    let to = shared
        .rules
        .policy
        .dead_letter_subject(job.message.subject())?;
    let dead = job.envelope.wrap(&job.message, to)?;
    shared.link.publish(dead).await?.await.map(|_| ())
}

#[async_trait]
impl Acker for KafkaAcker {
    async fn ack(&self, lease: LeaseId) -> Result<()> {
        self.settle(|st, r, fx| st.ack(r, lease.nonce, fx))
    }

    async fn nack(&self, lease: LeaseId, delay: Duration) -> Result<()> {
        self.settle(|st, r, fx| st.nack(r, lease.nonce, delay, fx))?;
        // A nack's timer may be the earliest now.
        self.shared.wake.notify_one();
        Ok(())
    }

    async fn reject(&self, lease: LeaseId, reason: &str) -> Result<()> {
        let (job, deadline) = self.settle(|st, r, fx| st.reject(r, lease.nonce, reason, fx))?;
        let result = dead_letter(&self.shared, &job).await;
        let how = match &result {
            Ok(()) => Finish::Done,
            Err(_) => Finish::Restore {
                nonce: lease.nonce,
                deadline,
            },
        };
        self.settle(|st, r, fx| {
            st.finish(r, &job.tp, job.offset, how, fx);
            Ok(())
        })?;
        result
    }

    async fn extend(&self, lease: LeaseId, by: Duration) -> Result<Timestamp> {
        let t = self.settle(|st, r, fx| st.extend(r, lease.nonce, by, fx))?;
        self.shared.wake.notify_one();
        Ok(t)
    }
}

/// The timer task of one consumer: ends expired leases, brings nacked records back when due,
/// and commits the positions acks moved. Ends when the consumer closes.
pub(crate) async fn supervise(shared: Arc<Shared>) {
    loop {
        let notified = shared.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut fx = Effects::default();
        let (woke, next, commits) = {
            let mut st = shared.lock();
            if st.closed {
                return;
            }
            let (woke, next) = st.tick(&shared.rules, &mut fx);
            let commits = st.take_commits();
            (woke, next, commits)
        };
        shared.commit(commits);
        if woke || !fx.dead_letters.is_empty() {
            apply(&shared, fx);
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            None => notified.await,
        }
    }
}
