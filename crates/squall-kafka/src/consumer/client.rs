//! The librdkafka side of a consumer: its configuration, the thread that polls it, the
//! rebalance callback (where partitions start, the final commit when they go), and the topic
//! discovery of wildcard subscriptions without a group.

use std::collections::HashMap;
use std::collections::{BTreeMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use squall_core::{Error, ErrorKind, StartPosition};

use super::Shared;
use super::state::{Offer, Part, Tp};
use super::turn::Leave;
use crate::codec::{self, Record};
use crate::config::KafkaConfig;
use crate::error::from_kafka;
use crate::link::{LiveGuard, base_config, log_line};
use crate::topics;

/// The consumer's librdkafka context: rebalances and errors go to the shared state (set once
/// the state exists; before that the consumer has joined no group).
#[derive(Default)]
pub(crate) struct Ctx {
    pub shared: OnceLock<Weak<Shared>>,
}

impl Ctx {
    fn shared(&self) -> Option<Arc<Shared>> {
        self.shared.get()?.upgrade()
    }
}

pub(crate) type Client = BaseConsumer<Ctx>;

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_line(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match self.shared() {
            Some(shared) => on_error(&shared, error, reason),
            None => tracing::warn!(target: "squall_kafka", %error, reason, "librdkafka error"),
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, base: &Client, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(base.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let Some(shared) = self.shared() else {
            let _ = if cooperative {
                base.incremental_unassign(tpl)
            } else {
                base.unassign()
            };
            return;
        };
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                on_assign(&shared, base, tpl, cooperative)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                on_revoke(&shared, base, tpl, cooperative)
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::warn!(target: "squall_kafka", %code, "rebalance error; dropping the assignment");
                let all: Vec<Tp> = shared.lock().parts.keys().cloned().collect();
                revoke_all(&shared, base, &all);
                let _ = base.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Usually a rebalance overtook the commit; the records are redelivered to the
            // partition's next owner (at-least-once).
            tracing::debug!(target: "squall_kafka", error = %e, "offset commit failed");
        }
    }
}

/// The librdkafka settings of a consumer in group `group_id`.
pub(crate) fn consumer_config(c: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut cc = base_config(c);
    let session = c.session_timeout.as_millis();
    cc.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        .set("session.timeout.ms", session.to_string())
        .set("heartbeat.interval.ms", c.heartbeat.as_millis().to_string())
        .set("max.poll.interval.ms", session.max(300_000).to_string())
        .set(
            "topic.metadata.refresh.interval.ms",
            c.metadata_refresh.as_millis().to_string(),
        )
        .set("queued.max.messages.kbytes", "8192");
    for (k, v) in &c.rdkafka {
        cc.set(k, v);
    }
    cc
}

/// Polls until the consumer is stopped, then closes it (leaving the group; the revoke
/// callback commits what was acked).
pub(crate) fn run(
    client: Arc<Client>,
    shared: Arc<Shared>,
    mut assigned: HashSet<(String, i32)>,
    done: tokio::sync::oneshot::Sender<()>,
    live: LiveGuard,
) {
    let refresh = shared.link.config.metadata_refresh;
    let mut next_scan = Instant::now() + refresh;
    while !shared.stop.load(Ordering::Acquire) {
        match client.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                // Take what else is ready too, then wake the application once.
                let mut woke = Wakes::default();
                on_record(&client, &shared, &m, &mut woke);
                drop(m);
                for _ in 0..MAX_BURST {
                    match client.poll(Duration::ZERO) {
                        Some(Ok(m)) => on_record(&client, &shared, &m, &mut woke),
                        Some(Err(e)) => {
                            on_error(&shared, e, "consuming");
                            break;
                        }
                        None => break,
                    }
                }
                woke.send(&shared);
            }
            Some(Err(e)) => on_error(&shared, e, "consuming"),
            None => {}
        }
        if shared.discover && Instant::now() >= next_scan {
            discover(&client, &shared, &mut assigned);
            next_scan = Instant::now() + refresh;
        }
    }
    let window = shared.link.config.join_timeout;
    let leave = shared.member.as_ref().map(|m| {
        m.leave(window, || {
            let _ = client.poll(Duration::from_millis(50));
        })
    });
    if matches!(leave, Some(Leave::TimedOut)) {
        tracing::warn!(target: "squall_kafka", group = ?shared.group_id,
            "leaving the group without waiting for it to settle");
    }
    shared.client.lock().expect("client lock").take();
    drop(client);
    drop(leave);
    shared.notify.notify_waiters();
    let _ = done.send(());
    drop(live);
}

/// Records taken from librdkafka in one go before the application is woken.
const MAX_BURST: usize = 255;

/// Whom to wake after a burst of records.
#[derive(Default)]
struct Wakes {
    /// `next()` waiters: records (or errors) are ready.
    deliveries: bool,
    /// The timer task: a commit position moved.
    timers: bool,
}

impl Wakes {
    fn send(self, shared: &Shared) {
        if self.deliveries {
            shared.notify.notify_waiters();
        }
        if self.timers {
            shared.wake.notify_one();
        }
    }
}

fn on_record(client: &Client, shared: &Shared, m: &BorrowedMessage<'_>, woke: &mut Wakes) {
    let prefix = &shared.link.config.topic_prefix;
    let read = catch_unwind(AssertUnwindSafe(|| {
        let headers = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let rec = Record {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            payload: m.payload(),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        };
        (
            (Arc::<str>::from(rec.topic), rec.partition),
            rec.timestamp_ms,
            codec::decode(prefix, &rec),
        )
    }));
    let offset = m.offset();
    let Ok((tp, ts, decoded)) = read else {
        tracing::warn!(target: "squall_kafka", offset, "a record could not be read; skipped");
        return;
    };
    let record = match decoded {
        Ok(d) if shared.pattern.matches(d.message.subject()) => Some((d.message, d.published_at)),
        Ok(_) => None,
        Err(e) => {
            shared.lock().report(e);
            woke.deliveries = true;
            None
        }
    };
    let mut st = shared.lock();
    match st.offer(&shared.rules, &tp, offset, ts, record) {
        Offer::Accepted => woke.deliveries = true,
        Offer::Skipped => woke.timers = true,
        Offer::Ignored => {}
        Offer::Overflow(at) => {
            // Under the state lock, so a resume cannot slip in between.
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.0, tp.1);
            if let Err(e) = client.pause(&tpl) {
                tracing::warn!(target: "squall_kafka", error = %e, "pausing a partition failed");
            }
            if let Err(e) = client.seek(&tp.0, tp.1, Offset::Offset(at), Duration::ZERO) {
                tracing::warn!(target: "squall_kafka", error = %e, "seeking back failed");
            }
        }
    }
}

/// Tells a lasting outage from a single dropped connection (which librdkafka re-establishes
/// at once): connection failures that keep coming for a second are an outage, reported once;
/// five quiet seconds end it.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    first: Option<Instant>,
    last: Option<Instant>,
    reported: bool,
}

impl Outage {
    /// Records a connection failure at `now`; true when it is time to report the outage.
    fn failed(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_none_or(|l| now.duration_since(l) > Duration::from_secs(5))
        {
            self.first = Some(now);
            self.reported = false;
        }
        self.last = Some(now);
        let lasting = self
            .first
            .is_some_and(|f| now.duration_since(f) >= Duration::from_secs(1));
        if lasting && !self.reported {
            self.reported = true;
            return true;
        }
        false
    }
}

/// Reports what the application must know (a lasting outage, fatal or authorization errors)
/// through `next()`; logs the rest, which librdkafka retries by itself.
fn on_error(shared: &Shared, error: KafkaError, context: &str) {
    let fatal = matches!(error, KafkaError::MessageConsumptionFatal(_));
    let code = error.rdkafka_error_code();
    if code == Some(RDKafkaErrorCode::PartitionEOF) {
        return;
    }
    let report = fatal
        || matches!(
            code,
            Some(
                RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::Fatal
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::Authentication
            )
        );
    let transport = matches!(
        code,
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve)
    );
    if transport
        && shared
            .outage
            .lock()
            .expect("outage lock")
            .failed(Instant::now())
    {
        let e = Error::new(
            ErrorKind::Unavailable,
            format!("no Kafka broker reachable (librdkafka keeps reconnecting): {error}"),
        );
        shared.lock().report(e);
        shared.notify.notify_waiters();
        return;
    }
    if !report {
        tracing::warn!(target: "squall_kafka", %error, context, "consumer error (librdkafka retries)");
        return;
    }
    let e = from_kafka(&format!("Kafka consumer: {context}"), error);
    let mut st = shared.lock();
    if st.errors.back().is_none_or(|last| last.kind() != e.kind()) {
        st.report(e);
    }
    drop(st);
    shared.notify.notify_waiters();
}

/// What resolving a start position needs.
pub(crate) struct Start<'a> {
    pub position: StartPosition,
    /// High watermarks when subscribing (for `New`).
    pub snapshot: &'a HashMap<Tp, i64>,
    pub timeout: Duration,
}

/// Where partition `tp` starts when it has no committed offset, per the subscription's start
/// position; and whether that start must be committed at once to pin the group's position.
pub(crate) fn resolve_start(s: &Start<'_>, client: &Client, tp: &Tp) -> (Offset, Part, bool) {
    let watermarks = || client.fetch_watermarks(&tp.0, tp.1, s.timeout);
    match s.position {
        StartPosition::First => (Offset::Beginning, Part::new(0, BTreeMap::new()), false),
        StartPosition::New => match s.snapshot.get(tp) {
            Some(&high) => (Offset::Offset(high), Part::new(high, BTreeMap::new()), true),
            // Not there when subscribing: everything in it is new.
            None => (Offset::Beginning, Part::new(0, BTreeMap::new()), false),
        },
        StartPosition::Sequence(seq) => {
            let want = i64::try_from(seq.saturating_sub(1)).unwrap_or(i64::MAX);
            let start = match watermarks() {
                Ok((low, high)) => want.clamp(low, high.max(low)),
                Err(_) => want,
            };
            let mut part = Part::new(start, BTreeMap::new());
            part.min_offset = want;
            (Offset::Offset(start), part, false)
        }
        StartPosition::Time(t) => {
            let ms = i64::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX);
            let mut q = TopicPartitionList::new();
            let found = q
                .add_partition_offset(&tp.0, tp.1, Offset::Offset(ms))
                .ok()
                .and_then(|_| client.offsets_for_times(q, s.timeout).ok())
                .and_then(|r| r.elements().first().map(|e| e.offset()));
            let start = match found {
                Some(Offset::Offset(o)) if o >= 0 => Some(o),
                Some(Offset::End) => watermarks().ok().map(|w| w.1),
                _ => None,
            };
            let mut part = Part::new(start.unwrap_or(0), BTreeMap::new());
            part.min_ts_ms = Some(ms);
            let offset = start.map_or(Offset::Beginning, Offset::Offset);
            (offset, part, false)
        }
    }
}

impl Shared {
    fn starter(&self) -> Start<'_> {
        Start {
            position: self.start,
            snapshot: &self.snapshot,
            timeout: self.link.config.request_timeout,
        }
    }
}

fn on_assign(shared: &Arc<Shared>, base: &Client, tpl: &mut TopicPartitionList, cooperative: bool) {
    let link = &shared.link;
    let group_id = shared.group_id.clone().unwrap_or_default();
    let tps: Vec<Tp> = tpl
        .elements()
        .iter()
        .map(|e| (Arc::<str>::from(e.topic()), e.partition()))
        .collect();
    let committed = if tps.is_empty() {
        Ok(TopicPartitionList::new())
    } else {
        base.committed_offsets(tpl.clone(), link.config.request_timeout)
    };
    let mut parts = Vec::with_capacity(tps.len());
    let mut pins = TopicPartitionList::new();
    match committed {
        Ok(committed) => {
            for tp in tps {
                let elem = committed.find_partition(&tp.0, tp.1);
                let (offset, part) = match elem.as_ref().map(|e| (e.offset(), e.metadata())) {
                    Some((Offset::Offset(n), meta)) if n >= 0 => {
                        let mut prior = super::decode_attempts(meta);
                        if prior.is_empty() {
                            prior = link
                                .handoff
                                .take(&(group_id.clone(), tp.0.to_string(), tp.1), n);
                        }
                        let mut part = Part::new(n, prior);
                        part.resumed = true;
                        (Offset::Offset(n), part)
                    }
                    _ => {
                        let (offset, part, pin) = resolve_start(&shared.starter(), base, &tp);
                        if pin && let Offset::Offset(n) = offset {
                            let _ = pins.add_partition_offset(&tp.0, tp.1, Offset::Offset(n));
                        }
                        (offset, part)
                    }
                };
                let _ = tpl.set_partition_offset(&tp.0, tp.1, offset);
                parts.push((tp, part));
            }
        }
        Err(e) => {
            // librdkafka falls back to the committed offsets itself (or auto.offset.reset).
            tracing::warn!(target: "squall_kafka", error = %e, "fetching committed offsets failed");
            for tp in tps {
                parts.push((tp, Part::new(0, BTreeMap::new())));
            }
        }
    }
    let r = if cooperative {
        base.incremental_assign(tpl)
    } else {
        base.assign(tpl)
    };
    if let Err(e) = r {
        tracing::warn!(target: "squall_kafka", error = %e, "assigning partitions failed");
    }
    // A partition paused for a full buffer before a rebalance starts afresh.
    if tpl.count() > 0
        && let Err(e) = base.resume(tpl)
    {
        tracing::debug!(target: "squall_kafka", error = %e, "resuming assigned partitions failed");
    }
    if pins.count() > 0
        && let Err(e) = base.commit(&pins, CommitMode::Sync)
    {
        tracing::warn!(target: "squall_kafka", error = %e, "pinning the group's start position failed");
    }
    let mut st = shared.lock();
    for (tp, part) in parts {
        st.assign(tp, part);
    }
    if tpl.count() == 0 {
        st.assignments += 1;
    }
    drop(st);
    if let Some(m) = &shared.member {
        m.assigned();
    }
    shared.notify.notify_waiters();
}

fn on_revoke(shared: &Arc<Shared>, base: &Client, tpl: &mut TopicPartitionList, cooperative: bool) {
    let tps: Vec<Tp> = tpl
        .elements()
        .iter()
        .map(|e| (Arc::<str>::from(e.topic()), e.partition()))
        .collect();
    if !cooperative && let Some(m) = &shared.member {
        m.revoked();
    }
    revoke_all(shared, base, &tps);
    let r = if cooperative {
        base.incremental_unassign(tpl)
    } else {
        base.unassign()
    };
    if let Err(e) = r {
        tracing::warn!(target: "squall_kafka", error = %e, "unassigning partitions failed");
    }
}

/// Drops partitions from the state and, in a group, commits their positions (with the
/// attempt counts for the next owner) before they go.
fn revoke_all(shared: &Arc<Shared>, base: &Client, tps: &[Tp]) {
    let mut gone = Vec::new();
    {
        let mut st = shared.lock();
        for tp in tps {
            if let Some(r) = st.revoke(tp) {
                gone.push((tp.clone(), r));
            }
        }
    }
    shared.notify.notify_waiters();
    let Some(group_id) = &shared.group_id else {
        return;
    };
    let mut commit = TopicPartitionList::new();
    for (tp, (position, attempts, worth)) in gone {
        if worth {
            let mut e = commit.add_partition(&tp.0, tp.1);
            if e.set_offset(Offset::Offset(position)).is_ok() {
                e.set_metadata(super::encode_attempts(&attempts));
            }
        }
        shared.link.handoff.put(
            (group_id.clone(), tp.0.to_string(), tp.1),
            position,
            attempts,
        );
    }
    if commit.count() > 0
        && let Err(e) = base.commit(&commit, CommitMode::Sync)
    {
        tracing::warn!(target: "squall_kafka", error = %e, "committing revoked partitions failed");
    }
}

/// Wildcard subscriptions without a group: assigns the partitions of topics that appeared
/// since the last look.
fn discover(client: &Client, shared: &Arc<Shared>, assigned: &mut HashSet<(String, i32)>) {
    let c = &shared.link.config;
    let md = match client.fetch_metadata(None, c.request_timeout) {
        Ok(md) => md,
        Err(e) => {
            tracing::warn!(target: "squall_kafka", error = %e, "listing topics failed");
            return;
        }
    };
    let mut tpl = TopicPartitionList::new();
    let mut parts = Vec::new();
    for t in md.topics() {
        if !topics::topic_matches(&c.topic_prefix, &shared.pattern, t.name()) {
            continue;
        }
        for p in t.partitions() {
            let key = (t.name().to_string(), p.id());
            if assigned.contains(&key) {
                continue;
            }
            let tp: Tp = (Arc::from(t.name()), p.id());
            let (offset, part, _) = resolve_start(&shared.starter(), client, &tp);
            let _ = tpl.add_partition_offset(t.name(), p.id(), offset);
            parts.push((key, tp, part));
        }
    }
    if parts.is_empty() {
        return;
    }
    match client.incremental_assign(&tpl) {
        Ok(()) => {
            let mut st = shared.lock();
            for (key, tp, part) in parts {
                assigned.insert(key);
                st.assign(tp, part);
            }
        }
        Err(e) => tracing::warn!(target: "squall_kafka", error = %e, "assigning new topics failed"),
    }
}

/// An error for a consumer that could not be set up.
pub(crate) fn setup_error(what: &str, e: KafkaError) -> Error {
    let err = from_kafka(what, e);
    if err.kind() == ErrorKind::Internal {
        return Error::new(ErrorKind::Unavailable, err.to_string());
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_once_a_single_drop_never() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        assert!(!o.failed(t0), "one dropped connection");
        assert!(!o.failed(t0 + Duration::from_millis(500)));
        assert!(
            o.failed(t0 + Duration::from_millis(1200)),
            "a second of failures"
        );
        assert!(!o.failed(t0 + Duration::from_secs(3)), "reported once");
        // Quiet for more than five seconds: a later failure starts afresh.
        assert!(!o.failed(t0 + Duration::from_secs(10)));
        assert!(o.failed(t0 + Duration::from_secs(12)));
    }
}
