//! squall: the embedded broker in this process, and `squall serve` as a child process driven
//! through squall-client. Both through the squall-core traits.
//!
//! Topology per shape: `Queue` is one durable group `bench` (work-queue stream for the embedded
//! broker), `Groups` is durable groups `g0..gN` on a limits stream, `Fanout` is group-less
//! subscriptions (each gets every message). `squall serve` has no stream administration over
//! the wire, so there every subject lands in its default stream (limits retention, 1 GiB).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use squall_broker::storage::{
    IoHook, IoOp, IoVerdict, LogConfig, LogStorage, MemoryStorage, Storage, SyncMode,
};
use squall_broker::{Broker, BrokerConfig, Retention, StreamConfig};
use squall_client::{Client, ClientConfig};
use squall_core::{
    Consumer, Delivery, Message, Pattern, Publisher, StartPosition, Subscriber, Subscription,
};

use super::{AckFuture, Driver, Env, Incoming, Producer, Receiver, Settle, Setup};
use crate::error::{BenchError, Result};
use crate::peers::SquallServe;
use crate::spec::{Case, Durability, Label, Mode, Shape};

const EMBEDDED: &str = "squall-embedded";
const SERVE: &str = "squall-serve";
const SUBJECT: &str = "bench.q";
const PATTERN: &str = "bench.>";

/// Counts fdatasyncs of segment files (message data).
#[derive(Debug, Default)]
struct SyncCounter(AtomicU64);

impl IoHook for SyncCounter {
    fn check(&self, op: IoOp, path: &Path, _len: usize) -> IoVerdict {
        if op == IoOp::Sync && path.extension().is_some_and(|e| e == "seg") {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        IoVerdict::Pass
    }
}

fn label(d: Durability) -> Label {
    match d {
        Durability::None => Label::None,
        Durability::PageCache => Label::PageCache,
        Durability::Fsync => Label::FsyncBatched,
    }
}

fn subscription(case: &Case, index: usize, prefetch: usize) -> squall_core::Result<Subscription> {
    let mut sub = Subscription::new(PATTERN)?;
    sub = match case.shape {
        Shape::Queue { .. } => sub
            .group("bench")?
            .durable(true)
            .start(StartPosition::First),
        Shape::Groups { .. } => sub
            .group(format!("g{index}"))?
            .durable(true)
            .start(StartPosition::First),
        Shape::Fanout { .. } => sub.start(StartPosition::New),
    };
    let mut in_flight = prefetch;
    if let Mode::Redeliver { count, ack_wait } = case.mode {
        sub = sub.ack_wait(ack_wait);
        in_flight = in_flight.max(2 * count as usize);
    }
    Ok(sub.max_in_flight(in_flight))
}

struct SquallProducer<P> {
    target: &'static str,
    publisher: P,
}

#[async_trait]
impl<P: Publisher + 'static> Producer for SquallProducer<P> {
    async fn send(&self, payload: Bytes) -> Result<Option<AckFuture>> {
        let target = self.target;
        let msg = Message::builder(SUBJECT)
            .map_err(|e| BenchError::broker(target, "building a message", e))?
            .payload(payload)
            .build();
        let pending = self
            .publisher
            .send(msg)
            .await
            .map_err(|e| BenchError::broker(target, "publishing", e))?;
        Ok(Some(Box::pin(async move {
            pending
                .await
                .map(drop)
                .map_err(|e| BenchError::broker(target, "publish confirm", e))
        })))
    }

    async fn finish(&self) -> Result<()> {
        Ok(())
    }
}

struct SquallReceiver {
    target: &'static str,
    consumer: Box<dyn Consumer>,
}

struct SquallSettle {
    target: &'static str,
    delivery: Delivery,
}

impl Settle for SquallSettle {
    fn ack(self: Box<Self>) -> AckFuture {
        let target = self.target;
        Box::pin(async move {
            self.delivery
                .ack()
                .await
                .map_err(|e| BenchError::broker(target, "acking", e))
        })
    }
}

#[async_trait]
impl Receiver for SquallReceiver {
    async fn recv(&mut self) -> Result<Incoming> {
        match self.consumer.next().await {
            Some(Ok(d)) => Ok(Incoming {
                payload: d.message().payload().clone(),
                attempt: d.attempt(),
                settle: Some(Box::new(SquallSettle {
                    target: self.target,
                    delivery: d,
                })),
            }),
            Some(Err(e)) => Err(BenchError::broker(self.target, "receiving", e)),
            None => Err(BenchError::broker(
                self.target,
                "receiving",
                "the consumer ended",
            )),
        }
    }
}

/// The embedded broker, a fresh one (and data directory) per repetition.
pub struct Embedded {
    case: Case,
    scratch: PathBuf,
    prefetch: usize,
    counter: Arc<SyncCounter>,
    dir: Option<tempfile::TempDir>,
    broker: Option<Broker>,
}

impl Embedded {
    /// Prepares nothing yet: [`Driver::prepare`] opens the broker.
    pub fn open(case: &Case, env: &Env) -> Result<Embedded> {
        Ok(Embedded {
            case: case.clone(),
            scratch: env.scratch.clone(),
            prefetch: env.prefetch,
            counter: Arc::default(),
            dir: None,
            broker: None,
        })
    }

    fn open_broker(&self) -> Result<Broker> {
        let storage: Arc<dyn Storage> = match self.case.durability {
            Durability::None => MemoryStorage::new(),
            d => {
                let dir = self.dir.as_ref().map(|d| d.path()).unwrap_or(&self.scratch);
                LogStorage::open(
                    dir,
                    LogConfig {
                        sync: if d == Durability::Fsync {
                            SyncMode::Fsync
                        } else {
                            SyncMode::Buffered
                        },
                        io_hook: Some(self.counter.clone()),
                        ..LogConfig::default()
                    },
                )
                .map_err(|e| BenchError::broker(EMBEDDED, "opening log storage", e))?
            }
        };
        let broker = Broker::builder()
            .storage(storage)
            .config(BrokerConfig {
                default_stream: None,
                ..BrokerConfig::default()
            })
            .open()
            .map_err(|e| BenchError::broker(EMBEDDED, "opening the broker", e))?;
        let pattern =
            Pattern::new(PATTERN).map_err(|e| BenchError::broker(EMBEDDED, "pattern", e))?;
        let mut stream = StreamConfig::new("bench", vec![pattern]);
        stream.retention = match self.case.shape {
            Shape::Groups { .. } => Retention::Limits,
            Shape::Queue { .. } | Shape::Fanout { .. } => Retention::WorkQueue,
        };
        broker
            .create_stream(stream)
            .map_err(|e| BenchError::broker(EMBEDDED, "creating the stream", e))?;
        Ok(broker)
    }

    fn broker(&self) -> Result<&Broker> {
        self.broker
            .as_ref()
            .ok_or_else(|| BenchError::broker(EMBEDDED, "using the broker", "not prepared"))
    }
}

#[async_trait]
impl Driver for Embedded {
    fn setup(&self) -> Setup {
        let config = match self.case.durability {
            Durability::None => "memory storage".to_string(),
            Durability::PageCache => "log storage, sync buffered (fdatasync within 100 ms)".into(),
            Durability::Fsync => "log storage, sync fsync (group commit)".into(),
        };
        Setup {
            label: label(self.case.durability),
            config,
            version: format!("squall {}", env!("CARGO_PKG_VERSION")),
        }
    }

    fn broker_pid(&self) -> Option<u32> {
        None
    }

    fn fsyncs(&self) -> Option<u64> {
        (self.case.durability != Durability::None).then(|| self.counter.0.load(Ordering::Relaxed))
    }

    async fn prepare(&mut self) -> Result<()> {
        self.cleanup().await?;
        self.dir = Some(
            tempfile::tempdir_in(&self.scratch)
                .map_err(|e| BenchError::io("creating a data directory", e))?,
        );
        self.broker = Some(self.open_broker()?);
        Ok(())
    }

    async fn producer(&mut self) -> Result<Box<dyn Producer>> {
        Ok(Box::new(SquallProducer {
            target: EMBEDDED,
            publisher: self.broker()?.handle(),
        }))
    }

    async fn receiver(&mut self, index: usize) -> Result<Box<dyn Receiver>> {
        let sub = subscription(&self.case, index, self.prefetch)
            .map_err(|e| BenchError::broker(EMBEDDED, "subscription", e))?;
        let consumer = self
            .broker()?
            .subscribe(sub)
            .await
            .map_err(|e| BenchError::broker(EMBEDDED, "subscribing", e))?;
        Ok(Box::new(SquallReceiver {
            target: EMBEDDED,
            consumer,
        }))
    }

    async fn restart(&mut self) -> Result<bool> {
        if self.case.durability == Durability::None {
            return Ok(false);
        }
        if let Some(b) = self.broker.take() {
            b.close()
                .await
                .map_err(|e| BenchError::broker(EMBEDDED, "closing the broker", e))?;
        }
        // Let the storage threads see the last handle go.
        tokio::task::yield_now().await;
        self.broker = Some(self.open_broker()?);
        Ok(true)
    }

    async fn cleanup(&mut self) -> Result<()> {
        if let Some(b) = self.broker.take() {
            b.close()
                .await
                .map_err(|e| BenchError::broker(EMBEDDED, "closing the broker", e))?;
        }
        self.dir = None;
        Ok(())
    }
}

/// `squall serve`, a fresh child process (and data directory) per repetition.
pub struct Served {
    case: Case,
    exe: PathBuf,
    scratch: PathBuf,
    prefetch: usize,
    dir: Option<tempfile::TempDir>,
    server: Option<SquallServe>,
    clients: Vec<Client>,
}

impl Served {
    /// Checks nothing yet: [`Driver::prepare`] starts the server.
    pub async fn open(case: &Case, env: &Env, exe: &Path) -> Result<Served> {
        Ok(Served {
            case: case.clone(),
            exe: exe.to_path_buf(),
            scratch: env.scratch.clone(),
            prefetch: env.prefetch,
            dir: None,
            server: None,
            clients: Vec::new(),
        })
    }

    async fn client(&mut self) -> Result<Client> {
        let server = self
            .server
            .as_ref()
            .ok_or_else(|| BenchError::broker(SERVE, "connecting", "not prepared"))?;
        let config = ClientConfig {
            name: "squall-bench".into(),
            prefetch: u32::try_from(self.prefetch).unwrap_or(u32::MAX),
            publish_buffer: self.case.window.max(4096),
            ..ClientConfig::new(server.addr.to_string())
        };
        let client = Client::connect(config)
            .await
            .map_err(|e| BenchError::broker(SERVE, "connecting", e))?;
        self.clients.push(client.clone());
        Ok(client)
    }

    fn sync_arg(&self) -> &'static str {
        match self.case.durability {
            Durability::None => "memory",
            Durability::PageCache => "buffered",
            Durability::Fsync => "fsync",
        }
    }

    async fn close_clients(&mut self) {
        for c in self.clients.drain(..) {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), c.close()).await;
        }
    }
}

#[async_trait]
impl Driver for Served {
    fn setup(&self) -> Setup {
        Setup {
            label: label(self.case.durability),
            config: format!("squall serve --sync {}, loopback TCP", self.sync_arg()),
            version: format!("squall {}", env!("CARGO_PKG_VERSION")),
        }
    }

    fn broker_pid(&self) -> Option<u32> {
        self.server.as_ref().and_then(|s| s.proc_.pid())
    }

    /// From the server's `/metrics` (its admin API on a loopback port of its own).
    fn fsyncs(&self) -> Option<u64> {
        if self.case.durability == Durability::None {
            return None;
        }
        self.server.as_ref()?.fsyncs()
    }

    async fn prepare(&mut self) -> Result<()> {
        self.cleanup().await?;
        let dir = tempfile::tempdir_in(&self.scratch)
            .map_err(|e| BenchError::io("creating a data directory", e))?;
        self.server = Some(SquallServe::start(&self.exe, self.sync_arg(), dir.path()).await?);
        self.dir = Some(dir);
        Ok(())
    }

    async fn producer(&mut self) -> Result<Box<dyn Producer>> {
        Ok(Box::new(SquallProducer {
            target: SERVE,
            publisher: self.client().await?,
        }))
    }

    async fn receiver(&mut self, index: usize) -> Result<Box<dyn Receiver>> {
        let sub = subscription(&self.case, index, self.prefetch)
            .map_err(|e| BenchError::broker(SERVE, "subscription", e))?;
        let client = self.client().await?;
        let consumer = client
            .subscribe(sub)
            .await
            .map_err(|e| BenchError::broker(SERVE, "subscribing", e))?;
        Ok(Box::new(SquallReceiver {
            target: SERVE,
            consumer,
        }))
    }

    async fn restart(&mut self) -> Result<bool> {
        if self.case.durability == Durability::None {
            return Ok(false);
        }
        self.close_clients().await;
        match self.server.as_mut() {
            Some(s) => s.restart().await.map(|()| true),
            None => Ok(false),
        }
    }

    async fn cleanup(&mut self) -> Result<()> {
        self.close_clients().await;
        if let Some(mut s) = self.server.take() {
            s.proc_.stop(std::time::Duration::from_secs(30)).await;
        }
        self.dir = None;
        Ok(())
    }
}
