//! [`SqsBackend`]: the handle implementing the squall-core traits, and its [`Capabilities`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use squall_core::{
    Backend, Capabilities, Consumer, Durability, Message, PendingAck, PublishAck, Publisher,
    Requester, Result, Subject, Subscriber, Subscription, Support,
};
use tokio_util::sync::CancellationToken;

use crate::config::SqsConfig;
use crate::consumer::{SqsConsumer, check};
use crate::naming;
use crate::publisher::Publisher as Pub;
use crate::queues::Queues;
use crate::request::Requester as Req;

/// What the adapter can do with `config`: see the crate docs for how each feature is provided.
pub fn capabilities(config: &SqsConfig) -> Capabilities {
    use Support::{Emulated, Missing, Native};
    let mut c = Capabilities::all_native(config.max_payload(), config.durability);
    c.persistence = if config.durability >= Durability::Written {
        Native
    } else {
        Missing
    };
    c.groups = Native;
    c.durable_groups = Native;
    c.redelivery = Native;
    c.nack_delay = Native;
    c.lease_extend = Native;
    c.dead_letter = Emulated;
    c.delayed_delivery = if config.fifo { Missing } else { Native };
    c.ttl = Emulated;
    c.dedup = if config.fifo { Native } else { Missing };
    c.key_ordering = if config.fifo { Native } else { Missing };
    c.ordered = Missing;
    c.replay_by_sequence = Missing;
    c.replay_by_time = Missing;
    c.request_reply = Emulated;
    c.wildcards = Missing;
    c.headers = Native;
    c
}

/// A connection to SQS implementing [`Publisher`], [`Subscriber`], [`Requester`] and
/// [`Backend`]. Cheap to clone: clones share the SDK client and the request inbox. Consumers
/// live on when the handle is dropped; [`Publisher::close`] ends them.
#[derive(Clone)]
pub struct SqsBackend {
    inner: Arc<Inner>,
}

struct Inner {
    queues: Arc<Queues>,
    publisher: Arc<Pub>,
    requester: Req,
    caps: Capabilities,
    /// Ends the consumers and the inbox opened through this handle.
    closed: CancellationToken,
}

impl std::fmt::Debug for SqsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsBackend")
            .field("config", &self.inner.queues.config)
            .finish()
    }
}

impl SqsBackend {
    /// Connects with `config`: builds the SDK client and checks, within `request_timeout`, that
    /// SQS answers. Fails with `Unavailable` naming the endpoint when it cannot be reached and
    /// `InvalidConfig` when it refuses the credentials. HTTP has no connection to lose:
    /// afterwards every request connects as needed, and consumers retry with backoff.
    pub async fn connect(config: SqsConfig) -> Result<Self> {
        config.validate()?;
        let caps = capabilities(&config);
        let queues = Arc::new(Queues::new(Arc::new(config)).await);
        queues.check().await?;
        let closed = CancellationToken::new();
        Ok(SqsBackend {
            inner: Arc::new(Inner {
                publisher: Arc::new(Pub::new(queues.clone())),
                requester: Req::new(queues.clone(), &closed),
                queues,
                caps,
                closed,
            }),
        })
    }

    /// Parses `url` (see [`SqsConfig::from_url`]) and connects.
    pub async fn connect_url(url: &str) -> Result<Self> {
        SqsBackend::connect(SqsConfig::from_url(url)?).await
    }

    /// The configuration.
    pub fn config(&self) -> &SqsConfig {
        &self.inner.queues.config
    }

    /// The SDK client, for what the traits do not cover (queue attributes, purges...).
    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.inner.queues.client
    }

    /// The name of the queue the members of `group` share for `subject`.
    pub fn group_queue_name(&self, subject: &Subject, group: &str) -> String {
        let c = self.config();
        naming::group_queue(&c.queue_prefix, subject, group, c.fifo)
    }

    /// Creates the queue of `group` for `subject` (with its native dead-letter queue when
    /// `max_receive` is set) if it does not exist, and returns its URL. A group's queue holds
    /// what is published from its creation on: create it before publishing to keep messages
    /// published before the first member subscribes.
    pub async fn ensure_group_queue(&self, subject: &Subject, group: &str) -> Result<String> {
        let name = self.group_queue_name(subject, group);
        let url = self.inner.queues.ensure(&name, true).await?;
        self.inner.queues.invalidate(subject);
        Ok(url)
    }

    /// The URL of the existing queue `name`; `NotFound` when there is none.
    pub async fn queue_url(&self, name: &str) -> Result<String> {
        self.inner.queues.url(name).await
    }

    /// Deletes every queue whose name starts with this handle's `queue_prefix` (group queues,
    /// their dead-letter queues, the parked queue, subscriptions' queues); returns how many.
    /// For tearing down a deployment or a test: the messages in them are lost.
    pub async fn delete_queues(&self) -> Result<usize> {
        let q = &self.inner.queues;
        let found = q.list(&q.config.queue_prefix).await?;
        for (_, url) in &found {
            q.delete(url).await?;
        }
        Ok(found.len())
    }
}

#[async_trait]
impl Publisher for SqsBackend {
    async fn send(&self, msg: Message) -> Result<PendingAck> {
        self.inner.publisher.send(msg).await
    }

    async fn publish_batch(&self, msgs: Vec<Message>) -> Result<Vec<Result<PublishAck>>> {
        self.inner.publisher.publish_batch(msgs).await
    }

    async fn flush(&self) -> Result<()> {
        self.inner.publisher.flush().await
    }

    /// Flushes (for at most `close_timeout`), then ends the consumers opened through this
    /// handle (releasing what they held, deleting the queues of subscriptions without a group)
    /// and its request inbox; every later send fails with `Closed`.
    async fn close(&self) -> Result<()> {
        let flushed = self.inner.publisher.close().await;
        self.inner.closed.cancel();
        flushed
    }
}

#[async_trait]
impl Subscriber for SqsBackend {
    async fn subscribe(&self, sub: Subscription) -> Result<Box<dyn Consumer>> {
        let subject = check(&sub, &self.inner.queues)?;
        if self.inner.closed.is_cancelled() {
            return Err(squall_core::Error::closed("the SQS backend handle"));
        }
        let c =
            SqsConsumer::start(self.inner.queues.clone(), sub, subject, &self.inner.closed).await?;
        Ok(Box::new(c))
    }
}

#[async_trait]
impl Requester for SqsBackend {
    async fn request(&self, msg: Message, timeout: Duration) -> Result<Message> {
        self.inner.requester.request(msg, timeout).await
    }
}

impl Backend for SqsBackend {
    fn capabilities(&self) -> Capabilities {
        self.inner.caps.clone()
    }

    fn name(&self) -> &str {
        "sqs"
    }
}
