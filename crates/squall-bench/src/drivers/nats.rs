//! NATS through async-nats: core NATS (fan-out, no acks) and JetStream (file storage; work-queue
//! stream with one shared durable pull consumer for queues, a limits stream with one durable
//! consumer per group for `Groups`).
//!
//! Every producer and receiver has its own connection, as separate processes would. The
//! JetStream stream of a repetition has a unique name and is deleted afterwards.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{AckFuture, Driver, Env, Incoming, NatsEndpoint, Producer, Receiver, Settle, Setup};
use crate::error::{BenchError, Result};
use crate::spec::{Case, Durability, Label, Mode, Shape, Target};

/// A NATS target for one case.
pub struct Nats {
    target: Target,
    case: Case,
    endpoint: NatsEndpoint,
    prefetch: usize,
    admin: async_nats::Client,
    version: String,
    stream: Option<String>,
    subject: String,
}

fn name(t: Target) -> &'static str {
    t.name()
}

impl Nats {
    /// Connects an administrative connection (stream creation, version).
    pub async fn open(
        target: Target,
        case: &Case,
        env: &Env,
        endpoint: NatsEndpoint,
    ) -> Result<Nats> {
        let admin = connect(target, &endpoint.url).await?;
        let version = admin.server_info().version;
        Ok(Nats {
            target,
            case: case.clone(),
            endpoint,
            prefetch: env.prefetch,
            admin,
            version,
            stream: None,
            subject: String::new(),
        })
    }

    fn js(&self) -> bool {
        self.target == Target::NatsJs
    }
}

async fn connect(target: Target, url: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("squall-bench")
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| BenchError::broker(name(target), format!("connecting to {url}"), e))
}

struct CoreProducer {
    client: async_nats::Client,
    subject: String,
}

#[async_trait]
impl Producer for CoreProducer {
    async fn send(&self, payload: Bytes) -> Result<Option<AckFuture>> {
        self.client
            .publish(self.subject.clone(), payload)
            .await
            .map_err(|e| BenchError::broker("nats-core", "publishing", e))?;
        Ok(None)
    }

    async fn finish(&self) -> Result<()> {
        self.client
            .flush()
            .await
            .map_err(|e| BenchError::broker("nats-core", "flushing", e))
    }
}

struct JsProducer {
    js: jetstream::Context,
    subject: String,
}

#[async_trait]
impl Producer for JsProducer {
    async fn send(&self, payload: Bytes) -> Result<Option<AckFuture>> {
        let ack = self
            .js
            .publish(self.subject.clone(), payload)
            .await
            .map_err(|e| BenchError::broker("nats-js", "publishing", e))?;
        Ok(Some(Box::pin(async move {
            ack.await
                .map(drop)
                .map_err(|e| BenchError::broker("nats-js", "publish ack", e))
        })))
    }

    async fn finish(&self) -> Result<()> {
        Ok(())
    }
}

struct CoreReceiver {
    sub: async_nats::Subscriber,
}

#[async_trait]
impl Receiver for CoreReceiver {
    async fn recv(&mut self) -> Result<Incoming> {
        match self.sub.next().await {
            Some(m) => Ok(Incoming {
                payload: m.payload,
                attempt: 1,
                settle: None,
            }),
            None => Err(BenchError::broker(
                "nats-core",
                "receiving",
                "subscription ended",
            )),
        }
    }
}

struct JsReceiver {
    messages: pull::Stream,
}

struct JsSettle(jetstream::Message);

impl Settle for JsSettle {
    fn ack(self: Box<Self>) -> AckFuture {
        Box::pin(async move {
            self.0
                .ack()
                .await
                .map_err(|e| BenchError::broker("nats-js", "acking", e))
        })
    }
}

#[async_trait]
impl Receiver for JsReceiver {
    async fn recv(&mut self) -> Result<Incoming> {
        match self.messages.next().await {
            Some(Ok(m)) => {
                let attempt = m
                    .info()
                    .map(|i| u32::try_from(i.delivered).unwrap_or(1))
                    .unwrap_or(1);
                Ok(Incoming {
                    payload: m.message.payload.clone(),
                    attempt,
                    settle: Some(Box::new(JsSettle(m))),
                })
            }
            Some(Err(e)) => Err(BenchError::broker("nats-js", "receiving", e)),
            None => Err(BenchError::broker("nats-js", "receiving", "consumer ended")),
        }
    }
}

#[async_trait]
impl Driver for Nats {
    fn setup(&self) -> Setup {
        let (label, config) = match (self.target, self.case.durability) {
            (Target::NatsCore, _) => (Label::None, "core NATS subjects (no persistence)".into()),
            (_, Durability::Fsync) => (
                Label::FsyncPerMessage,
                "JetStream file storage, sync_interval: always".to_string(),
            ),
            _ => (
                Label::PageCache,
                "JetStream file storage, default sync_interval (fsync every 2 min)".to_string(),
            ),
        };
        Setup {
            label,
            config,
            version: format!("nats-server {}", self.version),
        }
    }

    fn broker_pid(&self) -> Option<u32> {
        self.endpoint.pid()
    }

    fn lossy(&self) -> bool {
        !self.js()
    }

    async fn prepare(&mut self) -> Result<()> {
        self.cleanup().await?;
        let id = super::unique("bench").replace('-', "_");
        self.subject = format!("bench.{id}");
        if !self.js() {
            return Ok(());
        }
        let js = jetstream::new(self.admin.clone());
        let retention = match self.case.shape {
            Shape::Groups { .. } => stream::RetentionPolicy::Limits,
            _ => stream::RetentionPolicy::WorkQueue,
        };
        let st = js
            .create_stream(stream::Config {
                name: id.clone(),
                subjects: vec![self.subject.clone()],
                retention,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| BenchError::broker("nats-js", "creating the stream", e))?;
        self.stream = Some(id);
        let (ack_wait, pending) = match self.case.mode {
            Mode::Redeliver { count, ack_wait } => {
                (ack_wait, self.prefetch.max(2 * count as usize))
            }
            _ => (Duration::from_secs(30), self.prefetch),
        };
        let consumers: Vec<String> = match self.case.shape {
            Shape::Groups { groups } => (0..groups).map(|g| format!("g{g}")).collect(),
            _ => vec!["bench".into()],
        };
        for c in consumers {
            st.create_consumer(pull::Config {
                durable_name: Some(c),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ack_wait,
                max_ack_pending: i64::try_from(pending).unwrap_or(-1),
                ..Default::default()
            })
            .await
            .map_err(|e| BenchError::broker("nats-js", "creating a consumer", e))?;
        }
        Ok(())
    }

    async fn producer(&mut self) -> Result<Box<dyn Producer>> {
        let client = connect(self.target, &self.endpoint.url).await?;
        if self.js() {
            Ok(Box::new(JsProducer {
                js: jetstream::new(client),
                subject: self.subject.clone(),
            }))
        } else {
            Ok(Box::new(CoreProducer {
                client,
                subject: self.subject.clone(),
            }))
        }
    }

    async fn receiver(&mut self, index: usize) -> Result<Box<dyn Receiver>> {
        let client = connect(self.target, &self.endpoint.url).await?;
        if !self.js() {
            let sub = client
                .subscribe(self.subject.clone())
                .await
                .map_err(|e| BenchError::broker("nats-core", "subscribing", e))?;
            // The subscription must be registered before the producer starts.
            client
                .flush()
                .await
                .map_err(|e| BenchError::broker("nats-core", "flushing", e))?;
            return Ok(Box::new(CoreReceiver { sub }));
        }
        let stream_name = self
            .stream
            .clone()
            .ok_or_else(|| BenchError::broker("nats-js", "receiving", "not prepared"))?;
        let consumer_name = match self.case.shape {
            Shape::Groups { .. } => format!("g{index}"),
            _ => "bench".into(),
        };
        let js = jetstream::new(client);
        let st = js
            .get_stream(&stream_name)
            .await
            .map_err(|e| BenchError::broker("nats-js", "looking the stream up", e))?;
        let consumer: jetstream::consumer::PullConsumer = st
            .get_consumer(&consumer_name)
            .await
            .map_err(|e| BenchError::broker("nats-js", "looking the consumer up", e))?;
        let batch = match self.case.mode {
            Mode::Redeliver { count, .. } => self.prefetch.max(2 * count as usize),
            _ => self.prefetch,
        };
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .messages()
            .await
            .map_err(|e| BenchError::broker("nats-js", "pulling", e))?;
        Ok(Box::new(JsReceiver { messages }))
    }

    async fn restart(&mut self) -> Result<bool> {
        let Some(own) = self.endpoint.own.clone() else {
            return Ok(false);
        };
        own.lock().await.restart().await?;
        self.admin = connect(self.target, &self.endpoint.url).await?;
        // JetStream recovers its streams before it answers for them.
        let js = jetstream::new(self.admin.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        if let Some(name) = &self.stream {
            while js.get_stream(name).await.is_err() {
                if tokio::time::Instant::now() > deadline {
                    return Err(BenchError::Stalled {
                        target: "nats-js",
                        what: format!("stream {name} not back 60 s after the restart"),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(true)
    }

    async fn cleanup(&mut self) -> Result<()> {
        if let Some(name) = self.stream.take() {
            let js = jetstream::new(self.admin.clone());
            js.delete_stream(&name)
                .await
                .map_err(|e| BenchError::broker("nats-js", "deleting the stream", e))?;
        }
        Ok(())
    }
}
