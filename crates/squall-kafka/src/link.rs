//! What a backend handle and its consumers share: the producer, the topic cache (creating
//! topics on first use), the attempt hand-off between members of one group, and the count of
//! live consumers.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use squall_core::{Error, ErrorKind, Message, PendingAck, PublishAck, Result};

use crate::codec;
use crate::config::{Acks, HEADER_RESERVE, KafkaConfig};
use crate::error::from_kafka;
use crate::topics;

/// Routes librdkafka's log lines and global errors to `tracing`.
#[derive(Clone, Default)]
pub(crate) struct Logged;

impl ClientContext for Logged {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_line(level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "squall_kafka", %error, reason, "librdkafka error");
    }
}

pub(crate) fn log_line(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    use RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "squall_kafka::librdkafka", fac, "{msg}")
        }
        L::Warning => tracing::warn!(target: "squall_kafka::librdkafka", fac, "{msg}"),
        L::Notice | L::Info => tracing::info!(target: "squall_kafka::librdkafka", fac, "{msg}"),
        L::Debug => tracing::debug!(target: "squall_kafka::librdkafka", fac, "{msg}"),
    }
}

/// The librdkafka settings every client of `c` shares.
pub(crate) fn base_config(c: &KafkaConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    // librdkafka formats only the lines the `tracing` subscriber would keep.
    let level = match tracing::level_filters::LevelFilter::current() {
        f if f >= tracing::level_filters::LevelFilter::DEBUG => RDKafkaLogLevel::Debug,
        f if f >= tracing::level_filters::LevelFilter::INFO => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Warning,
    };
    cc.set("bootstrap.servers", c.bootstrap())
        .set("client.id", &c.client_id)
        // librdkafka backs off reconnecting up to 10 s by default; its producer also checks
        // message timeouts only between attempts, so a publish could outlive its timeout by as
        // much. 2 s keeps both prompt.
        .set("reconnect.backoff.max.ms", "2000")
        .set_log_level(level);
    for (k, v) in &c.rdkafka {
        cc.set(k, v);
    }
    cc
}

fn producer_config(c: &KafkaConfig) -> ClientConfig {
    let mut cc = base_config(c);
    let idempotent = c.acks == Acks::All;
    cc.set(
        "enable.idempotence",
        if idempotent { "true" } else { "false" },
    )
    .set("acks", if idempotent { "all" } else { "1" })
    .set("linger.ms", c.linger.as_millis().to_string())
    .set("queue.buffering.max.messages", c.max_pending.to_string())
    .set("queue.buffering.max.kbytes", (256 * 1024).to_string())
    .set(
        "message.timeout.ms",
        c.delivery_timeout.as_millis().to_string(),
    )
    .set(
        "message.max.bytes",
        (c.max_payload + HEADER_RESERVE).to_string(),
    );
    for (k, v) in &c.rdkafka {
        cc.set(k, v);
    }
    cc
}

/// Topics known to exist, those this handle created, and the groups it joined.
pub(crate) struct Topics {
    admin: AdminClient<Logged>,
    known: Mutex<HashSet<String>>,
    created: Mutex<BTreeSet<String>>,
    groups: Mutex<BTreeSet<String>>,
}

impl Topics {
    pub(crate) fn forget(&self, topic: &str) {
        self.known.lock().expect("topics lock").remove(topic);
    }

    pub(crate) fn note_group(&self, group_id: &str) {
        self.groups
            .lock()
            .expect("topics lock")
            .insert(group_id.to_string());
    }

    pub(crate) fn groups(&self) -> Vec<String> {
        self.groups
            .lock()
            .expect("topics lock")
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn created(&self) -> Vec<String> {
        self.created
            .lock()
            .expect("topics lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// Attempt counts handed from a member that gave up partitions to the next one, within one
/// process (brokers that keep commit metadata carry them across processes too; see
/// [`crate::consumer`]). Keyed by group id, topic and partition; valid only if the next owner
/// starts at the position the last one committed.
#[derive(Default)]
pub(crate) struct Handoff {
    map: Mutex<HashMap<HandoffKey, Handed>>,
}

/// A committed position and the attempt counts of the offsets from there.
type Handed = (i64, BTreeMap<i64, u32>);

/// Group id, topic, partition.
pub(crate) type HandoffKey = (String, String, i32);

const HANDOFF_CAP: usize = 4096;

impl Handoff {
    pub(crate) fn put(
        &self,
        key: (String, String, i32),
        position: i64,
        attempts: BTreeMap<i64, u32>,
    ) {
        let mut m = self.map.lock().expect("handoff lock");
        if attempts.is_empty() {
            m.remove(&key);
            return;
        }
        if m.len() >= HANDOFF_CAP
            && !m.contains_key(&key)
            && let Some(k) = m.keys().next().cloned()
        {
            m.remove(&k);
        }
        m.insert(key, (position, attempts));
    }

    pub(crate) fn take(&self, key: &HandoffKey, position: i64) -> BTreeMap<i64, u32> {
        let mut m = self.map.lock().expect("handoff lock");
        match m.remove(key) {
            Some((p, a)) if p == position => a,
            _ => BTreeMap::new(),
        }
    }
}

/// Counts the consumer threads of a handle that have not finished closing.
#[derive(Default)]
pub(crate) struct Live {
    count: Mutex<usize>,
    cv: Condvar,
}

impl Live {
    pub(crate) fn enter(self: &Arc<Self>) -> LiveGuard {
        *self.count.lock().expect("live lock") += 1;
        LiveGuard(self.clone())
    }

    pub(crate) fn count(&self) -> usize {
        *self.count.lock().expect("live lock")
    }

    /// Blocks until no consumer thread is left or `timeout` passed; returns how many are left.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut n = self.count.lock().expect("live lock");
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            n = self.cv.wait_timeout(n, left).expect("live lock").0;
        }
        *n
    }
}

/// Held by a consumer thread while it runs.
pub(crate) struct LiveGuard(Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut n = self.0.count.lock().expect("live lock");
        *n = n.saturating_sub(1);
        self.0.cv.notify_all();
    }
}

/// The producer side shared by a backend handle and its consumers (which publish dead letters).
#[derive(Clone)]
pub(crate) struct Link {
    pub config: Arc<KafkaConfig>,
    pub producer: FutureProducer<Logged>,
    pub topics: Arc<Topics>,
    pub handoff: Arc<Handoff>,
    pub live: Arc<Live>,
}

impl Link {
    pub(crate) fn new(config: KafkaConfig) -> Result<Link> {
        let producer: FutureProducer<Logged> = producer_config(&config)
            .create_with_context(Logged)
            .map_err(|e| from_kafka("creating the Kafka producer", e))?;
        let admin: AdminClient<Logged> = base_config(&config)
            .create_with_context(Logged)
            .map_err(|e| from_kafka("creating the Kafka admin client", e))?;
        Ok(Link {
            config: Arc::new(config),
            producer,
            topics: Arc::new(Topics {
                admin,
                known: Mutex::new(HashSet::new()),
                created: Mutex::new(BTreeSet::new()),
                groups: Mutex::new(BTreeSet::new()),
            }),
            handoff: Arc::default(),
            live: Arc::default(),
        })
    }

    /// Makes sure `topic` exists: creates it with the configured partitions and replication
    /// (an existing one is used as it is), or, with `create_topics=false`, checks that it exists.
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<()> {
        if self
            .topics
            .known
            .lock()
            .expect("topics lock")
            .contains(topic)
        {
            return Ok(());
        }
        if !topics::valid_topic(topic) {
            return Err(Error::new(
                ErrorKind::InvalidSubject,
                format!("`{topic}` is not a valid Kafka topic name"),
            ));
        }
        let c = &self.config;
        if !c.create_topics {
            if !self.topic_exists(topic).await? {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("topic `{topic}` does not exist and create_topics is off"),
                ));
            }
        } else {
            let replication = if c.replication < 0 {
                TopicReplication::Fixed(-1)
            } else {
                TopicReplication::Fixed(c.replication)
            };
            let new = NewTopic::new(topic, c.partitions, replication);
            let opts = AdminOptions::new()
                .request_timeout(Some(c.request_timeout))
                .operation_timeout(Some(c.request_timeout));
            let res = self
                .topics
                .admin
                .create_topics([&new], &opts)
                .await
                .map_err(|e| from_kafka(&format!("creating topic `{topic}`"), e))?;
            for r in res {
                match r {
                    Ok(_) => {
                        self.topics
                            .created
                            .lock()
                            .expect("topics lock")
                            .insert(topic.to_string());
                    }
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => {
                        return Err(from_kafka(
                            &format!("creating topic `{topic}`"),
                            KafkaError::AdminOp(code),
                        ));
                    }
                }
            }
        }
        self.topics
            .known
            .lock()
            .expect("topics lock")
            .insert(topic.to_string());
        Ok(())
    }

    /// Whether the broker lists `topic`. Asks for all topics: asking for one that does not
    /// exist makes some brokers (tansu 0.6) answer with a nameless topic librdkafka crashes on.
    pub(crate) async fn topic_exists(&self, topic: &str) -> Result<bool> {
        let names = self.list_topics().await?;
        Ok(names.iter().any(|t| t.0 == topic))
    }

    /// Every topic the broker lists, with its partition count.
    pub(crate) async fn list_topics(&self) -> Result<Vec<(String, usize)>> {
        let producer = self.producer.clone();
        let timeout = self.config.request_timeout;
        tokio::task::spawn_blocking(move || {
            let md = producer
                .client()
                .fetch_metadata(None, timeout)
                .map_err(|e| from_kafka("listing topics", e))?;
            Ok(md
                .topics()
                .iter()
                .map(|t| (t.name().to_string(), t.partitions().len()))
                .collect())
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("metadata task failed: {e}")))?
    }

    /// Publishes without checking whether the handle is closed (dead letters of consumers that
    /// outlive a closed handle still go out).
    pub(crate) async fn publish(&self, msg: Message) -> Result<PendingAck> {
        let c = &self.config;
        if msg.delay().is_some() {
            return Err(Error::unsupported("kafka", "delayed delivery"));
        }
        if msg.ttl().is_some() {
            return Err(Error::unsupported("kafka", "a per-message time to live"));
        }
        if msg.payload().len() > c.max_payload {
            return Err(Error::new(
                ErrorKind::InvalidMessage,
                format!(
                    "payload of {} bytes is over max_payload ({})",
                    msg.payload().len(),
                    c.max_payload
                ),
            ));
        }
        let enc = codec::encode(&c.topic_prefix, &msg)?;
        self.ensure_topic(&enc.topic).await?;
        let deadline = tokio::time::Instant::now() + c.send_timeout;
        let mut wait = Duration::from_millis(1);
        let mut record = FutureRecord::to(&enc.topic)
            .payload(&msg.payload()[..])
            .headers(enc.headers)
            .timestamp(enc.timestamp_ms);
        if let Some(k) = &enc.key {
            record = record.key(k.as_str());
        }
        let delivery = loop {
            match self.producer.send_result(record) {
                Ok(f) => break f,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::new(
                            ErrorKind::Full,
                            format!(
                                "the producer queue stayed full ({} messages) for send_timeout {:?}",
                                c.max_pending, c.send_timeout
                            ),
                        ));
                    }
                    record = r;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(50));
                }
                Err((e, _)) => {
                    return Err(from_kafka(
                        &format!("publishing to topic `{}`", enc.topic),
                        e,
                    ));
                }
            }
        };
        let topic = enc.topic.clone();
        let durability = c.ack_durability();
        let cache = self.topics.clone();
        Ok(PendingAck::future(async move {
            match delivery.await {
                Ok(Ok(d)) => Ok(PublishAck {
                    stream: Some(topic),
                    sequence: u64::try_from(d.offset).map(|o| o + 1).unwrap_or(0),
                    durability,
                    duplicate: false,
                }),
                Ok(Err((e, _))) => {
                    let err = from_kafka(&format!("publishing to topic `{topic}`"), e);
                    if err.kind() == ErrorKind::NotFound {
                        cache.forget(&topic);
                    }
                    Err(err)
                }
                Err(_) => Err(Error::new(
                    ErrorKind::Unavailable,
                    "the producer was dropped before confirming; the outcome is unknown",
                )),
            }
        }))
    }

    /// Waits until every queued message is confirmed or failed.
    pub(crate) async fn flush(&self) -> Result<()> {
        let producer = self.producer.clone();
        let timeout = self.config.delivery_timeout + Duration::from_secs(5);
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("flush task failed: {e}")))?
            .map_err(|e| from_kafka("flushing the producer", e))
    }

    /// Deletes consumer groups (their committed offsets); unknown groups are not an error.
    pub(crate) async fn delete_groups(&self, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let opts = AdminOptions::new().request_timeout(Some(self.config.request_timeout));
        let res = self
            .topics
            .admin
            .delete_groups(&refs, &opts)
            .await
            .map_err(|e| from_kafka("deleting groups", e))?;
        for r in res {
            match r {
                Ok(g) | Err((g, RDKafkaErrorCode::GroupIdNotFound)) => {
                    self.topics.groups.lock().expect("topics lock").remove(&g);
                }
                Err((g, code)) => {
                    return Err(from_kafka(
                        &format!("deleting group `{g}`"),
                        KafkaError::AdminOp(code),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Deletes `names` (see [`crate::KafkaBackend::delete_topics`]).
    pub(crate) async fn delete_topics(&self, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let opts = AdminOptions::new()
            .request_timeout(Some(self.config.request_timeout))
            .operation_timeout(Some(self.config.request_timeout));
        let res = self
            .topics
            .admin
            .delete_topics(&refs, &opts)
            .await
            .map_err(|e| from_kafka("deleting topics", e))?;
        let mut first_err = None;
        for r in res {
            match r {
                Ok(t) | Err((t, RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                    self.topics.forget(&t);
                    self.topics.created.lock().expect("topics lock").remove(&t);
                }
                Err((t, code)) => {
                    first_err.get_or_insert_with(|| {
                        from_kafka(&format!("deleting topic `{t}`"), KafkaError::AdminOp(code))
                    });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
