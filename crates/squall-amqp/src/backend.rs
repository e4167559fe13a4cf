//! [`AmqpBackend`]: the handle implementing the squall-core traits, and its [`Capabilities`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{
    Backend, Capabilities, Consumer, Durability, Message, PendingAck, Publisher, Requester, Result,
    Subscriber, Subscription, Support,
};

use crate::config::{AmqpConfig, ExchangeKind, QueueType};
use crate::connection::Link;
use crate::consumer::{AmqpConsumer, check};
use crate::publisher::Publisher as Pub;
use crate::request::Requester as Req;
use crate::topology::{Declared, Topology};

/// What the adapter can do with `config`: see the crate docs for how each feature is provided.
pub fn capabilities(config: &AmqpConfig) -> Capabilities {
    use Support::{Emulated, Missing, Native};
    let max_durability = if !config.persistent {
        Durability::Memory
    } else if config.queue_type == QueueType::Quorum && config.replicated {
        Durability::Replicated
    } else {
        Durability::Fsynced
    };
    let mut c = Capabilities::all_native(config.max_payload, max_durability);
    c.persistence = if config.persistent { Native } else { Missing };
    c.groups = Native;
    c.durable_groups = Native;
    c.redelivery = Native;
    c.nack_delay = Emulated;
    c.lease_extend = Emulated;
    c.dead_letter = Emulated;
    c.delayed_delivery = Emulated;
    c.ttl = Native;
    c.dedup = Missing;
    c.key_ordering = Missing;
    c.ordered = Native;
    c.replay_by_sequence = Missing;
    c.replay_by_time = Missing;
    c.request_reply = Native;
    c.wildcards = match config.exchange_kind {
        ExchangeKind::Topic => Native,
        ExchangeKind::Fanout => Emulated,
        ExchangeKind::Direct | ExchangeKind::Headers => Missing,
    };
    c.headers = Native;
    c
}

/// A connection to RabbitMQ implementing [`Publisher`], [`Subscriber`], [`Requester`] and
/// [`Backend`]. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct AmqpBackend {
    inner: Arc<Inner>,
}

struct Inner {
    link: Arc<Link>,
    topology: Arc<Topology>,
    publisher: Arc<Pub>,
    requester: Req,
    caps: Capabilities,
}

impl std::fmt::Debug for AmqpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBackend")
            .field("config", &self.inner.link.config)
            .finish()
    }
}

impl AmqpBackend {
    /// Connects with `config`. Fails with `Unavailable` when RabbitMQ cannot be reached and
    /// `InvalidConfig` when it refuses the credentials or the vhost; afterwards the handle
    /// reconnects by itself.
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        config.validate()?;
        let caps = capabilities(&config);
        let link = Link::connect(Arc::new(config)).await?;
        let topology = Arc::new(Topology::new());
        let publisher = Pub::new(link.clone(), topology.clone());
        let requester = Req::new(link.clone(), topology.clone());
        Ok(AmqpBackend {
            inner: Arc::new(Inner {
                link,
                topology,
                publisher,
                requester,
                caps,
            }),
        })
    }

    /// Parses `url` (see [`AmqpConfig::from_url`]) and connects.
    pub async fn connect_url(url: &str) -> Result<Self> {
        AmqpBackend::connect(AmqpConfig::from_url(url)?).await
    }

    /// The configuration.
    pub fn config(&self) -> &AmqpConfig {
        &self.inner.link.config
    }

    /// Reconnects completed since the handle connected.
    pub fn reconnects(&self) -> u64 {
        self.inner.link.reconnects()
    }

    /// Whether the handle has a live connection right now.
    pub fn is_connected(&self) -> bool {
        self.inner.link.live().is_some()
    }

    /// Waits up to `timeout` for a live connection; `true` if there is one.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.is_connected() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.is_connected()
    }

    /// The exchanges and durable queues this handle declared. RabbitMQ keeps durable group
    /// queues until they are deleted (non-durable groups' queues expire after `group_expiry`);
    /// this is the list to delete when a deployment is torn down.
    pub fn declared(&self) -> Declared {
        self.inner.topology.declared()
    }
}

#[async_trait]
impl Publisher for AmqpBackend {
    async fn send(&self, msg: Message) -> Result<PendingAck> {
        self.inner.publisher.send(msg).await
    }

    async fn flush(&self) -> Result<()> {
        self.inner.publisher.flush().await
    }

    /// Flushes (for at most `close_timeout`), then closes the connection: consumers opened
    /// through this handle end, and every later call fails with `Closed`.
    async fn close(&self) -> Result<()> {
        let flushed = self.inner.publisher.close().await;
        self.inner.link.shutdown().await;
        flushed
    }
}

#[async_trait]
impl Subscriber for AmqpBackend {
    async fn subscribe(&self, sub: Subscription) -> Result<Box<dyn Consumer>> {
        let binds = check(&sub, &self.inner.link)?;
        let c = AmqpConsumer::start(
            self.inner.link.clone(),
            self.inner.topology.clone(),
            sub,
            binds,
        )
        .await?;
        Ok(Box::new(c))
    }
}

#[async_trait]
impl Requester for AmqpBackend {
    async fn request(&self, msg: Message, timeout: Duration) -> Result<Message> {
        self.inner.requester.request(msg, timeout).await
    }
}

impl Backend for AmqpBackend {
    fn capabilities(&self) -> Capabilities {
        self.inner.caps.clone()
    }

    fn name(&self) -> &str {
        "amqp"
    }
}
