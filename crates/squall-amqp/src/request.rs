//! Request-reply over RabbitMQ's direct reply-to.
//!
//! A handle opens one request channel that consumes the pseudo-queue `amq.rabbitmq.reply-to`
//! (no acks: replies are transient) and publishes every request on that same channel, as direct
//! reply-to requires. The request carries `reply_to = amq.rabbitmq.reply-to`, which RabbitMQ
//! rewrites to a per-channel address (`amq.rabbitmq.reply-to.<token>`, a valid squall subject) on
//! delivery, and a fresh correlation id. A responder answers with `Message::reply_to`; publishing
//! to that subject goes through the default exchange straight to the requester's channel. Replies
//! are matched by correlation id; a reply arriving after its request gave up is dropped.
//!
//! Requests are published `mandatory`: a request no queue is bound for fails at once with
//! `NoResponders`. A request whose responder stays silent fails with `Timeout`. Requests in
//! flight when the connection is lost fail with `Unavailable`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use squall_core::{Error, ErrorKind, Message, Result, headers};
use tokio::sync::oneshot;

use crate::codec::{decode, encode};
use crate::config::ExchangeKind;
use crate::connection::Link;
use crate::error::{amqp, unavailable};
use crate::topology::Topology;

const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Message>>>>;

/// The request side of a handle; see the module docs.
pub(crate) struct Requester {
    link: Arc<Link>,
    topology: Arc<Topology>,
    /// The request channel (consuming replies), created on first use and again after it died.
    channel: tokio::sync::Mutex<Option<Channel>>,
    waiters: Waiters,
}

/// Removes a waiter when the request ends, however it ends.
struct Forget<'a>(&'a Waiters, String);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("waiters lock").remove(&self.1);
    }
}

impl Requester {
    pub fn new(link: Arc<Link>, topology: Arc<Topology>) -> Self {
        Requester {
            link,
            topology,
            channel: tokio::sync::Mutex::new(None),
            waiters: Arc::default(),
        }
    }

    pub async fn request(&self, mut msg: Message, timeout: Duration) -> Result<Message> {
        let cfg = &self.link.config;
        if msg.delay().is_some_and(|d| !d.is_zero()) {
            return Err(Error::unsupported("amqp", "a delay on a request"));
        }
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
        let deadline = tokio::time::Instant::now() + timeout;
        let correlation = uuid::Uuid::now_v7().simple().to_string();
        msg.headers_mut()
            .insert(headers::CORRELATION_ID, &correlation)?;
        msg.headers_mut()
            .insert(headers::REPLY_TO, DIRECT_REPLY_TO)?;
        let out = encode(
            &msg,
            cfg.persistent,
            false,
            cfg.exchange_kind == ExchangeKind::Headers,
        )?;
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert(correlation.clone(), tx);
        let _forget = Forget(&self.waiters, correlation);
        let confirm = {
            let mut slot = self.channel.lock().await;
            let ch = self.channel_locked(&mut slot).await?;
            let published = ch
                .basic_publish(
                    cfg.exchange.as_str().into(),
                    out.routing_key.clone(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &out.payload,
                    out.properties,
                )
                .await;
            match published {
                Ok(c) => c,
                Err(e) => {
                    *slot = None;
                    return Err(amqp(
                        &format!("publishing the request to `{}`", msg.subject()),
                        e,
                    ));
                }
            }
        };
        let confirmed = tokio::time::timeout_at(deadline, confirm)
            .await
            .map_err(|_| timed_out(&msg, timeout))?;
        match confirmed {
            Ok(lapin::Confirmation::Ack(Some(_))) => {
                return Err(Error::new(
                    ErrorKind::NoResponders,
                    format!("no queue is bound for request subject `{}`", msg.subject()),
                ));
            }
            Ok(lapin::Confirmation::Nack(_)) => {
                return Err(Error::new(
                    ErrorKind::Full,
                    format!("the broker refused the request to `{}`", msg.subject()),
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(amqp("confirming the request", e)),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(unavailable(format!(
                "the reply channel closed while waiting for the reply to `{}`",
                msg.subject()
            ))),
            Err(_) => Err(timed_out(&msg, timeout)),
        }
    }

    /// The request channel, creating it (confirm mode, consuming replies) if needed.
    async fn channel_locked(&self, slot: &mut Option<Channel>) -> Result<Channel> {
        if let Some(ch) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        *slot = None;
        let cfg = &self.link.config;
        let (ch, _) = self.link.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| amqp("enabling publisher confirms", e))?;
        self.topology.exchange(&ch, cfg, false).await?;
        let mut replies = ch
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                format!("squall-replies-{}", uuid::Uuid::now_v7().simple())
                    .as_str()
                    .into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| amqp("consuming direct replies", e))?;
        let waiters = self.waiters.clone();
        let closed = self.link.closed.clone();
        tokio::spawn(async move {
            loop {
                let d = tokio::select! {
                    _ = closed.cancelled() => break,
                    d = replies.next() => d,
                };
                let Some(Ok(d)) = d else { break };
                let Some(corr) = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.to_string())
                else {
                    tracing::debug!("dropping a reply without a correlation id");
                    continue;
                };
                let waiter = waiters.lock().expect("waiters lock").remove(&corr);
                let Some(waiter) = waiter else {
                    tracing::debug!(correlation = %corr, "dropping a late reply");
                    continue;
                };
                match decode(d.routing_key.as_str(), &d.properties, d.data.into()) {
                    Ok((m, _)) => {
                        let _ = waiter.send(m);
                    }
                    Err(e) => tracing::warn!(error = %e, "dropping an undecodable reply"),
                }
            }
            // The channel is gone: fail whoever still waits (their senders drop).
            waiters.lock().expect("waiters lock").clear();
        });
        *slot = Some(ch.clone());
        Ok(ch)
    }
}

fn timed_out(msg: &Message, timeout: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "no reply to the request on `{}` within {timeout:?}",
            msg.subject()
        ),
    )
}
