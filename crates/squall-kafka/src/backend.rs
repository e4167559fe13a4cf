//! [`KafkaBackend`]: the handle implementing the squall traits, and [`capabilities`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{
    Backend, Capabilities, Consumer, Error, Message, PendingAck, Publisher, Requester, Result,
    Subscriber, Subscription, Support,
};

use crate::config::KafkaConfig;
use crate::consumer::{self, KafkaConsumer};
use crate::link::Link;
use crate::request::{self, Inbox};

/// What the adapter can do with `config`; see the [crate docs](crate) for how each is done.
pub fn capabilities(config: &KafkaConfig) -> Capabilities {
    use Support::{Emulated as E, Missing as M, Native as N};
    let mut c = Capabilities::all_native(config.max_payload, config.ack_durability());
    c.persistence = match config.storage {
        crate::config::Storage::Log => N,
        crate::config::Storage::Memory => M,
    };
    c.groups = N;
    c.durable_groups = N;
    c.redelivery = E;
    c.nack_delay = E;
    c.lease_extend = E;
    c.dead_letter = E;
    c.delayed_delivery = M;
    c.ttl = M;
    c.dedup = M;
    c.key_ordering = E;
    c.ordered = if config.partitions == 1 { N } else { M };
    c.replay_by_sequence = N;
    c.replay_by_time = N;
    c.request_reply = E;
    c.wildcards = E;
    c.headers = N;
    c
}

/// A connection to a Kafka cluster: one producer, plus a consumer per subscription. Cheap to
/// clone (clones share everything).
#[derive(Clone)]
pub struct KafkaBackend {
    inner: Arc<Inner>,
}

struct Inner {
    link: Link,
    closed: AtomicBool,
    id: String,
    inbox: tokio::sync::Mutex<Option<Arc<Inbox>>>,
}

impl std::fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBackend")
            .field("brokers", &self.inner.link.config.brokers)
            .field("id", &self.inner.id)
            .finish()
    }
}

/// Connects to the `kafka://` URL (see [`KafkaConfig`]).
pub async fn connect_url(url: &str) -> Result<KafkaBackend> {
    KafkaBackend::connect(KafkaConfig::from_url(url)?).await
}

impl KafkaBackend {
    /// Creates the clients and checks that a broker answers (listing topics within
    /// `request_timeout`; `Unavailable` if none does). Later outages are librdkafka's to ride
    /// out: it reconnects by itself.
    pub async fn connect(config: KafkaConfig) -> Result<KafkaBackend> {
        let link = Link::new(config)?;
        link.list_topics().await.map_err(|e| {
            Error::new(
                e.kind(),
                format!(
                    "no Kafka broker of {} answered: {e}",
                    link.config.bootstrap()
                ),
            )
        })?;
        Ok(KafkaBackend {
            inner: Arc::new(Inner {
                link,
                closed: AtomicBool::new(false),
                id: uuid::Uuid::now_v7().simple().to_string(),
                inbox: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.link.config
    }

    /// Opens a consumer (the typed form of [`Subscriber::subscribe`]).
    pub async fn consumer(&self, sub: Subscription) -> Result<KafkaConsumer> {
        consumer::subscribe(self.inner.link.clone(), sub).await
    }

    /// Topics this handle created (and has not deleted).
    pub fn created_topics(&self) -> Vec<String> {
        self.inner.link.topics.created()
    }

    /// Deletes topics. Topics that do not exist are not an error.
    ///
    /// Delete only topics no live client is reading: librdkafka 2.12 crashes (a NULL topic
    /// name in its metadata cache) when a topic it has partitions of assigned disappears from
    /// a tansu 0.6 broker. Close the consumers first ([`KafkaBackend::wait_consumers_closed`]).
    pub async fn delete_topics(&self, topics: &[String]) -> Result<()> {
        self.inner.link.delete_topics(topics).await
    }

    /// The Kafka group ids of the group subscriptions opened through this handle.
    pub fn used_groups(&self) -> Vec<String> {
        self.inner.link.topics.groups()
    }

    /// Deletes consumer groups and their committed offsets (groups with live members are
    /// refused by the broker). Groups that do not exist are not an error.
    pub async fn delete_groups(&self, group_ids: &[String]) -> Result<()> {
        self.inner.link.delete_groups(group_ids).await
    }

    /// Consumers opened through this handle (or its clones) that have not finished closing.
    pub fn open_consumers(&self) -> usize {
        self.inner.link.live.count()
    }

    /// Waits (blocking the thread) until every consumer opened through this handle finished
    /// closing, or `timeout` passed; returns how many are still open.
    pub fn wait_consumers_closed(&self, timeout: Duration) -> usize {
        self.inner.link.live.wait_idle(timeout)
    }

    pub(crate) fn link(&self) -> Link {
        self.inner.link.clone()
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::closed("the Kafka backend handle"));
        }
        Ok(())
    }

    async fn inbox(&self) -> Result<Arc<Inbox>> {
        let mut g = self.inner.inbox.lock().await;
        if let Some(i) = g.as_ref() {
            return Ok(i.clone());
        }
        self.check_open()?;
        let inbox = Arc::new(Inbox::start(self.link(), &self.inner.id).await?);
        *g = Some(inbox.clone());
        Ok(inbox)
    }
}

#[async_trait]
impl Publisher for KafkaBackend {
    async fn send(&self, msg: Message) -> Result<PendingAck> {
        self.check_open()?;
        self.inner.link.publish(msg).await
    }

    async fn flush(&self) -> Result<()> {
        self.inner.link.flush().await
    }

    /// Refuses new sends, flushes the producer, closes the reply inbox (deleting its topic).
    /// Consumers opened through the handle keep running until closed themselves.
    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        let flushed = self.inner.link.flush().await;
        let inbox = self.inner.inbox.lock().await.take();
        if let Some(inbox) = inbox {
            let topic = crate::topics::topic_for(&self.config().topic_prefix, &inbox.subject);
            inbox.finish().await?;
            self.inner.link.delete_topics(&[topic]).await?;
        }
        flushed
    }
}

#[async_trait]
impl Subscriber for KafkaBackend {
    async fn subscribe(&self, sub: Subscription) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.consumer(sub).await?))
    }
}

#[async_trait]
impl Requester for KafkaBackend {
    async fn request(&self, msg: Message, timeout: Duration) -> Result<Message> {
        self.check_open()?;
        let inbox = self.inbox().await?;
        request::request(self, &inbox, msg, timeout).await
    }
}

impl Backend for KafkaBackend {
    fn capabilities(&self) -> Capabilities {
        capabilities(self.config())
    }

    fn name(&self) -> &str {
        "kafka"
    }
}
