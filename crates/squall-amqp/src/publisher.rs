//! Publishing with publisher confirms.
//!
//! One channel per handle, in confirm mode, carries every publish in order (a mutex keeps
//! concurrent senders from interleaving). `send` publishes and hands the client's confirm future
//! to a collector task over a channel bounded by `max_unconfirmed`: when that many confirms are
//! outstanding, `send` waits (backpressure). The collector awaits confirms concurrently and
//! resolves each [`PendingAck`]; `flush` waits until nothing is outstanding.
//!
//! A lost connection fails the confirms it still owed with `Unavailable` ("outcome unknown": the
//! broker may have stored the message). Nothing is re-sent: RabbitMQ has no deduplication, so a
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

use crate::codec::{encode, with_delay_route};
use crate::config::{AmqpConfig, ExchangeKind, QueueType};
use crate::connection::Link;
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
}

/// The publishing half of a handle; see the module docs.
pub(crate) struct Publisher {
    link: Arc<Link>,
    topology: Arc<Topology>,
    /// The confirm-mode channel and the connection generation it belongs to. The lock is held
    /// across a publish so that concurrent sends keep their order.
    channel: Mutex<Option<(Channel, u64)>>,
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
        let ch = self.channel_locked(&mut guard).await?;
        if let Some(d) = delay
            && let Err(e) = self.topology.delay_queue(&ch, cfg, d, false).await
        {
            *guard = None;
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
                *guard = None;
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
        };
        if self.confirms.send(waiting).await.is_err() {
            self.outstanding.send_modify(|n| *n = n.saturating_sub(1));
            return Err(Error::closed("the AMQP publisher"));
        }
        drop(guard);
        Ok(PendingAck::channel(rx))
    }

    /// The channel, opening one (confirm mode, exchange declared) if there is none or it died.
    async fn channel_locked(&self, slot: &mut Option<(Channel, u64)>) -> Result<Channel> {
        if let Some((ch, _)) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        *slot = None;
        let (ch, generation) = self.link.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| amqp("enabling publisher confirms", e))?;
        self.topology.exchange(&ch, self.config(), false).await?;
        *slot = Some((ch.clone(), generation));
        Ok(ch)
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
    let result = match w.confirm.await {
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
