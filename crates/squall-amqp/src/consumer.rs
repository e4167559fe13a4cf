//! Subscriptions: [`AmqpConsumer`] and the task that drives it.
//!
//! `subscribe` declares the queue (a group's durable queue, or an exclusive queue for a
//! subscriber without a group), binds it, sets the channel's prefetch to `max_in_flight`, starts
//! consuming, and only then returns, so a message published after `subscribe` returns is
//! received. A driver task per consumer then owns the channel:
//!
//! - it decodes each delivery, drops (acks) those its pattern does not match (bindings may be
//!   broader than patterns, see [`crate::routing`]) and those whose time to live is over, parks
//!   those it cannot decode (`<exchange>.parked`, reported to the application as
//!   `InvalidMessage`), dead-letters those past `max_deliveries`, and leases the rest;
//! - it hands them to the application over a channel bounded by `max_in_flight + 16` (RabbitMQ
//!   sends no more than `max_in_flight` unacked messages, so it does not fill);
//! - it runs the lease timers (a `DelayQueue`): an expired lease is redelivered or dead-lettered;
//! - when the channel or connection dies it forgets the leases (RabbitMQ requeues their
//!   messages), reports one `Unavailable` error through `next`, waits for the connection to come
//!   back and subscribes again. A group resumes where its queue is; a subscriber without a group
//!   gets a new exclusive queue and misses what was published while it had none.
//!
//! `close` cancels the consumer and closes its channel: RabbitMQ requeues every message it
//! held, at once, for the group's other members (or a later one); settling them afterwards fails
//! with `LeaseExpired`. The lease of a delivery starts when the client receives it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::Channel;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use squall_core::{
    Consumer, DeadLetterReason, Delivery, DeliveryInfo, Error, ErrorKind, LeaseId, Result,
    StartPosition, Subscription, Timestamp,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::codec::{decode, delivery_count};
use crate::connection::Link;
use crate::error::amqp;
use crate::lease::{AmqpAcker, Lease, Shared, nonce, publish_confirmed, wanted};
use crate::routing::{Binding, bindings};
use crate::topology::Topology;
use squall_core::backoff::Backoff;

/// Extra room in the hand-over channel beyond `max_in_flight`, for error reports.
const SLACK: usize = 16;

/// Checks a subscription against what RabbitMQ can do; returns its bindings.
pub(crate) fn check(sub: &Subscription, link: &Link) -> Result<Vec<Binding>> {
    sub.validate()?;
    let cfg = &link.config;
    match sub.start {
        None | Some(StartPosition::New) => {}
        Some(StartPosition::First) => {
            return Err(Error::unsupported(
                "amqp",
                "StartPosition::First (RabbitMQ queues cannot replay: a group's queue holds what \
                 was published since it was created; leave `start` unset for that)",
            ));
        }
        Some(StartPosition::Sequence(_)) => {
            return Err(Error::unsupported("amqp", "replay from a sequence"));
        }
        Some(StartPosition::Time(_)) => {
            return Err(Error::unsupported("amqp", "replay from a time"));
        }
    }
    if sub.policy.ordered_by_key {
        return Err(Error::unsupported(
            "amqp",
            "ordered_by_key (per-key ordering within a group)",
        ));
    }
    if sub.stream.is_some() {
        return Err(Error::unsupported(
            "amqp",
            "named streams (subscribe by subject pattern; the exchange is set in the URL)",
        ));
    }
    if sub.policy.max_in_flight > usize::from(u16::MAX) {
        return Err(Error::config(
            "subscription.max_in_flight",
            format!(
                "{} is over AMQP's largest prefetch count ({})",
                sub.policy.max_in_flight,
                u16::MAX
            ),
        ));
    }
    bindings(cfg.exchange_kind, &sub.pattern)
}

/// A live subscription; see the module docs.
pub struct AmqpConsumer {
    rx: mpsc::Receiver<Result<Delivery>>,
    cancel: CancellationToken,
    driver: Option<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AmqpConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConsumer")
            .field("pattern", &self.shared.pattern)
            .field("group", &self.shared.group)
            .finish()
    }
}

/// What a driver subscribed with.
struct Subscribed {
    channel: Channel,
    generation: u64,
    queue: String,
    consumer: lapin::Consumer,
}

impl AmqpConsumer {
    /// Subscribes once (errors go to the caller), then starts the driver.
    pub(crate) async fn start(
        link: Arc<Link>,
        topology: Arc<Topology>,
        sub: Subscription,
        binds: Vec<Binding>,
    ) -> Result<AmqpConsumer> {
        let shared = Arc::new(Shared {
            link: link.clone(),
            topology,
            pattern: sub.pattern.clone(),
            group: sub.group.as_deref().map(Arc::from),
            policy: sub.policy.clone(),
            leases: Mutex::new(Default::default()),
            next_nonce: AtomicU64::new(1),
        });
        let first = subscribe(&shared, &sub, &binds).await?;
        let (tx, rx) = mpsc::channel(sub.policy.max_in_flight + SLACK);
        let cancel = link.closed.child_token();
        let driver = tokio::spawn(drive(shared.clone(), sub, binds, first, tx, cancel.clone()));
        Ok(AmqpConsumer {
            rx,
            cancel,
            driver: Some(driver),
            shared,
        })
    }
}

impl Drop for AmqpConsumer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        self.rx.recv().await
    }

    async fn close(&mut self) -> Result<()> {
        self.cancel.cancel();
        if let Some(d) = self.driver.take() {
            let _ = d.await;
        }
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        Ok(())
    }
}

/// Declares, binds, sets prefetch and starts consuming on a new channel.
async fn subscribe(shared: &Shared, sub: &Subscription, binds: &[Binding]) -> Result<Subscribed> {
    let cfg = shared.config();
    let (ch, generation) = shared.link.channel().await?;
    shared.topology.exchange(&ch, cfg, false).await?;
    let queue = match sub.group_name() {
        Some(g) => {
            shared
                .topology
                .group_queue(&ch, cfg, g, &sub.pattern, sub.durable)
                .await?
        }
        None => shared.topology.fanout_queue(&ch, cfg).await?,
    };
    shared.topology.bind(&ch, cfg, &queue, binds).await?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| amqp("enabling publisher confirms on a consumer channel", e))?;
    let prefetch = u16::try_from(sub.policy.max_in_flight).unwrap_or(u16::MAX);
    ch.basic_qos(prefetch, BasicQosOptions { global: false })
        .await
        .map_err(|e| amqp("setting the prefetch count", e))?;
    let tag = format!("squall-{}", uuid::Uuid::now_v7().simple());
    let consumer = ch
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| amqp(&format!("consuming from queue `{queue}`"), e))?;
    Ok(Subscribed {
        channel: ch,
        generation,
        queue,
        consumer,
    })
}

async fn drive(
    shared: Arc<Shared>,
    sub: Subscription,
    binds: Vec<Binding>,
    first: Subscribed,
    tx: mpsc::Sender<Result<Delivery>>,
    cancel: CancellationToken,
) {
    let mut timers: DelayQueue<u64> = DelayQueue::new();
    let mut current = Some(first);
    let mut generation = 0;
    let mut backoff = Backoff::new(shared.config().reconnect_min, shared.config().reconnect_max);
    loop {
        let mut s = match current.take() {
            Some(s) => s,
            None => {
                // Resubscribe: at once if the connection is still up (only the channel died),
                // otherwise once a newer connection is.
                if shared.link.live().is_none() {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        ok = shared.link.wait_newer(generation) => if !ok { break },
                    }
                } else {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
                match subscribe(&shared, &sub, &binds).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, pattern = %sub.pattern, "resubscribing");
                        if !e.is_retryable() {
                            let _ = tx.try_send(Err(e));
                        }
                        continue;
                    }
                }
            }
        };
        generation = s.generation;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    shared.drop_leases();
                    let tag = s.consumer.tag();
                    let _ = s.channel.basic_cancel(tag, BasicCancelOptions::default()).await;
                    let _ = s.channel.close(200, "squall consumer closed".into()).await;
                    return;
                }
                d = s.consumer.next() => match d {
                    Some(Ok(d)) => {
                        if !receive(&shared, &s, d, &tx, &mut timers).await {
                            // The application dropped the consumer.
                            shared.drop_leases();
                            let _ = s.channel.close(200, "squall consumer dropped".into()).await;
                            return;
                        }
                    }
                    other => {
                        if let Some(Err(e)) = &other {
                            tracing::warn!(error = %e, queue = %s.queue, "consumer channel lost");
                        }
                        shared.drop_leases();
                        timers.clear();
                        if cancel.is_cancelled() {
                            return;
                        }
                        let _ = tx.try_send(Err(Error::new(
                            ErrorKind::Unavailable,
                            format!(
                                "the subscription to `{}` lost its channel; resubscribing \
                                 (unsettled deliveries will come again{})",
                                sub.pattern,
                                if sub.group.is_none() {
                                    "; messages published meanwhile are missed"
                                } else {
                                    ""
                                }
                            ),
                        )));
                        break;
                    }
                },
                Some(fired) = timers.next(), if !timers.is_empty() => {
                    let n = fired.into_inner();
                    match shared.take_expired(n) {
                        Some(Ok(lease)) => {
                            tokio::spawn(shared.clone().expire(lease));
                        }
                        Some(Err(later)) => {
                            timers.insert_at(n, later);
                        }
                        None => {}
                    }
                }
            }
        }
    }
    shared.drop_leases();
}

/// Handles one delivery; `false` if the application is gone.
async fn receive(
    shared: &Arc<Shared>,
    s: &Subscribed,
    d: lapin::message::Delivery,
    tx: &mpsc::Sender<Result<Delivery>>,
    timers: &mut DelayQueue<u64>,
) -> bool {
    let lapin::message::Delivery {
        delivery_tag,
        routing_key,
        redelivered,
        properties,
        data,
        ..
    } = d;
    let ack = |why: &'static str| {
        let ch = s.channel.clone();
        async move {
            tracing::debug!(delivery_tag, why, "acking without delivering");
            if let Err(e) = ch.basic_ack(delivery_tag, BasicAckOptions::default()).await {
                tracing::debug!(error = %e, "acking a skipped delivery");
            }
        }
    };
    let payload = Bytes::from(data);
    let (message, meta) = match decode(routing_key.as_str(), &properties, payload.clone()) {
        Ok(x) => x,
        Err(e) => {
            let parked = park(shared, s, &properties, &payload).await;
            match parked {
                Ok(queue) => {
                    ack("undecodable, parked").await;
                    let e = Error::new(
                        ErrorKind::InvalidMessage,
                        format!("{}; the message was moved to queue `{queue}`", e.message()),
                    );
                    return tx.send(Err(e)).await.is_ok();
                }
                Err(pe) => {
                    // Leave it unacked: it comes back when the channel closes.
                    tracing::warn!(error = %pe, "parking an undecodable message");
                    return tx.send(Err(e)).await.is_ok();
                }
            }
        }
    };
    if !wanted(shared, message.subject()) {
        ack("subject outside the pattern").await;
        return true;
    }
    let now = Timestamp::now();
    if meta.expires_at.is_some_and(|at| at <= now) {
        ack("time to live over").await;
        return true;
    }
    let returns = delivery_count(&properties).unwrap_or(u32::from(redelivered));
    let attempt = meta
        .prior_attempts
        .saturating_add(1)
        .saturating_add(returns);
    let mut attempts = meta.attempts;
    attempts.push(now);
    let ack_wait = shared.policy.ack_wait;
    let lease = Lease {
        channel: s.channel.clone(),
        tag: delivery_tag,
        queue: s.queue.clone(),
        deadline: tokio::time::Instant::now() + ack_wait,
        attempt,
        attempts,
        message: message.clone(),
        properties,
        payload,
        expires_at: meta.expires_at,
    };
    if let Some(max) = shared.policy.max_deliveries
        && attempt > max
    {
        // Returned by crashed consumers more often than allowed (counted by a quorum queue).
        let shared = shared.clone();
        tokio::spawn(async move {
            let error = format!("delivered {attempt} times, over max_deliveries {max}");
            if let Err(e) = shared
                .dead_letter(lease, DeadLetterReason::MaxDeliveries, &error)
                .await
            {
                tracing::warn!(error = %e, "dead-lettering a message past max_deliveries");
            }
        });
        return true;
    }
    let n = nonce(shared);
    shared.leases.lock().expect("lease lock").insert(n, lease);
    timers.insert(n, ack_wait);
    let info = DeliveryInfo {
        attempt,
        sequence: 0,
        published_at: message.timestamp(),
        deadline: now.saturating_add(ack_wait),
        group: shared.group.clone(),
        lease: LeaseId {
            sequence: delivery_tag,
            nonce: n,
        },
    };
    let delivery = Delivery::new(message, info, Arc::new(AmqpAcker(shared.clone())));
    tx.send(Ok(delivery)).await.is_ok()
}

/// Moves an undecodable message to the parked queue unchanged.
async fn park(
    shared: &Shared,
    s: &Subscribed,
    props: &lapin::BasicProperties,
    payload: &[u8],
) -> Result<String> {
    let queue = shared
        .topology
        .parked_queue(&s.channel, shared.config())
        .await?;
    publish_confirmed(&s.channel, "", &queue, false, payload, props.clone()).await?;
    Ok(queue)
}
