//! Publishing with publisher confirms.
//!
//! One channel per handle, in confirm mode, carries every publish in order (a mutex keeps
//! concurrent senders from interleaving). `send` publishes and hands the client's confirm future
//! to a collector task over a channel bounded by `max_unconfirmed`: when that many confirms are
//! outstanding, `send` waits (backpressure). The collector awaits confirms concurrently and
//! resolves each [`PendingAck`]; `flush` waits until nothing is outstanding.
//!
//! A lost connection fails the confirms it still owed with `Unavailable` ("outcome unknown": the
//! broker may have stored the message). The client library does not always end its confirm
//! futures when a connection dies, so a watcher per channel (polling every 100 ms) fails them
//! itself once the channel or its connection is gone; and a confirm that takes longer than
//! `confirm_timeout` (a link that went silent, before heartbeats notice) fails the same way. Nothing is re-sent: RabbitMQ has no deduplication, so a
//! re-send could store a message twice; the caller decides (the error is retryable). The next
//! `send` opens a channel on the new connection, or fails with `Unavailable` while there is none.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, PublisherConfirm};
use squall_core::{Durability, Error, ErrorKind, Message, PendingAck, PublishAck, Result, Subject};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::codec::{encode, with_delay_route};
use crate::config::{AmqpConfig, ExchangeKind, QueueType};
use crate::connection::{CHANNEL_OPEN_TIMEOUT, Link};
use crate::error::{amqp, unavailable};
use crate::topology::{Topology, delay_exchange};

/// Subjects under this prefix are RabbitMQ direct reply-to addresses, published to the default
/// exchange.
pub(crate) const REPLY_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// A confirm the collector resolves.
struct Waiting {
    confirm: PublisherConfirm,
    subject: Subject,
    durability: Durability,
    reply: oneshot::Sender<Result<PublishAck>>,
    /// Cancelled when the channel the message went out on is gone.
    lost: CancellationToken,
    /// How long the confirm may take.
    timeout: Duration,
}

/// The confirm-mode channel, its connection generation, and the token its watcher cancels when
/// it dies.
type Slot = Option<(Channel, u64, CancellationToken)>;

/// The publishing half of a handle; see the module docs.
pub(crate) struct Publisher {
    link: Arc<Link>,
    topology: Arc<Topology>,
    /// The confirm-mode channel and the connection generation it belongs to. The lock is held
    /// across a publish so that concurrent sends keep their order.
    channel: Mutex<Slot>,
    /// To the collector; bounded by `max_unconfirmed`.
    confirms: mpsc::Sender<Waiting>,
    /// Publishes sent and not yet confirmed or failed.
    outstanding: watch::Sender<usize>,
    closed: AtomicBool,
}

impl Publisher {
    pub fn new(link: Arc<Link>, topology: Arc<Topology>) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(link.config.max_unconfirmed);
        let (outstanding, _) = watch::channel(0);
        let p = Arc::new(Publisher {
            link: link.clone(),
            topology,
            channel: Mutex::new(None),
            confirms: tx,
            outstanding: outstanding.clone(),
            closed: AtomicBool::new(false),
        });
        link.tasks.spawn(collect(rx, outstanding));
        p
    }

    fn config(&self) -> &AmqpConfig {
        &self.link.config
    }

    /// The durability a confirmed publish of this kind reaches.
    pub fn durability(&self, reply: bool, delayed: bool) -> Durability {
        let cfg = self.config();
        if reply || !cfg.persistent {
            Durability::Memory
        } else if cfg.queue_type == QueueType::Quorum && cfg.replicated && !delayed {
            Durability::Replicated
        } else {
            Durability::Fsynced
        }
    }

    pub async fn send(&self, msg: Message) -> Result<PendingAck> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("the AMQP publisher"));
        }
        let cfg = self.config();
        if msg.payload().len() > cfg.max_payload {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!(
                    "payload of {} bytes is over max_payload ({} bytes)",
                    msg.payload().len(),
                    cfg.max_payload
                ),
            ));
        }
        let reply = msg.subject().as_str().starts_with(REPLY_PREFIX);
        let delay = msg.delay().filter(|d| !d.is_zero() && !reply);
        let route_subject = cfg.exchange_kind == ExchangeKind::Headers && !reply;
        let mut out = encode(&msg, cfg.persistent, delay.is_some(), route_subject)?;
        let (exchange, routing_key) = if reply {
            (
                String::new(),
                crate::codec::short("reply subject", msg.subject().as_str())?,
            )
        } else if let Some(d) = delay {
            out.properties = with_delay_route(out.properties, crate::topology::delay_ms(d), false);
            (delay_exchange(cfg), out.routing_key.clone())
        } else {
            (cfg.exchange.clone(), out.routing_key.clone())
        };
        let durability = self.durability(reply, delay.is_some());
        let mut guard = self.channel.lock().await;
        let (ch, lost) = self.channel_locked(&mut guard).await?;
        if let Some(d) = delay
            && let Err(e) = self.topology.delay_queue(&ch, cfg, d, false).await
        {
            drop_slot(&mut guard);
            return Err(e);
        }
        let opts = BasicPublishOptions {
            mandatory: cfg.mandatory && !reply,
            immediate: false,
        };
        let confirm = match ch
            .basic_publish(
                exchange.as_str().into(),
                routing_key,
                opts,
                &out.payload,
                out.properties,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                drop_slot(&mut guard);
                return Err(amqp(&format!("publishing to `{}`", msg.subject()), e));
            }
        };
        self.outstanding.send_modify(|n| *n += 1);
        let (tx, rx) = oneshot::channel();
        let waiting = Waiting {
            confirm,
            subject: msg.subject().clone(),
            durability,
            reply: tx,
            lost,
            timeout: cfg.confirm_timeout,
        };
        if self.confirms.send(waiting).await.is_err() {
            self.outstanding.send_modify(|n| *n = n.saturating_sub(1));
            return Err(Error::closed("the AMQP publisher"));
        }
        drop(guard);
        Ok(PendingAck::channel(rx))
    }

    /// The channel and its loss token, opening one (confirm mode, exchange declared, watcher
    /// started) if there is none or it died.
    async fn channel_locked(&self, slot: &mut Slot) -> Result<(Channel, CancellationToken)> {
        if let Some((ch, _, lost)) = slot.as_ref()
            && ch.status().connected()
            && !lost.is_cancelled()
        {
            return Ok((ch.clone(), lost.clone()));
        }
        drop_slot(slot);
        let (ch, generation) = self.link.channel().await?;
        let setup = async {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| amqp("enabling publisher confirms", e))?;
            self.topology.exchange(&ch, self.config(), false).await
        };
        tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, setup)
            .await
            .map_err(|_| {
                unavailable(format!(
                    "setting up the publishing channel took over {CHANNEL_OPEN_TIMEOUT:?}: the \
                     connection is probably gone (reconnecting)"
                ))
            })??;
        let lost = CancellationToken::new();
        self.link.tasks.spawn(watch_channel(
            ch.clone(),
            generation,
            Arc::downgrade(&self.link),
            lost.clone(),
        ));
        *slot = Some((ch.clone(), generation, lost.clone()));
        Ok((ch, lost))
    }

    /// Waits until every publish sent so far is confirmed or failed.
    pub async fn flush(&self) -> Result<()> {
        let mut rx = self.outstanding.subscribe();
        rx.wait_for(|n| *n == 0)
            .await
            .map_err(|_| Error::closed("the AMQP publisher"))?;
        Ok(())
    }

    /// Refuses new sends, then flushes for at most `close_timeout`.
    pub async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        let limit = self.config().close_timeout;
        match tokio::time::timeout(limit, self.flush()).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "{} publishes were still unconfirmed after close_timeout ({limit:?})",
                    *self.outstanding.borrow()
                ),
            )),
        }
    }
}

/// Forgets the channel and fails the confirms still owed on it.
fn drop_slot(slot: &mut Slot) {
    if let Some((_, _, lost)) = slot.take() {
        lost.cancel();
    }
}

/// Cancels `lost` once `ch` is closed, its connection is no longer the link's live one, or the
/// link is gone. Holds the link weakly, so a dropped handle ends it.
async fn watch_channel(
    ch: Channel,
    generation: u64,
    link: std::sync::Weak<Link>,
    lost: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let alive = ch.status().connected()
            && link
                .upgrade()
                .is_some_and(|l| l.live().is_some_and(|live| live.generation == generation));
        if !alive {
            lost.cancel();
            return;
        }
    }
}

/// Awaits confirms concurrently and answers each publisher; ends when every sender is gone.
async fn collect(mut rx: mpsc::Receiver<Waiting>, outstanding: watch::Sender<usize>) {
    let mut pending = FuturesUnordered::new();
    loop {
        tokio::select! {
            w = rx.recv() => match w {
                Some(w) => pending.push(resolve(w)),
                None => break,
            },
            Some(()) = pending.next(), if !pending.is_empty() => {
                outstanding.send_modify(|n| *n = n.saturating_sub(1));
            }
        }
    }
    while pending.next().await.is_some() {
        outstanding.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn resolve(w: Waiting) {
    let confirmed = tokio::select! {
        biased;
        c = w.confirm => c,
        _ = w.lost.cancelled() => {
            let _ = w.reply.send(Err(unavailable(format!(
                "the connection was lost before the broker confirmed the message to `{}`; it may \
                 or may not have been stored",
                w.subject
            ))));
            return;
        }
        _ = tokio::time::sleep(w.timeout) => {
            let _ = w.reply.send(Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "no confirm for the message to `{}` within confirm_timeout ({:?}); it may or \
                     may not have been stored",
                    w.subject, w.timeout
                ),
            )));
            return;
        }
    };
    let result = match confirmed {
        Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(PublishAck {
            stream: None,
            sequence: 0,
            durability: w.durability,
            duplicate: false,
        }),
        Ok(Confirmation::Ack(Some(_))) => Err(Error::new(
            ErrorKind::NoResponders,
            format!(
                "no queue is bound for subject `{}` (mandatory=true): the broker returned it",
                w.subject
            ),
        )),
        Ok(Confirmation::Nack(_)) => Err(Error::new(
            ErrorKind::Full,
            format!(
                "the broker refused the message to `{}` (basic.nack): a queue it was routed to is \
                 full (max_length) or unavailable",
                w.subject
            ),
        )),
        Err(e) => Err(unavailable(format!(
            "the channel closed before the broker confirmed the message to `{}`; it may or may \
             not have been stored: {e}",
            w.subject
        ))),
    };
    let _ = w.reply.send(result);
}

/// How long a confirm of a retry, dead letter or parked message may take before the operation
/// that needed it gives up (the original is then left to the broker's redelivery).
pub(crate) const INTERNAL_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
