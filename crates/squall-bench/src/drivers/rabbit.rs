//! RabbitMQ through lapin: a classic or quorum queue with publisher confirms and manual acks
//! (prefetch = the run's prefetch). `Groups` is a fanout exchange with one queue per group;
//! `Fanout` (non-durable) a fanout exchange with one exclusive, auto-deleted queue per
//! subscriber and transient messages.
//!
//! Every producer and receiver has its own connection. Queues and exchanges have unique names
//! per repetition and are deleted afterwards.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use super::{AckFuture, Driver, Env, Incoming, Producer, Receiver, Settle, Setup};
use crate::error::{BenchError, Result};
use crate::spec::{Case, Durability, Label, Shape, Target};

/// A RabbitMQ target for one case.
pub struct Rabbit {
    target: Target,
    case: Case,
    url: String,
    prefetch: usize,
    admin: Channel,
    admin_conn: std::sync::Arc<Connection>,
    conns: Vec<(Connection, Channel)>,
    /// Queues and the exchange of the current repetition.
    queues: Vec<String>,
    exchange: Option<String>,
    id: String,
}

fn t(target: Target) -> &'static str {
    target.name()
}

async fn connect(target: Target, url: &str) -> Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| BenchError::broker(t(target), "connecting", e))
}

impl Rabbit {
    /// Connects the administrative channel.
    pub async fn open(target: Target, case: &Case, env: &Env, url: &str) -> Result<Rabbit> {
        let admin_conn = connect(target, url).await?;
        let admin = admin_conn
            .create_channel()
            .await
            .map_err(|e| BenchError::broker(t(target), "opening a channel", e))?;
        Ok(Rabbit {
            target,
            case: case.clone(),
            url: url.to_string(),
            prefetch: env.prefetch,
            admin,
            admin_conn: std::sync::Arc::new(admin_conn),
            conns: Vec::new(),
            queues: Vec::new(),
            exchange: None,
            id: String::new(),
        })
    }

    fn durable(&self) -> bool {
        self.case.durability != Durability::None
    }

    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let kind = if self.target == Target::RabbitmqQuorum {
            "quorum"
        } else {
            "classic"
        };
        args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
        args
    }

    async fn declare_queue(&self, name: &str, exclusive: bool) -> Result<()> {
        let durable = self.durable();
        self.admin
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable,
                    exclusive,
                    auto_delete: exclusive,
                    ..Default::default()
                },
                self.queue_args(),
            )
            .await
            .map_err(|e| {
                BenchError::broker(t(self.target), format!("declaring queue {name}"), e)
            })?;
        Ok(())
    }

    async fn channel(&mut self) -> Result<Channel> {
        let conn = connect(self.target, &self.url).await?;
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| BenchError::broker(t(self.target), "opening a channel", e))?;
        self.conns.push((conn, ch.clone()));
        Ok(ch)
    }
}

struct RabbitProducer {
    target: Target,
    ch: Channel,
    exchange: String,
    routing_key: String,
    props: BasicProperties,
}

#[async_trait]
impl Producer for RabbitProducer {
    async fn send(&self, payload: Bytes) -> Result<Option<AckFuture>> {
        let target = t(self.target);
        let confirm = self
            .ch
            .basic_publish(
                self.exchange.as_str().into(),
                self.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                self.props.clone(),
            )
            .await
            .map_err(|e| BenchError::broker(target, "publishing", e))?;
        Ok(Some(Box::pin(async move {
            match confirm.await {
                Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => Ok(()),
                Ok(Confirmation::Nack(_)) => Err(BenchError::broker(
                    target,
                    "publish confirm",
                    "the broker refused the message (basic.nack)",
                )),
                Err(e) => Err(BenchError::broker(target, "publish confirm", e)),
            }
        })))
    }

    async fn finish(&self) -> Result<()> {
        Ok(())
    }
}

struct RabbitReceiver {
    target: Target,
    consumer: lapin::Consumer,
    _ch: Channel,
}

struct RabbitSettle(Target, Acker);

impl Settle for RabbitSettle {
    fn ack(self: Box<Self>) -> AckFuture {
        Box::pin(async move {
            self.1
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .map_err(|e| BenchError::broker(t(self.0), "acking", e))
        })
    }
}

#[async_trait]
impl Receiver for RabbitReceiver {
    async fn recv(&mut self) -> Result<Incoming> {
        match self.consumer.next().await {
            Some(Ok(d)) => Ok(Incoming {
                attempt: if d.redelivered { 2 } else { 1 },
                payload: Bytes::from(d.data),
                settle: Some(Box::new(RabbitSettle(self.target, d.acker))),
            }),
            Some(Err(e)) => Err(BenchError::broker(t(self.target), "receiving", e)),
            None => Err(BenchError::broker(
                t(self.target),
                "receiving",
                "consumer ended",
            )),
        }
    }
}

#[async_trait]
impl Driver for Rabbit {
    fn setup(&self) -> Setup {
        let kind = if self.target == Target::RabbitmqQuorum {
            "quorum queue"
        } else {
            "classic queue"
        };
        let (label, config) = if self.durable() {
            (
                Label::FsyncBatched,
                format!("{kind}, durable, persistent messages, publisher confirms, manual acks"),
            )
        } else {
            (
                Label::None,
                format!("{kind}, exclusive, transient messages, publisher confirms, manual acks"),
            )
        };
        Setup {
            label,
            config,
            version: format!(
                "rabbitmq {}",
                crate::peers::rabbit_version().unwrap_or_else(|| "unknown".into())
            ),
        }
    }

    fn broker_pid(&self) -> Option<u32> {
        crate::peers::rabbit_pids().first().copied()
    }

    async fn prepare(&mut self) -> Result<()> {
        self.cleanup().await?;
        self.id = super::unique("bench");
        match self.case.shape {
            Shape::Queue { .. } => {
                let q = self.id.clone();
                self.declare_queue(&q, false).await?;
                self.queues.push(q);
            }
            Shape::Groups { groups }
            | Shape::Fanout {
                subscribers: groups,
            } => {
                let ex = self.id.clone();
                self.admin
                    .exchange_declare(
                        ex.as_str().into(),
                        ExchangeKind::Fanout,
                        ExchangeDeclareOptions {
                            durable: self.durable(),
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| BenchError::broker(t(self.target), "declaring the exchange", e))?;
                self.exchange = Some(ex.clone());
                if let Shape::Groups { .. } = self.case.shape {
                    for g in 0..groups {
                        let q = format!("{ex}-g{g}");
                        self.declare_queue(&q, false).await?;
                        self.admin
                            .queue_bind(
                                q.as_str().into(),
                                ex.as_str().into(),
                                "".into(),
                                QueueBindOptions::default(),
                                FieldTable::default(),
                            )
                            .await
                            .map_err(|e| BenchError::broker(t(self.target), "binding", e))?;
                        self.queues.push(q);
                    }
                }
            }
        }
        Ok(())
    }

    async fn producer(&mut self) -> Result<Box<dyn Producer>> {
        let ch = self.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| BenchError::broker(t(self.target), "enabling confirms", e))?;
        let (exchange, routing_key) = match &self.exchange {
            Some(ex) => (ex.clone(), String::new()),
            None => (
                String::new(),
                self.queues.first().cloned().unwrap_or_default(),
            ),
        };
        Ok(Box::new(RabbitProducer {
            target: self.target,
            ch,
            exchange,
            routing_key,
            props: BasicProperties::default().with_delivery_mode(if self.durable() {
                2
            } else {
                1
            }),
        }))
    }

    async fn receiver(&mut self, index: usize) -> Result<Box<dyn Receiver>> {
        let ch = self.channel().await?;
        let queue = match self.case.shape {
            Shape::Queue { .. } => self.queues.first().cloned().unwrap_or_default(),
            Shape::Groups { .. } => format!("{}-g{index}", self.id),
            Shape::Fanout { .. } => {
                // Exclusive to the receiver's connection: declared on its channel.
                let q = format!("{}-s{index}", self.id);
                ch.queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| BenchError::broker(t(self.target), "declaring a queue", e))?;
                ch.queue_bind(
                    q.as_str().into(),
                    self.id.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| BenchError::broker(t(self.target), "binding", e))?;
                q
            }
        };
        ch.basic_qos(
            u16::try_from(self.prefetch).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await
        .map_err(|e| BenchError::broker(t(self.target), "setting prefetch", e))?;
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                format!("bench-{index}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| BenchError::broker(t(self.target), "consuming", e))?;
        Ok(Box::new(RabbitReceiver {
            target: self.target,
            consumer,
            _ch: ch,
        }))
    }

    async fn cleanup(&mut self) -> Result<()> {
        // Channels first: closing a connection under an open consuming channel makes lapin
        // log an error for a normal shutdown.
        for (conn, ch) in self.conns.drain(..) {
            let _ = ch.close(200, "bench done".into()).await;
            let _ = conn.close(200, "bench done".into()).await;
        }
        for q in std::mem::take(&mut self.queues) {
            self.admin
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| BenchError::broker(t(self.target), format!("deleting {q}"), e))?;
        }
        if let Some(ex) = self.exchange.take() {
            self.admin
                .exchange_delete(ex.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|e| BenchError::broker(t(self.target), "deleting the exchange", e))?;
        }
        Ok(())
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        // Connections close when dropped; the admin connection is closed politely when possible.
        let conn = self.admin_conn.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = conn.close(200, "bench done".into()).await;
            });
        }
    }
}
