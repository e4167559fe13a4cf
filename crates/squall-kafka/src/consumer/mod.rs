//! [`KafkaConsumer`]: a subscription over one librdkafka consumer, with squall's leases on top.
//!
//! - **Groups** (`Subscription::group`) are Kafka consumer groups (`group.id`: `group_prefix`
//!   then the name), subscribed by topic name, or by `^regex` for wildcards (new topics join on
//!   librdkafka's metadata refresh, `metadata_refresh`). Subscribing returns once the group has
//!   assigned this member its partitions (possibly none), within `join_timeout`; a wildcard
//!   that matches no topic yet returns at once and joins when a matching topic appears.
//! - **Without a group** each subscriber reads every partition itself (manual assignment) under
//!   a throwaway `group.id` (`squall-fanout-<uuid>`) that never joins a group and never
//!   commits; wildcard subscriptions look for new topics every `metadata_refresh`.
//! - **Start positions** apply where a partition has no committed offset: `First` from the
//!   beginning, `New` from the end as it was when subscribing (pinned for the group by committing
//!   it at once), `Sequence(s)` from offset `s - 1` (records below are skipped), `Time(t)` from
//!   Kafka's offset for that time, records stamped before `t` skipped. A group that has
//!   committed offsets resumes there whatever the start position says.
//! - **Commits** (groups only) happen after processing: an ack marks the record done, and a
//!   partition's committed offset moves to its first record not yet settled (see
//!   `state`), asynchronously and coalesced; closing or losing a partition
//!   commits synchronously.
//! - **Leases** are the adapter's: each delivery has a deadline (`ack_wait`), `extend` moves it,
//!   an expired or nacked record is delivered again from memory by this consumer (after the
//!   nack's delay, or the policy's backoff), with the next attempt number. The records stay in
//!   Kafka, uncommitted, until settled, so a member that closes or crashes leaves them to the
//!   partition's next owner.
//! - **Closing** a group member leaves the group after committing what was acked. Members of
//!   one group in this process leave one at a time, each once every member here has been
//!   through the rebalance the previous leave caused (bounded by `join_timeout` from the last
//!   progress; see `turn`): tansu 0.6 loses a group whose leader leaves mid-rebalance. So
//!   closing many members at once takes a rebalance each.
//! - **Attempt numbers** survive a change of owner through the commit metadata
//!   (`squall1:<offset>=<attempts>,...`), and within one process through the backend handle;
//!   a broker that drops commit metadata (tansu 0.6) keeps them only within the process; after
//!   a crash the next owner counts from where the last commit left them.

mod acker;
mod client;
pub(crate) mod state;
mod turn;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::Consumer as _;
use rdkafka::{Offset, TopicPartitionList};
use squall_core::{
    Acker, Consumer, Delivery, DeliveryInfo, Error, ErrorKind, LeaseId, Pattern, Result,
    StartPosition, Subscription,
};
use tokio::sync::Notify;

use crate::link::Link;
use crate::topics;
use client::{Client, Ctx};
use state::{Rules, State, Tp};

/// What a consumer's application side, its polling thread and its timer task share.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub rules: Rules,
    /// Wakes `next()` (and subscribing) when something changed.
    pub notify: Notify,
    /// Wakes the timer task (commits to make, timers that moved).
    pub wake: Notify,
    /// The librdkafka consumer, for commits, pause and resume from the application side;
    /// taken out by the polling thread when it closes the consumer.
    pub client: Mutex<Option<Arc<Client>>>,
    pub link: Link,
    /// The Kafka group id; `None` without a group.
    pub group_id: Option<String>,
    pub pattern: Pattern,
    pub start: StartPosition,
    /// High watermarks when subscribing (for `StartPosition::New`).
    pub snapshot: HashMap<Tp, i64>,
    /// Wildcard without a group: the polling thread looks for new topics.
    pub discover: bool,
    pub stop: AtomicBool,
    /// Connection failures seen, to report a lasting outage once.
    pub outage: Mutex<client::Outage>,
    /// In a group: this member's place in the turn to leave it, shared by the group's
    /// members in this process.
    pub member: Option<turn::Member>,
    nonce: AtomicU64,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits `positions` (groups only), with attempt counts as metadata, without waiting.
    fn commit(&self, positions: Vec<(Tp, i64, BTreeMap<i64, u32>)>) {
        if self.group_id.is_none() || positions.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (tp, pos, attempts) in &positions {
            let mut e = tpl.add_partition(&tp.0, tp.1);
            if e.set_offset(Offset::Offset(*pos)).is_ok() {
                e.set_metadata(encode_attempts(attempts));
            }
        }
        if let Some(c) = self.client.lock().expect("client lock").as_ref()
            && let Err(e) = c.commit(&tpl, rdkafka::consumer::CommitMode::Async)
        {
            tracing::debug!(target: "squall_kafka", error = %e, "offset commit not sent");
        }
    }

    /// Resumes fetching `tps` (called with the state lock held, like the pause).
    fn resume(&self, tps: &[Tp]) {
        if tps.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for tp in tps {
            tpl.add_partition(&tp.0, tp.1);
        }
        if let Some(c) = self.client.lock().expect("client lock").as_ref()
            && let Err(e) = c.resume(&tpl)
        {
            tracing::warn!(target: "squall_kafka", error = %e, "resuming partitions failed");
        }
    }
}

/// Longest commit metadata written (Kafka's default limit is 4096 bytes).
const MAX_METADATA: usize = 3000;

/// `squall1:<offset>=<attempts>,...`, as many as fit.
pub(crate) fn encode_attempts(attempts: &BTreeMap<i64, u32>) -> String {
    let mut s = String::from("squall1:");
    for (i, (o, a)) in attempts.iter().enumerate() {
        let item = format!("{}{o}={a}", if i > 0 { "," } else { "" });
        if s.len() + item.len() > MAX_METADATA {
            break;
        }
        s.push_str(&item);
    }
    s
}

/// The attempts in commit metadata written by [`encode_attempts`]; empty for anything else.
pub(crate) fn decode_attempts(meta: &str) -> BTreeMap<i64, u32> {
    let Some(list) = meta.strip_prefix("squall1:") else {
        return BTreeMap::new();
    };
    list.split(',')
        .filter_map(|item| {
            let (o, a) = item.split_once('=')?;
            Some((o.parse().ok()?, a.parse().ok()?))
        })
        .collect()
}

/// A live subscription; see the [module docs](self).
pub struct KafkaConsumer {
    shared: Arc<Shared>,
    acker: Arc<dyn Acker>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("pattern", &self.shared.pattern)
            .field("group_id", &self.shared.group_id)
            .finish()
    }
}

/// Opens a consumer for `sub` (see [`crate::KafkaBackend`]'s `subscribe`).
pub(crate) async fn subscribe(link: Link, sub: Subscription) -> Result<KafkaConsumer> {
    sub.validate()?;
    let c = link.config.clone();
    let prefix = c.topic_prefix.clone();
    // The topic list (literal) or regex (wildcard) to consume.
    let literal = match &sub.stream {
        Some(name) => {
            if !topics::valid_topic(name) {
                return Err(Error::config(
                    "subscription.stream",
                    format!("`{name}` is not a valid Kafka topic name"),
                ));
            }
            Some(name.clone())
        }
        None if sub.pattern.is_literal() => {
            let subject = squall_core::Subject::new(sub.pattern.as_str())?;
            Some(topics::topic_for(&prefix, &subject))
        }
        None => None,
    };
    if let Some(t) = &literal {
        link.ensure_topic(t).await?;
    }
    let listed = link.list_topics().await?;
    let matching: Vec<(String, usize)> = listed
        .into_iter()
        .filter(|(t, _)| match &literal {
            Some(l) => t == l,
            None => topics::topic_matches(&prefix, &sub.pattern, t),
        })
        .collect();
    let start = sub.start_position();
    let group = sub.group.clone();
    let group_id = group.as_deref().map(|g| c.group_id(g));
    if let Some(g) = &group_id {
        link.topics.note_group(g);
    }
    let kafka_group = group_id
        .clone()
        .unwrap_or_else(|| format!("squall-fanout-{}", uuid::Uuid::now_v7().simple()));
    let buffer = sub.policy.max_in_flight.saturating_add(c.prefetch);
    let client: Client = client::consumer_config(&c, &kafka_group)
        .create_with_context(Ctx::default())
        .map_err(|e| client::setup_error("creating the Kafka consumer", e))?;
    let client = Arc::new(client);
    // Watermarks for `New`, then (without a group) the initial assignment: blocking calls.
    let prepared = {
        let (client, matching) = (client.clone(), matching.clone());
        let fanout = group_id.is_none();
        let timeout = c.request_timeout;
        tokio::task::spawn_blocking(move || -> Result<_> {
            let mut snapshot = HashMap::new();
            if start == StartPosition::New {
                for (t, n) in &matching {
                    for p in 0..*n as i32 {
                        let (_, high) = client
                            .fetch_watermarks(t, p, timeout)
                            .map_err(|e| client::setup_error("reading the end of a topic", e))?;
                        snapshot.insert((Arc::<str>::from(t.as_str()), p), high);
                    }
                }
            }
            let mut assigned = HashSet::new();
            let mut parts = Vec::new();
            if fanout {
                let mut tpl = TopicPartitionList::new();
                let starter = client::Start {
                    position: start,
                    snapshot: &snapshot,
                    timeout,
                };
                for (t, n) in &matching {
                    for p in 0..*n as i32 {
                        let tp: Tp = (Arc::from(t.as_str()), p);
                        let (offset, part, _) = client::resolve_start(&starter, &client, &tp);
                        tpl.add_partition_offset(t, p, offset)
                            .map_err(|e| client::setup_error("assigning partitions", e))?;
                        assigned.insert((t.clone(), p));
                        parts.push((tp, part));
                    }
                }
                client
                    .assign(&tpl)
                    .map_err(|e| client::setup_error("assigning partitions", e))?;
            }
            Ok((snapshot, assigned, parts))
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, format!("subscribe task failed: {e}")))?
    };
    let (snapshot, assigned, parts) = match prepared {
        Ok(p) => p,
        Err(e) => {
            close_client(client).await;
            return Err(e);
        }
    };
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        rules: Rules {
            policy: sub.policy.clone(),
            group: group.as_deref().map(Arc::from),
            buffer,
            commits: group_id.is_some(),
        },
        notify: Notify::new(),
        wake: Notify::new(),
        client: Mutex::new(None),
        link: link.clone(),
        group_id: group_id.clone(),
        pattern: sub.pattern.clone(),
        start,
        snapshot,
        discover: group_id.is_none() && literal.is_none(),
        stop: AtomicBool::new(false),
        outage: Mutex::new(client::Outage::default()),
        member: group_id
            .as_deref()
            .map(|g| turn::Member::new(turn::turn_of(&c.bootstrap(), g))),
        nonce: AtomicU64::new(0),
    });
    let _ = client.context().shared.set(Arc::downgrade(&shared));
    // A wildcard group matching no topic yet joins when one appears (librdkafka sends no
    // JoinGroup without topics): do not wait for that.
    let wait_join = group_id.is_some() && !matching.is_empty();
    start_consumer(shared, client, assigned, parts, literal, sub, wait_join).await
}

/// Closes a consumer that never started polling, off the async threads.
async fn close_client(client: Arc<Client>) {
    let _ = tokio::task::spawn_blocking(move || drop(client)).await;
}

async fn start_consumer(
    shared: Arc<Shared>,
    client: Arc<Client>,
    assigned: HashSet<(String, i32)>,
    parts: Vec<(Tp, state::Part)>,
    literal: Option<String>,
    sub: Subscription,
    wait_join: bool,
) -> Result<KafkaConsumer> {
    {
        let mut st = shared.lock();
        for (tp, part) in parts {
            st.assign(tp, part);
        }
    }
    *shared.client.lock().expect("client lock") = Some(client.clone());
    if shared.group_id.is_some() {
        let topic_or_regex = match &literal {
            Some(t) => t.clone(),
            None => topics::topic_regex(&shared.link.config.topic_prefix, &sub.pattern),
        };
        if let Err(e) = client.subscribe(&[topic_or_regex.as_str()]) {
            shared.client.lock().expect("client lock").take();
            close_client(client).await;
            return Err(client::setup_error("subscribing", e));
        }
    }
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let live = shared.link.live.enter();
    {
        let (shared, client) = (shared.clone(), client.clone());
        std::thread::Builder::new()
            .name("squall-kafka-consumer".into())
            .spawn(move || client::run(client, shared, assigned, done_tx, live))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("starting the consumer thread: {e}"),
                )
            })?;
    }
    drop(client);
    tokio::spawn(acker::supervise(shared.clone()));
    let mut consumer = KafkaConsumer {
        acker: Arc::new(acker::KafkaAcker::new(shared.clone())),
        shared,
        done: Some(done_rx),
    };
    if wait_join {
        let join = consumer.shared.link.config.join_timeout;
        if let Err(e) = consumer.wait_assigned(join).await {
            let _ = Consumer::close(&mut consumer).await;
            return Err(e);
        }
    }
    Ok(consumer)
}

impl KafkaConsumer {
    async fn wait_assigned(&self, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.lock().assignments > 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "group {:?} assigned no partitions within join_timeout {within:?}",
                        self.shared.group_id
                    ),
                ));
            }
        }
    }

    /// The Kafka group id, if the subscription has a group.
    pub fn group_id(&self) -> Option<&str> {
        self.shared.group_id.as_deref()
    }

    /// Partitions currently assigned to this consumer, as `(topic, partition)`.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        let mut v: Vec<(String, i32)> = self
            .shared
            .lock()
            .parts
            .keys()
            .map(|(t, p)| (t.to_string(), *p))
            .collect();
        v.sort();
        v
    }

    fn stop(&self) {
        {
            let mut st = self.shared.lock();
            st.closed = true;
            st.drop_leases();
        }
        self.shared.stop.store(true, Ordering::Release);
        self.shared.notify.notify_waiters();
        self.shared.wake.notify_one();
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.shared.lock();
                if st.closed {
                    return None;
                }
                if let Some(e) = st.errors.pop_front() {
                    return Some(Err(e));
                }
                let nonce = self.shared.nonce.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(t) = st.take(&self.shared.rules, nonce) {
                    let sequence = u64::try_from(t.offset).map(|o| o + 1).unwrap_or(0);
                    let info = DeliveryInfo {
                        attempt: t.attempt,
                        sequence,
                        published_at: t.published_at,
                        deadline: t.deadline,
                        group: self.shared.rules.group.clone(),
                        lease: LeaseId {
                            sequence,
                            nonce: t.nonce,
                        },
                    };
                    drop(st);
                    if t.first_timer {
                        self.shared.wake.notify_one();
                    }
                    return Some(Ok(Delivery::new(t.message, info, self.acker.clone())));
                }
            }
            notified.await;
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.stop();
        let Some(done) = self.done.take() else {
            return Ok(());
        };
        let c = &self.shared.link.config;
        let limit = c.join_timeout + c.session_timeout + c.request_timeout;
        match tokio::time::timeout(limit, done).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("the Kafka consumer did not close within {limit:?}"),
            )),
        }
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        if self.done.is_some() {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_metadata_round_trips_and_stays_small() {
        let a = BTreeMap::from([(5, 2), (7, 1)]);
        assert_eq!(encode_attempts(&a), "squall1:5=2,7=1");
        assert_eq!(decode_attempts(&encode_attempts(&a)), a);
        assert!(decode_attempts("").is_empty());
        assert!(decode_attempts("other app's metadata").is_empty());
        let many: BTreeMap<i64, u32> = (0..10_000).map(|o| (1_000_000 + o, 3)).collect();
        assert!(encode_attempts(&many).len() <= MAX_METADATA);
    }
}
