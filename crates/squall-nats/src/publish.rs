//! Publishing: core NATS (handed to the connection, acked as `memory`) and JetStream
//! (pipelined, the ack is the stream's `PubAck`), shared by the backend, its consumers (dead
//! letters) and request-reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream::{self, message::PublishMessage};
use futures::StreamExt;
use squall_core::{Durability, Error, Message, PendingAck, PublishAck, Result};

use crate::codec::{self, EncodeRules, Outbound};
use crate::config::NatsConfig;
use crate::error;
use crate::streams::Streams;

/// The JetStream half of a connection.
pub(crate) struct Js {
    pub ctx: jetstream::Context,
    pub streams: Streams,
}

/// One connection's publishing state.
pub(crate) struct Publishing {
    pub client: async_nats::Client,
    pub js: Option<Js>,
    pub config: NatsConfig,
    pub backend: &'static str,
    pub closed: AtomicBool,
    /// Connections made so far (bumped by every connect and reconnect): a JetStream consumer
    /// asks again at once for what a pull request on a lost connection would have brought.
    pub connections: tokio::sync::watch::Receiver<u64>,
    inbox_prefix: String,
}

impl Publishing {
    pub fn new(
        client: async_nats::Client,
        js: Option<Js>,
        config: NatsConfig,
        connections: tokio::sync::watch::Receiver<u64>,
    ) -> Arc<Self> {
        let backend = if js.is_some() {
            "nats-jetstream"
        } else {
            "nats"
        };
        // `new_inbox` is `<prefix>.<unique>`: keep the prefix with its dot.
        let inbox = client.new_inbox();
        let inbox_prefix = match inbox.rfind('.') {
            Some(i) => inbox[..=i].to_string(),
            None => "_INBOX.".to_string(),
        };
        Arc::new(Publishing {
            client,
            js,
            config,
            backend,
            closed: AtomicBool::new(false),
            connections,
            inbox_prefix,
        })
    }

    /// Whether `subject` is a reply inbox: published on core NATS even in JetStream mode, never
    /// stored.
    pub fn is_inbox(&self, subject: &str) -> bool {
        subject.starts_with(&self.inbox_prefix)
    }

    fn rules(&self) -> EncodeRules {
        EncodeRules {
            max_payload: self.config.max_payload,
            ttl: self.js.is_some(),
            backend: self.backend,
        }
    }

    pub fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::closed(format!(
                "the {} backend handle",
                self.backend
            )))
        } else {
            Ok(())
        }
    }

    /// Hands `msg` over; the [`PendingAck`] resolves on the JetStream ack (or at once on core
    /// NATS, where there is none).
    pub async fn send(&self, msg: Message) -> Result<PendingAck> {
        self.send_with(msg, None).await
    }

    /// [`send`](Self::send); with `unique`, the message is kept out of deduplication (requests).
    pub async fn send_with(&self, msg: Message, unique: Option<&str>) -> Result<PendingAck> {
        self.check_open()?;
        let mut out = codec::encode(&msg, self.rules())?;
        if let Some(u) = unique {
            out.undeduplicated(msg.id().as_str(), u)?;
        }
        match &self.js {
            Some(js) if !self.is_inbox(&out.subject) => self.send_js(js, &msg, out).await,
            _ => {
                self.send_core(out).await?;
                Ok(PendingAck::ready(Ok(PublishAck {
                    stream: None,
                    sequence: 0,
                    durability: Durability::Memory,
                    duplicate: false,
                })))
            }
        }
    }

    /// Sends and waits for the ack.
    pub async fn publish(&self, msg: Message) -> Result<PublishAck> {
        self.send(msg).await?.await
    }

    async fn send_core(&self, out: Outbound) -> Result<()> {
        let subject = out.subject.clone();
        let r = match out.reply {
            Some(reply) => {
                self.client
                    .publish_with_reply_and_headers(out.subject, reply, out.headers, out.payload)
                    .await
            }
            None => {
                self.client
                    .publish_with_headers(out.subject, out.headers, out.payload)
                    .await
            }
        };
        r.map_err(|e| error::core_publish(&subject, e))
    }

    async fn send_js(&self, js: &Js, msg: &Message, out: Outbound) -> Result<PendingAck> {
        let bound = js.streams.for_subject(msg.subject()).await?;
        let subject = out.subject;
        let publish = PublishMessage::build()
            .payload(out.payload)
            .headers(out.headers);
        // Waits here while `max_pending_acks` acks are outstanding: that is the backpressure.
        let ack = js
            .ctx
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| error::publish(&subject, e))?;
        // The ack is awaited by a task so that `flush` and `close` see it complete even when
        // the caller holds the PendingAck without polling it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let durability = bound.durability;
        tokio::spawn(async move {
            let r = ack
                .await
                .map(|a| PublishAck {
                    stream: Some(a.stream),
                    sequence: a.sequence,
                    durability,
                    duplicate: a.duplicate,
                })
                .map_err(|e| error::publish(&subject, e));
            let _ = tx.send(r);
        });
        Ok(PendingAck::channel(rx))
    }

    /// Waits until the server has processed everything this connection sent so far: a message
    /// to a private inbox comes back only after the server handled all that preceded it.
    /// (async-nats's own `flush` only empties the socket buffer.)
    pub async fn round_trip(&self) -> std::result::Result<(), String> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.client
            .publish(inbox, bytes::Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        let r = sub
            .next()
            .await
            .map(|_| ())
            .ok_or_else(|| "connection closed".to_string());
        let _ = sub.unsubscribe().await;
        r
    }

    /// Waits until everything sent so far is acked (JetStream) and processed by the server.
    pub async fn flush(&self) -> Result<()> {
        let wait = async {
            if let Some(js) = &self.js {
                js.ctx.wait_for_acks().await;
            }
            self.round_trip().await
        };
        match tokio::time::timeout(self.config.api_timeout, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::new(
                squall_core::ErrorKind::Unavailable,
                format!("flushing the NATS connection: {e}"),
            )),
            Err(_) => Err(Error::new(
                squall_core::ErrorKind::Timeout,
                format!(
                    "flushing took longer than {:?} (set `api_timeout`)",
                    self.config.api_timeout
                ),
            )),
        }
    }
}
