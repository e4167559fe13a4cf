//! Drivers: each target behind the same small interface, speaking its own client directly
//! (squall-broker, squall-client, async-nats, lapin), so the figures are the brokers', not
//! squall's adapters'.
//!
//! | module | targets |
//! |---|---|
//! | [`squall`] | `squall-embedded` (in-process) and `squall-serve` (child process over loopback) |
//! | [`nats`] | `nats-core` and `nats-js` |
//! | [`rabbit`] | `rabbitmq-classic` and `rabbitmq-quorum` |

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::error::Result;
use crate::peers::NatsServer;
use crate::spec::{Case, Label, Target};

pub mod nats;
pub mod rabbit;
pub mod squall;

/// Resolves when the broker confirmed a publish.
pub type AckFuture = BoxFuture<'static, Result<()>>;

/// One publishing connection (or channel).
#[async_trait]
pub trait Producer: Send + Sync {
    /// Hands `payload` over. Returns the confirm to await, or `None` where the target has no
    /// publish confirms (core NATS).
    async fn send(&self, payload: Bytes) -> Result<Option<AckFuture>>;
    /// Makes sure everything sent reached the broker (core NATS: a flush round trip).
    async fn finish(&self) -> Result<()>;
}

/// A delivery's settle handle.
pub trait Settle: Send {
    /// Acks it; the future resolves when the client has handed the ack over (or, where the
    /// client waits for the broker, when the broker took it).
    fn ack(self: Box<Self>) -> AckFuture;
}

/// One received message.
pub struct Incoming {
    /// The payload (send time and sequence in its first 16 bytes).
    pub payload: Bytes,
    /// 1 for a first delivery, 2 and more for redeliveries.
    pub attempt: u32,
    /// How to ack it; `None` where nothing is acked (core NATS, non-durable fan-out).
    pub settle: Option<Box<dyn Settle>>,
}

/// One consuming connection (or channel).
#[async_trait]
pub trait Receiver: Send {
    /// The next message. Cancel safe: dropping the future loses nothing.
    async fn recv(&mut self) -> Result<Incoming>;
}

/// What a driver says about the configuration it runs.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The durability its acks really mean.
    pub label: Label,
    /// The configuration in words (storage, sync setting, queue type).
    pub config: String,
    /// The broker's version.
    pub version: String,
}

/// One target prepared for one case.
#[async_trait]
pub trait Driver: Send {
    /// The configuration in use.
    fn setup(&self) -> Setup;
    /// The broker's process, when it is a separate one (its CPU is measured).
    fn broker_pid(&self) -> Option<u32>;
    /// fsyncs of message data so far, where observable.
    fn fsyncs(&self) -> Option<u64> {
        None
    }
    /// At-most-once delivery: the broker may drop messages for a slow consumer (core NATS).
    /// The runner then counts what arrived instead of waiting for every message.
    fn lossy(&self) -> bool {
        false
    }
    /// Fresh queues/streams for one repetition (unique names), created before any receiver.
    async fn prepare(&mut self) -> Result<()>;
    /// A producer on the current topology.
    async fn producer(&mut self) -> Result<Box<dyn Producer>>;
    /// Receiver number `index` (a group member, a subscriber, or the consumer of group `index`,
    /// per the case's shape).
    async fn receiver(&mut self, index: usize) -> Result<Box<dyn Receiver>>;
    /// Restarts the broker, keeping its data; `Ok(false)` when this driver cannot (the broker
    /// was not started by the benchmark).
    async fn restart(&mut self) -> Result<bool> {
        Ok(false)
    }
    /// Deletes what `prepare` created; stops what the driver started.
    async fn cleanup(&mut self) -> Result<()>;
}

/// Where the peers are, shared by every driver of a run.
pub struct Env {
    /// The `squall` executable (for `squall serve`).
    pub squall_exe: Option<PathBuf>,
    /// NATS without `sync_interval` (core NATS and JetStream default): a URL and its server's
    /// PID (if found), or why there is none.
    pub nats_default: std::result::Result<NatsEndpoint, String>,
    /// NATS with `sync_interval: always`, or why there is none.
    pub nats_sync: std::result::Result<NatsEndpoint, String>,
    /// RabbitMQ's AMQP URL, or why there is none.
    pub amqp: std::result::Result<String, String>,
    /// Scratch space for data directories.
    pub scratch: PathBuf,
    /// Messages a receiver may hold unacked (RabbitMQ prefetch, JetStream max_ack_pending,
    /// squall max_in_flight / client prefetch).
    pub prefetch: usize,
}

/// A NATS server to use.
#[derive(Clone)]
pub struct NatsEndpoint {
    /// `nats://host:port`.
    pub url: String,
    /// The server, when the benchmark started it (then it can be restarted, and its PID is
    /// exact).
    pub own: Option<Arc<tokio::sync::Mutex<NatsServer>>>,
    /// The PID of a server the benchmark did not start, if found in `/proc`.
    pub pid: Option<u32>,
}

impl NatsEndpoint {
    /// The server's current PID.
    pub fn pid(&self) -> Option<u32> {
        match &self.own {
            Some(s) => s.try_lock().ok().and_then(|s| s.proc_.pid()),
            None => self.pid,
        }
    }
}

/// Opens `target` for `case`, or says why it cannot run here.
pub async fn open(
    target: Target,
    case: &Case,
    env: &Env,
) -> std::result::Result<Box<dyn Driver>, Skip> {
    match target {
        Target::SquallEmbedded => Ok(Box::new(
            squall::Embedded::open(case, env).map_err(Skip::Failed)?,
        )),
        Target::SquallServe => {
            let exe = env.squall_exe.as_ref().ok_or_else(|| {
                Skip::Unavailable("no squall executable to run `squall serve` from".into())
            })?;
            Ok(Box::new(
                squall::Served::open(case, env, exe)
                    .await
                    .map_err(Skip::Failed)?,
            ))
        }
        Target::NatsCore | Target::NatsJs => {
            let ep = match (target, case.durability) {
                (Target::NatsJs, crate::spec::Durability::Fsync) => &env.nats_sync,
                _ => &env.nats_default,
            };
            let ep = ep.as_ref().map_err(|why| Skip::Unavailable(why.clone()))?;
            Ok(Box::new(
                nats::Nats::open(target, case, env, ep.clone())
                    .await
                    .map_err(Skip::Failed)?,
            ))
        }
        Target::RabbitmqClassic | Target::RabbitmqQuorum => {
            let url = env
                .amqp
                .as_ref()
                .map_err(|why| Skip::Unavailable(why.clone()))?;
            Ok(Box::new(
                rabbit::Rabbit::open(target, case, env, url)
                    .await
                    .map_err(Skip::Failed)?,
            ))
        }
    }
}

/// Why a row was not measured.
#[derive(Debug)]
pub enum Skip {
    /// The peer is not reachable or not configured here.
    Unavailable(String),
    /// Setting the target up failed.
    Failed(crate::error::BenchError),
}

/// A name unique to this process and moment: `prefix-<pid>-<counter>-<nanos>`.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}
