//! Settling one handled delivery: ack, retry (nack with backoff, or a delayed republish), or
//! dead-letter (reject, or publish the envelope and ack). The policy lives in
//! [`crate::retry`] and [`crate::dlq`]; this is where it meets the backend.

use std::sync::Arc;
use std::time::Duration;

use squall_core::{
    Capabilities, DeadLetter, DeadLetterReason, DeliveryPolicy, Error, ErrorKind, Message,
    MessageId, Publisher, Settle, Timestamp, headers,
};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::dlq;
use crate::error::HandlerError;
use crate::handler::{ORIGIN_ID, origin_id};
use crate::metrics::RouteMetrics;
use crate::panic::Panicked;
use crate::retry::{Decision, GiveUp, RetryPolicy};
use crate::stats::Counters;

/// After a failed dead-letter publish, the message is offered again this much later.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);
/// The same after a publish error that is not retryable (it needs an operator).
const DEAD_LETTER_RETRY_INVALID: Duration = Duration::from_secs(60);

/// At most `n` bytes of `s`, cut at a character boundary.
fn prefix(s: &str, n: usize) -> &str {
    let mut end = s.len().min(n);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Everything one route's workers share. Immutable while the router runs; counters and metrics
/// are atomics.
pub(crate) struct RouteCtx {
    pub name: Arc<str>,
    pub handler: Arc<str>,
    pub retry: RetryPolicy,
    /// The subscription's policy: ack wait (lease extension), dead-letter subject.
    pub policy: DeliveryPolicy,
    pub group: Option<String>,
    /// Publishes dead letters and delayed retries where the backend cannot.
    pub publisher: Arc<dyn Publisher>,
    pub caps: Capabilities,
    pub clock: Clock,
    pub extend_leases: bool,
    pub counters: Counters,
    pub metrics: RouteMetrics,
    /// Cancelled when the shutdown deadline passes: unfinished work is nacked.
    pub hard_stop: CancellationToken,
}

/// What the runtime remembers of a delivery while its handler runs.
pub(crate) struct Facts {
    pub msg: Message,
    pub attempt: u32,
    pub sequence: u64,
    pub published_at: Timestamp,
    /// When the attempt started, by the runtime's clock.
    pub started: Timestamp,
}

impl RouteCtx {
    fn settle_failed(&self, what: &str, f: &Facts, e: &Error) {
        if e.kind() == ErrorKind::LeaseExpired {
            self.counters.add(|c| &c.lease_lost);
            self.metrics.lease_lost.increment(1);
            tracing::debug!(route = %self.name, id = %f.msg.id(), "{what} refused, the lease was gone: {e}");
        } else {
            tracing::warn!(route = %self.name, id = %f.msg.id(), "{what} failed: {e}");
        }
    }
}

/// Settles after the handler returned `outcome`.
pub(crate) async fn settle(
    ctx: &RouteCtx,
    f: &Facts,
    s: &Settle,
    outcome: Result<(), HandlerError>,
) {
    let err = match outcome {
        Ok(()) => {
            ctx.counters.add(|c| &c.succeeded);
            if let Err(e) = s.ack().await {
                ctx.settle_failed("ack", f, &e);
            }
            return;
        }
        Err(e) => e,
    };
    if err.find::<Panicked>().is_some() {
        ctx.counters.add(|c| &c.panics);
        ctx.metrics.panics.increment(1);
    }
    let elapsed = ctx.clock.since(f.published_at);
    let decision = ctx
        .retry
        .decide(f.attempt, elapsed, &err, rand::random::<f64>());
    match decision {
        Decision::Retry(after) if err.deferred().is_some() => {
            ctx.counters.add(|c| &c.deferred);
            tracing::debug!(route = %ctx.name, id = %f.msg.id(), attempt = f.attempt, "deferred by {after:?}: {err}");
            retry_later(ctx, f, s, after).await;
        }
        Decision::Retry(after) => {
            ctx.counters.add(|c| &c.failed);
            ctx.counters.add(|c| &c.retried);
            ctx.metrics.failed.increment(1);
            ctx.metrics.retried.increment(1);
            tracing::info!(route = %ctx.name, id = %f.msg.id(), attempt = f.attempt, "failed, retrying in {after:?}: {err}");
            retry_later(ctx, f, s, after).await;
        }
        Decision::GiveUp(why) => {
            ctx.counters.add(|c| &c.failed);
            ctx.metrics.failed.increment(1);
            tracing::warn!(route = %ctx.name, id = %f.msg.id(), attempt = f.attempt, "{why}, dead-lettering: {err}");
            dead_letter(ctx, f, s, &err, &why).await;
        }
    }
}

/// Offers the message again after `after`.
async fn retry_later(ctx: &RouteCtx, f: &Facts, s: &Settle, after: Duration) {
    if !after.is_zero() && !ctx.caps.nack_delay.available() && ctx.caps.delayed_delivery.available()
    {
        match republish_delayed(ctx, f, after).await {
            Ok(()) => {
                if let Err(e) = s.ack().await {
                    ctx.settle_failed("ack after republishing a retry", f, &e);
                }
                return;
            }
            Err(e) => {
                tracing::warn!(route = %ctx.name, id = %f.msg.id(), "republishing a delayed retry failed, nacking instead: {e}")
            }
        }
    }
    match s.nack(after).await {
        Err(e) if e.kind() == ErrorKind::Unsupported && !after.is_zero() => {
            tracing::warn!(route = %ctx.name, "the backend refuses delayed nacks; retrying at once: {e}");
            if let Err(e) = s.nack(Duration::ZERO).await {
                ctx.settle_failed("nack", f, &e);
            }
        }
        Err(e) => ctx.settle_failed("nack", f, &e),
        Ok(()) => {}
    }
}

/// The retry copy: same payload, key and headers, the next attempt in `squall-attempt`, the
/// original id in `squall-origin-id`, a deterministic id (a crash between publishing it and
/// acking the original publishes it again under the same id, which a dedup window drops).
async fn republish_delayed(ctx: &RouteCtx, f: &Facts, after: Duration) -> Result<(), Error> {
    let mut m = f.msg.clone();
    let origin = origin_id(&f.msg).to_string();
    let next = f.attempt + 1;
    m.headers_mut().insert(headers::ATTEMPT, next.to_string())?;
    m.headers_mut().insert(ORIGIN_ID, &origin)?;
    m.set_id(MessageId::new(format!(
        "{}.retry.{next}",
        prefix(&origin, 200)
    ))?);
    m.set_delay(Some(after));
    ctx.publisher.publish(m).await.map(|_| ())
}

/// Dead-letters: reject where the backend does it, else publish the envelope and ack.
async fn dead_letter(ctx: &RouteCtx, f: &Facts, s: &Settle, err: &HandlerError, why: &GiveUp) {
    let reason = dlq::reason(&ctx.handler, f.attempt, why, err);
    if ctx.caps.dead_letter.available() {
        match s.reject(&reason).await {
            Ok(()) => count_dead_letter(ctx),
            Err(e) => ctx.settle_failed("reject", f, &e),
        }
        return;
    }
    match publish_dead_letter(ctx, f, err, reason).await {
        Ok(()) => match s.ack().await {
            Ok(()) => count_dead_letter(ctx),
            // The dead letter is out; the redelivery will publish it again under the same id.
            Err(e) => ctx.settle_failed("ack after publishing a dead letter", f, &e),
        },
        Err(e) => {
            // Kept either way: a transient failure is tried again soon; one that cannot pass
            // (an invalid dead-letter subject, say) is offered again rarely, loudly.
            let again = if e.is_retryable() {
                DEAD_LETTER_RETRY
            } else {
                DEAD_LETTER_RETRY_INVALID
            };
            tracing::error!(route = %ctx.name, id = %f.msg.id(), "publishing the dead letter failed; offering the message again in {again:?}: {e}");
            if let Err(e) = s.nack(again).await {
                ctx.settle_failed("nack", f, &e);
            }
        }
    }
}

fn count_dead_letter(ctx: &RouteCtx) {
    ctx.counters.add(|c| &c.dead_lettered);
    ctx.metrics.dead_lettered.increment(1);
}

async fn publish_dead_letter(
    ctx: &RouteCtx,
    f: &Facts,
    err: &HandlerError,
    reason: String,
) -> Result<(), Error> {
    let mut env = DeadLetter {
        reason: DeadLetterReason::Rejected,
        error: reason,
        error_chain: err.chain(),
        handler: Some(ctx.handler.to_string()),
        origin_id: origin_id(&f.msg).to_string(),
        origin_subject: f.msg.subject().clone(),
        origin_stream: None,
        origin_sequence: f.sequence,
        group: ctx.group.clone(),
        attempts: vec![f.started],
        dead_lettered_at: ctx.clock.now(),
    };
    let to = ctx.policy.dead_letter_subject(f.msg.subject())?;
    let mut m = match env.wrap(&f.msg, to.clone()) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::InvalidMessage => {
            // The headers would be too large: keep the verdict, drop the details.
            env.error = env.error.lines().next().unwrap_or_default().to_string();
            env.error_chain.truncate(1);
            env.wrap(&f.msg, to)?
        }
        Err(e) => return Err(e),
    };
    m.headers_mut()
        .insert(headers::ATTEMPT, f.attempt.to_string())?;
    ctx.publisher.publish(m).await.map(|_| ())
}

/// Gives an unfinished delivery back at the shutdown deadline.
pub(crate) async fn shutdown_nack(ctx: &RouteCtx, f: &Facts, s: &Settle) {
    ctx.counters.add(|c| &c.shutdown_nacked);
    ctx.metrics.shutdown_nacked.increment(1);
    if let Err(e) = s.nack(Duration::ZERO).await {
        ctx.settle_failed("nack at shutdown", f, &e);
    }
}
